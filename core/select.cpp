// Top-k page selection. Every page gets a 64-bit key that encodes the total order
// (score descending, NaN lowest, -0 == +0, ties to the lower page index), so selection is
// one selection over integers (nth_element, or a min-heap of the few best when the budget
// is a small part of the pages): linear time and deterministic. Because
// the order is total and the forced pages are taken first, the selection for a larger
// budget always contains the selection for a smaller one.
#include "core/select.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "core/check.hpp"

namespace pnmkv {

uint64_t budget_pages(const selection_budget& b) {
  if (b.page_size_tokens == 0) return 0;  // no page fits a zero-sized page budget
  return b.budget_tokens / b.page_size_tokens;
}

std::vector<uint32_t> always_kept_pages(uint32_t page_count) {
  if (page_count == 0) return {};
  if (page_count == 1) return {0};
  return {0, page_count - 1};
}

namespace {

// Heap selection when the pages kept are at most 1/64 of the candidates (measured: 128 of
// 65536 3.5x faster than nth_element; 4096 of 65536 2x slower).
constexpr size_t heap_select_ratio_min = 64;

// Larger key = better page: page_rank_key (select.hpp). High 32 bits: the score mapped
// monotonically onto unsigned integers (NaN -> 0, below -inf); low 32 bits: ~index, so the
// lower index wins a tie.
inline uint64_t rank_key(float score, uint32_t index) { return page_rank_key(score, index); }

}  // namespace

result<std::vector<uint32_t>> select_top_pages(const float* scores, uint32_t page_count,
                                               const std::vector<uint32_t>& forced,
                                               uint64_t budget_pages) {
  using result_t = result<std::vector<uint32_t>>;
  if (scores == nullptr && page_count > 0) {
    return result_t{errc::invalid_argument, "select_top_pages: scores must not be null"};
  }
  std::vector<uint32_t> chosen;
  chosen.reserve(forced.size());
  for (uint32_t f : forced) {
    if (f >= page_count) {
      return result_t{errc::out_of_range, "select_top_pages: forced page " + std::to_string(f) +
                                              " is past page_count = " +
                                              std::to_string(page_count)};
    }
    chosen.push_back(f);
  }
  std::sort(chosen.begin(), chosen.end());
  chosen.erase(std::unique(chosen.begin(), chosen.end()), chosen.end());
  if (chosen.size() > budget_pages) {
    return result_t{errc::invalid_argument,
                    "select_top_pages: " + std::to_string(chosen.size()) +
                        " forced pages exceed the budget of " + std::to_string(budget_pages) +
                        " pages (the budget includes the always-kept pages)"};
  }
  if (budget_pages >= page_count) {
    chosen.resize(page_count);
    for (uint32_t i = 0; i < page_count; ++i) chosen[i] = i;
    return result_t{std::move(chosen)};
  }
  const size_t want_others = static_cast<size_t>(budget_pages) - chosen.size();
  if (want_others == 0) return result_t{std::move(chosen)};

  std::vector<uint64_t> keys;
  keys.reserve(page_count - chosen.size());
  size_t next_forced = 0;
  for (uint32_t i = 0; i < page_count; ++i) {
    if (next_forced < chosen.size() && chosen[next_forced] == i) {
      ++next_forced;
      continue;
    }
    keys.push_back(rank_key(scores[i], i));
  }
  PNMKV_CHECK_LT(want_others, keys.size());  // budget_pages < page_count
  const auto best_end = keys.begin() + static_cast<std::ptrdiff_t>(want_others);
  if (want_others * heap_select_ratio_min <= keys.size()) {
    // A few best of many (128 of 65536 at a 2048-token budget over 1M tokens): keep them
    // in a min-heap; almost every other key loses one comparison against its floor. The
    // same total order as nth_element, so the same pages.
    std::make_heap(keys.begin(), best_end, std::greater<uint64_t>());
    uint64_t floor = keys.front();
    for (auto it = best_end; it != keys.end(); ++it) {
      if (*it <= floor) continue;
      std::pop_heap(keys.begin(), best_end, std::greater<uint64_t>());
      *(best_end - 1) = *it;
      std::push_heap(keys.begin(), best_end, std::greater<uint64_t>());
      floor = keys.front();
    }
  } else {
    std::nth_element(keys.begin(), best_end - 1, keys.end(), std::greater<uint64_t>());
  }
  const size_t n_forced = chosen.size();
  for (size_t k = 0; k < want_others; ++k) {
    chosen.push_back(~static_cast<uint32_t>(keys[k] & 0xffffffffu));
  }
  std::sort(chosen.begin() + static_cast<std::ptrdiff_t>(n_forced), chosen.end());
  std::inplace_merge(chosen.begin(), chosen.begin() + static_cast<std::ptrdiff_t>(n_forced),
                     chosen.end());
  PNMKV_CHECK(std::adjacent_find(chosen.begin(), chosen.end()) == chosen.end(),
              "a page chosen twice, n=", chosen.size());
  PNMKV_CHECK_EQ(chosen.size(), budget_pages);
  return result_t{std::move(chosen)};
}

}  // namespace pnmkv
