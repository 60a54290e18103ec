// Inputs of the simulator that only the numerics can give: how much of the budget the
// steady pages of png-kv serve, how fast the steady set changes, how much one step's
// selection overlaps the last one's, and how unevenly a global selection falls on the
// sequence shards. They come from a calibration file written by a live run
// (`pnmkv run --calibration-out FILE`, format "pnmkv-calibration/1", sim/README.md) or from
// the sim.* config keys; every value carries where it came from, and results print it.
#pragma once

#include <string>
#include <vector>

#include "config/spec.hpp"
#include "core/status.hpp"
#include "model/search_touch.hpp"

namespace pnmkv {

struct calibrated_value {
  double value = 0;
  std::string source;  // "calibration FILE (N samples)" or "config sim.KEY"
};

struct calibration {
  // Fraction of the budget (tokens) of a (request, layer, KV head) that falls on steady
  // pages, which png-kv attends on the GPU.
  calibrated_value steady_hit_fraction;
  // Steady-set size as a fraction of the budget (pages kept on the GPU per head).
  calibrated_value steady_set_fraction;
  // Fraction of the steady set replaced at each re-evaluation.
  calibrated_value steady_churn_fraction;
  // Steps between re-evaluations of the steady set (R).
  calibrated_value steady_reeval_steps;
  // Fraction of a step's selected pages that the previous step selected too.
  calibrated_value selection_overlap;
  // baseline, recall cache on: selected pages the GPU's recall cache holds (hits / selected
  // pages), over every step after a request's first decode step (a cold cache misses all).
  calibrated_value recall_hit_fraction;
  // Busiest shard's share of a global selection over the even share (1 = even).
  calibrated_value selection_spread;
  // exact-int8 page search: pages scored exactly per page selected (core/exact_search.hpp).
  calibrated_value search_rescored_per_selected;
  // The pages per search the file measured it over (0: unknown); the simulator says when
  // its own searches fall outside (extrapolation).
  double measured_search_pages_min = 0, measured_search_pages_max = 0;
  // The touched-fraction model's points (the file's "search_points": one per live run that
  // searched with exact-int8, concatenated); when there are any, the simulator asks
  // estimate_search_touch for its own searches instead of the one value above.
  std::vector<search_point> search_points;

  std::string file;  // empty when every value comes from config
  // Where the file says it was measured (for the report); empty when unknown.
  std::string measured_model;
  double measured_context_tokens = 0;
  double measured_budget_tokens = 0;

  // name -> value pointer, in a fixed order (for reports and loops).
  std::vector<std::pair<std::string, const calibrated_value*>> entries() const;
  // One line per value: "steady_hit_fraction = 0.45 (config sim.steady_hit_fraction)".
  std::string describe() const;
};

// Values from the sim.* keys, then, if sim.calibration_file names a file, from it (config
// resolved its name like every path key: config/config.hpp, resolve_config_path).
result<calibration> calibration_from_spec(const sim_section& sim);

// Reads a calibration file over `base` (values the file lacks keep base's). Errors name the
// file, the field and the allowed range.
result<calibration> load_calibration(const std::string& file, calibration base);

}  // namespace pnmkv
