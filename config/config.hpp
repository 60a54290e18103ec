// The pnmkv configuration: a schema of every known key (type, default, allowed range or
// values, unit in the name), a YAML file overlaid on the defaults, and any number of
// `--set section.key=value` overrides. Unknown keys, wrong types and out-of-range values
// are errors that name the file, the key and what is allowed. The resolved configuration
// is echoed (YAML or JSON) in every result so a run can be reproduced.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv {

enum class config_type { integer, number, boolean, string, path, choice, int_list };

struct config_key {
  std::string key;            // "section.name", e.g. "selection.budget_tokens"
  config_type type;
  std::string default_value;  // textual, as it would appear in YAML
  double min = 0;             // integer / number / int_list elements: inclusive range
  double max = 0;
  std::vector<std::string> choices;  // choice: the allowed values
  std::string help;
};

// Every key pnmkv knows (config/schema.cpp). Later components add their keys there.
const std::vector<config_key>& config_schema();
const config_key* find_config_key(const std::string& key);

class config {
 public:
  // Defaults only.
  static config defaults();
  // Defaults, then the YAML file (nested maps: section: {key: value}). Relative paths in
  // `path` keys are resolved against the file's directory when they do not exist
  // relative to the working directory.
  static result<config> load(const std::string& file);
  // Applies "section.key=value" (validated like a file value; relative paths resolve
  // against the working directory).
  status set(const std::string& assignment);
  // Applies a value to a key directly.
  status set(const std::string& key, const std::string& value);

  // Typed accessors. The key must exist in the schema and have that type: a mismatch is a
  // programming error (asserted), values were validated when set.
  int64_t get_int(const std::string& key) const;
  double get_number(const std::string& key) const;
  bool get_bool(const std::string& key) const;
  const std::string& get_string(const std::string& key) const;  // string, path, choice
  std::vector<int64_t> get_int_list(const std::string& key) const;

  const std::string& source_file() const { return source_file_; }
  // Resolved values, key -> text, sorted by key.
  const std::map<std::string, std::string>& values() const { return values_; }
  std::string to_yaml() const;
  std::string to_json() const;  // {"section": {"key": value}} with typed JSON values

 private:
  status set_value(const std::string& key, const std::string& value,
                   const std::string& origin, const std::string& base_dir);
  std::map<std::string, std::string> values_;
  std::string source_file_;
};

// Loads `file` (or only defaults when file is empty) and applies the overrides in order.
// This is what every subcommand taking --config / --set calls.
result<config> load_config(const std::string& file, const std::vector<std::string>& overrides);

// The default config file path: $PNMKV_HOME/cluster_configs/default.yaml when PNMKV_HOME
// is set, else cluster_configs/default.yaml relative to the working directory, else next
// to the executable's source tree (baked in at build time).
std::string default_config_path();

}  // namespace pnmkv
