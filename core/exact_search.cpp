// Page search, flat and exact-int8 (see exact_search.hpp). The integer bound kernel is
// vectorised with Highway (runtime dispatch): uint8 codes are widened to int16 and
// multiplied with int16 weights pairwise into int32 lanes (ReorderWidenMulAccumulate:
// vpmaddwd on x86), exact on every target, so a search's bounds, and so the pages it
// rescores and the bytes it counts, are the same on every CPU.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/exact_search.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "hwy/cache_control.h"

#include "core/check.hpp"
#include "core/exact_search.hpp"
#include "core/simd_internal.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
void dot_rows_impl(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                   uint32_t rows, int32_t* out) {
  for (uint32_t p = 0; p < n_pages; ++p) {
    for (uint32_t r = 0; r < rows; ++r) {
      int32_t acc = 0;
      for (size_t i = 0; i < len; ++i) acc += int32_t(wq[r * len + i]) * codes[p * len + i];
      out[size_t(p) * rows + r] = acc;
    }
  }
}
#else
using d16_t = hn::ScalableTag<int16_t>;
using d32_t = hn::Repartition<int32_t, d16_t>;
using du8_t = hn::Rebind<uint8_t, d16_t>;
using v32_t = hn::Vec<d32_t>;

// Block shapes: HB weight rows × PB pages of accumulators (each widened code vector feeds
// HB multiply-adds, each weight vector PB).
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t rows_per_block = 4;
constexpr size_t pages_per_block = 4;
constexpr size_t single_row_pages_per_block = 8;
#else
constexpr size_t rows_per_block = 4;
constexpr size_t pages_per_block = 2;
constexpr size_t single_row_pages_per_block = 4;
#endif
constexpr size_t code_prefetch_bytes = 2048;

// Adds the 128-bit blocks of v together and stores the 4 resulting lanes.
template <class D>
HWY_INLINE void fold_store4_i32(D d, hn::Vec<D> v, int32_t* out) {
  if constexpr (hn::MaxLanes(D()) > 4) {
    const hn::Half<D> dh;
    fold_store4_i32(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)), out);
  } else {
    hn::StoreU(v, d, out);
  }
}

// Sums of the lanes of n accumulators, four at a time by an interleave tree.
template <size_t N>
HWY_INLINE void reduce_lanes(const v32_t (&acc)[N], int32_t* out) {
  const d32_t d32;
  size_t k = 0;
  if constexpr (hn::MaxLanes(d32_t()) >= 4) {
    for (; k + 4 <= N; k += 4) {
      fold_store4_i32(d32, simd::tree4_blocks(d32, acc[k], acc[k + 1], acc[k + 2], acc[k + 3]),
                        out + k);
    }
  }
  for (; k < N; ++k) out[k] = hn::GetLane(hn::SumOfLanes(d32, acc[k]));
}

// out[h·PB + p] = Σ_i w[h·len + i] · x[p·len + i].
template <size_t HB, size_t PB>
HWY_INLINE void dot_block_i8(const uint8_t* HWY_RESTRICT x, size_t len,
                             const int16_t* HWY_RESTRICT w, int32_t* HWY_RESTRICT out) {
  const d16_t d16;
  const d32_t d32;
  const du8_t du8;
  const size_t n = hn::Lanes(d16);
  v32_t acc[HB * PB];
  v32_t acc1[HB * PB];
  for (size_t k = 0; k < HB * PB; ++k) {
    acc[k] = hn::Zero(d32);
    acc1[k] = hn::Zero(d32);
  }
  for (size_t i = 0; i < len; i += n) {
    hn::Vec<d16_t> c[PB];
    for (size_t p = 0; p < PB; ++p) c[p] = hn::PromoteTo(d16, hn::LoadU(du8, x + p * len + i));
    for (size_t h = 0; h < HB; ++h) {
      auto wv = hn::LoadU(d16, w + h * len + i);
      if constexpr (PB > 1) PNMKV_KEEP_IN_REGISTER(wv);
      for (size_t p = 0; p < PB; ++p) {
        acc[h * PB + p] = hn::ReorderWidenMulAccumulate(d32, wv, c[p], acc[h * PB + p],
                                                        acc1[h * PB + p]);
      }
    }
  }
  for (size_t k = 0; k < HB * PB; ++k) acc[k] = hn::Add(acc[k], acc1[k]);
  reduce_lanes(acc, out);
}

template <size_t HB, size_t PB>
HWY_INLINE void dot_pages(const uint8_t* codes, size_t len, const int16_t* wq, uint32_t rows,
                          uint32_t first_page, int32_t* out) {
  int32_t tmp[HB * PB];
  uint32_t r = 0;
  for (; r + HB <= rows; r += HB) {
    dot_block_i8<HB, PB>(codes, len, wq + size_t(r) * len, tmp);
    for (size_t h = 0; h < HB; ++h)
      for (size_t p = 0; p < PB; ++p) out[(first_page + p) * rows + r + h] = tmp[h * PB + p];
  }
  for (; r < rows; ++r) {
    dot_block_i8<1, PB>(codes, len, wq + size_t(r) * len, tmp);
    for (size_t p = 0; p < PB; ++p) out[(first_page + p) * rows + r] = tmp[p];
  }
}

template <size_t PB>
void dot_rows_blocked(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                      uint32_t rows, int32_t* out) {
  uint32_t p = 0;
  const char* end = reinterpret_cast<const char*>(codes + size_t(n_pages) * len);
  for (; p + PB <= n_pages; p += PB) {
    const char* ahead = reinterpret_cast<const char*>(codes + size_t(p) * len) + code_prefetch_bytes;
    for (size_t off = 0; off < PB * len && ahead + off < end; off += 64) hwy::Prefetch(ahead + off);
    dot_pages<rows_per_block, PB>(codes + size_t(p) * len, len, wq, rows, p, out);
  }
  for (; p < n_pages; ++p) dot_pages<rows_per_block, 1>(codes + size_t(p) * len, len, wq, rows, p, out);
}

void dot_rows_impl(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                   uint32_t rows, int32_t* out) {
  if (rows == 1) {
    dot_rows_blocked<single_row_pages_per_block>(codes, n_pages, len, wq, rows, out);
  } else {
    dot_rows_blocked<pages_per_block>(codes, n_pages, len, wq, rows, out);
  }
}
#endif

}  // namespace

void int8_dot_rows_simd(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                        uint32_t rows, int32_t* out) {
  dot_rows_impl(codes, n_pages, len, wq, rows, out);
}

}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "core/roofline.hpp"
#include "core/select.hpp"

namespace pnmkv {

HWY_EXPORT(int8_dot_rows_simd);

void int8_dot_rows(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                   uint32_t rows, int32_t* out) {
  PNMKV_CHECK(len % 32 == 0 && len > 0, "len=", len);
  if (n_pages == 0 || rows == 0) return;
  HWY_DYNAMIC_DISPATCH(int8_dot_rows_simd)(codes, n_pages, len, wq, rows, out);
}

int32_t int8_weight_limit(size_t len) {
  PNMKV_CHECK(len > 0, "len=", len);
  const int64_t lim = int64_t(std::numeric_limits<int32_t>::max()) / (int64_t(len) * 255);
  return int32_t(std::min<int64_t>(lim, std::numeric_limits<int16_t>::max()));
}

namespace {

// Work counted for the bound's float set-up (docs/DESIGN.md §4): per (block, row, element)
// the step product, its magnitude, the weight's quantisation and check, and the two sums
// (C and the margin's A): counted as 8 flops; per (page, row) C + α·I: 2 flops.
constexpr double setup_flops_per_block_row_elem = 8;
constexpr double combine_flops_per_page_row = 2;
// A score range past this falls back to the flat scan (no float score can overflow below).
constexpr double bound_magnitude_limit = 1e37;

inline uint32_t ordered_of(uint64_t key) { return uint32_t(key >> 32); }
inline uint32_t page_of(uint64_t key) { return ~uint32_t(key & 0xffffffffu); }

// The least float ≥ x (x finite double); +inf past the float range.
inline float round_up_to_float(double x) {
  float f = static_cast<float>(x);
  if (double(f) < x) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  return f;
}

// Relative error bound of the flat kernel's score (and then some): 16 chains of
// ceil(len/32)·2 fused multiply-adds each, a tree of 4 adds, every step rounded once (twice
// without FMA), relative to Σ|w_i·x_i|: ≤ 2·(len/16 + 6)·2^-24. Taken as (len/16 + 16)·2^-22,
// plus 2^-40 for the bound's own double arithmetic.
inline double margin_factor(size_t len) { return (double(len) / 16.0 + 16.0) * 0x1p-22 + 0x1p-40; }

status flat_search(const kv_head_store& store, const search_query& q,
                   const std::vector<uint32_t>& forced, std::vector<uint32_t>& selected,
                   std::vector<float>& selected_scores, search_work& work, search_scratch& sc) {
  const uint32_t pages = store.page_count();
  sc.scores.resize(pages);
  if (status s = score_pages(store, q.q_group, q.group, q.aggregation, sc.scores.data()); !s) return s;
  if (q.excluded != nullptr) {
    for (uint32_t p = 0; p < pages; ++p)
      if (q.excluded[p]) sc.scores[p] = std::nanf("");  // ranks lowest
  }
  auto sel = select_top_pages(sc.scores.data(), pages, forced, q.budget_pages);
  if (!sel) return sel.error();
  selected = std::move(sel).value();
  selected_scores.clear();
  for (uint32_t p : selected) selected_scores.push_back(sc.scores[p]);
  const kernel_work w =
      score_work(store.shape().head_dim, store.shape().summaries, q.group, q.aggregation, pages);
  work.pages_rescored += pages;
  work.summary_bytes += uint64_t(pages) * store.summary_bytes_per_page();
  work.flops += w.flops;
  return status::ok();
}

bool all_finite(const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (!std::isfinite(x[i])) return false;
  return true;
}

// Bounds of every page into sc.bounds; false when the score range is too large (the
// caller falls back to the flat scan).
bool int8_bounds(const kv_head_store& store, const score_weights& w, search_work& work,
                 search_scratch& sc) {
  const int8_summary_index& ix = store.int8_summaries();
  const uint32_t pages = store.page_count();
  const size_t len = w.len;
  const uint32_t rows = w.rows;
  const uint32_t bp = ix.block_pages();
  const uint32_t n_blocks = ix.blocks(pages);
  const double wlim = double(int8_weight_limit(len) - 1);
  const double gamma = margin_factor(len);
  sc.bounds.resize(pages);
  sc.steps.resize(len);
  sc.wq.resize(size_t(rows) * len);
  sc.row_c.resize(rows);
  sc.row_alpha.resize(rows);
  sc.row_margin.resize(rows);
  sc.dots.resize(size_t(std::min(bp, pages)) * rows);
  for (uint32_t b = 0; b < n_blocks; ++b) {
    const float* lo = ix.block_lo(b);
    const float* hi = ix.block_hi(b);
    for (size_t i = 0; i < len; ++i) sc.steps[i] = int8_summary_index::step_of(lo[i], hi[i]);
    for (uint32_t r = 0; r < rows; ++r) {
      const float* wr = w.natural.data() + size_t(r) * len;
      double c = 0, a = 0, wmax = 0;
      for (size_t i = 0; i < len; ++i) {
        const double wi = wr[i];
        const double top = double(lo[i]) + 255.0 * double(sc.steps[i]);
        c += wi * double(lo[i]);
        a += std::fabs(wi) * std::max(std::fabs(double(lo[i])), std::fabs(top));
        wmax = std::max(wmax, std::fabs(wi * double(sc.steps[i])));
      }
      if (!(a < bound_magnitude_limit)) return false;
      const double alpha = wmax > 0 ? wmax / wlim : 0.0;
      int16_t* wq = sc.wq.data() + size_t(r) * len;
      for (size_t i = 0; i < len; ++i) {
        if (alpha == 0) {
          wq[i] = 0;
          continue;
        }
        // Rounded up, so α·ŵ ≥ w·step: with codes ≥ 0 the integer part bounds from above.
        const double want = double(wr[i]) * double(sc.steps[i]);
        double qi = std::ceil(want / alpha);
        while (alpha * qi < want) qi += 1;
        PNMKV_CHECK(std::fabs(qi) <= wlim + 1, "qi=", qi, " wlim=", wlim);
        wq[i] = static_cast<int16_t>(qi);
      }
      sc.row_c[r] = c;
      sc.row_alpha[r] = alpha;
      sc.row_margin[r] = a * gamma;
    }
    const uint32_t first = b * bp;
    const uint32_t n = std::min(bp, pages - first);
    int8_dot_rows(ix.codes() + size_t(first) * len, n, len, sc.wq.data(), rows, sc.dots.data());
    for (uint32_t p = 0; p < n; ++p) {
      double best = -std::numeric_limits<double>::infinity();
      for (uint32_t r = 0; r < rows; ++r) {
        const double bound =
            sc.row_c[r] + sc.row_alpha[r] * double(sc.dots[size_t(p) * rows + r]) + sc.row_margin[r];
        best = std::max(best, bound);
      }
      sc.bounds[first + p] = round_up_to_float(best);
    }
  }
  work.int8_bytes += ix.scan_bytes(pages);
  work.int_ops += 2.0 * double(pages) * rows * double(len);
  work.flops += double(n_blocks) * rows * double(len) * setup_flops_per_block_row_elem +
                double(pages) * rows * combine_flops_per_page_row;
  return true;
}

}  // namespace

status search_top_pages(const kv_head_store& store, page_search search, const search_query& q,
                        std::vector<uint32_t>& selected, std::vector<float>& selected_scores,
                        search_work& work, search_scratch& sc) {
  const uint32_t pages = store.page_count();
  const uint32_t d = store.shape().head_dim;
  work.pages += pages;
  if (search != page_search::flat && search != page_search::exact_int8) {
    return {errc::invalid_argument,
            "search_top_pages: unknown search " + std::to_string(static_cast<int>(search))};
  }
  if (search == page_search::exact_int8 && store.int8_summaries().empty()) {
    return {errc::invalid_argument,
            "search_top_pages: exact-int8 on a store built without int8 summaries "
            "(kv_head_shape.search = flat)"};
  }
  std::vector<uint32_t> forced = q.forced;
  std::sort(forced.begin(), forced.end());
  forced.erase(std::unique(forced.begin(), forced.end()), forced.end());
  for (uint32_t f : forced) {
    if (f >= pages) {
      return {errc::out_of_range, "search_top_pages: forced page " + std::to_string(f) +
                                      " is past page_count = " + std::to_string(pages)};
    }
    if (q.excluded != nullptr && q.excluded[f]) {
      return {errc::invalid_argument,
              "search_top_pages: page " + std::to_string(f) + " is both forced and excluded"};
    }
  }
  uint64_t n_excluded = 0;
  if (q.excluded != nullptr)
    for (uint32_t p = 0; p < pages; ++p) n_excluded += q.excluded[p] ? 1 : 0;
  const uint64_t n_cand = pages - forced.size() - n_excluded;
  const uint64_t want = q.budget_pages > forced.size() ? q.budget_pages - forced.size() : 0;

  const bool exact_possible = search == page_search::exact_int8 && forced.size() <= q.budget_pages &&
                              want < n_cand && store.int8_summaries().non_finite_blocks() == 0 &&
                              q.q_group != nullptr && q.group >= 1 && q.group <= kernel_group_limit &&
                              all_finite(q.q_group, size_t(q.group) * d);
  if (!exact_possible) {
    if (search == page_search::exact_int8) ++work.fallbacks;
    return flat_search(store, q, forced, selected, selected_scores, work, sc);
  }
  if (status s = prepare_score_weights(store, q.q_group, q.group, q.aggregation, sc.weights); !s)
    return s;
  const score_weights& w = sc.weights;
  if (want > 0 && !int8_bounds(store, w, work, sc)) {
    ++work.fallbacks;
    return flat_search(store, q, forced, selected, selected_scores, work, sc);
  }
  const kernel_work one_page = score_work(d, store.shape().summaries, q.group, q.aggregation, 1);
  uint64_t rescored = 0;
  auto rescore = [&](const uint32_t* list, size_t n, float* out) -> status {
    rescored += n;
    return score_listed_pages(store, w, list, n, out);
  };

  // The best `want` pages by bound, rescored exactly: the first `want` of the descending
  // bound order (a min-heap of their exact keys holds the best so far).
  sc.heap.clear();
  if (want > 0) {
    sc.keys.clear();
    size_t next_forced = 0;
    for (uint32_t p = 0; p < pages; ++p) {
      if (next_forced < forced.size() && forced[next_forced] == p) {
        ++next_forced;
        continue;
      }
      if (q.excluded != nullptr && q.excluded[p]) continue;
      sc.keys.push_back(page_rank_key(sc.bounds[p], p));
    }
    PNMKV_CHECK_EQ(sc.keys.size(), n_cand);
    const auto top_end = sc.keys.begin() + std::ptrdiff_t(want);
    std::nth_element(sc.keys.begin(), top_end - 1, sc.keys.end(), std::greater<uint64_t>());
    sc.list.clear();
    for (auto it = sc.keys.begin(); it != top_end; ++it) sc.list.push_back(page_of(*it));
    sc.listed_scores.resize(sc.list.size());
    if (status s = rescore(sc.list.data(), sc.list.size(), sc.listed_scores.data()); !s) return s;
    sc.scores.resize(pages);
    for (size_t k = 0; k < sc.list.size(); ++k) {
      const uint32_t p = sc.list[k];
      sc.scores[p] = sc.listed_scores[k];
      sc.heap.push_back(page_rank_key(sc.scores[p], p));
      PNMKV_CHECK(ordered_of(sc.heap.back()) <= ordered_of(page_rank_key(sc.bounds[p], p)),
                  "bound below the exact score: page ", p, " bound=", sc.bounds[p],
                  " exact=", sc.scores[p]);
    }
    std::make_heap(sc.heap.begin(), sc.heap.end(), std::greater<uint64_t>());
    // Then the rest in descending bound order while a bound reaches the k-th exact score
    // (equal: it could tie and win on its index, so it is rescored).
    sc.later.clear();
    const uint32_t floor_now = ordered_of(sc.heap.front());
    for (auto it = top_end; it != sc.keys.end(); ++it)
      if (ordered_of(*it) >= floor_now) sc.later.push_back(*it);
    std::sort(sc.later.begin(), sc.later.end(), std::greater<uint64_t>());
    for (uint64_t bkey : sc.later) {
      if (ordered_of(bkey) < ordered_of(sc.heap.front())) break;
      const uint32_t p = page_of(bkey);
      float exact = 0;
      if (status s = rescore(&p, 1, &exact); !s) return s;
      sc.scores[p] = exact;
      const uint64_t ekey = page_rank_key(exact, p);
      PNMKV_CHECK(ordered_of(ekey) <= ordered_of(bkey), "bound below the exact score: page ", p,
                  " bound=", sc.bounds[p], " exact=", exact);
      if (ekey > sc.heap.front()) {
        std::pop_heap(sc.heap.begin(), sc.heap.end(), std::greater<uint64_t>());
        sc.heap.back() = ekey;
        std::push_heap(sc.heap.begin(), sc.heap.end(), std::greater<uint64_t>());
      }
    }
  }
  // The forced pages' exact scores (the exact_candidates round sends them).
  sc.listed_scores.resize(forced.size());
  if (status s = rescore(forced.data(), forced.size(), sc.listed_scores.data()); !s) return s;
  std::vector<std::pair<uint32_t, float>> out;
  out.reserve(forced.size() + sc.heap.size());
  for (size_t k = 0; k < forced.size(); ++k) out.emplace_back(forced[k], sc.listed_scores[k]);
  for (uint64_t key : sc.heap) out.emplace_back(page_of(key), sc.scores[page_of(key)]);
  std::sort(out.begin(), out.end());
  selected.clear();
  selected_scores.clear();
  for (const auto& [p, s] : out) {
    selected.push_back(p);
    selected_scores.push_back(s);
  }
  work.pages_rescored += rescored;
  work.summary_bytes += rescored * store.summary_bytes_per_page();
  work.flops += double(rescored) * one_page.flops;
  return status::ok();
}

}  // namespace pnmkv
#endif  // HWY_ONCE
