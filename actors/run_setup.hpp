// Everything a node needs to know about a run, built once from the resolved configuration:
// model shape, hardware figures, the cost model, the synthetic workload and the knobs of
// the decode loop. Immutable and shared by the actors of one process; in cluster mode every
// process builds the same setup from the same config file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "actors/device_engine.hpp"
#include "actors/host_engine.hpp"
#include "config/config.hpp"
#include "config/spec.hpp"
#include "core/workload.hpp"
#include "model/cost_model.hpp"
#include "schedulers/gpu_memory.hpp"
#include "schedulers/host_memory.hpp"
#include "schedulers/placement.hpp"
#include "schedulers/serving.hpp"
#include "schedulers/step_setup.hpp"
#include "transport/messages.hpp"

namespace pnmkv {

// Node ids of a cluster: fixed roles first, devices from device_node_base.
inline constexpr uint32_t coordinator_node = 0;
inline constexpr uint32_t gpu_host_node = 1;
inline constexpr uint32_t driver_node = 2;
inline constexpr uint32_t device_node_base = 100;

struct run_setup {
  config cfg;     // what the spec was resolved from: echoed in the report
  run_spec spec;  // every key, typed (cluster.device_memory_bytes_max as derived)
  model_shape model;
  hardware_spec hw;
  std::unique_ptr<cost_model> costs;
  std::unique_ptr<kv_workload> workload;  // synthetic, or a KV trace (trace/)

  std::string mode;
  uint32_t steps = 0;
  uint64_t seed = 0;
  uint64_t context_tokens = 0;
  uint32_t batch = 0;
  uint32_t devices = 0;
  std::string secret;
  // fabric.max_*: the bounds every message this node decodes is checked against.
  transport::wire_limits limits;
  uint32_t step_timeout_ms = 0;
  uint32_t retry_after_ms = 0;  // 0: no retries
  uint32_t device_timeout_ms = 0;  // cluster.device_timeout_ms; 0: off
  uint32_t join_timeout_ms = 0;
  uint32_t prefill_timeout_ms = 0;
  uint32_t prefill_window_chunks = 0;
  // Open workloads (workload.arrivals poisson|trace); empty for closed runs.
  std::vector<trace_row> arrivals;
  serving_params serving;
  bool open_workload() const { return !arrivals.empty(); }
  // workload.tpot_ms_max > 0: a request joins only while the predicted decode step with it
  // stays within the limit, predicted by schedulers/step_model.hpp on `step`.
  double tpot_ms_max = 0;
  // The live cluster's step composition: the host engine charges its steps with it and
  // the TPOT limit predicts with it (schedulers/step_setup.hpp).
  std::shared_ptr<const step_setup> step;

  device_engine_config device;   // device_id filled per device
  host_engine_config host;
  placement_request placement;   // request_id / context filled per request
  gpu_memory_query gpu_query;    // batch filled per admission check
  uint32_t replication = 1;
  bool rereplicate = true;       // cluster.rereplicate (recompute: host.recompute)
  uint32_t pool_devices = 0;     // devices per pool (0: one pool of every device)
  // This machine's memory when the setup was made (actors/memory_guard.hpp), and whether
  // device.memory_bytes_max was derived from it (cluster.device_memory_bytes_max = 0).
  host_memory host_mem;
  bool device_memory_derived = false;

  std::vector<uint32_t> device_ids() const;
};

// The cluster secret comes from fabric.cluster_secret_file; a launcher that made its own
// (embedded runs, `pnmkv run --multiprocess`) passes it as secret_override. `cfg` is what
// `spec` was resolved from (config/spec.hpp), echoed in the report.
result<std::shared_ptr<const run_setup>> make_run_setup(const run_spec& spec, const config& cfg,
                                                         const std::string& secret_override = "");
// Resolves `cfg` (loading the model and hardware files once) and builds from it.
result<std::shared_ptr<const run_setup>> make_run_setup(const config& cfg,
                                                         const std::string& secret_override = "");

// A fresh random secret (hex of 32 random bytes) for a launcher to hand its nodes.
std::string make_cluster_secret();

}  // namespace pnmkv
