// The thin reader of /proc/meminfo and the memory cgroup, and the run-level glue of the
// host-memory check (memory_guard.hpp).
#include "actors/memory_guard.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "actors/run_setup.hpp"

namespace pnmkv {

namespace {

// The whole file, or nullopt when it cannot be opened. Kernel files are small; the cap
// keeps a fake one (tests) from being read without bound.
std::optional<std::string> slurp(const std::string& path) {
  std::ifstream in(path);
  if (!in) return std::nullopt;
  constexpr size_t bytes_max = 1 << 20;
  std::string out;
  char chunk[4096];  // kernel files are a few hundred bytes: no 1 MiB buffer per read
  while (out.size() < bytes_max && in.read(chunk, sizeof chunk).gcount() > 0) {
    out.append(chunk, std::min(size_t(in.gcount()), bytes_max - out.size()));
  }
  return out;
}

struct cgroup_files {
  const char* mount;  // under root
  const char* limit;
  const char* usage;
  const char* version;
};

// The tightest headroom over `dir` and its ancestors up to `base`; nullopt when none of
// them has a limit.
result<std::optional<uint64_t>> headroom_up_from(const std::string& base, std::string dir,
                                                 const cgroup_files& f, std::string& source) {
  std::optional<uint64_t> best;
  constexpr int depth_max = 64;
  for (int depth = 0; depth < depth_max; ++depth) {
    if (auto limit_text = slurp(dir + "/" + f.limit)) {
      auto limit = parse_cgroup_limit_bytes(*limit_text);
      if (!limit) return status{errc::parse, dir + "/" + f.limit + ": " + limit.error().message()};
      if (*limit) {
        auto usage_text = slurp(dir + "/" + f.usage);
        if (!usage_text) return status{errc::io, "cannot read " + dir + "/" + f.usage};
        auto usage = parse_cgroup_usage_bytes(*usage_text);
        if (!usage) return status{errc::parse, dir + "/" + f.usage + ": " + usage.error().message()};
        uint64_t inactive = 0;
        if (auto stat_text = slurp(dir + "/memory.stat")) {
          auto in = parse_cgroup_inactive_file_bytes(*stat_text);
          if (!in) return status{errc::parse, dir + "/memory.stat: " + in.error().message()};
          inactive = *in;
        }
        const uint64_t h = cgroup_headroom_bytes(**limit, *usage, inactive);
        if (!best || h < *best) {
          best = h;
          source = std::string(f.version) + " " + dir;
        }
      }
    }
    if (dir.size() <= base.size()) break;
    dir = dir.substr(0, dir.rfind('/'));
  }
  return best;
}

}  // namespace

result<host_memory> read_host_memory(const std::string& root) {
  host_memory out;
  const std::string meminfo_path = root + "/proc/meminfo";
  auto meminfo = slurp(meminfo_path);
  if (!meminfo) return status{errc::io, "cannot read " + meminfo_path};
  auto avail = parse_meminfo_available_bytes(*meminfo);
  if (!avail) return avail.error();
  out.meminfo_available_bytes = *avail;

  // /proc/self/cgroup: "0::/path" (v2) and "N:memory:/path" (v1), one line per hierarchy.
  std::string v2_path, v1_path;
  bool v2 = false, v1 = false;
  if (auto groups = slurp(root + "/proc/self/cgroup")) {
    std::istringstream lines(*groups);
    std::string line;
    while (std::getline(lines, line)) {
      const size_t a = line.find(':'), b = a == std::string::npos ? a : line.find(':', a + 1);
      if (b == std::string::npos) continue;
      const std::string id = line.substr(0, a), ctrls = line.substr(a + 1, b - a - 1);
      std::string path = line.substr(b + 1);
      if (path == "/") path.clear();
      if (id == "0" && ctrls.empty()) {
        v2 = true;
        v2_path = path;
      }
      std::istringstream cs(ctrls);
      std::string c;
      while (std::getline(cs, c, ','))
        if (c == "memory") {
          v1 = true;
          v1_path = path;
        }
    }
  }
  // In a container with its own cgroup namespace the path may not exist under the mount:
  // then the mount's root is the container's group.
  auto look = [&](const cgroup_files& f, const std::string& path) -> result<std::optional<uint64_t>> {
    const std::string base = root + f.mount;
    std::string dir = base + path;
    if (!slurp(dir + "/" + f.limit)) dir = base;
    return headroom_up_from(base, dir, f, out.cgroup_source);
  };
  const cgroup_files v2_files{"/sys/fs/cgroup", "memory.max", "memory.current", "cgroup v2"};
  const cgroup_files v1_files{"/sys/fs/cgroup/memory", "memory.limit_in_bytes",
                              "memory.usage_in_bytes", "cgroup v1"};
  if (v1) {
    auto h = look(v1_files, v1_path);
    if (!h) return h.error();
    out.cgroup_headroom_bytes = *h;
  }
  if (v2) {
    auto h = look(v2_files, v2_path);
    if (!h) return h.error();
    if (*h && (!out.cgroup_headroom_bytes || **h < *out.cgroup_headroom_bytes))
      out.cgroup_headroom_bytes = *h;
  }
  return out;
}

run_memory_query run_memory_query_of(const run_setup& s, run_processes where,
                                     uint64_t after_run_bytes) {
  run_memory_query q;
  q.shape = s.placement;
  q.live_layers = s.device.live_layers;
  q.devices = s.devices;
  q.pool_devices = s.pool_devices;
  if (s.open_workload()) {
    for (const auto& r : s.arrivals) q.request_tokens.push_back(r.prompt_tokens + r.output_tokens);
    std::sort(q.request_tokens.begin(), q.request_tokens.end(), std::greater<>());
    if (s.serving.batch_max > 0 && q.request_tokens.size() > s.serving.batch_max)
      q.request_tokens.resize(s.serving.batch_max);
    q.device_bytes_cap = s.device.memory_bytes_max;
  } else {
    q.request_tokens.assign(s.batch, s.context_tokens + s.steps);
  }
  q.prefill_chunk_tokens = s.host.prefill_chunk_tokens;
  q.prefill_window_chunks = s.prefill_window_chunks;
  if (s.host.mode == run_mode::baseline) q.recall_cache_tokens = s.host.recall_cache_tokens;
  if (where == run_processes::multiprocess) q.node_processes = s.devices + 2;  // coordinator, GPU host, devices
  q.after_run_bytes = after_run_bytes;
  return q;
}

status check_run_memory(const run_setup& s, run_processes where, uint64_t after_run_bytes) {
  auto need = estimate_run_memory(run_memory_query_of(s, where, after_run_bytes));
  if (!need) return need.error();
  const run_spec& c = s.spec;
  auto now = [](const char* key, uint64_t value) { return std::string(key) + " (now " + std::to_string(value) + ")"; };
  std::string hint = now("workload.context_tokens", c.workload.context_tokens) + ", ";
  if (s.open_workload())
    hint += now("workload.batch_max", c.workload.batch_max) + " (0: every request at once), " +
            now("cluster.device_memory_bytes_max", c.cluster.device_memory_bytes_max) +
            " (0: derived from this machine), ";
  else
    hint += now("workload.batch", c.workload.batch) + ", ";
  hint += now("cluster.live_layers", c.cluster.live_layers);
  if (s.replication > 1) hint += ", " + now("cluster.replication", c.cluster.replication);
  if (where == run_processes::multiprocess)
    hint += ", or run embedded (without --multiprocess: one process instead of " +
            std::to_string(s.devices + 3) + ")";
  return check_run_memory(*need, s.host_mem, hint);
}

result<uint64_t> derived_device_memory_bytes(const run_setup& s, run_processes where) {
  auto e = estimate_run_memory(run_memory_query_of(s, where, 0));
  // A shape the estimate refuses is refused again, with its reason, by check_run_memory.
  const uint64_t working = e ? e->working_bytes() : 0;
  const uint64_t bytes = default_device_memory_bytes(s.host_mem, working, s.devices);
  if (bytes == 0)
    return status{errc::capacity,
                  "not enough memory on this machine for the devices' KV: the run's working "
                  "memory (" + std::to_string(working) + " bytes: page overhead, prefill chunks "
                  "in flight, processes) leaves nothing of the " +
                  std::to_string(s.host_mem.usable_bytes()) + " usable bytes (" +
                  s.host_mem.describe() + "). Set cluster.device_memory_bytes_max (now 0: derived "
                  "from this machine), or shrink the run with run.prefill_window_chunks or "
                  "fewer cluster.pnm_devices"};
  return bytes;
}

}  // namespace pnmkv
