// Flops and bytes of the device kernels, and the roofline they are held to on a CPU:
// a kernel that does F flops over B bytes cannot run faster than max(B / read bandwidth,
// F / compute peak). Shared by `pnmkv bench kernels` (each kernel against its roofline)
// and the run report's step-time bound, so both count the same work the same way.
//
// What is counted: a fused multiply-add is 2 flops (one per lane of q·k, q·summary or
// p·V). The softmax's exp, max and rescale per (head, token) and the per-call set-up
// (weight rows, normalisation) are NOT counted: they are O(group) per token against the
// O(group · head_dim) FMAs, a few per cent at head_dim 128. Leaving them out keeps the
// roofline a true upper bound on speed (the bound is reachable only if they are free).
#pragma once

#include <cstdint>

#include "core/kv_store.hpp"
#include "core/score.hpp"

namespace pnmkv {

struct kernel_work {
  double flops = 0;  // 2 per FMA
  double bytes = 0;  // bytes the kernel must read from memory (each once)

  // flops / bytes; 0 when no bytes are read.
  double flop_per_byte() const { return bytes > 0 ? flops / bytes : 0; }
  kernel_work& operator+=(const kernel_work& o) {
    flops += o.flops;
    bytes += o.bytes;
    return *this;
  }
};

// Quest scoring of `pages` pages (score_pages). Per page the summary is [max_d, min_d]:
// 2·d values of 2 (bf16) or 4 (fp32) bytes. `max` aggregation scores each of the group's
// query heads: group · 2d FMAs = 4·group·d flops per page, so with bf16 summaries
// AI = 4·g·d / 4d = g flop/byte (g/2 with fp32). `sum` adds the heads' weight rows into
// one row first: 2d FMAs = 4d flops per page, AI = 1 (bf16) whatever the group.
kernel_work score_work(uint32_t head_dim, summary_precision summaries, uint32_t group,
                       gqa_aggregation aggregation, uint64_t pages);

// Attention of a group over `tokens` K/V rows (attend_pages, any page split): per token
// and head d FMAs for q·k and d for p·V, so 4·group·d flops over the 2·d bf16 of K and V
// (4d bytes): AI = g flop/byte. Dense attention is the same kernel over every token.
kernel_work attend_work(uint32_t head_dim, uint32_t group, uint64_t tokens);

// The attainable bandwidth of a kernel of the given intensity: min(read_gbps,
// peak_gflops / AI), in GB/s of the kernel's own bytes. AI = 0 (pure read) gives
// read_gbps. read_gbps and peak_gflops must be > 0.
double roofline_gbps(double read_gbps, double peak_gflops, double flop_per_byte);

// The least time the work can take: max(bytes / read bandwidth, flops / peak), seconds.
double roofline_seconds(const kernel_work& w, double read_gbps, double peak_gflops);

}  // namespace pnmkv
