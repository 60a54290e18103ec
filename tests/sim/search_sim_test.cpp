// The simulator prices selection.search = exact-int8 with the calibrated model of the pages
// rescored (model/work_sizes.hpp search_query_work): fewer device bytes than flat at 1M
// tokens, integer ops charged, the int8 summaries counted in device capacity, and the
// calibration value's source says when it is extrapolated or not measured.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tests/sim/sim_fixture.hpp"

namespace pnmkv {
namespace {

using sim_fixture::setup_of;

TEST(search_sim, exact_int8_reads_about_half_of_flats_summary_bytes) {
  const std::vector<std::string> base = {"workload.context_tokens=1048576", "workload.batch=2",
                                         "run.steps=4"};
  auto flat_sets = base, exact_sets = base;
  flat_sets.push_back("selection.search=flat");
  exact_sets.push_back("selection.search=exact-int8");
  auto a = setup_of(flat_sets);
  auto b = setup_of(exact_sets);
  ASSERT_TRUE(a && b);
  auto ra = simulate(a);
  auto rb = simulate(b);
  ASSERT_TRUE(ra && rb);
  const double ratio = rb->device_bytes_per_step / ra->device_bytes_per_step;
  EXPECT_LT(ratio, 0.6);
  EXPECT_GT(ratio, 0.45);
  // The int8 summaries take device memory.
  EXPECT_GT(rb->device_bytes_per_request, ra->device_bytes_per_request);
  // Uncalibrated: the source says the value was not measured.
  bool noted = false;
  for (const auto& [name, v] : rb->calibration)
    if (name == "search_rescored_per_selected") noted = v.source.find("not measured") != std::string::npos;
  EXPECT_TRUE(noted);
}

TEST(search_sim, a_calibration_outside_its_range_is_marked_extrapolated) {
  const auto file = std::filesystem::temp_directory_path() / "pnmkv_search_cal.json";
  std::ofstream(file) << R"({"format": "pnmkv-calibration/1",
    "measured": {"search": {"search": "exact-int8", "pages_per_search_min": 1000, "pages_per_search_max": 2000}},
    "values": {"search_rescored_per_selected": {"value": 1.5, "samples": 10}}})";
  auto s = setup_of({"workload.context_tokens=1048576", "selection.search=exact-int8",
                     "sim.calibration_file=" + file.string()});
  std::filesystem::remove(file);
  ASSERT_TRUE(s);
  EXPECT_DOUBLE_EQ(s->search.rescored_per_selected, 1.5);
  EXPECT_NE(s->cal.search_rescored_per_selected.source.find("EXTRAPOLATED"), std::string::npos)
      << s->cal.search_rescored_per_selected.source;
}


// A calibration with several runs' points: the simulator asks the touched-fraction model
// (model/search_touch.hpp) for its own searches, says so, and marks what it extrapolates;
// a malformed point is refused naming it.
TEST(search_sim, search_points_drive_the_rescored_fraction_by_context_and_budget) {
  const auto file = std::filesystem::temp_directory_path() / "pnmkv_search_points.json";
  // Llama-3.1-8B on the default 4 devices: one search looks at context / 16 / 1 pages
  // (8 KV heads over a pool of 4: no sequence shards), selecting budget / context.
  std::ofstream(file) << R"({"format": "pnmkv-calibration/1", "values": {},
    "search_points": [
      {"pages": 8192, "selected_fraction": 0.015625, "heads_scored": 4, "aggregation": "max",
       "workload": "synthetic", "rescored_per_selected": 1.2, "samples": 100},
      {"pages": 65536, "selected_fraction": 0.001953125, "heads_scored": 4, "aggregation": "max",
       "workload": "synthetic", "rescored_per_selected": 1.02, "samples": 100}]})";
  auto at = [&](uint64_t context, std::vector<std::string> more = {}) {
    std::vector<std::string> sets = {"workload.context_tokens=" + std::to_string(context),
                                     "selection.search=exact-int8", "selection.budget_tokens=2048",
                                     "sim.calibration_file=" + file.string()};
    sets.insert(sets.end(), more.begin(), more.end());
    return setup_of(sets);
  };
  auto small = at(131072), large = at(1048576), mid = at(262144), huge = at(4194304);
  auto sum = at(131072, {"selection.gqa_aggregation=sum"});
  std::ofstream(file) << R"({"format": "pnmkv-calibration/1", "values": {},
    "search_points": [{"pages": 8192, "selected_fraction": 2, "heads_scored": 4, "aggregation": "max",
       "workload": "synthetic", "rescored_per_selected": 1.2}]})";
  auto bad_cfg = load_config(sim_fixture::default_file, {"selection.search=exact-int8",
                                                         "sim.calibration_file=" + file.string()});
  ASSERT_TRUE(bad_cfg) << bad_cfg.error().to_string();
  auto bad = make_sim_setup(*bad_cfg);
  std::filesystem::remove(file);
  ASSERT_TRUE(small && large && mid && huge && sum);
  EXPECT_DOUBLE_EQ(small->search.rescored_per_selected, 1.2);
  EXPECT_DOUBLE_EQ(large->search.rescored_per_selected, 1.02);
  EXPECT_GT(mid->search.rescored_per_selected, 1.02);
  EXPECT_LT(mid->search.rescored_per_selected, 1.2);
  for (const auto* s : {&small, &large, &mid}) {
    const std::string& src = (**s).cal.search_rescored_per_selected.source;
    EXPECT_NE(src.find("touched-fraction model"), std::string::npos) << src;
    EXPECT_EQ(src.find("EXTRAPOLATED"), std::string::npos) << src;
  }
  EXPECT_NE(huge->cal.search_rescored_per_selected.source.find("EXTRAPOLATED"), std::string::npos)
      << huge->cal.search_rescored_per_selected.source;
  EXPECT_NE(sum->cal.search_rescored_per_selected.source.find("sum aggregation"), std::string::npos)
      << sum->cal.search_rescored_per_selected.source;
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("search_points[0]: selected_fraction"), std::string::npos)
      << bad.error().message();
}

}  // namespace
}  // namespace pnmkv
