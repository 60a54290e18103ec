// `pnmkv chaos` (actors/chaos.hpp): the invariants catch what they claim to (a changed
// output, a vanished request, a failure without a reason, a hang), and seeded trials on
// the small chaos cluster — embedded and one process per node — keep them: every request
// completes with its clean outputs or fails with a reason, no process is left, and faults
// did hit (devices lost and detected, copies rebuilt).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "actors/chaos.hpp"
#include "tests/cluster/processes.hpp"

namespace pnmkv {
namespace {

namespace fs = std::filesystem;
const std::string chaos_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/chaos.yaml";

run_report two_done() {
  run_report r;
  r.submitted = 2;
  r.completed = 2;
  r.request_digests = {{1, 0x1111}, {2, 0x2222}};
  return r;
}

TEST(chaos, the_invariants_catch_a_changed_output_a_vanished_request_a_silent_failure_and_a_hang) {
  const run_report clean = two_done();
  EXPECT_TRUE(chaos_violations(clean, clean).empty());
  run_report changed = clean;
  changed.request_digests[1].second = 0x3333;
  auto v = chaos_violations(clean, changed);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_NE(v[0].find("request 2's outputs differ"), std::string::npos) << v[0];
  run_report vanished = clean;
  vanished.completed = 1;
  vanished.request_digests.pop_back();
  EXPECT_FALSE(chaos_violations(clean, vanished).empty());
  run_report failed = clean;  // request 2 failed, with a reason: allowed
  failed.completed = 1;
  failed.failed = 1;
  failed.request_digests.pop_back();
  failed.failures = {"request 2: device 101 went down (killed): no copy left"};
  EXPECT_TRUE(chaos_violations(clean, failed).empty());
  failed.failures = {""};
  EXPECT_FALSE(chaos_violations(clean, failed).empty());
  // The run's own failure is every request's reason; a request with none is not.
  run_report run_failed = clean;
  run_failed.completed = 0;
  run_failed.failed = 2;
  run_failed.request_digests.clear();
  run_failed.failures = {"run: the GPU host went down: the coordinator lost its link"};
  EXPECT_TRUE(chaos_violations(clean, run_failed).empty());
  run_failed.failures = {"request 1: device 101 went down (killed): no copy left"};
  EXPECT_FALSE(chaos_violations(clean, run_failed).empty());
  EXPECT_FALSE(chaos_violations(clean, result<run_report>(status{errc::timeout, "past 300000 ms"})).empty());
  EXPECT_TRUE(chaos_violations(clean, result<run_report>(status{errc::peer_down, "the GPU host went down"})).empty());
}

config small(std::vector<std::string> sets) {
  sets.push_back("run.steps=12");
  auto c = load_config(chaos_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  return *c;
}

void expect_faults_bit(const std::vector<chaos_trial>& trials, uint64_t trial_timeout_ms) {
  uint64_t lost = 0, rebuilt = 0, fired = 0;
  for (const auto& t : trials) {
    EXPECT_TRUE(t.ok()) << "seed " << t.seed << ": " << t.schedule.script() << ": " << t.violations.front();
    EXPECT_EQ(t.completed + t.failed, t.submitted) << "seed " << t.seed;
    lost += t.losses.size();
    for (const auto& b : t.rebuilds) rebuilt += b.outcome == "done";
    for (const auto& [k, n] : t.fired) fired += n;
    // Each loss: no fault hit the device first (-1), or detected after it, within the trial.
    ASSERT_EQ(t.detect_ms.size(), t.losses.size());
    for (double ms : t.detect_ms)
      EXPECT_TRUE(ms == -1.0 || (ms >= 0 && ms <= double(trial_timeout_ms))) << "seed " << t.seed << ": " << ms;
  }
  EXPECT_GT(fired, 0u);
  EXPECT_GT(lost, 0u) << "no device was lost in any trial";
  EXPECT_GT(rebuilt, 0u) << "no copy was rebuilt in any trial";
}

TEST(chaos, seeded_trials_on_the_embedded_cluster_keep_the_invariants) {
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-chaos-test-" + std::to_string(getpid()));
  chaos_options o;
  o.seed = 1;
  o.trials = 10;
  o.faults = "crash,hang,partition,drop,duplicate,corrupt";
  o.out_dir = dir.string();
  o.trial_timeout_ms = 120000;
  auto trials = run_chaos(small({}), o, {});
  ASSERT_TRUE(trials) << trials.error().to_string();
  ASSERT_EQ(trials->size(), 10u);
  expect_faults_bit(*trials, o.trial_timeout_ms);
  // One JSON line per trial; the same seed draws the same schedule again.
  std::ifstream in(dir / "chaos.jsonl");
  size_t lines = 0;
  for (std::string l; std::getline(in, l);) ++lines;
  EXPECT_EQ(lines, 10u);
  o.seed = trials->at(3).seed;
  o.trials = 1;
  auto again = run_chaos(small({}), o, {});
  ASSERT_TRUE(again) << again.error().to_string();
  EXPECT_EQ(again->front().schedule.script(), trials->at(3).schedule.script());
  EXPECT_FALSE(chaos_summary_table(*trials).empty());
  fs::remove_all(dir);
}

TEST(chaos, seeded_trials_on_a_multiprocess_cluster_keep_the_invariants_and_leave_no_process) {
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-chaos-mp-" + std::to_string(getpid()));
  chaos_options o;
  o.seed = 7;
  o.trials = 3;
  o.multiprocess = true;
  o.node_binary = PNMKV_BINARY;
  o.faults = "crash,hang,coordinator-kill";
  o.faults_per_trial_max = 2;
  o.out_dir = dir.string();
  o.trial_timeout_ms = 120000;
  auto trials = run_chaos(small({}), o, {});
  ASSERT_TRUE(trials) << trials.error().to_string();
  expect_faults_bit(*trials, o.trial_timeout_ms);
  // Every coordinator kill drawn was a restart from the journal, noticed and rejoined within
  // the trial; at least one of these seeds draws one.
  uint32_t drawn = 0, restarts = 0;
  for (const auto& t : *trials) {
    uint32_t kills = 0;
    for (const auto& e : t.schedule.events) kills += e.kind == transport::chaos_fault::coordinator_kill;
    drawn += kills;
    restarts += t.coordinator_restarts;
    EXPECT_LE(t.coordinator_restarts, kills) << "seed " << t.seed;
    EXPECT_EQ(t.coordinator_recover_ms.size(), t.coordinator_restarts) << "seed " << t.seed;
    for (double ms : t.coordinator_recover_ms) EXPECT_TRUE(ms >= 0 && ms <= double(o.trial_timeout_ms)) << ms;
  }
  EXPECT_GT(drawn, 0u) << "these seeds should draw a coordinator kill";
  EXPECT_GT(restarts, 0u) << "no coordinator kill landed before its run ended";
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pnmkv
