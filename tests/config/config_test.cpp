// Properties of the configuration: defaults validate, files and --set overrides apply in
// order, and every kind of bad input is an error naming the key and what is allowed.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "config/config.hpp"

namespace pnmkv {
namespace {

std::string write_temp(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / "pnmkv_config_test";
  std::filesystem::create_directories(dir);
  auto p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

TEST(config, every_schema_default_is_valid) {
  config c = config::defaults();
  for (const auto& k : config_schema()) {
    SCOPED_TRACE(k.key);
    EXPECT_TRUE(c.set(k.key, k.default_value).is_ok());
  }
}

TEST(config, default_file_loads_and_resolves_paths) {
  auto c = load_config(default_file, {});
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_TRUE(std::filesystem::exists(c->get_string("model.file")));
  EXPECT_TRUE(std::filesystem::exists(c->get_string("hardware.file")));
  EXPECT_EQ(c->get_string("run.mode"), "pnm-kv");
}

TEST(config, overrides_apply_in_order_and_are_typed) {
  auto c = load_config(default_file, {"run.steps=7", "run.steps=9", "selection.budget_tokens=1e3",
                                      "eval.budgets_tokens=[16, 32]"});
  ASSERT_TRUE(c) << c.error().to_string();
  EXPECT_EQ(c->get_int("run.steps"), 9);
  EXPECT_EQ(c->get_int("selection.budget_tokens"), 1000);
  EXPECT_EQ(c->get_int_list("eval.budgets_tokens"), (std::vector<int64_t>{16, 32}));
}

TEST(config, unknown_key_names_the_known_ones) {
  auto c = load_config(default_file, {"selection.budget=5"});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("unknown key 'selection.budget'"), std::string::npos);
  EXPECT_NE(c.error().message().find("selection.budget_tokens"), std::string::npos);
  auto d = load_config(default_file, {"nosuch.key=5"});
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message().find("known sections"), std::string::npos);
}

// A removed key is refused with what replaced it, not just "unknown".
TEST(config, a_removed_key_names_its_replacement) {
  auto c = load_config(default_file, {"sim.baseline_recall_reuse=true"});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("sim.baseline_recall_reuse' was removed"), std::string::npos)
      << c.error().message();
  EXPECT_NE(c.error().message().find("baseline.recall_cache"), std::string::npos) << c.error().message();
  auto bad = load_config(default_file, {"baseline.recall_cache=fifo"});
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("baseline.recall_cache"), std::string::npos);
  EXPECT_NE(bad.error().message().find("lru"), std::string::npos) << bad.error().message();
}

TEST(config, out_of_range_and_wrong_type_name_the_allowed_values) {
  for (const char* bad : {"run.steps=0", "run.steps=-3", "run.steps=abc", "run.steps=1.5",
                          "selection.page_size_tokens=4096", "run.mode=turbo",
                          "eval.budgets_tokens=1,x", "run.steps"}) {
    SCOPED_TRACE(bad);
    auto c = load_config(default_file, {bad});
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code(), errc::invalid_argument);
    EXPECT_FALSE(c.error().message().empty());
  }
  auto c = load_config(default_file, {"run.mode=turbo"});
  EXPECT_NE(c.error().message().find("baseline|pnm-kv|png-kv"), std::string::npos);
}

TEST(config, budget_fraction_outside_zero_to_one_names_the_key_and_range) {
  for (const char* bad : {"selection.budget_fraction=-0.01", "selection.budget_fraction=1.5",
                          "selection.budget_fraction=abc"}) {
    SCOPED_TRACE(bad);
    auto c = load_config(default_file, {bad});
    ASSERT_FALSE(c);
    EXPECT_EQ(c.error().code(), errc::invalid_argument);
    EXPECT_NE(c.error().message().find("selection.budget_fraction"), std::string::npos) << c.error().message();
    EXPECT_NE(c.error().message().find("[0, 1]"), std::string::npos) << c.error().message();
  }
  // 0 (off, the default) and the whole of (0, 1] load.
  for (const char* good : {"selection.budget_fraction=0", "selection.budget_fraction=0.002",
                           "selection.budget_fraction=1"}) {
    SCOPED_TRACE(good);
    EXPECT_TRUE(load_config(default_file, {good}));
  }
}

TEST(config, malformed_files_are_errors_naming_the_file) {
  for (const char* text : {"run: [unclosed", "just a string", "run:\n  steps: 0\n",
                           "run:\n  nosuch: 1\n", "a:\n b:\n  c:\n   d: 1\n"}) {
    SCOPED_TRACE(text);
    auto f = write_temp("bad.yaml", text);
    auto c = load_config(f, {});
    ASSERT_FALSE(c);
    EXPECT_NE(c.error().message().find(f), std::string::npos) << c.error().message();
  }
  auto missing = load_config("/nonexistent/pnmkv.yaml", {});
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code(), errc::io);
}

TEST(config, a_path_key_may_be_empty_only_where_its_default_is) {
  auto no_model = load_config(default_file, {"model.file="});
  ASSERT_FALSE(no_model);
  EXPECT_NE(no_model.error().message().find("model.file"), std::string::npos) << no_model.error().message();
  auto no_trace = load_config(default_file, {"workload.trace_file=", "sim.calibration_file="});
  ASSERT_TRUE(no_trace) << no_trace.error().to_string();
  EXPECT_EQ(no_trace->get_string("workload.trace_file"), "");
}

TEST(config, echo_round_trips_through_yaml) {
  auto c = load_config(default_file, {"run.steps=5", "selection.gqa_aggregation=sum",
                                      "faults.script=stall node=3 ms=20; drop p=0.5 # \"x\": y"});
  ASSERT_TRUE(c);
  auto f = write_temp("echo.yaml", c->to_yaml());
  auto d = load_config(f, {});
  ASSERT_TRUE(d) << d.error().to_string();
  EXPECT_EQ(c->values(), d->values());
  EXPECT_NE(c->to_json().find("\"steps\": 5"), std::string::npos);
}

}  // namespace
}  // namespace pnmkv
