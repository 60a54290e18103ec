// Properties of the resolved configuration (config/spec.hpp): every choice key of the schema
// is parsed into its enum, to the value written here (what the simulator's and the live
// cluster's string compares gave before they shared the spec); a value outside the
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

// The config is refused with a message holding every word of `words`.
void expect_error(const std::vector<std::string>& sets, const std::vector<std::string>& words) {
  auto spec = resolve_with(sets);
  ASSERT_FALSE(spec) << sets.front();
  for (const auto& w : words) EXPECT_NE(spec.error().message().find(w), std::string::npos) << spec.error().message();
}

// One choice key: every allowed text with the enum value it must resolve to, written here
// (the values the simulator's and the live cluster's string compares gave before the spec),
// and the value the spec holds.
struct choice_case {
  std::vector<std::pair<std::string, int>> expected;  // text -> enum value, as an integer
  std::function<int(const run_spec&)> spec_value;
  std::vector<std::string> extra_sets;  // what a value needs to resolve (a trace file)
};

std::string trace_file() {
  static const std::string path = [] {
    auto p = fs::temp_directory_path() / "pnmkv_spec_test_trace.csv";
    std::ofstream(p) << "0,1024,4\n";
    return p.string();
  }();
  return path;
}

template <class E>
std::pair<std::string, int> gives(const char* text, E value) {
  return {text, static_cast<int>(value)};
}

std::map<std::string, choice_case> choice_cases() {
  std::map<std::string, choice_case> c;
  c["run.mode"] = {{gives("baseline", run_mode::baseline), gives("pnm-kv", run_mode::pnm_kv),
                    gives("png-kv", run_mode::png_kv), gives("gpu-only", run_mode::gpu_only)},
                   [](const run_spec& s) { return int(s.run.mode); }, {}};
  c["selection.cross_shard"] = {
      {gives("exact", cross_shard_selection::exact), gives("local", cross_shard_selection::local)},
      [](const run_spec& s) { return int(s.selection.cross_shard); }, {}};
  c["selection.summary_precision"] = {
      {gives("bf16", summary_precision::bf16), gives("fp32", summary_precision::fp32)},
      [](const run_spec& s) { return int(s.selection.summary_precision); }, {}};
  c["run.wire_precision"] = {
      {gives("fp32", wire_precision::fp32), gives("bf16", wire_precision::bf16)},
      [](const run_spec& s) { return int(s.run.wire_precision); }, {}};
  c["selection.search"] = {
      {gives("flat", page_search::flat), gives("exact-int8", page_search::exact_int8)},
      [](const run_spec& s) { return int(s.selection.search); }, {}};
  // What it resolves to: run_spec.lookahead_auto_is_on_where_the_mode_and_schedule_allow_it.
  c["selection.lookahead"] = {{gives("auto", lookahead_setting::auto_fit), gives("true", lookahead_setting::on),
                               gives("false", lookahead_setting::off)},
                              [](const run_spec& s) { return int(s.selection.lookahead_set); }, {}};
  c["selection.gqa_aggregation"] = {
      {gives("max", gqa_aggregation::max), gives("sum", gqa_aggregation::sum)},
      [](const run_spec& s) { return int(s.selection.gqa_aggregation); }, {}};
  c["baseline.summaries"] = {
      {gives("auto", summary_residence::auto_fit), gives("resident", summary_residence::hbm),
       gives("link", summary_residence::link)},
      [](const run_spec& s) { return int(s.baseline.summaries); }, {}};
  c["baseline.recall_cache"] = {
      {gives("none", recall_cache_policy::none), gives("lru", recall_cache_policy::lru)},
      [](const run_spec& s) { return int(s.baseline.recall_cache); }, {}};
  c["workload.arrivals"] = {
      {gives("closed", workload_arrivals::closed), gives("poisson", workload_arrivals::poisson),
       gives("trace", workload_arrivals::trace)},
      [](const run_spec& s) { return int(s.workload.arrivals); },
      {"workload.trace_file=" + trace_file()}};
  c["sim.batch_policy"] = {
      {gives("config", sim_batch_policy::configured), gives("max", sim_batch_policy::max)},
      [](const run_spec& s) { return int(s.sim.batch_policy); }, {}};
  c["cluster.sequence_split"] = {
      {gives("contiguous", sequence_split::contiguous), gives("interleave", sequence_split::interleave)},
      [](const run_spec& s) { return int(s.cluster.sequence_split); }, {}};
  c["cluster.node_scheduler"] = {
      {gives("sharing", node_scheduler::sharing), gives("stealing", node_scheduler::stealing)},
      [](const run_spec& s) { return int(s.cluster.node_scheduler); }, {}};
  c["fabric.frame_crc"] = {
      {gives("auto", crc_mode::automatic), gives("on", crc_mode::on), gives("off", crc_mode::off)},
      [](const run_spec& s) { return int(s.fabric.frame_crc); }, {}};
  c["fabric.ucx_rma"] = {
      {gives("auto", ucx_rma_mode::automatic), gives("native", ucx_rma_mode::native),
       gives("am", ucx_rma_mode::am)},
      [](const run_spec& s) { return int(s.fabric.ucx_rma); }, {}};
  c["fabric.ucx_progress"] = {
      {gives("thread", ucx_progress::thread), gives("caller", ucx_progress::caller)},
      [](const run_spec& s) { return int(s.fabric.ucx_progress); }, {}};
  c["fabric.ucx_transport"] = {
      {gives("any", ucx_transport::any), gives("tcp", ucx_transport::tcp), gives("shm", ucx_transport::shm)},
      [](const run_spec& s) { return int(s.fabric.ucx_transport); }, {}};
  c["faults.at"] = {{gives("send", fault_points::send), gives("recv", fault_points::recv),
                     gives("both", fault_points::both)},
                    [](const run_spec& s) { return int(s.faults.at); }, {}};
  return c;
}

TEST(run_spec, every_choice_key_of_the_schema_has_a_case_here) {
  const auto cases = choice_cases();
  // workload.kind (synthetic | trace) has no enum: spec.cpp reads it as workload.from_trace
  // (rules_across_keys covers trace without a folder; tests/trace the rest).
  std::set<std::string> schema_choices;
  for (const auto& k : config_schema())
    if (k.type == config_type::choice && k.key != "workload.kind") schema_choices.insert(k.key);
  std::set<std::string> covered;
  for (const auto& [key, c] : cases) covered.insert(key);
  EXPECT_EQ(schema_choices, covered) << "a choice key was added or removed: read it in "
                                        "config/spec.cpp with its enum's name table and add its case here";
}

// selection.lookahead = auto (the default) is on only where lookahead runs (pnm-kv, one
// micro-batch), so every mode and schedule still resolves at the defaults; true insists
// and is refused elsewhere, naming the key and what it needs.
TEST(run_spec, lookahead_auto_is_on_where_the_mode_and_schedule_allow_it) {
  const auto on = [](const std::vector<std::string>& sets) {
    auto s = resolve_with(sets);
    EXPECT_TRUE(s) << s.error().to_string();
    return s && s->selection.lookahead;
  };
  EXPECT_TRUE(on({}));
  EXPECT_TRUE(on({"run.mode=pnm-kv", "selection.lookahead=auto"}));
  for (const char* mode : {"png-kv", "baseline", "gpu-only"}) {
    SCOPED_TRACE(mode);
    EXPECT_FALSE(on({std::string("run.mode=") + mode}));
    expect_error({std::string("run.mode=") + mode, "selection.lookahead=true"},
                 {"selection.lookahead", "pnm-kv"});
  }
  EXPECT_FALSE(on({"run.micro_batches=2"}));
  EXPECT_FALSE(on({"run.mode=png-kv", "run.micro_batches=2"}));
  expect_error({"run.micro_batches=2", "selection.lookahead=true"}, {"selection.lookahead", "run.micro_batches"});
  EXPECT_FALSE(on({"selection.lookahead=false"}));
  expect_error({"selection.lookahead=yes"}, {"selection.lookahead", "auto", "true", "false"});
}

TEST(run_spec, every_allowed_value_resolves_to_its_written_enum_value) {
  for (const auto& [key, c] : choice_cases()) {
    const config_key* k = find_config_key(key);
    ASSERT_NE(k, nullptr) << key;
    std::set<std::string> texts;
    std::set<int> values;
    for (const auto& [text, value] : c.expected) {
      texts.insert(text);
      values.insert(value);
    }
    // Every allowed value has its expectation here, and nothing else does.
    EXPECT_EQ(texts, std::set<std::string>(k->choices.begin(), k->choices.end())) << key;
    // Distinct texts are distinct values: no allowed value silently falls to a default.
    EXPECT_EQ(values.size(), c.expected.size()) << key;
    for (const auto& [text, value] : c.expected) {
      SCOPED_TRACE(key + " = " + text);
      auto sets = c.extra_sets;
      sets.push_back(key + "=" + text);
      auto spec = resolve_with(sets);
      ASSERT_TRUE(spec) << spec.error().to_string();
      EXPECT_EQ(c.spec_value(*spec), value);
    }
  }
}

TEST(run_spec, choice_names_are_the_key_texts) {
  EXPECT_STREQ(to_string(run_mode::baseline), "baseline");
  EXPECT_STREQ(to_string(run_mode::pnm_kv), "pnm-kv");
  EXPECT_STREQ(to_string(run_mode::png_kv), "png-kv");
  EXPECT_STREQ(to_string(run_mode::gpu_only), "gpu-only");
  EXPECT_STREQ(to_string(cross_shard_selection::exact), "exact");
  EXPECT_STREQ(to_string(cross_shard_selection::local), "local");
  EXPECT_STREQ(to_string(sequence_split::contiguous), "contiguous");
  EXPECT_STREQ(to_string(sequence_split::interleave), "interleave");
  EXPECT_STREQ(to_string(gqa_aggregation::sum), "sum");
  EXPECT_STREQ(to_string(summary_precision::fp32), "fp32");
  EXPECT_STREQ(to_string(wire_precision::bf16), "bf16");
  EXPECT_STREQ(to_string(workload_arrivals::closed), "closed");
  EXPECT_STREQ(to_string(workload_arrivals::poisson), "poisson");
  EXPECT_STREQ(to_string(workload_arrivals::trace), "trace");
  EXPECT_STREQ(to_string(summary_residence::auto_fit), "auto");
  EXPECT_STREQ(to_string(summary_residence::hbm), "resident");
  EXPECT_STREQ(to_string(summary_residence::link), "link");
  EXPECT_STREQ(to_string(sim_batch_policy::configured), "config");
  EXPECT_STREQ(to_string(sim_batch_policy::max), "max");
  EXPECT_STREQ(to_string(node_scheduler::stealing), "stealing");
  EXPECT_STREQ(to_string(fault_points::recv), "recv");
  EXPECT_STREQ(to_string(ucx_progress::caller), "caller");
}

TEST(run_spec, a_bad_value_names_the_key_and_every_allowed_value) {
  // The config layer refuses the value (from a file or --set) before any spec is made.
  for (const auto& [key, c] : choice_cases()) {
    SCOPED_TRACE(key);
    auto cfg = load_config(default_file, {key + "=no-such-choice"});
    ASSERT_FALSE(cfg);
    const std::string& message = cfg.error().message();
    EXPECT_NE(message.find(key), std::string::npos) << message;
    std::string allowed;
    for (const auto& [text, value] : c.expected) allowed += (allowed.empty() ? "" : "|") + text;
    EXPECT_NE(message.find("allowed: " + allowed), std::string::npos) << message;
  }
}

TEST(run_spec, typed_values_follow_the_keys) {
  auto spec = resolve_with({"run.steps=7", "selection.budget_tokens=4096", "cluster.pnm_devices=8",
                            "cluster.pool_devices=4", "workload.tpot_ms_max=12.5", "fabric.max_group=32",
                            "faults.drop_prob=0.25", "sim.tp=0", "eval.budgets_tokens=64,128"});
  ASSERT_TRUE(spec) << spec.error().to_string();
  EXPECT_EQ(spec->run.steps, 7u);
  EXPECT_EQ(spec->selection.budget_tokens, 4096u);
  EXPECT_DOUBLE_EQ(spec->selection.budget_fraction, 0.0);  // off by default
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
  expect_error({"cluster.pnm_devices=6", "cluster.pool_devices=4"}, {"cluster.pool_devices = 4", "cluster.pnm_devices = 6"});
  expect_error({"selection.page_size_tokens=64", "selection.budget_tokens=100"},
               {"selection.budget_tokens = 100", "always-kept"});
  expect_error({"workload.arrivals=trace"}, {"workload.arrivals = trace", "workload.trace_file"});
  expect_error({"run.wire_precision=fp16"}, {"run.wire_precision", "fp32", "bf16"});
  ASSERT_TRUE(resolve_with({"run.wire_precision=bf16"}));
  EXPECT_EQ(resolve_with({"run.wire_precision=bf16"})->run.wire_precision, wire_precision::bf16);
  expect_error({"selection.lookahead=true", "run.mode=png-kv"},
               {"selection.lookahead = true", "run.mode pnm-kv", "run.mode = png-kv"});
  expect_error({"selection.lookahead=true", "run.micro_batches=2"},
               {"selection.lookahead = true", "run.micro_batches = 1", "run.micro_batches = 2"});
  ASSERT_TRUE(resolve_with({"selection.lookahead=true"}));
  EXPECT_TRUE(resolve_with({"selection.lookahead=true"})->selection.lookahead);
  // A KV trace (workload.trace_dir) is not the arrivals CSV (workload.trace_file).
  expect_error({"workload.kind=trace"}, {"workload.kind = trace", "workload.trace_dir", "docs/TRACE_FORMAT.md",
                                         "workload.trace_file is the CSV of request arrivals"});
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

TEST(run_spec, an_echoed_config_names_the_same_data_files_wherever_it_is_loaded_from) {
  // `pnmkv run --multiprocess` writes the config it resolved (to_yaml) into its work folder
  // and every node process loads it from there: files named next to the original config
  // must still be found (they were not when only the spec resolved them, from the folder
  // of the file it was given).
  const fs::path dir = fs::temp_directory_path() / "pnmkv_spec_echo_test" / "experiments";
  const fs::path work = fs::temp_directory_path() / "pnmkv_spec_echo_test_work";
  fs::create_directories(dir);
  fs::create_directories(work);
  std::ofstream(dir / "pnmkv_echo_arrivals.csv") << "0,1024,4\n";
  std::ofstream(dir.parent_path() / "pnmkv_echo_cal.json") << "{}";
  const fs::path file = dir / "run.yaml";
  std::ofstream(file) << "model:\n  file: " << PNMKV_SOURCE_DIR << "/cluster_configs/models/llama-3.1-8b.yaml\n"
                      << "hardware:\n  file: " << PNMKV_SOURCE_DIR << "/cluster_configs/hardware/h100-cxl-pnm.yaml\n"
                      << "sim:\n  calibration_file: pnmkv_echo_cal.json\n"
                      << "workload:\n  arrivals: trace\n  trace_file: pnmkv_echo_arrivals.csv\n";
  auto cfg = load_config(file.string(), {});
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  std::ofstream(work / "config.yaml") << cfg->to_yaml();
  auto echoed = load_config((work / "config.yaml").string(), {});
  ASSERT_TRUE(echoed) << echoed.error().to_string();
  auto spec = resolve_run_spec(*echoed);
  ASSERT_TRUE(spec) << spec.error().to_string();
  EXPECT_EQ(fs::path(spec->workload.trace_file), (dir / "pnmkv_echo_arrivals.csv").lexically_normal());
  EXPECT_EQ(fs::path(spec->sim.calibration_file), (dir.parent_path() / "pnmkv_echo_cal.json").lexically_normal());
}

}  // namespace
}  // namespace pnmkv
