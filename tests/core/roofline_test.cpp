// The flop and byte counts the kernel bench and the run report's step bound share
// (core/roofline.hpp), against hand calculations, and the compute-peak probe's
// bookkeeping (core/peak.hpp) on every compiled target. Nothing here is timed.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "core/peak.hpp"
#include "core/roofline.hpp"
#include "core/score.hpp"
#include "hwy/targets.h"

namespace pnmkv {
namespace {

TEST(roofline, score_max_is_group_flops_per_byte_with_bf16_summaries) {
  // 1000 pages, d = 128: summaries [max, min] = 256 bf16 = 512 bytes per page; GQA 4
  // `max` scores every head: 4 heads × 256 FMAs × 2 = 2048 flops per page.
  const kernel_work w = score_work(128, summary_precision::bf16, 4, gqa_aggregation::max, 1000);
  EXPECT_DOUBLE_EQ(w.bytes, 512000.0);
  EXPECT_DOUBLE_EQ(w.flops, 2048000.0);
  EXPECT_DOUBLE_EQ(w.flop_per_byte(), 4.0);
  // GQA 16: 16 flops per byte, the same bytes.
  const kernel_work w16 = score_work(128, summary_precision::bf16, 16, gqa_aggregation::max, 1000);
  EXPECT_DOUBLE_EQ(w16.bytes, 512000.0);
  EXPECT_DOUBLE_EQ(w16.flop_per_byte(), 16.0);
}

TEST(roofline, fp32_summaries_halve_the_intensity) {
  // 256 floats = 1024 bytes per page, same flops as bf16.
  const kernel_work w = score_work(64, summary_precision::fp32, 8, gqa_aggregation::max, 10);
  EXPECT_DOUBLE_EQ(w.bytes, 10 * 2 * 64 * 4.0);
  EXPECT_DOUBLE_EQ(w.flops, 10 * 8 * 2 * 64 * 2.0);
  EXPECT_DOUBLE_EQ(w.flop_per_byte(), 4.0);
}

TEST(roofline, score_sum_is_one_row_whatever_the_group) {
  for (uint32_t group : {1u, 4u, 16u, 64u}) {
    const kernel_work w = score_work(128, summary_precision::bf16, group, gqa_aggregation::sum, 7);
    EXPECT_DOUBLE_EQ(w.bytes, 7 * 512.0) << "group " << group;
    EXPECT_DOUBLE_EQ(w.flops, 7 * 256 * 2.0) << "group " << group;
    EXPECT_DOUBLE_EQ(w.flop_per_byte(), 1.0) << "group " << group;
  }
}

TEST(roofline, attention_is_group_flops_per_byte) {
  // 100 tokens, d = 128: K and V rows 2 × 256 bytes; per token and head 128 FMAs for q·k
  // and 128 for p·V = 512 flops; GQA 16 → 8192 flops per token over 512 bytes.
  const kernel_work w = attend_work(128, 16, 100);
  EXPECT_DOUBLE_EQ(w.bytes, 51200.0);
  EXPECT_DOUBLE_EQ(w.flops, 819200.0);
  EXPECT_DOUBLE_EQ(w.flop_per_byte(), 16.0);
  EXPECT_DOUBLE_EQ(attend_work(128, 4, 100).flop_per_byte(), 4.0);
  // No tokens: no work, intensity reported as 0 rather than NaN.
  EXPECT_DOUBLE_EQ(attend_work(128, 4, 0).flops, 0.0);
  EXPECT_DOUBLE_EQ(attend_work(128, 4, 0).flop_per_byte(), 0.0);
}

TEST(roofline, work_adds_up) {
  kernel_work w = score_work(128, summary_precision::bf16, 4, gqa_aggregation::max, 10);
  w += attend_work(128, 4, 160);
  EXPECT_DOUBLE_EQ(w.bytes, 10 * 512.0 + 160 * 512.0);
  EXPECT_DOUBLE_EQ(w.flops, 10 * 2048.0 + 160 * 2048.0);
}

TEST(roofline, attainable_bandwidth_is_the_lower_roof) {
  // 40 GB/s read, 200 Gflop/s: a kernel of 16 flop/byte is compute-bound at 12.5 GB/s,
  // one of 1 flop/byte memory-bound at 40; the ridge is at 5 flop/byte.
  EXPECT_DOUBLE_EQ(roofline_gbps(40, 200, 16), 12.5);
  EXPECT_DOUBLE_EQ(roofline_gbps(40, 200, 1), 40.0);
  EXPECT_DOUBLE_EQ(roofline_gbps(40, 200, 5), 40.0);
  EXPECT_DOUBLE_EQ(roofline_gbps(40, 200, 0), 40.0);  // a plain read
}

TEST(roofline, least_time_is_the_slower_resource) {
  // 1 GB at 10 GB/s = 0.1 s; 2 Gflop at 100 Gflop/s = 0.02 s: memory decides.
  EXPECT_DOUBLE_EQ(roofline_seconds(kernel_work{2e9, 1e9}, 10, 100), 0.1);
  // 16 Gflop over the same bytes: 0.16 s of compute decides.
  EXPECT_DOUBLE_EQ(roofline_seconds(kernel_work{16e9, 1e9}, 10, 100), 0.16);
  // Consistent with the bandwidth form: bytes / roofline_gbps is the same time.
  const kernel_work w{16e9, 1e9};
  EXPECT_DOUBLE_EQ(w.bytes / (roofline_gbps(10, 100, w.flop_per_byte()) * 1e9),
                   roofline_seconds(w, 10, 100));
}

TEST(peak, probe_runs_the_kernels_target_and_counts_flops_linearly) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(std::string("target ") + hwy::TargetName(target));
    // The probe is held to the same target as the kernels it is the roofline of.
    EXPECT_STREQ(peak_target_name(), kernel_target_name());
    EXPECT_STREQ(peak_target_name(), hwy::TargetName(target));
    float r1 = 0, r1000 = 0;
    const double f1 = fma_burst(1, &r1);
    const double f1000 = fma_burst(1000, &r1000);
    // At least 8 independent chains (FMA latency 4 × 2 pipes) of whole vectors, 2 flops
    // per lane each.
    EXPECT_GE(f1, 8 * 2.0);
    EXPECT_EQ(std::fmod(f1, 2.0), 0.0);
    EXPECT_DOUBLE_EQ(f1000, 1000 * f1);
    // The chains stay finite and near their start (1.00 .. 1.15 per lane).
    EXPECT_TRUE(std::isfinite(r1000));
    EXPECT_GT(r1000, 0.0f);
    EXPECT_LT(r1000, f1 / 2 * 1.2f);
  }
  hwy::SetSupportedTargetsForTest(0);
}

}  // namespace
}  // namespace pnmkv
