// The coordinator actor (see coordinator.hpp). Control plane only: CAF messages whose payload
// is Cap'n Proto bytes (control.capnp, wire.capnp join/membership).
#include "actors/coordinator.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <utility>

#include "schedulers/gpu_memory.hpp"
#include "schedulers/head_groups.hpp"
#include "transport/auth.hpp"

namespace pnmkv::actors {

namespace {
constexpr uint64_t rejoin_tick = 1;  // tick_atom's argument: the rejoin deadline (0: the join's)
}  // namespace

caf::behavior coordinator_actor(coordinator_state::actor_type* self,
                                std::shared_ptr<const run_setup> setup,
                                std::shared_ptr<coordinator_journal> journal) {
  if (status st = self->state.init(std::move(setup), journal); !st) {
    cluster_log().error("event=journal_refused reason=\"{}\"", st.message());
    if (journal) journal->replay_error = st.message();
    self->quit();
    return {};
  }
  return {
      [self](tick_atom, uint64_t what) {
        if (what == rejoin_tick) self->state.on_rejoin_timeout();
        else self->state.on_join_timeout();
      },
      [self](ctl_atom, const std::string& bytes) { self->state.on_control(bytes); },
      [self](join_atom, const std::string& bytes) { self->state.on_join(bytes); },
  };
}

namespace {

// The live cluster's admission (schedulers/admission.hpp): GPU memory sized as a batch of
// the longest request (summary residence decided once at setup), pools of
// cluster.pool_devices devices on the modelled capacity (data parallel), and the live
// layers a device may still take in this emulator.
admission_params admission_params_of(const run_setup& setup) {
  const auto ids = setup.device_ids();
  admission_params ap;
  gpu_memory_params gpu;
  gpu.model = setup.model;
  gpu.hw = setup.hw;
  gpu.query = setup.gpu_query;
  gpu.sizing = gpu_sizing::batch_of_longest;
  gpu.floor_tokens = setup.open_workload() ? 0 : setup.gpu_query.context_tokens;
  ap.gpu = std::move(gpu);
  ap.layers = setup.model.layers;
  ap.live_layers = setup.device.live_layers;
  if (setup.host.mode == run_mode::gpu_only) {
    // No device: the KV is one shard held by the GPU host, within its emulator memory.
    ap.placement = gpu_local_placement(setup.placement, gpu_host_node);
    ap.emulator_free_bytes = std::map<uint32_t, uint64_t>{{gpu_host_node, setup.host.hbm.memory_bytes_max}};
    return ap;
  }
  placement_params pp;
  const double capacity = device_capacity_bytes(setup.hw, setup.host.mode);
  pp.pools = make_pools(ids, setup.pool_devices, static_cast<uint64_t>(capacity));
  pp.request = setup.placement;
  pp.costs = setup.step->costs;
  pp.budget_tokens = setup.host.budget_tokens;
  pp.cross_shard = setup.host.cross_shard;
  ap.placement = std::move(pp);
  std::map<uint32_t, uint64_t> emulator;
  for (uint32_t id : ids) emulator[id] = setup.device.memory_bytes_max;
  ap.emulator_free_bytes = std::move(emulator);
  return ap;
}

}  // namespace

status coordinator_state::init(std::shared_ptr<const run_setup> setup,
                               std::shared_ptr<coordinator_journal> journal) {
  setup_ = std::move(setup);
  journal_ = std::move(journal);
  admission_ = make_admission(admission_params_of(*setup_));
  // A member lost (killed, hung past the heartbeat timeout, partitioned): the GPU host
  // fails the run's requests with the reason instead of waiting on them.
  auto* self = self_;
  self_->set_down_handler([self](caf::down_msg& dm) { self->state.on_member_down(dm); });
  if (journal_ && !journal_->entries.empty()) {
    if (status st = replay(journal_->entries); !st) return st;
    resumed_ = true;
    cluster_log().warn("event=coordinator_resumed records={} members={} fenced={} admitted={} started={} "
                       "torn_tail_bytes={}",
                       journal_->entries.size(), members_.size(), fenced_.size(), specs_.size(), started_,
                       journal_->torn_tail_bytes);
    journal_->entries.clear();  // replayed: only the writer is needed now
  } else if (journal_) {
    record(true, [&](auto b) {
      auto begin = b.initBegin();
      begin.setConfigHash(journal_config_hash(setup_->cfg));
      begin.setDevices(setup_->devices);
    });
  }
  // Members that never join (not started, crashed while starting) fail the run by name;
  // after a restart, members that do not join again are lost.
  self_->delayed_send(self_, std::chrono::milliseconds(setup_->join_timeout_ms), tick_atom::value,
                      resumed_ && ready_ ? rejoin_tick : uint64_t(0));
  return status::ok();
}

caf::actor coordinator_state::handle_of(uint32_t id) const {
  const member* m = find_member(id);
  return m ? m->hdl : caf::actor{};
}

const coordinator_state::member* coordinator_state::find_member(uint32_t id) const {
  auto it = members_.find(id);
  return it == members_.end() ? nullptr : &it->second;
}

void coordinator_state::deliver_result(const std::string& bytes) {
  if (driver_) self_->send(driver_, ctl_atom::value, bytes);
  else if (undelivered_result_.empty()) undelivered_result_ = bytes;
}

std::string coordinator_state::membership_bytes(const std::vector<uint64_t>& requests) const {
  auto out = wire_message(self_id_);
  auto mm = out.body().initMembership();
  mm.setEpoch(1);
  auto members = mm.initMembers(static_cast<unsigned>(members_.size()));
  unsigned i = 0;
  for (const auto& [id, m] : members_) {
    auto w = members[i++];
    w.setNodeId(id);
    w.setRole(transport::to_wire(m.role));
    w.setAlive(true);
    w.setWorkerAddress(transport::as_data(m.address));
  }
  auto placements = mm.initPlacements(static_cast<unsigned>(requests.size()));
  for (size_t k = 0; k < requests.size(); ++k) {
    const admission_grant* g = admission_.grant_of(requests[k]);
    PNMKV_CHECK(g != nullptr, "membership of request ", requests[k], ", which is not admitted");
    placement_to_wire(g->placement, placements[static_cast<unsigned>(k)]);
  }
  return wire_string(out);
}

void coordinator_state::decide(uint64_t request_id, bool accepted, const std::string& reason) {
  record(true, [&](auto b) {
    auto d = b.initDecided();
    d.setRequestId(request_id);
    d.setAccepted(accepted);
    d.setReason(control::bounded_text(reason));
  });
  decisions_[request_id] = {accepted, reason};
  if (setup_->open_workload()) {
    // The GPU host asked; it gets the answer (after the placement, on the same channel).
    const caf::actor host = handle_of(gpu_host_node);
    if (!host) return;  // joining again after a restart: its Resume asks again
    if (accepted) self_->send(host, member_atom::value, membership_bytes({request_id}));
    else cluster_log().info("event=not_admitted request={} reason=\"{}\"", request_id, reason);
    self_->send(host, ctl_atom::value, admission_bytes(request_id, accepted, reason));
    return;
  }
  ++decided_;
  if (accepted) ready_requests_.push_back(request_id);
  if (!accepted)
    cluster_log().warn("event=request_refused request={} reason=\"{}\"", request_id, reason);
  if (driver_) self_->send(driver_, ctl_atom::value, admission_bytes(request_id, accepted, reason));
  if (decided_ == setup_->batch && !started_) {
    started_ = true;
    record(true, [&](auto b) { b.setRunStarted(false); });
    std::vector<control::request_spec> ready;
    for (uint64_t r : ready_requests_) ready.push_back(specs_.at(r));
    const caf::actor host = handle_of(gpu_host_node);
    if (!host) {
      host_needs_start_ = true;  // it joins again and says so; sent then
      return;
    }
    self_->send(host, member_atom::value, membership_bytes(ready_requests_));
    self_->send(host, ctl_atom::value, run_start_bytes(ready, /*open=*/false));
  }
}

// Admission of one request (schedulers/admission.hpp, the simulator's too: GPU memory, a
// pool that can hold it, the emulator's real memory). "" when it is placed (membership
// sent, acks awaited), else why it cannot be admitted now.
std::string coordinator_state::admit_one(const control::request_spec& spec) {
  specs_[spec.request_id] = spec;
  const admission_verdict v = admission_.try_admit({spec.request_id, spec.context_tokens, spec.steps});
  if (!v.admitted()) return v.detail;
  record(true, [&](auto b) {
    auto t = b.initAdmitTried();
    control::to_wire(spec, t.initRequest());
    t.setPlaced(true);
  });
  const request_placement& pl = admission_.grant_of(spec.request_id)->placement;
  // gpu-only: the GPU host holds it; no device acknowledges anything.
  if (setup_->host.mode == run_mode::gpu_only) {
    decide(spec.request_id, true, "");
    return "";
  }
  auto& waiting = awaiting_acks_[spec.request_id];
  for (const auto& s : pl.shards) {
    waiting.insert(s.device_id);
    for (uint32_t r : s.replica_device_ids) waiting.insert(r);
  }
  auto bytes = membership_bytes({spec.request_id});
  for (uint32_t dev : waiting)
    if (const caf::actor h = handle_of(dev)) self_->send(h, member_atom::value, bytes);
  return "";
}

void coordinator_state::try_admit() {
  if (!ready_ || !driver_) return;
  while (!queue_.empty()) {
    control::request_spec spec = queue_.front();
    queue_.pop_front();
    auto why = admit_one(spec);
    if (!why.empty()) decide(spec.request_id, false, why);
  }
}

void coordinator_state::maybe_start_open() {
  if (!setup_->open_workload() || started_ || !ready_ || !driver_ ||
      open_specs_.size() < setup_->arrivals.size())
    return;
  const member* host = find_member(gpu_host_node);
  if (!host) return;
  started_ = true;
  record(true, [&](auto b) { b.setRunStarted(true); });
  if (!host->hdl) {
    host_needs_start_ = true;
    return;
  }
  self_->send(host->hdl, ctl_atom::value, run_start_bytes(open_specs_, /*open=*/true));
}

void coordinator_state::release(uint64_t request_id) {
  const admission_grant* g = admission_.grant_of(request_id);
  if (!g) return;
  std::set<uint32_t> holders;
  for (const auto& s : g->placement.shards) {
    holders.insert(s.device_id);
    holders.insert(s.replica_device_ids.begin(), s.replica_device_ids.end());
  }
  holders.erase(gpu_host_node);  // gpu-only: the GPU host released it itself
  admission_.release(request_id);
  record(false, [&](auto b) { b.setReleased(request_id); });
  control::outbound out(self_id_);
  out.body().initRelease().setRequestId(request_id);
  auto bytes = wire_string(out);
  for (uint32_t dev : holders)
    if (const caf::actor h = handle_of(dev)) self_->send(h, ctl_atom::value, bytes);
}

void coordinator_state::on_member_down(const caf::down_msg& dm) {
  uint32_t id = 0;
  bool found = false;
  for (const auto& [mid, m] : members_)
    if (m.hdl && m.hdl.address() == dm.source) id = mid, found = true;
  if (!found) return;  // fenced already, or never a member
  std::string reason = caf::to_string(dm.reason);
  // CAF's name says nothing of why: its link closed, or was silent past the heartbeat
  // timeout (a frozen process, a partition).
  if (dm.reason == caf::exit_reason::remote_link_unreachable)
    reason = "the coordinator lost its link: closed, or silent past cluster.connection_timeout_ms = " +
             std::to_string(setup_->spec.cluster.connection_timeout_ms) + " ms";
  cluster_log().warn("event=member_down node={} reason=\"{}\"", id, reason);
  const member* host = find_member(gpu_host_node);
  if (id != gpu_host_node && host && ready_) {
    control::outbound out(self_id_, reason.size());
    auto down = out.body().initMemberDown();
    down.setNodeId(id);
    down.setReason(control::bounded_text(reason));
    if (host->hdl) self_->send(host->hdl, ctl_atom::value, wire_string(out));
    fence(id, reason);
    return;
  }

  // The GPU host itself, or a device lost before the cluster was complete: nobody else
  // can fail the run, so the coordinator tells the driver (now or when it submits).
  const std::string what = id == gpu_host_node
                               ? "the GPU host went down: " + reason
                               : "device " + std::to_string(id) + " went down (" + reason +
                                     ") before the cluster was complete";
  deliver_result(failed_run_bytes(what));
}

void coordinator_state::fence(uint32_t id, const std::string& reason) {
  auto it = members_.find(id);
  if (id == gpu_host_node || it == members_.end() || it->second.role != transport::node_role::pnm_device) return;
  cluster_log().warn("event=fenced node={} reason=\"{}\"", id, reason);
  fenced_[id] = it->second.hdl;
  members_.erase(it);
  // Nothing new is placed on it; a placement still waiting for its ack is refused.
  admission_.device_lost(id);
  record(true, [&](auto b) {
    auto f = b.initFenced();
    f.setNodeId(id);
    f.setReason(control::bounded_text(reason));
  });
  std::vector<uint64_t> stuck;
  for (const auto& [rid, waiting] : awaiting_acks_)
    if (waiting.count(id)) stuck.push_back(rid);
  for (uint64_t rid : stuck) {
    awaiting_acks_.erase(rid);
    release(rid);
    decide(rid, false, "device " + std::to_string(id) + " went down while request " +
                           std::to_string(rid) + " was being placed");
  }
  for (auto c = copy_acks_.begin(); c != copy_acks_.end();) {
    if (c->first.second != id) {
      ++c;
      continue;
    }
    const auto [rid, dev] = c->first;
    const uint32_t shard = c->second;
    c = copy_acks_.erase(c);
    send_copy_grant(rid, shard, dev, "device " + std::to_string(dev) + " went down while taking the copy");
  }
}

void coordinator_state::on_stop(const std::string& bytes, const std::string& reason) {
  cluster_log().warn("event=stop reason=\"{}\"", reason);
  if (const member* host = find_member(gpu_host_node); host && started_) {
    self_->send(host->hdl, ctl_atom::value, bytes);
    return;
  }
  deliver_result(failed_run_bytes("stopped before the run started: " + reason));
}

void coordinator_state::on_join_timeout() {
  if (ready_) return;
  std::string missing;
  auto expect = setup_->device_ids();
  expect.push_back(gpu_host_node);
  for (uint32_t id : expect)
    if (!members_.count(id))
      missing += (missing.empty() ? "" : ", ") +
                 (id == gpu_host_node ? std::string("the GPU host") : "device " + std::to_string(id));
  const std::string what = "the cluster was not complete " + std::to_string(setup_->join_timeout_ms) +
                           " ms after the coordinator started (cluster.join_timeout_ms): missing " +
                           missing;
  cluster_log().error("event=join_timeout missing=\"{}\"", missing);
  deliver_result(failed_run_bytes(what));
}

void coordinator_state::on_control(const std::string& bytes) {
  auto m = control::decode(bytes);
  if (!m) {
    cluster_log().warn("event=bad_control_message reason=\"{}\"", m.error().to_string());
    return;
  }
  auto sender = caf::actor_cast<caf::actor>(self_->current_sender());
  if (m->kind() != control::msg_kind::HELLO && !trusted(sender)) {
    if (refused_senders_.size() < 1024 && refused_senders_.insert(sender.address()).second)
      cluster_log().warn("event=untrusted_control_refused kind={} reason=\"the sender has not joined with the "
                         "cluster secret\"",
                         control::to_string(m->kind()));
    return;
  }
  switch (m->kind()) {
    case control::msg_kind::HELLO: return on_hello(m->hello(), sender);
    case control::msg_kind::SUBMIT:
      return on_submit(control::from_wire(m->submit().getRequest()), sender);
    case control::msg_kind::PROGRESS:
      if (driver_) self_->send(driver_, ctl_atom::value, bytes);
      return;
    case control::msg_kind::RUN_RESULT: return deliver_result(bytes);
    case control::msg_kind::SHUTDOWN:
      // Every member quits (a fenced one too, if it is still there), then the coordinator.
      for (const auto& [id, mem] : members_)
        if (mem.hdl) self_->send(mem.hdl, ctl_atom::value, bytes);
      for (const auto& [id, hdl] : fenced_)
        if (hdl) self_->send(hdl, ctl_atom::value, bytes);
      return self_->quit();
    case control::msg_kind::MEMBER_DOWN:  // from the GPU host: it failed a device over
      return fence(m->member_down().getNodeId(), m->member_down().getReason().cStr());
    case control::msg_kind::STOP: return on_stop(bytes, m->stop().getReason().cStr());
    case control::msg_kind::ADMIT: return on_admit(m->admit());
    case control::msg_kind::RELEASE: return release(m->release().getRequestId());
    case control::msg_kind::PLACEMENT_ACK: return on_placement_ack(m->placement_ack());
    case control::msg_kind::COPY_ASK: return on_copy_ask(m->copy_ask());
    case control::msg_kind::RESUME:
      if (m->sender() != gpu_host_node || handle_of(gpu_host_node) != sender) return;
      return on_resume(m->resume());
    default: return;  // the coordinator's own kinds, addressed to others
  }
}

bool coordinator_state::trusted(const caf::actor& sender) const {
  if (!sender) return false;
  if (drivers_.count(sender.address())) return true;
  for (const auto& [id, m] : members_)
    if (m.hdl && m.hdl.address() == sender.address()) return true;
  return false;
}

void coordinator_state::on_hello(control::wire::Hello::Reader h, const caf::actor& sender) {
  auto nonce = transport::make_nonce();
  nonces_[h.getNodeId()] = nonce;
  auto out = wire_message(self_id_);
  out.body().initChallenge().setNonce(transport::as_data(nonce));
  self_->send(sender, join_atom::value, wire_string(out));
}

void coordinator_state::on_submit(const control::request_spec& spec, const caf::actor& sender) {
  driver_ = sender;
  if (!undelivered_result_.empty()) {
    self_->send(driver_, ctl_atom::value, std::exchange(undelivered_result_, {}));
    return;
  }
  // A driver submits again after a restart (or a duplicate): a request known already is
  // not placed twice; a decided one gets its answer again.
  if (setup_->open_workload()) {
    const bool known = std::any_of(open_specs_.begin(), open_specs_.end(),
                                   [&](const auto& r) { return r.request_id == spec.request_id; });
    if (!known) open_specs_.push_back(spec);
    maybe_start_open();
    maybe_resend_start();
    admit_pending_open();
    return;
  }
  if (auto d = decisions_.find(spec.request_id); d != decisions_.end()) {
    self_->send(driver_, ctl_atom::value, admission_bytes(spec.request_id, d->second.first, d->second.second));
    return;
  }
  if (specs_.count(spec.request_id) ||
      std::any_of(queue_.begin(), queue_.end(), [&](const auto& r) { return r.request_id == spec.request_id; }))
    return;
  queue_.push_back(spec);
  try_admit();
}

void coordinator_state::on_admit(control::wire::Admit::Reader ad) {
  const uint64_t id = ad.getRequestId();
  if (!setup_->open_workload() || admission_.grant_of(id) || awaiting_acks_.count(id)) return;
  const control::request_spec* spec = nullptr;
  for (const auto& r : open_specs_)
    if (r.request_id == id) spec = &r;
  if (!spec) {
    decide(id, false, "request " + std::to_string(id) + " was never submitted");
    return;
  }
  auto why = admit_one(*spec);
  if (!why.empty()) decide(id, false, why);
}

void coordinator_state::on_copy_ask(control::wire::CopyAsk::Reader a) {
  const uint64_t id = a.getRequestId();
  const uint32_t shard = a.getShardId();
  auto dev = admission_.add_copy(id, shard);
  if (!dev) return send_copy_grant(id, shard, 0, dev.error().message());
  const member* m = find_member(*dev);
  if (!m) return send_copy_grant(id, shard, 0, "device " + std::to_string(*dev) + " is not a member");
  record(true, [&](auto b) {
    auto c = b.initCopyPlaced();
    c.setRequestId(id);
    c.setShardId(shard);
    c.setDeviceId(*dev);
  });
  cluster_log().info("event=copy_placed request={} shard={} device={} recompute={}", id, shard, *dev,
                     a.getRecompute());
  copy_acks_[{id, *dev}] = shard;
  // It learns its shard as every holder does: from the request's placement, which lists it.
  if (m->hdl) self_->send(m->hdl, member_atom::value, membership_bytes({id}));
}

void coordinator_state::send_copy_grant(uint64_t request_id, uint32_t shard_id, uint32_t device,
                                        const std::string& why) {
  record(true, [&](auto b) {
    auto g = b.initCopyGranted();
    g.setRequestId(request_id);
    g.setShardId(shard_id);
    g.setDeviceId(device);
    g.setOk(why.empty());
    g.setReason(control::bounded_text(why));
  });
  if (why.empty()) granted_[{request_id, shard_id}] = device;
  const member* host = find_member(gpu_host_node);
  if (!host || !host->hdl) return;  // joining again: its Resume asks again
  if (!why.empty())
    cluster_log().warn("event=copy_refused request={} shard={} reason=\"{}\"", request_id, shard_id, why);
  control::outbound out(self_id_, why.size());
  auto g = out.body().initCopyGrant();
  g.setRequestId(request_id);
  g.setShardId(shard_id);
  g.setDeviceId(device);
  g.setOk(why.empty());
  g.setReason(control::bounded_text(why));
  self_->send(host->hdl, ctl_atom::value, wire_string(out));
}

void coordinator_state::on_placement_ack(control::wire::PlacementAck::Reader a) {
  const uint64_t id = a.getRequestId();
  if (auto c = copy_acks_.find({id, a.getNodeId()}); c != copy_acks_.end()) {
    const uint32_t shard = c->second;
    copy_acks_.erase(c);
    return send_copy_grant(id, shard, a.getNodeId(), a.getOk() ? "" : a.getReason().cStr());
  }
  auto it = awaiting_acks_.find(id);
  if (it == awaiting_acks_.end()) return;
  if (!a.getOk()) {
    awaiting_acks_.erase(it);
    release(id);  // what the other devices took, and the pool's capacity
    decide(id, false, a.getReason());
    return;
  }
  it->second.erase(a.getNodeId());
  if (it->second.empty()) {
    awaiting_acks_.erase(it);
    decide(id, true, "");
  }
}

std::string coordinator_state::admission_bytes(uint64_t request_id, bool accepted,
                                               const std::string& reason) const {
  control::outbound out(self_id_, reason.size());
  auto a = out.body().initAdmission();
  a.setRequestId(request_id);
  a.setAccepted(accepted);
  a.setReason(control::bounded_text(reason));
  return wire_string(out);
}

std::string coordinator_state::run_start_bytes(const std::vector<control::request_spec>& requests,
                                               bool open) const {
  control::outbound out(self_id_, requests.size() * 32);
  auto rs = out.body().initRunStart();
  rs.setOpen(open);
  auto list = rs.initRequests(static_cast<unsigned>(requests.size()));
  for (size_t i = 0; i < requests.size(); ++i)
    control::to_wire(requests[i], list[static_cast<unsigned>(i)]);
  return wire_string(out);
}

std::string coordinator_state::failed_run_bytes(const std::string& what) const {
  control::outbound out(self_id_, what.size());
  auto r = out.body().initRunResult();
  r.setOk(false);
  r.setReason(control::bounded_text(what));
  return wire_string(out);
}

std::string coordinator_state::join_ack(uint32_t node, const status& verdict) const {
  auto out = wire_message(self_id_);
  auto ack = out.body().initJoinAck();
  ack.setAccepted(verdict.is_ok());
  ack.setNodeId(node);
  ack.setEpoch(verdict.is_ok() ? 1 : 0);
  ack.setReason(verdict.is_ok() ? "" : verdict.message());
  return wire_string(out);
}

void coordinator_state::on_join(const std::string& bytes) {
  auto m = transport::decode(bytes.data(), bytes.size(), setup_->limits);
  auto sender = caf::actor_cast<caf::actor>(self_->current_sender());
  if (!m || m->kind() != transport::msg_kind::join) {
    cluster_log().warn("event=join_refused reason=\"{}\"", m ? "not a join message" : m.error().to_string());
    return;
  }
  auto j = m->join();
  const uint32_t node = j.getNodeId();
  if (fenced_.count(node)) {  // never the owner of its old shards again
    const status no{errc::invalid_argument, "device " + std::to_string(node) +
                                                " was failed over in this run (fenced): it may not rejoin"};
    cluster_log().warn("event=join_refused node={} reason=\"{}\"", node, no.message());
    self_->send(sender, join_atom::value, join_ack(node, no));
    return;
  }
  auto nonce = nonces_.find(node);
  status ok = nonce == nonces_.end() ? status{errc::invalid_argument, "no challenge was issued to this node"}
                                     : transport::verify_join(setup_->secret, nonce->second, j);
  if (!ok) {
    cluster_log().warn("event=join_refused node={} reason=\"{}\"", node, ok.message());
    self_->send(sender, join_atom::value, join_ack(node, ok));
    return;
  }
  nonces_.erase(nonce);
  if (transport::from_wire(j.getRole()) == transport::node_role::driver) {
    // A driver is not a member: it submits requests and receives the result.
    drivers_.insert(sender.address());
    cluster_log().info("event=driver_joined");
    self_->send(sender, join_atom::value, join_ack(node, status::ok()));
    return;
  }
  auto addr = j.getWorkerAddress();
  const bool again = members_.count(node) > 0;  // after a restart (the journal knew it)
  members_[node] = member{transport::from_wire(j.getRole()), sender,
                          std::vector<uint8_t>(addr.begin(), addr.end())};
  self_->monitor(sender);
  if (!again || !ready_)
    record(false, [&](auto b) {
      auto m = b.initMember();
      m.setNodeId(node);
      m.setRole(static_cast<uint8_t>(transport::from_wire(j.getRole())));
      m.setAddress(addr);
    });
  self_->send(sender, join_atom::value, join_ack(node, status::ok()));
  if (again && ready_) {
    cluster_log().info("event=member_rejoined node={}", node);
    return resume_member(node);
  }
  uint32_t devices = 0;
  bool host = false;
  for (const auto& [id, mem] : members_) {
    if (!mem.hdl) continue;  // known from the journal, not joined again yet
    devices += mem.role == transport::node_role::pnm_device;
    host = host || mem.role == transport::node_role::gpu_host;
  }
  if (!ready_ && host && devices == setup_->devices) {
    ready_ = true;
    record(true, [&](auto b) { b.setReady(); });
    cluster_log().info("event=cluster_ready devices={}", devices);
    auto bytes2 = membership_bytes({});
    for (const auto& [id, mem] : members_) self_->send(mem.hdl, member_atom::value, bytes2);
    try_admit();
    maybe_start_open();
  }
}

}  // namespace pnmkv::actors

// ---------------------------------------------------------------------------------------
// The journal and a restarted coordinator (docs/DESIGN.md §7, "Coordinator restart").

namespace pnmkv::actors {

uint64_t journal_config_hash(const config& cfg) {
  config c = cfg;
  (void)c.set("cluster.coordinator_port", "0");
  (void)c.set("cluster.journal_file", "");
  // Derived from the machine's free memory when 0 (a restarted process derives anew); a
  // difference that matters shows as an admission that does not replay.
  (void)c.set("cluster.device_memory_bytes_max", "0");
  const std::string yaml = c.to_yaml();
  // FNV-1a 64: an identity check, not a security one (the secret guards the cluster).
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : yaml) h = (h ^ ch) * 1099511628211ull;
  return h;
}

result<std::shared_ptr<coordinator_journal>> open_coordinator_journal(const std::string& path) {
  auto contents = transport::read_journal(path);
  if (!contents) return contents.error();
  auto j = std::make_shared<coordinator_journal>();
  j->torn_tail_bytes = contents->torn_tail_bytes;
  for (size_t i = 0; i < contents->records.size(); ++i) {
    auto e = control::decode_journal_record(std::move(contents->records[i]));
    if (!e)
      return status{e.error().code(), "journal " + path + ": record " + std::to_string(i) + ": " + e.error().message()};
    j->entries.push_back(std::move(*e));
  }
  if (contents->torn_tail_bytes)
    cluster_log().warn("event=journal_torn_tail path={} bytes={} (a write the last coordinator did not finish; "
                       "dropped)",
                       path, contents->torn_tail_bytes);
  auto w = transport::journal_writer::open(path, contents->valid_bytes);
  if (!w) return w.error();
  j->writer = std::move(*w);
  return j;
}

template <class Fill>
void coordinator_state::record(bool sync, Fill&& fill) {
  if (!journal_ || !journal_->writer) return;
  control::journal_outbound out(256);
  fill(out.body());
  if (status st = journal_->writer->append(out.finish(), sync); !st) {
    // The run goes on; only a restart could not resume from here.
    cluster_log().error("event=journal_failed reason=\"{}\" (the journal stops here: a restarted coordinator "
                        "would not resume)",
                        st.message());
    journal_->writer.reset();
  }
}

status coordinator_state::replay(const std::vector<control::journal_entry>& entries) {
  using K = control::journal_kind;
  auto diverged = [&](size_t i, const std::string& what) {
    return status{errc::internal, "journal " + setup_->spec.cluster.journal_file + ": record " + std::to_string(i) +
                                      " does not replay: " + what +
                                      " (a journal of another run or configuration; move it away to start a "
                                      "fresh cluster)"};
  };
  for (size_t i = 0; i < entries.size(); ++i) {
    auto body = entries[i].record().getBody();
    if (i == 0 && entries[i].kind() != K::BEGIN) return diverged(i, "it does not begin with the run's identity");
    switch (entries[i].kind()) {
      case K::BEGIN: {
        const uint64_t want = journal_config_hash(setup_->cfg);
        if (i != 0 || body.getBegin().getConfigHash() != want || body.getBegin().getDevices() != setup_->devices)
          return diverged(i, "it was written for another configuration");
        break;
      }
      case K::MEMBER: {
        auto m = body.getMember();
        auto addr = m.getAddress();
        members_[m.getNodeId()] = member{static_cast<transport::node_role>(m.getRole()), caf::actor{},
                                         std::vector<uint8_t>(addr.begin(), addr.end())};
        break;
      }
      case K::READY: ready_ = true; break;
      case K::FENCED: {
        const uint32_t id = body.getFenced().getNodeId();
        members_.erase(id);
        fenced_[id] = caf::actor{};
        admission_.device_lost(id);
        break;
      }
      case K::ADMIT_TRIED: {
        const control::request_spec spec = control::from_wire(body.getAdmitTried().getRequest());
        specs_[spec.request_id] = spec;
        const admission_verdict v = admission_.try_admit({spec.request_id, spec.context_tokens, spec.steps});
        if (v.admitted() != body.getAdmitTried().getPlaced())
          return diverged(i, "request " + std::to_string(spec.request_id) + " is admitted " +
                                 (v.admitted() ? "now" : "no longer (" + v.detail + ")"));
        if (!v.admitted() || setup_->host.mode == run_mode::gpu_only) break;
        auto& waiting = awaiting_acks_[spec.request_id];
        for (const auto& sh : admission_.grant_of(spec.request_id)->placement.shards) {
          waiting.insert(sh.device_id);
          for (uint32_t r : sh.replica_device_ids) waiting.insert(r);
        }
        break;
      }
      case K::DECIDED: {
        auto d = body.getDecided();
        const uint64_t id = d.getRequestId();
        awaiting_acks_.erase(id);
        decisions_[id] = {d.getAccepted(), d.getReason().cStr()};
        if (!setup_->open_workload()) {
          ++decided_;
          if (d.getAccepted()) ready_requests_.push_back(id);
        }
        break;
      }
      case K::RUN_STARTED: started_ = true; break;
      case K::RELEASED: admission_.release(body.getReleased()); break;
      case K::COPY_PLACED: {
        auto c = body.getCopyPlaced();
        auto dev = admission_.add_copy(c.getRequestId(), c.getShardId());
        if (!dev || *dev != c.getDeviceId())
          return diverged(i, "the copy of shard " + std::to_string(c.getShardId()) + " of request " +
                                 std::to_string(c.getRequestId()) + " goes to " +
                                 (dev ? "device " + std::to_string(*dev) : dev.error().message()) + ", not device " +
                                 std::to_string(c.getDeviceId()));
        copy_acks_[{c.getRequestId(), c.getDeviceId()}] = c.getShardId();
        break;
      }
      case K::COPY_GRANTED: {
        auto g = body.getCopyGranted();
        copy_acks_.erase({g.getRequestId(), g.getDeviceId()});
        if (g.getOk()) granted_[{g.getRequestId(), g.getShardId()}] = g.getDeviceId();
        break;
      }
    }
  }
  return status::ok();
}

void coordinator_state::resume_member(uint32_t id) {
  const caf::actor h = handle_of(id);
  if (!h) return;
  std::set<uint64_t> owed;  // placements it has not acknowledged: it acknowledges again
  for (const auto& [rid, waiting] : awaiting_acks_)
    if (waiting.count(id)) owed.insert(rid);
  for (const auto& [key, shard] : copy_acks_)
    if (key.second == id) owed.insert(key.first);
  for (uint64_t rid : owed) self_->send(h, member_atom::value, membership_bytes({rid}));
}

void coordinator_state::admit_pending_open() {
  if (!host_admit_pending_ || open_specs_.size() < setup_->arrivals.size()) return;
  const uint64_t id = std::exchange(host_admit_pending_, 0);
  if (admission_.grant_of(id) || awaiting_acks_.count(id)) return;  // placed: its answer comes
  std::string why = "request " + std::to_string(id) + " was never submitted";
  for (const auto& spec : open_specs_)
    if (spec.request_id == id) why = admit_one(spec);
  if (!why.empty()) decide(id, false, why);
}

void coordinator_state::maybe_resend_start() {
  if (!host_needs_start_ || !started_) return;
  const caf::actor host = handle_of(gpu_host_node);
  if (!host) return;
  if (setup_->open_workload()) {
    if (open_specs_.size() < setup_->arrivals.size()) return;  // the driver submits them again
    host_needs_start_ = false;
    self_->send(host, ctl_atom::value, run_start_bytes(open_specs_, /*open=*/true));
    return;
  }
  host_needs_start_ = false;
  std::vector<control::request_spec> ready;
  for (uint64_t r : ready_requests_) ready.push_back(specs_.at(r));
  self_->send(host, member_atom::value, membership_bytes(ready_requests_));
  self_->send(host, ctl_atom::value, run_start_bytes(ready, /*open=*/false));
}

void coordinator_state::on_resume(control::wire::Resume::Reader r) {
  cluster_log().info("event=host_resumed run_started={} finished={} released={} failed_over={} copy_asks={}",
                     r.getRunStarted(), r.getFinished(), r.getReleased().size(), r.getFailedOver().size(),
                     r.getCopyAsks().size());
  // Devices it failed over first: what follows must not land on them.
  for (auto d : r.getFailedOver())
    if (members_.count(d.getNodeId())) fence(d.getNodeId(), d.getReason().cStr());
  for (uint64_t id : r.getReleased()) release(id);
  if (started_ && !r.getRunStarted()) {
    host_needs_start_ = true;
    maybe_resend_start();
  }
  if (const uint64_t id = r.getAwaitingAdmission(); id && setup_->open_workload()) {
    const caf::actor host = handle_of(gpu_host_node);
    auto d = decisions_.find(id);
    if (awaiting_acks_.count(id)) {
      // Decided once its devices acknowledge.
    } else if (d != decisions_.end() && d->second.first && admission_.grant_of(id)) {
      self_->send(host, member_atom::value, membership_bytes({id}));
      self_->send(host, ctl_atom::value, admission_bytes(id, true, ""));
    } else {
      host_admit_pending_ = id;  // asked afresh once the driver has submitted the specs again
      admit_pending_open();
    }
  }
  for (auto a : r.getCopyAsks()) {
    const uint64_t id = a.getRequestId();
    const uint32_t shard = a.getShardId();
    bool placed = false;
    for (const auto& [key, s] : copy_acks_)
      if (key.first == id && s == shard) {
        placed = true;  // its device acknowledges (again, once it has joined again)
        if (const caf::actor h = handle_of(key.second)) self_->send(h, member_atom::value, membership_bytes({id}));
      }
    if (placed) continue;
    if (auto g = granted_.find({id, shard}); g != granted_.end() && members_.count(g->second)) {
      send_copy_grant(id, shard, g->second, "");  // granted, but the grant was lost with the coordinator
      continue;
    }
    on_copy_ask(a);
  }
}

void coordinator_state::on_rejoin_timeout() {
  std::vector<uint32_t> missing;
  for (const auto& [id, m] : members_)
    if (!m.hdl) missing.push_back(id);
  for (uint32_t id : missing) {
    const std::string why = "did not join again within " + std::to_string(setup_->join_timeout_ms) +
                            " ms of the coordinator's restart (cluster.join_timeout_ms)";
    cluster_log().warn("event=member_lost node={} reason=\"{}\"", id, why);
    if (id == gpu_host_node) {
      deliver_result(failed_run_bytes("the GPU host " + why));
      continue;
    }
    if (const caf::actor host = handle_of(gpu_host_node)) {
      control::outbound out(self_id_, why.size());
      auto down = out.body().initMemberDown();
      down.setNodeId(id);
      down.setReason(control::bounded_text("device " + std::to_string(id) + " " + why));
      self_->send(host, ctl_atom::value, wire_string(out));
    }
    fence(id, why);
  }
}

}  // namespace pnmkv::actors
