// The driver: joins the cluster like a node (it proves the cluster secret; the coordinator
// takes no request or shutdown from anyone who has not), submits the configured requests to
// the coordinator (a closed batch, or an open workload's arrivals), collects the admissions
// and the run's result, and hands the final report (JSON) to `report_to`; then asks the
// coordinator to shut the cluster down.
#pragma once

#include <caf/all.hpp>

#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "actors/control.hpp"
#include "actors/node_common.hpp"
#include "actors/run_setup.hpp"

namespace pnmkv::actors {

class driver_state {
 public:
  using actor_type = caf::stateful_actor<driver_state>;
  explicit driver_state(actor_type* self) : self_(self) {}

  // Starts the join; before the behavior. The requests go once the join is accepted.
  void init(std::shared_ptr<const run_setup> setup, caf::actor coordinator, caf::actor report_to);

  // Handlers.
  void on_control(const std::string& bytes);
  void on_join(const std::string& bytes);
  // The launcher gives up on the run: the cluster is asked to shut down, the driver quits.
  void on_stop();
  // A restarted coordinator: join it again and submit every request again (it answers the
  // ones it had decided again; each request's answer counts once).
  void on_coordinator(const caf::actor& coordinator);

 private:
  void on_admission(control::wire::Admission::Reader a);
  void on_result(control::wire::RunResult::Reader r);
  void submit(const control::request_spec& r);
  void submit_all();

  actor_type* self_;
  std::shared_ptr<const run_setup> setup_;
  caf::actor coordinator_, report_to_;
  std::vector<std::string> failures_;
  uint64_t accepted_ = 0, refused_ = 0;
  std::set<uint64_t> answered_;  // requests whose admission answer arrived
  std::string stopping_;  // a Stop was passed on (SIGINT / SIGTERM to its process): why
};

// Hands the final report (JSON) to `report_to` as (done_atom, ok, json); progress goes to
// `report_to` as (ctl_atom, progress bytes). A Stop sent to it (ctl_atom, stop bytes) goes
// on to the coordinator: the run ends early and its report says what finished. A refused
// join is (done_atom, false, json) with the coordinator's reason under "refused"
// (driver_refusal reads it). (stop_atom) from the launcher, which gives up on the run,
// shuts the cluster down.
using stop_atom = caf::atom_constant<caf::atom("stop")>;
caf::behavior driver_actor(driver_state::actor_type* self, std::shared_ptr<const run_setup> setup,
                           caf::actor coordinator, caf::actor report_to);

// The coordinator's reason when `report_json` is a refused join's; empty otherwise.
std::string driver_refusal(const std::string& report_json);

}  // namespace pnmkv::actors
