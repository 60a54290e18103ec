// fabric.* and faults.* keys (owned by transport/).
#include "config/schema_parts.hpp"

namespace pnmkv {
std::vector<config_key> schema_keys_transport() { return {}; }
}  // namespace pnmkv
