// Attention of a GQA group of query heads over a subset of one KV head's pages, giving a
// partial (per query head: normalised output o and log-sum-exp lse, fp32), and the exact
// merge of partials (docs/DESIGN.md glossary). Accumulation is fp32 with an online softmax;
// the dense reference accumulates in double and is the ground truth for tests.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/kv_store.hpp"
#include "core/status.hpp"

namespace pnmkv {

struct partial {
  uint32_t group = 0;
  uint32_t head_dim = 0;
  std::vector<float> o;    // group × head_dim, already divided by the softmax sum
  std::vector<float> lse;  // group; log Σ exp(scale · q·k); -inf for an empty subset

  void reset(uint32_t group_, uint32_t head_dim_);  // empty partial: o = 0, lse = -inf
  bool empty() const;                                // every lse is -inf
};

// Attends q_group (group × head_dim) over the listed local pages (any order, no
// duplicates) of the store. scale is usually 1/sqrt(head_dim). Vectorised.
status attend_pages(const kv_head_store& store, const float* q_group, uint32_t group,
                    const uint32_t* local_pages, size_t n_pages, float scale, partial& out);

// Plain scalar loop, fp32, same contract: reference for benches.
status attend_pages_scalar(const kv_head_store& store, const float* q_group, uint32_t group,
                           const uint32_t* local_pages, size_t n_pages, float scale,
                           partial& out);

// Ground truth: dense attention over every held token, double accumulation.
status dense_attention_reference(const kv_head_store& store, const float* q_group,
                                 uint32_t group, float scale, partial& out);

// Exact merge in the given order (callers order by shard id so runs are bit-identical).
// Partials with lse = -inf are skipped per head; all inputs must share group and head_dim.
status merge_partials(const partial* const* parts, size_t n_parts, partial& out);

}  // namespace pnmkv
