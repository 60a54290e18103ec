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

void int8_summary_index::requantise_element(uint32_t block, uint32_t i, const void* summaries,
                                            bool bf16_summaries) {
  float* lo = lo_.data() + size_t(block) * len_;
  float* hi = hi_.data() + size_t(block) * len_;
  const float step = step_of(lo[i], hi[i]);
  step_[size_t(block) * len_ + i] = step;
  const bool up = i < len_ / 2;
  const uint32_t first = block * block_pages_;
  const uint32_t end = std::min(pages_, first + block_pages_);
  for (uint32_t p = first; p < end; ++p) {
    const float v = summary_value(summaries, bf16_summaries, size_t(p) * len_ + i);
    page_codes(p)[i] = std::isfinite(v) ? quantise(v, lo[i], step, up) : 0;
  }
}

void int8_summary_index::update_page(uint32_t page, const void* summaries, bool bf16_summaries) {
  PNMKV_CHECK(!empty(), "update of an empty int8 summary index");
  PNMKV_CHECK(page <= pages_ && page < capacity_pages_, "page=", page, " pages=", pages_,
              " capacity=", capacity_pages_);
  const uint32_t b = page / block_pages_;
  const size_t base = size_t(page) * len_;
  if (page == pages_) {
    ++pages_;
    if (page % block_pages_ == 0) {  // a new block: its range starts at this page's values
      PNMKV_CHECK_EQ(size_t(b) * len_, lo_.size());
      lo_.resize(lo_.size() + len_);
      hi_.resize(hi_.size() + len_);
      step_.resize(step_.size() + len_, 0.0f);
      non_finite_.push_back(0);
      for (uint32_t i = 0; i < len_; ++i) {
        const float v = summary_value(summaries, bf16_summaries, base + i);
        lo_[size_t(b) * len_ + i] = std::isfinite(v) ? v : 0.0f;
        hi_[size_t(b) * len_ + i] = std::isfinite(v) ? v : 0.0f;
      }
    }
  }
  float* lo = lo_.data() + size_t(b) * len_;
  float* hi = hi_.data() + size_t(b) * len_;
  uint8_t* codes = page_codes(page);
  for (uint32_t i = 0; i < len_; ++i) {
    const float v = summary_value(summaries, bf16_summaries, base + i);
    if (!std::isfinite(v)) {
      // Sticky: the search scans this store flat from now on (always exact).
      if (!non_finite_[b]) {
        non_finite_[b] = 1;
        ++non_finite_blocks_;
      }
      codes[i] = 0;
      continue;
    }
    if (v < lo[i] || v > hi[i]) {
      lo[i] = std::min(lo[i], v);
      hi[i] = std::max(hi[i], v);
      requantise_element(b, i, summaries, bf16_summaries);
    } else {
      codes[i] = quantise(v, lo[i], step_[size_t(b) * len_ + i], i < len_ / 2);
    }
  }
}

}  // namespace pnmkv
