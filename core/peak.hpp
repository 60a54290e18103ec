// This core's fp32 compute peak for the SIMD target the kernels dispatch to: the FMA
// throughput the score and attention kernels could at best use. Measured in the same run
// as what it is compared with (`pnmkv bench kernels`, the run report's step bound), like
// the read bandwidth in membw.hpp; the two together make the roofline (roofline.hpp).
#pragma once

#include <cstdint>

namespace pnmkv {

struct compute_peak {
  double gflops = 0;           // 1e9 flops/s of one thread (one core), best of the bursts
  double flops_per_burst = 0;  // flops one burst does
  const char* target = "";     // Highway's name of the dispatched target, e.g. "AVX3"
};

// One burst of fused multiply-adds on this thread, operands in registers, no memory
// traffic: `iterations` rounds of one MulAdd on each of several independent accumulator
// vectors (enough chains to hide FMA latency on 16- and 32-register targets). Returns the
// flops done (2 per lane per MulAdd); *result_out receives a value that depends on every
// FMA so nothing is optimised away. Runtime-dispatched (same target as the kernels).
double fma_burst(uint64_t iterations, float* result_out);

// Best of `repeats` bursts of about `flops_per_burst` flops each, timed by this thread's
// CPU time (a shared machine's neighbours then cost nothing but wall time).
// repeats ≥ 1; flops_per_burst > 0.
compute_peak measure_peak_gflops(double flops_per_burst, unsigned repeats);

// Name of the target fma_burst dispatches to (hwy::TargetName).
const char* peak_target_name();

}  // namespace pnmkv
