#include <algorithm>
#include <cstdio>
#include <numeric>

#include "schedulers/step_setup.hpp"

namespace pnmkv {

void resolve_search_touch(step_setup& s, uint64_t context_tokens, gqa_aggregation aggregation, bool from_trace) {
  if (!s.search.exact_int8) return;
  const uint32_t pool = std::max<uint32_t>(1, s.pool_devices);
  const uint32_t shards = pool / std::gcd(s.model.kv_heads, pool);
  const double context = double(std::max<uint64_t>(1, context_tokens));
  const double pages = std::max(1.0, context / s.page_size_tokens / std::max<uint32_t>(1, shards));
  const double fraction = std::min(1.0, double(std::max<uint64_t>(1, s.budget_tokens)) / context);
  calibrated_value& v = s.cal.search_rescored_per_selected;
  char buf[200];
  if (!s.cal.search_points.empty()) {
    const search_touch_estimate e = estimate_search_touch(
        s.cal.search_points, {pages, fraction, s.heads_scored, aggregation, from_trace ? "trace" : "synthetic"});
    v.value = e.rescored_per_selected;
    std::snprintf(buf, sizeof buf, "touched-fraction model of calibration %s for searches of ~%.0f pages selecting %.3g%%",
                  s.cal.file.c_str(), pages, 100 * fraction);
    v.source = buf + e.note;
  } else if (s.search_calibrated_pages_max <= 0) {
    std::snprintf(buf, sizeof buf, "; not measured: searches here look at ~%.0f pages", pages);
    v.source += buf;
  } else if (pages < s.search_calibrated_pages_min || pages > s.search_calibrated_pages_max) {
    std::snprintf(buf, sizeof buf, "; EXTRAPOLATED: searches here look at ~%.0f pages, measured over %.0f-%.0f",
                  pages, s.search_calibrated_pages_min, s.search_calibrated_pages_max);
    v.source += buf;
  }
  s.search.rescored_per_selected = v.value;
}

}  // namespace pnmkv
