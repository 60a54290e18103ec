// "Never killed for memory": before a run on this machine allocates anything, add up what
// every node of it will hold (schedulers/host_memory.hpp's estimate) and refuse the run
// when that is more than the machine — or the cgroup the run sits in — makes available.
// Also derives the default of cluster.device_memory_bytes_max (0) from the machine.
// No CAF here.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.hpp"
#include "schedulers/host_memory.hpp"

namespace pnmkv {

struct run_setup;

// Reads /proc/meminfo and the memory cgroup of this process (v2 memory.max /
// memory.current / memory.stat, else v1 memory.limit_in_bytes / memory.usage_in_bytes /
// memory.stat), taking the tightest headroom of the cgroup and its ancestors. `root`
// prefixes every path (tests point it at a fake tree). A missing cgroup file means no
// limit there; a missing or malformed /proc/meminfo, or a malformed cgroup file, is an
// error naming the file.
result<host_memory> read_host_memory(const std::string& root = "");

// Where the run's nodes live: every one in this process, or one process each on this
// machine (`pnmkv run --multiprocess`).
enum class run_processes { embedded, multiprocess };

// What the run will hold on this machine at most: a closed batch whole (admission would
// refuse part of it, but a batch that cannot fit is refused here, not half run); an open
// workload the workload.batch_max largest requests (all of them when 0), bounded by
// pnm_devices × cluster.device_memory_bytes_max, which coordinator admission enforces.
// after_run_bytes: what the launching process allocates once the cluster is gone.
run_memory_query run_memory_query_of(const run_setup& s, run_processes where,
                                     uint64_t after_run_bytes);

// The check: ok, or errc::capacity naming the bytes needed and available and the keys
// (with their values) that shrink the run.
status check_run_memory(const run_setup& s, run_processes where, uint64_t after_run_bytes);

// cluster.device_memory_bytes_max = 0 (the default) becomes what this machine makes
// usable, less the working buffers of a run of `where`, over the devices. errc::capacity
// when nothing is left for the devices' KV: 0 would read as "derive" to the node processes
// the figure is written for, and every placement would be refused without saying why.
result<uint64_t> derived_device_memory_bytes(const run_setup& s, run_processes where);

}  // namespace pnmkv
