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

// `path`: a file name, resolved once when it is set (resolve_config_path); empty (no file)
// only where the key's default is empty.
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
  // Defaults, then the YAML file (nested maps: section: {key: value}). `path` keys written
  // in the file resolve against it (resolve_config_path); those it leaves at their
  // defaults, against default_config_path().
  static result<config> load(const std::string& file);
  // Applies "section.key=value" (validated like a file value; relative paths are from the
  // working directory).
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
  // config_file: where the value was written (its paths resolve against it); empty for
  // the command line.
  status set_value(const std::string& key, const std::string& value,
                   const std::string& origin, const std::string& config_file);
  std::map<std::string, std::string> values_;
  std::string source_file_;
};

// Loads `file` (or only defaults when file is empty) and applies the overrides in order.
// This is what every subcommand taking --config / --set calls.
result<config> load_config(const std::string& file, const std::vector<std::string>& overrides);

// A file named in `config_file`: as written when it is absolute or exists from the working
// directory, else in the config file's folder, else in that folder's parent
// (cluster_configs/, for files of cluster_configs/experiments/), else as written. Lexically
// normal. Every `path` key resolves this way, once, when it is set, so the echo
// (to_yaml) names the same files wherever it is loaded from.
std::string resolve_config_path(const std::string& name, const std::string& config_file);

// The default config file path: $PNMKV_HOME/cluster_configs/default.yaml when PNMKV_HOME
// is set, else cluster_configs/default.yaml relative to the working directory, else next
// to the executable's source tree (baked in at build time).
std::string default_config_path();

}  // namespace pnmkv
