// Attention of a GQA group over selected pages (the device kernel), its scalar and
// double-precision references, and the exact merge of partials.
//
// attend_pages streams each page once: per tile of up to 32 rows it computes the G × T
// logits with every K vector loaded once for 4 query heads and 2 rows at a time
// (simd::dot_block), updates the per-head online softmax (running max m, sum l) with a
// vectorised exp, then accumulates p · V with every V vector loaded once for 4 heads.
// Accumulators stay in the widened (bf16 interleave) order until the final
// normalisation; the next page is prefetched while the current one is processed, since
// selected pages are scattered and hardware prefetchers do not cross them.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/attention.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"
#include "hwy/aligned_allocator.h"
#include "hwy/cache_control.h"
#include "hwy/contrib/math/math-inl.h"

#include "core/attention.hpp"
#include "core/score.hpp"
#include "core/simd_internal.hpp"

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace {

namespace hn = hwy::HWY_NAMESPACE;

constexpr size_t tile_rows_max = 32;  // rows of a page handled per softmax update
constexpr size_t heads_per_block = 4;
constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// acc (HB rows of d floats, widened order) = acc · corr + Σ_t probs[t] · V[t].
template <size_t HB>
HWY_INLINE void accumulate_values(float* HWY_RESTRICT acc, size_t d,
                                  const float* HWY_RESTRICT probs, size_t probs_stride,
                                  const float* corr, const bf16* HWY_RESTRICT v,
                                  size_t n_rows) {
  const simd::df_t df;
  const size_t n = hn::Lanes(df);
  bool rescale = false;
  for (size_t i = 0; i < HB; ++i) rescale |= corr[i] != 1.0f;
  for (size_t c = 0; c < d; c += 2 * n) {
    simd::vf_t lo[HB];
    simd::vf_t hi[HB];
    for (size_t i = 0; i < HB; ++i) {
      lo[i] = hn::Load(df, acc + i * d + c);
      hi[i] = hn::Load(df, acc + i * d + c + n);
      if (rescale) {
        const simd::vf_t k = hn::Set(df, corr[i]);
        lo[i] = hn::Mul(lo[i], k);
        hi[i] = hn::Mul(hi[i], k);
      }
    }
    for (size_t t = 0; t < n_rows; ++t) {
      simd::vf_t vlo;
      simd::vf_t vhi;
      simd::load_widen(df, v + t * d + c, vlo, vhi);
      for (size_t i = 0; i < HB; ++i) {
        const simd::vf_t p = hn::Set(df, probs[i * probs_stride + t]);
        lo[i] = hn::MulAdd(p, vlo, lo[i]);
        hi[i] = hn::MulAdd(p, vhi, hi[i]);
      }
    }
    for (size_t i = 0; i < HB; ++i) {
      hn::Store(lo[i], df, acc + i * d + c);
      hn::Store(hi[i], df, acc + i * d + c + n);
    }
  }
}

// logits[h · stride + t] = qw_h · K_t for HB heads starting at qw, t < n_rows.
template <size_t HB>
HWY_INLINE void tile_logits(const float* HWY_RESTRICT qw, size_t d, const bf16* HWY_RESTRICT k,
                            size_t n_rows, float* HWY_RESTRICT logits, size_t stride) {
  constexpr size_t rb = HB == 1 ? 4 : 2;
  float tmp[HB * rb];
  size_t t = 0;
  for (; t + rb <= n_rows; t += rb) {
    simd::dot_block<HB, rb>(qw, d, k + t * d, d, d, tmp);
    for (size_t i = 0; i < HB; ++i) {
      for (size_t r = 0; r < rb; ++r) logits[i * stride + t + r] = tmp[i * rb + r];
    }
  }
  for (; t < n_rows; ++t) {
    simd::dot_block<HB, 1>(qw, d, k + t * d, d, d, tmp);
    for (size_t i = 0; i < HB; ++i) logits[i * stride + t] = tmp[i];
  }
}

HWY_INLINE void prefetch_page(const bf16* k, const bf16* v, size_t bytes) {
  const char* kc = reinterpret_cast<const char*>(k);
  const char* vc = reinterpret_cast<const char*>(v);
  for (size_t off = 0; off < bytes; off += 64) {
    hwy::Prefetch(kc + off);
    hwy::Prefetch(vc + off);
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
  assert(d % simd::step_elems(df) == 0);
  assert(n_pages >= 1);

  uint32_t map[2 * hn::MaxLanes(simd::df_t())];
  simd::widened_order_map(map);
  auto qw = hwy::AllocateAligned<float>(group * d);
  auto acc = hwy::AllocateAligned<float>(group * d);
  {
    std::vector<float> scaled(d);
    for (uint32_t h = 0; h < group; ++h) {
      for (size_t j = 0; j < d; ++j) scaled[j] = scale * q_group[h * d + j];
      simd::to_widened_order(scaled.data(), d, map, qw.get() + h * d);
    }
  }
  std::fill(acc.get(), acc.get() + group * d, 0.0f);
  // Logit rows padded to whole vectors; the pad holds -inf so exp gives 0 there.
  const size_t stride = (tile_rows_max + n - 1) / n * n;
  auto logits = hwy::AllocateAligned<float>(group * stride);
  std::vector<float> m(group, neg_inf);
  std::vector<float> l(group, 0.0f);
  std::vector<float> corr(group, 1.0f);

  const size_t page_bytes = static_cast<size_t>(store.shape().page_size_tokens) * d * 2;
  for (size_t pi = 0; pi < n_pages; ++pi) {
    const uint32_t page = pages[pi];
    if (pi + 1 < n_pages) {
      const uint32_t next = pages[pi + 1];
      prefetch_page(store.page_keys(next), store.page_values(next),
                    std::min<size_t>(page_bytes, store.page_tokens(next) * d * 2));
    }
    const size_t rows = store.page_tokens(page);
    const bf16* kp = store.page_keys(page);
    const bf16* vp = store.page_values(page);
    for (size_t t0 = 0; t0 < rows; t0 += tile_rows_max) {
      const size_t tr = std::min(tile_rows_max, rows - t0);
      const bf16* kt = kp + t0 * d;
      const bf16* vt = vp + t0 * d;
      uint32_t h = 0;
      for (; h + heads_per_block <= group; h += heads_per_block) {
        tile_logits<heads_per_block>(qw.get() + h * d, d, kt, tr, logits.get() + h * stride,
                                     stride);
      }
      for (; h < group; ++h) {
        tile_logits<1>(qw.get() + h * d, d, kt, tr, logits.get() + h * stride, stride);
      }
      // Online softmax update, vectorised over the tile's rows.
      const size_t tr_pad = (tr + n - 1) / n * n;
      for (h = 0; h < group; ++h) {
        float* row = logits.get() + h * stride;
        for (size_t t = tr; t < tr_pad; ++t) row[t] = neg_inf;
        auto vmax = hn::Set(df, neg_inf);
        for (size_t t = 0; t < tr_pad; t += n) vmax = hn::Max(vmax, hn::Load(df, row + t));
        const float tile_max = hn::GetLane(hn::MaxOfLanes(df, vmax));
        const float m_new = std::max(m[h], tile_max);
        if (!(m_new > neg_inf)) {  // nothing finite yet (or NaN): contributes nothing
          corr[h] = 1.0f;
          for (size_t t = 0; t < tr; ++t) row[t] = 0.0f;
          continue;
        }
        corr[h] = m[h] == neg_inf ? 0.0f : std::exp(m[h] - m_new);
        const auto vm = hn::Set(df, m_new);
        auto vsum = hn::Zero(df);
        for (size_t t = 0; t < tr_pad; t += n) {
          const auto p = hn::Exp(df, hn::Sub(hn::Load(df, row + t), vm));
          hn::Store(p, df, row + t);
          vsum = hn::Add(vsum, p);
        }
        l[h] = l[h] * corr[h] + hn::GetLane(hn::SumOfLanes(df, vsum));
        m[h] = m_new;
      }
      for (h = 0; h + heads_per_block <= group; h += heads_per_block) {
        accumulate_values<heads_per_block>(acc.get() + h * d, d, logits.get() + h * stride,
                                           stride, corr.data() + h, vt, tr);
      }
      for (; h < group; ++h) {
        accumulate_values<1>(acc.get() + h * d, d, logits.get() + h * stride, stride,
                             corr.data() + h, vt, tr);
      }
    }
  }
  for (uint32_t h = 0; h < group; ++h) {
    float* o = o_out + h * d;
    if (l[h] > 0.0f) {
      simd::from_widened_order(acc.get() + h * d, d, map, o);
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
    assert(i == n_tokens);
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
