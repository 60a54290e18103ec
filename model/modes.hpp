// The execution choices of a run that the policies, the step model and the simulator all
// branch on: the mode (docs/DESIGN.md §2), the cross-shard selection rule and how sequence
// shards cut the pages (§3). They live here, below config/ (which parses them once into
// run_spec) and schedulers/ (which decides with them). The parse functions name the config
// key and the allowed values.
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

enum class sequence_split { contiguous, interleave };
const char* to_string(sequence_split s);
result<sequence_split> parse_sequence_split(const std::string& text);

}  // namespace pnmkv
