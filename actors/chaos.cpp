#include "actors/chaos.hpp"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "actors/chaos_compose.hpp"
#include "actors/cluster.hpp"
#include "actors/node_main.hpp"
#include "transport/chaos_containers.hpp"

namespace pnmkv {

namespace fs = std::filesystem;
using transport::chaos_fault;

namespace {

// The fault-point kind (transport/faults.hpp) each chaos fault fires as.
const char* fires_as(chaos_fault f) {
  switch (f) {
    case chaos_fault::crash: return "crash";
    case chaos_fault::hang: return "stall";
    case chaos_fault::partition: return "partition";
    case chaos_fault::drop: return "drop";
    case chaos_fault::duplicate: return "duplicate";
    case chaos_fault::corrupt: return "corrupt";
    case chaos_fault::delay:
    case chaos_fault::slow_link: return "delay";
    case chaos_fault::coordinator_kill: return "coordinator-kill";  // the launcher's, not a fault point's
  }
  return "?";
}

// Child processes of this process (a node that outlived its run).
std::vector<pid_t> own_children() {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  const pid_t self = getpid();
  while (dirent* e = readdir(d)) {
    const pid_t pid = static_cast<pid_t>(std::atoi(e->d_name));
    if (pid <= 0) continue;
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    const auto close = line.rfind(')');
    if (close == std::string::npos || close + 2 >= line.size()) continue;
    std::istringstream rest(line.substr(close + 2));
    char state = 0;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid == self && state != 'Z') out.push_back(pid);
  }
  closedir(d);
  return out;
}

double median(std::vector<double> v) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The config of a run: `base` with the trial's faults (or none), and what recovery from
// them needs when the base leaves it off: a hung device noticed (the embedded cluster has
// no heartbeats) and lost messages sent again.
result<config> trial_config(const config& base, const std::string& script, uint64_t seed, const std::string& log) {
  config c = base;
  for (const char* k : {"faults.drop_prob", "faults.delay_prob", "faults.duplicate_prob", "faults.corrupt_prob",
                        "faults.stall_prob", "faults.partition_prob"})
    if (auto s = c.set(k, "0"); !s) return s;
  if (auto s = c.set("faults.script", script); !s) return s;
  if (auto s = c.set("faults.script_file", ""); !s) return s;
  if (auto s = c.set("faults.seed", std::to_string(seed)); !s) return s;
  if (auto s = c.set("faults.log", log); !s) return s;
  if (c.get_int("cluster.device_timeout_ms") == 0)
    if (auto s = c.set("cluster.device_timeout_ms", "1500"); !s) return s;
  if (c.get_int("run.retry_after_ms") == 0)
    if (auto s = c.set("run.retry_after_ms", "200"); !s) return s;
  return c;
}

// The options checked and the schedules' parameters: one place for `chaos_plans` and
// `run_chaos`.
result<transport::chaos_params> params_for(const config& base, const chaos_options& o) {
  if (o.compose && o.multiprocess)
    return status{errc::invalid_argument, "chaos: --compose and --multiprocess name two clusters; pick one"};
  // Both a launcher's and the container cluster's coordinator is a process of its own.
  auto kinds = transport::parse_chaos_faults(o.faults, o.multiprocess || o.compose);
  if (!kinds) return kinds.error();
  if (o.trials == 0 || o.trials > 100000) return status{errc::invalid_argument, "chaos: --trials must be in [1, 100000]"};
  transport::chaos_params p;
  p.kinds = *kinds;
  p.faults_per_trial_max = o.faults_per_trial_max;
  p.rate_max = o.rate_max;
  const int64_t devices = base.get_int("cluster.pnm_devices");
  for (int64_t i = 0; i < devices; ++i) p.devices.push_back(uint32_t(100 + i));
  const bool open = base.get_string("workload.arrivals") != "closed";
  p.steps = uint32_t(open ? base.get_int("workload.output_tokens") : base.get_int("run.steps"));
  return p;
}

// A trial's report, into the trial (`coordinator`: its coordinator figures too; the
// container cluster's come from Docker and its driver instead).
void absorb_report(chaos_trial& tr, const result<run_report>& got, bool coordinator) {
  if (!got) {
    tr.run_error = got.error().to_string();
  } else {
    tr.submitted = got->submitted;
    tr.completed = got->completed;
    tr.failed = got->failed;
    tr.failures = got->failures;
    tr.losses = got->device_losses;
    tr.rebuilds = got->rebuilds;
    tr.recovery_stall_ms = got->recovery_stall_ms;
    if (coordinator) {
      tr.coordinator_restarts = got->coordinator_restarts;
      tr.coordinator_detect_ms = got->coordinator_detect_ms;
      tr.coordinator_recover_ms = got->coordinator_recover_ms;
    }
  }
  if (tr.coordinator_restarts) tr.fired["coordinator-kill"] += tr.coordinator_restarts;
}

// What fired (the trial's fault log), and each lost device's detection after the first
// fault that could lose it (crash, stall, partition) hit it.
void tally_fault_log(chaos_trial& tr, const std::string& log) {
  std::map<uint32_t, int64_t> first_hit;
  std::ifstream in(log);
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded()) continue;
    const std::string kind = j.value("fault", std::string());
    ++tr.fired[kind];
    if (kind != "crash" && kind != "stall" && kind != "partition") continue;
    const int64_t ms = j.value("unix_ms", int64_t(0));
    std::set<uint32_t> hit;
    if (kind == "partition") {
      hit = {j.value("from", 0u), j.value("to", 0u)};
    } else {
      hit = {j.value("node", 0u)};
    }
    for (uint32_t n : hit) {
      auto [it, added] = first_hit.emplace(n, ms);
      if (!added) it->second = std::min(it->second, ms);
    }
  }
  for (const auto& l : tr.losses) {
    auto h = first_hit.find(l.device);
    tr.detect_ms.push_back(h == first_hit.end() ? -1.0 : double(l.detected_unix_ms - h->second));
  }
}

}  // namespace

result<std::vector<std::string>> chaos_plans(const config& base, const chaos_options& o) {
  auto params = params_for(base, o);
  if (!params) return params.error();
  const transport::chaos_params& p = *params;
  std::vector<std::string> out;
  for (uint32_t t = 0; t < o.trials; ++t) {
    auto s = transport::draw_chaos_schedule(p, o.seed + t);
    if (!s) return s.error();
    std::string text = "seed " + std::to_string(o.seed + t) + ": " + s->script();
    if (o.compose) {
      auto plan = transport::plan_for_containers(*s);
      if (!plan) return plan.error();
      text += "\n    nodes' script: " + (plan->node_script.empty() ? std::string("(none)") : plan->node_script);
      for (const auto& a : plan->actions) {
        text += "\n    cluster.sh fault " + std::string(transport::to_string(a.op)) + " " + std::to_string(a.node);
        if (!a.undo()) text += "  at decode step " + std::to_string(a.at_step);
        else if (a.at_step) text += "  at decode step " + std::to_string(a.at_step) + " (after its strike)";
        else text += "  " + std::to_string(a.after_ms) + " ms after its strike";
      }
    }
    out.push_back(std::move(text));
  }
  return out;
}

std::vector<std::string> chaos_violations(const run_report& clean, const result<run_report>& got) {
  std::vector<std::string> v;
  if (!got) {
    // The run as a whole failed, with a reason: every request failed with it. A run that
    // did not return in time is a hang.
    if (got.error().code() == errc::timeout) v.push_back("the run hung: " + got.error().message());
    return v;
  }
  const run_report& r = *got;
  if (r.completed + r.failed != r.submitted)
    v.push_back(std::to_string(r.submitted) + " requests submitted, " + std::to_string(r.completed) + " completed, " +
                std::to_string(r.failed) + " failed: some vanished");
  for (const auto& f : r.failures)
    if (f.empty() || f.find(": ") == std::string::npos) v.push_back("a failure without a reason: \"" + f + "\"");
  // Each failed request has its own line, or the run's ("run: ...") covers every one.
  const bool run_failed = std::any_of(r.failures.begin(), r.failures.end(),
                                      [](const std::string& f) { return f.rfind("run: ", 0) == 0; });
  if (!run_failed && r.failures.size() < r.failed) v.push_back("a failed request has no reason");
  std::map<uint64_t, uint64_t> want(clean.request_digests.begin(), clean.request_digests.end());
  if (r.request_digests.size() != r.completed)
    v.push_back(std::to_string(r.completed) + " requests completed but " + std::to_string(r.request_digests.size()) +
                " have an output digest");
  for (const auto& [id, d] : r.request_digests) {
    auto w = want.find(id);
    if (w == want.end()) v.push_back("request " + std::to_string(id) + " completed but the clean run has no such request");
    else if (w->second != d) v.push_back("request " + std::to_string(id) + "'s outputs differ from the run without faults");
  }
  return v;
}

std::string chaos_trial::to_json() const {
  nlohmann::ordered_json j;
  j["seed"] = seed;
  j["script"] = schedule.script();
  nlohmann::ordered_json events = nlohmann::ordered_json::array();
  for (const auto& e : schedule.events)
    events.push_back({{"kind", transport::to_string(e.kind)}, {"node", e.node}, {"step", e.step}, {"rule", e.rule}});
  j["events"] = events;
  j["ok"] = ok();
  j["violations"] = violations;
  j["run_error"] = run_error;
  j["requests"] = {{"submitted", submitted}, {"completed", completed}, {"failed", failed}, {"failures", failures}};
  j["fired"] = fired;
  nlohmann::ordered_json losses_j = nlohmann::ordered_json::array();
  for (size_t i = 0; i < losses.size(); ++i)
    losses_j.push_back({{"device", losses[i].device},
                        {"steps_done", losses[i].steps_done},
                        {"reason", losses[i].reason},
                        {"detected_unix_ms", losses[i].detected_unix_ms},
                        {"detect_ms", i < detect_ms.size() ? detect_ms[i] : -1.0}});
  j["losses"] = losses_j;
  nlohmann::ordered_json rb = nlohmann::ordered_json::array();
  for (const auto& b : rebuilds)
    rb.push_back({{"request", b.request_id}, {"shard", b.shard_id}, {"kind", b.kind}, {"target", b.target},
                  {"outcome", b.outcome}, {"bytes", b.bytes}, {"tokens", b.tokens}, {"wall_ms", b.wall_ms},
                  {"stall_ms", b.stall_ms}});
  j["rebuilds"] = rb;
  j["recovery_stall_ms"] = recovery_stall_ms;
  j["coordinator_restarts"] = coordinator_restarts;
  j["coordinator_detect_ms"] = coordinator_detect_ms;
  j["coordinator_recover_ms"] = coordinator_recover_ms;
  if (!actions.empty()) {
    nlohmann::ordered_json acts = nlohmann::ordered_json::array();
    for (const auto& a : actions)
      acts.push_back({{"op", a.op}, {"node", a.node}, {"at_step", a.at_step}, {"step_issued", a.step_issued},
                      {"step_done", a.step_done}, {"issued_unix_ms", a.issued_unix_ms},
                      {"done_unix_ms", a.done_unix_ms}, {"ok", a.ok}, {"error", a.error}});
    j["container_actions"] = acts;
  }
  j["wall_s"] = wall_s;
  return j.dump();
}

result<std::vector<chaos_trial>> run_chaos(const config& base, const chaos_options& o,
                                           const std::function<void(const chaos_trial&)>& on_trial) {
  auto params = params_for(base, o);
  if (!params) return params.error();
  const transport::chaos_params& p = *params;
  const std::string dir = o.out_dir.empty() ? (fs::temp_directory_path() / ("pnmkv-chaos-" + std::to_string(getpid()))).string()
                                            : o.out_dir;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return status{errc::io, "chaos: cannot create " + dir + ": " + ec.message()};

  cluster_run_options ro;
  ro.run_timeout_ms = o.trial_timeout_ms;
  multiprocess_options mp;
  mp.node_binary = o.node_binary;
  std::unique_ptr<compose_chaos> compose;
  if (o.compose) {
    auto c = compose_chaos::open(o, dir);
    if (!c) return c.error();
    compose = std::move(*c);
  }
  // One run; `plan` and `tr` for the container cluster (its actions and what it left).
  auto run = [&](const config& c, const std::string& work, const transport::container_plan& plan,
                 const std::string& log, chaos_trial* tr) -> result<run_report> {
    if (compose) {
      auto oc = compose->run(c, plan, work, log, o.trial_timeout_ms);
      if (tr) {
        tr->actions = std::move(oc.actions);
        tr->violations.insert(tr->violations.end(), oc.violations.begin(), oc.violations.end());
        tr->coordinator_restarts = oc.coordinator_restarts;
        tr->coordinator_detect_ms = std::move(oc.coordinator_detect_ms);
        tr->coordinator_recover_ms = std::move(oc.coordinator_recover_ms);
      } else if (!oc.violations.empty()) {
        return status{errc::internal, oc.violations.front()};
      }
      return std::move(oc.report);
    }
    if (!o.multiprocess) return run_embedded(c, ro);
    multiprocess_options m = mp;
    m.work_dir = work;
    return run_multiprocess(c, ro, m);
  };
  // The reference: the same configuration without faults.
  auto clean_cfg = trial_config(base, "", o.seed, "");
  if (!clean_cfg) return clean_cfg.error();
  auto clean = run(*clean_cfg, dir + "/clean", {}, "", nullptr);
  if (!clean) return status{clean.error().code(), "chaos: the run without faults failed: " + clean.error().message()};
  if (clean->completed != clean->submitted)
    return status{errc::internal, "chaos: the run without faults completed " + std::to_string(clean->completed) + " of " +
                                      std::to_string(clean->submitted) + " requests"};

  std::vector<chaos_trial> out;
  std::ofstream jsonl(dir + "/chaos.jsonl", std::ios::trunc);
  for (uint32_t t = 0; t < o.trials; ++t) {
    chaos_trial tr;
    tr.seed = o.seed + t;
    auto sched = transport::draw_chaos_schedule(p, tr.seed);
    if (!sched) return sched.error();
    tr.schedule = *sched;
    const std::string log = dir + "/trial-" + std::to_string(tr.seed) + ".faults.jsonl";
    fs::remove(log, ec);
    // The container cluster: device faults become container actions and the rest stays in
    // the script its nodes run, their fault log in each container (copied to `log` after).
    transport::container_plan plan;
    if (compose) {
      auto p = transport::plan_for_containers(tr.schedule);
      if (!p) return p.error();
      plan = std::move(*p);
    }
    auto cfg = trial_config(base, compose ? plan.node_script : tr.schedule.script(), tr.seed,
                            compose ? std::string(compose_fault_log) : log);
    if (!cfg) return cfg.error();
    const auto t0 = std::chrono::steady_clock::now();
    auto got = run(*cfg, dir + "/trial-" + std::to_string(tr.seed), plan, log, &tr);
    tr.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    auto inv = chaos_violations(*clean, got);
    tr.violations.insert(tr.violations.begin(), inv.begin(), inv.end());
    if (o.multiprocess || o.compose) {  // node processes; cluster.sh and its docker commands
      const auto left = own_children();
      if (!left.empty()) {
        std::string pids;
        for (pid_t x : left) pids += (pids.empty() ? "" : ", ") + std::to_string(x);
        tr.violations.push_back("node processes outlived the run: " + pids);
      }
    }
    absorb_report(tr, got, !compose);
    tally_fault_log(tr, log);
    jsonl << tr.to_json() << "\n";
    jsonl.flush();
    if (on_trial) on_trial(tr);
    out.push_back(std::move(tr));
  }
  return out;
}

namespace {
// Did a fault of kind `k` (its name) of the trial hit a device that was lost?
bool lost_by(const chaos_trial& t, const std::string& k) {
  for (const auto& l : t.losses)
    for (const auto& e : t.schedule.events)
      if (transport::to_string(e.kind) == k && e.node == int64_t(l.device)) return true;
  return false;
}
bool any_lost_by(const chaos_trial& t) {
  for (const auto& e : t.schedule.events)
    if (lost_by(t, transport::to_string(e.kind))) return true;
  return false;
}
}  // namespace

std::string chaos_summary_table(const std::vector<chaos_trial>& trials) {
  struct row {
    uint64_t trials = 0, fired = 0, lost = 0, violations = 0, copied = 0, recomputed = 0;
    std::vector<double> detect, recover;
    double stall_ms = 0;
  };
  std::map<std::string, row> rows;
  for (const auto& t : trials) {
    std::set<std::string> kinds;
    for (const auto& e : t.schedule.events) kinds.insert(transport::to_string(e.kind));
    for (const auto& k : kinds) {
      row& r = rows[k];
      ++r.trials;
      r.violations += !t.ok();
      chaos_fault kind = chaos_fault::crash;
      for (const auto& e : t.schedule.events)
        if (k == transport::to_string(e.kind)) kind = e.kind;
      auto f = t.fired.find(fires_as(kind));
      if (f != t.fired.end()) r.fired += f->second;
      if (kind == chaos_fault::coordinator_kill) {  // lost and back: the restarted coordinator
        r.lost += t.coordinator_restarts;
        r.detect.insert(r.detect.end(), t.coordinator_detect_ms.begin(), t.coordinator_detect_ms.end());
        r.recover.insert(r.recover.end(), t.coordinator_recover_ms.begin(), t.coordinator_recover_ms.end());
        continue;
      }
      // Devices this kind hit that were lost, and their detection times.
      for (size_t i = 0; i < t.losses.size(); ++i) {
        bool hit = false;
        for (const auto& e : t.schedule.events) hit = hit || (transport::to_string(e.kind) == k && e.node == t.losses[i].device);
        if (!hit) continue;
        ++r.lost;
        if (i < t.detect_ms.size() && t.detect_ms[i] >= 0) r.detect.push_back(t.detect_ms[i]);
      }
      // The trial's rebuilds go to the kinds that lost a device in it (a hang that lost
      // nothing beside a crash that did gets none), or to every kind when none did.
      if (!lost_by(t, k) && any_lost_by(t)) continue;
      for (const auto& b : t.rebuilds) {
        if (b.outcome != "done") continue;
        r.recover.push_back(b.wall_ms);
        (b.kind == "recompute" ? r.recomputed : r.copied) += b.bytes;
        r.stall_ms += b.stall_ms;
      }
    }
  }
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line, "%-16s %6s %7s %5s %17s %17s %10s %10s %10s %5s\n", "fault", "trials", "fired",
                "lost", "detect ms med/max", "recover ms med/max", "copied", "recomputed", "stall ms", "bad");
  out += line;
  auto mb = [](uint64_t b) {
    char s[32];
    std::snprintf(s, sizeof s, "%.1f MiB", double(b) / (1 << 20));
    return std::string(s);
  };
  auto mm = [](const std::vector<double>& v) {
    if (v.empty()) return std::string("-");
    char s[48];
    std::snprintf(s, sizeof s, "%.0f/%.0f", median(v), *std::max_element(v.begin(), v.end()));
    return std::string(s);
  };
  for (const auto& [k, r] : rows) {
    std::snprintf(line, sizeof line, "%-16s %6llu %7llu %5llu %17s %17s %10s %10s %10.1f %5llu\n", k.c_str(),
                  (unsigned long long)r.trials, (unsigned long long)r.fired, (unsigned long long)r.lost,
                  mm(r.detect).c_str(), mm(r.recover).c_str(), mb(r.copied).c_str(), mb(r.recomputed).c_str(),
                  r.stall_ms, (unsigned long long)r.violations);
    out += line;
  }
  uint64_t bad = 0;
  double wall = 0;
  for (const auto& t : trials) {
    bad += !t.ok();
    wall += t.wall_s;
  }
  std::snprintf(line, sizeof line, "%zu trials, %llu with violated invariants, %.1f s of runs\n", trials.size(),
                (unsigned long long)bad, wall);
  out += line;
  return out;
}

}  // namespace pnmkv
