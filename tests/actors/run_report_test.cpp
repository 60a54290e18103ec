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

// Device losses carry when they were detected (wall clock, UTC ms) so an outside fault
// injector can measure detection time: the JSON keeps every field, the table prints the time
// in ISO 8601 with milliseconds.
TEST(run_report, device_losses_round_trip_with_their_detection_time) {
  run_report r;
  r.devices_lost = {101, 102};
  // 2026-12-03T05:18:42.928Z and a second, distinct loss.
  r.device_losses = {{101, 317, "the fabric lost it", 1796275122928},
                     {102, 1581, "the coordinator lost its link", 1796275154518}};
  const std::string text = r.to_json();
  const auto j = nlohmann::json::parse(text);
  const auto& losses = j.at("faults").at("device_losses");
  ASSERT_EQ(losses.size(), 2u);
  EXPECT_EQ(losses[0].at("detected_utc"), "2026-12-03T05:18:42.928Z");
  EXPECT_EQ(losses[1].at("steps_done").get<uint32_t>(), 1581u);

  const run_report back = run_report::from_json(text);
  ASSERT_EQ(back.device_losses.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back.device_losses[i].device, r.device_losses[i].device);
    EXPECT_EQ(back.device_losses[i].steps_done, r.device_losses[i].steps_done);
    EXPECT_EQ(back.device_losses[i].reason, r.device_losses[i].reason);
    EXPECT_EQ(back.device_losses[i].detected_unix_ms, r.device_losses[i].detected_unix_ms);
  }
  const std::string table = r.to_table();
  EXPECT_NE(table.find("2026-12-03T05:18:42.928Z after 317 decode steps: the fabric lost it"), std::string::npos)
      << table;
}

}  // namespace
}  // namespace pnmkv
