// A chaos schedule (transport/chaos_schedule.hpp) mapped onto the container cluster
// (docker/): what the containers can do to a node from outside stands in for the fault the
// schedule drew, and what they cannot do from outside stays a fault-point rule that the
// containers' nodes run themselves (they load the same faults.script):
//   crash            -> SIGKILL of the device's container (`cluster.sh fault crash`)
//   hang             -> `docker pause` (cgroup freezer) of the device, `docker unpause` the
//                       drawn ms later
//   partition        -> `docker network disconnect` of the device at the first drawn step,
//                       `connect` when the run reports the step after the last one
//   coordinator-kill -> SIGKILL to the coordinator's process (`cluster.sh fault
//                       coordinator`; Docker restarts it from its journal)
//   drop, duplicate, corrupt, delay, slow-link -> the schedule's rule in the nodes' script
// Steps are the decode steps the run reports to its driver (progress), so an action strikes
// when the run has reached its step, not at a wall-clock guess; the time the docker
// command takes (~0.1 s) is the only slack. Undo actions (unpause, connect) that are not
// due when the run ends are done then, so no container is left frozen or cut off.
// Pure: no I/O, no CAF; the runner (actors/chaos_compose.cpp) executes the plan.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "transport/chaos_schedule.hpp"

namespace pnmkv::transport {

// docker/cluster.sh's fault kinds (`cluster.sh fault KIND TARGET`).
enum class container_op : uint8_t { crash, pause, resume, partition, heal, coordinator };
const char* to_string(container_op op);

struct container_action {
  container_op op = container_op::crash;
  uint32_t node = 0;        // the node id (0: the coordinator); cluster.sh's TARGET
  size_t event = 0;         // the schedule event it comes from
  // A strike is due once the run has reported decode step `at_step`. An undo (resume,
  // heal) names its strike and is due only after it: at decode step `at_step` when that is
  // set (heal), else `after_ms` after the strike was done (resume).
  uint32_t at_step = 0;
  uint32_t after_ms = 0;
  int64_t strike = -1;      // >= 0: this action undoes action `strike`
  bool undo() const { return strike >= 0; }
};

struct container_plan {
  std::string node_script;  // rules the nodes' own fault points run ("" : none)
  std::vector<container_action> actions;
};

// The container kinds, by chaos fault: every kind maps; a kind without a mapping (one added
// to chaos_fault later) is refused naming the ones that have one.
const char* container_fault_kinds();  // "crash, hang, partition, ..." for messages
result<container_plan> plan_for_containers(const chaos_schedule& s);

// The executor's clock, pure: which actions are due now. `done_ms[i]` is when action i
// was done (ms on any monotonic clock; < 0: not yet); `step` is the last decode step the run
// reported; `run_over` makes every pending undo due and nothing else (a strike whose step
// the run never reached is not injected). Indices ascending; each action once.
std::vector<size_t> due_container_actions(const container_plan& p, uint32_t step, int64_t now_ms,
                                          const std::vector<int64_t>& done_ms, bool run_over);

}  // namespace pnmkv::transport
