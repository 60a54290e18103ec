// Quest page scores over the per-page key summaries, vectorised with Highway (runtime
// dispatch over every compiled target), plus the plain scalar loop they are checked and
// benchmarked against.
//
// The bound per head and dimension, max(q·mn, q·mx), equals q⁺·mx + q⁻·mn exactly
// (q⁺ = max(q, 0), q⁻ = min(q, 0), mn ≤ mx), so a head's page score is one dot product
// of length 2·d between the weight row [q⁺, q⁻] and the page summary [mx, mn] as stored.
// For the `sum` aggregation the weight rows of the group add up to one row
// [Σ_h q⁺_h, Σ_h q⁻_h] (one pass whatever the group size); `max` needs one row per head,
// computed in blocks of 4 heads × several pages so every loaded summary vector feeds
// several FMAs. Scoring streams the summaries once. `max` costs 2·d FMAs per head and
// page, so it is FMA-bound on AVX2 from about GQA 4 (measured on a Zen 3 core: ~0.75 of
// the core's read bandwidth at GQA 4, ~0.2 at GQA 16; `sum` ~0.75 at any group size).
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/score.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"

#include "core/check.hpp"
#include "core/score.hpp"
#include "core/simd_internal.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

// Block shapes per target; the arithmetic of each product does not depend on them
// (core/simd_internal.hpp). Accumulators = heads × pages × replicas.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
// 32 vector registers, one per chain set: 4 heads × 4 pages = 16 accumulators, whose
// 16 sums come out as one vector (simd::reduce_chains).
constexpr size_t score_heads_per_block = 4;
constexpr size_t score_pages_per_block = 4;
constexpr size_t single_row_pages_per_block = 16;
#else
// 16 vector registers, a chain set in two (AVX2) or more: 4 heads × 1 page × 2 = 8
// accumulators; each widened data vector feeds 4 FMAs (2 heads × 2 pages measured
// ~15% slower: twice the widening per FMA).
constexpr size_t score_heads_per_block = simd::replicas <= 2 ? 4 : 1;
constexpr size_t score_pages_per_block = 1;
constexpr size_t single_row_pages_per_block = simd::replicas <= 2 ? 4 : 1;
#endif

inline float max_ignoring_nan(float best, float v) { return v > best ? v : best; }

// Summaries are streamed once; hardware prefetchers alone leave the core waiting on
// DRAM (measured: GQA-4 max scoring went from ~0.6 to ~0.7 of the read bandwidth), so
// each block asks for the bytes some KiB ahead of it.
// `max` blocks (a few pages, many FMAs each) ask 8 KiB ahead, single-row blocks (more
// pages, few FMAs) 4 KiB: measured on Zen 5, GQA 4 max went from ~0.85 to ~0.97 of the
// read bandwidth; the single row was fastest at 4 KiB.
constexpr size_t max_prefetch_bytes = 8192;
constexpr size_t single_row_prefetch_bytes = 4096;

template <size_t Ahead, class Src>
HWY_INLINE void prefetch_ahead(const Src* block, size_t block_bytes, const Src* end) {
  const char* from = reinterpret_cast<const char*>(block) + Ahead;
  const char* stop = reinterpret_cast<const char*>(end);
  for (size_t off = 0; off < block_bytes && from + off < stop; off += 64) {
    hwy::Prefetch(from + off);
  }
}

// One weight row (sum aggregation, or max over a single head): scores = W · S per page.
template <class Src>
void score_single_row(const Src* summaries, size_t len, uint32_t n_pages, const float* w,
                      float* out) {
  constexpr size_t pb = single_row_pages_per_block;
  uint32_t p = 0;
  const Src* end = summaries + static_cast<size_t>(n_pages) * len;
  for (; p + pb <= n_pages; p += pb) {
    const Src* block = summaries + static_cast<size_t>(p) * len;
    prefetch_ahead<single_row_prefetch_bytes>(block, pb * len * sizeof(Src), end);
    simd::dot_block<1, pb>(w, len, block, len, len, out + p);
  }
  for (; p < n_pages; ++p) {
    simd::dot_block<1, 1>(w, len, summaries + static_cast<size_t>(p) * len, len, len, out + p);
  }
}

// Max over `group` weight rows of the per-row dot products with each page summary.
template <size_t PB, class Src>
HWY_INLINE void score_max_pages(const Src* x, size_t len, const float* w, uint32_t group,
                                float* out) {
  constexpr size_t hb = score_heads_per_block;
  float tmp[hb * PB];
  float best[PB];
  std::fill(best, best + PB, -std::numeric_limits<float>::infinity());
  uint32_t h = 0;
  for (; h + hb <= group; h += hb) {
    simd::dot_block<hb, PB>(w + static_cast<size_t>(h) * len, len, x, len, len, tmp);
    for (size_t i = 0; i < hb; ++i) {
      for (size_t p = 0; p < PB; ++p) best[p] = max_ignoring_nan(best[p], tmp[i * PB + p]);
    }
  }
  for (; h < group; ++h) {
    simd::dot_block<1, PB>(w + static_cast<size_t>(h) * len, len, x, len, len, tmp);
    for (size_t p = 0; p < PB; ++p) best[p] = max_ignoring_nan(best[p], tmp[p]);
  }
  for (size_t p = 0; p < PB; ++p) out[p] = best[p];
}

template <class Src>
void score_max_rows(const Src* summaries, size_t len, uint32_t n_pages, const float* w,
                    uint32_t group, float* out) {
  constexpr size_t pb = score_pages_per_block;
  uint32_t p = 0;
  const Src* end = summaries + static_cast<size_t>(n_pages) * len;
  for (; p + pb <= n_pages; p += pb) {
    const Src* block = summaries + static_cast<size_t>(p) * len;
    prefetch_ahead<max_prefetch_bytes>(block, pb * len * sizeof(Src), end);
    score_max_pages<pb>(block, len, w, group, out + p);
  }
  for (; p < n_pages; ++p) {
    score_max_pages<1>(summaries + static_cast<size_t>(p) * len, len, w, group, out + p);
  }
}

}  // namespace

// The weight rows of a query group, natural order ([q⁺, q⁻] per head, or summed for
// `sum`) and in the layout the summaries' precision pairs with. Shared by the flat scan and
// the listed-page rescoring, so both compute bit-identical scores.
void build_weight_rows(const kv_head_store& store, const float* q_group, uint32_t group,
                       bool aggregate_max, float* natural, float* weights) {
  const uint32_t d = store.shape().head_dim;
  const size_t len = 2 * static_cast<size_t>(d);
  const uint32_t rows = aggregate_max ? group : 1;
  std::fill(natural, natural + len * rows, 0.0f);
  for (uint32_t h = 0; h < group; ++h) {
    float* row = natural + (aggregate_max ? h : 0) * len;
    const float* q = q_group + static_cast<size_t>(h) * d;
    for (uint32_t j = 0; j < d; ++j) {
      row[j] += std::max(q[j], 0.0f);      // pairs with max_j
      row[d + j] += std::min(q[j], 0.0f);  // pairs with min_j
    }
  }
  if (store.shape().summaries == summary_precision::bf16) {
    for (uint32_t r = 0; r < rows; ++r) {
      simd::to_pair_layout(natural + r * len, len, weights + r * len);
    }
  } else {
    std::copy(natural, natural + len * rows, weights);
  }
}

// Builds the weight rows in the pair layout and scores every page.
void score_pages_simd(const kv_head_store& store, const float* q_group, uint32_t group,
                      bool aggregate_max, float* scores_out) {
  const uint32_t d = store.shape().head_dim;
  const size_t len = 2 * static_cast<size_t>(d);
  const uint32_t n_pages = store.page_count();
  const uint32_t rows = aggregate_max ? group : 1;
  const bool bf = store.shape().summaries == summary_precision::bf16;
  PNMKV_CHECK(len % simd::chunk_elems == 0, "len=", len);

  auto natural = hwy::AllocateAligned<float>(len * rows);
  auto weights = hwy::AllocateAligned<float>(len * rows);
  build_weight_rows(store, q_group, group, aggregate_max, natural.get(), weights.get());

  if (bf) {
    const bf16* s = static_cast<const bf16*>(store.summaries());
    if (rows == 1) {
      score_single_row(s, len, n_pages, weights.get(), scores_out);
    } else {
      score_max_rows(s, len, n_pages, weights.get(), rows, scores_out);
    }
  } else {
    const float* s = static_cast<const float*>(store.summaries());
    if (rows == 1) {
      score_single_row(s, len, n_pages, weights.get(), scores_out);
    } else {
      score_max_rows(s, len, n_pages, weights.get(), rows, scores_out);
    }
  }
}

// The listed pages only, one at a time: each page's products are those of the flat scan
// (the arithmetic of a product does not depend on the block shape), so the scores are
// bit-identical to score_pages_simd's.
template <class Src>
void score_listed(const Src* summaries, size_t len, const uint32_t* pages, size_t n,
                  const float* w, uint32_t rows, float* out) {
  for (size_t k = 0; k < n; ++k) {
    const Src* x = summaries + static_cast<size_t>(pages[k]) * len;
    if (rows == 1) {
      simd::dot_block<1, 1>(w, len, x, len, len, out + k);
    } else {
      score_max_pages<1>(x, len, w, rows, out + k);
    }
  }
}

void prepare_weights_simd(const kv_head_store& store, const float* q_group, uint32_t group,
                          bool aggregate_max, float* natural, float* weights) {
  build_weight_rows(store, q_group, group, aggregate_max, natural, weights);
}

void score_listed_pages_simd(const kv_head_store& store, const float* weights, uint32_t rows,
                             const uint32_t* pages, size_t n, float* scores_out) {
  const size_t len = 2 * static_cast<size_t>(store.shape().head_dim);
  if (store.shape().summaries == summary_precision::bf16) {
    score_listed(static_cast<const bf16*>(store.summaries()), len, pages, n, weights, rows,
                 scores_out);
  } else {
    score_listed(static_cast<const float*>(store.summaries()), len, pages, n, weights, rows,
                 scores_out);
  }
}

int64_t dispatched_target() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pnmkv {

HWY_EXPORT(score_pages_simd);
HWY_EXPORT(score_listed_pages_simd);
HWY_EXPORT(prepare_weights_simd);
HWY_EXPORT(dispatched_target);

const char* to_string(gqa_aggregation a) { return name_of(gqa_aggregation_names, a); }

const char* kernel_target_name() {
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(dispatched_target)());
}

namespace {

status check_score_args(const kv_head_store& store, const float* q_group, uint32_t group,
                        gqa_aggregation aggregation, const float* scores_out,
                        bool weights_only = false) {
  if (group < 1 || group > kernel_group_limit) {
    return {errc::invalid_argument, "score_pages: group = " + std::to_string(group) +
                                        " query heads is not allowed: 1.." +
                                        std::to_string(kernel_group_limit)};
  }
  if (aggregation != gqa_aggregation::max && aggregation != gqa_aggregation::sum) {
    return {errc::invalid_argument, "score_pages: unknown gqa aggregation " +
                                        std::to_string(static_cast<int>(aggregation))};
  }
  if (q_group == nullptr || (scores_out == nullptr && store.page_count() > 0 && !weights_only)) {
    return {errc::invalid_argument, "score_pages: q_group and scores_out must not be null"};
  }
  return status::ok();
}

}  // namespace

status score_pages(const kv_head_store& store, const float* q_group, uint32_t group,
                   gqa_aggregation aggregation, float* scores_out) {
  if (status s = check_score_args(store, q_group, group, aggregation, scores_out); !s) return s;
  if (store.page_count() == 0) return status::ok();
  HWY_DYNAMIC_DISPATCH(score_pages_simd)(store, q_group, group,
                                         aggregation == gqa_aggregation::max, scores_out);
  return status::ok();
}

status prepare_score_weights(const kv_head_store& store, const float* q_group, uint32_t group,
                             gqa_aggregation aggregation, score_weights& out) {
  if (status s = check_score_args(store, q_group, group, aggregation, nullptr, true); !s) {
    return s;
  }
  const size_t len = 2 * static_cast<size_t>(store.shape().head_dim);
  out.rows = aggregation == gqa_aggregation::max ? group : 1;
  out.len = len;
  out.natural.resize(len * out.rows);
  out.weights.resize(len * out.rows);
  out.target = HWY_DYNAMIC_DISPATCH(dispatched_target)();
  HWY_DYNAMIC_DISPATCH(prepare_weights_simd)(store, q_group, group,
                                             aggregation == gqa_aggregation::max,
                                             out.natural.data(), out.weights.data());
  return status::ok();
}

status score_listed_pages(const kv_head_store& store, const score_weights& w,
                          const uint32_t* pages, size_t n, float* scores_out) {
  if (n == 0) return status::ok();
  if (pages == nullptr || scores_out == nullptr) {
    return {errc::invalid_argument, "score_listed_pages: pages and scores_out must not be null"};
  }
  if (w.rows == 0 || w.len != 2 * static_cast<size_t>(store.shape().head_dim)) {
    return {errc::invalid_argument,
            "score_listed_pages: weights not prepared for this store's head dim"};
  }
  // The pair layout of the weights is the target's: prepared and used on the same one.
  PNMKV_CHECK_EQ(w.target, HWY_DYNAMIC_DISPATCH(dispatched_target)());
  for (size_t k = 0; k < n; ++k) {
    if (pages[k] >= store.page_count()) {
      return {errc::out_of_range, "score_listed_pages: page " + std::to_string(pages[k]) +
                                      " is past page_count = " +
                                      std::to_string(store.page_count())};
    }
  }
  HWY_DYNAMIC_DISPATCH(score_listed_pages_simd)(store, w.weights.data(), w.rows, pages, n,
                                                scores_out);
  return status::ok();
}

status score_pages_scalar(const kv_head_store& store, const float* q_group, uint32_t group,
                          gqa_aggregation aggregation, float* scores_out) {
  if (status s = check_score_args(store, q_group, group, aggregation, scores_out); !s) return s;
  const uint32_t d = store.shape().head_dim;
  const bool bf = store.shape().summaries == summary_precision::bf16;
  const size_t len = 2 * static_cast<size_t>(d);
  for (uint32_t p = 0; p < store.page_count(); ++p) {
    float total = aggregation == gqa_aggregation::max ? -std::numeric_limits<float>::infinity()
                                                      : 0.0f;
    for (uint32_t h = 0; h < group; ++h) {
      const float* q = q_group + static_cast<size_t>(h) * d;
      float s = 0.0f;
      for (uint32_t j = 0; j < d; ++j) {
        float mx;
        float mn;
        if (bf) {
          const bf16* sp = static_cast<const bf16*>(store.summaries()) + p * len;
          mx = to_float(sp[j]);
          mn = to_float(sp[d + j]);
        } else {
          const float* sp = static_cast<const float*>(store.summaries()) + p * len;
          mx = sp[j];
          mn = sp[d + j];
        }
        s += std::max(q[j] * mn, q[j] * mx);
      }
      if (aggregation == gqa_aggregation::max) {
        total = s > total ? s : total;
      } else {
        total += s;
      }
    }
    scores_out[p] = total;
  }
  return status::ok();
}

}  // namespace pnmkv
#endif  // HWY_ONCE
