// Flop and byte counts of the device kernels and the roofline (see roofline.hpp).
#include "core/roofline.hpp"

#include <algorithm>

#include "core/check.hpp"

namespace pnmkv {

kernel_work score_work(uint32_t head_dim, summary_precision summaries, uint32_t group,
                       gqa_aggregation aggregation, uint64_t pages) {
  PNMKV_CHECK(group >= 1, "group=", group);
  const double d = head_dim;
  const double elem_bytes = summaries == summary_precision::bf16 ? 2.0 : 4.0;
  const double rows = aggregation == gqa_aggregation::max ? double(group) : 1.0;
  kernel_work w;
  w.bytes = double(pages) * 2.0 * d * elem_bytes;
  w.flops = double(pages) * rows * 2.0 * d * 2.0;  // rows · 2d FMAs per page
  return w;
}

kernel_work attend_work(uint32_t head_dim, uint32_t group, uint64_t tokens) {
  PNMKV_CHECK(group >= 1, "group=", group);
  const double d = head_dim;
  kernel_work w;
  w.bytes = double(tokens) * 2.0 * d * 2.0;                // K and V rows, bf16
  w.flops = double(tokens) * double(group) * 2.0 * d * 2.0;  // q·k and p·V: 2d FMAs per head
  return w;
}

double roofline_gbps(double read_gbps, double peak_gflops, double flop_per_byte) {
  PNMKV_CHECK(read_gbps > 0 && peak_gflops > 0, "read_gbps=", read_gbps,
              " peak_gflops=", peak_gflops);
  PNMKV_CHECK(flop_per_byte >= 0, "flop_per_byte=", flop_per_byte);
  if (flop_per_byte == 0) return read_gbps;
  return std::min(read_gbps, peak_gflops / flop_per_byte);
}

double roofline_seconds(const kernel_work& w, double read_gbps, double peak_gflops) {
  PNMKV_CHECK(read_gbps > 0 && peak_gflops > 0, "read_gbps=", read_gbps,
              " peak_gflops=", peak_gflops);
  return std::max(w.bytes / (read_gbps * 1e9), w.flops / (peak_gflops * 1e9));
}

}  // namespace pnmkv
