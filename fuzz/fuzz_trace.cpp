// libFuzzer target for the KV trace parsers (trace/formats.hpp, trace/kv_trace.hpp): the
// first byte picks .npy header, zip directory (then every member extracted within 1 MiB),
// safetensors header or manifest.json; none may crash, hang or read out of bounds,
// whatever the bytes.
#include <cstddef>
#include <cstdint>
#include <string>

#include "trace/formats.hpp"
#include "trace/kv_trace.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t* p = data + 1;
  const size_t n = size - 1;
  using namespace pnmkv::trace;
  switch (data[0] % 4) {
    case 0: {
      auto h = parse_npy_header(p, n);
      if (h) (void)element_count(h->shape);
      break;
    }
    case 1: {
      auto members = parse_zip(p, n);
      if (members)
        for (const auto& m : *members) (void)zip_extract(p, n, m, 1 << 20);
      break;
    }
    case 2:
      (void)parse_safetensors(p, n);
      break;
    default:
      (void)parse_manifest(std::string(reinterpret_cast<const char*>(p), n), "fuzz");
      break;
  }
  return 0;
}
