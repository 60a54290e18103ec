#include "actors/host_engine.hpp"

#include "core/check.hpp"
#include "model/work_sizes.hpp"
#include "schedulers/recovery_cost.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <optional>

namespace pnmkv {

namespace {
// Envelope and fixed fields of a message, on top of its tensors (Cap'n Proto framing).

void fnv1a(uint64_t& h, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
}
}  // namespace

bool host_engine::candidate_before(const head_state::candidate& a, const head_state::candidate& b) {
  if (a.forced != b.forced) return a.forced;
  const bool an = std::isnan(a.score), bn = std::isnan(b.score);
  if (an != bn) return bn;
  if (!an && a.score != b.score) return a.score > b.score;
  return a.page < b.page;
}

host_engine::host_engine(host_engine_config cfg, const cost_model& costs,
                         const kv_workload& wl)
    : cfg_(cfg), costs_(costs), wl_(wl), tl_(costs_, std::max<uint32_t>(1, cfg.host_links), 0) {
  if (cfg_.heads_scored == 0) cfg_.heads_scored = costs_.model().gqa_group();
  PNMKV_CHECK(!cfg_.lookahead || (cfg_.mode == run_mode::pnm_kv && cfg_.micro_batches == 1),
              "lookahead selection needs pnm-kv and one micro-batch; mode=", int(cfg_.mode),
              " micro_batches=", cfg_.micro_batches);
  PNMKV_CHECK(cfg_.page_size_tokens > 0 && cfg_.prefill_chunk_tokens > 0,
              "page_size_tokens=", cfg_.page_size_tokens,
              ", prefill_chunk_tokens=", cfg_.prefill_chunk_tokens);
  if (cfg_.mode == run_mode::gpu_only) {
    PNMKV_CHECK(cfg_.hbm.shape.page_size_tokens == cfg_.page_size_tokens &&
                    cfg_.hbm.shape.head_dim == costs_.model().head_dim && cfg_.hbm.live_layers == cfg_.live_layers,
                "gpu-only HBM store shape: page ", cfg_.hbm.shape.page_size_tokens, " head_dim ",
                cfg_.hbm.shape.head_dim, " live_layers ", cfg_.hbm.live_layers);
    hbm_ = std::make_unique<device_engine>(cfg_.hbm);
  }
}

status host_engine::add_request(const request_spec& r, const request_placement& placement,
                                bool decoding) {
  PNMKV_CHECK(phase_ == phase::done, "requests join between steps; phase=", int(phase_));
  if (placements_.count(r.request_id))
    return {errc::invalid_argument, "request " + std::to_string(r.request_id) + " already added"};
  if (r.context_tokens == 0)
    return {errc::invalid_argument, "request " + std::to_string(r.request_id) + " has no context"};
  const uint32_t kv_heads = costs_.model().kv_heads;
  for (uint32_t h = 0; h < kv_heads; ++h)
    if (placement.shard_of(h, 0) < 0)
      return {errc::invalid_argument, "placement of request " + std::to_string(r.request_id) +
                                          " leaves KV head " + std::to_string(h) + " unplaced"};
  // gpu-only: one shard, every head and page, held in HBM (schedulers/admission.hpp,
  // gpu_local_placement).
  if (hbm_) {
    if (placement.shards.size() != 1)
      return {errc::invalid_argument, "gpu-only placement of request " + std::to_string(r.request_id) +
                                          " has " + std::to_string(placement.shards.size()) + " shards, not one"};
    auto st = hbm_->add_shard(r.request_id, placement.shards.front());
    if (!st) return st;
  }
  // A placement made before a device was lost may still name it: its replicas serve.
  request_placement pl = placement;
  for (uint32_t dead : dead_) {
    auto st = move_off(pl, dead, /*recompute=*/false, nullptr);  // not placed yet: placed again
    if (!st) return st;
  }
  requests_.push_back(r);
  placements_.emplace(r.request_id, std::move(pl));
  rstate_[r.request_id] = request_state{0, decoding, decoding ? r.context_tokens : 0};
  return {};
}

status host_engine::remove_request(uint64_t request_id) {
  PNMKV_CHECK(phase_ == phase::done, "requests leave between steps; phase=", int(phase_));
  auto it = std::find_if(requests_.begin(), requests_.end(),
                         [&](const request_spec& r) { return r.request_id == request_id; });
  if (it == requests_.end())
    return {errc::invalid_argument, "request " + std::to_string(request_id) + " is not here"};
  requests_.erase(it);
  placements_.erase(request_id);
  if (hbm_) hbm_->release(request_id);
  rstate_.erase(request_id);
  auto drop = [&](auto& m) {
    for (auto i = m.begin(); i != m.end();) {
      if (std::get<1>(i->first) == request_id) i = m.erase(i);
      else ++i;
    }
  };
  drop(steady_);
  drop(shadow_);
  drop(previous_selection_);
  drop(lookahead_);
  drop(cache_);
  drop(heads_);
  drop(written_);
  for (auto r = recovering_.begin(); r != recovering_.end();)
    r = r->first.first == request_id ? recovering_.erase(r) : std::next(r);
  return {};
}

uint32_t host_engine::decoding_count() const {
  uint32_t n = 0;
  for (const auto& [id, s] : rstate_) n += s.decoding;
  return n;
}

status host_engine::plan_prefill(std::vector<prefill_chunk> chunks) {
  PNMKV_CHECK(phase_ == phase::done, "prefill is planned between steps; phase=", int(phase_));
  std::map<uint64_t, uint64_t> next;  // request -> next prompt token, over the chunks
  for (const prefill_chunk& c : chunks) {
    auto rs = rstate_.find(c.request_id);
    if (rs == rstate_.end())
      return {errc::invalid_argument, "prefill chunk for unknown request " + std::to_string(c.request_id)};
    const request_spec& r = spec(c.request_id);
    uint64_t& at = next.emplace(c.request_id, rs->second.prefilled).first->second;
    if (rs->second.decoding || c.tokens == 0 || c.position != at ||
        c.position + c.tokens > r.context_tokens ||
        c.completes != (c.position + c.tokens == r.context_tokens))
      return {errc::invalid_argument,
              "prefill chunk [" + std::to_string(c.position) + ", +" + std::to_string(c.tokens) +
                  ") of request " + std::to_string(c.request_id) + " does not continue its prompt of " +
                  std::to_string(r.context_tokens) + " tokens at " + std::to_string(at)};
    at += c.tokens;
  }
  step_prefill_ = std::move(chunks);
  return {};
}

// Where a write starting at `from` must end: at `to`, or where the next page belongs to
// another shard (one message per shard).
uint64_t host_engine::chunk_end(const request_placement& pl, uint32_t kv_head, uint64_t from,
                                uint64_t to) const {
  return write_run_end(pl, kv_head, from, to, cfg_.page_size_tokens);
}

// The writes of prompt tokens [from, to) of (request, layer, KV head): one per shard run,
// to the primary and every replica.
void host_engine::prefill_writes(const request_spec& r, uint32_t layer, uint32_t kv_head,
                                 uint64_t from, uint64_t to, std::vector<device_work>& out) {
  const uint32_t d = costs_.model().head_dim, ps = cfg_.page_size_tokens;
  const request_placement& pl = placements_.at(r.request_id);
  while (from < to) {
    const uint64_t end = chunk_end(pl, kv_head, from, to);
    const uint64_t n = end - from;
    device_work w;
    w.what = device_work::kind::write;
    w.bulk = true;
    w.request_id = r.request_id;
    w.layer = layer;
    w.kv_head = kv_head;
    w.position = from;
    w.n_tokens = n;
    w.k.resize(n * d);
    w.v.resize(n * d);
    wl_.keys(r.request_id, layer, kv_head, from, n, w.k.data());
    wl_.values(r.request_id, layer, kv_head, from, n, w.v.data());
    w.wire_bytes = work::prefill_wire_bytes(costs_.model(), n);
    const shard_placement& sh = pl.shards[size_t(pl.shard_of(kv_head, from / ps))];
    std::vector<uint32_t> devices{sh.device_id};
    devices.insert(devices.end(), sh.replica_device_ids.begin(), sh.replica_device_ids.end());
    for (size_t i = 0; i < devices.size(); ++i) {
      device_work copy = (i + 1 == devices.size()) ? std::move(w) : w;
      copy.device_id = devices[i];
      copy.shard_id = sh.shard_id;
      if (!hbm_) prefill_bytes_ += copy.wire_bytes;  // gpu-only: written to HBM, no link
      out.push_back(std::move(copy));
    }
    from = end;
  }
  uint64_t& written = written_[head_key{layer, r.request_id, kv_head}];
  written = std::max(written, to);
}

bool host_engine::next_prefill_chunk(std::vector<device_work>& out) {
  out.clear();
  const uint32_t kv_heads = costs_.model().kv_heads;
  const uint32_t ps = cfg_.page_size_tokens;
  while (pf_request_ < requests_.size()) {
    const request_spec& r = requests_[pf_request_];
    if (pf_position_ >= r.context_tokens) {
      pf_position_ = 0;
      if (++pf_head_ == kv_heads) {
        pf_head_ = 0;
        if (++pf_layer_ == cfg_.live_layers) {
          pf_layer_ = 0;
          ++pf_request_;
        }
      }
      continue;
    }
    // A chunk ends at prefill_chunk_tokens (page aligned), the context end, or where the
    // next page belongs to another shard.
    const uint64_t chunk = std::max<uint64_t>(ps, cfg_.prefill_chunk_tokens / ps * ps);
    const uint64_t end = chunk_end(placements_.at(r.request_id), pf_head_, pf_position_,
                                   std::min(r.context_tokens, pf_position_ + chunk));
    prefill_writes(r, pf_layer_, pf_head_, pf_position_, end, out);
    pf_position_ = end;
    if (hbm_) {  // gpu-only: the prompt goes to HBM, nothing to the devices
      for (const device_work& w : out) {
        auto st = write_hbm(w);
        PNMKV_CHECK(st.is_ok(), st.to_string());
      }
      out.clear();
    }
    return true;
  }
  return false;
}

uint32_t host_engine::link_of(const request_placement& pl, uint32_t kv_head,
                              uint32_t shard_index) const {
  return host_link_of(std::max<uint32_t>(1, cfg_.host_links), costs_.model().kv_heads, kv_head,
                      pl.shards[shard_index].sequence_index, pl.sequence_shards);
}

void host_engine::set_trace(timeline_trace* trace) {
  trace_ = trace;
  tl_.set_trace(trace);
  if (!trace_) return;
  trace_->set_gpu_ranks(1);  // one live GPU
  for (const auto& [id, slot] : device_slots_) trace_->map_device(slot, id);
}

// Device ids are the cluster's; the timeline counts devices from 0.
uint32_t host_engine::device_slot(uint32_t device_id) {
  auto [it, added] = device_slots_.emplace(device_id, uint32_t(device_slots_.size()));
  if (added) tl_.reserve_devices(uint32_t(device_slots_.size()));
  if (added && trace_) trace_->map_device(it->second, device_id);
  return it->second;
}

const request_spec& host_engine::spec(uint64_t request_id) const {
  for (const auto& r : requests_)
    if (r.request_id == request_id) return r;
  PNMKV_CHECK(false, "unknown request_id=", request_id);
  return requests_.front();
}

uint64_t host_engine::gpu_steady_bytes() const {
  uint64_t b = 0;
  for (const auto& [k, ss] : steady_)
    if (ss.store) b += ss.store->bytes_held();
  return b;
}

void host_engine::force_steady(uint64_t request_id, uint32_t layer, uint32_t kv_head,
                               std::vector<uint64_t> pages) {
  steady_state& ss = steady_[{layer, request_id, kv_head}];
  ss.pending_pages = std::move(pages);
  ss.forced = true;
}

std::vector<uint64_t> host_engine::last_selection(uint64_t request_id, uint32_t layer,
                                                  uint32_t kv_head) const {
  auto it = heads_.find({layer, request_id, kv_head});
  if (it == heads_.end()) return {};
  return it->second.pages;
}

const partial* host_engine::last_output(uint64_t request_id, uint32_t layer,
                                        uint32_t kv_head) const {
  auto it = heads_.find({layer, request_id, kv_head});
  return it == heads_.end() ? nullptr : &it->second.merged;
}

void host_engine::dispatch(device_work& w, bool charged, double now_ns, uint32_t link) {
  if (!charged) return;
  w.vt_arrival_ns = send_tl().send(link, now_ns, w.wire_bytes);
  cur_.link_bytes += w.wire_bytes;
}

void host_engine::gpu_query(const request_spec& r, uint32_t layer, uint32_t kv_head, uint64_t decoded,
                            std::vector<float>& q) const {
  const auto& m = costs_.model();
  q.resize(size_t(m.gqa_group()) * m.head_dim);
  wl_.queries(r.request_id, layer, kv_head, decoded, r.context_tokens, q.data());
  if (cfg_.wire == wire_precision::bf16) round_to_bf16(q.data(), q.size());
}

device_work host_engine::make_query(uint64_t request_id, uint32_t layer, uint32_t kv_head,
                                    uint32_t shard_index, const std::vector<float>& q,
                                    purpose what) {
  const auto& m = costs_.model();
  const request_placement& pl = placements_.at(request_id);
  const shard_placement& sh = pl.shards[shard_index];
  device_work w;
  w.what = device_work::kind::query;
  w.device_id = sh.device_id;
  w.shard_id = sh.shard_id;
  w.tag = next_tag_++;
  w.q_storage = q;
  w.query.request_id = request_id;
  w.query.shard_id = sh.shard_id;
  w.query.step = step_;
  w.query.layer = layer;
  w.query.kv_head = kv_head;
  w.query.group = m.gqa_group();
  w.query.wire_bf16 = cfg_.wire == wire_precision::bf16 && what != purpose::verify;
  w.query.sequence_tokens = spec(request_id).context_tokens + decoded(request_id) + 1;
  w.wire_bytes = work::query_wire_bytes(m, cfg_.wire);
  switch (what) {
    case purpose::select: w.query.round = selection_round::local; break;
    case purpose::candidates: w.query.round = selection_round::exact_candidates; break;
    case purpose::attend_listed: w.query.round = selection_round::exact_attend; break;
    case purpose::lookahead:  // the next step's search, in the device's idle time
      w.query.round = selection_round::exact_candidates;
      w.query.background = true;
      w.charge_device = false;
      break;
    case purpose::verify:
      w.query.round = selection_round::dense;
      w.verification = true;
      w.charge_device = false;
      break;
    default: PNMKV_CHECK(false, "not a query purpose: ", int(what));
  }
  return w;
}

result<std::vector<device_work>> host_engine::begin_step(uint32_t step) {
  PNMKV_CHECK(phase_ == phase::done, "a step is already running; phase=", int(phase_));
  PNMKV_CHECK(pending_.empty(), "pending=", pending_.size());
  step_ = step;
  layer_ = 0;
  heads_.clear();
  sent_.clear();
  step_writes_.clear();
  cur_ = step_report{};
  step_device_energy_j_.clear();
  step_device_work_ns_.clear();
  cur_.step = step;
  step_start_ns_ = clock_ns_;
  if (trace_) trace_->set_offset(-step_start_ns_);
  prefill_last_arrival_ns_ = 0;
  step_decoding_.clear();
  for (const request_spec& r : requests_)
    if (is_decoding(r.request_id)) step_decoding_.push_back(r.request_id);
  // Sub-batch overlap: the step's decoding requests dealt over its micro-batches by pool.
  mb_.clear();
  mb_of_.clear();
  mb_sum_.clear();
  mb_split_ = {};
  active_mb_ = -1;
  mb_issued_ = 0;
  const uint32_t n_mb = hbm_ ? 1 : effective_micro_batches(cfg_.micro_batches, step_decoding_.size());
  if (n_mb > 1) {
    std::vector<uint32_t> pools;
    for (uint64_t id : step_decoding_) {
      const uint32_t dev = placements_.at(id).shards.front().device_id;
      const uint32_t rel = dev >= cfg_.device_id_base ? dev - cfg_.device_id_base : dev;
      pools.push_back(cfg_.pool_devices ? rel / cfg_.pool_devices : 0);
    }
    const std::vector<uint32_t> of = micro_batch_of(pools, n_mb);
    for (size_t i = 0; i < step_decoding_.size(); ++i) mb_of_[step_decoding_[i]] = of[i];
    mb_.resize(n_mb);
    for (mb_state& mb : mb_) mb.tl = std::make_unique<layer_timeline>(costs_, cfg_.host_links, tl_.devices());
    mb_sum_.assign(n_mb, micro_batch_costs{});
  }
  std::vector<device_work> work;
  copy_engine_ns_ = copy_hbm_write_ns_ = 0;
  if (cfg_.mode == run_mode::png_kv) {
    // Pages copied in the last step become steady now; this step's copies go out beside
    // the first layer's work and are attended from the next step.
    auto st = apply_copies();
    if (!st) return st;
    work = copy_work();
  }
  for (auto& w : layer_work(0)) work.push_back(std::move(w));
  auto more = advance();
  if (!more) return more.error();
  for (auto& w : *more) work.push_back(std::move(w));
  remember(work);
  return work;
}

// `layer` has a second round in this step (model/modes.hpp): always in baseline (prompt
// chunks then leave after it even with no head decoding), else when any head selects in two.
bool host_engine::layer_has_two_rounds(uint32_t layer) const {
  if (cfg_.mode == run_mode::baseline) return true;
  return std::any_of(heads_.begin(), heads_.end(), [&](const auto& kv) {
    return std::get<0>(kv.first) == layer && !kv.second.ahead &&
           two_round_selection(cfg_.mode, cfg_.cross_shard, uint32_t(kv.second.shards.size()));
  });
}

// Moves the step on through every phase that has nothing to wait for.
result<std::vector<device_work>> host_engine::advance() {
  std::vector<device_work> out;
  auto finish_layer_and_next = [&]() -> status {
    auto st = finish_layer();
    if (!st) return st;
    std::vector<device_work> work;
    if (++layer_ < cfg_.live_layers) {
      work = layer_work(layer_);
    } else {
      finish_timed_phase();
      if (cfg_.verify) {
        phase_ = phase::verify;
        work = verify_work();
      } else {
        end_step();
      }
    }
    for (auto& w : work) out.push_back(std::move(w));
    return {};
  };
  while (pending_.empty() && phase_ != phase::done && !micro_batch_pending()) {
    switch (phase_) {
      case phase::round_a: {
        if (layer_has_two_rounds(layer_)) {
          auto st = finish_round_a();
          if (!st) return st;
          phase_ = phase::round_b;
          auto work = round_b_work();
          if (!work) return work.error();
          if (!work->empty()) {
            for (auto& w : *work) out.push_back(std::move(w));
            break;
          }
        }
        auto st = finish_layer_and_next();
        if (!st) return st;
        break;
      }
      case phase::round_b: {
        auto st = finish_layer_and_next();
        if (!st) return st;
        break;
      }
      case phase::verify: {
        auto st = finish_verification();
        if (!st) return st;
        end_step();
        break;
      }
      case phase::done: break;
    }
  }
  return out;
}

// The step is over: decoding requests moved one token on; completed prompts decode next.
void host_engine::end_step() {
  phase_ = phase::done;
  for (uint64_t id : step_decoding_) ++rstate_.at(id).decoded;
  for (const prefill_chunk& c : step_prefill_) {
    request_state& rs = rstate_.at(c.request_id);
    rs.prefilled += c.tokens;
    if (c.completes) rs.decoding = true;
  }
  step_prefill_.clear();
}

// png-kv: re-evaluate steady sets that are due and recall the pages newly steady. The copy
// engine's time is composed here, on a timeline of its own from idle links and devices (the
// step model's steady_copies): the devices serve the copies in the dense-layer windows, off
// their layer clocks (pnm_device serve_recall), so the copy time is known when they leave;
// finish_timed_phase charges it against the windows.
std::vector<device_work> host_engine::copy_work() {
  const auto& m = costs_.model();
  const uint32_t ps = cfg_.page_size_tokens;
  const uint64_t budget_pages = cfg_.budget_tokens / ps;
  std::vector<device_work> work;
  tl_.begin(clock_ns_);
  double copied_bytes = 0;
  if (trace_) trace_->set_device_name(trace_name::copy);  // drawn from the step's start
  for (const request_spec& r : requests_) {
    if (!is_decoding(r.request_id)) continue;
    const uint64_t at = decoded(r.request_id);
    const request_placement& pl = placements_.at(r.request_id);
    // Only full pages can be steady: the page receiving this step's token is not.
    const uint64_t first_open_page = (r.context_tokens + at) / ps;
    for (uint32_t layer = 0; layer < cfg_.live_layers; ++layer) {
      for (uint32_t h = 0; h < m.kv_heads; ++h) {
        head_key key{layer, r.request_id, h};
        steady_state& ss = steady_[key];
        if (!ss.policy) {
          steady_params p = cfg_.steady;
          p.budget_pages = std::min<uint64_t>(p.budget_pages, budget_pages > 2 ? budget_pages - 2 : 0);
          ss.policy = make_steady_policy(p);
        }
        if (!ss.forced && ss.policy->due(at)) ss.pending_pages = ss.policy->evaluate(at);
        else if (!ss.forced) continue;
        ss.forced = false;
        std::vector<uint64_t> next;
        for (uint64_t p : ss.pending_pages)
          if (p < first_open_page) next.push_back(p);
        ss.pending_pages = next;
        if (!next.empty()) {
          size_t kept = 0;
          for (uint64_t p : next) kept += std::binary_search(ss.pages.begin(), ss.pages.end(), p);
          cal_churn_sum_ += double(next.size() - kept) / double(next.size());
          ++cal_churn_samples_;
        }
        // Pages not yet on the GPU are recalled from the shard holding them.
        std::map<uint32_t, std::vector<uint64_t>> by_shard;
        for (uint64_t p : next)
          if (!std::binary_search(ss.pages.begin(), ss.pages.end(), p))
            by_shard[uint32_t(pl.shard_of(h, p))].push_back(p);
        ss.apply_next_step = true;
        for (auto& [shard, pages] : by_shard) {
          device_work w;
          w.what = device_work::kind::recall;
          w.device_id = pl.shards[shard].device_id;
          w.shard_id = pl.shards[shard].shard_id;
          w.tag = next_tag_++;
          w.request_id = r.request_id;
          w.layer = layer;
          w.kv_head = h;
          w.pages = pages;
          w.wire_bytes = work::recall_request_wire_bytes(pages.size());
          // Steady pages are full pages.
          const double bytes = costs_.kv_bytes(double(pages.size() * ps));
          const op_cost dc = device_service_cost(costs_, device_op::pnm, bytes);
          w.device_cost_ns = dc.time_ns;
          w.charge_device = false;  // the copy engine's schedule, not the device's clock
          const uint32_t link = link_of(pl, h, shard);
          dispatch(w, true, clock_ns_, link);
          const uint64_t reply = work::recall_reply_wire_bytes(m, pages.size() * ps);
          tl_.expect(w.vt_arrival_ns, device_slot(w.device_id), link, dc.time_ns, reply);
          cur_.link_bytes += reply;
          cur_.energy_j += dc.energy_j;
          step_device_energy_j_[w.device_id] += dc.energy_j;
          copied_bytes += bytes;
          pending_.emplace(w.tag, pending_item{r.request_id, layer, h, shard, purpose::steady_copy, link, 0, w.device_id});
          work.push_back(std::move(w));
        }
      }
    }
  }
  if (!tl_.items().empty()) {
    tl_.serve();
    copy_engine_ns_ = tl_.receive() - clock_ns_;
    const op_cost hbm = costs_.gpu_hbm_write(copied_bytes);
    copy_hbm_write_ns_ = hbm.time_ns;
    charge_gpu(hbm);
    cur_.copy_bytes += uint64_t(copied_bytes);
  }
  return work;
}

status host_engine::rebuild_steady(steady_state& ss) {
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim, ps = cfg_.page_size_tokens;
  kv_head_shape shape;
  shape.head_dim = d;
  shape.page_size_tokens = ps;
  auto fresh = kv_head_store::create(shape, std::max<uint64_t>(1, ss.pending_pages.size()) * ps);
  if (!fresh) return fresh.error();
  auto store = std::make_unique<kv_head_store>(std::move(fresh).value());
  for (uint64_t p : ss.pending_pages) {
    const bf16 *k = nullptr, *v = nullptr;
    uint32_t rows = ps;
    auto arrived = ss.arriving.find(p);
    if (arrived != ss.arriving.end()) {
      k = arrived->second.first.data();
      v = arrived->second.second.data();
      rows = static_cast<uint32_t>(arrived->second.first.size() / d);
    } else {
      PNMKV_CHECK(ss.store != nullptr, "steady page=", p, " neither arriving nor stored");
      int64_t l = ss.store->local_page_of(p);
      if (l < 0) return {errc::internal, "steady page " + std::to_string(p) + " has no copy"};
      k = ss.store->page_keys(uint32_t(l));
      v = ss.store->page_values(uint32_t(l));
      rows = ss.store->page_tokens(uint32_t(l));
    }
    auto st = store->append(p * ps, k, v, rows);
    if (!st) return st;
  }
  ss.store = std::move(store);
  ss.pages = ss.pending_pages;
  ss.arriving.clear();
  return {};
}

// png-kv, at a step's start: the sets re-evaluated in the last step, whose copies are all in
// (a step ends with nothing pending), become the steady sets.
status host_engine::apply_copies() {
  for (auto& [key, ss] : steady_) {
    if (!ss.apply_next_step) continue;
    ss.apply_next_step = false;
    auto st = rebuild_steady(ss);
    if (!st) return st;
  }
  return {};
}

// The new token's K and V of (request, layer, KV head) at `position`, as a write.
device_work host_engine::token_write(uint64_t request_id, uint32_t layer, uint32_t h, uint64_t position) {
  const uint32_t d = costs_.model().head_dim;
  device_work app;
  app.what = device_work::kind::write;
  app.request_id = request_id;
  app.layer = layer;
  app.kv_head = h;
  app.position = position;
  app.n_tokens = 1;
  app.k.resize(d);
  app.v.resize(d);
  wl_.keys(request_id, layer, h, position, 1, app.k.data());
  wl_.values(request_id, layer, h, position, 1, app.v.data());
  return app;
}

// The new token's K and V of (request, layer, KV head) to every device holding its page
// (over the link in every mode: in baseline the expander stores it).
void host_engine::append_token(const request_spec& r, uint32_t layer, uint32_t h, uint64_t position,
                               std::vector<device_work>& work) {
  const auto& m = costs_.model();
  const uint32_t ps = cfg_.page_size_tokens;
  const request_placement& pl = placements_.at(r.request_id);
  const int holder_index = pl.shard_of(h, position / ps);
  PNMKV_CHECK(holder_index >= 0, "no shard holds kv_head=", h, " position=", position);
  const shard_placement& holder = pl.shards[holder_index];
  device_work app = token_write(r.request_id, layer, h, position);
  app.wire_bytes = work::append_wire_bytes(m);
  // baseline: the GPU's copy of the last page, when its recall cache holds it, takes the new
  // row too (the same bytes; see the header).
  if (cfg_.mode == run_mode::baseline) {
    auto c = cache_.find(head_key{layer, r.request_id, h});
    if (c != cache_.end()) {
      auto pg = c->second.pages.find(position / ps);
      if (pg != c->second.pages.end()) {
        PNMKV_CHECK_EQ(uint64_t(pg->second.rows), position % ps);
        pg->second.k.insert(pg->second.k.end(), app.k.begin(), app.k.end());
        pg->second.v.insert(pg->second.v.end(), app.v.begin(), app.v.end());
        ++pg->second.rows;
      }
    }
  }
  std::vector<uint32_t> holders{holder.device_id};
  holders.insert(holders.end(), holder.replica_device_ids.begin(),
                 holder.replica_device_ids.end());
  uint64_t& written = written_[head_key{layer, r.request_id, h}];
  written = std::max(written, position + 1);
  const uint32_t append_link = link_of(pl, h, uint32_t(holder_index));
  for (uint32_t dev : holders) {
    device_work a = app;
    a.device_id = dev;
    a.shard_id = holder.shard_id;
    dispatch(a, true, clock_ns_, append_link);
    work.push_back(std::move(a));
  }
}


// png-kv: the GPU attends the steady pages of (layer, request, KV head) now, overlapping
// the devices. Returns the budget left to the devices; `excluded` names the steady pages.
uint64_t host_engine::attend_steady(const head_key& key, head_state& hs, uint64_t budget_pages,
                                    const std::vector<uint64_t>*& excluded) {
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim, group = m.gqa_group();
  uint64_t device_budget = budget_pages;
  steady_state& ss = steady_[key];
  hs.steady_part.reset(group, d);
  if (ss.store && ss.store->page_count() > 0) {
    std::vector<uint32_t> all(ss.store->page_count());
    for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
    const float scale = 1.0f / std::sqrt(float(d));
    auto st = attend_pages(*ss.store, hs.q.data(), group, all.data(), all.size(), scale,
                           hs.steady_part);
    PNMKV_CHECK(st.is_ok(), st.to_string());
    const double tokens = double(ss.store->token_count());
    const work::query_work gw = work::gpu_attend_work(costs_, tokens);
    op_cost ga = costs_.gpu_attention(gw.bytes, gw.flops);
    overlap_ns_ += ga.time_ns;
    if (active_mb_ >= 0) mb_[size_t(active_mb_)].overlap_ns += ga.time_ns;
    cur_.gpu_attention_ns += ga.time_ns;
    charge_gpu(ga);
    device_budget = budget_pages > ss.pages.size() ? budget_pages - ss.pages.size() : 0;
    excluded = &ss.pages;
    hs.pages.insert(hs.pages.end(), ss.pages.begin(), ss.pages.end());
    cur_.steady_pages += ss.pages.size();
  }
  return device_budget;
}

std::vector<device_work> host_engine::layer_work(uint32_t layer) {
  if (hbm_) {
    auto st = layer_gpu_only(layer);
    PNMKV_CHECK(st.is_ok(), st.to_string());
    return {};
  }
  uint64_t prompt_tokens = 0;
  for (const prefill_chunk& c : step_prefill_) prompt_tokens += c.tokens;
  if (!mb_.empty()) {
    // Sub-batch overlap: each micro-batch's dense layer (its decoding tokens; the prompt
    // tokens with the first), each timed from idle links and devices on its own timeline.
    mb_origin_ns_ = clock_ns_;
    std::vector<uint64_t> tokens(mb_.size(), 0);
    tokens[0] = prompt_tokens;
    for (const auto& [id, k] : mb_of_)
      if (rstate_.count(id)) ++tokens[k];
    for (size_t k = 0; k < mb_.size(); ++k) {
      mb_state& mb = mb_[k];
      const op_cost dense = costs_.gpu_dense_layer(static_cast<uint32_t>(std::min<uint64_t>(tokens[k], UINT32_MAX)));
      cur_.dense_ns += dense.time_ns;
      charge_gpu(dense);
      mb.dense_ns = dense.time_ns;
      mb.t0 = layer_t0(clock_ns_, dense, op_cost{});
      mb.tl->reserve_devices(tl_.devices());
      mb.tl->begin(mb.t0);
      mb.overlap_ns = mb.merge_ns = 0;
      mb.round_start_ns = mb.last_reply_ns = mb.t0;
      mb.items.clear();
    }
    tl_.begin(clock_ns_);
    prefill_last_arrival_ns_ = mb_[0].t0;
    overlap_ns_ = 0;
    layer_slots_.clear();
    phase_ = phase::round_a;
    return issue_micro_batch(0);
  }
  // The dense layers take the decoding tokens and this step's prompt tokens together.
  const uint64_t tokens = step_decoding_.size() + prompt_tokens;
  const uint32_t batch = static_cast<uint32_t>(std::min<uint64_t>(tokens, UINT32_MAX));

  // One GPU: no tensor-parallel all-reduce.
  op_cost dense = costs_.gpu_dense_layer(batch);
  if (trace_) {
    trace_->set_layer(layer);
    trace_->gpu(trace_name::dense, clock_ns_, dense.time_ns);
    trace_->set_device_name(cfg_.mode == run_mode::baseline ? trace_name::summary_read : trace_name::scan);
  }
  clock_ns_ = layer_t0(clock_ns_, dense, op_cost{});
  cur_.dense_ns += dense.time_ns;
  charge_gpu(dense);
  tl_.begin(clock_ns_);
  round_start_ns_ = clock_ns_;
  last_reply_ns_ = clock_ns_;
  prefill_last_arrival_ns_ = clock_ns_;
  overlap_ns_ = 0;
  layer_slots_.clear();
  phase_ = phase::round_a;
  return issue_micro_batch(0);
}

// The running layer's work for the decoding requests of micro-batch k (all of them without
// sub-batch overlap): appends, queries, png-kv's steady attention; then, in a layer of one
// round, this step's prompt chunks (with the first micro-batch).
std::vector<device_work> host_engine::issue_micro_batch(uint32_t k) {
  const uint32_t layer = layer_;
  const auto& m = costs_.model();
  const uint32_t ps = cfg_.page_size_tokens;
  std::vector<device_work> work;
  if (!mb_.empty()) {
    PNMKV_CHECK_LT(k, mb_.size());
    active_mb_ = int(k);
    clock_ns_ = mb_[k].t0;  // its queries leave after its dense layer
  }
  mb_issued_ = k + 1;

  const uint64_t budget_pages = cfg_.budget_tokens / ps;
  for (const request_spec& r : requests_) {
    if (!is_decoding(r.request_id)) continue;
    if (!mb_.empty() && mb_of_.at(r.request_id) != k) continue;
    const uint64_t at = decoded(r.request_id);
    const request_placement& pl = placements_.at(r.request_id);
    const uint64_t position = r.context_tokens + at;
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      append_token(r, layer, h, position, work);

      head_key key{layer, r.request_id, h};
      head_state& hs = heads_[key];
      gpu_query(r, layer, h, at, hs.q);
      for (uint32_t i = 0; i < pl.shards.size(); ++i)
        if (pl.shards[i].holds_head(h)) hs.shards.push_back(i);
      const uint64_t s = hs.shards.size();
      hs.parts.assign(s, partial{});
      hs.listed.assign(s, {});

      // png-kv: the GPU attends its steady pages now, overlapping the devices.
      uint64_t device_budget = budget_pages;
      const std::vector<uint64_t>* excluded = nullptr;
      if (cfg_.mode == run_mode::png_kv) device_budget = attend_steady(key, hs, budget_pages, excluded);

      if (cfg_.lookahead && lookahead_.count(key)) {  // the last step selected this step's pages
        lookahead_work(r, key, hs, budget_pages, work);
        continue;
      }
      const bool two_rounds = two_round_selection(cfg_.mode, cfg_.cross_shard, uint32_t(s));
      for (uint64_t j = 0; j < s; ++j) {
        device_work w = make_query(r.request_id, layer, h, hs.shards[j], hs.q,
                                   two_rounds ? purpose::candidates : purpose::select);
        // Local selection: each of the s shards takes its share of the budget; exact
        // candidates: each shard offers its best `budget` pages.
        w.query.budget_pages =
            two_rounds ? device_budget : work::local_budget_pages(device_budget, uint32_t(s), uint32_t(j));
        if (excluded) {
          w.excluded_storage = *excluded;
          w.wire_bytes = work::query_wire_bytes(m, cfg_.wire, excluded->size());
        }
        // baseline: the scoring runs on the device actor for the GPU (see the header).
        w.charge_device = cfg_.mode != run_mode::baseline;
        const uint32_t link = link_of(pl, h, hs.shards[j]);
        dispatch(w, w.charge_device, clock_ns_, link);
        pending_.emplace(w.tag, pending_item{r.request_id, layer, h, uint32_t(j),
                                             two_rounds ? purpose::candidates : purpose::select, link,
                                             uint32_t(layer_slots_.size()), w.device_id});
        mb_pending(w.tag, r.request_id, w.vt_arrival_ns);
        work.push_back(std::move(w));
      }
      if (cfg_.mode == run_mode::baseline) {
        hs.ready_ns = cfg_.summaries_resident ? clock_ns_ : 0;
        hs.recalled_tokens = 0;
        if (!cfg_.summaries_resident) baseline_summary_reads(pl, h, position + 1, uint32_t(layer_slots_.size()));
        layer_slots_.push_back(key);
      }
    }
  }
  for (auto& w : work)
    if (w.what == device_work::kind::query) w.bind_query();
  // A layer of one round sends this step's prompt chunks now; two-round layers after their
  // second round (round_b_work).
  if (k == 0 && !layer_has_two_rounds(layer)) prompt_work(layer, work);
  active_mb_ = -1;
  return work;
}

void host_engine::lookahead_work(const request_spec& r, const head_key& key, head_state& hs,
                                 uint64_t budget_pages, std::vector<device_work>& work) {
  const auto& m = costs_.model();
  const uint32_t ps = cfg_.page_size_tokens;
  const auto [layer, request_id, h] = key;
  const request_placement& pl = placements_.at(request_id);
  const uint64_t position = r.context_tokens + decoded(request_id);
  hs.ahead = true;
  // The last step's selection and this step's always-kept pages: the first, and the page
  // the new token is in (a page the last step's search could not know).
  std::vector<uint64_t> pages = lookahead_.at(key);
  pages.push_back(0);
  pages.push_back(position / ps);
  std::sort(pages.begin(), pages.end());
  pages.erase(std::unique(pages.begin(), pages.end()), pages.end());
  const uint32_t s = uint32_t(hs.shards.size());
  std::vector<std::vector<uint64_t>> listed(s);
  for (uint64_t p : pages) {
    const int idx = pl.shard_of(h, p);
    PNMKV_CHECK(idx >= 0, "no shard holds kv_head=", h, " page=", p);
    for (uint32_t j = 0; j < s; ++j)
      if (hs.shards[j] == uint32_t(idx)) listed[j].push_back(p);
  }
  const bool exact = two_round_selection(cfg_.mode, cfg_.cross_shard, s);
  for (uint32_t j = 0; j < s; ++j) {
    const uint32_t link = link_of(pl, h, hs.shards[j]);
    // The search for the next step (exact: the shard's best `budget` pages as candidates;
    // local: its share), off the path: on neither the link's nor the device's timeline.
    const uint64_t search_budget = exact ? budget_pages : work::local_budget_pages(budget_pages, s, j);
    if (!listed[j].empty()) {  // the step's path: attend the pages selected before, and search
      device_work w = make_query(request_id, layer, h, hs.shards[j], hs.q, purpose::attend_listed);
      w.listed_storage = std::move(listed[j]);
      w.wire_bytes = work::query_wire_bytes(m, cfg_.wire, w.listed_storage.size());
      w.query.background = true;
      w.query.budget_pages = search_budget;
      w.search_tag = next_tag_++;
      dispatch(w, true, clock_ns_, link);
      pending_.emplace(w.tag, pending_item{request_id, layer, h, j, purpose::attend_listed, link, 0, w.device_id});
      pending_.emplace(w.search_tag, pending_item{request_id, layer, h, j, purpose::lookahead, link, 0, w.device_id});
      work.push_back(std::move(w));
      continue;
    }
    hs.parts[j].reset(m.gqa_group(), m.head_dim);
    device_work b = make_query(request_id, layer, h, hs.shards[j], hs.q, purpose::lookahead);
    b.query.budget_pages = search_budget;
    b.vt_arrival_ns = clock_ns_;
    cur_.link_bytes += b.wire_bytes;
    pending_.emplace(b.tag, pending_item{request_id, layer, h, j, purpose::lookahead, link, 0, b.device_id});
    work.push_back(std::move(b));
  }
}

// A lookahead attend query that also searches, as the two messages a retry sends apart: the
// attend (the step's path) and the search (the background). Each is kept for a retry under
// its own tag, so either part may be answered, lost or resent alone.
device_work host_engine::attend_part(const device_work& w) {
  device_work a = w;
  a.search_tag = 0;
  a.query.background = false;
  a.bind_query();
  return a;
}

device_work host_engine::search_part(const device_work& w) const {
  device_work b = w;
  b.tag = w.search_tag;
  b.search_tag = 0;
  b.query.round = selection_round::exact_candidates;
  b.listed_storage.clear();
  b.wire_bytes = work::query_wire_bytes(costs_.model(), cfg_.wire);
  b.charge_device = false;
  b.bind_query();
  return b;
}

void host_engine::keep_lookahead(const head_key& key, head_state& hs, uint64_t budget_pages) {
  std::vector<uint64_t> next;
  if (!hs.ahead) {  // a first decode step: its own selection is the next step's
    next = hs.pages;
  } else {
    auto& c = hs.next_candidates;
    if (two_round_selection(cfg_.mode, cfg_.cross_shard, uint32_t(hs.shards.size()))) {
      std::sort(c.begin(), c.end(), candidate_before);
      if (c.size() > budget_pages) c.resize(budget_pages);
    }
    for (const auto& cand : c) next.push_back(cand.page);
    c.clear();
  }
  std::sort(next.begin(), next.end());
  next.erase(std::unique(next.begin(), next.end()), next.end());
  lookahead_[key] = std::move(next);
}

void host_engine::mb_pending(uint64_t tag, uint64_t request_id, double arrival_ns) {
  if (mb_.empty()) return;
  pending_item& pi = pending_.at(tag);
  pi.mb = mb_of_.at(request_id);
  pi.arrival_ns = arrival_ns;
}

result<std::vector<device_work>> host_engine::next_micro_batch() {
  PNMKV_CHECK(micro_batch_pending(), "no micro-batch to issue: issued=", mb_issued_, " of ", mb_.size());
  std::vector<device_work> work = issue_micro_batch(mb_issued_);
  if (pending_.empty()) {  // nothing to wait for (its requests were lost): run the step on
    auto more = advance();
    if (!more) return more.error();
    for (auto& w : *more) work.push_back(std::move(w));
  }
  remember(work);
  return work;
}

// Each micro-batch's replies of the round, in issue order: served and received on its
// timeline (device costs as the devices charged them; the host's timeline says when).
void host_engine::mb_receive() {
  for (mb_state& mb : mb_) {
    if (mb.items.empty()) continue;
    std::sort(mb.items.begin(), mb.items.end(), [](const mb_item& a, const mb_item& b) { return a.tag < b.tag; });
    mb.tl->reserve_devices(tl_.devices());  // devices met since the layer began
    for (const mb_item& it : mb.items) mb.tl->expect(it.arrival_ns, it.device, it.link, it.cost_ns, it.reply_bytes);
    mb.tl->serve();
    mb.last_reply_ns = mb.tl->receive();
    mb.tl->clear_items();
    mb.items.clear();
  }
}

// gpu-only: a write lands in the HBM store (the step's clock charges it, not this).
status host_engine::write_hbm(const device_work& w) {
  PNMKV_CHECK(w.what == device_work::kind::write, "not a write: ", int(w.what));
  return hbm_->write(w.request_id, w.layer, w.kv_head, w.position, w.k.data(), w.v.data(), w.n_tokens);
}

// gpu-only, one layer (schedulers/step_model.cpp, layer_gpu_only, predicts the same): after
// the dense layer, per decoding (request, KV head) the new token's K/V is written to HBM and
// the head is scored, selected and attended there, one after another on the GPU; then this
// step's prompt chunks are written. Selection is the devices' local round over one shard
// holding every page, with the whole budget: at a budget covering every page, dense attention.
status host_engine::layer_gpu_only(uint32_t layer) {
  const auto& m = costs_.model();
  const uint32_t group = m.gqa_group(), ps = cfg_.page_size_tokens;
  uint64_t tokens = step_decoding_.size();
  for (const prefill_chunk& c : step_prefill_) tokens += c.tokens;
  const op_cost dense = costs_.gpu_dense_layer(static_cast<uint32_t>(std::min<uint64_t>(tokens, UINT32_MAX)));
  if (trace_) trace_->set_layer(layer), trace_->gpu(trace_name::dense, clock_ns_, dense.time_ns);
  clock_ns_ = layer_t0(clock_ns_, dense, op_cost{});
  cur_.dense_ns += dense.time_ns;
  charge_gpu(dense);
  tl_.begin(clock_ns_);
  round_start_ns_ = last_reply_ns_ = prefill_last_arrival_ns_ = clock_ns_;
  overlap_ns_ = 0;
  phase_ = phase::round_a;
  gpu_ = gpu_ranks(1, clock_ns_);
  gpu_.set_trace(trace_, trace_name::attention);  // each head's K/V write and attention
  const double t0 = clock_ns_;
  const op_cost append = costs_.gpu_hbm_write(costs_.kv_bytes(1));
  for (const request_spec& r : requests_) {
    if (!is_decoding(r.request_id)) continue;
    const uint64_t at = decoded(r.request_id);
    const uint64_t position = r.context_tokens + at;
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      const device_work app = token_write(r.request_id, layer, h, position);
      if (auto st = write_hbm(app); !st) return st;

      head_state& hs = heads_[{layer, r.request_id, h}];
      gpu_query(r, layer, h, at, hs.q);
      hs.shards = {0};
      hs.parts.assign(1, partial{});
      hs.listed.assign(1, {});
      device_query q;
      q.request_id = r.request_id;
      q.step = step_;
      q.layer = layer;
      q.kv_head = h;
      q.group = group;
      q.q = hs.q.data();
      q.sequence_tokens = position + 1;
      q.budget_pages = cfg_.budget_tokens / ps;
      q.round = selection_round::local;
      device_answer ans;
      if (auto st = hbm_->query(q, ans); !st) return st;
      hs.parts[0] = std::move(ans.part);
      hs.pages = std::move(ans.pages);
      cur_.emulated_bytes_read += ans.bytes_scanned;
      cur_.emulated_flops += ans.flops;
      cur_.emulated_int_ops += ans.search.int_ops;
      // Scoring every summary and attending the selected rows, from HBM.
      const op_cost ga = costs_.gpu_attention(double(ans.bytes_scanned), ans.flops);
      gpu_.run(0, t0, append.time_ns);
      gpu_.run(0, t0, ga.time_ns);
      charge_gpu(append);
      charge_gpu(ga);
      cur_.gpu_attention_ns += append.time_ns + ga.time_ns;
    }
  }
  for (const prefill_chunk& c : step_prefill_) {
    const op_cost wr = costs_.gpu_hbm_write(costs_.kv_bytes(double(c.tokens)));
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      std::vector<device_work> writes;
      prefill_writes(spec(c.request_id), layer, h, c.position, c.position + c.tokens, writes);
      for (const device_work& w : writes)
        if (auto st = write_hbm(w); !st) return st;
      gpu_.run(0, t0, wr.time_ns);
      charge_gpu(wr);
      cur_.gpu_attention_ns += wr.time_ns;
    }
    if (layer == 0) cur_.prefill_tokens += c.tokens;
  }
  return {};
}

// gpu-only: dense attention over every page in HBM, the ground truth (not charged, not timed).
status host_engine::verify_gpu_only() {
  const uint32_t group = costs_.model().gqa_group();
  for (auto& [key, hs] : heads_) {
    const auto [layer, request_id, h] = key;
    device_query q;
    q.request_id = request_id;
    q.step = step_;
    q.layer = layer;
    q.kv_head = h;
    q.group = group;
    q.q = hs.q.data();
    q.sequence_tokens = spec(request_id).context_tokens + decoded(request_id) + 1;
    q.round = selection_round::dense;
    device_answer ans;
    if (auto st = hbm_->query(q, ans); !st) return st;
    hs.dense_parts.assign(1, std::move(ans.part));
  }
  return {};
}

// This step's prompt chunks of `layer`, after the layer's decode traffic on the link (as
// the simulator's step model). Devices store them (energy, no time on their clocks, as
// decode appends); nothing waits for them but the end of the layer (finish_layer).
void host_engine::prompt_work(uint32_t layer, std::vector<device_work>& work) {
  const auto& m = costs_.model();
  if (trace_) trace_->set_send_name(trace_name::prefill_write);
  for (const prefill_chunk& c : step_prefill_) {
    const request_spec& r = spec(c.request_id);
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      const size_t first = work.size();
      prefill_writes(r, layer, h, c.position, c.position + c.tokens, work);
      const request_placement& pl = placements_.at(c.request_id);
      for (size_t i = first; i < work.size(); ++i) {
        const int idx = pl.shard_of(h, work[i].position / cfg_.page_size_tokens);
        const uint32_t link = link_of(pl, h, uint32_t(idx));
        dispatch(work[i], true, send_tl().out_free_ns(link), link);
        prefill_last_arrival_ns_ = std::max(prefill_last_arrival_ns_, work[i].vt_arrival_ns);
        const double kv = costs_.kv_bytes(double(work[i].n_tokens));
        const double kv_j = device_service_cost(costs_, cfg_.mode == run_mode::baseline ? device_op::expander
                                                                                         : device_op::pnm,
                                                kv).energy_j;
        cur_.energy_j += kv_j;
        step_device_energy_j_[work[i].device_id] += kv_j;
      }
    }
    if (layer == 0) cur_.prefill_tokens += c.tokens;
  }
  if (trace_) trace_->set_send_name(trace_name::send);
}

// After round a of exact / baseline selection: the GPU picks the global top pages from the
// shards' candidates — forced pages first, then by score, ties to the lower page — exactly
// what one device holding every page would select.
status host_engine::finish_round_a() {
  const uint64_t budget_pages = cfg_.budget_tokens / cfg_.page_size_tokens;
  for (auto& [key, hs] : heads_) {
    if (std::get<0>(key) != layer_ || hs.ahead) continue;
    const auto [layer, request_id, h] = key;
    const request_placement& pl = placements_.at(request_id);
    uint64_t take = budget_pages;
    if (cfg_.mode == run_mode::png_kv) {
      const steady_state& ss = steady_.at(key);
      take = budget_pages > ss.pages.size() ? budget_pages - ss.pages.size() : 0;
    }
    auto& c = hs.candidates;
    std::sort(c.begin(), c.end(), candidate_before);
    if (c.size() > take) c.resize(take);
    for (const auto& cand : c) {
      int idx = pl.shard_of(h, cand.page);
      PNMKV_CHECK(idx >= 0, "no shard holds kv_head=", h, " page=", cand.page);
      for (size_t j = 0; j < hs.shards.size(); ++j)
        if (hs.shards[j] == uint32_t(idx)) hs.listed[j].push_back(cand.page);
    }
    for (auto& l : hs.listed) std::sort(l.begin(), l.end());
    hs.candidates.clear();
  }
  if (cfg_.mode == run_mode::baseline) return finish_baseline_scoring();
  if (!mb_.empty()) {  // each micro-batch's round b starts once its round a is in
    mb_receive();
    for (mb_state& mb : mb_)
      mb.round_start_ns = second_round_start(mb.t0, std::max(0.0, mb.last_reply_ns - mb.t0), mb.overlap_ns);
    round_device_ns_ = 0;
    device_busy_ns_.clear();
    return {};
  }
  // Exact selection: round b starts once round a's replies are in and the GPU's steady
  // attention (png-kv) is done.
  last_reply_ns_ = tl_.receive();
  const double t0 = tl_.t0();
  const double wait_ns = std::max(0.0, last_reply_ns_ - t0);
  clock_ns_ = second_round_start(t0, wait_ns, overlap_ns_);
  tl_.clear_items();
  close_round(wait_ns);
  round_start_ns_ = clock_ns_;
  return {};
}

// baseline: every summary not resident in HBM is read from the expander holding it: a
// request out, the expander's read, the summaries back (layer_work, at t0).
void host_engine::baseline_summary_reads(const request_placement& pl, uint32_t kv_head,
                                         uint64_t sequence_tokens, uint32_t slot) {
  const uint32_t ps = cfg_.page_size_tokens;
  for (uint32_t i = 0; i < pl.shards.size(); ++i) {
    const shard_placement& sh = pl.shards[i];
    if (!sh.holds_head(kv_head)) continue;
    const uint64_t pages = (sh.tokens_held_at(sequence_tokens, ps) + ps - 1) / ps;
    const double bytes = double(pages) * costs_.summary_bytes_per_page(cfg_.summary_elem_bytes);
    const op_cost rd = device_service_cost(costs_, device_op::expander, bytes);
    cur_.energy_j += rd.energy_j;
    step_device_energy_j_[sh.device_id] += rd.energy_j;
    charge_gpu(costs_.gpu_hbm_write(bytes));
    cur_.device_bytes_scanned += uint64_t(bytes);
    const uint32_t link = link_of(pl, kv_head, i);
    const double arrival = tl_.send(link, clock_ns_, work::header_bytes);
    cur_.link_bytes += work::header_bytes;
    const uint64_t reply = work::summary_read_wire_bytes(costs_, pages, cfg_.summary_elem_bytes);
    cur_.link_bytes += reply;
    tl_.expect(arrival, device_slot(sh.device_id), link, rd.time_ns, reply, slot);
  }
}

// baseline, after round a: the summaries are in (resident, or read over the link); the
// GPU scores every head's summaries, layer-wide, then the recalls leave.
status host_engine::finish_baseline_scoring() {
  const double t0 = tl_.t0();
  if (!tl_.items().empty()) {  // summaries over the link
    tl_.serve();
    tl_.receive();
    for (const auto& it : tl_.items())
      if (head_state* hs = slot_head(it.slot)) hs->ready_ns = std::max(hs->ready_ns, it.done_ns);
    tl_.clear_items();
  }
  const uint32_t ps = cfg_.page_size_tokens;
  gpu_ = gpu_ranks(1, t0);
  gpu_.set_trace(trace_, trace_name::score);
  double in = t0;
  const uint32_t slots = uint32_t(layer_slots_.size());
  for (uint32_t i = 0; i < slots; ++i)
    if (const head_state* hs = slot_head(i)) in = std::max(in, hs->ready_ns);
  gpu_.hold_until(in);
  for (uint32_t i = 0; i < slots; ++i) {
    if (!slot_head(i)) continue;  // its request was lost with a device
    const uint64_t request_id = std::get<1>(layer_slots_[i]);
    const uint64_t total_pages = (spec(request_id).context_tokens + decoded(request_id) + 1 + ps - 1) / ps;
    const work::query_work sw = work::gpu_score_work(costs_, total_pages, cfg_.heads_scored, cfg_.summary_elem_bytes);
    const op_cost sc = costs_.gpu_attention(cfg_.summaries_resident ? sw.bytes : 0, sw.flops);
    charge_gpu(sc);
    cur_.gpu_attention_ns += sc.time_ns;
    gpu_.run(0, in, sc.time_ns);
  }
  const double wait_ns = in - t0;
  clock_ns_ = gpu_.end();
  for (uint32_t i = 0; i < slots; ++i)
    if (head_state* hs = slot_head(i)) hs->ready_ns = clock_ns_;
  if (trace_) trace_->set_device_name(trace_name::recall);
  close_round(wait_ns);
  round_start_ns_ = clock_ns_;
  return {};
}

result<std::vector<device_work>> host_engine::round_b_work() {
  std::vector<device_work> work;
  // baseline: each head's slot (its index among the layer's heads), looked up per recall.
  std::map<head_key, uint32_t> slot_of;
  if (cfg_.mode == run_mode::baseline)
    for (uint32_t i = 0; i < layer_slots_.size(); ++i) slot_of.emplace(layer_slots_[i], i);
  for (auto& [key, hs] : heads_) {
    if (std::get<0>(key) != layer_) continue;
    const auto [layer, request_id, h] = key;
    const request_placement& pl = placements_.at(request_id);
    if (cfg_.mode == run_mode::baseline) {
      const auto slot = slot_of.find(key);
      PNMKV_CHECK(slot != slot_of.end(), "recall for request ", request_id, " head ", h, " of no layer slot");
      auto st = baseline_recalls(key, hs, slot->second, work);
      if (!st) return st;
      continue;
    }
    if (hs.ahead) continue;  // attended in round a (lookahead selection)
    for (uint32_t j = 0; j < hs.shards.size(); ++j) {
      if (hs.listed[j].empty()) {
        hs.parts[j].reset(costs_.model().gqa_group(), costs_.model().head_dim);
        continue;
      }
      device_work w = make_query(request_id, layer, h, hs.shards[j], hs.q, purpose::attend_listed);
      w.listed_storage = hs.listed[j];
      w.wire_bytes = work::query_wire_bytes(costs_.model(), cfg_.wire, w.listed_storage.size());
      const uint32_t link = link_of(pl, h, hs.shards[j]);
      double now = clock_ns_;
      if (!mb_.empty()) {
        active_mb_ = int(mb_of_.at(request_id));
        now = mb_[size_t(active_mb_)].round_start_ns;
      }
      dispatch(w, true, now, link);
      active_mb_ = -1;
      pending_.emplace(w.tag, pending_item{request_id, layer, h, j, purpose::attend_listed, link, 0, w.device_id});
      mb_pending(w.tag, request_id, w.vt_arrival_ns);
      work.push_back(std::move(w));
    }
  }
  for (auto& w : work)
    if (w.what == device_work::kind::query) w.bind_query();
  if (!mb_.empty()) active_mb_ = 0;  // prompt chunks go with the first micro-batch
  prompt_work(layer_, work);
  active_mb_ = -1;
  return work;
}

host_engine::cache_state& host_engine::cache_of(const head_key& key) {
  auto it = cache_.find(key);
  if (it == cache_.end()) {
    const uint64_t capacity_pages = cfg_.recall_cache_tokens / cfg_.page_size_tokens;
    it = cache_.emplace(key, cache_state{recall_cache(cfg_.recall_cache, capacity_pages), {}}).first;
  }
  return it->second;
}

// baseline, round b of one head: the recall cache looks the head's selected pages up; each
// shard is asked for the pages it holds that the cache does not (misses); a shard whose
// pages all hit is attended now, from HBM.
status host_engine::baseline_recalls(const head_key& key, head_state& hs, uint32_t slot,
                                     std::vector<device_work>& work) {
  const auto [layer, request_id, h] = key;
  const uint32_t ps = cfg_.page_size_tokens;
  const request_placement& pl = placements_.at(request_id);
  std::vector<uint64_t> selected;
  for (const auto& l : hs.listed) selected.insert(selected.end(), l.begin(), l.end());
  std::sort(selected.begin(), selected.end());
  cache_state& cache = cache_of(key);
  const recall_lookup found = cache.policy.lookup(selected);
  for (uint64_t p : found.evicted) {
    PNMKV_CHECK(!std::binary_search(selected.begin(), selected.end(), p), "recall cache evicted page ", p,
                " of its own step: capacity ", cache.policy.capacity_pages(), " < ", selected.size(), " pages");
    cache.pages.erase(p);
  }
  calibrate_recall(key, selected, found.hits);
  hs.missed.assign(hs.shards.size(), {});
  const uint64_t end = spec(request_id).context_tokens + decoded(request_id) + 1;
  for (uint32_t j = 0; j < hs.shards.size(); ++j) {
    for (uint64_t p : hs.listed[j])
      if (std::binary_search(found.missed.begin(), found.missed.end(), p)) hs.missed[j].push_back(p);
    if (hs.missed[j].empty()) {  // every page in HBM (or none selected here)
      auto st = attend_recalled(key, hs, j, nullptr);
      if (!st) return st;
      continue;
    }
    device_work w;
    w.what = device_work::kind::recall;
    w.device_id = pl.shards[hs.shards[j]].device_id;
    w.shard_id = pl.shards[hs.shards[j]].shard_id;
    w.tag = next_tag_++;
    w.request_id = request_id;
    w.layer = layer;
    w.kv_head = h;
    w.pages = hs.missed[j];
    w.wire_bytes = work::recall_request_wire_bytes(w.pages.size());
    uint64_t tokens = 0;
    for (uint64_t p : w.pages) tokens += std::min<uint64_t>(ps, end - p * ps);
    w.device_cost_ns = device_service_cost(costs_, device_op::expander, costs_.kv_bytes(double(tokens))).time_ns;
    const uint32_t link = link_of(pl, h, hs.shards[j]);
    dispatch(w, true, clock_ns_, link);
    pending_.emplace(w.tag, pending_item{request_id, layer, h, j, purpose::recall, link, slot, w.device_id});
    work.push_back(std::move(w));
  }
  return {};
}

// baseline: shard j's selected pages (hs.listed[j]) in one HBM buffer, in page order — the
// recalled ones from the reply `r` (hs.missed[j], in the same order; none when r is null),
// the others from the recall cache — attended into shard j's partial: the same pages with
// the same bytes in the same order whichever way each came, so the same partial. Recalled
// pages the cache holds are kept.
status host_engine::attend_recalled(const head_key& key, head_state& hs, uint32_t j, const device_reply* r) {
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim, group = m.gqa_group(), ps = cfg_.page_size_tokens;
  const auto& pages = hs.listed[j];
  const auto& missed = hs.missed[j];
  if (pages.empty()) {
    hs.parts[j].reset(group, d);
    return {};
  }
  const uint64_t request_id = std::get<1>(key);
  if (r && r->rows_per_page.size() != missed.size())
    return status{errc::shape_mismatch, "recall reply for request " + std::to_string(request_id) + " has " +
                                            std::to_string(r->rows_per_page.size()) + " pages, asked for " +
                                            std::to_string(missed.size())};
  PNMKV_CHECK(r != nullptr || missed.empty(), "shard ", j, " has pages to recall and no reply");
  kv_head_shape shape;
  shape.head_dim = d;
  shape.page_size_tokens = ps;
  auto buf = kv_head_store::create(shape, pages.size() * ps);
  if (!buf) return buf.error();
  cache_state& cache = cache_of(key);
  const uint64_t end = spec(request_id).context_tokens + decoded(request_id) + 1;
  size_t off = 0, next_missed = 0;
  for (uint64_t p : pages) {
    const uint32_t rows_now = uint32_t(std::min<uint64_t>(ps, end - p * ps));
    if (next_missed < missed.size() && missed[next_missed] == p) {
      const uint32_t rows = r->rows_per_page[next_missed++];
      if (rows != rows_now || off + size_t(rows) * d > r->k.size() || r->k.size() != r->v.size())
        return status{errc::shape_mismatch, "recall reply for request " + std::to_string(request_id) + " page " +
                                                std::to_string(p) + " has " + std::to_string(rows) + " rows, the page " +
                                                std::to_string(rows_now)};
      auto st = buf->append(p * ps, r->k.data() + off, r->v.data() + off, rows);
      if (!st) return st;
      if (cache.policy.holds(p))
        cache.pages[p] = cached_page{std::vector<bf16>(r->k.begin() + off, r->k.begin() + off + size_t(rows) * d),
                                     std::vector<bf16>(r->v.begin() + off, r->v.begin() + off + size_t(rows) * d), rows};
      off += size_t(rows) * d;
      hs.recalled_tokens += rows;
    } else {
      const auto c = cache.pages.find(p);
      PNMKV_CHECK(c != cache.pages.end(), "page ", p, " of request ", request_id, " is a hit with no bytes");
      PNMKV_CHECK_EQ(c->second.rows, rows_now);
      auto st = buf->append(p * ps, c->second.k.data(), c->second.v.data(), rows_now);
      if (!st) return st;
      hs.cached_tokens += rows_now;
    }
  }
  std::vector<uint32_t> all(buf->page_count());
  for (uint32_t i = 0; i < all.size(); ++i) all[i] = i;
  auto st = attend_pages(*buf, hs.q.data(), group, all.data(), all.size(), 1.0f / std::sqrt(float(d)), hs.parts[j]);
  if (!st) return st;
  hs.pages.insert(hs.pages.end(), pages.begin(), pages.end());
  return {};
}

// The recall cache's counts: every lookup for the run's totals, lookups after a head's first
// (a warm cache) for the calibration.
void host_engine::calibrate_recall(const head_key& key, const std::vector<uint64_t>& sel, uint64_t hits) {
  recall_hits_ += hits;
  recall_misses_ += sel.size() - hits;
  if (cache_of(key).policy.lookups() <= 1) return;
  cal_recall_hits_ += hits;
  cal_recall_selected_ += sel.size();
  ++cal_recall_samples_;
}

host_engine::recall_stats host_engine::recall_cache_stats() const {
  recall_stats s;
  s.policy = cfg_.recall_cache;
  s.capacity_tokens = cfg_.recall_cache == recall_cache_policy::none ? 0 : cfg_.recall_cache_tokens;
  s.hits = recall_hits_;
  s.misses = recall_misses_;
  s.shadow = cfg_.mode != run_mode::baseline;
  return s;
}

// Dense queries of every (live layer, request, KV head, shard): the ground truth the step's
// outputs are checked against. Not charged, not timed, and they do not touch any clock.
std::vector<device_work> host_engine::verify_work() {
  if (hbm_) {
    auto st = verify_gpu_only();
    PNMKV_CHECK(st.is_ok(), st.to_string());
    return {};
  }
  std::vector<device_work> work;
  for (auto& [key, hs] : heads_) {
    const auto [layer, request_id, h] = key;
    hs.dense_parts.assign(hs.shards.size(), partial{});
    for (uint32_t j = 0; j < hs.shards.size(); ++j) {
      device_work w = make_query(request_id, layer, h, hs.shards[j], hs.q, purpose::verify);
      pending_.emplace(w.tag, pending_item{request_id, layer, h, j, purpose::verify, 0, 0, w.device_id});
      work.push_back(std::move(w));
    }
  }
  for (auto& w : work) w.bind_query();
  return work;
}

result<std::vector<device_work>> host_engine::on_reply(const device_reply& r) {
  sent_.erase(r.tag);
  auto next = on_reply_impl(r);
  if (next) remember(*next);
  return next;
}

void host_engine::remember(const std::vector<device_work>& work) {
  if (!cfg_.keep_for_retry) return;
  for (const auto& w : work) {
    if (w.what != device_work::kind::write) {
      if (w.search_tag) {  // two replies: kept as two messages
        if (pending_.count(w.tag)) sent_[w.tag] = attend_part(w);
        if (pending_.count(w.search_tag)) sent_[w.search_tag] = search_part(w);
      } else if (pending_.count(w.tag)) {
        sent_[w.tag] = w;
      }
    } else if (cfg_.keep_writes_for_retry) {
      step_writes_.push_back(w);
    }
  }
}

std::vector<device_work> host_engine::retry_work() const {
  std::vector<device_work> out;
  for (const auto& w : step_writes_)
    if (!dead_.count(w.device_id)) out.push_back(w);
  for (const auto& [tag, w] : sent_) {
    if (!pending_.count(tag)) continue;
    device_work c = w;
    c.bind_query();
    out.push_back(std::move(c));
  }
  return out;
}

// Takes `dead` out of a placement: its replica slots are dropped and each shard it served
// as primary is served by its first replica from now on; the epoch moves on when anything
// changed. A shard whose last copy it held keeps it as primary, waiting for a recompute,
// when `recompute`; else an error (and the placement half moved).
status host_engine::move_off(request_placement& pl, uint32_t dead, bool recompute,
                             std::vector<rebuild_need>* needs) {
  bool changed = false;
  for (auto& sh : pl.shards) {
    auto& reps = sh.replica_device_ids;
    const size_t before = reps.size();
    reps.erase(std::remove(reps.begin(), reps.end(), dead), reps.end());
    const bool lost_replica = reps.size() != before;
    changed = changed || lost_replica;
    if (sh.device_id != dead) {
      // One copy fewer; a shard waiting for a recompute gets its copies after it.
      if (lost_replica && needs && !recovering_.count({pl.request_id, sh.shard_id}))
        needs->push_back({pl.request_id, sh.shard_id, false, sh.device_id});
      continue;
    }
    if (reps.empty()) {
      if (!recompute)
        return {errc::peer_down,
                "device " + std::to_string(dead) + " held the last copy of shard " + std::to_string(sh.shard_id) +
                    " of request " + std::to_string(pl.request_id) +
                    (cfg_.recompute ? "" : " (cluster.recompute is off; cluster.replication >= 2 survives a device)")};
      if (recovering_.emplace(std::make_pair(pl.request_id, sh.shard_id), dead).second && needs)
        needs->push_back({pl.request_id, sh.shard_id, true, 0});
      continue;
    }
    sh.device_id = reps.front();
    reps.erase(reps.begin());
    changed = true;
    if (needs) needs->push_back({pl.request_id, sh.shard_id, false, sh.device_id});
  }
  if (changed) ++pl.epoch;
  return {};
}

host_engine::head_state* host_engine::slot_head(uint32_t slot) {
  PNMKV_CHECK_LT(size_t(slot), layer_slots_.size());
  auto it = heads_.find(layer_slots_[slot]);
  return it == heads_.end() ? nullptr : &it->second;
}

void host_engine::drop_request(uint64_t request_id) {
  auto of = [&](uint64_t id) { return id == request_id; };
  for (auto it = pending_.begin(); it != pending_.end();)
    it = of(it->second.request_id) ? pending_.erase(it) : std::next(it);
  for (auto it = sent_.begin(); it != sent_.end();)
    it = of(it->second.request_id ? it->second.request_id : it->second.query.request_id) ? sent_.erase(it)
                                                                                          : std::next(it);
  step_writes_.erase(std::remove_if(step_writes_.begin(), step_writes_.end(),
                                    [&](const device_work& w) { return of(w.request_id); }),
                     step_writes_.end());
  step_decoding_.erase(std::remove(step_decoding_.begin(), step_decoding_.end(), request_id), step_decoding_.end());
  step_prefill_.erase(std::remove_if(step_prefill_.begin(), step_prefill_.end(),
                                     [&](const prefill_chunk& c) { return of(c.request_id); }),
                      step_prefill_.end());
  auto drop = [&](auto& m) {
    for (auto i = m.begin(); i != m.end();) i = of(std::get<1>(i->first)) ? m.erase(i) : std::next(i);
  };
  drop(heads_);  // baseline's layer slots keep its keys: slot_head() skips them
  drop(steady_);
  drop(shadow_);
  drop(previous_selection_);
  drop(lookahead_);
  drop(cache_);
  drop(written_);
  for (auto it = recovering_.begin(); it != recovering_.end();)
    it = of(it->first.first) ? recovering_.erase(it) : std::next(it);
  // The closed batch's prefill cursor walks requests_ by index.
  const auto r = std::find_if(requests_.begin(), requests_.end(), [&](const request_spec& x) { return of(x.request_id); });
  if (r != requests_.end()) {
    const size_t i = size_t(r - requests_.begin());
    if (i < pf_request_) {
      --pf_request_;
    } else if (i == pf_request_) {
      pf_layer_ = pf_head_ = 0;
      pf_position_ = 0;
    }
    requests_.erase(r);
  }
  placements_.erase(request_id);
  rstate_.erase(request_id);
  request_digest_.erase(request_id);
  if (hbm_) hbm_->release(request_id);
}

std::set<uint32_t> host_engine::devices_owing() const {
  std::set<uint32_t> out;
  for (const auto& [tag, pi] : pending_) out.insert(pi.device);
  return out;
}

result<failover_result> host_engine::fail_over(uint32_t dead) {
  failover_result fr;
  if (!dead_.insert(dead).second) return fr;
  std::map<std::pair<uint64_t, uint32_t>, uint32_t> primary_before;
  for (const auto& [rid, pl] : placements_)
    for (const auto& sh : pl.shards) primary_before[{rid, sh.shard_id}] = sh.device_id;
  for (auto& [rid, pl] : placements_) {
    auto st = move_off(pl, dead, cfg_.recompute, &fr.rebuild);
    if (!st) fr.lost.push_back({rid, st.message()});
  }
  // A request lost is not rebuilt.
  fr.rebuild.erase(std::remove_if(fr.rebuild.begin(), fr.rebuild.end(),
                                  [&](const rebuild_need& n) {
                                    return std::any_of(fr.lost.begin(), fr.lost.end(), [&](const lost_request& l) {
                                      return l.request_id == n.request_id;
                                    });
                                  }),
                   fr.rebuild.end());
  for (const lost_request& l : fr.lost) drop_request(l.request_id);
  std::vector<device_work>& out = fr.resend;
  // A replica promoted to primary gets the request's decoded tokens again, ahead of the
  // work resent to it: decode appends are not acknowledged, so one lost on the way to it
  // (a dropped message) would leave it a row short for good, and the queries it now
  // serves would wait for that row forever. Rows it holds are acknowledged unchanged.
  for (const auto& [key, before] : primary_before) {
    const auto pl = placements_.find(key.first);
    if (before != dead || pl == placements_.end()) continue;
    const shard_placement* sh = shard(key.first, key.second);
    if (!sh || sh->device_id == dead) continue;  // lost, or waiting for a recompute
    const uint64_t from = spec(key.first).context_tokens;
    for (uint32_t l = 0; l < cfg_.live_layers; ++l)
      for (uint32_t h = sh->kv_head_begin; h < sh->kv_head_end; ++h) {
        const uint64_t to = tokens_written(key.first, l, h);
        for (uint64_t at = from; at < to;) at = shard_writes(key.first, key.second, sh->device_id, l, h, at, to, out, nullptr);
      }
  }
  if (!cfg_.keep_for_retry) {
    for (const auto& [tag, pi] : pending_)
      if (pi.device == dead)
        return status{errc::peer_down, "device " + std::to_string(dead) +
                                           " went down with work in flight and no copy kept to retry it"};
  }
  for (auto& [tag, w] : sent_) {
    if (w.device_id != dead || !pending_.count(tag)) continue;
    const request_placement& pl = placements_.at(w.request_id ? w.request_id : w.query.request_id);
    const shard_placement* sh = nullptr;
    for (const auto& s : pl.shards)
      if (s.shard_id == w.shard_id) sh = &s;
    PNMKV_CHECK(sh != nullptr, "shard_id=", w.shard_id, " not in the placement of request ",
                pl.request_id);
    if (sh->device_id == dead) continue;  // no copy left: it waits for the recompute
    device_work c = w;
    c.device_id = sh->device_id;
    c.bind_query();
    // Sent again over the link; verification stays uncharged.
    if (c.query.background) cur_.link_bytes += c.wire_bytes;  // a lookahead search: off the timeline
    else if (!c.verification)
      dispatch(c, c.what == device_work::kind::recall || c.charge_device, clock_ns_, pending_.at(tag).link);
    w.device_id = c.device_id;
    pending_.at(tag).device = c.device_id;
    out.push_back(std::move(c));
  }
  // A request dropped with the last work of a round: the step moves on without it.
  if (phase_ != phase::done && pending_.empty()) {
    auto more = advance();
    if (!more) return more.error();
    remember(*more);
    for (auto& w : *more) out.push_back(std::move(w));
  }
  return fr;
}

// ---------------------------------------------------------------------------------------
// Rebuilding copies after a loss

uint64_t host_engine::tokens_written(uint64_t request_id, uint32_t layer, uint32_t kv_head) const {
  auto it = written_.find(head_key{layer, request_id, kv_head});
  return it == written_.end() ? 0 : it->second;
}

const shard_placement* host_engine::shard(uint64_t request_id, uint32_t shard_id) const {
  auto pl = placements_.find(request_id);
  if (pl == placements_.end()) return nullptr;
  for (const auto& sh : pl->second.shards)
    if (sh.shard_id == shard_id) return &sh;
  return nullptr;
}

bool host_engine::recovering(uint64_t request_id) const {
  auto it = recovering_.lower_bound({request_id, 0});
  return it != recovering_.end() && it->first.first == request_id;
}

void host_engine::charge_recovery(const op_cost& c) {
  recovery_pending_ns_ += c.time_ns;
  recovery_pending_j_ += c.energy_j;
  recovery_.stall_ns += c.time_ns;
}

device_work host_engine::rebuild_write(uint64_t request_id, uint32_t shard_id, uint32_t device, uint32_t layer,
                                       uint32_t kv_head, uint64_t position, uint64_t n_tokens) const {
  const auto& m = costs_.model();
  device_work w;
  w.what = device_work::kind::write;
  w.bulk = true;
  w.rebuild = true;
  w.request_id = request_id;
  w.layer = layer;
  w.kv_head = kv_head;
  w.position = position;
  w.n_tokens = n_tokens;
  w.k.resize(n_tokens * m.head_dim);
  w.v.resize(n_tokens * m.head_dim);
  w.wire_bytes = work::prefill_wire_bytes(m, n_tokens);
  w.device_id = device;
  w.shard_id = shard_id;
  return w;
}

uint64_t host_engine::shard_writes(uint64_t request_id, uint32_t shard_id, uint32_t device, uint32_t layer,
                                   uint32_t kv_head, uint64_t from, uint64_t to, std::vector<device_work>& out,
                                   uint64_t* tokens) const {
  const shard_placement* sh = shard(request_id, shard_id);
  PNMKV_CHECK(sh != nullptr && sh->holds_head(kv_head), "request ", request_id, " shard ", shard_id, " head ", kv_head);
  const uint32_t ps = cfg_.page_size_tokens;
  const request_placement& pl = placements_.at(request_id);
  const int index = int(sh - pl.shards.data());
  const uint64_t stop = std::min(to, from + std::max<uint64_t>(1, cfg_.rebuild_chunk_tokens));
  while (from < stop) {
    const uint64_t end = chunk_end(pl, kv_head, from, stop);
    if (pl.shard_of(kv_head, from / ps) != index) {
      from = end;  // another shard's pages
      continue;
    }
    const uint64_t n = end - from;
    device_work w = rebuild_write(request_id, shard_id, device, layer, kv_head, from, n);
    wl_.keys(request_id, layer, kv_head, from, n, w.k.data());
    wl_.values(request_id, layer, kv_head, from, n, w.v.data());
    if (tokens) *tokens += n;
    out.push_back(std::move(w));
    from = end;
  }
  return stop;
}

uint64_t host_engine::recompute_writes(uint64_t request_id, uint32_t shard_id, uint32_t target, uint32_t layer,
                                       uint32_t kv_head, uint64_t from, uint64_t to, std::vector<device_work>& out) {
  PNMKV_CHECK(recovering_.count({request_id, shard_id}), "shard ", shard_id, " of request ", request_id,
              " is not waiting for a recompute");
  const auto& m = costs_.model();
  const size_t first = out.size();
  const uint64_t stop = shard_writes(request_id, shard_id, target, layer, kv_head, from, to, out, nullptr);
  const double scale = double(m.layers) / double(cfg_.live_layers);
  // The GPU re-prefills each token once, for every layer and head: charged with the
  // shard's first live (layer, KV head).
  const bool charge_gpu_here = layer == 0 && kv_head == shard(request_id, shard_id)->kv_head_begin;
  for (size_t i = first; i < out.size(); ++i) {
    const device_work& w = out[i];
    const double kv = costs_.kv_bytes(double(w.n_tokens));
    op_cost c = rebuild_write_cost(costs_, kv * scale, cfg_.mode == run_mode::baseline);
    if (charge_gpu_here) {
      c += recompute_chunk_cost(costs_, w.n_tokens, w.position);
      recovery_.recomputed_tokens += w.n_tokens;
    }
    charge_recovery(c);
    recovery_.recomputed_bytes += uint64_t(kv);
  }
  return stop;
}

result<std::vector<device_work>> host_engine::shard_recomputed(uint64_t request_id, uint32_t shard_id,
                                                               uint32_t target) {
  auto rec = recovering_.find({request_id, shard_id});
  if (rec == recovering_.end())
    return status{errc::invalid_argument, "shard " + std::to_string(shard_id) + " of request " +
                                              std::to_string(request_id) + " is not waiting for a recompute"};
  const uint32_t dead = rec->second;
  recovering_.erase(rec);
  request_placement& pl = placements_.at(request_id);
  for (auto& sh : pl.shards)
    if (sh.shard_id == shard_id) sh.device_id = target;
  ++pl.epoch;
  // The running step's work that waited for the shard: to its new primary, charged as a
  // retry is (the stall itself is the recompute's charge).
  std::vector<device_work> out;
  for (auto& [tag, w] : sent_) {
    if (w.device_id != dead || !pending_.count(tag)) continue;
    if ((w.request_id ? w.request_id : w.query.request_id) != request_id || w.shard_id != shard_id) continue;
    device_work c = w;
    c.device_id = target;
    c.bind_query();
    if (c.query.background) cur_.link_bytes += c.wire_bytes;  // a lookahead search: off the timeline
    else if (!c.verification)
      dispatch(c, c.what == device_work::kind::recall || c.charge_device, clock_ns_, pending_.at(tag).link);
    w.device_id = target;
    pending_.at(tag).device = target;
    out.push_back(std::move(c));
  }
  return out;
}

std::vector<uint64_t> host_engine::shard_pages_written(uint64_t request_id, uint32_t shard_id, uint32_t layer,
                                                       uint32_t kv_head) const {
  std::vector<uint64_t> pages;
  const shard_placement* sh = shard(request_id, shard_id);
  if (!sh || !sh->holds_head(kv_head)) return pages;
  const uint32_t ps = cfg_.page_size_tokens;
  const uint64_t n = (tokens_written(request_id, layer, kv_head) + ps - 1) / ps;
  for (uint64_t p = 0; p < n; ++p)
    if (sh->holds_page(p)) pages.push_back(p);
  return pages;
}

device_work host_engine::copy_recall(uint64_t request_id, uint32_t shard_id, uint32_t source, uint32_t layer,
                                     uint32_t kv_head, std::vector<uint64_t> pages) const {
  device_work w;
  w.what = device_work::kind::recall;
  w.rebuild = true;
  w.device_id = source;
  w.shard_id = shard_id;
  w.request_id = request_id;
  w.layer = layer;
  w.kv_head = kv_head;
  w.pages = std::move(pages);
  w.charge_device = false;  // charged by copy_writes, as the whole copy
  w.wire_bytes = work::recall_request_wire_bytes(w.pages.size());  // a RecallRequest: page ids
  return w;
}

std::vector<device_work> host_engine::copy_writes(uint64_t request_id, uint32_t shard_id, uint32_t target,
                                                  uint32_t layer, uint32_t kv_head, const device_reply& r) {
  std::vector<device_work> out;
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim, ps = cfg_.page_size_tokens;
  PNMKV_CHECK_EQ(r.answer.pages.size(), r.rows_per_page.size());
  size_t off = 0, i = 0;
  double kv = 0;
  while (i < r.answer.pages.size()) {
    // A run of consecutive pages, every one full but the last: one write.
    size_t j = i;
    uint64_t rows = r.rows_per_page[i];
    while (j + 1 < r.answer.pages.size() && r.rows_per_page[j] == ps && r.answer.pages[j + 1] == r.answer.pages[j] + 1) {
      ++j;
      rows += r.rows_per_page[j];
    }
    PNMKV_CHECK_LE((off + rows) * d, r.k.size());
    device_work w = rebuild_write(request_id, shard_id, target, layer, kv_head, r.answer.pages[i] * ps, rows);
    std::copy(r.k.begin() + ptrdiff_t(off * d), r.k.begin() + ptrdiff_t((off + rows) * d), w.k.begin());
    std::copy(r.v.begin() + ptrdiff_t(off * d), r.v.begin() + ptrdiff_t((off + rows) * d), w.v.begin());
    kv += costs_.kv_bytes(double(rows));
    off += rows;
    out.push_back(std::move(w));
    i = j + 1;
  }
  const double scale = double(m.layers) / double(cfg_.live_layers);
  charge_recovery(copy_chunk_cost(costs_, kv * scale, cfg_.mode == run_mode::baseline));
  recovery_.copied_bytes += uint64_t(kv);
  return out;
}

result<std::vector<device_work>> host_engine::abandon(uint64_t request_id) {
  drop_request(request_id);
  std::vector<device_work> out;
  if (phase_ != phase::done && pending_.empty()) {
    auto more = advance();
    if (!more) return more.error();
    remember(*more);
    out = std::move(*more);
  }
  return out;
}

status host_engine::replica_added(uint64_t request_id, uint32_t shard_id, uint32_t target) {
  auto pl = placements_.find(request_id);
  if (pl == placements_.end())
    return {errc::invalid_argument, "request " + std::to_string(request_id) + " is not here"};
  for (auto& sh : pl->second.shards) {
    if (sh.shard_id != shard_id) continue;
    if (dead_.count(target) || sh.device_id == target ||
        std::count(sh.replica_device_ids.begin(), sh.replica_device_ids.end(), target))
      return {errc::invalid_argument, "device " + std::to_string(target) + " cannot be a new copy of shard " +
                                          std::to_string(shard_id) + " of request " + std::to_string(request_id)};
    sh.replica_device_ids.push_back(target);
    ++pl->second.epoch;
    return {};
  }
  return {errc::invalid_argument, "request " + std::to_string(request_id) + " has no shard " + std::to_string(shard_id)};
}

result<std::vector<device_work>> host_engine::on_reply_impl(const device_reply& r) {
  auto it = pending_.find(r.tag);
  if (it == pending_.end())
    return status{errc::invalid_argument, "reply with unknown tag " + std::to_string(r.tag) +
                                              " from device " + std::to_string(r.device_id)};
  const pending_item pi = it->second;
  pending_.erase(it);
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim;
  head_key key{pi.layer, pi.request_id, pi.kv_head};

  if (pi.what != purpose::verify) {  // verification is not the step's work
    cur_.emulated_bytes_read += r.answer.bytes_scanned + (r.k.size() + r.v.size()) * sizeof(bf16);
    cur_.emulated_flops += r.answer.flops;  // recalls (K/V copies) do none
    cur_.emulated_int_ops += r.answer.search.int_ops;
  }
  // The device served the work on its own clock (device_service_done on the same
  // device_service_cost) and says when it was done; the reply goes back over the inbound link.
  auto device_done = [&](uint64_t bytes_back, const op_cost& dc) {
    cur_.link_bytes += bytes_back;
    cur_.energy_j += dc.energy_j;
    step_device_energy_j_[r.device_id] += dc.energy_j;
    double& busy = device_busy_ns_[r.device_id];
    busy += dc.time_ns;
    if (cfg_.lookahead) step_device_work_ns_[r.device_id] += dc.time_ns;
    round_device_ns_ = std::max(round_device_ns_, busy);
    if (!mb_.empty()) {  // timed on its micro-batch's timeline at the round's end (mb_receive)
      mb_[pi.mb].items.push_back({r.tag, pi.arrival_ns, device_slot(r.device_id), pi.link, dc.time_ns, bytes_back});
      return;
    }
    tl_.served(r.tag, device_slot(r.device_id), pi.link, dc.time_ns, r.vt_done_ns, bytes_back, pi.slot);
  };

  switch (pi.what) {
    case purpose::verify: {
      head_state& hs = heads_.at(key);
      hs.dense_parts[pi.shard_index] = r.answer.part;
      break;
    }
    case purpose::steady_copy: {
      steady_state& ss = steady_.at(key);
      size_t off = 0;
      for (size_t i = 0; i < r.rows_per_page.size() && i < r.answer.pages.size(); ++i) {
        const size_t n = size_t(r.rows_per_page[i]) * d;
        ss.arriving[r.answer.pages[i]] = {
            std::vector<bf16>(r.k.begin() + off, r.k.begin() + off + n),
            std::vector<bf16>(r.v.begin() + off, r.v.begin() + off + n)};
        off += n;
      }
      // Link bytes, device energy and time were charged when the copy left (copy_work).
      break;
    }
    case purpose::select:
    case purpose::attend_listed: {
      head_state& hs = heads_.at(key);
      hs.parts[pi.shard_index] = r.answer.part;
      hs.pages.insert(hs.pages.end(), r.answer.pages.begin(), r.answer.pages.end());
      const uint64_t bytes = work::partial_wire_bytes(m, cfg_.wire, r.answer.pages.size());
      count_search(r.answer);
      cur_.device_bytes_scanned += r.answer.bytes_scanned;
      device_done(bytes, device_service_cost(costs_, device_op::pnm, double(r.answer.bytes_scanned),
                                             r.answer.flops, r.answer.search.int_ops));
      break;
    }
    case purpose::candidates: {
      head_state& hs = heads_.at(key);
      for (size_t i = 0; i < r.answer.pages.size(); ++i)
        hs.candidates.push_back({r.answer.candidate_scores[i], r.answer.pages[i],
                                 r.answer.candidate_forced[i] != 0});
      if (cfg_.mode != run_mode::baseline) {
        const uint64_t bytes = work::candidates_wire_bytes(r.answer.pages.size());
        count_search(r.answer);
        cur_.device_bytes_scanned += r.answer.bytes_scanned;
        device_done(bytes, device_service_cost(costs_, device_op::pnm, double(r.answer.bytes_scanned),
                                               r.answer.flops, r.answer.search.int_ops));
      }
      break;
    }
    case purpose::lookahead: {
      // The next step's search: served in the device's idle time (not on the step's path).
      head_state& hs = heads_.at(key);
      for (size_t i = 0; i < r.answer.pages.size(); ++i)
        hs.next_candidates.push_back({r.answer.candidate_scores[i], r.answer.pages[i],
                                      r.answer.candidate_forced[i] != 0});
      count_search(r.answer);
      cur_.device_bytes_scanned += r.answer.bytes_scanned;
      cur_.link_bytes += work::candidates_wire_bytes(r.answer.pages.size());
      const op_cost dc = device_service_cost(costs_, device_op::pnm, double(r.answer.bytes_scanned),
                                             r.answer.flops, r.answer.search.int_ops);
      cur_.energy_j += dc.energy_j;
      step_device_energy_j_[r.device_id] += dc.energy_j;
      step_device_work_ns_[r.device_id] += dc.time_ns;
      break;
    }
    case purpose::recall: {
      // baseline: the recalled pages land in HBM (the recall cache, or a buffer); the GPU
      // attends them with the pages it held.
      head_state& hs = heads_.at(key);
      const uint64_t before = hs.recalled_tokens;
      auto st = attend_recalled(key, hs, pi.shard_index, &r);
      if (!st) return st;
      const uint64_t tokens = hs.recalled_tokens - before;
      const uint64_t payload = (r.k.size() + r.v.size()) * sizeof(bf16);
      const uint64_t bytes = work::recall_reply_wire_bytes(m, payload / (4ull * d));
      device_done(bytes, device_service_cost(costs_, device_op::expander, double(payload)));
      cur_.device_bytes_scanned += payload;  // what the expander read
      // The pages land in HBM; the GPU attends the head's pages once every recall is in
      // (finish_layer).
      charge_gpu(costs_.gpu_hbm_write(costs_.kv_bytes(double(tokens))));
      break;
    }
  }
  if (!pending_.empty()) return std::vector<device_work>{};
  return advance();
}

status host_engine::finish_layer() {
  const uint32_t group = costs_.model().gqa_group();
  const double t0 = tl_.t0();
  if (!mb_.empty()) mb_receive();
  // The last round's replies (none in a two-round layer whose round b sent nothing).
  if (!tl_.items().empty()) last_reply_ns_ = tl_.receive();
  const double round_wait_ns = std::max(0.0, last_reply_ns_ - round_start_ns_);
  if (cfg_.mode == run_mode::baseline) {
    // The GPU attends each head once its pages are in: layer-wide, once every recall is in.
    for (const auto& it : tl_.items())
      if (head_state* hs = slot_head(it.slot)) hs->ready_ns = std::max(hs->ready_ns, it.done_ns);
    double in = 0;
    const uint32_t slots = uint32_t(layer_slots_.size());
    for (uint32_t i = 0; i < slots; ++i)
      if (const head_state* hs = slot_head(i)) in = std::max(in, hs->ready_ns);
    gpu_.set_trace(trace_, trace_name::attention);
    for (uint32_t i = 0; i < slots; ++i) {
      const head_state* hs = slot_head(i);
      if (!hs) continue;  // its request was lost with a device
      const work::query_work aw = work::gpu_attend_work(costs_, double(hs->recalled_tokens + hs->cached_tokens));
      const op_cost ga = costs_.gpu_attention(aw.bytes, aw.flops);
      charge_gpu(ga);
      cur_.gpu_attention_ns += ga.time_ns;
      gpu_.run(0, in, ga.time_ns);
    }
  }
  tl_.clear_items();
  double merge_ns = 0;
  for (auto it = heads_.lower_bound({layer_, 0, 0});
       it != heads_.end() && std::get<0>(it->first) == layer_; ++it) {
    head_state& hs = it->second;
    std::vector<const partial*> ptrs;
    if (cfg_.mode == run_mode::png_kv && !hs.steady_part.lse.empty()) ptrs.push_back(&hs.steady_part);
    for (const auto& p : hs.parts) ptrs.push_back(&p);
    auto st = merge_partials(ptrs.data(), ptrs.size(), hs.merged);
    if (!st) return st;
    if (!hbm_) {  // gpu-only: one partial, nothing to merge
      op_cost mc = costs_.gpu_merge(static_cast<uint32_t>(ptrs.size()), group);
      merge_ns += mc.time_ns;
      charge_gpu(mc);
      if (!mb_.empty()) mb_[mb_of_.at(std::get<1>(it->first))].merge_ns += mc.time_ns;
    }
    fnv1a(digest_, hs.merged.o.data(), hs.merged.o.size() * sizeof(float));
    fnv1a(digest_, hs.merged.lse.data(), hs.merged.lse.size() * sizeof(float));
    uint64_t& own = request_digest_.try_emplace(std::get<1>(it->first), 1469598103934665603ull).first->second;
    fnv1a(own, hs.merged.o.data(), hs.merged.o.size() * sizeof(float));
    fnv1a(own, hs.merged.lse.data(), hs.merged.lse.size() * sizeof(float));
    hs.parts.clear();
    std::sort(hs.pages.begin(), hs.pages.end());
    cur_.selected_pages += hs.pages.size();
    if (cfg_.mode == run_mode::png_kv) {
      steady_state& ss = steady_.at(it->first);
      cur_.steady_hits += ss.pages.size();
      ss.policy->record(decoded(std::get<1>(it->first)), hs.pages);
    }
    calibrate(it->first, hs);
    if (cfg_.lookahead) keep_lookahead(it->first, hs, cfg_.budget_tokens / cfg_.page_size_tokens);
  }
  if (!mb_.empty()) {
    // Sub-batch overlap: each micro-batch's layer as the pipeline sees it (dense, the GPU's
    // own attention, the device phase from its t0 to its last reply, prompt writes with the
    // first, merges), summed over the live layers; finish_timed_phase schedules them.
    double serial_max = 0;
    for (size_t k = 0; k < mb_.size(); ++k) {
      const mb_state& mb = mb_[k];
      double dev = std::max(0.0, mb.last_reply_ns - mb.t0);
      if (k == 0) dev = std::max(dev, prefill_last_arrival_ns_ - mb.t0);
      const micro_batch_costs c{mb.dense_ns, mb.overlap_ns, dev, mb.merge_ns};
      mb_sum_[k].dense_ns += c.dense_ns;
      mb_sum_[k].overlap_ns += c.overlap_ns;
      mb_sum_[k].device_ns += c.device_ns;
      mb_sum_[k].merge_ns += c.merge_ns;
      const layer_timeline::wait_split w = mb.tl->attribute_wait(dev);
      mb_split_.device_ns += w.device_ns;
      mb_split_.link_ns += w.link_ns;
      mb_split_.queueing_ns += w.queueing_ns;
      serial_max = std::max(serial_max, c.serial_ns());
    }
    // The host's clock for the next layer's messages: past every micro-batch's layer.
    clock_ns_ = mb_origin_ns_ + serial_max;
    cur_.merge_ns += merge_ns;
    round_device_ns_ = 0;
    device_busy_ns_.clear();
    return {};
  }
  // The step model's end of a layer: prompt chunks still on the link hold it (their wait
  // counts as link time), before the merges, or in baseline after them.
  // gpu-only: the layer ends when the GPU is done (gpu_ ran its writes and attention).
  const layer_end e =
      cfg_.mode == run_mode::baseline || cfg_.mode == run_mode::gpu_only
          ? end_of_layer_after_gpu(gpu_.end(), prefill_last_arrival_ns_, merge_ns, trace_)
          : end_of_layer(t0, std::max(0.0, last_reply_ns_ - t0), overlap_ns_, prefill_last_arrival_ns_, merge_ns,
                         trace_);
  clock_ns_ = e.time_ns;
  cur_.link_ns += e.prefill_extra_ns;
  cur_.merge_ns += merge_ns;
  close_round(round_wait_ns);
  return {};
}

// A round's wait is charged to the busiest device's work, the rest of it to the link
// (the report's breakdown); the round's device bookkeeping starts afresh.
void host_engine::close_round(double wait_ns) {
  cur_.device_ns += round_device_ns_;
  cur_.link_ns += std::max(0.0, wait_ns - round_device_ns_);
  round_device_ns_ = 0;
  device_busy_ns_.clear();
}

void host_engine::calibrate(const head_key& key, const head_state& hs) {
  const uint64_t budget_pages = std::max<uint64_t>(1, cfg_.budget_tokens / cfg_.page_size_tokens);
  const std::vector<uint64_t>& sel = hs.pages;  // ascending
  auto intersect = [](const std::vector<uint64_t>& a, const std::vector<uint64_t>& b) {
    size_t n = 0;
    for (size_t i = 0, j = 0; i < a.size() && j < b.size();) {
      if (a[i] == b[j]) ++n, ++i, ++j;
      else if (a[i] < b[j]) ++i;
      else ++j;
    }
    return n;
  };
  // Steady pages: the real set in png-kv, else a shadow policy on the actual selections.
  const std::vector<uint64_t>* steady = nullptr;
  if (cfg_.mode == run_mode::png_kv) {
    steady = &steady_.at(key).pages;
  } else {
    auto& sh = shadow_[key];
    if (!sh.first) {
      steady_params p = cfg_.steady;
      p.budget_pages = std::min<uint64_t>(p.budget_pages, budget_pages > 2 ? budget_pages - 2 : 0);
      sh.first = make_steady_policy(p);
    }
    steady = &sh.second;
  }
  cal_hits_ += double(intersect(sel, *steady));
  cal_selected_ += double(sel.size());
  cal_set_fraction_sum_ += double(steady->size()) / double(budget_pages);
  if (cfg_.mode != run_mode::png_kv) {
    auto& sh = shadow_[key];
    const uint64_t at = decoded(std::get<1>(key));
    sh.first->record(at, sel);
    if (sh.first->due(at + 1)) {
      auto next = sh.first->evaluate(at + 1);
      if (!next.empty()) {
        cal_churn_sum_ += double(next.size() - intersect(next, sh.second)) / double(next.size());
        ++cal_churn_samples_;
      }
      sh.second = std::move(next);
    }
  }
  // Other modes: the recall cache as a shadow on the actual selections (baseline looks its
  // cache up in round b).
  if (cfg_.mode != run_mode::baseline && cfg_.recall_cache != recall_cache_policy::none)
    calibrate_recall(key, sel, cache_of(key).policy.lookup(sel).hits);
  auto prev = previous_selection_.find(key);
  if (prev != previous_selection_.end() && !sel.empty()) {
    cal_overlap_sum_ += double(intersect(sel, prev->second)) / double(sel.size());
    ++cal_overlap_samples_;
  }
  previous_selection_[key] = sel;
  // Spread of the selection over the head's sequence shards.
  const auto [layer, request_id, h] = key;
  const request_placement& pl = placements_.at(request_id);
  if (hs.shards.size() > 1 && !sel.empty()) {
    std::map<int, size_t> per_shard;
    for (uint64_t p : sel) ++per_shard[pl.shard_of(h, p)];
    size_t busiest = 0;
    for (const auto& [s, n] : per_shard) busiest = std::max(busiest, n);
    cal_spread_sum_ += double(busiest) * double(hs.shards.size()) / double(sel.size());
  } else {
    cal_spread_sum_ += 1.0;
  }
  ++cal_samples_;
}

host_engine::calibration_stats host_engine::calibration() const {
  calibration_stats c;
  c.samples = cal_samples_;
  c.churn_samples = cal_churn_samples_;
  if (cal_samples_ == 0) return c;
  c.steady_hit_fraction = cal_selected_ > 0 ? cal_hits_ / cal_selected_ : 0;
  c.steady_set_fraction = cal_set_fraction_sum_ / double(cal_samples_);
  c.steady_churn_fraction = cal_churn_samples_ ? cal_churn_sum_ / double(cal_churn_samples_) : 0;
  c.selection_overlap = cal_overlap_samples_ ? cal_overlap_sum_ / double(cal_overlap_samples_) : 0;
  c.selection_spread = cal_spread_sum_ / double(cal_samples_);
  c.recall_hit_fraction = cal_recall_selected_ ? double(cal_recall_hits_) / double(cal_recall_selected_) : 0;
  c.recall_samples = cal_recall_samples_;
  return c;
}

void host_engine::finish_timed_phase() {
  // png-kv: the copy engine against the live layers' dense-layer windows (one GPU: the
  // dense layer, no all-reduce); what does not fit holds the step after its last layer.
  // Sub-batch overlap: the live layers' mean micro-batch costs scheduled over the live
  // layers (the copies' windows: the device pool's idle time) and over every layer.
  const auto& m = costs_.model();
  std::vector<micro_batch_costs> mean = mb_sum_;
  for (micro_batch_costs& c : mean) {
    const double n = double(cfg_.live_layers);
    c.dense_ns /= n, c.overlap_ns /= n, c.device_ns /= n, c.merge_ns /= n;
  }
  micro_batch_schedule sch_live, sch_all;
  if (!mb_.empty()) {
    if (trace_) trace_->set_offset(0);
    sch_live = schedule_micro_batches(mean, cfg_.live_layers, trace_);
    if (trace_) trace_->set_offset(-step_start_ns_);
    sch_all = schedule_micro_batches(mean, m.layers);
    clock_ns_ = step_start_ns_ + sch_live.time_ns;
  }
  const double windows_ns = mb_.empty() ? cur_.dense_ns : sch_live.device_idle_ns();
  const steady_copy_charge copies = charge_steady_copies(copy_engine_ns_, windows_ns, copy_hbm_write_ns_);
  if (cfg_.lookahead) {
    // The searches ran in the devices' idle time: the step lasts at least as long as its
    // busiest device's work, searches included (what that adds is device time).
    double busiest = 0;
    for (const auto& [d, ns] : step_device_work_ns_) busiest = std::max(busiest, ns);
    const double excess = lookahead_excess_ns(clock_ns_ - step_start_ns_, busiest);
    clock_ns_ += excess;
    cur_.device_ns += excess;
  }
  if (trace_) trace_->gpu(trace_name::copy_exposed, clock_ns_, copies.exposed_ns);
  clock_ns_ += copies.exposed_ns;
  cur_.copy_ns = copies.exposed_ns;
  cur_.copy_hidden_ns = copies.hidden_ns;
  // Charge the layers that are not live as copies of the mean live layer.
  const double live_ns = clock_ns_ - step_start_ns_;
  cur_.live_layers_ns = live_ns;
  const double scale = double(m.layers) / double(cfg_.live_layers);
  // Every byte on the CXL links costs SerDes energy, whatever it carries.
  cur_.energy_j += costs_.link_transfer(double(cur_.link_bytes)).energy_j;
  // One output token per decoding request and per completed prompt.
  uint64_t tokens = step_decoding_.size();
  for (const prefill_chunk& c : step_prefill_) tokens += c.completes;
  const op_cost lm = tokens ? costs_.gpu_lm_head(static_cast<uint32_t>(tokens)) : op_cost{};
  for (double* x : {&cur_.dense_ns, &cur_.link_ns, &cur_.device_ns, &cur_.gpu_attention_ns,
                    &cur_.merge_ns, &cur_.copy_ns, &cur_.copy_hidden_ns, &cur_.energy_j, &cur_.gpu_energy_j,
                    &cur_.gpu_hbm_bytes})
    *x *= scale;
  for (uint64_t* x : {&cur_.link_bytes, &cur_.device_bytes_scanned, &cur_.steady_pages,
                      &cur_.steady_hits, &cur_.selected_pages, &cur_.copy_bytes})
    *x = uint64_t(double(*x) * scale);
  if (trace_) {  // drawn as the step model draws them
    trace_->gpu(trace_name::other_layers, clock_ns_, live_ns * (scale - 1));
    trace_->gpu(trace_name::lm_head, clock_ns_ + live_ns * (scale - 1), lm.time_ns);
  }
  for (const auto& [device, j] : step_device_energy_j_)
    cur_.device_energy_j_max = std::max(cur_.device_energy_j_max, j * scale);
  step_device_energy_j_.clear();
  cur_.lm_head_ns = lm.time_ns;
  charge_gpu(lm);
  cur_.virtual_ns = live_ns * scale + lm.time_ns;
  if (!mb_.empty()) {
    // Every layer scheduled as a pipeline (not the live layers times the scale); what the
    // GPU did not spend on its own work it waited for the devices, split as their phases.
    cur_.virtual_ns = sch_all.time_ns + copies.exposed_ns * scale + lm.time_ns;
    const double idle = sch_all.gpu_idle_ns();
    const double sum = mb_split_.device_ns + mb_split_.link_ns + mb_split_.queueing_ns;
    cur_.device_ns = sum > 0 ? idle * mb_split_.device_ns / sum : 0;
    cur_.link_ns = idle - cur_.device_ns;
    cur_.micro_batches = uint32_t(mb_.size());
    cur_.serial_ns = sch_all.serial_ns;
    cur_.overlap_ns = sch_all.overlap_ns();
  }
  // Rebuilds since the last step held this one up: nothing of the step overlaps them.
  cur_.recovery_ns = recovery_pending_ns_;
  cur_.virtual_ns += recovery_pending_ns_;
  cur_.energy_j += recovery_pending_j_;
  clock_ns_ += recovery_pending_ns_;
  recovery_pending_ns_ = recovery_pending_j_ = 0;
  cur_.tokens = tokens;
  cur_.decode_batch = static_cast<uint32_t>(step_decoding_.size());
  clock_ns_ += lm.time_ns;
  last_step_ = cur_;
}

status host_engine::finish_verification() {
  const uint32_t group = costs_.model().gqa_group();
  for (auto& [key, hs] : heads_) {
    const auto [layer, request_id, kv_head] = key;
    std::vector<const partial*> dptrs;
    for (const auto& p : hs.dense_parts) dptrs.push_back(&p);
    partial dense;
    auto st = merge_partials(dptrs.data(), dptrs.size(), dense);
    if (!st) return st;
    std::optional<uint64_t> needle = wl_.asked_needle_position(
        request_id, layer, kv_head, decoded(request_id), spec(request_id).context_tokens);
    if (needle) {
      const uint64_t page = *needle / cfg_.page_size_tokens;
      accuracy_.add_needle(std::binary_search(hs.pages.begin(), hs.pages.end(), page));
    }
    auto errs = output_relative_errors(hs.merged, dense);
    if (!errs) return errs.error();
    accuracy_.add_rel_errors(*errs);
    // Mass captured by the selected pages = Σ_selected exp(logit) / Σ_all exp(logit)
    // = exp(lse_sparse − lse_dense), exact from the two merged partials.
    std::vector<double> mass(group);
    for (uint32_t g = 0; g < group; ++g)
      mass[g] = std::isinf(hs.merged.lse[g])
                    ? 0.0
                    : std::exp(double(hs.merged.lse[g]) - double(dense.lse[g]));
    accuracy_.add_mass(mass);
    accuracy_.add_pages_selected(hs.pages.size());
  }
  return {};
}

}  // namespace pnmkv
