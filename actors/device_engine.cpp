#include "actors/device_engine.hpp"

#include <algorithm>
#include <cmath>

#include "core/check.hpp"
#include "core/roofline.hpp"
#include "core/select.hpp"
#include "schedulers/step_timeline.hpp"

namespace pnmkv {

device_engine::device_engine(device_engine_config cfg) : cfg_(cfg) {}

uint64_t device_store_bytes(const kv_head_shape& s, uint64_t pages) {
  const uint64_t elem = s.summaries == summary_precision::bf16 ? 2 : 4;
  const uint64_t int8 = s.search == page_search::exact_int8
                            ? int8_summary_index::bytes_for(2 * s.head_dim, pages,
                                                            int8_summary_index::default_block_pages)
                            : 0;
  return pages * (uint64_t(s.page_size_tokens) * s.head_dim * 4ull + 2ull * s.head_dim * elem) + int8;
}

namespace {
uint64_t store_bytes(const kv_head_shape& s, uint64_t pages) { return device_store_bytes(s, pages); }
}  // namespace

const shard_placement* device_engine::shard(uint64_t request_id, uint32_t shard_id) const {
  auto it = shards_.find({request_id, shard_id});
  return it == shards_.end() ? nullptr : &it->second;
}

bool device_engine::holds(uint64_t request_id) const {
  auto it = shards_.lower_bound({request_id, 0});
  return it != shards_.end() && it->first.first == request_id;
}

const shard_placement* device_engine::holder(uint64_t request_id, uint32_t kv_head, uint64_t page) const {
  for (auto it = shards_.lower_bound({request_id, 0}); it != shards_.end() && it->first.first == request_id; ++it)
    if (it->second.holds_head(kv_head) && it->second.holds_page(page)) return &it->second;
  return nullptr;
}

status device_engine::add_shard(uint64_t request_id, const shard_placement& shard) {
  if (shards_.count({request_id, shard.shard_id}))
    return {errc::invalid_argument, "device " + std::to_string(cfg_.device_id) + " already holds shard " +
                                        std::to_string(shard.shard_id) + " of request " +
                                        std::to_string(request_id)};
  if (shard.kv_head_end <= shard.kv_head_begin)
    return {errc::invalid_argument, "shard holds no KV head"};
  const uint64_t heads = shard.kv_head_end - shard.kv_head_begin;
  const uint64_t need = store_bytes(cfg_.shape, shard.pages_held) * heads * cfg_.live_layers;
  if (reserved_bytes_ + need > cfg_.memory_bytes_max)
    return {errc::capacity, "device " + std::to_string(cfg_.device_id) + " cannot hold request " +
                                std::to_string(request_id) + ": needs " + std::to_string(need) +
                                " bytes, " + std::to_string(cfg_.memory_bytes_max - reserved_bytes_) +
                                " of its emulator memory limit left"};
  const uint64_t capacity_tokens = shard.pages_held * cfg_.shape.page_size_tokens;
  for (uint32_t layer = 0; layer < cfg_.live_layers; ++layer) {
    for (uint32_t h = shard.kv_head_begin; h < shard.kv_head_end; ++h) {
      auto store = kv_head_store::create(cfg_.shape, capacity_tokens);
      if (!store) {
        for (auto st = stores_.lower_bound(key{request_id, shard.shard_id, 0, 0});
             st != stores_.end() && std::get<0>(st->first) == request_id && std::get<1>(st->first) == shard.shard_id;)
          st = stores_.erase(st);
        return store.error();
      }
      stores_.emplace(key{request_id, shard.shard_id, layer, h}, std::move(store).value());
    }
  }
  shards_.emplace(std::make_pair(request_id, shard.shard_id), shard);
  reserved_bytes_ += need;
  return {};
}

void device_engine::release(uint64_t request_id) {
  for (auto it = shards_.lower_bound({request_id, 0}); it != shards_.end() && it->first.first == request_id;) {
    const auto& s = it->second;
    reserved_bytes_ -= store_bytes(cfg_.shape, s.pages_held) * (s.kv_head_end - s.kv_head_begin) *
                       cfg_.live_layers;
    it = shards_.erase(it);
  }
  for (auto st = stores_.lower_bound(key{request_id, 0, 0, 0});
       st != stores_.end() && std::get<0>(st->first) == request_id;)
    st = stores_.erase(st);
}

kv_head_store* device_engine::find_mut(uint64_t request_id, uint32_t shard_id, uint32_t layer, uint32_t kv_head) {
  auto it = stores_.find(key{request_id, shard_id, layer, kv_head});
  return it == stores_.end() ? nullptr : &it->second;
}

const kv_head_store* device_engine::find(uint64_t request_id, uint32_t shard_id, uint32_t layer,
                                         uint32_t kv_head) const {
  auto it = stores_.find(key{request_id, shard_id, layer, kv_head});
  return it == stores_.end() ? nullptr : &it->second;
}

status device_engine::write(uint64_t request_id, uint32_t layer, uint32_t kv_head,
                            uint64_t position, const bf16* k, const bf16* v, uint64_t n_tokens) {
  const uint32_t ps = cfg_.shape.page_size_tokens;
  const shard_placement* sh = holder(request_id, kv_head, position / ps);
  kv_head_store* s = sh ? find_mut(request_id, sh->shard_id, layer, kv_head) : nullptr;
  if (!s)
    return {errc::out_of_range, "device " + std::to_string(cfg_.device_id) +
                                    " holds no shard of (request " + std::to_string(request_id) +
                                    ", layer " + std::to_string(layer) + ", KV head " +
                                    std::to_string(kv_head) + ", position " + std::to_string(position) + ")"};
  // Repeated and early writes (retries over a lossy fabric): rows the store holds already
  // are acknowledged without a change; a write that leaves a gap before it is refused
  // with errc::not_ready so the caller holds it until the gap is filled. A write's rows
  // are all in this shard (the host cuts writes where pages change shard).
  if (n_tokens > 0) {
    const uint64_t before = sh->tokens_held_at(position, ps);
    const uint64_t after = sh->tokens_held_at(position + n_tokens, ps);
    const uint64_t held = s->token_count();
    if (after <= held) return status::ok();  // every row is here already
    if (before > held)
      return {errc::not_ready, "write at position " + std::to_string(position) + " of (request " +
                                     std::to_string(request_id) + ", layer " + std::to_string(layer) +
                                     ", KV head " + std::to_string(kv_head) + ") arrived before " +
                                     std::to_string(before - held) + " earlier rows of this shard"};
    if (before < held) {  // overlaps the end: only the new rows
      const uint64_t skip = held - before;
      const size_t off = size_t(skip) * cfg_.shape.head_dim;
      return s->append(position + skip, k + off, v + off, n_tokens - skip);
    }
  }
  return s->append(position, k, v, n_tokens);
}

double device_engine::charge(double arrival_ns, double cost_ns) {
  PNMKV_CHECK_GE(cost_ns, 0.0);
  const double before = clock_ns_;
  clock_ns_ = device_service_done(clock_ns_, arrival_ns, cost_ns);
  PNMKV_CHECK_GE(clock_ns_, before);
  return clock_ns_;
}

status device_engine::read_pages(uint64_t request_id, uint32_t layer, uint32_t kv_head,
                                 const std::vector<uint64_t>& pages,
                                 std::vector<uint32_t>& rows_per_page, std::vector<bf16>& k,
                                 std::vector<bf16>& v) const {
  const shard_placement* sh = pages.empty() ? nullptr : holder(request_id, kv_head, pages.front());
  const kv_head_store* s = sh ? find(request_id, sh->shard_id, layer, kv_head) : nullptr;
  if (!s)
    return {errc::out_of_range, "device " + std::to_string(cfg_.device_id) +
                                    " holds no shard of (request " + std::to_string(request_id) +
                                    ", layer " + std::to_string(layer) + ", KV head " +
                                    std::to_string(kv_head) + ")"};
  const uint32_t d = s->shape().head_dim;
  rows_per_page.clear();
  k.clear();
  v.clear();
  for (uint64_t g : pages) {
    int64_t l = s->local_page_of(g);
    if (l < 0)
      return {errc::out_of_range, "page " + std::to_string(g) + " is not held by device " +
                                      std::to_string(cfg_.device_id)};
    const uint32_t rows = s->page_tokens(uint32_t(l));
    rows_per_page.push_back(rows);
    k.insert(k.end(), s->page_keys(uint32_t(l)), s->page_keys(uint32_t(l)) + size_t(rows) * d);
    v.insert(v.end(), s->page_values(uint32_t(l)), s->page_values(uint32_t(l)) + size_t(rows) * d);
  }
  return {};
}

uint64_t device_engine::bytes_held() const {
  uint64_t total = 0;
  for (const auto& [k, s] : stores_) total += s.bytes_held();
  return total;
}

status device_engine::query(const device_query& q, device_answer& out) {
  out.pages.clear();
  out.candidate_scores.clear();
  out.candidate_forced.clear();
  out.bytes_scanned = 0;
  out.flops = 0;
  out.search = {};
  const kv_head_store* s = find(q.request_id, q.shard_id, q.layer, q.kv_head);
  if (!s)
    return {errc::out_of_range, "device " + std::to_string(cfg_.device_id) + " holds no shard " +
                                    std::to_string(q.shard_id) + " of (request " + std::to_string(q.request_id) +
                                    ", layer " + std::to_string(q.layer) + ", KV head " +
                                    std::to_string(q.kv_head) + ")"};
  if (q.group == 0 || q.group > 256 || !q.q)
    return {errc::invalid_argument, "query group must be in [1, 256] with a query vector"};
  const uint32_t d = s->shape().head_dim;
  const float scale = q.scale > 0 ? q.scale : 1.0f / std::sqrt(float(d));
  const uint32_t pages = s->page_count();
  const uint64_t row_bytes = uint64_t(d) * 2 * 2;  // K and V, bf16

  std::vector<uint32_t> local;
  auto attend = [&](const std::vector<uint32_t>& list) -> status {
    auto st = attend_pages(*s, q.q, q.group, list.data(), list.size(), scale, out.part);
    if (!st) return st;
    if (q.wire_bf16 && q.round != selection_round::dense)
      for (float& x : out.part.o) x = to_float(to_bf16(x));
    uint64_t tokens = 0;
    for (uint32_t p : list) tokens += s->page_tokens(p);
    const kernel_work w = attend_work(d, q.group, tokens);  // what the run's bound counts
    PNMKV_CHECK_EQ(uint64_t(w.bytes), tokens * row_bytes);
    out.bytes_scanned += tokens * row_bytes;
    out.flops += w.flops;
    out.pages.reserve(list.size());
    for (uint32_t p : list) out.pages.push_back(s->global_page(p));
    return {};
  };

  if (q.round == selection_round::dense || q.round == selection_round::exact_attend) {
    if (q.round == selection_round::dense) {
      local.resize(pages);
      for (uint32_t i = 0; i < pages; ++i) local[i] = i;
    } else {
      if (q.n_listed > pages)
        return {errc::invalid_argument, "more listed pages than the shard holds"};
      local.reserve(q.n_listed);
      for (size_t i = 0; i < q.n_listed; ++i) {
        int64_t l = s->local_page_of(q.listed_pages[i]);
        if (l < 0)
          return {errc::out_of_range, "page " + std::to_string(q.listed_pages[i]) +
                                          " is not held by device " +
                                          std::to_string(cfg_.device_id)};
        local.push_back(static_cast<uint32_t>(l));
      }
    }
    return attend(local);
  }

  // Pages the GPU already holds (png-kv steady pages) are never selected here.
  std::vector<uint8_t> excluded(q.n_excluded ? pages : 0, 0);
  uint32_t n_excluded_held = 0;
  for (size_t i = 0; i < q.n_excluded; ++i) {
    int64_t l = s->local_page_of(q.excluded_pages[i]);
    if (l >= 0 && !excluded[l]) {
      excluded[l] = 1;
      ++n_excluded_held;
    }
  }
  // Always-kept pages this shard holds: the first page (sink) and the sequence's last page.
  search_query sq;
  sq.q_group = q.q;
  sq.group = q.group;
  sq.aggregation = cfg_.aggregation;
  if (pages > 0) {
    if (int64_t l = s->local_page_of(0); l >= 0 && !(q.n_excluded && excluded[l]))
      sq.forced.push_back(uint32_t(l));
    if (q.sequence_tokens > 0) {
      uint64_t last = (q.sequence_tokens - 1) / s->shape().page_size_tokens;
      if (int64_t l = s->local_page_of(last); l >= 0 && !(q.n_excluded && excluded[l]))
        sq.forced.push_back(uint32_t(l));
    }
  }
  sq.excluded = q.n_excluded ? excluded.data() : nullptr;
  sq.budget_pages = std::min<uint64_t>(q.budget_pages, pages - n_excluded_held);
  // Score (flat) or bound and rescore (exact-int8) and select: the same pages either way
  // (core/exact_search.hpp); the work counted is what the search touched.
  search_work sw;
  auto st = search_top_pages(*s, s->shape().search, sq, selected_, selected_scores_, sw,
                             search_scratch_);
  if (!st) return st;
  if (s->shape().search == page_search::flat) {
    const kernel_work w = score_work(d, s->shape().summaries, q.group, cfg_.aggregation, pages);
    PNMKV_CHECK_EQ(uint64_t(w.bytes), sw.summary_bytes);
  }
  out.bytes_scanned += sw.bytes();
  out.flops += sw.flops;
  out.search += sw;
  const std::vector<uint32_t>& forced = sq.forced;
  const std::vector<uint32_t>* sel = &selected_;
  if (q.round == selection_round::exact_candidates) {
    for (size_t k = 0; k < sel->size(); ++k) {
      const uint32_t p = (*sel)[k];
      out.pages.push_back(s->global_page(p));
      out.candidate_scores.push_back(selected_scores_[k]);
      bool f = false;
      for (uint32_t x : forced) f = f || x == p;
      out.candidate_forced.push_back(f ? 1 : 0);
    }
    out.part.reset(q.group, d);
    return {};
  }
  return attend(*sel);
}

}  // namespace pnmkv
