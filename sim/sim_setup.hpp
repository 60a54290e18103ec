// Everything one simulated point needs, built once from a resolved configuration: the
// mode, model shape, hardware figures (prices scaled for sensitivity runs), NVLink fabric,
// calibration, the cost model, the GPU topology (tensor × pipeline parallel), the device
// pools and the workload. The simulator builds from the same resolved spec
// (config/spec.hpp) as the live cluster, so one config file means the same to both.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <string>

#include "config/config.hpp"
#include "config/spec.hpp"
#include "schedulers/placement.hpp"
#include "schedulers/step_setup.hpp"

namespace pnmkv {

// The step model's inputs (schedulers/step_setup.hpp: mode, model, hardware, fabric,
// calibration, cost model, GPU topology, devices and pools, selection, baseline policies)
// and the simulator's own: the config, pool choice, capacity, placement and workload.
struct sim_setup : step_setup {
  config cfg;
  std::string selection;  // selection_section::describe(), for the report

  bool pool_auto = false;
  double device_capacity_bytes = 0;
  placement_request placement;  // request id, context and decode tokens filled per request

  // Workload.
  workload_arrivals workload = workload_arrivals::closed;
  bool batch_max_policy = false;  // closed: admit as many as fit
  uint32_t batch = 1;             // closed, batch_policy=config
  uint32_t batch_cap = 0;         // workload.batch_max (0: none)
  uint64_t context_tokens = 0;
  // run.steps: a closed batch's decode steps; also the decode tokens assumed per request
  // when sizing pools, the idle-system TTFT and the analytic batch limits (any workload).
  uint32_t steps = 0;
  uint64_t seed = 1;
  uint32_t requests = 0;
  double arrival_rate_per_s = 0;
  double prompt_spread_fraction = 0;
  uint64_t output_tokens = 0;     // poisson: per request (workload.output_tokens)
  // Output tokens assumed per request when sizing pools, the idle-system TTFT and the
  // analytic batch limits: a poisson request's own, else run.steps + 1 (a closed batch's
  // decode steps and its first token; trace rows vary, so the configured figure).
  uint64_t sizing_output_tokens() const {
    return workload == workload_arrivals::poisson ? std::max<uint64_t>(1, output_tokens) : uint64_t(steps) + 1;
  }
  std::string trace_file;
  double duration_s_max = 0;

  // Policies.
  uint64_t prefill_chunk_tokens = 4096;  // workload.prefill_chunk_tokens
  double tpot_ms_max = 0;
  uint32_t batch_series_points_max = 2000;
  uint32_t step_reuse_steps = 1;  // sim.step_reuse_steps

  // Memory.
  double weight_bytes() const { return model.params_from_shape() * 2.0; }
  double gpu_usable_bytes() const {
    return double(gpus()) * (hw.gpu.memory_bytes - hw.gpu.reserved_bytes);
  }
};

// Builds and validates a setup from a resolved spec (config/spec.hpp); `cfg` is what the
// spec was resolved from, echoed in results. Errors name the key and the allowed values:
// a tp that does not divide the heads, weights that do not fit the GPUs.
result<std::shared_ptr<const sim_setup>> make_sim_setup(const run_spec& spec, const config& cfg);
// Resolves `cfg` (resolve_run_spec: a pool size that does not divide the devices, a budget
// below the two always-kept pages, ...) and builds from it.
result<std::shared_ptr<const sim_setup>> make_sim_setup(const config& cfg);

}  // namespace pnmkv
