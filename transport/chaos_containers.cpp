#include "transport/chaos_containers.hpp"

#include "core/check.hpp"

namespace pnmkv::transport {

const char* to_string(container_op op) {
  switch (op) {
    case container_op::crash: return "crash";
    case container_op::pause: return "pause";
    case container_op::resume: return "resume";
    case container_op::partition: return "partition";
    case container_op::heal: return "heal";
    case container_op::coordinator: return "coordinator";
  }
  return "unknown";
}

const char* container_fault_kinds() {
  return "crash, hang, partition, coordinator-kill (container actions); drop, duplicate, corrupt, delay, "
         "slow-link (the nodes' fault points)";
}

result<container_plan> plan_for_containers(const chaos_schedule& s) {
  container_plan p;
  auto add_rule = [&](const std::string& rule) { p.node_script += (p.node_script.empty() ? "" : "; ") + rule; };
  for (size_t i = 0; i < s.events.size(); ++i) {
    const chaos_event& e = s.events[i];
    const bool device_level = e.kind == chaos_fault::crash || e.kind == chaos_fault::hang ||
                              e.kind == chaos_fault::partition;
    if (device_level && e.node < 1)
      return status{errc::invalid_argument, std::string("chaos event \"") + e.rule + "\": a " + to_string(e.kind) +
                                                " in containers needs one device (node=)"};
    if (device_level && e.step < 1)
      return status{errc::invalid_argument, std::string("chaos event \"") + e.rule + "\": needs a decode step >= 1"};
    container_action a;
    a.node = e.node < 0 ? 0 : uint32_t(e.node);
    a.event = i;
    a.at_step = e.step;
    switch (e.kind) {
      case chaos_fault::crash:
        a.op = container_op::crash;
        p.actions.push_back(a);
        break;
      case chaos_fault::hang: {
        if (e.ms == 0) return status{errc::invalid_argument, "chaos event \"" + e.rule + "\": a hang needs ms > 0"};
        a.op = container_op::pause;
        p.actions.push_back(a);
        container_action r = a;
        r.op = container_op::resume;
        r.at_step = 0;
        r.after_ms = e.ms;
        r.strike = int64_t(p.actions.size() - 1);
        p.actions.push_back(r);
        break;
      }
      case chaos_fault::partition: {
        if (e.step_end < e.step)
          return status{errc::invalid_argument, "chaos event \"" + e.rule + "\": its last step is before its first"};
        a.op = container_op::partition;
        p.actions.push_back(a);
        container_action h = a;
        h.op = container_op::heal;
        h.at_step = e.step_end + 1;  // cut for steps step..step_end, as the rule's fault points would
        h.strike = int64_t(p.actions.size() - 1);
        p.actions.push_back(h);
        break;
      }
      case chaos_fault::coordinator_kill:
        if (e.step < 1)
          return status{errc::invalid_argument, "chaos event \"" + e.rule + "\": needs a decode step >= 1"};
        a.op = container_op::coordinator;
        a.node = 0;
        p.actions.push_back(a);
        break;
      case chaos_fault::drop:
      case chaos_fault::duplicate:
      case chaos_fault::corrupt:
      case chaos_fault::delay:
      case chaos_fault::slow_link:
        if (e.rule.empty()) return status{errc::invalid_argument, "chaos event without a rule"};
        add_rule(e.rule);
        break;
      default:
        return status{errc::unsupported, std::string("chaos fault \"") + to_string(e.kind) +
                                             "\" cannot be injected in the container cluster; allowed: " +
                                             container_fault_kinds()};
    }
  }
  return p;
}

std::vector<size_t> due_container_actions(const container_plan& p, uint32_t step, int64_t now_ms,
                                          const std::vector<int64_t>& done_ms, bool run_over) {
  PNMKV_CHECK(done_ms.size() == p.actions.size(), "one done time per action");
  std::vector<size_t> due;
  for (size_t i = 0; i < p.actions.size(); ++i) {
    const container_action& a = p.actions[i];
    if (done_ms[i] >= 0) continue;
    if (!a.undo()) {
      if (!run_over && step >= a.at_step) due.push_back(i);
      continue;
    }
    PNMKV_CHECK(a.strike >= 0 && size_t(a.strike) < i, "an undo follows the action it undoes");
    const int64_t struck = done_ms[size_t(a.strike)];
    if (struck < 0) continue;  // never undo what was not done
    const bool time_up = a.at_step > 0 ? step >= a.at_step : now_ms - struck >= int64_t(a.after_ms);
    if (run_over || time_up) due.push_back(i);
  }
  return due;
}

}  // namespace pnmkv::transport
