// How much an exact page search (selection.search = exact-int8) rescores, as a model the
// simulator can ask for any search: pages scored exactly per page selected, from points
// measured by live runs (`pnmkv run --calibration-out`, one point per run: sim/README.md).
//
// A search is described by the pages it looks at (one KV head's pages on one sequence
// shard), the fraction of them it selects (the budget over the context), the query heads
// it scores per KV head (the GQA group with `max` aggregation, 1 with `sum`), the
// aggregation and the workload. The model takes the points measured with the same heads
// scored, aggregation and workload (falling back, and saying so, to the same aggregation
// and workload, then to every point) and interpolates between them by inverse squared
// distance in (log2 pages, log2 selected fraction): the rescored fraction falls as the
// search grows (the bound prunes more of a larger set) and as the budget shrinks. A search
// outside the measured range on either axis, or of a shape no point measured, is an
// extrapolation, and the note says which axis and by how much.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/score.hpp"  // gqa_aggregation

namespace pnmkv {

// One live run's measurement.
struct search_point {
  double pages = 0;              // pages one search looked at (the run's mean), > 0
  double selected_fraction = 0;  // pages selected / pages looked at, in (0, 1]
  uint32_t heads_scored = 1;     // query heads scored per KV head (GQA group for max)
  gqa_aggregation aggregation = gqa_aggregation::max;
  std::string workload;          // "synthetic" | "trace"
  double rescored_per_selected = 1;  // >= 1
  uint64_t samples = 0;              // searches it was measured over
};

struct search_touch_query {
  double pages = 0;
  double selected_fraction = 0;
  uint32_t heads_scored = 1;
  gqa_aggregation aggregation = gqa_aggregation::max;
  std::string workload;
};

struct search_touch_estimate {
  double rescored_per_selected = 1;
  size_t points_used = 0;
  bool extrapolated = false;
  std::string note;  // how it was found: the points' ranges, and any extrapolation
};

// `points` must not be empty; every point valid (search_point_error returns "" for it).
search_touch_estimate estimate_search_touch(const std::vector<search_point>& points,
                                            const search_touch_query& q);

// "" when `p` is a valid measurement, else what is wrong with it, naming the field and
// the allowed values.
std::string search_point_error(const search_point& p);

}  // namespace pnmkv
