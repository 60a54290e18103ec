// The CXL link model in virtual time (docs/DESIGN.md §5): each logical link host <-> switch <->
// device has a memory latency, a bandwidth per direction and switch hops. Pure: no UCX, no
// clocks, no I/O, so the live emulator, the simulator and tests share it.
//
// A transfer of B bytes in one direction takes
//   latency_ns + switch_hops * hop_latency_ns + B / bw_gbps   (1 GB/s == 1 byte/ns)
// and a link_occupancy serialises the bandwidth part per direction: a transfer starts when
// both its data is ready and the direction is free; latency overlaps (pipelined link).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "core/check.hpp"

namespace pnmkv::transport {

enum class link_direction : uint8_t { host_to_device, device_to_host };

// Defaults from docs/HARDWARE.md. model/ fills this from the hardware YAML.
struct link_params {
  double latency_ns = 300;         // CXL memory load latency, ~250-350 ns (Micron CZ120)
  double bw_gbps_h2d = 64;         // PCIe 5.0 x16 raw, per direction
  double bw_gbps_d2h = 64;
  uint32_t switch_hops = 1;        // host -> switch -> device
  double hop_latency_ns = 100;     // per switch hop: assumed, no public figure
  bool assumed = true;             // some figure above has no public source
};

// Time for `bytes` to cross the link in `dir`, from first byte sent to last byte received.
uint64_t transfer_time_ns(const link_params& p, uint64_t bytes, link_direction dir);
// The bandwidth part only (how long the direction is busy).
uint64_t serialization_ns(const link_params& p, uint64_t bytes, link_direction dir);

// Busy-until per direction of one link, in virtual ns. Not thread-safe: one owner.
class link_occupancy {
 public:
  explicit link_occupancy(link_params p = {}) : p_(p) {}
  // Schedules a transfer whose data is ready at `ready_ns`; returns its arrival time.
  uint64_t reserve(uint64_t ready_ns, uint64_t bytes, link_direction dir);
  uint64_t busy_until_ns(link_direction dir) const { return busy_[index(dir)]; }
  uint64_t bytes_moved(link_direction dir) const { return bytes_[index(dir)]; }
  const link_params& params() const { return p_; }

 private:
  static size_t index(link_direction d) { return d == link_direction::host_to_device ? 0 : 1; }
  link_params p_;
  uint64_t busy_[2] = {0, 0};
  uint64_t bytes_[2] = {0, 0};
};

// docs/DESIGN.md §5: a receiver's clock = max(own clock, message time) + its op cost.
inline uint64_t advance_clock(uint64_t& own_ns, uint64_t message_ns, uint64_t op_cost_ns) {
  uint64_t before = own_ns;
  own_ns = std::max(own_ns, message_ns) + op_cost_ns;
  PNMKV_CHECK_GE(own_ns, before);  // virtual clocks never go back (no overflow)
  return own_ns;
}

// Optional pacing for demos: sleeps so that wall time follows virtual time, scaled
// (wall ns per virtual ns). The first call anchors virtual 0 to "now".
class pacer {
 public:
  explicit pacer(double wall_per_virtual = 1.0) : scale_(wall_per_virtual) {}
  // Blocks until wall time has caught up with `virtual_ns`; returns how long it slept.
  std::chrono::nanoseconds wait_until(uint64_t virtual_ns);
  // The wall time at which `virtual_ns` is due (anchoring on first use).
  std::chrono::steady_clock::time_point due(uint64_t virtual_ns);

 private:
  double scale_;
  bool anchored_ = false;
  std::chrono::steady_clock::time_point origin_{};
};

}  // namespace pnmkv::transport
