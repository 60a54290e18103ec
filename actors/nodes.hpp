// The CAF actors of a pnmkv cluster: coordinator, gpu_host, pnm_device and driver. Include
// only from actors/*.cpp and apps/ code that wires a cluster: CAF headers are heavy.
#pragma once

#include <caf/all.hpp>

#include <memory>
#include <string>

#include "actors/run_setup.hpp"
#include "transport/fabric.hpp"

namespace pnmkv::actors {

using wire_atom = caf::atom_constant<caf::atom("wire")>;      // data-plane bytes from a fabric
using peer_down_atom = caf::atom_constant<caf::atom("peerdown")>;
using ctl_atom = caf::atom_constant<caf::atom("ctl")>;        // control.capnp bytes
using join_atom = caf::atom_constant<caf::atom("join")>;      // wire.capnp join bytes
using member_atom = caf::atom_constant<caf::atom("member")>;  // wire.capnp membership bytes
using tick_atom = caf::atom_constant<caf::atom("tick")>;
using retry_atom = caf::atom_constant<caf::atom("retry")>;  // run.retry_after_ms
using done_atom = caf::atom_constant<caf::atom("done")>;

// Fabric options for `node` from the configuration (fabric.*, faults.*), with the link
// model from the hardware file.
result<transport::fabric_options> node_fabric_options(const run_setup& setup, uint32_t node);

// The fabric's events become messages in the actor's mailbox (wire_atom / peer_down_atom).
void bridge_fabric(transport::fabric& fab, const caf::actor& target);

caf::behavior coordinator_actor(caf::event_based_actor* self,
                                std::shared_ptr<const run_setup> setup);

// fab: this node's data-plane endpoint (outlives the actor).
caf::behavior pnm_device_actor(caf::event_based_actor* self,
                               std::shared_ptr<const run_setup> setup, uint32_t node,
                               caf::actor coordinator, std::shared_ptr<transport::fabric> fab);

// Reports progress and the run's result to the coordinator, which forwards them to the
// driver that submitted the requests.
caf::behavior gpu_host_actor(caf::event_based_actor* self, std::shared_ptr<const run_setup> setup,
                             caf::actor coordinator, std::shared_ptr<transport::fabric> fab);

// Submits the configured batch to the coordinator, collects admissions and the run result,
// and hands the final report (JSON) to `report_to` as (done_atom, ok, json); progress goes
// to `report_to` as (ctl_atom, progress bytes). Then asks the coordinator to shut the
// cluster down.
caf::behavior driver_actor(caf::event_based_actor* self, std::shared_ptr<const run_setup> setup,
                           caf::actor coordinator, caf::actor report_to);

}  // namespace pnmkv::actors
