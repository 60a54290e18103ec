// Quantised page summaries with outward rounding (see int8_summaries.hpp). Every code is
// checked against the value it bounds when it is written (PNMKV_CHECK), in double
// precision: lo, step (floats) and the code (≤ 255) make lo + step·c exact to 2^-50
// relative, far inside the margin the search adds (core/exact_search.cpp).
#include "core/int8_summaries.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "core/bf16.hpp"
#include "core/check.hpp"

namespace pnmkv {

void int8_summary_index::free_deleter::operator()(void* p) const { std::free(p); }

int8_summary_index::int8_summary_index(uint32_t len, uint32_t capacity_pages, uint32_t block_pages)
    : len_(len), capacity_pages_(capacity_pages), block_pages_(block_pages) {
  PNMKV_CHECK(len > 0 && len % 32 == 0, "len=", len);
  PNMKV_CHECK(block_pages >= 1, "block_pages=", block_pages);
  const size_t bytes = (std::max<size_t>(size_t(capacity_pages) * len, 1) + 63) / 64 * 64;
  // Uninitialised on purpose (the OS commits pages as they are written), as the store's K/V.
  codes_.reset(static_cast<uint8_t*>(std::aligned_alloc(64, bytes)));
  PNMKV_CHECK(codes_ != nullptr, "cannot reserve ", bytes, " bytes of int8 summaries");
}

int8_summary_index::int8_summary_index(int8_summary_index&&) noexcept = default;
int8_summary_index& int8_summary_index::operator=(int8_summary_index&&) noexcept = default;
int8_summary_index::~int8_summary_index() = default;

uint64_t int8_summary_index::bytes_held(uint32_t pages) const {
  if (empty()) return 0;
  return bytes_for(len_, pages, block_pages_);
}

float int8_summary_index::step_of(float lo, float hi) {
  if (!(hi > lo)) return 0.0f;
  const double want = (double(hi) - double(lo)) / 255.0;
  float s = static_cast<float>(want);
  while (double(s) < want || double(lo) + 255.0 * double(s) < double(hi)) {
    s = std::nextafter(s, std::numeric_limits<float>::infinity());
  }
  return s;
}

uint8_t int8_summary_index::quantise(float v, float lo, float step, bool round_up) {
  if (step == 0.0f) {
    PNMKV_CHECK(v == lo, "v=", v, " lo=", lo);
    return 0;
  }
  const double l = lo;
  const double s = step;
  const double x = v;
  const double t = (x - l) / s;
  int c = static_cast<int>(std::clamp(round_up ? std::ceil(t) : std::floor(t), 0.0, 255.0));
  if (round_up) {
    while (c < 255 && l + s * c < x) ++c;
    while (c > 0 && l + s * (c - 1) >= x) --c;
    PNMKV_CHECK(l + s * c >= x, "v=", v, " lo=", lo, " step=", step, " code=", c);
  } else {
    while (c > 0 && l + s * c > x) --c;
    while (c < 255 && l + s * (c + 1) <= x) ++c;
    PNMKV_CHECK(l + s * c <= x, "v=", v, " lo=", lo, " step=", step, " code=", c);
  }
  return static_cast<uint8_t>(c);
}

namespace {
inline float summary_value(const void* summaries, bool bf16_summaries, size_t index) {
  return bf16_summaries ? to_float(static_cast<const bf16*>(summaries)[index])
                        : static_cast<const float*>(summaries)[index];
}
}  // namespace

// Re-quantises element i of the block's pages outside [skip_first, skip_last] (those are
// quantised by the caller).
void int8_summary_index::requantise_element(uint32_t block, uint32_t i, uint32_t skip_first,
                                            uint32_t skip_last, const void* summaries,
                                            bool bf16_summaries) {
  const size_t at = size_t(block) * len_ + i;
  const float lo = lo_[at], step = step_[at];
  const bool up = i < len_ / 2;
  const uint32_t first = block * block_pages_;
  const uint32_t end = std::min(pages_, first + block_pages_);
  for (uint32_t p = first; p < end; ++p) {
    if (p >= skip_first && p <= skip_last) continue;
    const float v = summary_value(summaries, bf16_summaries, size_t(p) * len_ + i);
    page_codes(p)[i] = std::isfinite(v) ? quantise(v, lo, step, up) : 0;
  }
}

void int8_summary_index::update_pages(uint32_t first, uint32_t last, const void* summaries,
                                      bool bf16_summaries) {
  PNMKV_CHECK(!empty(), "update of an empty int8 summary index");
  PNMKV_CHECK(first <= last && first <= pages_ && last < capacity_pages_, "first=", first,
              " last=", last, " pages=", pages_, " capacity=", capacity_pages_);
  constexpr float inf = std::numeric_limits<float>::infinity();
  if (last + 1 > pages_) {  // new pages, and the blocks they start (empty ranges)
    pages_ = last + 1;
    const uint32_t blocks_now = blocks(pages_);
    if (size_t(blocks_now) * len_ > lo_.size()) {
      lo_.resize(size_t(blocks_now) * len_, inf);
      hi_.resize(size_t(blocks_now) * len_, -inf);
      step_.resize(size_t(blocks_now) * len_, 0.0f);
      non_finite_.resize(blocks_now, 0);
    }
  }
  for (uint32_t b = first / block_pages_; b <= last / block_pages_; ++b) {
    const uint32_t p0 = std::max(first, b * block_pages_);
    const uint32_t p1 = std::min(last, (b + 1) * block_pages_ - 1);
    float* lo = lo_.data() + size_t(b) * len_;
    float* hi = hi_.data() + size_t(b) * len_;
    float* step = step_.data() + size_t(b) * len_;
    for (uint32_t i = 0; i < len_; ++i) {
      float mn = lo[i], mx = hi[i];
      for (uint32_t p = p0; p <= p1; ++p) {
        const float v = summary_value(summaries, bf16_summaries, size_t(p) * len_ + i);
        if (!std::isfinite(v)) {
          // Sticky: the search scans this store flat from now on (always exact).
          if (!non_finite_[b]) {
            non_finite_[b] = 1;
            ++non_finite_blocks_;
          }
          continue;
        }
        mn = std::min(mn, v);
        mx = std::max(mx, v);
      }
      if (mn > mx) mn = mx = 0.0f;  // no finite value yet
      if (mn < lo[i] || mx > hi[i]) {
        lo[i] = std::min(lo[i], mn);
        hi[i] = std::max(hi[i], mx);
        step[i] = step_of(lo[i], hi[i]);
        requantise_element(b, i, p0, p1, summaries, bf16_summaries);
      }
    }
    for (uint32_t p = p0; p <= p1; ++p) {
      uint8_t* codes = page_codes(p);
      for (uint32_t i = 0; i < len_; ++i) {
        const float v = summary_value(summaries, bf16_summaries, size_t(p) * len_ + i);
        codes[i] = std::isfinite(v) ? quantise(v, lo[i], step[i], i < len_ / 2) : 0;
      }
    }
  }
}

}  // namespace pnmkv
