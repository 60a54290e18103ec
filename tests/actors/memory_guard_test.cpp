// "Never killed for memory" (actors/memory_guard.hpp): the reader of /proc/meminfo and the
// memory cgroup on fake trees (v2 and v1, tightest ancestor, malformed files), and whole
// runs too large for any machine refused before they allocate — embedded and
// multi-process, closed and open — in well under a second, naming the bytes and the keys.
#include <gtest/gtest.h>

#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "actors/cluster.hpp"
#include "actors/memory_guard.hpp"
#include "actors/node_main.hpp"
#include "actors/run_setup.hpp"

namespace pnmkv {
namespace {

namespace fs = std::filesystem;

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

struct fake_root {
  fs::path dir;
  fake_root() {
    char tmpl[] = "/tmp/pnmkv-memtest-XXXXXX";
    dir = mkdtemp(tmpl);
  }
  ~fake_root() { fs::remove_all(dir); }
  void put(const std::string& path, const std::string& text) const {
    fs::create_directories((dir / path.substr(1)).parent_path());
    std::ofstream(dir / path.substr(1)) << text;
  }
};

TEST(memory_guard, reads_meminfo_and_the_tightest_cgroup_v2_ancestor) {
  fake_root r;
  r.put("/proc/meminfo", "MemTotal: 33554432 kB\nMemAvailable: 25165824 kB\n");  // 24 GiB
  r.put("/proc/self/cgroup", "0::/outer/inner\n");
  // inner: 8 GiB limit, 3 GiB used of which 1 GiB inactive file cache: 6 GiB headroom.
  r.put("/sys/fs/cgroup/outer/inner/memory.max", "8589934592\n");
  r.put("/sys/fs/cgroup/outer/inner/memory.current", "3221225472\n");
  r.put("/sys/fs/cgroup/outer/inner/memory.stat", "anon 1\ninactive_file 1073741824\n");
  // outer: 4 GiB limit, 1 GiB used: 3 GiB headroom, the tighter.
  r.put("/sys/fs/cgroup/outer/memory.max", "4294967296\n");
  r.put("/sys/fs/cgroup/outer/memory.current", "1073741824\n");
  r.put("/sys/fs/cgroup/memory.max", "max\n");
  auto h = read_host_memory(r.dir.string());
  ASSERT_TRUE(h) << h.error().to_string();
  EXPECT_EQ(h->meminfo_available_bytes, 24ull << 30);
  ASSERT_TRUE(h->cgroup_headroom_bytes);
  EXPECT_EQ(*h->cgroup_headroom_bytes, 3ull << 30);
  EXPECT_EQ(h->available_bytes(), 3ull << 30);
  EXPECT_NE(h->cgroup_source.find("cgroup v2"), std::string::npos);
  EXPECT_NE(h->cgroup_source.find("/sys/fs/cgroup/outer"), std::string::npos);
  EXPECT_EQ(h->cgroup_source.find("inner"), std::string::npos);
}

TEST(memory_guard, reads_cgroup_v1_and_no_limit) {
  fake_root r;
  r.put("/proc/meminfo", "MemAvailable: 1048576 kB\n");  // 1 GiB
  r.put("/proc/self/cgroup", "5:cpu,cpuacct:/x\n4:memory:/job\n0::/\n");
  r.put("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "9223372036854771712\n");
  r.put("/sys/fs/cgroup/memory/job/memory.usage_in_bytes", "456622080\n");
  r.put("/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n");
  auto h = read_host_memory(r.dir.string());
  ASSERT_TRUE(h) << h.error().to_string();
  EXPECT_FALSE(h->cgroup_headroom_bytes);
  EXPECT_EQ(h->available_bytes(), 1ull << 30);
  // A v1 limit below MemAvailable decides.
  r.put("/sys/fs/cgroup/memory/job/memory.limit_in_bytes", "956622080\n");
  h = read_host_memory(r.dir.string());
  ASSERT_TRUE(h) << h.error().to_string();
  ASSERT_TRUE(h->cgroup_headroom_bytes);
  EXPECT_EQ(*h->cgroup_headroom_bytes, 500000000u);
  EXPECT_EQ(h->available_bytes(), 500000000u);
}

TEST(memory_guard, malformed_files_are_errors_naming_the_file) {
  fake_root r;
  auto none = read_host_memory(r.dir.string());
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message().find("/proc/meminfo"), std::string::npos);
  r.put("/proc/meminfo", "MemAvailable: plenty\n");
  auto bad = read_host_memory(r.dir.string());
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code(), errc::parse);
  r.put("/proc/meminfo", "MemAvailable: 1048576 kB\n");
  r.put("/proc/self/cgroup", "0::/g\n");
  r.put("/sys/fs/cgroup/g/memory.max", "lots\n");
  auto bad_cg = read_host_memory(r.dir.string());
  ASSERT_FALSE(bad_cg);
  EXPECT_NE(bad_cg.error().message().find("/sys/fs/cgroup/g/memory.max"), std::string::npos)
      << bad_cg.error().message();
}

TEST(memory_guard, this_machine_is_readable) {
  auto h = read_host_memory();
  ASSERT_TRUE(h) << h.error().to_string();
  EXPECT_GT(h->available_bytes(), 0u);
}

uint64_t rss_bytes() {
  std::ifstream in("/proc/self/statm");
  uint64_t size = 0, resident = 0;
  in >> size >> resident;
  return resident * uint64_t(sysconf(_SC_PAGESIZE));
}

config load(std::vector<std::string> sets) {
  auto c = load_config(default_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  return *c;
}

// 64 requests of 4M tokens: ~1.2 TB of live-layer KV, more than any machine this runs on.
const std::vector<std::string> too_large = {"workload.context_tokens=4194304", "workload.batch=64"};

void expect_refusal(const status& st, const std::vector<std::string>& says) {
  EXPECT_EQ(st.code(), errc::capacity);
  // A machine whose free memory is below even the run's working memory (others' processes
  // took it: parallel tests, a loaded host) refuses it one check earlier, deriving the
  // devices' memory, with that check's reason and keys: as right a refusal.
  if (st.message().find("leaves nothing of the") != std::string::npos) {
    for (const char* s : {"MemAvailable", "cluster.device_memory_bytes_max", "cluster.pnm_devices"})
      EXPECT_NE(st.message().find(s), std::string::npos) << s << " in: " << st.message();
    return;
  }
  for (const auto& s : says) EXPECT_NE(st.message().find(s), std::string::npos) << s << " in: " << st.message();
}

TEST(memory_guard, too_large_run_is_refused_at_once_with_nothing_allocated) {
  const config cfg = load(too_large);
  // Warm up what any first run touches (libraries, the config schema) outside the measure.
  (void)make_run_setup(cfg, "warm-up");
  const uint64_t rss_before = rss_bytes();
  const auto t0 = std::chrono::steady_clock::now();
  auto rep = run_embedded(cfg, {});
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const uint64_t rss_after = rss_bytes();
  ASSERT_FALSE(rep);
  EXPECT_LT(elapsed_s, 1.0);
  // Nothing of the run's size (hundreds of GB) is allocated: a few MiB of bookkeeping at
  // most, more under AddressSanitizer (its allocator keeps freed blocks in quarantine).
#if defined(__SANITIZE_ADDRESS__)
  constexpr uint64_t growth_max_bytes = 64ull << 20;
#else
  constexpr uint64_t growth_max_bytes = 8ull << 20;
#endif
  EXPECT_LT(rss_after, rss_before + growth_max_bytes)
      << "RSS grew from " << rss_before << " to " << rss_after;
  expect_refusal(rep.error(), {"needs about", "bytes", "is available", "MemAvailable",
                               "workload.context_tokens (now 4194304)", "workload.batch (now 64)",
                               "cluster.live_layers (now 1)"});
}

TEST(memory_guard, too_large_multiprocess_run_spawns_nothing) {
  const config cfg = load(too_large);
  char tmpl[] = "/tmp/pnmkv-memtest-XXXXXX";
  const fs::path parent = mkdtemp(tmpl);
  const fs::path work = parent / "work";
  const auto t0 = std::chrono::steady_clock::now();
  auto rep = run_multiprocess(cfg, {}, multiprocess_options{"/nonexistent/pnmkv", work.string()});
  const double elapsed_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(rep);
  EXPECT_LT(elapsed_s, 1.0);
  EXPECT_FALSE(fs::exists(work)) << "the work directory was made before the refusal";
  expect_refusal(rep.error(), {"needs about", "workload.batch (now 64)", "without --multiprocess"});
  fs::remove_all(parent);
}

TEST(memory_guard, open_workload_is_bounded_by_the_derived_device_memory) {
  // 64 requests of ~4M tokens arriving at once. With the derived default the coordinator
  // admits only what fits and the rest wait: the run may start.
  std::vector<std::string> sets = {"workload.arrivals=poisson", "workload.requests=64",
                                   "workload.arrival_rate_per_s=1000",
                                   "workload.context_tokens=4194304", "workload.output_tokens=4"};
  auto su = make_run_setup(load(sets), "test");
  ASSERT_TRUE(su) << su.error().to_string();
  EXPECT_TRUE((*su)->device_memory_derived);
  EXPECT_TRUE(check_run_memory(**su, run_processes::embedded, 0)) ;
  const auto q = run_memory_query_of(**su, run_processes::embedded, 0);
  auto e = estimate_run_memory(q);
  ASSERT_TRUE(e);
  EXPECT_LE(e->total_bytes(), (*su)->host_mem.usable_bytes());
  // An explicit cap as large as the workload: every request may be admitted at once, and
  // that does not fit.
  sets.push_back("cluster.device_memory_bytes_max=1000000000000000");
  auto big = make_run_setup(load(sets), "test");
  ASSERT_TRUE(big) << big.error().to_string();
  EXPECT_FALSE((*big)->device_memory_derived);
  auto st = check_run_memory(**big, run_processes::embedded, 0);
  ASSERT_FALSE(st);
  expect_refusal(st, {"workload.batch_max (now 0)", "cluster.device_memory_bytes_max (now 1000000000000000)"});
}

TEST(memory_guard, derived_device_memory_leaves_room_for_the_working_buffers) {
  auto su = make_run_setup(load({}), "test");
  ASSERT_TRUE(su) << su.error().to_string();
  const auto& s = **su;
  ASSERT_TRUE(s.device_memory_derived);
  EXPECT_EQ(s.cfg.get_int("cluster.device_memory_bytes_max"), int64_t(s.device.memory_bytes_max));
  auto e = estimate_run_memory(run_memory_query_of(s, run_processes::embedded, 0));
  ASSERT_TRUE(e);
  EXPECT_LE(s.device.memory_bytes_max * s.devices + e->working_bytes(), s.host_mem.usable_bytes());
  // An explicit value is kept as given.
  auto fixed = make_run_setup(load({"cluster.device_memory_bytes_max=12884901888"}), "test");
  ASSERT_TRUE(fixed);
  EXPECT_EQ((*fixed)->device.memory_bytes_max, 12884901888u);
}

}  // namespace
}  // namespace pnmkv
