#include "schedulers/steady_pages.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "core/check.hpp"

namespace pnmkv {

status validate(const steady_params& p) {
  if (p.window_steps < 1 || p.window_steps > 4096)
    return {errc::invalid_argument, "png.window_steps = " + std::to_string(p.window_steps) +
                                        " is outside [1, 4096]"};
  if (!(p.threshold > 0 && p.threshold <= 1))
    return {errc::invalid_argument, "png.threshold must be in (0, 1]"};
  if (p.reevaluate_every_steps < 1)
    return {errc::invalid_argument, "png.reevaluate_every_steps must be at least 1"};
  return {};
}

void frequency_steady_policy::record(uint32_t, const std::vector<uint64_t>& selected) {
  PNMKV_CHECK(std::is_sorted(selected.begin(), selected.end()), "selected pages unsorted, n=",
              selected.size());
  window_.push_back(selected);
  for (uint64_t p : selected) ++counts_[p];
  if (window_.size() > p_.window_steps) {
    for (uint64_t p : window_.front()) {
      auto it = counts_.find(p);
      PNMKV_CHECK(it != counts_.end() && it->second > 0, "page=", p, " left the window uncounted");
      if (--it->second == 0) counts_.erase(it);
    }
    window_.pop_front();
  }
  ++steps_seen_;
}

bool frequency_steady_policy::due(uint32_t step) const {
  if (steps_seen_ < p_.warmup_steps) return false;
  return last_eval_step_ < 0 || step >= last_eval_step_ + int64_t(p_.reevaluate_every_steps);
}

std::vector<uint64_t> frequency_steady_policy::evaluate(uint32_t step) {
  last_eval_step_ = step;
  const uint32_t need = static_cast<uint32_t>(std::ceil(p_.threshold * window_.size() - 1e-9));
  std::vector<std::pair<uint32_t, uint64_t>> ranked;  // (count, page)
  for (const auto& [page, count] : counts_)
    if (count >= need && count > 0) ranked.emplace_back(count, page);
  // Most frequent first; ties to the lower page: deterministic.
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  if (ranked.size() > p_.budget_pages) ranked.resize(p_.budget_pages);
  std::vector<uint64_t> out;
  for (const auto& r : ranked) out.push_back(r.second);
  std::sort(out.begin(), out.end());
  return out;
}

std::unique_ptr<steady_policy> make_steady_policy(const steady_params& p) {
  return std::make_unique<frequency_steady_policy>(p);
}

}  // namespace pnmkv
