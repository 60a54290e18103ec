// Lookahead selection (selection.lookahead) at the engine level, against the same run without
// it: from a request's second decode step on, each (layer, KV head) attends exactly the pages
// the run without lookahead selected one step earlier, plus the page the new token is in;
// its first step selects and attends as without. The devices make the same searches (the same
// pages searched, step by step); the searches leave the step's path but not its length: a
// step lasts at least as long as its busiest device's work, searches included, and exactly
// that long when the devices are the bottleneck.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <tuple>
#include <vector>

#include "tests/actors/harness.hpp"

namespace pnmkv {
namespace {

using head = std::tuple<uint64_t, uint32_t, uint32_t>;  // (request, layer, KV head)

struct shape_case {
  uint32_t devices;
  cross_shard_selection cross;
  uint64_t budget_tokens;
};

host_engine_config config_of(const shape_case& c, bool lookahead, uint32_t layers) {
  host_engine_config hc;
  hc.live_layers = layers;
  hc.budget_tokens = c.budget_tokens;
  hc.cross_shard = c.cross;
  hc.lookahead = lookahead;
  return hc;
}

std::string name_of(const shape_case& c) {
  return std::to_string(c.devices) + " devices, " + to_string(c.cross) + ", budget " +
         std::to_string(c.budget_tokens);
}

TEST(lookahead, each_step_attends_the_selection_the_last_step_made_with_the_same_searches) {
  const model_shape m = tiny_model(2, 4, 4, 64);
  const std::vector<uint64_t> contexts{3001, 1234};  // odd: partial last pages; a page starts at step 14
  const uint32_t steps = 18;
  for (const shape_case& c : {shape_case{1, cross_shard_selection::exact, 256},
                              shape_case{2, cross_shard_selection::exact, 64},
                              shape_case{8, cross_shard_selection::exact, 256},
                              shape_case{8, cross_shard_selection::local, 256},
                              shape_case{4, cross_shard_selection::local, 96}}) {
    SCOPED_TRACE(name_of(c));
    for (uint64_t seed : {5u, 17u}) {
      SCOPED_TRACE("seed " + std::to_string(seed));
      harness a(m, config_of(c, true, m.layers), c.devices, seed);
      harness b(m, config_of(c, false, m.layers), c.devices, seed);
      for (harness* h : {&a, &b}) {
        h->head_groups = 1;  // every KV head over every device: s = devices sequence shards
        for (size_t i = 0; i < contexts.size(); ++i) h->add(i + 1, contexts[i], steps);
        h->prefill();
      }
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      std::map<head, std::vector<uint64_t>> before;  // b's selections one step earlier
      for (uint32_t s = 0; s < steps; ++s) {
        a.step(s);
        b.step(s);
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        // The same searches: every shard's pages, once per (request, layer, KV head).
        EXPECT_EQ(a.host.last_step().search_pages, b.host.last_step().search_pages) << "step " << s;
        EXPECT_EQ(a.host.last_step().search_queries, b.host.last_step().search_queries) << "step " << s;
        for (size_t i = 0; i < contexts.size(); ++i) {
          const uint64_t id = i + 1;
          for (uint32_t l = 0; l < m.layers; ++l)
            for (uint32_t kv = 0; kv < m.kv_heads; ++kv) {
              const head k{id, l, kv};
              const std::vector<uint64_t> sel_a = a.host.last_selection(id, l, kv);
              const std::vector<uint64_t> sel_b = b.host.last_selection(id, l, kv);
              if (s == 0) {  // no selection before: as without lookahead, output too
                EXPECT_EQ(sel_a, sel_b);
                ASSERT_NE(a.host.last_output(id, l, kv), nullptr);
                EXPECT_EQ(a.host.last_output(id, l, kv)->o, b.host.last_output(id, l, kv)->o);
              } else {
                std::vector<uint64_t> want = before.at(k);
                want.push_back(0);
                want.push_back((contexts[i] + s) / 16);  // the new token's page
                std::sort(want.begin(), want.end());
                want.erase(std::unique(want.begin(), want.end()), want.end());
                EXPECT_EQ(sel_a, want) << "step " << s << " request " << id << " layer " << l << " head " << kv;
              }
              before[k] = sel_b;
            }
        }
      }
    }
  }
}

// Every step: shorter than without lookahead (the search left the path), never shorter than
// its busiest device's work, its searches included.
TEST(lookahead, a_step_is_shorter_but_never_shorter_than_its_busiest_devices_work) {
  const model_shape m = tiny_model(2, 4, 4, 64);
  for (const shape_case& c : {shape_case{2, cross_shard_selection::exact, 256},
                              shape_case{8, cross_shard_selection::local, 128}}) {
    SCOPED_TRACE(name_of(c));
    harness a(m, config_of(c, true, m.layers), c.devices, 3);
    harness b(m, config_of(c, false, m.layers), c.devices, 3);
    for (harness* h : {&a, &b}) {
      h->add(1, 40000, 4);
      h->add(2, 9000, 4);
      h->prefill();
    }
    for (uint32_t s = 0; s < 4; ++s) {
      a.step(s);
      b.step(s);
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      const step_report& ra = a.host.last_step();
      const step_report& rb = b.host.last_step();
      double busiest = 0;
      for (const auto& [d, ns] : a.step_served_ns) busiest = std::max(busiest, ns);
      ASSERT_GT(busiest, 0);
      EXPECT_GE(ra.virtual_ns - ra.lm_head_ns, busiest * (1 - 1e-9)) << "step " << s;
      if (s == 0) EXPECT_NEAR(ra.virtual_ns, rb.virtual_ns, 1e-9 * rb.virtual_ns);
      else EXPECT_LT(ra.virtual_ns, rb.virtual_ns) << "step " << s;
    }
  }
}

// One device scanning a long context for a 2-page budget: the searches are most of its work
// and the step lasts exactly as long as the device works; that time is charged as device time,
// and the step model predicts the same step.
TEST(lookahead, devices_that_cannot_keep_up_set_the_step) {
  const model_shape m = tiny_model(1, 1, 4, 64);
  const shape_case c{1, cross_shard_selection::exact, 32};
  const host_engine_config hc = config_of(c, true, 1);
  const uint64_t context = 1 << 19;
  harness a(m, hc, 1, 7);
  a.add(1, context, 3);
  a.prefill();
  step_model sm(step_setup_of(a.costs, hc, 1));
  for (uint32_t s = 0; s < 3; ++s) {
    a.step(s);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    request_placement pl = *a.host.placement_of(1);
    for (auto& sh : pl.shards) sh.device_id -= 10;  // the model counts devices from 0
    step_request q;
    q.id = 1;
    q.placement = &pl;
    q.seq_tokens = context + s;
    q.first_decode_step = s == 0;
    const step_result pred = sm.run({q}, {});
    const step_report& r = a.host.last_step();
    EXPECT_NEAR(r.virtual_ns, pred.time_ns, 1e-9 * pred.time_ns) << "step " << s;
    if (s == 0) continue;  // it searched on the path
    const double busiest = a.step_served_ns.at(10);
    EXPECT_NEAR(r.virtual_ns - r.lm_head_ns, busiest, 1e-9 * busiest) << "step " << s;
    EXPECT_GT(r.device_ns, 0.5 * busiest) << "step " << s;
    EXPECT_NEAR(pred.crit.device_scan_ns, r.device_ns, 1e-6 * r.device_ns) << "step " << s;
  }
}

}  // namespace
}  // namespace pnmkv
