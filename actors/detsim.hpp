// Deterministic fault simulation (issue 13, item 7; docs/DESIGN.md §7): the embedded
// cluster (coordinator, GPU host, devices, driver) run on one thread under CAF's test
// coordinator, with a caller-driven in-process fabric, on one virtual clock that CAF's
// timers (deadlines, retries, cluster.device_timeout_ms) and the fabric's held frames
// (delay, stall) share. A seed fixes everything: which ready actor runs or which fabric
// event is delivered next, when virtual time jumps ahead (a slow node), and the fault
// schedule, drawn from the seed in the faults.script grammar (transport/faults.hpp) and
// injected by the ordinary fault points. The same seed gives the same run, event for event
// (trace_hash).
//
// Invariants checked per seed against the clean run (no faults) of the same config: every
// request completed or failed with a reason; each completed request's output digest equals
// the clean run's (report field request_digests); every device reported lost was one the
// schedule struck; no leak (every actor quit and every fabric endpoint was released after
// the shutdown); the run ended within its event and virtual-time limits. --strict adds: with
// fewer devices lost than cluster.replication, no request fails.
//
// No CAF in this header.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "actors/run_report.hpp"
#include "config/config.hpp"
#include "core/status.hpp"

namespace pnmkv {

// The kinds of fault a seed's schedule may draw from.
enum detsim_fault_class : uint32_t {
  detsim_crash = 1u << 0,      // a device dies (at a decode step, or during the prefill)
  detsim_hang = 1u << 1,       // a device stalls for 0.2-3 s (cluster.device_timeout_ms)
  detsim_partition = 1u << 2,  // a device cut off for a range of decode steps
  detsim_loss = 1u << 3,       // messages dropped, duplicated, delayed, corrupted at rates
  // Drawn by default too (`pnmkv detsim --basic` leaves them out: the schedules of before
  // they held; they found bugs 1-10 of the README's "Deterministic fault simulation").
  detsim_append_loss = 1u << 4,   // loss rules may also hit decode appends (msg=token_append, or any kind)
  detsim_host_crash = 1u << 5,    // the GPU host's own endpoint dies
  detsim_backpressure = 1u << 6,  // fabric.inbox_depth = 8: full inboxes refuse sends
  // Not a fault: the seed also draws the configuration's variant (run.mode pnm-kv, png-kv or
  // baseline; cluster.sequence_split contiguous or interleave), clean run included.
  detsim_variants = 1u << 7,
  // Recovery after a loss (cluster.rereplicate, cluster.recompute) drawn on or off per
  // seed; without it both are off.
  detsim_rebuilds = 1u << 8,
};
inline constexpr uint32_t detsim_basic_classes =
    detsim_crash | detsim_hang | detsim_partition | detsim_loss | detsim_variants;
inline constexpr uint32_t detsim_all_classes =
    detsim_basic_classes | detsim_append_loss | detsim_host_crash | detsim_backpressure | detsim_rebuilds;
inline constexpr uint32_t detsim_default_classes = detsim_all_classes;

// The small configuration the sweep runs (applied before the caller's --set overrides):
// 2 requests of 512 tokens on 4 devices with replication 2, 6 decode steps, retries and
// cluster.device_timeout_ms on, re-replication and recompute off (detsim_rebuilds draws them
// per seed).
std::vector<std::string> detsim_base_sets();

// A seed's fault schedule: faults.script rules and further --set overrides.
struct detsim_schedule {
  std::vector<std::string> rules;
  std::vector<std::string> sets;
  // Devices a crash, hang or partition targets (run_detsim: of every rule in effect, the
  // config's own included).
  std::vector<uint32_t> struck_devices;
  std::string script() const;            // the rules joined with "; "
};
// Draws the schedule of `seed` over `devices` (node ids) for a run of `steps` decode steps.
detsim_schedule detsim_draw_schedule(uint64_t seed, const std::vector<uint32_t>& devices, uint32_t steps,
                                     uint32_t classes);

// The seed's variant of the configuration (detsim_variants, detsim_rebuilds): --set
// overrides, none of a key in `fixed_keys` (the caller chose those).
std::vector<std::string> detsim_draw_variant(uint64_t seed, uint32_t classes,
                                             const std::vector<std::string>& fixed_keys = {});

struct detsim_run;

struct detsim_options {
  uint64_t seed = 1;
  // Applied to the config first, in the clean run too (detsim_draw_variant's).
  std::vector<std::string> sets;
  // false: no schedule is drawn; the config's own faults.* apply (none: the clean run). The
  // seed still picks the interleaving.
  bool faults = true;
  // The clean run: no schedule, and the config's own faults.* cleared.
  bool clean = false;
  uint32_t classes = detsim_default_classes;
  uint64_t max_events = 5'000'000;           // scheduler picks, past which the run is stuck
  uint64_t virtual_limit_ms = 30 * 60 * 1000;  // virtual time, likewise
  // Per pick, the chance that virtual time first jumps ahead by up to jitter_max_us (a
  // node that took a while), so timers race with messages.
  double jitter_prob = 0.01;
  uint32_t jitter_max_us = 3000;
  // The nodes' own log lines ("cluster" and "transport" loggers) off during the run.
  bool quiet = false;
  // Called once the run's configuration is known, before anything runs (its seed, variant
  // and schedule): a run that crashes the process has said what it was.
  std::function<void(const detsim_run&)> on_start;
};

struct detsim_run {
  uint64_t seed = 0;
  std::vector<std::string> variant;  // detsim_options::sets
  detsim_schedule schedule;
  bool finished = false;  // the driver delivered its report
  bool ok = false;        // the run's own verdict
  run_report report;
  std::string error;  // why it did not finish
  uint64_t events = 0, timer_jumps = 0;
  double virtual_ms = 0;        // virtual time when the report was delivered
  uint64_t trace_hash = 0;      // every pick and jump, in order
  uint64_t actors_left = 0;     // still running once nothing was left to do
  std::vector<uint32_t> endpoints_left;  // nodes whose fabric endpoint was not released by then
};

// One seed's run of the cluster configured by `cfg` (detsim_base_sets() is not applied
// here: the caller's config is used as is, plus the schedule's rules and sets).
result<detsim_run> run_detsim(const config& cfg, const detsim_options& opts);

// The invariants of `run` against `clean` (a run with faults off); empty when all hold.
std::vector<std::string> detsim_violations(const detsim_run& run, const detsim_run& clean, uint32_t replication,
                                           bool strict);

// The clean run for a seed's options (same variant and interleaving seed, no faults); an
// error when it does not complete every request (there is nothing to compare with).
result<detsim_run> detsim_clean_run(const config& cfg, const detsim_options& seed_opts);

struct detsim_sweep_options {
  uint64_t first_seed = 1, last_seed = 1000;  // inclusive
  bool strict = false;
  uint32_t classes = detsim_default_classes;
  // How to replay one seed alone, for the failure message (e.g. "pnmkv detsim --seed {}").
  std::string replay_hint;
  std::function<void(const std::string&)> log;  // one line per failing seed (stderr if empty)
  bool stop_at_first = false;
  bool quiet = true;  // detsim_options::quiet for every run
  std::vector<std::string> fixed_keys;  // keys the variant leaves alone (detsim_draw_variant)
  std::function<void(const detsim_run&)> on_start;  // detsim_options::on_start of every seed's run
};
struct detsim_sweep_result {
  uint64_t seeds = 0;
  std::vector<std::pair<uint64_t, std::vector<std::string>>> failed;  // seed, violations
  uint64_t events = 0, devices_lost = 0, requests_failed = 0, faults_injected = 0;
  double wall_s = 0;
};
// The clean run, then every seed; invariant failures are logged with the seed, its
// schedule and the replay command.
result<detsim_sweep_result> detsim_sweep(const config& cfg, const detsim_sweep_options& opts);

// "seed N: <schedule>" and the replay line, as the sweep prints them.
std::string detsim_failure_text(const detsim_run& run, const std::vector<std::string>& violations,
                                const std::string& replay_hint);

}  // namespace pnmkv
