#include "actors/run_setup.hpp"

#include "actors/control.hpp"
#include "actors/memory_guard.hpp"

#include <algorithm>

#include "schedulers/recall_cache.hpp"
#include "transport/auth.hpp"
#include "transport/hex.hpp"
#include "transport/from_config.hpp"
#include "trace/kv_trace.hpp"

namespace pnmkv {

std::vector<uint32_t> run_setup::device_ids() const {
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < devices; ++i) ids.push_back(device_node_base + i);
  return ids;
}

std::string make_cluster_secret() { return transport::to_hex(transport::make_nonce()); }

namespace {

// A trace-backed run reads only what the trace holds: layers 0..live_layers-1, every KV
// head of the model, and each request's context plus its decode steps.
status check_trace_covers_run(const run_spec& spec, const run_setup& s) {
  const auto& tr = static_cast<const trace::kv_trace&>(*s.workload);
  std::vector<uint32_t> layers, heads;
  for (uint32_t l = 0; l < std::min(spec.cluster.live_layers, s.model.layers); ++l) layers.push_back(l);
  for (uint32_t h = 0; h < s.model.kv_heads; ++h) heads.push_back(h);
  if (auto st = tr.check_heads(layers, heads, "cluster.live_layers = " + std::to_string(layers.size()));
      !st)
    return st;
  if (s.arrivals.empty())
    return tr.check_span(s.context_tokens, s.steps,
                         "workload.context_tokens = " + std::to_string(s.context_tokens) +
                             " with run.steps = " + std::to_string(s.steps));
  for (size_t i = 0; i < s.arrivals.size(); ++i) {
    const trace_row& r = s.arrivals[i];
    if (auto st = tr.check_span(r.prompt_tokens, r.output_tokens,
                                "request " + std::to_string(i) + " (prompt " + std::to_string(r.prompt_tokens) +
                                    " tokens, " + std::to_string(r.output_tokens) + " output tokens)");
        !st)
      return st;
  }
  return status::ok();
}

// The workload (synthetic or a KV trace) and, for open workloads, the arrivals (a live run takes at most
// control::max_requests_per_run requests).
status set_workload(const run_spec& spec, run_setup& s) {
  const workload_section& w = spec.workload;
  if (w.from_trace) {
    auto tr = trace::kv_trace::open(
        w.trace_dir, {s.model.file, s.model.layers, s.model.q_heads, s.model.kv_heads, s.model.head_dim});
    if (!tr) return tr.error();
    s.workload = std::move(tr).value();
  } else {
    auto wl = synthetic_workload::create(w.synthetic, spec.run.seed, s.model.head_dim,
                                         s.model.gqa_group());
    if (!wl) return wl.error();
    s.workload = std::make_unique<synthetic_workload>(std::move(wl).value());
  }
  if (w.arrivals == workload_arrivals::poisson) {
    s.arrivals = poisson_arrivals(s.seed, w.requests, w.arrival_rate_per_s, s.context_tokens,
                                  w.prompt_tokens_spread_fraction, w.output_tokens);
    if (s.arrivals.size() > control::max_requests_per_run)
      return status{errc::invalid_argument, "workload.requests = " + std::to_string(s.arrivals.size()) +
                                                ": a live run takes at most " +
                                                std::to_string(control::max_requests_per_run) +
                                                " requests (pnmkv sim takes more)"};
  } else if (w.arrivals == workload_arrivals::trace) {
    auto rows = load_trace(w.trace_file);
    if (!rows) return rows.error();
    if (rows->size() > control::max_requests_per_run)
      return status{errc::invalid_argument, "workload.trace_file '" + w.trace_file + "' has " +
                                                std::to_string(rows->size()) + " requests; a live run takes at most " +
                                                std::to_string(control::max_requests_per_run)};
    s.arrivals = std::move(rows).value();
  }
  if (w.from_trace) return check_trace_covers_run(spec, s);
  return status::ok();
}

// The device and host engines' knobs, the steady-page policy, and what a batch needs of
// GPU memory (which decides baseline.summaries = auto).
status set_engines(const run_spec& spec, run_setup& s) {
  const uint32_t live = spec.cluster.live_layers;
  if (live == 0 || live > s.model.layers)
    return status{errc::invalid_argument,
                  "cluster.live_layers = " + std::to_string(live) + " must be in [1, " +
                      std::to_string(s.model.layers) + "] (the model's layers)"};
  const uint32_t page = spec.selection.page_size_tokens;
  // The budget policy resolved at the workload's context, as sim/sim_setup does
  // (model/selection_budget.hpp).
  const uint64_t budget = selection_budget_tokens(spec.selection.budget_policy(), s.context_tokens);
  s.device.shape.head_dim = s.model.head_dim;
  s.device.shape.page_size_tokens = page;
  s.device.shape.summaries = spec.selection.summary_precision;
  s.device.shape.search = spec.selection.search;
  s.device.aggregation = spec.selection.gqa_aggregation;
  s.device.live_layers = live;
  s.device.memory_bytes_max = spec.cluster.device_memory_bytes_max;
  if (auto st = validate(s.device.shape); !st) return st;

  s.host.live_layers = live;
  s.host.page_size_tokens = page;
  s.host.budget_tokens = budget;
  s.host.verify = spec.run.verify;
  s.host.steady.window_steps = spec.png.window_steps;
  s.host.steady.threshold = spec.png.threshold;
  s.host.steady.budget_pages = spec.png.steady_budget_tokens / page;
  s.host.steady.reevaluate_every_steps = spec.png.reevaluate_every_steps;
  s.host.steady.warmup_steps = spec.png.warmup_steps;
  if (auto st = validate(s.host.steady); !st) return st;
  if (s.host.mode == run_mode::png_kv && s.host.steady.budget_pages * page > budget)
    return status{errc::invalid_argument,
                  "png.steady_budget_tokens = " + std::to_string(spec.png.steady_budget_tokens) +
                      " exceeds the selection budget of " + std::to_string(budget) + " tokens (" +
                      spec.selection.budget_policy().name() + ")" +
                      " (steady pages are part of the budget)"};
  // GPU memory: what a batch of this run needs in this mode (schedulers/gpu_memory.hpp).
  s.gpu_query.mode = s.host.mode;
  s.gpu_query.batch = s.batch;
  s.gpu_query.context_tokens = s.context_tokens + s.steps;
  s.gpu_query.budget_tokens = budget;
  s.gpu_query.steady_tokens = s.host.steady.budget_pages * page;
  s.gpu_query.page_size_tokens = page;
  s.gpu_query.summary_elem_bytes = spec.selection.summary_elem_bytes();
  // baseline: the GPU's cache of recalled pages (schedulers/recall_cache.hpp), its capacity
  // counted in GPU memory before summary residence is decided. Other modes run an LRU
  // cache of the same capacity (the budget when the baseline keys say none) on their
  // selections as a shadow, so any run calibrates recall_hit_fraction.
  auto cache = recall_cache_capacity_tokens(spec.baseline.recall_cache, spec.baseline.recall_cache_tokens,
                                            budget, page);
  if (s.host.mode == run_mode::baseline) {
    if (!cache) return cache.error();
    s.host.recall_cache = spec.baseline.recall_cache;
    s.host.recall_cache_tokens = *cache;
    s.gpu_query.recall_cache_tokens = *cache;
  } else {
    s.host.recall_cache = recall_cache_policy::lru;
    s.host.recall_cache_tokens = cache && *cache > 0 ? *cache : budget / page * page;
  }
  if (spec.baseline.summaries == summary_residence::auto_fit) {
    gpu_memory_query q = s.gpu_query;
    q.summaries_resident = true;
    s.host.summaries_resident = gpu_memory(s.model, s.hw, q).fits();
  } else {
    s.host.summaries_resident = spec.baseline.summaries == summary_residence::hbm;
  }
  s.gpu_query.summaries_resident = s.host.summaries_resident;
  return status::ok();
}

// The live cluster's step composition (schedulers/step_setup.hpp): one GPU, its host
// links, layer-wide baseline rounds. The host engine charges its steps with it and the
// TPOT admission limit predicts with it. After set_engines (summary residence).
status set_step(const run_spec& spec, run_setup& s) {
  auto st = std::make_shared<step_setup>();
  st->mode = s.host.mode;
  st->micro_batches = spec.run.micro_batches;
  st->model = s.model;
  st->hw = s.hw;
  // tp = pp = 1: no all-reduce, no stage hand-off, so no NVLink figures are needed.
  auto cal = calibration_from_spec(spec.sim);
  if (!cal) return cal.error();
  st->cal = *cal;
  st->costs = std::make_shared<cost_model>(s.hw, s.model);
  st->host_links = static_cast<uint32_t>(std::max(1.0, s.hw.cxl.host_links));
  st->devices = s.devices;
  st->pool_devices = spec.cluster.pool_devices == 0 ? s.devices : spec.cluster.pool_devices;
  if (st->mode == run_mode::gpu_only) {  // no device is used (as sim/sim_setup)
    st->devices = 0;
    st->pool_devices = 1;
  }
  st->page_size_tokens = spec.selection.page_size_tokens;
  st->budget_policy = spec.selection.budget_policy();
  st->budget_tokens = s.host.budget_tokens;  // resolved in set_engines
  st->summary_elem_bytes = s.gpu_query.summary_elem_bytes;
  st->heads_scored = spec.selection.gqa_aggregation == gqa_aggregation::max ? s.model.gqa_group() : 1;
  st->exact_cross_shard = s.host.cross_shard == cross_shard_selection::exact;
  st->lookahead = s.host.lookahead;
  st->wire = s.host.wire;
  st->search = {spec.selection.search == page_search::exact_int8, st->cal.search_rescored_per_selected.value,
                int8_summary_index::default_block_pages};
  st->search_calibrated_pages_min = st->cal.measured_search_pages_min;
  st->search_calibrated_pages_max = st->cal.measured_search_pages_max;
  resolve_search_touch(*st, s.context_tokens, spec.selection.gqa_aggregation, spec.workload.from_trace);
  st->steady_budget_pages = s.host.steady.budget_pages;
  st->summaries = s.host.summaries_resident ? summary_residence::hbm : summary_residence::link;
  // The recall cache the host engine runs (set_engines); TPOT predictions take its hit
  // fraction from the calibration (sim.recall_hit_fraction or sim.calibration_file), as the
  // simulator does.
  st->recall_cache = s.host.mode == run_mode::baseline ? s.host.recall_cache : recall_cache_policy::none;
  st->recall_cache_tokens = s.host.mode == run_mode::baseline ? s.host.recall_cache_tokens : 0;
  st->charge_link_energy = spec.sim.charge_link_energy;
  st->baseline_overlap = false;
  // The host engine charges with the same figures the step model predicts with.
  s.host.host_links = st->host_links;
  s.host.pool_devices = st->pool_devices;  // micro-batches take an even share of every pool
  s.host.device_id_base = device_node_base;
  s.host.heads_scored = st->heads_scored;
  s.host.summary_elem_bytes = st->summary_elem_bytes;
  s.step = std::move(st);
  return status::ok();
}

// Replication, retries, pools and the placement request.
void set_cluster(const run_spec& spec, run_setup& s) {
  s.replication = spec.cluster.replication;
  s.retry_after_ms = spec.run.retry_after_ms;
  s.device_timeout_ms = spec.cluster.device_timeout_ms;
  s.rereplicate = spec.cluster.rereplicate;
  s.host.recompute = spec.cluster.recompute;
  s.host.rebuild_chunk_tokens = spec.cluster.rebuild_chunk_tokens;
  // A lost device's work is sent to a replica (or, recomputed, to the shard's new device);
  // lost messages are sent again.
  s.host.keep_for_retry = s.replication > 1 || s.retry_after_ms > 0 || s.host.recompute;
  s.host.keep_writes_for_retry = s.retry_after_ms > 0;
  s.pool_devices = spec.cluster.pool_devices;  // divides the devices (resolve_run_spec)
  s.placement.decode_tokens = s.steps;
  s.placement.page_size_tokens = spec.selection.page_size_tokens;
  s.placement.layers = s.model.layers;
  s.placement.kv_heads = s.model.kv_heads;
  s.placement.head_dim = s.model.head_dim;
  s.placement.summary_elem_bytes = spec.selection.summary_elem_bytes();
  s.placement.int8_summary_block_pages = spec.selection.int8_summary_block_pages();
  s.placement.head_groups = spec.cluster.head_groups;
  s.placement.split = spec.cluster.sequence_split;
  s.placement.replication = s.replication;
}

}  // namespace

result<std::shared_ptr<const run_setup>> make_run_setup(const run_spec& spec, const config& cfg,
                                                         const std::string& secret_override) {
  auto s = std::make_shared<run_setup>();
  s->cfg = cfg;
  s->spec = spec;
  s->model = spec.model;
  s->hw = spec.hardware;
  s->costs = std::make_unique<cost_model>(s->hw, s->model);
  s->mode = to_string(spec.run.mode);
  s->host.mode = spec.run.mode;
  s->host.micro_batches = spec.run.micro_batches;
  s->host.cross_shard = spec.selection.cross_shard;
  s->host.lookahead = spec.selection.lookahead;
  s->host.wire = spec.run.wire_precision;
  s->steps = spec.run.steps;
  s->seed = spec.run.seed;
  s->context_tokens = spec.workload.context_tokens;
  s->batch = spec.workload.batch;
  s->devices = spec.cluster.pnm_devices;
  if (auto st = set_workload(spec, *s); !st) return st;
  if (!secret_override.empty()) {
    s->secret = secret_override;
  } else {
    auto secret = transport::cluster_secret_from(spec.fabric);
    if (!secret) return secret.error();
    if (secret->empty())
      return status{errc::invalid_argument,
                    "no cluster secret: set fabric.cluster_secret_file to a file holding it "
                    "(nodes join only with a proof of the secret)"};
    s->secret = *secret;
  }
  s->limits = transport::wire_limits_from(spec.fabric);
  s->step_timeout_ms = spec.run.step_timeout_ms;
  s->join_timeout_ms = spec.cluster.join_timeout_ms;
  s->prefill_timeout_ms = spec.run.prefill_timeout_ms;
  s->prefill_window_chunks = spec.run.prefill_window_chunks;
  s->host.prefill_chunk_tokens = spec.workload.prefill_chunk_tokens;
  s->tpot_ms_max = spec.workload.tpot_ms_max;
  s->serving.prefill_chunk_tokens = s->host.prefill_chunk_tokens;
  s->serving.batch_max = spec.workload.batch_max;
  if (auto st = set_engines(spec, *s); !st) return st;
  if (auto st = set_step(spec, *s); !st) return st;
  set_cluster(spec, *s);

  auto mem = read_host_memory();
  if (!mem) return mem.error();
  s->host_mem = *mem;
  if (s->device.memory_bytes_max == 0) {
    // Derived from this machine as an embedded run sees it; `pnmkv run --multiprocess`
    // derives it for its processes and writes the figure into the nodes' config. The
    // report's configuration echoes the figure.
    auto derived = derived_device_memory_bytes(*s, run_processes::embedded);
    if (!derived) return derived.error();
    s->device.memory_bytes_max = *derived;
    s->device_memory_derived = true;
    s->spec.cluster.device_memory_bytes_max = s->device.memory_bytes_max;
    auto set = s->cfg.set("cluster.device_memory_bytes_max", std::to_string(s->device.memory_bytes_max));
    if (!set) return set;
  }
  // gpu-only: the GPU host holds the live layers of every request in its HBM store, the
  // devices' shape and selection rule, within the emulator memory the devices would have
  // had together (cluster.pnm_devices x cluster.device_memory_bytes_max).
  s->host.hbm = s->device;
  s->host.hbm.device_id = gpu_host_node;
  s->host.hbm.memory_bytes_max = s->device.memory_bytes_max * std::max<uint32_t>(1, s->devices);
  return std::shared_ptr<const run_setup>(std::move(s));
}

result<std::shared_ptr<const run_setup>> make_run_setup(const config& cfg,
                                                         const std::string& secret_override) {
  auto spec = resolve_run_spec(cfg);
  if (!spec) return spec.error();
  return make_run_setup(*spec, cfg, secret_override);
}

}  // namespace pnmkv
