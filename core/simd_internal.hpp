// Per-target SIMD building blocks shared by the scoring and attention kernels (Highway,
// compiled once per target through foreach_target.h, hence no #pragma once: the guard
// below toggles per target, the Highway "-inl.h" convention).
//
// Three ideas carry the speed:
//  * bf16 -> f32 widening by a shift (even elements) and a mask (odd elements) of the
//    32-bit lanes, no shuffle. It leaves the floats in even/odd order; the
//    fp32 operand of every dot product (queries, query-derived weights) is stored in the
//    same "widened order" once per call, and accumulators over V stay in that order until
//    the end, so nothing is ever un-permuted inside a loop.
//  * dot_block: HB weight rows × PB data rows per loaded vector, so each loaded data
//    vector feeds HB FMAs and each weight vector PB FMAs, with HB·PB (or 2·HB·PB)
//    independent accumulator chains to cover FMA latency.
//  * sums of 4 accumulators at once by an interleave tree instead of one horizontal
//    reduction each.
#if defined(PNMKV_CORE_SIMD_INTERNAL_HPP_) == defined(HWY_TARGET_TOGGLE)
#ifdef PNMKV_CORE_SIMD_INTERNAL_HPP_
#undef PNMKV_CORE_SIMD_INTERNAL_HPP_
#else
#define PNMKV_CORE_SIMD_INTERNAL_HPP_
#endif

#include <cstddef>
#include <cstdint>

#include "core/bf16.hpp"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace simd {

namespace hn = hwy::HWY_NAMESPACE;
using df_t = hn::ScalableTag<float>;
using vf_t = hn::Vec<df_t>;

// Keeps a vector in a register: without it GCC folds a reused weight load into every
// FMA as a memory operand, and the load ports, not the FMA units, become the limit.
#undef PNMKV_KEEP_IN_REGISTER
#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128 && HWY_ARCH_X86 && \
    (HWY_COMPILER_GCC || HWY_COMPILER_CLANG)
#define PNMKV_KEEP_IN_REGISTER(v) asm("" : "+v"((v).raw))
#else
#define PNMKV_KEEP_IN_REGISTER(v) (void)(v)
#endif

// Elements consumed per step by the two-vector loads below: 2 × float lanes.
HWY_INLINE size_t step_elems(df_t df) { return 2 * hn::Lanes(df); }

// Loads 2N consecutive bf16 values and widens them to two float vectors in widened
// order: lo holds the even elements (shifted up into the high half of each 32-bit lane),
// hi the odd ones (already there; the even neighbour below is masked off). A shift and an
// AND, no shuffle, so the shuffle ports stay free and the FMA ports are not disturbed.
HWY_INLINE void load_widen(df_t df, const bf16* HWY_RESTRICT p, vf_t& lo, vf_t& hi) {
#if HWY_TARGET == HWY_SCALAR
  // The single-lane fallback (old CPUs only): 2N = 2 elements.
  lo = hn::Set(df, to_float(p[0]));
  hi = hn::Set(df, to_float(p[1]));
#else
  const hn::RebindToUnsigned<df_t> du32;
  const auto raw = hn::LoadU(du32, reinterpret_cast<const uint32_t*>(p));
  lo = hn::BitCast(df, hn::ShiftLeft<16>(raw));
  hi = hn::BitCast(df, hn::And(raw, hn::Set(du32, 0xffff0000u)));
#endif
}

// fp32 data in natural order: the "widened order" of floats is the identity.
HWY_INLINE void load_widen(df_t df, const float* HWY_RESTRICT p, vf_t& lo, vf_t& hi) {
  lo = hn::LoadU(df, p);
  hi = hn::LoadU(df, p + hn::Lanes(df));
}

// map[i] (i < 2N): which element of a 2N-element step lands in lane i of (lo, hi) after
// load_widen of bf16 data: the even elements, then the odd ones (little-endian lanes).
HWY_INLINE void widened_order_map(uint32_t* map) {
  const size_t n = hn::Lanes(df_t());
  for (size_t i = 0; i < n; ++i) {
    map[i] = static_cast<uint32_t>(2 * i);
    map[n + i] = static_cast<uint32_t>(2 * i + 1);
  }
}

// Copies len natural-order floats (len a multiple of step_elems) into widened order.
HWY_INLINE void to_widened_order(const float* src, size_t len, const uint32_t* map,
                                 float* dst) {
  const size_t step = step_elems(df_t());
  for (size_t base = 0; base < len; base += step) {
    for (size_t i = 0; i < step; ++i) dst[base + i] = src[base + map[i]];
  }
}

// Inverse of to_widened_order.
HWY_INLINE void from_widened_order(const float* src, size_t len, const uint32_t* map,
                                   float* dst) {
  const size_t step = step_elems(df_t());
  for (size_t base = 0; base < len; base += step) {
    for (size_t i = 0; i < step; ++i) dst[base + map[i]] = src[base + i];
  }
}

#if HWY_TARGET != HWY_SCALAR
// Adds the 128-bit blocks of v together and stores the 4 resulting floats.
template <class D>
HWY_INLINE void fold_store4(D d, hn::Vec<D> v, float* out) {
  if constexpr (hn::MaxLanes(D()) > 4) {
    const hn::Half<D> dh;
    fold_store4(dh, hn::Add(hn::LowerHalf(dh, v), hn::UpperHalf(dh, v)), out);
  } else {
    hn::StoreU(v, d, out);
  }
}

// out[0..3] = sum of the lanes of a, b, c, e: interleave tree, 9 ops per block + fold.
HWY_INLINE void sum4(df_t df, vf_t a, vf_t b, vf_t c, vf_t e, float* out) {
  const hn::Repartition<uint64_t, df_t> du64;
  const vf_t ab = hn::Add(hn::InterleaveLower(df, a, b), hn::InterleaveUpper(df, a, b));
  const vf_t ce = hn::Add(hn::InterleaveLower(df, c, e), hn::InterleaveUpper(df, c, e));
  // ab = [a02 b02 a13 b13] per block, ce likewise.
  const auto ab64 = hn::BitCast(du64, ab);
  const auto ce64 = hn::BitCast(du64, ce);
  const vf_t lo = hn::BitCast(df, hn::InterleaveLower(du64, ab64, ce64));
  const vf_t hi = hn::BitCast(df, hn::InterleaveUpper(du64, ab64, ce64));
  fold_store4(df, hn::Add(lo, hi), out);
}
#else
HWY_INLINE void sum4(df_t, vf_t a, vf_t b, vf_t c, vf_t e, float* out) {
  out[0] = hn::GetLane(a);
  out[1] = hn::GetLane(b);
  out[2] = hn::GetLane(c);
  out[3] = hn::GetLane(e);
}
#endif

// out[h·PB + p] = Σ_{i<len} w[h·w_stride + i] · x[p·x_stride + i] for h < HB, p < PB.
// w is fp32 in widened order, x is bf16 (or fp32, natural order), len a multiple of
// step_elems. With few products in flight (HB·PB ≤ 4) the lo and hi halves accumulate
// separately so there are enough independent FMA chains.
template <size_t HB, size_t PB, class Src>
HWY_INLINE void dot_block(const float* HWY_RESTRICT w, size_t w_stride,
                          const Src* HWY_RESTRICT x, size_t x_stride, size_t len,
                          float* HWY_RESTRICT out) {
  const df_t df;
  const size_t n = hn::Lanes(df);
  constexpr bool split = HB * PB <= 4;
  constexpr size_t n_acc = HB * PB;
  vf_t acc[n_acc];
  vf_t acc2[split ? n_acc : 1];
  for (size_t k = 0; k < n_acc; ++k) acc[k] = hn::Zero(df);
  for (size_t k = 0; k < (split ? n_acc : 1); ++k) acc2[k] = hn::Zero(df);
  for (size_t i = 0; i < len; i += 2 * n) {
    vf_t lo[PB];
    vf_t hi[PB];
    for (size_t p = 0; p < PB; ++p) load_widen(df, x + p * x_stride + i, lo[p], hi[p]);
    for (size_t h = 0; h < HB; ++h) {
      vf_t wl = hn::Load(df, w + h * w_stride + i);
      vf_t wh = hn::Load(df, w + h * w_stride + i + n);
      if constexpr (PB > 1) {
        PNMKV_KEEP_IN_REGISTER(wl);
        PNMKV_KEEP_IN_REGISTER(wh);
      }
      for (size_t p = 0; p < PB; ++p) {
        acc[h * PB + p] = hn::MulAdd(wl, lo[p], acc[h * PB + p]);
        if constexpr (split) {
          acc2[h * PB + p] = hn::MulAdd(wh, hi[p], acc2[h * PB + p]);
        } else {
          acc[h * PB + p] = hn::MulAdd(wh, hi[p], acc[h * PB + p]);
        }
      }
    }
  }
  if constexpr (split) {
    for (size_t k = 0; k < n_acc; ++k) acc[k] = hn::Add(acc[k], acc2[k]);
  }
  size_t k = 0;
  for (; k + 4 <= n_acc; k += 4) sum4(df, acc[k], acc[k + 1], acc[k + 2], acc[k + 3], out + k);
  for (; k < n_acc; ++k) out[k] = hn::GetLane(hn::SumOfLanes(df, acc[k]));
}

}  // namespace simd
}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#endif  // PNMKV_CORE_SIMD_INTERNAL_HPP_ toggle
