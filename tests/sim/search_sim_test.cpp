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

}  // namespace
}  // namespace pnmkv
