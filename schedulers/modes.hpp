// The execution modes (DESIGN.md §2) and the cross-shard selection rules (§3), shared by the
// live system and the simulator.
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
