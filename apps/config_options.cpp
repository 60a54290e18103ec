// --config / --set handling shared by every subcommand, and `pnmkv config` which prints the
// resolved configuration or the schema of every key.
#include <CLI/CLI.hpp>

#include <cstdio>

#include "apps/commands.hpp"

namespace pnmkv::apps {

void add_config_options(CLI::App* cmd, config_options& opts) {
  cmd->add_option("--config", opts.file,
                  "YAML config file (default: cluster_configs/default.yaml)");
  cmd->add_option("--set", opts.overrides,
                  "Override one key: --set section.key=value (repeatable; see `pnmkv config "
                  "--keys`)")
      ->allow_extra_args(false);
}

config load_config_or_exit(const config_options& opts) {
  std::string file = opts.file.empty() ? default_config_path() : opts.file;
  auto cfg = load_config(file, opts.overrides);
  if (!cfg) {
    std::fprintf(stderr, "pnmkv: config error: %s\n", cfg.error().message().c_str());
    throw CLI::RuntimeError(2);
  }
  return std::move(cfg).value();
}

void register_config(CLI::App& app) {
  auto* cmd = app.add_subcommand("config", "Print the resolved configuration (YAML or JSON) "
                                           "or every known key with its allowed values");
  static config_options opts;
  static bool keys = false;
  static bool json = false;
  static std::string get_key;
  add_config_options(cmd, opts);
  cmd->add_option("--get", get_key,
                  "Print one key's resolved value alone (paths resolved), e.g. --get model.file: for scripts");
  cmd->add_flag("--keys", keys, "List every key, its type, default and allowed values");
  cmd->add_flag("--json", json, "Print the resolved configuration as JSON");
  cmd->callback([] {
    if (keys) {
      for (const auto& k : config_schema()) {
        std::string allowed;
        switch (k.type) {
          case config_type::integer:
          case config_type::number:
          case config_type::int_list: {
            char buf[96];
            std::snprintf(buf, sizeof buf, "[%g, %g]", k.min, k.max);
            allowed = buf;
            break;
          }
          case config_type::choice:
            for (size_t i = 0; i < k.choices.size(); ++i)
              allowed += (i ? "|" : "") + k.choices[i];
            break;
          case config_type::boolean: allowed = "true|false"; break;
          default: allowed = "text"; break;
        }
        std::printf("%-40s default=%-28s allowed=%s\n    %s\n", k.key.c_str(),
                    k.default_value.c_str(), allowed.c_str(), k.help.c_str());
      }
      return;
    }
    config cfg = load_config_or_exit(opts);
    if (!get_key.empty()) {
      const auto it = cfg.values().find(get_key);
      if (it == cfg.values().end()) {
        std::fprintf(stderr, "pnmkv config: --get '%s' is not a key; `pnmkv config --keys` lists them all\n",
                     get_key.c_str());
        throw CLI::RuntimeError(2);
      }
      std::printf("%s\n", it->second.c_str());
      return;
    }
    std::printf("%s\n", json ? cfg.to_json().c_str() : cfg.to_yaml().c_str());
  });
}

}  // namespace pnmkv::apps
