// UCX (ucp) fabric: one endpoint per process, small messages as active messages, bulk
// put/get into registered regions, peer failure detection through UCP_ERR_HANDLING_MODE_PEER.
//
// One thread owns the ucp worker: either an internal progress thread (default), or -- with
// progress_thread = false -- the thread that created the fabric, which then makes progress
// inside poll() and the blocking conveniences (lowest latency: no thread hand-off; used by
// `pnmkv bench fabric`). Other threads hand their operations to the owner through a queue.
// Worker addresses are exchanged out of band: address() returns this endpoint's bytes,
// connect() takes a peer's. No UCX header is included here.
#pragma once

#include <chrono>
#include <memory>
#include <string>

#include "transport/fabric.hpp"

namespace pnmkv::transport {

// any | tcp | shm and automatic | native | am: defined with the config choices
// fabric.ucx_transport and fabric.ucx_rma (config/enums.hpp).
using ::pnmkv::ucx_transport;
const char* to_string(ucx_transport t);
bool parse_ucx_transport(const std::string& name, ucx_transport& out);

using ::pnmkv::ucx_rma_mode;

struct ucx_options {
  ucx_transport transport = ucx_transport::any;
  std::string net_devices = "lo";  // UCX_NET_DEVICES for tcp; empty: UCX's default
  bool progress_thread = true;
  // Busy-poll this long after the last activity before sleeping on the worker's event fd.
  std::chrono::microseconds spin{50};
  // UCX keepalive round interval: how fast a dead peer on shared memory is noticed.
  std::chrono::milliseconds keepalive{50};
  ucx_rma_mode rma = ucx_rma_mode::automatic;
};

result<std::unique_ptr<fabric>> make_ucx_fabric(const fabric_options& opts,
                                                const ucx_options& ucx);

}  // namespace pnmkv::transport
