#include "trace/formats.hpp"

#include <zlib.h>

#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

namespace pnmkv::trace {

namespace {

status parse_error(const std::string& what) { return {errc::parse, what}; }

uint16_t rd16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
uint32_t rd32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
uint64_t rd64(const uint8_t* p) { return rd32(p) | (static_cast<uint64_t>(rd32(p + 4)) << 32); }
void wr16(std::vector<uint8_t>& o, uint32_t v) {
  o.push_back(static_cast<uint8_t>(v));
  o.push_back(static_cast<uint8_t>(v >> 8));
}
void wr32(std::vector<uint8_t>& o, uint32_t v) {
  wr16(o, v & 0xFFFFu);
  wr16(o, v >> 16);
}
void wr64(std::vector<uint8_t>& o, uint64_t v) {
  wr32(o, static_cast<uint32_t>(v));
  wr32(o, static_cast<uint32_t>(v >> 32));
}

}  // namespace

const char* to_string(dtype t) {
  switch (t) {
    case dtype::f32: return "float32";
    case dtype::f16: return "float16";
    case dtype::bf16: return "bfloat16";
  }
  return "?";
}

result<dtype> dtype_from_manifest(const std::string& name) {
  if (name == "float32") return dtype::f32;
  if (name == "float16") return dtype::f16;
  if (name == "bfloat16") return dtype::bf16;
  return status{errc::invalid_argument,
                "dtype '" + name + "' is not supported; allowed: float32, float16, bfloat16"};
}

const char* npy_descr(dtype t) {
  return t == dtype::f32 ? "<f4" : t == dtype::f16 ? "<f2" : "<u2";
}
const char* safetensors_dtype(dtype t) {
  return t == dtype::f32 ? "F32" : t == dtype::f16 ? "F16" : "BF16";
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  float f;
  if (exp == 0) {  // zero or subnormal: mant · 2^-24, exact in float
    f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  uint32_t u;
  if (exp == 31) {
    u = sign | 0x7F800000u | (mant << 13);
  } else {
    u = sign | ((exp + 112) << 23) | (mant << 13);
  }
  std::memcpy(&f, &u, sizeof f);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const float a = std::fabs(f);
  if (std::isnan(f)) return static_cast<uint16_t>(sign | 0x7E00u);
  if (a >= 65520.0f) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (a < 6.103515625e-05f) {  // subnormal half: units of 2^-24, round to nearest even
    const float units = a * 16777216.0f;  // exact (power of two)
    const float r = std::nearbyint(units);  // default rounding: nearest even
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(r));
  }
  uint32_t v;
  std::memcpy(&v, &a, sizeof v);
  const uint32_t exp = (v >> 23) - 112;  // >= 1
  uint32_t mant = v & 0x7FFFFFu;
  uint32_t h = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFFu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // carries into exp correctly
  return static_cast<uint16_t>(sign | h);
}

float element(const uint8_t* data, dtype t, uint64_t i) {
  switch (t) {
    case dtype::f32: {
      float f;
      std::memcpy(&f, data + 4 * i, 4);
      return f;
    }
    case dtype::f16:
      return half_to_float(rd16(data + 2 * i));
    case dtype::bf16: {
      const uint32_t u = static_cast<uint32_t>(rd16(data + 2 * i)) << 16;
      float f;
      std::memcpy(&f, &u, 4);
      return f;
    }
  }
  return 0;
}

result<uint64_t> element_count(const std::vector<uint64_t>& shape) {
  uint64_t n = 1;
  for (uint64_t d : shape) {
    if (d != 0 && n > (1ull << 62) / d)
      return status{errc::capacity, "shape " + shape_text(shape) + " has more than 2^62 elements"};
    n *= d;
  }
  return n;
}

std::string shape_text(const std::vector<uint64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// --- .npy ---

namespace {

// The value after 'key': in a Python dict literal; npos when absent.
size_t value_of(const std::string& h, const std::string& key) {
  for (const char q : {'\'', '"'}) {
    const std::string k = std::string(1, q) + key + q;
    size_t p = h.find(k);
    if (p == std::string::npos) continue;
    p = h.find(':', p + k.size());
    if (p == std::string::npos) return p;
    ++p;
    while (p < h.size() && h[p] == ' ') ++p;
    return p;
  }
  return std::string::npos;
}

}  // namespace

result<npy_header> parse_npy_header(const uint8_t* data, size_t size) {
  static const uint8_t magic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};
  if (size < 10 || std::memcmp(data, magic, 6) != 0)
    return parse_error("not a .npy file (no \\x93NUMPY magic)");
  const uint8_t major = data[6];
  size_t len_bytes = 0;
  uint64_t header_len = 0;
  if (major == 1) {
    len_bytes = 2;
    header_len = rd16(data + 8);
  } else if (major == 2 || major == 3) {
    if (size < 12) return parse_error(".npy header truncated");
    len_bytes = 4;
    header_len = rd32(data + 8);
  } else {
    return parse_error(".npy format version " + std::to_string(major) + "." +
                       std::to_string(data[7]) + " is not supported; allowed: 1.0, 2.0, 3.0");
  }
  if (header_len > npy_header_bytes_max)
    return status{errc::capacity, ".npy header of " + std::to_string(header_len) +
                                      " bytes exceeds the limit of " +
                                      std::to_string(npy_header_bytes_max)};
  const uint64_t begin = 8 + len_bytes;
  if (begin + header_len > size) return parse_error(".npy header runs past the end of the file");
  const std::string h(reinterpret_cast<const char*>(data + begin), header_len);
  npy_header out;
  out.data_offset = begin + header_len;

  size_t p = value_of(h, "descr");
  if (p == std::string::npos || p >= h.size() || (h[p] != '\'' && h[p] != '"'))
    return parse_error(".npy header has no 'descr' string: " + h);
  const size_t e = h.find(h[p], p + 1);
  if (e == std::string::npos) return parse_error(".npy header: unterminated 'descr'");
  out.descr = h.substr(p + 1, e - p - 1);

  p = value_of(h, "fortran_order");
  if (p == std::string::npos) return parse_error(".npy header has no 'fortran_order'");
  if (h.compare(p, 4, "True") == 0) {
    out.fortran_order = true;
  } else if (h.compare(p, 5, "False") != 0) {
    return parse_error(".npy header: 'fortran_order' is neither True nor False");
  }

  p = value_of(h, "shape");
  if (p == std::string::npos || p >= h.size() || h[p] != '(')
    return parse_error(".npy header has no 'shape' tuple: " + h);
  const size_t close = h.find(')', p);
  if (close == std::string::npos) return parse_error(".npy header: unterminated 'shape'");
  uint64_t v = 0;
  bool digits = false;
  for (size_t i = p + 1; i < close; ++i) {
    const char c = h[i];
    if (c >= '0' && c <= '9') {
      if (v > (1ull << 56)) return parse_error(".npy header: a dimension is too large");
      v = v * 10 + static_cast<uint64_t>(c - '0');
      digits = true;
    } else if (c == ',' || c == ' ' || c == 'L') {
      if (c == ',') {
        if (!digits) return parse_error(".npy header: malformed 'shape'");
        out.shape.push_back(v);
        v = 0;
        digits = false;
      }
    } else {
      return parse_error(".npy header: malformed 'shape' (character '" + std::string(1, c) + "')");
    }
  }
  if (digits) out.shape.push_back(v);
  if (out.shape.size() > tensor_rank_max) return parse_error(".npy header: rank above 8");
  return out;
}

std::vector<uint8_t> write_npy(const std::string& descr, const std::vector<uint64_t>& shape,
                               const uint8_t* payload, size_t payload_bytes) {
  std::string shape_s = "(";
  for (size_t i = 0; i < shape.size(); ++i) shape_s += (i ? ", " : "") + std::to_string(shape[i]);
  shape_s += shape.size() == 1 ? ",)" : ")";
  std::string h = "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape_s + ", }";
  const size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  wr16(out, static_cast<uint32_t>(h.size()));
  out.insert(out.end(), h.begin(), h.end());
  out.insert(out.end(), payload, payload + payload_bytes);
  return out;
}

// --- zip ---

result<std::vector<zip_member>> parse_zip(const uint8_t* data, size_t size) {
  constexpr uint32_t sig_eocd = 0x06054b50, sig_eocd64 = 0x06064b50, sig_loc64 = 0x07064b50,
                     sig_central = 0x02014b50, sig_local = 0x04034b50;
  if (size < 22) return parse_error("not a zip archive (shorter than an end record)");
  // The end of central directory record: the last 22 bytes, or earlier behind a comment.
  size_t eocd = size;
  const size_t lowest = size > 22 + 65535 ? size - 22 - 65535 : 0;
  for (size_t p = size - 22 + 1; p-- > lowest;)
    if (rd32(data + p) == sig_eocd) {
      eocd = p;
      break;
    }
  if (eocd == size) return parse_error("not a zip archive (no end of central directory record)");
  uint64_t entries = rd16(data + eocd + 10);
  uint64_t cd_size = rd32(data + eocd + 12);
  uint64_t cd_offset = rd32(data + eocd + 16);
  if (entries == 0xFFFF || cd_size == 0xFFFFFFFFu || cd_offset == 0xFFFFFFFFu) {
    if (eocd < 20 || rd32(data + eocd - 20) != sig_loc64)
      return parse_error("zip64 archive without a zip64 end locator");
    const uint64_t e64 = rd64(data + eocd - 20 + 8);
    if (e64 > size - 56 || rd32(data + e64) != sig_eocd64)
      return parse_error("zip64 end of central directory record missing");
    entries = rd64(data + e64 + 32);
    cd_size = rd64(data + e64 + 40);
    cd_offset = rd64(data + e64 + 48);
  }
  if (entries > zip_members_max)
    return status{errc::capacity, "zip archive lists " + std::to_string(entries) +
                                      " members; the limit is " + std::to_string(zip_members_max)};
  if (cd_offset > size || cd_size > size - cd_offset)
    return parse_error("zip central directory lies outside the archive");
  std::vector<zip_member> out;
  uint64_t p = cd_offset;
  const uint64_t cd_end = cd_offset + cd_size;
  for (uint64_t i = 0; i < entries; ++i) {
    if (p + 46 > cd_end || rd32(data + p) != sig_central)
      return parse_error("zip central directory entry " + std::to_string(i) + " is malformed");
    const uint8_t* c = data + p;
    const uint16_t flags = rd16(c + 8);
    zip_member m;
    m.method = rd16(c + 10);
    m.crc32 = rd32(c + 16);
    m.compressed_bytes = rd32(c + 20);
    m.uncompressed_bytes = rd32(c + 24);
    const uint16_t name_len = rd16(c + 28), extra_len = rd16(c + 30), comment_len = rd16(c + 32);
    uint64_t local = rd32(c + 42);
    if (p + 46 + name_len + extra_len + comment_len > cd_end)
      return parse_error("zip central directory entry " + std::to_string(i) + " runs past its end");
    m.name.assign(reinterpret_cast<const char*>(c + 46), name_len);
    // Zip64 extended information: the 0xFFFFFFFF fields, in order.
    for (uint64_t x = 0; x + 4 <= extra_len;) {
      const uint8_t* e = c + 46 + name_len + x;
      const uint16_t id = rd16(e), len = rd16(e + 2);
      if (x + 4 + len > extra_len) break;
      if (id == 0x0001) {
        uint64_t q = 4;
        auto take = [&](uint64_t& field) {
          if (q + 8 <= 4u + len) {
            field = rd64(e + q);
            q += 8;
          }
        };
        if (m.uncompressed_bytes == 0xFFFFFFFFu) take(m.uncompressed_bytes);
        if (m.compressed_bytes == 0xFFFFFFFFu) take(m.compressed_bytes);
        if (local == 0xFFFFFFFFu) take(local);
      }
      x += 4 + len;
    }
    if (flags & 1u) return parse_error("zip member '" + m.name + "' is encrypted; not supported");
    if (m.method != 0 && m.method != 8)
      return parse_error("zip member '" + m.name + "' uses compression method " +
                         std::to_string(m.method) + "; allowed: 0 (stored), 8 (deflate)");
    if (local > size || size - local < 30 || rd32(data + local) != sig_local)
      return parse_error("zip member '" + m.name + "': local header missing");
    m.data_offset = local + 30 + rd16(data + local + 26) + rd16(data + local + 28);
    if (m.data_offset > size || m.compressed_bytes > size - m.data_offset)
      return parse_error("zip member '" + m.name + "' runs past the end of the archive");
    if (m.method == 0 && m.compressed_bytes != m.uncompressed_bytes)
      return parse_error("zip member '" + m.name + "' is stored but its sizes differ");
    out.push_back(std::move(m));
    p += 46 + name_len + extra_len + comment_len;
  }
  return out;
}

result<std::vector<uint8_t>> zip_extract(const uint8_t* archive, size_t size, const zip_member& m,
                                         uint64_t bytes_max) {
  PNMKV_CHECK_LE(m.data_offset + m.compressed_bytes, size);
  if (m.uncompressed_bytes > bytes_max)
    return status{errc::capacity, "zip member '" + m.name + "' holds " +
                                      std::to_string(m.uncompressed_bytes) +
                                      " bytes uncompressed; the limit left is " +
                                      std::to_string(bytes_max)};
  std::vector<uint8_t> out(m.uncompressed_bytes);
  const uint8_t* src = archive + m.data_offset;
  if (m.method == 0) {
    if (!out.empty()) std::memcpy(out.data(), src, out.size());
  } else {
    z_stream z{};
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK)
      return status{errc::internal, "zlib inflateInit2 failed"};
    uint64_t in_done = 0, out_done = 0;
    int rc = Z_OK;
    while (rc == Z_OK) {  // chunks of at most 1 GiB: zlib counts in uInt
      const uint64_t in_chunk = std::min<uint64_t>(m.compressed_bytes - in_done, 1u << 30);
      const uint64_t out_chunk = std::min<uint64_t>(out.size() - out_done, 1u << 30);
      z.next_in = const_cast<Bytef*>(src + in_done);
      z.avail_in = static_cast<uInt>(in_chunk);
      z.next_out = out.data() + out_done;
      z.avail_out = static_cast<uInt>(out_chunk);
      rc = inflate(&z, Z_NO_FLUSH);
      in_done += in_chunk - z.avail_in;
      out_done += out_chunk - z.avail_out;
      if (rc == Z_OK && in_chunk == z.avail_in && out_chunk == z.avail_out) rc = Z_BUF_ERROR;
    }
    inflateEnd(&z);
    if (rc != Z_STREAM_END || out_done != out.size())
      return parse_error("zip member '" + m.name + "': deflate stream is corrupt or its size is not " +
                         std::to_string(out.size()) + " bytes");
  }
  uLong crc = crc32(0L, Z_NULL, 0);
  for (uint64_t done = 0; done < out.size();) {
    const uint64_t n = std::min<uint64_t>(out.size() - done, 1u << 30);
    crc = crc32(crc, out.data() + done, static_cast<uInt>(n));
    done += n;
  }
  if (static_cast<uint32_t>(crc) != m.crc32)
    return parse_error("zip member '" + m.name + "': CRC-32 mismatch (corrupt archive)");
  return out;
}

result<std::vector<uint8_t>> write_zip(const std::vector<zip_input>& inputs, bool deflate) {
  std::vector<uint8_t> out, central;
  for (const auto& in : inputs) {
    if (in.bytes.size() >= 0xFFFFFFFFu)
      return status{errc::capacity, "write_zip: member above 4 GiB (no zip64 writer)"};
    const uint32_t crc =
        static_cast<uint32_t>(crc32(crc32(0L, Z_NULL, 0), in.bytes.data(), static_cast<uInt>(in.bytes.size())));
    std::vector<uint8_t> body;
    if (deflate) {
      z_stream z{};
      if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return status{errc::internal, "zlib deflateInit2 failed"};
      body.resize(deflateBound(&z, static_cast<uLong>(in.bytes.size())));
      z.next_in = const_cast<Bytef*>(in.bytes.data());
      z.avail_in = static_cast<uInt>(in.bytes.size());
      z.next_out = body.data();
      z.avail_out = static_cast<uInt>(body.size());
      const int rc = ::deflate(&z, Z_FINISH);
      body.resize(z.total_out);
      deflateEnd(&z);
      if (rc != Z_STREAM_END) return status{errc::internal, "zlib deflate failed"};
    } else {
      body = in.bytes;
    }
    const uint32_t local = static_cast<uint32_t>(out.size());
    auto header = [&](std::vector<uint8_t>& o, bool is_central) {
      wr32(o, is_central ? 0x02014b50 : 0x04034b50);
      if (is_central) wr16(o, 20);
      wr16(o, 20);
      wr16(o, 0);
      wr16(o, deflate ? 8 : 0);
      wr16(o, 0);
      wr16(o, 0x21);  // 1980-01-01
      wr32(o, crc);
      wr32(o, static_cast<uint32_t>(body.size()));
      wr32(o, static_cast<uint32_t>(in.bytes.size()));
      wr16(o, static_cast<uint32_t>(in.name.size()));
      wr16(o, 0);
      if (is_central) {
        wr16(o, 0);
        wr16(o, 0);
        wr16(o, 0);
        wr32(o, 0);
        wr32(o, local);
      }
      o.insert(o.end(), in.name.begin(), in.name.end());
    };
    header(out, false);
    out.insert(out.end(), body.begin(), body.end());
    header(central, true);
  }
  const uint32_t cd_offset = static_cast<uint32_t>(out.size());
  out.insert(out.end(), central.begin(), central.end());
  wr32(out, 0x06054b50);
  wr16(out, 0);
  wr16(out, 0);
  wr16(out, static_cast<uint32_t>(inputs.size()));
  wr16(out, static_cast<uint32_t>(inputs.size()));
  wr32(out, static_cast<uint32_t>(central.size()));
  wr32(out, cd_offset);
  wr16(out, 0);
  return out;
}

// --- safetensors ---

result<std::vector<safetensors_entry>> parse_safetensors(const uint8_t* data, size_t size) {
  if (size < 8) return parse_error("not a safetensors file (shorter than its 8-byte header length)");
  const uint64_t n = rd64(data);
  if (n > safetensors_header_bytes_max)
    return status{errc::capacity, "safetensors header of " + std::to_string(n) +
                                      " bytes exceeds the limit of " +
                                      std::to_string(safetensors_header_bytes_max)};
  if (n > size - 8) return parse_error("safetensors header runs past the end of the file");
  nlohmann::json j = nlohmann::json::parse(data + 8, data + 8 + n, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return parse_error("safetensors header is not a JSON object");
  const uint64_t base = 8 + n;
  std::vector<safetensors_entry> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key() == "__metadata__") continue;
    const auto& t = it.value();
    safetensors_entry e;
    e.name = it.key();
    if (!t.is_object() || !t.contains("dtype") || !t["dtype"].is_string() || !t.contains("shape") ||
        !t["shape"].is_array() || !t.contains("data_offsets") || !t["data_offsets"].is_array() ||
        t["data_offsets"].size() != 2)
      return parse_error("safetensors tensor '" + e.name + "' lacks dtype, shape or data_offsets");
    e.dtype = t["dtype"].get<std::string>();
    if (t["shape"].size() > tensor_rank_max) return parse_error("safetensors tensor '" + e.name + "': rank above 8");
    for (const auto& d : t["shape"]) {
      if (!d.is_number_unsigned()) return parse_error("safetensors tensor '" + e.name + "': shape is not unsigned integers");
      e.shape.push_back(d.get<uint64_t>());
    }
    const auto& o = t["data_offsets"];
    if (!o[0].is_number_unsigned() || !o[1].is_number_unsigned())
      return parse_error("safetensors tensor '" + e.name + "': data_offsets are not unsigned integers");
    const uint64_t b = o[0].get<uint64_t>(), en = o[1].get<uint64_t>();
    if (b > en || en > size - base)
      return parse_error("safetensors tensor '" + e.name + "': data_offsets [" + std::to_string(b) +
                         ", " + std::to_string(en) + "] lie outside the " +
                         std::to_string(size - base) + " data bytes");
    e.begin = base + b;
    e.end = base + en;
    auto count = element_count(e.shape);
    if (!count) return count.error();
    size_t elem = 0;
    if (e.dtype == "F32") elem = 4;
    else if (e.dtype == "F16" || e.dtype == "BF16") elem = 2;
    if (elem && *count * elem != en - b)
      return parse_error("safetensors tensor '" + e.name + "': shape " + shape_text(e.shape) + " of " +
                         e.dtype + " needs " + std::to_string(*count * elem) + " bytes, data_offsets give " +
                         std::to_string(en - b));
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<uint8_t> write_safetensors(const std::vector<safetensors_input>& tensors) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  uint64_t off = 0;
  for (const auto& t : tensors) {
    j[t.name] = {{"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {off, off + t.bytes.size()}}};
    off += t.bytes.size();
  }
  std::string h = j.dump();
  h.append((8 - h.size() % 8) % 8, ' ');
  std::vector<uint8_t> out;
  wr64(out, h.size());
  out.insert(out.end(), h.begin(), h.end());
  for (const auto& t : tensors) out.insert(out.end(), t.bytes.begin(), t.bytes.end());
  return out;
}

}  // namespace pnmkv::trace
