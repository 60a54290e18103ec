// Deterministic fault simulation (see detsim.hpp): the embedded cluster's actors under
// CAF's test coordinator, the in-process fabric driven by this loop, one virtual clock.
#include "actors/detsim.hpp"

#include <caf/all.hpp>
#include <caf/scheduler/test_coordinator.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "actors/nodes.hpp"
#include "transport/from_config.hpp"
#include "transport/inproc_fabric.hpp"
#include "transport/log.hpp"

namespace pnmkv {

namespace {

// splitmix64: the seed's one source of choices (the same numbers on every platform).
struct seeded {
  uint64_t s;
  uint64_t next() {
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }
  uint64_t in(uint64_t lo, uint64_t hi) { return lo + below(hi - lo + 1); }  // inclusive
  double unit() { return double(next() >> 11) * 0x1.0p-53; }
  bool chance(double p) { return unit() < p; }
};

uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0x100000001b3ull;
}

std::string fmt_p(double p) {
  std::ostringstream o;
  o.precision(3);
  o << p;
  return o.str();
}

// A fixed secret: every node of a detsim run is in this process, and the run must not
// depend on randomness outside the seed.
const std::string detsim_secret = "detsim-fixed-cluster-secret-0123456789abcdef";

}  // namespace

std::vector<std::string> detsim_base_sets() {
  return {"workload.context_tokens=512",   "workload.batch=2",          "selection.budget_tokens=128",
          "workload.prefill_chunk_tokens=128", "run.steps=6",           "cluster.pnm_devices=4",
          "cluster.replication=2",         "run.retry_after_ms=100",    "run.step_timeout_ms=20000",
          "run.prefill_timeout_ms=60000",  "cluster.device_timeout_ms=1000",
          // png-kv (a variant): steady pages within the small budget, chosen within the run.
          "png.steady_budget_tokens=64",   "png.window_steps=2",        "png.reevaluate_every_steps=2",
          "png.warmup_steps=1",
          // Recovery after a loss is drawn per seed (detsim_rebuilds; not with --basic).
          "cluster.rereplicate=false",     "cluster.recompute=false"};
}

std::string detsim_schedule::script() const {
  std::string s;
  for (const auto& r : rules) s += (s.empty() ? "" : "; ") + r;
  return s;
}

detsim_schedule detsim_draw_schedule(uint64_t seed, const std::vector<uint32_t>& devices, uint32_t steps,
                                     uint32_t classes) {
  seeded rng{mix(seed, 0x5eed)};
  detsim_schedule out;
  if (devices.empty()) return out;
  std::vector<uint32_t> device_kinds;
  for (uint32_t c : {detsim_crash, detsim_hang, detsim_partition})
    if (classes & c) device_kinds.push_back(c);
  const uint32_t last_step = std::max<uint32_t>(steps, 1) - 1;
  // Up to two device faults, on any devices (the same one twice is allowed).
  const uint64_t n_dev = device_kinds.empty() ? 0 : rng.below(3);
  for (uint64_t i = 0; i < n_dev; ++i) {
    const uint32_t dev = devices[rng.below(devices.size())];
    const uint32_t kind = device_kinds[rng.below(device_kinds.size())];
    const std::string node = " node=" + std::to_string(dev);
    out.struck_devices.push_back(dev);
    if (kind == detsim_crash) {
      // At a decode step, or at a random prefill write it receives.
      if (rng.chance(0.7))
        out.rules.push_back("crash" + node + " step=" + std::to_string(rng.in(0, last_step)));
      else
        out.rules.push_back("crash" + node + " msg=prefill_write p=" + fmt_p(0.05 + 0.3 * rng.unit()));
    } else if (kind == detsim_hang) {
      out.rules.push_back("stall" + node + " step=" + std::to_string(rng.in(0, last_step)) +
                          " ms=" + std::to_string(rng.in(200, 3000)));
    } else {
      const uint64_t a = rng.in(0, last_step);
      out.rules.push_back("partition" + node + " step=" + std::to_string(a) + ".." +
                          std::to_string(rng.in(a, last_step)));
    }
  }
  if (classes & detsim_loss) {
    static const char* const kinds[] = {"drop", "duplicate", "delay", "corrupt"};
    // Decode appends are not acknowledged: one lost on its way to a replica stays lost
    // until that replica must serve (open bug 1), so they are lost only with
    // detsim_append_loss; the first two entries are drawn only then.
    static const char* const msgs[] = {"",
                                       " msg=token_append",
                                       " msg=query",
                                       " msg=partial",
                                       " msg=prefill_write",
                                       " msg=write_ack",
                                       " msg=candidates",
                                       " msg=recall_request",
                                       " msg=recall_reply"};
    constexpr uint64_t n_msgs = sizeof msgs / sizeof msgs[0];
    const uint64_t first_msg = (classes & detsim_append_loss) ? 0 : 2;
    const uint64_t n_loss = rng.below(4);
    for (uint64_t i = 0; i < n_loss; ++i) {
      std::string r = kinds[rng.below(4)];
      r += " p=" + fmt_p(0.005 + 0.08 * rng.unit());
      r += msgs[first_msg + rng.below(n_msgs - first_msg)];
      if (r.rfind("delay", 0) == 0) r += " ms=" + std::to_string(rng.in(1, 400));
      if (r.rfind("corrupt", 0) == 0) r += " bits=" + std::to_string(rng.in(1, 3));
      if (rng.chance(0.5)) r += rng.chance(0.5) ? " at=recv" : " at=both";
      out.rules.push_back(r);
    }
  }
  if ((classes & detsim_host_crash) && rng.chance(0.25)) {
    out.rules.push_back("crash node=" + std::to_string(gpu_host_node) + " step=" +
                        std::to_string(rng.in(0, last_step)));
  }
  if ((classes & detsim_backpressure) && rng.chance(0.25)) out.sets.push_back("fabric.inbox_depth=8");
  return out;
}

std::vector<std::string> detsim_draw_variant(uint64_t seed, uint32_t classes,
                                             const std::vector<std::string>& fixed_keys) {
  seeded rng{mix(seed, 0x7a41)};
  static const char* const modes[] = {"pnm-kv", "png-kv", "baseline"};
  std::vector<std::string> out;
  auto add = [&](const std::string& key, const std::string& value) {
    if (std::find(fixed_keys.begin(), fixed_keys.end(), key) == fixed_keys.end()) out.push_back(key + "=" + value);
  };
  // Drawn whatever is kept, so that a seed's variant does not depend on the caller's keys.
  const std::string mode = modes[rng.below(3)];
  const std::string split = rng.chance(0.5) ? "interleave" : "contiguous";
  const bool rereplicate = rng.chance(0.5), recompute = rng.chance(0.5);
  const bool wire_bf16 = rng.chance(0.5);  // drawn last: the draws before keep their values
  if (classes & detsim_variants) {
    add("run.mode", mode);
    add("cluster.sequence_split", split);
    add("run.wire_precision", wire_bf16 ? "bf16" : "fp32");
  }
  add("cluster.rereplicate", (classes & detsim_rebuilds) && rereplicate ? "true" : "false");
  add("cluster.recompute", (classes & detsim_rebuilds) && recompute ? "true" : "false");
  return out;
}

namespace {

struct sink_state {
  bool done = false, ok = false;
  std::string json;
};

// Where the driver hands its report (as embedded.cpp's launcher). A function with an
// argument: CAF 0.17 binds a lambda without arguments through a null tuple pointer (UBSan).
caf::behavior sink_actor(caf::event_based_actor* self, std::shared_ptr<sink_state> sink) {
  return {
      [=](actors::done_atom, bool ok, const std::string& json) {
        sink->done = true;
        sink->ok = ok;
        sink->json = json;
        self->quit();
      },
      [](actors::ctl_atom, const std::string&) {},  // progress
  };
}

// The loop: one pick at a time among the actors with mail and the fabric endpoints with
// an event for their handler; when there is none, virtual time jumps to the next timer
// (CAF's or the fabric's).
class detsim_loop {
 public:
  detsim_loop(caf::scheduler::test_coordinator& sched, transport::inproc_hub& hub, const detsim_options& o)
      : sched_(sched), clock_(sched.clock()), hub_(hub), opts_(o), rng_{mix(o.seed, 0x100f)} {}

  // Runs until `stop()` or until nothing is left; false when a limit was hit (why()).
  bool run(const std::function<bool()>& stop, const caf::actor_clock::time_point t0) {
    while (!stop()) {
      if (events_ >= opts_.max_events) return fail("no end after " + std::to_string(events_) + " events");
      if (clock_.current_time - t0 > std::chrono::milliseconds(opts_.virtual_limit_ms))
        return fail("no end after " + std::to_string(opts_.virtual_limit_ms) + " ms of virtual time");
      const size_t jobs = sched_.jobs.size();
      const std::vector<transport::node_id> ready = transport::inproc_ready(hub_);
      const size_t n = jobs + ready.size();
      if (n == 0) {
        if (!jump_to_next_timer()) return true;  // quiescent
        continue;
      }
      if (opts_.jitter_prob > 0 && rng_.chance(opts_.jitter_prob))
        advance(clock_.current_time + std::chrono::microseconds(rng_.in(0, opts_.jitter_max_us)));
      const size_t pick = rng_.below(n);
      ++events_;
      if (pick < jobs) {
        auto it = sched_.jobs.begin() + static_cast<std::ptrdiff_t>(pick);
        auto* actor = dynamic_cast<caf::abstract_actor*>(*it);
        hash_ = mix(mix(hash_, 1), actor ? actor->id() : 0);
        std::rotate(sched_.jobs.begin(), it, it + 1);
        sched_.run_once();
      } else {
        const transport::node_id node = ready[pick - jobs];
        hash_ = mix(mix(hash_, 2), node);
        transport::inproc_deliver_one(hub_, node);
      }
    }
    return true;
  }

  uint64_t events() const { return events_; }
  uint64_t jumps() const { return jumps_; }
  uint64_t hash() const { return hash_; }
  const std::string& why() const { return why_; }

 private:
  bool fail(std::string why) {
    why_ = std::move(why);
    return false;
  }

  // Virtual time moves to `t` (never back): CAF's due timeouts fire (into mailboxes), the
  // fabric's held frames move on (into inboxes).
  void advance(caf::actor_clock::time_point t) {
    if (t < clock_.current_time) t = clock_.current_time;
    clock_.advance_time(t - clock_.current_time);
    transport::inproc_run_timers(hub_, t);
    hash_ = mix(mix(hash_, 3), static_cast<uint64_t>(t.time_since_epoch().count()));
  }

  bool jump_to_next_timer() {
    auto next = transport::inproc_next_timer(hub_);
    if (!clock_.schedule().empty()) next = std::min(next, clock_.schedule().begin()->first);
    if (next == caf::actor_clock::time_point::max()) return false;
    ++jumps_;
    advance(next);
    return true;
  }

  caf::scheduler::test_coordinator& sched_;
  caf::detail::test_actor_clock& clock_;
  transport::inproc_hub& hub_;
  const detsim_options& opts_;
  seeded rng_;
  uint64_t events_ = 0, jumps_ = 0, hash_ = 0xcbf29ce484222325ull;
  std::string why_;
};

// The nodes' loggers off for the scope (and back to their level after).
class quiet_logs {
 public:
  explicit quiet_logs(bool on) {
    if (!on) return;
    for (spdlog::logger* l : {&actors::cluster_log(), &transport::log()}) {
      saved_.emplace_back(l, l->level());
      l->set_level(spdlog::level::off);
    }
  }
  ~quiet_logs() {
    for (auto& [l, level] : saved_) l->set_level(level);
  }
  quiet_logs(const quiet_logs&) = delete;
  quiet_logs& operator=(const quiet_logs&) = delete;

 private:
  std::vector<std::pair<spdlog::logger*, spdlog::level::level_enum>> saved_;
};

status add_schedule(config& cfg, const detsim_schedule& sch, uint64_t seed) {
  for (const auto& s : sch.sets)
    if (auto st = cfg.set(s); !st) return st;
  if (sch.rules.empty()) return status::ok();
  std::string script = cfg.get_string("faults.script");
  script += (script.empty() ? "" : "; ") + sch.script();
  if (auto st = cfg.set("faults.script", script); !st) return st;
  return cfg.set("faults.seed", std::to_string(seed));
}

// The run's configuration: the variant, then no faults (clean) or the seed's schedule.
result<config> config_of_run(const config& cfg_in, const detsim_options& opts, detsim_run& out) {
  config cfg = cfg_in;
  for (const auto& x : opts.sets)
    if (auto st = cfg.set(x); !st) return st;
  if (opts.clean) {
    for (const char* k : {"faults.script", "faults.script_file"})
      if (auto st = cfg.set(k, ""); !st) return st;
    for (const char* k : {"faults.drop_prob", "faults.delay_prob", "faults.duplicate_prob", "faults.corrupt_prob",
                          "faults.stall_prob", "faults.partition_prob"})
      if (auto st = cfg.set(k, "0"); !st) return st;
  }
  if (opts.faults && !opts.clean) {
    std::vector<uint32_t> devices;
    for (int64_t i = 0; i < cfg.get_int("cluster.pnm_devices"); ++i)
      devices.push_back(device_node_base + static_cast<uint32_t>(i));
    out.schedule = detsim_draw_schedule(opts.seed, devices, static_cast<uint32_t>(cfg.get_int("run.steps")),
                                        opts.classes);
    if (auto st = add_schedule(cfg, out.schedule, opts.seed); !st) return st;
  }
  if (out.schedule.rules.empty() && !cfg.get_string("faults.script").empty())
    out.schedule.rules.push_back(cfg.get_string("faults.script"));  // shown as the run's schedule
  return cfg;
}

// The devices a crash, hang or partition may strike, from every rule in effect (the drawn
// schedule's and the config's own): a rule naming no node may strike any.
result<std::vector<uint32_t>> struck_devices(const run_setup& su) {
  auto plan = transport::fault_plan_from(su.spec.faults);
  if (!plan) return plan.error();
  std::set<uint32_t> struck;
  for (const auto& r : plan->rules) {
    using transport::fault_kind;
    if (r.kind != fault_kind::crash && r.kind != fault_kind::stall && r.kind != fault_kind::partition) continue;
    if (r.node < 0 && r.group.empty())
      for (uint32_t d : su.device_ids()) struck.insert(d);
    if (r.node >= 0) struck.insert(static_cast<uint32_t>(r.node));
    struck.insert(r.group.begin(), r.group.end());
  }
  return std::vector<uint32_t>(struck.begin(), struck.end());
}

// The driver's report, as the run's.
status read_report(const sink_state& sink, detsim_run& out) {
  if (!sink.done) return status::ok();
  out.ok = sink.ok;
  if (std::string refused = actors::driver_refusal(sink.json); !refused.empty())
    return status{errc::invalid_argument, refused};
  try {
    out.report = run_report::from_json(sink.json);
  } catch (const std::exception& e) {
    return status{errc::internal, std::string("detsim: the report does not parse: ") + e.what()};
  }
  return status::ok();
}

}  // namespace

result<detsim_run> run_detsim(const config& cfg_in, const detsim_options& opts) {
  detsim_run out;
  out.seed = opts.seed;
  out.variant = opts.sets;
  auto cfg = config_of_run(cfg_in, opts, out);
  if (!cfg) return cfg.error();
  auto setup = make_run_setup(*cfg, detsim_secret);
  if (!setup) return setup.error();
  const auto& su = *setup;
  quiet_logs quiet(opts.quiet);
  auto struck = struck_devices(*su);
  if (!struck) return struck.error();
  out.schedule.struck_devices = std::move(struck).value();
  if (opts.on_start) opts.on_start(out);

  caf::actor_system_config acfg;
  acfg.set("scheduler.policy", caf::atom("testing"));
  acfg.set("logger.console", caf::atom("none"));
  acfg.set("logger.file-verbosity", caf::atom("quiet"));
  caf::actor_system sys{acfg};
  auto& sched = dynamic_cast<caf::scheduler::test_coordinator&>(sys.scheduler());
  auto& clk = sched.clock();
  clk.current_time += std::chrono::hours(1);  // as CAF's test fixture: never time 0
  const auto t0 = clk.current_time;

  auto hub = transport::make_inproc_hub(transport::inproc_progress::caller);
  std::vector<std::shared_ptr<transport::fabric>> fabrics;
  auto make_fabric = [&](uint32_t node) -> result<std::shared_ptr<transport::fabric>> {
    auto fo = actors::node_fabric_options(*su, node);
    if (!fo) return fo.error();
    fo->clock = [&clk] { return clk.current_time; };
    auto f = transport::make_inproc_fabric(hub, *fo);
    if (!f) return f.error();
    fabrics.push_back(std::move(f).value());
    return fabrics.back();
  };

  auto sink = std::make_shared<sink_state>();
  std::vector<caf::actor> actors;
  // On every way out: whatever still runs is stopped, so that the actor system can go (its
  // destructor waits for every actor).
  struct stop_all {
    caf::scheduler::test_coordinator& sched;
    std::vector<caf::actor>& actors;
    ~stop_all() {
      for (auto& a : actors) caf::anon_send_exit(a, caf::exit_reason::kill);
      sched.run();
      while (sched.trigger_timeouts() > 0) sched.run();
    }
  } stopper{sched, actors};
  auto report_to = sys.spawn(sink_actor, sink);
  actors.push_back(report_to);
  auto coordinator = sys.spawn(actors::coordinator_actor, su, std::shared_ptr<actors::coordinator_journal>{});
  actors.push_back(coordinator);
  actors.push_back(sys.spawn(actors::driver_actor, su, coordinator, report_to));
  for (uint32_t id : su->device_ids()) {
    auto fab = make_fabric(id);
    if (!fab) return fab.error();
    auto dev = sys.spawn(actors::pnm_device_actor, su, id, coordinator, *fab);
    actors::bridge_fabric(**fab, dev);
    actors.push_back(dev);
  }
  {
    auto host_fab = make_fabric(gpu_host_node);
    if (!host_fab) return host_fab.error();
    auto host = sys.spawn(actors::gpu_host_actor, su, coordinator, *host_fab, nullptr);
    actors::bridge_fabric(**host_fab, host);
    actors.push_back(host);
  }  // `fabrics` holds this function's only references

  detsim_loop loop(sched, *hub, opts);
  bool within = loop.run([&] { return sink->done; }, t0);
  out.virtual_ms = std::chrono::duration<double, std::milli>(clk.current_time - t0).count();
  if (within && sink->done) {
    // The shutdown: everything left runs out (stale timers fire into dead actors).
    within = loop.run([] { return false; }, t0);
  }
  out.events = loop.events();
  out.timer_jumps = loop.jumps();
  out.trace_hash = loop.hash();
  out.finished = sink->done;
  if (!within) out.error = loop.why();
  else if (!sink->done) out.error = "every actor went idle with no timer left and no report";
  const status report_read = read_report(*sink, out);
  // Leaks: after a clean end every node has quit, and with them the last references to
  // the fabric endpoints (the handlers hold none).
  out.actors_left = sys.registry().running();
  for (auto& f : fabrics) f->set_handler({});
  fabrics.clear();
  out.endpoints_left = transport::inproc_endpoints(*hub);
  if (!report_read) return report_read;
  return out;
}

std::vector<std::string> detsim_violations(const detsim_run& run, const detsim_run& clean, uint32_t replication,
                                           bool strict) {
  std::vector<std::string> v;
  if (!run.finished) {
    v.push_back("no report: " + run.error);
    return v;
  }
  if (!run.error.empty()) v.push_back("after the report: " + run.error);
  const run_report& r = run.report;
  const std::map<uint64_t, uint64_t> want(clean.report.request_digests.begin(), clean.report.request_digests.end());
  const std::map<uint64_t, uint64_t> got(r.request_digests.begin(), r.request_digests.end());
  if (r.completed + r.failed != r.submitted)
    v.push_back("requests: " + std::to_string(r.completed) + " completed + " + std::to_string(r.failed) +
                " failed != " + std::to_string(r.submitted) + " submitted");
  bool run_failed = false;
  for (const auto& f : r.failures) run_failed |= f.rfind("run: ", 0) == 0;
  if (run.ok && got.size() != r.completed)
    v.push_back(std::to_string(r.completed) + " requests completed but " + std::to_string(got.size()) +
                " output digests reported");
  for (const auto& [id, digest] : want) {
    auto g = got.find(id);
    const std::string name = "request " + std::to_string(id);
    bool reason = run_failed;
    for (const auto& f : r.failures) reason |= f.rfind(name + ":", 0) == 0 || f.rfind(name + " ", 0) == 0;
    if (g != got.end() && run.ok && !reason) {
      if (g->second != digest)
        v.push_back(name + ": output digest " + std::to_string(g->second) + " differs from the clean run's " +
                    std::to_string(digest));
      continue;
    }
    if (g != got.end() && reason && run.ok)
      v.push_back(name + " failed, yet its output digest is reported (requests.output_digests lists completed requests)");
    if (!reason) v.push_back(name + ": neither completed nor failed with a reason");
  }
  // A device reported lost must be one the schedule struck (a crash, hang or partition):
  // any other is a misattributed loss (a full inbox, the host's own crash, ...).
  std::set<uint32_t> lost;
  for (const auto& l : r.device_losses) {
    lost.insert(l.device);
    if (std::find(run.schedule.struck_devices.begin(), run.schedule.struck_devices.end(), l.device) ==
        run.schedule.struck_devices.end())
      v.push_back("device " + std::to_string(l.device) + " reported lost (" + l.reason +
                  ") but the schedule struck no such device");
  }
  if (run.actors_left) v.push_back(std::to_string(run.actors_left) + " actors still running after the shutdown");
  if (!run.endpoints_left.empty()) {
    std::string ids;
    for (uint32_t n : run.endpoints_left) ids += (ids.empty() ? "" : ", ") + std::to_string(n);
    v.push_back("fabric endpoints of nodes " + ids + " not released after the shutdown");
  }
  // Strict: the devices that could be lost are those struck; fewer of them than there are
  // copies of each shard must cost no request.
  size_t struck_lost = 0;
  for (uint32_t d : lost)
    struck_lost += std::count(run.schedule.struck_devices.begin(), run.schedule.struck_devices.end(), d) > 0;
  // The GPU host struck (its own crash) takes every request down: no claim then.
  const bool host_struck = std::count(run.schedule.struck_devices.begin(), run.schedule.struck_devices.end(),
                                      gpu_host_node) > 0;
  if (strict && !host_struck && struck_lost < replication && (r.completed != r.submitted || !run.ok)) {
    std::string why;
    for (const auto& f : r.failures) why += (why.empty() ? "" : " | ") + f;
    v.push_back("strict: " + std::to_string(struck_lost) + " struck device(s) lost with cluster.replication=" +
                std::to_string(replication) + ", yet " + std::to_string(r.submitted - r.completed) +
                " request(s) failed: " + why);
  }
  return v;
}

std::string detsim_failure_text(const detsim_run& run, const std::vector<std::string>& violations,
                                const std::string& replay_hint) {
  const uint64_t seed = run.seed;
  const detsim_schedule& schedule = run.schedule;
  std::string s = "detsim: seed " + std::to_string(seed) + " FAILED\n  schedule: " +
                  (schedule.rules.empty() ? std::string("(no faults)") : schedule.script());
  for (const auto& x : schedule.sets) s += "; --set " + x;
  if (!run.variant.empty()) {
    s += "\n  variant:";
    for (const auto& x : run.variant) s += " " + x;
  }
  for (const auto& x : violations) s += "\n  violated: " + x;
  if (!replay_hint.empty()) {
    std::string cmd = replay_hint;
    for (size_t at; (at = cmd.find("{}")) != std::string::npos;) cmd.replace(at, 2, std::to_string(seed));
    s += "\n  replay: " + cmd;
  }
  return s;
}

result<detsim_run> detsim_clean_run(const config& cfg, const detsim_options& seed_opts) {
  detsim_options co = seed_opts;
  co.clean = true;
  auto clean = run_detsim(cfg, co);
  if (!clean) return clean.error();
  if (!clean->finished || !clean->ok || clean->report.completed != clean->report.submitted) {
    std::string why = clean->error;
    for (const auto& f : clean->report.failures) why += (why.empty() ? "" : "; ") + f;
    std::string variant;
    for (const auto& x : co.sets) variant += " " + x;
    return status{errc::internal, "detsim: the clean run (no faults" + variant +
                                      ") did not complete every request: " + why};
  }
  return clean;
}

result<detsim_sweep_result> detsim_sweep(const config& cfg, const detsim_sweep_options& opts) {
  const auto start = std::chrono::steady_clock::now();
  detsim_sweep_result res;
  const uint32_t replication = static_cast<uint32_t>(cfg.get_int("cluster.replication"));
  auto say = [&](const std::string& s) {
    if (opts.log) opts.log(s);
    else std::fprintf(stderr, "%s\n", s.c_str());
  };
  std::map<std::vector<std::string>, detsim_run> cleans;  // by variant
  for (uint64_t seed = opts.first_seed; seed <= opts.last_seed; ++seed) {
    detsim_options o;
    o.seed = seed;
    o.classes = opts.classes;
    o.quiet = opts.quiet;
    o.sets = detsim_draw_variant(seed, opts.classes, opts.fixed_keys);
    o.on_start = opts.on_start;
    auto c = cleans.find(o.sets);
    if (c == cleans.end()) {
      auto clean = detsim_clean_run(cfg, o);
      if (!clean) return clean.error();
      c = cleans.emplace(o.sets, std::move(clean).value()).first;
    }
    const detsim_run& clean = c->second;
    auto run = run_detsim(cfg, o);
    if (!run) return status{run.error().code(), "seed " + std::to_string(seed) + ": " + run.error().message()};
    ++res.seeds;
    res.events += run->events;
    res.devices_lost += run->report.device_losses.size();
    res.requests_failed += run->report.failed;
    res.faults_injected += run->schedule.rules.size();
    auto v = detsim_violations(*run, clean, replication, opts.strict);
    if (!v.empty()) {
      say(detsim_failure_text(*run, v, opts.replay_hint));
      res.failed.emplace_back(seed, std::move(v));
      if (opts.stop_at_first) break;
    }
    if (seed == opts.last_seed) break;  // last_seed may be UINT64_MAX
  }
  res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return res;
}

}  // namespace pnmkv
