// Sub-batch overlap (run.micro_batches, schedulers/step_timeline.hpp schedule_micro_batches):
// the pipeline over (layer, micro-batch) on the GPU and the device pool, the step model and
// the simulator that use it, the live cluster that issues micro-batches interleaved, and the
// configuration that refuses what it cannot run. No timing is measured here: every figure is
// virtual time.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "config/spec.hpp"
#include "schedulers/step_timeline.hpp"
#include "sim/simulator.hpp"

namespace pnmkv {
namespace {

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

micro_batch_costs random_costs(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  micro_batch_costs c;
  c.dense_ns = 1e3 + 1e6 * u(rng);
  c.overlap_ns = u(rng) < 0.5 ? 0 : 1e5 * u(rng);
  c.device_ns = u(rng) < 0.1 ? 0 : 2e6 * u(rng);
  c.merge_ns = 1e4 * u(rng);
  return c;
}

TEST(micro_batch_schedule, one_micro_batch_is_the_serial_layer) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    const micro_batch_costs c = random_costs(rng);
    const uint32_t layers = 1 + uint32_t(rng() % 130);
    const micro_batch_schedule s = schedule_micro_batches({c}, layers);
    // dense + max(device, overlap) + merge per layer, as end_of_layer composes a layer.
    const double layer = c.dense_ns + std::max(c.device_ns, c.overlap_ns) + c.merge_ns;
    EXPECT_NEAR(s.time_ns, layers * layer, 1e-9 * layers * layer);
    EXPECT_NEAR(s.overlap_ns(), 0.0, 1e-9 * s.serial_ns);
  }
}

TEST(micro_batch_schedule, bounded_by_the_serial_sum_and_the_busier_resource) {
  std::mt19937_64 rng(12);
  for (int trial = 0; trial < 500; ++trial) {
    const uint32_t M = 2 + uint32_t(rng() % 4);
    std::vector<micro_batch_costs> mb;
    for (uint32_t k = 0; k < M; ++k) mb.push_back(random_costs(rng));
    const uint32_t layers = 1 + uint32_t(rng() % 130);
    const micro_batch_schedule s = schedule_micro_batches(mb, layers);
    const double tol = 1e-9 * s.serial_ns;
    EXPECT_LE(s.time_ns, s.serial_ns + tol);
    EXPECT_GE(s.time_ns + tol, s.gpu_busy_ns);
    EXPECT_GE(s.time_ns + tol, s.device_busy_ns);
    // Data dependencies: each micro-batch's own chain of layers is never shortened.
    for (const micro_batch_costs& c : mb) EXPECT_GE(s.time_ns + tol, layers * c.serial_ns());
    EXPECT_GE(s.gpu_idle_ns(), -tol);
    EXPECT_GE(s.device_idle_ns(), -tol);
  }
}

TEST(micro_batch_schedule, balanced_micro_batches_hide_the_smaller_resource) {
  // Two equal micro-batches, GPU work G per layer each, device work D < G: in the steady
  // state the device phases hide behind the other micro-batch's dense layers, so the step
  // approaches the GPU's total (the fill and drain of one device phase aside).
  const micro_batch_costs c{1000.0, 0.0, 600.0, 0.0};
  const uint32_t layers = 100;
  const micro_batch_schedule s = schedule_micro_batches({c, c}, layers);
  EXPECT_NEAR(s.serial_ns, 2.0 * layers * 1600.0, 1e-6);
  EXPECT_LE(s.time_ns, s.gpu_busy_ns + c.device_ns + 1e-6);
  EXPECT_GT(s.overlap_ns(), 0.3 * s.serial_ns);
}

TEST(micro_batch_schedule, requests_are_dealt_evenly_over_pools) {
  const std::vector<uint32_t> pools{1, 0, 1, 0, 0, 1};
  const std::vector<uint32_t> of = micro_batch_of(pools, 2);
  // Sorted by pool (stable): pool 0 = requests 1, 3, 4; pool 1 = 0, 2, 5; dealt 0, 1, 0, 1, ...
  EXPECT_EQ(of, (std::vector<uint32_t>{1, 0, 0, 1, 0, 1}));
  // More micro-batches than requests: one request each.
  EXPECT_EQ(effective_micro_batches(4, 2), 2u);
  EXPECT_EQ(micro_batch_of({0, 0}, 4), (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(effective_micro_batches(3, 0), 1u);
}

// Flat search: live and sim agree to rounding on flat's work (exact-int8's rescored pages are
// a calibrated ratio in the simulator).
// Lookahead off: it does not combine with micro-batches (selection.lookahead = auto turns it
// off at 2 or more), so one micro-batch is compared with several at the same selection.
std::vector<std::string> small(std::vector<std::string> extra) {
  std::vector<std::string> sets = {"workload.context_tokens=32768", "run.steps=3", "selection.budget_tokens=512",
                                   "workload.batch=4", "sim.step_reuse_steps=1", "selection.search=flat",
                                   "selection.lookahead=false"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return sets;
}

sim_result simulate_with(const std::vector<std::string>& sets) {
  auto cfg = load_config(default_file, sets);
  EXPECT_TRUE(cfg) << cfg.error().to_string();
  auto setup = make_sim_setup(*cfg);
  EXPECT_TRUE(setup) << setup.error().to_string();
  auto sim = simulate(*setup);
  EXPECT_TRUE(sim) << sim.error().to_string();
  return *sim;
}

TEST(micro_batch_sim, step_between_the_busier_resource_and_the_serial_sum) {
  for (const char* mode : {"run.mode=pnm-kv", "run.mode=png-kv"}) {
    SCOPED_TRACE(mode);
    const sim_result one = simulate_with(small({mode, "run.micro_batches=1"}));
    const sim_result two = simulate_with(small({mode, "run.micro_batches=2"}));
    EXPECT_EQ(one.micro_batches, 1u);
    EXPECT_EQ(one.micro_batch_overlap_ms, 0.0);
    EXPECT_EQ(two.micro_batches, 2u);
    const auto& b = two.breakdown_ms;
    const double tol = 1e-9 * two.step_ms;
    // The breakdown still sums to the step.
    EXPECT_NEAR(b.sum(), two.step_ms, tol);
    const double layers_ms = two.step_ms - b.lm_head_ns - b.copy_ns;
    EXPECT_LE(layers_ms, two.micro_batch_serial_ms + tol);
    EXPECT_NEAR(two.micro_batch_serial_ms - two.micro_batch_overlap_ms, layers_ms, tol);
    EXPECT_GT(two.micro_batch_overlap_ms, 0.0);
    // The GPU's own work is never hidden.
    EXPECT_GE(layers_ms + tol, b.gpu_dense_ns + b.allreduce_ns + b.gpu_attention_ns + b.merge_ns);
    // Bytes and work are the batch's, however it is cut.
    EXPECT_DOUBLE_EQ(two.device_bytes_per_step, one.device_bytes_per_step);
  }
}

TEST(micro_batch_sim, more_micro_batches_than_requests_use_one_per_request) {
  const sim_result four = simulate_with(small({"workload.batch=2", "run.micro_batches=4"}));
  const sim_result two = simulate_with(small({"workload.batch=2", "run.micro_batches=2"}));
  EXPECT_EQ(four.micro_batches, 2u);
  EXPECT_EQ(four.step_ms, two.step_ms);
  const sim_result alone_4 = simulate_with(small({"workload.batch=1", "run.micro_batches=4"}));
  const sim_result alone_1 = simulate_with(small({"workload.batch=1", "run.micro_batches=1"}));
  EXPECT_EQ(alone_4.step_ms, alone_1.step_ms);
  EXPECT_EQ(alone_4.micro_batches, 1u);
}

TEST(micro_batch_config, bad_values_are_refused_naming_the_key) {
  for (const char* bad : {"run.micro_batches=0", "run.micro_batches=17"}) {
    auto cfg = load_config(default_file, {bad});
    ASSERT_FALSE(cfg) << bad;
    EXPECT_NE(cfg.error().to_string().find("run.micro_batches"), std::string::npos) << cfg.error().to_string();
  }
  for (const char* mode : {"run.mode=baseline", "run.mode=gpu-only"}) {
    auto cfg = load_config(default_file, {mode, "run.micro_batches=2"});
    ASSERT_TRUE(cfg) << cfg.error().to_string();
    auto spec = resolve_run_spec(*cfg);
    ASSERT_FALSE(spec) << mode;
    EXPECT_NE(spec.error().to_string().find("run.micro_batches"), std::string::npos);
    EXPECT_NE(spec.error().to_string().find("pnm-kv or png-kv"), std::string::npos);
  }
}

// The live cluster: micro-batches change when work is issued and how the step is charged,
// never the arithmetic: every request's digest is the same. The virtual step agrees with
// the simulator's as micro_batches = 1 does (schedulers/step_timeline.hpp on both sides).
TEST(micro_batch_live, digests_unchanged_and_the_step_agrees_with_the_simulator) {
  for (const char* mode : {"run.mode=pnm-kv", "run.mode=png-kv"}) {
    SCOPED_TRACE(mode);
    std::vector<std::string> base = small({mode, "sim.baseline_overlap=false"});
    auto cfg1 = load_config(default_file, base);
    ASSERT_TRUE(cfg1);
    std::vector<std::string> two_sets = base;
    two_sets.push_back("run.micro_batches=2");
    auto cfg2 = load_config(default_file, two_sets);
    ASSERT_TRUE(cfg2);
    auto one = run_embedded(*cfg1, {});
    auto two = run_embedded(*cfg2, {});
    ASSERT_TRUE(one) << one.error().to_string();
    ASSERT_TRUE(two) << two.error().to_string();
    EXPECT_EQ(one->failed, 0u);
    EXPECT_EQ(two->failed, 0u);
    EXPECT_EQ(one->output_digest, two->output_digest);
    EXPECT_EQ(one->request_digests, two->request_digests);
    EXPECT_EQ(one->micro_batches, 1u);
    EXPECT_EQ(two->micro_batches, 2u);
    EXPECT_GT(two->micro_batch_overlap_ms, 0.0);
    EXPECT_EQ(two->virtual_device_bytes_per_step, one->virtual_device_bytes_per_step);
    const double tol = 1e-9 * two->virtual_step_ms_mean;
    const double layers_ms = two->virtual_step_ms_mean - two->breakdown_lm_head_ms - two->breakdown_copy_ms;
    EXPECT_LE(layers_ms, two->micro_batch_serial_ms + tol);
    EXPECT_NEAR(two->breakdown_dense_ms + two->breakdown_link_ms + two->breakdown_device_ms +
                    two->breakdown_gpu_attention_ms + two->breakdown_merge_ms,
                layers_ms, 1e-6 * layers_ms);
    if (std::string(mode) == "run.mode=pnm-kv") {  // no steady pages: nothing calibrated
      const sim_result sim = simulate_with(two_sets);
      EXPECT_NEAR(two->virtual_step_ms_mean, sim.step_ms, sim.step_ms * 1e-9);
      EXPECT_NEAR(two->micro_batch_overlap_ms, sim.micro_batch_overlap_ms, sim.step_ms * 1e-9);
    }
  }
}

}  // namespace
}  // namespace pnmkv
