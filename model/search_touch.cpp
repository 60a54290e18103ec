#include "model/search_touch.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "core/check.hpp"

namespace pnmkv {

std::string search_point_error(const search_point& p) {
  if (!(std::isfinite(p.pages) && p.pages >= 1))
    return "pages must be a number >= 1 (pages one search looked at)";
  if (!(std::isfinite(p.selected_fraction) && p.selected_fraction > 0 && p.selected_fraction <= 1))
    return "selected_fraction must be in (0, 1]";
  if (p.heads_scored < 1 || p.heads_scored > 64) return "heads_scored must be in [1, 64]";
  if (p.workload != "synthetic" && p.workload != "trace") return "workload must be synthetic or trace";
  if (!(std::isfinite(p.rescored_per_selected) && p.rescored_per_selected >= 1 && p.rescored_per_selected <= 1e6))
    return "rescored_per_selected must be in [1, 1e6]";
  return "";
}

search_touch_estimate estimate_search_touch(const std::vector<search_point>& points,
                                            const search_touch_query& q) {
  PNMKV_CHECK(!points.empty(), "no search points");
  PNMKV_CHECK(q.pages >= 1 && q.selected_fraction > 0, "pages=", q.pages, " fraction=", q.selected_fraction);
  search_touch_estimate out;
  // The points of this search's shape, else of its aggregation and workload, else all.
  std::vector<const search_point*> use;
  std::string shape_note;
  auto pick = [&](auto keep) {
    use.clear();
    for (const auto& p : points)
      if (keep(p)) use.push_back(&p);
    return !use.empty();
  };
  if (!pick([&](const search_point& p) {
        return p.heads_scored == q.heads_scored && p.aggregation == q.aggregation && p.workload == q.workload;
      })) {
    out.extrapolated = true;
    if (pick([&](const search_point& p) { return p.aggregation == q.aggregation && p.workload == q.workload; })) {
      shape_note = "; EXTRAPOLATED: " + std::to_string(q.heads_scored) +
                   " heads scored per KV head not measured, using other GQA groups";
    } else {
      pick([](const search_point&) { return true; });
      shape_note = "; EXTRAPOLATED: " + std::string(to_string(q.aggregation)) + " aggregation on the " + q.workload +
                   " workload not measured, using every point";
    }
  }
  const double x = std::log2(q.pages), y = std::log2(q.selected_fraction);
  double x0 = 1e300, x1 = -1e300, y0 = 1e300, y1 = -1e300;
  for (const search_point* p : use) {
    x0 = std::min(x0, std::log2(p->pages)), x1 = std::max(x1, std::log2(p->pages));
    y0 = std::min(y0, std::log2(p->selected_fraction)), y1 = std::max(y1, std::log2(p->selected_fraction));
  }
  // Inverse squared distance in (log2 pages, log2 fraction); a point within 1/64 of an
  // octave on both axes is the answer itself.
  double wsum = 0, vsum = 0;
  for (const search_point* p : use) {
    const double dx = std::log2(p->pages) - x, dy = std::log2(p->selected_fraction) - y;
    const double d2 = dx * dx + dy * dy;
    if (d2 < 1.0 / 4096) {
      wsum = 1, vsum = p->rescored_per_selected;
      break;
    }
    wsum += 1 / d2;
    vsum += p->rescored_per_selected / d2;
  }
  out.rescored_per_selected = std::max(1.0, vsum / wsum);
  out.points_used = use.size();
  // Outside the measured range on an axis (beyond a tenth of an octave, 7%: the context
  // grows while a run decodes) is an extrapolation.
  constexpr double slack = 0.1;
  char buf[320];
  std::snprintf(buf, sizeof buf, "; %zu measured point%s (pages %.0f-%.0f, selected %.3g%%-%.3g%%)", use.size(),
                use.size() == 1 ? "" : "s", std::exp2(x0), std::exp2(x1), 100 * std::exp2(y0), 100 * std::exp2(y1));
  out.note = buf;
  out.note += shape_note;
  if (x < x0 - slack || x > x1 + slack) {
    out.extrapolated = true;
    std::snprintf(buf, sizeof buf, "; EXTRAPOLATED: searches of ~%.0f pages", q.pages);
    out.note += buf;
  }
  if (y < y0 - slack || y > y1 + slack) {
    out.extrapolated = true;
    std::snprintf(buf, sizeof buf, "; EXTRAPOLATED: selecting %.3g%% of the pages", 100 * q.selected_fraction);
    out.note += buf;
  }
  return out;
}

}  // namespace pnmkv
