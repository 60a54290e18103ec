// What the GPU must hold for a batch in each mode, against what it has: the budget that
// admission checks and that caps baseline's batch (docs/DESIGN.md §2). Pure arithmetic on the
// model shape and the hardware file.
//
//   weights      params × 2 bytes / tp
//   activations  one layer's transient activations for the batch (bf16)
//   summaries    baseline with resident summaries: every page summary of every layer and
//                KV head of every request
//   recall       baseline: the recalled pages of one layer for the batch, double-buffered
//   steady       png-kv: the steady pages of every layer and KV head of every request
//   partials     pnm-kv / png-kv: the partials of one layer (fp32 o and lse)
//   kv           gpu-only: the whole K/V of every layer and KV head of every request (whole
//                pages, as the stores allocate them), next to its page summaries (in
//                `summaries`): the KV lives in HBM, so HBM limits admission
#pragma once

#include <cstdint>

#include "model/hardware.hpp"
#include "model/model_shape.hpp"
#include "model/modes.hpp"

namespace pnmkv {

struct gpu_memory_query {
  run_mode mode = run_mode::pnm_kv;
  uint32_t batch = 1;
  uint64_t context_tokens = 0;
  uint64_t budget_tokens = 2048;
  uint64_t steady_tokens = 0;        // png-kv: per (request, layer, KV head)
  uint32_t page_size_tokens = 16;
  uint32_t summary_elem_bytes = 2;
  uint32_t tp = 1;                   // GPUs sharing the weights (tensor parallel)
  bool summaries_resident = true;    // baseline
};

struct gpu_memory_use {
  double capacity_bytes = 0;  // memory of the tp GPUs minus their reservations
  double weights_bytes = 0, activations_bytes = 0, summaries_bytes = 0, recall_bytes = 0,
         steady_bytes = 0, partials_bytes = 0, kv_bytes = 0;
  double total_bytes() const {
    return weights_bytes + activations_bytes + summaries_bytes + recall_bytes + steady_bytes +
           partials_bytes + kv_bytes;
  }
  bool fits() const { return total_bytes() <= capacity_bytes; }
};

gpu_memory_use gpu_memory(const model_shape& m, const hardware_spec& hw, const gpu_memory_query& q);

// The largest batch that fits (q.batch is ignored); 0 when not even one request fits.
// Bounded by `batch_max`.
uint32_t max_batch(const model_shape& m, const hardware_spec& hw, gpu_memory_query q,
                   uint32_t batch_max = 1u << 20);

}  // namespace pnmkv
