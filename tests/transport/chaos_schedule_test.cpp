// Chaos schedules (transport/chaos_schedule.hpp): a pure function of (params, seed), drawn
// only from the kinds and devices asked for, inside the run's steps, and always a valid
// fault script; fault names are checked with a clear error.
#include <gtest/gtest.h>

#include <algorithm>

#include <set>

#include "transport/chaos_schedule.hpp"
#include "transport/faults.hpp"

namespace pnmkv::transport {
namespace {

chaos_params params(std::vector<chaos_fault> kinds) {
  chaos_params p;
  p.devices = {100, 101, 102, 103};
  p.steps = 24;
  p.kinds = std::move(kinds);
  p.faults_per_trial_max = 3;
  return p;
}

TEST(chaos_schedule, the_same_seed_draws_the_same_schedule_and_seeds_differ) {
  auto kinds = parse_chaos_faults("all");
  ASSERT_TRUE(kinds);
  const chaos_params p = params(*kinds);
  std::set<std::string> scripts;
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    auto a = draw_chaos_schedule(p, seed);
    auto b = draw_chaos_schedule(p, seed);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(a->script(), b->script());
    scripts.insert(a->script());
  }
  EXPECT_GT(scripts.size(), 190u) << "schedules of different seeds should differ";
}

TEST(chaos_schedule, draws_only_what_was_asked_inside_the_run_and_always_a_valid_script) {
  auto kinds = parse_chaos_faults("all");
  ASSERT_TRUE(kinds);
  for (const auto& ks : std::vector<std::vector<chaos_fault>>{*kinds, {chaos_fault::crash}, {chaos_fault::hang, chaos_fault::drop}}) {
    const chaos_params p = params(ks);
    std::set<chaos_fault> seen;
    for (uint64_t seed = 1; seed <= 300; ++seed) {
      auto s = draw_chaos_schedule(p, seed);
      ASSERT_TRUE(s) << s.error().to_string();
      ASSERT_GE(s->events.size(), 1u);
      ASSERT_LE(s->events.size(), p.faults_per_trial_max);
      auto rules = parse_fault_script(s->script());
      ASSERT_TRUE(rules) << s->script() << ": " << rules.error().to_string();
      EXPECT_EQ(rules->size(), s->events.size());
      for (const auto& e : s->events) {
        seen.insert(e.kind);
        EXPECT_NE(std::find(ks.begin(), ks.end(), e.kind), ks.end()) << e.rule;
        EXPECT_GE(e.step, 1u);
        EXPECT_LT(e.step, p.steps);
        if (e.node >= 0) {
          EXPECT_NE(std::find(p.devices.begin(), p.devices.end(), uint32_t(e.node)), p.devices.end());
        }
        if (e.probability < 1) {
          EXPECT_GT(e.probability, 0.0);
          EXPECT_LE(e.probability, p.rate_max);
        }
      }
    }
    EXPECT_EQ(seen.size(), ks.size()) << "300 seeds should draw every kind asked for";
  }
}

TEST(chaos_schedule, fault_names_are_checked_with_the_allowed_ones) {
  // "all": every kind the cluster can take; an embedded one has no coordinator process.
  auto all = parse_chaos_faults("all");
  ASSERT_TRUE(all);
  EXPECT_EQ(all->size(), chaos_fault_count - 1);
  EXPECT_EQ(std::count(all->begin(), all->end(), chaos_fault::coordinator_kill), 0);
  auto all_mp = parse_chaos_faults("all", /*multiprocess=*/true);
  ASSERT_TRUE(all_mp);
  EXPECT_EQ(all_mp->size(), chaos_fault_count);
  auto two = parse_chaos_faults(" crash , slow-link ");
  ASSERT_TRUE(two);
  EXPECT_EQ(*two, (std::vector<chaos_fault>{chaos_fault::crash, chaos_fault::slow_link}));
  auto bad = parse_chaos_faults("crash,meteor");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("\"meteor\" is unknown"), std::string::npos) << bad.error().message();
  EXPECT_NE(bad.error().message().find("crash|hang|partition"), std::string::npos) << bad.error().message();
  auto coord = parse_chaos_faults("coordinator-kill");
  ASSERT_FALSE(coord);
  EXPECT_NE(coord.error().message().find("needs --multiprocess"), std::string::npos) << coord.error().message();
  auto coord_mp = parse_chaos_faults("coordinator-kill", /*multiprocess=*/true);
  ASSERT_TRUE(coord_mp) << coord_mp.error().message();
  // Drawn as the launcher's rule: the coordinator (node 0) crashes at a decode step.
  chaos_params cp = params(*coord_mp);
  auto drawn = draw_chaos_schedule(cp, 7);
  ASSERT_TRUE(drawn);
  for (const auto& e : drawn->events) {
    EXPECT_EQ(e.node, 0);
    EXPECT_EQ(e.rule, "crash node=0 step=" + std::to_string(e.step));
    auto rules = parse_fault_script(e.rule);
    ASSERT_TRUE(rules);
    auto steps = coordinator_crash_steps(*rules);
    ASSERT_TRUE(steps);
    EXPECT_EQ(*steps, std::vector<uint32_t>{e.step});
  }
  EXPECT_FALSE(parse_chaos_faults(""));
  chaos_params p = params({chaos_fault::crash});
  p.steps = 1;
  EXPECT_FALSE(draw_chaos_schedule(p, 1));
  p = params({});
  EXPECT_FALSE(draw_chaos_schedule(p, 1));
}

}  // namespace
}  // namespace pnmkv::transport
