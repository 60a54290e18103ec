// The GPU host actor (see gpu_host.hpp). The host_engine decides the work and charges
// virtual time; the actor moves it over the fabric, matches replies to it, keeps deadlines,
// and reports.
#include "actors/gpu_host.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "schedulers/gpu_memory.hpp"
#include "schedulers/step_model.hpp"

namespace pnmkv::actors {

reply_kind reply_kind_of(selection_round round) {
  switch (round) {
    case selection_round::local:
    case selection_round::exact_attend: return reply_kind::selection;
    case selection_round::exact_candidates: return reply_kind::candidates;
    case selection_round::dense: return reply_kind::dense;
  }
  return reply_kind::selection;
}

caf::behavior gpu_host_actor(gpu_host_state::actor_type* self, std::shared_ptr<const run_setup> setup,
                             caf::actor coordinator, std::shared_ptr<transport::fabric> fab,
                             std::shared_ptr<timeline_trace> timeline) {
  self->state.init(std::move(setup), std::move(coordinator), std::move(fab), std::move(timeline));
  return {
      [self](join_atom, const std::string& bytes) { self->state.on_join(bytes); },
      [self](coord_atom, const caf::actor& c) { self->state.on_coordinator(c); },
      [self](member_atom, const std::string& bytes) { self->state.on_membership(bytes); },
      [self](ctl_atom, const std::string& bytes) { self->state.on_control(bytes); },
      [self](wire_atom, std::vector<uint8_t>& bytes) { self->state.on_wire(bytes); },
      [self](tick_atom, uint64_t epoch) { self->state.on_deadline(epoch); },
      [self](peer_down_atom, uint32_t peer) { self->state.on_peer_down(peer); },
      [self](retry_atom, uint64_t epoch) { self->state.on_retry(epoch); },
      [self](silence_atom) { self->state.on_silence(); },
      [self](backlog_atom) { self->state.on_backlog(); },
  };
}

gpu_host_state::gpu_host_state(actor_type* self) : self_(self) {}
gpu_host_state::~gpu_host_state() = default;

void gpu_host_state::init(std::shared_ptr<const run_setup> setup, caf::actor coordinator,
                          std::shared_ptr<transport::fabric> fab, std::shared_ptr<timeline_trace> timeline) {
  setup_ = std::move(setup);
  timeline_ = std::move(timeline);
  if (timeline_) timeline_->set_device_id_base(device_node_base);  // drawn as device 0, 1, ...
  costs_ = setup_->costs.get();
  coordinator_ = coordinator;
  driver_ = coordinator;  // results and progress go through the coordinator
  fab_ = std::move(fab);
  if (setup_->tpot_ms_max > 0)
    tpot_ = std::make_unique<tpot_constraint>(
        setup_->tpot_ms_max,
        [this](const admission_candidate& c, const admission_grant& g) { return predicted_step_ms(c.request_id, g.placement); });
  start_join(self_, coordinator_, node_, transport::node_role::gpu_host);
}

// ---------------------------------------------------------------------------------------
// Device work on the wire

status gpu_host_state::send_work(device_work& w) {
  transport::envelope env;
  env.sender = node_;
  env.seq = ++seq_;
  // vtime: when the message has left the host link (arrival minus link latency).
  env.vtime_ns = std::max(0.0, w.vt_arrival_ns - costs_->link_latency_ns());
  const size_t payload = 2 * sizeof(bf16) * w.k.size() + sizeof(float) * w.q_storage.size() +
                         4 * (w.pages.size() + w.listed_storage.size() + w.excluded_storage.size());
  transport::outbound m(env, payload);
  if (w.what == device_work::kind::write) put_write(w, m.body());
  else if (w.what == device_work::kind::recall) put_recall(w, m.body());
  else put_query(w, m.body());
  return fab_->send(w.device_id, m.finish());
}

void gpu_host_state::put_write(const device_work& w, transport::wire::Envelope::Body::Builder body) {
  const uint32_t d = setup_->model.head_dim;
  const uint32_t crc = transport::kv_crc32c(w.k.data(), w.v.data(), w.k.size());
  if (w.bulk) {
    auto pw = body.initPrefillWrite();
    pw.setRequestId(w.request_id);
    pw.setLayer(w.layer);
    pw.setKvHead(w.kv_head);
    pw.setPosition0(w.position);
    pw.setNTokens(static_cast<uint32_t>(w.n_tokens));
    pw.setHeadDim(d);
    pw.setK(transport::as_data(w.k));
    pw.setV(transport::as_data(w.v));
    pw.setCrc32c(crc);
    pw.setStep(prefill_done_ || open_ ? step_ : 0);
    return;
  }
  auto ta = body.initTokenAppend();
  ta.setRequestId(w.request_id);
  ta.setLayer(w.layer);
  ta.setKvHead0(w.kv_head);
  ta.setNHeads(1);
  ta.setPosition(w.position);
  ta.setHeadDim(d);
  ta.setK(transport::as_data(w.k));
  ta.setV(transport::as_data(w.v));
  ta.setCrc32c(crc);
  ta.setStep(step_);
}

namespace {
// uint64 page ids as the wire's uint32 blob.
void put_ids(const std::vector<uint64_t>& ids, capnp::Data::Builder out) {
  uint32_t* p = transport::fill_as<uint32_t>(out);
  for (size_t i = 0; i < ids.size(); ++i) p[i] = static_cast<uint32_t>(ids[i]);
}
unsigned id_bytes(const std::vector<uint64_t>& ids) { return static_cast<unsigned>(4 * ids.size()); }
}  // namespace

void gpu_host_state::put_recall(const device_work& w, transport::wire::Envelope::Body::Builder body) {
  auto rr = body.initRecallRequest();
  rr.setRequestId(w.request_id);
  rr.setStep(step_);
  rr.setLayer(w.layer);
  rr.setKvHead(w.kv_head);
  rr.setNPages(static_cast<uint32_t>(w.pages.size()));
  put_ids(w.pages, rr.initPageIds(id_bytes(w.pages)));
  if (!w.rebuild) tags_[reply_key{w.request_id, w.layer, w.kv_head, w.shard_id, reply_kind::recall}] = w.tag;
}

void gpu_host_state::put_query(const device_work& w, transport::wire::Envelope::Body::Builder body) {
  const auto& q = w.query;
  auto qm = body.initQuery();
  qm.setRequestId(q.request_id);
  qm.setStep(q.step);
  qm.setLayer(q.layer);
  qm.setKvHead0(q.kv_head);
  qm.setKvHead1(q.kv_head + 1);
  qm.setGroup(q.group);
  qm.setHeadDim(setup_->model.head_dim);
  if (q.wire_bf16) {  // the values are bf16 already (host_engine rounds them): exact
    const size_t n = w.q_storage.size();
    transport::fill_bf16(qm.initQ(static_cast<unsigned>(sizeof(bf16) * n)), w.q_storage.data(), n);
    qm.setBf16(true);
  } else {
    qm.setQ(transport::as_data(w.q_storage));
  }
  qm.setBudgetPages(static_cast<uint32_t>(q.budget_pages));
  qm.setRound(transport::to_wire(q.round));
  qm.setBackground(q.background);
  qm.setSequenceTokens(q.sequence_tokens);
  qm.setShardId(w.shard_id);
  put_ids(w.excluded_storage, qm.initExcludedPages(id_bytes(w.excluded_storage)));
  put_ids(w.listed_storage, qm.initListedPages(id_bytes(w.listed_storage)));
  tags_[reply_key{q.request_id, q.layer, q.kv_head, w.shard_id, reply_kind_of(q.round)}] = w.tag;
  // Lookahead: an attend that also searches answers twice, the candidates under their own tag.
  if (w.search_tag) tags_[reply_key{q.request_id, q.layer, q.kv_head, w.shard_id, reply_kind::candidates}] = w.search_tag;
}

void gpu_host_state::send_all(std::vector<device_work>& work) {
  for (auto& w : work) {
    if (lost_.count(w.device_id)) continue;  // its replicas got their own copy
    if (failed_.count(w.request_id ? w.request_id : w.query.request_id)) continue;  // lost mid-send
    if (w.bulk) {  // kept for a retry when the ack does not come
      write_key key{w.device_id, w.request_id, w.layer, w.kv_head, w.position};
      if (!writes_out_.count(key)) writes_out_.emplace(key, setup_->retry_after_ms ? w : device_work{});
    }
    auto s = send_work(w);
    if (!s) {
      // This node's own endpoint is down: no device is to blame.
      if (fab_->self_down()) return fail_run("the GPU host's fabric endpoint is down (" + s.to_string() + ")");
      // Back-pressure (the device's inbox or this link's send queue is full): not a loss;
      // sent again shortly, in order.
      if (s.code() == errc::capacity) {
        hold_back(std::move(w), s);
        if (finished_) return;
        continue;
      }
      device_lost(w.device_id, "send failed: " + s.to_string());
      if (finished_) return;
      continue;
    }
    if (setup_->retry_after_ms) sent_seq_[ident_of(w)] = seq_;
  }
  issue_micro_batches();
}

void gpu_host_state::issue_micro_batches() {
  if (issuing_micro_batches_) return;  // send_all below: this loop issues the rest
  issuing_micro_batches_ = true;
  while (!finished_ && engine_ && engine_->micro_batch_pending()) {
    auto more = engine_->next_micro_batch();
    if (!more) {
      issuing_micro_batches_ = false;
      return fail_run(more.error().to_string());
    }
    send_all(*more);
  }
  issuing_micro_batches_ = false;
}

void gpu_host_state::hold_back(device_work&& w, const status& why) {
  if (backlog_.empty() && backlog_logged_++ < 8)
    cluster_log().info("event=backpressure device={} reason=\"{}\"", w.device_id, why.to_string());
  if (backlog_.size() >= backlog_max)
    return fail_run("back-pressure: " + std::to_string(backlog_max) + " messages held for full inboxes or send " +
                    "queues (fabric.inbox_depth, fabric.send_queue_depth): " + why.to_string());
  backlog_.push_back(std::move(w));
  if (!backlog_tick_) {
    backlog_tick_ = true;
    self_->delayed_send(self_, std::chrono::milliseconds(1), backlog_atom::value);
  }
}

void gpu_host_state::on_backlog() {
  backlog_tick_ = false;
  if (finished_) return;
  std::vector<device_work> again;
  again.swap(backlog_);
  ++backpressure_retries_;
  send_all(again);  // what still finds no room is held again
}

// ---------------------------------------------------------------------------------------
// The run's course

void gpu_host_state::fail_run(const std::string& reason) {
  if (finished_) return;
  finished_ = true;
  cluster_log().error("event=run_failed reason=\"{}\"", reason);
  run_report rep = build_report();
  rep.completed = 0;
  send_result(rep, false, reason);
}

void gpu_host_state::finish() {
  if (finished_) return;
  finished_ = true;
  send_result(build_report(), true, "");
}

void gpu_host_state::stop_run(const std::string& reason) {
  if (finished_) return;
  finished_ = true;
  cluster_log().warn("event=run_stopped reason=\"{}\" steps_done={}", reason, steps_.size());
  run_report rep = build_report();
  if (!open_) {  // a closed batch finishes together: nothing did yet
    rep.completed = 0;
    rep.request_digests.clear();
  } else {
    auto& d = rep.request_digests;
    d.erase(std::remove_if(d.begin(), d.end(), [&](const auto& x) { return sched_->outcome(x.first).finish_s < 0; }),
            d.end());
  }
  rep.stopped = reason;
  send_result(rep, false, "stopped: " + reason);
}

void gpu_host_state::send_result(const run_report& rep, bool ok, const std::string& reason) {
  const std::string json = rep.to_json();
  control::outbound out(node_, json.size() + reason.size());
  auto r = out.body().initRunResult();
  r.setReportJson(json);
  r.setOk(ok);
  r.setReason(control::bounded_text(reason));
  result_bytes_ = wire_string(out);
  self_->send(driver_, ctl_atom::value, result_bytes_);
}

void gpu_host_state::send_release(uint64_t request_id) {
  released_.insert(request_id);
  control::outbound out(node_);
  out.body().initRelease().setRequestId(request_id);
  self_->send(coordinator_, ctl_atom::value, wire_string(out));
}

void gpu_host_state::progress(const char* phase, uint64_t done, uint64_t total) {
  control::outbound out(node_);
  auto p = out.body().initProgress();
  p.setPhase(phase);
  p.setDone(done);
  p.setTotal(total);
  self_->send(driver_, ctl_atom::value, wire_string(out));
}

double gpu_host_state::predicted_step_ms(uint64_t candidate, const request_placement& cand_pl) {
  if (!predictor_) predictor_ = std::make_unique<step_model>(setup_->step);
  const uint32_t per_pool = std::max<uint32_t>(1, setup_->step->pool_devices);
  const auto& ids = sched_->in_system_ids();
  std::vector<request_placement> pls;
  pls.reserve(ids.size() + 1);
  std::vector<step_request> dec;
  auto add = [&](uint64_t id, const request_placement& pl, uint64_t seq_tokens) {
    request_placement p = pl;  // the model counts devices from 0 (gpu-only: the GPU, 0)
    for (auto& sh : p.shards) {
      if (setup_->host.mode == run_mode::gpu_only) {
        sh.device_id = 0;
        continue;
      }
      sh.device_id -= device_node_base;
      for (uint32_t& r : sh.replica_device_ids) r -= device_node_base;
    }
    pls.push_back(std::move(p));
    step_request q;
    q.id = id;
    q.pool = pls.back().shards.front().device_id / per_pool;
    q.placement = &pls.back();
    q.seq_tokens = seq_tokens;
    q.summaries_resident = setup_->host.summaries_resident;
    dec.push_back(q);
  };
  for (uint64_t id : ids) {
    const request_outcome& o = sched_->outcome(id);
    add(id, placements_.at(id), o.prompt_tokens + (o.generated > 0 ? o.generated - 1 : 0));
  }
  add(candidate, cand_pl, sched_->outcome(candidate).prompt_tokens);
  return predictor_->run(dec, {}).time_ns * 1e-6;
}

void gpu_host_state::start_step(uint32_t step) {
  if (!open_) progress("decode", step, setup_->steps);
  step_ = step;
  step_timed_ = false;
  step_running_ = true;
  ++step_epoch_;
  step_start_ = steady::now();
  if (timeline_) timeline_->begin_step(step, sched_->now_s() * 1e9);
  auto work = engine_->begin_step(step);
  if (!work) return fail_run(work.error().to_string());
  send_all(*work);
  self_->delayed_send(self_, std::chrono::milliseconds(setup_->step_timeout_ms), tick_atom::value, step_epoch_);
  start_retries();
  after_progress();  // a step with nothing to wait for is over already
}

void gpu_host_state::after_progress() {
  if (finished_ || !engine_ || !step_running_) return;
  if (engine_->timed_phase_done() && !step_timed_) {
    step_timed_ = true;
    if (timeline_) timeline_->end_step();
    step_wall_ms_.push_back(std::chrono::duration<double, std::milli>(steady::now() - step_start_).count());
    steps_.push_back(engine_->last_step());
  }
  if (!engine_->step_done() || !writes_out_.empty()) return;
  step_running_ = false;
  auto done = sched_->complete(plan_, engine_->last_step().virtual_ns * 1e-9);
  if (!open_) {
    // A closed batch ends together: its requests stay in the engine for the report.
    if (step_ + 1 == setup_->steps) progress("decode", setup_->steps, setup_->steps);
    return boundary();
  }
  for (uint64_t id : done) {
    auto s = engine_->remove_request(id);
    if (!s) return fail_run(s.to_string());
    send_release(id);
  }
  uint64_t over = 0;
  for (const auto& o : sched_->outcomes()) over += o.refused || o.finish_s >= 0;
  progress("serve", over, sched_->outcomes().size());
  boundary();
}

void gpu_host_state::boundary() {
  if (finished_) return;
  serving_scheduler& sc = *sched_;
  // Rebuilds after a loss: a recompute finishes first, a copy moves one chunk (pump_rebuilds
  // comes back here).
  if (!sc.done() && !rebuild_at_boundary()) return;
  if (admitting_) {
    if (auto c = sc.next_candidate()) {
      awaiting_admission_ = *c;
      control::outbound out(node_);
      auto admit = out.body().initAdmit();
      admit.setRequestId(*c);
      admit.setInSystem(sc.in_system());
      self_->send(coordinator_, ctl_atom::value, wire_string(out));
      return;  // goes on when the answer comes
    }
  }
  admitting_ = true;
  plan_ = sc.plan();
  if (plan_.empty()) {
    if (sc.done()) return finish();
    if (sc.idle_until_next_arrival()) return boundary();
    return fail_run("serving stalled: requests are waiting but none can run");
  }
  auto s = engine_->plan_prefill(plan_.prefill);
  if (!s) return fail_run(s.to_string());
  start_step(step_epoch_ == 0 ? 0 : step_ + 1);
}

void gpu_host_state::pump_prefill() {
  std::vector<device_work> work;
  while (!prefill_exhausted_ && writes_out_.size() < setup_->prefill_window_chunks) {
    if (!engine_->next_prefill_chunk(work)) {
      prefill_exhausted_ = true;
      if (!rebuilds_.empty()) pump_rebuilds();  // recomputes waited for the whole prompt
      if (finished_) return;
      break;
    }
    prefill_chunks_sent_ += work.size();
    if (prefill_chunks_sent_ % 256 == 0) progress("prefill", prefill_chunks_sent_, prefill_chunks_total_);
    send_all(work);
  }
  if (prefill_exhausted_ && writes_out_.empty() && !finished_ && !prefill_done_) {
    prefill_done_ = true;
    prefill_wall_s_ = std::chrono::duration<double>(steady::now() - prefill_start_).count();
    if (setup_->steps == 0) return finish();
    serve_closed_batch();
  }
}

void gpu_host_state::device_lost(uint32_t dev, const std::string& why) {
  if (finished_ || lost_.count(dev)) return;
  const std::string what = "device " + std::to_string(dev) + " went down (" + why + ")";
  record_loss(dev, why);  // fenced from now on
  {  // the coordinator places nothing more on it and keeps it from rejoining
    control::outbound out(node_, what.size());
    auto down = out.body().initMemberDown();
    down.setNodeId(dev);
    down.setReason(control::bounded_text(what));
    self_->send(coordinator_, ctl_atom::value, wire_string(out));
  }
  // gpu-only: the devices hold nothing and owe nothing; losing one changes nothing.
  if (setup_->host.mode == run_mode::gpu_only) {
    cluster_log().warn("event=device_lost_idle device={} reason=\"{}\"", dev, why);
    return;
  }
  send_fence_notice(dev, what);
  if (!engine_) {  // before the run: the engine learns it first (on_closed_start, on_open_start)
    cluster_log().warn("event=device_lost_before_start device={} reason=\"{}\"", dev, why);
    return;
  }
  auto fo = engine_->fail_over(dev);
  if (!fo) return fail_run(what + ": " + fo.error().message());
  cluster_log().warn("event=failover device={} reason=\"{}\" resent={} requests_lost={}", dev, why,
                     fo->resend.size(), fo->lost.size());
  for (const lost_request& l : fo->lost) fail_request(l.request_id, what + ": " + l.reason);
  for (auto& [rid, pl] : placements_)
    if (const request_placement* now = engine_->placement_of(rid)) pl = *now;
  // Writes it still owed: its replicas received (and acknowledge) their own copies.
  for (auto it = writes_out_.begin(); it != writes_out_.end();)
    it = std::get<0>(it->first) == dev ? writes_out_.erase(it) : std::next(it);
  send_all(fo->resend);
  if (finished_) return;
  // Rebuilds that were putting their copy on it start again elsewhere; shards that lost a
  // copy with it get one (docs/DESIGN.md §7).
  for (auto& [key, job] : rebuilds_) {
    if (job.target != dev) continue;
    forget_copy_recalls(key);
    job.restart(/*forget_target=*/true);
    ask_copy(job);
  }
  for (const rebuild_need& n : fo->rebuild) plan_rebuild(n, what);
  if (!open_ && !prefill_done_) pump_prefill();
  pump_rebuilds();
  if (finished_) return;
  after_progress();
}

void gpu_host_state::record_loss(uint32_t dev, const std::string& why) {
  lost_.insert(dev);
  const auto now = std::chrono::system_clock::now().time_since_epoch();
  losses_.push_back({dev, step_, why, std::chrono::duration_cast<std::chrono::milliseconds>(now).count()});
}

void gpu_host_state::fail_request(uint64_t request_id, const std::string& reason) {
  if (!failed_.emplace(request_id, reason).second) return;
  for (auto it = rebuilds_.lower_bound({request_id, 0}); it != rebuilds_.end() && it->first.first == request_id;)
    rebuild_done(it++, "its request failed");
  cluster_log().error("event=request_failed request={} reason=\"{}\"", request_id, reason);
  placements_.erase(request_id);
  for (auto it = tags_.begin(); it != tags_.end();)
    it = std::get<0>(it->first) == request_id ? tags_.erase(it) : std::next(it);
  for (auto it = writes_out_.begin(); it != writes_out_.end();)
    it = std::get<1>(it->first) == request_id ? writes_out_.erase(it) : std::next(it);
  if (sched_) {
    const uint64_t sid = sched_id(request_id);
    const auto& in = sched_->in_system_ids();
    if (std::find(in.begin(), in.end(), sid) != in.end()) sched_->fail(sid, reason);
  }
  send_release(request_id);
}

uint64_t gpu_host_state::sched_id(uint64_t request_id) const {
  if (open_) return request_id;
  for (size_t i = 0; i < requests_.size(); ++i)
    if (requests_[i].request_id == request_id) return i + 1;
  return 0;
}

void gpu_host_state::send_fence_notice(uint32_t dev, const std::string& why) {
  transport::envelope env;
  env.sender = node_;
  env.seq = ++seq_;
  const std::string text = "fenced: " + why + "; its shards are served by others now: leave the cluster";
  transport::outbound m(env, text.size());
  auto e = m.body().initError();
  e.setCode(static_cast<uint16_t>(errc::peer_down));
  e.setMessage(text);
  auto st = fab_->send(dev, m.finish());  // best effort: a dead device cannot take it
  if (!st) cluster_log().info("event=fence_notice_not_sent device={} reason=\"{}\"", dev, st.to_string());
}

bool gpu_host_state::fenced(const transport::envelope& env) {
  if (!lost_.count(env.sender)) return false;
  ++fenced_messages_;
  if (fence_logged_.insert(env.sender).second)
    cluster_log().warn("event=fenced device={} reason=\"a message from a device already failed over: dropped, "
                       "as every later one (counted in the report); it was told to leave\"",
                       env.sender);
  return true;
}

void gpu_host_state::on_silence() {
  if (finished_ || !setup_->device_timeout_ms) return;
  const auto timeout = std::chrono::milliseconds(setup_->device_timeout_ms);
  self_->delayed_send(self_, std::max<std::chrono::milliseconds>(timeout / 2, std::chrono::milliseconds(1)),
                      silence_atom::value);
  if (!engine_) return;
  const auto now = self_->clock().now();  // the actor clock: virtual under detsim
  std::set<uint32_t> owing = engine_->devices_owing();
  for (const auto& [key, w] : writes_out_) owing.insert(std::get<0>(key));
  for (auto it = owing_since_.begin(); it != owing_since_.end();)
    it = owing.count(it->first) ? std::next(it) : owing_since_.erase(it);
  std::vector<uint32_t> silent;
  for (uint32_t d : owing) {
    if (lost_.count(d)) continue;
    steady::time_point last = owing_since_.try_emplace(d, now).first->second;
    if (auto h = heard_.find(d); h != heard_.end()) last = std::max(last, h->second);
    if (now - last >= timeout) silent.push_back(d);
  }
  for (uint32_t d : silent) {
    if (finished_) return;
    device_lost(d, "silent for " + std::to_string(setup_->device_timeout_ms) +
                       " ms with work unanswered (cluster.device_timeout_ms)");
  }
}

// ---------------------------------------------------------------------------------------
// Handlers

void gpu_host_state::on_join(const std::string& bytes) {
  on_join_bytes(self_, *setup_, coordinator_, node_, transport::node_role::gpu_host, fab_->address(), bytes,
                [this](bool accepted, const std::string& reason) {
                  if (!accepted) {
                    cluster_log().error("node={} event=join_refused reason=\"{}\"", node_, reason);
                    return self_->quit();
                  }
                  if (!std::exchange(rejoining_, false)) return;
                  cluster_log().warn("node={} event=coordinator_rejoined", node_);
                  send_resume();
                  if (!result_bytes_.empty()) self_->send(driver_, ctl_atom::value, result_bytes_);
                });
}

void gpu_host_state::on_coordinator(const caf::actor& coordinator) {
  cluster_log().warn("node={} event=coordinator_back", node_);
  coordinator_ = driver_ = coordinator;
  rejoining_ = true;
  start_join(self_, coordinator_, node_, transport::node_role::gpu_host);
}

void gpu_host_state::send_resume() {
  std::vector<const rebuild_job*> asking;
  for (const auto& [key, job] : rebuilds_)
    if (job.target == 0 && job.asks > 0) asking.push_back(&job);
  control::outbound out(node_, 64 * (released_.size() + losses_.size() + asking.size()));
  auto r = out.body().initResume();
  r.setRunStarted(run_started_);
  r.setFinished(finished_);
  auto rel = r.initReleased(static_cast<unsigned>(released_.size()));
  unsigned i = 0;
  for (uint64_t id : released_) rel.set(i++, id);
  auto down = r.initFailedOver(static_cast<unsigned>(losses_.size()));
  for (size_t k = 0; k < losses_.size(); ++k) {
    down[static_cast<unsigned>(k)].setNodeId(losses_[k].device);
    down[static_cast<unsigned>(k)].setReason(control::bounded_text(losses_[k].reason));
  }
  r.setAwaitingAdmission(awaiting_admission_);
  auto asks = r.initCopyAsks(static_cast<unsigned>(asking.size()));
  for (size_t k = 0; k < asking.size(); ++k) {
    asks[static_cast<unsigned>(k)].setRequestId(asking[k]->need.request_id);
    asks[static_cast<unsigned>(k)].setShardId(asking[k]->need.shard_id);
    asks[static_cast<unsigned>(k)].setRecompute(asking[k]->need.recompute);
  }
  self_->send(coordinator_, ctl_atom::value, wire_string(out));
}

void gpu_host_state::on_membership(const std::string& bytes) {
  auto m = transport::decode(bytes.data(), bytes.size(), setup_->limits);
  if (!m || m->kind() != transport::msg_kind::membership) return;
  auto mm = m->membership();
  connect_members(*fab_, mm, transport::node_role::pnm_device, connected_, node_);
  for (auto pl : mm.getPlacements()) placements_[pl.getRequestId()] = placement_from_wire(pl);
}

void gpu_host_state::on_control(const std::string& bytes) {
  auto m = control::decode(bytes);
  if (!m) return;
  switch (m->kind()) {
    case control::msg_kind::SHUTDOWN: return self_->quit();
    case control::msg_kind::MEMBER_DOWN: {
      auto down = m->member_down();
      return device_lost(down.getNodeId(), down.getReason());
    }
    case control::msg_kind::ADMISSION: return on_admission(m->admission());
    case control::msg_kind::STOP: return stop_run(m->stop().getReason().cStr());
    case control::msg_kind::COPY_GRANT: return on_copy_grant(m->copy_grant());
    case control::msg_kind::RUN_START: {
      std::vector<control::request_spec> requests;
      for (auto r : m->run_start().getRequests()) requests.push_back(control::from_wire(r));
      if (m->run_start().getOpen()) return on_open_start(requests);
      return on_closed_start(std::move(requests));
    }
    default: return;
  }
}

// Open workloads: the coordinator's answer to an Admit.
void gpu_host_state::on_admission(control::wire::Admission::Reader a) {
  const uint64_t id = a.getRequestId();
  if (!open_ || finished_ || id != awaiting_admission_) return;
  awaiting_admission_ = 0;
  if (a.getAccepted()) {
    auto pl = placements_.find(id);
    if (pl == placements_.end())
      return fail_run("request " + std::to_string(id) + " admitted without a placement");
    // The link and device budget, the last constraint of the admission order: placed, but
    // it stays out if the decode step with it would pass workload.tpot_ms_max (the
    // coordinator takes the room back). Checked here: only the GPU host knows the lengths
    // of the requests in the system.
    const auto& spec = open_specs_.at(id);
    if (tpot_) {
      admission_grant g;
      g.request_id = id;
      g.placement = pl->second;
      const admission_verdict v = tpot_->check({id, spec.context_tokens, spec.steps}, g);
      if (!v.admitted()) {
        send_release(id);
        placements_.erase(pl);
        if (!sched_->not_admitted(id, v.detail)) admitting_ = false;
        return boundary();
      }
    }
    auto s = engine_->add_request({spec.request_id, spec.context_tokens, spec.steps}, pl->second,
                                  /*decoding=*/false);
    if (!s && s.code() == errc::peer_down) {
      // Placed just before a device it needs was lost: not admitted now (its room goes
      // back); the next boundary asks again and the coordinator places it elsewhere.
      send_release(id);
      placements_.erase(pl);
      if (!sched_->not_admitted(id, s.message())) admitting_ = false;
      return boundary();
    }
    if (!s) return fail_run(s.to_string());
    pl->second = *engine_->placement_of(id);  // without lost devices
    sched_->admit(id);
  } else if (!sched_->not_admitted(id, a.getReason())) {
    admitting_ = false;  // head of line: it waits for the next boundary
  }
  boundary();
}

void gpu_host_state::on_open_start(const std::vector<control::request_spec>& requests) {
  open_ = true;
  run_started_ = true;
  engine_ = std::make_unique<host_engine>(setup_->host, *costs_, *setup_->workload);
  engine_->set_trace(timeline_.get());
  for (uint32_t d : lost_) (void)engine_->fail_over(d);  // holds nothing yet: marks it dead
  if (setup_->device_timeout_ms) on_silence();
  std::vector<trace_row> rows;
  for (const auto& r : requests) {
    open_specs_[r.request_id] = r;
    rows.push_back({double(r.arrival_ns) * 1e-9, r.context_tokens, uint64_t(r.steps) + 1});
  }
  sched_ = std::make_unique<serving_scheduler>(std::move(rows), setup_->serving);
  // The scheduler numbers requests 1.. in arrival order, as the driver submitted them.
  for (const auto& o : sched_->outcomes()) {
    auto it = open_specs_.find(o.id);
    if (it == open_specs_.end() || it->second.context_tokens != o.prompt_tokens)
      return fail_run("open workload: request " + std::to_string(o.id) +
                      " does not match the submitted requests (ids must be 1.. in arrival order)");
  }
  prefill_start_ = steady::now();
  boundary();
}

void gpu_host_state::on_closed_start(std::vector<control::request_spec> requests) {
  requests_ = std::move(requests);
  run_started_ = true;
  engine_ = std::make_unique<host_engine>(setup_->host, *costs_, *setup_->workload);
  engine_->set_trace(timeline_.get());
  for (uint32_t d : lost_) (void)engine_->fail_over(d);  // holds nothing yet: marks it dead
  for (const auto& r : requests_) {
    auto pl = placements_.find(r.request_id);
    if (pl == placements_.end()) return fail_run("no placement for request " + std::to_string(r.request_id));
    auto s = engine_->add_request({r.request_id, r.context_tokens, r.steps}, pl->second);
    // Placed on a device lost before the run with no other copy: it alone fails.
    if (!s && s.code() == errc::peer_down) fail_request(r.request_id, s.message());
    else if (!s) return fail_run(s.to_string());
  }
  if (setup_->device_timeout_ms) on_silence();
  if (requests_.empty()) return finish();
  // Chunks of the prefill (for the progress bar): per live (layer, head), the
  // context in chunks of prefill_chunk_tokens, times the copies (replication).
  for (const auto& r : requests_)
    prefill_chunks_total_ += uint64_t(setup_->host.live_layers) * setup_->model.kv_heads *
                             ((r.context_tokens + setup_->host.prefill_chunk_tokens - 1) /
                              setup_->host.prefill_chunk_tokens) * setup_->replication;
  prefill_start_ = steady::now();
  // Prefill has a deadline too: a lost write ack must not hang the run.
  self_->delayed_send(self_, std::chrono::milliseconds(setup_->prefill_timeout_ms), tick_atom::value,
                      uint64_t(0));
  start_retries();
  pump_prefill();
}

// The closed batch, prefilled, decodes through the serving scheduler like an open workload
// (and like the simulator's closed batch): every request arrived at 0 and was admitted with
// its prompt in the cache; each step's plan decodes all of them, and they finish together
// after run.steps steps. The scheduler's ids are positions in `requests_`: the engine
// decodes every request it holds, so nothing maps them back.
void gpu_host_state::serve_closed_batch() {
  std::vector<trace_row> rows;
  for (const auto& r : requests_) rows.push_back({0.0, r.context_tokens, uint64_t(r.steps) + 1});
  sched_ = std::make_unique<serving_scheduler>(std::move(rows), setup_->serving);
  for (uint64_t id = 1; id <= requests_.size(); ++id) sched_->admit_prefilled(id);
  for (const auto& [rid, why] : failed_) sched_->fail(sched_id(rid), why);  // lost in the prefill
  admitting_ = false;  // nothing waits: the batch was formed before the prefill
  boundary();
}

void gpu_host_state::on_wire(std::vector<uint8_t>& bytes) {
  auto m = transport::decode(std::move(bytes), setup_->limits);
  if (!m) return;
  if (fenced(m->env())) return;
  if (setup_->device_timeout_ms) heard_[m->env().sender] = self_->clock().now();
  if (setup_->retry_after_ms) {
    heard_since_look_.insert(m->env().sender);
    uint64_t& acked = acked_seq_[m->env().sender];
    acked = std::max(acked, m->env().ack_seq);
  }
  switch (m->kind()) {
    case transport::msg_kind::write_ack: return on_write_ack(m->env(), m->write_ack());
    case transport::msg_kind::partial:
    case transport::msg_kind::candidates:
    case transport::msg_kind::recall_reply: return on_reply(*m);
    case transport::msg_kind::error:
      return fail_run("device " + std::to_string(m->env().sender) +
                      " refused work: " + m->error().getMessage().cStr());
    default: return;
  }
}

void gpu_host_state::on_write_ack(const transport::envelope& env, transport::wire::WriteAck::Reader ack) {
  // A device that only holds replicas answers no query: its acks say what it holds (its
  // partials do for a device that answers; a device's messages arrive in order).
  device_bytes_held_[env.sender] = ack.getDeviceBytesHeld();
  writes_out_.erase(write_key{env.sender, ack.getRequestId(), ack.getLayer(), ack.getKvHead(),
                              ack.getPosition0()});
  if (!rebuilds_.empty()) pump_rebuilds();
  if (finished_) return;
  if (!open_) pump_prefill();
  // A step waits for its bulk writes too (prompt chunks, and after a failover the
  // promoted replica's catch-up, closed batches included): this ack may have been the last.
  after_progress();
}

void gpu_host_state::on_reply(const transport::received& m) {
  if (!engine_ || finished_) return;
  if (m.kind() == transport::msg_kind::recall_reply && on_copy_reply(m)) return;
  device_reply r;
  r.device_id = m.env().sender;
  r.vt_done_ns = m.env().vtime_ns;
  reply_key key;
  uint32_t step = 0;
  if (m.kind() == transport::msg_kind::partial) {
    key = read_partial(m.env(), m.partial(), r);
    step = m.partial().getStep();
  } else if (m.kind() == transport::msg_kind::candidates) {
    key = read_candidates(m.candidates(), r);
    step = m.candidates().getStep();
  } else {
    key = read_recall(m.env(), m.recall_reply(), r);
    step = m.recall_reply().getStep();
  }
  if (failed_.count(std::get<0>(key))) return;  // its request was lost meanwhile
  auto it = tags_.find(key);
  if (it == tags_.end() || step != step_) return;  // stale or duplicate
  r.tag = it->second;
  tags_.erase(it);
  if (!engine_->awaits(r.tag)) return;  // answered already (a repeat that found its key mapped again)
  auto next = engine_->on_reply(r);
  if (!next) return fail_run(next.error().to_string());
  send_all(*next);
  after_progress();
}

gpu_host_state::reply_key gpu_host_state::read_partial(const transport::envelope& env,
                                                       transport::wire::Partial::Reader p,
                                                       device_reply& r) {
  r.answer.part.group = p.getGroup();
  r.answer.part.head_dim = p.getHeadDim();
  if (p.getOBf16()) transport::widen_bf16(p.getO(), r.answer.part.o);
  else r.answer.part.o = transport::view_as<float>(p.getO()).vec();
  r.answer.part.lse = transport::view_as<float>(p.getLse()).vec();
  r.answer.bytes_scanned = p.getBytesScanned();
  r.answer.flops = p.getFlops();
  r.answer.search.int_ops = p.getIntOps();
  r.answer.search.pages = p.getSearchPages();
  r.answer.search.pages_rescored = p.getSearchRescored();
  auto ids = transport::view_as<uint32_t>(p.getPageIds());
  r.answer.pages.assign(ids.begin(), ids.end());
  device_bytes_held_[env.sender] = p.getDeviceBytesHeld();
  const bool dense = p.getRound() == transport::wire::SelectionRound::DENSE;
  return {p.getRequestId(), p.getLayer(), p.getKvHead(), p.getShardId(),
          dense ? reply_kind::dense : reply_kind::selection};
}

gpu_host_state::reply_key gpu_host_state::read_candidates(transport::wire::Candidates::Reader c,
                                                          device_reply& r) {
  auto ids = transport::view_as<uint32_t>(c.getPageIds());
  r.answer.pages.assign(ids.begin(), ids.end());
  for (float s : transport::view_as<float>(c.getScores())) {
    // Always-kept pages travel with score +inf.
    const bool forced = std::isinf(s) && s > 0;
    r.answer.candidate_scores.push_back(s);
    r.answer.candidate_forced.push_back(forced ? 1 : 0);
  }
  // Bytes scanned and FLOPs of the scoring: the summaries of the shard's pages.
  r.answer.bytes_scanned = c.getBytesScanned();
  r.answer.flops = c.getFlops();
  r.answer.search.int_ops = c.getIntOps();
  r.answer.search.pages = c.getSearchPages();
  r.answer.search.pages_rescored = c.getSearchRescored();
  return {c.getRequestId(), c.getLayer(), c.getKvHead(), c.getShardId(), reply_kind::candidates};
}

gpu_host_state::reply_key gpu_host_state::read_recall(const transport::envelope& env,
                                                      transport::wire::RecallReply::Reader rr,
                                                      device_reply& r) {
  uint32_t shard = 0;
  if (auto pl = placements_.find(rr.getRequestId()); pl != placements_.end())  // gone: lost, dropped later
    for (const auto& s : pl->second.shards)
      if (s.device_id == env.sender && s.holds_head(rr.getKvHead())) shard = s.shard_id;
  for (auto pg : rr.getPages()) {
    auto k = transport::view_as<bf16>(pg.getK());
    auto v = transport::view_as<bf16>(pg.getV());
    r.answer.pages.push_back(pg.getPageId());
    r.rows_per_page.push_back(pg.getNTokens());
    r.k.insert(r.k.end(), k.begin(), k.end());
    r.v.insert(r.v.end(), v.begin(), v.end());
  }
  return {rr.getRequestId(), rr.getLayer(), rr.getKvHead(), shard, reply_kind::recall};
}

void gpu_host_state::on_deadline(uint64_t epoch) {
  if (epoch & boundary_deadline_bit) {
    if (!finished_ && boundary_waiting_ && (epoch & ~boundary_deadline_bit) == step_epoch_)
      fail_run("the boundary after decode step " + std::to_string(step_) + " waited for rebuilds after a device " +
               "loss longer than run.step_timeout_ms = " + std::to_string(setup_->step_timeout_ms) + " ms");
    return;
  }
  if (epoch == 0) {
    if (!finished_ && !prefill_done_)
      fail_run("prefill missed its deadline of " + std::to_string(setup_->prefill_timeout_ms) +
               " ms (run.prefill_timeout_ms)");
    return;
  }
  if (epoch == step_epoch_ && !finished_ && step_running_) {
    // What it still waited for, in the reason: devices owing replies, writes not acknowledged.
    std::string owed;
    for (uint32_t d : engine_->devices_owing()) owed += " " + std::to_string(d);
    std::map<uint32_t, uint64_t> unacked;
    for (const auto& [k, w] : writes_out_) ++unacked[std::get<0>(k)];
    std::string writes;
    for (const auto& [d, n] : unacked) writes += " " + std::to_string(d) + ":" + std::to_string(n);
    fail_run("decode step " + std::to_string(step_) + " missed its deadline of " +
             std::to_string(setup_->step_timeout_ms) + " ms (run.step_timeout_ms); replies owed by devices" +
             (owed.empty() ? " none" : owed) + ", writes unacknowledged (device:count)" +
             (writes.empty() ? " none" : writes));
  }
}

void gpu_host_state::on_peer_down(uint32_t peer) { device_lost(peer, "the fabric lost it"); }

void gpu_host_state::start_retries() {
  if (!setup_->retry_after_ms) return;
  self_->delayed_send(self_, std::chrono::milliseconds(setup_->retry_after_ms), retry_atom::value, ++retry_chain_);
}

// Looks for lost work every run.retry_after_ms while the prefill, a step or a boundary that
// waits for rebuilds has work out, and sends it again (writes are idempotent on the devices;
// a late original reply and its repeat are told apart by tag, the first one counts).
void gpu_host_state::on_retry(uint64_t chain) {
  if (finished_ || chain != retry_chain_) return;  // a later chain took over
  const bool prefill = !open_ && !prefill_done_;
  if (!prefill && !step_running_ && !boundary_waiting_) return;
  std::vector<device_work> owed;
  if (step_running_) owed = engine_->retry_work();
  // Bulk writes not acknowledged: the prefill's, a step's prompt chunks, rebuilds' and
  // catch-ups'; and copy recalls not answered.
  for (const auto& [key, w] : writes_out_)
    if (w.what == device_work::kind::write && !w.k.empty()) owed.push_back(w);
  for (const auto& [key, w] : copy_sent_) owed.push_back(w);
  std::vector<device_work> again = due_for_retry(std::move(owed));
  if (!again.empty()) {
    ++retries_;
    cluster_log().warn("event=retry step={} items={} prefill={}", step_, again.size(), prefill);
    send_all(again);
  }
  if (!finished_)
    self_->delayed_send(self_, std::chrono::milliseconds(setup_->retry_after_ms), retry_atom::value, chain);
}

gpu_host_state::work_ident gpu_host_state::ident_of(const device_work& w) {
  if (w.what == device_work::kind::write)
    return {w.device_id, w.bulk ? 0 : 1, w.request_id, w.layer, w.kv_head, w.position};
  return {w.device_id, w.what == device_work::kind::query ? 2 : 3, w.tag, 0, 0, 0};
}

// Per device, not for the whole cluster: one device's lost write must not wait behind the
// others' progress until cluster.device_timeout_ms calls it silent. A device takes the GPU
// host's messages in order and says in every message the highest seq it took (ack_seq):
// work sent at or before that and still unanswered was lost on the way, or its reply was, or
// the device holds it for data that was (a query waiting for a lost append: the appends go
// again with it). Work sent after it is still on its way or queued, and is left alone — a
// slow device is not flooded with copies of what it is working through. A device that said
// nothing at all since the last look (everything to it lost, or every reply, or it is busy)
// gets one probe at each look: the oldest piece of work it owes that has an answer (a query,
// a recall, a bulk write), sent again with the decode appends it owes (a row each; nothing
// says whether they arrived, and a query held back for a lost one would stay silent). Its answer
// carries an ack_seq past everything else it owes, so the next look resends whatever of
// that was lost; a busy device gets one copy per look, not its whole queue again; and
// cluster.device_timeout_ms / run.retry_after_ms probes go before a silent device is called
// lost.
std::vector<device_work> gpu_host_state::due_for_retry(std::vector<device_work> owed) {
  auto seq_of = [&](const device_work& w) {
    const auto s = sent_seq_.find(ident_of(w));
    return s == sent_seq_.end() ? uint64_t(0) : s->second;  // not known: the oldest
  };
  // Per silent device, the oldest of its work that is answered (not a decode append): the probe.
  std::map<uint32_t, std::pair<uint64_t, size_t>> probe;
  for (size_t i = 0; i < owed.size(); ++i) {
    const uint32_t d = owed[i].device_id;
    if (heard_since_look_.count(d)) continue;
    if (owed[i].what == device_work::kind::write && !owed[i].bulk) continue;
    const uint64_t s = seq_of(owed[i]);
    auto [it, fresh] = probe.try_emplace(d, s, i);
    if (!fresh && s < it->second.first) it->second = {s, i};
  }
  std::set<size_t> probes;
  for (const auto& [d, p] : probe) probes.insert(p.second);
  // With it, a silent device's decode appends (one row each; no answer tells whether they
  // arrived, and a query the device holds back for a lost one would keep it silent).
  for (size_t i = 0; i < owed.size(); ++i)
    if (owed[i].what == device_work::kind::write && !owed[i].bulk && !heard_since_look_.count(owed[i].device_id))
      probes.insert(i);
  heard_since_look_.clear();
  std::vector<device_work> again;
  std::map<work_ident, uint64_t> still_out;
  for (size_t i = 0; i < owed.size(); ++i) {
    device_work& w = owed[i];
    const work_ident id = ident_of(w);
    const auto sent = sent_seq_.find(id);
    const auto acked = acked_seq_.find(w.device_id);
    const bool passed_over = sent != sent_seq_.end() && acked != acked_seq_.end() && acked->second >= sent->second;
    if (passed_over || probes.count(i)) {
      if (w.what == device_work::kind::query) w.bind_query();
      again.push_back(std::move(w));
    } else if (sent != sent_seq_.end()) {
      still_out.emplace(id, sent->second);
    }
  }
  sent_seq_ = std::move(still_out);  // answered work is forgotten; what goes again is recorded anew
  return again;
}

// ---------------------------------------------------------------------------------------
// The report

run_report gpu_host_state::build_report() const {
  run_report rep;
  report_run(rep);
  report_steps(rep);
  report_capacity(rep);
  report_recovery(rep);
  if (!engine_) return rep;
  report_engine(rep);
  return rep;
}

// Requests lost with their devices, fencing, the steps done.
void gpu_host_state::report_recovery(run_report& rep) const {
  rep.failed = failed_.size();
  for (const auto& [rid, why] : failed_) rep.failures.push_back("request " + std::to_string(rid) + ": " + why);
  rep.fenced_messages = fenced_messages_;
  rep.steps_done = steps_.size();
  rep.rebuilds = rebuilt_;
  for (const auto& [key, job] : rebuilds_)  // still under way when the run ended
    rep.rebuilds.push_back(rebuild_record(key, job, "unfinished when the run ended"));
  if (engine_) rep.recovery_stall_ms = engine_->recovery().stall_ns * 1e-6;
}

// What was run: the configuration, and what the engine measured for the simulator.
void gpu_host_state::report_run(run_report& rep) const {
  const run_setup& setup = *setup_;
  rep.mode = setup.mode;
  rep.steps = setup.steps;
  rep.config_json = setup.cfg.to_json();
  rep.model_name = setup.model.name;
  rep.model_file = setup.model.file;
  rep.hardware_name = setup.hw.name;
  rep.hardware_file = setup.hw.file;
  rep.layers = setup.model.layers;
  rep.live_layers = setup.host.live_layers;
  rep.pnm_devices = setup.devices;
  rep.batch = setup.batch;
  rep.context_tokens = setup.context_tokens;
  rep.budget_tokens = setup.host.budget_tokens;
  rep.selection = setup.spec.selection.describe(setup.spec.run.wire_precision);
  rep.cal_steady_reeval_steps = setup.host.steady.reevaluate_every_steps;
  if (engine_) {
    auto c = engine_->calibration();
    rep.cal_steady_hit_fraction = c.steady_hit_fraction;
    rep.cal_steady_set_fraction = c.steady_set_fraction;
    rep.cal_steady_churn_fraction = c.steady_churn_fraction;
    rep.cal_selection_overlap = c.selection_overlap;
    rep.cal_selection_spread = c.selection_spread;
    rep.cal_recall_hit_fraction = c.recall_hit_fraction;
    rep.cal_recall_samples = c.recall_samples;
    const auto rc = engine_->recall_cache_stats();
    rep.recall_cache = to_string(rc.policy);
    rep.recall_cache_tokens = rc.capacity_tokens;
    rep.recall_hits = rc.hits;
    rep.recall_misses = rc.misses;
    rep.recall_cache_shadow = rc.shadow;
    rep.cal_samples = c.samples;
    rep.cal_churn_samples = c.churn_samples;
  }
  rep.cross_shard = to_string(setup.host.cross_shard);
  rep.cal_search = to_string(setup.device.shape.search);
  rep.cal_search_heads_scored = setup.host.heads_scored;
  rep.cal_search_aggregation = to_string(setup.spec.selection.gqa_aggregation);
  rep.cal_search_workload = setup.spec.workload.from_trace ? "trace" : "synthetic";
  rep.summaries_resident = setup.host.summaries_resident;
}

// Wall time, and the virtual time, energy and traffic of the steps.
void gpu_host_state::report_steps(run_report& rep) const {
  std::vector<double> wall = step_wall_ms_;
  std::sort(wall.begin(), wall.end());
  if (!wall.empty()) {
    rep.step_wall_ms_p50 = wall[wall.size() / 2];
    rep.step_wall_ms_max = wall.back();
    double sum = 0;
    for (double x : wall) sum += x;
    rep.step_wall_ms_mean = sum / wall.size();
  }
  rep.prefill_wall_s = prefill_wall_s_;
  double vt = 0, energy = 0, tokens = 0, gpu_hbm_bytes = 0;
  step_power_w peak;
  // baseline's memory boxes are passive expanders; the other modes' are PNM devices.
  const bool passive = setup_->host.mode == run_mode::baseline;
  uint64_t link = 0, dev = 0;
  double dense = 0, lnk = 0, devns = 0, merge = 0, lm = 0, live_bytes = 0, gattn = 0, copy = 0;
  double mb_serial = 0, mb_overlap = 0;  // sub-batch overlap
  double live_flops = 0;
  double live_int_ops = 0;
  uint64_t search_rescored = 0, search_selected = 0, search_queries = 0, search_pages = 0;
  double search_pages_min = 0, search_pages_max = 0;
  uint64_t copy_bytes = 0, steady_hits = 0, selected = 0;
  // Per-step figures are over decode steps (open workloads also run prefill-only steps);
  // tokens, energy and time over every step.
  double all_vt = 0;
  size_t decode_steps = 0;
  for (const auto& s : steps_) {
    all_vt += s.virtual_ns;
    energy += s.energy_j;
    gpu_hbm_bytes += s.gpu_hbm_bytes;
    tokens += double(s.tokens);
    peak.max_with(costs_->power_over_step(s.virtual_ns, s.gpu_energy_j, s.gpu_hbm_bytes, 1, s.device_energy_j_max,
                                          passive));
    if (open_ && s.decode_batch == 0) continue;
    ++decode_steps;
    vt += s.virtual_ns;
    link += s.link_bytes;
    dev += s.device_bytes_scanned;
    dense += s.dense_ns, lnk += s.link_ns, devns += s.device_ns, merge += s.merge_ns, lm += s.lm_head_ns;
    gattn += s.gpu_attention_ns, copy += s.copy_ns;
    mb_serial += s.serial_ns, mb_overlap += s.overlap_ns;
    rep.micro_batches = std::max(rep.micro_batches, s.micro_batches);
    copy_bytes += s.copy_bytes, steady_hits += s.steady_hits, selected += s.selected_pages;
    live_bytes += double(s.emulated_bytes_read);
    live_flops += s.emulated_flops;
    live_int_ops += s.emulated_int_ops;
    search_rescored += s.search_rescored;
    search_selected += s.search_selected;
    search_queries += s.search_queries;
    search_pages += s.search_pages;
    if (s.search_queries > 0) {
      const double per = double(s.search_pages) / double(s.search_queries);
      search_pages_min = search_queries == s.search_queries ? per : std::min(search_pages_min, per);
      search_pages_max = std::max(search_pages_max, per);
    }
  }
  const double n = std::max<size_t>(1, decode_steps);
  rep.virtual_step_ms_mean = vt / n / 1e6;
  // Closed runs: decode steps back to back. Open workloads: the whole virtual time the
  // run covered, idle gaps between arrivals included (as the simulator).
  const double elapsed_ns = open_ && sched_ ? sched_->now_s() * 1e9 : all_vt;
  rep.virtual_tokens_per_s = elapsed_ns > 0 ? tokens / (elapsed_ns / 1e9) : 0;
  // baseline's memory boxes are passive expanders, pnm-kv's and png-kv's PNM devices;
  // gpu-only uses none, so none is charged power or priced (schedulers/step_setup.hpp).
  const uint32_t pnm_boxes = setup_->step->pnm_devices(), expanders = setup_->step->expanders();
  const double static_w = costs_->static_power_w(1, pnm_boxes, expanders);
  const double total_energy = energy + static_w * elapsed_ns / 1e9;
  rep.virtual_energy_j_per_token = tokens > 0 ? total_energy / tokens : 0;
  rep.virtual_power_w = elapsed_ns > 0 ? total_energy / (elapsed_ns / 1e9) : 0;
  rep.virtual_tokens_per_dollar = costs_->tokens_per_dollar(
      rep.virtual_tokens_per_s, rep.virtual_power_w, costs_->capital_usd(1, pnm_boxes, expanders));
  // All-in (docs/HARDWARE.md §6a), and each part's peak power next to its rating.
  rep.virtual_host_switch_power_w = costs_->host_switch_power_w(1, pnm_boxes + expanders);
  const double all_in = total_energy + costs_->gpu_all_in_extra_j(gpu_hbm_bytes) +
                        rep.virtual_host_switch_power_w * elapsed_ns / 1e9;
  rep.virtual_energy_all_in_j_per_token = tokens > 0 ? all_in / tokens : 0;
  rep.virtual_power_all_in_w = elapsed_ns > 0 ? all_in / (elapsed_ns / 1e9) : 0;
  rep.virtual_tokens_per_dollar_all_in = costs_->tokens_per_dollar(
      rep.virtual_tokens_per_s, rep.virtual_power_all_in_w, costs_->capital_usd(1, pnm_boxes, expanders));
  rep.gpu_power_peak_w = peak.gpu;
  rep.gpu_all_in_power_peak_w = peak.gpu_all_in;
  rep.device_power_peak_w = peak.device;
  rep.gpu_tdp_w = costs_->hardware().gpu.tdp_w;
  rep.device_power_rating_w = passive ? costs_->hardware().expander.power_w : costs_->hardware().pnm.power_w;
  rep.virtual_link_bytes_per_step = uint64_t(double(link) / n);
  rep.virtual_device_bytes_per_step = uint64_t(double(dev) / n);
  rep.breakdown_dense_ms = dense / n / 1e6;
  rep.breakdown_link_ms = lnk / n / 1e6;
  rep.breakdown_device_ms = devns / n / 1e6;
  rep.breakdown_merge_ms = merge / n / 1e6;
  rep.breakdown_lm_head_ms = lm / n / 1e6;
  rep.breakdown_gpu_attention_ms = gattn / n / 1e6;
  rep.breakdown_copy_ms = copy / n / 1e6;
  rep.micro_batch_serial_ms = mb_serial / n / 1e6;
  rep.micro_batch_overlap_ms = mb_overlap / n / 1e6;
  rep.copy_bytes_per_step = uint64_t(double(copy_bytes) / n);
  rep.steady_hit_rate = selected ? double(steady_hits) / double(selected) : 0;
  if (engine_) {
    // The live bytes the devices scanned per step: what the wall-time bound is made of.
    rep.live_device_bytes_per_step = uint64_t(live_bytes / n);
    rep.live_device_flops_per_step = live_flops / n;
    rep.live_device_int_ops_per_step = live_int_ops / n;
    rep.cal_search_samples = search_queries;
    rep.cal_search_rescored_per_selected =
        search_selected > 0 ? double(search_rescored) / double(search_selected) : 0;
    rep.cal_search_pages_min = search_pages_min;
    rep.cal_search_pages_max = search_pages_max;
    // The run's point of the touched-fraction model (model/search_touch.hpp).
    if (search_queries > 0 && search_pages > 0) {
      rep.cal_search_pages_mean = double(search_pages) / double(search_queries);
      rep.cal_search_selected_fraction = std::min(1.0, double(search_selected) / double(search_pages));
    }
  }
  if (engine_ && open_ && sched_) rep.tokens_out = uint64_t(tokens);
}

// GPU memory for the batch, and the largest batch GPU memory and the devices admit.
void gpu_host_state::report_capacity(run_report& rep) const {
  const run_setup& setup = *setup_;
  gpu_memory_query q = setup.gpu_query;
  q.batch = static_cast<uint32_t>(std::max<size_t>(1, requests_.size()));
  auto use = gpu_memory(setup.model, setup.hw, q);
  rep.gpu_memory_bytes = use.total_bytes();
  rep.gpu_memory_capacity_bytes = use.capacity_bytes;
  // The batch is bounded by GPU memory and by what the devices (or expanders) can hold.
  const uint32_t gpu_max = max_batch(setup.model, setup.hw, setup.gpu_query);
  placement_request pr = setup.placement;
  pr.context_tokens = setup.context_tokens;
  const uint64_t pages = (pr.context_tokens + pr.decode_tokens + pr.page_size_tokens - 1) / pr.page_size_tokens;
  const double request_bytes = double(shard_bytes_per_layer_head(pr, pages)) * pr.kv_heads *
                               pr.layers * setup.replication;
  const double capacity = setup.devices * device_capacity_bytes(setup.hw, setup.host.mode);
  const uint32_t device_max = static_cast<uint32_t>(std::floor(capacity / request_bytes));
  // gpu-only: no device holds KV (device_max is 0); GPU memory alone bounds the batch.
  rep.max_batch = setup.host.mode == run_mode::gpu_only ? gpu_max : std::min(gpu_max, device_max);
  rep.max_batch_gpu_memory = gpu_max;
  rep.max_batch_device_capacity = device_max;
}

// Accuracy, the output digest, what the devices hold, and what became of the requests.
void gpu_host_state::report_engine(run_report& rep) const {
  rep.prefill_link_ms = costs_->link_serialisation_ns(double(engine_->prefill_bytes())) / 1e6;
  auto acc = engine_->accuracy().summary();
  rep.accuracy_samples = acc.samples;
  rep.output_rel_err_mean = acc.rel_err_mean;
  rep.output_rel_err_p99 = acc.rel_err_p99;
  rep.output_rel_err_max = acc.rel_err_max;
  rep.attention_mass_recall_mean = acc.mass_mean;
  rep.attention_mass_recall_min = acc.mass_min;
  rep.attention_mass_recall_p01 = acc.mass_p01;
  rep.attention_mass_recall_p10 = acc.mass_p10;
  rep.needle_hit_rate = acc.needle_hit_rate;
  rep.needles_asked = acc.needle_asks;
  rep.output_digest = engine_->output_digest();
  for (const auto& [dev_id, held] : device_bytes_held_) {
    rep.device_ids.push_back(dev_id);
    rep.device_bytes_held.push_back(held);
    uint64_t modelled = 0;
    for (const auto& [rid, pl] : placements_)
      for (const auto& s : pl.shards) {
        if (s.device_id == dev_id) modelled += s.bytes_modelled;
        for (uint32_t r : s.replica_device_ids)
          if (r == dev_id) modelled += s.bytes_modelled;
      }
    rep.device_bytes_modelled.push_back(modelled);
  }
  if (!placements_.empty()) {
    rep.head_groups = placements_.begin()->second.head_groups;
    rep.sequence_shards = placements_.begin()->second.sequence_shards;
  }
  rep.completed = requests_.size() - failed_.size();
  for (const auto& [rid, digest] : engine_->request_digests()) rep.request_digests.emplace_back(rid, digest);
  rep.devices_lost.assign(lost_.begin(), lost_.end());
  rep.device_losses = losses_;
  rep.retries = retries_;
  if (open_ && sched_) {
    rep.arrivals = to_string(setup_->spec.workload.arrivals);
    rep.request_outcomes = sched_->outcomes();
    rep.batch_series = sched_->series();
    rep.serving = summarise(rep.request_outcomes, rep.batch_series);
    rep.virtual_time_s = sched_->now_s();
    rep.completed = rep.serving.completed;
    rep.batch = rep.serving.batch_peak;
  }
}

}  // namespace pnmkv::actors
