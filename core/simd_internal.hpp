// Per-target SIMD building blocks shared by the scoring and attention kernels (Highway,
// compiled once per target through foreach_target.h, hence no #pragma once: the guard
// below toggles per target, the Highway "-inl.h" convention).
//
// One result on every CPU. The arithmetic of a dot product is fixed independently of the
// vector width, so AVX2 (8 float lanes) and AVX-512 (16) give bit-identical scores,
// logits and outputs, and a run's output digest does not depend on the machine:
//  * a dot product of length len (a multiple of 16) is accumulated in 16 *chains*; the
//    elements are taken in chunks of 32, and chain c adds, chunk after chunk, the products
//    of its two elements of the chunk with one fused multiply-add each:
//      bf16 data: elements 2c then 2c+1 (the even/odd pairs a shift-and-mask widening gives)
//      fp32 data: elements c then 16+c
//    A final half chunk of 16 elements adds the pair to chains 0..7 (bf16) or element c
//    to every chain (fp32).
//  * the 16 chains are summed by one fixed tree (canonical_tree16 below).
//  * a target with 16 lanes holds a chain set in one vector; with 8 lanes in two; with 4
//    in four (`replicas`). Every target runs the same FMAs in the same order per chain.
// Targets without fused multiply-add (SSE4, SSSE3, EMU128) round twice per step and so
// differ in the last bits; they are fallbacks for CPUs older than 2013 and are excluded
// from the one-digest guarantee (README).
//
// Speed comes from:
//  * bf16 -> f32 widening by a shift (even elements) and a mask (odd elements) of the
//    32-bit lanes, no shuffle. The fp32 operand of every dot product (queries,
//    query-derived weights) is stored once per call in the matching "pair layout", and
//    accumulators over V stay in that layout until the end.
//  * dot_block: HB weight rows × PB data rows per loaded vector, so each loaded data
//    vector feeds HB FMAs and each weight vector PB FMAs, with HB·PB·replicas independent
//    accumulator chains to cover FMA latency (block shapes are chosen per target by the
//    callers: the arithmetic per product does not depend on them).
//  * sums of 4 products' chains at once by an interleave tree.
#if defined(PNMKV_CORE_SIMD_INTERNAL_HPP_) == defined(HWY_TARGET_TOGGLE)
#ifdef PNMKV_CORE_SIMD_INTERNAL_HPP_
#undef PNMKV_CORE_SIMD_INTERNAL_HPP_
#else
#define PNMKV_CORE_SIMD_INTERNAL_HPP_
#endif

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "core/bf16.hpp"
#include "core/check.hpp"
#include "hwy/highway.h"

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace simd {

namespace hn = hwy::HWY_NAMESPACE;
using df_t = hn::ScalableTag<float>;
using vf_t = hn::Vec<df_t>;
// At most 8 lanes: the width the chain-sum tree works at on every target.
using d8_t = hn::CappedTag<float, 8>;

constexpr size_t chains = 16;       // canonical FMA chains per dot product
constexpr size_t chunk_elems = 32;  // elements per chunk: two per chain
constexpr size_t half_chunk_elems = 16;
constexpr size_t lanes = hn::MaxLanes(df_t());
static_assert(lanes >= 1 && lanes <= chains && chains % lanes == 0,
              "the canonical chain set must be a whole number of vectors");
constexpr size_t replicas = chains / lanes;  // vectors per chain set on this target
constexpr bool wide = lanes == chains;       // one vector per chain set (AVX-512)

// Keeps a vector in a register: without it GCC folds a reused weight load into every
// FMA as a memory operand, and the load ports, not the FMA units, become the limit.
#undef PNMKV_KEEP_IN_REGISTER
#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128 && HWY_ARCH_X86 && \
    (HWY_COMPILER_GCC || HWY_COMPILER_CLANG)
#define PNMKV_KEEP_IN_REGISTER(v) asm("" : "+v"((v).raw))
#else
#define PNMKV_KEEP_IN_REGISTER(v) (void)(v)
#endif

// Loads 2·Lanes(d) consecutive bf16 values and widens them to two float vectors: lo holds
// the even elements (shifted up into the high half of each 32-bit lane), hi the odd ones
// (already there; the even neighbour below is masked off). A shift and an AND.
template <class D>
HWY_INLINE void load_widen(D d, const bf16* HWY_RESTRICT p, hn::Vec<D>& lo, hn::Vec<D>& hi) {
#if HWY_TARGET == HWY_SCALAR
  lo = hn::Set(d, to_float(p[0]));
  hi = hn::Set(d, to_float(p[1]));
#else
  const hn::RebindToUnsigned<D> du32;
  const auto raw = hn::LoadU(du32, reinterpret_cast<const uint32_t*>(p));
  lo = hn::BitCast(d, hn::ShiftLeft<16>(raw));
  hi = hn::BitCast(d, hn::And(raw, hn::Set(du32, 0xffff0000u)));
#endif
}

// Offsets, inside a chunk, of the two operand vectors of replica r: where the data (and
// the pair-layout weights) of chains [lanes·r, lanes·(r+1)) start.
//  bf16: one load of 2·lanes elements at 2·lanes·r, widened into lo (even) and hi (odd);
//        the weights hold lo's elements then hi's.
//  fp32: lo at lanes·r (elements c), hi at 16 + lanes·r (elements 16 + c).
template <class Src>
constexpr size_t lo_offset(size_t r) {
  return std::is_same_v<Src, bf16> ? 2 * lanes * r : lanes * r;
}
template <class Src>
constexpr size_t hi_offset(size_t r) {
  return std::is_same_v<Src, bf16> ? 2 * lanes * r + lanes : half_chunk_elems + lanes * r;
}

HWY_INLINE void load_pair(df_t df, const bf16* HWY_RESTRICT p, size_t r, vf_t& lo, vf_t& hi) {
  load_widen(df, p + lo_offset<bf16>(r), lo, hi);
}
HWY_INLINE void load_pair(df_t df, const float* HWY_RESTRICT p, size_t r, vf_t& lo, vf_t& hi) {
  lo = hn::LoadU(df, p + lo_offset<float>(r));
  hi = hn::LoadU(df, p + hi_offset<float>(r));
}

// Size of the pair-layout piece that starts at `base` of a len-element bf16 row: whole
// steps of 2·lanes elements, then (16-lane targets) one half chunk of 16.
HWY_INLINE size_t pair_piece(size_t base, size_t len) {
  const size_t step = 2 * lanes;
  return len - base >= step ? step : len - base;
}

// Copies len natural-order floats (len a multiple of 16) into the pair layout of bf16
// operands: per piece, the even elements, then the odd ones.
HWY_INLINE void to_pair_layout(const float* src, size_t len, float* dst) {
  for (size_t base = 0; base < len;) {
    const size_t piece = pair_piece(base, len);
    for (size_t i = 0; i < piece / 2; ++i) {
      dst[base + i] = src[base + 2 * i];
      dst[base + piece / 2 + i] = src[base + 2 * i + 1];
    }
    base += piece;
  }
}

// Inverse of to_pair_layout.
HWY_INLINE void from_pair_layout(const float* src, size_t len, float* dst) {
  for (size_t base = 0; base < len;) {
    const size_t piece = pair_piece(base, len);
    for (size_t i = 0; i < piece / 2; ++i) {
      dst[base + 2 * i] = src[base + i];
      dst[base + 2 * i + 1] = src[base + piece / 2 + i];
    }
    base += piece;
  }
}

// The fixed tree over 16 chain values: c_i + c_{i+8}, then ((r0+r2)+(r1+r3)) +
// ((r4+r6)+(r5+r7)). The vector paths below compute exactly this.
HWY_INLINE float canonical_tree16(const float* c) {
  float r[8];
  for (size_t i = 0; i < 8; ++i) r[i] = c[i] + c[i + 8];
  return ((r[0] + r[2]) + (r[1] + r[3])) + ((r[4] + r[6]) + (r[5] + r[7]));
}

// The same tree's second half over 8 values.
HWY_INLINE float canonical_tree8(const float* r) {
  return ((r[0] + r[2]) + (r[1] + r[3])) + ((r[4] + r[6]) + (r[5] + r[7]));
}


#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
// The middle of the tree on four vectors at once, per 128-bit block: block j of the
// result holds, for a, b, c, e in turn, (x0+x2)+(x1+x3) of their block j.
template <class D>
HWY_INLINE hn::Vec<D> tree4_blocks(D d, hn::Vec<D> a, hn::Vec<D> b, hn::Vec<D> c,
                                   hn::Vec<D> e) {
  const hn::Repartition<uint64_t, D> du64;
  const auto ab = hn::Add(hn::InterleaveLower(d, a, b), hn::InterleaveUpper(d, a, b));
  const auto ce = hn::Add(hn::InterleaveLower(d, c, e), hn::InterleaveUpper(d, c, e));
  // ab = [a0+a2, b0+b2, a1+a3, b1+b3] per block, ce likewise.
  const auto ab64 = hn::BitCast(du64, ab);
  const auto ce64 = hn::BitCast(du64, ce);
  const auto lo = hn::BitCast(d, hn::InterleaveLower(du64, ab64, ce64));
  const auto hi = hn::BitCast(d, hn::InterleaveUpper(du64, ab64, ce64));
  return hn::Add(lo, hi);
}

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

// out[0..3] = canonical_tree8 of each of a, b, c, e (8 lanes).
HWY_INLINE void sum4(d8_t d, hn::Vec<d8_t> a, hn::Vec<d8_t> b, hn::Vec<d8_t> c,
                     hn::Vec<d8_t> e, float* out) {
  fold_store4(d, tree4_blocks(d, a, b, c, e), out);
}
#endif

// Sum of 32 values by the same tree as a dot product's chains: chain c = x[c] + x[c+16].
HWY_INLINE float canonical_sum32(const float* HWY_RESTRICT x) {
#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  if constexpr (lanes >= 8) {
    const d8_t d8;
    const auto c0 = hn::Add(hn::LoadU(d8, x), hn::LoadU(d8, x + 16));      // chains 0..7
    const auto c8 = hn::Add(hn::LoadU(d8, x + 8), hn::LoadU(d8, x + 24));  // chains 8..15
    const auto r = hn::Add(c0, c8);
    float out[4];
    sum4(d8, r, r, r, r, out);
    return out[0];
  }
#endif
  float c[chains];
  for (size_t i = 0; i < chains; ++i) c[i] = x[i] + x[i + chains];
  return canonical_tree16(c);
}

// Sums each product's 16 chains (acc[k][0..replicas)) with the canonical tree; out[k] for
// product k. Groups of 16 products on 16-lane targets (8 on 8-lane ones) are reduced as
// one transposition and stored as one vector; the rest four at a time.
template <size_t NA>
HWY_INLINE void reduce_chains(const vf_t (&acc)[NA][replicas], float* HWY_RESTRICT out) {
  size_t k = 0;
#if HWY_TARGET != HWY_SCALAR && HWY_TARGET != HWY_EMU128
  if constexpr (wide || replicas == 2) {  // 16 or 8 lanes
    const df_t df;
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
    // 16 products → one vector. z pairs product a's and product b's chains i and i+8:
    // [a r0-3 | a r4-7 | b r0-3 | b r4-7]; tree4_blocks of four z's leaves per block the
    // four (x0+x2)+(x1+x3); the last step adds blocks 0+1 and 2+3 of two such results.
    for (; k + 16 <= NA; k += 16) {
      vf_t z[8];
      for (size_t j = 0; j < 4; ++j) {
        const vf_t& a0 = acc[k + j][0];
        const vf_t& b0 = acc[k + 4 + j][0];
        const vf_t& a1 = acc[k + 8 + j][0];
        const vf_t& b1 = acc[k + 12 + j][0];
        z[j] = hn::Add(hn::ConcatLowerLower(df, b0, a0), hn::ConcatUpperUpper(df, b0, a0));
        z[4 + j] = hn::Add(hn::ConcatLowerLower(df, b1, a1), hn::ConcatUpperUpper(df, b1, a1));
      }
      const vf_t s1 = tree4_blocks(df, z[0], z[1], z[2], z[3]);
      const vf_t s2 = tree4_blocks(df, z[4], z[5], z[6], z[7]);
      const vf_t even{_mm512_shuffle_f32x4(s1.raw, s2.raw, _MM_SHUFFLE(2, 0, 2, 0))};
      const vf_t odd{_mm512_shuffle_f32x4(s1.raw, s2.raw, _MM_SHUFFLE(3, 1, 3, 1))};
      hn::StoreU(hn::Add(even, odd), df, out + k);
    }
#else
    if constexpr (replicas == 2) {
      // 8 products → one vector: r = chains i + i+8, tree4_blocks of four r's, then the
      // two blocks of two such results added.
      for (; k + 8 <= NA; k += 8) {
        vf_t r[8];
        for (size_t j = 0; j < 8; ++j) r[j] = hn::Add(acc[k + j][0], acc[k + j][replicas - 1]);
        const vf_t s1 = tree4_blocks(df, r[0], r[1], r[2], r[3]);
        const vf_t s2 = tree4_blocks(df, r[4], r[5], r[6], r[7]);
        hn::StoreU(hn::Add(hn::ConcatLowerLower(df, s2, s1), hn::ConcatUpperUpper(df, s2, s1)),
                   df, out + k);
      }
    }
#endif
    const d8_t d8;
    hn::Vec<d8_t> r[NA];
    for (size_t j = k; j < NA; ++j) {
      if constexpr (wide) {
        r[j] = hn::Add(hn::LowerHalf(d8, acc[j][0]), hn::UpperHalf(d8, acc[j][0]));
      } else {
        r[j] = hn::Add(acc[j][0], acc[j][replicas - 1]);
      }
    }
    for (; k + 4 <= NA; k += 4) sum4(d8, r[k], r[k + 1], r[k + 2], r[k + 3], out + k);
    for (; k < NA; ++k) {
      HWY_ALIGN float t[8];
      hn::Store(r[k], d8, t);
      out[k] = canonical_tree8(t);
    }
    return;
  }
#endif
  const df_t df;
  for (; k < NA; ++k) {
    HWY_ALIGN float c[chains];
    for (size_t r = 0; r < replicas; ++r) hn::Store(acc[k][r], df, c + r * lanes);
    out[k] = canonical_tree16(c);
  }
}

// out[h·PB + p] = Σ_{i<len} w[h·w_stride + i] · x[p·x_stride + i] for h < HB, p < PB, in
// the canonical chain order. w is fp32 in pair layout for bf16 x, natural for fp32 x; len
// a multiple of 16.
template <size_t HB, size_t PB, class Src>
HWY_INLINE void dot_block(const float* HWY_RESTRICT w, size_t w_stride,
                          const Src* HWY_RESTRICT x, size_t x_stride, size_t len,
                          float* HWY_RESTRICT out) {
  const df_t df;
  constexpr size_t n_acc = HB * PB;
  vf_t acc[n_acc][replicas];
  for (size_t k = 0; k < n_acc; ++k) {
    for (size_t r = 0; r < replicas; ++r) acc[k][r] = hn::Zero(df);
  }
  size_t i = 0;
  for (; i + chunk_elems <= len; i += chunk_elems) {
    for (size_t r = 0; r < replicas; ++r) {
      vf_t lo[PB];
      vf_t hi[PB];
      for (size_t p = 0; p < PB; ++p) load_pair(df, x + p * x_stride + i, r, lo[p], hi[p]);
      for (size_t h = 0; h < HB; ++h) {
        vf_t wl = hn::LoadU(df, w + h * w_stride + i + lo_offset<Src>(r));
        vf_t wh = hn::LoadU(df, w + h * w_stride + i + hi_offset<Src>(r));
        if constexpr (PB > 1) {
          PNMKV_KEEP_IN_REGISTER(wl);
          PNMKV_KEEP_IN_REGISTER(wh);
        }
        for (size_t p = 0; p < PB; ++p) {
          acc[h * PB + p][r] = hn::MulAdd(wl, lo[p], acc[h * PB + p][r]);
          acc[h * PB + p][r] = hn::MulAdd(wh, hi[p], acc[h * PB + p][r]);
        }
      }
    }
  }
  if (i < len) {  // a half chunk of 16 elements
    PNMKV_DCHECK(len - i == half_chunk_elems);
    if constexpr (std::is_same_v<Src, float>) {
      // fp32: element c to chain c, every chain.
      for (size_t r = 0; r < replicas; ++r) {
        for (size_t h = 0; h < HB; ++h) {
          const vf_t wv = hn::LoadU(df, w + h * w_stride + i + lanes * r);
          for (size_t p = 0; p < PB; ++p) {
            const vf_t xv = hn::LoadU(df, x + p * x_stride + i + lanes * r);
            acc[h * PB + p][r] = hn::MulAdd(wv, xv, acc[h * PB + p][r]);
          }
        }
      }
    } else if constexpr (!wide) {
      // bf16: the pairs of chains 0..7, which are whole replicas here.
      for (size_t r = 0; r < replicas / 2; ++r) {
        for (size_t h = 0; h < HB; ++h) {
          const vf_t wl = hn::LoadU(df, w + h * w_stride + i + lo_offset<Src>(r));
          const vf_t wh = hn::LoadU(df, w + h * w_stride + i + hi_offset<Src>(r));
          for (size_t p = 0; p < PB; ++p) {
            vf_t lo;
            vf_t hi;
            load_pair(df, x + p * x_stride + i, r, lo, hi);
            acc[h * PB + p][r] = hn::MulAdd(wl, lo, acc[h * PB + p][r]);
            acc[h * PB + p][r] = hn::MulAdd(wh, hi, acc[h * PB + p][r]);
          }
        }
      }
    } else {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
      // bf16 on 16 lanes: chains 0..7 are the lower half of the vector.
      const d8_t d8;
      for (size_t h = 0; h < HB; ++h) {
        const auto wl = hn::LoadU(d8, w + h * w_stride + i);
        const auto wh = hn::LoadU(d8, w + h * w_stride + i + 8);
        for (size_t p = 0; p < PB; ++p) {
          hn::Vec<d8_t> lo;
          hn::Vec<d8_t> hi;
          load_widen(d8, x + p * x_stride + i, lo, hi);
          vf_t& a = acc[h * PB + p][0];
          auto low = hn::LowerHalf(d8, a);
          low = hn::MulAdd(wl, lo, low);
          low = hn::MulAdd(wh, hi, low);
          a = hn::Combine(df, hn::UpperHalf(d8, a), low);
        }
      }
#else
      static_assert(!wide, "16-lane targets are x86 AVX-512 here");
#endif
    }
  }
  reduce_chains<n_acc>(acc, out);
}

}  // namespace simd
}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#endif  // PNMKV_CORE_SIMD_INTERNAL_HPP_ toggle
