// Subcommands of the `pnmkv` executable. Each lives in its own cmd_*.cpp and registers
// itself on the CLI11 app; a failing command throws CLI::RuntimeError(exit_code) after
// printing a clear message to stderr.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace CLI {
class App;
}

namespace pnmkv::apps {

// --config FILE and --set section.key=value (repeatable), shared by every subcommand
// that reads the configuration.
struct config_options {
  std::string file;
  std::vector<std::string> overrides;
};
void add_config_options(CLI::App* cmd, config_options& opts);
// Loads the config or prints the error (naming file, key, allowed values) and throws
// CLI::RuntimeError(2).
config load_config_or_exit(const config_options& opts);

// --timeline-out FILE and --timeline-steps N (pnmkv run, pnmkv sim): the first steps'
// virtual-time schedule as Chrome / Perfetto trace-event JSON (schedulers/timeline_trace.hpp).
struct timeline_options {
  std::string file;
  uint32_t steps = 4;
};
void add_timeline_options(CLI::App* cmd, timeline_options& opts);
// Before the run: FILE can be written (else prints "<command>: --timeline-out ..." and
// throws CLI::RuntimeError(2)), so that a bad path fails before minutes of work.
void check_timeline_file_or_exit(const char* command, const timeline_options& opts);
// After the run: writes `json` to FILE or prints the error and throws CLI::RuntimeError(1).
void write_timeline_or_exit(const char* command, const timeline_options& opts, const std::string& json,
                            size_t spans);

void register_run(CLI::App& app);
void register_eval(CLI::App& app);
void register_bench_kernels(CLI::App& bench);
void register_bench_fabric(CLI::App& bench);
void register_bench_gpu_model(CLI::App& bench);
void register_config(CLI::App& app);
void register_chaos(CLI::App& app);
void register_node(CLI::App& app);
void register_sim(CLI::App& app);
void register_detsim(CLI::App& app);

}  // namespace pnmkv::apps
