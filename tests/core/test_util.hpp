// Seeded random data for the core tests: stores filled with normal K/V, random queries,
// and error measures. Every test loops over seeds derived from base_seed() and puts the
// seed in a SCOPED_TRACE, so a failure prints what to replay (PNMKV_TEST_SEED=<base>).
#pragma once

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/kv_store.hpp"
#include "core/simd_target.hpp"
#include "hwy/targets.h"

namespace pnmkv::test {

// Kernel properties hold on every SIMD target this CPU runs, not just the one dispatch
// picks: suites derived from per_target run once per target (SSE4 ... AVX3), each
// forced in turn, and name it (e.g. targets/attention.merge.../AVX3).
class per_target : public ::testing::TestWithParam<int64_t> {
 protected:
  void SetUp() override { hwy::SetSupportedTargetsForTest(GetParam()); }
  void TearDown() override { hwy::SetSupportedTargetsForTest(0); }
};

// The targets the per-target suites run: every one this CPU supports, or only the one
// PNMKV_SIMD_TARGET names (applied here too: the list is built before main runs).
inline std::vector<int64_t> targets_under_test() {
  (void)apply_kernel_target_from_env();  // a bad value is reported by main
  return hwy::SupportedAndGeneratedTargets();
}

inline std::string target_param_name(const ::testing::TestParamInfo<int64_t>& info) {
  return hwy::TargetName(info.param);
}

#define PNMKV_INSTANTIATE_PER_TARGET(suite)                                                 \
  INSTANTIATE_TEST_SUITE_P(targets, suite,                                                 \
                           ::testing::ValuesIn(::pnmkv::test::targets_under_test()),       \
                           ::pnmkv::test::target_param_name)

inline uint64_t base_seed() {
  const char* env = std::getenv("PNMKV_TEST_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : 20240601ull;
}

inline std::string seed_trace(uint64_t seed) {
  return "seed=" + std::to_string(seed) + " (replay: PNMKV_TEST_SEED=" +
         std::to_string(base_seed()) + ")";
}

inline std::vector<float> normal_floats(std::mt19937_64& gen, size_t n, float stddev = 1.0f,
                                        float mean = 0.0f) {
  std::normal_distribution<float> dist(mean, stddev);
  std::vector<float> out(n);
  for (float& x : out) x = dist(gen);
  return out;
}

// A store of n_tokens tokens starting at global page first_page (contiguous), K and V
// normal; keys get a per-dimension offset so summaries are not centred at 0.
inline kv_head_store make_store(const kv_head_shape& shape, uint64_t n_tokens,
                                std::mt19937_64& gen, uint64_t first_page = 0) {
  auto created = kv_head_store::create(shape, std::max<uint64_t>(n_tokens, 1));
  EXPECT_TRUE(created.is_ok()) << created.error().to_string();
  kv_head_store store = std::move(created).value();
  const size_t d = shape.head_dim;
  std::vector<float> offset = normal_floats(gen, d, 0.5f);
  std::vector<float> k = normal_floats(gen, n_tokens * d);
  std::vector<float> v = normal_floats(gen, n_tokens * d);
  for (size_t i = 0; i < k.size(); ++i) k[i] += offset[i % d];
  // Bulk appends of random sizes, so pages are also filled across calls.
  std::uniform_int_distribution<uint64_t> chunk(1, 3 * shape.page_size_tokens);
  uint64_t done = 0;
  const uint64_t start = first_page * shape.page_size_tokens;
  while (done < n_tokens) {
    const uint64_t c = std::min(chunk(gen), n_tokens - done);
    const status s = store.append(start + done, k.data() + done * d, v.data() + done * d, c);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
    done += c;
  }
  return store;
}

// ||a - b||₂ / ||b||₂ (b the reference); 0 when both are zero.
inline double rel_error(const float* a, const float* b, size_t n) {
  double num = 0.0;
  double den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double diff = static_cast<double>(a[i]) - b[i];
    num += diff * diff;
    den += static_cast<double>(b[i]) * b[i];
  }
  if (den == 0.0) return num == 0.0 ? 0.0 : INFINITY;
  return std::sqrt(num / den);
}

// |a - b| / max(1, |b|): lse is a log, so near zero an absolute error is what matters.
inline double lse_error(float a, float b) {
  if (std::isinf(a) && std::isinf(b) && (a < 0) == (b < 0)) return 0.0;
  return std::fabs(static_cast<double>(a) - b) / std::max(1.0, std::fabs(static_cast<double>(b)));
}

}  // namespace pnmkv::test
