// The configuration resolved once: every key of the schema as a typed value, choices looked
// up in their enums' name tables, the model and hardware files loaded, and the
// rules that hold across keys checked. `config` (config.hpp) stays the YAML / --set layer
// and what reports echo; everything that runs reads a run_spec, never a key by its string.
// The live cluster (actors/run_setup) and the simulator (sim/sim_setup) build from the same
// run_spec, so a key means the same thing to both. Member names follow the keys:
// `spec.selection.budget_tokens` is selection.budget_tokens.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/config.hpp"
#include "config/enums.hpp"
#include "core/workload.hpp"
#include "model/hardware.hpp"
#include "model/model_shape.hpp"
#include "model/selection_budget.hpp"
#include "model/work_sizes.hpp"

namespace pnmkv {

struct run_section {
  run_mode mode = run_mode::pnm_kv;
  uint32_t steps = 16;
  uint64_t seed = 1;
  uint32_t micro_batches = 1;  // sub-batch overlap (schedulers/step_timeline.hpp); 1: off
  // Queries' and partial outputs' element type on the host links (model/work_sizes.hpp).
  pnmkv::wire_precision wire_precision = pnmkv::wire_precision::bf16;
  bool verify = true;
  uint32_t retry_after_ms = 0;
  uint32_t step_timeout_ms = 60000;
  uint32_t prefill_timeout_ms = 1200000;
  uint32_t prefill_window_chunks = 16;
};

struct selection_section {
  uint32_t page_size_tokens = 16;
  uint64_t budget_tokens = 3072;  // at least two pages (first and last are always kept)
  double budget_fraction = 0;     // 0: off; in (0, 1]: a fraction of each request's context
  pnmkv::gqa_aggregation gqa_aggregation = pnmkv::gqa_aggregation::max;
  pnmkv::summary_precision summary_precision = pnmkv::summary_precision::bf16;
  cross_shard_selection cross_shard = cross_shard_selection::exact;
  pnmkv::page_search search = pnmkv::page_search::exact_int8;  // core/exact_search.hpp
  // Lookahead selection (pnm-kv, one micro-batch): step t attends the pages selected with
  // step t-1's query; the devices search for step t+1 in their idle time
  // (schedulers/step_setup.hpp, actors/host_engine.hpp). Resolved from selection.lookahead
  // as set (auto: on for pnm-kv with one micro-batch).
  bool lookahead = false;
  lookahead_setting lookahead_set = lookahead_setting::auto_fit;
  // Bytes of one summary element (min or max of one dimension).
  // The budget policy both the live cluster and the simulator resolve a request's budget
  // with (model/selection_budget.hpp).
  selection_budget_policy budget_policy() const { return {page_size_tokens, budget_tokens, budget_fraction}; }
  uint32_t summary_elem_bytes() const { return summary_precision == pnmkv::summary_precision::fp32 ? 4 : 2; }
  // Pages per block of the int8 summaries a device keeps (exact-int8), 0 when it keeps none.
  uint32_t int8_summary_block_pages() const {
    return search == pnmkv::page_search::exact_int8 ? pnmkv::int8_summary_index::default_block_pages : 0;
  }
  // The selection in a report's words: "exact-int8 search, max aggregation, exact across
  // shards" and, with lookahead, what it attends; with wire bf16, that queries and partial
  // outputs travel as bf16.
  std::string describe(pnmkv::wire_precision wire) const;
};

struct png_section {
  uint64_t steady_budget_tokens = 512;
  uint32_t window_steps = 16;
  double threshold = 0.75;
  uint32_t reevaluate_every_steps = 8;
  uint32_t warmup_steps = 4;
};

struct baseline_section {
  summary_residence summaries = summary_residence::auto_fit;
  pnmkv::recall_cache_policy recall_cache = pnmkv::recall_cache_policy::lru;
  uint64_t recall_cache_tokens = 0;  // 0: the selection budget
};

struct cluster_section {
  uint32_t pnm_devices = 4;
  uint32_t live_layers = 1;
  uint32_t head_groups = 0;
  pnmkv::sequence_split sequence_split = pnmkv::sequence_split::contiguous;
  uint32_t replication = 1;
  bool rereplicate = true;             // a shard below r copies gets a new one after a loss
  bool recompute = true;               // a shard with no copy left is rebuilt from its prompt
  uint64_t rebuild_chunk_tokens = 4096;
  uint32_t pool_devices = 0;  // 0: one pool of every device; else divides pnm_devices
  uint64_t device_memory_bytes_max = 0;
  std::string coordinator_host = "127.0.0.1";
  uint16_t coordinator_port = 0;
  uint32_t heartbeat_interval_ms = 200;
  uint32_t connection_timeout_ms = 5000;
  uint32_t device_timeout_ms = 0;  // 0: off
  pnmkv::node_scheduler node_scheduler = pnmkv::node_scheduler::sharing;
  uint32_t startup_timeout_ms = 30000;
  uint32_t join_timeout_ms = 120000;
  std::string journal_file;                 // "": the coordinator keeps no journal
  uint32_t coordinator_reconnect_ms = 20000;
  uint32_t coordinator_restarts_max = 3;    // the multi-process launcher's
};

struct workload_section {
  // workload.kind: the synthetic generator, or a KV trace in trace_dir (trace/kv_trace.hpp,
  // docs/TRACE_FORMAT.md); trace_dir is resolved like every path key, not empty for trace.
  bool from_trace = false;
  std::string trace_dir;
  uint64_t context_tokens = 1ull << 20;
  uint32_t batch = 2;
  workload_arrivals arrivals = workload_arrivals::closed;
  uint32_t requests = 8;
  double arrival_rate_per_s = 1;
  double prompt_tokens_spread_fraction = 0;
  uint64_t output_tokens = 16;
  // Resolved by config like every path key (resolve_config_path). Not empty when
  // arrivals == trace.
  std::string trace_file;
  double tpot_ms_max = 0;
  uint32_t batch_max = 0;
  uint64_t prefill_chunk_tokens = 4096;
  // workload.kind = synthetic: the text structure, geometry, queries and values (validated).
  workload_params synthetic;
};

struct eval_section {
  std::vector<uint64_t> budgets_tokens;
  std::vector<uint64_t> contexts_tokens;
  uint32_t kv_heads = 2;
  uint32_t steps = 8;
};

// The sim.* values a calibration file may replace (config/calibration.hpp).
struct calibration_keys {
  double steady_hit_fraction = 0.25;
  double steady_set_fraction = 0.25;
  double steady_churn_fraction = 0.1;
  double steady_reeval_steps = 8;
  double selection_overlap = 0.8;
  double recall_hit_fraction = 0.8;
  double selection_spread = 1;
  double search_rescored_per_selected = 1;
};

struct sim_section {
  sim_batch_policy batch_policy = sim_batch_policy::configured;
  double duration_s_max = 1e7;
  uint32_t tp = 1;
  uint32_t pp = 1;
  double weights_memory_fraction_max = 0.7;
  std::string gpu_fabric_file;  // resolved like every path key
  bool pool_auto = false;
  bool baseline_overlap = true;
  std::string calibration_file;  // resolved like every path key; empty: none
  calibration_keys calibration;
  double price_scale_gpu = 1;
  double price_scale_pnm = 1;
  double price_scale_expander = 1;
  bool charge_link_energy = true;
  uint32_t step_reuse_steps = 16;
  uint32_t batch_series_points_max = 2000;
};

struct fabric_section {
  pnmkv::ucx_transport ucx_transport = pnmkv::ucx_transport::tcp;
  std::string ucx_net_devices = "lo";
  ucx_rma_mode ucx_rma = ucx_rma_mode::automatic;
  pnmkv::ucx_progress ucx_progress = pnmkv::ucx_progress::thread;
  uint32_t ucx_spin_us = 50;
  uint32_t ucx_keepalive_ms = 50;
  uint64_t send_queue_depth = 1024;
  uint64_t inbox_depth = 4096;
  uint32_t op_timeout_ms = 5000;
  uint32_t connect_timeout_ms = 5000;
  uint64_t max_message_bytes = 64ull << 20;
  crc_mode frame_crc = crc_mode::automatic;
  bool drop_duplicates = true;
  bool pacing = false;
  double pacing_scale = 1;
  std::string cluster_secret_file;
  // Wire limits.
  uint32_t max_tokens_per_write = 4096;
  uint32_t max_head_dim = 512;
  uint32_t max_group = 64;
  uint32_t max_kv_heads = 256;
  uint32_t max_layers = 1024;
  uint64_t max_context_tokens = 1ull << 24;
  uint32_t max_page_tokens = 1024;
  uint32_t max_pages_per_message = 65536;
  uint32_t max_members = 4096;
  uint32_t max_shards = 65536;
  uint32_t max_replicas = 8;
};

struct faults_section {
  uint64_t seed = 1;
  fault_points at = fault_points::send;
  std::string messages;
  double drop_prob = 0;
  double delay_prob = 0;
  uint32_t delay_ms = 10;
  double duplicate_prob = 0;
  double corrupt_prob = 0;
  uint32_t corrupt_bits = 1;
  double stall_prob = 0;
  uint32_t stall_ms = 1000;
  double partition_prob = 0;
  uint32_t partition_window_msgs = 64;
  std::string script;
  std::string script_file;
  std::string log;
};

struct run_spec {
  run_section run;
  model_shape model;        // model.file, loaded
  hardware_spec hardware;   // hardware.file, loaded (prices as in the file)
  selection_section selection;
  png_section png;
  baseline_section baseline;
  cluster_section cluster;
  workload_section workload;
  eval_section eval;
  sim_section sim;
  fabric_section fabric;
  faults_section faults;
};

// Resolves `cfg` into a run_spec: reads every key (config validated each value and resolved
// each path when it was set), loads the model and hardware files, and checks the rules across keys both the live cluster and the
// simulator rely on (cluster.pool_devices divides cluster.pnm_devices, the budget holds the
// two always-kept pages, a trace workload names its file, the synthetic workload's
// parameters). Errors name the key (or file) and what is allowed.
result<run_spec> resolve_run_spec(const config& cfg);

}  // namespace pnmkv
