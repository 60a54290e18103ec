// This machine's memory read bandwidth, measured in the same run as whatever it is compared
// with (kernel benches, the cluster's step-time bound). Reads a buffer far larger than the
// caches with `threads` threads, best of `repeats`.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pnmkv {

struct read_bandwidth {
  double gbps = 0;       // 1e9 bytes/s, best of the repeats
  size_t bytes = 0;      // buffer size read per repeat (all threads together)
  unsigned threads = 1;
};

read_bandwidth measure_read_gbps(size_t bytes, unsigned threads, unsigned repeats);

// The vectorised read itself (runtime-dispatched): sum of the bytes as 32-bit words.
uint64_t read_sum(const uint8_t* data, size_t bytes);

}  // namespace pnmkv
