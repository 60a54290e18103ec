// The fabric.* and faults.* choices (see config/enums.hpp). Defined here, below
// transport/, which uses them under their old names (transport::crc_mode,
// transport::ucx_transport, transport::ucx_rma_mode); a small header so that transport's
// public headers stay light.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.hpp"

namespace pnmkv {

// faults.at: fault point of the *_prob faults (the rule grammar's at=send|recv|both).
enum class fault_points { send, recv, both };
const char* to_string(fault_points p);
result<fault_points> parse_fault_points(const std::string& text);

// fabric.ucx_progress: who owns the UCX worker.
enum class ucx_progress { thread, caller };
const char* to_string(ucx_progress p);
result<ucx_progress> parse_ucx_progress(const std::string& text);

// fabric.frame_crc. Frame CRC32C, the emulated link CRC. `automatic`: on exactly when this
// node's fault plan can corrupt frames -- UCX's transports and the in-process queues never
// corrupt bytes, so otherwise it would cost two passes over every message for nothing
// (about 0.2 us per 1 KiB message here). KV payloads carry their own end-to-end CRC32C
// regardless. transport::crc_mode.
enum class crc_mode : uint8_t { automatic, on, off };
result<crc_mode> parse_frame_crc(const std::string& text);  // auto | on | off

// fabric.ucx_transport. transport::ucx_transport (transport/ucx_fabric.hpp names them and
// parses the command line's aliases).
enum class ucx_transport : uint8_t {
  any,  // UCX picks (shared memory on one host, tcp across hosts)
  tcp,  // UCX_TLS=tcp on ucx_options::net_devices
  shm,  // UCX_TLS=sm,self with peer error handling on the mm transports
};
result<ucx_transport> parse_ucx_transport_choice(const std::string& text);  // any | tcp | shm

// fabric.ucx_rma. transport::ucx_rma_mode.
enum class ucx_rma_mode : uint8_t {
  automatic,  // native for shm/any, active messages for tcp
  native,     // ucp_put_nbx / ucp_get_nbx with packed rkeys
  am,         // rendezvous active messages into the region (UCX 1.13's tcp put is slow)
};
result<ucx_rma_mode> parse_ucx_rma(const std::string& text);  // auto | native | am

}  // namespace pnmkv
