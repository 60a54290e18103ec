#include "transport/link_model.hpp"

#include <cmath>
#include <thread>

#include "core/check.hpp"

namespace pnmkv::transport {

uint64_t serialization_ns(const link_params& p, uint64_t bytes, link_direction dir) {
  double bw = dir == link_direction::host_to_device ? p.bw_gbps_h2d : p.bw_gbps_d2h;
  PNMKV_CHECK_GT(bw, 0.0);
  return static_cast<uint64_t>(std::ceil(static_cast<double>(bytes) / bw));
}

uint64_t transfer_time_ns(const link_params& p, uint64_t bytes, link_direction dir) {
  double fixed = p.latency_ns + p.switch_hops * p.hop_latency_ns;
  return static_cast<uint64_t>(std::llround(fixed)) + serialization_ns(p, bytes, dir);
}

uint64_t link_occupancy::reserve(uint64_t ready_ns, uint64_t bytes, link_direction dir) {
  size_t i = index(dir);
  uint64_t start = std::max(ready_ns, busy_[i]);
  uint64_t ser = serialization_ns(p_, bytes, dir);
  busy_[i] = start + ser;
  bytes_[i] += bytes;
  return start + transfer_time_ns(p_, bytes, dir);
}

std::chrono::steady_clock::time_point pacer::due(uint64_t virtual_ns) {
  if (!anchored_) {
    origin_ = std::chrono::steady_clock::now();
    anchored_ = true;
  }
  return origin_ + std::chrono::nanoseconds(
                       static_cast<int64_t>(static_cast<double>(virtual_ns) * scale_));
}

std::chrono::nanoseconds pacer::wait_until(uint64_t virtual_ns) {
  auto t = due(virtual_ns);
  auto now = std::chrono::steady_clock::now();
  if (t <= now) return std::chrono::nanoseconds{0};
  std::this_thread::sleep_until(t);
  return t - now;
}

}  // namespace pnmkv::transport
