// pnmkv: one executable, one subcommand per job (CLI11).
#include <CLI/CLI.hpp>

#include <cstdio>
#include <exception>

#include "apps/commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"pnmkv -- KV cache of long-context LLM decoding on CXL processing-near-memory "
               "devices: emulator, benchmarks and scale-out simulator"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "pnmkv 0.1.0");

  pnmkv::apps::register_run(app);
  pnmkv::apps::register_eval(app);
  pnmkv::apps::register_config(app);
  auto* bench = app.add_subcommand("bench", "Benchmarks, each reported against a reference "
                                            "measured in the same run");
  bench->require_subcommand(1);
  pnmkv::apps::register_bench_kernels(*bench);
  pnmkv::apps::register_bench_fabric(*bench);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "pnmkv: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
