// The fabric.* and faults.* choices (see config/enums.hpp), each with its name table.
// Defined here, below transport/, which uses them under their old names
// (transport::crc_mode, transport::ucx_transport, transport::ucx_rma_mode); a small header
// so that transport's public headers stay light.
#pragma once

#include <cstdint>

#include "core/enum_names.hpp"

namespace pnmkv {

// faults.at: fault point of the *_prob faults (the rule grammar's at=send|recv|both).
enum class fault_points { send, recv, both };
inline constexpr enum_name<fault_points> fault_points_names[] = {
    {"send", fault_points::send}, {"recv", fault_points::recv}, {"both", fault_points::both}};
const char* to_string(fault_points p);

// fabric.ucx_progress: who owns the UCX worker.
enum class ucx_progress { thread, caller };
inline constexpr enum_name<ucx_progress> ucx_progress_names[] = {{"thread", ucx_progress::thread},
                                                                 {"caller", ucx_progress::caller}};
const char* to_string(ucx_progress p);

// fabric.frame_crc. Frame CRC32C, the emulated link CRC. `automatic`: on exactly when this
// node's fault plan can corrupt frames -- UCX's transports and the in-process queues never
// corrupt bytes, so otherwise it would cost two passes over every message for nothing
// (about 0.2 us per 1 KiB message here). KV payloads carry their own end-to-end CRC32C
// regardless. transport::crc_mode.
enum class crc_mode : uint8_t { automatic, on, off };
inline constexpr enum_name<crc_mode> crc_mode_names[] = {
    {"auto", crc_mode::automatic}, {"on", crc_mode::on}, {"off", crc_mode::off}};

// fabric.ucx_transport. transport::ucx_transport (transport/ucx_fabric.hpp names them and
// parses the command line's aliases).
enum class ucx_transport : uint8_t {
  any,  // UCX picks (shared memory on one host, tcp across hosts)
  tcp,  // UCX_TLS=tcp on ucx_options::net_devices (the default: a killed peer wedges nothing)
  shm,  // UCX_TLS=sm,self with peer error handling on the mm transports
};
inline constexpr enum_name<ucx_transport> ucx_transport_names[] = {
    {"any", ucx_transport::any}, {"tcp", ucx_transport::tcp}, {"shm", ucx_transport::shm}};

// fabric.ucx_rma. transport::ucx_rma_mode.
enum class ucx_rma_mode : uint8_t {
  automatic,  // native for shm/any, active messages for tcp
  native,     // ucp_put_nbx / ucp_get_nbx with packed rkeys
  am,         // rendezvous active messages into the region (UCX 1.13's tcp put is slow)
};
inline constexpr enum_name<ucx_rma_mode> ucx_rma_mode_names[] = {
    {"auto", ucx_rma_mode::automatic}, {"native", ucx_rma_mode::native}, {"am", ucx_rma_mode::am}};

}  // namespace pnmkv
