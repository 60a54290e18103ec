// `pnmkv chaos`: seeded fault schedules on the cluster, checked against recovery's
// invariants (actors/chaos.hpp). Prints a line per trial and a summary by fault kind,
// writes one JSON line per trial to OUT/chaos.jsonl; exits 1 when a trial violated an
// invariant, naming its seed and the command that replays it alone.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>

#include "actors/chaos.hpp"
#include "apps/commands.hpp"

namespace pnmkv::apps {

void register_chaos(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "chaos", "Run the cluster (embedded, one process per node, or in containers) under seeded fault "
               "schedules (crash, hang, partition, message drop / duplicate / corrupt / delay, slow link, "
               "coordinator kill) and check that every request completes with "
               "the outputs of a run without faults or fails with a reason, and no process is left");
  static config_options cfg_opts;
  static chaos_options o;
  static bool plan_only = false;
  add_config_options(cmd, cfg_opts);
  cmd->add_option("--seed", o.seed, "First trial's seed; trial k runs seed + k (default 1)");
  cmd->add_option("--trials", o.trials, "Trials to run (default 8)");
  cmd->add_option("--faults", o.faults,
                  "Fault kinds to draw from: crash,hang,partition,drop,duplicate,corrupt,delay,slow-link,"
                  "coordinator-kill (--multiprocess or --compose) or all (default)");
  cmd->add_option("--faults-per-trial", o.faults_per_trial_max, "At most this many faults per trial (default 2)");
  cmd->add_option("--rate-max", o.rate_max, "Message faults: probability up to this (default 0.02)");
  cmd->add_flag("--multiprocess", o.multiprocess, "One pnmkv node process per node (UCX on loopback)");
  cmd->add_flag("--compose", o.compose,
                "The container cluster (docker/cluster.sh, as root): device faults become container actions "
                "(SIGKILL, docker pause, network disconnect, coordinator SIGKILL), message faults the nodes' "
                "fault script; default config cluster_configs/chaos-compose.yaml");
  cmd->add_option("--cluster-script", o.cluster_script,
                  "--compose: the docker/cluster.sh to use (default: the source tree's)");
  cmd->add_flag("--plan-only", plan_only,
                "Print each trial's schedule (with --compose: the nodes' script and the container actions) and "
                "run nothing");
  cmd->add_option("--out", o.out_dir, "Write chaos.jsonl and each trial's fault log here (default: a temp dir)");
  cmd->add_option("--trial-timeout-ms", o.trial_timeout_ms, "A trial not done by then is a hang (default 300000)");
  cmd->callback([] {
    config_options c = cfg_opts;
    if (c.file.empty()) {  // many runs: a small cluster unless told otherwise
      std::filesystem::path dflt = default_config_path();
      c.file = (dflt.parent_path() / (o.compose ? "chaos-compose.yaml" : "chaos.yaml")).string();
    }
    if (o.compose && o.multiprocess) {
      std::fprintf(stderr, "pnmkv chaos: --compose and --multiprocess name two clusters; pick one\n");
      throw CLI::RuntimeError(2);
    }
    if (!o.compose && !o.cluster_script.empty()) {
      std::fprintf(stderr, "pnmkv chaos: --cluster-script is for --compose only\n");
      throw CLI::RuntimeError(2);
    }
    config cfg = load_config_or_exit(c);
    if (auto kinds = transport::parse_chaos_faults(o.faults, o.multiprocess || o.compose); !kinds) {  // before any run
      std::fprintf(stderr, "pnmkv chaos: --faults: %s\n", kinds.error().message().c_str());
      throw CLI::RuntimeError(2);
    }
    if (plan_only) {
      auto plans = chaos_plans(cfg, o);
      if (!plans) {
        std::fprintf(stderr, "pnmkv chaos: %s\n", plans.error().to_string().c_str());
        throw CLI::RuntimeError(2);
      }
      for (const auto& p : *plans) std::printf("%s\n", p.c_str());
      return;
    }
    std::printf("pnmkv chaos: %u trials from seed %llu on %s (%s)\n", o.trials, (unsigned long long)o.seed,
                c.file.c_str(),
                o.compose ? "in containers" : o.multiprocess ? "one process per node" : "embedded");
    auto trials = run_chaos(cfg, o, [](const chaos_trial& t) {
      std::printf("  seed %-6llu %-4s %5.1f s  %llu/%llu completed  %s\n", (unsigned long long)t.seed,
                  t.ok() ? "ok" : "BAD", t.wall_s, (unsigned long long)t.completed,
                  (unsigned long long)t.submitted, t.schedule.script().c_str());
      for (const auto& a : t.actions)
        if (!a.ok && a.error.rfind("not needed", 0) != 0)
          std::printf("      container %s %u: %s\n", a.op.c_str(), a.node, a.error.c_str());
      for (const auto& v : t.violations) std::printf("      violated: %s\n", v.c_str());
      if (!t.run_error.empty()) std::printf("      run failed: %s\n", t.run_error.c_str());
      std::fflush(stdout);
    });
    if (!trials) {
      std::fprintf(stderr, "pnmkv chaos: %s\n", trials.error().to_string().c_str());
      throw CLI::RuntimeError(2);
    }
    std::printf("\n%s", chaos_summary_table(*trials).c_str());
    bool bad = false;
    for (const auto& t : *trials) {
      if (t.ok()) continue;
      bad = true;
      std::string cmd = "pnmkv chaos";
      if (!cfg_opts.file.empty()) cmd += " --config " + cfg_opts.file;
      for (const auto& x : cfg_opts.overrides) cmd += " --set '" + x + "'";
      cmd += " --seed " + std::to_string(t.seed) + " --trials 1 --faults " + o.faults + " --faults-per-trial " +
             std::to_string(o.faults_per_trial_max) + " --rate-max " + std::to_string(o.rate_max);
      if (o.multiprocess) cmd += " --multiprocess";
      if (o.compose) cmd += " --compose";
      std::printf("seed %llu violated an invariant; replay it alone: %s\n", (unsigned long long)t.seed, cmd.c_str());
    }
    if (bad) throw CLI::RuntimeError(1);
  });
}

}  // namespace pnmkv::apps
