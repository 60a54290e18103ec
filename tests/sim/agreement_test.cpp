// The simulator against the live cluster (DESIGN.md §5: "on the same config the two must
// agree closely"): the same small config through run_embedded (virtual time) and through
// the simulator gives step time, tokens/s and energy per token within 2%, in every mode the
// live cluster implements (a mode it refuses with errc::unsupported is skipped, saying so).
// The simulator runs exact (sim.step_reuse_steps = 1) and with layer-wide baseline rounds
// (sim.baseline_overlap = false), which is how the live host engine composes a layer.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "sim/simulator.hpp"

namespace pnmkv {
namespace {

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

std::vector<std::string> small(std::vector<std::string> extra) {
  std::vector<std::string> sets = {"workload.context_tokens=32768", "run.steps=4",
                                   "selection.budget_tokens=512", "run.step_timeout_ms=60000",
                                   "sim.step_reuse_steps=1", "sim.baseline_overlap=false"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return sets;
}

struct pair_result {
  bool skipped = false;
  run_report live;
  sim_result sim;
};

pair_result run_both(const std::vector<std::string>& sets) {
  pair_result out;
  auto cfg = load_config(default_file, sets);
  EXPECT_TRUE(cfg) << cfg.error().to_string();
  if (!cfg) return out;
  auto live = run_embedded(*cfg, {});
  if (!live && live.error().code() == errc::unsupported) {
    out.skipped = true;
    return out;
  }
  EXPECT_TRUE(live) << live.error().to_string();
  if (!live) return out;
  EXPECT_EQ(live->failed, 0u);
  out.live = *live;
  auto setup = make_sim_setup(*cfg);
  EXPECT_TRUE(setup) << setup.error().to_string();
  if (!setup) return out;
  auto sim = simulate(*setup);
  EXPECT_TRUE(sim) << sim.error().to_string();
  if (sim) out.sim = *sim;
  return out;
}

double rel(double live, double sim) { return std::abs(sim - live) / std::abs(live); }

void expect_agree(const pair_result& r, const char* what, bool energy = true) {
  SCOPED_TRACE(what);
  EXPECT_LT(rel(r.live.virtual_step_ms_mean, r.sim.step_ms), 0.02)
      << "live " << r.live.virtual_step_ms_mean << " ms, sim " << r.sim.step_ms << " ms";
  EXPECT_LT(rel(r.live.virtual_tokens_per_s, r.sim.tokens_per_s), 0.02)
      << "live " << r.live.virtual_tokens_per_s << ", sim " << r.sim.tokens_per_s;
  if (energy) {
    EXPECT_LT(rel(r.live.virtual_energy_j_per_token, r.sim.energy_j_per_token), 0.02)
        << "live " << r.live.virtual_energy_j_per_token << " J, sim " << r.sim.energy_j_per_token << " J";
  }
}

TEST(sim_agreement, pnm_kv_one_shard_and_two_shards_local_and_exact) {
  // 4 devices: h = 4, s = 1. 16 devices: h = 8, s = 2, both cross-shard rules.
  for (const auto& extra : std::vector<std::vector<std::string>>{
           {"run.mode=pnm-kv", "cluster.pnm_devices=4"},
           {"run.mode=pnm-kv", "cluster.pnm_devices=16", "selection.cross_shard=local"},
           {"run.mode=pnm-kv", "cluster.pnm_devices=16", "selection.cross_shard=exact"}}) {
    std::string name;
    for (const auto& e : extra) name += e + " ";
    auto r = run_both(small(extra));
    ASSERT_FALSE(r.skipped) << "the live cluster implements pnm-kv";
    expect_agree(r, name.c_str());
    // The bytes follow the same formulas: equal, not just close — except where exact
    // selection puts the pages (the simulator spreads them evenly, 1 row per page apart).
    EXPECT_EQ(double(r.live.virtual_link_bytes_per_step), r.sim.link_bytes_per_step) << name;
    EXPECT_NEAR(double(r.live.virtual_device_bytes_per_step), r.sim.device_bytes_per_step,
                r.sim.device_bytes_per_step * 1e-3) << name;
  }
}

TEST(sim_agreement, baseline) {
  auto r = run_both(small({"run.mode=baseline", "cluster.pnm_devices=4"}));
  if (r.skipped) GTEST_SKIP() << "run_embedded returns errc::unsupported for run.mode=baseline";
  // Energy too: both charge the passive expanders' static power and prices in baseline.
  expect_agree(r, "baseline");
  EXPECT_EQ(double(r.live.virtual_link_bytes_per_step), r.sim.link_bytes_per_step);
  // Max batch from GPU memory: the same formula (schedulers/gpu_memory.hpp).
  EXPECT_EQ(r.live.max_batch_gpu_memory, r.sim.batch_limit_gpu_memory);
}

TEST(sim_agreement, png_kv_without_steady_pages_equals_its_composition) {
  // The steady policy never fires (warm-up past the run): png-kv is pnm-kv plus the empty
  // steady partial in every merge, in both.
  auto r = run_both(small({"run.mode=png-kv", "png.warmup_steps=1000", "sim.steady_hit_fraction=0",
                           "sim.steady_set_fraction=0"}));
  if (r.skipped) GTEST_SKIP() << "run_embedded returns errc::unsupported for run.mode=png-kv";
  expect_agree(r, "png-kv, no steady pages");
  EXPECT_EQ(double(r.live.virtual_link_bytes_per_step), r.sim.link_bytes_per_step);
}

TEST(sim_agreement, png_kv_with_the_live_runs_own_calibration) {
  // A live run with steady pages writes its calibration (`pnmkv run --calibration-out`:
  // steady hit rate, set size, churn, ...); the simulator reads that file and agrees.
  const std::vector<std::string> live_sets = small({"run.mode=png-kv", "run.steps=16", "png.warmup_steps=2",
                                                    "png.reevaluate_every_steps=4", "png.window_steps=4",
                                                    "png.threshold=0.5"});
  auto cfg = load_config(default_file, live_sets);
  ASSERT_TRUE(cfg);
  auto live = run_embedded(*cfg, {});
  if (!live && live.error().code() == errc::unsupported)
    GTEST_SKIP() << "run_embedded returns errc::unsupported for run.mode=png-kv";
  ASSERT_TRUE(live) << live.error().to_string();
  ASSERT_GT(live->steady_hit_rate, 0.0) << "the steady policy found no steady pages";
  const std::string file =
      (std::filesystem::temp_directory_path() / "pnmkv_sim_agreement_calibration.json").string();
  std::ofstream(file) << live->calibration_json();
  auto sets = live_sets;
  sets.push_back("sim.calibration_file=" + file);
  auto scfg = load_config(default_file, sets);
  ASSERT_TRUE(scfg);
  auto setup = make_sim_setup(*scfg);
  ASSERT_TRUE(setup) << setup.error().to_string();
  EXPECT_EQ((*setup)->cal.file, file);
  EXPECT_NEAR((*setup)->cal.steady_hit_fraction.value, live->steady_hit_rate, 1e-9);
  auto sim = simulate(*setup);
  ASSERT_TRUE(sim) << sim.error().to_string();
  pair_result r;
  r.live = *live;
  r.sim = *sim;
  expect_agree(r, "png-kv, calibrated by the live run's --calibration-out");
}

}  // namespace
}  // namespace pnmkv
