// Properties of attention and merge: sparse attention with a budget covering every page
// equals dense attention (relative error < 1e-5, docs/DESIGN.md §4); attending any partition
// of the pages separately and merging equals attending the union; empty partials change
// nothing; the scalar loop agrees; bad input is an error and leaves the output alone.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/score.hpp"
#include "core/select.hpp"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

class attention : public test::per_target {};
PNMKV_INSTANTIATE_PER_TARGET(attention);

using test::base_seed;
using test::lse_error;
using test::rel_error;
using test::seed_trace;

constexpr double tolerance = 1e-5;

void expect_close(const partial& got, const partial& want, double tol, const char* what) {
  ASSERT_EQ(got.group, want.group) << what;
  ASSERT_EQ(got.head_dim, want.head_dim) << what;
  for (uint32_t h = 0; h < want.group; ++h) {
    const size_t off = static_cast<size_t>(h) * want.head_dim;
    EXPECT_LT(rel_error(got.o.data() + off, want.o.data() + off, want.head_dim), tol)
        << what << ": o of head " << h;
    EXPECT_LT(lse_error(got.lse[h], want.lse[h]), tol)
        << what << ": lse of head " << h << " got " << got.lse[h] << " want " << want.lse[h];
  }
}

float scale_for(uint32_t d) { return 1.0f / std::sqrt(static_cast<float>(d)); }

// Full budget ⇒ sparse == dense, over context lengths that leave partial pages, GQA
// ratios of real models, head dims and page sizes. The reference runs on the same
// bf16-rounded K/V, in double.
TEST_P(attention, full_budget_sparse_equals_dense) {
  uint64_t seed = base_seed();
  for (uint64_t tokens : {1ull, 15ull, 17ull, 1000ull, 4099ull}) {
    for (uint32_t group : {1u, 4u, 8u, 16u}) {
      for (uint32_t d : {64u, 128u}) {
        for (uint32_t page : {8u, 16u, 32u}) {
          ++seed;
          SCOPED_TRACE(seed_trace(seed));
          SCOPED_TRACE("tokens=" + std::to_string(tokens) + " group=" + std::to_string(group) +
                       " d=" + std::to_string(d) + " page=" + std::to_string(page));
          std::mt19937_64 gen(seed);
          const kv_head_store s = test::make_store(kv_head_shape{d, page}, tokens, gen);
          // Sharper queries on odd seeds: a peaked softmax stresses the online max.
          const float q_scale = seed % 2 ? 3.0f : 1.0f;
          const std::vector<float> q = test::normal_floats(gen, group * d, q_scale);
          std::vector<float> scores(s.page_count());
          ASSERT_TRUE(score_pages(s, q.data(), group, gqa_aggregation::max, scores.data()).is_ok());
          const uint64_t all = budget_pages(selection_budget{tokens + page, page});
          auto sel = select_top_pages(scores.data(), s.page_count(),
                                      always_kept_pages(s.page_count()), all);
          ASSERT_TRUE(sel.is_ok()) << sel.error().to_string();
          ASSERT_EQ(sel->size(), s.page_count());
          partial dense;
          partial sparse;
          ASSERT_TRUE(dense_attention_reference(s, q.data(), group, scale_for(d), dense).is_ok());
          ASSERT_TRUE(attend_pages(s, q.data(), group, sel->data(), sel->size(), scale_for(d),
                                   sparse)
                          .is_ok());
          expect_close(sparse, dense, tolerance, "attend_pages vs dense");
          if (tokens <= 1000 && group <= 4) {
            partial scalar;
            ASSERT_TRUE(attend_pages_scalar(s, q.data(), group, sel->data(), sel->size(),
                                            scale_for(d), scalar)
                            .is_ok());
            expect_close(scalar, dense, tolerance, "attend_pages_scalar vs dense");
          }
          if (HasFailure()) return;
        }
      }
    }
  }
}

// Extreme shapes: pages larger than a tile (cut into tiles), one-token pages (many pages
// per tile), the largest head dimension, group sizes off the 4-head blocks.
TEST_P(attention, extreme_shapes_equal_dense) {
  struct shape_case {
    uint32_t d;
    uint32_t page;
    uint32_t group;
    uint64_t tokens;
  };
  const shape_case cases[] = {{512, 1024, 3, 2500}, {512, 1, 5, 300}, {16, 1024, 1, 1030},
                              {256, 33, 7, 999},    {128, 64, 16, 700}, {32, 3, 2, 1}};
  uint64_t seed = base_seed() + 1000;
  for (const shape_case& c : cases) {
    ++seed;
    SCOPED_TRACE(seed_trace(seed));
    SCOPED_TRACE("d=" + std::to_string(c.d) + " page=" + std::to_string(c.page) +
                 " group=" + std::to_string(c.group) + " tokens=" + std::to_string(c.tokens));
    std::mt19937_64 gen(seed);
    const kv_head_store s = test::make_store(kv_head_shape{c.d, c.page}, c.tokens, gen);
    const std::vector<float> q = test::normal_floats(gen, c.group * c.d, 2.0f);
    std::vector<uint32_t> pages(s.page_count());
    std::iota(pages.begin(), pages.end(), 0u);
    std::shuffle(pages.begin(), pages.end(), gen);
    partial sparse;
    partial dense;
    ASSERT_TRUE(attend_pages(s, q.data(), c.group, pages.data(), pages.size(), scale_for(c.d),
                             sparse)
                    .is_ok());
    ASSERT_TRUE(dense_attention_reference(s, q.data(), c.group, scale_for(c.d), dense).is_ok());
    expect_close(sparse, dense, tolerance, "extreme shape");
  }
}

// Page order does not matter (beyond rounding).
TEST_P(attention, page_order_is_irrelevant) {
  std::mt19937_64 gen(base_seed());
  const uint32_t d = 128;
  const kv_head_store s = test::make_store(kv_head_shape{d, 16}, 2000, gen);
  const std::vector<float> q = test::normal_floats(gen, 8 * d);
  std::vector<uint32_t> pages(s.page_count());
  std::iota(pages.begin(), pages.end(), 0u);
  partial a;
  ASSERT_TRUE(attend_pages(s, q.data(), 8, pages.data(), pages.size(), scale_for(d), a).is_ok());
  std::shuffle(pages.begin(), pages.end(), gen);
  partial b;
  ASSERT_TRUE(attend_pages(s, q.data(), 8, pages.data(), pages.size(), scale_for(d), b).is_ok());
  expect_close(b, a, tolerance, "shuffled");
}

// Any partition of the pages, attended part by part and merged, equals the union; the
// vectorised and scalar kernels agree on every part.
TEST_P(attention, merge_of_a_partition_equals_the_union) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 30; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = 16u << (gen() % 4);
    const uint32_t page = 1 + static_cast<uint32_t>(gen() % 32);
    const uint32_t group = 1 + static_cast<uint32_t>(gen() % 16);
    const uint64_t tokens = 1 + gen() % 3000;
    SCOPED_TRACE("d=" + std::to_string(d) + " page=" + std::to_string(page) +
                 " group=" + std::to_string(group) + " tokens=" + std::to_string(tokens));
    const kv_head_store s = test::make_store(kv_head_shape{d, page}, tokens, gen);
    const std::vector<float> q = test::normal_floats(gen, group * d, 2.0f);
    const float scale = scale_for(d);
    // Union: a random subset of the pages (maybe all).
    std::vector<uint32_t> pages;
    const bool all = gen() % 3 == 0;
    for (uint32_t p = 0; p < s.page_count(); ++p) {
      if (all || gen() % 2) pages.push_back(p);
    }
    if (pages.empty()) pages.push_back(0);
    std::shuffle(pages.begin(), pages.end(), gen);
    partial whole;
    ASSERT_TRUE(attend_pages(s, q.data(), group, pages.data(), pages.size(), scale, whole).is_ok());
    if (all) {
      partial dense;
      ASSERT_TRUE(dense_attention_reference(s, q.data(), group, scale, dense).is_ok());
      expect_close(whole, dense, tolerance, "all pages vs dense");
    }
    // Partition into k parts (some may be empty).
    const size_t k = 1 + gen() % 7;
    std::vector<std::vector<uint32_t>> parts(k);
    for (uint32_t p : pages) parts[gen() % k].push_back(p);
    std::vector<partial> partials(k);
    std::vector<const partial*> ptrs;
    for (size_t i = 0; i < k; ++i) {
      ASSERT_TRUE(attend_pages(s, q.data(), group, parts[i].data(), parts[i].size(), scale,
                               partials[i])
                      .is_ok());
      EXPECT_EQ(partials[i].empty(), parts[i].empty());
      partial scalar;
      ASSERT_TRUE(attend_pages_scalar(s, q.data(), group, parts[i].data(), parts[i].size(),
                                      scale, scalar)
                      .is_ok());
      expect_close(partials[i], scalar, tolerance, "part: vectorised vs scalar");
      ptrs.push_back(&partials[i]);
    }
    partial merged;
    ASSERT_TRUE(merge_partials(ptrs.data(), ptrs.size(), merged).is_ok());
    expect_close(merged, whole, tolerance, "merged partition vs union");
    // The merge is deterministic: same inputs, same order, same bits.
    partial again;
    ASSERT_TRUE(merge_partials(ptrs.data(), ptrs.size(), again).is_ok());
    EXPECT_EQ(again.o, merged.o);
    EXPECT_EQ(again.lse, merged.lse);
    if (HasFailure()) return;
  }
}

TEST_P(attention, empty_partials_change_nothing) {
  std::mt19937_64 gen(base_seed());
  const uint32_t d = 64;
  const uint32_t group = 4;
  const kv_head_store s = test::make_store(kv_head_shape{d, 16}, 300, gen);
  const std::vector<float> q = test::normal_floats(gen, group * d);
  const std::vector<uint32_t> pages = {3, 1, 7, 18};
  partial a;
  ASSERT_TRUE(attend_pages(s, q.data(), group, pages.data(), pages.size(), 0.125f, a).is_ok());
  partial e1;
  partial e2;
  e1.reset(group, d);
  ASSERT_TRUE(attend_pages(s, q.data(), group, nullptr, 0, 0.125f, e2).is_ok());
  EXPECT_TRUE(e1.empty());
  EXPECT_TRUE(e2.empty());
  EXPECT_FALSE(a.empty());
  const partial* with_empties[] = {&e1, &a, &e2};
  partial merged;
  ASSERT_TRUE(merge_partials(with_empties, 3, merged).is_ok());
  EXPECT_EQ(merged.o, a.o);  // bit-identical: weight exactly 1, others skipped
  EXPECT_EQ(merged.lse, a.lse);
  const partial* only_empties[] = {&e1, &e2};
  ASSERT_TRUE(merge_partials(only_empties, 2, merged).is_ok());
  EXPECT_TRUE(merged.empty());
  EXPECT_EQ(merged.group, group);
  EXPECT_TRUE(std::all_of(merged.o.begin(), merged.o.end(), [](float x) { return x == 0.0f; }));
  // Per head: a partial empty for one head only contributes to the others.
  partial half = a;
  half.lse[1] = -std::numeric_limits<float>::infinity();
  const partial* mixed[] = {&half, &e1};
  ASSERT_TRUE(merge_partials(mixed, 2, merged).is_ok());
  EXPECT_EQ(merged.lse[0], a.lse[0]);
  EXPECT_EQ(merged.lse[1], -std::numeric_limits<float>::infinity());
  // The output may alias an input.
  partial alias = a;
  const partial* self[] = {&alias, &e1};
  ASSERT_TRUE(merge_partials(self, 2, alias).is_ok());
  EXPECT_EQ(alias.o, a.o);
}

// One token: the output is its value row and lse its scaled logit.
TEST_P(attention, single_token_is_its_value) {
  const uint32_t d = 16;
  auto created = kv_head_store::create(kv_head_shape{d, 4}, 4);
  ASSERT_TRUE(created.is_ok());
  kv_head_store s = std::move(created).value();
  std::vector<float> k(d);
  std::vector<float> v(d);
  std::vector<float> q(2 * d);
  for (uint32_t j = 0; j < d; ++j) {
    k[j] = 0.25f * j;
    v[j] = 1.5f - 0.5f * j;
    q[j] = 1.0f;
    q[d + j] = -0.5f;
  }
  ASSERT_TRUE(s.append(0, k.data(), v.data(), 1).is_ok());
  const uint32_t page = 0;
  partial out;
  ASSERT_TRUE(attend_pages(s, q.data(), 2, &page, 1, 0.5f, out).is_ok());
  const float dot0 = 0.25f * (d * (d - 1) / 2.0f);
  EXPECT_FLOAT_EQ(out.lse[0], 0.5f * dot0);
  EXPECT_FLOAT_EQ(out.lse[1], 0.5f * -0.5f * dot0);
  for (uint32_t j = 0; j < d; ++j) {
    EXPECT_FLOAT_EQ(out.o[j], v[j]);
    EXPECT_FLOAT_EQ(out.o[d + j], v[j]);
  }
}

TEST_P(attention, bad_input_is_an_error_and_leaves_output_alone) {
  std::mt19937_64 gen(base_seed());
  const uint32_t d = 32;
  const kv_head_store s = test::make_store(kv_head_shape{d, 8}, 100, gen);  // 13 pages
  const std::vector<float> q(65 * d, 0.1f);
  partial out;
  out.reset(3, 7);
  const std::vector<uint32_t> ok_pages = {0, 5, 12};
  const std::vector<uint32_t> past = {0, 13};
  const std::vector<uint32_t> dup = {4, 2, 4};
  for (auto* fn : {&attend_pages, &attend_pages_scalar}) {
    EXPECT_EQ(fn(s, q.data(), 0, ok_pages.data(), 3, 0.1f, out).code(), errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), kernel_group_limit + 1, ok_pages.data(), 3, 0.1f, out).code(),
              errc::invalid_argument);
    EXPECT_EQ(fn(s, nullptr, 4, ok_pages.data(), 3, 0.1f, out).code(), errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), 4, nullptr, 3, 0.1f, out).code(), errc::invalid_argument);
    const status st = fn(s, q.data(), 4, past.data(), 2, 0.1f, out);
    EXPECT_EQ(st.code(), errc::out_of_range);
    EXPECT_NE(st.message().find("13"), std::string::npos) << st.message();
    EXPECT_EQ(fn(s, q.data(), 4, dup.data(), 3, 0.1f, out).code(), errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), 4, ok_pages.data(), 3, NAN, out).code(), errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), 4, ok_pages.data(), 3, INFINITY, out).code(),
              errc::invalid_argument);
    EXPECT_EQ(out.group, 3u);  // untouched by every refused call
    EXPECT_EQ(out.head_dim, 7u);
  }
  EXPECT_EQ(dense_attention_reference(s, q.data(), 0, 0.1f, out).code(), errc::invalid_argument);

  // Merges of partials that disagree on shape.
  partial a;
  partial b;
  partial c;
  a.reset(4, 32);
  b.reset(4, 64);   // head_dim differs
  c.reset(2, 32);   // group differs
  const partial* ab[] = {&a, &b};
  const partial* ac[] = {&a, &c};
  EXPECT_EQ(merge_partials(ab, 2, out).code(), errc::shape_mismatch);
  EXPECT_EQ(merge_partials(ac, 2, out).code(), errc::shape_mismatch);
  partial broken = a;
  broken.o.pop_back();
  const partial* ax[] = {&a, &broken};
  EXPECT_EQ(merge_partials(ax, 2, out).code(), errc::shape_mismatch);
  EXPECT_EQ(merge_partials(ab, 0, out).code(), errc::invalid_argument);
  const partial* an[] = {&a, nullptr};
  EXPECT_EQ(merge_partials(an, 2, out).code(), errc::invalid_argument);
  EXPECT_EQ(out.group, 3u);
}

TEST_P(attention, empty_inputs_give_empty_partials) {
  auto created = kv_head_store::create(kv_head_shape{64, 16}, 64);
  ASSERT_TRUE(created.is_ok());
  const std::vector<float> q(4 * 64, 1.0f);
  partial out;
  ASSERT_TRUE(dense_attention_reference(*created, q.data(), 4, 0.125f, out).is_ok());
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(out.o.size(), 4u * 64);
  ASSERT_TRUE(attend_pages(*created, q.data(), 4, nullptr, 0, 0.125f, out).is_ok());
  EXPECT_TRUE(out.empty());
  partial none;
  EXPECT_TRUE(none.empty());  // a default partial has no heads, hence nothing finite
}

}  // namespace
}  // namespace pnmkv
