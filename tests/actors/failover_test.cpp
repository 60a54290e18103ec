// Failover to replicas (docs/DESIGN.md §7) at the engine level: with cluster.replication = 2, a
// device that dies in the middle of a step costs a retry, never an output: the run's
// output digest and accuracy equal those of the same run with no failure, whichever round
// the device dies in, in every mode. With no replica the host says which shard was lost.
#include <gtest/gtest.h>

#include "tests/actors/harness.hpp"

namespace pnmkv {
namespace {

struct outcome {
  uint64_t digest = 0;
  double mass = 0;
  std::vector<double> step_ns;
};

outcome run(run_mode mode, uint32_t head_groups, int kill_step, int kill_round, uint32_t kill_device,
            uint32_t replication = 2) {
  const model_shape m = tiny_model(4, 4, 4, 64);
  host_engine_config hc;
  hc.mode = mode;
  hc.live_layers = 2;
  hc.budget_tokens = 256;
  hc.cross_shard = cross_shard_selection::exact;
  hc.keep_for_retry = true;
  hc.steady.warmup_steps = 1;
  hc.steady.reevaluate_every_steps = 1;
  harness h(m, hc, 4, 21);
  h.head_groups = head_groups;
  h.replication = replication;
  h.add(1, 3000, 6);
  h.add(2, 2000, 6);
  h.prefill();
  outcome o;
  for (uint32_t s = 0; s < 5; ++s) {
    h.step(s, int(s) == kill_step ? kill_round : -1, kill_device);
    if (::testing::Test::HasFatalFailure()) return o;
    o.step_ns.push_back(h.host.last_step().virtual_ns);
  }
  o.digest = h.host.output_digest();
  o.mass = h.host.accuracy().summary().mass_mean;
  return o;
}

TEST(failover, a_device_lost_mid_step_changes_no_output_in_any_mode_or_round) {
  for (run_mode mode : {run_mode::pnm_kv, run_mode::png_kv, run_mode::baseline}) {
    SCOPED_TRACE(to_string(mode));
    for (uint32_t h : {1u, 2u}) {  // h = 1: s = 2 sequence shards (two rounds); h = 2: one
      SCOPED_TRACE("head groups " + std::to_string(h));
      const outcome clean = run(mode, h, -1, -1, 0);
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      ASSERT_NE(clean.digest, 0u);
      for (int round : {0, 1, 2, 3}) {
        for (uint32_t dev : {10u, 11u}) {
          SCOPED_TRACE("device " + std::to_string(dev) + " dies before round " + std::to_string(round));
          const outcome f = run(mode, h, 2, round, dev);
          ASSERT_FALSE(::testing::Test::HasFatalFailure());
          EXPECT_EQ(f.digest, clean.digest);
          EXPECT_DOUBLE_EQ(f.mass, clean.mass);
          // Steps before the failure are untouched; the retry costs time, never saves it.
          EXPECT_EQ(f.step_ns[1], clean.step_ns[1]);
          EXPECT_GE(f.step_ns[2], clean.step_ns[2]);
        }
      }
    }
  }
}

// One request of 2000 tokens over four devices, prefilled and one step decoded.
struct one_request {
  host_engine_config hc = [] {
    host_engine_config c;
    c.live_layers = 1;
    c.budget_tokens = 256;
    c.keep_for_retry = true;
    return c;
  }();
  harness h{tiny_model(4, 4, 4, 64), hc, 4, 3};
  explicit one_request(uint32_t replication) {
    h.replication = replication;
    h.add(1, 2000, 4);
    h.prefill();
    h.step(0);
  }
};

TEST(failover, without_a_replica_the_lost_shard_is_named) {
  one_request r1(1);
  harness& h = r1.h;
  auto r = h.host.fail_over(11);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message().find("only copy"), std::string::npos) << r.error().message();
  EXPECT_NE(r.error().message().find("device 11"), std::string::npos) << r.error().message();
}

TEST(failover, is_idempotent_and_moves_every_shard_off_the_lost_device) {
  one_request r2(2);
  harness& h = r2.h;
  ASSERT_TRUE(h.host.fail_over(12));
  auto again = h.host.fail_over(12);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->empty());
  const request_placement* pl = h.host.placement_of(1);
  ASSERT_NE(pl, nullptr);
  for (const auto& s : pl->shards) {
    EXPECT_NE(s.device_id, 12u);
    for (uint32_t r : s.replica_device_ids) EXPECT_NE(r, 12u);
  }
}

TEST(failover, a_request_placed_on_a_lost_device_is_served_by_its_replicas) {
  one_request r2(2);
  harness& h = r2.h;
  ASSERT_TRUE(h.host.fail_over(10));
  h.dead.insert(10);
  h.add(2, 1500, 4);  // placed over all four devices, the lost one included
  h.prefill();
  const request_placement* pl = h.host.placement_of(2);
  ASSERT_NE(pl, nullptr);
  for (const auto& s : pl->shards) {
    EXPECT_NE(s.device_id, 10u);
    for (uint32_t r : s.replica_device_ids) EXPECT_NE(r, 10u);
  }
  h.step(1);  // nothing goes to device 10, and the step completes
  EXPECT_TRUE(h.host.step_done());
}

}  // namespace
}  // namespace pnmkv
