// The touched-fraction model of exact page searches (model/search_touch.hpp): a measured
// point is its own answer; between two points of one shape the estimate lies between
// their values and moves towards the nearer; outside the measured range on either axis, or
// for a shape no point measured, the estimate says EXTRAPOLATED and names the axis; points
// of another shape never outweigh the shape's own; bad points are refused naming the field.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "model/search_touch.hpp"

namespace pnmkv {
namespace {

gqa_aggregation agg_of(const char* name) { return *value_of(gqa_aggregation_names, name); }
search_point pt(double pages, double fraction, double r, uint32_t heads = 16, const char* agg = "max",
                const char* workload = "synthetic") {
  return {pages, fraction, heads, agg_of(agg), workload, r, 100};
}
search_touch_query q(double pages, double fraction, uint32_t heads = 16, const char* agg = "max",
                     const char* workload = "synthetic") {
  return {pages, fraction, heads, agg_of(agg), workload};
}

TEST(search_touch, a_measured_point_is_its_own_answer) {
  const std::vector<search_point> pts = {pt(8192, 0.002, 1.03), pt(1024, 0.016, 1.09)};
  const auto e = estimate_search_touch(pts, q(8192, 0.002));
  EXPECT_DOUBLE_EQ(e.rescored_per_selected, 1.03);
  EXPECT_FALSE(e.extrapolated) << e.note;
  EXPECT_EQ(e.points_used, 2u);
}

TEST(search_touch, between_two_points_the_estimate_lies_between_and_leans_to_the_nearer) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> u(0, 1);
  for (int i = 0; i < 500; ++i) {
    const double p0 = std::exp2(8 + 8 * u(rng)), p1 = p0 * std::exp2(1 + 4 * u(rng));
    const double r0 = 1 + u(rng), r1 = 1 + u(rng);
    const std::vector<search_point> pts = {pt(p0, 0.01, r0), pt(p1, 0.01, r1)};
    const double t = u(rng);
    const double pages = std::exp2(std::log2(p0) + t * (std::log2(p1) - std::log2(p0)));
    const auto e = estimate_search_touch(pts, q(pages, 0.01));
    EXPECT_GE(e.rescored_per_selected, std::min(r0, r1) - 1e-12);
    EXPECT_LE(e.rescored_per_selected, std::max(r0, r1) + 1e-12);
    EXPECT_FALSE(e.extrapolated) << e.note;
    if (std::abs(t - 0.5) > 0.05 && std::abs(r0 - r1) > 1e-3) {
      const double nearer = t < 0.5 ? r0 : r1, farther = t < 0.5 ? r1 : r0;
      EXPECT_LT(std::abs(e.rescored_per_selected - nearer), std::abs(e.rescored_per_selected - farther));
    }
  }
}

TEST(search_touch, outside_the_measured_range_is_an_extrapolation_naming_the_axis) {
  const std::vector<search_point> pts = {pt(1024, 0.01, 1.1), pt(4096, 0.01, 1.05)};
  const auto bigger = estimate_search_touch(pts, q(65536, 0.01));
  EXPECT_TRUE(bigger.extrapolated);
  EXPECT_NE(bigger.note.find("searches of ~65536 pages"), std::string::npos) << bigger.note;
  // Far outside, the nearest measurement dominates (no trend is extended past the data).
  const double far = estimate_search_touch(pts, q(1 << 20, 0.01)).rescored_per_selected;
  EXPECT_LT(std::abs(far - 1.05), std::abs(far - 1.1));
  EXPECT_GE(far, 1.05);
  const auto budget = estimate_search_touch(pts, q(2048, 0.1));
  EXPECT_TRUE(budget.extrapolated);
  EXPECT_NE(budget.note.find("selecting 10% of the pages"), std::string::npos) << budget.note;
  // Within a tenth of an octave (a run's context grows as it decodes) is not.
  EXPECT_FALSE(estimate_search_touch(pts, q(4096 * 1.05, 0.01)).extrapolated);
}

TEST(search_touch, a_shape_no_point_measured_is_an_extrapolation_and_its_own_points_win) {
  const std::vector<search_point> pts = {pt(4096, 0.01, 1.5, 16), pt(4096, 0.01, 1.02, 8),
                                         pt(4096, 0.01, 3.0, 1, "sum")};
  const auto g16 = estimate_search_touch(pts, q(4096, 0.01, 16));
  EXPECT_DOUBLE_EQ(g16.rescored_per_selected, 1.5);
  EXPECT_FALSE(g16.extrapolated);
  const auto g4 = estimate_search_touch(pts, q(4096, 0.01, 4));
  EXPECT_TRUE(g4.extrapolated);
  EXPECT_NE(g4.note.find("4 heads scored per KV head not measured"), std::string::npos) << g4.note;
  EXPECT_LE(g4.rescored_per_selected, 1.5);  // from the max points only
  const auto trace = estimate_search_touch(pts, q(4096, 0.01, 16, "max", "trace"));
  EXPECT_TRUE(trace.extrapolated);
  EXPECT_NE(trace.note.find("max aggregation on the trace workload not measured"), std::string::npos) << trace.note;
}

TEST(search_touch, a_trace_search_takes_the_trace_points_and_a_synthetic_one_the_synthetic) {
  const std::vector<search_point> pts = {pt(512, 0.03, 1.09, 4, "max", "trace"),
                                         pt(512, 0.03, 1.12, 4, "max", "synthetic")};
  const auto tr = estimate_search_touch(pts, q(512, 0.03, 4, "max", "trace"));
  EXPECT_DOUBLE_EQ(tr.rescored_per_selected, 1.09);
  EXPECT_FALSE(tr.extrapolated) << tr.note;
  EXPECT_EQ(tr.points_used, 1u);
  EXPECT_DOUBLE_EQ(estimate_search_touch(pts, q(512, 0.03, 4)).rescored_per_selected, 1.12);
}

TEST(search_touch, the_estimate_is_never_below_one) {
  const std::vector<search_point> pts = {pt(1024, 0.01, 1.0), pt(2048, 0.01, 1.0)};
  EXPECT_GE(estimate_search_touch(pts, q(1500, 0.01)).rescored_per_selected, 1.0);
}

TEST(search_touch, bad_points_are_refused_naming_the_field) {
  EXPECT_NE(search_point_error(pt(0, 0.01, 1.1)).find("pages"), std::string::npos);
  EXPECT_NE(search_point_error(pt(64, 0, 1.1)).find("selected_fraction"), std::string::npos);
  EXPECT_NE(search_point_error(pt(64, 1.5, 1.1)).find("selected_fraction"), std::string::npos);
  EXPECT_NE(search_point_error(pt(64, 0.1, 0.5)).find("rescored_per_selected"), std::string::npos);
  EXPECT_NE(search_point_error(pt(64, 0.1, 1.1, 0)).find("heads_scored"), std::string::npos);
  EXPECT_NE(search_point_error(pt(64, 0.1, 1.1, 8, "max", "real")).find("synthetic or trace"), std::string::npos);
  EXPECT_EQ(search_point_error(pt(64, 0.1, 1.1)), "");
}

}  // namespace
}  // namespace pnmkv
