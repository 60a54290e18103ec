// Page search: which pages a query attends, under a token budget (docs/DESIGN.md §4).
//
// `flat` scores every page summary (score_pages) and selects the top pages
// (select_top_pages). `exact_int8` gives exactly the same selection from fewer bytes:
//  1. bound every page from its int8 summaries (core/int8_summaries.hpp, outward rounding):
//     per block of pages and query row, the weights times the quantisation steps are
//     rounded UP to int16 and dotted with the uint8 codes in integer arithmetic (exact),
//     then bound = Σ w·lo + α·Σ ŵ·c + margin, in float; the margin covers the float
//     rounding of the flat kernel (16 FMA chains of len/16 steps and a tree of 4 adds, or
//     twice that on targets without FMA) and of the bound's own arithmetic, so the bound is at
//     least the flat kernel's float score, bit for bit, for every page and query;
//  2. rescore exactly (score_listed_pages: the flat kernel's arithmetic, page by page) the
//     pages in descending bound order until the k-th best exact score is strictly above
//     the next bound (a page whose bound equals it is rescored: it could tie and win on
//     its lower index);
//  3. select the top pages among those rescored, by select_top_pages' total order.
// The always-kept (forced) pages are taken first and rescored (their exact scores are
// returned: the exact_candidates round sends them); excluded pages are never selected.
// Non-finite queries or summaries, a huge score range, or a budget that takes every
// candidate fall back to the flat scan (`fell_back`); the selection is the same.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/kv_store.hpp"
#include "core/score.hpp"
#include "core/status.hpp"

namespace pnmkv {

// What a search read and computed, counted as it ran.
struct search_work {
  uint64_t pages = 0;             // pages held (each one bounded or scored)
  uint64_t pages_rescored = 0;    // pages scored exactly (flat: every page)
  uint64_t summary_bytes = 0;     // bf16 / fp32 summary bytes read
  uint64_t int8_bytes = 0;        // int8 codes and block ranges read
  double flops = 0;               // float: 2 per FMA of exact scoring, plus the bound set-up
  double int_ops = 0;             // integer: 2 per multiply-add of the bound pass
  uint64_t fallbacks = 0;         // exact searches that ran flat
  uint64_t bytes() const { return summary_bytes + int8_bytes; }
  search_work& operator+=(const search_work& o) {
    pages += o.pages;
    pages_rescored += o.pages_rescored;
    summary_bytes += o.summary_bytes;
    int8_bytes += o.int8_bytes;
    flops += o.flops;
    int_ops += o.int_ops;
    fallbacks += o.fallbacks;
    return *this;
  }
};

struct search_query {
  const float* q_group = nullptr;  // group × head_dim
  uint32_t group = 1;
  gqa_aggregation aggregation = gqa_aggregation::max;
  std::vector<uint32_t> forced;    // local pages always kept (< page_count, any order)
  const uint8_t* excluded = nullptr;  // per local page, 1 = never selected; or null
  uint64_t budget_pages = 0;       // pages selected, forced included (as select_top_pages)
};

// Scratch a caller keeps between searches (no allocation per query once warm).
struct search_scratch {
  std::vector<float> scores, bounds, steps, listed_scores, abs_natural;
  std::vector<uint64_t> keys, heap, later;
  std::vector<int32_t> dots;
  std::vector<int16_t> wq;
  std::vector<double> row_c, row_alpha, row_margin;
  std::vector<uint32_t> list;
  score_weights weights;
};

// Selected local pages, ascending (select_top_pages' result for the flat scores), and
// their exact (flat) scores, parallel. Errors: as score_pages and select_top_pages;
// invalid_argument for exact_int8 on a store without int8 summaries.
status search_top_pages(const kv_head_store& store, page_search search, const search_query& q,
                        std::vector<uint32_t>& selected, std::vector<float>& selected_scores,
                        search_work& work, search_scratch& scratch);

// The integer part of the bound pass, exposed for tests and benches: out[p·rows + r] =
// Σ_i wq[r·len + i] · codes[p·len + i] for p < n_pages, r < rows (len a multiple of 32).
// Highway, runtime dispatch; exact on every target.
void int8_dot_rows(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                   uint32_t rows, int32_t* out);

// Whether the bound kernel uses AVX512-VNNI (vpdpwssd) under the AVX3 target: by default
// when the CPU has it. set_int8_kernel_vnni(false) forces the plain multiply-add path
// (tests run both; the sums are the same integers); returns the previous setting.
bool int8_kernel_vnni();
bool set_int8_kernel_vnni(bool on);

// Largest |int16 weight| for rows of len elements, so Σ over len of |ŵ|·255 fits int32.
int32_t int8_weight_limit(size_t len);

}  // namespace pnmkv
