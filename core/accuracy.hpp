// Accuracy of sparse (page-selected) attention against dense attention, the three figures
// docs/DESIGN.md §4 asks for: output relative error ‖o_sparse − o_dense‖₂ / ‖o_dense‖₂ per query
// head, attention mass captured (Σ dense softmax weight of the selected tokens, per query
// head) and needle hit rate (the asked needle's page was selected). Pure functions over
// partials, page lists and one dense pass over a store; an accumulator aggregates them over
// steps, heads and requests (mean, p99, max / mean, min / hits of asks).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "core/attention.hpp"
#include "core/kv_store.hpp"
#include "core/status.hpp"

namespace pnmkv {

// ‖a − b‖₂ / ‖b‖₂ over head_dim floats, in double. When ‖b‖ = 0: 0 if a = b, else +inf.
double output_relative_error(const float* o_sparse, const float* o_dense, uint32_t head_dim);

// Per query head of two partials of the same group and head_dim (shape_mismatch otherwise).
result<std::vector<double>> output_relative_errors(const partial& sparse, const partial& dense);

// Dense softmax mass of every local page of the store, per query head: element
// [h · page_count + p] = Σ over the page's tokens of softmax_h(scale · q_h·k). Each row
// sums to 1 (up to rounding). One pass over the keys, logits in fp32 per token, softmax
// sums in double with per-page log-sum-exp so nothing overflows.
result<std::vector<double>> dense_page_mass(const kv_head_store& store, const float* q_group,
                                            uint32_t group, float scale);

// Mass captured per query head: Σ page_mass[h · page_count + p] over the selected local
// pages (ascending or not; duplicates are an error, as is an index ≥ page_count).
result<std::vector<double>> mass_captured(const std::vector<double>& page_mass,
                                          uint32_t group, uint32_t page_count,
                                          const std::vector<uint32_t>& selected_pages);

// Whether the page holding global token `position` is among the selected local pages.
// False when the store does not hold that page.
bool needle_hit(const kv_head_store& store, const std::vector<uint32_t>& selected_pages,
                uint64_t position);

struct accuracy_summary {
  uint64_t samples = 0;        // query heads × steps aggregated (relative errors)
  double rel_err_mean = 0;
  double rel_err_p99 = 0;      // nearest-rank 99th percentile
  double rel_err_max = 0;
  double mass_mean = 0;
  double mass_min = 0;
  // Lower tail (nearest rank): at most 1 % / 10 % of the head-steps captured less.
  double mass_p01 = 0;
  double mass_p10 = 0;
  uint64_t needle_asks = 0;
  uint64_t needle_hits = 0;
  double needle_hit_rate = 0;  // NaN when no needle was asked
  double pages_selected_mean = 0;
};

class accuracy_accumulator {
 public:
  void add_rel_errors(const std::vector<double>& per_head);
  void add_mass(const std::vector<double>& per_head);
  void add_needle(bool hit);
  void add_pages_selected(uint64_t pages);
  void merge(const accuracy_accumulator& other);
  accuracy_summary summary() const;

 private:
  std::vector<double> rel_err_;  // every sample, for the percentile
  std::vector<double> mass_;  // every sample, for the percentiles
  uint64_t needle_asks_ = 0;
  uint64_t needle_hits_ = 0;
  double pages_sum_ = 0;
  uint64_t pages_n_ = 0;
};

}  // namespace pnmkv
