// A PNM device (or, in baseline mode, a passive CXL expander): joins the cluster, takes the
// shards placed on it, applies the GPU host's page writes and token appends, and answers
// queries and recalls through its device_engine, charging the work on its virtual clock.
// Over a fabric that does not order messages, writes and queries that arrive early wait
// until what they depend on is in.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "actors/device_engine.hpp"
#include "actors/node_common.hpp"
#include "actors/run_setup.hpp"
#include "transport/fabric.hpp"
#include "transport/messages.hpp"

namespace pnmkv::actors {

class pnm_device_state {
 public:
  using actor_type = caf::stateful_actor<pnm_device_state>;
  explicit pnm_device_state(actor_type* self) : self_(self) {}

  // The engine and the join; before the behavior.
  void init(std::shared_ptr<const run_setup> setup, uint32_t node, caf::actor coordinator,
            std::shared_ptr<transport::fabric> fab);

  // Handlers.
  // A restarted coordinator: join it again (it re-sends the placements it awaits acks for).
  void on_coordinator(const caf::actor& coordinator);
  void on_join(const std::string& bytes);
  void on_membership(const std::string& bytes);
  void on_wire(std::vector<uint8_t>& bytes);
  void on_peer_down(uint32_t peer);
  void on_control(const std::string& bytes);
  // Replies held back by back-pressure, again (hold).
  void on_backlog();

 private:
  // A message from this device stamped with its virtual clock `vt_ns`, to fill and send().
  transport::outbound message(double vt_ns, size_t payload_bytes = 0);
  void send(uint32_t dest, transport::outbound& m);
  void send_bytes(uint32_t dest, std::vector<uint8_t> bytes);
  // Back-pressure: a reply refused for a full inbox or queue (errc::capacity) is held and
  // sent again 1 ms later, in order (past held_max held replies, dropped and logged: the
  // GPU host's retries or deadline take over).
  void hold(uint32_t dest, std::vector<uint8_t> bytes);
  std::deque<std::pair<uint32_t, std::vector<uint8_t>>> held_;
  bool held_tick_ = false;
  static constexpr size_t held_max = 1 << 14;
  void send_error(const transport::envelope& env, const status& s);

  // A query is ready when this device holds every token of the sequence that falls in its
  // pages: prefill writes and the new token's append may still be on their way over a
  // fabric that does not order messages, and a query must never see partial data.
  bool ready(transport::wire::Query::Reader q) const;
  void serve(const transport::received& m);
  // One KV head of a query: its candidates or its partial back to the sender.
  void serve_head(const transport::envelope& env, transport::wire::Query::Reader q, uint32_t h,
                  const std::vector<uint64_t>& listed, const std::vector<uint64_t>& excluded);
  void send_candidates(const transport::envelope& env, transport::wire::Query::Reader q,
                       uint32_t h, const device_answer& ans, double done_ns);
  void send_partial(const transport::envelope& env, transport::wire::Query::Reader q, uint32_t h,
                    const device_answer& ans, double done_ns);
  // Recalls: baseline pages for the GPU's attention, png-kv copies of steady pages.
  void serve_recall(const transport::received& m);
  void drain_deferred();

  // A write applies now (acknowledged when bulk), or waits for an earlier one: false.
  bool try_write(const transport::received& m);
  bool try_append(const transport::received& m);
  void drain_early();
  // Applies a prefill write or token append, or holds it when it came early.
  void on_write(transport::received&& m);
  void on_query(transport::received&& m);

  actor_type* self_;
  std::shared_ptr<const run_setup> setup_;
  uint32_t node_ = 0;
  const cost_model* costs_ = nullptr;
  // baseline: the device is a passive expander; the scoring it runs is the GPU's work.
  bool passive_ = false;

  std::unique_ptr<device_engine> engine_;
  caf::actor coordinator_;
  std::shared_ptr<transport::fabric> fab_;
  uint64_t seq_ = 0;
  uint64_t host_seq_taken_ = 0;  // the GPU host's highest seq taken: every envelope's ack_seq
  // Queries that arrived before the append they must see (a reordering fabric).
  std::deque<transport::received> deferred_;
  // Writes and appends that arrived before an earlier write of their shard (a write lost
  // and sent again): held until the gap is filled.
  std::deque<transport::received> early_writes_;
  std::deque<transport::received> early_appends_;
  std::set<uint32_t> connected_;  // fabric peers already connected
  // Requests released (finished, or lost with another device): a late write, query or
  // recall of theirs is dropped, not refused (the GPU host no longer waits for it).
  std::set<uint64_t> released_;
  // The data-plane message's request, or 0 for kinds that name none.
  static uint64_t request_of(const transport::received& m);
};

// fab: this node's data-plane endpoint (outlives the actor).
caf::behavior pnm_device_actor(pnm_device_state::actor_type* self,
                               std::shared_ptr<const run_setup> setup, uint32_t node,
                               caf::actor coordinator, std::shared_ptr<transport::fabric> fab);

}  // namespace pnmkv::actors
