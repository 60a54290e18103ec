// Resolving a config into a run_spec (see spec.hpp): the only place that reads keys by name
// for the programs that run (schema_workload.cpp reads the synthetic workload's keys).
#include "config/spec.hpp"

#include "core/check.hpp"

namespace pnmkv {

namespace {

// Typed reads of validated values (config checked type and range when they were set).
struct reader {
  const config& cfg;
  uint32_t u32(const char* key) const { return static_cast<uint32_t>(cfg.get_int(key)); }
  uint64_t u64(const char* key) const { return static_cast<uint64_t>(cfg.get_int(key)); }
  double num(const char* key) const { return cfg.get_number(key); }
  bool flag(const char* key) const { return cfg.get_bool(key); }
  const std::string& text(const char* key) const { return cfg.get_string(key); }
  // A choice key: config admitted only the names of the key's table (the schema lists
  // them as its allowed values), so the lookup cannot miss.
  template <class E, size_t N>
  E choice(const char* key, const enum_name<E> (&names)[N]) const {
    const std::optional<E> v = value_of(names, text(key));
    PNMKV_CHECK(v.has_value(), key, " = '", text(key), "' is not in the table its schema entry lists");
    return *v;
  }
  std::vector<uint64_t> u64_list(const char* key) const {
    std::vector<uint64_t> out;
    for (int64_t v : cfg.get_int_list(key)) out.push_back(static_cast<uint64_t>(v));
    return out;
  }
};

status read_run_and_selection(const reader& r, run_spec& s) {
  s.run.mode = r.choice("run.mode", run_mode_names);
  s.run.steps = r.u32("run.steps");
  s.run.seed = r.u64("run.seed");
  s.run.micro_batches = r.u32("run.micro_batches");
  s.run.wire_precision = r.choice("run.wire_precision", wire_precision_names);
  if (s.run.micro_batches > 1 && s.run.mode != run_mode::pnm_kv && s.run.mode != run_mode::png_kv)
    return status{errc::invalid_argument,
                  "run.micro_batches = " + std::to_string(s.run.micro_batches) + " needs run.mode pnm-kv or " +
                      "png-kv (it overlaps the GPU's dense layers with the devices' work); run.mode = " +
                      std::string(name_of(run_mode_names, s.run.mode)) + " takes run.micro_batches = 1"};
  s.run.verify = r.flag("run.verify");
  s.run.retry_after_ms = r.u32("run.retry_after_ms");
  s.run.step_timeout_ms = r.u32("run.step_timeout_ms");
  s.run.prefill_timeout_ms = r.u32("run.prefill_timeout_ms");
  s.run.prefill_window_chunks = r.u32("run.prefill_window_chunks");

  auto& sel = s.selection;
  sel.page_size_tokens = r.u32("selection.page_size_tokens");
  sel.budget_tokens = r.u64("selection.budget_tokens");
  sel.budget_fraction = r.num("selection.budget_fraction");
  sel.gqa_aggregation = r.choice("selection.gqa_aggregation", gqa_aggregation_names);
  sel.summary_precision = r.choice("selection.summary_precision", summary_precision_names);
  sel.search = r.choice("selection.search", page_search_names);
  sel.cross_shard = r.choice("selection.cross_shard", cross_shard_selection_names);
  sel.lookahead_set = r.choice("selection.lookahead", lookahead_setting_names);
  sel.lookahead = sel.lookahead_set == lookahead_setting::on ||
                  (sel.lookahead_set == lookahead_setting::auto_fit && s.run.mode == run_mode::pnm_kv &&
                   s.run.micro_batches == 1);
  if (sel.lookahead && s.run.mode != run_mode::pnm_kv)
    return status{errc::invalid_argument,
                  "selection.lookahead = true needs run.mode pnm-kv (the devices search for the next step "
                  "in their idle time); run.mode = " + std::string(name_of(run_mode_names, s.run.mode)) +
                      " takes selection.lookahead = false or auto"};
  if (sel.lookahead && s.run.micro_batches != 1)
    return status{errc::invalid_argument,
                  "selection.lookahead = true needs run.micro_batches = 1 (not combined with sub-batch "
                  "overlap); run.micro_batches = " + std::to_string(s.run.micro_batches)};
  if (sel.budget_tokens < 2ull * sel.page_size_tokens)
    return status{errc::invalid_argument,
                  "selection.budget_tokens = " + std::to_string(sel.budget_tokens) +
                      " is below the two always-kept pages (first and last: " +
                      std::to_string(2 * sel.page_size_tokens) + " tokens at page size " +
                      std::to_string(sel.page_size_tokens) + ")"};
  if (!(sel.budget_fraction >= 0 && sel.budget_fraction <= 1))
    return status{errc::invalid_argument,
                  "selection.budget_fraction = " + std::to_string(sel.budget_fraction) +
                      " must be 0 (off) or in (0, 1] (a fraction of each request's context)"};

  s.png.steady_budget_tokens = r.u64("png.steady_budget_tokens");
  s.png.window_steps = r.u32("png.window_steps");
  s.png.threshold = r.num("png.threshold");
  s.png.reevaluate_every_steps = r.u32("png.reevaluate_every_steps");
  s.png.warmup_steps = r.u32("png.warmup_steps");
  s.baseline.summaries = r.choice("baseline.summaries", summary_residence_names);
  s.baseline.recall_cache = r.choice("baseline.recall_cache", recall_cache_policy_names);
  s.baseline.recall_cache_tokens = r.u64("baseline.recall_cache_tokens");
  return status::ok();
}

status read_cluster(const reader& r, cluster_section& c) {
  c.pnm_devices = r.u32("cluster.pnm_devices");
  c.live_layers = r.u32("cluster.live_layers");
  c.head_groups = r.u32("cluster.head_groups");
  c.sequence_split = r.choice("cluster.sequence_split", sequence_split_names);
  c.replication = r.u32("cluster.replication");
  c.rereplicate = r.flag("cluster.rereplicate");
  c.recompute = r.flag("cluster.recompute");
  c.rebuild_chunk_tokens = r.u64("cluster.rebuild_chunk_tokens");
  c.pool_devices = r.u32("cluster.pool_devices");
  if (c.pool_devices != 0 && c.pnm_devices % c.pool_devices != 0)
    return status{errc::invalid_argument, "cluster.pool_devices = " + std::to_string(c.pool_devices) +
                                              " must divide cluster.pnm_devices = " +
                                              std::to_string(c.pnm_devices)};
  c.device_memory_bytes_max = r.u64("cluster.device_memory_bytes_max");
  c.coordinator_host = r.text("cluster.coordinator_host");
  c.coordinator_port = static_cast<uint16_t>(r.u32("cluster.coordinator_port"));
  c.heartbeat_interval_ms = r.u32("cluster.heartbeat_interval_ms");
  c.connection_timeout_ms = r.u32("cluster.connection_timeout_ms");
  c.device_timeout_ms = r.u32("cluster.device_timeout_ms");
  c.node_scheduler = r.choice("cluster.node_scheduler", node_scheduler_names);
  c.startup_timeout_ms = r.u32("cluster.startup_timeout_ms");
  c.join_timeout_ms = r.u32("cluster.join_timeout_ms");
  c.journal_file = r.text("cluster.journal_file");
  c.coordinator_reconnect_ms = r.u32("cluster.coordinator_reconnect_ms");
  c.coordinator_restarts_max = r.u32("cluster.coordinator_restarts_max");
  return status::ok();
}

status read_workload_and_eval(const reader& r, run_spec& s) {
  auto& w = s.workload;
  w.context_tokens = r.u64("workload.context_tokens");
  w.batch = r.u32("workload.batch");
  w.arrivals = r.choice("workload.arrivals", workload_arrivals_names);
  w.requests = r.u32("workload.requests");
  w.arrival_rate_per_s = r.num("workload.arrival_rate_per_s");
  w.prompt_tokens_spread_fraction = r.num("workload.prompt_tokens_spread_fraction");
  w.output_tokens = r.u64("workload.output_tokens");
  w.trace_file = r.text("workload.trace_file");
  if (w.arrivals == workload_arrivals::trace && w.trace_file.empty())
    return status{errc::invalid_argument,
                  "workload.arrivals = trace needs workload.trace_file (a CSV of "
                  "arrival_s,prompt_tokens,output_tokens)"};
  w.from_trace = r.text("workload.kind") == "trace";
  w.trace_dir = r.text("workload.trace_dir");
  if (w.from_trace && w.trace_dir.empty())
    return status{errc::invalid_argument,
                  "workload.kind = trace needs workload.trace_dir (a folder with manifest.json, "
                  "docs/TRACE_FORMAT.md; workload.trace_file is the CSV of request arrivals)"};
  w.tpot_ms_max = r.num("workload.tpot_ms_max");
  w.batch_max = r.u32("workload.batch_max");
  w.prefill_chunk_tokens = r.u64("workload.prefill_chunk_tokens");
  auto synthetic = workload_params_from_config(r.cfg);
  if (!synthetic) return synthetic.error();
  w.synthetic = std::move(synthetic).value();

  s.eval.budgets_tokens = r.u64_list("eval.budgets_tokens");
  s.eval.contexts_tokens = r.u64_list("eval.contexts_tokens");
  s.eval.kv_heads = r.u32("eval.kv_heads");
  s.eval.steps = r.u32("eval.steps");
  return status::ok();
}

void read_sim(const reader& r, sim_section& m) {
  m.batch_policy = r.choice("sim.batch_policy", sim_batch_policy_names);
  m.duration_s_max = r.num("sim.duration_s_max");
  m.tp = r.u32("sim.tp");
  m.pp = r.u32("sim.pp");
  m.weights_memory_fraction_max = r.num("sim.weights_memory_fraction_max");
  m.gpu_fabric_file = r.text("sim.gpu_fabric_file");
  m.pool_auto = r.flag("sim.pool_auto");
  m.baseline_overlap = r.flag("sim.baseline_overlap");
  m.calibration_file = r.text("sim.calibration_file");
  m.calibration.steady_hit_fraction = r.num("sim.steady_hit_fraction");
  m.calibration.steady_set_fraction = r.num("sim.steady_set_fraction");
  m.calibration.steady_churn_fraction = r.num("sim.steady_churn_fraction");
  m.calibration.steady_reeval_steps = r.num("sim.steady_reeval_steps");
  m.calibration.selection_overlap = r.num("sim.selection_overlap");
  m.calibration.recall_hit_fraction = r.num("sim.recall_hit_fraction");
  m.calibration.selection_spread = r.num("sim.selection_spread");
  m.calibration.search_rescored_per_selected = r.num("sim.search_rescored_per_selected");
  m.price_scale_gpu = r.num("sim.price_scale_gpu");
  m.price_scale_pnm = r.num("sim.price_scale_pnm");
  m.price_scale_expander = r.num("sim.price_scale_expander");
  m.charge_link_energy = r.flag("sim.charge_link_energy");
  m.step_reuse_steps = r.u32("sim.step_reuse_steps");
  m.batch_series_points_max = r.u32("sim.batch_series_points_max");
}

void read_fabric(const reader& r, fabric_section& f) {
  f.ucx_transport = r.choice("fabric.ucx_transport", ucx_transport_names);
  f.ucx_net_devices = r.text("fabric.ucx_net_devices");
  f.ucx_rma = r.choice("fabric.ucx_rma", ucx_rma_mode_names);
  f.ucx_progress = r.choice("fabric.ucx_progress", ucx_progress_names);
  f.ucx_spin_us = r.u32("fabric.ucx_spin_us");
  f.ucx_keepalive_ms = r.u32("fabric.ucx_keepalive_ms");
  f.send_queue_depth = r.u64("fabric.send_queue_depth");
  f.inbox_depth = r.u64("fabric.inbox_depth");
  f.op_timeout_ms = r.u32("fabric.op_timeout_ms");
  f.connect_timeout_ms = r.u32("fabric.connect_timeout_ms");
  f.max_message_bytes = r.u64("fabric.max_message_bytes");
  f.frame_crc = r.choice("fabric.frame_crc", crc_mode_names);
  f.drop_duplicates = r.flag("fabric.drop_duplicates");
  f.pacing = r.flag("fabric.pacing");
  f.pacing_scale = r.num("fabric.pacing_scale");
  f.cluster_secret_file = r.text("fabric.cluster_secret_file");
  f.max_tokens_per_write = r.u32("fabric.max_tokens_per_write");
  f.max_head_dim = r.u32("fabric.max_head_dim");
  f.max_group = r.u32("fabric.max_group");
  f.max_kv_heads = r.u32("fabric.max_kv_heads");
  f.max_layers = r.u32("fabric.max_layers");
  f.max_context_tokens = r.u64("fabric.max_context_tokens");
  f.max_page_tokens = r.u32("fabric.max_page_tokens");
  f.max_pages_per_message = r.u32("fabric.max_pages_per_message");
  f.max_members = r.u32("fabric.max_members");
  f.max_shards = r.u32("fabric.max_shards");
  f.max_replicas = r.u32("fabric.max_replicas");
}

void read_faults(const reader& r, faults_section& f) {
  f.seed = r.u64("faults.seed");
  f.at = r.choice("faults.at", fault_points_names);
  f.messages = r.text("faults.messages");
  f.drop_prob = r.num("faults.drop_prob");
  f.delay_prob = r.num("faults.delay_prob");
  f.delay_ms = r.u32("faults.delay_ms");
  f.duplicate_prob = r.num("faults.duplicate_prob");
  f.corrupt_prob = r.num("faults.corrupt_prob");
  f.corrupt_bits = r.u32("faults.corrupt_bits");
  f.stall_prob = r.num("faults.stall_prob");
  f.stall_ms = r.u32("faults.stall_ms");
  f.partition_prob = r.num("faults.partition_prob");
  f.partition_window_msgs = r.u32("faults.partition_window_msgs");
  f.script = r.text("faults.script");
  f.script_file = r.text("faults.script_file");
  f.log = r.text("faults.log");
}

}  // namespace

std::string selection_section::describe(wire_precision wire) const {
  std::string d = std::string(name_of(page_search_names, search)) + " search, " +
                  name_of(gqa_aggregation_names, gqa_aggregation) + " aggregation, " + to_string(cross_shard) +
                  " across shards";
  if (lookahead) d += ", lookahead (a step attends the pages its previous step's query selected)";
  if (wire == wire_precision::bf16) d += ", bf16 queries and partial outputs on the links";
  return d;
}

result<run_spec> resolve_run_spec(const config& cfg) {
  run_spec s;
  const reader r{cfg};
  auto model = load_model_shape(r.text("model.file"));
  if (!model) return model.error();
  s.model = std::move(model).value();
  auto hw = load_hardware(r.text("hardware.file"));
  if (!hw) return hw.error();
  s.hardware = std::move(hw).value();
  if (status st = scale_hardware(s.hardware, r.text("hardware.scale")); !st) return st;
  for (status st : {read_run_and_selection(r, s), read_cluster(r, s.cluster), read_workload_and_eval(r, s)})
    if (!st) return st;
  read_sim(r, s.sim);
  read_fabric(r, s.fabric);
  read_faults(r, s.faults);
  return s;
}

}  // namespace pnmkv
