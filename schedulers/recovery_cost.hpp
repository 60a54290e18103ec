// What rebuilding a shard after a device loss costs on the modelled hardware
// (docs/DESIGN.md §7): re-replication copies a live copy, recompute re-prefills the lost
// tokens. Charged as a stall of the decode step it delays (host_engine::charge_recovery:
// nothing of the step overlaps a rebuild chunk, which is what the live cluster does —
// chunks run at step boundaries, or while a step waits for the recomputed shard).
// Pure functions of the cost model (model/cost_model.hpp) and the hardware file.
#pragma once

#include <cstdint>

#include "model/cost_model.hpp"

namespace pnmkv {

// A chunk of `kv_bytes` (K and V of every model layer it stands for) copied from a live copy
// to the new device through the host, as the emulator moves it: the source reads it out
// (pnm_compute on its bytes), the link carries it to the host and on to the target (two
// link transfers), the target stores it (pnm_compute on its bytes). In series. Passive
// expanders (baseline) read and store at their DDR rate (expander_read) instead.
op_cost copy_chunk_cost(const cost_model& c, double kv_bytes, bool passive_expander);

// Recomputing `tokens` consecutive tokens whose first has `prefix_tokens` tokens before it,
// as one chunk of a chunked prefill on one GPU: every model layer's dense part over the
// chunk as a batch (gpu_dense_layer), and its attention over the prefix and itself, causal
// (gpu_attention: the KV of every KV head read once per layer, q·k and p·v for every
// query head). Writing the result to a device is charged apart (rebuild_write_cost).
op_cost recompute_chunk_cost(const cost_model& c, uint64_t tokens, uint64_t prefix_tokens);

// The rebuilt KV (`kv_bytes`, every model layer it stands for) written to its new device:
// the link transfer and the device storing it.
op_cost rebuild_write_cost(const cost_model& c, double kv_bytes, bool passive_expander);

}  // namespace pnmkv
