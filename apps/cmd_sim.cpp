// `pnmkv sim`: the scale-out simulator (sim/). One point from the configuration, or every
// point of a sweep file; a table on stdout, JSON and CSV on request, a progress bar on
// stderr. Same --config / --set handling as every subcommand.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <optional>

#include "apps/commands.hpp"
#include "sim/simulator.hpp"
#include "sim/sweep.hpp"

namespace pnmkv::apps {
namespace {

struct sim_options {
  config_options cfg;
  std::string sweep, json, csv;
  bool quiet = false;
  bool series = false;
  timeline_options timeline;
};

void draw_bar(const char* phase, uint64_t done, uint64_t total) {
  if (!isatty(STDERR_FILENO)) {
    if (done == total) std::fprintf(stderr, "%s: %llu/%llu\n", phase, (unsigned long long)done,
                                    (unsigned long long)total);
    return;
  }
  const int width = 40;
  int filled = total ? int(double(done) / double(total) * width) : width;
  filled = std::min(filled, width);
  std::fprintf(stderr, "\r%-8s [%.*s%*s] %llu/%llu", phase, filled,
               "########################################", width - filled, "",
               (unsigned long long)done, (unsigned long long)total);
  if (done >= total) std::fprintf(stderr, "\n");
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path);
  out << text;
  if (!out) {
    std::fprintf(stderr, "pnmkv sim: cannot write %s\n", path.c_str());
    throw CLI::RuntimeError(1);
  }
}

void run_point(const sim_options& o) {
  config cfg = load_config_or_exit(o.cfg);
  auto setup = make_sim_setup(cfg);
  if (!setup) {
    std::fprintf(stderr, "pnmkv sim: %s\n", setup.error().to_string().c_str());
    throw CLI::RuntimeError(2);
  }
  sim_progress bar;
  if (!o.quiet) bar = [](uint64_t d, uint64_t t) { draw_bar("simulate", d, t); };
  check_timeline_file_or_exit("pnmkv sim", o.timeline);
  std::optional<timeline_trace> trace;
  if (!o.timeline.file.empty()) trace.emplace("sim", o.timeline.steps);
  auto r = simulate(*setup, bar, trace ? &*trace : nullptr);
  if (!r) {
    std::fprintf(stderr, "pnmkv sim: %s\n", r.error().to_string().c_str());
    throw CLI::RuntimeError(1);
  }
  std::printf("%s", r->to_table().c_str());
  if (!o.json.empty()) write_file(o.json, r->to_json(o.series) + "\n");
  if (!o.csv.empty()) write_file(o.csv, sim_result::csv_header() + "\n" + r->csv_row() + "\n");
  if (trace) write_timeline_or_exit("pnmkv sim", o.timeline, chrome_trace_json(*trace), trace->spans().size());
}

void run_sweep_file(const sim_options& o) {
  auto spec = load_sweep(o.sweep);
  if (!spec) {
    std::fprintf(stderr, "pnmkv sim: %s\n", spec.error().to_string().c_str());
    throw CLI::RuntimeError(2);
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto points = run_sweep(*spec, o.cfg.file, o.cfg.overrides, [&](size_t d, size_t t) {
    if (!o.quiet) draw_bar("sweep", d, t);
  });
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("%-9s %-16s %9s %6s %5s %7s %12s %10s %10s %11s %11s\n", "mode", "model", "context",
              "devs", "gpus", "batch", "tokens/s", "step_ms", "J/token", "tokens/$", "limit");
  size_t failed = 0;
  for (const auto& p : points) {
    if (!p.ok) {
      ++failed;
      continue;
    }
    const auto& r = p.result;
    std::printf("%-9s %-16s %9llu %6u %5u %7.1f %12.1f %10.3f %10.4f %11.3e %11s\n", r.mode.c_str(),
                r.model_name.c_str(), (unsigned long long)r.context_tokens, r.pnm_devices + r.expanders,
                r.gpus, r.batch_mean, r.tokens_per_s, r.step_ms, r.energy_j_per_token,
                r.tokens_per_dollar, r.batch_limited_by.c_str());
  }
  for (const auto& p : points)
    if (!p.ok) {
      std::string what;
      for (const auto& s : p.overrides) what += s + " ";
      std::printf("not simulated: %s-> %s\n", what.c_str(), p.error.c_str());
    }
  std::fprintf(stderr, "pnmkv sim: %zu points (%zu not simulated) in %.2f s\n", points.size(), failed, wall);
  if (!o.json.empty()) write_file(o.json, sweep_json(*spec, points, wall) + "\n");
  if (!o.csv.empty()) write_file(o.csv, sweep_csv(points));
}

}  // namespace

void register_sim(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "sim", "Scale-out simulator: the live system's composition on the cost model, without "
             "numerics, for any model, context, device count and mode; one point or a sweep");
  static sim_options opts;
  add_config_options(cmd, opts.cfg);
  cmd->add_option("--sweep", opts.sweep, "Sweep file (YAML: config, set, axes); see sim/README.md");
  cmd->add_option("--json", opts.json, "Write the result (or every sweep point) as JSON");
  cmd->add_option("--csv", opts.csv, "Write the result (or every sweep point) as CSV");
  cmd->add_flag("--series", opts.series,
                "One point: include per-request outcomes and the batch-size series in the JSON");
  cmd->add_flag("--quiet", opts.quiet, "No progress bar");
  add_timeline_options(cmd, opts.timeline);
  cmd->callback([] {
    if (!opts.sweep.empty() && !opts.timeline.file.empty()) {
      std::fprintf(stderr, "pnmkv sim: --timeline-out draws one point, not a --sweep\n");
      throw CLI::RuntimeError(2);
    }
    if (opts.sweep.empty())
      run_point(opts);
    else
      run_sweep_file(opts);
  });
}

}  // namespace pnmkv::apps
