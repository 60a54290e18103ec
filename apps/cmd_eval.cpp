// Placeholder until the command lands.
#include "apps/commands.hpp"
#include "apps/pending.hpp"

namespace pnmkv::apps {
void register_eval(CLI::App& app) { register_pending(app.add_subcommand("eval", "Accuracy table vs dense attention"), "eval"); }
}  // namespace pnmkv::apps
