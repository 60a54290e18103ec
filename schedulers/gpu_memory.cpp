#include "schedulers/gpu_memory.hpp"

namespace pnmkv {

gpu_memory_use gpu_memory(const model_shape& m, const hardware_spec& hw, const gpu_memory_query& q) {
  gpu_memory_use u;
  const double tp = q.tp ? q.tp : 1;
  u.capacity_bytes = tp * (hw.gpu.memory_bytes - hw.gpu.reserved_bytes);
  u.weights_bytes = m.params_from_shape() * 2.0;
  u.activations_bytes = double(q.batch) * (4.0 * m.hidden + 2.0 * m.ffn) * 2.0;
  const double pages = double((q.context_tokens + q.page_size_tokens - 1) / q.page_size_tokens);
  const double heads_all_layers = double(m.kv_heads) * m.layers * q.batch;
  const double kv_per_token_head = double(m.kv_bytes_per_token_per_head());
  switch (q.mode) {
    case run_mode::baseline:
      if (q.summaries_resident)
        u.summaries_bytes = pages * 2.0 * m.head_dim * q.summary_elem_bytes * heads_all_layers;
      u.recall_bytes = 2.0 * double(q.budget_tokens) * kv_per_token_head * m.kv_heads * q.batch;
      break;
    case run_mode::png_kv:
      u.steady_bytes = double(q.steady_tokens) * kv_per_token_head * heads_all_layers;
      [[fallthrough]];
    case run_mode::pnm_kv:
      u.partials_bytes = double(q.batch) * m.q_heads * (m.head_dim + 1) * 4.0;
      break;
    case run_mode::gpu_only:
      // Every request's K/V and summaries, whole pages; the tp GPUs share them (capacity).
      u.kv_bytes = pages * q.page_size_tokens * kv_per_token_head * heads_all_layers;
      u.summaries_bytes = pages * 2.0 * m.head_dim * q.summary_elem_bytes * heads_all_layers;
      break;
  }
  return u;
}

uint32_t max_batch(const model_shape& m, const hardware_spec& hw, gpu_memory_query q,
                   uint32_t batch_max) {
  // Memory grows linearly with the batch: binary search for the last batch that fits.
  uint32_t lo = 0, hi = batch_max;
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo + 1) / 2;
    q.batch = mid;
    if (gpu_memory(m, hw, q).fits()) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

}  // namespace pnmkv
