// CRC32C: three interleaved hardware streams for large buffers (the crc32 instruction has a
// latency of 3 cycles and a throughput of 1), combined with a shift table; a byte table
// where SSE4.2 is missing.
#include "transport/crc32c.hpp"

#include <array>
#include <cstring>

#if defined(__x86_64__)
#include <nmmintrin.h>
#endif

namespace pnmkv::transport {
namespace {

constexpr uint32_t poly = 0x82f63b78u;  // reflected Castagnoli

struct byte_table {
  std::array<uint32_t, 256> t{};
  constexpr byte_table() {
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ poly : c >> 1;
      t[i] = c;
    }
  }
};
constexpr byte_table table{};

uint32_t crc_sw(const uint8_t* p, size_t n, uint32_t crc) {
  for (size_t i = 0; i < n; ++i) crc = table.t[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return crc;
}

// GF(2) helpers to shift a CRC over `n` zero bytes (to combine interleaved streams).
uint32_t gf2_times(const uint32_t* mat, uint32_t vec) {
  uint32_t sum = 0;
  for (int i = 0; vec; ++i, vec >>= 1)
    if (vec & 1) sum ^= mat[i];
  return sum;
}
void gf2_square(uint32_t* sq, const uint32_t* mat) {
  for (int n = 0; n < 32; ++n) sq[n] = gf2_times(mat, mat[n]);
}
// Operator that advances a (raw, un-inverted) CRC register over `len` zero bytes.
struct zeros_op {
  uint32_t m[32];
};
zeros_op make_zeros_op(size_t len) {
  uint32_t odd[32], even[32];
  odd[0] = poly;
  uint32_t row = 1;
  for (int n = 1; n < 32; ++n) {
    odd[n] = row;
    row <<= 1;
  }
  gf2_square(even, odd);  // 2 zero bits
  gf2_square(odd, even);  // 4 zero bits
  // Now odd = 4 bits; square twice more -> one byte (8 bits) in `even`.
  gf2_square(even, odd);  // 8 bits = 1 byte
  zeros_op result;
  for (int n = 0; n < 32; ++n) result.m[n] = 1u << n;  // identity
  uint32_t cur[32];
  std::memcpy(cur, even, sizeof cur);
  while (len) {
    if (len & 1) {
      uint32_t tmp[32];
      for (int n = 0; n < 32; ++n) tmp[n] = gf2_times(cur, result.m[n]);
      std::memcpy(result.m, tmp, sizeof tmp);
    }
    len >>= 1;
    if (!len) break;
    uint32_t sq[32];
    gf2_square(sq, cur);
    std::memcpy(cur, sq, sizeof cur);
  }
  return result;
}

#if defined(__x86_64__)
constexpr size_t stripe = 8192;  // bytes per stream per round
const zeros_op& shift_stripe() {
  static const zeros_op op = make_zeros_op(stripe);
  return op;
}

__attribute__((target("sse4.2"))) uint32_t crc_hw(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c0 = crc;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p++);
    --n;
  }
  if (n >= 3 * stripe) {
    const zeros_op& op = shift_stripe();
    while (n >= 3 * stripe) {
      uint64_t c1 = 0, c2 = 0;
      const uint8_t* p1 = p + stripe;
      const uint8_t* p2 = p + 2 * stripe;
      for (size_t i = 0; i < stripe; i += 8) {
        uint64_t a, b, d;
        std::memcpy(&a, p + i, 8);
        std::memcpy(&b, p1 + i, 8);
        std::memcpy(&d, p2 + i, 8);
        c0 = _mm_crc32_u64(c0, a);
        c1 = _mm_crc32_u64(c1, b);
        c2 = _mm_crc32_u64(c2, d);
      }
      // crc(A B C) = shift(shift(cA) ^ cB) ^ cC with raw registers.
      uint32_t r = gf2_times(op.m, static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
      r = gf2_times(op.m, r) ^ static_cast<uint32_t>(c2);
      c0 = r;
      p += 3 * stripe;
      n -= 3 * stripe;
    }
  }
  while (n >= 8) {
    uint64_t a;
    std::memcpy(&a, p, 8);
    c0 = _mm_crc32_u64(c0, a);
    p += 8;
    n -= 8;
  }
  while (n--) c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p++);
  return static_cast<uint32_t>(c0);
}
bool have_sse42() {
  static const bool yes = __builtin_cpu_supports("sse4.2");
  return yes;
}
#endif

}  // namespace

uint32_t crc32c(const void* data, size_t size, uint32_t crc) {
  const auto* p = static_cast<const uint8_t*>(data);
  uint32_t reg = ~crc;
#if defined(__x86_64__)
  if (have_sse42()) return ~crc_hw(p, size, reg);
#endif
  return ~crc_sw(p, size, reg);
}

}  // namespace pnmkv::transport
