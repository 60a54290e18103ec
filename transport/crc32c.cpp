// CRC32C: three interleaved hardware streams (the crc32 instruction has a latency of 3
// cycles and a throughput of 1) over blocks of 8 KiB, 256 B and 64 B, combined with shift
// tables; a byte table where SSE4.2 is missing.
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
// Shifting a raw CRC register over a fixed number of zero bytes is linear: four table
// lookups (one per byte of the register) replace the 32x32 GF(2) matrix product.
struct shift_table {
  uint32_t t[4][256];
  explicit shift_table(size_t zero_bytes) {
    zeros_op op = make_zeros_op(zero_bytes);
    for (int k = 0; k < 4; ++k)
      for (uint32_t b = 0; b < 256; ++b) t[k][b] = gf2_times(op.m, b << (8 * k));
  }
  uint32_t operator()(uint32_t crc) const {
    return t[0][crc & 0xff] ^ t[1][(crc >> 8) & 0xff] ^ t[2][(crc >> 16) & 0xff] ^ t[3][crc >> 24];
  }
};
constexpr size_t long_block = 8192;
constexpr size_t short_block = 256;
constexpr size_t tiny_block = 64;
const shift_table& long_shift() {
  static const shift_table t(long_block);
  return t;
}
const shift_table& short_shift() {
  static const shift_table t(short_block);
  return t;
}
const shift_table& tiny_shift() {
  static const shift_table t(tiny_block);
  return t;
}

// Three independent streams over consecutive blocks of `block` bytes hide the crc32
// instruction's latency; returns the combined raw register.
__attribute__((target("sse4.2"))) inline uint64_t crc_3way(const uint8_t*& p, size_t& n,
                                                           uint64_t c0, size_t block,
                                                           const shift_table& shift) {
  while (n >= 3 * block) {
    uint64_t c1 = 0, c2 = 0;
    const uint8_t* p1 = p + block;
    const uint8_t* p2 = p + 2 * block;
    for (size_t i = 0; i < block; i += 8) {
      uint64_t a, b, d;
      std::memcpy(&a, p + i, 8);
      std::memcpy(&b, p1 + i, 8);
      std::memcpy(&d, p2 + i, 8);
      c0 = _mm_crc32_u64(c0, a);
      c1 = _mm_crc32_u64(c1, b);
      c2 = _mm_crc32_u64(c2, d);
    }
    // crc(A B C) = shift(shift(cA) ^ cB) ^ cC for raw registers.
    uint32_t r = shift(static_cast<uint32_t>(c0)) ^ static_cast<uint32_t>(c1);
    c0 = shift(r) ^ static_cast<uint32_t>(c2);
    p += 3 * block;
    n -= 3 * block;
  }
  return c0;
}

__attribute__((target("sse4.2"))) uint32_t crc_hw(const uint8_t* p, size_t n, uint32_t crc) {
  uint64_t c0 = crc;
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    c0 = _mm_crc32_u8(static_cast<uint32_t>(c0), *p++);
    --n;
  }
  if (n >= 3 * long_block) c0 = crc_3way(p, n, c0, long_block, long_shift());
  if (n >= 3 * short_block) c0 = crc_3way(p, n, c0, short_block, short_shift());
  if (n >= 3 * tiny_block) c0 = crc_3way(p, n, c0, tiny_block, tiny_shift());
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
