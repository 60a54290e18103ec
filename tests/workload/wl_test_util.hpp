// Helpers of the workload tests: the base seed (PNMKV_TEST_SEED replays another), a trace
// naming it on failure, and dense attention over generated keys computed straight from
// the generator (no store), the ground truth for the structure tests.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "core/workload.hpp"

namespace pnmkv::test {

inline uint64_t wl_base_seed() {
  const char* env = std::getenv("PNMKV_TEST_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 10) : 20240601ull;
}

inline std::string wl_seed_trace(uint64_t seed) {
  return "seed=" + std::to_string(seed) + " (replay: PNMKV_TEST_SEED=" +
         std::to_string(wl_base_seed()) + ")";
}

inline synthetic_workload make_workload(uint64_t seed, workload_params p = {},
                                        uint32_t head_dim = 128, uint32_t group = 4) {
  auto w = synthetic_workload::create(p, seed, head_dim, group);
  EXPECT_TRUE(w.is_ok()) << w.error().to_string();
  return std::move(w).value();
}

// Softmax weights of every token in [0, n) for each query head: [h][token].
inline std::vector<std::vector<double>> dense_weights(const std::vector<float>& keys,
                                                      uint64_t n, uint32_t head_dim,
                                                      const std::vector<float>& q,
                                                      uint32_t group) {
  std::vector<std::vector<double>> w(group, std::vector<double>(n));
  const double scale = 1.0 / std::sqrt(static_cast<double>(head_dim));
  for (uint32_t h = 0; h < group; ++h) {
    double mx = -INFINITY;
    for (uint64_t i = 0; i < n; ++i) {
      double s = 0;
      for (uint32_t d = 0; d < head_dim; ++d)
        s += static_cast<double>(q[h * head_dim + d]) * keys[i * head_dim + d];
      w[h][i] = s * scale;
      mx = std::max(mx, w[h][i]);
    }
    double sum = 0;
    for (auto& x : w[h]) sum += (x = std::exp(x - mx));
    for (auto& x : w[h]) x /= sum;
  }
  return w;
}

}  // namespace pnmkv::test
