// Link model arithmetic and occupancy; fault rules: parsing, determinism, and for every
// fault kind injected at a known rate: the event log and the receiver's counters show it
// at that rate (5-sigma binomial bounds for the fixed seed), and the same seed replays the
// same log.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <regex>
#include <set>
#include <thread>

#include "config/config.hpp"
#include "transport/from_config.hpp"
#include "transport/inproc_fabric.hpp"
#include "transport/link_model.hpp"
#include "transport/samples.hpp"

namespace pnmkv::transport {
namespace {

using namespace std::chrono_literals;

TEST(LinkModel, TransferTimeIsLatencyPlusHopsPlusBytesOverBandwidth) {
  link_params p;  // 300 ns, 1 hop of 100 ns, 64 GB/s
  EXPECT_EQ(transfer_time_ns(p, 0, link_direction::host_to_device), 400u);
  EXPECT_EQ(transfer_time_ns(p, 64000, link_direction::host_to_device), 400u + 1000u);
  p.bw_gbps_d2h = 32;
  EXPECT_EQ(transfer_time_ns(p, 64000, link_direction::device_to_host), 400u + 2000u);
  EXPECT_TRUE(link_params{}.assumed);
}

TEST(LinkModel, OccupancySerialisesTransfersPerDirection) {
  link_occupancy l;
  // Two 64 KB transfers ready at t=0: the second starts when the first leaves the wire.
  uint64_t a = l.reserve(0, 64000, link_direction::host_to_device);
  uint64_t b = l.reserve(0, 64000, link_direction::host_to_device);
  EXPECT_EQ(a, 1400u);
  EXPECT_EQ(b, 2400u);
  // The other direction is independent.
  EXPECT_EQ(l.reserve(0, 64000, link_direction::device_to_host), 1400u);
  // A transfer ready after the link drained is not delayed.
  EXPECT_EQ(l.reserve(10000, 64, link_direction::host_to_device), 10401u);
  EXPECT_EQ(l.bytes_moved(link_direction::host_to_device), 128064u);
}

TEST(LinkModel, ReceiverClockIsMaxOfOwnAndMessagePlusCost) {
  uint64_t clock = 1000;
  EXPECT_EQ(advance_clock(clock, 500, 10), 1010u);   // message from the past
  EXPECT_EQ(advance_clock(clock, 5000, 10), 5010u);  // message from the future
}

TEST(LinkModel, PacerFollowsVirtualTime) {
  pacer p(1000.0);  // 1 virtual ns = 1 wall us
  auto t0 = std::chrono::steady_clock::now();
  p.wait_until(0);
  p.wait_until(2000);  // 2 ms
  double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(ms, 1.9);
  EXPECT_LT(ms, 200);
}

TEST(FaultScript, ParsesTheDocumentedExamples) {
  auto r = parse_fault_script("stall node=3 step=40 ms=2000; drop p=0.05 msg=partial from=2\n"
                              "partition group=1 step=10..20 # comment-free\n");
  ASSERT_FALSE(r.is_ok());  // '#' inside a rule is not a setting
  r = parse_fault_script("stall node=3 step=40 ms=2000; drop p=0.05 msg=partial from=2\n"
                         "# a comment line\npartition group=1 step=10..20; corrupt p=0.01 bits=2 at=recv");
  ASSERT_TRUE(r.is_ok()) << r.error().to_string();
  ASSERT_EQ(r->size(), 4u);
  auto& stall = (*r)[0];
  EXPECT_EQ(stall.kind, fault_kind::stall);
  EXPECT_EQ(stall.node, 3);
  EXPECT_EQ(stall.step_lo, 40);
  EXPECT_EQ(stall.step_hi, 40);
  EXPECT_EQ(stall.duration_ms, 2000u);
  EXPECT_EQ(stall.max_count, 1u);
  EXPECT_TRUE(stall.at_recv);
  auto& drop = (*r)[1];
  EXPECT_DOUBLE_EQ(drop.probability, 0.05);
  EXPECT_EQ(drop.msg_kinds, 1u << static_cast<unsigned>(msg_kind::partial));
  EXPECT_EQ(drop.from, 2);
  EXPECT_EQ((*r)[2].group, std::vector<node_id>{1});
  EXPECT_EQ((*r)[3].bits, 2u);
}

TEST(FaultScript, ErrorsNameTheRuleAndTheSetting) {
  auto bad = [](const std::string& s, const std::string& expect) {
    auto r = parse_fault_rule(s);
    ASSERT_FALSE(r.is_ok()) << s;
    EXPECT_NE(r.error().message().find(expect), std::string::npos) << r.error().message();
    EXPECT_NE(r.error().message().find(s), std::string::npos);
  };
  bad("explode p=1", "want one of drop");
  bad("drop p=1.5", "probability");
  bad("drop msg=partials", "not a message kind");
  bad("drop colour=red", "unknown setting");
  bad("delay ms=0", "ms must be > 0");
  bad("drop step=9..3", "bad upper bound");
  bad("drop at=sideways", "want send, recv or both");
}

TEST(FaultConfig, KeysBecomeRulesAndBadScriptsNameTheKey) {
  // The default file: its model and hardware paths resolve (resolve_run_spec loads them).
  config cfg = load_config(default_config_path(), {}).value();
  ASSERT_TRUE(cfg.set("faults.drop_prob=0.25").is_ok());
  ASSERT_TRUE(cfg.set("faults.messages=partial,query").is_ok());
  ASSERT_TRUE(cfg.set("faults.script=stall node=3 step=40 ms=2000").is_ok());
  auto spec = resolve_run_spec(cfg);
  ASSERT_TRUE(spec.is_ok()) << spec.error().to_string();
  auto plan = fault_plan_from(spec->faults);
  ASSERT_TRUE(plan.is_ok()) << plan.error().to_string();
  ASSERT_EQ(plan->rules.size(), 2u);
  EXPECT_EQ(plan->rules[0].kind, fault_kind::drop);
  EXPECT_DOUBLE_EQ(plan->rules[0].probability, 0.25);
  EXPECT_FALSE(plan->rules[0].any_kind);
  ASSERT_TRUE(cfg.set("faults.script=stall nod=3").is_ok());
  auto badplan = fault_plan_from(resolve_run_spec(cfg)->faults);
  ASSERT_FALSE(badplan.is_ok());
  EXPECT_NE(badplan.error().message().find("faults.script"), std::string::npos);
  const run_spec defaults = resolve_run_spec(load_config(default_config_path(), {}).value()).value();
  auto lim = wire_limits_from(defaults.fabric);
  EXPECT_EQ(lim.max_head_dim, 512u);
  EXPECT_EQ(lim.max_group, 64u);
  auto fo = fabric_options_from(defaults, 3);
  ASSERT_TRUE(fo.is_ok());
  EXPECT_EQ(fo->self, 3u);
  EXPECT_TRUE(fo->faults.empty());
}

TEST(FaultDecisions, ArePureFunctionsOfSeedPointAndMessage) {
  auto rules = parse_fault_script("drop p=0.3; corrupt p=0.3; delay p=0.3 ms=1");
  ASSERT_TRUE(rules.is_ok());
  auto decide_all = [&](uint64_t seed) {
    fault_plan plan{seed, rules.value(), ""};
    auto inj = fault_injector::make(plan, 1).value();
    std::vector<int> out;
    for (uint64_t s = 0; s < 2000; ++s) {
      fault_message m{1, 2, true, msg_kind::partial, s, -1, 0};
      auto d = inj->decide(fault_point::send, m);
      out.push_back(d.drop * 4 + (d.corrupt_bits > 0) * 2 + (d.delay_ms > 0));
    }
    return out;
  };
  EXPECT_EQ(decide_all(7), decide_all(7));
  EXPECT_NE(decide_all(7), decide_all(8));
  // Thread timing cannot matter: decisions of one message do not depend on others.
  fault_plan plan{7, rules.value(), ""};
  auto a = fault_injector::make(plan, 1).value();
  auto b = fault_injector::make(plan, 1).value();
  fault_message m{1, 2, true, msg_kind::partial, 1234, -1, 0};
  for (uint64_t s = 0; s < 100; ++s) (void)b->decide(fault_point::send, {1, 2, true, msg_kind::query, s, -1, 0});
  auto da = a->decide(fault_point::send, m), db = b->decide(fault_point::send, m);
  EXPECT_EQ(da.drop, db.drop);
  EXPECT_EQ(da.corrupt_bits, db.corrupt_bits);
}

// --- each fault kind at a known rate on a live (in-process) fabric ------------------------

struct run_result {
  uint64_t injected = 0;     // events in the log
  fabric_stats sender, receiver;
  std::vector<std::string> log;  // lines without the wall-time field
  size_t delivered = 0;
};

std::vector<std::string> read_log(const std::string& path) {
  std::ifstream in(path);
  std::vector<std::string> lines;
  std::string l;
  static const std::regex wall(",\"unix_ms\":[0-9]+,\"t_ns\":[0-9]+");
  while (std::getline(in, l)) lines.push_back(std::regex_replace(l, wall, ""));
  std::sort(lines.begin(), lines.end());
  return lines;
}

// A sample query from `sender` with sequence number `seq` at decode step `step`.
std::vector<uint8_t> query_bytes(node_id sender, uint64_t seq, uint32_t step) {
  outbound q = sample_message(msg_kind::query, 1, sample_shape{64, 2, 1, 16, 8});
  q.root().setSender(sender);
  q.root().setSeq(seq);
  q.body().getQuery().setStep(step);
  return q.finish();
}

std::vector<uint8_t> heartbeat_bytes(node_id sender, uint64_t seq) {
  outbound hb(envelope{protocol_version, sender, seq, 0});
  hb.body().initHeartbeat();
  return hb.finish();
}

// Sends n queries 0 -> 1 under `script` (rules should target msg=query), then one heartbeat
// that no rule touches so the receiver knows the last sequence number.
run_result run_faults(const std::string& script, uint64_t seed, int n, const std::string& log) {
  std::remove(log.c_str());
  auto rules = parse_fault_script(script);
  EXPECT_TRUE(rules.is_ok()) << rules.error().to_string();
  fabric_options o;
  o.inbox_depth = 100000;
  o.send_queue_depth = 100000;
  o.faults = fault_plan{seed, rules.value(), log};
  auto hub = make_inproc_hub();
  o.self = 0;
  auto a = make_inproc_fabric(hub, o).value();
  o.self = 1;
  auto b = make_inproc_fabric(hub, o).value();
  EXPECT_TRUE(a->connect(1, b->address()).is_ok());
  EXPECT_TRUE(b->connect(0, a->address()).is_ok());
  for (uint32_t i = 0; i < static_cast<uint32_t>(n); ++i)
    EXPECT_TRUE(a->send(1, query_bytes(0, i, i)).is_ok());
  std::this_thread::sleep_for(30ms);  // let delayed frames land before the closing heartbeat
  EXPECT_TRUE(a->send(1, heartbeat_bytes(0, static_cast<uint64_t>(n))).is_ok());
  run_result r;
  std::vector<fabric_event> ev;
  auto until = std::chrono::steady_clock::now() + 5s;
  bool got_hb = false;
  while (!got_hb && std::chrono::steady_clock::now() < until) {
    ev.clear();
    b->poll(ev, 50ms);
    for (auto& e : ev) {
      r.delivered++;
      auto p = peek_envelope(e.bytes.data(), e.bytes.size());
      if (p && p->kind == msg_kind::heartbeat) got_hb = true;
    }
  }
  EXPECT_TRUE(got_hb);
  r.sender = a->stats();
  r.receiver = b->stats();
  a.reset();
  b.reset();
  r.log = read_log(log);
  r.injected = r.log.size();
  return r;
}

// |count - n p| within 5 standard deviations of a binomial(n, p) (times `cluster` for
// faults decided per window of messages).
void expect_rate(uint64_t count, int n, double p, double cluster = 1.0) {
  double mean = n * p, sd = std::sqrt(n * p * (1 - p) * cluster);
  EXPECT_GT(static_cast<double>(count), mean - 5 * sd) << "count " << count << " mean " << mean;
  EXPECT_LT(static_cast<double>(count), mean + 5 * sd) << "count " << count << " mean " << mean;
}

std::string tmp_log(const char* name) {
  return (std::string(::testing::TempDir()) + "pnmkv_faults_" + name + ".jsonl");
}

const int N = 4000;
const double P = 0.05;

TEST(FaultRates, DropShowsInLogAndAsReceiverGaps) {
  auto r = run_faults("drop p=0.05 msg=query", 101, N, tmp_log("drop"));
  expect_rate(r.injected, N, P);
  EXPECT_EQ(r.sender.injected_send[static_cast<size_t>(fault_kind::drop)], r.injected);
  EXPECT_EQ(r.receiver.gaps, r.injected);
  EXPECT_EQ(r.delivered, N + 1 - r.injected);
  for (auto& l : r.log) EXPECT_NE(l.find("\"fault\":\"drop\",\"msg\":\"query\""), std::string::npos) << l;
}

TEST(FaultRates, DuplicateShowsInLogAndAsReceiverDuplicates) {
  auto r = run_faults("duplicate p=0.05 msg=query", 102, N, tmp_log("dup"));
  expect_rate(r.injected, N, P);
  EXPECT_EQ(r.receiver.duplicates, r.injected);
  EXPECT_EQ(r.delivered, static_cast<size_t>(N + 1));  // duplicates suppressed
}

TEST(FaultRates, CorruptShowsInLogAndAsReceiverCrcFailures) {
  auto r = run_faults("corrupt p=0.05 msg=query", 103, N, tmp_log("corrupt"));
  expect_rate(r.injected, N, P);
  EXPECT_EQ(r.receiver.frame_crc_errors, r.injected);
  EXPECT_EQ(r.delivered, N + 1 - r.injected);
}

TEST(FaultRates, CorruptionAtTheReceiverIsCaughtEvenIfTheSenderHasNoFaults) {
  // frame_crc = auto: only the receiver's plan can corrupt, so only it turns the link CRC on;
  // it computes the CRC of the frame as it arrived, then corrupts, then checks.
  auto rules = parse_fault_script("corrupt p=0.1 at=recv msg=query");
  ASSERT_TRUE(rules.is_ok());
  auto hub = make_inproc_hub();
  fabric_options so, ro;
  so.self = 0;
  ro.self = 1;
  ro.inbox_depth = 100000;
  ro.faults = fault_plan{5, rules.value(), ""};
  auto a = make_inproc_fabric(hub, so).value();
  auto b = make_inproc_fabric(hub, ro).value();
  ASSERT_TRUE(a->connect(1, b->address()).is_ok());
  for (int i = 0; i < 1000; ++i) {
    outbound q = sample_message(msg_kind::query, 1);
    q.root().setSeq(static_cast<uint64_t>(i));
    ASSERT_TRUE(a->send(1, q.finish()).is_ok());
  }
  auto st = b->stats();
  uint64_t injected = st.injected_recv[static_cast<size_t>(fault_kind::corrupt)];
  expect_rate(injected, 1000, 0.1);
  EXPECT_EQ(st.frame_crc_errors, injected);
  EXPECT_EQ(st.recv_msgs, 1000 - injected);
}

TEST(FaultRates, DelayShowsInLogAndAsReceiverReorders) {
  auto r = run_faults("delay p=0.05 ms=5 msg=query", 104, N, tmp_log("delay"));
  expect_rate(r.injected, N, P);
  EXPECT_EQ(r.sender.delayed_frames, r.injected);
  EXPECT_EQ(r.delivered, static_cast<size_t>(N + 1));  // late, not lost
  EXPECT_GT(r.receiver.reordered, 0u);
  EXPECT_LE(r.receiver.reordered, r.injected);
}

TEST(FaultRates, StallShowsInLogAndHoldsTheReceiver) {
  auto r = run_faults("stall p=0.002 ms=2 msg=query count=1000000", 105, N, tmp_log("stall"));
  expect_rate(r.injected, N, 0.002);
  EXPECT_GE(r.receiver.stalled_frames, r.injected);
  EXPECT_EQ(r.delivered, static_cast<size_t>(N + 1));
  for (auto& l : r.log) EXPECT_NE(l.find("\"point\":\"recv\",\"fault\":\"stall\""), std::string::npos);
}

TEST(FaultRates, PartitionCutsWindowsOfTheLink) {
  auto r = run_faults("partition p=0.05 window=10 msg=query", 106, N, tmp_log("partition"));
  expect_rate(r.injected, N, P, 10.0);
  EXPECT_EQ(r.receiver.gaps, r.injected);
  EXPECT_EQ(r.injected % 10, 0u);  // whole windows (N is a multiple of the window)
}

// A partition over a range of decode steps cuts the link, not some kinds of message: while
// its steps last at this node, messages that name no step (decode appends, write acks) are
// cut too; before its first step and after its last they pass.
TEST(FaultDecisions, AStepPartitionAlsoCutsMessagesWithoutAStep) {
  fault_plan plan;
  plan.rules = *parse_fault_script("partition node=2 step=3..4");
  auto inj = fault_injector::make(plan, 2);
  ASSERT_TRUE(inj);
  auto at = [&](msg_kind k, int64_t step, uint64_t seq) {
    return (*inj)->decide(fault_point::recv, {1, 2, true, k, seq, step, 0}).drop;
  };
  EXPECT_FALSE(at(msg_kind::query, 2, 1));
  EXPECT_FALSE(at(msg_kind::token_append, -1, 2));  // before the range
  EXPECT_TRUE(at(msg_kind::query, 3, 3));
  EXPECT_TRUE(at(msg_kind::token_append, -1, 4));   // during it
  EXPECT_TRUE(at(msg_kind::write_ack, -1, 5));
  EXPECT_TRUE(at(msg_kind::query, 4, 6));
  EXPECT_FALSE(at(msg_kind::query, 5, 7));
  EXPECT_FALSE(at(msg_kind::token_append, -1, 8));  // after it
  // Other kinds of rule keep the plain meaning: a drop with step= never takes a step-less message.
  fault_plan drops;
  drops.rules = *parse_fault_script("drop step=0..");
  auto d = fault_injector::make(drops, 2);
  ASSERT_TRUE(d);
  EXPECT_TRUE((*d)->decide(fault_point::send, {2, 1, true, msg_kind::query, 1, 0, 0}).drop);
  EXPECT_FALSE((*d)->decide(fault_point::send, {2, 1, true, msg_kind::token_append, 2, -1, 0}).drop);
}

TEST(FaultRates, SameSeedReplaysTheSameLogAndAnotherSeedDoesNot) {
  const std::string script = "drop p=0.05 msg=query; duplicate p=0.05 msg=query; "
                             "corrupt p=0.05 msg=query at=recv";
  auto a = run_faults(script, 7, 2000, tmp_log("replay_a"));
  auto b = run_faults(script, 7, 2000, tmp_log("replay_b"));
  auto c = run_faults(script, 8, 2000, tmp_log("replay_c"));
  ASSERT_GT(a.log.size(), 100u);
  EXPECT_EQ(a.log, b.log);
  EXPECT_NE(a.log, c.log);
  EXPECT_EQ(a.receiver.gaps, b.receiver.gaps);
  EXPECT_EQ(a.receiver.frame_crc_errors, b.receiver.frame_crc_errors);
}

TEST(FaultRates, ScriptedStallFiresOnceAtTheStep) {
  auto r = run_faults("stall node=1 step=40 ms=20 msg=query", 1, 100, tmp_log("stall40"));
  ASSERT_EQ(r.log.size(), 1u);
  EXPECT_NE(r.log[0].find("\"node\":1,\"point\":\"recv\",\"fault\":\"stall\",\"msg\":\"query\""),
            std::string::npos)
      << r.log[0];
  EXPECT_NE(r.log[0].find("\"step\":40"), std::string::npos);
  EXPECT_GE(r.receiver.stalled_frames, 1u);
}

TEST(FaultRates, ScriptedDropTargetsOneSenderAndKind) {
  // "drop 5% of partials from node 2": node 0 sends queries, so nothing fires.
  auto r = run_faults("drop p=0.05 msg=partial from=2", 1, 500, tmp_log("from2"));
  EXPECT_EQ(r.injected, 0u);
  EXPECT_EQ(r.receiver.gaps, 0u);
}

// "crash node=1 step=40": node 1 dies when step 40 reaches it. Its peer gets a peer-down
// event, its own sends fail, the fault is logged once, and messages before the step landed.
TEST(FaultRates, ScriptedCrashTakesTheNodeDownAtTheStep) {
  auto rules = parse_fault_script("crash node=1 step=40 msg=query");
  ASSERT_TRUE(rules.is_ok()) << rules.error().to_string();
  EXPECT_TRUE(rules.value()[0].at_recv);
  EXPECT_FALSE(rules.value()[0].at_send);
  EXPECT_EQ(rules.value()[0].max_count, 1u);
  const std::string log = tmp_log("crash40");
  std::remove(log.c_str());
  fabric_options o;
  o.faults = fault_plan{1, rules.value(), log};
  auto hub = make_inproc_hub();
  o.self = 0;
  auto a = make_inproc_fabric(hub, o).value();
  o.self = 1;
  auto b = make_inproc_fabric(hub, o).value();
  ASSERT_TRUE(a->connect(1, b->address()).is_ok());
  ASSERT_TRUE(b->connect(0, a->address()).is_ok());
  for (uint32_t i = 0; i < 40; ++i) ASSERT_TRUE(a->send(1, query_bytes(0, i, i)).is_ok());
  (void)a->send(1, query_bytes(0, 40, 40));  // the crash fires on receipt
  bool down = false;
  std::vector<fabric_event> ev;
  for (auto until = std::chrono::steady_clock::now() + 2s; !down && std::chrono::steady_clock::now() < until;) {
    ev.clear();
    a->poll(ev, 20ms);
    for (auto& e : ev) down = down || (e.kind == fabric_event_kind::peer_down && e.peer == 1);
  }
  EXPECT_TRUE(down) << "node 0 was not told that node 1 crashed";
  EXPECT_FALSE(a->send(1, query_bytes(0, 40, 40)).is_ok()) << "sends to a crashed node must fail";
  EXPECT_FALSE(b->send(0, heartbeat_bytes(1, 99)).is_ok()) << "a crashed node cannot send";
  size_t before = 0;
  ev.clear();
  b->poll(ev, 10ms);
  before = ev.size();
  EXPECT_EQ(before, 40u) << "the queries before the crash step were delivered";
  a.reset();
  b.reset();
  auto lines = read_log(log);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_NE(lines[0].find("\"fault\":\"crash\""), std::string::npos) << lines[0];
  EXPECT_NE(lines[0].find("\"step\":40"), std::string::npos) << lines[0];
}

}  // namespace
}  // namespace pnmkv::transport
