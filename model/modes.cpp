// Names of the execution choices (modes.hpp): each read from its one table.
#include "model/modes.hpp"

namespace pnmkv {

const char* to_string(run_mode m) { return name_of(run_mode_names, m); }
const char* to_string(cross_shard_selection s) { return name_of(cross_shard_selection_names, s); }
const char* to_string(sequence_split s) { return name_of(sequence_split_names, s); }

}  // namespace pnmkv
