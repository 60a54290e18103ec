// Parsers of the container formats a KV trace is stored in (docs/TRACE_FORMAT.md): NumPy
// .npy headers, zip archives (.npz: the central directory and deflate), safetensors
// headers. Pure functions over bytes, bounded by the limits below; errors say what was
// found and what is allowed (the caller adds the file name). Also the element types and
// their conversions, and small writers (the tests' round trips, and C++ users).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv::trace {

inline constexpr size_t npy_header_bytes_max = 64 * 1024;
inline constexpr uint64_t safetensors_header_bytes_max = 64ull << 20;
inline constexpr uint64_t zip_members_max = 1u << 20;
inline constexpr uint32_t tensor_rank_max = 8;

enum class dtype { f32, f16, bf16 };
// "float32" | "float16" | "bfloat16" (the manifest's names).
const char* to_string(dtype t);
result<dtype> dtype_from_manifest(const std::string& name);
inline size_t dtype_bytes(dtype t) { return t == dtype::f32 ? 4 : 2; }
// The .npy descr and the safetensors dtype of each element type: <f4 F32, <f2 F16, <u2 BF16.
const char* npy_descr(dtype t);
const char* safetensors_dtype(dtype t);
// IEEE half to float (exact).
float half_to_float(uint16_t h);
// Float to IEEE half, round to nearest even (writers only).
uint16_t float_to_half(float f);
// Element i of a little-endian array of type t, as float (exact for every type).
float element(const uint8_t* data, dtype t, uint64_t i);

// Product of a shape's dimensions; an error when it overflows 2^62.
result<uint64_t> element_count(const std::vector<uint64_t>& shape);
std::string shape_text(const std::vector<uint64_t>& shape);  // "[512, 2, 8]"

// --- .npy ---
struct npy_header {
  std::string descr;  // e.g. "<f4"
  bool fortran_order = false;
  std::vector<uint64_t> shape;
  uint64_t data_offset = 0;  // from the start of the .npy bytes
};
// Parses the magic, version (1.0, 2.0, 3.0) and the header dict of a .npy held in
// [data, data + size). Does not check that the data fits (see npy_data_bytes).
result<npy_header> parse_npy_header(const uint8_t* data, size_t size);
// An .npy file: magic, version 1.0, header padded to 64 bytes, then `payload`.
std::vector<uint8_t> write_npy(const std::string& descr, const std::vector<uint64_t>& shape,
                               const uint8_t* payload, size_t payload_bytes);

// --- zip (.npz) ---
struct zip_member {
  std::string name;
  uint16_t method = 0;  // 0 stored, 8 deflate
  uint32_t crc32 = 0;
  uint64_t compressed_bytes = 0;
  uint64_t uncompressed_bytes = 0;
  uint64_t data_offset = 0;  // of the member's (compressed) bytes in the archive
};
// Reads the central directory (zip64 included) and each member's local header; refuses
// encrypted members, methods other than stored and deflate, and members past the end.
result<std::vector<zip_member>> parse_zip(const uint8_t* data, size_t size);
// Inflates a deflated member (or copies a stored one) and checks its CRC-32; refuses one
// whose uncompressed size exceeds bytes_max.
result<std::vector<uint8_t>> zip_extract(const uint8_t* archive, size_t size,
                                         const zip_member& m, uint64_t bytes_max);
struct zip_input {
  std::string name;
  std::vector<uint8_t> bytes;
};
// A zip archive of the inputs, stored (deflate = false) or deflated, as np.savez /
// np.savez_compressed write them (no zip64: inputs below 4 GiB).
result<std::vector<uint8_t>> write_zip(const std::vector<zip_input>& inputs, bool deflate);

// --- safetensors ---
struct safetensors_entry {
  std::string name;
  std::string dtype;  // "F32", "F16", "BF16", ...
  std::vector<uint64_t> shape;
  uint64_t begin = 0;  // absolute byte offsets in the file
  uint64_t end = 0;
};
// Parses the 8-byte header length and the JSON header; checks every entry's offsets lie
// inside the file and match its shape and (known) dtype. __metadata__ is skipped.
result<std::vector<safetensors_entry>> parse_safetensors(const uint8_t* data, size_t size);
struct safetensors_input {
  std::string name;
  std::string dtype;
  std::vector<uint64_t> shape;
  std::vector<uint8_t> bytes;
};
std::vector<uint8_t> write_safetensors(const std::vector<safetensors_input>& tensors);

}  // namespace pnmkv::trace
