// The coordinator: admits members (join protocol), admits requests (GPU memory, a pool that
// can hold the placement, the emulator's real memory), sends placements to the devices and
// waits for their acks, starts the run on the GPU host, and relays progress and the result
// to the driver. Open workloads: the GPU host asks for each admission at its step
// boundaries. A member lost fails what depended on it, by name.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "actors/control.hpp"
#include "actors/node_common.hpp"
#include "actors/run_setup.hpp"
#include "schedulers/admission.hpp"
#include "transport/journal.hpp"
#include "transport/messages.hpp"

namespace pnmkv::actors {

// The coordinator's journal (cluster.journal_file, docs/DESIGN.md §7 "Coordinator
// restart"): the records a restarted coordinator replays, and the writer it appends to.
struct coordinator_journal {
  std::vector<control::journal_entry> entries;
  std::unique_ptr<transport::journal_writer> writer;
  uint64_t torn_tail_bytes = 0;
  std::string replay_error;  // set when the coordinator refused to replay it
};
// Opens (or creates) the journal at `path` and decodes its records; errors name the file and
// the record that is wrong.
result<std::shared_ptr<coordinator_journal>> open_coordinator_journal(const std::string& path);
// What a journal belongs to: the configuration, its port, journal path and device memory
// left out (a restarted coordinator is given its port; nodes may name the journal
// differently; device memory derived from free memory differs from process to process).
uint64_t journal_config_hash(const config& cfg);

class coordinator_state {
 public:
  using actor_type = caf::stateful_actor<coordinator_state>;
  explicit coordinator_state(actor_type* self) : self_(self) {}

  // Pools, the down handler and the join deadline; before the behavior. With a journal that
  // holds records, its decisions are replayed first (a restarted coordinator): members are
  // expected to join again, the driver to submit again and the GPU host to say what it did
  // meanwhile (Resume). A journal that does not replay is an error (the actor quits).
  status init(std::shared_ptr<const run_setup> setup, std::shared_ptr<coordinator_journal> journal);

  // Handlers.
  void on_join_timeout();
  void on_control(const std::string& bytes);
  void on_join(const std::string& bytes);
  void on_member_down(const caf::down_msg& dm);
  // A restarted coordinator: members that have not joined again by the deadline are lost.
  void on_rejoin_timeout();

 private:
  struct member {
    transport::node_role role;
    caf::actor hdl;
    std::vector<uint8_t> address;
  };

  // --- The journal (coordinator_journal). Every decision is recorded before anyone is told
  // of it; decision points sync. Replay re-executes the admission calls in order and checks
  // each outcome against the record.
  template <class Fill>
  void record(bool sync, Fill&& fill);
  status replay(const std::vector<control::journal_entry>& entries);
  // A restarted coordinator: what a member that joined again is owed (placements waiting
  // for its acknowledgement, new copies it was taking).
  void resume_member(uint32_t id);
  // The GPU host's account of what it did while the coordinator was away (Resume).
  void on_resume(control::wire::Resume::Reader r);
  // Open workloads: the Admit a resumed GPU host waits on, asked afresh once the driver has
  // submitted every spec again.
  void admit_pending_open();
  // Run start again, for a GPU host that never got it (closed: once its requests are known).
  void maybe_resend_start();
  // A member's handle, or null while it has not joined again after a restart.
  caf::actor handle_of(uint32_t id) const;
  std::shared_ptr<coordinator_journal> journal_;
  bool resumed_ = false;           // replayed a journal: members rejoin
  bool host_needs_start_ = false;  // the GPU host said it never got the run start
  uint64_t host_admit_pending_ = 0;  // open: the Admit it waits on, once the specs are back
  // Every decision's answer, to repeat to a driver that submits again.
  std::map<uint64_t, std::pair<bool, std::string>> decisions_;
  // (request, shard) -> the device of its last granted copy, to repeat a lost grant.
  std::map<std::pair<uint64_t, uint32_t>, uint32_t> granted_;

  // Control messages, one kind each.
  void on_hello(control::wire::Hello::Reader h, const caf::actor& sender);
  void on_submit(const control::request_spec& spec, const caf::actor& sender);
  void on_admit(control::wire::Admit::Reader ad);
  void on_placement_ack(control::wire::PlacementAck::Reader a);
  // The GPU host asks for a new copy of a shard after a loss (docs/DESIGN.md §7): admission
  // picks the device (admission::add_copy), which learns the shard from the placement and
  // acknowledges; then the GPU host gets the device (CopyGrant), or why there is none.
  void on_copy_ask(control::wire::CopyAsk::Reader a);
  void send_copy_grant(uint64_t request_id, uint32_t shard_id, uint32_t device, const std::string& why);
  // The driver asks to end the run now: the GPU host reports what finished.
  void on_stop(const std::string& bytes, const std::string& reason);
  // A device lost (the GPU host failed it over, or its connection went down): nothing new
  // is placed on it, placements waiting for its ack are refused, and it leaves the
  // membership for good: fenced, it may not join again.
  void fence(uint32_t id, const std::string& reason);

  // Control messages the coordinator sends.
  std::string admission_bytes(uint64_t request_id, bool accepted, const std::string& reason) const;
  std::string run_start_bytes(const std::vector<control::request_spec>& requests, bool open) const;
  // A failed run's result, for the driver.
  std::string failed_run_bytes(const std::string& what) const;

  std::string membership_bytes(const std::vector<uint64_t>& requests) const;
  // The join_ack wire bytes for `node`: accepted when `verdict` is ok, else refused with it.
  std::string join_ack(uint32_t node, const status& verdict) const;
  // The answer to one request's admission: to the GPU host (open workloads) or the driver
  // (closed: the run starts once every request is decided).
  void decide(uint64_t request_id, bool accepted, const std::string& reason);
  // Admission of one request: GPU memory, then a pool that can hold it, then the emulator's
  // real memory. "" when it is placed (membership sent, acks awaited), else why it cannot be
  // admitted now.
  std::string admit_one(const control::request_spec& spec);
  // Closed workloads: every submitted request, in order, as soon as the cluster is ready.
  void try_admit();
  // Open workloads: once the cluster is ready and every request is submitted, the GPU host
  // gets them all and asks for each admission at its step boundaries (Admit).
  void maybe_start_open();
  // A finished request: its capacity returns to the pool and the emulator, and the devices
  // drop its shards.
  void release(uint64_t request_id);
  // A run result for the driver: now, or kept until it submits.
  void deliver_result(const std::string& bytes);
  const member* find_member(uint32_t id) const;
  // A member, or a driver that proved the secret: the only senders whose control messages
  // (requests, shutdown, acks) count. Anyone may say hello.
  bool trusted(const caf::actor& sender) const;

  actor_type* self_;
  std::shared_ptr<const run_setup> setup_;
  const uint32_t self_id_ = coordinator_node;

  std::map<uint32_t, std::vector<uint8_t>> nonces_;
  std::map<uint32_t, member> members_;
  // Devices fenced (failed over): out of the membership; told to shut down at the end.
  std::map<uint32_t, caf::actor> fenced_;
  bool ready_ = false;
  caf::actor driver_;
  std::set<caf::actor_addr> drivers_;          // drivers whose join was accepted
  std::set<caf::actor_addr> refused_senders_;  // untrusted senders already logged (once each)
  std::deque<control::request_spec> queue_;
  // GPU memory, the pools' modelled capacity (512 GB devices, data parallel) and the live
  // layers' bytes a device may still take, and each admitted request's placement
  // (schedulers/admission.hpp: grant_of).
  admission admission_;
  std::map<uint64_t, control::request_spec> specs_;
  std::map<uint64_t, std::set<uint32_t>> awaiting_acks_;
  // New copies placed, waiting for their device's ack: (request, device) -> shard.
  std::map<std::pair<uint64_t, uint32_t>, uint32_t> copy_acks_;
  std::vector<uint64_t> ready_requests_;
  uint32_t decided_ = 0;
  bool started_ = false;
  // A result for a driver that has not submitted yet (a member went down early).
  std::string undelivered_result_;
  std::vector<control::request_spec> open_specs_;  // open workloads: every submitted request
};

// journal: null for none (the embedded cluster, cluster.journal_file empty).
caf::behavior coordinator_actor(coordinator_state::actor_type* self,
                                std::shared_ptr<const run_setup> setup,
                                std::shared_ptr<coordinator_journal> journal);

}  // namespace pnmkv::actors
