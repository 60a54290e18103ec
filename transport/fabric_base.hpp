// Shared machinery of the fabric implementations (internal to transport/): framing, fault
// points, per-peer back-pressure, sequence tracking, stall and delay timers, the bounded
// inbox and statistics. An implementation supplies transmit() (move one frame to a peer),
// the RMA operations and a progress loop that calls run_timers() and drain_to_handler().
#pragma once

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <queue>

#include "transport/fabric.hpp"

namespace pnmkv::transport::detail {

// Travels in front of every small message (the UCX active-message header; a struct field
// in-process). Little-endian, 32 bytes.
struct frame_header {
  static constexpr uint32_t magic_value = 0x4b4d4e50;  // "PNMK"
  static constexpr uint16_t flag_crc = 1;
  uint32_t magic = magic_value;
  uint16_t version = 1;
  uint16_t flags = 0;
  uint32_t src = 0;
  uint32_t crc = 0;
  uint64_t link_seq = 0;  // per (src, dst), from 1
  uint64_t reserved = 0;
};
static_assert(sizeof(frame_header) == 32);

// Logs `what` once per process and key (warn), then stays quiet.
void warn_once(const char* key, const std::string& what);

class fabric_base : public fabric {
 public:
  fabric_base(const fabric_options& opts, std::shared_ptr<fault_injector> faults);
  ~fabric_base() override;

  node_id self() const override { return opts_.self; }
  status send(node_id dest, std::vector<uint8_t> bytes, op_options opts = {}) override;
  void set_handler(std::function<void(fabric_event&&)> handler) override;
  size_t poll(std::vector<fabric_event>& out, std::chrono::nanoseconds timeout,
              size_t max_events = SIZE_MAX) override;
  fabric_stats stats() const override;
  std::shared_ptr<fault_injector> faults() const override { return faults_; }

 protected:
  // Implementation hooks -------------------------------------------------------------
  // Is `dest` connected and up? ok, peer_down or invalid_argument (unknown).
  virtual status peer_status(node_id dest) const = 0;
  // Moves one frame to `dest` now. On ok, the implementation later (or inline) calls
  // complete(dest, user, outcome, holds_slot) exactly once; on error it does not. May run on
  // any thread that calls send() or run_timers().
  virtual status transmit(node_id dest, const frame_header& h, std::vector<uint8_t>&& bytes,
                          std::chrono::nanoseconds timeout, completion user,
                          bool holds_slot) = 0;
  // Something needs the progress loop: a timer was scheduled, or an event waits for the
  // handler.
  virtual void wake() = 0;
  // A `crash` fault fired at one of this node's fault points: the node dies here.
  virtual void crash(const std::string& why) = 0;

  // Provided ------------------------------------------------------------------------
  // Receive path for a frame from the wire. Applies receive faults, CRC, duplicate
  // suppression, stall/delay holds, then queues the message. Returns capacity when the
  // inbox is full (the in-process fabric hands that back to the sender).
  status on_frame(const frame_header& h, std::vector<uint8_t>&& bytes);
  void emit_peer_down(node_id peer, status why);

  void add_peer(node_id peer);
  void remove_peer(node_id peer);
  // Back-pressure slots: acquire before starting an operation on `peer`, the completion
  // wrapper from wrap() releases. acquire fails with capacity.
  status acquire_slot(node_id peer);
  void release_slot(node_id peer);
  // Ends an operation: releases its slot (if it holds one), counts the outcome, calls the
  // user's completion. No allocation: the fast path of every send.
  void complete(node_id peer, completion& user, status outcome, bool holds_slot = true);
  // The same as a std::function (for paths that need one; allocates).
  completion wrap(node_id peer, completion user);
  fabric_clock::time_point deadline_of(const op_options& o) const;
  // fabric_options::clock, else fabric_clock::now().
  fabric_clock::time_point now() const { return opts_.clock ? opts_.clock() : fabric_clock::now(); }

  void schedule(fabric_clock::time_point due, std::function<void()> fn);
  fabric_clock::time_point next_timer() const;  // max() when none
  void run_timers(fabric_clock::time_point now);
  // Hands queued events (at most max_events) to the handler if one is set; returns how many.
  size_t drain_to_handler(size_t max_events = SIZE_MAX);
  bool has_handler() const { return has_handler_.load(std::memory_order_acquire); }
  bool inbox_empty() const { return inbox_size_.load(std::memory_order_acquire) == 0; }
  // Waits on the inbox until non-empty or `until`.
  void wait_inbox(fabric_clock::time_point until);

  fabric_options opts_;
  std::shared_ptr<fault_injector> faults_;
  bool crc_on_ = false;  // frame CRC in effect (opts_.frame_crc resolved)

  struct counters {
    std::atomic<uint64_t> sent_msgs{0}, sent_bytes{0}, recv_msgs{0}, recv_bytes{0};
    std::atomic<uint64_t> puts{0}, put_bytes{0}, gets{0}, get_bytes{0};
    std::atomic<uint64_t> capacity_rejects{0}, timeouts{0}, op_errors{0}, peer_down_events{0};
    std::atomic<uint64_t> frame_crc_errors{0}, bad_frames{0}, duplicates{0}, reordered{0};
    std::atomic<uint64_t> inbox_overflows{0}, stalled_frames{0}, delayed_frames{0};
  };
  mutable counters c_;

 private:
  status deliver(const frame_header& h, std::vector<uint8_t>&& bytes);
  // The part of on_frame after the fault decision: delay / stall holds, duplicates, delivery.
  status on_frame_held(const frame_header& h, std::vector<uint8_t>&& bytes,
                       const fault_decision& d);
  fault_message describe(const std::vector<uint8_t>& bytes, node_id from, node_id to) const;
  void start_stall(uint32_t ms);
  fabric_clock::time_point stalled_until() const;
  fabric_clock::time_point pacing_due(node_id dest, size_t bytes);
  status push_event(fabric_event&& e, bool bounded);

  struct peer_state {
    bool down = false;  // set by emit_peer_down
    size_t inflight = 0;
    uint64_t next_link_seq = 1;
    link_occupancy link;
  };
  struct seq_track {
    // Ring of seen bits for the last window_bits link sequence numbers (8 KiB per sender).
    static constexpr uint64_t window_bits = 1u << 16;
    uint64_t highest = 0;
    uint64_t unique = 0;
    std::vector<uint64_t> ring;
  };
  mutable std::mutex peers_mu_;
  std::map<node_id, peer_state> peers_;
  std::map<node_id, seq_track> tracks_;  // by sender, guarded by inbox_mu_

  mutable std::mutex inbox_mu_;
  std::condition_variable inbox_cv_;
  std::deque<fabric_event> inbox_;
  size_t inbox_messages_ = 0;
  std::atomic<size_t> inbox_size_{0};  // inbox_.size(), readable without the lock
  std::function<void(fabric_event&&)> handler_;
  std::atomic<bool> has_handler_{false};
  std::mutex handler_run_mu_;  // one handler invocation at a time

  struct timer_item {
    fabric_clock::time_point due;
    uint64_t order;
    std::function<void()> fn;
    bool operator>(const timer_item& o) const {
      return due != o.due ? due > o.due : order > o.order;
    }
  };
  mutable std::mutex timers_mu_;
  std::priority_queue<timer_item, std::vector<timer_item>, std::greater<timer_item>> timers_;
  uint64_t timer_order_ = 0;
  std::atomic<int64_t> earliest_timer_ns_{INT64_MAX};  // due time of timers_.top()

  std::atomic<int64_t> stall_until_ns_{0};
  fabric_clock::time_point pacing_origin_;
};

}  // namespace pnmkv::transport::detail
