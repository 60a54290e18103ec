// The PNM device actor (see pnm_device.hpp). The device_engine does the work; the actor
// decodes messages, keeps early arrivals until they can apply, and charges virtual time.
#include "actors/pnm_device.hpp"

#include "schedulers/step_timeline.hpp"  // device_service_cost

#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>

namespace pnmkv::actors {

namespace {
// Early writes, appends and queries held at most (a fabric reordering or losing messages).
constexpr size_t early_max = 4096;
}  // namespace

caf::behavior pnm_device_actor(pnm_device_state::actor_type* self,
                               std::shared_ptr<const run_setup> setup, uint32_t node,
                               caf::actor coordinator, std::shared_ptr<transport::fabric> fab) {
  self->state.init(std::move(setup), node, std::move(coordinator), std::move(fab));
  return {
      [self](join_atom, const std::string& bytes) { self->state.on_join(bytes); },
      [self](coord_atom, const caf::actor& c) { self->state.on_coordinator(c); },
      [self](member_atom, const std::string& bytes) { self->state.on_membership(bytes); },
      [self](wire_atom, std::vector<uint8_t>& bytes) { self->state.on_wire(bytes); },
      [self](peer_down_atom, uint32_t peer) { self->state.on_peer_down(peer); },
      [self](ctl_atom, const std::string& bytes) { self->state.on_control(bytes); },
      [self](backlog_atom) { self->state.on_backlog(); },
  };
}

void pnm_device_state::init(std::shared_ptr<const run_setup> setup, uint32_t node,
                            caf::actor coordinator, std::shared_ptr<transport::fabric> fab) {
  setup_ = std::move(setup);
  node_ = node;
  device_engine_config dc = setup_->device;
  dc.device_id = node;
  engine_ = std::make_unique<device_engine>(dc);
  coordinator_ = std::move(coordinator);
  fab_ = std::move(fab);
  costs_ = setup_->costs.get();
  passive_ = setup_->host.mode == run_mode::baseline;
  start_join(self_, coordinator_, node_, transport::node_role::pnm_device);
}

transport::outbound pnm_device_state::message(double vt_ns, size_t payload_bytes) {
  transport::envelope env;
  env.sender = node_;
  env.seq = ++seq_;
  env.vtime_ns = vt_ns;
  env.ack_seq = host_seq_taken_;  // only the GPU host sends devices work
  return transport::outbound(env, payload_bytes);
}

void pnm_device_state::send(uint32_t dest, transport::outbound& m) { send_bytes(dest, m.finish()); }

void pnm_device_state::send_bytes(uint32_t dest, std::vector<uint8_t> bytes) {
  // Behind messages held back already: in order.
  if (!held_.empty()) return hold(dest, std::move(bytes));
  std::vector<uint8_t> copy = bytes;  // the fabric takes the bytes; back-pressure needs them again
  auto s = fab_->send(dest, std::move(bytes));
  if (s) return;
  // Back-pressure (the receiver's inbox or this link's queue is full) is not a loss: the
  // reply is sent again shortly, in order.
  if (s.code() == errc::capacity) return hold(dest, std::move(copy));
  cluster_log().warn("node={} event=send_failed dest={} reason=\"{}\"", node_, dest, s.to_string());
}

void pnm_device_state::hold(uint32_t dest, std::vector<uint8_t> bytes) {
  if (held_.size() >= held_max) {
    cluster_log().warn("node={} event=send_dropped dest={} reason=\"{} replies held back by back-pressure\"", node_,
                       dest, held_max);
    return;
  }
  held_.emplace_back(dest, std::move(bytes));
  if (!held_tick_) {
    held_tick_ = true;
    self_->delayed_send(self_, std::chrono::milliseconds(1), backlog_atom::value);
  }
}

void pnm_device_state::on_backlog() {
  held_tick_ = false;
  while (!held_.empty()) {
    auto& [dest, bytes] = held_.front();
    std::vector<uint8_t> copy = bytes;
    auto s = fab_->send(dest, std::move(copy));
    if (!s && s.code() == errc::capacity) break;  // still full: later
    if (!s) cluster_log().warn("node={} event=send_failed dest={} reason=\"{}\"", node_, dest, s.to_string());
    held_.pop_front();
  }
  if (!held_.empty() && !held_tick_) {
    held_tick_ = true;
    self_->delayed_send(self_, std::chrono::milliseconds(1), backlog_atom::value);
  }
}

void pnm_device_state::send_error(const transport::envelope& env, const status& s) {
  auto m = message(engine_->clock_ns(), s.message().size());
  auto e = m.body().initError();
  e.setCode(static_cast<uint16_t>(s.code()));
  e.setMessage(s.message());
  e.setRefersToSeq(env.seq);
  send(env.sender, m);
}

bool pnm_device_state::ready(transport::wire::Query::Reader q) const {
  const shard_placement* shard = engine_->shard(q.getRequestId(), q.getShardId());
  if (!shard) return true;  // the engine will refuse it with a clear error
  const uint32_t ps = setup_->device.shape.page_size_tokens;
  const uint64_t want = shard->tokens_held_at(q.getSequenceTokens(), ps);
  for (uint32_t h = q.getKvHead0(); h < q.getKvHead1(); ++h) {
    const kv_head_store* s = engine_->find(q.getRequestId(), q.getShardId(), q.getLayer(), h);
    if (s && s->token_count() < want) return false;
  }
  return true;
}

void pnm_device_state::serve(const transport::received& m) {
  auto q = m.query();
  auto listed_ids = transport::view_as<uint32_t>(q.getListedPages());
  auto excluded_ids = transport::view_as<uint32_t>(q.getExcludedPages());
  const std::vector<uint64_t> listed(listed_ids.begin(), listed_ids.end());
  const std::vector<uint64_t> excluded(excluded_ids.begin(), excluded_ids.end());
  for (uint32_t h = q.getKvHead0(); h < q.getKvHead1(); ++h) serve_head(m.env(), q, h, listed, excluded);
}

void pnm_device_state::serve_head(const transport::envelope& env, transport::wire::Query::Reader q,
                                  uint32_t h, const std::vector<uint64_t>& listed,
                                  const std::vector<uint64_t>& excluded) {
  const uint32_t d = setup_->model.head_dim;
  const selection_round round = transport::from_wire(q.getRound());
  device_query dq;
  dq.request_id = q.getRequestId();
  dq.shard_id = q.getShardId();
  dq.step = q.getStep();
  dq.layer = q.getLayer();
  dq.kv_head = h;
  dq.group = q.getGroup();
  const size_t q_offset = size_t(h - q.getKvHead0()) * q.getGroup() * d;
  std::vector<float> q_bf16;  // run.wire_precision bf16: the query widened for the fp32 kernels
  if (q.getBf16()) {
    const size_t n = size_t(q.getGroup()) * d;  // this head's slice only
    transport::widen_bf16(q.getQ().slice(sizeof(bf16) * q_offset, sizeof(bf16) * (q_offset + n)), q_bf16);
    dq.q = q_bf16.data();
  } else {
    dq.q = transport::view_as<float>(q.getQ()).data() + q_offset;
  }
  dq.wire_bf16 = q.getBf16();
  dq.sequence_tokens = q.getSequenceTokens();
  dq.budget_pages = q.getBudgetPages();
  dq.listed_pages = listed.data();
  dq.n_listed = listed.size();
  dq.excluded_pages = excluded.data();
  dq.n_excluded = excluded.size();
  dq.round = round;
  dq.background = q.getBackground();
  device_answer ans;
  auto s = engine_->query(dq, ans);
  if (!s) {
    cluster_log().warn("node={} event=query_failed request={} reason=\"{}\"", node_, dq.request_id,
                       s.to_string());
    send_error(env, s);
    return;
  }
  // Lookahead selection: an attend marked background also asks for the next step's search;
  // the query itself, or an exactCandidates query marked background, is that search.
  const bool search_after = dq.background && round == selection_round::exact_attend;
  const bool in_background = dq.background && round == selection_round::exact_candidates;
  double done = engine_->clock_ns();
  // A lookahead search runs in the device's idle time: not on its clock (the GPU host charges
  // it against the step's length, actors/host_engine.hpp).
  if (round != selection_round::dense && !passive_ && !in_background) {
    const double arrival = env.vtime_ns + costs_->link_latency_ns();
    done = engine_->charge(
        arrival, device_service_cost(*costs_, device_op::pnm, double(ans.bytes_scanned), ans.flops,
                                     ans.search.int_ops).time_ns);
  }
  if (round == selection_round::exact_candidates) send_candidates(env, q, h, ans, done);
  else send_partial(env, q, h, ans, done);
  if (!search_after) return;
  dq.round = selection_round::exact_candidates;
  dq.listed_pages = nullptr;
  dq.n_listed = 0;
  device_answer found;
  if (auto st = engine_->query(dq, found); !st) {
    cluster_log().warn("node={} event=query_failed request={} reason=\"{}\"", node_, dq.request_id, st.to_string());
    send_error(env, st);
    return;
  }
  send_candidates(env, q, h, found, engine_->clock_ns());
}

void pnm_device_state::send_candidates(const transport::envelope& env,
                                       transport::wire::Query::Reader q, uint32_t h,
                                       const device_answer& ans, double done_ns) {
  const size_t n = ans.pages.size();
  auto m = message(done_ns, 8 * n);
  auto c = m.body().initCandidates();
  c.setRequestId(q.getRequestId());
  c.setStep(q.getStep());
  c.setLayer(q.getLayer());
  c.setKvHead(h);
  c.setShardId(q.getShardId());
  c.setNPages(static_cast<uint32_t>(n));
  uint32_t* ids = transport::fill_as<uint32_t>(c.initPageIds(static_cast<unsigned>(4 * n)));
  float* scores = transport::fill_as<float>(c.initScores(static_cast<unsigned>(4 * n)));
  for (size_t i = 0; i < n; ++i) {
    ids[i] = static_cast<uint32_t>(ans.pages[i]);
    scores[i] = ans.candidate_forced[i] ? std::numeric_limits<float>::infinity() : ans.candidate_scores[i];
  }
  c.setBytesScanned(ans.bytes_scanned);
  c.setFlops(ans.flops);
  c.setIntOps(ans.search.int_ops);
  c.setSearchPages(static_cast<uint32_t>(ans.search.pages));
  c.setSearchRescored(static_cast<uint32_t>(ans.search.pages_rescored));
  send(env.sender, m);
}

void pnm_device_state::send_partial(const transport::envelope& env, transport::wire::Query::Reader q,
                                    uint32_t h, const device_answer& ans, double done_ns) {
  const selection_round round = transport::from_wire(q.getRound());
  // dense: every page; the list would only repeat the placement.
  const size_t listed = round == selection_round::dense ? 0 : ans.pages.size();
  auto m = message(done_ns, 4 * (ans.part.o.size() + ans.part.lse.size() + listed));
  auto p = m.body().initPartial();
  p.setRequestId(q.getRequestId());
  p.setStep(q.getStep());
  p.setLayer(q.getLayer());
  p.setKvHead(h);
  p.setShardId(q.getShardId());
  p.setGroup(q.getGroup());
  p.setHeadDim(setup_->model.head_dim);
  if (q.getBf16() && round != selection_round::dense) {  // the engine rounded o: exact
    const size_t n = ans.part.o.size();
    transport::fill_bf16(p.initO(static_cast<unsigned>(sizeof(bf16) * n)), ans.part.o.data(), n);
    p.setOBf16(true);
  } else {
    p.setO(transport::as_data(ans.part.o));
  }
  p.setLse(transport::as_data(ans.part.lse));
  p.setPagesSelected(static_cast<uint32_t>(listed));
  uint32_t* ids = transport::fill_as<uint32_t>(p.initPageIds(static_cast<unsigned>(4 * listed)));
  for (size_t i = 0; i < listed; ++i) ids[i] = static_cast<uint32_t>(ans.pages[i]);
  p.setBytesScanned(ans.bytes_scanned);
  p.setRound(q.getRound());
  p.setFlops(ans.flops);
  p.setDeviceBytesHeld(engine_->bytes_held());
  p.setIntOps(ans.search.int_ops);
  p.setSearchPages(static_cast<uint32_t>(ans.search.pages));
  p.setSearchRescored(static_cast<uint32_t>(ans.search.pages_rescored));
  send(env.sender, m);
}

void pnm_device_state::serve_recall(const transport::received& m) {
  auto rr = m.recall_request();
  auto ids = transport::view_as<uint32_t>(rr.getPageIds());
  const std::vector<uint64_t> pages(ids.begin(), ids.end());
  std::vector<uint32_t> rows;
  std::vector<bf16> k, v;
  auto s = engine_->read_pages(rr.getRequestId(), rr.getLayer(), rr.getKvHead(), pages, rows, k, v);
  if (!s) {
    cluster_log().warn("node={} event=recall_failed reason=\"{}\"", node_, s.to_string());
    send_error(m.env(), s);
    return;
  }
  const double bytes = double(k.size() + v.size()) * sizeof(bf16);
  const double arrival = m.env().vtime_ns + costs_->link_latency_ns();
  const double cost = device_service_cost(*costs_, passive_ ? device_op::expander : device_op::pnm, bytes).time_ns;
  // A PNM device serves recalls only as png-kv's steady copies: the copy engine runs them in
  // the dense-layer windows, a schedule the GPU host composes (schedulers/step_timeline.hpp,
  // charge_steady_copies), so they do not hold this device's clock for the layers' queries.
  const double done = passive_ ? engine_->charge(arrival, cost) : arrival + cost;
  auto out = message(done, size_t(bytes) + 64 * pages.size());
  auto reply = out.body().initRecallReply();
  reply.setRequestId(rr.getRequestId());
  reply.setStep(rr.getStep());
  reply.setLayer(rr.getLayer());
  reply.setKvHead(rr.getKvHead());
  reply.setPageTokens(setup_->device.shape.page_size_tokens);
  reply.setHeadDim(setup_->model.head_dim);
  const size_t d = setup_->model.head_dim;
  auto list = reply.initPages(static_cast<unsigned>(pages.size()));
  size_t off = 0;
  for (size_t i = 0; i < pages.size(); ++i) {
    auto pg = list[static_cast<unsigned>(i)];
    const size_t elems = rows[i] * d;
    pg.setPageId(static_cast<uint32_t>(pages[i]));
    pg.setNTokens(rows[i]);
    pg.setK(transport::as_data(k.data() + off, elems));
    pg.setV(transport::as_data(v.data() + off, elems));
    pg.setCrc32c(transport::kv_crc32c(k.data() + off, v.data() + off, elems));
    off += elems;
  }
  send(m.env().sender, out);
}

void pnm_device_state::drain_deferred() {
  for (size_t n = deferred_.size(); n > 0; --n) {
    auto item = std::move(deferred_.front());
    deferred_.pop_front();
    if (ready(item.query()))
      serve(item);
    else
      deferred_.push_back(std::move(item));
  }
}

bool pnm_device_state::try_write(const transport::received& m) {
  auto w = m.prefill_write();
  auto s = engine_->write(w.getRequestId(), w.getLayer(), w.getKvHead(), w.getPosition0(),
                          transport::view_as<bf16>(w.getK()).data(),
                          transport::view_as<bf16>(w.getV()).data(), w.getNTokens());
  if (!s && s.code() == errc::not_ready) return false;
  if (!s) {
    cluster_log().warn("node={} event=write_failed reason=\"{}\"", node_, s.to_string());
    send_error(m.env(), s);
    return true;
  }
  // End-to-end flow control: the host keeps a bounded window of unacknowledged writes.
  auto out = message(engine_->clock_ns());
  auto ack = out.body().initWriteAck();
  ack.setRequestId(w.getRequestId());
  ack.setLayer(w.getLayer());
  ack.setKvHead(w.getKvHead());
  ack.setPosition0(w.getPosition0());
  ack.setNTokens(w.getNTokens());
  ack.setOk(true);
  ack.setDeviceBytesHeld(engine_->bytes_held());
  send(m.env().sender, out);
  return true;
}

bool pnm_device_state::try_append(const transport::received& m) {
  auto a = m.token_append();
  const bf16* k = transport::view_as<bf16>(a.getK()).data();
  const bf16* v = transport::view_as<bf16>(a.getV()).data();
  bool applied = true;
  for (uint32_t h = 0; h < a.getNHeads(); ++h) {
    const size_t off = size_t(h) * a.getHeadDim();
    auto s = engine_->write(a.getRequestId(), a.getLayer(), a.getKvHead0() + h, a.getPosition(),
                            k + off, v + off, 1);
    if (!s && s.code() == errc::not_ready) applied = false;  // heads done are not redone
    else if (!s) cluster_log().warn("node={} event=append_failed reason=\"{}\"", node_, s.to_string());
  }
  return applied;
}

void pnm_device_state::drain_early() {
  for (bool moved = true; moved;) {
    moved = false;
    for (auto* queue : {&early_writes_, &early_appends_}) {
      for (size_t n = queue->size(); n > 0; --n) {
        auto item = std::move(queue->front());
        queue->pop_front();
        const bool applied = item.kind() == transport::msg_kind::prefill_write ? try_write(item)
                                                                               : try_append(item);
        if (applied) moved = true;
        else queue->push_back(std::move(item));
      }
    }
  }
}

void pnm_device_state::on_write(transport::received&& m) {
  const bool write = m.kind() == transport::msg_kind::prefill_write;
  if (!(write ? try_write(m) : try_append(m))) {
    auto& queue = write ? early_writes_ : early_appends_;
    if (queue.size() < early_max) queue.push_back(std::move(m));
    else cluster_log().warn("node={} event={}_dropped reason=\"early queue full\"", node_,
                            write ? "write" : "append");
    return;
  }
  drain_early();
  drain_deferred();
}

void pnm_device_state::on_query(transport::received&& m) {
  if (ready(m.query()))
    serve(m);
  else if (deferred_.size() < early_max)
    deferred_.push_back(std::move(m));
  else
    cluster_log().warn("node={} event=query_dropped reason=\"deferred queue full\"", node_);
}

void pnm_device_state::on_coordinator(const caf::actor& coordinator) {
  cluster_log().warn("node={} event=coordinator_back", node_);
  coordinator_ = coordinator;
  start_join(self_, coordinator_, node_, transport::node_role::pnm_device);
}

void pnm_device_state::on_join(const std::string& bytes) {
  on_join_bytes(self_, *setup_, coordinator_, node_, transport::node_role::pnm_device, fab_->address(),
                bytes);
}

namespace {

// The answer to a placement: the shard is held, or why not.
std::string placement_ack_bytes(uint32_t node, uint64_t request_id, const status& added) {
  control::outbound out(node);
  auto ack = out.body().initPlacementAck();
  ack.setNodeId(node);
  ack.setRequestId(request_id);
  ack.setOk(added.is_ok());
  ack.setReason(added ? "" : control::bounded_text(added.message()));
  return wire_string(out);
}

}  // namespace

void pnm_device_state::on_membership(const std::string& bytes) {
  auto m = transport::decode(bytes.data(), bytes.size(), setup_->limits);
  if (!m || m->kind() != transport::msg_kind::membership) {
    cluster_log().warn("node={} event=bad_membership", node_);
    return;
  }
  auto mm = m->membership();
  connect_members(*fab_, mm, transport::node_role::gpu_host, connected_, node_);
  // One acknowledgement per placement that names this device: every shard of it here is
  // held (added now, or already: a placement sent again, by a restarted coordinator or for
  // a new copy of another shard), or why not.
  for (auto pl : mm.getPlacements()) {
    request_placement rp = placement_from_wire(pl);
    bool mine_any = false;
    status verdict = status::ok();
    for (const auto& s : rp.shards) {
      bool mine = s.device_id == node_;
      for (uint32_t r : s.replica_device_ids) mine = mine || r == node_;
      if (!mine) continue;
      mine_any = true;
      if (engine_->shard(rp.request_id, s.shard_id)) continue;
      released_.erase(rp.request_id);  // placed again (it waited out a TPOT check)
      if (status added = engine_->add_shard(rp.request_id, s); !added && verdict) verdict = added;
    }
    if (mine_any) self_->send(coordinator_, ctl_atom::value, placement_ack_bytes(node_, rp.request_id, verdict));
  }
}

uint64_t pnm_device_state::request_of(const transport::received& m) {
  switch (m.kind()) {
    case transport::msg_kind::prefill_write: return m.prefill_write().getRequestId();
    case transport::msg_kind::token_append: return m.token_append().getRequestId();
    case transport::msg_kind::recall_request: return m.recall_request().getRequestId();
    case transport::msg_kind::query: return m.query().getRequestId();
    default: return 0;
  }
}

void pnm_device_state::on_wire(std::vector<uint8_t>& bytes) {
  auto m = transport::decode(std::move(bytes), setup_->limits);
  if (!m) return;  // counted and logged once per reason by the decoder (wire_stats)
  if (m->env().sender == gpu_host_node) host_seq_taken_ = std::max(host_seq_taken_, m->env().seq);
  if (m->kind() == transport::msg_kind::error && m->env().sender == gpu_host_node) {
    // The GPU host failed this device over (it was silent, partitioned or presumed dead):
    // its shards are served by others now. Fenced: it leaves rather than serve as their
    // old owner (README, "Losing a device").
    cluster_log().warn("node={} event=fenced reason=\"{}\"", node_, m->error().getMessage().cStr());
    self_->quit();
    return;
  }
  if (const uint64_t rid = request_of(*m); rid && released_.count(rid)) return;
  switch (m->kind()) {
    case transport::msg_kind::prefill_write:
    case transport::msg_kind::token_append: on_write(std::move(*m)); break;
    case transport::msg_kind::recall_request: serve_recall(*m); break;
    case transport::msg_kind::query: on_query(std::move(*m)); break;
    default: break;
  }
}

void pnm_device_state::on_peer_down(uint32_t peer) {
  cluster_log().warn("node={} event=peer_down peer={}", node_, peer);
}

void pnm_device_state::on_control(const std::string& bytes) {
  auto m = control::decode(bytes);
  if (!m) return;
  if (m->kind() == control::msg_kind::SHUTDOWN) self_->quit();
  // A finished request (open workloads) or one lost with another device: its memory is
  // free for the next, and its late messages are dropped.
  if (m->kind() == control::msg_kind::RELEASE) {
    const uint64_t rid = m->release().getRequestId();
    engine_->release(rid);
    released_.insert(rid);
    // Held writes and queries of it will never apply.
    auto of = [&](const transport::received& x) { return request_of(x) == rid; };
    for (auto* q : {&deferred_, &early_writes_, &early_appends_}) q->erase(std::remove_if(q->begin(), q->end(), of), q->end());
  }
}

}  // namespace pnmkv::actors
