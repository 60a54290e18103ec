// The GPU's cache of recalled pages in baseline mode (docs/DESIGN.md §2): per (request, layer,
// KV head), the pages the GPU recalled from the expanders stay in HBM between steps, up to a
// capacity, so a page selected again is attended from HBM instead of being recalled over the
// link. This is the policy only (which page ids are held, hits, misses, evictions); the live
// host engine keeps the bytes beside it, the step model takes the hit fraction the live run
// measured (config/calibration.hpp recall_hit_fraction).
//
// Policies (baseline.recall_cache):
//   none  nothing is kept: every selected page is a miss (recalled every step).
//   lru   a step's selected pages are looked up (held: a hit, else a miss), then all of them
//         become the most recently used; while more pages are held than the capacity, the
//         least recently used is evicted, ties (pages last used in the same step) to the
//         lower page id. A page is held from the step it is first selected in.
#pragma once

#include <cstdint>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include "core/status.hpp"
#include "model/modes.hpp"

namespace pnmkv {

// What one step's lookup found and did.
struct recall_lookup {
  uint64_t hits = 0;
  std::vector<uint64_t> missed;   // selected pages not held: recall them (ascending)
  std::vector<uint64_t> evicted;  // pages dropped to stay within the capacity (eviction order)
  uint64_t misses() const { return missed.size(); }
};

class recall_cache {
 public:
  // Capacity in pages (at most capacity_pages_max); ignored by `none`.
  static constexpr uint64_t capacity_pages_max = uint64_t(1) << 32;
  recall_cache(recall_cache_policy policy, uint64_t capacity_pages);

  // `selected`: one step's selected pages, ascending and distinct (checked). Counts hits and
  // misses against what is held, then updates the held set by the policy.
  recall_lookup lookup(const std::vector<uint64_t>& selected);

  bool holds(uint64_t page) const { return last_use_.count(page) != 0; }
  uint64_t held_pages() const { return last_use_.size(); }
  uint64_t capacity_pages() const { return capacity_pages_; }
  recall_cache_policy policy() const { return policy_; }
  uint64_t lookups() const { return clock_; }

 private:
  recall_cache_policy policy_;
  uint64_t capacity_pages_;
  uint64_t clock_ = 0;                                // lookups so far: the "last use" clock
  std::map<uint64_t, uint64_t> last_use_;             // page -> lookup that last selected it
  std::set<std::pair<uint64_t, uint64_t>> by_use_;    // (last use, page): eviction order
};

// The cache's capacity in tokens of whole pages per (request, layer, KV head), what GPU
// memory is charged for (schedulers/gpu_memory.hpp): 0 for `none`; for `lru`,
// `cache_tokens` (baseline.recall_cache_tokens; 0 means the selection budget) rounded down to
// whole pages. An error, naming the key, when that is less than one step's selection
// (`budget_tokens`, resolved at the workload's context): a step's selected pages must all
// be in HBM at once to be attended, so a smaller cache would evict pages of its own step.
result<uint64_t> recall_cache_capacity_tokens(recall_cache_policy policy, uint64_t cache_tokens,
                                              uint64_t budget_tokens, uint32_t page_size_tokens);

}  // namespace pnmkv
