// Quest page scores: an upper bound of q·k inside a page, from the page's key summaries:
//   score_h(page) = Σ_d max(q_hd · min_d, q_hd · max_d).
// The query heads sharing one KV head (GQA group) are turned into one score per page by
// a policy. `sum` is linear in the per-dimension split q = q⁺ + q⁻, so it collapses to one
// pass; `max` needs every head's bound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/enum_names.hpp"
#include "core/kv_store.hpp"
#include "core/status.hpp"

namespace pnmkv {

enum class gqa_aggregation { max, sum };
inline constexpr enum_name<gqa_aggregation> gqa_aggregation_names[] = {{"max", gqa_aggregation::max},
                                                                       {"sum", gqa_aggregation::sum}};
const char* to_string(gqa_aggregation a);

// Query heads per KV head a kernel accepts (Llama-3.1-405B needs 16).
constexpr uint32_t kernel_group_limit = 64;

// q_group: group × head_dim floats (row per query head). scores_out: page_count() floats,
// indexed by local page. Vectorised (Highway, runtime dispatch). Errors: group outside
// 1..kernel_group_limit or a null pointer (invalid_argument).
status score_pages(const kv_head_store& store, const float* q_group, uint32_t group,
                   gqa_aggregation aggregation, float* scores_out);

// The weight rows of one query group, prepared once for scoring listed pages: natural
// order ([q⁺, q⁻] per row, rows = group for `max`, 1 for `sum`) and in the layout the
// flat kernel pairs with the store's summaries on the running SIMD target.
struct score_weights {
  std::vector<float> natural;
  std::vector<float> weights;
  uint32_t rows = 0;
  size_t len = 0;      // 2 · head_dim
  int64_t target = 0;  // the Highway target that laid them out
};
status prepare_score_weights(const kv_head_store& store, const float* q_group, uint32_t group,
                             gqa_aggregation aggregation, score_weights& out);

// The scores of the listed local pages only (out[k] for pages[k]), bit-identical to what
// score_pages gives those pages: the exact rescoring of core/exact_search. Weights from
// prepare_score_weights on the same store shape and target. out_of_range for a page past
// page_count().
status score_listed_pages(const kv_head_store& store, const score_weights& weights,
                          const uint32_t* pages, size_t n, float* scores_out);

// The same bound computed by a plain scalar loop: the reference for tests and benches.
status score_pages_scalar(const kv_head_store& store, const float* q_group, uint32_t group,
                          gqa_aggregation aggregation, float* scores_out);

// Name of the Highway target the vectorised kernels (score_pages, attend_pages) dispatch
// to on this CPU, e.g. "AVX2" or "AVX3" (hwy::TargetName); benches print it.
const char* kernel_target_name();

}  // namespace pnmkv
