// One arithmetic on every SIMD target (core/simd_internal.hpp). Runtime dispatch picks one
// Highway target per CPU, so each test here forces every compiled target this CPU supports
// in turn (SCALAR, SSSE3, SSE4, AVX2, AVX3 where present):
//  * shapes that hit every tail and partial vector at every width (head dims 16..144 in
//    steps of 16, contexts of 1 token, of one page, of odd lengths; GQA groups 1..17)
//    equal the dense reference on every target;
//  * on the targets with fused multiply-add the Quest scores equal, bit for bit, a scalar
//    model of the canonical chain order written with std::fma;
//  * the kernels' outputs over a fixed seeded sweep hash to one pinned value on every
//    canonical target, so a machine with AVX2 only checks the same bits as one with
//    AVX-512 (the value was computed on AVX3 and AVX2 alike).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/score.hpp"
#include "core/simd_target.hpp"
#include "hwy/targets.h"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

class targets : public test::per_target {
 protected:
  bool canonical() const { return kernel_target_is_canonical(hwy::TargetName(GetParam())); }
};
PNMKV_INSTANTIATE_PER_TARGET(targets);

// The canonical dot product of core/simd_internal.hpp, one element at a time: 16 chains,
// chunks of 32, chain c takes elements 2c, 2c+1 (bf16 data) or c, 16+c (fp32 data), each
// with one fused multiply-add; a half chunk of 16 feeds chains 0..7 (bf16) or all (fp32);
// then the fixed tree.
template <class Get>
float canonical_dot(const float* w, Get x, size_t len, bool pairs) {
  float c[16] = {};
  size_t i = 0;
  for (; i + 32 <= len; i += 32) {
    for (size_t k = 0; k < 16; ++k) {
      const size_t a = pairs ? 2 * k : k;
      const size_t b = pairs ? 2 * k + 1 : 16 + k;
      c[k] = std::fma(w[i + a], x(i + a), c[k]);
      c[k] = std::fma(w[i + b], x(i + b), c[k]);
    }
  }
  if (i < len) {
    EXPECT_EQ(len - i, 16u);
    for (size_t k = 0; k < (pairs ? 8u : 16u); ++k) {
      if (pairs) {
        c[k] = std::fma(w[i + 2 * k], x(i + 2 * k), c[k]);
        c[k] = std::fma(w[i + 2 * k + 1], x(i + 2 * k + 1), c[k]);
      } else {
        c[k] = std::fma(w[i + k], x(i + k), c[k]);
      }
    }
  }
  float r[8];
  for (size_t k = 0; k < 8; ++k) r[k] = c[k] + c[k + 8];
  return ((r[0] + r[2]) + (r[1] + r[3])) + ((r[4] + r[6]) + (r[5] + r[7]));
}

// Quest scores in the canonical order: weight rows [q⁺, q⁻] (summed over the group for
// `sum`), one canonical dot product per row and page, max over rows ignoring NaN.
std::vector<float> canonical_scores(const kv_head_store& s, const float* q, uint32_t group,
                                    gqa_aggregation agg) {
  const uint32_t d = s.shape().head_dim;
  const size_t len = 2 * size_t{d};
  const uint32_t rows = agg == gqa_aggregation::max ? group : 1;
  std::vector<float> w(rows * len, 0.0f);
  for (uint32_t h = 0; h < group; ++h) {
    float* row = w.data() + (agg == gqa_aggregation::max ? h : 0) * len;
    for (uint32_t j = 0; j < d; ++j) {
      row[j] += std::max(q[h * d + j], 0.0f);
      row[d + j] += std::min(q[h * d + j], 0.0f);
    }
  }
  const bool bf = s.shape().summaries == summary_precision::bf16;
  std::vector<float> out(s.page_count());
  for (uint32_t p = 0; p < s.page_count(); ++p) {
    float best = -INFINITY;
    for (uint32_t r = 0; r < rows; ++r) {
      const float v = canonical_dot(
          w.data() + r * len,
          [&](size_t i) {
            return bf ? to_float(static_cast<const bf16*>(s.summaries())[p * len + i])
                      : static_cast<const float*>(s.summaries())[p * len + i];
          },
          len, bf);
      best = v > best ? v : best;
    }
    out[p] = best;
  }
  return out;
}

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

struct shape_case {
  uint32_t d, page, group;
  uint64_t tokens;
  summary_precision prec;
};

// Every head dim the store allows up to 144 (16 and 48 are not whole 32-element chunks,
// 16 is less than one AVX-512 step), contexts of 1 token, one page, and odd lengths,
// groups from 1 to 17 (4 and 16 are the GQA of Llama-3.1 8B/70B and 405B).
std::vector<shape_case> shape_sweep(uint64_t seed) {
  std::mt19937_64 gen(seed);
  std::vector<shape_case> out;
  for (uint32_t d = 16; d <= 144; d += 16) {
    for (uint64_t tokens : {uint64_t{1}, uint64_t{16}, uint64_t{17}, 1 + gen() % 700}) {
      const uint32_t page = 1 + static_cast<uint32_t>(gen() % 33);
      const uint32_t group = 1 + static_cast<uint32_t>(gen() % 17);
      const summary_precision prec = gen() % 2 ? summary_precision::bf16 : summary_precision::fp32;
      out.push_back({d, page, group, tokens, prec});
    }
  }
  out.push_back({128, 16, 4, 1000, summary_precision::bf16});
  out.push_back({128, 16, 16, 1000, summary_precision::bf16});
  out.push_back({64, 1, 16, 33, summary_precision::fp32});
  return out;
}

std::string describe(const shape_case& c) {
  return "d=" + std::to_string(c.d) + " page=" + std::to_string(c.page) +
         " group=" + std::to_string(c.group) + " tokens=" + std::to_string(c.tokens) +
         (c.prec == summary_precision::bf16 ? " bf16" : " fp32");
}

TEST_P(targets, dispatch_runs_the_forced_target) {
  EXPECT_STREQ(kernel_target_name(), hwy::TargetName(GetParam()));
}

TEST_P(targets, every_shape_equals_the_scalar_loop_and_dense_attention) {
  for (uint64_t seed = test::base_seed(); seed < test::base_seed() + 2; ++seed) {
    SCOPED_TRACE(test::seed_trace(seed));
    for (const shape_case& c : shape_sweep(seed)) {
      SCOPED_TRACE(describe(c));
      std::mt19937_64 gen(seed ^ (c.d * 1000003ull + c.tokens));
      const kv_head_store s = test::make_store(kv_head_shape{c.d, c.page, c.prec}, c.tokens, gen);
      const std::vector<float> q = test::normal_floats(gen, c.group * c.d);
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        std::vector<float> fast(s.page_count());
        std::vector<float> slow(s.page_count());
        ASSERT_TRUE(score_pages(s, q.data(), c.group, agg, fast.data()).is_ok());
        ASSERT_TRUE(score_pages_scalar(s, q.data(), c.group, agg, slow.data()).is_ok());
        for (uint32_t p = 0; p < s.page_count(); ++p) {
          ASSERT_NEAR(fast[p], slow[p], 1e-4 * (1.0 + std::fabs(slow[p]))) << "page " << p;
        }
      }
      std::vector<uint32_t> pages(s.page_count());
      for (uint32_t p = 0; p < s.page_count(); ++p) pages[p] = p;
      partial sparse;
      partial dense;
      const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
      ASSERT_TRUE(attend_pages(s, q.data(), c.group, pages.data(), pages.size(), scale, sparse).is_ok());
      ASSERT_TRUE(dense_attention_reference(s, q.data(), c.group, scale, dense).is_ok());
      for (uint32_t h = 0; h < c.group; ++h) {
        EXPECT_LT(test::rel_error(sparse.o.data() + h * c.d, dense.o.data() + h * c.d, c.d), 1e-5)
            << "head " << h;
        EXPECT_LT(test::lse_error(sparse.lse[h], dense.lse[h]), 1e-5) << "head " << h;
      }
    }
  }
}

TEST_P(targets, canonical_targets_score_bit_for_bit_as_the_scalar_model) {
  if (!canonical()) GTEST_SKIP() << "no fused multiply-add: not a canonical target";
  for (const shape_case& c : shape_sweep(test::base_seed())) {
    SCOPED_TRACE(describe(c));
    std::mt19937_64 gen(c.d * 7919ull + c.tokens);
    const kv_head_store s = test::make_store(kv_head_shape{c.d, c.page, c.prec}, c.tokens, gen);
    const std::vector<float> q = test::normal_floats(gen, c.group * c.d);
    for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
      std::vector<float> got(s.page_count());
      ASSERT_TRUE(score_pages(s, q.data(), c.group, agg, got.data()).is_ok());
      const std::vector<float> want = canonical_scores(s, q.data(), c.group, agg);
      for (uint32_t p = 0; p < s.page_count(); ++p) {
        ASSERT_EQ(bits(got[p]), bits(want[p]))
            << to_string(agg) << " page " << p << ": " << got[p] << " vs " << want[p];
      }
    }
  }
}

// FNV-1a over the bits of every score, output and lse of a fixed sweep (fixed seed, not
// PNMKV_TEST_SEED: the value is pinned).
uint64_t kernel_digest() {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](float f) {
    const uint32_t u = bits(f);
    for (int b = 0; b < 4; ++b) {
      h ^= (u >> (8 * b)) & 0xffu;
      h *= 1099511628211ull;
    }
  };
  for (const shape_case& c : shape_sweep(20240601ull)) {
    std::mt19937_64 gen(c.d * 104729ull + c.tokens);
    const kv_head_store s = test::make_store(kv_head_shape{c.d, c.page, c.prec}, c.tokens, gen);
    const std::vector<float> q = test::normal_floats(gen, c.group * c.d);
    for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
      std::vector<float> sc(s.page_count());
      EXPECT_TRUE(score_pages(s, q.data(), c.group, agg, sc.data()).is_ok());
      for (float f : sc) mix(f);
    }
    // Every other page, in reverse order: scattered pages and tile boundaries mid-page.
    std::vector<uint32_t> pages;
    for (uint32_t p = s.page_count(); p-- > 0;) {
      if (p % 2 == 0 || s.page_count() == 1) pages.push_back(p);
    }
    partial out;
    const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
    EXPECT_TRUE(attend_pages(s, q.data(), c.group, pages.data(), pages.size(), scale, out).is_ok());
    for (float f : out.o) mix(f);
    for (float f : out.lse) mix(f);
  }
  return h;
}

// Computed on an AMD EPYC (Zen 5) under AVX3 and AVX2 alike. A change of the canonical
// arithmetic (chain order, sum tree, tile size, exp) changes it on purpose: update it
// then, and the golden run digest in tests/cluster with it.
constexpr uint64_t golden_kernel_digest = 0xdcadeffe7158ad71ull;

TEST_P(targets, canonical_targets_give_the_pinned_kernel_digest) {
  if (!canonical()) GTEST_SKIP() << "no fused multiply-add: not a canonical target";
  char hex[17];
  const uint64_t got = kernel_digest();
  std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(got));
  EXPECT_EQ(got, golden_kernel_digest) << "kernel digest " << hex;
}

}  // namespace
}  // namespace pnmkv
