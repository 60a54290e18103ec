// The result of a cluster run (embedded or multi-process): what `pnmkv run` prints as a
// table and writes as JSON. The JSON keys are a contract (README, issue 4): tests and
// experiment scripts read them.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "schedulers/serving.hpp"

namespace pnmkv {

// A device the GPU host lost and failed over: when it learned of the loss, on the wall
// clock (UTC), so that whoever injected the fault (a script, `docker kill`) can subtract its
// own injection time; and how it learned (the fabric, the coordinator's heartbeat, a send).
struct device_loss {
  uint32_t device = 0;
  uint32_t steps_done = 0;        // decode steps completed when it was detected
  std::string reason;             // how it was detected
  int64_t detected_unix_ms = 0;   // wall clock, milliseconds since 1970-01-01 UTC
};

// A shard rebuilt after a loss (docs/DESIGN.md §7): a new copy from a live one
// (re-replication) or, with none left, recomputed from the prompt.
struct shard_rebuild {
  uint64_t request_id = 0;
  uint32_t shard_id = 0;
  std::string kind;             // "re-replicate" | "recompute"
  uint32_t source = 0;          // re-replicate: the live copy (0: none)
  uint32_t target = 0;          // the device that holds the new copy (0: none)
  std::string outcome;          // "done", or why not ("no device can take ...", "unfinished at the run's end")
  uint64_t bytes = 0;           // K/V bytes written to the new copy (live layers)
  uint64_t tokens = 0;          // recompute: tokens re-prefilled
  double wall_ms = 0;           // from the loss's detection to the copy serving, wall clock
  double stall_ms = 0;          // virtual time it added to decode steps
};

struct run_report {
  std::string mode;
  std::string simd_target;     // Highway target the device kernels ran (e.g. "AVX3")
  std::string config_json;     // resolved configuration
  std::string model_name, model_file, hardware_name, hardware_file;
  bool multiprocess = false;
  uint32_t layers = 0, live_layers = 0, pnm_devices = 0, batch = 0, steps = 0;
  uint64_t context_tokens = 0;
  uint32_t head_groups = 0, sequence_shards = 0;

  // accuracy vs dense (verification queries)
  double output_rel_err_mean = 0, output_rel_err_p99 = 0, output_rel_err_max = 0;
  double attention_mass_recall_mean = 0, attention_mass_recall_min = 0;
  // The lower tail of the head-steps' mass: at most 1 % / 10 % captured less.
  double attention_mass_recall_p01 = 0, attention_mass_recall_p10 = 0;
  double needle_hit_rate = 0;  // NaN when no needle was asked
  uint64_t needles_asked = 0;
  uint64_t accuracy_samples = 0;

  // wall time
  double prefill_wall_s = 0;
  double step_wall_ms_p50 = 0, step_wall_ms_mean = 0, step_wall_ms_max = 0;
  double read_gbps_measured = 0;    // this machine, same run (all worker threads)
  double peak_gflops_measured = 0;  // fp32 FMA peak of one core × kernel_threads, same run
  uint32_t kernel_threads = 0;      // threads that run device kernels (the bound's cores)
  uint64_t live_device_bytes_per_step = 0;  // bytes the live layers' device work reads
  double live_device_flops_per_step = 0;    // flops of that work (core/roofline.hpp)
  // Roofline of the step's device work: max(bytes / read_gbps_measured,
  // flops / peak_gflops_measured), ms (apps/cmd_run.cpp says why this form).
  double step_bound_ms = 0;
  double step_overhead_ratio = 0;   // step_wall_ms_p50 / step_bound_ms

  // virtual (modelled hardware)
  double virtual_step_ms_mean = 0;
  double virtual_tokens_per_s = 0;
  double virtual_energy_j_per_token = 0;
  double virtual_tokens_per_dollar = 0;
  double virtual_power_w = 0;
  // All-in (docs/HARDWARE.md §6a): GPU HBM at the measured all-in pJ/bit, host server and
  // CXL switch static power; tokens per dollar at that power too.
  double virtual_energy_all_in_j_per_token = 0, virtual_power_all_in_w = 0,
         virtual_tokens_per_dollar_all_in = 0, virtual_host_switch_power_w = 0;
  // Highest modelled power over a step (GPU, GPU all-in, busiest device) and the ratings.
  double gpu_power_peak_w = 0, gpu_all_in_power_peak_w = 0, device_power_peak_w = 0, gpu_tdp_w = 0,
         device_power_rating_w = 0;
  uint64_t virtual_link_bytes_per_step = 0;
  uint64_t virtual_device_bytes_per_step = 0;
  double breakdown_dense_ms = 0, breakdown_link_ms = 0, breakdown_device_ms = 0,
         breakdown_merge_ms = 0, breakdown_lm_head_ms = 0, breakdown_gpu_attention_ms = 0,
         breakdown_copy_ms = 0;
  // Sub-batch overlap (run.micro_batches > 1; reported only then): the most micro-batches a
  // step ran, and per step the layers' micro-batches one after another and the time the
  // interleaving hid (serial - the layers' time).
  uint32_t micro_batches = 1;
  double micro_batch_serial_ms = 0, micro_batch_overlap_ms = 0;
  // mode-specific
  std::string cross_shard;            // exact | local
  bool summaries_resident = false;    // baseline
  double steady_hit_rate = 0;         // png-kv: selected pages served from the GPU's steady set
  uint64_t copy_bytes_per_step = 0;   // png-kv: steady copies
  // baseline: the GPU's cache of recalled pages (schedulers/recall_cache.hpp) over the run,
  // every live (layer, request, KV head) lookup: pages attended from HBM (hits) and
  // recalled (misses). Other modes count a shadow cache on their selections (shadow).
  std::string recall_cache = "none";
  uint64_t recall_cache_tokens = 0;   // capacity per (request, layer, KV head)
  uint64_t recall_hits = 0, recall_misses = 0;
  bool recall_cache_shadow = false;
  double recall_hit_rate() const {
    const uint64_t n = recall_hits + recall_misses;
    return n ? double(recall_hits) / double(n) : 0;
  }
  double gpu_memory_bytes = 0;        // the batch's needs in this mode (schedulers/gpu_memory)
  double gpu_memory_capacity_bytes = 0;
  uint32_t max_batch = 0;             // largest batch admitted at this context: the min of
  uint32_t max_batch_gpu_memory = 0;  //   what GPU memory holds (mode's buffers)
  uint32_t max_batch_device_capacity = 0;  // and what the devices / expanders hold
  double prefill_link_ms = 0;

  // requests
  uint64_t submitted = 0, completed = 0, failed = 0;
  // One line per failed request: refused, or lost with its devices (every copy of one of
  // its shards gone); "run: ..." when the whole run failed.
  std::vector<std::string> failures;

  // open workloads (workload.arrivals poisson|trace): serving over virtual time
  std::string arrivals = "closed";
  double virtual_time_s = 0;     // virtual time the run covered (open workloads)
  uint64_t tokens_out = 0;       // output tokens produced
  serving_summary serving;       // TTFT, TPOT, queueing, batch over requests and steps
  std::vector<request_outcome> request_outcomes;
  std::vector<batch_sample> batch_series;

  // devices lost during the run and failed over to replicas (cluster.replication >= 2)
  std::vector<uint32_t> devices_lost;
  std::vector<device_loss> device_losses;  // the same, with when and how each was detected
  uint64_t retries = 0;  // times unanswered work was sent again (run.retry_after_ms)

  // Recovery and stopping (actors/gpu_host.hpp, actors/node_main.hpp).
  uint64_t fenced_messages = 0;              // late messages from failed-over devices, dropped
  std::vector<std::string> shutdown_events;  // node processes not stopping cleanly (not requests)
  uint32_t coordinator_restarts = 0;         // coordinator processes restarted from the journal
  // Scripted coordinator kills (crash node=0), ms after each: the driver saw the loss, and
  // had joined the restarted coordinator (decoding goes on meanwhile: the data plane does
  // not pass through the coordinator).
  std::vector<double> coordinator_detect_ms, coordinator_recover_ms;
  std::vector<shard_rebuild> rebuilds;       // copies rebuilt after losses, in the order finished
  double recovery_stall_ms = 0;              // virtual time every rebuild added to steps
  std::string stopped;                       // why the run was stopped early; "" when it ran out
  uint64_t steps_done = 0;                   // steps the GPU host ran
  // Each completed request's output digest (host_engine::request_digests): equal to the
  // same request's in a run without failures.
  std::vector<std::pair<uint64_t, uint64_t>> request_digests;

  // devices
  std::vector<uint32_t> device_ids;
  std::vector<uint64_t> device_bytes_held;      // emulator (live layers)
  std::vector<uint64_t> device_bytes_modelled;  // all layers

  // Calibration for the simulator (sim/calibration.hpp), measured by this run.
  double cal_steady_hit_fraction = 0, cal_steady_set_fraction = 0, cal_steady_churn_fraction = 0,
         cal_selection_overlap = 0, cal_selection_spread = 1, cal_recall_hit_fraction = 0;
  uint32_t cal_steady_reeval_steps = 0;
  uint64_t cal_samples = 0, cal_churn_samples = 0, cal_recall_samples = 0;
  uint64_t budget_tokens = 0;
  std::string selection;  // search, aggregation, cross-shard rule, lookahead (config/spec.hpp)
  // exact-int8 page search (core/exact_search.hpp): integer ops per step of the live
  // layers' device work, and the calibration of the pages it rescored.
  double live_device_int_ops_per_step = 0;
  double cal_search_rescored_per_selected = 0;  // pages rescored / pages selected
  double cal_search_pages_min = 0, cal_search_pages_max = 0;  // pages per search measured
  uint64_t cal_search_samples = 0;
  std::string cal_search;  // the selection.search measured ("" when no search ran)
  // The run's point of the touched-fraction model (model/search_touch.hpp): the mean pages
  // per search, the fraction of them selected, and the search's shape.
  double cal_search_pages_mean = 0, cal_search_selected_fraction = 0;
  uint32_t cal_search_heads_scored = 0;
  std::string cal_search_aggregation, cal_search_workload;
  // The calibration as a "pnmkv-calibration/1" file.
  std::string calibration_json() const;

  uint64_t output_digest = 0;
  std::string output_digest_hex() const;

  std::string to_json() const;
  static run_report from_json(const std::string& json);  // inverse of to_json (throws on bad JSON)
  std::string to_table() const;

 private:
  struct table;  // the report's rows (run_report.cpp)
  void table_setup(table& t) const;
  void table_accuracy_wall(table& t) const;
  void table_virtual_time(table& t) const;
  void table_serving(table& t) const;
  void table_requests_and_devices(table& t) const;
};

}  // namespace pnmkv
