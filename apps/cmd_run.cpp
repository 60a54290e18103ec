// `pnmkv run`: the main job. Runs the cluster (embedded by default) on the configuration,
// shows a progress bar, prints the report table and optionally writes it as JSON. Also
// measures this machine's memory read bandwidth in the same run, so the step wall time can
// be compared with the time the devices' memory traffic needs here.
#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <memory>

#include "actors/cluster.hpp"
#include "actors/node_main.hpp"
#include "apps/commands.hpp"
#include "apps/progress.hpp"
#include "core/membw.hpp"
#include "core/peak.hpp"
#include "core/roofline.hpp"
#include "core/score.hpp"

namespace pnmkv::apps {

namespace {
struct run_options {
  config_options cfg;
  std::string json_out;
  bool quiet = false;
  bool multiprocess = false;
  std::string calibration_out;
  std::string work_dir;
  std::string attach;  // HOST:PORT of a running cluster's coordinator
  timeline_options timeline;
};

}  // namespace

void register_run(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "run", "Run the cluster on the configuration (embedded: every node in this process) and "
             "print the report");
  static run_options opts;
  add_config_options(cmd, opts.cfg);
  cmd->add_option("--json", opts.json_out, "Also write the report as JSON to FILE");
  cmd->add_flag("--quiet", opts.quiet, "No progress bar");
  cmd->add_option("--calibration-out", opts.calibration_out,
                  "Write what the run measured for the simulator (steady hit rate, selection "
                  "overlap and spread) as a pnmkv-calibration/1 file");
  cmd->add_flag("--multiprocess", opts.multiprocess,
                "Run every node as its own `pnmkv node` process on loopback (UCX data plane)");
  cmd->add_option("--work-dir", opts.work_dir,
                  "--multiprocess: keep the resolved config, secret and node logs here");
  cmd->add_option("--attach", opts.attach,
                  "Drive a cluster that is already up (pnmkv node processes started by hand or by "
                  "a script) through its coordinator at HOST:PORT; use the nodes' config");
  add_timeline_options(cmd, opts.timeline);
  cmd->callback([] {
    config cfg = load_config_or_exit(opts.cfg);
    if (!opts.timeline.file.empty() && (opts.multiprocess || !opts.attach.empty())) {
      std::fprintf(stderr, "pnmkv run: --timeline-out is for embedded runs only (the GPU host runs in "
                           "another process with --multiprocess / --attach); trace the embedded run, or "
                           "the same configuration with pnmkv sim\n");
      throw CLI::RuntimeError(2);
    }
    check_timeline_file_or_exit("pnmkv run", opts.timeline);
    cluster_run_options ro;
    const size_t bw_buffer_bytes = size_t(1) << 30;  // the read-bandwidth measurement below
    ro.after_run_bytes = bw_buffer_bytes;
    if (!opts.timeline.file.empty()) ro.timeline = std::make_shared<timeline_trace>("live", opts.timeline.steps);
    auto bar = std::make_shared<progress_bar>("pnmkv run");
    if (!opts.quiet)
      ro.on_progress = [bar](const std::string& phase, uint64_t done, uint64_t total) {
        bar->set(done, total, phase);
      };
    result<run_report> rep = status{errc::internal, "not run"};
    if (!opts.attach.empty()) {
      const auto colon = opts.attach.rfind(':');
      char* end = nullptr;
      const unsigned long port =
          colon == std::string::npos ? 0 : std::strtoul(opts.attach.c_str() + colon + 1, &end, 10);
      if (colon == std::string::npos || colon == 0 || !end || *end || port == 0 || port > 65535) {
        std::fprintf(stderr, "pnmkv run: --attach '%s' is not HOST:PORT (port 1-65535)\n", opts.attach.c_str());
        throw CLI::RuntimeError(2);
      }
      if (opts.multiprocess) {
        std::fprintf(stderr, "pnmkv run: --attach and --multiprocess exclude each other\n");
        throw CLI::RuntimeError(2);
      }
      rep = run_attached(cfg, ro, opts.attach.substr(0, colon), static_cast<uint16_t>(port));
    } else {
      rep = opts.multiprocess ? run_multiprocess(cfg, ro, multiprocess_options{"", opts.work_dir})
                              : run_embedded(cfg, ro);
    }
    if (!rep) {
      std::fprintf(stderr, "pnmkv run: %s\n", rep.error().to_string().c_str());
      const int sig = opts.attach.empty() && !opts.multiprocess ? 0 : stop_signal_received();
      throw CLI::RuntimeError(sig ? 128 + sig : 1);
    }
    bar->finish();
    run_report r = std::move(rep).value();
    // Stopped by SIGINT / SIGTERM: what finished, at once, and the signal's exit status.
    if (const int sig = stop_signal_received(); sig && !r.stopped.empty()) {
      r.simd_target = kernel_target_name();
      std::printf("%s", r.to_table().c_str());
      if (!opts.json_out.empty()) std::ofstream(opts.json_out) << r.to_json() << "\n";
      throw CLI::RuntimeError(128 + sig);
    }
    // Same run: this machine's read bandwidth with as many threads as the actor system has.
    const unsigned threads = std::max(2u, std::thread::hardware_concurrency());
    read_bandwidth bw = measure_read_gbps(bw_buffer_bytes, threads, 3);
    r.read_gbps_measured = bw.gbps;
    // And its compute peak: one core's FMA rate (best of 10 bursts) times the cores the
    // device kernels can run on at once. Every node's CAF scheduler has max(2, hw) threads
    // but they share this machine's hw cores (SMT siblings counted as cores: looser bound).
    // The bound is max(bytes / bw, flops / peak) over the step's device work: each resource
    // must at least do its total share whatever runs when on which core, so it holds even
    // when a memory-bound and a compute-bound kernel overlap on two cores (a sum over kernel
    // classes would not).
    r.kernel_threads = std::max(1u, std::thread::hardware_concurrency());
    r.peak_gflops_measured = measure_peak_gflops(1e9, 10).gflops * r.kernel_threads;
    // This binary's kernels: the nodes' too when embedded or --multiprocess (same binary, same
    // CPU); --attach assumes the nodes run here, as the bandwidth above does.
    r.simd_target = kernel_target_name();
    const kernel_work step{r.live_device_flops_per_step, double(r.live_device_bytes_per_step)};
    r.step_bound_ms = roofline_seconds(step, bw.gbps, r.peak_gflops_measured) * 1e3;
    r.step_overhead_ratio = r.step_bound_ms > 0 ? r.step_wall_ms_p50 / r.step_bound_ms : 0;
    std::printf("%s", r.to_table().c_str());
    if (!opts.json_out.empty()) {
      std::ofstream out(opts.json_out);
      out << r.to_json() << "\n";
      if (!out) {
        std::fprintf(stderr, "pnmkv run: cannot write %s\n", opts.json_out.c_str());
        throw CLI::RuntimeError(1);
      }
    }
    if (!opts.calibration_out.empty()) {
      std::ofstream out(opts.calibration_out);
      out << r.calibration_json() << "\n";
      if (!out) {
        std::fprintf(stderr, "pnmkv run: cannot write %s\n", opts.calibration_out.c_str());
        throw CLI::RuntimeError(1);
      }
    }
    if (ro.timeline)
      write_timeline_or_exit("pnmkv run", opts.timeline, chrome_trace_json(*ro.timeline), ro.timeline->spans().size());
    if (r.completed == 0) throw CLI::RuntimeError(1);
  });
}

}  // namespace pnmkv::apps
