// Which Highway SIMD target the device kernels (scoring, attention) dispatch to, and a way
// to restrict it for a whole run: PNMKV_SIMD_TARGET=AVX2 (Highway's target names) makes a
// machine with AVX-512 run the AVX2 kernels, so one machine can check that every target
// gives the same outputs, and a user can reproduce another machine's target.
//
// Every target with fused multiply-add (AVX2, AVX3, AVX3_DL) computes the canonical
// arithmetic of core/simd_internal.hpp and so gives bit-identical results; the fallbacks
// for CPUs without FMA (SSE4, SSSE3, EMU128, SCALAR) round twice per step and differ in
// the last bits.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv {

// Highway's names of the targets compiled into this binary that this CPU runs, best first.
std::vector<std::string> supported_kernel_targets();

// True when `target_name` computes the canonical (fused multiply-add) arithmetic.
bool kernel_target_is_canonical(const std::string& target_name);

// Restricts dispatch to the named target for the rest of the process. Errors (unknown
// name, or a target this CPU or binary lacks) name the allowed values.
status restrict_kernel_target(const std::string& target_name);

// Applies PNMKV_SIMD_TARGET when it is set (and not empty); ok otherwise.
status apply_kernel_target_from_env();

}  // namespace pnmkv
