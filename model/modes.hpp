// The execution choices of a run that the policies, the step model and the simulator all
// branch on: the mode (docs/DESIGN.md §2), the cross-shard selection rule, how sequence
// shards cut the pages and what a query asks of a shard (§3). They live here, below config/ (which parses them once into
// run_spec) and schedulers/ (which decides with them). The parse functions name the config
// key and the allowed values.
#pragma once

#include <cstdint>
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

// What one query asks of a shard: the one concept the host engine, the device engine and the
// wire (transport/messages.hpp, wire.capnp SelectionRound, mapped in transport/messages.cpp)
// share. Order matches wire.capnp.
enum class selection_round : uint8_t {
  local,             // score, take the shard's top budget pages (forced pages in), attend
  exact_candidates,  // exact round 1: score, return the shard's best budget pages as candidates
  exact_attend,      // exact round 2: attend exactly the listed global pages
  dense,             // attend every held page (verification; not charged as device work)
};

}  // namespace pnmkv
