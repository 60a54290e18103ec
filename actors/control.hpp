// Control-plane messages (actors/control.capnp) as plain structs, with an encoder and a
// validating decoder. No capnp or CAF type appears here.
#pragma once

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "core/status.hpp"

namespace pnmkv::control {

inline constexpr uint16_t control_version = 1;
inline constexpr size_t max_control_bytes = 16u << 20;  // a run report fits easily
inline constexpr size_t max_requests_per_run = 4096;

struct request_spec_msg {
  uint64_t request_id = 0;
  uint64_t context_tokens = 0;
  uint32_t steps = 0;        // decode steps; open workloads: output tokens − 1
  uint64_t arrival_ns = 0;   // open workloads: virtual arrival
};
struct hello_msg {
  uint32_t node = 0;
  uint8_t role = 0;
};
struct submit_msg {
  request_spec_msg request;
};
struct admission_msg {
  uint64_t request_id = 0;
  bool accepted = false;
  std::string reason;
};
struct placement_ack_msg {
  uint32_t node = 0;
  uint64_t request_id = 0;
  bool ok = false;
  std::string reason;
};
struct run_start_msg {
  std::vector<request_spec_msg> requests;
  bool open = false;  // open workload: the host admits over time (admit_msg)
};
struct admit_msg {
  uint64_t request_id = 0;
  uint32_t in_system = 0;
};
struct release_msg {
  uint64_t request_id = 0;
};
struct run_result_msg {
  std::string report_json;
  bool ok = false;
  std::string reason;
};
struct shutdown_msg {};
struct member_down_msg {
  uint32_t node = 0;
  std::string reason;
};
struct progress_msg {
  std::string phase;
  uint64_t done = 0;
  uint64_t total = 0;
};

using control_body = std::variant<hello_msg, submit_msg, admission_msg, placement_ack_msg,
                                  run_start_msg, run_result_msg, shutdown_msg, progress_msg,
                                  member_down_msg, admit_msg, release_msg>;

struct control_message {
  uint32_t sender = 0;
  control_body body;
};

std::string encode(const control_message& m);
// Validates version, size, traversal limit and counts; never throws.
result<control_message> decode(const std::string& bytes);

}  // namespace pnmkv::control
