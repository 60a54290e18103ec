// sim.* keys: the scale-out simulator (`pnmkv sim`, sim/README.md). The simulator also
// reads the run, model, hardware, workload, selection and cluster keys, so one config file
// drives both the live cluster and the simulator and the two can be compared; arrivals,
// batch cap and prefill chunks are workload.* keys (schema_workload.cpp), shared with the
// live cluster.
#include "config/enums.hpp"
#include "config/schema_parts.hpp"

namespace pnmkv {

std::vector<config_key> schema_keys_sim() {
  using t = config_type;
  return {
      {"sim.batch_policy", t::choice, "config", 0, 0, names_of(sim_batch_policy_names),
       "workload.arrivals = closed: workload.batch requests (config) or as many as GPU "
       "memory, device capacity, workload.batch_max and the TPOT limit admit (max)"},
      {"sim.duration_s_max", t::number, "1e7", 1e-3, 1e12, {},
       "Simulated seconds at most (open workloads); requests unfinished then are reported"},
      {"sim.tp", t::integer, "1", 0, 64, {},
       "Tensor-parallel GPUs for the dense layers (0: the fewest that hold the weights)"},
      {"sim.pp", t::integer, "1", 0, 64, {},
       "Pipeline stages (chosen, whatever this says, when sim.tp = 0; 0 means 1 otherwise)"},
      {"sim.weights_memory_fraction_max", t::number, "0.7", 0.05, 1, {},
       "sim.tp = 0: weights may take at most this fraction of the GPUs' usable memory"},
      {"sim.gpu_fabric_file", t::path, "hardware/h100-nvlink-fabric.yaml", 0, 0, {},
       "NVLink figures with sources (tensor-parallel all-reduce, pipeline hand-off)"},
      {"sim.pool_auto", t::boolean, "false", 0, 0, {},
       "Pick the pool size (a divisor of cluster.pnm_devices; else cluster.pool_devices) with "
       "the cost model: closed workloads run every one and keep the one reporting the most "
       "tokens/s (ties: the smaller); open ones rate each at the batch admission saturates at"},
      {"sim.baseline_overlap", t::boolean, "true", 0, 0, {},
       "baseline: recall a head's pages as soon as its selection is known and attend them as "
       "they arrive (double-buffered); false: layer-wide rounds, as the live cluster composes"},
      {"sim.calibration_file", t::path, "", 0, 0, {},
       "JSON from `pnmkv run --calibration-out` (format pnmkv-calibration/1); its values "
       "replace the sim.* ones below"},
      {"sim.steady_hit_fraction", t::number, "0.25", 0, 1, {},
       "png-kv: fraction of the budget served by steady pages on the GPU (assumed until "
       "calibrated; the live policy keeps at most png.steady_budget_tokens, 512 of 2048)"},
      {"sim.steady_set_fraction", t::number, "0.25", 0, 64, {},
       "png-kv: steady pages held on the GPU per (request, layer, KV head), as a fraction of "
       "the budget (assumed until calibrated)"},
      {"sim.steady_churn_fraction", t::number, "0.1", 0, 1, {},
       "png-kv: fraction of the steady set replaced at each re-evaluation (assumed)"},
      {"sim.steady_reeval_steps", t::number, "8", 1, 1e6, {},
       "png-kv: steps between steady-set re-evaluations"},
      {"sim.selection_overlap", t::number, "0.8", 0, 1, {},
       "Fraction of a step's selected pages the previous step selected (assumed; for "
       "reference: baseline's recalls use sim.recall_hit_fraction, which equals it for a "
       "recall cache of one budget)"},
      {"sim.recall_hit_fraction", t::number, "0.8", 0, 1, {},
       "baseline with baseline.recall_cache = lru: selected pages found in the GPU's recall "
       "cache after a request's first decode step (assumed until calibrated; the live run "
       "measures it)"},
      {"sim.selection_spread", t::number, "1", 1, 1e6, {},
       "Busiest sequence shard's share of a global selection over the even share (1: even)"},
      {"sim.search_rescored_per_selected", t::number, "1", 1, 1e6, {},
       "selection.search = exact-int8: pages a device's search scores exactly per page it "
       "selects (1, the least possible, until calibrated: a live run measures it)"},
      {"sim.price_scale_gpu", t::number, "1", 0, 100, {},
       "Multiplies the GPU price and host share (price sensitivity)"},
      {"sim.price_scale_pnm", t::number, "1", 0, 100, {}, "Multiplies the PNM device price"},
      {"sim.price_scale_expander", t::number, "1", 0, 100, {},
       "Multiplies the passive expander price"},
      {"sim.charge_link_energy", t::boolean, "true", 0, 0, {},
       "Charge link_transfer energy for every byte on the CXL links"},
      {"sim.step_reuse_steps", t::integer, "16", 1, 4096, {},
       "Reuse a step's time and energy for up to this many steps while the batch is unchanged "
       "(each step adds a token per request — at most one K/V row and a summary per head: "
       "relative error below steps / selection.budget_tokens; 1: exact). A request held back "
       "by workload.tpot_ms_max is offered again after as many step boundaries"},
      {"sim.batch_series_points_max", t::integer, "2000", 2, 1.0e6, {},
       "Points kept of the batch-size-over-time series (evenly thinned)"},
  };
}

}  // namespace pnmkv
