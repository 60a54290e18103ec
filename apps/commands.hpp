// Subcommands of the `pnmkv` executable. Each lives in its own cmd_*.cpp and registers
// itself on the CLI11 app; a failing command throws CLI::RuntimeError(exit_code) after
// printing a clear message to stderr.
#pragma once

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

void register_run(CLI::App& app);
void register_eval(CLI::App& app);
void register_bench_kernels(CLI::App& bench);
void register_bench_fabric(CLI::App& bench);
void register_bench_gpu_model(CLI::App& bench);
void register_config(CLI::App& app);
void register_node(CLI::App& app);
void register_sim(CLI::App& app);

}  // namespace pnmkv::apps
