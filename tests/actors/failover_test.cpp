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
            uint32_t replication = 2, bool lookahead = false) {
  const model_shape m = tiny_model(4, 4, 4, 64);
  host_engine_config hc;
  hc.mode = mode;
  hc.lookahead = lookahead;
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

// Two requests on two devices each (request 1 on 10 and 11, request 2 on 12 and 13), five
// steps; before round `round` of step 2 device `first` dies, and before the same round of
// step 3 device `second`. Returns request 2's output digest and the requests lost.
struct two_pools {
  uint64_t digest_1 = 0, digest_2 = 0;
  std::vector<rebuild_need> rebuilt;
  recovery_totals recovery;
  std::vector<lost_request> lost;
  std::vector<uint64_t> held;  // requests the engine still holds at the end
};

two_pools run_two_pools(run_mode mode, uint32_t replication, int round, int first, int second,
                        bool recompute = false, bool rebuild = false, bool copies = true) {
  const model_shape m = tiny_model(4, 4, 4, 64);
  host_engine_config hc;
  hc.mode = mode;
  hc.live_layers = 2;
  hc.budget_tokens = 256;
  hc.keep_for_retry = replication > 1 || recompute;
  hc.recompute = recompute;
  hc.rebuild_chunk_tokens = 512;  // several writes per (layer, KV head)
  hc.steady.warmup_steps = 1;
  hc.steady.reevaluate_every_steps = 1;
  harness h(m, hc, 6, 21);  // 14 and 15 hold nothing: room for new copies
  h.rebuild = rebuild;
  h.rebuild_copies = copies;
  h.replication = replication;
  h.head_groups = replication == 1 ? 1 : 0;  // r = 1: two sequence shards (two rounds)
  h.pool_devices = {10, 11};
  h.add(1, 3000, 6);
  h.pool_devices = {12, 13};
  h.add(2, 2000, 6);
  h.prefill();
  two_pools out;
  for (uint32_t s = 0; s < 5; ++s) {
    const int kill = s == 2 ? first : s == 3 ? second : -1;
    h.step(s, kill >= 0 ? round : -1, kill >= 0 ? uint32_t(kill) : 0);
    if (::testing::Test::HasFatalFailure()) return out;
  }
  out.lost = h.lost;
  for (const auto& r : h.host.requests()) out.held.push_back(r.request_id);
  const auto& d = h.host.request_digests();
  if (d.count(2)) out.digest_2 = d.at(2);
  if (d.count(1)) out.digest_1 = d.at(1);
  out.rebuilt = h.rebuilt;
  out.recovery = h.host.recovery();
  return out;
}

// Recovery impossible for one request: the devices holding every copy of one of its shards
// die (with r = 2 the second failure takes the first's replica; with r = 1 one failure is
// enough). Only that request is lost, mid-step, whichever round it happens in; the other
// runs on to the end with outputs bit-identical to a run without failures.
// Lookahead selection: a device lost with attend queries and background searches in flight;
// both are sent again to the new primaries (the searches off the timeline again).
TEST(failover, a_device_lost_mid_step_changes_no_output_with_lookahead_selection) {
  for (uint32_t h : {1u, 2u}) {
    SCOPED_TRACE("head groups " + std::to_string(h));
    const outcome clean = run(run_mode::pnm_kv, h, -1, -1, 0, 2, true);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ASSERT_NE(clean.digest, run(run_mode::pnm_kv, h, -1, -1, 0, 2, false).digest);
    for (int round : {0, 1, 2}) {
      for (uint32_t dev : {10u, 11u}) {
        SCOPED_TRACE("device " + std::to_string(dev) + " dies before round " + std::to_string(round));
        const outcome f = run(run_mode::pnm_kv, h, 2, round, dev, 2, true);
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        EXPECT_EQ(f.digest, clean.digest);
        EXPECT_DOUBLE_EQ(f.mass, clean.mass);
      }
    }
  }
}

TEST(failover, only_the_request_that_lost_every_copy_of_a_shard_is_lost) {
  for (run_mode mode : {run_mode::pnm_kv, run_mode::png_kv, run_mode::baseline}) {
    SCOPED_TRACE(to_string(mode));
    for (uint32_t r : {1u, 2u}) {
      SCOPED_TRACE("replication " + std::to_string(r));
      const two_pools clean = run_two_pools(mode, r, -1, -1, -1);
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      ASSERT_NE(clean.digest_2, 0u);
      ASSERT_TRUE(clean.lost.empty());
      for (int round : {0, 1, 2}) {  // rounds every configuration has (the last: verification)
        SCOPED_TRACE("round " + std::to_string(round));
        // r = 2: 10 then its replica 11. r = 1: 11 alone (at step 3; step 2 loses nothing).
        const two_pools f = r == 2 ? run_two_pools(mode, r, round, 10, 11) : run_two_pools(mode, r, round, -1, 11);
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        ASSERT_EQ(f.lost.size(), 1u);
        EXPECT_EQ(f.lost[0].request_id, 1u);
        EXPECT_NE(f.lost[0].reason.find("device 11 held the last copy"), std::string::npos) << f.lost[0].reason;
        EXPECT_EQ(f.held, std::vector<uint64_t>{2});
        EXPECT_EQ(f.digest_2, clean.digest_2);
      }
    }
  }
}

// The same failures with recompute on (cluster.recompute): the shard with no copy left is
// rebuilt from the prompt on a device holding nothing of its request, the work that waited
// for it goes there, and neither request loses an output: both digests equal the run
// without failures, whichever round it happens in, in every mode, r = 1 and r = 2. Its
// virtual time is charged (a stall), never free.
TEST(failover, a_shard_with_no_copy_left_is_recomputed_and_changes_no_output) {
  for (run_mode mode : {run_mode::pnm_kv, run_mode::png_kv, run_mode::baseline}) {
    SCOPED_TRACE(to_string(mode));
    for (uint32_t r : {1u, 2u}) {
      SCOPED_TRACE("replication " + std::to_string(r));
      const two_pools clean = run_two_pools(mode, r, -1, -1, -1, true, true);
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      ASSERT_NE(clean.digest_1, 0u);
      ASSERT_NE(clean.digest_2, 0u);
      for (int round : {0, 1, 2}) {
        SCOPED_TRACE("round " + std::to_string(round));
        // Copies are not rebuilt here, so r = 2 loses 10, then its replica 11 (the shard's
        // last copy); r = 1 loses 11.
        const two_pools f = r == 2 ? run_two_pools(mode, r, round, 10, 11, true, true, false)
                                   : run_two_pools(mode, r, round, -1, 11, true, true, false);
        ASSERT_FALSE(::testing::Test::HasFatalFailure());
        EXPECT_TRUE(f.lost.empty()) << f.lost.front().reason;
        EXPECT_EQ(f.held, (std::vector<uint64_t>{1, 2}));
        EXPECT_EQ(f.digest_1, clean.digest_1) << "request 1's outputs changed";
        EXPECT_EQ(f.digest_2, clean.digest_2);
        bool recomputed = false;
        for (const auto& n : f.rebuilt) recomputed = recomputed || (n.recompute && n.request_id == 1);
        EXPECT_TRUE(recomputed);
        EXPECT_GT(f.recovery.recomputed_tokens, 0u);
        EXPECT_GT(f.recovery.recomputed_bytes, 0u);
        EXPECT_GT(f.recovery.stall_ns, 0.0);
      }
    }
  }
}

// Re-replication without recompute: r = 2, device 10 dies in step 2 and its shard gets a new
// copy (from its replica 11, on 14); then 11 dies in step 3, taking the first failure's
// replica: the shard fails over to the new copy, and nothing is lost or changed.
TEST(failover, a_second_failure_after_rereplication_is_survived_by_the_new_copy) {
  for (run_mode mode : {run_mode::pnm_kv, run_mode::png_kv, run_mode::baseline}) {
    SCOPED_TRACE(to_string(mode));
    const two_pools clean = run_two_pools(mode, 2, -1, -1, -1, false, true);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    for (int round : {0, 1, 2}) {
      SCOPED_TRACE("round " + std::to_string(round));
      const two_pools f = run_two_pools(mode, 2, round, 10, 11, false, true);
      ASSERT_FALSE(::testing::Test::HasFatalFailure());
      EXPECT_TRUE(f.lost.empty()) << f.lost.front().reason;
      EXPECT_EQ(f.digest_1, clean.digest_1);
      EXPECT_EQ(f.digest_2, clean.digest_2);
      ASSERT_FALSE(f.rebuilt.empty());
      for (const auto& n : f.rebuilt) EXPECT_FALSE(n.recompute);
      EXPECT_GT(f.recovery.copied_bytes, 0u);
      EXPECT_EQ(f.recovery.recomputed_bytes, 0u);
    }
  }
}

// A replica that missed a decode append (lost on the way: appends are not acknowledged)
// and is then promoted gets the request's decoded tokens again with the failover: its
// answers are the primary's, bit for bit. Without the catch-up it would attend a row short
// (found by the deterministic fault simulation).
TEST(failover, a_promoted_replica_that_missed_an_append_is_caught_up) {
  for (run_mode mode : {run_mode::pnm_kv, run_mode::png_kv, run_mode::baseline}) {
    SCOPED_TRACE(to_string(mode));
    auto run_it = [&](bool drop) {
      const model_shape m = tiny_model(4, 4, 4, 64);
      host_engine_config hc;
      hc.mode = mode;
      hc.live_layers = 2;
      hc.budget_tokens = 256;
      hc.keep_for_retry = true;
      hc.steady.warmup_steps = 1;
      hc.steady.reevaluate_every_steps = 1;
      harness h(m, hc, 4, 21);
      h.replication = 2;
      h.head_groups = 2;  // two shards (one per head group), each with a replica
      h.add(1, 3000, 6);
      h.prefill();
      const shard_placement& sh = h.host.placement_of(1)->shards.front();
      const uint32_t primary = sh.device_id, replica = sh.replica_device_ids.front();
      if (drop) {
        h.drop_appends_to = replica;
        h.drop_appends_step = 1;
      }
      for (uint32_t s = 0; s < 5; ++s) {
        h.step(s, s == 3 ? 0 : -1, primary);
        if (::testing::Test::HasFatalFailure()) return uint64_t(0);
      }
      return h.host.output_digest();
    };
    const uint64_t clean = run_it(false);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    const uint64_t caught_up = run_it(true);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    EXPECT_EQ(caught_up, clean);
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

TEST(failover, without_a_replica_the_request_is_lost_and_its_shard_named) {
  one_request r1(1);
  harness& h = r1.h;
  auto r = h.host.fail_over(11);
  ASSERT_TRUE(r) << r.error().to_string();
  ASSERT_EQ(r->lost.size(), 1u);
  EXPECT_EQ(r->lost[0].request_id, 1u);
  const std::string& why = r->lost[0].reason;
  EXPECT_NE(why.find("last copy"), std::string::npos) << why;
  EXPECT_NE(why.find("device 11"), std::string::npos) << why;
  EXPECT_EQ(h.host.placement_of(1), nullptr);  // gone from the engine
  EXPECT_TRUE(h.host.requests().empty());
}

TEST(failover, is_idempotent_and_moves_every_shard_off_the_lost_device) {
  one_request r2(2);
  harness& h = r2.h;
  const uint64_t epoch = h.host.placement_of(1)->epoch;
  auto first = h.host.fail_over(12);
  ASSERT_TRUE(first);
  EXPECT_TRUE(first->lost.empty());
  auto again = h.host.fail_over(12);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->resend.empty());
  EXPECT_TRUE(again->lost.empty());
  const request_placement* pl = h.host.placement_of(1);
  ASSERT_NE(pl, nullptr);
  EXPECT_EQ(pl->epoch, epoch + 1);  // one new version per failover, none for a repeat
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
