// The memory-read reference: a Highway-vectorised sum of the buffer (as little work per
// byte as a streaming read can do, so its speed is the machine's read bandwidth). Shared
// by `pnmkv bench kernels` and the cluster's step-time bound.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/membw.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"

#include <cstddef>
#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

// Sum of the buffer as u32 lanes, four independent accumulators.
uint64_t read_sum_impl(const uint8_t* data, size_t bytes) {
  const hn::ScalableTag<uint32_t> d;
  const size_t n = hn::Lanes(d);
  const uint32_t* words = reinterpret_cast<const uint32_t*>(data);
  const size_t n_words = bytes / sizeof(uint32_t);
  auto a0 = hn::Zero(d);
  auto a1 = hn::Zero(d);
  auto a2 = hn::Zero(d);
  auto a3 = hn::Zero(d);
  size_t i = 0;
  for (; i + 4 * n <= n_words; i += 4 * n) {
    a0 = hn::Add(a0, hn::LoadU(d, words + i));
    a1 = hn::Add(a1, hn::LoadU(d, words + i + n));
    a2 = hn::Add(a2, hn::LoadU(d, words + i + 2 * n));
    a3 = hn::Add(a3, hn::LoadU(d, words + i + 3 * n));
  }
  uint64_t total = hn::GetLane(hn::SumOfLanes(d, hn::Add(hn::Add(a0, a1), hn::Add(a2, a3))));
  for (; i < n_words; ++i) total += words[i];
  return total;
}

}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "core/check.hpp"
#include "core/membw.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace pnmkv {

HWY_EXPORT(read_sum_impl);

uint64_t read_sum(const uint8_t* data, size_t bytes) {
  return HWY_DYNAMIC_DISPATCH(read_sum_impl)(data, bytes);
}

read_bandwidth measure_read_gbps(size_t bytes, unsigned threads, unsigned repeats) {
  threads = std::max(1u, threads);
  repeats = std::max(1u, repeats);
  const size_t per = std::max<size_t>(bytes / threads, size_t(1) << 20) / 64 * 64;
  // 2 MiB aligned and offered to transparent huge pages, as the KV stores are
  // (core/kv_store.cpp): with 4 KiB pages the reference pays a TLB miss per 4 KiB that
  // the kernels do not (measured on the shared 2-core VM: ~14 GB/s with 4 KiB pages,
  // 18–28 GB/s with huge pages, best of 3 by wall time).
  const size_t huge_page_bytes = size_t{2} << 20;
  const size_t rounded = (per * threads + huge_page_bytes - 1) / huge_page_bytes * huge_page_bytes;
  struct free_deleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t[], free_deleter> buf(
      static_cast<uint8_t*>(std::aligned_alloc(huge_page_bytes, rounded)));
  PNMKV_CHECK(buf != nullptr, "cannot allocate the read buffer of ", rounded, " bytes");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  (void)madvise(buf.get(), rounded, MADV_HUGEPAGE);
#endif
  // Touch every page so the OS has committed the memory before timing.
  std::memset(buf.get(), 1, per * threads);
  std::atomic<uint64_t> sink{0};
  double best_s = 1e30;
  for (unsigned r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
      pool.emplace_back([&, t] { sink += read_sum(buf.get() + t * per, per); });
    for (auto& th : pool) th.join();
    best_s = std::min(best_s, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  read_bandwidth out;
  out.bytes = per * threads;
  out.threads = threads;
  out.gbps = double(out.bytes) / best_s / 1e9;
  if (sink.load() == 42) out.gbps += 0;  // keeps the sums alive
  return out;
}

}  // namespace pnmkv

#endif  // HWY_ONCE
