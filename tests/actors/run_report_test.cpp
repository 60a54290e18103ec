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

// Recovery and stopping: a node shutdown is not a request failure (its own list, under
// faults), the fenced-message count, an early stop with its steps, and each completed
// request's digest survive to_json → from_json under the documented keys; the table shows
// them apart from the failed requests.
TEST(run_report, recovery_fields_round_trip_and_shutdowns_are_not_failures) {
  run_report r;
  r.submitted = 3;
  r.completed = 1;
  r.failed = 1;
  r.failures = {"request 1: device 102 went down (killed): device 102 held the last copy of shard 0"};
  r.shutdown_events = {"device 101 killed after the grace period"};
  r.fenced_messages = 7;
  r.stopped = "SIGINT to the launcher";
  r.steps_done = 42;
  r.request_digests = {{2, 0x059b5dd22d809826ull}, {3, 0xfedcba9876543210ull}};

  const std::string text = r.to_json();
  const auto j = nlohmann::json::parse(text);
  EXPECT_EQ(j.at("requests").at("failures").size(), 1u);
  EXPECT_EQ(j.at("faults").at("shutdown_events").at(0), "device 101 killed after the grace period");
  EXPECT_EQ(j.at("faults").at("fenced_messages").get<uint64_t>(), 7u);
  EXPECT_EQ(j.at("requests").at("stopped"), "SIGINT to the launcher");
  EXPECT_EQ(j.at("requests").at("steps_done").get<uint64_t>(), 42u);
  EXPECT_EQ(j.at("requests").at("output_digests").at(0).at("output_digest"), "059b5dd22d809826");

  const run_report back = run_report::from_json(text);
  EXPECT_EQ(back.failures, r.failures);
  EXPECT_EQ(back.shutdown_events, r.shutdown_events);
  EXPECT_EQ(back.fenced_messages, r.fenced_messages);
  EXPECT_EQ(back.stopped, r.stopped);
  EXPECT_EQ(back.steps_done, r.steps_done);
  EXPECT_EQ(back.request_digests, r.request_digests);

  const std::string table = r.to_table();
  EXPECT_NE(table.find("node shutdown"), std::string::npos) << table;
  EXPECT_NE(table.find("stopped early"), std::string::npos) << table;
  EXPECT_NE(table.find("42 steps done, 1 requests unfinished"), std::string::npos) << table;
  EXPECT_NE(table.find("7 dropped"), std::string::npos) << table;
  // The shutdown event is not listed among the failed requests.
  const size_t failed_rows = [&] {
    size_t n = 0;
    for (size_t at = table.find("    failed "); at != std::string::npos; at = table.find("    failed ", at + 1)) ++n;
    return n;
  }();
  EXPECT_EQ(failed_rows, 1u) << table;
}

}  // namespace
}  // namespace pnmkv
