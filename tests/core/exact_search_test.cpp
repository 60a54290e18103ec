// The exact-int8 page search selects exactly the pages the flat scan selects (same pages,
// same tie-breaking, bit-identical scores of the selected pages), on every SIMD target,
// over many seeds and shapes: GQA 1-16, head dims 64 and 128, pages of 8-32 tokens, odd
// contexts, both aggregations, the always-kept pages (sink and last page), excluded pages
// (png-kv's steady pages), budgets from two pages to more than the context, structured
// keys (the synthetic workload's sinks, topics and needles), tied scores, and decode
// appends after prefill. Also: the int8 summaries bound the summaries outward after every
// append, the integer kernel is exact, and non-finite input falls back to the flat scan.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "core/exact_search.hpp"
#include "core/int8_summaries.hpp"
#include "core/score.hpp"
#include "core/select.hpp"
#include "core/workload.hpp"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

using test::base_seed;
using test::seed_trace;

class exact_search : public test::per_target {};
PNMKV_INSTANTIATE_PER_TARGET(exact_search);

float summary_at(const kv_head_store& s, uint32_t page, size_t i) {
  const size_t len = s.summary_bytes_per_page() /
                     (s.shape().summaries == summary_precision::bf16 ? 2 : 4);
  if (s.shape().summaries == summary_precision::bf16)
    return to_float(static_cast<const bf16*>(s.summaries())[page * len + i]);
  return static_cast<const float*>(s.summaries())[page * len + i];
}

// Every page's dequantised box contains its summary box (max rounded up, min down).
void expect_outward(const kv_head_store& s) {
  const int8_summary_index& ix = s.int8_summaries();
  ASSERT_FALSE(ix.empty());
  const size_t len = ix.len();
  for (uint32_t p = 0; p < s.page_count(); ++p) {
    const uint32_t b = p / ix.block_pages();
    for (size_t i = 0; i < len; ++i) {
      const float v = summary_at(s, p, i);
      const float lo = ix.block_lo(b)[i];
      const float hi = ix.block_hi(b)[i];
      ASSERT_TRUE(lo <= v && v <= hi) << "page " << p << " element " << i;
      const double deq = double(lo) + double(int8_summary_index::step_of(lo, hi)) *
                                          ix.codes()[size_t(p) * len + i];
      if (i < len / 2) {
        ASSERT_GE(deq, double(v)) << "max element rounded down: page " << p << " i " << i;
      } else {
        ASSERT_LE(deq, double(v)) << "min element rounded up: page " << p << " i " << i;
      }
    }
  }
}

// The flat reference exactly as the device engine computed it before searches existed:
// score_pages, excluded pages NaN, select_top_pages.
void flat_reference(const kv_head_store& s, const search_query& q, std::vector<uint32_t>& sel,
                    std::vector<float>& scores) {
  std::vector<float> all(s.page_count());
  ASSERT_TRUE(score_pages(s, q.q_group, q.group, q.aggregation, all.data()).is_ok());
  if (q.excluded)
    for (uint32_t p = 0; p < s.page_count(); ++p)
      if (q.excluded[p]) all[p] = std::nanf("");
  auto r = select_top_pages(all.data(), s.page_count(), q.forced, q.budget_pages);
  ASSERT_TRUE(r.is_ok()) << r.error().to_string();
  sel = *r;
  scores.clear();
  for (uint32_t p : sel) scores.push_back(all[p]);
}

struct search_totals {
  uint64_t pages = 0, rescored = 0, searches = 0;
};

// Both searches against the reference: the same pages and bit-identical scores.
void expect_same_as_flat(const kv_head_store& s, const search_query& q, search_totals* totals) {
  std::vector<uint32_t> ref_sel;
  std::vector<float> ref_scores;
  flat_reference(s, q, ref_sel, ref_scores);
  for (page_search search : {page_search::flat, page_search::exact_int8}) {
    std::vector<uint32_t> sel;
    std::vector<float> scores;
    search_work work;
    search_scratch scratch;
    const status st = search_top_pages(s, search, q, sel, scores, work, scratch);
    ASSERT_TRUE(st.is_ok()) << st.to_string();
    ASSERT_EQ(sel, ref_sel) << to_string(search);
    ASSERT_EQ(scores.size(), ref_scores.size());
    ASSERT_EQ(0, std::memcmp(scores.data(), ref_scores.data(), scores.size() * sizeof(float)))
        << to_string(search) << ": scores differ";
    ASSERT_LE(work.pages_rescored, s.page_count());
    if (search == page_search::exact_int8 && totals) {
      totals->pages += s.page_count();
      totals->rescored += work.pages_rescored;
      ++totals->searches;
    }
  }
}

kv_head_shape shape_of(uint32_t d, uint32_t page, summary_precision prec = summary_precision::bf16) {
  kv_head_shape sh;
  sh.head_dim = d;
  sh.page_size_tokens = page;
  sh.summaries = prec;
  sh.search = page_search::exact_int8;
  return sh;
}

std::vector<uint32_t> forced_of(const kv_head_store& s) { return always_kept_pages(s.page_count()); }

TEST_P(exact_search, same_selection_as_flat_random_shapes) {
  search_totals totals;
  const uint32_t groups[] = {1, 2, 3, 4, 8, 16};
  const uint32_t dims[] = {64, 128};
  const uint32_t page_sizes[] = {8, 13, 16, 32};
  for (uint64_t seed = base_seed(); seed < base_seed() + 12; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = dims[seed % 2];
    const uint32_t page = page_sizes[gen() % 4];
    const uint64_t tokens = 1 + gen() % 6000;  // odd and even, partial last pages
    const summary_precision prec = seed % 5 == 4 ? summary_precision::fp32 : summary_precision::bf16;
    kv_head_store s = test::make_store(shape_of(d, page, prec), tokens, gen);
    for (uint32_t group : groups) {
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        std::vector<float> qv = test::normal_floats(gen, size_t(group) * d);
        search_query q;
        q.q_group = qv.data();
        q.group = group;
        q.aggregation = agg;
        q.forced = forced_of(s);
        const uint64_t budgets[] = {2, 3, 8, 64, s.page_count() / 2 + 1, s.page_count() + 5};
        for (uint64_t b : budgets) {
          q.budget_pages = std::max<uint64_t>(b, q.forced.size());
          expect_same_as_flat(s, q, &totals);
        }
        // Excluded pages (png-kv's steady pages): some random pages, never the forced ones.
        std::vector<uint8_t> ex(s.page_count(), 0);
        for (uint32_t p = 0; p < s.page_count(); ++p) ex[p] = gen() % 7 == 0;
        for (uint32_t f : q.forced) ex[f] = 0;
        q.excluded = ex.data();
        uint64_t n_ex = 0;
        for (uint8_t e : ex) n_ex += e;
        q.budget_pages = std::min<uint64_t>(16, s.page_count() - n_ex);
        q.budget_pages = std::max<uint64_t>(q.budget_pages, q.forced.size());
        expect_same_as_flat(s, q, &totals);
      }
    }
  }
  std::printf("random shapes: %llu exact-int8 searches rescored %.3f of the pages\n",
              static_cast<unsigned long long>(totals.searches),
              double(totals.rescored) / std::max<double>(1, double(totals.pages)));
}

// Pages that repeat earlier pages exactly: flat scores tie, and the lower index must win
// in the exact search as in the flat one.
TEST_P(exact_search, ties_break_to_the_lower_page) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 6; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = seed % 2 ? 64 : 128;
    const uint32_t page = 8;
    const uint32_t distinct = 5 + gen() % 20;
    const uint64_t pages = 300 + gen() % 200;
    auto created = kv_head_store::create(shape_of(d, page), pages * page);
    ASSERT_TRUE(created.is_ok());
    kv_head_store s = std::move(created).value();
    std::vector<float> base_k = test::normal_floats(gen, size_t(distinct) * page * d);
    std::vector<float> v(size_t(page) * d, 0.5f);
    for (uint64_t p = 0; p < pages; ++p) {
      const float* k = base_k.data() + (p % distinct) * page * d;
      ASSERT_TRUE(s.append(p * page, k, v.data(), page).is_ok());
    }
    for (uint32_t group : {1u, 4u, 16u}) {
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        std::vector<float> qv = test::normal_floats(gen, size_t(group) * d);
        search_query q;
        q.q_group = qv.data();
        q.group = group;
        q.aggregation = agg;
        q.forced = forced_of(s);
        for (uint64_t b : {3ull, 7ull, 40ull, 100ull}) {
          q.budget_pages = b;
          expect_same_as_flat(s, q, nullptr);
        }
      }
    }
  }
}

// The synthetic workload (sinks, topics, needles asked by the queries), prefilled, then
// decoded token by token: the int8 summaries follow every append and the selections stay
// the flat ones.
TEST_P(exact_search, same_selection_as_flat_workload_prefill_and_decode) {
  search_totals totals;
  workload_params wp;
  wp.needle_rate_per_mtokens = 1900;  // many needles in a short context
  wp.needle_block_tokens = 512;
  wp.needle_ask_fraction = 0.75;
  for (uint64_t seed = base_seed(); seed < base_seed() + 4; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    const uint32_t group = seed % 2 ? 4 : 16;
    const uint32_t d = seed % 3 ? 128 : 64;
    const uint32_t page = seed % 2 ? 16 : 32;
    const uint64_t context = 8191 + 2 * seed % 7;
    auto wl = synthetic_workload::create(wp, seed, d, group);
    ASSERT_TRUE(wl.is_ok()) << wl.error().to_string();
    auto created = kv_head_store::create(shape_of(d, page), context + 64);
    ASSERT_TRUE(created.is_ok());
    kv_head_store s = std::move(created).value();
    ASSERT_TRUE(fill_store(*wl, s, 0, 0, 0, 0, context).is_ok());
    expect_outward(s);
    std::vector<float> qv(size_t(group) * d);
    std::vector<bf16> k(d), v(d);
    for (uint64_t step = 0; step < 40; ++step) {
      wl->keys(0, 0, 0, context + step, 1, k.data());
      wl->values(0, 0, 0, context + step, 1, v.data());
      ASSERT_TRUE(s.append(context + step, k.data(), v.data(), 1).is_ok());
      wl->queries(0, 0, 0, step, context, qv.data());
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        search_query q;
        q.q_group = qv.data();
        q.group = group;
        q.aggregation = agg;
        q.forced = forced_of(s);
        q.budget_pages = 2048 / page;
        expect_same_as_flat(s, q, &totals);
      }
    }
    expect_outward(s);
  }
  const double fraction = double(totals.rescored) / double(totals.pages);
  std::printf("workload 8K: %llu exact-int8 searches rescored %.3f of the pages\n",
              static_cast<unsigned long long>(totals.searches), fraction);
  EXPECT_LT(fraction, 1.0);  // it prunes at all (the figures are in the bench)
}

TEST(exact_search_index, outward_after_random_appends) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 8; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = seed % 2 ? 64 : 128;
    const uint32_t page = 8 + gen() % 25;
    const uint64_t tokens = 1 + gen() % 9000;
    auto created = kv_head_store::create(shape_of(d, page), tokens + 1);
    ASSERT_TRUE(created.is_ok());
    kv_head_store s = std::move(created).value();
    std::vector<float> k0 = test::normal_floats(gen, tokens * d), v0(tokens * d, 0.0f);
    for (uint64_t done = 0; done < tokens;) {  // bulk appends of random sizes
      const uint64_t c = std::min<uint64_t>(1 + gen() % (3 * page), tokens - done);
      ASSERT_TRUE(s.append(done, k0.data() + done * d, v0.data() + done * d, c).is_ok());
      done += c;
    }
    expect_outward(s);
    // Outliers in later decode appends widen ranges of earlier pages' blocks.
    std::vector<float> k = test::normal_floats(gen, d, 8.0f), v(d, 0.0f);
    ASSERT_TRUE(s.append(s.token_count(), k.data(), v.data(), 1).is_ok());
    expect_outward(s);
    EXPECT_EQ(s.bytes_held(),
              uint64_t(s.page_count()) * (4ull * page * d + s.summary_bytes_per_page()) +
                  s.int8_summaries().bytes_held(s.page_count()));
  }
}

TEST_P(exact_search, dot_rows_are_exact) {
  std::mt19937_64 gen(base_seed());
  for (size_t len : {32u, 128u, 256u, 1024u}) {
    const int32_t lim = int8_weight_limit(len);
    for (uint32_t rows : {1u, 3u, 4u, 5u, 16u}) {
      const uint32_t pages = 1 + gen() % 23;
      std::vector<uint8_t> codes(pages * len);
      std::vector<int16_t> w(rows * len);
      for (auto& c : codes) c = gen() % 3 == 0 ? 255 : uint8_t(gen());
      for (auto& x : w) x = int16_t(gen() % 3 == 0 ? (gen() % 2 ? lim : -lim) : int(gen() % (2 * lim + 1)) - lim);
      std::vector<int32_t> out(pages * rows);
      int8_dot_rows(codes.data(), pages, len, w.data(), rows, out.data());
      for (uint32_t p = 0; p < pages; ++p)
        for (uint32_t r = 0; r < rows; ++r) {
          int64_t ref = 0;
          for (size_t i = 0; i < len; ++i) ref += int64_t(w[r * len + i]) * codes[p * len + i];
          ASSERT_EQ(out[p * rows + r], ref) << "len " << len << " rows " << rows;
        }
    }
  }
}

TEST_P(exact_search, non_finite_input_falls_back_to_flat) {
  std::mt19937_64 gen(base_seed());
  const uint32_t d = 64;
  kv_head_store s = test::make_store(shape_of(d, 16), 4000, gen);
  std::vector<float> qv = test::normal_floats(gen, 4 * d);
  search_query q;
  q.q_group = qv.data();
  q.group = 4;
  q.forced = forced_of(s);
  q.budget_pages = 10;
  qv[5] = INFINITY;
  std::vector<uint32_t> sel;
  std::vector<float> sc;
  search_work work;
  search_scratch scratch;
  ASSERT_TRUE(search_top_pages(s, page_search::exact_int8, q, sel, sc, work, scratch).is_ok());
  EXPECT_EQ(work.fallbacks, 1u);
  EXPECT_EQ(work.pages_rescored, s.page_count());
  // A page whose keys are NaN in one channel leaves ±inf in its summary.
  qv[5] = 0.5f;
  std::vector<float> k(16 * d, 1.0f), v(16 * d, 0.0f);
  for (size_t r = 0; r < 16; ++r) k[r * d + 3] = NAN;
  auto created = kv_head_store::create(shape_of(d, 16), 4096);
  ASSERT_TRUE(created.is_ok());
  kv_head_store t = std::move(created).value();
  std::vector<float> k0 = test::normal_floats(gen, 2048 * d), v0(2048 * d, 0.0f);
  ASSERT_TRUE(t.append(0, k0.data(), v0.data(), 2048).is_ok());
  ASSERT_TRUE(t.append(2048, k.data(), v.data(), 16).is_ok());
  EXPECT_GT(t.int8_summaries().non_finite_blocks(), 0u);
  q.forced = forced_of(t);
  expect_same_as_flat(t, q, nullptr);
  work = {};
  ASSERT_TRUE(search_top_pages(t, page_search::exact_int8, q, sel, sc, work, scratch).is_ok());
  EXPECT_EQ(work.fallbacks, 1u);
}

// The VNNI path (vpdpwssd, AVX3 on CPUs that have it) and the plain multiply-add path give
// the same integer sums, hence the same bounds: the same pages rescored, the same result.
TEST_P(exact_search, vnni_and_multiply_add_paths_agree) {
  std::mt19937_64 gen(base_seed());
  for (uint32_t group : {1u, 4u, 16u}) {
    kv_head_store s = test::make_store(shape_of(128, 16), 20000 + 13 * group, gen);
    std::vector<float> qv = test::normal_floats(gen, size_t(group) * 128);
    for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
      search_query q;
      q.q_group = qv.data();
      q.group = group;
      q.aggregation = agg;
      q.forced = forced_of(s);
      q.budget_pages = 100;
      std::vector<uint32_t> sel[2];
      std::vector<float> sc[2];
      search_work work[2];
      search_scratch scratch;
      const bool before = set_int8_kernel_vnni(false);
      ASSERT_TRUE(search_top_pages(s, page_search::exact_int8, q, sel[0], sc[0], work[0], scratch).is_ok());
      set_int8_kernel_vnni(true);  // stays off on a CPU without VNNI
      ASSERT_TRUE(search_top_pages(s, page_search::exact_int8, q, sel[1], sc[1], work[1], scratch).is_ok());
      set_int8_kernel_vnni(before);
      EXPECT_EQ(sel[0], sel[1]);
      EXPECT_EQ(work[0].pages_rescored, work[1].pages_rescored);
      EXPECT_EQ(work[0].bytes(), work[1].bytes());
    }
  }
}

TEST(exact_search_index, bad_input_is_an_error) {
  std::mt19937_64 gen(base_seed());
  kv_head_shape flat_shape = shape_of(64, 16);
  flat_shape.search = page_search::flat;
  kv_head_store s = test::make_store(flat_shape, 100, gen);
  std::vector<float> qv = test::normal_floats(gen, 64);
  search_query q;
  q.q_group = qv.data();
  q.budget_pages = 2;
  std::vector<uint32_t> sel;
  std::vector<float> sc;
  search_work work;
  search_scratch scratch;
  EXPECT_FALSE(search_top_pages(s, page_search::exact_int8, q, sel, sc, work, scratch).is_ok());
  kv_head_store t = test::make_store(shape_of(64, 16), 100, gen);
  q.forced = {99};
  EXPECT_FALSE(search_top_pages(t, page_search::exact_int8, q, sel, sc, work, scratch).is_ok());
  q.forced = {0, 1, 2};
  EXPECT_FALSE(search_top_pages(t, page_search::exact_int8, q, sel, sc, work, scratch).is_ok());
}

}  // namespace
}  // namespace pnmkv
