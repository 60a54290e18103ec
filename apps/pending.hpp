// A subcommand whose implementation has not landed yet says so plainly and exits 3.
#pragma once

#include <CLI/CLI.hpp>

#include <cstdio>

namespace pnmkv::apps {
inline void register_pending(CLI::App* cmd, const char* what) {
  cmd->allow_extras();
  cmd->callback([what] {
    std::fprintf(stderr, "pnmkv: `%s` is not implemented yet\n", what);
    throw CLI::RuntimeError(3);
  });
}
}  // namespace pnmkv::apps
