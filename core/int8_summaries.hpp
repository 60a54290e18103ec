// Quantised page summaries for the exact-int8 page search (core/exact_search.hpp): next to
// the bf16/fp32 Quest summaries of a store, one byte per summary element, so the search
// can bound every page's score from half the bytes and rescore exactly only the few pages
// that may make the top-k.
//
// Layout. Pages are grouped in blocks of `block_pages` consecutive local pages. Each block
// has, per summary element i (the 2·d entries [max_0..max_{d-1}, min_0..min_{d-1}] of the
// store's summaries), a range [lo_i, hi_i] holding that element of every page of the block
// (separate ranges for the max and the min vectors), and a step
//   step_i = (hi_i − lo_i) / 255, rounded up to a float (step_of),
// so lo_i + 255·step_i ≥ hi_i. A page's code c_i ∈ [0, 255] is rounded OUTWARD:
//   max elements: the least c with lo_i + step_i·c ≥ max_i  (rounded up),
//   min elements: the largest c with lo_i + step_i·c ≤ min_i (rounded down),
// so the dequantised box [min_q, max_q] contains the page's true box [min, max], and the
// Quest score over it, Σ max(q·min_q, q·max_q), is an upper bound of the page's exact
// Quest score for every query (the weights of max elements are ≥ 0, of min elements ≤ 0).
//
// Maintenance on append (prefill and decode): a page's summary can only widen as rows
// arrive; the page's codes are recomputed from its new summary, and where a value falls
// outside its block's range that element's range is widened and the element re-quantised
// for every page of the block (at most block_pages pages; ranges only widen, so each
// element's range grows a few times per block: the records of a sequence). A block that
// holds a non-finite summary value (a channel of NaN keys leaves ±inf) is marked
// `non_finite`; the search then falls back to the flat scan for that store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace pnmkv {

class int8_summary_index {
 public:
  // Pages per block: a block costs 12 bytes per element (lo, hi and step, float), of which
  // a query reads 8 (lo, step): 8/256 of the codes at 256 pages per block. Measured on the synthetic workload
  // (tests/core/exact_search_test.cpp prints it): see docs/DESIGN.md §4.
  static constexpr uint32_t default_block_pages = 256;

  int8_summary_index() = default;
  // len = 2·head_dim elements per page; capacity_pages bounds the pages ever held.
  int8_summary_index(uint32_t len, uint32_t capacity_pages, uint32_t block_pages);
  int8_summary_index(int8_summary_index&&) noexcept;
  int8_summary_index& operator=(int8_summary_index&&) noexcept;
  ~int8_summary_index();

  bool empty() const { return len_ == 0; }
  uint32_t len() const { return len_; }
  uint32_t block_pages() const { return block_pages_; }
  uint32_t blocks(uint32_t pages) const { return (pages + block_pages_ - 1) / block_pages_; }

  // The summary of local page `page` has changed. `summaries` is the store's whole summary
  // array (len elements per page, [max.., min..], bf16 or fp32 as `bf16` says): a widened
  // block range re-quantises that element of the block's other pages from it. Pages are
  // updated in order (a page's first update is for page == pages held so far, or a later
  // update of an already held page).
  void update_page(uint32_t page, const void* summaries, bool bf16) {
    update_pages(page, page, summaries, bf16);
  }
  // The same for pages [first, last] at once (one append): each block's ranges widen once
  // for all of them, so a prefill chunk quantises each page about once.
  void update_pages(uint32_t first, uint32_t last, const void* summaries, bool bf16);

  // Codes of all pages, contiguous, len bytes per page.
  const uint8_t* codes() const { return codes_.get(); }
  // Ranges of block b: len floats each; step = step_of(lo, hi), kept with them.
  const float* block_lo(uint32_t b) const { return lo_.data() + size_t(b) * len_; }
  const float* block_hi(uint32_t b) const { return hi_.data() + size_t(b) * len_; }
  const float* block_step(uint32_t b) const { return step_.data() + size_t(b) * len_; }
  // Blocks with a non-finite value among the pages held.
  uint32_t non_finite_blocks() const { return non_finite_blocks_; }

  // Bytes an index of `pages` pages of len elements holds: codes plus the lo, hi and step
  // of their blocks.
  static uint64_t bytes_for(uint32_t len, uint64_t pages, uint32_t block_pages) {
    return pages * len + (pages + block_pages - 1) / block_pages * len * 3 * sizeof(float);
  }
  // Bytes held for `pages` pages: codes plus the ranges of their blocks.
  uint64_t bytes_held(uint32_t pages) const;
  // Bytes a full bound pass over `pages` pages reads: codes, and lo and step of the blocks.
  uint64_t scan_bytes(uint32_t pages) const {
    return empty() ? 0 : uint64_t(pages) * len_ + uint64_t(blocks(pages)) * len_ * 2 * sizeof(float);
  }

  // step = (hi − lo) / 255 rounded up to a float, so lo + 255·step ≥ hi (0 when hi == lo).
  static float step_of(float lo, float hi);
  // The outward code of v in [lo, hi] (max elements round up, min elements down).
  static uint8_t quantise(float v, float lo, float step, bool round_up);

 private:
  void requantise_element(uint32_t block, uint32_t i, uint32_t skip_first, uint32_t skip_last,
                          const void* summaries, bool bf16);
  uint8_t* page_codes(uint32_t page) { return codes_.get() + size_t(page) * len_; }

  struct free_deleter {
    void operator()(void* p) const;
  };
  uint32_t len_ = 0;
  uint32_t capacity_pages_ = 0;
  uint32_t block_pages_ = default_block_pages;
  uint32_t pages_ = 0;  // pages seen so far
  uint32_t non_finite_blocks_ = 0;
  std::unique_ptr<uint8_t[], free_deleter> codes_;  // capacity_pages × len, 64-byte aligned
  std::vector<float> lo_, hi_, step_;               // per block × len (grown as blocks start)
  std::vector<uint8_t> non_finite_;                 // per block
};

}  // namespace pnmkv
