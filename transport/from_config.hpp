// Turns the fabric.* and faults.* sections of the resolved configuration (config/spec.hpp)
// into transport options. Errors name the key (and, for scripts, the rule) that is wrong.
#pragma once

#include <string>

#include "config/spec.hpp"
#include "transport/fabric.hpp"
#include "transport/messages.hpp"
#include "transport/ucx_fabric.hpp"

namespace pnmkv::transport {

wire_limits wire_limits_from(const fabric_section& fabric);
// faults.* -> a plan: the *_prob keys become rules, then faults.script and
// faults.script_file are appended.
result<fault_plan> fault_plan_from(const faults_section& faults);
// fabric.* and faults.* -> options for node `self` (link left at its defaults: the caller
// fills it from the hardware file).
result<fabric_options> fabric_options_from(const run_spec& spec, node_id self);
ucx_options ucx_options_from(const fabric_section& fabric);
// Reads fabric.cluster_secret_file (empty string when the key is empty).
result<std::string> cluster_secret_from(const fabric_section& fabric);

}  // namespace pnmkv::transport
