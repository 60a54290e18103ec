// In-process fabric: every endpoint of the embedded cluster lives in one process and a hub
// moves the same framed Cap'n Proto bytes between them through bounded inboxes (a full
// inbox refuses the send with errc::capacity: real back-pressure). RMA put/get are bounds-
// checked memcpy into regions registered with the hub. Fault points, framing and statistics
// are those of every fabric (transport/fabric.hpp).
#pragma once

#include <memory>

#include "transport/fabric.hpp"

namespace pnmkv::transport {

class inproc_hub;

std::shared_ptr<inproc_hub> make_inproc_hub();

// One endpoint per node id; ids are unique within a hub.
result<std::unique_ptr<fabric>> make_inproc_fabric(const std::shared_ptr<inproc_hub>& hub,
                                                   const fabric_options& opts);

// Emulates a crashed node: its endpoint stops sending and receiving and every endpoint
// connected to it gets a peer_down event. The fabric object stays valid (its operations
// fail with peer_down) until destroyed.
void inproc_kill(inproc_hub& hub, node_id node);

}  // namespace pnmkv::transport
