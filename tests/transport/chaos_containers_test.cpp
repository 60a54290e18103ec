// Chaos schedules mapped onto the container cluster (transport/chaos_containers.hpp): every
// device fault becomes the container action(s) standing in for it, with its undo; message
// faults stay in the nodes' script, verbatim and in order; the executor's clock strikes at
// the reported step, undoes after the drawn time or step, never undoes what was not done,
// and at the run's end undoes what is pending and strikes nothing new.
#include <gtest/gtest.h>

#include <map>

#include "transport/chaos_containers.hpp"
#include "transport/chaos_schedule.hpp"
#include "transport/faults.hpp"

namespace pnmkv::transport {
namespace {

chaos_event ev(chaos_fault k, int64_t node, uint32_t step, std::string rule, uint32_t ms = 0, uint32_t end = 0) {
  chaos_event e;
  e.kind = k;
  e.node = node;
  e.step = step;
  e.ms = ms;
  e.step_end = end;
  e.rule = std::move(rule);
  return e;
}

TEST(chaos_containers, maps_each_kind_onto_its_container_action_and_keeps_message_faults_in_the_script) {
  chaos_schedule s;
  s.events = {ev(chaos_fault::drop, -1, 3, "drop p=0.010000 step=3.."),
              ev(chaos_fault::crash, 101, 40, "crash node=101 step=40"),
              ev(chaos_fault::hang, 102, 7, "stall node=102 step=7 ms=1500", 1500),
              ev(chaos_fault::partition, 103, 9, "partition group=103 step=9..12", 0, 12),
              ev(chaos_fault::coordinator_kill, 0, 20, "crash node=0 step=20"),
              ev(chaos_fault::slow_link, 100, 5, "delay node=100 ms=3", 3)};
  auto p = plan_for_containers(s);
  ASSERT_TRUE(p) << p.error().to_string();
  EXPECT_EQ(p->node_script, "drop p=0.010000 step=3..; delay node=100 ms=3");
  ASSERT_TRUE(parse_fault_script(p->node_script));
  ASSERT_EQ(p->actions.size(), 6u);
  const auto& a = p->actions;
  EXPECT_EQ(a[0].op, container_op::crash);
  EXPECT_EQ(a[0].node, 101u);
  EXPECT_EQ(a[0].at_step, 40u);
  EXPECT_FALSE(a[0].undo());
  EXPECT_EQ(a[0].event, 1u);
  EXPECT_EQ(a[1].op, container_op::pause);
  EXPECT_EQ(a[1].at_step, 7u);
  EXPECT_EQ(a[2].op, container_op::resume);
  EXPECT_EQ(a[2].strike, 1);
  EXPECT_EQ(a[2].after_ms, 1500u);
  EXPECT_EQ(a[2].at_step, 0u);
  EXPECT_EQ(a[3].op, container_op::partition);
  EXPECT_EQ(a[3].node, 103u);
  EXPECT_EQ(a[3].at_step, 9u);
  EXPECT_EQ(a[4].op, container_op::heal);
  EXPECT_EQ(a[4].strike, 3);
  EXPECT_EQ(a[4].at_step, 13u);  // cut for steps 9..12, as the rule would
  EXPECT_EQ(a[5].op, container_op::coordinator);
  EXPECT_EQ(a[5].node, 0u);
  EXPECT_EQ(a[5].at_step, 20u);
  EXPECT_STREQ(to_string(container_op::pause), "pause");  // cluster.sh fault's kind names
  EXPECT_STREQ(to_string(container_op::heal), "heal");
  EXPECT_STREQ(to_string(container_op::coordinator), "coordinator");
}

TEST(chaos_containers, every_drawn_schedule_maps_with_the_device_faults_out_of_the_script) {
  auto kinds = parse_chaos_faults("all", true);
  ASSERT_TRUE(kinds);
  chaos_params p;
  p.devices = {100, 101, 102, 103};
  p.steps = 600;
  p.kinds = *kinds;
  p.faults_per_trial_max = 3;
  std::map<container_op, int> ops;
  for (uint64_t seed = 1; seed <= 500; ++seed) {
    auto s = draw_chaos_schedule(p, seed);
    ASSERT_TRUE(s);
    auto plan = plan_for_containers(*s);
    ASSERT_TRUE(plan) << s->script() << ": " << plan.error().to_string();
    auto rules = parse_fault_script(plan->node_script);
    ASSERT_TRUE(rules) << plan->node_script;
    size_t msg = 0, dev = 0;
    for (const auto& e : s->events) {
      const bool device = e.kind == chaos_fault::crash || e.kind == chaos_fault::hang ||
                          e.kind == chaos_fault::partition || e.kind == chaos_fault::coordinator_kill;
      (device ? dev : msg) += 1;
      if (device) {
        EXPECT_EQ(plan->node_script.find(e.rule), std::string::npos) << e.rule;
      }
      // a hang and a partition each come with their undo
      dev += e.kind == chaos_fault::hang || e.kind == chaos_fault::partition;
    }
    EXPECT_EQ(rules->size(), msg) << s->script();
    EXPECT_EQ(plan->actions.size(), dev) << s->script();
    for (const auto& a : plan->actions) {
      ++ops[a.op];
      if (a.undo()) {
        EXPECT_LT(size_t(a.strike), plan->actions.size());
      } else {
        EXPECT_GE(a.at_step, 1u);
      }
    }
  }
  for (auto op : {container_op::crash, container_op::pause, container_op::resume, container_op::partition,
                  container_op::heal, container_op::coordinator})
    EXPECT_GT(ops[op], 0) << to_string(op) << " never drawn in 500 seeds";
}

TEST(chaos_containers, refuses_device_faults_without_a_device_or_a_step) {
  chaos_schedule s;
  s.events = {ev(chaos_fault::crash, -1, 4, "crash step=4")};
  auto p = plan_for_containers(s);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message().find("needs one device"), std::string::npos) << p.error().message();
  s.events = {ev(chaos_fault::hang, 101, 4, "stall node=101 step=4 ms=0", 0)};
  EXPECT_FALSE(plan_for_containers(s));
  s.events = {ev(chaos_fault::partition, 101, 0, "partition group=101", 0, 0)};
  EXPECT_FALSE(plan_for_containers(s));
  s.events = {ev(static_cast<chaos_fault>(chaos_fault_count), 101, 4, "x")};
  p = plan_for_containers(s);
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message().find("allowed: crash, hang, partition, coordinator-kill"), std::string::npos)
      << p.error().message();
}

TEST(chaos_containers, strikes_at_the_reported_step_and_undoes_after_the_drawn_time_or_step) {
  chaos_schedule s;
  s.events = {ev(chaos_fault::hang, 102, 7, "stall node=102 step=7 ms=1500", 1500),
              ev(chaos_fault::partition, 103, 9, "partition group=103 step=9..12", 0, 12),
              ev(chaos_fault::crash, 101, 400, "crash node=101 step=400")};
  auto p = plan_for_containers(s);
  ASSERT_TRUE(p);
  // actions: 0 pause@7, 1 resume +1500 ms, 2 partition@9, 3 heal@13, 4 crash@400
  std::vector<int64_t> done(p->actions.size(), -1);
  using v = std::vector<size_t>;
  EXPECT_EQ(due_container_actions(*p, 6, 0, done, false), v{});
  EXPECT_EQ(due_container_actions(*p, 7, 10, done, false), v{0});
  done[0] = 100;  // paused at t = 100 ms
  EXPECT_EQ(due_container_actions(*p, 8, 1599, done, false), v{});
  EXPECT_EQ(due_container_actions(*p, 8, 1600, done, false), v{1});
  done[1] = 1650;
  // the run may jump past a partition's whole range before it is struck: strike first,
  // heal only once the strike is done
  EXPECT_EQ(due_container_actions(*p, 20, 1700, done, false), v{2});
  done[2] = 1750;
  EXPECT_EQ(due_container_actions(*p, 12, 1800, done, false), v{});
  EXPECT_EQ(due_container_actions(*p, 13, 1800, done, false), v{3});
  done[3] = 1850;
  EXPECT_EQ(due_container_actions(*p, 399, 1900, done, false), v{});
  // the run is over before step 400: the crash is never struck, nothing left to undo
  EXPECT_EQ(due_container_actions(*p, 399, 1900, done, true), v{});
}

TEST(chaos_containers, at_the_end_undoes_what_is_pending_and_never_what_was_not_done) {
  chaos_schedule s;
  s.events = {ev(chaos_fault::hang, 102, 7, "stall node=102 step=7 ms=3000", 3000),
              ev(chaos_fault::partition, 103, 9, "partition group=103 step=9..500", 0, 500),
              ev(chaos_fault::hang, 101, 900, "stall node=101 step=900 ms=300", 300)};
  auto p = plan_for_containers(s);
  ASSERT_TRUE(p);
  // 0 pause 102, 1 resume, 2 partition 103, 3 heal, 4 pause 101, 5 resume
  std::vector<int64_t> done(p->actions.size(), -1);
  done[0] = 10;
  done[2] = 20;
  EXPECT_EQ(due_container_actions(*p, 50, 100, done, false), (std::vector<size_t>{}));
  EXPECT_EQ(due_container_actions(*p, 50, 100, done, true), (std::vector<size_t>{1, 3}));
}

}  // namespace
}  // namespace pnmkv::transport
