// Fault points on every fabric send and receive (docs/DESIGN.md §6, §7): drop, delay, duplicate,
// corrupt (bit flips), stall and partition, each by seeded probability or by script
// ("device 3 stalls at step 40", "drop 5% of partials from node 2").
//
// Replay: whether a rule fires on a message is a pure function of (seed, rule, point,
// node, message sender, message sequence number) -- never of thread timing -- so the same
// seed and script inject the same faults on the same messages. The only state is a rule's
// trigger count (`count=`), used by one-shot faults such as a stall, and whether a partition
// with step= is under way at this node: messages that name no decode step (appends, write
// acks, prefill writes) are cut from the first message of its steps this node sees to the
// first past them (a partition cuts a link, not some kinds of message).
//
// Every injected fault is appended to a JSONL event log, one object per line:
//   {"node":2,"point":"send","fault":"drop","msg":"partial","from":2,"to":0,"seq":17,
//    "step":40,"vt_ns":123456,"rule":3,"unix_ms":1796290000000,"t_ns":5120334}
// `unix_ms` (wall clock, ms since 1970 UTC: what an outside observer, e.g. `pnmkv chaos`,
// subtracts from a detection time) and `t_ns` (wall ns since the injector started) are the
// only fields that differ between replays; they are always last.
//
// Script grammar: rules separated by ';' or newlines; each rule is a fault kind followed by
// key=value settings:
//   p=0.05            probability per matching message (default 1)
//   at=send|recv|both fault point (default: send; stall: recv; partition: both)
//   node=3            only at this node's fault points
//   from=2 to=0       only messages from / to these nodes
//   msg=partial,query only these message kinds (transport/messages.hpp names)
//   step=40 | step=40..60 | step=40..   only messages of these decode steps (partition:
//                     and, while those steps last, every message that names no step)
//   seq=100..200      only these sender sequence numbers
//   ms=500            delay / stall duration (defaults: delay 10, stall 1000)
//   bits=3            corrupt: bits flipped per message (default 1)
//   group=1,2         partition: nodes cut off from all others (default: node=; with
//                     neither, any link may be cut)
//   window=64         partition with p<1: fires per window of 64 sender sequence numbers,
//                     so a partition lasts a while instead of dropping single messages
//   count=1           fire at most this many times (default: stall and crash 1, others
//                     unlimited)
// crash: the node whose fault point fires dies there (default at=recv, count=1): in one
// process its fabric endpoint goes down and its peers get peer-down events; a node process
// exits at once. "crash node=101 step=40" is device 101 dying when step 40 reaches it.
// "crash node=0 step=N" is the coordinator (node 0), which has no data-plane fault point:
// the multi-process launcher kills its process when the run reports decode step N (open
// workloads: N requests served) and restarts it from its journal; embedded runs refuse it
// (coordinator_crash_steps).
// Examples: "stall node=3 step=40 ms=2000", "drop p=0.05 msg=partial from=2",
//           "crash node=101 step=40",
//           "partition group=1 step=10..20", "corrupt p=0.01 bits=2 at=recv".
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "transport/messages.hpp"

namespace pnmkv::transport {

enum class fault_kind : uint8_t { drop, delay, duplicate, corrupt, stall, partition, crash };
inline constexpr size_t fault_kind_count = 7;
const char* to_string(fault_kind kind);

enum class fault_point : uint8_t { send, recv };
const char* to_string(fault_point point);

struct fault_rule {
  fault_kind kind = fault_kind::drop;
  double probability = 1.0;
  bool at_send = true;
  bool at_recv = false;
  int64_t node = -1;  // -1: any
  int64_t from = -1;
  int64_t to = -1;
  uint32_t msg_kinds = ~0u;  // bit per msg_kind
  bool any_kind = true;      // also matches bytes whose kind could not be read
  int64_t step_lo = -1;      // inclusive; -1: no step constraint
  int64_t step_hi = -1;      // inclusive; -1: open
  uint64_t seq_lo = 0;
  uint64_t seq_hi = UINT64_MAX;
  uint32_t duration_ms = 0;  // delay / stall
  uint32_t bits = 1;         // corrupt
  std::vector<node_id> group;  // partition
  uint64_t window_msgs = 1;    // partition with p < 1
  uint64_t max_count = UINT64_MAX;
  std::string text;  // as written, for the log and messages
};

struct fault_plan {
  uint64_t seed = 1;
  std::vector<fault_rule> rules;
  std::string log_path;  // JSONL event log; empty: in memory only
  bool empty() const { return rules.empty(); }
};

// Parses one rule / a whole script (see the grammar above). Errors name the rule and the
// setting that is wrong, and what is allowed.
result<fault_rule> parse_fault_rule(const std::string& text);
result<std::vector<fault_rule>> parse_fault_script(const std::string& script);
// The steps of the plan's coordinator crashes ("crash node=0 step=N"), ascending. A crash
// of node 0 without step= is refused (the launcher acts on reported steps only).
result<std::vector<uint32_t>> coordinator_crash_steps(const std::vector<fault_rule>& rules);

// What a fault point knows about a message (from the envelope; kind_known false when the
// bytes could not be read -- such messages only match rules without msg=).
struct fault_message {
  node_id from = 0;
  node_id to = 0;
  bool kind_known = false;
  msg_kind kind = msg_kind::heartbeat;
  uint64_t seq = 0;
  int64_t step = -1;
  double vtime_ns = 0;
};

struct fault_decision {
  bool drop = false;  // drop or partition
  uint32_t delay_ms = 0;
  bool duplicate = false;
  uint32_t corrupt_bits = 0;
  uint64_t corrupt_salt = 0;
  uint32_t stall_ms = 0;
  bool crash = false;  // this node crashes (and the message is lost with it)
  bool any() const { return drop || delay_ms || duplicate || corrupt_bits || stall_ms || crash; }
};

// One logged fault.
struct fault_event {
  node_id node = 0;
  fault_point point = fault_point::send;
  fault_kind kind = fault_kind::drop;
  fault_message msg;
  size_t rule = 0;
  int64_t unix_ms = 0;
  uint64_t t_ns = 0;
  std::string to_json() const;
};

class fault_injector {
 public:
  // Opens plan.log_path for appending (several injectors, also in other processes, may share
  // one file: each line is one write()). Fails only if the log cannot be opened.
  static result<std::shared_ptr<fault_injector>> make(fault_plan plan, node_id self);
  ~fault_injector();
  fault_injector(const fault_injector&) = delete;
  fault_injector& operator=(const fault_injector&) = delete;

  // Decides the faults for `m` at this node's `point` and logs each one that fires.
  fault_decision decide(fault_point point, const fault_message& m);

  // Flips `bits` bits of `bytes` at positions derived from `salt` (deterministic).
  static void corrupt(std::vector<uint8_t>& bytes, uint32_t bits, uint64_t salt);

  uint64_t injected(fault_point point, fault_kind kind) const;
  // The events injected so far (kept in memory up to a bound, oldest first).
  std::vector<fault_event> events() const;
  const fault_plan& plan() const { return plan_; }
  node_id self() const { return self_; }

 private:
  fault_injector(fault_plan plan, node_id self, int fd);
  void record(fault_point point, fault_kind kind, const fault_message& m, size_t rule);

  fault_plan plan_;
  node_id self_;
  int fd_;
  std::unique_ptr<std::atomic<uint64_t>[]> fired_;  // per rule
  // Per rule: a partition with step= is under way at this node (its steps have begun and
  // not passed), so messages that name no step are cut too.
  std::unique_ptr<std::atomic<bool>[]> open_;
  std::array<std::atomic<uint64_t>, 2 * fault_kind_count> injected_{};
  mutable std::mutex events_mu_;
  std::vector<fault_event> events_;
  int64_t t0_ns_;
};

// The decision function, exposed for tests: uniform in [0, 1) from the key.
double fault_uniform(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e);

}  // namespace pnmkv::transport
