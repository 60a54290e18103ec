// The workload has the structure real attention has (docs/DESIGN.md §4), checked under dense
// attention computed straight from generated keys: sinks take a large share, the recent
// window matters, consecutive steps attend to nearly the same pages while steps far apart
// do not (drift), an asked needle takes a large share in the heads that respond, and
// values make outputs depend on what is attended.
#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "tests/workload/wl_test_util.hpp"

namespace pnmkv::test {
namespace {

constexpr uint32_t kDim = 128;
constexpr uint32_t kGroup = 4;
constexpr uint64_t kContext = 16384;
constexpr uint32_t kPage = 16;

struct context_fixture {
  synthetic_workload w;
  std::vector<float> keys;
  uint64_t req;
  uint32_t head;
};

context_fixture make_context(uint64_t seed, uint64_t req, uint32_t head,
                             workload_params p = {}) {
  context_fixture c{make_workload(seed, p, kDim, kGroup), {}, req, head};
  c.keys.resize(kContext * kDim);
  c.w.keys(req, 0, head, 0, kContext, c.keys.data());
  return c;
}

std::vector<std::vector<double>> weights_at(const context_fixture& c, uint64_t step) {
  std::vector<float> q(kGroup * kDim);
  c.w.queries(c.req, 0, c.head, step, kContext, q.data());
  return dense_weights(c.keys, kContext, kDim, q, kGroup);
}

// The top n pages of the group by summed dense page mass.
std::vector<uint32_t> top_pages(const std::vector<std::vector<double>>& w, size_t n) {
  std::vector<double> mass(kContext / kPage, 0.0);
  for (const auto& head : w)
    for (uint64_t i = 0; i < kContext; ++i) mass[i / kPage] += head[i];
  std::vector<uint32_t> idx(mass.size());
  std::iota(idx.begin(), idx.end(), 0u);
  std::partial_sort(idx.begin(), idx.begin() + n, idx.end(),
                    [&](uint32_t a, uint32_t b) { return mass[a] > mass[b]; });
  idx.resize(n);
  std::sort(idx.begin(), idx.end());
  return idx;
}

double overlap(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  std::vector<uint32_t> both;
  std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
  return static_cast<double>(both.size()) / static_cast<double>(a.size());
}

TEST(Structure, SinksAndTheRecentWindowTakeLargeShares) {
  workload_params p;
  double sink_sum = 0, recent_sum = 0;
  int n = 0, heavy_sink = 0;
  for (uint32_t s = 0; s < 8; ++s) {
    const uint64_t seed = wl_base_seed() + s;
    SCOPED_TRACE(wl_seed_trace(seed));
    auto c = make_context(seed, s, s % 8);
    for (uint64_t step : {0ull, 17ull, 90ull}) {
      for (const auto& head : weights_at(c, step)) {
        double sink = 0, recent = 0;
        for (uint32_t i = 0; i < p.sink_tokens; ++i) sink += head[i];
        for (uint64_t i = kContext - 256; i < kContext; ++i) recent += head[i];
        // Per token, a sink outweighs the average token by far (some heads, as in real
        // models, look elsewhere).
        heavy_sink += sink / p.sink_tokens > 100.0 / kContext;
        sink_sum += sink;
        recent_sum += recent;
        ++n;
      }
    }
  }
  std::printf("[ measure  ] mean sink mass %.3f, last-256 mass %.3f at %llu tokens\n",
              sink_sum / n, recent_sum / n, static_cast<unsigned long long>(kContext));
  // Published: sinks hold a large share (StreamingLLM); here 4 of 16K tokens.
  EXPECT_GT(sink_sum / n, 0.15);
  EXPECT_GT(heavy_sink, n / 2);
  // The last 256 tokens (1.6% of the context) hold far more than their share.
  EXPECT_GT(recent_sum / n, 4 * 256.0 / kContext);
}

TEST(Structure, ConsecutiveStepsOverlapAndDistantStepsDrift) {
  workload_params p;
  const uint64_t period = p.drift_period_steps;
  double near_sum = 0, far_sum = 0;
  int n = 0;
  for (uint32_t s = 0; s < 3; ++s) {
    const uint64_t seed = wl_base_seed() + 100 + s;
    SCOPED_TRACE(wl_seed_trace(seed));
    auto c = make_context(seed, s, 0);
    for (uint64_t t : {5ull, 40ull}) {
      const auto a = top_pages(weights_at(c, t), 64);
      const auto b = top_pages(weights_at(c, t + 1), 64);
      const auto far = top_pages(weights_at(c, t + 3 * period + period / 2), 64);
      near_sum += overlap(a, b);
      far_sum += overlap(a, far);
      ++n;
    }
  }
  std::printf("[ measure  ] top-64-page overlap: next step %.3f, %llu steps later %.3f\n",
              near_sum / n, static_cast<unsigned long long>(3 * period + period / 2),
              far_sum / n);
  EXPECT_GT(near_sum / n, 0.6);               // steady pages exist
  EXPECT_LT(far_sum / n, 0.5 * near_sum / n);  // the set moves over long horizons
}

TEST(Structure, AnAskedNeedleTakesALargeShareInRespondingHeads) {
  workload_params p;
  p.needle_ask_fraction = 1.0;  // every episode asks, to get many samples
  p.needle_rate_per_mtokens = 120;  // ~2 needles per 16K context
  double responding_sum = 0, silent_sum = 0;
  int responding = 0, silent = 0, dominant = 0;
  for (uint32_t s = 0; s < 10; ++s) {
    const uint64_t seed = wl_base_seed() + 200 + s;
    SCOPED_TRACE(wl_seed_trace(seed));
    auto c = make_context(seed, s, s % 2, p);
    for (uint64_t step = 0; step < 24; step += p.needle_ask_episode_steps) {
      const auto needle = c.w.asked_needle_position(c.req, 0, c.head, step, kContext);
      if (!needle) continue;  // this context happens to hold no needle
      const uint64_t mask = c.w.needle_heads_mask(c.req, 0, c.head, step, kContext);
      const auto w = weights_at(c, step);
      for (uint32_t h = 0; h < kGroup; ++h) {
        const double share = w[h][*needle];
        if (mask >> h & 1) {
          responding_sum += share;
          ++responding;
          // The needle is the single most attended token in most responding heads.
          dominant += std::max_element(w[h].begin(), w[h].end()) - w[h].begin() ==
                      static_cast<long>(*needle);
        } else {
          silent_sum += share;
          ++silent;
        }
      }
    }
  }
  ASSERT_GT(responding, 10);
  std::printf("[ measure  ] needle share: responding heads %.3f (argmax in %d/%d), others %.5f\n",
              responding_sum / responding, dominant, responding,
              silent ? silent_sum / silent : 0.0);
  // Uniform attention would give it 1/16384.
  EXPECT_GT(responding_sum / responding, 0.2);
  EXPECT_GT(dominant, responding / 3);
  if (silent > 0) {
    EXPECT_LT(silent_sum / silent, 0.05);
  }
}

TEST(Structure, ValuesCarryTopicSoOutputsMoveWithAttention) {
  workload_params p;
  double near_sum = 0, far_sum = 0, norm_sum = 0;
  for (uint32_t s = 0; s < 4; ++s) {
    const uint64_t seed = wl_base_seed() + 300 + s;
    SCOPED_TRACE(wl_seed_trace(seed));
    auto c = make_context(seed, s, 0);
    std::vector<float> v(kContext * kDim);
    c.w.values(s, 0, 0, 0, kContext, v.data());
    // Dense outputs of every head of the group.
    auto outputs = [&](uint64_t step) {
      const auto w = weights_at(c, step);
      std::vector<double> o(kGroup * kDim, 0.0);
      for (uint32_t h = 0; h < kGroup; ++h)
        for (uint64_t i = 0; i < kContext; ++i)
          for (uint32_t d = 0; d < kDim; ++d) o[h * kDim + d] += w[h][i] * v[i * kDim + d];
      return o;
    };
    auto dist = [](const std::vector<double>& a, const std::vector<double>& b, uint32_t h) {
      double sq = 0;
      for (uint32_t d = 0; d < kDim; ++d) sq += (a[h * kDim + d] - b[h * kDim + d]) * (a[h * kDim + d] - b[h * kDim + d]);
      return std::sqrt(sq);
    };
    const auto o0 = outputs(10);
    const auto o_near = outputs(11);
    const auto o_far = outputs(10 + 2 * p.drift_period_steps + 16);
    const std::vector<double> zero(kGroup * kDim, 0.0);
    for (uint32_t h = 0; h < kGroup; ++h) {
      near_sum += dist(o_near, o0, h);
      far_sum += dist(o_far, o0, h);
      norm_sum += dist(o0, zero, h);
    }
    // Sinks carry near-zero values (no-op), ordinary tokens do not.
    double sink_sq = 0, other_sq = 0;
    for (uint32_t d = 0; d < kDim; ++d)
      sink_sq += v[d] * v[d], other_sq += v[5000 * kDim + d] * v[5000 * kDim + d];
    EXPECT_LT(sink_sq, 0.1 * other_sq);
  }
  std::printf("[ measure  ] output change relative to output norm: next step %.3f, "
              "far step %.3f\n", near_sum / norm_sum, far_sum / norm_sum);
  EXPECT_GT(far_sum / norm_sum, 0.2);  // attending elsewhere gives a different output
  EXPECT_GT(far_sum, 1.5 * near_sum);  // and the output drifts with the query
}

}  // namespace
}  // namespace pnmkv::test
