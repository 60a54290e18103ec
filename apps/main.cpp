// pnmkv: one executable, one subcommand per job (CLI11).
#include <CLI/CLI.hpp>

#include <malloc.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

#include <cstdio>
#include <exception>

#include "apps/commands.hpp"
#include "core/simd_target.hpp"

int main(int argc, char** argv) {
  // Prefill moves KV in chunks of a few MiB; with glibc's defaults each one is a fresh mmap
  // whose pages the kernel zeroes on first touch and unmaps on free (a third of prefill
  // time in a profile). Keep such buffers on the heap and the heap from being trimmed.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);

  // Info logs tell a user what happens; the default keeps a report readable. PNMKV_LOG_LEVEL
  // (trace|debug|info|warn|error|off) overrides.
  spdlog::set_level(spdlog::level::warn);
  if (const char* lvl = std::getenv("PNMKV_LOG_LEVEL"); lvl && *lvl)
    spdlog::set_level(spdlog::level::from_str(lvl));
  // PNMKV_SIMD_TARGET (Highway's target names: AVX2, AVX3, ...) restricts the kernels'
  // SIMD target for the whole run; node processes inherit it. A bad value stops here.
  if (pnmkv::status s = pnmkv::apply_kernel_target_from_env(); !s) {
    std::fprintf(stderr, "pnmkv: %s\n", s.message().c_str());
    return 2;
  }
  CLI::App app{"pnmkv -- KV cache of long-context LLM decoding on CXL processing-near-memory "
               "devices: emulator, benchmarks and scale-out simulator"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "pnmkv 0.1.0");

  pnmkv::apps::register_run(app);
  pnmkv::apps::register_eval(app);
  pnmkv::apps::register_config(app);
  pnmkv::apps::register_node(app);
  pnmkv::apps::register_sim(app);
  pnmkv::apps::register_chaos(app);
  pnmkv::apps::register_detsim(app);
  auto* bench = app.add_subcommand("bench", "Benchmarks, each reported against a reference "
                                            "measured in the same run");
  bench->require_subcommand(1);
  pnmkv::apps::register_bench_kernels(*bench);
  pnmkv::apps::register_bench_fabric(*bench);
  pnmkv::apps::register_bench_gpu_model(*bench);

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
