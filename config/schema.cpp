// The schema: every key pnmkv knows. Each component keeps its keys in its own
// config/schema_<component>.cpp so parallel work does not collide; this file joins them.
#include <set>

#include "config/config.hpp"
#include "config/schema_parts.hpp"
#include "core/check.hpp"

namespace pnmkv {

const std::vector<config_key>& config_schema() {
  static const std::vector<config_key> all = [] {
    std::vector<config_key> keys;
    for (auto part : {&schema_keys_run, &schema_keys_workload, &schema_keys_transport, &schema_keys_sim}) {
      auto more = (*part)();
      keys.insert(keys.end(), more.begin(), more.end());
    }
    std::set<std::string> seen;
    for (const auto& k : keys) {
      const bool fresh = seen.insert(k.key).second;
      PNMKV_CHECK(fresh, "duplicate config key in schema: ", k.key);
    }
    return keys;
  }();
  return all;
}

const config_key* find_config_key(const std::string& key) {
  for (const auto& k : config_schema())
    if (k.key == key) return &k;
  return nullptr;
}

}  // namespace pnmkv
