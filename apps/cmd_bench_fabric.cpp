// Placeholder until the command lands.
#include "apps/commands.hpp"
#include "apps/pending.hpp"

namespace pnmkv::apps {
void register_bench_fabric(CLI::App& b) { register_pending(b.add_subcommand("fabric", "Fabric latency and bandwidth vs ucx_perftest"), "bench_fabric"); }
}  // namespace pnmkv::apps
