// One node of a multi-process cluster (`pnmkv node`), and the launcher that runs a whole
// cluster as separate node processes on this machine (`pnmkv run --multiprocess`). The
// control plane is CAF's middleman with heartbeats; the data plane is the UCX fabric.
// No CAF here.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <cstdint>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "config/config.hpp"
#include "core/status.hpp"
#include "transport/messages.hpp"  // node_role

namespace pnmkv {

// `--role`: the roles a `pnmkv node` process can take, by their to_string() names (the
// driver is not one: `pnmkv run` drives).
result<transport::node_role> parse_node_role(const std::string& text);

struct node_options {
  transport::node_role role = transport::node_role::pnm_device;
  uint32_t id = 0;                 // pnm devices: 100 + index; others fixed
  std::string coordinator_host;    // empty: cluster.coordinator_host
  uint16_t coordinator_port = 0;   // 0: cluster.coordinator_port
  std::string port_file;           // coordinator: write the published port here
  std::string ready_file;          // written once the node is up (its launcher's start-up signal)
  uint64_t connect_timeout_ms = 20000;
};

// Runs the node until the cluster shuts down or the coordinator is lost (with
// cluster.journal_file set: and does not come back within cluster.coordinator_reconnect_ms;
// a coordinator with a journal resumes from it, or refuses one it cannot trust, naming
// why). Returns ok on a
// clean shutdown.
status run_node(const config& cfg, const node_options& opts);

// A node process being started, as its launcher sees it.
struct node_start {
  std::string name;        // "gpu-host", "device 101", ...
  pid_t pid = -1;
  std::string ready_file;  // appears once the node is up (the coordinator: its port file)
  std::string log_file;    // its stdout and stderr
};

// Waits until every node's ready file exists, `timeout` in all (cluster.startup_timeout_ms).
// A node that exits first or is not up in time fails it with an error that names the node,
// how long was waited and the end of its log. Reaps and kills nothing: the caller owns the
// processes.
// `tick`, when given, runs at each look (the launcher restarts a coordinator that died).
status await_nodes_up(const std::vector<node_start>& nodes, std::chrono::milliseconds timeout,
                      const std::function<void()>& tick = {});

struct multiprocess_options {
  std::string node_binary;  // the pnmkv executable to spawn (default: this process's)
  std::string work_dir;     // where the resolved config, secret and logs go (default: a temp dir)
};

// Spawns a coordinator, a GPU host and the configured devices as `pnmkv node` processes on
// loopback, drives the run from this process and reaps every child (SIGKILL past a grace
// period). The report is the same as the embedded run's; node processes that had to be
// killed or exited badly are its shutdown_events. SIGINT or SIGTERM to this process while
// it runs (also when SIGINT was ignored, as in a script's background job) stops the run:
// the GPU host reports what finished (report.stopped, steps_done, completed), the cluster
// shuts down and every child is reaped; a second signal kills the children at once.
result<run_report> run_multiprocess(const config& cfg, const cluster_run_options& opts,
                                    const multiprocess_options& mp);

// The stop signal (SIGINT, SIGTERM) the last run_multiprocess / run_attached of this
// process received, or 0.
int stop_signal_received();

// Drives a run on a cluster already up (nodes started by hand, by a script or by a container
// orchestrator): connects to the coordinator at host:port as the driver, submits the
// config's requests and returns the report. The driver proves the cluster secret like a
// node (fabric.cluster_secret_file). With cluster.journal_file set, a lost coordinator is
// waited for (cluster.coordinator_reconnect_ms) and joined again. SIGINT / SIGTERM stop
// the run as with run_multiprocess.
result<run_report> run_attached(const config& cfg, const cluster_run_options& opts, const std::string& host,
                                uint16_t port);

}  // namespace pnmkv
