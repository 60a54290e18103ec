// CRC32C (Castagnoli, the iSCSI / ext4 polynomial) over byte ranges. Used for KV payloads in
// messages and for the fabric's per-frame check. SSE4.2 instruction when the CPU has it
// (checked at run time), a table otherwise; both give the same value.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pnmkv::transport {

// crc32c(a ++ b) == crc32c(b, crc32c(a)): pass the previous value to extend.
uint32_t crc32c(const void* data, size_t size, uint32_t crc = 0);

}  // namespace pnmkv::transport
