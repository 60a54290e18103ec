#include "actors/chaos_compose.hpp"

#include <signal.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

extern char** environ;

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <sstream>
#include <thread>

#include <nlohmann/json.hpp>

#include "actors/node_main.hpp"

namespace pnmkv {

namespace fs = std::filesystem;
using transport::container_op;

namespace {

int64_t unix_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
int64_t steady_ms_now() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::string(v) : fallback;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The fault-log name of what a container action stands in for (transport/faults.hpp's
// kinds, so the runner's tally reads it like a node's log).
const char* logged_as(container_op op) {
  switch (op) {
    case container_op::crash: return "crash";
    case container_op::pause: return "stall";
    case container_op::partition: return "partition";
    case container_op::resume: return "resume";
    case container_op::heal: return "heal";
    case container_op::coordinator: return "coordinator-kill";
  }
  return "?";
}

}  // namespace

result<std::unique_ptr<compose_chaos>> compose_chaos::open(const chaos_options& o, const std::string& dir) {
  std::unique_ptr<compose_chaos> c(new compose_chaos());
  std::string script = o.cluster_script;
  if (script.empty()) {  // the source tree's, next to cluster_configs/
    const fs::path cfg = fs::absolute(default_config_path());
    script = (cfg.parent_path().parent_path() / "docker" / "cluster.sh").lexically_normal().string();
  }
  if (access(script.c_str(), X_OK) != 0)
    return status{errc::io, "chaos --compose: " + script +
                                       " is not an executable docker/cluster.sh (run from the source tree, set "
                                       "PNMKV_HOME to it, or pass --cluster-script)"};
  c->script_ = script;
  c->dir_ = dir;
  c->state_ = env_or("PNMKV_DOCKER_STATE", fs::absolute(dir + "/docker-state").string());
  const std::string port = env_or("PNMKV_PORT", "7100");
  char* end = nullptr;
  const unsigned long p = std::strtoul(port.c_str(), &end, 10);
  if (port.empty() || *end || p == 0 || p > 65535)
    return status{errc::invalid_argument, "PNMKV_PORT='" + port + "': a TCP port in 1..65535"};
  c->port_ = uint16_t(p);
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  c->env_ = {{"PNMKV_PROJECT", env_or("PNMKV_PROJECT", "pnmkvchaos")},
             {"PNMKV_DOCKER_STATE", c->state_},
             {"PNMKV_PORT", port},
             {"BUILD_DIR", env_or("BUILD_DIR", fs::path(self).parent_path().string())}};
  std::error_code ec;
  fs::create_directories(c->state_, ec);
  auto rc = c->tool({"daemon"}, dir + "/cluster.log", 600000);
  if (!rc) return rc.error();
  if (*rc == 3)
    return status{errc::unsupported, "chaos --compose: no Docker daemon answers and none could be started here "
                                     "(root is needed to start one; see " + dir + "/cluster.log)"};
  if (*rc != 0)
    return status{errc::io, "chaos --compose: `cluster.sh daemon` exited " + std::to_string(*rc) + " (see " + dir +
                                "/cluster.log)"};
  return c;
}

compose_chaos::~compose_chaos() { (void)tool({"down"}, dir_ + "/cluster.log", 300000); }

result<int> compose_chaos::tool(const std::vector<std::string>& args, const std::string& log, uint64_t timeout_ms,
                                std::string* out) const {
  // Its own fork/exec rather than transport::piped_child or the launcher's spawn_child:
  // it needs the test's environment for this call only (setenv is not safe with CAF's
  // threads running), stderr appended to a log the user is pointed to, and stdout apart.
  const std::string out_file = log + ".stdout";
  // Everything the child needs is made before fork(): this process has threads (CAF's), and
  // between fork and exec only async-signal-safe calls are made.
  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    if (std::none_of(env_.begin(), env_.end(), [&](const auto& o) { return o.first == key; })) env_s.push_back(kv);
  }
  for (const auto& [k, v] : env_) env_s.push_back(k + "=" + v);
  std::vector<char*> envp, argv;
  for (auto& e : env_s) envp.push_back(e.data());
  envp.push_back(nullptr);
  std::vector<std::string> args_s = args;
  std::string path = script_;
  argv.push_back(path.data());
  for (auto& a : args_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = fork();
  if (pid < 0) return status{errc::io, "fork failed for " + script_};
  if (pid == 0) {
    setpgid(0, 0);
    const int err = ::open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    const int so = out ? ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644) : err;
    if (err >= 0) dup2(err, 2);
    if (so >= 0) dup2(so, 1);
    const int in = ::open("/dev/null", O_RDONLY);
    if (in >= 0) dup2(in, 0);
    execve(path.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  int st = 0;
  for (;;) {
    const pid_t w = waitpid(pid, &st, WNOHANG);
    if (w == pid) break;
    if (w < 0) return status{errc::io, "waitpid failed for " + script_};
    if (std::chrono::steady_clock::now() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &st, 0);
      return status{errc::timeout, script_ + " " + args.front() + " did not finish within " +
                                       std::to_string(timeout_ms) + " ms (log " + log + ")"};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  if (out) {
    *out = read_file(out_file);
    std::error_code ec;
    fs::remove(out_file, ec);
  }
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return WEXITSTATUS(st);
}

namespace {

// Executes a container plan while the run goes on: the driver's progress moves `step`; each
// due action runs on a thread of its own, so a slow docker command does not hold back
// another node's fault; an undo waits for its strike (due_container_actions).
class plan_executor {
 public:
  using tool_fn = std::function<result<int>(const std::vector<std::string>&, const std::string&, uint64_t,
                                            std::string*)>;
  plan_executor(const transport::container_plan& plan, std::vector<chaos_action>& actions, std::string work,
                tool_fn tool)
      : plan_(plan), actions_(actions), work_(std::move(work)), tool_(std::move(tool)),
        done_(plan.actions.size(), -1), started_(plan.actions.size(), false) {
    actions_.resize(plan.actions.size());
    for (size_t i = 0; i < plan.actions.size(); ++i) {
      actions_[i].op = transport::to_string(plan.actions[i].op);
      actions_[i].node = plan.actions[i].node;
      actions_[i].at_step = plan.actions[i].at_step;
    }
    loop_ = std::thread([this] { loop(); });
  }
  ~plan_executor() { finish(); }

  void on_step(uint64_t done, int64_t unix_ms) {
    std::lock_guard<std::mutex> lk(mu_);
    progress_.emplace_back(done, unix_ms);
    step_ = std::max(step_, done);
    cv_.notify_all();
  }
  // The run is over: pending undos are done now, strikes not yet due never; returns once
  // every action has finished.
  void finish() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      over_ = true;
      cv_.notify_all();
    }
    if (loop_.joinable()) loop_.join();
  }
  // (step, UTC ms) as the driver saw them.
  const std::vector<std::pair<uint64_t, int64_t>>& progress() const { return progress_; }

 private:
  void loop() {
    std::vector<std::thread> workers;
    for (;;) {
      std::vector<size_t> due;
      uint64_t s = 0;
      {
        std::unique_lock<std::mutex> lk(mu_);
        cv_.wait_for(lk, std::chrono::milliseconds(20));
        s = step_;
        for (size_t i : transport::due_container_actions(plan_, uint32_t(std::min<uint64_t>(s, UINT32_MAX)),
                                                         steady_ms_now(), done_, over_))
          if (!started_[i]) {
            started_[i] = true;
            ++running_;
            due.push_back(i);
          }
        if (over_ && due.empty() && running_ == 0) break;
      }
      for (size_t i : due) workers.emplace_back([this, i, s] { strike(i, s); });
    }
    for (auto& w : workers) w.join();
    for (size_t i = 0; i < plan_.actions.size(); ++i)
      if (done_[i] < 0)
        actions_[i].error = plan_.actions[i].undo() ? "not needed: its strike was not injected"
                                                    : "not injected: the run ended before decode step " +
                                                          std::to_string(plan_.actions[i].at_step);
  }

  void strike(size_t i, uint64_t s) {
    chaos_action& a = actions_[i];
    a.step_issued = s;
    a.issued_unix_ms = unix_ms_now();
    const std::string log = work_ + "/faults-" + std::to_string(i) + ".log";
    std::string out;
    auto rc = tool_({"fault", a.op, std::to_string(a.node)}, log, 120000, &out);
    a.done_unix_ms = unix_ms_now();
    a.ok = rc && *rc == 0;
    if (!a.ok) a.error = rc ? "cluster.sh fault exited " + std::to_string(*rc) + " (" + log + ")" : rc.error().message();
    // cluster.sh's times: issued (just before the signal or docker command) and in effect.
    auto j = nlohmann::json::parse(out, nullptr, false);
    if (a.ok && !j.is_discarded() && j.is_object()) {
      a.issued_unix_ms = j.value("injected_unix_ms", a.issued_unix_ms);
      a.done_unix_ms = j.value("effective_unix_ms", a.done_unix_ms);
    }
    std::lock_guard<std::mutex> lk(mu_);
    a.step_done = step_;
    if (a.ok && over_) a.error = "struck after the run had ended (no fault of this run)";
    done_[i] = steady_ms_now();
    if (!a.ok)  // nothing to undo
      for (size_t j = 0; j < plan_.actions.size(); ++j)
        if (plan_.actions[j].strike == int64_t(i)) started_[j] = true;
    --running_;
    cv_.notify_all();
  }

  const transport::container_plan& plan_;
  std::vector<chaos_action>& actions_;
  std::string work_;
  tool_fn tool_;
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t step_ = 0;
  bool over_ = false;
  size_t running_ = 0;
  std::vector<int64_t> done_;
  std::vector<bool> started_;
  std::vector<std::pair<uint64_t, int64_t>> progress_;
  std::thread loop_;
};

}  // namespace

void compose_chaos::take_down(const std::string& log, outcome& oc) const {
  (void)tool({"down", "--keep-daemon"}, log, 300000);
  std::string left;
  auto rc = tool({"leftovers"}, log, 60000, &left);
  if (!rc || *rc != 0) {
    oc.violations.push_back("could not list what the trial's cluster left (cluster.sh leftovers; " + log + ")");
    return;
  }
  std::istringstream lines(left);
  for (std::string l; std::getline(lines, l);)
    if (!l.empty()) oc.violations.push_back("left behind after the trial's cluster was taken down: " + l);
}

// The containers' fault logs and each container action that struck, into `host_log` (the
// fault log's grammar: the runner tallies both alike); Docker's restart count of the
// coordinator.
void compose_chaos::collect(const transport::container_plan& plan, const std::string& work,
                            const std::string& host_log, outcome& oc) const {
  const std::string got = work + "/collected";
  if (auto c = tool({"collect", compose_fault_log, got}, work + "/cluster.log", 120000); !c || *c != 0) {
    oc.violations.push_back("could not collect the containers' fault logs (cluster.sh collect; " + work +
                            "/cluster.log)");
    return;
  }
  std::ifstream tsv(got + "/containers.tsv");
  for (std::string line; std::getline(tsv, line);) {
    std::istringstream f(line);
    std::string svc, state, code;
    uint32_t restarts = 0;
    if (f >> svc >> state >> code >> restarts && svc == "coordinator") oc.coordinator_restarts = restarts;
  }
  if (host_log.empty()) return;
  std::ofstream out(host_log, std::ios::app);
  std::error_code ec;
  const std::string name = fs::path(compose_fault_log).filename().string();
  for (const auto& e : fs::directory_iterator(got, ec))
    if (e.path().filename().string().find(name) != std::string::npos) out << read_file(e.path().string());
  for (size_t i = 0; i < oc.actions.size(); ++i) {
    const chaos_action& a = oc.actions[i];
    if (!a.ok || a.op == "coordinator") continue;  // a coordinator kill counts as a restart
    nlohmann::ordered_json j;
    j["node"] = a.node;
    j["point"] = "container";
    j["fault"] = logged_as(plan.actions[i].op);
    j["from"] = a.node;
    j["to"] = a.node;
    j["step"] = a.step_issued;
    j["how"] = "cluster.sh fault " + a.op;
    j["unix_ms"] = a.done_unix_ms;
    out << j.dump() << "\n";
  }
}

compose_chaos::outcome compose_chaos::run(const config& cfg, const transport::container_plan& plan,
                                          const std::string& work, const std::string& host_log, uint64_t timeout_ms) {
  outcome oc;
  std::error_code ec;
  fs::create_directories(work, ec);
  const std::string log = work + "/cluster.log";
  const std::string cfg_file = fs::absolute(work + "/config.yaml").string();
  std::ofstream(cfg_file) << cfg.to_yaml();
  std::vector<std::string> up = {"up", "--config", cfg_file};
  if (built_) up.push_back("--no-build");
  auto rc = tool(up, log, 900000);
  if (!rc || *rc != 0) {
    const std::string why = "the container cluster did not come up (cluster.sh up: " +
                            (rc ? "exit " + std::to_string(*rc) : rc.error().message()) + "; log " + log + ")";
    oc.violations.push_back(why);
    oc.report = status{errc::io, why};
    take_down(log, oc);
    return oc;
  }
  built_ = true;
  // The driver's config (cluster.sh's host.yaml), with the journal's path as the host sees
  // it: what tells a driver that a lost coordinator comes back (Docker restarts it), so it
  // waits and joins again instead of failing the run.
  auto host = load_config(state_ + "/host.yaml", {"cluster.journal_file=" + state_ + "/var/coordinator.journal"});
  if (!host) {
    oc.report = status{host.error().code(), "the driver's config " + state_ + "/host.yaml: " + host.error().message()};
    oc.violations.push_back(oc.report.error().message());
    take_down(log, oc);
    return oc;
  }

  std::vector<int64_t> coord_lost_ms, coord_back_ms;
  std::mutex mu;
  {
    plan_executor exec(plan, oc.actions, work,
                       [this](const std::vector<std::string>& a, const std::string& l, uint64_t t, std::string* o) {
                         return tool(a, l, t, o);
                       });
    cluster_run_options ro;
    ro.run_timeout_ms = timeout_ms;
    ro.on_progress = [&](const std::string& phase, uint64_t done, uint64_t) {
      if (phase == "decode" || phase == "serve") exec.on_step(done, unix_ms_now());
    };
    ro.on_coordinator_link = [&](bool back) {
      std::lock_guard<std::mutex> lk(mu);
      (back ? coord_back_ms : coord_lost_ms).push_back(unix_ms_now());
    };
    oc.report = run_attached(*host, ro, "127.0.0.1", port_);
    exec.finish();
    std::ofstream pt(work + "/progress.tsv");
    pt << "step\tunix_ms\n";
    for (const auto& [st, ms] : exec.progress()) pt << st << "\t" << ms << "\n";
  }
  // Coordinator kills: the driver's first loss after each kill, and its rejoin after that.
  for (const auto& a : oc.actions) {
    if (a.op != "coordinator" || !a.ok) continue;
    for (size_t k = 0; k < coord_lost_ms.size(); ++k) {
      if (coord_lost_ms[k] < a.issued_unix_ms) continue;
      oc.coordinator_detect_ms.push_back(double(coord_lost_ms[k] - a.done_unix_ms));
      if (k < coord_back_ms.size()) oc.coordinator_recover_ms.push_back(double(coord_back_ms[k] - a.done_unix_ms));
      break;
    }
  }
  collect(plan, work, host_log, oc);
  // The containers' logs, kept when something needs explaining: a failed run, a violation,
  // or a device lost that no container action struck.
  bool unexplained = false;
  if (oc.report)
    for (const auto& l : oc.report->device_losses)
      unexplained = unexplained || std::none_of(oc.actions.begin(), oc.actions.end(), [&](const chaos_action& a) {
                      return a.node == l.device && a.ok && a.issued_unix_ms <= l.detected_unix_ms;
                    });
  // A strike on a device that was already lost (fenced, its container gone) could not be
  // injected: said so, rather than as a failed docker command.
  if (oc.report)
    for (auto& a : oc.actions)
      for (const auto& l : oc.report->device_losses)
        if (!a.ok && a.node == l.device && l.detected_unix_ms <= a.issued_unix_ms)
          a.error = "not injected: device " + std::to_string(l.device) + " was already lost (after " +
                    std::to_string(l.steps_done) + " decode steps: " + l.reason + "; " + a.error + ")";
  if (!oc.report || !oc.violations.empty() || unexplained)
    (void)tool({"logs"}, work + "/containers.log", 120000, nullptr);
  take_down(log, oc);
  return oc;
}

}  // namespace pnmkv
