// What a PNM device does, free of CAF and of the wire: holds the shards placed on it (one
// kv_head_store per (request, shard, layer, KV head) it holds: a device may hold several
// shards of one request, e.g. a new copy placed after a loss), takes page writes and token
// appends, and answers queries — score its pages, select, attend, return a partial — while
// counting the bytes it scans and the FLOPs it does so the cost model can price the work.
// The pnm_device actor decodes messages and calls this; tests call it directly.
#pragma once

#include <cstdint>
#include <map>
#include <tuple>
#include <vector>

#include "core/attention.hpp"
#include "core/exact_search.hpp"
#include "core/kv_store.hpp"
#include "core/score.hpp"
#include "core/status.hpp"
#include "model/modes.hpp"
#include "schedulers/placement.hpp"

namespace pnmkv {

struct device_engine_config {
  uint32_t device_id = 0;
  kv_head_shape shape{};
  gqa_aggregation aggregation = gqa_aggregation::max;
  uint32_t live_layers = 1;
  uint64_t memory_bytes_max = 16ull << 30;  // emulator bytes this device may hold
};

struct device_query {
  uint64_t request_id = 0;
  uint32_t shard_id = 0;          // which of the request's shards here (placement order)
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint32_t group = 0;             // query heads sharing the KV head
  const float* q = nullptr;       // group × head_dim
  uint64_t sequence_tokens = 0;   // tokens in the whole sequence now (for the last page)
  uint64_t budget_pages = 0;      // this shard's page budget (local, exact_candidates)
  selection_round round = selection_round::local;  // schedulers/modes.hpp
  const uint64_t* listed_pages = nullptr;  // exact_attend: global page ids
  size_t n_listed = 0;
  const uint64_t* excluded_pages = nullptr;  // never selected (png-kv: steady on the GPU)
  size_t n_excluded = 0;
  float scale = 0;                // softmax scale; 0 means 1/sqrt(head_dim)
  // Lookahead selection: on exact_candidates, a search for the next step; on exact_attend, one
  // to run after the attend (budget_pages its budget). The engine answers one round per call
  // (the device actor calls it again for the search); the device serves the search in its
  // idle time, off its clock (pnm_device).
  bool background = false;
  // run.wire_precision bf16 (model/work_sizes.hpp): q holds bf16 values, and the partial's
  // output is rounded to bf16 after its fp32 accumulation, as it travels; its lse stays fp32.
  // Never on a dense round (the verification reference stays fp32).
  bool wire_bf16 = false;
};

struct device_answer {
  partial part;                            // local, exact_attend, dense
  std::vector<uint64_t> pages;             // global ids: selected, or candidates
  std::vector<float> candidate_scores;     // exact_candidates round, parallel to pages
  std::vector<uint8_t> candidate_forced;   // exact_candidates round: 1 for always-kept pages
  uint64_t bytes_scanned = 0;              // summaries (int8 ones included) + K/V rows read
  double flops = 0;                        // float flops
  search_work search;                      // what the page search touched (selection rounds)
};

class device_engine {
 public:
  explicit device_engine(device_engine_config cfg);

  const device_engine_config& config() const { return cfg_; }

  // Creates the stores of a shard placed here: for each live layer and each held KV head.
  // capacity is the shard's pages at the request's final length. A shard held already is
  // an error.
  status add_shard(uint64_t request_id, const shard_placement& shard);
  // Drops every store of a request (all its shards here).
  void release(uint64_t request_id);

  // Writes n_tokens K/V rows of (request, layer, kv_head) at global token `position`, to
  // the shard here that holds that head and page (a write never spans shards).
  // Idempotent: rows already held (a write repeated by a retry) are not written again.
  status write(uint64_t request_id, uint32_t layer, uint32_t kv_head, uint64_t position,
               const bf16* k, const bf16* v, uint64_t n_tokens);

  status query(const device_query& q, device_answer& out);

  // Copies the K and V rows of the listed global pages (ascending, of one shard) of
  // (request, layer, kv_head): what a passive expander serves to a recall. rows_per_page receives each
  // page's token count; k and v receive the rows back to back. Counts the bytes read.
  status read_pages(uint64_t request_id, uint32_t layer, uint32_t kv_head,
                    const std::vector<uint64_t>& pages, std::vector<uint32_t>& rows_per_page,
                    std::vector<bf16>& k, std::vector<bf16>& v) const;

  uint64_t bytes_held() const;
  size_t stores() const { return stores_.size(); }

  // Virtual clock (docs/DESIGN.md §5): work that arrives at arrival_ns starts when the device is
  // free and takes cost_ns (device_service_cost, schedulers/step_timeline.hpp: the step
  // model prices predicted work with the same function and serves it with the same
  // device_service_done). Returns the time the work is done. Monotone.
  double charge(double arrival_ns, double cost_ns);
  double clock_ns() const { return clock_ns_; }
  const kv_head_store* find(uint64_t request_id, uint32_t shard_id, uint32_t layer, uint32_t kv_head) const;
  // Shard `shard_id` of `request_id` placed here, or null.
  const shard_placement* shard(uint64_t request_id, uint32_t shard_id) const;
  // Whether any shard of the request is here.
  bool holds(uint64_t request_id) const;

 private:
  using key = std::tuple<uint64_t, uint32_t, uint32_t, uint32_t>;  // (request, shard, layer, head)
  kv_head_store* find_mut(uint64_t request_id, uint32_t shard_id, uint32_t layer, uint32_t kv_head);
  // The shard here holding (kv_head, global page) of the request, or null.
  const shard_placement* holder(uint64_t request_id, uint32_t kv_head, uint64_t page) const;

  device_engine_config cfg_;
  std::map<key, kv_head_store> stores_;
  std::map<std::pair<uint64_t, uint32_t>, shard_placement> shards_;  // by (request, shard)
  uint64_t reserved_bytes_ = 0;
  double clock_ns_ = 0;
  std::vector<float> scores_;  // scratch
  search_scratch search_scratch_;
  std::vector<uint32_t> selected_;
  std::vector<float> selected_scores_;
};

// Bytes a store of `pages` pages holds on a device: K, V, summaries and, for exact-int8,
// the int8 summaries (what capacity and admission count).
uint64_t device_store_bytes(const kv_head_shape& shape, uint64_t pages);

}  // namespace pnmkv
