// Properties of the paged KV store: shape and capacity validation, the position rules of
// append (with the store unchanged after any refused append), zero rows past a partial
// page, and summaries that are exactly the min/max of the held keys whether tokens
// arrive one by one or in bulk.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/kv_store.hpp"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

using test::base_seed;
using test::seed_trace;

kv_head_store must_create(kv_head_shape shape, uint64_t capacity) {
  auto r = kv_head_store::create(shape, capacity);
  EXPECT_TRUE(r.is_ok()) << (r.is_ok() ? "" : r.error().to_string());
  return std::move(r).value();
}

// Summary of one page as floats: [max(d), min(d)].
std::vector<float> summary_of(const kv_head_store& s, uint32_t page) {
  const uint32_t d = s.shape().head_dim;
  std::vector<float> out(2 * d);
  const uint8_t* base = static_cast<const uint8_t*>(s.summaries()) +
                        static_cast<size_t>(page) * s.summary_bytes_per_page();
  for (uint32_t j = 0; j < 2 * d; ++j) {
    if (s.shape().summaries == summary_precision::bf16) {
      out[j] = to_float(reinterpret_cast<const bf16*>(base)[j]);
    } else {
      out[j] = reinterpret_cast<const float*>(base)[j];
    }
  }
  return out;
}

TEST(kv_shape, rejects_out_of_range_fields_and_names_them) {
  for (uint32_t d : {0u, 8u, 24u, 100u, 528u, 1024u}) {
    const status s = validate(kv_head_shape{d, 16, summary_precision::bf16});
    EXPECT_EQ(s.code(), errc::invalid_argument) << d;
    EXPECT_NE(s.message().find("head_dim"), std::string::npos) << s.message();
  }
  for (uint32_t p : {0u, 1025u, 4096u}) {
    const status s = validate(kv_head_shape{128, p, summary_precision::bf16});
    EXPECT_EQ(s.code(), errc::invalid_argument) << p;
    EXPECT_NE(s.message().find("page_size_tokens"), std::string::npos) << s.message();
  }
  for (uint32_t d : {16u, 64u, 128u, 512u}) {
    for (uint32_t p : {1u, 16u, 1024u}) {
      EXPECT_TRUE(validate(kv_head_shape{d, p, summary_precision::fp32}).is_ok());
    }
  }
  EXPECT_FALSE(kv_head_store::create(kv_head_shape{20, 16}, 64).is_ok());
}

TEST(kv_store, capacity_is_bounded) {
  EXPECT_EQ(kv_head_store::create(kv_head_shape{}, 0).error().code(), errc::capacity);
  EXPECT_EQ(kv_head_store::create(kv_head_shape{}, kv_capacity_tokens_limit + 1).error().code(),
            errc::capacity);
  // A 1M-token reservation costs nothing until written.
  auto big = kv_head_store::create(kv_head_shape{}, uint64_t{1} << 20);
  ASSERT_TRUE(big.is_ok());
  EXPECT_EQ(big->bytes_held(), 0u);
  EXPECT_EQ(big->capacity_tokens_max(), uint64_t{1} << 20);
}

TEST(kv_store, append_past_capacity_is_refused_and_changes_nothing) {
  kv_head_store s = must_create(kv_head_shape{16, 4}, 10);
  std::vector<bf16> rows(16 * 16, to_bf16(1.0f));
  ASSERT_TRUE(s.append(0, rows.data(), rows.data(), 8).is_ok());
  const status st = s.append(8, rows.data(), rows.data(), 3);
  EXPECT_EQ(st.code(), errc::capacity);
  EXPECT_NE(st.message().find("capacity"), std::string::npos);
  EXPECT_EQ(s.token_count(), 8u);
  EXPECT_EQ(s.page_count(), 2u);
  EXPECT_TRUE(s.append(8, rows.data(), rows.data(), 2).is_ok());
  EXPECT_EQ(s.append(10, rows.data(), rows.data(), 1).code(), errc::capacity);
  EXPECT_EQ(s.token_count(), 10u);
}

TEST(kv_store, position_rules) {
  const uint32_t d = 16;
  kv_head_store s = must_create(kv_head_shape{d, 4}, 64);
  std::vector<float> rows(8 * d, 0.5f);
  // The first page must start at a page boundary.
  status st = s.append(3, rows.data(), rows.data(), 1);
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_NE(st.message().find("position 3"), std::string::npos) << st.message();
  // Start at global page 2 (a shard need not start at 0).
  ASSERT_TRUE(s.append(8, rows.data(), rows.data(), 2).is_ok());
  EXPECT_EQ(s.global_page(0), 2u);
  // Continuing the partial page must use exactly position 10.
  st = s.append(11, rows.data(), rows.data(), 1);
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_NE(st.message().find("expected position 10"), std::string::npos) << st.message();
  // A new page may not start while the last one is partial.
  st = s.append(12, rows.data(), rows.data(), 1);
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_NE(st.message().find("expected position 10"), std::string::npos) << st.message();
  EXPECT_EQ(s.token_count(), 2u);
  ASSERT_TRUE(s.append(10, rows.data(), rows.data(), 2).is_ok());  // page 2 now full
  // Behind or inside held pages, or off a boundary: refused.
  for (uint64_t pos : {0ull, 8ull, 10ull, 13ull, 17ull}) {
    st = s.append(pos, rows.data(), rows.data(), 1);
    EXPECT_EQ(st.code(), errc::invalid_argument) << pos;
    EXPECT_NE(st.message().find("position " + std::to_string(pos)), std::string::npos);
  }
  // Skipping pages is allowed (interleaved shards): global pages 2, 5, 9.
  ASSERT_TRUE(s.append(20, rows.data(), rows.data(), 4).is_ok());
  ASSERT_TRUE(s.append(36, rows.data(), rows.data(), 3).is_ok());
  EXPECT_EQ(s.page_count(), 3u);
  EXPECT_EQ(s.token_count(), 11u);
  EXPECT_EQ(s.local_page_of(2), 0);
  EXPECT_EQ(s.local_page_of(5), 1);
  EXPECT_EQ(s.local_page_of(9), 2);
  for (uint64_t g : {0ull, 1ull, 3ull, 4ull, 6ull, 8ull, 10ull, 1000ull}) {
    EXPECT_EQ(s.local_page_of(g), -1) << g;
  }
  EXPECT_EQ(s.page_tokens(2), 3u);
  // Null rows and empty appends.
  EXPECT_EQ(s.append(39, static_cast<const float*>(nullptr), rows.data(), 1).code(),
            errc::invalid_argument);
  EXPECT_TRUE(s.append(39, static_cast<const float*>(nullptr), nullptr, 0).is_ok());
  EXPECT_EQ(s.token_count(), 11u);
}

TEST(kv_store, bulk_append_spans_pages_and_pads_with_zero_rows) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 6; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = 32;
    const uint32_t page = 1 + static_cast<uint32_t>(gen() % 20);
    const uint64_t n = 1 + gen() % 100;
    kv_head_store s = must_create(kv_head_shape{d, page}, n);
    std::vector<float> k = test::normal_floats(gen, n * d);
    std::vector<float> v = test::normal_floats(gen, n * d);
    ASSERT_TRUE(s.append(0, k.data(), v.data(), n).is_ok());
    ASSERT_EQ(s.token_count(), n);
    ASSERT_EQ(s.page_count(), (n + page - 1) / page);
    for (uint32_t p = 0; p < s.page_count(); ++p) {
      const uint32_t rows = s.page_tokens(p);
      EXPECT_EQ(rows, std::min<uint64_t>(page, n - uint64_t{p} * page));
      for (uint32_t t = 0; t < page; ++t) {
        for (uint32_t j = 0; j < d; ++j) {
          const size_t src = (static_cast<size_t>(p) * page + t) * d + j;
          const float kk = to_float(s.page_keys(p)[t * d + j]);
          const float vv = to_float(s.page_values(p)[t * d + j]);
          if (t < rows) {
            ASSERT_EQ(kk, to_float(to_bf16(k[src])));
            ASSERT_EQ(vv, to_float(to_bf16(v[src])));
          } else {
            ASSERT_EQ(kk, 0.0f);
            ASSERT_EQ(vv, 0.0f);
          }
        }
      }
    }
    const uint64_t kv_bytes = 2ull * page * d * sizeof(bf16);
    EXPECT_EQ(s.bytes_held(), s.page_count() * (kv_bytes + s.summary_bytes_per_page()));
  }
}

TEST(kv_store, float_append_equals_bf16_append_of_rounded_values) {
  std::mt19937_64 gen(base_seed());
  const uint32_t d = 64;
  std::vector<float> k = test::normal_floats(gen, 40 * d);
  std::vector<float> v = test::normal_floats(gen, 40 * d);
  std::vector<bf16> kb(k.size());
  std::vector<bf16> vb(v.size());
  for (size_t i = 0; i < k.size(); ++i) {
    kb[i] = to_bf16(k[i]);
    vb[i] = to_bf16(v[i]);
  }
  kv_head_store a = must_create(kv_head_shape{d, 16}, 40);
  kv_head_store b = must_create(kv_head_shape{d, 16}, 40);
  ASSERT_TRUE(a.append(0, k.data(), v.data(), 40).is_ok());
  ASSERT_TRUE(b.append(0, kb.data(), vb.data(), 40).is_ok());
  for (uint32_t p = 0; p < a.page_count(); ++p) {
    EXPECT_EQ(0, std::memcmp(a.page_keys(p), b.page_keys(p), 16 * d * sizeof(bf16)));
    EXPECT_EQ(0, std::memcmp(a.page_values(p), b.page_values(p), 16 * d * sizeof(bf16)));
  }
  EXPECT_EQ(0, std::memcmp(a.summaries(), b.summaries(), 3 * a.summary_bytes_per_page()));
}

// Summaries kept token by token equal those of one bulk append, and both equal the
// element-wise min/max of exactly the held rows (the zero padding is not a key).
TEST(kv_store, incremental_summaries_equal_bulk_and_brute_force) {
  for (summary_precision prec : {summary_precision::bf16, summary_precision::fp32}) {
    for (uint64_t seed = base_seed(); seed < base_seed() + 8; ++seed) {
      SCOPED_TRACE(seed_trace(seed));
      SCOPED_TRACE(to_string(prec));
      std::mt19937_64 gen(seed);
      const uint32_t d = 16 * (1 + static_cast<uint32_t>(gen() % 8));
      const uint32_t page = 1 + static_cast<uint32_t>(gen() % 33);
      const uint64_t n = 1 + gen() % 300;
      const kv_head_shape shape{d, page, prec};
      // Negative-mean keys: a zero pad row would wrongly raise every max.
      std::vector<float> k = test::normal_floats(gen, n * d, 1.0f, -3.0f);
      std::vector<float> v = test::normal_floats(gen, n * d);
      kv_head_store bulk = must_create(shape, n);
      kv_head_store inc = must_create(shape, n);
      ASSERT_TRUE(bulk.append(0, k.data(), v.data(), n).is_ok());
      for (uint64_t t = 0; t < n; ++t) {
        ASSERT_TRUE(inc.append(t, k.data() + t * d, v.data() + t * d, 1).is_ok());
      }
      ASSERT_EQ(inc.page_count(), bulk.page_count());
      EXPECT_EQ(0, std::memcmp(inc.summaries(), bulk.summaries(),
                               bulk.page_count() * bulk.summary_bytes_per_page()));
      for (uint32_t p = 0; p < bulk.page_count(); ++p) {
        std::vector<float> sum = summary_of(bulk, p);
        for (uint32_t j = 0; j < d; ++j) {
          float mx = -std::numeric_limits<float>::infinity();
          float mn = std::numeric_limits<float>::infinity();
          for (uint32_t t = 0; t < bulk.page_tokens(p); ++t) {
            const float x = to_float(bulk.page_keys(p)[t * d + j]);
            mx = std::max(mx, x);
            mn = std::min(mn, x);
          }
          ASSERT_EQ(sum[j], mx) << "page " << p << " dim " << j;
          ASSERT_EQ(sum[d + j], mn) << "page " << p << " dim " << j;
        }
      }
    }
  }
}

TEST(kv_store, summary_bytes_follow_precision) {
  kv_head_store a = must_create(kv_head_shape{128, 16, summary_precision::bf16}, 16);
  kv_head_store b = must_create(kv_head_shape{128, 16, summary_precision::fp32}, 16);
  EXPECT_EQ(a.summary_bytes_per_page(), 2u * 128 * 2);
  EXPECT_EQ(b.summary_bytes_per_page(), 2u * 128 * 4);
  EXPECT_STREQ(to_string(summary_precision::bf16), "bf16");
  EXPECT_STREQ(to_string(summary_precision::fp32), "fp32");
}

TEST(kv_store, moves_keep_contents) {
  std::mt19937_64 gen(base_seed());
  kv_head_store a = test::make_store(kv_head_shape{32, 8}, 50, gen);
  const bf16 first = a.page_keys(0)[0];
  kv_head_store b = std::move(a);
  EXPECT_EQ(b.token_count(), 50u);
  EXPECT_EQ(b.page_keys(0)[0].bits, first.bits);
  kv_head_store c = must_create(kv_head_shape{16, 4}, 4);
  c = std::move(b);
  EXPECT_EQ(c.page_count(), 7u);
  EXPECT_EQ(c.shape().head_dim, 32u);
}

}  // namespace
}  // namespace pnmkv
