// The scale-out simulator (docs/DESIGN.md §3, §5): requests arrive (a closed batch, a Poisson
// generator or a trace file), are admitted at step boundaries while GPU memory, device
// capacity (schedulers/placement.hpp on 512 GB devices), a batch cap and a TPOT limit
// allow, prefill in chunks next to the decoding batch (continuous batching), decode one
// token per step and leave. Each step's time, energy and bytes come from step_model, i.e.
// from the cost model with the live system's composition. The result has per-request
// TTFT, TPOT and queueing delay, batch size over time, throughput, energy per token and
// tokens per dollar, and the step-time and energy breakdowns.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "schedulers/gpu_memory.hpp"
#include "schedulers/serving.hpp"  // trace_row, load_trace, request_outcome, batch_sample
#include "sim/sim_setup.hpp"
#include "schedulers/step_model.hpp"

namespace pnmkv {

// GPU memory of the serving GPUs (docs/DESIGN.md §2), on the live cluster's formulas
// (schedulers/gpu_memory.hpp) over all tp × pp GPUs: weights, then per request the mode's
// buffers — recall buffers and (when resident) page summaries for baseline, steady pages for
// png-kv, partials — and, for open workloads, one prefill chunk's activations.
struct sim_gpu_memory {
  double usable_bytes = 0;  // gpus × (memory − reserved)
  double weight_bytes = 0;
  double prefill_working_bytes = 0;
  double free_bytes() const { return usable_bytes - weight_bytes - prefill_working_bytes; }
};
sim_gpu_memory gpu_memory_of(const sim_setup& s);
gpu_memory_query gpu_query(const sim_setup& s, uint64_t final_tokens, bool summaries_resident,
                           uint32_t batch);
// Device bytes one request takes over its pool (K, V, summaries, every layer, × replication).
double device_bytes_per_request(const sim_setup& s, uint64_t final_tokens);

struct sim_result {
  // What was simulated.
  std::string mode, model_name, model_file, hardware_name, hardware_file, fabric_file,
      calibration_file, workload;
  std::vector<std::pair<std::string, calibrated_value>> calibration;
  std::string config_json;
  uint64_t context_tokens = 0, budget_tokens = 0;
  std::string selection;  // search, aggregation, cross-shard rule, lookahead (config/spec.hpp)
  double budget_fraction = 0;  // > 0: budget_tokens came from selection.budget_fraction
  uint32_t gpus = 0, tp = 0, pp = 0, pnm_devices = 0, expanders = 0, pool_devices = 0, pools = 0,
           head_groups = 0, sequence_shards = 0;

  // Admission.
  double batch_mean = 0;           // decoding requests per decode step, mean
  uint32_t batch_peak = 0;
  uint32_t batch_limit_gpu_memory = 0;       // analytic, at context + output tokens
  uint32_t batch_limit_device_capacity = 0;  // by placement on the pools
  std::string batch_limited_by;    // what stopped admission first (closed workloads)
  double gpu_free_bytes = 0, gpu_bytes_per_request = 0, device_bytes_per_request = 0;
  bool summaries_resident = true;  // baseline: of the first request
  std::string recall_cache = "none";  // baseline: baseline.recall_cache (none in other modes)
  uint64_t recall_cache_tokens = 0;   // its capacity per (request, layer, KV head)

  // Performance (virtual time).
  double tokens_per_s = 0;       // output tokens / simulated time
  double step_ms = 0;            // mean decode step
  double tpot_ms = 0, ttft_ms = 0, queueing_ms = 0;  // means over requests
  double tpot_ms_p99 = 0, ttft_ms_p99 = 0;
  // Energy per token two ways (docs/HARDWARE.md §6a): component-level (every charged
  // operation's dynamic energy + the parts' idle power; tokens_per_dollar uses this power)
  // and all-in (the same, GPU HBM bytes at the measured all-in pJ/bit, plus the host
  // server's and the CXL switch's static power; tokens_per_dollar_all_in uses this power).
  double energy_j_per_token = 0, power_w = 0, capital_usd = 0, tokens_per_dollar = 0;
  double energy_all_in_j_per_token = 0, power_all_in_w = 0, tokens_per_dollar_all_in = 0;
  double gpu_all_in_extra_j_per_token = 0, host_switch_j_per_token = 0, host_switch_power_w = 0;
  // Each part's highest modelled power over a step next to its rating.
  std::vector<rated_power> power_peak;
  step_breakdown breakdown_ms;   // mean per decode step, in ms
  // Sub-batch overlap (run.micro_batches; in the JSON only when > 1): the most micro-batches
  // a step ran, and per decode step the layers' micro-batches one after another and the time
  // the interleaving hid (serial - the layers' time), in ms.
  uint32_t micro_batches = 1;
  double micro_batch_serial_ms = 0, micro_batch_overlap_ms = 0;
  step_energy energy_j_per_token_by;  // dynamic, per output token
  double static_j_per_token = 0;
  double link_bytes_per_step = 0, device_bytes_per_step = 0;
  double device_busy_fraction = 0, link_busy_fraction = 0;  // busiest, over decode steps
  uint64_t decode_steps = 0, tokens_out = 0, completed = 0, refused = 0, unfinished = 0;
  double simulated_s = 0;
  double wall_s = 0;              // how long the simulation itself took

  std::vector<request_outcome> requests;
  std::vector<batch_sample> batch_series;

  // JSON (one object; per-request rows and the batch series only when asked).
  std::string to_json(bool with_series) const;
  static std::string csv_header();
  std::string csv_row() const;
  std::string to_table() const;
};

using sim_progress = std::function<void(uint64_t done, uint64_t total)>;

// Runs one point. With sim.pool_auto the pool size is chosen first among the divisors of
// the device count: a closed batch is run with each and the run reporting the most tokens/s
// is returned (ties: the smaller pool size); an open workload is run with the pool size
// whose saturated batch (what its admission admits) gives the most tokens/s in one step.
// trace (`pnmkv sim --timeline-out`): the first steps' schedule of the run returned (with
// sim.pool_auto, of the pool size kept); null: not traced.
result<sim_result> simulate(std::shared_ptr<const sim_setup> setup, const sim_progress& progress = {},
                            timeline_trace* trace = nullptr);

// The pool size sim.pool_auto picks (exposed for tests and reports).
result<uint32_t> choose_pool_devices(const sim_setup& setup);

}  // namespace pnmkv
