// What every actor of a cluster shares (actors/coordinator, gpu_host, pnm_device, driver):
// the mailbox atoms, the bridge from a fabric into a mailbox, the join protocol, the
// conversion of placements to and from their wire form, and the "cluster" logger. Include
// only from actors/*.cpp and apps/ code that wires a cluster: CAF headers are heavy.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "actors/control.hpp"
#include "actors/run_setup.hpp"
#include "schedulers/placement.hpp"
#include "transport/fabric.hpp"
#include "transport/messages.hpp"

namespace spdlog {
class logger;
}

namespace pnmkv::actors {

using wire_atom = caf::atom_constant<caf::atom("wire")>;      // data-plane bytes from a fabric
using peer_down_atom = caf::atom_constant<caf::atom("peerdown")>;
using ctl_atom = caf::atom_constant<caf::atom("ctl")>;        // control.capnp bytes
using join_atom = caf::atom_constant<caf::atom("join")>;      // wire.capnp join bytes
using member_atom = caf::atom_constant<caf::atom("member")>;  // wire.capnp membership bytes
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using retry_atom = caf::atom_constant<caf::atom("retry")>;  // run.retry_after_ms
using silence_atom = caf::atom_constant<caf::atom("silence")>;  // cluster.device_timeout_ms
using done_atom = caf::atom_constant<caf::atom("done")>;
using backlog_atom = caf::atom_constant<caf::atom("backlog")>;  // sends held by back-pressure
// A restarted coordinator (its new handle): the node joins it again (docs/DESIGN.md §7).
using coord_atom = caf::atom_constant<caf::atom("coord")>;

// Fabric options for `node` from the configuration (fabric.*, faults.*), with the link
// model from the hardware file.
result<transport::fabric_options> node_fabric_options(const run_setup& setup, uint32_t node);

// The fabric's events become messages in the actor's mailbox (wire_atom / peer_down_atom).
void bridge_fabric(transport::fabric& fab, const caf::actor& target);

// ---------------------------------------------------------------------------------------
// For the actors' own files.

// The "cluster" logger (stderr), made once per process.
spdlog::logger& cluster_log();

std::string to_str(const std::vector<uint8_t>& b);

// A wire.capnp message from `sender` to fill (outbound::body()); wire_string() makes its
// bytes (or a control::outbound's) a CAF message payload.
transport::outbound wire_message(uint32_t sender, size_t payload_bytes = 0);
template <class Root>
std::string wire_string(transport::basic_outbound<Root>& m) {
  return to_str(m.finish());
}

void placement_to_wire(const request_placement& p, transport::wire::Placement::Builder out);
request_placement placement_from_wire(transport::wire::Placement::Reader p);

// Connects the fabric to each member of `role` in a membership that is not in `connected`
// yet (the GPU host to its devices, a device to the GPU host); failures are logged.
void connect_members(transport::fabric& fab, transport::wire::Membership::Reader membership,
                     transport::node_role role, std::set<uint32_t>& connected, uint32_t self);

// Join protocol shared by devices, the GPU host and the driver: hello -> challenge ->
// signed join (an HMAC of the cluster secret over the nonce) -> ack.
void start_join(caf::event_based_actor* self, const caf::actor& coordinator, uint32_t node,
                transport::node_role role);

// Handles a join-protocol message addressed to a joiner; true when it was one. On the ack,
// `on_ack(accepted, reason)` when given; without it a refused joiner logs and quits.
bool on_join_bytes(caf::event_based_actor* self, const run_setup& setup,
                   const caf::actor& coordinator, uint32_t node, transport::node_role role,
                   const std::vector<uint8_t>& address, const std::string& bytes,
                   const std::function<void(bool, const std::string&)>& on_ack = {});

}  // namespace pnmkv::actors
