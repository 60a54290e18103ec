// workload.* keys (owned by core/workload).
#include "config/schema_parts.hpp"

namespace pnmkv {

std::vector<config_key> schema_keys_workload() {
  using t = config_type;
  return {
      {"workload.kind", t::choice, "synthetic", 0, 0, {"synthetic"},
       "Where KV and queries come from"},
      {"workload.context_tokens", t::integer, "1048576", 1, 1 << 22, {},
       "Prompt (context) tokens per request before decoding"},
      {"workload.batch", t::integer, "2", 1, 4096, {}, "Requests decoded together"},
  };
}

}  // namespace pnmkv
