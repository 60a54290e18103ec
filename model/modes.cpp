// Names of the execution choices (modes.hpp): each read from its one table.
#include "model/modes.hpp"

namespace pnmkv {

const char* to_string(run_mode m) { return name_of(run_mode_names, m); }
const char* to_string(cross_shard_selection s) { return name_of(cross_shard_selection_names, s); }
const char* to_string(sequence_split s) { return name_of(sequence_split_names, s); }
const char* to_string(recall_cache_policy p) { return name_of(recall_cache_policy_names, p); }

bool two_round_selection(run_mode mode, cross_shard_selection cross, uint32_t sequence_shards) {
  return mode == run_mode::baseline ||
         (sequence_shards > 1 && cross == cross_shard_selection::exact);
}

}  // namespace pnmkv
