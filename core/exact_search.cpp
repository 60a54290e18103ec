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
#include <atomic>
#include <cmath>
#include <functional>
#include <cstring>
#include <limits>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

// The float set-up of one block for one query (exact_search.hpp): per row r the int16
// weights ŵ_i = ceil(t_i + |t_i|·2^-20), t_i = w_i·step_i / α_r (rounded up so α_r·ŵ_i ≥
// w_i·step_i despite float rounding: t_i is within 4·2^-24 of its real value), α_r =
// max_i |w_i·step_i| / wlim, and offset_r = Σ w_i·lo_i + A_r·gamma with A_r = Σ |w_i|·
// max(|lo_i|, |lo_i + 255·step_i|) (≥ Σ |w_i·x_i| for every x in the block's box). False
// when a sum is not finite or A_r is past bound_magnitude_limit.
constexpr float bound_magnitude_limit = 1e37f;
constexpr float weight_round_up = 0x1p-20f;

#if HWY_TARGET == HWY_SCALAR || HWY_TARGET == HWY_EMU128
bool prepare_block(const float* natural, const float* /*abs_natural*/, uint32_t rows, size_t len,
                   const float* lo, const float* step, float wlim, float gamma, int16_t* wq,
                   float* alpha, float* offset, float* /*maxabs*/) {
  for (uint32_t r = 0; r < rows; ++r) {
    const float* w = natural + size_t(r) * len;
    float maxw = 0, c = 0, a = 0;
    for (size_t i = 0; i < len; ++i) {
      maxw = std::max(maxw, std::fabs(w[i] * step[i]));
      c += w[i] * lo[i];
      a += std::fabs(w[i]) * std::max(std::fabs(lo[i]), std::fabs(lo[i] + 255.0f * step[i]));
    }
    if (!(a < bound_magnitude_limit) || !std::isfinite(c)) return false;
    const float inv = maxw > 0 ? wlim / maxw : 0.0f;
    for (size_t i = 0; i < len; ++i) {
      float t = w[i] * step[i] * inv;
      t += std::fabs(t) * weight_round_up;
      wq[size_t(r) * len + i] = static_cast<int16_t>(std::ceil(t));
    }
    alpha[r] = maxw / wlim;
    offset[r] = c + a * gamma;
  }
  return true;
}

void bound_pages(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                 uint32_t rows, const float* alpha, const float* offset, float* bounds,
                 bool /*vnni*/) {
  for (uint32_t p = 0; p < n_pages; ++p) {
    float best = -std::numeric_limits<float>::infinity();
    for (uint32_t r = 0; r < rows; ++r) {
      int32_t acc = 0;
      for (size_t i = 0; i < len; ++i) acc += int32_t(wq[r * len + i]) * codes[p * len + i];
      best = std::max(best, offset[r] + alpha[r] * float(acc));
    }
    bounds[p] = best;
  }
}

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
using df_t = hn::ScalableTag<float>;
using d16_t = hn::ScalableTag<int16_t>;
using d32_t = hn::Repartition<int32_t, d16_t>;
using du8_t = hn::Rebind<uint8_t, d16_t>;
using v32_t = hn::Vec<d32_t>;
using d4i_t = hn::CappedTag<int32_t, 4>;
using d4f_t = hn::CappedTag<float, 4>;

// C and A are dot products in the canonical arithmetic of core/simd_internal.hpp (as the
// flat kernel's), and every other step is element-wise or a max, so the bounds, the pages
// rescored and the work counted are the same bits on every FMA target (AVX2, AVX3).
bool prepare_block(const float* natural, const float* abs_natural, uint32_t rows, size_t len,
                   const float* lo, const float* step, float wlim, float gamma, int16_t* wq,
                   float* alpha, float* offset, float* maxabs) {
  const df_t df;
  const hn::RebindToSigned<df_t> di;
  const hn::Rebind<int16_t, df_t> d16h;
  const size_t n = hn::Lanes(df);
  const auto k255 = hn::Set(df, 255.0f);
  for (size_t i = 0; i < len; i += n) {
    const auto lv = hn::LoadU(df, lo + i);
    const auto top = hn::MulAdd(k255, hn::LoadU(df, step + i), lv);
    hn::StoreU(hn::Max(hn::Abs(lv), hn::Abs(top)), df, maxabs + i);
  }
  float c[4], a[4];
  for (uint32_t r0 = 0; r0 < rows; r0 += 4) {
    const uint32_t nr = std::min<uint32_t>(4, rows - r0);
    if (nr == 4) {
      simd::dot_block<4, 1>(natural + size_t(r0) * len, len, lo, len, len, c);
      simd::dot_block<4, 1>(abs_natural + size_t(r0) * len, len, maxabs, len, len, a);
    } else {
      for (uint32_t k = 0; k < nr; ++k) {
        simd::dot_block<1, 1>(natural + size_t(r0 + k) * len, len, lo, len, len, c + k);
        simd::dot_block<1, 1>(abs_natural + size_t(r0 + k) * len, len, maxabs, len, len, a + k);
      }
    }
    for (uint32_t k = 0; k < nr; ++k) {
      const uint32_t r = r0 + k;
      if (!(a[k] < bound_magnitude_limit) || !std::isfinite(c[k])) return false;
      const float* w = natural + size_t(r) * len;
      auto maxw = hn::Zero(df);
      for (size_t i = 0; i < len; i += n) {
        maxw = hn::Max(maxw, hn::Abs(hn::Mul(hn::LoadU(df, w + i), hn::LoadU(df, step + i))));
      }
      const float maxw_s = hn::GetLane(hn::MaxOfLanes(df, maxw));
      const auto inv = hn::Set(df, maxw_s > 0 ? wlim / maxw_s : 0.0f);
      const auto up = hn::Set(df, weight_round_up);
      for (size_t i = 0; i < len; i += n) {
        auto t = hn::Mul(hn::Mul(hn::LoadU(df, w + i), hn::LoadU(df, step + i)), inv);
        t = hn::MulAdd(hn::Abs(t), up, t);
        const auto qi = hn::ConvertTo(di, hn::Ceil(t));
        hn::StoreU(hn::DemoteTo(d16h, qi), d16h, wq + size_t(r) * len + i);
      }
      alpha[r] = maxw_s / wlim;
      offset[r] = c[k] + a[k] * gamma;
    }
  }
  return true;
}

// Block shapes: HB weight rows × PB pages of accumulators (each widened code vector feeds
// HB multiply-adds, each weight vector PB); PB a multiple of 4, so the sums of 4 pages of
// one row come out of the reduction as one vector and are turned into bounds together.
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
constexpr size_t rows_per_block = 4;
constexpr size_t single_row_pages_per_block = 8;
#else
constexpr size_t rows_per_block = 2;
constexpr size_t single_row_pages_per_block = 4;
#endif
constexpr size_t pages_per_block = 4;
constexpr size_t code_prefetch_bytes = 2048;

// The four 128-bit blocks' sums of a tree4_blocks result, as one 4-lane vector.
template <class D>
HWY_INLINE hn::Vec<d4i_t> fold4(D d, hn::Vec<D> v) {
  if constexpr (hn::MaxLanes(D()) > 4) {
    const hn::Half<D> dh;
    return fold4(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)));
  } else {
    (void)d;
    return v;
  }
}

// Whether this target can use AVX512-VNNI's vpdpwssd (the multiply-add and the add in one
// instruction): compiled for AVX3 only (Highway 1.0.3 builds no AVX3_DL target), chosen at
// run time from the CPU (int8_kernel_vnni). Integer arithmetic: the same sums either way.
#if HWY_TARGET == HWY_AVX3 && (HWY_COMPILER_GCC || HWY_COMPILER_CLANG)
constexpr bool vnni_compiled = true;
#else
constexpr bool vnni_compiled = false;
#endif

// acc[h·PB + p] = Σ_i w[h·len + i] · x[p·len + i], int32 lanes to be summed.
template <size_t HB, size_t PB, bool Vnni = false>
HWY_INLINE void dot_block_i8(const uint8_t* HWY_RESTRICT x, size_t len,
                             const int16_t* HWY_RESTRICT w, v32_t (&acc)[HB * PB]) {
  const d16_t d16;
  const d32_t d32;
  const du8_t du8;
  const size_t n = hn::Lanes(d16);
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
        if constexpr (Vnni && vnni_compiled) {
          // acc += pairwise sums of wv·c (signed 16-bit), by the assembler: the target
          // attributes of this function do not include avx512vnni.
          // (on a local copy: an array element as an asm operand kept the accumulators
          // in memory).
          auto a = acc[h * PB + p].raw;
          asm("vpdpwssd %2, %1, %0" : "+v"(a) : "v"(wv.raw), "v"(c[p].raw));
          acc[h * PB + p].raw = a;
        } else {
          acc[h * PB + p] = hn::ReorderWidenMulAccumulate(d32, wv, c[p], acc[h * PB + p],
                                                          acc1[h * PB + p]);
        }
      }
    }
  }
  for (size_t k = 0; k < HB * PB; ++k) acc[k] = hn::Add(acc[k], acc1[k]);
}

// best[g] (pages 4g..4g+3) = max(best[g], offset_h + α_h · Σ acc) over the block's rows.
template <size_t HB, size_t PB>
HWY_INLINE void combine(const v32_t (&acc)[HB * PB], const float* alpha, const float* offset,
                        hn::Vec<d4f_t> (&best)[PB / 4]) {
  const d32_t d32;
  const d4f_t d4f;
  for (size_t h = 0; h < HB; ++h) {
    const auto al = hn::Set(d4f, alpha[h]);
    const auto of = hn::Set(d4f, offset[h]);
    for (size_t g = 0; g < PB / 4; ++g) {
      const size_t k = h * PB + 4 * g;
      const auto sums = fold4(d32, simd::tree4_blocks(d32, acc[k], acc[k + 1], acc[k + 2], acc[k + 3]));
      best[g] = hn::Max(best[g], hn::MulAdd(al, hn::ConvertTo(d4f, sums), of));
    }
  }
}

template <size_t PB, bool Vnni>
HWY_INLINE void bound_page_block(const uint8_t* codes, size_t len, const int16_t* wq,
                                 uint32_t rows, const float* alpha, const float* offset,
                                 float* out) {
  const d4f_t d4f;
  hn::Vec<d4f_t> best[PB / 4];
  for (size_t g = 0; g < PB / 4; ++g) best[g] = hn::Set(d4f, -std::numeric_limits<float>::infinity());
  uint32_t r = 0;
  for (; r + rows_per_block <= rows; r += rows_per_block) {
    v32_t acc[rows_per_block * PB];
    dot_block_i8<rows_per_block, PB, Vnni>(codes, len, wq + size_t(r) * len, acc);
    combine<rows_per_block, PB>(acc, alpha + r, offset + r, best);
  }
  for (; r < rows; ++r) {
    v32_t acc[PB];
    dot_block_i8<1, PB, Vnni>(codes, len, wq + size_t(r) * len, acc);
    combine<1, PB>(acc, alpha + r, offset + r, best);
  }
  for (size_t g = 0; g < PB / 4; ++g) hn::StoreU(best[g], d4f, out + 4 * g);
}

// The last pages of a block that fill no whole group of 4: padded with the last page (its
// bound is computed again and dropped).
template <size_t PB, bool Vnni>
void bound_pages_blocked(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                         uint32_t rows, const float* alpha, const float* offset, float* bounds) {
  uint32_t p = 0;
  const char* end = reinterpret_cast<const char*>(codes + size_t(n_pages) * len);
  for (; p + PB <= n_pages; p += PB) {
    const char* ahead = reinterpret_cast<const char*>(codes + size_t(p) * len) + code_prefetch_bytes;
    for (size_t off = 0; off < PB * len && ahead + off < end; off += 64) hwy::Prefetch(ahead + off);
    bound_page_block<PB, Vnni>(codes + size_t(p) * len, len, wq, rows, alpha, offset, bounds + p);
  }
  for (; p < n_pages; p += 4) {
    const uint32_t n = std::min<uint32_t>(4, n_pages - p);
    HWY_ALIGN uint8_t pad[4 * 1024];
    PNMKV_CHECK_LE(4 * len, sizeof pad);
    for (uint32_t k = 0; k < 4; ++k)
      std::memcpy(pad + k * len, codes + size_t(p + std::min(k, n - 1)) * len, len);
    float out[4];
    bound_page_block<4, Vnni>(pad, len, wq, rows, alpha, offset, out);
    std::memcpy(bounds + p, out, n * sizeof(float));
  }
}

void bound_pages(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                 uint32_t rows, const float* alpha, const float* offset, float* bounds,
                 bool vnni) {
  if (vnni && vnni_compiled) {
    if (rows == 1) {
      bound_pages_blocked<single_row_pages_per_block, true>(codes, n_pages, len, wq, rows, alpha,
                                                            offset, bounds);
    } else {
      bound_pages_blocked<pages_per_block, true>(codes, n_pages, len, wq, rows, alpha, offset, bounds);
    }
  } else if (rows == 1) {
    bound_pages_blocked<single_row_pages_per_block, false>(codes, n_pages, len, wq, rows, alpha,
                                                           offset, bounds);
  } else {
    bound_pages_blocked<pages_per_block, false>(codes, n_pages, len, wq, rows, alpha, offset, bounds);
  }
}

void dot_rows_impl(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                   uint32_t rows, int32_t* out) {
  const d32_t d32;
  for (uint32_t p = 0; p < n_pages; ++p) {
    for (uint32_t r = 0; r < rows; ++r) {
      v32_t acc[1];
      dot_block_i8<1, 1>(codes + size_t(p) * len, len, wq + size_t(r) * len, acc);
      out[size_t(p) * rows + r] = hn::GetLane(hn::SumOfLanes(d32, acc[0]));
    }
  }
}
#endif

}  // namespace

void int8_dot_rows_simd(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                        uint32_t rows, int32_t* out) {
  dot_rows_impl(codes, n_pages, len, wq, rows, out);
}

// Bounds of pages [0, pages) of the index, block by block; false when a block's set-up
// fails (the caller scans flat).
bool int8_bounds_simd(const int8_summary_index& ix, uint32_t pages, const float* natural,
                      const float* abs_natural, uint32_t rows, float wlim, float gamma,
                      int16_t* wq, float* alpha, float* offset, float* maxabs, float* bounds,
                      bool vnni) {
  const size_t len = ix.len();
  const uint32_t bp = ix.block_pages();
  for (uint32_t b = 0; b < ix.blocks(pages); ++b) {
    if (!prepare_block(natural, abs_natural, rows, len, ix.block_lo(b), ix.block_step(b), wlim,
                       gamma, wq, alpha, offset, maxabs)) {
      return false;
    }
    const uint32_t first = b * bp;
    bound_pages(ix.codes() + size_t(first) * len, std::min(bp, pages - first), len, wq, rows,
                alpha, offset, bounds + first, vnni);
  }
  return true;
}

}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
#include "core/roofline.hpp"
#include "core/select.hpp"

namespace pnmkv {

HWY_EXPORT(int8_dot_rows_simd);
HWY_EXPORT(int8_bounds_simd);

void int8_dot_rows(const uint8_t* codes, uint32_t n_pages, size_t len, const int16_t* wq,
                   uint32_t rows, int32_t* out) {
  PNMKV_CHECK(len % 32 == 0 && len > 0, "len=", len);
  if (n_pages == 0 || rows == 0) return;
  HWY_DYNAMIC_DISPATCH(int8_dot_rows_simd)(codes, n_pages, len, wq, rows, out);
}

namespace {
bool cpu_has_vnni() {
#if HWY_ARCH_X86 && (HWY_COMPILER_GCC || HWY_COMPILER_CLANG)
  return __builtin_cpu_supports("avx512vnni");
#else
  return false;
#endif
}
std::atomic<bool> use_vnni{cpu_has_vnni()};
}  // namespace

bool int8_kernel_vnni() { return use_vnni.load(std::memory_order_relaxed); }

bool set_int8_kernel_vnni(bool on) {
  return use_vnni.exchange(on && cpu_has_vnni(), std::memory_order_relaxed);
}

int32_t int8_weight_limit(size_t len) {
  PNMKV_CHECK(len > 0, "len=", len);
  const int64_t lim = int64_t(std::numeric_limits<int32_t>::max()) / (int64_t(len) * 255);
  return int32_t(std::min<int64_t>(lim, std::numeric_limits<int16_t>::max()));
}

namespace {

// Work counted for the bound's float set-up: per (block, row, element) 8 flops (the step
// product, its magnitude, the two sums, the scaled weight and its round-up), per (page,
// row) 2 (α·I + offset).
constexpr double setup_flops_per_block_row_elem = 8;
constexpr double combine_flops_per_page_row = 2;

inline uint32_t ordered_of(uint64_t key) { return uint32_t(key >> 32); }
inline uint32_t page_of(uint64_t key) { return ~uint32_t(key & 0xffffffffu); }

// The margin, relative to A = Σ|w_i|·max|x_i| (≥ Σ|w_i·x_i|, so ≥ every term's magnitude):
//  * the flat kernel's float score: 16 chains of ceil(len/32)·2 fused multiply-adds, a tree
//    of 4 adds, each rounded once (twice without FMA): ≤ 2·(len/16 + 6)·2^-24, taken as
//    (len/16 + 16)·2^-22;
//  * the bound's own float set-up and combine: the sums C and A over len terms (≤ len·2^-24
//    each), α·float(I) + offset (4 roundings of values ≤ 3A): taken as (2·len + 64)·2^-24,
//    plus 2^-19 for the rest (the weights' round-up keeps α·ŵ ≥ w·step on its own).
inline float margin_factor(size_t len) {
  return float((double(len) / 16.0 + 16.0) * 0x1p-22 + (2.0 * double(len) + 64.0) * 0x1p-24 +
               0x1p-19);
}

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
  sc.bounds.resize(pages);
  sc.wq.resize(size_t(rows) * len);
  sc.steps.resize(2 * size_t(rows) + len);  // α and offset per row, then max |x| per element
  sc.abs_natural.resize(w.natural.size());
  for (size_t i = 0; i < w.natural.size(); ++i) sc.abs_natural[i] = std::fabs(w.natural[i]);
  const bool ok = HWY_DYNAMIC_DISPATCH(int8_bounds_simd)(
      ix, pages, w.natural.data(), sc.abs_natural.data(), rows,
      float(int8_weight_limit(len) - 1), margin_factor(len), sc.wq.data(), sc.steps.data(),
      sc.steps.data() + rows, sc.steps.data() + 2 * rows, sc.bounds.data(),
      int8_kernel_vnni());
  work.int8_bytes += ix.scan_bytes(pages);
  work.int_ops += 2.0 * double(pages) * rows * double(len);
  work.flops += double(ix.blocks(pages)) * rows * double(len) * setup_flops_per_block_row_elem +
                double(pages) * rows * combine_flops_per_page_row;
  return ok;
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
  sc.scores.resize(pages);
  auto rescore = [&](const uint32_t* list, size_t n) -> status {
    rescored += n;
    sc.listed_scores.resize(n);
    if (status s = score_listed_pages(store, w, list, n, sc.listed_scores.data()); !s) return s;
    for (size_t k = 0; k < n; ++k) sc.scores[list[k]] = sc.listed_scores[k];
    return status::ok();
  };

  sc.heap.clear();
  if (want > 0) {
    // Candidates: neither forced nor excluded.
    sc.list.assign(pages, 1);
    for (uint32_t f : forced) sc.list[f] = 0;
    if (q.excluded != nullptr)
      for (uint32_t p = 0; p < pages; ++p)
        if (q.excluded[p]) sc.list[p] = 0;
    // 1. The best `want` candidates by bound (select.cpp's order on bounds): a min-heap of
    //    their keys.
    sc.keys.clear();
    for (uint32_t p = 0; p < pages && sc.keys.size() < want; ++p)
      if (sc.list[p]) sc.keys.push_back(page_rank_key(sc.bounds[p], p));
    PNMKV_CHECK_EQ(sc.keys.size(), want);
    std::make_heap(sc.keys.begin(), sc.keys.end(), std::greater<uint64_t>());
    uint32_t scanned_to = 0;
    {
      uint32_t seen = 0;
      for (uint32_t p = 0; p < pages; ++p) {
        seen += sc.list[p];
        if (seen == want) {
          scanned_to = p + 1;
          break;
        }
      }
    }
    uint64_t floor = sc.keys.front();
    // A bound below the floor's (a float compare: the key's high bits are monotone in it;
    // bounds are finite here) cannot enter; only the rest build a key. Most pages stop here.
    float floor_bound = sc.bounds[page_of(floor)];
    for (uint32_t p = scanned_to; p < pages; ++p) {
      if (sc.bounds[p] < floor_bound || !sc.list[p]) continue;
      const uint64_t key = page_rank_key(sc.bounds[p], p);
      if (key <= floor) continue;
      std::pop_heap(sc.keys.begin(), sc.keys.end(), std::greater<uint64_t>());
      sc.keys.back() = key;
      std::push_heap(sc.keys.begin(), sc.keys.end(), std::greater<uint64_t>());
      floor = sc.keys.front();
      floor_bound = sc.bounds[page_of(floor)];
    }
    // 2. Rescore them exactly: the first `want` of the descending bound order.
    std::vector<uint32_t> top;
    top.reserve(want);
    for (uint64_t key : sc.keys) top.push_back(page_of(key));
    std::sort(top.begin(), top.end());  // memory order
    if (status s = rescore(top.data(), top.size()); !s) return s;
    for (uint32_t p : top) {
      sc.heap.push_back(page_rank_key(sc.scores[p], p));
      PNMKV_CHECK(ordered_of(sc.heap.back()) <= ordered_of(page_rank_key(sc.bounds[p], p)),
                  "bound below the exact score: page ", p, " bound=", sc.bounds[p],
                  " exact=", sc.scores[p]);
    }
    std::make_heap(sc.heap.begin(), sc.heap.end(), std::greater<uint64_t>());
    // 3. The other candidates in descending bound order while a bound reaches the k-th
    //    best exact score (an equal bound is rescored: it could tie and win on its index).
    const uint64_t bound_floor = floor;  // the least bound key of the first `want`
    sc.later.clear();
    // A bound below the k-th best exact score (a float compare, as above) is never rescored.
    const float kth_exact = sc.scores[page_of(sc.heap.front())];
    for (uint32_t p = 0; p < pages; ++p) {
      if (sc.bounds[p] < kth_exact || !sc.list[p]) continue;
      const uint64_t key = page_rank_key(sc.bounds[p], p);
      if (key < bound_floor && ordered_of(key) >= ordered_of(sc.heap.front())) sc.later.push_back(key);
    }
    std::sort(sc.later.begin(), sc.later.end(), std::greater<uint64_t>());
    for (uint64_t bkey : sc.later) {
      if (ordered_of(bkey) < ordered_of(sc.heap.front())) break;
      const uint32_t p = page_of(bkey);
      if (status s = rescore(&p, 1); !s) return s;
      const uint64_t ekey = page_rank_key(sc.scores[p], p);
      PNMKV_CHECK(ordered_of(ekey) <= ordered_of(bkey), "bound below the exact score: page ", p,
                  " bound=", sc.bounds[p], " exact=", sc.scores[p]);
      if (ekey > sc.heap.front()) {
        std::pop_heap(sc.heap.begin(), sc.heap.end(), std::greater<uint64_t>());
        sc.heap.back() = ekey;
        std::push_heap(sc.heap.begin(), sc.heap.end(), std::greater<uint64_t>());
      }
    }
  }
  // The forced pages' exact scores (the exact_candidates round sends them).
  if (status s = rescore(forced.data(), forced.size()); !s) return s;
  selected.clear();
  for (uint32_t f : forced) selected.push_back(f);
  for (uint64_t key : sc.heap) selected.push_back(page_of(key));
  std::sort(selected.begin(), selected.end());
  selected_scores.clear();
  for (uint32_t p : selected) selected_scores.push_back(sc.scores[p]);
  work.pages_rescored += rescored;
  work.summary_bytes += rescored * store.summary_bytes_per_page();
  work.flops += double(rescored) * one_page.flops;
  return status::ok();
}

}  // namespace pnmkv
#endif  // HWY_ONCE
