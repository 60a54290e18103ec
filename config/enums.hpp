// The choices of the configuration that no lower folder defines: each `choice` key of the
// schema whose value selects behaviour has one enum and one name table (core/enum_names.hpp)
// here, or in core/ or model/ when pure logic there branches on it (gqa_aggregation,
// summary_precision, run_mode, cross_shard_selection, sequence_split). The schema lists a
// table's names as the key's allowed values (config refuses any other, naming the key and
// them); resolve_run_spec (config/spec.hpp) looks each key up in its table once. The
// fabric.* and faults.* choices are in config/fabric_choices.hpp.
#pragma once

#include <cstdint>

#include "config/fabric_choices.hpp"
#include "core/enum_names.hpp"
#include "core/kv_store.hpp"
#include "core/score.hpp"
#include "core/status.hpp"
#include "model/modes.hpp"

namespace pnmkv {

// workload.arrivals: a closed batch, or requests arriving over virtual time (Poisson or a
// trace file), served with continuous batching.
enum class workload_arrivals { closed, poisson, trace };
inline constexpr enum_name<workload_arrivals> workload_arrivals_names[] = {
    {"closed", workload_arrivals::closed}, {"poisson", workload_arrivals::poisson}, {"trace", workload_arrivals::trace}};
const char* to_string(workload_arrivals a);

// baseline.summaries: page summaries resident in HBM ("resident"), read over the link every
// step ("link"), or resident when they fit ("auto").
enum class summary_residence { auto_fit, hbm, link };
inline constexpr enum_name<summary_residence> summary_residence_names[] = {
    {"auto", summary_residence::auto_fit}, {"resident", summary_residence::hbm}, {"link", summary_residence::link}};
const char* to_string(summary_residence r);

// sim.batch_policy: a closed batch of workload.batch requests, or as many as fit.
enum class sim_batch_policy { configured, max };
inline constexpr enum_name<sim_batch_policy> sim_batch_policy_names[] = {{"config", sim_batch_policy::configured},
                                                                         {"max", sim_batch_policy::max}};
const char* to_string(sim_batch_policy p);

// cluster.node_scheduler: CAF scheduler of a node process.
enum class node_scheduler { sharing, stealing };
inline constexpr enum_name<node_scheduler> node_scheduler_names[] = {{"sharing", node_scheduler::sharing},
                                                                     {"stealing", node_scheduler::stealing}};
const char* to_string(node_scheduler s);

// selection.lookahead: auto (on where the mode and the schedule allow it: pnm-kv, one
// micro-batch; off otherwise), true (required: any other mode or schedule is refused), false.
enum class lookahead_setting { auto_fit, on, off };
inline constexpr enum_name<lookahead_setting> lookahead_setting_names[] = {
    {"auto", lookahead_setting::auto_fit}, {"true", lookahead_setting::on}, {"false", lookahead_setting::off}};

}  // namespace pnmkv
