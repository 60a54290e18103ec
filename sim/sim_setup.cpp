// Building a sim_setup from the configuration (see sim_setup.hpp).
#include "sim/sim_setup.hpp"

#include <algorithm>
#include <filesystem>

#include "core/score.hpp"

namespace pnmkv {

namespace {

std::string resolve_data_file(const std::string& name, const config& cfg) {
  namespace fs = std::filesystem;
  if (name.empty() || fs::path(name).is_absolute() || fs::exists(name) || cfg.source_file().empty())
    return name;
  fs::path dir = fs::path(cfg.source_file()).parent_path();
  if (fs::exists(dir / name)) return (dir / name).lexically_normal().string();
  if (fs::exists(dir.parent_path() / name)) return (dir.parent_path() / name).lexically_normal().string();
  return name;
}

// Whether `tp` GPUs can split the model's heads evenly.
bool tp_divides(const model_shape& m, uint32_t tp) {
  return m.q_heads % tp == 0 && (m.kv_heads % tp == 0 || tp % m.kv_heads == 0);
}

}  // namespace

result<std::shared_ptr<const sim_setup>> make_sim_setup(const config& cfg) {
  auto s = std::make_shared<sim_setup>();
  s->cfg = cfg;
  auto mode = parse_run_mode(cfg.get_string("run.mode"));
  if (!mode) return mode.error();
  s->mode = *mode;
  auto model = load_model_shape(cfg.get_string("model.file"));
  if (!model) return model.error();
  s->model = *model;
  auto hw = load_hardware(cfg.get_string("hardware.file"));
  if (!hw) return hw.error();
  s->hw = *hw;
  s->hw.gpu.price_usd *= cfg.get_number("sim.price_scale_gpu");
  s->hw.gpu.host_server_usd *= cfg.get_number("sim.price_scale_gpu");
  s->hw.pnm.price_usd *= cfg.get_number("sim.price_scale_pnm");
  s->hw.expander.price_usd *= cfg.get_number("sim.price_scale_expander");
  auto fabric = load_gpu_fabric(cfg.get_string("sim.gpu_fabric_file"));
  if (!fabric) return fabric.error();
  s->fabric = *fabric;
  auto cal = calibration_from_config(cfg);
  if (!cal) return cal.error();
  s->cal = *cal;
  s->costs = std::make_shared<cost_model>(s->hw, s->model);
  const model_shape& m = s->model;

  // GPU topology.
  uint32_t tp = static_cast<uint32_t>(cfg.get_int("sim.tp"));
  uint32_t pp = static_cast<uint32_t>(cfg.get_int("sim.pp"));
  const double per_gpu_usable = s->hw.gpu.memory_bytes - s->hw.gpu.reserved_bytes;
  if (tp == 0) {
    const double frac = cfg.get_number("sim.weights_memory_fraction_max");
    const double weights = m.params_from_shape() * 2.0;
    tp = 0;
    for (uint32_t gpus = 1; gpus <= 512 && tp == 0; gpus = gpus < 8 ? gpus * 2 : gpus + 8) {
      const uint32_t t = std::min<uint32_t>(gpus, 8);
      if (!tp_divides(m, t)) continue;
      const uint32_t p = gpus / t;  // sim.tp = 0 chooses the stages too
      if (weights / double(t * p) <= frac * per_gpu_usable) tp = t, pp = p;
    }
    if (tp == 0)
      return status{errc::capacity, "sim.tp = 0: no tensor x pipeline split up to 512 GPUs holds the "
                                    "weights of " + m.name + " within sim.weights_memory_fraction_max"};
  }
  if (pp == 0) pp = 1;
  if (!tp_divides(m, tp))
    return status{errc::invalid_argument,
                  "sim.tp = " + std::to_string(tp) + " must divide the query heads (" +
                      std::to_string(m.q_heads) + ") and divide or be a multiple of the KV heads (" +
                      std::to_string(m.kv_heads) + ")"};
  if (pp > m.layers)
    return status{errc::invalid_argument, "sim.pp = " + std::to_string(pp) +
                                              " exceeds the model's layers (" + std::to_string(m.layers) + ")"};
  s->tp = tp;
  s->pp = pp;
  s->host_links = tp * static_cast<uint32_t>(std::max(1.0, s->hw.cxl.host_links));
  s->attention_ranks = std::min(tp, m.kv_heads);
  if (s->weight_bytes() >= s->gpu_usable_bytes())
    return status{errc::capacity,
                  "the weights of " + m.name + " (" + std::to_string(s->weight_bytes() / 1e9) +
                      " GB) do not fit " + std::to_string(s->gpus()) + " GPUs of " +
                      std::to_string(per_gpu_usable / 1e9) + " GB usable; raise sim.tp / sim.pp or "
                      "set sim.tp = 0"};

  // Devices and pools.
  s->devices = static_cast<uint32_t>(cfg.get_int("cluster.pnm_devices"));
  const uint32_t pool = static_cast<uint32_t>(cfg.get_int("cluster.pool_devices"));
  s->pool_auto = cfg.get_bool("sim.pool_auto");
  s->pool_devices = pool == 0 ? s->devices : pool;
  if (s->devices % s->pool_devices != 0)
    return status{errc::invalid_argument, "cluster.pool_devices = " + std::to_string(pool) +
                                              " must divide cluster.pnm_devices = " +
                                              std::to_string(s->devices)};
  s->device_capacity_bytes =
      s->mode == run_mode::baseline ? s->hw.expander.capacity_bytes : s->hw.pnm.capacity_bytes;

  // Selection.
  s->page_size_tokens = static_cast<uint32_t>(cfg.get_int("selection.page_size_tokens"));
  s->budget_tokens = static_cast<uint64_t>(cfg.get_int("selection.budget_tokens"));
  if (s->budget_tokens < 2ull * s->page_size_tokens)
    return status{errc::invalid_argument,
                  "selection.budget_tokens = " + std::to_string(s->budget_tokens) +
                      " is below the two always-kept pages (" + std::to_string(2 * s->page_size_tokens) +
                      " tokens)"};
  s->summary_elem_bytes = cfg.get_string("selection.summary_precision") == "fp32" ? 4 : 2;
  auto agg = parse_gqa_aggregation(cfg.get_string("selection.gqa_aggregation").c_str());
  if (!agg) return agg.error();
  s->heads_scored = *agg == gqa_aggregation::max ? m.gqa_group() : 1;
  // selection.cross_shard belongs to the live cluster's schema (exact | local); local
  // where the schema does not have it yet (the live cluster then selects locally).
  s->exact_cross_shard = find_config_key("selection.cross_shard") &&
                         cfg.get_string("selection.cross_shard") == "exact";
  s->placement.page_size_tokens = s->page_size_tokens;
  s->placement.layers = m.layers;
  s->placement.kv_heads = m.kv_heads;
  s->placement.head_dim = m.head_dim;
  s->placement.summary_elem_bytes = s->summary_elem_bytes;
  s->placement.head_groups = static_cast<uint32_t>(cfg.get_int("cluster.head_groups"));
  auto split = parse_sequence_split(cfg.get_string("cluster.sequence_split"));
  if (!split) return split.error();
  s->placement.split = *split;
  s->placement.replication = static_cast<uint32_t>(cfg.get_int("cluster.replication"));

  // Workload.
  // One set of workload.* keys for the live cluster and the simulator.
  const std::string wl = cfg.get_string("workload.arrivals");
  s->workload = wl == "poisson" ? sim_workload::poisson : wl == "trace" ? sim_workload::trace
                                                                          : sim_workload::closed;
  s->batch_max_policy = cfg.get_string("sim.batch_policy") == "max";
  s->batch = static_cast<uint32_t>(cfg.get_int("workload.batch"));
  s->batch_cap = static_cast<uint32_t>(cfg.get_int("workload.batch_max"));
  s->context_tokens = static_cast<uint64_t>(cfg.get_int("workload.context_tokens"));
  s->steps = static_cast<uint32_t>(cfg.get_int("run.steps"));
  s->seed = static_cast<uint64_t>(cfg.get_int("run.seed"));
  s->requests = static_cast<uint32_t>(cfg.get_int("workload.requests"));
  s->arrival_rate_per_s = cfg.get_number("workload.arrival_rate_per_s");
  s->prompt_spread_fraction = cfg.get_number("workload.prompt_tokens_spread_fraction");
  s->output_tokens = static_cast<uint64_t>(cfg.get_int("workload.output_tokens"));
  s->trace_file = resolve_data_file(cfg.get_string("workload.trace_file"), cfg);
  if (s->workload == sim_workload::trace && s->trace_file.empty())
    return status{errc::invalid_argument, "workload.arrivals = trace needs workload.trace_file"};
  s->duration_s_max = cfg.get_number("sim.duration_s_max");

  // Policies.
  s->prefill_chunk_tokens = static_cast<uint64_t>(cfg.get_int("workload.prefill_chunk_tokens"));
  s->tpot_ms_max = cfg.get_number("workload.tpot_ms_max");
  // One key for the live cluster and the simulator (baseline.summaries).
  const std::string sr = cfg.get_string("baseline.summaries");
  s->summaries = sr == "resident" ? summary_residence::hbm : sr == "link" ? summary_residence::link
                                                                      : summary_residence::auto_fit;
  s->recall_layers_in_flight = static_cast<uint32_t>(cfg.get_int("sim.baseline_recall_layers_in_flight"));
  s->recall_reuse = cfg.get_bool("sim.baseline_recall_reuse");
  s->charge_link_energy = cfg.get_bool("sim.charge_link_energy");
  s->baseline_overlap = cfg.get_bool("sim.baseline_overlap");
  s->batch_series_points_max = static_cast<uint32_t>(cfg.get_int("sim.batch_series_points_max"));
  s->step_reuse_steps = static_cast<uint32_t>(cfg.get_int("sim.step_reuse_steps"));
  return std::shared_ptr<const sim_setup>(std::move(s));
}

}  // namespace pnmkv
