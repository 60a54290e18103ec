// bfloat16 storage type and conversions. KV is stored as bf16 (docs/DESIGN.md §4); arithmetic
// is fp32. Rounding is round-to-nearest-even, the same as hardware converters, so a value
// written on one node and regenerated on another gives identical bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace pnmkv {

struct bf16 {
  uint16_t bits;
};
static_assert(sizeof(bf16) == 2, "bf16 must be 2 bytes");

inline float to_float(bf16 x) {
  uint32_t u = static_cast<uint32_t>(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline bf16 to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0) {
    return bf16{static_cast<uint16_t>((u >> 16) | 0x0040u)};  // quiet NaN stays NaN
  }
  const uint32_t rounding_bias = 0x7fffu + ((u >> 16) & 1u);
  return bf16{static_cast<uint16_t>((u + rounding_bias) >> 16)};
}

// Rounds n values in place to the nearest bf16 (kept as fp32): what a value is worth after a
// trip through bf16 storage.
inline void round_to_bf16(float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) x[i] = to_float(to_bf16(x[i]));
}

}  // namespace pnmkv
