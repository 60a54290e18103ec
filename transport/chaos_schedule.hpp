// Seeded fault schedules for `pnmkv chaos` (issue 13): a trial's faults drawn from a seed, as
// a fault script of this folder's grammar (transport/faults.hpp), so the same seed replays
// the same schedule — and, the fault points being seeded too, the same faults. Pure: no
// CAF, no I/O; the runner (actors/chaos.hpp) runs clusters on the scripts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv::transport {

// What a trial may inject. Node-level faults pick a device; rates apply to every message.
enum class chaos_fault : uint8_t {
  crash,      // the device dies at a decode step (crash)
  hang,       // the device stops receiving for a while, then resumes (stall)
  partition,  // the device is cut off from every other node for some steps, then heals
  drop,       // messages dropped at a rate (retried: run.retry_after_ms)
  duplicate,  // messages delivered twice at a rate
  corrupt,    // messages with bit flips at a rate (refused by validation, then retried)
  delay,      // messages delayed at a rate
  slow_link,  // every message a device sends is delayed by a few ms
  coordinator_kill,  // the coordinator process is killed at a step and restarted from its
                     // journal (multi-process and container clusters only)
};
inline constexpr size_t chaos_fault_count = 9;
// crash, hang, partition, drop, duplicate, corrupt, delay, slow-link, coordinator-kill
const char* to_string(chaos_fault f);
// A comma-separated list of the names above ("all": every one the cluster can take).
// coordinator-kill needs a coordinator process (`multiprocess`: a launcher's, or the container
// cluster's): named without one it is an
// error saying so, and "all" leaves it out (so an embedded sweep's seeds draw as before).
// Unknown names are errors listing the allowed ones.
result<std::vector<chaos_fault>> parse_chaos_faults(const std::string& csv, bool multiprocess = false);

struct chaos_params {
  std::vector<uint32_t> devices;        // node ids a node-level fault may hit
  uint32_t steps = 16;                  // decode steps of a run (faults land in 1..steps-1)
  std::vector<chaos_fault> kinds;       // drawn from, uniformly
  uint32_t faults_per_trial_max = 2;    // 1..this many faults per trial
  double rate_max = 0.02;               // message faults: probability in (0, rate_max]
  uint32_t hang_ms_max = 3000;          // hang: 200..this many ms
  uint32_t partition_steps_max = 8;     // partition: 1..this many steps
};

struct chaos_event {
  chaos_fault kind = chaos_fault::crash;
  int64_t node = -1;        // the device hit (-1: every message, a rate)
  uint32_t step = 0;        // first decode step it applies to
  uint32_t step_end = 0;    // partition: last step (inclusive)
  uint32_t ms = 0;          // hang, delay, slow link
  double probability = 1;   // message faults
  std::string rule;         // the fault-script rule
};

struct chaos_schedule {
  uint64_t seed = 0;
  std::vector<chaos_event> events;
  std::string script() const;  // the rules joined by "; "
};

// The schedule of trial `seed`: a pure function of (params, seed), on every platform
// (std::mt19937_64, mapped to ranges by modulo — not the standard distributions, whose
// algorithms the standard leaves to each library).
result<chaos_schedule> draw_chaos_schedule(const chaos_params& p, uint64_t seed);

}  // namespace pnmkv::transport
