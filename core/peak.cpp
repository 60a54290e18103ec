// The compute-peak probe (see peak.hpp): a register-only chain of Highway MulAdds per
// accumulator, compiled for every target and dispatched at run time like the kernels.
//
// FMA latency × pipes sets how many independent chains keep the FMA units busy: Zen 4/5
// have 2 FMA pipes of latency 4 (8 chains), Intel cores 2 × 4 (8). 12 chains on 16-register
// targets (12 accumulators + 2 operands fit in 16), 16 on 32-register ones (AVX-512), so
// latency is covered with a margin on either.
#undef HWY_TARGET_INCLUDE
#define HWY_TARGET_INCLUDE "core/peak.cpp"
#include "hwy/foreach_target.h"  // IWYU pragma: keep

#include "hwy/highway.h"

#include <cstddef>
#include <cstdint>

HWY_BEFORE_NAMESPACE();
namespace pnmkv {
namespace HWY_NAMESPACE {
namespace hn = hwy::HWY_NAMESPACE;

#if HWY_TARGET <= HWY_AVX3
constexpr size_t peak_chains = 16;
#else
constexpr size_t peak_chains = 12;
#endif

// acc_c = acc_c · m + a on every chain; with m just below 1 the chains converge to
// a / (1 - m) and stay finite and normal however long the burst.
double fma_burst_impl(uint64_t iterations, float* result_out) {
  const hn::ScalableTag<float> d;
  const auto m = hn::Set(d, 0.999999f);
  const auto a = hn::Set(d, 1e-6f);
  hn::Vec<decltype(d)> acc[peak_chains];
  for (size_t c = 0; c < peak_chains; ++c) acc[c] = hn::Set(d, 1.0f + 0.01f * float(c));
  for (uint64_t i = 0; i < iterations; ++i) {
    for (size_t c = 0; c < peak_chains; ++c) acc[c] = hn::MulAdd(acc[c], m, a);
  }
  auto total = acc[0];
  for (size_t c = 1; c < peak_chains; ++c) total = hn::Add(total, acc[c]);
  *result_out = hn::GetLane(hn::SumOfLanes(d, total));
  return double(iterations) * double(peak_chains) * double(hn::Lanes(d)) * 2.0;
}

int64_t peak_target_impl() { return HWY_TARGET; }

}  // namespace HWY_NAMESPACE
}  // namespace pnmkv
HWY_AFTER_NAMESPACE();

#if HWY_ONCE

#include <algorithm>
#include <chrono>
#include <cmath>

#if defined(__linux__)
#include <time.h>
#endif

#include "core/check.hpp"
#include "core/peak.hpp"

namespace pnmkv {

HWY_EXPORT(fma_burst_impl);
HWY_EXPORT(peak_target_impl);

double fma_burst(uint64_t iterations, float* result_out) {
  return HWY_DYNAMIC_DISPATCH(fma_burst_impl)(iterations, result_out);
}

const char* peak_target_name() {
  return hwy::TargetName(HWY_DYNAMIC_DISPATCH(peak_target_impl)());
}

namespace {

volatile float peak_sink;

double thread_cpu_seconds() {
#if defined(__linux__)
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return ts.tv_sec + ts.tv_nsec * 1e-9;
#endif
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

compute_peak measure_peak_gflops(double flops_per_burst, unsigned repeats) {
  PNMKV_CHECK(flops_per_burst > 0, "flops_per_burst=", flops_per_burst);
  PNMKV_CHECK(repeats >= 1, "repeats=", repeats);
  // flops per iteration, from a one-iteration call (target-dependent lanes and chains).
  float r = 0;
  const double per_iteration = fma_burst(1, &r);
  const uint64_t iterations =
      std::max<uint64_t>(1, static_cast<uint64_t>(std::ceil(flops_per_burst / per_iteration)));
  compute_peak out;
  out.target = peak_target_name();
  double best_s = INFINITY;
  for (unsigned i = 0; i < repeats; ++i) {
    const double t0 = thread_cpu_seconds();
    out.flops_per_burst = fma_burst(iterations, &r);
    best_s = std::min(best_s, thread_cpu_seconds() - t0);
    peak_sink = r;
  }
  // A burst shorter than the clock's resolution would read as 0 s.
  best_s = std::max(best_s, 1e-9);
  out.gflops = out.flops_per_burst / best_s / 1e9;
  return out;
}

}  // namespace pnmkv

#endif  // HWY_ONCE
