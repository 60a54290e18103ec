// Host memory parsers, the run's memory estimate and the check between them (pure; see
// host_memory.hpp for what is counted and why).
#include "schedulers/host_memory.hpp"

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <limits>

#include "core/check.hpp"

namespace pnmkv {

namespace {

std::string_view trim(std::string_view s) {
  const char* ws = " \t\r\n";
  const size_t b = s.find_first_not_of(ws);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(ws);
  return s.substr(b, e - b + 1);
}

// The whole of `s` as a decimal number, or nullopt.
std::optional<uint64_t> to_u64(std::string_view s) {
  uint64_t v = 0;
  if (s.empty()) return std::nullopt;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::string quoted(std::string_view s) {
  constexpr size_t shown_max = 60;
  std::string out = "'" + std::string(s.substr(0, shown_max));
  if (s.size() > shown_max) out += "...";
  return out + "'";
}

std::string gb(uint64_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f GB", double(bytes) / 1e9);
  return buf;
}

// The value of `key` in "key value" lines (memory.stat), or nullopt when absent.
// The first line of text (trimmed) that starts with `prefix`, or nullopt.
std::optional<std::string_view> line_starting(std::string_view text, std::string_view prefix) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = trim(text.substr(pos, end - pos));
    pos = end + 1;
    if (line.substr(0, prefix.size()) == prefix) return line;
  }
  return std::nullopt;
}

result<std::optional<uint64_t>> stat_value(std::string_view text, std::string_view key) {
  const std::string prefix = std::string(key) + " ";
  const auto found = line_starting(text, prefix);
  if (!found) return std::optional<uint64_t>();
  auto v = to_u64(trim(found->substr(prefix.size())));
  if (!v)
    return status{errc::parse, "memory.stat: line " + quoted(*found) + " is not '" +
                                   std::string(key) + " <bytes>'"};
  return std::optional<uint64_t>(*v);
}

}  // namespace

result<uint64_t> parse_meminfo_available_bytes(std::string_view text) {
  if (const auto found = line_starting(text, "MemAvailable:")) {
    const std::string_view line = *found;
    std::string_view rest = trim(line.substr(13));
    // "22437488 kB": the kernel writes every memory figure of this file in kB.
    const size_t sp = rest.find(' ');
    auto kb = to_u64(sp == std::string_view::npos ? rest : rest.substr(0, sp));
    const std::string_view unit = sp == std::string_view::npos ? "" : trim(rest.substr(sp + 1));
    if (!kb || unit != "kB")
      return status{errc::parse, "/proc/meminfo: line " + quoted(line) +
                                     " is not 'MemAvailable: <number> kB'"};
    if (*kb > std::numeric_limits<uint64_t>::max() / 1024)
      return status{errc::parse, "/proc/meminfo: MemAvailable " + std::to_string(*kb) +
                                     " kB is out of range"};
    return *kb * 1024;
  }
  return status{errc::parse,
                "/proc/meminfo has no MemAvailable line (Linux 3.14 and later write one)"};
}

result<std::optional<uint64_t>> parse_cgroup_limit_bytes(std::string_view text) {
  const std::string_view t = trim(text);
  if (t == "max") return std::optional<uint64_t>();
  auto v = to_u64(t);
  if (!v)
    return status{errc::parse, "cgroup memory limit " + quoted(t) +
                                   " is neither 'max' nor a number of bytes"};
  // cgroup v1 writes "no limit" as PAGE_COUNTER_MAX × page size (9223372036854771712 with
  // 4 KiB pages); no machine has 2^62 bytes.
  if (*v >= (uint64_t{1} << 62)) return std::optional<uint64_t>();
  return std::optional<uint64_t>(*v);
}

result<uint64_t> parse_cgroup_usage_bytes(std::string_view text) {
  const std::string_view t = trim(text);
  auto v = to_u64(t);
  if (!v) return status{errc::parse, "cgroup memory usage " + quoted(t) + " is not a number of bytes"};
  return *v;
}

result<uint64_t> parse_cgroup_inactive_file_bytes(std::string_view stat_text) {
  // v1 lists the hierarchy's total next to the group's own; the total is what its limit
  // counts.
  for (std::string_view key : {"total_inactive_file", "inactive_file"}) {
    auto v = stat_value(stat_text, key);
    if (!v) return v.error();
    if (*v) return **v;
  }
  return uint64_t{0};
}

uint64_t cgroup_headroom_bytes(uint64_t limit, uint64_t usage, uint64_t inactive_file) {
  const uint64_t used = usage - std::min(usage, inactive_file);
  return limit > used ? limit - used : 0;
}

uint64_t host_memory::available_bytes() const {
  return cgroup_headroom_bytes ? std::min(meminfo_available_bytes, *cgroup_headroom_bytes)
                               : meminfo_available_bytes;
}

uint64_t host_memory::margin_bytes() const {
  return std::max<uint64_t>(available_bytes() / 10, 512ull << 20);
}

uint64_t host_memory::usable_bytes() const {
  const uint64_t a = available_bytes(), m = margin_bytes();
  return a > m ? a - m : 0;
}

std::string host_memory::describe() const {
  std::string out = "MemAvailable " + gb(meminfo_available_bytes);
  if (cgroup_headroom_bytes)
    out += ", " + cgroup_source + " headroom " + gb(*cgroup_headroom_bytes);
  else
    out += ", cgroup: no limit";
  return out;
}

result<run_memory_estimate> estimate_run_memory(const run_memory_query& q) {
  PNMKV_CHECK(q.devices > 0, "a run has devices");
  if (q.live_layers == 0 || q.live_layers > q.shape.layers)
    return status{errc::invalid_argument,
                  "live layers " + std::to_string(q.live_layers) + " outside [1, " +
                      std::to_string(q.shape.layers) + "] (the model's layers)"};
  run_memory_estimate e;
  // KV: each request placed as admission places it, on every device with unbounded room;
  // the sum over devices does not depend on which devices or pool take it.
  pool_state pool;
  const uint32_t pool_devices = q.pool_devices ? std::min(q.pool_devices, q.devices) : q.devices;
  for (uint32_t i = 0; i < pool_devices; ++i) {
    pool.device_ids.push_back(i);
    pool.free_bytes.push_back(std::numeric_limits<uint64_t>::max());
    pool.failure_domain.push_back(i);
  }
  uint64_t kv = 0, pages = 0;
  for (uint64_t tokens : q.request_tokens) {
    placement_request r = q.shape;
    r.context_tokens = tokens;
    r.decode_tokens = 0;
    pool_state trial = pool;
    auto pl = place_request(r, trial);
    if (!pl) return pl.error();
    for (const auto& [dev, bytes] : live_bytes_by_device(*pl, r.layers, q.live_layers)) kv += bytes;
    for (const auto& s : pl->shards)
      pages += s.pages_held * (s.kv_head_end - s.kv_head_begin) * q.live_layers *
               (1 + s.replica_device_ids.size());
  }
  if (q.device_bytes_cap > 0) {
    const uint64_t cap_all = q.device_bytes_cap * q.devices;
    if (kv > cap_all) {
      pages = pages * cap_all / kv;  // page index shrinks with the pages held
      kv = cap_all;
    }
  }
  e.kv_bytes = kv;
  // Per page held, measured (peak RSS less KV grows ~115 B per page of a store from 256K to
  // 1M tokens): the store's page ids and token counts (in vectors that may have doubled),
  // the device's scoring scratch and the page lists of dense-verification replies; plus
  // the kernel's page tables, 8 B per 4 KiB.
  e.page_bytes = pages * page_overhead_bytes + kv / 512;
  // Prefill: a chunk is K and V rows (bf16) of one (request, layer, KV head); on its way it
  // exists as the host's work item, the encoded message, the fabric's queued copy and the
  // device's decoded view — four copies, and one chunk per replica.
  const uint64_t chunk = std::max<uint64_t>(q.shape.page_size_tokens, q.prefill_chunk_tokens);
  e.prefill_bytes = uint64_t(q.prefill_window_chunks) * chunk * 2ull * q.shape.head_dim * 2ull *
                    4ull * q.shape.replication;
  // baseline: the GPU host keeps its recall cache's K and V (bf16) of every live layer and KV
  // head of every request it holds at once.
  e.recall_cache_bytes = uint64_t(q.request_tokens.size()) * q.recall_cache_tokens * 2ull * q.shape.head_dim *
                         2ull * q.shape.kv_heads * q.live_layers;
  e.process_bytes = process_baseline_bytes + uint64_t(q.node_processes) * node_process_bytes;
  e.after_run_bytes = q.after_run_bytes ? process_baseline_bytes + q.after_run_bytes : 0;
  return e;
}

status check_run_memory(const run_memory_estimate& need, const host_memory& have,
                        const std::string& shrink_hint) {
  const uint64_t usable = have.usable_bytes();
  if (need.total_bytes() <= usable) return {};
  return status{errc::capacity,
                "not enough memory on this machine: the run needs about " + gb(need.total_bytes()) +
                    " (" + std::to_string(need.total_bytes()) + " bytes: KV of the devices " +
                    gb(need.kv_bytes) + ", per-page overhead " + gb(need.page_bytes) +
                    ", prefill chunks in flight " + gb(need.prefill_bytes) + ", recall cache " +
                    gb(need.recall_cache_bytes) + ", processes " +
                    gb(need.process_bytes) + ") but " + gb(usable) + " (" +
                    std::to_string(usable) + " bytes) is available (" + have.describe() +
                    ", less a safety margin of " + gb(have.margin_bytes()) +
                    "). Refused before allocating anything. Shrink the run with " + shrink_hint};
}

uint64_t default_device_memory_bytes(const host_memory& have, uint64_t working_bytes,
                                     uint32_t devices) {
  PNMKV_CHECK(devices > 0, "a run has devices");
  const uint64_t usable = have.usable_bytes();
  return usable > working_bytes ? (usable - working_bytes) / devices : 0;
}

}  // namespace pnmkv
