// The choices of the configuration that no lower folder defines: each `choice` key of the
// schema whose value selects behaviour has one enum here (or in core/ or model/ when pure
// logic there branches on it: gqa_aggregation, summary_precision, run_mode,
// cross_shard_selection, sequence_split). resolve() (config/spec.hpp) parses every one of
// them once; the parse functions name the key and its allowed values. The fabric.* and
// faults.* choices are in config/fabric_choices.hpp.
#pragma once

#include <cstdint>
#include <string>

#include "core/kv_store.hpp"
#include "core/score.hpp"
#include "config/fabric_choices.hpp"
#include "core/status.hpp"
#include "model/modes.hpp"

namespace pnmkv {

// workload.arrivals: a closed batch, or requests arriving over virtual time (Poisson or a
// trace file), served with continuous batching.
enum class workload_arrivals { closed, poisson, trace };
const char* to_string(workload_arrivals a);
result<workload_arrivals> parse_workload_arrivals(const std::string& text);

// baseline.summaries: page summaries resident in HBM ("resident"), read over the link every
// step ("link"), or resident when they fit ("auto").
enum class summary_residence { auto_fit, hbm, link };
const char* to_string(summary_residence r);  // the key's text: auto | resident | link
result<summary_residence> parse_summary_residence(const std::string& text);

// sim.batch_policy: a closed batch of workload.batch requests, or as many as fit.
enum class sim_batch_policy { configured, max };
const char* to_string(sim_batch_policy p);  // config | max
result<sim_batch_policy> parse_sim_batch_policy(const std::string& text);

// cluster.node_scheduler: CAF scheduler of a node process.
enum class node_scheduler { sharing, stealing };
const char* to_string(node_scheduler s);
result<node_scheduler> parse_node_scheduler(const std::string& text);

// selection.summary_precision and selection.gqa_aggregation, with the key in the error.
result<summary_precision> parse_summary_precision_choice(const std::string& text);
result<gqa_aggregation> parse_gqa_aggregation_choice(const std::string& text);

}  // namespace pnmkv
