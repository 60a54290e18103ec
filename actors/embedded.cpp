// The embedded cluster: coordinator, GPU host, PNM devices and driver as actors of one CAF
// actor system, the data plane over the in-process fabric (the same Cap'n Proto bytes the
// UCX fabric carries between processes).
#include <caf/all.hpp>

#include <thread>

#include "actors/cluster.hpp"
#include "actors/control.hpp"
#include "actors/memory_guard.hpp"
#include "actors/nodes.hpp"
#include "transport/faults.hpp"
#include "transport/from_config.hpp"
#include "transport/inproc_fabric.hpp"

namespace pnmkv {

result<run_report> run_embedded(const config& cfg, const cluster_run_options& opts) {
  // Every node of an embedded run lives in this process: a fresh secret per run.
  auto setup = make_run_setup(cfg, make_cluster_secret());
  if (!setup) return setup.error();
  const auto& su = *setup;
  // The coordinator shares this process: it cannot be killed and restarted alone.
  {
    auto plan = transport::fault_plan_from(su->spec.faults);
    if (!plan) return plan.error();
    auto steps = transport::coordinator_crash_steps(plan->rules);
    if (!steps) return steps.error();
    if (!steps->empty())
      return status{errc::unsupported, "faults.script: \"crash node=0\" (the coordinator) needs pnmkv run "
                                       "--multiprocess, whose launcher kills the coordinator process and restarts "
                                       "it from its journal; the embedded cluster's coordinator shares this process"};
  }
  // Before anything is allocated: refuse a run this machine cannot hold.
  if (auto st = check_run_memory(*su, run_processes::embedded, opts.after_run_bytes); !st) return st;

  caf::actor_system_config acfg;
  acfg.set("scheduler.max-threads", std::max(2u, std::thread::hardware_concurrency()));
  acfg.set("logger.console", caf::atom("none"));
  caf::actor_system sys{acfg};

  auto hub = transport::make_inproc_hub();
  auto make_fabric = [&](uint32_t node) -> result<std::shared_ptr<transport::fabric>> {
    auto fo = actors::node_fabric_options(*su, node);
    if (!fo) return fo.error();
    auto f = transport::make_inproc_fabric(hub, *fo);
    if (!f) return f.error();
    return std::shared_ptr<transport::fabric>(std::move(f).value());
  };

  caf::scoped_actor self{sys};
  std::vector<caf::actor> actors;
  std::vector<std::shared_ptr<transport::fabric>> fabrics;
  auto coordinator = sys.spawn(actors::coordinator_actor, su, std::shared_ptr<actors::coordinator_journal>{});
  actors.push_back(coordinator);
  auto driver = sys.spawn(actors::driver_actor, su, coordinator, caf::actor{self});
  actors.push_back(driver);
  for (uint32_t id : su->device_ids()) {
    auto fab = make_fabric(id);
    if (!fab) return fab.error();
    auto dev = sys.spawn(actors::pnm_device_actor, su, id, coordinator, *fab);
    actors::bridge_fabric(**fab, dev);
    actors.push_back(dev);
    fabrics.push_back(*fab);
  }
  auto host_fab = make_fabric(gpu_host_node);
  if (!host_fab) return host_fab.error();
  auto host = sys.spawn(actors::gpu_host_actor, su, coordinator, *host_fab, opts.timeline);
  actors::bridge_fabric(**host_fab, host);
  actors.push_back(host);
  fabrics.push_back(*host_fab);

  result<run_report> out = status{errc::timeout, "the run did not finish within " +
                                                     std::to_string(opts.run_timeout_ms) + " ms"};
  bool done = false;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts.run_timeout_ms);
  while (!done) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    self->receive(
        [&](actors::done_atom, bool ok, const std::string& json) {
          done = true;
          if (std::string refused = actors::driver_refusal(json); !refused.empty()) {
            out = status{errc::invalid_argument, refused};
            return;
          }
          run_report rep = run_report::from_json(json);
          if (!ok && rep.completed == 0 && rep.failures.empty())
            out = status{errc::internal, "the run failed"};
          else
            out = rep;
        },
        [&](actors::ctl_atom, const std::string& bytes) {
          auto m = control::decode(bytes);
          if (!m) return;
          if (m->kind() != control::msg_kind::PROGRESS || !opts.on_progress) return;
          auto p = m->progress();
          opts.on_progress(p.getPhase().cStr(), p.getDone(), p.getTotal());
        },
        caf::after(left) >> [&] {});
  }
  for (auto& a : actors) self->send_exit(a, caf::exit_reason::user_shutdown);
  for (auto& f : fabrics) f->set_handler({});
  return out;
}

}  // namespace pnmkv
