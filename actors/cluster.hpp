// Running a whole cluster: the embedded mode (every actor in one process over the
// in-process fabric — the main job) and the multi-process mode (one `pnmkv node` process
// per node over UCX, spawned and reaped here). Both return the same report. No CAF here.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "actors/run_report.hpp"
#include "config/config.hpp"
#include "core/status.hpp"
#include "schedulers/timeline_trace.hpp"

namespace pnmkv {

struct cluster_run_options {
  // Called with ("prefill"|"decode", done, total) as the run advances.
  std::function<void(const std::string&, uint64_t, uint64_t)> on_progress;
  // Multi-process and attached runs with a journal: called when the driver loses the
  // coordinator (false) and when it has joined the restarted one (true). `pnmkv chaos
  // --compose` times coordinator kills with it (the launcher times its own kills).
  std::function<void(bool back)> on_coordinator_link;
  // Wall-clock limit of the whole run (a run past it fails, never hangs).
  uint64_t run_timeout_ms = 30 * 60 * 1000;
  // Bytes this process allocates once the cluster is gone (pnmkv run's read-bandwidth
  // buffer); the memory check counts them as a later phase.
  uint64_t after_run_bytes = 0;
  // Embedded runs only (`pnmkv run --timeline-out`): the GPU host's engine draws the first
  // steps' schedule on it. The multi-process runs refuse it (the engine runs in another
  // process).
  std::shared_ptr<timeline_trace> timeline;
};

result<run_report> run_embedded(const config& cfg, const cluster_run_options& opts);

}  // namespace pnmkv
