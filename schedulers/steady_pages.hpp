// PnG-KV steady pages (docs/DESIGN.md §2): pages selected in almost every recent step are
// copied once to GPU memory and attended there while the devices select among the rest.
// The policy is pluggable; the first one counts how often each page was selected over a
// sliding window of steps and keeps those at or above a threshold, most frequent first,
// capped by a page budget, re-evaluated every R steps. Pure logic (no CAF, no I/O): the
// live GPU host and the simulator share it.
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <vector>

#include "core/status.hpp"

namespace pnmkv {

struct steady_params {
  uint32_t window_steps = 16;       // selection history considered
  double threshold = 0.75;          // fraction of the window's steps a page must be in
  uint64_t budget_pages = 32;       // steady pages per (request, layer, KV head) at most
  uint32_t reevaluate_every_steps = 8;
  uint32_t warmup_steps = 4;        // no steady set before this many steps were seen
};
status validate(const steady_params& p);

class steady_policy {
 public:
  virtual ~steady_policy() = default;
  // The pages selected (ascending global ids, steady ones included) at `step`.
  virtual void record(uint32_t step, const std::vector<uint64_t>& selected_pages) = 0;
  // Whether the steady set should be re-evaluated before `step`.
  virtual bool due(uint32_t step) const = 0;
  // The new steady set (ascending global ids).
  virtual std::vector<uint64_t> evaluate(uint32_t step) = 0;
};

// Selection frequency over a sliding window, with a threshold and a budget.
class frequency_steady_policy final : public steady_policy {
 public:
  explicit frequency_steady_policy(steady_params p) : p_(p) {}
  void record(uint32_t step, const std::vector<uint64_t>& selected_pages) override;
  bool due(uint32_t step) const override;
  std::vector<uint64_t> evaluate(uint32_t step) override;

 private:
  steady_params p_;
  std::deque<std::vector<uint64_t>> window_;  // newest last
  std::map<uint64_t, uint32_t> counts_;       // page -> steps in window selecting it
  uint32_t steps_seen_ = 0;
  int64_t last_eval_step_ = -1;
};

std::unique_ptr<steady_policy> make_steady_policy(const steady_params& p);

}  // namespace pnmkv
