// Bytes as lowercase hex text and back: how worker addresses cross a pipe between a test or
// benchmark and its peer process, and how a cluster secret is written to its file.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv::transport {

std::string to_hex(const std::vector<uint8_t>& bytes);
// The inverse of to_hex; an odd length or a non-hex character is an error naming it.
result<std::vector<uint8_t>> from_hex(const std::string& text);

}  // namespace pnmkv::transport
