// Building a sim_setup from the resolved configuration (see sim_setup.hpp).
#include "sim/sim_setup.hpp"

#include <algorithm>
#include <cstdio>
#include <numeric>

#include "schedulers/recall_cache.hpp"

namespace pnmkv {

namespace {

// Whether `tp` GPUs can split the model's heads evenly.
bool tp_divides(const model_shape& m, uint32_t tp) {
  return m.q_heads % tp == 0 && (m.kv_heads % tp == 0 || tp % m.kv_heads == 0);
}

// sim.tp × sim.pp GPUs (sim.tp = 0: the fewest that hold the weights), their host links and
// attention ranks.
status choose_gpus(const sim_section& k, sim_setup& s) {
  const model_shape& m = s.model;
  uint32_t tp = k.tp;
  uint32_t pp = k.pp;
  const double per_gpu_usable = s.hw.gpu.memory_bytes - s.hw.gpu.reserved_bytes;
  if (tp == 0) {
    const double weights = m.params_from_shape() * 2.0;
    for (uint32_t gpus = 1; gpus <= 512 && tp == 0; gpus = gpus < 8 ? gpus * 2 : gpus + 8) {
      const uint32_t t = std::min<uint32_t>(gpus, 8);
      if (!tp_divides(m, t)) continue;
      const uint32_t p = gpus / t;  // sim.tp = 0 chooses the stages too
      if (weights / double(t * p) <= k.weights_memory_fraction_max * per_gpu_usable) tp = t, pp = p;
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
  s.tp = tp;
  s.pp = pp;
  s.host_links = tp * static_cast<uint32_t>(std::max(1.0, s.hw.cxl.host_links));
  s.attention_ranks = std::min(tp, m.kv_heads);
  if (s.weight_bytes() >= s.gpu_usable_bytes())
    return status{errc::capacity,
                  "the weights of " + m.name + " (" + std::to_string(s.weight_bytes() / 1e9) +
                      " GB) do not fit " + std::to_string(s.gpus()) + " GPUs of " +
                      std::to_string(per_gpu_usable / 1e9) + " GB usable; raise sim.tp / sim.pp or "
                      "set sim.tp = 0"};
  return status::ok();
}

// Devices, pools, selection and placement.
void set_devices_and_selection(const run_spec& spec, sim_setup& s) {
  const model_shape& m = s.model;
  const cluster_section& c = spec.cluster;
  s.devices = c.pnm_devices;
  s.pool_auto = spec.sim.pool_auto;
  s.pool_devices = c.pool_devices == 0 ? s.devices : c.pool_devices;
  s.device_capacity_bytes = device_capacity_bytes(s.hw, s.mode);
  if (s.mode == run_mode::gpu_only) {
    // No device holds anything (docs/DESIGN.md §2): cluster.pnm_devices and the pool keys
    // are ignored, and no device is charged power or priced.
    s.devices = 0;
    s.pool_auto = false;
    s.pool_devices = 1;
  }

  const selection_section& sel = spec.selection;
  s.page_size_tokens = sel.page_size_tokens;
  // The budget at the workload's context: a closed batch's context, or an open workload's
  // nominal prompt (as actors/run_setup resolves it; model/selection_budget.hpp).
  s.budget_policy = sel.budget_policy();
  s.budget_tokens = selection_budget_tokens(s.budget_policy, spec.workload.context_tokens);
  s.summary_elem_bytes = sel.summary_elem_bytes();
  s.heads_scored = sel.gqa_aggregation == gqa_aggregation::max ? m.gqa_group() : 1;
  s.exact_cross_shard = sel.cross_shard == cross_shard_selection::exact;
  s.lookahead = sel.lookahead;
  s.wire = spec.run.wire_precision;
  s.selection = sel.describe(spec.run.wire_precision);
  s.search = {sel.search == page_search::exact_int8, s.cal.search_rescored_per_selected.value,
              int8_summary_index::default_block_pages};
  s.search_calibrated_pages_min = s.cal.measured_search_pages_min;
  s.search_calibrated_pages_max = s.cal.measured_search_pages_max;
  resolve_search_touch(s, spec.workload.context_tokens, sel.gqa_aggregation, spec.workload.from_trace);
  s.steady_budget_pages = spec.png.steady_budget_tokens / s.page_size_tokens;
  s.placement.page_size_tokens = s.page_size_tokens;
  s.placement.layers = m.layers;
  s.placement.kv_heads = m.kv_heads;
  s.placement.head_dim = m.head_dim;
  s.placement.summary_elem_bytes = s.summary_elem_bytes;
  s.placement.int8_summary_block_pages = sel.int8_summary_block_pages();
  s.placement.head_groups = c.head_groups;
  s.placement.split = c.sequence_split;
  s.placement.replication = c.replication;
}

// Workload (one set of workload.* keys for the live cluster and the simulator) and policies.
void set_workload_and_policies(const run_spec& spec, sim_setup& s) {
  const workload_section& w = spec.workload;
  const sim_section& k = spec.sim;
  s.workload = w.arrivals;
  s.batch_max_policy = k.batch_policy == sim_batch_policy::max;
  s.batch = w.batch;
  s.batch_cap = w.batch_max;
  s.context_tokens = w.context_tokens;
  s.steps = spec.run.steps;
  s.seed = spec.run.seed;
  s.requests = w.requests;
  s.arrival_rate_per_s = w.arrival_rate_per_s;
  s.prompt_spread_fraction = w.prompt_tokens_spread_fraction;
  s.output_tokens = w.output_tokens;
  s.trace_file = w.trace_file;
  s.duration_s_max = k.duration_s_max;

  s.prefill_chunk_tokens = w.prefill_chunk_tokens;
  s.tpot_ms_max = w.tpot_ms_max;
  s.summaries = spec.baseline.summaries;
  s.recall_cache = spec.baseline.recall_cache;
  s.charge_link_energy = k.charge_link_energy;
  s.baseline_overlap = k.baseline_overlap;
  s.batch_series_points_max = k.batch_series_points_max;
  s.step_reuse_steps = k.step_reuse_steps;
}

}  // namespace

result<std::shared_ptr<const sim_setup>> make_sim_setup(const run_spec& spec, const config& cfg) {
  auto s = std::make_shared<sim_setup>();
  s->cfg = cfg;
  s->mode = spec.run.mode;
  s->micro_batches = spec.run.micro_batches;
  s->model = spec.model;
  s->hw = spec.hardware;
  s->hw.gpu.price_usd *= spec.sim.price_scale_gpu;
  s->hw.gpu.host_server_usd *= spec.sim.price_scale_gpu;
  s->hw.pnm.price_usd *= spec.sim.price_scale_pnm;
  s->hw.expander.price_usd *= spec.sim.price_scale_expander;
  auto fabric = load_gpu_fabric(spec.sim.gpu_fabric_file);
  if (!fabric) return fabric.error();
  s->fabric = *fabric;
  auto cal = calibration_from_spec(spec.sim);
  if (!cal) return cal.error();
  s->cal = *cal;
  s->costs = std::make_shared<cost_model>(s->hw, s->model);
  if (auto st = choose_gpus(spec.sim, *s); !st) return st;
  set_devices_and_selection(spec, *s);
  set_workload_and_policies(spec, *s);
  if (s->mode == run_mode::baseline) {
    auto cache = recall_cache_capacity_tokens(s->recall_cache, spec.baseline.recall_cache_tokens, s->budget_tokens,
                                              s->page_size_tokens);
    if (!cache) return cache.error();
    s->recall_cache_tokens = *cache;
  } else {
    s->recall_cache = recall_cache_policy::none;
  }
  return std::shared_ptr<const sim_setup>(std::move(s));
}

result<std::shared_ptr<const sim_setup>> make_sim_setup(const config& cfg) {
  auto spec = resolve_run_spec(cfg);
  if (!spec) return spec.error();
  return make_sim_setup(*spec, cfg);
}

}  // namespace pnmkv
