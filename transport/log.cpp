#include "transport/log.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>

#include <mutex>

namespace pnmkv::transport {

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    static std::mutex m;
    std::lock_guard<std::mutex> lock(m);
    if (auto existing = spdlog::get("transport")) return existing;
    try {
      return spdlog::stderr_color_mt("transport");
    } catch (const spdlog::spdlog_ex&) {  // registered meanwhile by someone else
      return spdlog::get("transport");
    }
  }();
  return *logger;
}

}  // namespace pnmkv::transport
