// Properties of the resolved configuration (config/spec.hpp): every choice key of the schema
// is parsed into its enum, to the value the string compares of the old readers gave (the
// simulator's and the live cluster's, which are now the same parse); a value outside the
// allowed ones is an error naming the key and every allowed value; the rules across keys
// and the data-file paths resolve once, the same for everyone.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>

#include "config/spec.hpp"

namespace pnmkv {
namespace {

namespace fs = std::filesystem;

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

result<run_spec> resolve_with(const std::vector<std::string>& sets) {
  auto cfg = load_config(default_file, sets);
  if (!cfg) return cfg.error();
  return resolve_run_spec(*cfg);
}

// One choice key: the value the old readers derived from its text (written as they wrote
// it), the value the spec holds, and the parse that gives the error for a bad text.
struct choice_case {
  std::function<int(const std::string&)> old_reader;
  std::function<int(const run_spec&)> spec_value;
  std::function<status(const std::string&)> parse;
  std::vector<std::string> extra_sets;  // what a value needs to resolve (a trace file)
};

template <class E>
status status_of(const result<E>& r) {
  return r ? status::ok() : r.error();
}

std::string trace_file() {
  static const std::string path = [] {
    auto p = fs::temp_directory_path() / "pnmkv_spec_test_trace.csv";
    std::ofstream(p) << "0,1024,4\n";
    return p.string();
  }();
  return path;
}

// Old readers, as sim/sim_setup.cpp, actors/run_setup.cpp, transport/from_config.cpp and
// actors/node_main.cpp wrote them before the spec (integers stand for the enum values).
std::map<std::string, choice_case> choice_cases() {
  std::map<std::string, choice_case> c;
  c["run.mode"] = {[](const std::string& t) { return int(*parse_run_mode(t)); },
                   [](const run_spec& s) { return int(s.run.mode); },
                   [](const std::string& t) { return status_of(parse_run_mode(t)); }, {}};
  // The simulator compared with "exact"; the live cluster used parse_cross_shard.
  c["selection.cross_shard"] = {
      [](const std::string& t) {
        const int sim = t == "exact" ? int(cross_shard_selection::exact) : int(cross_shard_selection::local);
        return sim == int(*parse_cross_shard(t)) ? sim : -1;
      },
      [](const run_spec& s) { return int(s.selection.cross_shard); },
      [](const std::string& t) { return status_of(parse_cross_shard(t)); }, {}};
  c["selection.summary_precision"] = {
      [](const std::string& t) { return int(t == "fp32" ? summary_precision::fp32 : summary_precision::bf16); },
      [](const run_spec& s) { return int(s.selection.summary_precision); },
      [](const std::string& t) { return status_of(parse_summary_precision_choice(t)); }, {}};
  c["selection.gqa_aggregation"] = {
      [](const std::string& t) { return int(*parse_gqa_aggregation(t.c_str())); },
      [](const run_spec& s) { return int(s.selection.gqa_aggregation); },
      [](const std::string& t) { return status_of(parse_gqa_aggregation_choice(t)); }, {}};
  // The simulator: resident -> HBM, link -> link, else auto; the live cluster: auto, else
  // resident exactly when "resident".
  c["baseline.summaries"] = {
      [](const std::string& t) {
        const auto sim = t == "resident" ? summary_residence::hbm
                         : t == "link"   ? summary_residence::link
                                         : summary_residence::auto_fit;
        const bool live_auto = t == "auto", live_resident = t == "resident";
        const bool agree = (sim == summary_residence::auto_fit) == live_auto &&
                           (sim == summary_residence::hbm) == (!live_auto && live_resident);
        return agree ? int(sim) : -1;
      },
      [](const run_spec& s) { return int(s.baseline.summaries); },
      [](const std::string& t) { return status_of(parse_summary_residence(t)); }, {}};
  c["workload.arrivals"] = {
      [](const std::string& t) {
        return int(t == "poisson" ? workload_arrivals::poisson
                   : t == "trace" ? workload_arrivals::trace
                                  : workload_arrivals::closed);
      },
      [](const run_spec& s) { return int(s.workload.arrivals); },
      [](const std::string& t) { return status_of(parse_workload_arrivals(t)); },
      {"workload.trace_file=" + trace_file()}};
  c["sim.batch_policy"] = {
      [](const std::string& t) { return int(t == "max" ? sim_batch_policy::max : sim_batch_policy::configured); },
      [](const run_spec& s) { return int(s.sim.batch_policy); },
      [](const std::string& t) { return status_of(parse_sim_batch_policy(t)); }, {}};
  c["cluster.sequence_split"] = {[](const std::string& t) { return int(*parse_sequence_split(t)); },
                                 [](const run_spec& s) { return int(s.cluster.sequence_split); },
                                 [](const std::string& t) { return status_of(parse_sequence_split(t)); }, {}};
  c["cluster.node_scheduler"] = {
      [](const std::string& t) { return int(t == "sharing" ? node_scheduler::sharing : node_scheduler::stealing); },
      [](const run_spec& s) { return int(s.cluster.node_scheduler); },
      [](const std::string& t) { return status_of(parse_node_scheduler(t)); }, {}};
  c["fabric.frame_crc"] = {
      [](const std::string& t) {
        return int(t == "on" ? crc_mode::on : t == "off" ? crc_mode::off : crc_mode::automatic);
      },
      [](const run_spec& s) { return int(s.fabric.frame_crc); },
      [](const std::string& t) { return status_of(parse_frame_crc(t)); }, {}};
  c["fabric.ucx_rma"] = {
      [](const std::string& t) {
        return int(t == "native" ? ucx_rma_mode::native : t == "am" ? ucx_rma_mode::am : ucx_rma_mode::automatic);
      },
      [](const run_spec& s) { return int(s.fabric.ucx_rma); },
      [](const std::string& t) { return status_of(parse_ucx_rma(t)); }, {}};
  c["fabric.ucx_progress"] = {
      [](const std::string& t) { return int(t == "thread" ? ucx_progress::thread : ucx_progress::caller); },
      [](const run_spec& s) { return int(s.fabric.ucx_progress); },
      [](const std::string& t) { return status_of(parse_ucx_progress(t)); }, {}};
  // transport's parse_ucx_transport (any|auto, tcp, shm|sm).
  c["fabric.ucx_transport"] = {
      [](const std::string& t) {
        return int(t == "any" ? ucx_transport::any : t == "tcp" ? ucx_transport::tcp : ucx_transport::shm);
      },
      [](const run_spec& s) { return int(s.fabric.ucx_transport); },
      [](const std::string& t) { return status_of(parse_ucx_transport_choice(t)); }, {}};
  // The text went into the fault rule as at=<text>; the spec's value must print the same.
  c["faults.at"] = {[](const std::string& t) { return t == "send" ? 0 : t == "recv" ? 1 : 2; },
                    [](const run_spec& s) {
                      const std::string t = to_string(s.faults.at);
                      return t == "send" ? 0 : t == "recv" ? 1 : 2;
                    },
                    [](const std::string& t) { return status_of(parse_fault_points(t)); }, {}};
  return c;
}

TEST(run_spec, every_choice_key_of_the_schema_has_a_case_here) {
  const auto cases = choice_cases();
  // workload.kind has one allowed value (synthetic) and no enum: workload_params_from_config
  // checks it.
  std::set<std::string> schema_choices;
  for (const auto& k : config_schema())
    if (k.type == config_type::choice && k.key != "workload.kind") schema_choices.insert(k.key);
  std::set<std::string> covered;
  for (const auto& [key, c] : cases) covered.insert(key);
  EXPECT_EQ(schema_choices, covered) << "a choice key was added or removed: parse it in "
                                        "config/spec.cpp and add its case here";
}

TEST(run_spec, every_allowed_value_parses_to_what_the_old_string_compares_gave) {
  for (const auto& [key, c] : choice_cases()) {
    const config_key* k = find_config_key(key);
    ASSERT_NE(k, nullptr) << key;
    ASSERT_GE(k->choices.size(), 1u) << key;
    std::set<int> seen;
    for (const auto& value : k->choices) {
      SCOPED_TRACE(key + " = " + value);
      auto sets = c.extra_sets;
      sets.push_back(key + "=" + value);
      auto spec = resolve_with(sets);
      ASSERT_TRUE(spec) << spec.error().to_string();
      const int old_value = c.old_reader(value);
      ASSERT_GE(old_value, 0) << "the old readers disagreed";
      EXPECT_EQ(c.spec_value(*spec), old_value);
      EXPECT_TRUE(c.parse(value).is_ok());
      seen.insert(old_value);
    }
    // Distinct texts are distinct values: no allowed value silently falls to a default.
    EXPECT_EQ(seen.size(), k->choices.size()) << key;
  }
}

TEST(run_spec, choice_names_read_back_as_the_key_text) {
  for (auto a : {workload_arrivals::closed, workload_arrivals::poisson, workload_arrivals::trace})
    EXPECT_EQ(*parse_workload_arrivals(to_string(a)), a);
  for (auto r : {summary_residence::auto_fit, summary_residence::hbm, summary_residence::link})
    EXPECT_EQ(*parse_summary_residence(to_string(r)), r);
  EXPECT_STREQ(to_string(summary_residence::hbm), "resident");
  EXPECT_STREQ(to_string(sim_batch_policy::configured), "config");
  for (auto m : {run_mode::baseline, run_mode::pnm_kv, run_mode::png_kv}) EXPECT_EQ(*parse_run_mode(to_string(m)), m);
  for (auto s : {sequence_split::contiguous, sequence_split::interleave})
    EXPECT_EQ(*parse_sequence_split(to_string(s)), s);
}

TEST(run_spec, a_bad_value_names_the_key_and_every_allowed_value) {
  for (const auto& [key, c] : choice_cases()) {
    SCOPED_TRACE(key);
    const status st = c.parse("no-such-choice");
    ASSERT_FALSE(st.is_ok());
    EXPECT_NE(st.message().find(key), std::string::npos) << st.message();
    for (const auto& allowed : find_config_key(key)->choices)
      EXPECT_NE(st.message().find(allowed), std::string::npos) << st.message() << " lacks " << allowed;
  }
  // Through the config layer too (it refuses the value before any spec is made).
  auto cfg = load_config(default_file, {"workload.arrivals=bursty"});
  ASSERT_FALSE(cfg);
  EXPECT_NE(cfg.error().message().find("workload.arrivals"), std::string::npos);
  EXPECT_NE(cfg.error().message().find("closed|poisson|trace"), std::string::npos);
}

TEST(run_spec, typed_values_follow_the_keys) {
  auto spec = resolve_with({"run.steps=7", "selection.budget_tokens=4096", "cluster.pnm_devices=8",
                            "cluster.pool_devices=4", "workload.tpot_ms_max=12.5", "fabric.max_group=32",
                            "faults.drop_prob=0.25", "sim.tp=0", "eval.budgets_tokens=64,128"});
  ASSERT_TRUE(spec) << spec.error().to_string();
  EXPECT_EQ(spec->run.steps, 7u);
  EXPECT_EQ(spec->selection.budget_tokens, 4096u);
  EXPECT_EQ(spec->cluster.pnm_devices, 8u);
  EXPECT_EQ(spec->cluster.pool_devices, 4u);
  EXPECT_DOUBLE_EQ(spec->workload.tpot_ms_max, 12.5);
  EXPECT_EQ(spec->fabric.max_group, 32u);
  EXPECT_DOUBLE_EQ(spec->faults.drop_prob, 0.25);
  EXPECT_EQ(spec->sim.tp, 0u);
  EXPECT_EQ(spec->eval.budgets_tokens, (std::vector<uint64_t>{64, 128}));
  // The model and hardware files are loaded.
  EXPECT_EQ(spec->model.name, "Llama-3.1-8B");
  EXPECT_GT(spec->hardware.gpu.memory_bytes, 0);
  EXPECT_EQ(spec->selection.summary_elem_bytes(), 2u);
}

TEST(run_spec, rules_across_keys_name_the_keys) {
  auto expect_error = [](const std::vector<std::string>& sets, std::vector<std::string> words) {
    auto spec = resolve_with(sets);
    ASSERT_FALSE(spec) << sets.front();
    for (const auto& w : words) EXPECT_NE(spec.error().message().find(w), std::string::npos) << spec.error().message();
  };
  expect_error({"cluster.pnm_devices=6", "cluster.pool_devices=4"}, {"cluster.pool_devices = 4", "cluster.pnm_devices = 6"});
  expect_error({"selection.page_size_tokens=64", "selection.budget_tokens=100"},
               {"selection.budget_tokens = 100", "always-kept"});
  expect_error({"workload.arrivals=trace"}, {"workload.arrivals = trace", "workload.trace_file"});
  expect_error({"workload.topic_segment_tokens_spread=600"}, {"topic_segment_tokens_spread"});
  expect_error({"model.file=" + (fs::temp_directory_path() / "no-such-model.yaml").string()}, {"no-such-model.yaml"});
}

TEST(run_spec, data_files_resolve_from_the_config_folder_once) {
  const fs::path dir = fs::temp_directory_path() / "pnmkv_spec_test" / "experiments";
  fs::create_directories(dir);
  std::ofstream(dir / "arrivals.csv") << "0,1024,4\n";
  std::ofstream(dir.parent_path() / "cal.json") << "{}";
  const fs::path file = dir / "run.yaml";
  std::ofstream(file) << "model:\n  file: " << PNMKV_SOURCE_DIR << "/cluster_configs/models/llama-3.1-8b.yaml\n"
                      << "hardware:\n  file: " << PNMKV_SOURCE_DIR << "/cluster_configs/hardware/h100-cxl-pnm.yaml\n"
                      << "sim:\n  gpu_fabric_file: " << PNMKV_SOURCE_DIR << "/cluster_configs/hardware/h100-nvlink-fabric.yaml\n"
                      << "  calibration_file: cal.json\n"
                      << "workload:\n  arrivals: trace\n  trace_file: arrivals.csv\n";
  auto cfg = load_config(file.string(), {});
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  auto spec = resolve_run_spec(*cfg);
  ASSERT_TRUE(spec) << spec.error().to_string();
  // Found next to the config, and in its parent folder.
  EXPECT_EQ(fs::path(spec->workload.trace_file), (dir / "arrivals.csv").lexically_normal());
  EXPECT_EQ(fs::path(spec->sim.calibration_file), (dir.parent_path() / "cal.json").lexically_normal());
  EXPECT_TRUE(fs::exists(spec->sim.gpu_fabric_file));
}

}  // namespace
}  // namespace pnmkv
