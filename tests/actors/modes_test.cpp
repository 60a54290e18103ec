// Policies across modes (issue 5): exact cross-shard selection equals one-device selection
// for every (h, s) of the pool; with the same selection every mode gives the same outputs;
// with a budget covering every page every mode equals dense attention.
#include <gtest/gtest.h>

#include <cmath>

#include "tests/actors/harness.hpp"

namespace pnmkv {
namespace {

struct run_result {
  std::map<std::tuple<uint64_t, uint32_t, uint32_t>, std::vector<uint64_t>> selections;
  std::map<std::tuple<uint64_t, uint32_t, uint32_t>, partial> outputs;
  accuracy_summary accuracy;
  uint64_t digest = 0;
  step_report last_step;
};

run_result run(const model_shape& m, host_engine_config hc, uint32_t devices, uint32_t h,
               sequence_split split, uint64_t seed, uint64_t context, uint32_t steps,
               const std::function<void(harness&, uint32_t)>& before_step = {}) {
  harness hs(m, hc, devices, seed);
  hs.head_groups = h;
  hs.split = split;
  hs.add(1, context, steps);
  hs.add(2, context / 2 + 3, steps);
  hs.prefill();
  run_result out;
  for (uint32_t s = 0; s < steps; ++s) {
    if (before_step) before_step(hs, s);
    hs.step(s);
    if (::testing::Test::HasFatalFailure()) return out;
  }
  for (uint64_t r : {1, 2})
    for (uint32_t layer = 0; layer < hc.live_layers; ++layer)
      for (uint32_t kh = 0; kh < m.kv_heads; ++kh) {
        out.selections[{r, layer, kh}] = hs.host.last_selection(r, layer, kh);
        out.outputs[{r, layer, kh}] = *hs.host.last_output(r, layer, kh);
      }
  out.accuracy = hs.host.accuracy().summary();
  out.digest = hs.host.output_digest();
  out.last_step = hs.host.last_step();
  return out;
}

double max_rel_diff(const partial& a, const partial& b) {
  double worst = 0;
  for (uint32_t g = 0; g < a.group; ++g) {
    double num = 0, den = 0;
    for (uint32_t i = 0; i < a.head_dim; ++i) {
      double d = double(a.o[g * a.head_dim + i]) - double(b.o[g * b.head_dim + i]);
      num += d * d;
      den += double(b.o[g * b.head_dim + i]) * b.o[g * b.head_dim + i];
    }
    worst = std::max(worst, std::sqrt(num / std::max(den, 1e-300)));
  }
  return worst;
}

TEST(modes, exact_cross_shard_selection_equals_one_device) {
  const uint64_t seed = 17;
  auto m = tiny_model(1, 8, 4, 64);
  host_engine_config hc;
  hc.budget_tokens = 256;
  hc.cross_shard = cross_shard_selection::exact;
  hc.verify = false;
  auto one = run(m, hc, 1, 1, sequence_split::contiguous, seed, 6000, 3);
  for (uint32_t pool : {4u, 8u}) {
    for (uint32_t h : {1u, 2u, 4u, 8u}) {
      if (pool % h) continue;
      for (auto split : {sequence_split::contiguous, sequence_split::interleave}) {
        SCOPED_TRACE("pool " + std::to_string(pool) + " h " + std::to_string(h) + " " + to_string(split));
        auto many = run(m, hc, pool, h, split, seed, 6000, 3);
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        for (const auto& [key, sel] : one.selections) EXPECT_EQ(many.selections.at(key), sel);
      }
    }
  }
}

TEST(modes, local_selection_differs_but_stays_within_budget) {
  auto m = tiny_model(1, 2, 4, 64);
  host_engine_config hc;
  hc.budget_tokens = 256;
  hc.cross_shard = cross_shard_selection::local;
  auto local = run(m, hc, 4, 1, sequence_split::contiguous, 5, 8000, 2);
  auto one = run(m, hc, 1, 1, sequence_split::contiguous, 5, 8000, 2);
  size_t differ = 0;
  for (const auto& [key, sel] : local.selections) {
    EXPECT_LE(sel.size(), 256u / 16);
    differ += sel != one.selections.at(key);
  }
  EXPECT_GT(differ, 0u) << "budget/s per shard should not always match the global top";
  EXPECT_GT(local.accuracy.mass_mean, 0.3);
}

TEST(modes, baseline_equals_pnm_kv_bit_for_bit) {
  auto m = tiny_model(2, 4, 4, 64);
  for (uint32_t devices : {1u, 4u}) {
    host_engine_config hc;
    hc.live_layers = 2;
    hc.budget_tokens = 384;
    hc.mode = run_mode::pnm_kv;
    auto pnm = run(m, hc, devices, 0, sequence_split::contiguous, 3, 5000, 3);
    hc.mode = run_mode::baseline;
    auto base = run(m, hc, devices, 0, sequence_split::contiguous, 3, 5000, 3);
    EXPECT_EQ(pnm.selections, base.selections);
    EXPECT_EQ(pnm.digest, base.digest) << "same selection, same merge grouping: same bits";
  }
}

TEST(modes, png_kv_with_steady_pages_from_pnm_kv_selection_gives_the_same_outputs) {
  auto m = tiny_model(1, 2, 4, 64);
  host_engine_config hc;
  hc.budget_tokens = 512;
  hc.verify = false;
  hc.mode = run_mode::pnm_kv;
  auto pnm = run(m, hc, 2, 0, sequence_split::contiguous, 8, 9000, 3);
  hc.mode = run_mode::png_kv;
  hc.steady.warmup_steps = 1000;  // the policy never decides: the test forces the sets
  uint64_t copy_bytes = 0;
  auto png = run(m, hc, 2, 0, sequence_split::contiguous, 8, 9000, 3, [&](harness& h, uint32_t s) {
    if (s == 2) copy_bytes = h.host.last_step().copy_bytes;
    if (s != 1) return;
    // Before step 1: steady = every other page pnm-kv selects at the last step (full pages
    // only; the engine drops the open last page), copied in step 1, attended in step 2.
    for (const auto& [key, sel] : pnm.selections) {
      std::vector<uint64_t> steady;
      for (size_t i = 0; i < sel.size(); i += 2) steady.push_back(sel[i]);
      h.host.force_steady(std::get<0>(key), std::get<1>(key), std::get<2>(key), steady);
    }
  });
  EXPECT_GT(png.last_step.steady_pages, 0u) << "the forced steady sets were not used";
  EXPECT_GT(copy_bytes, 0u) << "steady copies are charged in the step that makes them";
  EXPECT_EQ(png.last_step.copy_bytes, 0u) << "nothing new to copy in the last step";
  for (const auto& [key, sel] : pnm.selections) {
    EXPECT_EQ(png.selections.at(key), sel);
    EXPECT_LT(max_rel_diff(png.outputs.at(key), pnm.outputs.at(key)), 1e-6);
  }
}

TEST(modes, every_mode_equals_dense_with_a_full_budget) {
  auto m = tiny_model(1, 4, 4, 64);
  for (auto mode : {run_mode::baseline, run_mode::pnm_kv, run_mode::png_kv}) {
    SCOPED_TRACE(to_string(mode));
    host_engine_config hc;
    hc.mode = mode;
    hc.budget_tokens = 1 << 16;
    hc.steady.budget_pages = 64;
    hc.steady.warmup_steps = 1;
    hc.steady.reevaluate_every_steps = 1;
    hc.steady.threshold = 0.5;
    auto r = run(m, hc, 4, 2, sequence_split::interleave, 4, 3000, 4);
    EXPECT_LT(r.accuracy.rel_err_max, 1e-5);
    EXPECT_NEAR(r.accuracy.mass_min, 1.0, 1e-5);
  }
}

}  // namespace
}  // namespace pnmkv
