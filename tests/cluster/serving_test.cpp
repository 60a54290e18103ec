// The live cluster serving open workloads (workload.arrivals poisson|trace): continuous
// batching at step boundaries, chunked prefill, admission against GPU memory and device
// capacity with requests waiting (not refused) while others hold the room, capacity given
// back when requests finish, and the same outcomes embedded and multi-process.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "actors/cluster.hpp"
#include "actors/node_main.hpp"
#include "actors/run_setup.hpp"
#include "schedulers/gpu_memory.hpp"

namespace pnmkv {
namespace {

namespace fs = std::filesystem;
const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

config open_config(std::vector<std::string> extra = {}) {
  std::vector<std::string> sets = {"workload.arrivals=poisson",        "workload.requests=6",
                                   "workload.arrival_rate_per_s=50",   "workload.output_tokens=4",
                                   "workload.context_tokens=4096",     "workload.prefill_chunk_tokens=1024",
                                   "selection.budget_tokens=512",      "run.step_timeout_ms=30000"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  if (const char* seed = std::getenv("PNMKV_TEST_SEED")) sets.push_back(std::string("run.seed=") + seed);
  auto c = load_config(default_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  return *c;
}

// A scratch folder for one test, removed with it.
struct scratch {
  fs::path dir;
  explicit scratch(const std::string& name) {
    dir = fs::temp_directory_path() / ("pnmkv-serving-" + name + "-" + std::to_string(::getpid()));
    fs::create_directories(dir);
  }
  ~scratch() { fs::remove_all(dir); }
  std::string write(const std::string& file, const std::string& text) const {
    std::ofstream(dir / file) << text;
    return (dir / file).string();
  }
};

// Requests in the system at time t: admitted and not finished (a request finishing at t has
// left before the admissions at t).
std::vector<const request_outcome*> in_system_at(const run_report& r, double t) {
  std::vector<const request_outcome*> out;
  for (const auto& o : r.request_outcomes)
    if (o.admitted_s >= 0 && o.admitted_s <= t && (o.finish_s < 0 || o.finish_s > t)) out.push_back(&o);
  return out;
}

uint32_t peak_in_system(const run_report& r) {
  size_t peak = 0;
  for (const auto& o : r.request_outcomes)
    if (o.admitted_s >= 0) peak = std::max(peak, in_system_at(r, o.admitted_s).size());
  return uint32_t(peak);
}

// Every request finished with its output tokens; times ordered; chunks within the budget;
// every prompt token prefilled once; one output token per request per step.
void expect_served(const run_report& r, uint64_t chunk_tokens) {
  uint64_t prompts = 0, outputs = 0;
  for (const auto& o : r.request_outcomes) {
    SCOPED_TRACE("request " + std::to_string(o.id));
    ASSERT_FALSE(o.refused) << o.refusal;
    EXPECT_EQ(o.generated, o.output_tokens);
    EXPECT_LE(o.arrival_s, o.admitted_s);
    EXPECT_LT(o.admitted_s, o.first_token_s);
    EXPECT_LE(o.first_token_s, o.finish_s);
    EXPECT_LE(o.queueing_ms(), o.ttft_ms());
    // The prompt needs ceil(prompt / chunk) steps at least before the first token.
    const double steps = std::ceil(double(o.prompt_tokens) / double(chunk_tokens));
    size_t steps_seen = 0;
    for (const auto& b : r.batch_series) steps_seen += b.t_s > o.admitted_s && b.t_s <= o.first_token_s;
    EXPECT_GE(double(steps_seen), steps);
    prompts += o.prompt_tokens;
    outputs += o.output_tokens;
  }
  uint64_t prefilled = 0;
  double t = 0;
  for (const auto& b : r.batch_series) {
    EXPECT_LE(b.prefill_tokens, chunk_tokens);
    EXPECT_GE(b.t_s, t);
    t = b.t_s;
    prefilled += b.prefill_tokens;
  }
  EXPECT_EQ(prefilled, prompts);
  EXPECT_EQ(r.tokens_out, outputs);
  EXPECT_EQ(r.serving.completed, r.request_outcomes.size());
  EXPECT_EQ(r.completed, r.request_outcomes.size());
}

TEST(serving, poisson_requests_are_served_the_same_embedded_and_multiprocess) {
  auto cfg = open_config({"workload.arrival_rate_per_s=500", "workload.output_tokens=12"});
  auto a = run_embedded(cfg, {});
  ASSERT_TRUE(a) << a.error().to_string();
  ASSERT_EQ(a->request_outcomes.size(), 6u);
  expect_served(*a, 1024);
  EXPECT_GT(a->serving.batch_peak, 1u) << "requests never decoded together: no continuous batching";
  EXPECT_GT(a->accuracy_samples, 0u);
  multiprocess_options mp;
  mp.node_binary = PNMKV_BINARY;
  auto b = run_multiprocess(cfg, {}, mp);
  ASSERT_TRUE(b) << b.error().to_string();
  EXPECT_EQ(a->output_digest, b->output_digest);
  ASSERT_EQ(a->request_outcomes.size(), b->request_outcomes.size());
  for (size_t i = 0; i < a->request_outcomes.size(); ++i) {
    EXPECT_DOUBLE_EQ(a->request_outcomes[i].ttft_ms(), b->request_outcomes[i].ttft_ms());
    EXPECT_DOUBLE_EQ(a->request_outcomes[i].tpot_ms(), b->request_outcomes[i].tpot_ms());
  }
}

TEST(serving, each_mode_serves_the_same_trace) {
  scratch s("modes");
  const std::string trace = s.write("trace.csv",
                                    "arrival_s,prompt_tokens,output_tokens\n"
                                    "0,3000,3\n0.01,700,5\n0.02,2048,2\n0.5,33,4\n");
  for (const char* mode : {"baseline", "pnm-kv", "png-kv"}) {
    SCOPED_TRACE(mode);
    auto cfg = open_config({"workload.arrivals=trace", "workload.trace_file=" + trace,
                            std::string("run.mode=") + mode});
    auto r = run_embedded(cfg, {});
    ASSERT_TRUE(r) << r.error().to_string();
    ASSERT_EQ(r->request_outcomes.size(), 4u);
    expect_served(*r, 1024);
    // The last request arrives after the others are done: it does not queue.
    EXPECT_NEAR(r->request_outcomes[3].queueing_ms(), 0.0, 1e-9);
  }
}

TEST(serving, device_capacity_makes_requests_wait_and_finished_requests_give_it_back) {
  // Each request holds ~4.3 MiB of live K/V and summaries per device (4096 + 3 tokens, 2 of
  // 8 KV heads per device, one live layer): 10 MiB holds two at a time. Six arrive at once.
  auto cfg = open_config({"workload.arrival_rate_per_s=1e6", "cluster.device_memory_bytes_max=10485760"});
  auto r = run_embedded(cfg, {});
  ASSERT_TRUE(r) << r.error().to_string();
  expect_served(*r, 1024);
  EXPECT_EQ(peak_in_system(*r), 2u);
  size_t waited = 0;
  for (const auto& o : r->request_outcomes) waited += o.queueing_ms() > 1.0;
  EXPECT_GE(waited, 4u) << "later requests should wait for the first ones to leave";
}

TEST(serving, batch_max_caps_the_requests_in_the_system) {
  for (uint32_t cap : {1u, 3u}) {
    SCOPED_TRACE(cap);
    auto cfg = open_config({"workload.arrival_rate_per_s=1e6", "workload.batch_max=" + std::to_string(cap)});
    auto r = run_embedded(cfg, {});
    ASSERT_TRUE(r) << r.error().to_string();
    expect_served(*r, 1024);
    EXPECT_EQ(peak_in_system(*r), cap);
  }
}

TEST(serving, a_request_that_can_never_fit_is_refused_and_the_rest_are_served) {
  scratch s("refuse");
  // 10 MiB per device holds a 4096-token request, never a 16384-token one (~17 MiB).
  const std::string trace = s.write("trace.csv", "0,1024,3\n0.001,16384,3\n0.002,2048,3\n");
  auto cfg = open_config({"workload.arrivals=trace", "workload.trace_file=" + trace,
                          "cluster.device_memory_bytes_max=10485760"});
  auto r = run_embedded(cfg, {});
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_EQ(r->request_outcomes.size(), 3u);
  const auto& big = r->request_outcomes[1];
  EXPECT_TRUE(big.refused);
  EXPECT_NE(big.refusal.find("does not fit the emulator"), std::string::npos) << big.refusal;
  for (size_t i : {size_t(0), size_t(2)}) {
    EXPECT_FALSE(r->request_outcomes[i].refused) << r->request_outcomes[i].refusal;
    EXPECT_EQ(r->request_outcomes[i].generated, 3u);
  }
  EXPECT_EQ(r->completed, 2u);
  EXPECT_EQ(r->failed, 1u);
  EXPECT_EQ(r->serving.refused, 1u);
}

// Admission never overcommits GPU memory: over random traces, on a GPU whose memory holds
// the weights and room for about 2.5 requests' buffers (baseline: resident summaries and
// recall buffers), the requests in the system at every admission fit.
TEST(serving, admission_never_overcommits_gpu_memory_over_random_traces) {
  scratch s("gpu");
  uint32_t binding = 0;  // traces where the limit held fewer requests than an unlimited GPU
  for (uint64_t seed : {1u, 2u, 3u}) {
    SCOPED_TRACE(seed);
    std::mt19937_64 rng(seed);
    std::string trace = "arrival_s,prompt_tokens,output_tokens\n";
    const int n = 5 + int(rng() % 3);
    uint64_t longest = 0;
    for (int i = 0; i < n; ++i) {
      const double t = double(rng() % 1000) / 4000.0;
      const uint64_t prompt = 512 + rng() % 3585, out = 2 + rng() % 5;
      longest = std::max(longest, prompt + out - 1);
      trace += std::to_string(t) + "," + std::to_string(prompt) + "," + std::to_string(out) + "\n";
    }
    const std::string trace_file = s.write("trace-" + std::to_string(seed) + ".csv", trace);
    // A hardware file whose GPU holds the weights plus 2.5 requests at the longest length.
    auto base = open_config({"run.mode=baseline"});
    auto setup = make_run_setup(base, "secret");
    ASSERT_TRUE(setup) << setup.error().to_string();
    gpu_memory_query q = (*setup)->gpu_query;
    q.context_tokens = longest;
    q.batch = 1;
    const auto one = gpu_memory((*setup)->model, (*setup)->hw, q);
    q.batch = 2;
    const double per_request = gpu_memory((*setup)->model, (*setup)->hw, q).total_bytes() - one.total_bytes();
    ASSERT_GT(per_request, 0);
    const double memory = (*setup)->hw.gpu.reserved_bytes + one.total_bytes() + 1.5 * per_request;
    std::ifstream in(std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/hardware/h100-cxl-pnm.yaml");
    std::string hw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string key = "memory_bytes: {value: 80.0e9";
    const auto at = hw.find(key);
    ASSERT_NE(at, std::string::npos) << "the hardware file changed: update this test";
    hw.replace(at, key.size(), "memory_bytes: {value: " + std::to_string(memory));
    const std::string hw_file = s.write("hw-" + std::to_string(seed) + ".yaml", hw);

    auto cfg = open_config({"run.mode=baseline", "workload.arrivals=trace", "workload.trace_file=" + trace_file,
                            "hardware.file=" + hw_file});
    auto r = run_embedded(cfg, {});
    ASSERT_TRUE(r) << r.error().to_string();
    expect_served(*r, 1024);
    auto run_setup = make_run_setup(cfg, "secret");
    ASSERT_TRUE(run_setup);
    for (const auto& o : r->request_outcomes) {
      auto now = in_system_at(*r, o.admitted_s);
      gpu_memory_query c = (*run_setup)->gpu_query;
      c.batch = uint32_t(now.size());
      c.context_tokens = 0;
      for (const auto* x : now) c.context_tokens = std::max(c.context_tokens, x->prompt_tokens + x->output_tokens - 1);
      const auto use = gpu_memory((*run_setup)->model, (*run_setup)->hw, c);
      EXPECT_TRUE(use.fits()) << now.size() << " requests need " << use.total_bytes() << " of "
                              << use.capacity_bytes << " bytes at t=" << o.admitted_s;
    }
    // The same trace on the real GPU: more requests at once, so the limit did bind.
    auto free_cfg = open_config({"run.mode=baseline", "workload.arrivals=trace", "workload.trace_file=" + trace_file});
    auto f = run_embedded(free_cfg, {});
    ASSERT_TRUE(f) << f.error().to_string();
    binding += peak_in_system(*r) < peak_in_system(*f);
  }
  EXPECT_GE(binding, 1u) << "the GPU-memory limit never bound: the test proves nothing";
}

TEST(serving, a_tpot_limit_no_request_meets_refuses_each_with_the_reason) {
  auto r = run_embedded(open_config({"workload.tpot_ms_max=0.001"}), {});
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_EQ(r->request_outcomes.size(), 6u);
  for (const auto& o : r->request_outcomes) {
    EXPECT_TRUE(o.refused);
    EXPECT_NE(o.refusal.find("workload.tpot_ms_max"), std::string::npos) << o.refusal;
  }
  EXPECT_EQ(r->completed, 0u);
  EXPECT_EQ(r->serving.refused, 6u);
}

TEST(serving, bad_arrival_settings_are_clear_errors) {
  auto r = run_embedded(open_config({"workload.arrivals=trace"}), {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("workload.trace_file"), std::string::npos) << r.error().message();
  auto r2 = run_embedded(open_config({"workload.arrivals=trace", "workload.trace_file=/nonexistent/t.csv"}), {});
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message().find("/nonexistent/t.csv"), std::string::npos) << r2.error().message();
  auto c = load_config(default_file, {"workload.arrivals=sometimes"});
  ASSERT_FALSE(c);
  EXPECT_NE(c.error().message().find("poisson"), std::string::npos) << c.error().message();
}

}  // namespace
}  // namespace pnmkv
