// Loading, validating and echoing the configuration (see config.hpp).
#include "config/config.hpp"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "core/check.hpp"

namespace pnmkv {
namespace fs = std::filesystem;

namespace {

const char* type_name(config_type t) {
  switch (t) {
    case config_type::integer: return "integer";
    case config_type::number: return "number";
    case config_type::boolean: return "boolean";
    case config_type::string: return "string";
    case config_type::path: return "path";
    case config_type::choice: return "choice";
    case config_type::int_list: return "list of integers";
  }
  return "?";
}

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return {};
  size_t e = s.find_last_not_of(" \t\r\n");
  return s.substr(b, e - b + 1);
}

std::string fmt_range(const config_key& k) {
  std::ostringstream os;
  os.precision(15);
  os << "[" << k.min << ", " << k.max << "]";
  return os.str();
}

bool parse_int(const std::string& text, int64_t& out) {
  std::string s = trim(text);
  if (s.empty()) return false;
  // Accept plain integers and integral scientific notation (1e6) and 1_048_576 style.
  std::string clean;
  for (char c : s)
    if (c != '_') clean += c;
  errno = 0;
  char* end = nullptr;
  long long v = std::strtoll(clean.c_str(), &end, 10);
  if (errno == 0 && end && *end == '\0') {
    out = v;
    return true;
  }
  double d = std::strtod(clean.c_str(), &end);
  if (end && *end == '\0' && std::isfinite(d) && std::floor(d) == d && std::fabs(d) < 9.2e18) {
    out = static_cast<int64_t>(d);
    return true;
  }
  return false;
}

bool parse_number(const std::string& text, double& out) {
  std::string s = trim(text);
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  double d = std::strtod(s.c_str(), &end);
  if (errno != 0 || !end || *end != '\0' || !std::isfinite(d)) return false;
  out = d;
  return true;
}

bool parse_bool(const std::string& text, bool& out) {
  std::string s = trim(text);
  if (s == "true" || s == "yes" || s == "on" || s == "1") return out = true, true;
  if (s == "false" || s == "no" || s == "off" || s == "0") return out = false, true;
  return false;
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> parts;
  std::string s = trim(text);
  if (!s.empty() && s.front() == '[' && s.back() == ']') s = s.substr(1, s.size() - 2);
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) parts.push_back(trim(item));
  return parts;
}

// Closest known keys, to help with typos.
// Keys that existed once, with what replaces them: an old config gets told, not just
// "unknown key".
const std::pair<const char*, const char*> removed_keys[] = {
    {"sim.baseline_recall_reuse",
     "recall reuse is baseline.recall_cache (lru, the default, or none) with "
     "baseline.recall_cache_tokens, read by the live cluster and the simulator alike"},
};

std::string suggest(const std::string& key) {
  std::string section = key.substr(0, key.find('.'));
  std::string out;
  int n = 0;
  for (const auto& k : config_schema()) {
    if (k.key.compare(0, section.size() + 1, section + ".") == 0) {
      out += (n++ ? ", " : "") + k.key;
    }
  }
  if (n == 0) {
    std::set<std::string> sections;
    for (const auto& k : config_schema()) sections.insert(k.key.substr(0, k.key.find('.')));
    for (const auto& s : sections) out += (n++ ? ", " : "") + s;
    return "known sections: " + out;
  }
  return "known keys in '" + section + "': " + out;
}

status flatten(const YAML::Node& node, const std::string& prefix,
               std::vector<std::pair<std::string, std::string>>& out, int depth) {
  if (depth > 8) return {errc::parse, "nesting deeper than 8 levels at '" + prefix + "'"};
  if (node.IsMap()) {
    for (const auto& kv : node) {
      std::string name = kv.first.as<std::string>();
      std::string key = prefix.empty() ? name : prefix + "." + name;
      auto st = flatten(kv.second, key, out, depth + 1);
      if (!st) return st;
    }
    return {};
  }
  if (node.IsSequence()) {
    std::string joined;
    for (size_t i = 0; i < node.size(); ++i) {
      if (!node[i].IsScalar())
        return {errc::parse, "key '" + prefix + "' holds a list of non-scalars"};
      joined += (i ? "," : "") + node[i].as<std::string>();
    }
    out.emplace_back(prefix, joined);
    return {};
  }
  if (node.IsScalar()) {
    out.emplace_back(prefix, node.as<std::string>());
    return {};
  }
  if (node.IsNull()) {
    out.emplace_back(prefix, "");
    return {};
  }
  return {errc::parse, "key '" + prefix + "' has an unsupported YAML value"};
}

}  // namespace

config config::defaults() {
  config c;
  for (const auto& k : config_schema()) c.values_[k.key] = k.default_value;
  return c;
}

status config::set_value(const std::string& key, const std::string& raw,
                         const std::string& origin, const std::string& config_file) {
  const config_key* k = find_config_key(key);
  for (const auto& [gone, instead] : removed_keys)
    if (!k && key == gone)
      return {errc::invalid_argument, origin + ": key '" + key + "' was removed: " + instead};
  if (!k) {
    return {errc::invalid_argument,
            origin + ": unknown key '" + key + "' (" + suggest(key) + ")"};
  }
  std::string value = trim(raw);
  auto bad = [&](const std::string& allowed) {
    return status{errc::invalid_argument, origin + ": " + key + " = '" + value + "' is not a " +
                                              "valid " + type_name(k->type) + "; allowed: " +
                                              allowed};
  };
  switch (k->type) {
    case config_type::integer: {
      int64_t v;
      if (!parse_int(value, v) || v < k->min || v > k->max) return bad("integer in " + fmt_range(*k));
      value = std::to_string(v);
      break;
    }
    case config_type::number: {
      double v;
      if (!parse_number(value, v) || v < k->min || v > k->max) return bad("number in " + fmt_range(*k));
      break;
    }
    case config_type::boolean: {
      bool v;
      if (!parse_bool(value, v)) return bad("true or false");
      value = v ? "true" : "false";
      break;
    }
    case config_type::choice: {
      bool ok = false;
      std::string allowed;
      for (const auto& c : k->choices) {
        ok = ok || c == value;
        allowed += (allowed.empty() ? "" : "|") + c;
      }
      if (!ok) return bad(allowed);
      break;
    }
    case config_type::int_list: {
      auto parts = split_list(value);
      if (parts.empty()) return bad("comma-separated integers, each in " + fmt_range(*k));
      std::string joined;
      for (const auto& p : parts) {
        int64_t v;
        if (!parse_int(p, v) || v < k->min || v > k->max)
          return bad("comma-separated integers, each in " + fmt_range(*k));
        joined += (joined.empty() ? "" : ",") + std::to_string(v);
      }
      value = joined;
      break;
    }
    case config_type::path: {
      if (value.empty() && !k->default_value.empty()) return bad("a file path");
      value = resolve_config_path(value, config_file);
      break;
    }
    case config_type::string: break;
  }
  values_[key] = value;
  return {};
}

result<config> config::load(const std::string& file) {
  config c = defaults();
  c.source_file_ = file;
  YAML::Node root;
  try {
    if (!fs::exists(file)) return status{errc::io, "config file '" + file + "' does not exist"};
    root = YAML::LoadFile(file);
  } catch (const std::exception& e) {
    return status{errc::parse, "config file '" + file + "' is not valid YAML: " + e.what()};
  }
  std::vector<std::pair<std::string, std::string>> flat;
  if (!root.IsNull()) {
    if (!root.IsMap())
      return status{errc::parse, "config file '" + file + "' must be a map of sections"};
    status st;
    try {
      st = flatten(root, "", flat, 0);
    } catch (const std::exception& e) {
      st = status{errc::parse, e.what()};
    }
    if (!st) return status{st.code(), "config file '" + file + "': " + st.message()};
  }
  for (const auto& [key, value] : flat) {
    auto st = c.set_value(key, value, "config file '" + file + "'", file);
    if (!st) return st;
  }
  // Defaults of path keys are written as in the default file (cluster_configs/).
  for (const auto& k : config_schema()) {
    if (k.type != config_type::path) continue;
    bool from_file = false;
    for (const auto& kv : flat) from_file = from_file || kv.first == k.key;
    if (!from_file) {
      auto st = c.set_value(k.key, k.default_value, "default", default_config_path());
      if (!st) return st;
    }
  }
  return c;
}

status config::set(const std::string& assignment) {
  auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    return {errc::invalid_argument,
            "--set '" + assignment + "' is not of the form section.key=value"};
  return set_value(trim(assignment.substr(0, eq)), assignment.substr(eq + 1), "--set", "");
}

status config::set(const std::string& key, const std::string& value) {
  return set_value(key, value, "set", "");
}

namespace {
const config_key& must_find(const std::string& key, config_type t1, config_type t2 = config_type::string,
                            config_type t3 = config_type::string) {
  const config_key* k = find_config_key(key);
  PNMKV_CHECK(k != nullptr, "config key not in schema: ", key);
  PNMKV_CHECK(k->type == t1 || k->type == t2 || k->type == t3, "config key ", key,
              " has another type: ", int(k->type), ", asked for ", int(t1));
  return *k;
}
}  // namespace

int64_t config::get_int(const std::string& key) const {
  must_find(key, config_type::integer);
  int64_t v = 0;
  const bool ok = parse_int(values_.at(key), v);
  PNMKV_CHECK(ok, key, "=", values_.at(key), " is not an integer");
  return v;
}

double config::get_number(const std::string& key) const {
  must_find(key, config_type::number, config_type::integer);
  double v = 0;
  const bool ok = parse_number(values_.at(key), v);
  PNMKV_CHECK(ok, key, "=", values_.at(key), " is not a number");
  return v;
}

bool config::get_bool(const std::string& key) const {
  must_find(key, config_type::boolean);
  return values_.at(key) == "true";
}

const std::string& config::get_string(const std::string& key) const {
  must_find(key, config_type::string, config_type::path, config_type::choice);
  return values_.at(key);
}

std::vector<int64_t> config::get_int_list(const std::string& key) const {
  must_find(key, config_type::int_list);
  std::vector<int64_t> out;
  for (const auto& p : split_list(values_.at(key))) {
    int64_t v = 0;
    if (parse_int(p, v)) out.push_back(v);
  }
  return out;
}

std::string config::to_yaml() const {
  std::ostringstream os;
  if (!source_file_.empty()) os << "# resolved from " << source_file_ << "\n";
  std::string section;
  for (const auto& [key, value] : values_) {
    std::string s = key.substr(0, key.find('.'));
    if (s != section) {
      os << s << ":\n";
      section = s;
    }
    const config_key* k = find_config_key(key);
    std::string v = value;
    if (k && k->type == config_type::int_list) {
      v = "[" + v + "]";
    } else if (!k || k->type == config_type::string || k->type == config_type::path ||
               k->type == config_type::choice) {
      // Double-quoted so any text (';', ':', '#', leading spaces) reads back unchanged.
      std::string q = "\"";
      for (char c : value) {
        if (c == '"' || c == '\\') q += '\\';
        if (c == '\n') {
          q += "\\n";
          continue;
        }
        q += c;
      }
      v = q + "\"";
    }
    os << "  " << key.substr(key.find('.') + 1) << ": " << v << "\n";
  }
  return os.str();
}

std::string config::to_json() const {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  for (const auto& [key, value] : values_) {
    const config_key* k = find_config_key(key);
    std::string s = key.substr(0, key.find('.'));
    std::string name = key.substr(key.find('.') + 1);
    nlohmann::ordered_json v;
    switch (k ? k->type : config_type::string) {
      case config_type::integer: v = get_int(key); break;
      case config_type::number: v = get_number(key); break;
      case config_type::boolean: v = get_bool(key); break;
      case config_type::int_list: v = get_int_list(key); break;
      default: v = value; break;
    }
    j[s][name] = v;
  }
  return j.dump(2);
}

result<config> load_config(const std::string& file, const std::vector<std::string>& overrides) {
  result<config> c = file.empty() ? result<config>(config::defaults()) : config::load(file);
  if (!c) return c;
  for (const auto& o : overrides) {
    auto st = c->set(o);
    if (!st) return st;
  }
  return c;
}

std::string resolve_config_path(const std::string& name, const std::string& config_file) {
  fs::path p(name);
  if (!name.empty() && p.is_relative() && !fs::exists(p) && !config_file.empty()) {
    // Then an installed tree's data ($PNMKV_HOME/cluster_configs, as the container image
    // sets it): a config mounted anywhere still finds models/ and hardware/.
    const fs::path dir = fs::path(config_file).parent_path();
    const char* home = std::getenv("PNMKV_HOME");
    const fs::path installed = home && *home ? fs::path(home) / "cluster_configs" : fs::path();
    for (const fs::path& base : {dir, dir.parent_path(), installed})
      if (!base.empty() && fs::exists(base / p)) {
        p = base / p;
        break;
      }
  }
  return p.lexically_normal().string();
}

std::string default_config_path() {
  if (const char* home = std::getenv("PNMKV_HOME"); home && *home)
    return (fs::path(home) / "cluster_configs" / "default.yaml").string();
  fs::path local = fs::path("cluster_configs") / "default.yaml";
  if (fs::exists(local)) return local.string();
#ifdef PNMKV_SOURCE_DIR
  return (fs::path(PNMKV_SOURCE_DIR) / "cluster_configs" / "default.yaml").string();
#else
  return local.string();
#endif
}

}  // namespace pnmkv
