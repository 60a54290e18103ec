#include "actors/run_setup.hpp"

#include "actors/control.hpp"
#include "actors/memory_guard.hpp"

#include <algorithm>

#include "transport/auth.hpp"
#include "transport/hex.hpp"
#include "transport/from_config.hpp"

namespace pnmkv {

std::vector<uint32_t> run_setup::device_ids() const {
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < devices; ++i) ids.push_back(device_node_base + i);
  return ids;
}

std::string make_cluster_secret() { return transport::to_hex(transport::make_nonce()); }

result<std::shared_ptr<const run_setup>> make_run_setup(const config& cfg,
                                                         const std::string& secret_override) {
  auto s = std::make_shared<run_setup>();
  s->cfg = cfg;
  auto model = load_model_shape(cfg.get_string("model.file"));
  if (!model) return model.error();
  s->model = *model;
  auto hw = load_hardware(cfg.get_string("hardware.file"));
  if (!hw) return hw.error();
  s->hw = *hw;
  s->costs = std::make_unique<cost_model>(s->hw, s->model);
  auto wp = workload_params_from_config(cfg);
  if (!wp) return wp.error();
  auto wl = synthetic_workload::create(*wp, static_cast<uint64_t>(cfg.get_int("run.seed")),
                                       s->model.head_dim, s->model.gqa_group());
  if (!wl) return wl.error();
  s->workload = std::make_unique<synthetic_workload>(std::move(wl).value());

  s->mode = cfg.get_string("run.mode");
  auto mode = parse_run_mode(s->mode);
  if (!mode) return mode.error();
  s->host.mode = *mode;
  auto cross = parse_cross_shard(cfg.get_string("selection.cross_shard"));
  if (!cross) return cross.error();
  s->host.cross_shard = *cross;
  s->steps = static_cast<uint32_t>(cfg.get_int("run.steps"));
  s->seed = static_cast<uint64_t>(cfg.get_int("run.seed"));
  s->context_tokens = static_cast<uint64_t>(cfg.get_int("workload.context_tokens"));
  s->batch = static_cast<uint32_t>(cfg.get_int("workload.batch"));
  s->devices = static_cast<uint32_t>(cfg.get_int("cluster.pnm_devices"));
  if (!secret_override.empty()) {
    s->secret = secret_override;
  } else {
    auto secret = transport::cluster_secret_from(cfg);
    if (!secret) return secret.error();
    if (secret->empty())
      return status{errc::invalid_argument,
                    "no cluster secret: set fabric.cluster_secret_file to a file holding it "
                    "(nodes join only with a proof of the secret)"};
    s->secret = *secret;
  }
  s->step_timeout_ms = static_cast<uint32_t>(cfg.get_int("run.step_timeout_ms"));
  s->join_timeout_ms = static_cast<uint32_t>(cfg.get_int("cluster.join_timeout_ms"));
  s->prefill_timeout_ms = static_cast<uint32_t>(cfg.get_int("run.prefill_timeout_ms"));
  s->prefill_window_chunks = static_cast<uint32_t>(cfg.get_int("run.prefill_window_chunks"));
  s->host.prefill_chunk_tokens = static_cast<uint64_t>(cfg.get_int("workload.prefill_chunk_tokens"));
  const std::string arrivals = cfg.get_string("workload.arrivals");
  if (arrivals == "poisson") {
    s->arrivals = poisson_arrivals(s->seed, static_cast<uint32_t>(cfg.get_int("workload.requests")),
                                   cfg.get_number("workload.arrival_rate_per_s"), s->context_tokens,
                                   cfg.get_number("workload.prompt_tokens_spread_fraction"),
                                   static_cast<uint64_t>(cfg.get_int("workload.output_tokens")));
    if (s->arrivals.size() > control::max_requests_per_run)
      return status{errc::invalid_argument, "workload.requests = " + std::to_string(s->arrivals.size()) +
                                                ": a live run takes at most " +
                                                std::to_string(control::max_requests_per_run) +
                                                " requests (pnmkv sim takes more)"};
  } else if (arrivals == "trace") {
    const std::string file = cfg.get_string("workload.trace_file");
    if (file.empty())
      return status{errc::invalid_argument, "workload.arrivals=trace needs workload.trace_file (a CSV of arrival_s,prompt_tokens,output_tokens)"};
    auto rows = load_trace(file);
    if (!rows) return rows.error();
    if (rows->size() > control::max_requests_per_run)
      return status{errc::invalid_argument, "workload.trace_file '" + file + "' has " +
                                                std::to_string(rows->size()) + " requests; a live run takes at most " +
                                                std::to_string(control::max_requests_per_run)};
    s->arrivals = std::move(rows).value();
  }
  s->tpot_ms_max = cfg.get_number("workload.tpot_ms_max");
  s->serving.prefill_chunk_tokens = s->host.prefill_chunk_tokens;
  s->serving.batch_max = static_cast<uint32_t>(cfg.get_int("workload.batch_max"));

  const uint32_t live = static_cast<uint32_t>(cfg.get_int("cluster.live_layers"));
  if (live == 0 || live > s->model.layers)
    return status{errc::invalid_argument,
                  "cluster.live_layers = " + std::to_string(live) + " must be in [1, " +
                      std::to_string(s->model.layers) + "] (the model's layers)"};
  const uint32_t page = static_cast<uint32_t>(cfg.get_int("selection.page_size_tokens"));
  const uint64_t budget = static_cast<uint64_t>(cfg.get_int("selection.budget_tokens"));
  if (budget < 2ull * page)
    return status{errc::invalid_argument,
                  "selection.budget_tokens = " + std::to_string(budget) +
                      " is below the two always-kept pages (first and last: " +
                      std::to_string(2 * page) + " tokens at page size " + std::to_string(page) + ")"};
  auto agg = parse_gqa_aggregation(cfg.get_string("selection.gqa_aggregation").c_str());
  if (!agg) return agg.error();

  s->device.shape.head_dim = s->model.head_dim;
  s->device.shape.page_size_tokens = page;
  s->device.shape.summaries = cfg.get_string("selection.summary_precision") == "fp32"
                                  ? summary_precision::fp32
                                  : summary_precision::bf16;
  s->device.aggregation = *agg;
  s->device.live_layers = live;
  s->device.memory_bytes_max = static_cast<uint64_t>(cfg.get_int("cluster.device_memory_bytes_max"));
  auto st = validate(s->device.shape);
  if (!st) return st;

  s->host.live_layers = live;
  s->host.page_size_tokens = page;
  s->host.budget_tokens = budget;
  s->host.verify = cfg.get_bool("run.verify");
  s->host.steady.window_steps = static_cast<uint32_t>(cfg.get_int("png.window_steps"));
  s->host.steady.threshold = cfg.get_number("png.threshold");
  s->host.steady.budget_pages = static_cast<uint64_t>(cfg.get_int("png.steady_budget_tokens")) / page;
  s->host.steady.reevaluate_every_steps = static_cast<uint32_t>(cfg.get_int("png.reevaluate_every_steps"));
  s->host.steady.warmup_steps = static_cast<uint32_t>(cfg.get_int("png.warmup_steps"));
  if (auto st = validate(s->host.steady); !st) return st;
  if (s->host.mode == run_mode::png_kv && s->host.steady.budget_pages * page > budget)
    return status{errc::invalid_argument,
                  "png.steady_budget_tokens = " + std::to_string(cfg.get_int("png.steady_budget_tokens")) +
                      " exceeds selection.budget_tokens = " + std::to_string(budget) +
                      " (steady pages are part of the budget)"};
  // GPU memory: what a batch of this run needs in this mode (schedulers/gpu_memory.hpp).
  s->gpu_query.mode = s->host.mode;
  s->gpu_query.batch = s->batch;
  s->gpu_query.context_tokens = s->context_tokens + s->steps;
  s->gpu_query.budget_tokens = budget;
  s->gpu_query.steady_tokens = s->host.steady.budget_pages * page;
  s->gpu_query.page_size_tokens = page;
  s->gpu_query.summary_elem_bytes = s->device.shape.summaries == summary_precision::bf16 ? 2 : 4;
  const std::string summaries = cfg.get_string("baseline.summaries");
  if (summaries == "auto") {
    gpu_memory_query q = s->gpu_query;
    q.summaries_resident = true;
    s->host.summaries_resident = gpu_memory(s->model, s->hw, q).fits();
  } else {
    s->host.summaries_resident = summaries == "resident";
  }
  s->gpu_query.summaries_resident = s->host.summaries_resident;

  // The live cluster's step composition (schedulers/step_setup.hpp): one GPU, its host
  // links, layer-wide baseline rounds. The host engine charges its steps with it and the
  // TPOT admission limit predicts with it.
  {
    auto st = std::make_shared<step_setup>();
    st->mode = s->host.mode;
    st->model = s->model;
    st->hw = s->hw;
    // tp = pp = 1: no all-reduce, no stage hand-off, so no NVLink figures are needed.
    auto cal = calibration_from_config(cfg);
    if (!cal) return cal.error();
    st->cal = *cal;
    st->costs = std::make_shared<cost_model>(s->hw, s->model);
    st->host_links = static_cast<uint32_t>(std::max(1.0, s->hw.cxl.host_links));
    st->devices = s->devices;
    const uint32_t pool = static_cast<uint32_t>(cfg.get_int("cluster.pool_devices"));
    st->pool_devices = pool == 0 ? s->devices : pool;
    st->page_size_tokens = page;
    st->budget_tokens = budget;
    st->summary_elem_bytes = s->gpu_query.summary_elem_bytes;
    st->heads_scored = *agg == gqa_aggregation::max ? s->model.gqa_group() : 1;
    st->exact_cross_shard = s->host.cross_shard == cross_shard_selection::exact;
    st->summaries = s->host.summaries_resident ? summary_residence::hbm : summary_residence::link;
    st->recall_reuse = cfg.get_bool("sim.baseline_recall_reuse");
    st->charge_link_energy = cfg.get_bool("sim.charge_link_energy");
    st->baseline_overlap = false;
    s->host.host_links = st->host_links;
    s->step = std::move(st);
  }

  s->replication = static_cast<uint32_t>(cfg.get_int("cluster.replication"));
  s->retry_after_ms = static_cast<uint32_t>(cfg.get_int("run.retry_after_ms"));
  // A lost device's work is sent to a replica; lost messages are sent again.
  s->host.keep_for_retry = s->replication > 1 || s->retry_after_ms > 0;
  s->host.keep_writes_for_retry = s->retry_after_ms > 0;
  s->pool_devices = static_cast<uint32_t>(cfg.get_int("cluster.pool_devices"));
  if (s->pool_devices && s->devices % s->pool_devices)
    return status{errc::invalid_argument,
                  "cluster.pool_devices = " + std::to_string(s->pool_devices) +
                      " must divide cluster.pnm_devices = " + std::to_string(s->devices)};
  s->placement.decode_tokens = s->steps;
  s->placement.page_size_tokens = page;
  s->placement.layers = s->model.layers;
  s->placement.kv_heads = s->model.kv_heads;
  s->placement.head_dim = s->model.head_dim;
  s->placement.summary_elem_bytes = s->device.shape.summaries == summary_precision::bf16 ? 2 : 4;
  s->placement.head_groups = static_cast<uint32_t>(cfg.get_int("cluster.head_groups"));
  auto split = parse_sequence_split(cfg.get_string("cluster.sequence_split"));
  if (!split) return split.error();
  s->placement.split = *split;
  s->placement.replication = s->replication;

  auto mem = read_host_memory();
  if (!mem) return mem.error();
  s->host_mem = *mem;
  if (s->device.memory_bytes_max == 0) {
    // Derived from this machine as an embedded run sees it; `pnmkv run --multiprocess`
    // derives it for its processes and writes the figure into the nodes' config. The
    // report's configuration echoes the figure.
    s->device.memory_bytes_max = derived_device_memory_bytes(*s, run_processes::embedded);
    s->device_memory_derived = true;
    auto set = s->cfg.set("cluster.device_memory_bytes_max", std::to_string(s->device.memory_bytes_max));
    if (!set) return set;
  }
  return std::shared_ptr<const run_setup>(std::move(s));
}

}  // namespace pnmkv
