// Host memory: what a live run will hold in this machine's RAM, what the machine (and the
// cgroup the run sits in) makes available, and the check between them that refuses a run
// before it allocates instead of letting the kernel's OOM killer end it half way.
//
// Pure: the parsers take the text of /proc/meminfo and the cgroup files, the estimator
// takes the run's shape. Reading the files, and asking for a run, is
// actors/memory_guard.hpp's job.
//
// What a run holds (estimate_run_memory), checked against peak RSS of real runs (README,
// "Memory"):
//   kv          every device's K, V and summaries of the live layers for the requests it
//               holds at once — the same bytes coordinator admission debits
//               (live_bytes_by_device)
//   pages       per page held: page index, scratch, the page lists of dense-verification
//               replies, and the kernel's page tables
//   prefill     the prompt chunks in flight from the GPU host (run.prefill_window_chunks
//               of workload.prefill_chunk_tokens rows), each in a few copies on its way
//               (host work item, encoded message, fabric queue, device)
//   processes   what the launching process and each node process hold before any KV
//               (binary, libraries, the actor system, the UCX worker)
// and, as a later phase of the launching process, what it allocates after the cluster is
// gone (pnmkv run's read-bandwidth buffer).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.hpp"
#include "schedulers/placement.hpp"

namespace pnmkv {

// --- what the machine makes available ---------------------------------------------------

// MemAvailable of /proc/meminfo, in bytes. Errors (errc::parse) name the line that is
// malformed, or say that the line is missing (kernels before 3.14 lack it).
result<uint64_t> parse_meminfo_available_bytes(std::string_view meminfo_text);

// A cgroup memory limit: v2 memory.max ("max" or bytes) or v1 memory.limit_in_bytes
// (bytes; v1 writes "no limit" as a number near 2^63, anything at or above 2^62 counts as
// none). nullopt: no limit.
result<std::optional<uint64_t>> parse_cgroup_limit_bytes(std::string_view text);

// A cgroup's usage: v2 memory.current or v1 memory.usage_in_bytes (one decimal number).
result<uint64_t> parse_cgroup_usage_bytes(std::string_view text);

// Inactive file cache of a cgroup's memory.stat (v1 total_inactive_file, else
// inactive_file): page cache the kernel reclaims before it kills, so it counts as free.
// 0 when the stat has neither key; a malformed value of either key is an error.
result<uint64_t> parse_cgroup_inactive_file_bytes(std::string_view stat_text);

// What a cgroup still lets its processes take: limit − (usage − inactive file cache),
// at least 0.
uint64_t cgroup_headroom_bytes(uint64_t limit_bytes, uint64_t usage_bytes,
                               uint64_t inactive_file_bytes);

struct host_memory {
  uint64_t meminfo_available_bytes = 0;
  // The tightest headroom over the run's cgroup and its ancestors; nullopt: no limit.
  std::optional<uint64_t> cgroup_headroom_bytes;
  std::string cgroup_source;  // which file set it, e.g. "cgroup v2 /sys/fs/cgroup/x"

  // The smaller of MemAvailable and the cgroup's headroom.
  uint64_t available_bytes() const;
  // Kept back from what is available: other processes of the machine grow while the run
  // goes on, and the estimate is an estimate. max(10 %, 512 MiB) of available_bytes().
  uint64_t margin_bytes() const;
  // What a run may plan to hold: available_bytes() − margin_bytes(), at least 0.
  uint64_t usable_bytes() const;
  // "MemAvailable 22.4 GB, cgroup: no limit" (for messages).
  std::string describe() const;
};

// --- what a run holds ---------------------------------------------------------------------

struct run_memory_query {
  // The KV shape: page size, KV heads, head dim, summary bytes, layers, replication, split,
  // head groups (request_id, context_tokens and decode_tokens are ignored).
  placement_request shape;
  uint32_t live_layers = 1;
  uint32_t devices = 1;
  uint32_t pool_devices = 0;  // devices a request is placed on (0: all of them)
  // Tokens (prompt + decode) of each request the devices may hold at once.
  std::vector<uint64_t> request_tokens;
  // > 0: coordinator admission keeps every device's live bytes under this
  // (cluster.device_memory_bytes_max), so the devices hold at most devices × this however
  // many requests there are. 0: no such bound (a closed batch must fit whole).
  uint64_t device_bytes_cap = 0;
  uint64_t prefill_chunk_tokens = 4096;
  uint32_t prefill_window_chunks = 16;
  // baseline: the GPU host's recall cache, tokens per (request, live layer, KV head)
  // (schedulers/recall_cache.hpp); 0: none.
  uint64_t recall_cache_tokens = 0;
  // Multi-process: node processes on this machine besides the launching one
  // (coordinator, GPU host, one per device); 0 embedded.
  uint32_t node_processes = 0;
  // Allocated by the launching process after the cluster is gone (pnmkv run's
  // read-bandwidth buffer): a later phase, so the peak is the larger of the two.
  uint64_t after_run_bytes = 0;
};

struct run_memory_estimate {
  uint64_t kv_bytes = 0;         // devices' live-layer K, V, summaries
  uint64_t page_bytes = 0;       // per page held: page index, scratch, dense-reply page lists, page tables
  uint64_t prefill_bytes = 0;    // prompt chunks in flight
  uint64_t recall_cache_bytes = 0;  // baseline: the GPU host's cached K/V of recalled pages
  uint64_t process_bytes = 0;    // the launching process and the node processes before any KV
  uint64_t after_run_bytes = 0;  // the later phase (launching process), see the query
  uint64_t working_bytes() const { return page_bytes + prefill_bytes + recall_cache_bytes + process_bytes; }
  uint64_t total_bytes() const {
    const uint64_t during = kv_bytes + working_bytes();
    return during > after_run_bytes ? during : after_run_bytes;
  }
};

// Measured here (README, "Memory": peak RSS of `pnmkv run` at 16K-1M tokens, embedded and
// multi-process, less the KV), rounded up.
inline constexpr uint64_t process_baseline_bytes = 192ull << 20;  // the launching process
inline constexpr uint64_t node_process_bytes = 64ull << 20;       // each node process (UCX worker included)
inline constexpr uint64_t page_overhead_bytes = 128;              // per (page, layer, KV head, request, copy)

// Errors: invalid_argument for a shape place_request refuses (the message names it).
result<run_memory_estimate> estimate_run_memory(const run_memory_query& q);

// Ok when the estimate fits what the machine makes usable; else errc::capacity with a
// message naming the bytes needed (and what they are), the bytes available (and whence),
// and `shrink_hint` (the keys that shrink the run, with their values).
status check_run_memory(const run_memory_estimate& need, const host_memory& have,
                        const std::string& shrink_hint);

// The default of cluster.device_memory_bytes_max: what the machine makes usable, less the
// run's working buffers, shared equally by the devices. 0 when not even the working
// buffers fit (the run is then refused by check_run_memory).
uint64_t default_device_memory_bytes(const host_memory& have, uint64_t working_bytes,
                                     uint32_t devices);

}  // namespace pnmkv
