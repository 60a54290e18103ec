#include "schedulers/head_groups.hpp"

#include <algorithm>
#include <cmath>

namespace pnmkv {

std::vector<head_group_choice> rank_head_groups(const cost_model& costs, const head_group_query& q) {
  const auto& m = costs.model();
  const uint32_t P = std::max(1u, q.pool_devices);
  const double header = 96;
  const double group = m.gqa_group(), d = m.head_dim;
  const double pages = std::ceil(double(q.context_tokens) / q.page_size_tokens);
  const double budget_tokens = double(q.budget_tokens);
  std::vector<head_group_choice> out;
  for (uint32_t h = 1; h <= std::min(P, m.kv_heads); ++h) {
    if (m.kv_heads % h || P % h) continue;
    const uint32_t s = P / h;
    const double heads_per_device = double(m.kv_heads) / h;
    const double pages_per_device = pages / s;
    const bool two_rounds = s > 1 && q.cross_shard == cross_shard_selection::exact;
    // Each device scans its pages' summaries for each of its heads and attends its share of
    // the budget (local: budget/s; exact: the global top lands on the shards in proportion,
    // modelled as budget/s too).
    const double scan_bytes = heads_per_device * pages_per_device * costs.summary_bytes_per_page(q.summary_elem_bytes);
    const double attend_tokens = heads_per_device * budget_tokens / s;
    const double bytes = scan_bytes + costs.kv_bytes(attend_tokens);
    const double flops = heads_per_device * pages_per_device * costs.score_flops(1, m.gqa_group()) +
                         costs.attend_flops(attend_tokens, m.gqa_group());
    const double device_ns = costs.pnm_compute(bytes, flops).time_ns;
    // Messages: a query per (head, shard) out, a partial back; exact adds candidates back
    // and a second query out per (head, shard).
    const double msgs = double(m.kv_heads) * s;
    const double query_bytes = header + 4 * group * d;
    const double partial_bytes = header + 4 * group * (d + 1) + 4 * budget_tokens / q.page_size_tokens / s;
    double link_ns = costs.link_serialisation_ns(msgs * (query_bytes + partial_bytes)) +
                     2 * costs.link_latency_ns();
    if (two_rounds)
      link_ns += costs.link_serialisation_ns(msgs * (query_bytes + header + 8 * budget_tokens / q.page_size_tokens)) +
                 2 * costs.link_latency_ns();
    const double merge_ns = costs.gpu_merge(s, m.gqa_group()).time_ns * m.kv_heads;
    out.push_back({h, s, device_ns + link_ns + merge_ns});
  }
  std::sort(out.begin(), out.end(), [](const head_group_choice& a, const head_group_choice& b) {
    return a.layer_ns != b.layer_ns ? a.layer_ns < b.layer_ns : a.head_groups > b.head_groups;
  });
  return out;
}

head_group_choice choose_head_groups(const cost_model& costs, const head_group_query& q) {
  auto ranked = rank_head_groups(costs, q);
  if (ranked.empty()) return {1, std::max(1u, q.pool_devices), 0};
  return ranked.front();
}

}  // namespace pnmkv
