// The run report's JSON is a contract (README, experiment scripts): the wall-time roofline
// fields and the SIMD target survive to_json → from_json, and sit under the documented keys.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "actors/run_report.hpp"

namespace pnmkv {
namespace {

TEST(run_report, roofline_fields_and_simd_target_round_trip) {
  run_report r;
  r.mode = "pnm-kv";
  r.simd_target = "AVX3";
  r.step_wall_ms_p50 = 12.5;
  r.read_gbps_measured = 41.25;
  r.peak_gflops_measured = 387.5;
  r.kernel_threads = 2;
  r.live_device_bytes_per_step = 123456789;
  r.live_device_flops_per_step = 1.75e9;
  r.step_bound_ms = 4.5;
  r.step_overhead_ratio = 12.5 / 4.5;

  const std::string text = r.to_json();
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j.at("simd_target"), "AVX3");
  EXPECT_DOUBLE_EQ(j.at("wall").at("peak_gflops_measured").get<double>(), 387.5);
  EXPECT_DOUBLE_EQ(j.at("wall").at("live_device_flops_per_step").get<double>(), 1.75e9);
  EXPECT_EQ(j.at("wall").at("kernel_threads").get<uint32_t>(), 2u);

  const run_report back = run_report::from_json(text);
  EXPECT_EQ(back.simd_target, r.simd_target);
  EXPECT_DOUBLE_EQ(back.read_gbps_measured, r.read_gbps_measured);
  EXPECT_DOUBLE_EQ(back.peak_gflops_measured, r.peak_gflops_measured);
  EXPECT_EQ(back.kernel_threads, r.kernel_threads);
  EXPECT_EQ(back.live_device_bytes_per_step, r.live_device_bytes_per_step);
  EXPECT_DOUBLE_EQ(back.live_device_flops_per_step, r.live_device_flops_per_step);
  EXPECT_DOUBLE_EQ(back.step_bound_ms, r.step_bound_ms);
  EXPECT_DOUBLE_EQ(back.step_overhead_ratio, r.step_overhead_ratio);
  // And the table names the target.
  EXPECT_NE(r.to_table().find("AVX3"), std::string::npos);
}

}  // namespace
}  // namespace pnmkv
