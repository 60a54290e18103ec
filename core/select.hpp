// Top-k page selection under a token budget (docs/DESIGN.md glossary): the budget counts
// pages × page_size and *includes* the always-kept pages (first page as attention sink,
// last page as the local window). Ties break towards the lower page index, so a
// selection is deterministic and selections for growing budgets nest.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "core/status.hpp"

namespace pnmkv {

struct selection_budget {
  uint64_t budget_tokens = 2048;
  uint32_t page_size_tokens = 16;
};

// Pages that budget_tokens buys: floor(budget_tokens / page_size_tokens).
uint64_t budget_pages(const selection_budget& b);

// scores: page_count scores (NaN ranks lowest). forced: local pages always kept (must be
// < page_count, duplicates allowed). Returns ascending local page indices: every forced
// page, then the best-scoring others until budget_pages() pages are chosen or all are.
// Error (invalid_argument) when the forced pages alone exceed the budget; out_of_range
// for a forced index past page_count.
result<std::vector<uint32_t>> select_top_pages(const float* scores, uint32_t page_count,
                                               const std::vector<uint32_t>& forced,
                                               uint64_t budget_pages);

// The total order select_top_pages ranks pages by, as one integer per page: a larger key
// is a better page (score descending, NaN lowest, -0 == +0, ties to the lower index). The
// high 32 bits depend on the score alone, monotonically (so an upper bound of a score
// bounds its high bits). Inline: the exact search asks it per page on its hot path.
inline uint64_t page_rank_key(float score, uint32_t index) {
  uint32_t ordered = 0;
  if (!std::isnan(score)) {
    if (score == 0.0f) score = 0.0f;  // -0 ties with +0
    uint32_t bits;
    std::memcpy(&bits, &score, sizeof bits);
    ordered = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  }
  return (static_cast<uint64_t>(ordered) << 32) | static_cast<uint64_t>(~index);
}

// The always-kept pages of a whole (unsharded) sequence of page_count pages: {0, last}.
std::vector<uint32_t> always_kept_pages(uint32_t page_count);

}  // namespace pnmkv
