// The selection budget of one request: the tokens it attends per (layer, KV head) per step,
// always-kept pages included. Two policies (selection.budget_tokens, selection.budget_fraction):
// a fixed number of tokens, or a fraction of the request's context (its prompt tokens at
// admission, so the budget of a request does not move while it decodes). The live cluster
// (actors/run_setup) and the simulator (sim/sim_setup) both take the budget from here, so
// they agree on it by construction.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/check.hpp"

namespace pnmkv {

struct selection_budget_policy {
  uint32_t page_size_tokens = 16;
  uint64_t budget_tokens = 2048;  // used when budget_fraction == 0
  double budget_fraction = 0;     // 0: off; else in (0, 1] and it wins over budget_tokens
  bool by_fraction() const { return budget_fraction > 0; }
  const char* name() const { return by_fraction() ? "budget_fraction" : "budget_tokens"; }
};

// Pages always kept by every selection (the first and the last page).
inline constexpr uint64_t always_kept_page_count = 2;

// Budget in pages of a request whose context is `context_tokens`: budget_tokens / page
// (whole pages, as before), or round(fraction x context) rounded up to whole pages and at
// least the always-kept pages.
inline uint64_t selection_budget_pages(const selection_budget_policy& p, uint64_t context_tokens) {
  PNMKV_CHECK(p.page_size_tokens > 0);
  if (!p.by_fraction()) return p.budget_tokens / p.page_size_tokens;
  PNMKV_CHECK(p.budget_fraction <= 1.0);
  const uint64_t tokens = uint64_t(std::llround(p.budget_fraction * double(context_tokens)));
  const uint64_t pages = (tokens + p.page_size_tokens - 1) / p.page_size_tokens;
  return std::max(pages, always_kept_page_count);
}

// The same budget in tokens: budget_tokens itself under the fixed policy (unchanged
// behaviour: the host engine selects budget_tokens / page pages from it), whole pages under
// the fraction policy.
inline uint64_t selection_budget_tokens(const selection_budget_policy& p, uint64_t context_tokens) {
  if (!p.by_fraction()) return p.budget_tokens;
  return selection_budget_pages(p, context_tokens) * p.page_size_tokens;
}

}  // namespace pnmkv
