// The execution modes (DESIGN.md §2) and the cross-shard selection rules (§3), shared by the
// live system and the simulator.
#pragma once

#include <string>

#include "core/status.hpp"

namespace pnmkv {

enum class run_mode { baseline, pnm_kv, png_kv };
const char* to_string(run_mode m);
result<run_mode> parse_run_mode(const std::string& text);

enum class cross_shard_selection { exact, local };
const char* to_string(cross_shard_selection s);
result<cross_shard_selection> parse_cross_shard(const std::string& text);

}  // namespace pnmkv
