#include "core/status.hpp"

namespace pnmkv {

const char* to_string(errc code) {
  switch (code) {
    case errc::ok: return "ok";
    case errc::invalid_argument: return "invalid_argument";
    case errc::out_of_range: return "out_of_range";
    case errc::shape_mismatch: return "shape_mismatch";
    case errc::capacity: return "capacity";
    case errc::parse: return "parse";
    case errc::io: return "io";
    case errc::unsupported: return "unsupported";
    case errc::timeout: return "timeout";
    case errc::peer_down: return "peer_down";
    case errc::internal: return "internal";
    case errc::not_ready: return "not_ready";
  }
  return "unknown";
}

std::string status::to_string() const {
  if (is_ok()) return "ok";
  return std::string(pnmkv::to_string(code_)) + ": " + message_;
}

}  // namespace pnmkv
