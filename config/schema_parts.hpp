// Per-component pieces of the config schema (see schema.cpp).
#pragma once

#include <vector>

#include "config/config.hpp"

namespace pnmkv {
std::vector<config_key> schema_keys_run();        // run, model, hardware, selection, cluster, eval (schema_run.cpp)
std::vector<config_key> schema_keys_workload();   // workload.* (schema_workload.cpp)
std::vector<config_key> schema_keys_transport();  // fabric.*, faults.* (schema_transport.cpp)
std::vector<config_key> schema_keys_sim();        // sim.* (schema_sim.cpp)
}  // namespace pnmkv
