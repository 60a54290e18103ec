// `pnmkv detsim`: deterministic fault simulation (actors/detsim.hpp). The embedded cluster on
// one thread and a virtual clock, a seed fixing every interleaving and fault; one seed
// (--seed N, with what happened) or a sweep (--seeds A..B), each checked against the clean
// run's per-request digests. Exit status 1 when an invariant fails; every failing seed is
// printed with the command that replays it alone.
#include <CLI/CLI.hpp>

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "actors/detsim.hpp"
#include "apps/commands.hpp"

namespace pnmkv::apps {

namespace {

struct detsim_cli {
  config_options cfg;
  uint64_t seed = 0;
  std::string seeds;
  bool strict = false;
  bool basic = false;
  bool explore = false;  // no effect: what it drew is drawn by default now
  bool no_schedule = false;
  std::string json_out;
};

bool parse_range(const std::string& s, uint64_t& a, uint64_t& b) {
  const auto dots = s.find("..");
  if (dots == std::string::npos) return false;
  try {
    size_t n1 = 0, n2 = 0;
    a = std::stoull(s.substr(0, dots), &n1);
    b = std::stoull(s.substr(dots + 2), &n2);
    return n1 == dots && n2 == s.size() - dots - 2 && a <= b;
  } catch (const std::exception&) {
    return false;
  }
}

// "pnmkv detsim --seed {} ..." with this invocation's flags, config and overrides.
std::string replay_hint(const detsim_cli& o) {
  std::string s = "pnmkv detsim --seed {}";
  if (o.strict) s += " --strict";
  if (o.basic) s += " --basic";
  if (o.no_schedule) s += " --no-schedule";
  if (!o.cfg.file.empty()) s += " --config " + o.cfg.file;
  for (const auto& x : o.cfg.overrides) s += " --set '" + x + "'";
  return s;
}

void print_one(const detsim_run& r, const detsim_run& clean, const std::vector<std::string>& v) {
  std::printf("detsim seed %llu\n", static_cast<unsigned long long>(r.seed));
  std::string variant;
  for (const auto& x : r.variant) variant += (variant.empty() ? "" : " ") + x;
  if (!variant.empty()) std::printf("  variant        %s\n", variant.c_str());
  std::printf("  schedule       %s\n", r.schedule.rules.empty() ? "(no faults)" : r.schedule.script().c_str());
  for (const auto& s : r.schedule.sets) std::printf("  set            %s\n", s.c_str());
  std::printf("  events         %llu picks, %llu timer jumps, %.1f ms virtual, trace %016llx\n",
              static_cast<unsigned long long>(r.events), static_cast<unsigned long long>(r.timer_jumps),
              r.virtual_ms, static_cast<unsigned long long>(r.trace_hash));
  std::printf("  requests       %llu submitted, %llu completed, %llu failed (clean run: %llu completed)\n",
              static_cast<unsigned long long>(r.report.submitted), static_cast<unsigned long long>(r.report.completed),
              static_cast<unsigned long long>(r.report.failed),
              static_cast<unsigned long long>(clean.report.completed));
  for (const auto& f : r.report.failures) std::printf("    failure      %s\n", f.c_str());
  for (const auto& l : r.report.device_losses)
    std::printf("  device lost    %u after %u steps: %s\n", l.device, l.steps_done, l.reason.c_str());
  std::printf("  retries        %llu, fenced messages %llu\n", static_cast<unsigned long long>(r.report.retries),
              static_cast<unsigned long long>(r.report.fenced_messages));
  if (v.empty()) std::printf("  invariants     hold\n");
  for (const auto& x : v) std::printf("  VIOLATED       %s\n", x.c_str());
}

// A seed that crashes the process (a segfault, a failed PNMKV_CHECK) still names itself:
// the note is written before each seed's run and printed by the signal handler, which
// then hands the signal to whoever handled it before (UCX prints a backtrace).
char crash_note[2048];
struct sigaction previous_segv, previous_abrt;

void on_fatal_signal(int sig) {
  const ssize_t n = ::write(2, crash_note, std::strlen(crash_note));
  (void)n;
  ::sigaction(sig, sig == SIGSEGV ? &previous_segv : &previous_abrt, nullptr);
  ::raise(sig);
}

void note_crash_seed(const detsim_run& r, const std::string& hint) {
  const std::string s = "\n" + detsim_failure_text(r, {"the process crashed (signal) during this seed"}, hint) + "\n";
  std::snprintf(crash_note, sizeof crash_note, "%s", s.c_str());
}

void install_crash_note() {
  struct sigaction sa {};
  sa.sa_handler = on_fatal_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGSEGV, &sa, &previous_segv);
  ::sigaction(SIGABRT, &sa, &previous_abrt);
}

}  // namespace

void register_detsim(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "detsim", "Deterministic fault simulation: the embedded cluster on one thread and a virtual clock; "
                "a seed fixes every interleaving and fault; invariants checked against the clean run");
  static detsim_cli opts;
  add_config_options(cmd, opts.cfg);
  cmd->add_option("--seed", opts.seed, "Run this one seed (>= 1) and say what happened (replays a failing seed)");
  cmd->add_option("--seeds", opts.seeds, "Sweep the seeds A..B (inclusive; default 1..1000 without --seed)");
  cmd->add_flag("--strict", opts.strict,
                "Also require that no request fails while fewer struck devices are lost than cluster.replication");
  cmd->add_flag("--basic", opts.basic,
                "Draw only device crashes, hangs, partitions and message faults on other kinds than decode "
                "appends, with re-replication and recompute off (by default seeds also draw lost decode "
                "appends, the GPU host's own crash, fabric.inbox_depth=8 and recovery after a loss)");
  // Kept so that replay commands printed before it became the default still run.
  cmd->add_flag("--explore", opts.explore, "(no effect: what it drew is drawn by default)")->group("");
  cmd->add_flag("--no-schedule", opts.no_schedule,
                "--seed only: draw no fault schedule; the config's own faults.* apply (a scripted scenario, "
                "e.g. --set 'faults.script=crash node=100 step=3')");
  cmd->add_option("--json", opts.json_out, "Also write the sweep's summary (or the seed's report) as JSON to FILE");
  cmd->callback([] {
    if (opts.seed && !opts.seeds.empty()) {
      std::fprintf(stderr, "pnmkv detsim: give --seed N or --seeds A..B, not both\n");
      throw CLI::RuntimeError(2);
    }
    uint64_t first = 1, last = 1000;
    if (!opts.seeds.empty() && !parse_range(opts.seeds, first, last)) {
      std::fprintf(stderr, "pnmkv detsim: --seeds %s: want A..B with A <= B (e.g. 1..1000)\n", opts.seeds.c_str());
      throw CLI::RuntimeError(2);
    }
    // The small configuration first; the caller's --set overrides it.
    config_options co = opts.cfg;
    auto base = detsim_base_sets();
    co.overrides.insert(co.overrides.begin(), base.begin(), base.end());
    const config cfg = load_config_or_exit(co);
    const uint32_t classes = opts.basic ? detsim_basic_classes : detsim_default_classes;
    install_crash_note();
    const std::string hint = replay_hint(opts);
    // The seed draws the variant's keys except those the caller set.
    std::vector<std::string> fixed_keys;
    for (const auto& x : opts.cfg.overrides) fixed_keys.push_back(x.substr(0, x.find('=')));
    const uint32_t replication = static_cast<uint32_t>(cfg.get_int("cluster.replication"));

    if (opts.seed) {
      detsim_options o;
      o.seed = opts.seed;
      o.classes = classes;
      o.faults = !opts.no_schedule;
      o.sets = detsim_draw_variant(opts.seed, classes, fixed_keys);
      detsim_options clean_o = o;
      clean_o.clean = true;
      o.on_start = [&hint](const detsim_run& r) {
        note_crash_seed(r, hint);
        std::string v;
        for (const auto& x : r.variant) v += (v.empty() ? "" : " ") + x;
        std::printf("detsim seed %llu starting: %s%s%s\n", static_cast<unsigned long long>(r.seed),
                    r.schedule.rules.empty() ? "(no faults)" : r.schedule.script().c_str(), v.empty() ? "" : "; variant ",
                    v.c_str());
        std::fflush(stdout);
      };
      clean_o.quiet = true;  // the seed's run shows the nodes' warnings, not the clean one's
      auto clean = run_detsim(cfg, clean_o);
      if (!clean) {
        std::fprintf(stderr, "pnmkv detsim: %s\n", clean.error().to_string().c_str());
        throw CLI::RuntimeError(1);
      }
      auto run = run_detsim(cfg, o);
      if (!run) {
        std::fprintf(stderr, "pnmkv detsim: %s\n", run.error().to_string().c_str());
        throw CLI::RuntimeError(1);
      }
      if (!clean->finished || clean->report.completed != clean->report.submitted)
        std::fprintf(stderr, "pnmkv detsim: warning: the clean run (no faults) completed %llu of %llu requests: "
                             "there is no digest to compare with for the others\n",
                     static_cast<unsigned long long>(clean->report.completed),
                     static_cast<unsigned long long>(clean->report.submitted));
      const auto v = detsim_violations(*run, *clean, replication, opts.strict);
      print_one(*run, *clean, v);
      if (!opts.json_out.empty()) {
        std::ofstream(opts.json_out) << run->report.to_json() << "\n";
      }
      if (!v.empty()) {
        std::fprintf(stderr, "%s\n", detsim_failure_text(*run, v, replay_hint(opts)).c_str());
        throw CLI::RuntimeError(1);
      }
      return;
    }

    // A sweep: the nodes' own warnings would drown the result (detsim_sweep_options::quiet);
    // failing seeds are printed.
    detsim_sweep_options so;
    so.first_seed = first;
    so.last_seed = last;
    so.strict = opts.strict;
    so.classes = classes;
    so.replay_hint = hint;
    so.fixed_keys = fixed_keys;
    so.on_start = [&hint](const detsim_run& r) { note_crash_seed(r, hint); };
    auto res = detsim_sweep(cfg, so);
    if (!res) {
      std::fprintf(stderr, "pnmkv detsim: %s\n", res.error().to_string().c_str());
      throw CLI::RuntimeError(1);
    }
    std::printf("detsim: %llu seeds (%llu..%llu)%s, %zu failed; %.1f s wall, %llu events, %llu fault rules, "
                "%llu devices lost, %llu requests failed with a reason\n",
                static_cast<unsigned long long>(res->seeds), static_cast<unsigned long long>(first),
                static_cast<unsigned long long>(last), opts.strict ? " strict" : "", res->failed.size(), res->wall_s,
                static_cast<unsigned long long>(res->events), static_cast<unsigned long long>(res->faults_injected),
                static_cast<unsigned long long>(res->devices_lost),
                static_cast<unsigned long long>(res->requests_failed));
    if (!opts.json_out.empty()) {
      nlohmann::ordered_json j;
      j["seeds"] = res->seeds;
      j["first_seed"] = first;
      j["last_seed"] = last;
      j["strict"] = opts.strict;
      j["wall_s"] = res->wall_s;
      j["events"] = res->events;
      j["devices_lost"] = res->devices_lost;
      j["requests_failed"] = res->requests_failed;
      auto& f = j["failed"] = nlohmann::ordered_json::array();
      for (const auto& [seed, v] : res->failed) {
        nlohmann::ordered_json e;
        e["seed"] = seed;
        e["violations"] = v;
        f.push_back(std::move(e));
      }
      std::ofstream(opts.json_out) << j.dump(2) << "\n";
    }
    if (!res->failed.empty()) throw CLI::RuntimeError(1);
  });
}

}  // namespace pnmkv::apps
