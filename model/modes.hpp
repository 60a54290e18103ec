// The execution choices of a run that the policies, the step model and the simulator all
// branch on: the mode (docs/DESIGN.md §2), the cross-shard selection rule, how sequence
// shards cut the pages and what a query asks of a shard (§3). They live here, below config/
// (whose schema lists these names as the keys' allowed values and which looks them up once
// into run_spec) and schedulers/ (which decides with them).
#pragma once

#include <cstdint>

#include "core/enum_names.hpp"

namespace pnmkv {

// run.mode. gpu-only is the reference without memory devices: the KV of every admitted
// request in GPU HBM, Quest selection and attention on the GPU (docs/DESIGN.md §2).
enum class run_mode { baseline, pnm_kv, png_kv, gpu_only };
inline constexpr enum_name<run_mode> run_mode_names[] = {{"baseline", run_mode::baseline},
                                                         {"pnm-kv", run_mode::pnm_kv},
                                                         {"png-kv", run_mode::png_kv},
                                                         {"gpu-only", run_mode::gpu_only}};
const char* to_string(run_mode m);

// selection.cross_shard
enum class cross_shard_selection { exact, local };
inline constexpr enum_name<cross_shard_selection> cross_shard_selection_names[] = {
    {"exact", cross_shard_selection::exact}, {"local", cross_shard_selection::local}};
const char* to_string(cross_shard_selection s);

// A layer's selection takes two rounds — candidates, then the attend (or recall) round —
// in baseline (the GPU scores every head, then recalls) and under exact cross-shard
// selection over more than one sequence shard; otherwise each shard selects and attends in
// one. The host engine and the step model both ask this.
bool two_round_selection(run_mode mode, cross_shard_selection cross, uint32_t sequence_shards);

// cluster.sequence_split
enum class sequence_split { contiguous, interleave };
inline constexpr enum_name<sequence_split> sequence_split_names[] = {
    {"contiguous", sequence_split::contiguous}, {"interleave", sequence_split::interleave}};
const char* to_string(sequence_split s);

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
