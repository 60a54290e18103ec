// Names of the configuration's choices (enums.hpp, fabric_choices.hpp): each read from its
// one table.
#include "config/enums.hpp"

namespace pnmkv {

const char* to_string(workload_arrivals a) { return name_of(workload_arrivals_names, a); }
const char* to_string(summary_residence r) { return name_of(summary_residence_names, r); }
const char* to_string(sim_batch_policy p) { return name_of(sim_batch_policy_names, p); }
const char* to_string(node_scheduler s) { return name_of(node_scheduler_names, s); }
const char* to_string(fault_points p) { return name_of(fault_points_names, p); }
const char* to_string(ucx_progress p) { return name_of(ucx_progress_names, p); }

}  // namespace pnmkv
