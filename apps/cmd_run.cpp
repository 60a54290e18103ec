// Placeholder until the command lands.
#include "apps/commands.hpp"
#include "apps/pending.hpp"

namespace pnmkv::apps {
void register_run(CLI::App& app) { register_pending(app.add_subcommand("run", "Run the embedded cluster"), "run"); }
}  // namespace pnmkv::apps
