// Multi-process cluster: node processes and their launcher (see node_main.hpp).
#include "actors/node_main.hpp"

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <thread>

#include "actors/control.hpp"
#include "actors/memory_guard.hpp"
#include "actors/nodes.hpp"
#include "transport/faults.hpp"
#include "transport/from_config.hpp"
#include "transport/piped_child.hpp"
#include "transport/ucx_fabric.hpp"

extern char** environ;

namespace pnmkv {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

result<transport::node_role> parse_node_role(const std::string& text) {
  using transport::node_role;
  for (node_role r : {node_role::coordinator, node_role::gpu_host, node_role::pnm_device})
    if (text == to_string(r)) return r;
  return status{errc::invalid_argument,
                "--role '" + text + "' is unknown; allowed: coordinator|gpu-host|pnm-device"};
}

namespace {

void configure_middleman(caf::actor_system_config& acfg, const cluster_section& cluster) {
  acfg.load<caf::io::middleman>();
  acfg.set("middleman.heartbeat-interval",
           caf::timespan{std::chrono::milliseconds(cluster.heartbeat_interval_ms)});
  acfg.set("middleman.connection-timeout",
           caf::timespan{std::chrono::milliseconds(cluster.connection_timeout_ms)});
  acfg.set("scheduler.max-threads", std::max(2u, std::thread::hardware_concurrency()));
  // A node process runs one or two actors; its idle workers should sleep, not poll: with
  // work stealing, the idle workers of six processes on two cores spun for the CPU a
  // device needed to scan (multi-process step 2.1x its memory bound, 1.5x with sharing).
  if (cluster.node_scheduler == node_scheduler::sharing)
    acfg.set("scheduler.policy", caf::atom("sharing"));
  acfg.set("logger.console", caf::atom("none"));
}

result<caf::actor> connect_coordinator(caf::actor_system& sys, const std::string& host,
                                       uint16_t port, uint64_t timeout_ms) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    auto a = sys.middleman().remote_actor(host, port);
    if (a) return *a;
    last = sys.render(a.error());
    std::this_thread::sleep_for(50ms);
  }
  return status{errc::timeout, "could not reach the coordinator at " + host + ":" +
                                   std::to_string(port) + " within " + std::to_string(timeout_ms) +
                                   " ms: " + last};
}

// A handle remote_actor gave back is the coordinator only if it lives: right after a loss
// the middleman may hand out the lost process's proxy, which reports down as soon as it is
// monitored. (Its node id says nothing: a restarted container's process has the same.)
bool answers(caf::actor_system& sys, const caf::actor& a) {
  caf::scoped_actor probe{sys};
  probe->monitor(a);
  bool down = false;
  probe->receive([&](const caf::down_msg&) { down = true; }, caf::after(std::chrono::milliseconds(20)) >> [] {});
  return !down;
}

// A lost coordinator with a journal: connects again (it is restarted on the same host and
// port) while `node` lives. The coordinator's handle; nullopt when the node ended first (the
// coordinator shut the cluster down: its Shutdown and its connection's end race); an error
// past the timeout.
result<std::optional<caf::actor>> reconnect_coordinator(caf::actor_system& sys, const caf::actor& node,
                                                        const std::string& host, uint16_t port,
                                                        uint64_t timeout_ms) {
  caf::scoped_actor self{sys};
  self->monitor(node);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string last;
  while (std::chrono::steady_clock::now() < deadline) {
    bool node_gone = false;
    self->receive([&](const caf::down_msg&) { node_gone = true; }, caf::after(std::chrono::milliseconds(50)) >> [] {});
    if (node_gone) return std::optional<caf::actor>{};
    auto a = sys.middleman().remote_actor(host, port);
    // The lost process's proxy, still cached for a moment: not back yet.
    if (a && answers(sys, *a)) return std::optional<caf::actor>{*a};
    last = a ? "only the lost coordinator answered" : sys.render(a.error());
  }
  return status{errc::timeout, "the coordinator at " + host + ":" + std::to_string(port) + " did not come back within " +
                                   std::to_string(timeout_ms) + " ms (cluster.coordinator_reconnect_ms): " + last};
}

// Whoever waits for the file sees all of it or nothing.
void write_file_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  std::ofstream(tmp) << text;
  std::error_code ec;
  fs::rename(tmp, path, ec);
}

// SIGINT and SIGTERM to a driving process (`pnmkv run --multiprocess` or `--attach`): the
// first stops the run (the GPU host reports what finished, the cluster shuts down), a
// second stops waiting for that. Installed over an ignored SIGINT too: a launcher started
// in the background of a script ignores SIGINT from its shell otherwise.
std::atomic<int> stop_signal{0};
std::atomic<int> stop_signals_seen{0};
void on_stop_signal(int sig) {
  stop_signal.store(sig);
  stop_signals_seen.fetch_add(1);
}

class stop_signal_handlers {
 public:
  stop_signal_handlers() {
    stop_signal = 0;
    stop_signals_seen = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGINT, &sa, &old_int_);
    sigaction(SIGTERM, &sa, &old_term_);
  }
  ~stop_signal_handlers() {
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
  }
  stop_signal_handlers(const stop_signal_handlers&) = delete;
  stop_signal_handlers& operator=(const stop_signal_handlers&) = delete;

 private:
  struct sigaction old_int_ {}, old_term_ {};
};

// Blocks until one of `watch` terminates; returns which.
caf::actor_addr await_down(caf::actor_system& sys, const std::vector<caf::actor>& watch) {
  caf::scoped_actor self{sys};
  for (const auto& a : watch) self->monitor(a);
  caf::actor_addr gone;
  self->receive([&](const caf::down_msg& dm) { gone = dm.source; });
  return gone;
}

}  // namespace

status run_node(const config& cfg, const node_options& opts) {
  // The only resolve of this process: the model and hardware files are read once.
  auto setup = make_run_setup(cfg);
  if (!setup) return setup.error();
  const cluster_section& cluster = (*setup)->spec.cluster;
  caf::actor_system_config acfg;
  configure_middleman(acfg, cluster);
  caf::actor_system sys{acfg};
  const std::string host = opts.coordinator_host.empty() ? cluster.coordinator_host : opts.coordinator_host;
  const uint16_t port = opts.coordinator_port ? opts.coordinator_port : cluster.coordinator_port;

  if (opts.role == transport::node_role::coordinator) {
    // With a journal: a restarted coordinator resumes from it; a journal that cannot be
    // trusted (corrupt, of another configuration) stops it here, naming why.
    std::shared_ptr<actors::coordinator_journal> journal;
    if (!cluster.journal_file.empty()) {
      auto j = actors::open_coordinator_journal(cluster.journal_file);
      if (!j) return j.error();
      journal = *j;
    }
    auto coord = sys.spawn(actors::coordinator_actor, *setup, journal);
    auto published = sys.middleman().publish(coord, port, host.c_str(), /*reuse_addr=*/true);
    if (!published) {
      caf::anon_send_exit(coord, caf::exit_reason::user_shutdown);
      if (journal && !journal->replay_error.empty()) return status{errc::invalid_argument, journal->replay_error};
      return status{errc::io, "cannot publish the coordinator on " + host + ":" +
                                  std::to_string(port) + ": " + sys.render(published.error())};
    }
    if (!opts.port_file.empty()) write_file_atomically(opts.port_file, std::to_string(*published) + "\n");
    if (!opts.ready_file.empty()) write_file_atomically(opts.ready_file, "up\n");
    std::fprintf(stderr, "pnmkv node: coordinator listening on %s:%u\n", host.c_str(), unsigned(*published));
    await_down(sys, {coord});
    if (journal && !journal->replay_error.empty()) return status{errc::invalid_argument, journal->replay_error};
    return {};
  }

  auto coord = connect_coordinator(sys, host, port, opts.connect_timeout_ms);
  if (!coord) return coord.error();
  const uint32_t id = opts.role == transport::node_role::gpu_host ? gpu_host_node : opts.id;
  auto fo = actors::node_fabric_options(**setup, id);
  if (!fo) return fo.error();
  auto fab = transport::make_ucx_fabric(*fo, transport::ucx_options_from((*setup)->spec.fabric));
  if (!fab) return fab.error();
  std::shared_ptr<transport::fabric> shared(std::move(fab).value());
  caf::actor node;
  if (opts.role == transport::node_role::gpu_host)
    node = sys.spawn(actors::gpu_host_actor, *setup, *coord, shared, std::shared_ptr<timeline_trace>{});
  else
    node = sys.spawn(actors::pnm_device_actor, *setup, id, *coord, shared);
  actors::bridge_fabric(*shared, node);
  if (!opts.ready_file.empty()) write_file_atomically(opts.ready_file, "up\n");
  // A lost coordinator ends the node, unless it keeps a journal: then it is expected back
  // (restarted on the same host and port) and the node joins it again.
  caf::actor current = *coord;
  for (;;) {
    const caf::actor_addr gone = await_down(sys, {node, current});
    if (gone == node.address() || cluster.journal_file.empty()) break;
    std::fprintf(stderr, "pnmkv node: lost the coordinator; reconnecting to %s:%u for up to %u ms\n", host.c_str(),
                 unsigned(port), unsigned(cluster.coordinator_reconnect_ms));
    auto again = reconnect_coordinator(sys, node, host, port, cluster.coordinator_reconnect_ms);
    if (!again) {
      std::fprintf(stderr, "pnmkv node: %s\n", again.error().message().c_str());
      break;
    }
    if (!*again) break;  // the node ended meanwhile (a shutdown)
    current = **again;
    caf::anon_send(node, actors::coord_atom::value, current);
  }
  caf::anon_send_exit(node, caf::exit_reason::user_shutdown);
  shared->set_handler({});
  return {};
}

// ---------------------------------------------------------------------------------------

namespace {

struct child {
  pid_t pid = -1;
  std::string name;
  std::string log_file;
};

result<child> spawn_child(const std::string& binary, const std::vector<std::string>& args,
                          const std::string& log_file, const std::string& name) {
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(binary.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // fork + exec rather than posix_spawn: the child asks the kernel to kill it when the
  // launcher dies (PR_SET_PDEATHSIG), so no node outlives a crashed or killed launcher.
  const pid_t parent = getpid();
  const int log_fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (log_fd < 0) return status{errc::io, "cannot open " + log_file};
  pid_t pid = fork();
  if (pid < 0) {
    ::close(log_fd);
    return status{errc::io, "cannot start " + name + ": fork failed"};
  }
  if (pid == 0) {
    // Its own process group: a terminal's Ctrl-C reaches the launcher only, which stops the
    // run cleanly (the GPU host reports what finished) instead of every node dying at once.
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);  // the launcher is already gone
    dup2(log_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  ::close(log_fd);
  return child{pid, name, log_file};
}

// Waits for every child up to grace; then SIGKILLs the rest. Returns the names of children
// that had to be killed or exited non-zero.
std::vector<std::string> reap(std::vector<child>& children, std::chrono::milliseconds grace) {
  std::vector<std::string> trouble;
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (auto& c : children) {
    while (c.pid > 0) {
      int st = 0;
      pid_t r = waitpid(c.pid, &st, WNOHANG);
      if (r == c.pid) {
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) trouble.push_back(c.name + " exited badly");
        c.pid = -1;
        break;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &st, 0);
        trouble.push_back(c.name + " killed after the grace period");
        c.pid = -1;
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
  }
  return trouble;
}

// The first child that has exited, described ("device 101 went down (killed by signal 9)");
// it is reaped and marked so reap() skips it.
std::optional<std::string> exited_child(std::vector<child>& children) {
  for (auto& c : children) {
    if (c.pid <= 0) continue;
    int st = 0;
    if (waitpid(c.pid, &st, WNOHANG) != c.pid) continue;
    c.pid = -1;
    std::string how = WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                                      : "exited with status " + std::to_string(WEXITSTATUS(st));
    std::string tail = transport::file_tail(c.log_file, 1024, 5);
    return c.name + " went down (" + how + ")" + (tail.empty() ? "" : "; the end of its log:\n" + tail);
  }
  return std::nullopt;
}

struct drive_result {
  result<run_report> out = status{errc::internal, "not run"};
  bool done = false;          // the cluster answered (a report, or the coordinator lost)
  bool connect_failed = false;
  std::string lost;           // a node process seen exiting before the end (launcher only)
  bool stop_now = false;      // a second stop signal: do not wait for the cluster
  // A lost coordinator (with a journal): when the driver saw it go, and when it had joined
  // the restarted one.
  std::vector<std::chrono::steady_clock::time_point> coordinator_down, coordinator_back;
};

// The run is asked to stop (a stop signal): the driver passes a Stop on; the GPU host
// reports what finished. Past `grace` without that report the run ends without it.
constexpr auto stop_grace = std::chrono::seconds(10);

std::string stop_reason(int sig, const std::string& who) {
  return std::string(sig == SIGINT ? "SIGINT" : "SIGTERM") + " to the " + who;
}

// Drives a run on a cluster whose coordinator listens at host:port: submits the requests of
// `setup`, forwards progress, and returns the report. `exited` (launcher only) names a node
// process that has exited; an unreported loss fails the run after a grace period unless a
// replica can take over. `where` goes into error messages (where the logs are); `who` names
// this process in a stop's reason.
drive_result drive(const std::shared_ptr<const run_setup>& setup, const std::string& host,
                   uint16_t port, const cluster_run_options& opts,
                   const std::function<std::optional<std::string>()>& exited, const std::string& where,
                   const std::string& who,
                   const std::function<void(const std::string&, uint64_t)>& on_progress = {}) {
  drive_result r;
  r.out = status{errc::timeout, "the run did not finish within " + std::to_string(opts.run_timeout_ms) + " ms"};
  caf::actor_system_config acfg;
  configure_middleman(acfg, setup->spec.cluster);
  caf::actor_system sys{acfg};
  auto coordinator = connect_coordinator(sys, host, port, 20000);
  if (!coordinator) {
    r.connect_failed = true;
    r.out = coordinator.error();
    return r;
  }
  caf::scoped_actor self{sys};
  auto driver = sys.spawn(actors::driver_actor, setup, *coordinator, caf::actor{self});
  self->monitor(*coordinator);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts.run_timeout_ms);
  // A node process that exits before the run is over: the cluster should report the loss
  // itself (the coordinator notices the broken connection); if it has not within the
  // grace period, the launcher fails the run with what it saw. A lost device is survivable:
  // the GPU host fails it over (to replicas, or fails the requests that lost their only
  // copy) and the run goes on under its own deadlines (run.step_timeout_ms); the loss of
  // the coordinator or the GPU host is not.
  constexpr auto lost_grace = std::chrono::seconds(3);
  bool stop_sent = false;
  // A lost coordinator that keeps a journal comes back (restarted on the same port): the
  // driver joins it again within cluster.coordinator_reconnect_ms, or the run fails.
  const cluster_section& cluster = setup->spec.cluster;
  std::optional<std::chrono::steady_clock::time_point> coordinator_lost;
  while (!r.done) {
    if (coordinator_lost) {
      auto again = sys.middleman().remote_actor(host, port);
      if (again && answers(sys, *again)) {
        coordinator_lost.reset();
        r.coordinator_back.push_back(std::chrono::steady_clock::now());
        if (opts.on_coordinator_link) opts.on_coordinator_link(true);
        self->monitor(*again);
        self->send(driver, actors::coord_atom::value, *again);
      } else if (std::chrono::steady_clock::now() - *coordinator_lost >
                 std::chrono::milliseconds(cluster.coordinator_reconnect_ms)) {
        r.done = true;
        r.out = status{errc::peer_down, "lost the coordinator and it did not come back within " +
                                            std::to_string(cluster.coordinator_reconnect_ms) +
                                            " ms (cluster.coordinator_reconnect_ms; " + where + ")"};
        break;
      }
    }
    if (const int sig = stop_signal.load(); sig && !stop_sent) {
      stop_sent = true;
      const std::string why = stop_reason(sig, who);
      control::outbound out(driver_node, why.size());
      out.body().initStop().setReason(why);
      self->send(driver, actors::ctl_atom::value, actors::wire_string(out));
      deadline = std::min(deadline, std::chrono::steady_clock::now() + stop_grace);
      r.out = status{errc::timeout, "stopped (" + why + "); the cluster did not report what finished within " +
                                        std::to_string(stop_grace.count()) + " s (" + where + ")"};
    }
    if (stop_signals_seen.load() > 1) {
      r.stop_now = true;
      break;
    }
    // Every exit is looked at (a restarted coordinator is not a loss; a second device may
    // go after a first); the first loss is the one reported.
    if (exited)
      if (auto gone = exited(); gone && r.lost.empty()) {
        r.lost = *gone;
        if (gone->rfind("device ", 0) != 0) {
          deadline = std::min(deadline, std::chrono::steady_clock::now() + lost_grace);
          r.out = status{errc::peer_down, r.lost + " and the cluster did not report the loss within " +
                                              std::to_string(lost_grace.count()) + " s (" + where + ")"};
        }
      }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    left = std::min(left, std::chrono::milliseconds(200));
    self->receive(
        [&](actors::done_atom, bool, const std::string& json) {
          r.done = true;
          if (std::string refused = actors::driver_refusal(json); !refused.empty()) {
            r.out = status{errc::invalid_argument, refused};
            return;
          }
          run_report rep = run_report::from_json(json);
          rep.multiprocess = true;
          r.out = rep;
        },
        [&](actors::ctl_atom, const std::string& bytes) {
          auto m = control::decode(bytes);
          if (!m) return;
          if (m->kind() != control::msg_kind::PROGRESS) return;
          auto p = m->progress();
          if (on_progress) on_progress(p.getPhase().cStr(), p.getDone());
          if (opts.on_progress) opts.on_progress(p.getPhase().cStr(), p.getDone(), p.getTotal());
        },
        [&](const caf::down_msg&) {
          if (r.done) return;
          if (!cluster.journal_file.empty()) {
            coordinator_lost = std::chrono::steady_clock::now();
            r.coordinator_down.push_back(*coordinator_lost);
            if (opts.on_coordinator_link) opts.on_coordinator_link(false);
            return;
          }
          r.done = true;
          r.out = status{errc::peer_down, "lost the coordinator before the run finished (" + where + ")"};
        },
        caf::after(coordinator_lost ? std::min(left, std::chrono::milliseconds(50)) : left) >> [&] {});
  }
  // Not done: the driver (the coordinator trusts it: it joined) asks the cluster to shut
  // down, then quits.
  if (r.done)
    self->send_exit(driver, caf::exit_reason::user_shutdown);
  else
    self->send(driver, actors::stop_atom::value);
  return r;
}

}  // namespace

status await_nodes_up(const std::vector<node_start>& nodes, std::chrono::milliseconds timeout,
                      const std::function<void()>& tick) {
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<bool> up(nodes.size(), false);
  for (;;) {
    if (tick) tick();
    size_t waiting = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
      if (up[i]) continue;
      std::error_code ec;
      if (fs::exists(nodes[i].ready_file, ec)) {
        up[i] = true;
        continue;
      }
      // Gone before it was up? (WNOWAIT: the caller reaps its own children.)
      siginfo_t info{};
      if (nodes[i].pid > 0 && waitid(P_PID, static_cast<id_t>(nodes[i].pid), &info, WEXITED | WNOHANG | WNOWAIT) == 0 &&
          info.si_pid == nodes[i].pid && !fs::exists(nodes[i].ready_file, ec)) {
        const std::string how = info.si_code == CLD_EXITED ? "exited with status " + std::to_string(info.si_status)
                                                           : "killed by signal " + std::to_string(info.si_status);
        const std::string tail = transport::file_tail(nodes[i].log_file, 4096, 20);
        return status{errc::peer_down, nodes[i].name + " went down during start-up (" + how + "; log " + nodes[i].log_file +
                                           (tail.empty() ? ", empty)" : "):\n" + tail)};
      }
      ++waiting;
    }
    if (waiting == 0) return status::ok();
    const auto waited = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
    if (waited >= timeout) {
      std::string names, tails;
      for (size_t i = 0; i < nodes.size(); ++i) {
        if (up[i]) continue;
        names += (names.empty() ? "" : ", ") + nodes[i].name + " (pid " + std::to_string(nodes[i].pid) + ")";
        const std::string tail = transport::file_tail(nodes[i].log_file, 4096, 20);
        tails += "\n--- the end of " + nodes[i].name + "'s log (" + nodes[i].log_file + ")" +
                 (tail.empty() ? ": empty" : ":\n" + tail);
      }
      return status{errc::timeout, "start-up: " + names + " not up after " + std::to_string(waited.count()) +
                                       " ms (cluster.startup_timeout_ms = " + std::to_string(timeout.count()) +
                                       ")" + tails};
    }
    std::this_thread::sleep_for(20ms);
  }
}

namespace {

// Before any directory, process or buffer: every node of this run lives on this machine.
// A derived cluster.device_memory_bytes_max is derived here once, for these processes, and
// written into the nodes' config and the launcher's spec (each node reading the machine as
// it fills up would see less); then the whole run is checked against what the machine has.
status fit_this_machine(config& cfg, run_spec& spec, const cluster_run_options& opts) {
  auto pre = make_run_setup(spec, cfg, "memory-check");
  if (!pre) return pre.error();
  if ((*pre)->device_memory_derived) {
    auto derived = derived_device_memory_bytes(**pre, run_processes::multiprocess);
    if (!derived) return derived.error();
    const uint64_t bytes = *derived;
    auto st = cfg.set("cluster.device_memory_bytes_max", std::to_string(bytes));
    if (!st) return st;
    spec.cluster.device_memory_bytes_max = bytes;
    pre = make_run_setup(spec, cfg, "memory-check");
    if (!pre) return pre.error();
  }
  return check_run_memory(**pre, run_processes::multiprocess, opts.after_run_bytes);
}

// A fresh secret for this cluster, readable by this user only.
status write_secret_file(const std::string& secret_file) {
  const std::string secret = make_cluster_secret();
  int fd = ::open(secret_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) return status{errc::io, "cannot write " + secret_file};
  if (::write(fd, secret.data(), secret.size()) != ssize_t(secret.size())) {
    ::close(fd);
    return status{errc::io, "cannot write " + secret_file};
  }
  ::close(fd);
  return status::ok();
}

// The launcher's coordinator: restarted on the same port from its journal when it dies (up
// to cluster.coordinator_restarts_max times), and killed at the steps of the fault script's
// "crash node=0 step=N" rules.
// The launcher's work directory (mp.work_dir, or a fresh temporary one): a fresh secret
// there, and the coordinator's journal (cluster.journal_file, else coordinator.journal
// there; emptied: a journal is per run), both set in `cfg` and `spec`.
result<std::string> prepare_work_dir(std::string dir, config& cfg, run_spec& spec) {
  if (dir.empty()) {
    char tmpl[] = "/tmp/pnmkv-mp-XXXXXX";
    if (!mkdtemp(tmpl)) return status{errc::io, "cannot create a temporary directory"};
    dir = tmpl;
  }
  fs::create_directories(dir);
  const std::string secret_file = dir + "/cluster.secret";
  if (status st = write_secret_file(secret_file); !st) return st;
  if (status st = cfg.set("fabric.cluster_secret_file", secret_file); !st) return st;
  spec.fabric.cluster_secret_file = cfg.get_string("fabric.cluster_secret_file");
  if (spec.cluster.journal_file.empty()) {
    const std::string journal = dir + "/coordinator.journal";
    if (status st = cfg.set("cluster.journal_file", journal); !st) return st;
    spec.cluster.journal_file = journal;
  }
  std::error_code ec;
  fs::remove(spec.cluster.journal_file, ec);
  return dir;
}

struct coordinator_supervisor {
  std::vector<child>& children;
  std::string binary, config_file, port_file, dir;
  uint16_t port = 0;
  uint32_t restarts_max = 0;
  std::vector<uint32_t> kill_steps;  // ascending
  uint32_t restarts = 0;
  size_t next_kill = 0;
  std::vector<std::chrono::steady_clock::time_point> killed_at;

  // A node process that exited, described, unless it was the coordinator and is restarted.
  // A coordinator that exited with status 0 ended as it should (the run is over, or was
  // stopped): not restarted.
  std::optional<std::string> exited() {
    auto gone = exited_child(children);
    if (!gone || gone->rfind("coordinator went down", 0) != 0 || restarts >= restarts_max ||
        gone->rfind("coordinator went down (exited with status 0)", 0) == 0)
      return gone;
    return restart(*gone);
  }

  // During start-up (the other nodes are still connecting, and retry): a coordinator that
  // died is restarted; no other child is reaped here (their start-up check does that).
  void restart_if_dead() {
    for (auto& c : children) {
      if (c.name != "coordinator" || c.pid <= 0) continue;
      int st = 0;
      if (waitpid(c.pid, &st, WNOHANG) != c.pid) continue;
      c.pid = -1;
      if (restarts >= restarts_max || (WIFEXITED(st) && WEXITSTATUS(st) == 0)) return;
      (void)restart("coordinator went down during start-up (" +
                    std::string(WIFSIGNALED(st) ? "killed by signal " + std::to_string(WTERMSIG(st))
                                                : "exited with status " + std::to_string(WEXITSTATUS(st))) +
                    ")");
      return;
    }
  }

  std::optional<std::string> restart(const std::string& gone) {
    ++restarts;
    std::error_code ec;
    fs::remove(port_file, ec);
    auto again = spawn_child(binary, {"node", "--role", "coordinator", "--config", config_file, "--set",
                                      "cluster.coordinator_port=" + std::to_string(port), "--port-file", port_file},
                             dir + "/coordinator.log", "coordinator");
    if (!again) return gone + "; restarting it failed: " + again.error().message();
    children.push_back(*again);
    std::fprintf(stderr, "pnmkv run: %s\npnmkv run: restarted the coordinator on port %u from its journal (%u of "
                 "cluster.coordinator_restarts_max = %u)\n",
                 gone.c_str(), unsigned(port), restarts, restarts_max);
    return std::nullopt;
  }

  // The run reported `done` steps of `phase` (decode; serve: requests served).
  void on_progress(const std::string& phase, uint64_t done) {
    if ((phase != "decode" && phase != "serve") || next_kill >= kill_steps.size() || done < kill_steps[next_kill])
      return;
    ++next_kill;
    for (auto it = children.rbegin(); it != children.rend(); ++it)
      if (it->name == "coordinator" && it->pid > 0) {
        std::fprintf(stderr, "pnmkv run: faults: killing the coordinator (pid %d) at %s step %llu (crash node=0)\n",
                     int(it->pid), phase.c_str(), static_cast<unsigned long long>(done));
        killed_at.push_back(std::chrono::steady_clock::now());
        kill(it->pid, SIGKILL);
        return;
      }
  }
};

}  // namespace

// The GPU host's engine runs in a node process there: its timeline stays in that process.
static const char* const timeline_embedded_only =
    "--timeline-out is for embedded runs only (the GPU host runs in another process with "
    "--multiprocess / --attach); trace the embedded run, or the same configuration with pnmkv sim";

result<run_report> run_multiprocess(const config& cfg_in, const cluster_run_options& opts,
                                    const multiprocess_options& mp) {
  if (opts.timeline) return status{errc::unsupported, timeline_embedded_only};
  const std::string binary = mp.node_binary.empty() ? fs::read_symlink("/proc/self/exe").string()
                                                    : mp.node_binary;
  // The launcher's only resolve (the model and hardware files are read once); what it
  // changes later (derived device memory, the secret file) it sets in both the config the
  // nodes load and this spec.
  auto spec = resolve_run_spec(cfg_in);
  if (!spec) return spec.error();
  config cfg = cfg_in;
  if (status st = fit_this_machine(cfg, *spec, opts); !st) return st;
  auto work = prepare_work_dir(mp.work_dir, cfg, *spec);
  if (!work) return work.error();
  const std::string dir = *work;
  std::error_code ec;
  const std::string config_file = dir + "/config.yaml";
  std::ofstream(config_file) << cfg.to_yaml();
  auto setup = make_run_setup(*spec, cfg);
  if (!setup) return setup.error();

  stop_signal_handlers handlers;  // SIGINT / SIGTERM from here on stop the run cleanly
  std::vector<child> children;
  auto cleanup = [&](std::chrono::milliseconds grace) { return reap(children, grace); };
  const std::string port_file = dir + "/coordinator.port";
  fs::remove(port_file, ec);  // a work dir used before: its old start-up signals mean nothing now
  auto coord = spawn_child(binary, {"node", "--role", "coordinator", "--config", config_file,
                                    "--set", "cluster.coordinator_port=0", "--port-file", port_file},
                           dir + "/coordinator.log", "coordinator");
  if (!coord) return coord.error();
  children.push_back(*coord);
  // Start-up deadline: every node process is up within cluster.startup_timeout_ms, or the
  // run fails at once naming it, with its log's end (instead of the join deadline, minutes
  // later, with nothing said about why).
  const std::chrono::milliseconds startup_timeout((*setup)->spec.cluster.startup_timeout_ms);
  auto fail_start = [&](status why) {
    for (auto& c : children)
      if (c.pid > 0) kill(c.pid, SIGKILL);
    cleanup(1000ms);
    return why;
  };
  if (status s = await_nodes_up({{coord->name, coord->pid, port_file, coord->log_file}}, startup_timeout); !s)
    return fail_start(s);
  uint16_t port = 0;
  {
    std::ifstream in(port_file);
    unsigned p = 0;
    if (in >> p && p > 0 && p <= 65535) port = static_cast<uint16_t>(p);
  }
  if (port == 0) return fail_start(status{errc::io, "the coordinator's port file " + port_file + " holds no port"});
  // The coordinator's supervisor restarts it when it dies (from start-up on: the nodes retry
  // their first connection) and kills it where the fault script says; then this process
  // drives the run.
  auto rules = transport::fault_plan_from((*setup)->spec.faults);
  if (!rules) return fail_start(rules.error());
  auto kill_steps = transport::coordinator_crash_steps(rules->rules);
  if (!kill_steps) return fail_start(kill_steps.error());
  coordinator_supervisor sup{children, binary, config_file, port_file, dir, port,
                             (*setup)->spec.cluster.coordinator_restarts_max, *kill_steps, 0, 0, {}};
  const std::string coord_arg = "127.0.0.1:" + std::to_string(port);
  std::vector<node_start> starting;
  auto start = [&](std::vector<std::string> args, const std::string& file_stem, const std::string& name) -> status {
    const std::string ready = dir + "/" + file_stem + ".ready", log = dir + "/" + file_stem + ".log";
    args.insert(args.end(), {"--config", config_file, "--coordinator", coord_arg, "--ready-file", ready});
    std::error_code ec;
    fs::remove(ready, ec);
    auto c = spawn_child(binary, args, log, name);
    if (!c) return c.error();
    children.push_back(*c);
    starting.push_back({name, c->pid, ready, log});
    return status::ok();
  };
  if (status s = start({"node", "--role", "gpu-host"}, "gpu-host", "gpu-host"); !s) return fail_start(s);
  for (uint32_t id : (*setup)->device_ids())
    if (status s = start({"node", "--role", "pnm-device", "--id", std::to_string(id)}, "device-" + std::to_string(id),
                         "device " + std::to_string(id));
        !s)
      return fail_start(s);
  if (status s = await_nodes_up(starting, startup_timeout, [&] { sup.restart_if_dead(); }); !s) return fail_start(s);

  auto exited = [&] { return sup.exited(); };
  auto on_step = [&](const std::string& phase, uint64_t done) { sup.on_progress(phase, done); };
  drive_result d = drive(*setup, "127.0.0.1", port, opts, exited, "logs in " + dir, "launcher", on_step);
  if (d.connect_failed) {
    // pid > 0: exited_child() marks a reaped child -1, and kill(-1) signals every process.
    for (auto& c : children)
      if (c.pid > 0) kill(c.pid, SIGKILL);
    cleanup(1000ms);
    return d.out.error();
  }
  const bool done = d.done;
  const std::string lost = d.lost;
  result<run_report> out = std::move(d.out);
  // A run the launcher itself failed (a node process died and the cluster did not say so),
  // or stopped without a report: the rest may be stuck joining or waiting; stop them
  // instead of waiting out the grace. A second stop signal: at once.
  const bool stopping = stop_signal.load() != 0;
  if (!done && (!lost.empty() || stopping))
    for (auto& c : children)
      if (c.pid > 0) kill(c.pid, d.stop_now ? SIGKILL : SIGTERM);
  auto trouble = cleanup(d.stop_now ? 1000ms : 10000ms);
  // Node processes that had to be killed or exited badly: shutdown events of the cluster,
  // not failures of a request.
  if (out) {
    out->shutdown_events = trouble;
    out->coordinator_restarts = sup.restarts;
    // Scripted kills: the driver noticed the loss (detect) and was back with the restarted
    // coordinator (recover), in ms after the kill.
    auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
    for (size_t k = 0; k < sup.killed_at.size(); ++k) {
      if (k < d.coordinator_down.size()) out->coordinator_detect_ms.push_back(ms(sup.killed_at[k], d.coordinator_down[k]));
      if (k < d.coordinator_back.size()) out->coordinator_recover_ms.push_back(ms(sup.killed_at[k], d.coordinator_back[k]));
    }
  }
  if (mp.work_dir.empty() && out) fs::remove_all(dir);
  return out;
}

int stop_signal_received() { return stop_signal.load(); }

result<run_report> run_attached(const config& cfg, const cluster_run_options& opts, const std::string& host,
                                uint16_t port) {
  if (opts.timeline) return status{errc::unsupported, timeline_embedded_only};
  // The driver proves the cluster secret like a node (fabric.cluster_secret_file): the
  // coordinator takes requests and a shutdown only from members and joined drivers.
  auto setup = make_run_setup(cfg);
  if (!setup)
    return status{setup.error().code(), setup.error().message() +
                                            " (--attach: the driver joins the cluster with its secret, as a node does)"};
  stop_signal_handlers handlers;
  drive_result d = drive(*setup, host, port, opts, {}, "coordinator " + host + ":" + std::to_string(port), "driver");
  return std::move(d.out);
}

}  // namespace pnmkv
