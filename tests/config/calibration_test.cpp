// Properties of the calibration file (config/calibration.hpp): it can replace each sim.*
// calibration value with exactly what the config key itself admits, no more and no less
// (one range, the schema's), and a refusal names the value and that range.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "config/calibration.hpp"

namespace pnmkv {
namespace {

namespace fs = std::filesystem;

std::string number_text(double x) {
  std::ostringstream os;
  os.precision(17);
  os << x;
  return os.str();
}

result<calibration> load_one(const std::string& name, double x) {
  // One file per process: test binaries of the normal and the sanitizer build may run at once.
  const fs::path file =
      fs::temp_directory_path() / ("pnmkv_calibration_test_" + std::to_string(::getpid()) + ".json");
  std::ofstream(file) << R"({"format": "pnmkv-calibration/1", "values": {")" << name << "\": " << number_text(x)
                      << "}}";
  auto c = load_calibration(file.string(), calibration{});
  fs::remove(file);
  return c;
}

TEST(calibration, a_file_admits_each_value_in_its_config_keys_range_only) {
  const auto names = calibration{}.entries();
  ASSERT_EQ(names.size(), 8u);
  for (const auto& [name, value] : names) {
    SCOPED_TRACE(name);
    const config_key* k = find_config_key("sim." + name);
    ASSERT_NE(k, nullptr);
    ASSERT_EQ(k->type, config_type::number);
    const double below = k->min - std::max(1e-3, std::fabs(k->min) * 1e-3);
    const double above = k->max + std::max(1e-3, std::fabs(k->max) * 1e-3);
    for (double x : {k->min, k->max, below, above}) {
      SCOPED_TRACE(x);
      const bool config_admits = config::defaults().set(k->key, number_text(x)).is_ok();
      auto c = load_one(name, x);
      EXPECT_EQ(c.is_ok(), config_admits) << (c ? "" : c.error().message());
      if (c) {
        for (const auto& [n, v] : c->entries()) {
          if (n == name) {
            EXPECT_EQ(v->value, x);
          }
        }
      } else {
        EXPECT_NE(c.error().message().find("values." + name), std::string::npos) << c.error().message();
      }
    }
    // Both ends of the range are admitted and just past them refused.
    EXPECT_TRUE(load_one(name, k->min));
    EXPECT_TRUE(load_one(name, k->max));
    EXPECT_FALSE(load_one(name, below));
    EXPECT_FALSE(load_one(name, above));
  }
}

TEST(calibration, a_refusal_names_the_value_and_the_schema_range) {
  // sim.steady_set_fraction admits [0, 64]: a file's 65 is refused with that range.
  auto c = load_one("steady_set_fraction", 65);
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("values.steady_set_fraction = 65 is outside [0, 64]"), std::string::npos)
      << c.error().message();
}

// A search point (model/search_touch.hpp) is refused naming its index, the field and the
// allowed values: an unknown aggregation, a missing field, a value out of range.
TEST(calibration, a_bad_search_point_is_refused_naming_it) {
  const fs::path file =
      fs::temp_directory_path() / ("pnmkv_calibration_points_" + std::to_string(::getpid()) + ".json");
  auto load_points = [&](const std::string& second) {
    std::ofstream(file) << R"({"format": "pnmkv-calibration/1", "values": {}, "search_points": [
      {"pages": 1024, "selected_fraction": 0.1, "heads_scored": 4, "aggregation": "max",
       "workload": "synthetic", "rescored_per_selected": 1.1},)" << second << "]}";
    auto c = load_calibration(file.string(), calibration{});
    fs::remove(file);
    return c;
  };
  const std::string good = R"({"pages": 64, "selected_fraction": 0.5, "heads_scored": 1, "aggregation": "sum",
    "workload": "trace", "rescored_per_selected": 1.0, "samples": 7})";
  auto ok = load_points(good);
  ASSERT_TRUE(ok) << ok.error().to_string();
  ASSERT_EQ(ok->search_points.size(), 2u);
  EXPECT_EQ(ok->search_points[1].aggregation, gqa_aggregation::sum);
  EXPECT_EQ(ok->search_points[1].workload, "trace");
  EXPECT_EQ(ok->search_points[1].samples, 7u);
  const std::pair<std::string, std::string> bad[] = {
      {R"({"pages": 64, "selected_fraction": 0.5, "heads_scored": 1, "aggregation": "mean",
          "workload": "trace", "rescored_per_selected": 1.0})",
       "search_points[1]: aggregation 'mean' is unknown; allowed: max, sum"},
      {R"({"pages": 64, "selected_fraction": 0.5, "aggregation": "sum", "workload": "trace",
          "rescored_per_selected": 1.0})",
       "search_points[1] needs pages"},
      {R"({"pages": 64, "selected_fraction": 0.5, "heads_scored": 1, "aggregation": "sum",
          "workload": "trace", "rescored_per_selected": 0.9})",
       "search_points[1]: rescored_per_selected must be in [1, 1e6]"},
  };
  for (const auto& [point, why] : bad) {
    auto c = load_points(point);
    ASSERT_FALSE(c) << point;
    EXPECT_NE(c.error().message().find(why), std::string::npos) << c.error().message();
  }
}

}  // namespace
}  // namespace pnmkv
