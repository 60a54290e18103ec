// `pnmkv chaos` (issue 13, item 6): seeded fault schedules (transport/chaos_schedule.hpp)
// run on the cluster — embedded, one process per node, or the container cluster (docker/,
// actors/chaos_compose.hpp) — and checked against the invariants of recovery:
//   - every request completed with the outputs of the run without faults (its per-request
//     digest) or failed with a reason; none vanished;
//   - the run returned (a hang is a violation: cluster_run_options::run_timeout_ms);
//   - no node process outlived it (multi-process); no container or network of the trial's
//     cluster is left once it is taken down (compose).
// Each trial is one JSON line (schedule, faults that fired per kind from the fault logs,
// devices lost with their detection time after the first fault that hit them, rebuilds
// with their bytes and times, violations); a summary table groups them by fault kind.
// Trial k runs seed + k: `--seed S --trials 1` replays trial S alone.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "actors/run_report.hpp"
#include "config/config.hpp"
#include "core/status.hpp"
#include "transport/chaos_schedule.hpp"

namespace pnmkv {

struct chaos_options {
  uint64_t seed = 1;
  uint32_t trials = 8;
  bool multiprocess = false;
  bool compose = false;              // the container cluster (docker/cluster.sh), driven from here
  std::string faults = "all";        // transport::parse_chaos_faults
  uint32_t faults_per_trial_max = 2;
  double rate_max = 0.02;
  std::string out_dir;               // per-trial fault logs and chaos.jsonl; "" : a temp dir
  uint64_t trial_timeout_ms = 300000;
  std::string node_binary;           // multi-process: the pnmkv executable
  std::string cluster_script;        // compose: docker/cluster.sh ("" : the source tree's)
};

// A container action of a compose trial (transport/chaos_containers.hpp), as it went: the
// decode step the run had reported when it was issued, and when the fault took effect (the
// docker command returned; UTC ms). done_unix_ms < 0: not injected (why in `error`).
struct chaos_action {
  std::string op;              // cluster.sh fault kind: crash, pause, resume, partition, heal, coordinator
  uint32_t node = 0;
  uint32_t at_step = 0;        // the step it was due at (0: a time after its strike)
  uint64_t step_issued = 0, step_done = 0;
  int64_t issued_unix_ms = -1, done_unix_ms = -1;
  bool ok = false;
  std::string error;
};

struct chaos_trial {
  uint64_t seed = 0;
  transport::chaos_schedule schedule;
  std::vector<std::string> violations;  // empty: the invariants held
  bool ok() const { return violations.empty(); }
  std::string run_error;                // the run failed as a whole (a reason, allowed)
  uint64_t submitted = 0, completed = 0, failed = 0;
  std::vector<std::string> failures;
  std::map<std::string, uint64_t> fired;  // fault-point events by kind (drop, stall, ...)
  // Devices lost: detection (wall, UTC ms) minus the first fault that hit the device, ms
  // (-1: no fault of the schedule hit it first).
  std::vector<device_loss> losses;
  std::vector<double> detect_ms;
  std::vector<shard_rebuild> rebuilds;
  double recovery_stall_ms = 0;
  // Coordinator kills: restarts, and per kill the driver's detection and return, ms.
  uint32_t coordinator_restarts = 0;
  std::vector<double> coordinator_detect_ms, coordinator_recover_ms;
  std::vector<chaos_action> actions;    // compose: what the containers were made to do
  double wall_s = 0;
  std::string to_json() const;  // one line
};

// The invariants, on a trial's outcome, against the run without faults (pure).
std::vector<std::string> chaos_violations(const run_report& clean, const result<run_report>& got);

// Runs the clean reference, then the trials; on_trial sees each as it ends (and may print
// it). An error only for what stops every trial (a bad option, the clean run failing).
result<std::vector<chaos_trial>> run_chaos(const config& base, const chaos_options& o,
                                           const std::function<void(const chaos_trial&)>& on_trial);

// The trials' schedules without running anything (`pnmkv chaos --plan-only`), a text per
// trial: its fault script and, with `compose`, the nodes' script and the container actions.
result<std::vector<std::string>> chaos_plans(const config& base, const chaos_options& o);

// The summary: per fault kind, trials, faults fired, devices lost and detected, detection and
// recovery times (median / max), bytes copied and recomputed, virtual stall, violations.
std::string chaos_summary_table(const std::vector<chaos_trial>& trials);

}  // namespace pnmkv
