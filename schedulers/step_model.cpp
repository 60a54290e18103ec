// The per-step composition (see step_model.hpp). Each layer is a small discrete-event
// pass: messages leave each host link in issue order, devices serve in arrival order,
// replies return over the inbound links in completion order.
#include "schedulers/step_model.hpp"

#include <algorithm>
#include <cmath>

#include "core/check.hpp"
#include "model/work_sizes.hpp"

namespace pnmkv {

uint64_t steady_set_pages(const step_setup& s) {
  if (s.mode != run_mode::png_kv) return 0;
  const uint64_t budget_pages = s.budget_pages();
  return std::min<uint64_t>(
      s.steady_cap_pages(),
      std::max<uint64_t>(work::pngkv_budget_split(budget_pages, s.cal.steady_hit_fraction.value).gpu_pages,
                         uint64_t(std::llround(s.cal.steady_set_fraction.value * double(budget_pages)))));
}

namespace {
void add_wait(const layer_timeline::wait_split& w, step_breakdown& crit) {
  crit.device_scan_ns += w.device_ns;
  crit.link_ns += w.link_ns;
  crit.queueing_ns += w.queueing_ns;
}

// png-kv: a request's steady pages per (layer, KV head) once it holds `total_pages`: the
// set, but only full pages other than the always-kept first and last.
uint64_t request_steady_pages(uint64_t set_pages, uint64_t total_pages) {
  return std::min<uint64_t>(set_pages, total_pages > 2 ? total_pages - 2 : 0);
}

// How `pages` selected pages fall on `s` shards: the busiest shard takes `spread` (the
// calibration's selection_spread, >= 1) times the even share, the others share the rest
// evenly. The busiest rotates with the request and the head so that no device is always it.
void spread_over_shards(uint64_t pages, uint32_t s, uint32_t req_index, uint32_t kv_head, double spread,
                        std::vector<uint64_t>& pages_on) {
  pages_on.assign(s, 0);
  const uint32_t hot = (req_index + kv_head) % s;
  const uint64_t hot_pages =
      s == 1 ? pages : std::min<uint64_t>(pages, uint64_t(std::ceil(double(pages) / s * spread)));
  pages_on[hot] = hot_pages;
  for (uint32_t k = 0; k + 1 < s; ++k)
    pages_on[(hot + 1 + k) % s] = work::local_budget_pages(pages - hot_pages, s - 1, k);
}
}  // namespace

step_breakdown& step_breakdown::operator+=(const step_breakdown& o) {
  gpu_dense_ns += o.gpu_dense_ns, allreduce_ns += o.allreduce_ns, gpu_attention_ns += o.gpu_attention_ns;
  link_ns += o.link_ns, device_scan_ns += o.device_scan_ns, queueing_ns += o.queueing_ns;
  merge_ns += o.merge_ns, lm_head_ns += o.lm_head_ns, copy_ns += o.copy_ns;
  return *this;
}

step_breakdown step_breakdown::scaled(double f) const {
  step_breakdown b = *this;
  for (double* x : {&b.gpu_dense_ns, &b.allreduce_ns, &b.gpu_attention_ns, &b.link_ns,
                    &b.device_scan_ns, &b.queueing_ns, &b.merge_ns, &b.lm_head_ns, &b.copy_ns})
    *x *= f;
  return b;
}

step_energy& step_energy::operator+=(const step_energy& o) {
  gpu_dense_j += o.gpu_dense_j, allreduce_j += o.allreduce_j, lm_head_j += o.lm_head_j;
  gpu_attention_j += o.gpu_attention_j, merge_j += o.merge_j, device_j += o.device_j;
  link_j += o.link_j, hbm_write_j += o.hbm_write_j, gpu_hbm_bytes += o.gpu_hbm_bytes;
  return *this;
}

step_energy step_energy::scaled(double f) const {
  step_energy e = *this;
  for (double* x : {&e.gpu_dense_j, &e.allreduce_j, &e.lm_head_j, &e.gpu_attention_j,
                    &e.merge_j, &e.device_j, &e.link_j, &e.hbm_write_j, &e.gpu_hbm_bytes})
    *x *= f;
  return e;
}

step_model::step_model(std::shared_ptr<const step_setup> setup)
    : s_(std::move(setup)), c_(*s_->costs), tl_(c_, s_->host_links, s_->devices), device_energy_j_(s_->devices, 0) {
  PNMKV_CHECK(s_->micro_batches >= 1, "micro_batches=", s_->micro_batches);
  PNMKV_CHECK(s_->micro_batches == 1 || s_->mode == run_mode::pnm_kv || s_->mode == run_mode::png_kv,
              "micro_batches=", s_->micro_batches, " needs pnm-kv or png-kv");
  PNMKV_CHECK(!s_->lookahead || (s_->mode == run_mode::pnm_kv && s_->micro_batches == 1),
              "lookahead needs pnm-kv and one micro-batch");
}

void step_model::set_trace(timeline_trace* trace) {
  tr_ = trace;
  tl_.set_trace(trace);
  if (tr_) tr_->set_gpu_ranks(s_->attention_ranks);
}

// The GPU's dense layer and its all-reduces, before the layer's device traffic (t0).
static void trace_dense(timeline_trace* tr, const op_cost& dense, const op_cost& ar, trace_name device_work) {
  if (!tr) return;
  tr->gpu(trace_name::dense, 0, dense.time_ns);
  tr->gpu(trace_name::allreduce, dense.time_ns, 2.0 * ar.time_ns);
  tr->set_device_name(device_work);
}

uint32_t step_model::link_of(uint32_t kv_head, uint32_t shard_j, uint32_t shards) const {
  return host_link_of(s_->host_links, s_->model.kv_heads, kv_head, shard_j, shards);
}

void step_model::close_layer(layer_result& lr, double off_timeline_link_bytes) {
  for (double& e : device_energy_j_) {
    lr.device_energy_j_max = std::max(lr.device_energy_j_max, e);
    e = 0;
  }
  lr.link_bytes = tl_.link_bytes() + off_timeline_link_bytes;
  lr.device_busy_ns_max = tl_.device_busy_max_ns();
  if (s_->charge_link_energy) lr.energy.link_j = c_.link_transfer(lr.link_bytes).energy_j;
  lr.link_busy_ns_max = tl_.link_busy_max_ns();
}

// Prompt chunks: per KV head, one write per run of pages on one shard, to the shard and
// each replica, after the layer's decode traffic on the link (as the host engine sends them).
void step_model::send_prefill(const std::vector<const prefill_piece*>& prefill, layer_result& lr,
                              double& last_arrival_ns) {
  const model_shape& m = s_->model;
  const uint32_t ps = s_->page_size_tokens;
  const device_op op = s_->mode == run_mode::baseline ? device_op::expander : device_op::pnm;
  if (tr_) tr_->set_send_name(trace_name::prefill_write);
  for (const prefill_piece* p : prefill) {
    const request_placement& pl = *p->placement;
    const uint32_t s = pl.sequence_shards;
    const uint64_t to = p->position + p->tokens;
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      for (uint64_t from = p->position; from < to;) {
        const uint64_t end = write_run_end(pl, h, from, to, ps);
        const shard_placement& sh = pl.shards[size_t(pl.shard_of(h, from / ps))];
        const uint32_t copies = 1 + uint32_t(sh.replica_device_ids.size());
        const uint32_t l = link_of(h, sh.sequence_index, s);
        for (uint32_t k = 0; k < copies; ++k)
          last_arrival_ns = std::max(last_arrival_ns,
                                     tl_.send(l, tl_.out_free_ns(l), work::prefill_wire_bytes(m, end - from)));
        const double kv_j = device_service_cost(c_, op, c_.kv_bytes(double(end - from))).energy_j;
        charge_device(sh.device_id, kv_j, lr);
        for (uint32_t d : sh.replica_device_ids) charge_device(d, kv_j, lr);
        from = end;
      }
    }
  }
  if (tr_) tr_->set_send_name(trace_name::send);
}

// pnm-kv / png-kv, round one of one request: each KV head's append to the shard holding
// the last page (and its replicas), one query per shard, the GPU's steady attention and merge.
void step_model::pnm_round_a(const step_request& r, uint32_t ri, pnm_layer& L, layer_result& lr) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads, ps = S.page_size_tokens, group = m.gqa_group();
  const uint64_t append_bytes = work::append_wire_bytes(m);
  const request_placement& pl = *r.placement;
  const uint32_t s = pl.sequence_shards;
  const uint32_t heads_per_group = H / pl.head_groups;
  const uint64_t seq_after = r.seq_tokens + 1;
  const uint64_t last_page = (seq_after - 1) / ps;
  const int idx0 = pl.shard_of(0, last_page);
  PNMKV_CHECK(idx0 >= 0, "no shard holds the last page of request ", r.id);
  const uint32_t j_last = pl.shards[size_t(idx0)].sequence_index;
  const uint64_t total_pages = (seq_after + ps - 1) / ps;
  // Pages copied in step t are attended from step t + 1: none yet on the first decode step.
  const uint64_t steady_r =
      L.png && !r.first_decode_step ? request_steady_pages(L.steady_pages, total_pages) : 0;
  const uint64_t gpu_pages_r = std::min<uint64_t>(L.split_gpu_pages, steady_r);
  const uint64_t device_budget = L.budget_pages - gpu_pages_r;
  const bool two_rounds =
      two_round_selection(S.mode, S.exact_cross_shard ? cross_shard_selection::exact : cross_shard_selection::local, s);
  // Lookahead selection: the pages selected with the last step's query (its first decode
  // step has none: it selects as without lookahead).
  const bool ahead = S.lookahead && !r.first_decode_step;
  for (uint32_t h = 0; h < H; ++h) {
    const uint32_t g = h / heads_per_group;
    const shard_placement& holder = pl.shards[size_t(g) * s + j_last];
    const uint32_t l_app = link_of(h, j_last, s);
    for (size_t k = 0; k < 1 + holder.replica_device_ids.size(); ++k) tl_.send(l_app, L.t0, append_bytes);
    if (ahead) {
      pnm_lookahead_head(r, ri, h, device_budget, two_rounds, L, lr);
      continue;
    }
    for (uint32_t j = 0; j < s; ++j) {
      const shard_placement& sh = pl.shards[size_t(g) * s + j];
      const uint64_t held = sh.tokens_held_at(seq_after, ps);
      // Local: the shard's share of the budget, selected and attended in one round.
      // Exact, round a: score every page, offer the best `device_budget` as candidates.
      const uint64_t bj = two_rounds ? device_budget : work::local_budget_pages(device_budget, s, j);
      const work::shard_selection sel = work::select_on_shard(held, ps, bj, j == j_last);
      work::query_work w = work::pnm_query_work(c_, sel, S.heads_scored, S.summary_elem_bytes, S.search);
      uint64_t reply = work::partial_wire_bytes(m, S.wire, sel.pages_selected);
      if (two_rounds) {  // the search only; candidates (page id and score) go back
        w = work::search_query_work(c_, double(sel.pages_held), double(sel.pages_selected), S.heads_scored,
                                    S.summary_elem_bytes, S.search);
        reply = work::candidates_wire_bytes(sel.pages_selected);
      }
      const uint64_t excluded = L.png ? work::local_budget_pages(steady_r, s, j) : 0;
      const op_cost cost = device_service_cost(c_, device_op::pnm, w.bytes, w.flops, w.int_ops);
      charge_device(sh.device_id, cost.energy_j, lr);
      lr.device_bytes += w.bytes;
      const uint32_t l = link_of(h, j, s);
      const double arrival = tl_.send(l, L.t0, work::query_wire_bytes(m, S.wire, excluded));
      tl_.expect(arrival, sh.device_id, l, cost.time_ns, reply);
    }
    if (two_rounds) L.round_b.push_back({&r, h, device_budget, steady_r, ri});
    if (L.png && gpu_pages_r > 0) {
      const work::query_work gw = work::gpu_attend_work(c_, double(gpu_pages_r * ps));
      const op_cost ga = c_.gpu_attention(gw.bytes, gw.flops);
      L.gpu_attn_ns += ga.time_ns;
      lr.energy.add_gpu(&step_energy::gpu_attention_j, ga);
    }
    const op_cost mc = c_.gpu_merge(s + (L.png ? 1 : 0), group);
    L.merge_ns += mc.time_ns;
    lr.energy.add_gpu(&step_energy::merge_j, mc);
  }
}

// Lookahead selection, one (request, KV head), as the host engine issues it: each shard
// attends its pages of the selection the last step's query made, plus the page the new token
// started, if it started one (the step's path): local, its share of the budget of the pages
// it held then; exact, the global top pages, spread over the shards as in round two. Beside
// it each shard searches its pages with this step's query for the next step (exact: offering
// its best `device_budget` pages as candidates; local: its share), in its idle time: the
// search's bytes, energy and link bytes (its candidates, and its own query where the shard
// attends nothing) are charged, its time goes to the device's background (layer_pnm's floor),
// not to its clock.
void step_model::pnm_lookahead_head(const step_request& r, uint32_t ri, uint32_t h, uint64_t device_budget,
                                    bool two_rounds, pnm_layer& L, layer_result& lr) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t ps = S.page_size_tokens, group = m.gqa_group();
  const request_placement& pl = *r.placement;
  const uint32_t s = pl.sequence_shards, g = h / (m.kv_heads / pl.head_groups);
  const uint64_t seq_before = r.seq_tokens, seq_after = r.seq_tokens + 1;
  const uint64_t last_page = (seq_after - 1) / ps, rest = seq_after % ps;
  const bool new_page = seq_before % ps == 0;  // the new token starts a page
  std::vector<uint64_t> pages_on(s, 0);
  if (two_rounds)
    spread_over_shards(std::min(device_budget, (seq_before + ps - 1) / ps), s, ri, h, S.cal.selection_spread.value,
                       pages_on);
  for (uint32_t j = 0; j < s; ++j) {
    const shard_placement& sh = pl.shards[size_t(g) * s + j];
    const uint64_t held = sh.tokens_held_at(seq_after, ps);
    const uint64_t pages_before = (sh.tokens_held_at(seq_before, ps) + ps - 1) / ps;
    const uint32_t l = link_of(h, j, s);
    const uint64_t bj = two_rounds ? device_budget : work::local_budget_pages(device_budget, s, j);
    const bool holds_last = sh.holds_page(last_page);
    // The step's path: attend the listed pages (the last page holds `rest` tokens).
    const uint64_t listed = (two_rounds ? pages_on[j] : std::min(bj, pages_before)) + (new_page && holds_last ? 1 : 0);
    if (listed > 0) {
      const double tokens = double(listed * ps - (holds_last && rest != 0 ? ps - rest : 0));
      const double bytes = c_.kv_bytes(tokens);
      const op_cost cost = device_service_cost(c_, device_op::pnm, bytes, c_.attend_flops(tokens, group));
      charge_device(sh.device_id, cost.energy_j, lr);
      lr.device_bytes += bytes;
      const double arrival = tl_.send(l, L.t0, work::query_wire_bytes(m, S.wire, listed));
      tl_.expect(arrival, sh.device_id, l, cost.time_ns, work::partial_wire_bytes(m, S.wire, listed));
    }
    // Off the path: the search for the next step, asked by the attend query (a query of its
    // own where the shard attends nothing); its candidates come back in a reply of their own.
    const work::shard_selection sel = work::select_on_shard(held, ps, bj, holds_last);
    const work::query_work w = work::search_query_work(c_, double(sel.pages_held), double(sel.pages_selected),
                                                       S.heads_scored, S.summary_elem_bytes, S.search);
    const op_cost cost = device_service_cost(c_, device_op::pnm, w.bytes, w.flops, w.int_ops);
    charge_device(sh.device_id, cost.energy_j, lr);
    lr.device_bytes += w.bytes;
    background_ns_[sh.device_id] += cost.time_ns;
    L.background_link_bytes += double((listed > 0 ? 0 : work::query_wire_bytes(m, S.wire)) +
                                      work::candidates_wire_bytes(sel.pages_selected));
  }
  const op_cost mc = c_.gpu_merge(s, group);
  L.merge_ns += mc.time_ns;
  lr.energy.add_gpu(&step_energy::merge_j, mc);
}

// Exact selection, round two: the GPU has the global top pages; each shard attends those it
// holds. How they fall on the shards: the busiest takes `selection_spread` × the even share.
void step_model::pnm_round_b(const pnm_layer& L, double tb, layer_result& lr) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads, ps = S.page_size_tokens, group = m.gqa_group();
  const double spread = S.cal.selection_spread.value;
  std::vector<uint64_t> pages_on;
  for (const round_b_head& rb : L.round_b) {
    const request_placement& pl = *rb.r->placement;
    const uint32_t s = pl.sequence_shards, g = rb.kv_head / (H / pl.head_groups);
    const uint64_t seq_after = rb.r->seq_tokens + 1;
    const uint64_t candidates_tokens = seq_after > rb.steady * ps ? seq_after - rb.steady * ps : 1;
    const work::shard_selection sel = work::select_on_shard(candidates_tokens, ps, rb.device_budget, true);
    if (sel.pages_selected == 0) continue;
    spread_over_shards(sel.pages_selected, s, rb.req_index, rb.kv_head, spread, pages_on);
    const double tokens_per_page = double(sel.tokens_selected) / double(sel.pages_selected);
    for (uint32_t j = 0; j < s; ++j) {
      if (pages_on[j] == 0) continue;
      const shard_placement& sh = pl.shards[size_t(g) * s + j];
      const double tokens_j = std::round(tokens_per_page * double(pages_on[j]));
      const double bytes = c_.kv_bytes(tokens_j);
      const op_cost cost = device_service_cost(c_, device_op::pnm, bytes, c_.attend_flops(tokens_j, group));
      charge_device(sh.device_id, cost.energy_j, lr);
      lr.device_bytes += bytes;
      const uint32_t l = link_of(rb.kv_head, j, s);
      const double arrival = tl_.send(l, tb, work::query_wire_bytes(m, S.wire, pages_on[j]));
      tl_.expect(arrival, sh.device_id, l, cost.time_ns, work::partial_wire_bytes(m, S.wire, pages_on[j]));
    }
  }
}

step_model::layer_result step_model::layer_pnm(const std::vector<const step_request*>& reqs,
                                               const std::vector<const prefill_piece*>& prefill) {
  const step_setup& S = *s_;
  layer_result lr;

  const auto [dense, ar] = dense_layer(reqs.size(), prefill);
  pnm_layer L;
  L.t0 = layer_t0(0, dense, ar);
  const double t0 = L.t0;
  tl_.begin(t0);
  trace_dense(tr_, dense, ar, trace_name::scan);

  L.png = S.mode == run_mode::png_kv;
  L.budget_pages = S.budget_pages();
  const work::pngkv_split split =
      L.png ? work::pngkv_budget_split(L.budget_pages, S.cal.steady_hit_fraction.value)
            : work::pngkv_split{0, L.budget_pages};
  L.split_gpu_pages = L.png ? std::min<uint64_t>(split.gpu_pages, S.steady_cap_pages()) : 0;
  L.steady_pages = steady_set_pages(S);
  if (S.lookahead) background_ns_.assign(S.devices, 0);
  for (uint32_t ri = 0; ri < reqs.size(); ++ri) pnm_round_a(*reqs[ri], ri, L, lr);
  tl_.serve();
  double last_reply = tl_.receive();
  // The GPU's attention ranks share the per-head work.
  const double A = L.gpu_attn_ns / S.attention_ranks;
  const double M = L.merge_ns / S.attention_ranks;
  double wait = std::max(0.0, last_reply - t0);
  bool gpu_bound = A >= wait;

  if (!L.round_b.empty()) {
    const double tb = second_round_start(t0, wait, A);
    tl_.clear_items();
    pnm_round_b(L, tb, lr);
    tl_.serve();
    if (!tl_.items().empty()) last_reply = tl_.receive();
    wait = std::max(0.0, last_reply - t0);
    gpu_bound = false;
  }
  double prefill_last = t0;
  send_prefill(prefill, lr, prefill_last);

  const layer_end e = end_of_layer(t0, wait, A, prefill_last, M, tr_);
  const double W = std::max(wait, A);
  lr.gpu_overlap_ns = A;
  lr.merge_ns = M;
  lr.device_phase_ns = std::max(wait, prefill_last - t0);
  lr.device_split = tl_.attribute_wait(lr.device_phase_ns);
  const double prefill_extra = e.prefill_extra_ns;
  lr.time_ns = e.time_ns;
  lr.window_ns = t0;
  lr.crit.gpu_dense_ns = dense.time_ns;
  lr.crit.allreduce_ns = 2.0 * ar.time_ns;
  if (gpu_bound) {
    lr.crit.gpu_attention_ns = A;
  } else {
    // The GPU's steady attention overlapped the first round; what it did not cover is wait.
    add_wait(tl_.attribute_wait(W), lr.crit);
  }
  lr.crit.link_ns += prefill_extra;
  lr.crit.merge_ns = M;
  lr.energy.add_gpu(&step_energy::gpu_dense_j, dense);
  lr.energy.allreduce_j = 2.0 * ar.energy_j;
  close_layer(lr, L.background_link_bytes);
  if (S.lookahead) {
    // The searches ran in the devices' idle time; the busiest device's total work bounds the
    // layer from below (what it adds is the devices' time on the step's path).
    double busiest = 0;
    for (uint32_t d = 0; d < S.devices; ++d) busiest = std::max(busiest, tl_.device_busy_ns(d) + background_ns_[d]);
    lr.device_busy_ns_max = busiest;  // the device's whole work, its searches included
    const double excess = lookahead_excess_ns(lr.time_ns, busiest);
    lr.time_ns += excess;
    lr.crit.device_scan_ns += excess;
  }
  return lr;
}

// Baseline, phase one: the new token's appends, then (summaries not resident in HBM) the
// summary reads. One slot per (request, KV head); true when any summary crosses the link.
bool step_model::baseline_appends_and_summaries(const std::vector<const step_request*>& reqs, double t0,
                                                 std::vector<baseline_slot>& slots, layer_result& lr) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads, ps = S.page_size_tokens, ranks = S.attention_ranks;
  bool any_link_summaries = false;
  const uint64_t append_bytes = work::append_wire_bytes(m);
  for (uint32_t ri = 0; ri < reqs.size(); ++ri) {
    const step_request* r = reqs[ri];
    const request_placement& pl = *r->placement;
    const uint32_t s = pl.sequence_shards, heads_per_group = H / pl.head_groups;
    const uint64_t seq_after = r->seq_tokens + 1;
    const int idx0 = pl.shard_of(0, (seq_after - 1) / ps);
    PNMKV_CHECK(idx0 >= 0, "no shard holds the last page of request ", r->id);
    const uint32_t j_last = pl.shards[size_t(idx0)].sequence_index;
    const uint64_t total_pages = (seq_after + ps - 1) / ps;
    for (uint32_t h = 0; h < H; ++h) {
      const uint32_t g = h / heads_per_group;
      const shard_placement& holder = pl.shards[size_t(g) * s + j_last];
      for (size_t k = 0; k < 1 + holder.replica_device_ids.size(); ++k)
        tl_.send(link_of(h, j_last, s), t0, append_bytes);
      const work::query_work sw = work::gpu_score_work(c_, total_pages, S.heads_scored, S.summary_elem_bytes);
      const op_cost sc = c_.gpu_attention(r->summaries_resident ? sw.bytes : 0, sw.flops);
      lr.energy.add_gpu(&step_energy::gpu_attention_j, sc);
      const uint32_t slot_index = uint32_t(slots.size());
      slots.push_back({uint32_t(uint64_t(h) * ranks / H), ri, h, t0, sc.time_ns, 0});
      if (r->summaries_resident) continue;
      any_link_summaries = true;
      for (uint32_t j = 0; j < s; ++j) {
        const shard_placement& sh = pl.shards[size_t(g) * s + j];
        const uint64_t pages_j = (sh.tokens_held_at(seq_after, ps) + ps - 1) / ps;
        const double bytes = double(pages_j) * c_.summary_bytes_per_page(S.summary_elem_bytes);
        const op_cost rd = device_service_cost(c_, device_op::expander, bytes);
        charge_device(sh.device_id, rd.energy_j, lr);
        lr.device_bytes += bytes;
        lr.energy.add_gpu(&step_energy::hbm_write_j, c_.gpu_hbm_write(bytes));
        const uint32_t l = link_of(h, j, s);
        const double arrival = tl_.send(l, t0, work::header_bytes);
        tl_.expect(arrival, sh.device_id, l, rd.time_ns,
                   work::summary_read_wire_bytes(c_, pages_j, S.summary_elem_bytes), slot_index);
      }
    }
  }
  return any_link_summaries;
}

// Baseline, the recalls: issued as each head's selection is known (slots in `order`), the
// busiest shard taking `selection_spread` × the even share; with the recall cache on only
// the misses, (1 - recall_hit_fraction) of the pages (every page in a request's first decode
// step: the cache starts empty). Whole pages per head, the rounding carried from head to head
// in issue order so a layer recalls the expected misses to within half a page.
void step_model::baseline_recalls(const std::vector<const step_request*>& reqs,
                                  const std::vector<uint32_t>& order, std::vector<baseline_slot>& slots,
                                  layer_result& lr) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads, ps = S.page_size_tokens;
  const uint64_t budget_pages = S.budget_pages();
  const bool cache = S.recall_cache != recall_cache_policy::none;
  const double spread = S.cal.selection_spread.value;
  std::vector<uint64_t> pages_on(1);
  double miss_carry = 0;
  for (uint32_t i : order) {
    baseline_slot& sl = slots[i];
    const step_request* r = reqs[sl.req];
    const request_placement& pl = *r->placement;
    const uint32_t s = pl.sequence_shards, g = sl.kv_head / (H / pl.head_groups);
    const uint64_t seq_after = r->seq_tokens + 1;
    const work::shard_selection sel = work::select_on_shard(seq_after, ps, budget_pages, true);
    sl.sel_tokens = sel.tokens_selected;
    uint64_t recall_pages = sel.pages_selected;
    if (cache && !r->recall_cache_cold) {
      const double want = double(sel.pages_selected) * (1.0 - S.cal.recall_hit_fraction.value) + miss_carry;
      recall_pages = std::min<uint64_t>(sel.pages_selected, uint64_t(std::max(0.0, std::round(want))));
      miss_carry = want - double(recall_pages);
    }
    if (recall_pages == 0) continue;
    spread_over_shards(recall_pages, s, sl.req, sl.kv_head, spread, pages_on);
    const double tokens_per_page = double(sel.tokens_selected) / double(sel.pages_selected);
    for (uint32_t j = 0; j < s; ++j) {
      if (pages_on[j] == 0) continue;
      const shard_placement& sh = pl.shards[size_t(g) * s + j];
      const uint64_t tokens_j = uint64_t(std::llround(tokens_per_page * double(pages_on[j])));
      const double bytes = c_.kv_bytes(double(tokens_j));
      const op_cost rd = device_service_cost(c_, device_op::expander, bytes);
      charge_device(sh.device_id, rd.energy_j, lr);
      lr.device_bytes += bytes;
      lr.energy.add_gpu(&step_energy::hbm_write_j, c_.gpu_hbm_write(bytes));
      const uint32_t l = link_of(sl.kv_head, j, s);
      const double arrival = tl_.send(l, sl.ready_ns, work::recall_request_wire_bytes(pages_on[j]));
      tl_.expect(arrival, sh.device_id, l, rd.time_ns, work::recall_reply_wire_bytes(m, tokens_j), i);
    }
  }
}

// The GPU's dense layer for the decode tokens and this step's prompt tokens, and the
// tensor-parallel all-reduce around its attention (charged twice by layer_t0).
std::pair<op_cost, op_cost> step_model::dense_layer(size_t decode_tokens,
                                                    const std::vector<const prefill_piece*>& prefill) const {
  uint64_t ntok = decode_tokens;
  for (const prefill_piece* p : prefill) ntok += p->tokens;
  return {c_.gpu_dense_layer(uint32_t(std::min<uint64_t>(ntok, UINT32_MAX)), s_->tp),
          s_->fabric.all_reduce(double(ntok) * s_->model.hidden * 2.0, s_->tp)};
}

step_model::layer_result step_model::layer_baseline(const std::vector<const step_request*>& reqs,
                                                    const std::vector<const prefill_piece*>& prefill) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads;
  layer_result lr;

  const auto [dense, ar] = dense_layer(reqs.size(), prefill);
  const double t0 = layer_t0(0, dense, ar);
  tl_.begin(t0);
  trace_dense(tr_, dense, ar, trace_name::summary_read);

  const uint32_t ranks = S.attention_ranks;
  gpu_ranks gpu(ranks, t0);
  gpu.set_trace(tr_, trace_name::score);
  std::vector<baseline_slot> slots;
  slots.reserve(reqs.size() * H);

  // Appends of the new token, then (non-resident) summary reads.
  const bool any_link_summaries = baseline_appends_and_summaries(reqs, t0, slots, lr);
  if (any_link_summaries) {
    for (baseline_slot& sl : slots) sl.ready_ns = reqs[sl.req]->summaries_resident ? t0 : 0;
    tl_.serve();
    tl_.receive();
    for (const auto& it : tl_.items()) slots[it.slot].ready_ns = std::max(slots[it.slot].ready_ns, it.done_ns);
    tl_.clear_items();
  }
  // Scoring on each rank in the order the summaries are ready; then selection is known.
  std::vector<uint32_t> order(slots.size());
  for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
  auto by_ready = [&](uint32_t a, uint32_t b) {
    return slots[a].ready_ns != slots[b].ready_ns ? slots[a].ready_ns < slots[b].ready_ns : a < b;
  };
  if (any_link_summaries) std::stable_sort(order.begin(), order.end(), by_ready);
  if (S.baseline_overlap) {
    for (uint32_t i : order) {
      baseline_slot& sl = slots[i];
      sl.ready_ns = gpu.run(sl.rank, sl.ready_ns, sl.score_ns);
    }
  } else {  // layer-wide rounds: every summary in, every head scored, then the recalls
    double in = t0;
    for (const baseline_slot& sl : slots) in = std::max(in, sl.ready_ns);
    gpu.hold_until(in);
    for (const baseline_slot& sl : slots) gpu.run(sl.rank, in, sl.score_ns);
    const double t_sel = gpu.end();
    for (baseline_slot& sl : slots) sl.ready_ns = t_sel;
  }

  // Recalls, issued as each head's selection is known.
  std::stable_sort(order.begin(), order.end(), by_ready);
  if (tr_) tr_->set_device_name(trace_name::recall);
  baseline_recalls(reqs, order, slots, lr);
  tl_.serve();
  tl_.receive();
  for (const auto& it : tl_.items()) slots[it.slot].ready_ns = std::max(slots[it.slot].ready_ns, it.done_ns);

  // Attention on each rank as each head's pages are in (overlap), or once all are in; then
  // the merge of each head's per-shard partials.
  std::stable_sort(order.begin(), order.end(), by_ready);
  if (!S.baseline_overlap) {
    double in = 0;
    for (const baseline_slot& sl : slots) in = std::max(in, sl.ready_ns);
    for (baseline_slot& sl : slots) sl.ready_ns = in;
  }
  double merge_ns = 0;
  gpu.set_trace(tr_, trace_name::attention);
  for (uint32_t i : order) {
    const baseline_slot& sl = slots[i];
    const work::query_work aw = work::gpu_attend_work(c_, double(sl.sel_tokens));
    const op_cost ga = c_.gpu_attention(aw.bytes, aw.flops);
    lr.energy.add_gpu(&step_energy::gpu_attention_j, ga);
    gpu.run(sl.rank, sl.ready_ns, ga.time_ns);
    const op_cost mc = c_.gpu_merge(reqs[sl.req]->placement->sequence_shards, m.gqa_group());
    merge_ns += mc.time_ns;
    lr.energy.add_gpu(&step_energy::merge_j, mc);
  }
  const uint32_t crit = gpu.critical();
  const double M = merge_ns / ranks;
  double prefill_last = t0;
  send_prefill(prefill, lr, prefill_last);
  const layer_end e = end_of_layer_after_gpu(gpu.end(), prefill_last, M, tr_);
  const double end = gpu.end() + M;
  const double prefill_extra = e.prefill_extra_ns;
  lr.time_ns = e.time_ns;
  lr.crit.gpu_dense_ns = dense.time_ns;
  lr.crit.allreduce_ns = 2.0 * ar.time_ns;
  lr.crit.gpu_attention_ns = gpu.busy(crit);
  lr.crit.merge_ns = M;
  add_wait(tl_.attribute_wait(end - M - t0 - gpu.busy(crit)), lr.crit);
  lr.crit.link_ns += prefill_extra;
  lr.energy.add_gpu(&step_energy::gpu_dense_j, dense);
  lr.energy.allreduce_j = 2.0 * ar.energy_j;
  close_layer(lr);
  return lr;
}

// gpu-only: the dense layer, then every (request, KV head) on its attention rank: the new
// token's K/V into HBM, scoring and attention over HBM (one partial: nothing to merge);
// prompt chunks are written to HBM after them. Nothing crosses a link or touches a device.
step_model::layer_result step_model::layer_gpu_only(const std::vector<const step_request*>& reqs,
                                                    const std::vector<const prefill_piece*>& prefill) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads, ps = S.page_size_tokens, ranks = S.attention_ranks;
  layer_result lr;
  const auto [dense, ar] = dense_layer(reqs.size(), prefill);
  const double t0 = layer_t0(0, dense, ar);
  trace_dense(tr_, dense, ar, trace_name::scan);
  gpu_ranks gpu(ranks, t0);
  gpu.set_trace(tr_, trace_name::attention);  // each head's K/V write and attention
  const op_cost append = c_.gpu_hbm_write(c_.kv_bytes(1));
  for (const step_request* r : reqs) {
    const work::shard_selection sel = work::select_on_shard(r->seq_tokens + 1, ps, S.budget_pages(), true);
    const work::query_work w = work::pnm_query_work(c_, sel, S.heads_scored, S.summary_elem_bytes, S.search);
    const op_cost ga = c_.gpu_attention(w.bytes, w.flops);
    for (uint32_t h = 0; h < H; ++h) {
      const uint32_t rank = uint32_t(uint64_t(h) * ranks / H);
      gpu.run(rank, t0, append.time_ns);
      gpu.run(rank, t0, ga.time_ns);
      lr.energy.add_gpu(&step_energy::hbm_write_j, append);
      lr.energy.add_gpu(&step_energy::gpu_attention_j, ga);
    }
  }
  for (const prefill_piece* p : prefill) {
    const op_cost wr = c_.gpu_hbm_write(c_.kv_bytes(double(p->tokens)));
    for (uint32_t h = 0; h < H; ++h) {
      gpu.run(uint32_t(uint64_t(h) * ranks / H), t0, wr.time_ns);
      lr.energy.add_gpu(&step_energy::hbm_write_j, wr);
    }
  }
  lr.time_ns = gpu.end();
  lr.crit.gpu_dense_ns = dense.time_ns;
  lr.crit.allreduce_ns = 2.0 * ar.time_ns;
  lr.crit.gpu_attention_ns = gpu.end() - t0;
  lr.energy.add_gpu(&step_energy::gpu_dense_j, dense);
  lr.energy.allreduce_j = 2.0 * ar.energy_j;
  return lr;
}

// png-kv's copy engine: the pages newly steady are recalled from the devices and written to
// HBM, as the live host engine's copies: per (request, KV head, shard) one recall carrying
// every layer's pages (the live engine sends one per layer: the same bytes and device time,
// fewer headers). Amortised: the set's churn every R steps, the whole set on a request's
// first decode step. time_ns is the copies on their own from idle links and devices,
// hbm_write_ns their HBM writes; run() charges them against the step's dense-layer windows
// (charge_steady_copies, step_timeline.hpp).
step_model::layer_result step_model::steady_copies(const std::vector<step_request>& decode) {
  const step_setup& S = *s_;
  const model_shape& m = S.model;
  const uint32_t H = m.kv_heads, ps = S.page_size_tokens;
  layer_result lr;
  tl_.begin(0);
  if (tr_) tr_->set_device_name(trace_name::copy);
  const uint64_t steady_pages = steady_set_pages(S);
  const double churn_per_step = S.cal.steady_churn_fraction.value / std::max(1.0, S.cal.steady_reeval_steps.value);
  double copied_bytes = 0;
  for (const step_request& r : decode) {
    const request_placement& pl = *r.placement;
    const uint32_t s = pl.sequence_shards, heads_per_group = H / pl.head_groups;
    const uint64_t total_pages = (r.seq_tokens + 1 + ps - 1) / ps;
    const uint64_t steady_r = request_steady_pages(steady_pages, total_pages);
    const double pages = r.first_decode_step ? double(steady_r) : double(steady_r) * churn_per_step;
    if (pages <= 0) continue;
    for (uint32_t h = 0; h < H; ++h) {
      const uint32_t g = h / heads_per_group;
      for (uint32_t j = 0; j < s; ++j) {
        const double pages_j = pages / s * m.layers;
        const double bytes = c_.kv_bytes(pages_j * ps);
        const op_cost rd = device_service_cost(c_, device_op::pnm, bytes, 0);
        charge_device(pl.shards[size_t(g) * s + j].device_id, rd.energy_j, lr);
        lr.device_bytes += bytes;
        copied_bytes += bytes;
        const uint32_t l = link_of(h, j, s);
        const double arrival = tl_.send(l, 0, work::header_bytes * m.layers + uint64_t(4.0 * pages_j));
        tl_.expect(arrival, pl.shards[size_t(g) * s + j].device_id, l, rd.time_ns,
                   work::header_bytes * m.layers + uint64_t(std::llround(bytes)));
      }
    }
  }
  if (tl_.items().empty()) return lr;
  tl_.serve();
  const double last = tl_.receive();
  // Each GPU writes the pages of its own heads (attention ranks) and layers (stages) into
  // its own HBM, all at once: the time of one GPU's share, the energy of every byte.
  const op_cost w = c_.gpu_hbm_write(copied_bytes);
  lr.time_ns = last;
  lr.hbm_write_ns = c_.gpu_hbm_write(copied_bytes / (double(S.attention_ranks) * S.pp)).time_ns;
  lr.energy.add_gpu(&step_energy::hbm_write_j, w);
  close_layer(lr);
  return lr;
}

// Sub-batch overlap: each micro-batch's layer is computed on its own (from idle links and
// devices, as any layer), then the stage's layers are scheduled as a pipeline over (layer,
// micro-batch) on the GPU and the device pool (schedule_micro_batches). Returned as the
// stage's mean layer (time, charges, the dense-layer windows as the pool's idle time), so
// that run() composes it as it composes one layer; the serial sum and the overlap go to `out`.
step_model::layer_result step_model::stage_micro_batched(const std::vector<const step_request*>& reqs,
                                                         const std::vector<const prefill_piece*>& prefill,
                                                         double layers, step_result& out) {
  const uint32_t n_layers = uint32_t(std::max<long long>(1, std::llround(layers)));
  std::vector<uint32_t> pools;
  for (const step_request* r : reqs) pools.push_back(r->pool);
  const std::vector<uint32_t> of = micro_batch_of(pools, s_->micro_batches);
  const uint32_t M = effective_micro_batches(s_->micro_batches, reqs.size());
  std::vector<std::vector<const step_request*>> sub(M);
  for (size_t i = 0; i < reqs.size(); ++i) sub[of[i]].push_back(reqs[i]);
  timeline_trace* const tr = tr_;
  set_trace(nullptr);  // the schedule is drawn below, not each micro-batch's layer
  layer_result lr;
  std::vector<micro_batch_costs> costs(M);
  layer_timeline::wait_split split;
  for (uint32_t k = 0; k < M; ++k) {
    // Prompt chunks go with the first micro-batch (its dense layer takes their tokens).
    const layer_result x = layer_pnm(sub[k], k == 0 ? prefill : std::vector<const prefill_piece*>{});
    costs[k] = {x.window_ns, x.gpu_overlap_ns, x.device_phase_ns, x.merge_ns};
    lr.crit.gpu_dense_ns += x.crit.gpu_dense_ns;
    lr.crit.allreduce_ns += x.crit.allreduce_ns;
    lr.crit.gpu_attention_ns += x.gpu_overlap_ns;
    lr.crit.merge_ns += x.merge_ns;
    split.device_ns += x.device_split.device_ns;
    split.link_ns += x.device_split.link_ns;
    split.queueing_ns += x.device_split.queueing_ns;
    lr.energy += x.energy;
    lr.link_bytes += x.link_bytes;
    lr.device_bytes += x.device_bytes;
    lr.device_busy_ns_max += x.device_busy_ns_max;
    lr.link_busy_ns_max += x.link_busy_ns_max;
    lr.device_energy_j_max += x.device_energy_j_max;
  }
  set_trace(tr);
  const micro_batch_schedule sch = schedule_micro_batches(costs, n_layers, tr_);
  // Per layer of the stage (run() multiplies by the layers): the schedule's time; what the
  // GPU did not spend on its own work it waited for the devices, split as their phases were.
  const double per = 1.0 / double(n_layers);
  lr.time_ns = sch.time_ns * per;
  lr.window_ns = sch.device_idle_ns() * per;
  const double idle = sch.gpu_idle_ns() * per;
  const double split_sum = split.device_ns + split.link_ns + split.queueing_ns;
  if (split_sum > 0) {
    lr.crit.device_scan_ns = idle * split.device_ns / split_sum;
    lr.crit.link_ns = idle * split.link_ns / split_sum;
    lr.crit.queueing_ns = idle - lr.crit.device_scan_ns - lr.crit.link_ns;
  } else {
    lr.crit.queueing_ns = idle;
  }
  out.micro_batches = std::max(out.micro_batches, M);
  out.serial_ns += sch.serial_ns * per * layers;
  out.overlap_ns += sch.overlap_ns() * per * layers;
  return lr;
}

step_result step_model::run(const std::vector<step_request>& decode,
                            const std::vector<prefill_piece>& prefill) {
  const step_setup& S = *s_;
  step_result out;
  out.decode_tokens = uint32_t(decode.size());
  for (const auto& p : prefill) out.prefill_tokens += p.tokens;
  if (decode.empty() && prefill.empty()) return out;

  const uint32_t pp = S.pp;
  std::vector<std::vector<const step_request*>> mbs(pp);
  // Micro-batches take an even share of every pool's requests, so that each keeps every
  // device busy (dealing requests in arrival order would give a micro-batch whole pools).
  {
    std::vector<size_t> order(decode.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return decode[a].pool < decode[b].pool; });
    for (size_t k = 0; k < order.size(); ++k) mbs[k % pp].push_back(&decode[order[k]]);
  }
  std::vector<const prefill_piece*> pf;
  for (const auto& p : prefill) pf.push_back(&p);
  const double L = S.model.layers;
  const double layers_per_stage = L / pp;

  double round_ns = 0, device_all_stages_ns = 0, decode_latency_ns = 0, window_ns = 0;
  for (uint32_t k = 0; k < pp; ++k) {
    const auto& pk = k == 0 ? pf : std::vector<const prefill_piece*>{};
    if (mbs[k].empty() && pk.empty()) continue;
    if (tr_) tr_->set_offset(round_ns), tr_->set_layer(uint32_t(k * layers_per_stage));
    const bool sub = effective_micro_batches(s_->micro_batches, mbs[k].size()) > 1;
    const layer_result lr = sub                            ? stage_micro_batched(mbs[k], pk, layers_per_stage, out)
                            : S.mode == run_mode::baseline ? layer_baseline(mbs[k], pk)
                            : S.mode == run_mode::gpu_only ? layer_gpu_only(mbs[k], pk)
                                                           : layer_pnm(mbs[k], pk);
    if (tr_) tr_->gpu(trace_name::other_layers, lr.time_ns, (layers_per_stage - 1) * lr.time_ns);
    round_ns += layers_per_stage * lr.time_ns;
    window_ns += layers_per_stage * lr.window_ns;
    // A decoding micro-batch passes every stage within the round (prefill chunks stream).
    if (!mbs[k].empty()) decode_latency_ns = std::max(decode_latency_ns, L * lr.time_ns);
    out.crit += lr.crit.scaled(layers_per_stage);
    out.energy += lr.energy.scaled(L);
    out.link_bytes += lr.link_bytes * L;
    out.device_bytes += lr.device_bytes * L;
    out.device_busy_ns_max += lr.device_busy_ns_max * L;
    out.device_energy_j_max += lr.device_energy_j_max * L;
    out.link_busy_ns_max += lr.link_busy_ns_max * layers_per_stage;
    device_all_stages_ns += lr.device_busy_ns_max * L;
    // LM head (last stage) for the tokens that come out of this micro-batch.
    uint32_t lm_tokens = uint32_t(mbs[k].size());
    for (const prefill_piece* p : pk) lm_tokens += p->completes ? 1 : 0;
    if (tr_) tr_->set_offset(0);
    if (lm_tokens > 0) {
      const op_cost lm = c_.gpu_lm_head(lm_tokens, S.tp);
      if (tr_) tr_->gpu(trace_name::lm_head, round_ns, lm.time_ns);
      round_ns += lm.time_ns;
      out.crit.lm_head_ns += lm.time_ns;
      out.energy.add_gpu(&step_energy::lm_head_j, lm);
    }
    if (pp > 1) {  // activations handed from stage to stage
      const op_cost hand = S.fabric.send(double(mbs[k].size() + (k == 0 ? out.prefill_tokens : 0)) *
                                         S.model.hidden * 2.0);
      if (tr_) tr_->gpu(trace_name::handoff, round_ns, hand.time_ns);
      round_ns += hand.time_ns;
      out.crit.allreduce_ns += hand.time_ns;
      out.energy.allreduce_j += hand.energy_j * (pp - 1);
    }
  }
  if (S.mode == run_mode::png_kv && !decode.empty()) {
    // The copy engine runs in the dense-layer windows; the step grows by what does not fit.
    const layer_result cp = steady_copies(decode);
    const steady_copy_charge ch = charge_steady_copies(cp.time_ns, window_ns, cp.hbm_write_ns);
    if (tr_) tr_->gpu(trace_name::copy_exposed, round_ns, ch.exposed_ns);
    round_ns += ch.exposed_ns;
    out.crit.copy_ns += ch.exposed_ns;
    out.copy_hidden_ns = ch.hidden_ns;
    out.energy += cp.energy;
    out.link_bytes += cp.link_bytes;
    out.device_bytes += cp.device_bytes;
    out.link_busy_ns_max += cp.link_busy_ns_max;
    out.device_energy_j_max += cp.device_energy_j_max;
  }
  if (decode_latency_ns > round_ns) {  // fewer micro-batches than stages: the pipeline idles
    out.crit.queueing_ns += decode_latency_ns - round_ns;
    round_ns = decode_latency_ns;
  }
  // Stages share the devices: a round lasts at least the busiest device's work of all.
  // With lookahead selection that work is mostly their searches for the next step: device time.
  if (pp > 1 && device_all_stages_ns > round_ns) {
    (S.lookahead ? out.crit.device_scan_ns : out.crit.queueing_ns) += device_all_stages_ns - round_ns;
    round_ns = device_all_stages_ns;
  }
  out.time_ns = round_ns;
  return out;
}

}  // namespace pnmkv
