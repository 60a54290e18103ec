// The PNM device actor (see pnm_device.hpp). The device_engine does the work; the actor
// decodes messages, keeps early arrivals until they can apply, and charges virtual time.
#include "actors/pnm_device.hpp"

#include "schedulers/step_timeline.hpp"  // device_service_cost

#include <spdlog/spdlog.h>

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
      [self](member_atom, const std::string& bytes) { self->state.on_membership(bytes); },
      [self](wire_atom, std::vector<uint8_t>& bytes) { self->state.on_wire(bytes); },
      [self](peer_down_atom, uint32_t peer) { self->state.on_peer_down(peer); },
      [self](ctl_atom, const std::string& bytes) { self->state.on_control(bytes); },
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

template <class Body>
void pnm_device_state::send_to(uint32_t dest, double vt_ns, Body body) {
  transport::envelope env;
  env.sender = node_;
  env.seq = ++seq_;
  env.vtime_ns = vt_ns;
  auto bytes = transport::encode(env, std::move(body));
  auto s = fab_->send(dest, std::move(bytes));
  if (!s) cluster_log().warn("node={} event=send_failed dest={} reason=\"{}\"", node_, dest, s.to_string());
}

void pnm_device_state::send_error(const transport::envelope& env, const status& s) {
  send_to(env.sender, engine_->clock_ns(), transport::error_msg{s.code(), s.message(), env.seq});
}

bool pnm_device_state::ready(const transport::query_msg& q) const {
  auto sh = shards_.find(q.request_id);
  if (sh == shards_.end()) return true;  // the engine will refuse it with a clear error
  const uint32_t ps = setup_->device.shape.page_size_tokens;
  const uint64_t want = sh->second.tokens_held_at(q.sequence_tokens, ps);
  for (uint32_t h = q.kv_head0; h < q.kv_head1; ++h) {
    const kv_head_store* s = engine_->find(q.request_id, q.layer, h);
    if (s && s->token_count() < want) return false;
  }
  return true;
}

void pnm_device_state::serve(const transport::envelope& env, const transport::query_msg& q) {
  std::vector<uint64_t> listed(q.listed_pages.begin(), q.listed_pages.end());
  std::vector<uint64_t> excluded(q.excluded_pages.begin(), q.excluded_pages.end());
  for (uint32_t h = q.kv_head0; h < q.kv_head1; ++h) serve_head(env, q, h, listed, excluded);
}

void pnm_device_state::serve_head(const transport::envelope& env, const transport::query_msg& q,
                                  uint32_t h, const std::vector<uint64_t>& listed,
                                  const std::vector<uint64_t>& excluded) {
  const uint32_t d = setup_->model.head_dim;
  device_query dq;
  dq.request_id = q.request_id;
  dq.step = q.step;
  dq.layer = q.layer;
  dq.kv_head = h;
  dq.group = q.group;
  dq.q = q.q.data() + size_t(h - q.kv_head0) * q.group * d;
  dq.sequence_tokens = q.sequence_tokens;
  dq.budget_pages = q.budget_pages;
  dq.listed_pages = listed.data();
  dq.n_listed = listed.size();
  dq.excluded_pages = excluded.data();
  dq.n_excluded = excluded.size();
  dq.round = q.round;
  device_answer ans;
  auto s = engine_->query(dq, ans);
  if (!s) {
    cluster_log().warn("node={} event=query_failed request={} reason=\"{}\"", node_, q.request_id,
                       s.to_string());
    send_error(env, s);
    return;
  }
  double done = engine_->clock_ns();
  if (q.round != selection_round::dense && !passive_) {
    const double arrival = env.vtime_ns + costs_->link_latency_ns();
    done = engine_->charge(
        arrival, device_service_cost(*costs_, device_op::pnm, double(ans.bytes_scanned), ans.flops).time_ns);
  }
  if (q.round == selection_round::exact_candidates) send_candidates(env, q, h, ans, done);
  else send_partial(env, q, h, ans, done);
}

void pnm_device_state::send_candidates(const transport::envelope& env, const transport::query_msg& q,
                                       uint32_t h, const device_answer& ans, double done_ns) {
  transport::candidates_msg c;
  c.request_id = q.request_id;
  c.step = q.step;
  c.layer = q.layer;
  c.kv_head = h;
  c.shard_id = q.shard_id;
  for (size_t i = 0; i < ans.pages.size(); ++i) {
    c.page_ids.push_back(static_cast<uint32_t>(ans.pages[i]));
    c.scores.push_back(ans.candidate_forced[i] ? std::numeric_limits<float>::infinity()
                                               : ans.candidate_scores[i]);
  }
  c.bytes_scanned = ans.bytes_scanned;
  c.flops = ans.flops;
  send_to(env.sender, done_ns, std::move(c));
}

void pnm_device_state::send_partial(const transport::envelope& env, const transport::query_msg& q,
                                    uint32_t h, device_answer& ans, double done_ns) {
  transport::partial_msg p;
  p.request_id = q.request_id;
  p.step = q.step;
  p.layer = q.layer;
  p.kv_head = h;
  p.shard_id = q.shard_id;
  p.group = q.group;
  p.head_dim = setup_->model.head_dim;
  p.o = std::move(ans.part.o);
  p.lse = std::move(ans.part.lse);
  p.pages_selected = static_cast<uint32_t>(ans.pages.size());
  p.bytes_scanned = ans.bytes_scanned;
  p.round = q.round;
  p.flops = ans.flops;
  p.device_bytes_held = engine_->bytes_held();
  if (q.round == selection_round::dense) {
    p.pages_selected = 0;  // every page: the list would only repeat the placement
  } else {
    p.page_ids.reserve(ans.pages.size());
    for (uint64_t g : ans.pages) p.page_ids.push_back(static_cast<uint32_t>(g));
  }
  send_to(env.sender, done_ns, std::move(p));
}

void pnm_device_state::serve_recall(const transport::envelope& env,
                                    const transport::recall_request_msg& rr) {
  std::vector<uint64_t> pages(rr.page_ids.begin(), rr.page_ids.end());
  std::vector<uint32_t> rows;
  std::vector<bf16> k, v;
  auto s = engine_->read_pages(rr.request_id, rr.layer, rr.kv_head, pages, rows, k, v);
  if (!s) {
    cluster_log().warn("node={} event=recall_failed reason=\"{}\"", node_, s.to_string());
    send_error(env, s);
    return;
  }
  const double bytes = double(k.size() + v.size()) * sizeof(bf16);
  const double arrival = env.vtime_ns + costs_->link_latency_ns();
  const double cost = device_service_cost(*costs_, passive_ ? device_op::expander : device_op::pnm, bytes).time_ns;
  const double done = engine_->charge(arrival, cost);
  transport::recall_reply_msg out;
  out.request_id = rr.request_id;
  out.step = rr.step;
  out.layer = rr.layer;
  out.kv_head = rr.kv_head;
  out.page_tokens = setup_->device.shape.page_size_tokens;
  out.head_dim = setup_->model.head_dim;
  const size_t d = setup_->model.head_dim;
  size_t off = 0;
  for (size_t i = 0; i < pages.size(); ++i) {
    transport::recalled_page pg;
    pg.page_id = static_cast<uint32_t>(pages[i]);
    pg.n_tokens = rows[i];
    pg.k.assign(k.begin() + off, k.begin() + off + rows[i] * d);
    pg.v.assign(v.begin() + off, v.begin() + off + rows[i] * d);
    off += rows[i] * d;
    out.pages.push_back(std::move(pg));
  }
  send_to(env.sender, done, std::move(out));
}

void pnm_device_state::drain_deferred() {
  for (size_t n = deferred_.size(); n > 0; --n) {
    auto item = std::move(deferred_.front());
    deferred_.pop_front();
    if (ready(item.second))
      serve(item.first, item.second);
    else
      deferred_.push_back(std::move(item));
  }
}

bool pnm_device_state::try_write(const transport::envelope& e, const transport::prefill_write_msg& w) {
  auto s = engine_->write(w.request_id, w.layer, w.kv_head, w.position0, w.k.data(), w.v.data(),
                          w.n_tokens);
  if (!s && s.code() == errc::not_ready) return false;
  if (!s) {
    cluster_log().warn("node={} event=write_failed reason=\"{}\"", node_, s.to_string());
    send_error(e, s);
    return true;
  }
  // End-to-end flow control: the host keeps a bounded window of unacknowledged writes.
  send_to(e.sender, engine_->clock_ns(),
          transport::write_ack_msg{w.request_id, w.layer, w.kv_head, w.position0, w.n_tokens, true});
  return true;
}

bool pnm_device_state::try_append(const transport::token_append_msg& a) {
  bool applied = true;
  for (uint32_t h = 0; h < a.n_heads; ++h) {
    const size_t off = size_t(h) * a.head_dim;
    auto s = engine_->write(a.request_id, a.layer, a.kv_head0 + h, a.position, a.k.data() + off,
                            a.v.data() + off, 1);
    if (!s && s.code() == errc::not_ready) applied = false;  // heads done are not redone
    else if (!s) cluster_log().warn("node={} event=append_failed reason=\"{}\"", node_, s.to_string());
  }
  return applied;
}

void pnm_device_state::drain_early() {
  for (bool moved = true; moved;) {
    moved = false;
    for (size_t n = early_writes_.size(); n > 0; --n) {
      auto item = std::move(early_writes_.front());
      early_writes_.pop_front();
      if (try_write(item.first, item.second)) moved = true;
      else early_writes_.push_back(std::move(item));
    }
    for (size_t n = early_appends_.size(); n > 0; --n) {
      auto item = std::move(early_appends_.front());
      early_appends_.pop_front();
      if (try_append(item)) moved = true;
      else early_appends_.push_back(std::move(item));
    }
  }
}

void pnm_device_state::on_write(const transport::envelope& env, transport::prefill_write_msg& w) {
  if (!try_write(env, w)) {
    if (early_writes_.size() < early_max) early_writes_.emplace_back(env, std::move(w));
    else cluster_log().warn("node={} event=write_dropped reason=\"early-write queue full\"", node_);
    return;
  }
  drain_early();
  drain_deferred();
}

void pnm_device_state::on_append(transport::token_append_msg& a) {
  if (!try_append(a)) {
    if (early_appends_.size() < early_max) early_appends_.push_back(std::move(a));
    else cluster_log().warn("node={} event=append_dropped reason=\"early-append queue full\"", node_);
    return;
  }
  drain_early();
  drain_deferred();
}

void pnm_device_state::on_query(const transport::envelope& env, transport::query_msg& q) {
  if (ready(q))
    serve(env, q);
  else if (deferred_.size() < early_max)
    deferred_.emplace_back(env, std::move(q));
  else
    cluster_log().warn("node={} event=query_dropped reason=\"deferred queue full\"", node_);
}

void pnm_device_state::on_join(const std::string& bytes) {
  on_join_bytes(self_, *setup_, coordinator_, node_, transport::node_role::pnm_device, fab_->address(),
                bytes);
}

void pnm_device_state::on_membership(const std::string& bytes) {
  auto m = transport::decode(bytes.data(), bytes.size(), limits_);
  if (!m || !std::holds_alternative<transport::membership_msg>(m->body)) {
    cluster_log().warn("node={} event=bad_membership", node_);
    return;
  }
  const auto& mm = std::get<transport::membership_msg>(m->body);
  for (const auto& mem : mm.members)
    if (mem.role == transport::node_role::gpu_host && !mem.worker_address.empty() &&
        connected_.insert(mem.node).second) {
      auto s = fab_->connect(mem.node, mem.worker_address);
      if (!s)
        cluster_log().warn("node={} event=connect_failed peer={} reason=\"{}\"", node_, mem.node, s.to_string());
    }
  for (const auto& pl : mm.placements) {
    request_placement rp = placement_from_wire(pl);
    for (const auto& s : rp.shards) {
      bool mine = s.device_id == node_;
      for (uint32_t r : s.replica_device_ids) mine = mine || r == node_;
      if (!mine) continue;
      auto added = engine_->add_shard(rp.request_id, s);
      if (added) shards_[rp.request_id] = s;
      self_->send(coordinator_, ctl_atom::value,
                  ctl(node_, control::placement_ack_msg{node_, rp.request_id, bool(added),
                                                        added ? "" : added.message()}));
    }
  }
}

void pnm_device_state::on_wire(std::vector<uint8_t>& bytes) {
  auto m = transport::decode(bytes.data(), bytes.size(), limits_);
  if (!m) return;  // counted and logged once per reason by the decoder (wire_stats)
  const transport::envelope env = m->env;
  if (auto* w = std::get_if<transport::prefill_write_msg>(&m->body)) on_write(env, *w);
  else if (auto* a = std::get_if<transport::token_append_msg>(&m->body)) on_append(*a);
  else if (auto* rr = std::get_if<transport::recall_request_msg>(&m->body)) serve_recall(env, *rr);
  else if (auto* q = std::get_if<transport::query_msg>(&m->body)) on_query(env, *q);
}

void pnm_device_state::on_peer_down(uint32_t peer) {
  cluster_log().warn("node={} event=peer_down peer={}", node_, peer);
}

void pnm_device_state::on_control(const std::string& bytes) {
  auto m = control::decode(bytes);
  if (!m) return;
  if (std::holds_alternative<control::shutdown_msg>(m->body)) self_->quit();
  if (auto* rl = std::get_if<control::release_msg>(&m->body)) {
    // A finished request (open workloads): its memory is free for the next.
    engine_->release(rl->request_id);
    shards_.erase(rl->request_id);
  }
}

}  // namespace pnmkv::actors
