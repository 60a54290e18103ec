#include "core/membw.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

namespace pnmkv {

namespace {
// Sum of 64-bit words with four independent accumulators; the compiler vectorises it and the
// result is consumed so the loads cannot be elided.
uint64_t sum_words(const uint64_t* p, size_t n) {
  uint64_t a = 0, b = 0, c = 0, d = 0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a += p[i];
    b += p[i + 1];
    c += p[i + 2];
    d += p[i + 3];
  }
  for (; i < n; ++i) a += p[i];
  return a + b + c + d;
}
}  // namespace

read_bandwidth measure_read_gbps(size_t bytes, unsigned threads, unsigned repeats) {
  threads = std::max(1u, threads);
  repeats = std::max(1u, repeats);
  const size_t words = std::max<size_t>(bytes / 8 / threads, 1024) * threads;
  std::unique_ptr<uint64_t[]> buf(new uint64_t[words]);
  // Touch every page (and give the words values) so the OS has committed the memory.
  for (size_t i = 0; i < words; ++i) buf[i] = i * 0x9E3779B97F4A7C15ull;
  std::atomic<uint64_t> sink{0};
  double best_s = 1e30;
  for (unsigned r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    const size_t per = words / threads;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { sink += sum_words(buf.get() + t * per, per); });
    for (auto& th : pool) th.join();
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best_s = std::min(best_s, s);
  }
  read_bandwidth out;
  out.bytes = words * 8;
  out.threads = threads;
  out.gbps = double(out.bytes) / best_s / 1e9;
  if (sink.load() == 42) out.gbps += 0;  // keeps the sums alive
  return out;
}

}  // namespace pnmkv
