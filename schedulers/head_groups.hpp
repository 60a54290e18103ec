// Choosing h (head groups) × s (sequence shards) for a request on a pool of P devices from
// the cost model (docs/DESIGN.md §3): for every h dividing both the KV heads and P, the modelled
// time of one layer's attention for one request — the busiest device's scan and attention,
// the messages over the host link, and for exact selection with s > 1 the second round —
// and the smallest wins (ties: the larger h, which needs no cross-shard merge).
#pragma once

#include <cstdint>
#include <vector>

#include "model/cost_model.hpp"
#include "model/modes.hpp"

namespace pnmkv {

struct head_group_choice {
  uint32_t head_groups = 1;
  uint32_t sequence_shards = 1;
  double layer_ns = 0;  // modelled attention time of one layer for one request
};

struct head_group_query {
  uint32_t pool_devices = 1;
  uint64_t context_tokens = 0;
  uint64_t budget_tokens = 2048;
  uint32_t page_size_tokens = 16;
  uint32_t summary_elem_bytes = 2;
  cross_shard_selection cross_shard = cross_shard_selection::exact;
};

// Every admissible (h, s) with its modelled time, fastest first.
std::vector<head_group_choice> rank_head_groups(const cost_model& costs, const head_group_query& q);

// The fastest; h = 1, s = P when nothing else divides.
head_group_choice choose_head_groups(const cost_model& costs, const head_group_query& q);

}  // namespace pnmkv
