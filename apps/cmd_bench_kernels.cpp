// Placeholder until the command lands.
#include "apps/commands.hpp"
#include "apps/pending.hpp"

namespace pnmkv::apps {
void register_bench_kernels(CLI::App& b) { register_pending(b.add_subcommand("kernels", "Device kernel bandwidth vs memory read"), "bench_kernels"); }
}  // namespace pnmkv::apps
