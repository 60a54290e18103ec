// --timeline-out / --timeline-steps, shared by `pnmkv run` and `pnmkv sim` (commands.hpp).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include "apps/commands.hpp"
#include "schedulers/timeline_trace.hpp"

namespace pnmkv::apps {

void add_timeline_options(CLI::App* cmd, timeline_options& opts) {
  cmd->add_option("--timeline-out", opts.file,
                  "Write the virtual-time schedule of the first steps (per GPU rank, host link "
                  "direction and device) as Chrome/Perfetto trace-event JSON to FILE; open it in "
                  "ui.perfetto.dev or chrome://tracing");
  cmd->add_option("--timeline-steps", opts.steps, "--timeline-out: how many steps to draw (first N)")
      ->check(CLI::Range(1u, timeline_steps_max));
}

void check_timeline_file_or_exit(const char* command, const timeline_options& opts) {
  if (opts.file.empty()) return;
  const bool existed = std::filesystem::exists(opts.file);
  {
    std::ofstream probe(opts.file, std::ios::app);
    if (!probe) {
      std::fprintf(stderr, "%s: --timeline-out: cannot write %s\n", command, opts.file.c_str());
      throw CLI::RuntimeError(2);
    }
  }
  std::error_code ec;
  if (!existed) std::filesystem::remove(opts.file, ec);
}

void write_timeline_or_exit(const char* command, const timeline_options& opts, const std::string& json,
                            size_t spans) {
  std::ofstream out(opts.file);
  out << json;
  out.flush();
  if (!out) {
    std::fprintf(stderr, "%s: --timeline-out: cannot write %s\n", command, opts.file.c_str());
    throw CLI::RuntimeError(1);
  }
  std::fprintf(stderr, "%s: timeline of %zu spans (%zu bytes) in %s\n", command, spans, json.size(),
               opts.file.c_str());
}

}  // namespace pnmkv::apps
