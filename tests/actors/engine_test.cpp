// The host and device engines driven directly (no CAF, no wire): with a budget covering
// every page the cluster's outputs equal dense attention; virtual time is monotone and
// equals the hand-composed critical path of a small case; runs are bit-reproducible.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <tuple>
#include <vector>

#include "actors/device_engine.hpp"
#include "actors/host_engine.hpp"
#include "core/workload.hpp"
#include "schedulers/step_model.hpp"
#include "tests/actors/harness.hpp"

namespace pnmkv {
namespace {


TEST(engines, full_budget_equals_dense) {
  for (uint32_t devices : {1u, 2u, 4u, 8u}) {
    SCOPED_TRACE("devices " + std::to_string(devices));
    auto m = tiny_model(2, 4, 4, 64);
    host_engine_config hc;
    hc.live_layers = 2;
    hc.budget_tokens = 1 << 20;  // covers every page
    harness h(m, hc, devices, 3);
    h.add(1, 1000 + 7 * devices, 3);
    h.add(2, 333, 3);
    h.prefill();
    for (uint32_t s = 0; s < 3; ++s) h.step(s);
    auto sum = h.host.accuracy().summary();
    EXPECT_GT(sum.samples, 0u);
    EXPECT_LT(sum.rel_err_max, 1e-5);
    EXPECT_NEAR(sum.mass_min, 1.0, 1e-5);
  }
}

TEST(engines, sparse_budget_loses_little_and_is_reproducible) {
  auto m = tiny_model(1, 2, 4, 128);
  host_engine_config hc;
  hc.budget_tokens = 512;
  uint64_t digest[2];
  for (int run = 0; run < 2; ++run) {
    harness h(m, hc, 2, 9);
    h.add(1, 20000, 4);
    h.prefill();
    for (uint32_t s = 0; s < 4; ++s) h.step(s);
    auto sum = h.host.accuracy().summary();
    EXPECT_GT(sum.mass_mean, 0.5);
    EXPECT_LE(sum.mass_mean, 1.0 + 1e-9);
    digest[run] = h.host.output_digest();
  }
  EXPECT_EQ(digest[0], digest[1]);
}

TEST(engines, virtual_time_is_the_hand_composed_critical_path) {
  // One device, one request, one KV head, 2 layers of which 1 is live: the step is
  // 2 × (dense + append out + query out + device + partial in + merge) + LM head, where
  // the query waits for the append on the host link.
  auto m = tiny_model(2, 1, 4, 64);
  host_engine_config hc;
  hc.live_layers = 1;
  hc.budget_tokens = 64;  // 4 pages
  hc.verify = false;
  harness h(m, hc, 1, 5);
  h.add(1, 256, 1);
  h.prefill();
  h.step(0);
  const auto& rep = h.host.last_step();
  const cost_model& c = h.costs;
  const double header = 96;
  const double append_bytes = header + 4.0 * 64, query_bytes = header + 4.0 * 4 * 64;
  const double dense = c.gpu_dense_layer(1).time_ns;
  // Host link: the append then the query serialise; the query arrives after latency.
  const double query_arrival = dense + c.link_serialisation_ns(append_bytes) +
                               c.link_serialisation_ns(query_bytes) + c.link_latency_ns();
  // Device: 17 pages (256 context + 1 appended token) of bf16 summaries, 4 pages attended
  // (first, last and the two best) holding 16+16+16+1 tokens.
  const double pages = 17, tokens = 16 * 3 + 1;
  const double bytes = pages * 2 * 64 * 2 + tokens * 64 * 4;
  const double flops = pages * 4 * 4.0 * 64 + tokens * 4 * 4.0 * 64;
  const double device_done = query_arrival + c.pnm_compute(bytes, flops).time_ns;
  const double partial_bytes = header + 4.0 * 4 * 64 + 4.0 * 4 + 4.0 * 4;  // o, lse, 4 page ids
  const double partial_in = device_done + c.link_latency_ns() + c.link_serialisation_ns(partial_bytes);
  const double layer = partial_in + c.gpu_merge(1, 4).time_ns;
  const double expect = 2 * layer + c.gpu_lm_head(1).time_ns;
  EXPECT_NEAR(rep.virtual_ns, expect, 1e-6 * expect);
  EXPECT_NEAR(rep.live_layers_ns, layer, 1e-6 * layer);
  EXPECT_EQ(h.devices.at(10).clock_ns(), device_done);
}

// The host engine charges its steps with the step model's arithmetic (schedulers/
// step_timeline.hpp) fed with what happened; the step model predicts the same composition
// from work sizes. Where the numerics cannot change the work (one shard per head, or local
// selection: every shard selects its share of the budget, the last page is always kept),
// the two are equal: the only difference is the order of floating-point sums (the engine
// adds on its absolute virtual clock, the model from 0 and multiplies one layer by the
// layers), so 1e-9 relative is rounding, not tolerance. Exact selection over s > 1 shards
// and png-kv with steady pages are not here: which shard holds the selected pages and
// which pages are steady come from the numerics, which the model takes from calibration.

TEST(engines, charge_what_the_step_model_predicts) {
  struct point {
    const char* name;
    run_mode mode;
    uint32_t devices;
    bool resident;
    bool lookahead = false;
    wire_precision wire = wire_precision::fp32;
  };
  for (const point& p : {point{"pnm-kv, one shard per head", run_mode::pnm_kv, 2, true},
                         point{"pnm-kv, local selection over 2 shards", run_mode::pnm_kv, 8, true},
                         point{"pnm-kv lookahead, one shard per head", run_mode::pnm_kv, 2, true, true},
                         point{"pnm-kv lookahead, local selection over 2 shards", run_mode::pnm_kv, 8, true, true},
                         point{"pnm-kv, bf16 wire, local selection over 2 shards", run_mode::pnm_kv, 8, true, false,
                               wire_precision::bf16},
                         point{"pnm-kv lookahead, bf16 wire, one shard per head", run_mode::pnm_kv, 2, true, true,
                               wire_precision::bf16},
                         point{"png-kv, bf16 wire", run_mode::png_kv, 2, true, false, wire_precision::bf16},
                         point{"png-kv, no steady pages", run_mode::png_kv, 2, true},
                         point{"baseline, summaries resident", run_mode::baseline, 2, true},
                         point{"baseline, summaries over the link", run_mode::baseline, 4, false}}) {
    SCOPED_TRACE(p.name);
    auto m = tiny_model(3, 4, 4, 64);
    host_engine_config hc;
    hc.mode = p.mode;
    hc.lookahead = p.lookahead;
    hc.wire = p.wire;
    hc.live_layers = m.layers;  // every layer live: no scaling
    hc.budget_tokens = 256;
    hc.cross_shard = cross_shard_selection::local;
    hc.summaries_resident = p.resident;
    hc.steady.warmup_steps = 1000;  // png-kv: the policy never fires
    hc.verify = false;
    harness h(m, hc, p.devices, 11);
    h.add(1, 3000, 3);
    h.add(2, 1234, 3);
    h.prefill();
    step_model sm(step_setup_of(h.costs, hc, p.devices));
    for (uint32_t s = 0; s < 3; ++s) {
      h.step(s);
      std::vector<request_placement> pls;
      for (uint64_t id : {1, 2}) {
        request_placement pl = *h.host.placement_of(id);
        for (auto& sh : pl.shards) sh.device_id -= 10;  // the model counts devices from 0
        pls.push_back(pl);
      }
      std::vector<step_request> dec(2);
      for (size_t i = 0; i < 2; ++i) {
        dec[i].id = i + 1;
        dec[i].placement = &pls[i];
        dec[i].seq_tokens = (i == 0 ? 3000 : 1234) + s;
        dec[i].summaries_resident = p.resident;
        dec[i].first_decode_step = p.lookahead && s == 0;  // lookahead: nothing selected before
      }
      const step_result pred = sm.run(dec, {});
      const step_report& live = h.host.last_step();
      EXPECT_NEAR(live.virtual_ns, pred.time_ns, 1e-9 * pred.time_ns) << "step " << s;
      EXPECT_EQ(double(live.link_bytes), pred.link_bytes) << "step " << s;
      EXPECT_EQ(double(live.device_bytes_scanned), pred.device_bytes) << "step " << s;
    }
  }
}

// run.wire_precision bf16 (model/work_sizes.hpp) changes two things and nothing else: every
// query a device gets holds bf16 values (the host rounded it, the dense verification
// query's too), and every partial output but a dense one is the fp32 answer rounded to
// bf16. Checked on every answer of 4 steps: the device answers each query again without
// the flag, and the pages, bytes, flops and log-sum-exps must be identical, the outputs
// equal once rounded (dense: equal). Shapes: GQA 1, 4 and 8, head dims 64 and 128, one
// shard per head and 2 sequence shards with either cross-shard rule, lookahead, 2 seeds.
TEST(engines, bf16_wire_rounds_the_query_and_each_partial_output_and_nothing_else) {
  struct shape {
    uint32_t kv_heads, group, head_dim, devices;
    cross_shard_selection cross;
    bool lookahead;
  };
  for (const shape& sh : {shape{4, 1, 64, 2, cross_shard_selection::exact, false},
                          shape{2, 4, 128, 4, cross_shard_selection::exact, false},
                          shape{2, 8, 64, 4, cross_shard_selection::local, false},
                          shape{2, 4, 64, 4, cross_shard_selection::exact, true}})
    for (uint64_t seed : {3u, 17u}) {
      SCOPED_TRACE("GQA " + std::to_string(sh.group) + ", d " + std::to_string(sh.head_dim) + ", " +
                   std::to_string(sh.devices) + " devices, seed " + std::to_string(seed));
      auto m = tiny_model(2, sh.kv_heads, sh.group, sh.head_dim);
      host_engine_config hc;
      hc.live_layers = m.layers;
      hc.budget_tokens = 128;
      hc.cross_shard = sh.cross;
      hc.lookahead = sh.lookahead;
      hc.wire = wire_precision::bf16;
      harness h(m, hc, sh.devices, seed);
      uint64_t answers = 0, rounded = 0, dense = 0;
      h.on_answer = [&](device_engine& d, const device_query& q, const device_answer& a) {
        ++answers;
        const size_t n = size_t(q.group) * sh.head_dim;
        for (size_t i = 0; i < n; ++i) ASSERT_EQ(q.q[i], to_float(to_bf16(q.q[i]))) << "q[" << i << "] is not bf16";
        const bool is_dense = q.round == selection_round::dense;
        EXPECT_EQ(q.wire_bf16, !is_dense);
        device_query f = q;
        f.wire_bf16 = false;
        device_answer b;
        ASSERT_TRUE(d.query(f, b));
        EXPECT_EQ(a.pages, b.pages);
        EXPECT_EQ(a.bytes_scanned, b.bytes_scanned);
        EXPECT_EQ(a.flops, b.flops);
        EXPECT_EQ(a.candidate_scores, b.candidate_scores);
        EXPECT_EQ(a.part.lse, b.part.lse);
        ASSERT_EQ(a.part.o.size(), b.part.o.size());
        bool differs = false;
        for (size_t i = 0; i < b.part.o.size(); ++i) {
          const float want = is_dense ? b.part.o[i] : to_float(to_bf16(b.part.o[i]));
          ASSERT_EQ(a.part.o[i], want) << "o[" << i << "]";
          differs |= a.part.o[i] != b.part.o[i];
        }
        rounded += differs;
        dense += is_dense;
      };
      h.add(1, 1500, 4);
      h.add(2, 777, 4);
      h.prefill();
      for (uint32_t s = 0; s < 4; ++s) {
        h.step(s);
        if (::testing::Test::HasFatalFailure()) return;
      }
      EXPECT_GT(answers, 0u);
      EXPECT_GT(dense, 0u);    // the verification queries were seen
      EXPECT_GT(rounded, 0u);  // and rounding changed some outputs: the check can fail
    }
}

// baseline with the recall cache (schedulers/recall_cache.hpp) against without: the GPU
// attends the same pages with the same bytes whether they came from HBM or over the link,
// so every merged output is bit-identical (the digest too); the first step is cold (every
// page a miss, the same bytes scanned as without the cache), later steps read only the
// misses; and the engine's hits are exactly those of the policy replayed on the same
// selections. 4 devices for 2 KV heads, so a head's pages may lie on several shards (local
// selection) and hits and misses mix within one head; 2 live layers.
TEST(engines, baseline_recall_cache_changes_bytes_not_outputs) {
  auto m = tiny_model(2, 2, 4, 64);
  const uint32_t steps = 6;
  struct run {
    uint64_t digest = 0;
    std::vector<uint64_t> device_bytes;
    std::vector<std::vector<float>> outputs;
    host_engine::recall_stats stats;
    uint64_t replay_hits = 0, replay_selected = 0;
  };
  auto run_with = [&](recall_cache_policy policy) {
    host_engine_config hc;
    hc.mode = run_mode::baseline;
    hc.live_layers = 2;
    hc.budget_tokens = 256;  // 16 pages of 16
    hc.cross_shard = cross_shard_selection::local;
    hc.recall_cache = policy;
    hc.recall_cache_tokens = policy == recall_cache_policy::none ? 0 : 256;
    harness h(m, hc, 4, 5);
    h.add(1, 3000, steps);
    h.add(2, 1234, steps);
    h.prefill();
    run out;
    std::map<std::tuple<uint64_t, uint32_t, uint32_t>, recall_cache> replay;
    for (uint32_t s = 0; s < steps; ++s) {
      h.step(s);
      out.device_bytes.push_back(h.host.last_step().device_bytes_scanned);
      for (uint64_t id : {1, 2})
        for (uint32_t layer = 0; layer < 2; ++layer)
          for (uint32_t kh = 0; kh < m.kv_heads; ++kh) {
            const partial* o = h.host.last_output(id, layer, kh);
            EXPECT_NE(o, nullptr);
            if (o) out.outputs.push_back(o->o);
            auto it = replay.try_emplace({id, layer, kh}, recall_cache_policy::lru, 16).first;
            const auto sel = h.host.last_selection(id, layer, kh);
            out.replay_hits += it->second.lookup(sel).hits;
            out.replay_selected += sel.size();
          }
    }
    out.digest = h.host.output_digest();
    out.stats = h.host.recall_cache_stats();
    return out;
  };
  const run none = run_with(recall_cache_policy::none), lru = run_with(recall_cache_policy::lru);
  EXPECT_EQ(none.digest, lru.digest);
  ASSERT_EQ(none.outputs.size(), lru.outputs.size());
  for (size_t i = 0; i < none.outputs.size(); ++i) EXPECT_EQ(none.outputs[i], lru.outputs[i]) << "output " << i;
  EXPECT_EQ(none.stats.hits, 0u);
  EXPECT_EQ(none.stats.misses, none.replay_selected);
  EXPECT_EQ(lru.stats.hits, lru.replay_hits);
  EXPECT_EQ(lru.stats.hits + lru.stats.misses, lru.replay_selected);
  EXPECT_GT(lru.stats.hits, lru.replay_selected / 2) << "selections of successive steps overlap";
  EXPECT_EQ(lru.device_bytes[0], none.device_bytes[0]) << "a cold cache recalls every page";
  for (uint32_t s = 1; s < steps; ++s) EXPECT_LT(lru.device_bytes[s], none.device_bytes[s]) << "step " << s;
}

// png-kv's copy engine, live (schedulers/step_timeline.hpp, charge_steady_copies): the
// Llama-3.1-8B shape with one live layer, two requests of 2,000 and 1,500 tokens on 2
// devices, no policy (warm-up past the run). Before step 1 the test forces a steady set of
// 4 full pages on every (request, layer 0, KV head): step 1 copies 2 × 8 × 4 = 64 pages =
// 64 × 16 tokens × 512 B = 512 KiB for the live layer, 16 MiB for all 32 layers, and
// attends none of them yet (from step 2), so its layers are those of the run without the
// forced set. 16 recalls of 32 KiB over one 54.4 B/ns link take ~10.5 µs, far less than
// the dense-layer window (a dense layer of two tokens, ~165 µs, weights read from HBM):
// hidden. Step 1 grows by the HBM write alone, 16 MiB / 3015 B/ns =
// 5,564.58 ns, where the serial copy phase this replaced charged the copies' time too.
TEST(engines, steady_copies_hide_behind_the_dense_layer) {
  auto m = load_model_shape(configs + "models/llama-3.1-8b.yaml");
  ASSERT_TRUE(m);
  host_engine_config hc;
  hc.mode = run_mode::png_kv;
  hc.live_layers = 1;
  hc.budget_tokens = 256;
  hc.steady.warmup_steps = 1000;
  hc.verify = false;
  auto step1 = [&](bool force) {
    harness h(*m, hc, 2, 5);
    h.add(1, 2000, 3);
    h.add(2, 1500, 3);
    h.prefill();
    h.step(0);
    if (force)
      for (uint64_t r : {1, 2})
        for (uint32_t kh = 0; kh < m->kv_heads; ++kh) h.host.force_steady(r, 0, kh, {1, 2, 3, 4});
    h.step(1);
    return h.host.last_step();
  };
  const step_report with = step1(true), without = step1(false);
  EXPECT_EQ(without.copy_bytes, 0u);
  EXPECT_EQ(with.copy_bytes, 16u << 20);
  EXPECT_EQ(with.steady_pages, 0u) << "copied pages are attended from the next step";
  EXPECT_NEAR(with.copy_ns, 5564.58, 0.01);
  EXPECT_NEAR(with.virtual_ns - without.virtual_ns, with.copy_ns, 1e-9 * with.virtual_ns);
  EXPECT_GT(with.copy_hidden_ns, 32 * 5000.0) << "the copies' ~10.5 µs per live layer, hidden";
  EXPECT_LT(with.copy_hidden_ns, with.dense_ns);
}

}  // namespace
}  // namespace pnmkv
