// Attention of a GQA group over selected pages (the device kernel), its scalar and
// double-precision references, and the exact merge of partials.
//
// attend_pages streams each page once. Rows are taken in tiles of up to 32 (several small
// pages per tile); per tile it computes the G × T logits with every K vector loaded once
// for 4 query heads and 2 rows at a time (simd::dot_block), updates the per-head online
// softmax (running max m, sum l) with a vectorised exp, then accumulates p · V with every
// V vector loaded once for 4 heads. Accumulators stay in the pair (even/odd) layout
// until the final normalisation. The next tile is prefetched row by row while the
// current one is computed: selected pages are scattered, hardware prefetchers do not
// cross pages, and even for adjacent pages this doubled the achieved bandwidth here.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"

#include "core/attention.hpp"
#include "core/check.hpp"
#include "core/score.hpp"
#include "core/simd_internal.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

// Rows per online-softmax update. Small pages are grouped into one tile (2 pages of 16
// rows, 4 of 8, ...) so the per-update work (max, rescale, exp of the correction) is
// spread over more rows; larger pages are cut into tiles of this size. 32 rows (16 KiB of
// K+V at d = 128) keep this tile and the prefetched next one within L1; 64 was faster
// hot but slower from DRAM.
constexpr size_t tile_rows_max = 32;
constexpr size_t tile_segments_max = tile_rows_max;  // a segment holds at least one row
constexpr size_t heads_per_block = 4;
// How many tiles ahead the rows are asked for: selected pages are scattered, so only
// software prefetch keeps misses in flight. Two or four tiles ahead measured no faster
// than one (Zen 5, scattered 8 KiB pages): the miss buffers, not the distance, limit it.
constexpr size_t prefetch_tiles_ahead = 1;
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// A run of consecutive rows of one page inside a tile.
struct segment {
  const bf16* k;
  const bf16* v;
  size_t rows;
};

struct tile {
  segment segs[tile_segments_max];
  size_t n_segs = 0;
  size_t rows = 0;
  const bf16* k_rows[tile_rows_max];  // per row, for prefetching
  const bf16* v_rows[tile_rows_max];
};

// Takes up to tile_rows_max rows from the page list, starting at page index *pi, row
// *row0, and advances both. An exhausted list gives an empty tile.
HWY_INLINE void gather_tile(const kv_head_store& store, const uint32_t* pages, size_t n_pages,
                            size_t* pi, size_t* row0, tile* t) {
  const size_t d = store.shape().head_dim;
  t->n_segs = 0;
  t->rows = 0;
  while (*pi < n_pages && t->rows < tile_rows_max) {
    const uint32_t page = pages[*pi];
    const size_t rows = store.page_tokens(page);
    const size_t take = std::min(rows - *row0, tile_rows_max - t->rows);
    const bf16* k = store.page_keys(page) + *row0 * d;
    const bf16* v = store.page_values(page) + *row0 * d;
    t->segs[t->n_segs++] = segment{k, v, take};
    for (size_t r = 0; r < take; ++r) {
      t->k_rows[t->rows + r] = k + r * d;
      t->v_rows[t->rows + r] = v + r * d;
    }
    t->rows += take;
    *row0 += take;
    if (*row0 == rows) {
      ++*pi;
      *row0 = 0;
    }
  }
}

// Asks for K (or V) rows [t0, t1) of the next tile while this tile is computed, so it
// arrives in time whether pages are adjacent or scattered (hardware prefetchers do not
// cross pages). K rows are asked for from the logits loop, V rows from the value loop, a
// few at a time: a burst of a whole tile's lines would fill the miss buffers and stall.
// Which rows of the next tile a head block asks for: every `phases`-th, from `phase`, so
// with several head blocks (GQA 16: four) the prefetches are spread over the whole tile
// instead of bursting in the first block (a burst fills the miss buffers and stalls).
struct prefetch_plan {
  const tile* next = nullptr;
  size_t phase = 0;
  size_t phases = 1;
};

template <bool Values>
HWY_INLINE void prefetch_rows(const prefetch_plan& plan, size_t t0, size_t t1, size_t row_bytes) {
  if (plan.next == nullptr) return;
  const tile& next = *plan.next;
  t1 = std::min(t1, next.rows);
  for (size_t t = t0; t < t1; ++t) {
    if (t % plan.phases != plan.phase) continue;
    const char* p = reinterpret_cast<const char*>(Values ? next.v_rows[t] : next.k_rows[t]);
    // Every line: asking for one per 128 bytes (leaving the neighbour to the adjacent-
    // line prefetcher), or one per KiB (leaving the page to the L2 streamer), was
    // measured slower.
    for (size_t off = 0; off < row_bytes; off += 64) hwy::Prefetch(p + off);
  }
}

// acc (HB rows of d floats, pair layout) = acc · corr + Σ_rows probs · V over every
// segment of the tile; the accumulators stay in registers across the whole tile. Each
// output element is its own chain over the rows, so the result does not depend on the
// vector width. Columns are taken a piece at a time: whole steps of 2·lanes, then (16-lane
// targets, d ≡ 16 mod 32) a half chunk in 8-lane vectors.
template <size_t HB, size_t PC, class D>
HWY_INLINE void accumulate_piece(D d, float* HWY_RESTRICT acc, size_t head_dim, size_t c,
                                 const float* HWY_RESTRICT probs, size_t probs_stride,
                                 const float* corr, bool rescale, const segment* segs,
                                 size_t n_segs) {
  const size_t n = hn::Lanes(d);
  // PC pieces of 2·n columns side by side: HB·PC·2 accumulator chains.
  hn::Vec<D> lo[HB][PC];
  hn::Vec<D> hi[HB][PC];
  for (size_t i = 0; i < HB; ++i) {
    for (size_t j = 0; j < PC; ++j) {
      lo[i][j] = hn::LoadU(d, acc + i * head_dim + c + 2 * n * j);
      hi[i][j] = hn::LoadU(d, acc + i * head_dim + c + 2 * n * j + n);
      if (rescale) {
        const auto k = hn::Set(d, corr[i]);
        lo[i][j] = hn::Mul(lo[i][j], k);
        hi[i][j] = hn::Mul(hi[i][j], k);
      }
    }
  }
  size_t t = 0;  // row within the tile
  for (size_t s = 0; s < n_segs; ++s) {
    const bf16* v = segs[s].v + c;
    for (size_t r = 0; r < segs[s].rows; ++r, ++t) {
      hn::Vec<D> vlo[PC];
      hn::Vec<D> vhi[PC];
      for (size_t j = 0; j < PC; ++j) simd::load_widen(d, v + r * head_dim + 2 * n * j, vlo[j], vhi[j]);
      for (size_t i = 0; i < HB; ++i) {
        const auto p = hn::Set(d, probs[i * probs_stride + t]);
        for (size_t j = 0; j < PC; ++j) {
          lo[i][j] = hn::MulAdd(p, vlo[j], lo[i][j]);
          hi[i][j] = hn::MulAdd(p, vhi[j], hi[i][j]);
        }
      }
    }
  }
  for (size_t i = 0; i < HB; ++i) {
    for (size_t j = 0; j < PC; ++j) {
      hn::StoreU(lo[i][j], d, acc + i * head_dim + c + 2 * n * j);
      hn::StoreU(hi[i][j], d, acc + i * head_dim + c + 2 * n * j + n);
    }
  }
}

// Pieces of columns per pass: HB·PC·2 accumulators plus 2·PC value vectors must fit the
// registers; more chains hide the FMA latency (each row adds one FMA per chain).
template <size_t HB>
constexpr size_t value_pieces_per_pass() {
  return simd::replicas == 1 && HB * 4 <= 16 ? 2 : 1;
}

template <size_t HB>
HWY_INLINE void accumulate_values(float* HWY_RESTRICT acc, size_t d,
                                  const float* HWY_RESTRICT probs, size_t probs_stride,
                                  const float* corr, const segment* segs, size_t n_segs,
                                  const prefetch_plan& plan) {
  const simd::df_t df;
  const size_t step = 2 * simd::lanes;
  const size_t n_pieces = (d + step - 1) / step;  // ≥ 1: d ≥ 16
  constexpr size_t pc = value_pieces_per_pass<HB>();
  bool rescale = false;
  for (size_t i = 0; i < HB; ++i) rescale |= corr[i] != 1.0f;
  size_t c = 0;
  for (size_t ci = 0; ci < n_pieces;) {
    const size_t piece = simd::pair_piece(c, d);
    const size_t take = piece == step && c + pc * step <= d ? pc : 1;
    prefetch_rows<true>(plan, ci * tile_rows_max / n_pieces,
                        (ci + take) * tile_rows_max / n_pieces, d * sizeof(bf16));
    if (take == pc && pc > 1) {
      accumulate_piece<HB, pc>(df, acc, d, c, probs, probs_stride, corr, rescale, segs, n_segs);
    } else if (piece == step) {
      accumulate_piece<HB, 1>(df, acc, d, c, probs, probs_stride, corr, rescale, segs, n_segs);
    } else {
#if HWY_ARCH_X86 && HWY_TARGET <= HWY_AVX3
      PNMKV_DCHECK(piece == simd::half_chunk_elems);
      accumulate_piece<HB, 1>(simd::d8_t(), acc, d, c, probs, probs_stride, corr, rescale, segs,
                              n_segs);
#else
      PNMKV_CHECK(false, "piece=", piece, " step=", step);  // pieces are whole steps here
#endif
    }
    c += take * piece;
    ci += take;
  }
}

// Rows of K per dot_block call: heads × rows × replicas accumulators must fit the
// registers (32 on AVX-512, 16 on AVX2 where a chain set takes two).
template <size_t HB>
constexpr size_t logit_rows_per_block() {
  if constexpr (simd::replicas == 1) return HB == 1 ? 16 : 4;  // 16 products: one vector
  if constexpr (simd::replicas == 2) return HB == 1 ? 4 : 1;
  return 1;
}

// logits[h · stride + t] = qw_h · K_t for HB heads starting at qw, t < n_rows.
template <size_t HB>
HWY_INLINE void segment_logits(const float* HWY_RESTRICT qw, size_t d,
                               const bf16* HWY_RESTRICT k, size_t n_rows,
                               float* HWY_RESTRICT logits, size_t stride,
                               const prefetch_plan& plan, size_t tile_row0) {
  constexpr size_t rb = logit_rows_per_block<HB>();
  float tmp[HB * rb];
  size_t t = 0;
  for (; t + rb <= n_rows; t += rb) {
    prefetch_rows<false>(plan, tile_row0 + t, tile_row0 + t + rb, d * sizeof(bf16));
    simd::dot_block<HB, rb>(qw, d, k + t * d, d, d, tmp);
    for (size_t i = 0; i < HB; ++i) {
      for (size_t r = 0; r < rb; ++r) logits[i * stride + t + r] = tmp[i * rb + r];
    }
  }
  for (; t < n_rows; ++t) {
    prefetch_rows<false>(plan, tile_row0 + t, tile_row0 + t + 1, d * sizeof(bf16));
    simd::dot_block<HB, 1>(qw, d, k + t * d, d, d, tmp);
    for (size_t i = 0; i < HB; ++i) logits[i * stride + t] = tmp[i];
  }
}

}  // namespace

// Preconditions (checked by the caller): 1 ≤ group ≤ kernel_group_limit, pages valid and
// distinct, n_pages ≥ 1. Writes o (group × d, natural order) and lse (group).
void attend_pages_simd(const kv_head_store& store, const float* q_group, uint32_t group,
                       const uint32_t* pages, size_t n_pages, float scale, float* o_out,
                       float* lse_out) {
  const simd::df_t df;
  const size_t n = hn::Lanes(df);
  const size_t d = store.shape().head_dim;
  PNMKV_CHECK(d % simd::half_chunk_elems == 0 && d >= simd::half_chunk_elems, "head_dim=", d);
  PNMKV_CHECK_GE(n_pages, size_t{1});

  auto qw = hwy::AllocateAligned<float>(group * d);
  auto acc = hwy::AllocateAligned<float>(group * d);
  {
    std::vector<float> scaled(d);
    for (uint32_t h = 0; h < group; ++h) {
      for (size_t j = 0; j < d; ++j) scaled[j] = scale * q_group[h * d + j];
      simd::to_pair_layout(scaled.data(), d, qw.get() + h * d);
    }
  }
  std::fill(acc.get(), acc.get() + group * d, 0.0f);
  // Logit rows padded to the whole tile; the pad holds -inf so exp gives 0 there and the
  // tile's sum always adds the same 32 values in the same tree.
  constexpr size_t stride = tile_rows_max;
  static_assert(stride % simd::lanes == 0 && stride == 2 * simd::chains,
                "a logit row is whole vectors and one canonical 32-value sum");
  auto logits = hwy::AllocateAligned<float>(group * stride);
  std::vector<float> m(group, neg_inf);
  std::vector<float> l(group, 0.0f);
  std::vector<float> corr(group, 1.0f);
  // A ring of tiles: the one computed and the ones ahead of it being prefetched.
  constexpr size_t ring = prefetch_tiles_ahead + 1;
  tile tiles[ring];
  size_t pi = 0;    // next page to gather
  size_t row0 = 0;  // first ungathered row of page pages[pi]
  for (size_t a = 0; a < prefetch_tiles_ahead; ++a) {
    gather_tile(store, pages, n_pages, &pi, &row0, &tiles[a]);
    if (a > 0) {  // the first tile's rows are asked for by the loop's first step
      const prefetch_plan all{&tiles[a], 0, 1};
      prefetch_rows<false>(all, 0, tile_rows_max, d * sizeof(bf16));
      prefetch_rows<true>(all, 0, tile_rows_max, d * sizeof(bf16));
    }
  }
  // Head blocks of a tile (blocks of heads_per_block, then single heads): the next
  // tile's rows are spread over all of them.
  const size_t head_units = group / heads_per_block + group % heads_per_block;
  for (size_t ti = 0; tiles[ti % ring].rows > 0; ++ti) {
    const tile& cur = tiles[ti % ring];
    tile& next = tiles[(ti + prefetch_tiles_ahead) % ring];
    gather_tile(store, pages, n_pages, &pi, &row0, &next);
    const segment* segs = cur.segs;
    const size_t n_segs = cur.n_segs;
    const size_t tr = cur.rows;
    PNMKV_DCHECK(tr >= 1 && tr <= tile_rows_max);
    // The next tile's K rows are asked for across the head blocks' logits, its V rows
    // across their value loops.
    prefetch_plan plan{&next, 0, head_units};

    uint32_t h = 0;
    for (; h + heads_per_block <= group; h += heads_per_block, ++plan.phase) {
      size_t t = 0;
      for (size_t s = 0; s < n_segs; ++s) {
        segment_logits<heads_per_block>(qw.get() + h * d, d, segs[s].k, segs[s].rows,
                                        logits.get() + h * stride + t, stride, plan, t);
        t += segs[s].rows;
      }
    }
    for (; h < group; ++h, ++plan.phase) {
      size_t t = 0;
      for (size_t s = 0; s < n_segs; ++s) {
        segment_logits<1>(qw.get() + h * d, d, segs[s].k, segs[s].rows,
                          logits.get() + h * stride + t, stride, plan, t);
        t += segs[s].rows;
      }
    }
    // Online softmax update, vectorised over the tile's rows (padded to the whole tile).
    for (h = 0; h < group; ++h) {
      float* row = logits.get() + h * stride;
      for (size_t t = tr; t < stride; ++t) row[t] = neg_inf;
      auto vmax = hn::Load(df, row);
      for (size_t t = n; t < stride; t += n) vmax = hn::Max(vmax, hn::Load(df, row + t));
      const float tile_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
      const float m_new = std::max(m[h], tile_max);
      if (!(m_new > neg_inf)) {  // nothing finite yet (or NaN): contributes nothing
        corr[h] = 1.0f;
        for (size_t t = 0; t < tr; ++t) row[t] = 0.0f;
        continue;
      }
      corr[h] = m_new == m[h] ? 1.0f : (m[h] == neg_inf ? 0.0f : std::exp(m[h] - m_new));
      const auto vm = hn::Set(df, m_new);
      for (size_t t = 0; t < stride; t += n) {
        hn::Store(hn::Exp(df, hn::Sub(hn::Load(df, row + t), vm)), df, row + t);
      }
      l[h] = l[h] * corr[h] + simd::canonical_sum32(row);
      m[h] = m_new;
    }
    plan.phase = 0;
    for (h = 0; h + heads_per_block <= group; h += heads_per_block, ++plan.phase) {
      accumulate_values<heads_per_block>(acc.get() + h * d, d, logits.get() + h * stride,
                                         stride, corr.data() + h, segs, n_segs, plan);
    }
    for (; h < group; ++h, ++plan.phase) {
      accumulate_values<1>(acc.get() + h * d, d, logits.get() + h * stride, stride,
                           corr.data() + h, segs, n_segs, plan);
    }
  }
  for (uint32_t h = 0; h < group; ++h) {
    float* o = o_out + h * d;
    if (l[h] > 0.0f) {
      simd::from_pair_layout(acc.get() + h * d, d, o);
      const float inv = 1.0f / l[h];
      for (size_t j = 0; j < d; ++j) o[j] *= inv;
      lse_out[h] = m[h] + std::log(l[h]);
    } else {
      std::fill(o, o + d, 0.0f);
      lse_out[h] = neg_inf;
    }
  }
}

}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#if HWY_ONCE
namespace pnmkv {

HWY_EXPORT(attend_pages_simd);

void partial::reset(uint32_t group_, uint32_t head_dim_) {
  group = group_;
  head_dim = head_dim_;
  o.assign(static_cast<size_t>(group_) * head_dim_, 0.0f);
  lse.assign(group_, -std::numeric_limits<float>::infinity());
}

bool partial::empty() const {
  for (float x : lse) {
    if (x != -std::numeric_limits<float>::infinity()) return false;
  }
  return true;
}

namespace {

status check_attend_args(const char* who, const kv_head_store& store, const float* q_group,
                         uint32_t group, const uint32_t* local_pages, size_t n_pages,
                         float scale) {
  if (group < 1 || group > kernel_group_limit) {
    return {errc::invalid_argument, std::string(who) + ": group = " + std::to_string(group) +
                                        " query heads is not allowed: 1.." +
                                        std::to_string(kernel_group_limit)};
  }
  if (q_group == nullptr) {
    return {errc::invalid_argument, std::string(who) + ": q_group must not be null"};
  }
  if (!std::isfinite(scale)) {
    return {errc::invalid_argument, std::string(who) + ": scale must be finite"};
  }
  if (n_pages > 0 && local_pages == nullptr) {
    return {errc::invalid_argument, std::string(who) + ": local_pages must not be null"};
  }
  const uint32_t page_count = store.page_count();
  if (n_pages > page_count) {
    return {errc::invalid_argument, std::string(who) + ": " + std::to_string(n_pages) +
                                        " pages listed but the store holds " +
                                        std::to_string(page_count) +
                                        " (pages must be distinct)"};
  }
  std::vector<uint64_t> seen((page_count + 63) / 64, 0);
  for (size_t i = 0; i < n_pages; ++i) {
    const uint32_t p = local_pages[i];
    if (p >= page_count) {
      return {errc::out_of_range, std::string(who) + ": local page " + std::to_string(p) +
                                      " (entry " + std::to_string(i) +
                                      ") is past page_count = " + std::to_string(page_count)};
    }
    const uint64_t bit = uint64_t{1} << (p % 64);
    if (seen[p / 64] & bit) {
      return {errc::invalid_argument, std::string(who) + ": local page " + std::to_string(p) +
                                          " is listed twice"};
    }
    seen[p / 64] |= bit;
  }
  return status::ok();
}

}  // namespace

status attend_pages(const kv_head_store& store, const float* q_group, uint32_t group,
                    const uint32_t* local_pages, size_t n_pages, float scale, partial& out) {
  if (status s = check_attend_args("attend_pages", store, q_group, group, local_pages, n_pages,
                                   scale);
      !s) {
    return s;
  }
  out.reset(group, store.shape().head_dim);
  if (n_pages == 0) return status::ok();
  HWY_DYNAMIC_DISPATCH(attend_pages_simd)(store, q_group, group, local_pages, n_pages, scale,
                                          out.o.data(), out.lse.data());
  return status::ok();
}

status attend_pages_scalar(const kv_head_store& store, const float* q_group, uint32_t group,
                           const uint32_t* local_pages, size_t n_pages, float scale,
                           partial& out) {
  if (status s = check_attend_args("attend_pages_scalar", store, q_group, group, local_pages,
                                   n_pages, scale);
      !s) {
    return s;
  }
  const uint32_t d = store.shape().head_dim;
  out.reset(group, d);
  std::vector<float> m(group, -std::numeric_limits<float>::infinity());
  std::vector<float> l(group, 0.0f);
  std::vector<float> acc(static_cast<size_t>(group) * d, 0.0f);
  for (size_t pi = 0; pi < n_pages; ++pi) {
    const uint32_t page = local_pages[pi];
    const bf16* kp = store.page_keys(page);
    const bf16* vp = store.page_values(page);
    for (uint32_t t = 0; t < store.page_tokens(page); ++t) {
      const bf16* k = kp + static_cast<size_t>(t) * d;
      const bf16* v = vp + static_cast<size_t>(t) * d;
      for (uint32_t h = 0; h < group; ++h) {
        const float* q = q_group + static_cast<size_t>(h) * d;
        float dot = 0.0f;
        for (uint32_t j = 0; j < d; ++j) dot += q[j] * to_float(k[j]);
        const float s = scale * dot;
        float* a = acc.data() + static_cast<size_t>(h) * d;
        if (s > m[h]) {
          const float c = std::exp(m[h] - s);  // exp(-inf) = 0 on the first token
          l[h] = l[h] * c + 1.0f;
          for (uint32_t j = 0; j < d; ++j) a[j] = a[j] * c + to_float(v[j]);
          m[h] = s;
        } else {
          const float p = std::exp(s - m[h]);
          l[h] += p;
          for (uint32_t j = 0; j < d; ++j) a[j] += p * to_float(v[j]);
        }
      }
    }
  }
  for (uint32_t h = 0; h < group; ++h) {
    if (!(l[h] > 0.0f)) continue;
    for (uint32_t j = 0; j < d; ++j) out.o[h * d + j] = acc[h * d + j] / l[h];
    out.lse[h] = m[h] + std::log(l[h]);
  }
  return status::ok();
}

status dense_attention_reference(const kv_head_store& store, const float* q_group,
                                 uint32_t group, float scale, partial& out) {
  if (status s = check_attend_args("dense_attention_reference", store, q_group, group, nullptr,
                                   0, scale);
      !s) {
    return s;
  }
  const uint32_t d = store.shape().head_dim;
  const uint64_t n_tokens = store.token_count();
  out.reset(group, d);
  if (n_tokens == 0) return status::ok();
  std::vector<double> logits(n_tokens);
  std::vector<double> o(d);
  for (uint32_t h = 0; h < group; ++h) {
    const float* q = q_group + static_cast<size_t>(h) * d;
    double mx = -std::numeric_limits<double>::infinity();
    size_t i = 0;
    for (uint32_t page = 0; page < store.page_count(); ++page) {
      const bf16* kp = store.page_keys(page);
      for (uint32_t t = 0; t < store.page_tokens(page); ++t, ++i) {
        double dot = 0.0;
        for (uint32_t j = 0; j < d; ++j) {
          dot += static_cast<double>(q[j]) * to_float(kp[static_cast<size_t>(t) * d + j]);
        }
        logits[i] = static_cast<double>(scale) * dot;
        mx = std::max(mx, logits[i]);
      }
    }
    PNMKV_CHECK_EQ(i, n_tokens);
    double sum = 0.0;
    std::fill(o.begin(), o.end(), 0.0);
    i = 0;
    for (uint32_t page = 0; page < store.page_count(); ++page) {
      const bf16* vp = store.page_values(page);
      for (uint32_t t = 0; t < store.page_tokens(page); ++t, ++i) {
        const double w = std::exp(logits[i] - mx);
        sum += w;
        for (uint32_t j = 0; j < d; ++j) o[j] += w * to_float(vp[static_cast<size_t>(t) * d + j]);
      }
    }
    for (uint32_t j = 0; j < d; ++j) out.o[static_cast<size_t>(h) * d + j] = static_cast<float>(o[j] / sum);
    out.lse[h] = static_cast<float>(mx + std::log(sum));
  }
  return status::ok();
}

status merge_partials(const partial* const* parts, size_t n_parts, partial& out) {
  if (n_parts == 0 || parts == nullptr) {
    return {errc::invalid_argument, "merge_partials: nothing to merge (no partials given)"};
  }
  for (size_t i = 0; i < n_parts; ++i) {
    if (parts[i] == nullptr) {
      return {errc::invalid_argument,
              "merge_partials: partial " + std::to_string(i) + " is null"};
    }
  }
  const uint32_t group = parts[0]->group;
  const uint32_t d = parts[0]->head_dim;
  for (size_t i = 0; i < n_parts; ++i) {
    const partial& p = *parts[i];
    if (p.group != group || p.head_dim != d ||
        p.o.size() != static_cast<size_t>(group) * d || p.lse.size() != group) {
      return {errc::shape_mismatch,
              "merge_partials: partial " + std::to_string(i) + " has group " +
                  std::to_string(p.group) + ", head_dim " + std::to_string(p.head_dim) +
                  ", |o| " + std::to_string(p.o.size()) + ", |lse| " +
                  std::to_string(p.lse.size()) + "; expected group " + std::to_string(group) +
                  ", head_dim " + std::to_string(d) + " (from partial 0)"};
    }
  }
  // Computed aside: out may alias one of the inputs.
  partial merged;
  merged.reset(group, d);
  std::vector<double> o(d);
  const double neg_inf = -std::numeric_limits<double>::infinity();
  for (uint32_t h = 0; h < group; ++h) {
    double m = neg_inf;
    for (size_t i = 0; i < n_parts; ++i) {
      const double lse = parts[i]->lse[h];
      if (lse != neg_inf) m = std::max(m, lse);
    }
    if (m == neg_inf) continue;  // every input empty for this head
    double wsum = 0.0;
    std::fill(o.begin(), o.end(), 0.0);
    for (size_t i = 0; i < n_parts; ++i) {
      const double lse = parts[i]->lse[h];
      if (lse == neg_inf) continue;
      const double w = std::exp(lse - m);
      wsum += w;
      const float* oi = parts[i]->o.data() + static_cast<size_t>(h) * d;
      for (uint32_t j = 0; j < d; ++j) o[j] += w * oi[j];
    }
    for (uint32_t j = 0; j < d; ++j) {
      merged.o[static_cast<size_t>(h) * d + j] = static_cast<float>(o[j] / wsum);
    }
    merged.lse[h] = static_cast<float>(m + std::log(wsum));
  }
  out = std::move(merged);
  return status::ok();
}

}  // namespace pnmkv
#endif  // HWY_ONCE
