// `pnmkv chaos --compose`: the container cluster (docker/) as a chaos backend. The C++
// runner drives and docker/cluster.sh does every container operation, so each one has a
// single implementation (the same `cluster.sh fault` a user types):
//   - per run: `cluster.sh up --config TRIAL.yaml` (the first builds the image from this
//     build, later ones `--no-build`), which writes the containers' config — the trial's
//     message-fault rules in its faults.script, its fault log in each container's /tmp —
//     and a fresh secret, and starts the containers;
//   - this process is the driver (`pnmkv run --attach` from the host: the state folder's
//     host.yaml, 127.0.0.1:PNMKV_PORT), so the decode steps the run reports time the
//     container actions (transport/chaos_containers.hpp), which a thread here executes with
//     `cluster.sh fault KIND NODE`, and the driver's loss and rejoin of the coordinator
//     time a coordinator kill;
//   - after the run: `cluster.sh collect` copies each container's fault log out and says
//     how often Docker restarted the coordinator; `cluster.sh down --keep-daemon`, then
//     `cluster.sh leftovers` lists what of the trial's cluster is still there (a violation).
// Why not a `cluster.sh chaos` loop: the schedules, invariants and summary stay in one
// place (actors/chaos.cpp) for every backend, and only a driver in this process sees the
// run's steps as they happen.
// Environment passed through to cluster.sh when set: PNMKV_PROJECT (else "pnmkvchaos"),
// PNMKV_DOCKER_STATE (else OUT/docker-state), PNMKV_PORT (else 7100), PNMKV_IMAGE,
// BUILD_DIR (else this executable's folder).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "actors/chaos.hpp"
#include "actors/run_report.hpp"
#include "config/config.hpp"
#include "core/status.hpp"
#include "transport/chaos_containers.hpp"

namespace pnmkv {

// Where a container node writes its fault log (copied out after each run).
inline constexpr const char* compose_fault_log = "/tmp/pnmkv-faults.jsonl";

class compose_chaos {
 public:
  // Finds cluster.sh and starts the Docker daemon if none answers (an error when it
  // cannot: not root, no dockerd).
  static result<std::unique_ptr<compose_chaos>> open(const chaos_options& o, const std::string& dir);
  ~compose_chaos();  // takes the cluster down, and the daemon if cluster.sh started it

  struct outcome {
    result<run_report> report = status{errc::internal, "not run"};
    std::vector<chaos_action> actions;
    uint32_t coordinator_restarts = 0;  // Docker's restart count of the coordinator container
    std::vector<double> coordinator_detect_ms, coordinator_recover_ms;
    std::vector<std::string> violations;  // the cluster not up, what was left behind
  };
  // One run of `cfg` with `plan`'s actions; the containers' fault logs and one line per
  // container action that struck go to `host_log` (the fault log grammar's "fault" and
  // "unix_ms" fields) when it is not empty. `work`: the run's config and logs.
  outcome run(const config& cfg, const transport::container_plan& plan, const std::string& work,
              const std::string& host_log, uint64_t timeout_ms);

 private:
  compose_chaos() = default;
  // Runs `cluster.sh ARGS...` (stderr to `log`; stdout there too, or into *out), killed
  // past the timeout; its exit status.
  result<int> tool(const std::vector<std::string>& args, const std::string& log, uint64_t timeout_ms,
                   std::string* out = nullptr) const;
  void take_down(const std::string& log, outcome& oc) const;
  void collect(const transport::container_plan& plan, const std::string& work, const std::string& host_log,
               outcome& oc) const;
  std::string script_, state_, dir_;
  std::vector<std::pair<std::string, std::string>> env_;
  uint16_t port_ = 0;
  bool built_ = false;
};

}  // namespace pnmkv
