// Restricting Highway's runtime dispatch (core/simd_target.hpp). hwy::DisableTargets masks
// every other target, so the next dispatch of each kernel picks the one asked for.
#include "core/simd_target.hpp"

#include <cstdlib>

#include "hwy/highway.h"
#include "hwy/targets.h"

namespace pnmkv {

namespace {

// Every target bit this binary was compiled for, best first (lowest bit first).
std::vector<int64_t> compiled_targets() {
  std::vector<int64_t> out;
  for (int64_t t = HWY_TARGETS; t != 0; t &= t - 1) out.push_back(t & ~(t - 1));
  return out;
}

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

}  // namespace

std::vector<std::string> supported_kernel_targets() {
  std::vector<std::string> out;
  for (int64_t t : hwy::SupportedAndGeneratedTargets()) out.push_back(hwy::TargetName(t));
  return out;
}

bool kernel_target_is_canonical(const std::string& target_name) {
#if HWY_ARCH_X86
  return target_name == hwy::TargetName(HWY_AVX2) || target_name == hwy::TargetName(HWY_AVX3) ||
         target_name == hwy::TargetName(HWY_AVX3_DL);
#else
  (void)target_name;
  return false;
#endif
}

status restrict_kernel_target(const std::string& target_name) {
  std::vector<std::string> compiled;
  int64_t wanted = 0;
  for (int64_t t : compiled_targets()) {
    compiled.push_back(hwy::TargetName(t));
    if (target_name == hwy::TargetName(t)) wanted = t;
  }
  const std::vector<std::string> supported = supported_kernel_targets();
  if (wanted == 0) {
    return {errc::invalid_argument, "SIMD target '" + target_name +
                                        "' is not one this binary has; allowed on this CPU: " +
                                        join(supported) + " (compiled: " + join(compiled) + ")"};
  }
  if ((hwy::SupportedTargets() & wanted) == 0) {
    return {errc::unsupported, "SIMD target '" + target_name +
                                   "' is not supported by this CPU; allowed: " + join(supported)};
  }
  hwy::DisableTargets(~wanted);
  return status::ok();
}

status apply_kernel_target_from_env() {
  const char* env = std::getenv("PNMKV_SIMD_TARGET");
  if (env == nullptr || *env == '\0') return status::ok();
  status s = restrict_kernel_target(env);
  if (!s) return {s.code(), "PNMKV_SIMD_TARGET: " + s.message()};
  return s;
}

}  // namespace pnmkv
