// Hybrid head/sequence placement of a request's KV on a pool of PNM devices (docs/DESIGN.md §3).
// A pool of P devices is cut into h head groups × s sequence shards (h·s = P, h divides
// the KV head count). Shard (g, j) holds KV heads [g·H/h, (g+1)·H/h) and, of every layer,
// the pages of sequence class j: a contiguous range of pages, or every s-th page
// (interleave). Pure logic: the live system and the simulator share it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "model/modes.hpp"  // sequence_split

namespace pnmkv {

struct shard_placement {
  uint32_t shard_id = 0;         // g · s + j; fixed merge order
  uint32_t device_id = 0;        // primary
  std::vector<uint32_t> replica_device_ids;  // r - 1 others, distinct devices
  uint32_t kv_head_begin = 0;    // [begin, end)
  uint32_t kv_head_end = 0;
  uint32_t sequence_index = 0;   // j in [0, s)
  uint32_t sequence_shards = 1;  // s
  sequence_split split = sequence_split::contiguous;
  uint64_t page_begin = 0;       // contiguous: [page_begin, page_end); the last shard is
  uint64_t page_end = 0;         // open-ended (decode appends land there)
  uint64_t pages_held = 0;       // pages of one (layer, KV head) at the final length
  uint64_t bytes_modelled = 0;   // K, V and summaries of every layer and head it holds

  bool holds_head(uint32_t kv_head) const { return kv_head >= kv_head_begin && kv_head < kv_head_end; }
  // Whether this shard holds global page `page` (of a held head).
  bool holds_page(uint64_t page) const;
  // Tokens of one held (layer, KV head) this shard holds when the sequence has
  // `sequence_tokens` tokens.
  uint64_t tokens_held_at(uint64_t sequence_tokens, uint32_t page_size_tokens) const;
};

struct request_placement {
  uint64_t request_id = 0;
  // The placement's version: 1 when placed, one more each time a lost device is taken out
  // of it (the GPU host's failover). Whoever held a copy under an older epoch and is no
  // longer in it is fenced (actors/gpu_host.hpp).
  uint64_t epoch = 1;
  uint32_t head_groups = 1;      // h
  uint32_t sequence_shards = 1;  // s
  std::vector<shard_placement> shards;  // ordered by shard_id
  // The shard (index into shards) holding (kv_head, page), or -1.
  int shard_of(uint32_t kv_head, uint64_t page) const;
};

struct placement_request {
  uint64_t request_id = 0;
  uint64_t context_tokens = 0;     // prompt
  uint64_t decode_tokens = 0;      // tokens appended during decoding
  uint32_t page_size_tokens = 16;
  uint32_t layers = 1;
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;
  uint32_t summary_elem_bytes = 2;
  uint32_t head_groups = 0;        // 0: the largest h dividing both kv_heads and the pool
  sequence_split split = sequence_split::contiguous;
  uint32_t replication = 1;        // r
  uint32_t int8_summary_block_pages = 0;  // exact-int8: the int8 summaries' block; 0: none
};

// Devices of one pool and the bytes each still has free.
struct pool_state {
  std::vector<uint32_t> device_ids;
  std::vector<uint64_t> free_bytes;  // parallel to device_ids
  std::vector<uint32_t> failure_domain;  // parallel; replicas go to distinct domains when possible
};

// Bytes one (layer, KV head) of `pages` pages takes: K, V (bf16), summaries and, with
// exact-int8, the int8 summaries (core/int8_summaries.hpp).
uint64_t shard_bytes_per_layer_head(const placement_request& r, uint64_t pages);

// Places one request on a pool and debits the pool's free bytes. Errors (nothing debited):
// invalid_argument for h not dividing kv_heads or the pool, replication > pool size;
// capacity when a device cannot hold its shard — the message says which device, how many
// bytes it needed and had.
result<request_placement> place_request(const placement_request& r, pool_state& pool);

// What the emulator really holds of a shard: K, V and summaries of the live layers only
// (bytes_modelled covers every layer of the model). One device holds this for each shard
// it is primary or replica of.
uint64_t live_bytes(const shard_placement& shard, uint32_t layers, uint32_t live_layers);

// Live-layer bytes per device (primaries and replicas) of one placed request: what
// coordinator admission debits from cluster.device_memory_bytes_max and what the
// host-memory check (schedulers/host_memory.hpp) adds up.
std::map<uint32_t, uint64_t> live_bytes_by_device(const request_placement& pl, uint32_t layers,
                                                  uint32_t live_layers);

}  // namespace pnmkv
