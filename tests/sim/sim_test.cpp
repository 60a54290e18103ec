// Simulator properties (sim/): hand-calculated bytes and limits — KV bytes per token, link
// bytes per step in each mode, device scan bytes per step, baseline's maximum batch from GPU
// memory, how many 512 GB devices a 405B 1M-token batch needs — and monotonicity (more
// devices never lower pnm-kv throughput at a fixed batch; a longer context never raises it),
// the step-time breakdown adding up, step reuse staying within its bound, open workloads
// finishing every request, and the calibration, trace and sweep files being read strictly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "sim/simulator.hpp"
#include "tests/sim/sim_fixture.hpp"
#include "sim/sweep.hpp"
#include "model/work_sizes.hpp"

namespace pnmkv {
namespace {

using namespace sim_fixture;

sim_result sim_of(std::vector<std::string> sets) {
  auto s = setup_of(std::move(sets));
  if (!s) return {};
  auto r = simulate(s);
  EXPECT_TRUE(r) << r.error().to_string();
  return r ? *r : sim_result{};
}

// One 8B request of 32K tokens on one device (h = 1, s = 1), budget 32 pages, one step.
// The hand-computed bytes here are flat's (every summary read, no int8 summaries held),
// fresh selection's and fp32 vectors' on the links: exact-int8's, the default search, are
// search_sim_test's; lookahead's are tests/actors/engine_test.cpp's; bf16's work_sizes'.
std::vector<std::string> one_request(const std::string& mode, std::vector<std::string> extra = {}) {
  std::vector<std::string> s = {"run.mode=" + mode, "workload.context_tokens=32768", "workload.batch=1",
                                "run.steps=1", "selection.budget_tokens=512", "cluster.pnm_devices=1",
                                "sim.step_reuse_steps=1", "sim.steady_churn_fraction=0",
                                "selection.search=flat", "selection.lookahead=false", "run.wire_precision=fp32"};
  s.insert(s.end(), extra.begin(), extra.end());
  return s;
}

TEST(sim_hand, kv_bytes_per_token) {
  auto s8 = load_model_shape(m8);
  auto s405 = load_model_shape(m405);
  ASSERT_TRUE(s8 && s405);
  EXPECT_EQ(s8->kv_bytes_per_token(), 128u * 1024);   // 2 × 32 × 8 × 128 × 2
  EXPECT_EQ(s405->kv_bytes_per_token(), 504u * 1024);  // 2 × 126 × 8 × 128 × 2
  // A 405B request of 2^20 + 1 tokens on the devices: pages × (K, V and min/max summary)
  // per (layer, KV head), over 126 layers × 8 heads (flat: no int8 summaries held).
  auto s = setup_of({"model.file=" + m405, "sim.tp=0", "selection.search=flat"});
  ASSERT_TRUE(s);
  const double pages = 65537, per_page = 16 * 128 * 4 + 2 * 128 * 2;
  EXPECT_DOUBLE_EQ(device_bytes_per_request(*s, (1u << 20) + 1), pages * per_page * 126 * 8);
}

TEST(sim_hand, link_and_device_bytes_per_step_in_each_mode) {
  // Per (layer, KV head), 32 layers × 8 heads. After the append the sequence has 32769
  // tokens: 2049 pages, the last holding one token; the 32 selected pages (the last one
  // among them) hold 31 × 16 + 1 = 497 tokens.
  const double lh = 32 * 8;
  const double append = 96 + 4 * 128, query = 96 + 4 * 4 * 128;
  {
    auto r = sim_of(one_request("pnm-kv"));
    const double partial = 96 + 4 * 4 * 128 + 4 * 4 + 4 * 32;
    EXPECT_DOUBLE_EQ(r.link_bytes_per_step, lh * (append + query + partial));
    EXPECT_DOUBLE_EQ(r.device_bytes_per_step, lh * (2049 * 512.0 + 497 * 512.0));
  }
  {
    // Summaries resident in HBM: the link carries the append, the recall request (page
    // ids) and the recalled K/V; the expander reads the selected pages only.
    auto r = sim_of(one_request("baseline"));
    EXPECT_TRUE(r.summaries_resident);
    const double recall_request = 96 + 4 * 32, recall_reply = 96 + 4 * 497 * 128.0;
    EXPECT_DOUBLE_EQ(r.link_bytes_per_step, lh * (append + recall_request + recall_reply));
    EXPECT_DOUBLE_EQ(r.device_bytes_per_step, lh * 497 * 512.0);
  }
  {
    // Summaries over the link: the expander also streams every summary to the GPU.
    auto r = sim_of(one_request("baseline", {"baseline.summaries=link"}));
    EXPECT_FALSE(r.summaries_resident);
    const double recall_request = 96 + 4 * 32, recall_reply = 96 + 4 * 497 * 128.0;
    const double summaries_request = 96, summaries_reply = 96 + 2049 * 512.0;
    EXPECT_DOUBLE_EQ(r.link_bytes_per_step,
                     lh * (append + recall_request + recall_reply + summaries_request + summaries_reply));
  }
  {
    // png-kv, a quarter of the budget steady (8 pages on the GPU): queries name the 8
    // excluded pages, devices select 24 pages (23 full + the last), no copies (churn 0).
    auto r = sim_of(one_request("png-kv", {"sim.steady_hit_fraction=0.25", "sim.steady_set_fraction=0.25"}));
    const double partial = 96 + 4 * 4 * 128 + 4 * 4 + 4 * 24;
    EXPECT_DOUBLE_EQ(r.link_bytes_per_step, lh * (append + query + 4 * 8 + partial));
    EXPECT_DOUBLE_EQ(r.device_bytes_per_step, lh * (2049 * 512.0 + 369 * 512.0));
    // Replacing half the steady set every step copies 4 pages per (layer, head): a recall
    // (header and page ids) out, the pages' K/V back (header), read on the device.
    auto c = sim_of(one_request("png-kv", {"sim.steady_hit_fraction=0.25", "sim.steady_set_fraction=0.25",
                                           "sim.steady_churn_fraction=0.5", "sim.steady_reeval_steps=1"}));
    const double copy = 4 * 16 * 128 * 4.0;
    EXPECT_DOUBLE_EQ(c.link_bytes_per_step, r.link_bytes_per_step + lh * (96 + 4 * 4 + 96 + copy));
    EXPECT_DOUBLE_EQ(c.device_bytes_per_step, r.device_bytes_per_step + lh * copy);
  }
}

// Energy per token both ways (docs/HARDWARE.md §6a), pnm-kv, one request, one step, one
// token. The GPU's HBM bytes: 32 layers x (dense layer at batch 1: 436,224,000 weight +
// 163,840 activation bytes; 8 heads x a merge of one partial, 4 heads x 129 floats read and
// written = 4,128 bytes) + the LM head (128256 x 4096 x 2 = 1,050,673,152) = 15,016,140,800
// bytes. All-in charges them 18.8 - 3.75 = 15.05 pJ/bit more (1.807943352 J) and adds the
// host (575 W) and the switch (3 W x 2 ports: the host link and the one device) over the step.
TEST(sim_hand, energy_per_token_component_and_all_in) {
  auto r = sim_of(one_request("pnm-kv"));
  ASSERT_EQ(r.tokens_out, 1u);
  const double hbm_bytes = 32 * (436224000.0 + 163840.0 + 8 * 4128.0) + 1050673152.0;
  EXPECT_DOUBLE_EQ(hbm_bytes, 15016140800.0);
  const double extra_j = hbm_bytes * 8 * 15.05e-12;
  EXPECT_NEAR(r.gpu_all_in_extra_j_per_token, extra_j, extra_j * 1e-12);
  EXPECT_DOUBLE_EQ(r.host_switch_power_w, 581.0);
  const double step_s = r.step_ms / 1e3;
  EXPECT_NEAR(r.energy_all_in_j_per_token, r.energy_j_per_token + extra_j + 581.0 * step_s,
              r.energy_all_in_j_per_token * 1e-12);
  EXPECT_NEAR(r.power_all_in_w * step_s, r.energy_all_in_j_per_token, r.energy_all_in_j_per_token * 1e-12);
  EXPECT_LT(r.tokens_per_dollar_all_in, r.tokens_per_dollar);
  // Peaks: one GPU, its idle 79 W plus its step's work; the device's idle plus its busy part.
  ASSERT_EQ(r.power_peak.size(), 3u);
  EXPECT_GT(r.power_peak[0].peak_w, 79.0);
  EXPECT_LE(r.power_peak[0].peak_w, 700.0);
  EXPECT_GT(r.power_peak[1].peak_w, r.power_peak[0].peak_w);
  EXPECT_GE(r.power_peak[2].peak_w, 20.0);
  EXPECT_LE(r.power_peak[2].peak_w, 75.0);
  // The CSV keeps its columns and adds the all-in ones at the end.
  const std::string header = sim_result::csv_header(), row = r.csv_row();
  EXPECT_EQ(std::count(header.begin(), header.end(), ','), std::count(row.begin(), row.end(), ','));
  EXPECT_NE(header.find(",energy_j_per_token,tokens_per_dollar,power_w,"), std::string::npos);
  EXPECT_NE(header.find(",energy_all_in_j_per_token,power_all_in_w,tokens_per_dollar_all_in,"),
            std::string::npos);
}

// png-kv's copy engine (schedulers/step_timeline.hpp, charge_steady_copies): the step's
// steady-page copies run on the link and the devices in the dense-layer windows, so a step
// grows by max(copy, window) − window + HBM write, not by copy + HBM write (the serial copy
// phase before layer 0 this replaced). One 8B request, one device, one host link; the same
// step with and without copies (sim.steady_churn_fraction = 1 every step vs 0): the layers
// are the same, so the difference is the copies' charge. Worked by hand from the cost
// model's figures (cluster_configs/hardware/h100-cxl-pnm.yaml):
//   link: 64 GB/s × 0.85 = 54.4 B/ns per direction, latency 300 + 1 hop × 100 = 400 ns;
//   PNM device: 1100 GB/s × 0.8 = 880 B/ns; HBM: 3350 GB/s × 0.9 = 3015 B/ns.
// Each of the 8 KV heads sends one recall carrying its pages of all 32 layers (P pages):
//   request 96 × 32 + 4 P bytes, device read P × 16 tokens × 512 B, reply 96 × 32 + that.
// The 8 requests leave back to back; the device serves each in `dev` (dev > request
// serialisation, so it never idles after the first), and the replies, each slower on the
// link than the device (rep > dev), come back back to back:
//   copy = req + 400 + dev + 400 + 8 rep.
// window = 32 dense layers of one token (tp = 1: no all-reduce).
//   8 pages per (layer, head) (budget 512, steady set 1/4): P = 256, 2 MiB per head:
//     req 75.3 ns, dev 2383.1 ns, rep 38607.1 ns, copy = 312,114.9 ns = 0.312 ms < window
//     (~4.6 ms): hidden; the step grows by the HBM write only, 16 MiB / 3015 = 5,564.6 ns.
//   2046 pages (budget = steady budget = 32768 tokens, the whole set, capped at budget − 2):
//     P = 65472, 536,346,624 B per head: req 4870.6 ns, dev 609,484.8 ns,
//     rep 9,859,369.4 ns, copy = 79.49 ms > window: the step grows by copy − window
//     + HBM write 1,423,142.0 ns.
TEST(sim_hand, steady_copies_overlap_the_dense_layers_as_max_of_copy_and_compute) {
  struct point {
    const char* name;
    std::vector<std::string> sets;
    double pages;  // steady pages per (layer, KV head), all copied every step
  };
  const std::vector<point> points = {
      {"copy < compute", {"sim.steady_hit_fraction=0.25", "sim.steady_set_fraction=0.25"}, 8},
      {"copy > compute",
       {"selection.budget_tokens=32768", "png.steady_budget_tokens=32768", "sim.steady_hit_fraction=0.5",
        "sim.steady_set_fraction=1"},
       2046}};
  for (const point& pt : points) {
    SCOPED_TRACE(pt.name);
    auto with_sets = pt.sets;
    with_sets.insert(with_sets.end(), {"sim.steady_churn_fraction=1", "sim.steady_reeval_steps=1"});
    auto s = setup_of(one_request("png-kv", with_sets));
    ASSERT_TRUE(s);
    ASSERT_EQ(s->tp, 1u);
    ASSERT_EQ(steady_set_pages(*s), uint64_t(pt.pages));
    const cost_model& c = *s->costs;
    const double lat = c.link_latency_ns();
    EXPECT_DOUBLE_EQ(lat, 400.0);
    const double P = pt.pages * 32, bytes = P * 16 * 512;
    const double req = c.link_serialisation_ns(96 * 32 + 4 * P);
    const double dev = c.pnm_compute(bytes, 0).time_ns;
    const double rep = c.link_serialisation_ns(96 * 32 + bytes);
    ASSERT_GT(dev, req);
    ASSERT_GT(rep, dev);
    const double copy = req + lat + dev + lat + 8 * rep;
    const double window = 32 * c.gpu_dense_layer(1, 1).time_ns;
    const double hbm = c.gpu_hbm_write(8 * bytes).time_ns;
    const double grows = std::max(copy, window) - window + hbm;
    if (pt.pages == 8) {
      EXPECT_NEAR(copy, 312114.89, 0.01);
      EXPECT_LT(copy, window);
      EXPECT_NEAR(grows, 5564.58, 0.01);
    } else {
      EXPECT_NEAR(copy, 79490110.68, 0.01);
      EXPECT_GT(copy, window);
    }
    auto r = sim_of(one_request("png-kv", with_sets));
    auto pt_sets = pt.sets;
    pt_sets.push_back("sim.steady_churn_fraction=0");
    auto r0 = sim_of(one_request("png-kv", pt_sets));
    EXPECT_EQ(r0.breakdown_ms.copy_ns, 0.0);
    EXPECT_NEAR((r.step_ms - r0.step_ms) * 1e6, grows, r.step_ms * 1e6 * 1e-12 + 1e-6);
    EXPECT_NEAR(r.breakdown_ms.copy_ns * 1e6, grows, grows * 1e-12);
    // The serial phase it replaced would have charged the whole copy.
    EXPECT_GT(copy + hbm - grows, pt.pages == 8 ? copy - 1 : window - 1);
  }
}

TEST(sim_hand, steady_set_is_one_figure_for_the_step_model_and_gpu_memory) {
  // Budget 512 tokens = 32 pages. The set is steady_set_fraction of them, but never fewer
  // than the GPU's share of the budget (steady_hit_fraction), and never more than the live
  // policy keeps: png.steady_budget_tokens (512 = 32 pages) and budget − 2 = 30 pages;
  // none outside png-kv.
  auto pages = [](const std::string& mode, const std::string& hit, const std::string& set) {
    auto s = setup_of(one_request(mode, {"sim.steady_hit_fraction=" + hit, "sim.steady_set_fraction=" + set}));
    return s ? steady_set_pages(*s) : ~uint64_t(0);
  };
  EXPECT_EQ(pages("png-kv", "0.25", "0.5"), 16u);
  EXPECT_EQ(pages("png-kv", "0.25", "0.1"), 8u);   // 3 set pages, but the GPU attends 8
  EXPECT_EQ(pages("png-kv", "0.25", "2"), 30u);    // a set larger than the budget: budget − 2
  {
    auto s = setup_of(one_request("png-kv", {"sim.steady_hit_fraction=0.25", "sim.steady_set_fraction=0.5",
                                             "png.steady_budget_tokens=64"}));
    ASSERT_TRUE(s);
    EXPECT_EQ(steady_set_pages(*s), 4u);  // png.steady_budget_tokens = 64: 4 pages
  }
  EXPECT_EQ(pages("pnm-kv", "0.25", "0.5"), 0u);
  EXPECT_EQ(pages("baseline", "0.25", "0.5"), 0u);
  // The simulator's GPU memory holds exactly that set per (request, layer, KV head).
  auto s = setup_of(one_request("png-kv", {"sim.steady_hit_fraction=0.25", "sim.steady_set_fraction=0.5"}));
  ASSERT_TRUE(s);
  EXPECT_EQ(gpu_query(*s, s->context_tokens, true, 1).steady_tokens, 16u * s->page_size_tokens);
}

TEST(sim_hand, baseline_max_batch_from_gpu_memory) {
  // 8B on one H100 at 1M tokens: (80 − 4) GB less the weights, over per request: one
  // token's activations, two layers of recall buffers, every summary of every layer.
  auto s = setup_of({"run.mode=baseline", "workload.context_tokens=1048576", "run.steps=1",
                     "cluster.pnm_devices=256", "sim.batch_policy=max"});
  ASSERT_TRUE(s);
  const model_shape& m = s->model;
  const double weights = m.params_from_shape() * 2;
  const double activations = (4.0 * 4096 + 2.0 * 14336) * 2;
  const double recall = 2.0 * 2048 * 512 * 8;
  const double summaries = 65537.0 * 512 * 8 * 32;
  const double per_request = activations + recall + summaries;
  const uint32_t expect = uint32_t(std::floor((76e9 - weights) / per_request));
  auto r = simulate(s);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->batch_limit_gpu_memory, expect);
  EXPECT_EQ(uint32_t(r->batch_mean), expect);
  EXPECT_EQ(r->batch_limited_by, "gpu_memory");
  // pnm-kv keeps no summaries or recall buffers: the same GPU takes far more requests.
  auto p = sim_of({"run.mode=pnm-kv", "workload.context_tokens=1048576", "run.steps=1",
                   "cluster.pnm_devices=256", "sim.batch_policy=max"});
  EXPECT_GT(p.batch_limit_gpu_memory, 100 * expect);
}

TEST(sim_hand, devices_a_405b_1m_batch_needs) {
  // One request of 2^20 + 1 tokens takes 65537 pages × 8704 B × 1008 (layer, head) pairs =
  // 575.0 GB: 8 requests need 4600 GB, i.e. 9 devices of 512 GB (each holds a ninth of
  // every request, 511.1 GB); 8 devices hold 7. Flat: exact-int8's int8 summaries add 3%.
  for (auto [devices, admitted] : std::vector<std::pair<int, uint32_t>>{{9, 8}, {8, 7}, {2, 1}, {1, 0}}) {
    SCOPED_TRACE(devices);
    auto s = setup_of({"model.file=" + m405, "sim.tp=0", "workload.context_tokens=1048576", "selection.search=flat",
                       "run.steps=1", "workload.batch=8", "cluster.pnm_devices=" + std::to_string(devices)});
    ASSERT_TRUE(s);
    auto r = simulate(s);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->batch_peak, admitted);
    EXPECT_EQ(r->batch_limit_device_capacity, admitted);
    if (admitted < 8) {
      EXPECT_EQ(r->batch_limited_by, "device_capacity");
    }
  }
}

TEST(sim_property, more_devices_never_lower_pnm_kv_throughput_at_fixed_batch) {
  for (const std::string& model : {m8, m405}) {
    double last = 0;
    for (int devices : {4, 8, 16, 32, 64, 128}) {
      SCOPED_TRACE(model + " devices " + std::to_string(devices));
      auto r = sim_of({"model.file=" + model, "sim.tp=0", "workload.context_tokens=262144",
                       "workload.batch=16", "run.steps=8", "sim.pool_auto=true",
                       "cluster.pnm_devices=" + std::to_string(devices)});
      if (r.batch_peak < 16) continue;  // not every device count holds the batch
      EXPECT_GE(r.tokens_per_s, last * (1 - 1e-9));
      last = r.tokens_per_s;
    }
    EXPECT_GT(last, 0);
  }
}

TEST(sim_property, longer_context_never_raises_pnm_kv_throughput) {
  for (bool pool_auto : {false, true}) {
    double last = 1e300;
    for (int ctx : {16384, 65536, 262144, 1048576, 4194304}) {
      SCOPED_TRACE("context " + std::to_string(ctx));
      auto r = sim_of({"workload.context_tokens=" + std::to_string(ctx), "workload.batch=4",
                       "run.steps=8", "cluster.pnm_devices=64",
                       std::string("sim.pool_auto=") + (pool_auto ? "true" : "false")});
      ASSERT_EQ(r.batch_peak, 4u);
      EXPECT_LE(r.tokens_per_s, last * (1 + 1e-9));
      last = r.tokens_per_s;
    }
  }
}

TEST(sim_property, breakdown_adds_up_to_the_step_in_every_mode_and_topology) {
  // One GPU (8B), and 8-way tensor x 2-stage pipeline parallel (405B).
  for (const char* mode : {"baseline", "pnm-kv", "png-kv"})
    for (const std::string& model : {m8, m405}) {
      SCOPED_TRACE(std::string(mode) + " " + model);
      auto r = sim_of({std::string("run.mode=") + mode, "model.file=" + model, "sim.tp=0",
                       "workload.context_tokens=131072", "sim.batch_policy=max", "workload.batch_max=64",
                       "run.steps=4", "cluster.pnm_devices=32"});
      EXPECT_EQ(r.gpus, model == m8 ? 1u : 16u);
      EXPECT_NEAR(r.breakdown_ms.sum(), r.step_ms, 1e-6 * r.step_ms);
      EXPECT_GT(r.tokens_per_s, 0);
      EXPECT_GT(r.energy_j_per_token, r.static_j_per_token);
    }
}

TEST(sim_property, tpot_limit_bounds_the_batch_and_the_step) {
  // Unlimited, 64 requests take some step time; with a limit of 70% of it, admission stops
  // earlier, for the TPOT limit, and every step stays within it.
  auto free = sim_of({"workload.context_tokens=262144", "sim.batch_policy=max", "workload.batch_max=64",
                      "run.steps=4", "cluster.pnm_devices=16", "sim.step_reuse_steps=1"});
  ASSERT_EQ(free.batch_peak, 64u);
  const double limit = 0.7 * free.step_ms;
  auto capped = sim_of({"workload.context_tokens=262144", "sim.batch_policy=max", "workload.batch_max=64",
                        "run.steps=4", "cluster.pnm_devices=16", "sim.step_reuse_steps=1",
                        "workload.tpot_ms_max=" + std::to_string(limit)});
  EXPECT_EQ(capped.batch_limited_by, "tpot");
  EXPECT_LT(capped.batch_peak, 64u);
  EXPECT_GT(capped.batch_peak, 0u);
  EXPECT_LE(capped.step_ms, limit * (1 + 1e-3));  // the sequences grow by 4 tokens
}

TEST(sim_property, step_reuse_stays_within_its_bound) {
  auto exact = sim_of({"workload.context_tokens=65536", "workload.batch=8", "run.steps=64",
                       "sim.step_reuse_steps=1"});
  auto reused = sim_of({"workload.context_tokens=65536", "workload.batch=8", "run.steps=64",
                        "sim.step_reuse_steps=16"});
  // Each step adds at most one row and one summary per head: below 16 / budget_tokens.
  EXPECT_NEAR(reused.step_ms, exact.step_ms, exact.step_ms * 16.0 / 2048);
  EXPECT_NEAR(reused.energy_j_per_token, exact.energy_j_per_token, exact.energy_j_per_token * 16.0 / 2048);
  EXPECT_NE(reused.step_ms, exact.step_ms);
}

// The baseline's first decode step recalls every page (the recall cache starts empty) and
// the steps after it only the misses: a reused step result must not carry the cold step
// over (it did, for up to sim.step_reuse_steps steps), so reuse stays within the same bound.
// Without the cache every step recalls everything, and the cold step is like the others.
TEST(sim_property, step_reuse_does_not_repeat_the_cold_recall_cache_step) {
  for (const char* cache : {"lru", "none"}) {
    SCOPED_TRACE(cache);
    const std::vector<std::string> base = {"run.mode=baseline", std::string("baseline.recall_cache=") + cache,
                                           "workload.context_tokens=65536", "workload.batch=8", "run.steps=64",
                                           "sim.recall_hit_fraction=0.85"};
    auto with = [&](const char* reuse) {
      auto sets = base;
      sets.push_back(std::string("sim.step_reuse_steps=") + reuse);
      return sim_of(sets);
    };
    const sim_result exact = with("1"), reused = with("16");
    EXPECT_NEAR(reused.step_ms, exact.step_ms, exact.step_ms * 16.0 / 2048);
    EXPECT_NEAR(reused.link_bytes_per_step, exact.link_bytes_per_step, exact.link_bytes_per_step * 16.0 / 2048);
  }
  // And the cache saves link bytes against none.
  EXPECT_LT(sim_of({"run.mode=baseline", "workload.context_tokens=65536", "workload.batch=8", "run.steps=64"})
                .link_bytes_per_step,
            sim_of({"run.mode=baseline", "baseline.recall_cache=none", "workload.context_tokens=65536",
                    "workload.batch=8", "run.steps=64"})
                .link_bytes_per_step);
}

TEST(sim_property, poisson_workload_finishes_every_request_with_consistent_latencies) {
  for (const char* mode : {"baseline", "pnm-kv", "png-kv"}) {
    SCOPED_TRACE(mode);
    auto s = setup_of({std::string("run.mode=") + mode, "workload.arrivals=poisson", "workload.requests=40",
                       "workload.arrival_rate_per_s=2", "workload.context_tokens=32768", "run.steps=32",
                       "workload.output_tokens=32", "workload.prompt_tokens_spread_fraction=0.5",
                       "cluster.pnm_devices=8",
                       "sim.batch_series_points_max=50"});
    ASSERT_TRUE(s);
    auto r = simulate(s);
    ASSERT_TRUE(r) << r.error().to_string();
    EXPECT_EQ(r->completed, 40u);
    EXPECT_EQ(r->refused + r->unfinished, 0u);
    EXPECT_EQ(r->tokens_out, 40u * 32);
    EXPECT_LE(r->batch_series.size(), 50u);
    for (const auto& q : r->requests) {
      EXPECT_GE(q.admitted_s, q.arrival_s);
      EXPECT_GT(q.first_token_s, q.admitted_s);
      EXPECT_GE(q.finish_s, q.first_token_s);
      EXPECT_EQ(q.generated, q.output_tokens);
    }
    EXPECT_GT(r->ttft_ms, 0);
    EXPECT_GT(r->tpot_ms, 0);
    EXPECT_GE(r->queueing_ms, 0);
  }
}

TEST(sim_property, closed_batch_refusals_name_the_first_failing_constraint_and_generate_nothing) {
  // 8 devices hold 7 requests of 4M tokens of the default model (the analytic limit); a
  // closed batch of 20 with workload.batch_max = 17: requests 8–17 are refused for device
  // capacity (the first failing constraint), 18–20 for the cap on the offered batch.
  auto r = sim_of({"workload.context_tokens=4194304", "sim.batch_policy=config", "workload.batch=20",
                   "workload.batch_max=17", "run.steps=2", "cluster.pnm_devices=8", "cluster.pool_devices=8"});
  const uint32_t fit = r.batch_limit_device_capacity;
  ASSERT_GT(fit, 0u);
  ASSERT_LT(fit, 17u) << "the test needs device capacity to bind before the cap";
  ASSERT_EQ(r.requests.size(), 20u);
  EXPECT_EQ(r.batch_peak, fit);
  EXPECT_EQ(r.completed, fit);
  EXPECT_EQ(r.refused, 20u - fit);
  for (const auto& q : r.requests) {
    if (q.id <= fit) {
      EXPECT_FALSE(q.refused) << q.id;
      EXPECT_EQ(q.generated, 3u) << "first token with the prefill, then run.steps";
      continue;
    }
    EXPECT_TRUE(q.refused) << q.id;
    EXPECT_EQ(q.generated, 0u) << "a refused request generates nothing";
    EXPECT_EQ(q.refusal, q.id <= 17 ? "device_capacity" : "batch_max") << q.id;
  }
  EXPECT_EQ(r.batch_limited_by, "batch_max") << "the last refusal's reason";
}

std::string temp_file(const std::string& name, const std::string& text) {
  auto p = std::filesystem::temp_directory_path() / ("pnmkv_sim_test_" + name);
  std::ofstream(p) << text;
  return p.string();
}

TEST(sim_files, trace_is_read_and_bad_rows_are_refused) {
  auto good = temp_file("trace.csv", "arrival_s,prompt_tokens,output_tokens\n0.5,4096,8\n0.0,8192,4\n");
  auto rows = load_trace(good);
  ASSERT_TRUE(rows) << rows.error().to_string();
  ASSERT_EQ(rows->size(), 2u);
  EXPECT_EQ((*rows)[0].prompt_tokens, 8192u);  // sorted by arrival
  auto r = sim_of({"workload.arrivals=trace", "workload.trace_file=" + good});
  EXPECT_EQ(r.completed, 2u);
  EXPECT_EQ(r.tokens_out, 12u);
  auto bad = temp_file("bad.csv", "0.5,4096,8\n1.0,-5,3\n");
  auto e = load_trace(bad);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("line 2"), std::string::npos) << e.error().message();
}

TEST(sim_files, calibration_values_replace_config_and_name_their_source) {
  auto file = temp_file("cal.json", R"({"format": "pnmkv-calibration/1",
    "measured": {"model": "Llama-3.1-8B", "context_tokens": 32768},
    "values": {"steady_hit_fraction": {"value": 0.4, "samples": 1024}, "selection_overlap": 0.9}})");
  auto s = setup_of({"sim.calibration_file=" + file});
  ASSERT_TRUE(s);
  EXPECT_DOUBLE_EQ(s->cal.steady_hit_fraction.value, 0.4);
  EXPECT_NE(s->cal.steady_hit_fraction.source.find("1024 samples"), std::string::npos);
  EXPECT_DOUBLE_EQ(s->cal.selection_overlap.value, 0.9);
  EXPECT_EQ(s->cal.steady_churn_fraction.source, "config sim.steady_churn_fraction");
  EXPECT_EQ(s->cal.measured_model, "Llama-3.1-8B");
  for (const char* bad : {R"({"format": "pnmkv-calibration/1", "values": {"steady_hit_fraction": 1.5}})",
                          R"({"format": "pnmkv-calibration/1", "values": {"stedy_hit_fraction": 0.5}})",
                          R"({"format": "other", "values": {}})", "not json"}) {
    auto f = temp_file("bad_cal.json", bad);
    auto c = load_calibration(f, calibration{});
    EXPECT_FALSE(c) << bad;
  }
}

TEST(sim_files, sweep_runs_the_product_of_its_axes) {
  auto file = temp_file("sweep.yaml", "name: t\nconfig: " + default_file +
                                          "\nset: [run.steps=2, workload.context_tokens=16384]\naxes:\n"
                                          "  - key: run.mode\n    values: [baseline, pnm-kv]\n"
                                          "  - key: cluster.pnm_devices\n    values: [2, 4, 8]\n"
                                          "    with: [[workload.batch=1], [], [workload.batch=3]]\n");
  auto spec = load_sweep(file);
  ASSERT_TRUE(spec) << spec.error().to_string();
  EXPECT_EQ(spec->points(), 6u);
  auto points = run_sweep(*spec, "", {}, {});
  ASSERT_EQ(points.size(), 6u);
  for (const auto& p : points) EXPECT_TRUE(p.ok) << p.error;
  EXPECT_EQ(points[0].result.mode, "baseline");
  EXPECT_EQ(points[0].result.batch_peak, 1u);
  EXPECT_EQ(points[5].result.mode, "pnm-kv");
  EXPECT_EQ(points[5].result.batch_peak, 3u);
  const std::string csv = sweep_csv(points);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 7);
  auto unknown = temp_file("bad_sweep.yaml", "axes:\n  - key: run.mood\n    values: [a]\n");
  EXPECT_FALSE(load_sweep(unknown));
}

TEST(sim_setup, bad_topologies_are_refused_with_the_key) {
  auto cfg = load_config(default_file, {"model.file=" + m405, "sim.tp=1"});
  ASSERT_TRUE(cfg);
  auto s = make_sim_setup(*cfg);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("do not fit"), std::string::npos) << s.error().message();
  cfg = load_config(default_file, {"sim.tp=3"});
  ASSERT_TRUE(cfg);
  s = make_sim_setup(*cfg);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("sim.tp"), std::string::npos);
  cfg = load_config(default_file, {"cluster.pnm_devices=6", "cluster.pool_devices=4"});
  ASSERT_TRUE(cfg);
  s = make_sim_setup(*cfg);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message().find("cluster.pool_devices"), std::string::npos);
}

TEST(sim_setup, workload_keys_are_the_live_clusters_and_the_old_sim_ones_are_unknown) {
  // One set of arrival keys for `pnmkv run` and `pnmkv sim`: the simulator reads workload.*,
  // and the sim.* keys it used to have are refused by name like any unknown key.
  auto s = setup_of({"workload.arrivals=poisson", "workload.requests=7", "workload.arrival_rate_per_s=3",
                     "workload.prompt_tokens_spread_fraction=0.2", "workload.output_tokens=5",
                     "workload.batch_max=6", "workload.prefill_chunk_tokens=1024", "run.steps=9"});
  ASSERT_TRUE(s);
  EXPECT_EQ(s->workload, workload_arrivals::poisson);
  EXPECT_EQ(s->requests, 7u);
  EXPECT_DOUBLE_EQ(s->arrival_rate_per_s, 3);
  EXPECT_DOUBLE_EQ(s->prompt_spread_fraction, 0.2);
  EXPECT_EQ(s->output_tokens, 5u);
  EXPECT_EQ(s->batch_cap, 6u);
  EXPECT_EQ(s->prefill_chunk_tokens, 1024u);
  auto r = simulate(s);
  ASSERT_TRUE(r) << r.error().to_string();
  EXPECT_EQ(r->completed, 7u);
  EXPECT_EQ(r->tokens_out, 7u * 5);  // workload.output_tokens, not run.steps
  for (const char* old : {"sim.workload=poisson", "sim.requests=7", "sim.arrival_rate_per_s=3",
                          "sim.prompt_tokens_spread_fraction=0.2", "sim.trace_file=t.csv",
                          "sim.batch_max=6", "sim.prefill_chunk_tokens=1024"}) {
    auto cfg = load_config(default_file, {old});
    ASSERT_FALSE(cfg) << old;
    const std::string key = std::string(old).substr(0, std::string(old).find('='));
    EXPECT_NE(cfg.error().message().find("unknown key '" + key + "'"), std::string::npos)
        << cfg.error().message();
  }
  auto cfg = load_config(default_file, {"workload.arrivals=trace"});
  ASSERT_TRUE(cfg);
  auto t = make_sim_setup(*cfg);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message().find("workload.trace_file"), std::string::npos) << t.error().message();
}

}  // namespace
}  // namespace pnmkv
