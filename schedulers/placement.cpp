#include "schedulers/placement.hpp"

#include <algorithm>
#include <numeric>

#include "core/check.hpp"
#include "core/int8_summaries.hpp"

namespace pnmkv {

bool shard_placement::holds_page(uint64_t page) const {
  if (split == sequence_split::interleave) return page % sequence_shards == sequence_index;
  return page >= page_begin && (page < page_end || sequence_index + 1 == sequence_shards);
}

uint64_t shard_placement::tokens_held_at(uint64_t sequence_tokens, uint32_t ps) const {
  if (split == sequence_split::interleave) {
    const uint64_t full_pages = sequence_tokens / ps;
    const uint64_t rest = sequence_tokens % ps;
    uint64_t pages_mine = full_pages / sequence_shards +
                          (full_pages % sequence_shards > sequence_index ? 1 : 0);
    uint64_t tokens = pages_mine * ps;
    if (rest > 0 && full_pages % sequence_shards == sequence_index) tokens += rest;
    return tokens;
  }
  const uint64_t begin = page_begin * ps;
  const bool last = sequence_index + 1 == sequence_shards;
  const uint64_t end = last ? sequence_tokens : std::min<uint64_t>(page_end * ps, sequence_tokens);
  return end > begin ? end - begin : 0;
}

int request_placement::shard_of(uint32_t kv_head, uint64_t page) const {
  for (size_t i = 0; i < shards.size(); ++i)
    if (shards[i].holds_head(kv_head) && shards[i].holds_page(page)) return static_cast<int>(i);
  return -1;
}

uint64_t shard_bytes_per_layer_head(const placement_request& r, uint64_t pages) {
  const uint64_t kv = pages * r.page_size_tokens * 2ull * r.head_dim * 2ull;
  const uint64_t summaries = pages * 2ull * r.head_dim * r.summary_elem_bytes;
  const uint64_t int8 = r.int8_summary_block_pages == 0
                            ? 0
                            : int8_summary_index::bytes_for(2 * r.head_dim, pages, r.int8_summary_block_pages);
  return kv + summaries + int8;
}

result<request_placement> place_request(const placement_request& r, pool_state& pool) {
  const uint32_t P = static_cast<uint32_t>(pool.device_ids.size());
  PNMKV_CHECK_EQ(pool.free_bytes.size(), pool.device_ids.size());
  if (P == 0) return status{errc::invalid_argument, "the pool has no devices"};
  if (r.kv_heads == 0 || r.page_size_tokens == 0 || r.layers == 0)
    return status{errc::invalid_argument, "request shape has zero kv_heads, layers or page size"};
  if (r.replication < 1 || r.replication > P)
    return status{errc::invalid_argument,
                  "replication " + std::to_string(r.replication) + " is outside [1, " +
                      std::to_string(P) + "] (the pool size)"};
  // With r replicas each shard needs r distinct devices: P / r devices carry primaries.
  const uint32_t primaries = P / r.replication;
  uint32_t h = r.head_groups;
  if (h == 0) h = std::gcd(r.kv_heads, primaries);
  if (h == 0 || r.kv_heads % h != 0 || primaries % h != 0)
    return status{errc::invalid_argument,
                  "head groups h = " + std::to_string(h) + " must divide the KV heads (" +
                      std::to_string(r.kv_heads) + ") and the primary devices (" +
                      std::to_string(primaries) + ")"};
  const uint32_t s = primaries / h;
  const uint64_t total_tokens = r.context_tokens + r.decode_tokens;
  const uint64_t total_pages = (total_tokens + r.page_size_tokens - 1) / r.page_size_tokens;
  const uint32_t heads_per_group = r.kv_heads / h;

  request_placement out;
  out.request_id = r.request_id;
  out.head_groups = h;
  out.sequence_shards = s;
  std::vector<uint64_t> need(P, 0);
  for (uint32_t g = 0; g < h; ++g) {
    for (uint32_t j = 0; j < s; ++j) {
      shard_placement sh;
      sh.shard_id = g * s + j;
      sh.device_id = pool.device_ids[sh.shard_id];
      sh.kv_head_begin = g * heads_per_group;
      sh.kv_head_end = (g + 1) * heads_per_group;
      sh.sequence_index = j;
      sh.sequence_shards = s;
      sh.split = r.split;
      if (r.split == sequence_split::contiguous) {
        sh.page_begin = total_pages * j / s;
        sh.page_end = total_pages * (j + 1) / s;
        sh.pages_held = sh.page_end - sh.page_begin;
      } else {
        sh.page_begin = 0;
        sh.page_end = total_pages;
        sh.pages_held = total_pages / s + (j < total_pages % s ? 1 : 0);
      }
      sh.bytes_modelled =
          shard_bytes_per_layer_head(r, sh.pages_held) * heads_per_group * r.layers;
      need[sh.shard_id] += sh.bytes_modelled;
      // Replicas: the next devices past the primaries, preferring other failure domains.
      for (uint32_t k = 1; k < r.replication; ++k) {
        uint32_t idx = (sh.shard_id + k * primaries) % P;
        sh.replica_device_ids.push_back(pool.device_ids[idx]);
        need[idx] += sh.bytes_modelled;
      }
      out.shards.push_back(std::move(sh));
    }
  }
  for (uint32_t i = 0; i < P; ++i) {
    if (need[i] > pool.free_bytes[i])
      return status{errc::capacity,
                    "request " + std::to_string(r.request_id) + " does not fit: device " +
                        std::to_string(pool.device_ids[i]) + " needs " + std::to_string(need[i]) +
                        " bytes for its shard but has " + std::to_string(pool.free_bytes[i]) +
                        " free (context " + std::to_string(r.context_tokens) + " tokens)"};
  }
  for (uint32_t i = 0; i < P; ++i) pool.free_bytes[i] -= need[i];
  return out;
}

uint64_t live_bytes(const shard_placement& shard, uint32_t layers, uint32_t live_layers) {
  PNMKV_CHECK(layers > 0 && live_layers <= layers, "live layers within the model's layers");
  // bytes_modelled is a whole multiple of the layer count (place_request), so this is exact.
  PNMKV_CHECK_EQ(shard.bytes_modelled % layers, uint64_t{0});
  return shard.bytes_modelled / layers * live_layers;
}

std::map<uint32_t, uint64_t> live_bytes_by_device(const request_placement& pl, uint32_t layers,
                                                  uint32_t live_layers) {
  std::map<uint32_t, uint64_t> out;
  for (const auto& s : pl.shards) {
    const uint64_t b = live_bytes(s, layers, live_layers);
    out[s.device_id] += b;
    for (uint32_t r : s.replica_device_ids) out[r] += b;
  }
  return out;
}

}  // namespace pnmkv
