// The baseline's recall cache policy (recall_cache.hpp).
#include "schedulers/recall_cache.hpp"

#include <string>

#include "core/check.hpp"

namespace pnmkv {

recall_cache::recall_cache(recall_cache_policy policy, uint64_t capacity_pages)
    : policy_(policy), capacity_pages_(capacity_pages) {
  PNMKV_CHECK(capacity_pages_ <= capacity_pages_max, "recall cache of ", capacity_pages_,
              " pages is past the limit of ", capacity_pages_max);
}

recall_lookup recall_cache::lookup(const std::vector<uint64_t>& selected) {
  for (size_t i = 1; i < selected.size(); ++i)
    PNMKV_CHECK(selected[i - 1] < selected[i], "selected pages must be ascending and distinct: ",
                selected[i - 1], " then ", selected[i]);
  recall_lookup out;
  ++clock_;
  if (policy_ == recall_cache_policy::none) {
    out.missed = selected;
    return out;
  }
  for (uint64_t p : selected) {
    auto it = last_use_.find(p);
    if (it == last_use_.end()) {
      out.missed.push_back(p);
      last_use_.emplace(p, clock_);
    } else {
      ++out.hits;
      by_use_.erase({it->second, p});
      it->second = clock_;
    }
    by_use_.insert({clock_, p});
  }
  while (last_use_.size() > capacity_pages_) {
    const auto victim = *by_use_.begin();
    by_use_.erase(by_use_.begin());
    last_use_.erase(victim.second);
    out.evicted.push_back(victim.second);
  }
  PNMKV_CHECK_EQ(last_use_.size(), by_use_.size());
  PNMKV_CHECK_EQ(out.hits + out.missed.size(), selected.size());
  return out;
}

result<uint64_t> recall_cache_capacity_tokens(recall_cache_policy policy, uint64_t cache_tokens,
                                              uint64_t budget_tokens, uint32_t page_size_tokens) {
  PNMKV_CHECK_GT(page_size_tokens, 0u);
  if (policy == recall_cache_policy::none) return uint64_t(0);
  const uint64_t budget = budget_tokens / page_size_tokens * page_size_tokens;
  const uint64_t want = cache_tokens == 0 ? budget : cache_tokens / page_size_tokens * page_size_tokens;
  if (want < budget)
    return status{errc::invalid_argument,
                  "baseline.recall_cache_tokens = " + std::to_string(cache_tokens) + " holds " +
                      std::to_string(want / page_size_tokens) + " pages, fewer than one step's selection of " +
                      std::to_string(budget / page_size_tokens) + " pages (" + std::to_string(budget) +
                      " tokens): set 0 (the budget) or at least " + std::to_string(budget) +
                      ", or baseline.recall_cache = none"};
  if (want / page_size_tokens > recall_cache::capacity_pages_max)
    return status{errc::invalid_argument, "baseline.recall_cache_tokens = " + std::to_string(cache_tokens) +
                                              " is past the limit of " +
                                              std::to_string(recall_cache::capacity_pages_max) + " pages"};
  return want;
}

}  // namespace pnmkv
