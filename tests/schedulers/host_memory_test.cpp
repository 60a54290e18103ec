// Host memory (schedulers/host_memory.hpp): the /proc/meminfo and cgroup parsers on sample
// file contents (good and malformed), the run's memory estimate against the KV bytes the
// placement assigns, and the check's refusal message.
#include <gtest/gtest.h>

#include "schedulers/host_memory.hpp"

namespace pnmkv {
namespace {

const char* meminfo_sample =
    "MemTotal:       24683584 kB\n"
    "MemFree:        22106800 kB\n"
    "MemAvailable:   22437488 kB\n"
    "Buffers:          123456 kB\n"
    "HugePages_Total:       0\n";

TEST(host_memory, meminfo_available_is_read_in_bytes) {
  auto a = parse_meminfo_available_bytes(meminfo_sample);
  ASSERT_TRUE(a) << a.error().to_string();
  EXPECT_EQ(*a, 22437488ull * 1024);
  // No trailing newline, tabs for spaces.
  auto b = parse_meminfo_available_bytes("MemAvailable:\t1 kB");
  ASSERT_TRUE(b);
  EXPECT_EQ(*b, 1024u);
}

TEST(host_memory, malformed_meminfo_is_a_clear_error) {
  struct bad {
    const char* text;
    const char* says;
  };
  for (const bad& b : {bad{"MemTotal: 1 kB\nMemFree: 1 kB\n", "no MemAvailable line"},
                       bad{"", "no MemAvailable line"},
                       bad{"MemAvailable: lots kB\n", "'MemAvailable: lots kB'"},
                       bad{"MemAvailable: 12 MB\n", "is not 'MemAvailable: <number> kB'"},
                       bad{"MemAvailable: 12\n", "is not 'MemAvailable: <number> kB'"},
                       bad{"MemAvailable: -5 kB\n", "is not 'MemAvailable: <number> kB'"},
                       bad{"MemAvailable: 99999999999999999999 kB\n", "is not"},
                       bad{"MemAvailable: 18014398509481984 kB\n", "out of range"}}) {
    SCOPED_TRACE(b.text);
    auto r = parse_meminfo_available_bytes(b.text);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), errc::parse);
    EXPECT_NE(r.error().message().find(b.says), std::string::npos) << r.error().message();
  }
}

TEST(host_memory, cgroup_limits_v1_and_v2) {
  auto unlimited_v2 = parse_cgroup_limit_bytes("max\n");
  ASSERT_TRUE(unlimited_v2);
  EXPECT_FALSE(*unlimited_v2);
  // v1's "no limit" (PAGE_COUNTER_MAX × 4 KiB).
  auto unlimited_v1 = parse_cgroup_limit_bytes("9223372036854771712\n");
  ASSERT_TRUE(unlimited_v1);
  EXPECT_FALSE(*unlimited_v1);
  auto limit = parse_cgroup_limit_bytes("8589934592\n");
  ASSERT_TRUE(limit);
  ASSERT_TRUE(*limit);
  EXPECT_EQ(**limit, 8589934592ull);
  for (const char* bad : {"", "unlimited", "8G", "-1", "12 34"}) {
    SCOPED_TRACE(bad);
    auto r = parse_cgroup_limit_bytes(bad);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code(), errc::parse);
    EXPECT_NE(r.error().message().find("neither 'max' nor a number of bytes"), std::string::npos);
  }
  auto usage = parse_cgroup_usage_bytes("2202214400\n");
  ASSERT_TRUE(usage);
  EXPECT_EQ(*usage, 2202214400ull);
  auto bad_usage = parse_cgroup_usage_bytes("max");
  ASSERT_FALSE(bad_usage);
  EXPECT_NE(bad_usage.error().message().find("'max' is not a number of bytes"), std::string::npos);
}

TEST(host_memory, cgroup_stat_inactive_file) {
  // v1 has both; its hierarchical total is what the limit counts.
  auto v1 = parse_cgroup_inactive_file_bytes(
      "cache 146292736\nrss 306618368\ninactive_file 1000\ntotal_rss 306618368\n"
      "total_inactive_file 27013120\n");
  ASSERT_TRUE(v1);
  EXPECT_EQ(*v1, 27013120u);
  auto v2 = parse_cgroup_inactive_file_bytes("anon 100\nfile 900\ninactive_file 700\nactive_file 200\n");
  ASSERT_TRUE(v2);
  EXPECT_EQ(*v2, 700u);
  auto none = parse_cgroup_inactive_file_bytes("anon 100\n");
  ASSERT_TRUE(none);
  EXPECT_EQ(*none, 0u);
  auto bad = parse_cgroup_inactive_file_bytes("inactive_file many\n");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), errc::parse);
  EXPECT_NE(bad.error().message().find("'inactive_file many'"), std::string::npos);
  // Page cache the kernel reclaims counts as free; headroom never goes below 0.
  EXPECT_EQ(cgroup_headroom_bytes(1000, 800, 300), 500u);
  EXPECT_EQ(cgroup_headroom_bytes(1000, 800, 900), 1000u);
  EXPECT_EQ(cgroup_headroom_bytes(1000, 1500, 0), 0u);
}

TEST(host_memory, available_is_the_smaller_less_the_margin) {
  host_memory h;
  h.meminfo_available_bytes = 20ull << 30;
  EXPECT_EQ(h.available_bytes(), 20ull << 30);
  EXPECT_EQ(h.margin_bytes(), (20ull << 30) / 10);
  EXPECT_EQ(h.usable_bytes(), (20ull << 30) - (20ull << 30) / 10);
  h.cgroup_headroom_bytes = 3ull << 30;
  EXPECT_EQ(h.available_bytes(), 3ull << 30);
  EXPECT_EQ(h.margin_bytes(), 512ull << 20);  // the floor
  EXPECT_EQ(h.usable_bytes(), (3ull << 30) - (512ull << 20));
  h.cgroup_headroom_bytes = 100ull << 20;
  EXPECT_EQ(h.usable_bytes(), 0u);
}

// Llama-3.1-8B's KV shape (8 KV heads of 128, 32 layers), pages of 16, bf16 summaries.
run_memory_query llama8b(uint64_t tokens, uint32_t batch) {
  run_memory_query q;
  q.shape.page_size_tokens = 16;
  q.shape.layers = 32;
  q.shape.kv_heads = 8;
  q.shape.head_dim = 128;
  q.shape.summary_elem_bytes = 2;
  q.live_layers = 1;
  q.devices = 4;
  q.request_tokens.assign(batch, tokens);
  return q;
}

TEST(host_memory, estimate_counts_the_kv_the_placement_assigns) {
  // 1M tokens + 16 decode, batch 2: 65537 pages of 16 × 128 × (K + V) bf16 + 2 × 128 bf16
  // summaries, per KV head, per request, one live layer.
  const uint64_t tokens = 1048576 + 16, pages = (tokens + 15) / 16;
  const uint64_t kv = 2 * 8 * pages * (16 * 128 * 4 + 2 * 128 * 2);
  auto e = estimate_run_memory(llama8b(tokens, 2));
  ASSERT_TRUE(e) << e.error().to_string();
  EXPECT_EQ(e->kv_bytes, kv);
  EXPECT_EQ(e->page_bytes, 2 * 8 * pages * page_overhead_bytes + kv / 512);
  // The same bytes coordinator admission debits for one request, doubled.
  placement_request r = llama8b(tokens, 1).shape;
  r.context_tokens = tokens;
  pool_state pool{{100, 101, 102, 103}, std::vector<uint64_t>(4, ~0ull), {0, 1, 2, 3}};
  auto pl = place_request(r, pool);
  ASSERT_TRUE(pl);
  uint64_t admitted = 0;
  for (const auto& [dev, b] : live_bytes_by_device(*pl, 32, 1)) admitted += b;
  EXPECT_EQ(2 * admitted, kv);
  // Prefill: 16 chunks of 4096 rows of 512 B (K and V of 128 bf16), four copies.
  EXPECT_EQ(e->prefill_bytes, 16ull * 4096 * 512 * 4);
  EXPECT_EQ(e->process_bytes, process_baseline_bytes);

  // KV scales with live layers, batch, context and replication; prefill chunks and the
  // processes do not scale with the context.
  auto q = llama8b(tokens, 2);
  q.live_layers = 2;
  EXPECT_NEAR(double(estimate_run_memory(q)->kv_bytes), 2.0 * e->kv_bytes, 1e-6 * e->kv_bytes);
  auto big = estimate_run_memory(llama8b(4 * tokens, 2));
  EXPECT_NEAR(double(big->kv_bytes), 4.0 * e->kv_bytes, 1e-3 * e->kv_bytes);
  EXPECT_EQ(big->prefill_bytes, e->prefill_bytes);
  EXPECT_EQ(big->process_bytes, e->process_bytes);
  EXPECT_NEAR(double(big->page_bytes), 4.0 * e->page_bytes, 1e-3 * e->page_bytes);
  q = llama8b(tokens, 2);
  q.shape.replication = 2;
  EXPECT_NEAR(double(estimate_run_memory(q)->kv_bytes), 2.0 * e->kv_bytes, 1e-6 * e->kv_bytes);
  // Pools and head groups move the bytes between devices, not in or out of the machine.
  q = llama8b(tokens, 2);
  q.pool_devices = 2;
  EXPECT_EQ(estimate_run_memory(q)->kv_bytes, e->kv_bytes);
  // Multi-process: the launcher and one baseline per node process.
  q = llama8b(tokens, 2);
  q.node_processes = 6;
  EXPECT_EQ(estimate_run_memory(q)->process_bytes, process_baseline_bytes + 6 * node_process_bytes);
  // A later phase (the read-bandwidth buffer) counts only where it is the larger.
  q = llama8b(tokens, 2);
  q.after_run_bytes = 1ull << 30;
  EXPECT_EQ(estimate_run_memory(q)->total_bytes(), e->total_bytes());
  q = llama8b(1024, 2);
  q.after_run_bytes = 1ull << 30;
  EXPECT_EQ(estimate_run_memory(q)->total_bytes(), process_baseline_bytes + (1ull << 30));
  // baseline's recall cache on the GPU host: 2048 tokens × (K + V) 128 bf16 × 8 KV heads ×
  // 2 live layers × 2 requests = 33,554,432 B, part of the working bytes; none without it.
  EXPECT_EQ(e->recall_cache_bytes, 0u);
  q = llama8b(tokens, 2);
  q.live_layers = 2;
  q.recall_cache_tokens = 2048;
  const auto c = estimate_run_memory(q);
  EXPECT_EQ(c->recall_cache_bytes, 33554432u);
  q.recall_cache_tokens = 0;
  EXPECT_EQ(c->working_bytes(), estimate_run_memory(q)->working_bytes() + 33554432u);
}

TEST(host_memory, admission_cap_bounds_an_open_workload) {
  auto q = llama8b(1 << 20, 8);
  const uint64_t uncapped = estimate_run_memory(q)->kv_bytes;
  q.device_bytes_cap = 1ull << 30;  // 4 devices × 1 GiB
  const uint64_t capped = estimate_run_memory(q)->kv_bytes;
  EXPECT_LT(capped, uncapped);
  EXPECT_EQ(capped, 4ull << 30);
}

TEST(host_memory, bad_shape_is_an_error_not_a_crash) {
  auto q = llama8b(1 << 20, 1);
  q.live_layers = 33;
  auto e = estimate_run_memory(q);
  ASSERT_FALSE(e);
  EXPECT_NE(e.error().message().find("live layers 33 outside [1, 32]"), std::string::npos);
  q = llama8b(1 << 20, 1);
  q.shape.replication = 5;  // more copies than devices
  EXPECT_FALSE(estimate_run_memory(q));
}

TEST(host_memory, check_names_needed_available_and_the_keys) {
  auto e = estimate_run_memory(llama8b(4194304 + 16, 2));
  ASSERT_TRUE(e);
  host_memory h;
  h.meminfo_available_bytes = 22437488ull * 1024;  // the 24 GiB machine of issue 9
  auto st = check_run_memory(*e, h, "workload.context_tokens (now 4194304)");
  ASSERT_FALSE(st);
  EXPECT_EQ(st.code(), errc::capacity);
  const std::string& m = st.message();
  EXPECT_NE(m.find(std::to_string(e->total_bytes()) + " bytes"), std::string::npos) << m;
  EXPECT_NE(m.find(std::to_string(h.usable_bytes()) + " bytes"), std::string::npos) << m;
  EXPECT_NE(m.find("MemAvailable 23.0 GB"), std::string::npos) << m;
  EXPECT_NE(m.find("workload.context_tokens (now 4194304)"), std::string::npos) << m;
  // The default run of the same machine fits.
  EXPECT_TRUE(check_run_memory(*estimate_run_memory(llama8b(1048576 + 16, 2)), h, ""));
}

TEST(host_memory, default_device_memory_shares_what_is_usable) {
  host_memory h;
  h.meminfo_available_bytes = 20ull << 30;
  const uint64_t working = 300ull << 20;
  EXPECT_EQ(default_device_memory_bytes(h, working, 4), (h.usable_bytes() - working) / 4);
  // Devices × the default + working buffers never pass what is usable.
  for (uint32_t devices : {1u, 3u, 4u, 64u})
    EXPECT_LE(default_device_memory_bytes(h, working, devices) * devices + working, h.usable_bytes());
  h.cgroup_headroom_bytes = 256ull << 20;  // less than the margin
  EXPECT_EQ(default_device_memory_bytes(h, working, 4), 0u);
}

}  // namespace
}  // namespace pnmkv
