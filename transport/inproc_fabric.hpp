// In-process fabric: every endpoint of the embedded cluster lives in one process and a hub
// moves the same framed Cap'n Proto bytes between them through bounded inboxes (a full
// inbox refuses the send with errc::capacity: real back-pressure). RMA put/get are bounds-
// checked memcpy into regions registered with the hub. Fault points, framing and statistics
// are those of every fabric (transport/fabric.hpp).
#pragma once

#include <memory>
#include <vector>

#include "transport/fabric.hpp"

namespace pnmkv::transport {

class inproc_hub;

// How a hub's endpoints make progress: each with a thread of its own, started on first need
// (the embedded cluster), or driven by the caller (the deterministic simulator,
// actors/detsim): no thread is started; received events wait in the inboxes and held
// frames (delay, stall) in the timers until the caller moves them with the functions below.
enum class inproc_progress : uint8_t { threads, caller };

std::shared_ptr<inproc_hub> make_inproc_hub(inproc_progress progress = inproc_progress::threads);

// One endpoint per node id; ids are unique within a hub.
result<std::unique_ptr<fabric>> make_inproc_fabric(const std::shared_ptr<inproc_hub>& hub,
                                                   const fabric_options& opts);

// Emulates a crashed node: its endpoint stops sending and receiving and every endpoint
// connected to it gets a peer_down event. The fabric object stays valid (its operations
// fail with peer_down) until destroyed.
void inproc_kill(inproc_hub& hub, node_id node);

// Caller-driven hubs. Endpoints whose inbox holds an event for their handler, by node id.
std::vector<node_id> inproc_ready(inproc_hub& hub);
// Hands the oldest waiting event of `node`'s endpoint to its handler; false when none.
bool inproc_deliver_one(inproc_hub& hub, node_id node);
// The earliest due time of a frame held by any endpoint (delay, stall); max() when none.
fabric_clock::time_point inproc_next_timer(inproc_hub& hub);
// Moves on every frame held until `now` or earlier, at every endpoint.
void inproc_run_timers(inproc_hub& hub, fabric_clock::time_point now);
// Node ids of the endpoints still registered with the hub (each leaves when its fabric is
// destroyed).
std::vector<node_id> inproc_endpoints(inproc_hub& hub);

}  // namespace pnmkv::transport
