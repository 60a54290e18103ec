// The "transport" spdlog logger (created on first use, shared with anyone who registers the
// same name first). Include only from .cpp files: spdlog is heavy.
#pragma once

#include <spdlog/spdlog.h>

namespace pnmkv::transport {
spdlog::logger& log();
}  // namespace pnmkv::transport
