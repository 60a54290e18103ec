#include "actors/host_engine.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstring>

namespace pnmkv {

namespace {
// Envelope and fixed fields of a message, on top of its tensors (Cap'n Proto framing).
constexpr uint64_t header_bytes = 96;

void fnv1a(uint64_t& h, const void* data, size_t n) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 1099511628211ull;
  }
}
}  // namespace

host_engine::host_engine(host_engine_config cfg, const cost_model& costs,
                         const synthetic_workload& wl)
    : cfg_(cfg), costs_(costs), wl_(wl) {
  assert(cfg_.page_size_tokens > 0 && cfg_.prefill_chunk_tokens > 0);
}

status host_engine::add_request(const request_spec& r, const request_placement& placement) {
  if (placements_.count(r.request_id))
    return {errc::invalid_argument, "request " + std::to_string(r.request_id) + " already added"};
  if (r.context_tokens == 0)
    return {errc::invalid_argument, "request " + std::to_string(r.request_id) + " has no context"};
  const uint32_t kv_heads = costs_.model().kv_heads;
  for (uint32_t h = 0; h < kv_heads; ++h)
    if (placement.shard_of(h, 0) < 0)
      return {errc::invalid_argument, "placement of request " + std::to_string(r.request_id) +
                                          " leaves KV head " + std::to_string(h) + " unplaced"};
  requests_.push_back(r);
  placements_.emplace(r.request_id, placement);
  return {};
}

bool host_engine::next_prefill_chunk(std::vector<device_work>& out) {
  out.clear();
  const uint32_t kv_heads = costs_.model().kv_heads;
  const uint32_t d = costs_.model().head_dim;
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
    const request_placement& pl = placements_.at(r.request_id);
    // A chunk ends at prefill_chunk_tokens (page aligned), the context end, or where the
    // next page belongs to another shard.
    const uint64_t chunk = std::max<uint64_t>(ps, cfg_.prefill_chunk_tokens / ps * ps);
    uint64_t end = std::min(r.context_tokens, pf_position_ + chunk);
    const int shard = pl.shard_of(pf_head_, pf_position_ / ps);
    assert(shard >= 0);
    for (uint64_t p = pf_position_ / ps + 1; p * ps < end; ++p) {
      if (pl.shard_of(pf_head_, p) != shard) {
        end = p * ps;
        break;
      }
    }
    const uint64_t n = end - pf_position_;
    device_work w;
    w.what = device_work::kind::write;
    w.request_id = r.request_id;
    w.layer = pf_layer_;
    w.kv_head = pf_head_;
    w.position = pf_position_;
    w.n_tokens = n;
    w.k.resize(n * d);
    w.v.resize(n * d);
    wl_.keys(r.request_id, pf_layer_, pf_head_, pf_position_, n, w.k.data());
    wl_.values(r.request_id, pf_layer_, pf_head_, pf_position_, n, w.v.data());
    w.wire_bytes = header_bytes + n * d * 4;
    const shard_placement& sh = pl.shards[shard];
    std::vector<uint32_t> devices{sh.device_id};
    devices.insert(devices.end(), sh.replica_device_ids.begin(), sh.replica_device_ids.end());
    for (size_t i = 0; i < devices.size(); ++i) {
      device_work copy = (i + 1 == devices.size()) ? std::move(w) : w;
      copy.device_id = devices[i];
      prefill_bytes_ += copy.wire_bytes;
      out.push_back(std::move(copy));
    }
    pf_position_ = end;
    return true;
  }
  return false;
}

double host_engine::link_out(double now_ns, uint64_t bytes) {
  host_out_free_ns_ = std::max(host_out_free_ns_, now_ns) + costs_.link_serialisation_ns(bytes);
  return host_out_free_ns_ + costs_.link_latency_ns();
}

double host_engine::link_in(double sent_ns, uint64_t bytes) {
  host_in_free_ns_ = std::max(host_in_free_ns_, sent_ns + costs_.link_latency_ns()) +
                     costs_.link_serialisation_ns(bytes);
  return host_in_free_ns_;
}

std::vector<device_work> host_engine::begin_step(uint32_t step) {
  assert(phase_ == phase::done && "a step is already running");
  assert(pending_.empty());
  step_ = step;
  layer_ = 0;
  phase_ = phase::sparse;
  heads_.clear();
  cur_ = step_report{};
  cur_.step = step;
  step_start_ns_ = clock_ns_;
  return layer_work(0);
}

std::vector<device_work> host_engine::layer_work(uint32_t layer) {
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim, group = m.gqa_group(), ps = cfg_.page_size_tokens;
  const uint32_t batch = static_cast<uint32_t>(requests_.size());
  std::vector<device_work> work;

  op_cost dense = costs_.gpu_dense_layer(batch);
  clock_ns_ += dense.time_ns;
  cur_.dense_ns += dense.time_ns;
  cur_.energy_j += dense.energy_j;
  layer_start_ns_ = clock_ns_;
  last_arrival_ns_ = clock_ns_;

  const uint64_t budget_pages = cfg_.budget_tokens / ps;
  for (const request_spec& r : requests_) {
    const request_placement& pl = placements_.at(r.request_id);
    const uint64_t position = r.context_tokens + step_;
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      // The new token's K and V go to every device holding its page.
      const int shard = pl.shard_of(h, position / ps);
      assert(shard >= 0);
      const shard_placement& holder = pl.shards[shard];
      device_work app;
      app.what = device_work::kind::write;
      app.request_id = r.request_id;
      app.layer = layer;
      app.kv_head = h;
      app.position = position;
      app.n_tokens = 1;
      app.k.resize(d);
      app.v.resize(d);
      wl_.keys(r.request_id, layer, h, position, 1, app.k.data());
      wl_.values(r.request_id, layer, h, position, 1, app.v.data());
      app.wire_bytes = header_bytes + 4ull * d;
      std::vector<uint32_t> holders{holder.device_id};
      holders.insert(holders.end(), holder.replica_device_ids.begin(),
                     holder.replica_device_ids.end());
      for (uint32_t dev : holders) {
        device_work a = app;
        a.device_id = dev;
        a.vt_arrival_ns = link_out(clock_ns_, a.wire_bytes);
        cur_.link_bytes += a.wire_bytes;
        work.push_back(std::move(a));
      }

      head_state& hs = heads_[{layer, r.request_id, h}];
      std::vector<float> q(size_t(group) * d);
      wl_.queries(r.request_id, layer, h, step_, r.context_tokens, q.data());
      std::vector<uint32_t> shards;
      for (uint32_t i = 0; i < pl.shards.size(); ++i)
        if (pl.shards[i].holds_head(h)) shards.push_back(i);
      const uint64_t s = shards.size();
      hs.parts.resize(s);
      for (uint64_t j = 0; j < s; ++j) {
        device_work w;
        w.what = device_work::kind::query;
        w.device_id = pl.shards[shards[j]].device_id;
        w.tag = next_tag_++;
        w.q_storage = q;
        w.query.request_id = r.request_id;
        w.query.step = step_;
        w.query.layer = layer;
        w.query.kv_head = h;
        w.query.group = group;
        w.query.sequence_tokens = position + 1;
        // Local selection: each of the s shards takes its share of the budget.
        w.query.budget_pages = budget_pages / s + (j < budget_pages % s ? 1 : 0);
        w.query.round = query_round::select_attend;
        w.wire_bytes = header_bytes + 4ull * group * d;
        w.vt_arrival_ns = link_out(clock_ns_, w.wire_bytes);
        cur_.link_bytes += w.wire_bytes;
        ++hs.expected;
        pending_.emplace(w.tag, pending_query{r.request_id, layer, h, uint32_t(j), false});
        work.push_back(std::move(w));
      }
    }
  }
  for (auto& w : work)
    if (w.what == device_work::kind::query) w.query.q = w.q_storage.data();
  return work;
}

const request_spec& host_engine::spec(uint64_t request_id) const {
  for (const auto& r : requests_)
    if (r.request_id == request_id) return r;
  assert(false && "unknown request");
  return requests_.front();
}

// Dense queries of every (live layer, request, KV head, shard): the ground truth the step's
// outputs are checked against. Not charged, not timed, and they do not touch any clock.
std::vector<device_work> host_engine::verify_work() {
  const auto& m = costs_.model();
  const uint32_t d = m.head_dim, group = m.gqa_group();
  std::vector<device_work> work;
  for (auto& [key, hs] : heads_) {
    const auto [layer, request_id, h] = key;
    const request_spec& r = spec(request_id);
    const request_placement& pl = placements_.at(request_id);
    std::vector<float> q(size_t(group) * d);
    wl_.queries(request_id, layer, h, step_, r.context_tokens, q.data());
    std::vector<uint32_t> shards;
    for (uint32_t i = 0; i < pl.shards.size(); ++i)
      if (pl.shards[i].holds_head(h)) shards.push_back(i);
    hs.dense_parts.resize(shards.size());
    for (uint32_t j = 0; j < shards.size(); ++j) {
      device_work w;
      w.what = device_work::kind::query;
      w.device_id = pl.shards[shards[j]].device_id;
      w.tag = next_tag_++;
      w.verification = true;
      w.q_storage = q;
      w.query.request_id = request_id;
      w.query.step = step_;
      w.query.layer = layer;
      w.query.kv_head = h;
      w.query.group = group;
      w.query.sequence_tokens = r.context_tokens + step_ + 1;
      w.query.round = query_round::dense;
      w.wire_bytes = header_bytes + 4ull * group * d;
      ++hs.dense_expected;
      pending_.emplace(w.tag, pending_query{request_id, layer, h, j, true});
      work.push_back(std::move(w));
    }
  }
  for (auto& w : work) w.query.q = w.q_storage.data();
  return work;
}

result<std::vector<device_work>> host_engine::on_reply(const device_reply& r) {
  auto it = pending_.find(r.tag);
  if (it == pending_.end())
    return status{errc::invalid_argument, "reply with unknown tag " + std::to_string(r.tag) +
                                              " from device " + std::to_string(r.device_id)};
  const pending_query pq = it->second;
  pending_.erase(it);
  head_state& hs = heads_.at({pq.layer, pq.request_id, pq.kv_head});
  if (pq.verification) {
    hs.dense_parts[pq.shard_index] = r.answer.part;
    ++hs.dense_got;
    if (!pending_.empty()) return std::vector<device_work>{};
    auto st = finish_verification();
    if (!st) return st;
    phase_ = phase::done;
    return std::vector<device_work>{};
  }
  hs.parts[pq.shard_index] = r.answer.part;
  hs.pages.insert(hs.pages.end(), r.answer.pages.begin(), r.answer.pages.end());
  ++hs.got;
  const uint64_t bytes = header_bytes + 4ull * r.answer.part.o.size() +
                         4ull * r.answer.part.lse.size() + 4ull * r.answer.pages.size();
  cur_.link_bytes += bytes;
  cur_.device_bytes_scanned += r.answer.bytes_scanned;
  op_cost dc = costs_.pnm_compute(double(r.answer.bytes_scanned), r.answer.flops);
  cur_.energy_j += dc.energy_j;
  double& busy = device_busy_ns_[r.device_id];
  busy += dc.time_ns;
  layer_device_ns_ = std::max(layer_device_ns_, busy);
  // The shared inbound link is accounted once the layer is complete, in virtual-time order,
  // so the result does not depend on the order partials happened to arrive in wall time.
  inbound_.push_back({r.vt_done_ns, r.tag, bytes});
  if (!pending_.empty()) return std::vector<device_work>{};
  auto st = finish_layer();
  if (!st) return st;
  if (++layer_ < cfg_.live_layers) return layer_work(layer_);
  finish_timed_phase();
  if (cfg_.verify) {
    phase_ = phase::verify;
    return verify_work();
  }
  phase_ = phase::done;
  return std::vector<device_work>{};
}

void host_engine::finish_timed_phase() {
  // Charge the layers that are not live as copies of the mean live layer.
  const auto& m = costs_.model();
  const double live_ns = clock_ns_ - step_start_ns_;
  cur_.live_layers_ns = live_ns;
  const double scale = double(m.layers) / double(cfg_.live_layers);
  op_cost lm = costs_.gpu_lm_head(static_cast<uint32_t>(requests_.size()));
  cur_.dense_ns *= scale;
  cur_.link_ns *= scale;
  cur_.device_ns *= scale;
  cur_.merge_ns *= scale;
  cur_.energy_j *= scale;
  cur_.link_bytes = uint64_t(double(cur_.link_bytes) * scale);
  cur_.device_bytes_scanned = uint64_t(double(cur_.device_bytes_scanned) * scale);
  cur_.lm_head_ns = lm.time_ns;
  cur_.energy_j += lm.energy_j;
  cur_.virtual_ns = live_ns * scale + lm.time_ns;
  cur_.tokens = requests_.size();
  clock_ns_ += lm.time_ns;
  last_step_ = cur_;
}

status host_engine::finish_verification() {
  const uint32_t group = costs_.model().gqa_group();
  for (auto& [key, hs] : heads_) {
    const auto [layer, request_id, kv_head] = key;
    assert(hs.dense_got == hs.dense_expected);
    std::vector<const partial*> dptrs;
    for (const auto& p : hs.dense_parts) dptrs.push_back(&p);
    partial dense;
    auto st = merge_partials(dptrs.data(), dptrs.size(), dense);
    if (!st) return st;
    std::optional<uint64_t> needle = wl_.asked_needle_position(
        request_id, layer, kv_head, step_, spec(request_id).context_tokens);
    if (needle) {
      const uint64_t page = *needle / cfg_.page_size_tokens;
      accuracy_.add_needle(std::find(hs.pages.begin(), hs.pages.end(), page) != hs.pages.end());
    }
    auto errs = output_relative_errors(hs.merged, dense);
    if (!errs) return errs.error();
    accuracy_.add_rel_errors(*errs);
    // Mass captured by the selected pages = Σ_selected exp(logit) / Σ_all exp(logit)
    // = exp(lse_sparse − lse_dense), exact from the two merged partials.
    std::vector<double> mass(group);
    for (uint32_t g = 0; g < group; ++g)
      mass[g] = std::isinf(hs.merged.lse[g]) ? 0.0
                                             : std::exp(double(hs.merged.lse[g]) - double(dense.lse[g]));
    accuracy_.add_mass(mass);
    accuracy_.add_pages_selected(hs.pages.size());
  }
  return {};
}

status host_engine::finish_layer() {
  const uint32_t group = costs_.model().gqa_group();
  std::sort(inbound_.begin(), inbound_.end(), [](const inbound& a, const inbound& b) {
    return a.sent_ns != b.sent_ns ? a.sent_ns < b.sent_ns : a.tag < b.tag;
  });
  for (const inbound& in : inbound_)
    last_arrival_ns_ = std::max(last_arrival_ns_, link_in(in.sent_ns, in.bytes));
  inbound_.clear();
  // Devices and links up to the last partial.
  const double wait_ns = last_arrival_ns_ - layer_start_ns_;
  clock_ns_ = std::max(clock_ns_, last_arrival_ns_);
  double merge_ns = 0;
  for (auto it = heads_.lower_bound({layer_, 0, 0});
       it != heads_.end() && std::get<0>(it->first) == layer_; ++it) {
    head_state& hs = it->second;
    assert(hs.got == hs.expected);
    std::vector<const partial*> ptrs;
    for (const auto& p : hs.parts) ptrs.push_back(&p);
    auto st = merge_partials(ptrs.data(), ptrs.size(), hs.merged);
    if (!st) return st;
    op_cost mc = costs_.gpu_merge(static_cast<uint32_t>(ptrs.size()), group);
    merge_ns += mc.time_ns;
    cur_.energy_j += mc.energy_j;
    fnv1a(digest_, hs.merged.o.data(), hs.merged.o.size() * sizeof(float));
    fnv1a(digest_, hs.merged.lse.data(), hs.merged.lse.size() * sizeof(float));
    hs.parts.clear();
  }
  clock_ns_ += merge_ns;
  cur_.merge_ns += merge_ns;
  cur_.device_ns += layer_device_ns_;
  cur_.link_ns += std::max(0.0, wait_ns - layer_device_ns_);
  layer_device_ns_ = 0;
  device_busy_ns_.clear();
  return {};
}

}  // namespace pnmkv
