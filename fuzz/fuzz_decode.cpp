// libFuzzer target for one wire decoder: PNMKV_FUZZ_KIND is a msg_kind index (decode_kind)
// or -1 (the generic decode plus peek_envelope). Property: no input crashes, leaks or reads
// out of bounds (ASan), and anything accepted, copied into a new outbound (a deep copy that
// follows every pointer of the body), gives bytes that decode again.
#include <capnp/dynamic.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "transport/messages.hpp"

using namespace pnmkv::transport;

// The target's name (from fuzz/CMakeLists.txt) must name the kind it decodes.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
#if PNMKV_FUZZ_KIND >= 0
  const char* got = to_string(static_cast<msg_kind>(PNMKV_FUZZ_KIND));
  if (std::strcmp(got, PNMKV_FUZZ_KIND_NAME) != 0) {
    std::fprintf(stderr, "fuzz target %s decodes kind %s: fix the list in fuzz/CMakeLists.txt\n",
                 PNMKV_FUZZ_KIND_NAME, got);
    std::abort();
  }
#endif
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const wire_limits limits{};
  static wire_stats stats;  // one warning per reason, then counting only
#if PNMKV_FUZZ_KIND < 0
  auto r = decode(data, size, limits, &stats);
  (void)peek_envelope(data, size);
#else
  static_assert(PNMKV_FUZZ_KIND < static_cast<int>(msg_kind_count), "kind index out of range");
  auto r = decode_kind(static_cast<msg_kind>(PNMKV_FUZZ_KIND), data, size, limits, &stats);
#endif
  if (r.is_ok()) {
    outbound copy(r->env(), size);
    auto from = capnp::toDynamic(r->body());
    auto to = capnp::toDynamic(copy.body());
    KJ_IF_MAYBE(field, from.which()) { to.set(*field, from.get(*field)); }
    auto again = decode(copy.finish(), limits, &stats);
    if (!again.is_ok()) std::abort();  // the decoder returned something it would refuse
  }
  return 0;
}
