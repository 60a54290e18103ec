// What the step model (schedulers/step_model.hpp) needs to compose a decode step, and
// nothing else: the mode, the model shape and hardware figures with the cost model on them,
// the GPU topology (tensor × pipeline parallel, host links, attention ranks), the devices
// and their pools, the selection rule and the baseline policies. The simulator's
// `sim_setup` extends it with the workload and its own policies; the live cluster's run
// setup holds one describing the live host engine (one GPU, layer-wide baseline rounds),
// which the host engine charges its steps with and the TPOT admission limit predicts with.
#pragma once

#include <cstdint>
#include <memory>

#include "config/calibration.hpp"
#include "config/enums.hpp"  // summary_residence (baseline.summaries)
#include "model/cost_model.hpp"
#include "model/gpu_fabric.hpp"
#include "model/hardware.hpp"
#include "model/model_shape.hpp"
#include "model/modes.hpp"
#include "model/selection_budget.hpp"
#include "model/work_sizes.hpp"

namespace pnmkv {

struct step_setup {
  run_mode mode = run_mode::pnm_kv;
  model_shape model;
  hardware_spec hw;  // the simulator scales prices by sim.price_scale_*
  gpu_fabric fabric;
  // Numerics-only inputs of a prediction (steady pages, selection overlap and spread).
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

  // Devices: PNM devices (pnm-kv, png-kv) or passive expanders (baseline); gpu-only uses
  // none (nothing placed, charged or priced on them).
  uint32_t devices = 0;
  uint32_t pool_devices = 0;  // resolved: divides devices; 0 until the pool is chosen
  uint32_t pnm_devices() const {
    return mode == run_mode::pnm_kv || mode == run_mode::png_kv ? devices : 0;
  }
  uint32_t expanders() const { return mode == run_mode::baseline ? devices : 0; }

  // Selection.
  uint32_t page_size_tokens = 16;
  // Resolved from budget_policy at the workload's context (selection_budget_tokens), by
  // actors/run_setup and sim/sim_setup alike.
  selection_budget_policy budget_policy;
  uint64_t budget_tokens = 2048;
  uint64_t budget_pages() const { return budget_tokens / page_size_tokens; }
  uint32_t summary_elem_bytes = 2;
  // run.wire_precision: the queries' and partial outputs' element type on the host links.
  wire_precision wire = wire_precision::fp32;
  uint32_t heads_scored = 1;  // per group: all query heads (max) or one (sum)
  // Across s > 1 sequence shards: exact (two rounds: candidates, then the global top pages
  // attended where they live) or local (each shard takes budget/s pages, one round).
  bool exact_cross_shard = false;
  // Lookahead selection (selection.lookahead; pnm-kv only): a request's pages at step t are
  // those its shards selected with step t-1's query; the search for step t+1 runs in the
  // devices' idle time. On the step's path only the attention of the pages selected before;
  // a step is never shorter than its busiest device's work, searches included
  // (lookahead_step_floor). A request's first decode step selects with its own query.
  bool lookahead = false;
  // png-kv: png.steady_budget_tokens in pages, the most steady pages per (request, layer,
  // KV head) the GPU keeps (the live policy caps its set there, and at budget − 2 pages).
  uint64_t steady_budget_pages = UINT64_MAX;
  uint64_t steady_cap_pages() const {
    const uint64_t b = budget_pages();
    return steady_budget_pages < (b > 2 ? b - 2 : 0) ? steady_budget_pages : (b > 2 ? b - 2 : 0);
  }

  // Sub-batch overlap (run.micro_batches; 1: off; pnm-kv and png-kv): each stage's decoding
  // batch is cut into this many micro-batches, interleaved on the GPU and the device pool
  // (schedule_micro_batches, schedulers/step_timeline.hpp).
  uint32_t micro_batches = 1;

  // Policies.
  summary_residence summaries = summary_residence::auto_fit;
  // baseline: the GPU's cache of recalled pages (baseline.recall_cache,
  // schedulers/recall_cache.hpp) and its resolved capacity per (request, layer, KV head);
  // with the cache on a step recalls (1 - cal.recall_hit_fraction) of the selected pages,
  // all of them in a request's first decode step (a cold cache).
  recall_cache_policy recall_cache = recall_cache_policy::none;
  uint64_t recall_cache_tokens = 0;
  bool charge_link_energy = true;
  // baseline: recalls and attention pipelined per head (double buffers), or layer-wide
  // rounds (false: how the live host engine composes a layer).
  bool baseline_overlap = true;
  // selection.search and, for exact-int8, the calibrated pages rescored per selected page
  // (model/work_sizes.hpp); search_calibrated_pages: the pages per search the calibration
  // measured (min, max; 0 when uncalibrated): outside it the simulator extrapolates.
  work::search_model search;
  double search_calibrated_pages_min = 0, search_calibrated_pages_max = 0;
};

// exact-int8: the pages rescored per selected page for the searches `s` makes (a KV head's
// pages over its sequence shards, s = pool / gcd(KV heads, pool) as placement picks by
// default, selecting budget / context of them), into s.search and s.cal: from the
// calibration's touched-fraction model when it has points (model/search_touch.hpp), else
// its one value. The value's source says which, the points it came from, and when it
// extrapolates (printed with the results). Needs model, pool_devices, page_size_tokens,
// budget_tokens and heads_scored set; a no-op unless s.search.exact_int8.
void resolve_search_touch(step_setup& s, uint64_t context_tokens, gqa_aggregation aggregation, bool from_trace);

}  // namespace pnmkv
