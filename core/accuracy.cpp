// Accuracy metrics of sparse attention (see accuracy.hpp).
#include "core/accuracy.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "core/check.hpp"

namespace pnmkv {

double output_relative_error(const float* o_sparse, const float* o_dense, uint32_t head_dim) {
  double diff_sq = 0;
  double ref_sq = 0;
  for (uint32_t j = 0; j < head_dim; ++j) {
    const double d = static_cast<double>(o_sparse[j]) - o_dense[j];
    diff_sq += d * d;
    ref_sq += static_cast<double>(o_dense[j]) * o_dense[j];
  }
  if (ref_sq == 0) return diff_sq == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff_sq / ref_sq);
}

result<std::vector<double>> output_relative_errors(const partial& sparse, const partial& dense) {
  if (sparse.group != dense.group || sparse.head_dim != dense.head_dim ||
      sparse.o.size() != static_cast<size_t>(sparse.group) * sparse.head_dim ||
      dense.o.size() != static_cast<size_t>(dense.group) * dense.head_dim)
    return status{errc::shape_mismatch,
                  "output_relative_errors: sparse partial is " + std::to_string(sparse.group) +
                      "x" + std::to_string(sparse.head_dim) + ", dense is " +
                      std::to_string(dense.group) + "x" + std::to_string(dense.head_dim)};
  std::vector<double> out(sparse.group);
  for (uint32_t h = 0; h < sparse.group; ++h)
    out[h] = output_relative_error(sparse.o.data() + static_cast<size_t>(h) * sparse.head_dim,
                                   dense.o.data() + static_cast<size_t>(h) * dense.head_dim,
                                   sparse.head_dim);
  return out;
}

result<std::vector<double>> dense_page_mass(const kv_head_store& store, const float* q_group,
                                            uint32_t group, float scale) {
  if (q_group == nullptr || group == 0 || group > 64)
    return status{errc::invalid_argument,
                  "dense_page_mass: group = " + std::to_string(group) +
                      " (allowed 1..64) with " + (q_group ? "a" : "no") + " query"};
  if (!std::isfinite(scale) || scale <= 0)
    return status{errc::invalid_argument, "dense_page_mass: scale must be finite and > 0"};
  const uint32_t d = store.shape().head_dim;
  PNMKV_CHECK(d % 8 == 0, "kv_head_shape keeps head_dim a multiple of 16; head_dim=", d);
  const uint32_t pages = store.page_count();
  const uint32_t page_size = store.shape().page_size_tokens;
  const double neg_inf = -std::numeric_limits<double>::infinity();
  // Pass 1: per page and head, the page's log-sum-exp of logits.
  std::vector<double> page_lse(static_cast<size_t>(group) * pages, neg_inf);
  std::vector<float> logits(static_cast<size_t>(group) * page_size);
  for (uint32_t p = 0; p < pages; ++p) {
    const bf16* kp = store.page_keys(p);
    const uint32_t n = store.page_tokens(p);
    for (uint32_t t = 0; t < n; ++t) {
      const bf16* k = kp + static_cast<size_t>(t) * d;
      for (uint32_t h = 0; h < group; ++h) {
        const float* q = q_group + static_cast<size_t>(h) * d;
        // Eight independent lanes, summed in a fixed order: vectorisable and deterministic.
        float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (uint32_t j = 0; j < d; j += 8)
          for (uint32_t l = 0; l < 8; ++l) acc[l] += q[j + l] * to_float(k[j + l]);
        const float dot = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                          ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        logits[static_cast<size_t>(h) * page_size + t] = scale * dot;
      }
    }
    for (uint32_t h = 0; h < group; ++h) {
      const float* lg = logits.data() + static_cast<size_t>(h) * page_size;
      if (n == 0) continue;
      double m = lg[0];
      for (uint32_t t = 1; t < n; ++t) m = std::max(m, static_cast<double>(lg[t]));
      double s = 0;
      for (uint32_t t = 0; t < n; ++t) s += std::exp(lg[t] - m);
      page_lse[static_cast<size_t>(h) * pages + p] = m + std::log(s);
    }
  }
  // Pass 2: normalise by each head's total.
  std::vector<double> mass(page_lse.size(), 0.0);
  for (uint32_t h = 0; h < group; ++h) {
    const double* pl = page_lse.data() + static_cast<size_t>(h) * pages;
    double m = neg_inf;
    for (uint32_t p = 0; p < pages; ++p) m = std::max(m, pl[p]);
    if (m == neg_inf) continue;  // empty store: no mass anywhere
    double s = 0;
    for (uint32_t p = 0; p < pages; ++p) s += std::exp(pl[p] - m);
    const double total = m + std::log(s);
    for (uint32_t p = 0; p < pages; ++p)
      mass[static_cast<size_t>(h) * pages + p] = std::exp(pl[p] - total);
  }
  return mass;
}

result<std::vector<double>> mass_captured(const std::vector<double>& page_mass,
                                          uint32_t group, uint32_t page_count,
                                          const std::vector<uint32_t>& selected_pages) {
  if (page_mass.size() != static_cast<size_t>(group) * page_count)
    return status{errc::shape_mismatch,
                  "mass_captured: page_mass holds " + std::to_string(page_mass.size()) +
                      " values, expected group " + std::to_string(group) + " x pages " +
                      std::to_string(page_count)};
  std::vector<uint8_t> seen(page_count, 0);
  for (uint32_t p : selected_pages) {
    if (p >= page_count)
      return status{errc::out_of_range, "mass_captured: selected page " + std::to_string(p) +
                                            " >= page_count " + std::to_string(page_count)};
    if (seen[p])
      return status{errc::invalid_argument,
                    "mass_captured: page " + std::to_string(p) + " selected twice"};
    seen[p] = 1;
  }
  std::vector<double> out(group, 0.0);
  for (uint32_t h = 0; h < group; ++h)
    for (uint32_t p : selected_pages) out[h] += page_mass[static_cast<size_t>(h) * page_count + p];
  return out;
}

bool needle_hit(const kv_head_store& store, const std::vector<uint32_t>& selected_pages,
                uint64_t position) {
  const int64_t local = store.local_page_of(position / store.shape().page_size_tokens);
  if (local < 0) return false;
  return std::find(selected_pages.begin(), selected_pages.end(),
                   static_cast<uint32_t>(local)) != selected_pages.end();
}

void accuracy_accumulator::add_rel_errors(const std::vector<double>& per_head) {
  rel_err_.insert(rel_err_.end(), per_head.begin(), per_head.end());
}

void accuracy_accumulator::add_mass(const std::vector<double>& per_head) {
  mass_.insert(mass_.end(), per_head.begin(), per_head.end());
}

void accuracy_accumulator::add_needle(bool hit) {
  ++needle_asks_;
  needle_hits_ += hit ? 1 : 0;
}

void accuracy_accumulator::add_pages_selected(uint64_t pages) {
  pages_sum_ += static_cast<double>(pages);
  ++pages_n_;
}

void accuracy_accumulator::merge(const accuracy_accumulator& o) {
  rel_err_.insert(rel_err_.end(), o.rel_err_.begin(), o.rel_err_.end());
  mass_.insert(mass_.end(), o.mass_.begin(), o.mass_.end());
  needle_asks_ += o.needle_asks_;
  needle_hits_ += o.needle_hits_;
  pages_sum_ += o.pages_sum_;
  pages_n_ += o.pages_n_;
}

accuracy_summary accuracy_accumulator::summary() const {
  accuracy_summary s;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  s.samples = rel_err_.size();
  if (!rel_err_.empty()) {
    std::vector<double> sorted = rel_err_;
    std::sort(sorted.begin(), sorted.end());
    double sum = 0;
    for (double e : sorted) sum += e;
    s.rel_err_mean = sum / static_cast<double>(sorted.size());
    // Nearest rank: the smallest value with at least 99% of samples at or below it.
    const size_t rank = static_cast<size_t>(std::ceil(0.99 * static_cast<double>(sorted.size())));
    s.rel_err_p99 = sorted[std::max<size_t>(rank, 1) - 1];
    s.rel_err_max = sorted.back();
  } else {
    s.rel_err_mean = s.rel_err_p99 = s.rel_err_max = nan;
  }
  if (!mass_.empty()) {
    std::vector<double> sorted = mass_;
    std::sort(sorted.begin(), sorted.end());
    double sum = 0;
    for (double m : mass_) sum += m;  // in arrival order
    s.mass_mean = sum / static_cast<double>(sorted.size());
    s.mass_min = sorted.front();
    // Nearest rank from below: the largest value with at most q of the samples under it.
    auto lower = [&](double q) { return sorted[static_cast<size_t>(std::floor(q * static_cast<double>(sorted.size())))]; };
    s.mass_p01 = lower(0.01);
    s.mass_p10 = lower(0.10);
  } else {
    s.mass_mean = s.mass_min = s.mass_p01 = s.mass_p10 = nan;
  }
  s.needle_asks = needle_asks_;
  s.needle_hits = needle_hits_;
  s.needle_hit_rate = needle_asks_ ? static_cast<double>(needle_hits_) / needle_asks_ : nan;
  s.pages_selected_mean = pages_n_ ? pages_sum_ / static_cast<double>(pages_n_) : nan;
  return s;
}

}  // namespace pnmkv
