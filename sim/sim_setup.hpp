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
#include "model/cost_model.hpp"
#include "schedulers/modes.hpp"
#include "schedulers/placement.hpp"
#include "sim/calibration.hpp"
#include "sim/gpu_fabric.hpp"

namespace pnmkv {

// workload.arrivals (config/enums.hpp); summary_residence (baseline.summaries) is there too.
using sim_workload = workload_arrivals;

struct sim_setup {
  config cfg;
  run_mode mode = run_mode::pnm_kv;
  model_shape model;
  hardware_spec hw;  // prices scaled by sim.price_scale_*
  gpu_fabric fabric;
  calibration cal;
  std::shared_ptr<const cost_model> costs;

  // GPUs: tp-way tensor parallel × pp pipeline stages; each GPU has cxl.host_links links.
  uint32_t tp = 1, pp = 1;
  uint32_t gpus() const { return tp * pp; }
  // Host links of one pipeline stage (its tp GPUs' links); the KV heads (and shards) of a
  // layer are spread over them.
  uint32_t host_links = 1;
  // Attention ranks: GPUs of a stage sharing the per-head GPU work (merge, attention).
  uint32_t attention_ranks = 1;

  // Devices: PNM devices (pnm-kv, png-kv) or passive expanders (baseline).
  uint32_t devices = 0;
  uint32_t pool_devices = 0;  // resolved: divides devices; 0 until the pool is chosen
  bool pool_auto = false;
  double device_capacity_bytes = 0;
  uint32_t pnm_devices() const { return mode == run_mode::baseline ? 0 : devices; }
  uint32_t expanders() const { return mode == run_mode::baseline ? devices : 0; }

  // Selection.
  uint32_t page_size_tokens = 16;
  uint64_t budget_tokens = 2048;
  uint64_t budget_pages() const { return budget_tokens / page_size_tokens; }
  uint32_t summary_elem_bytes = 2;
  uint32_t heads_scored = 1;  // per group: all query heads (max) or one (sum)
  // Across s > 1 sequence shards: exact (two rounds: candidates, then the global top pages
  // attended where they live) or local (each shard takes budget/s pages, one round).
  bool exact_cross_shard = false;
  placement_request placement;  // request id, context and decode tokens filled per request

  // Workload.
  sim_workload workload = sim_workload::closed;
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
    return workload == sim_workload::poisson ? std::max<uint64_t>(1, output_tokens) : uint64_t(steps) + 1;
  }
  std::string trace_file;
  double duration_s_max = 0;

  // Policies.
  uint64_t prefill_chunk_tokens = 4096;  // workload.prefill_chunk_tokens
  double tpot_ms_max = 0;
  summary_residence summaries = summary_residence::auto_fit;
  uint32_t recall_layers_in_flight = 2;
  bool recall_reuse = false;
  bool charge_link_energy = true;
  bool baseline_overlap = true;  // recalls and attention pipelined per head (double buffers)
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
