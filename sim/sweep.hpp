// Sweeps: a YAML file naming a base config, overrides for every point, and axes (config
// keys with the values to try, optionally with extra overrides per value, e.g. the tensor
// parallelism that goes with each model). Points are the Cartesian product of the axes in
// file order. Format (sim/README.md):
//
//   name: default
//   config: ../../cluster_configs/experiments/sim-base.yaml   # relative to this file
//   set: [run.steps=64]                                       # every point
//   axes:
//     - key: run.mode
//       values: [baseline, pnm-kv, png-kv]
//     - key: model.file
//       values: [models/llama-3.1-8b.yaml, models/llama-3.1-405b.yaml]
//       with: [[sim.tp=1], [sim.tp=8, sim.pp=2]]              # optional, one list per value
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "sim/simulator.hpp"

namespace pnmkv {

struct sweep_axis {
  std::string key;
  std::vector<std::string> values;
  std::vector<std::vector<std::string>> with;  // empty, or one list per value
};

struct sweep_spec {
  std::string file, name, config_file;
  std::vector<std::string> set;
  std::vector<sweep_axis> axes;

  size_t points() const;
  // The overrides of point i (0 <= i < points()): the axes' values and their `with` lists.
  std::vector<std::string> point_overrides(size_t i) const;
};

// Reads and validates a sweep file: every axis key must be a known config key; at most
// 100000 points. Relative path values resolve against the sweep file's directory and the
// base config's directory (and their parents), as config files do.
result<sweep_spec> load_sweep(const std::string& file);

struct sweep_point {
  std::vector<std::string> overrides;
  bool ok = false;
  std::string error;  // why the point could not be simulated (infeasible or invalid)
  sim_result result;
};

// Runs every point: config = base file, the sweep's `set`, `extra` (e.g. --set from the
// command line), then the point's overrides. A point that cannot run (weights that do not
// fit, a request no device pool holds) is reported with its reason, not fatal.
std::vector<sweep_point> run_sweep(const sweep_spec& spec, const std::string& config_file,
                                   const std::vector<std::string>& extra,
                                   const std::function<void(size_t done, size_t total)>& progress);

// Resolves the relative path values of path-typed keys in `overrides` against `dirs`
// (first existing wins; the working directory is tried first).
std::vector<std::string> resolve_path_overrides(const std::vector<std::string>& overrides,
                                                const std::vector<std::string>& dirs);

// CSV of every point that ran (sim_result::csv_header), and a JSON array of all points.
std::string sweep_csv(const std::vector<sweep_point>& points);
std::string sweep_json(const sweep_spec& spec, const std::vector<sweep_point>& points, double wall_s);

}  // namespace pnmkv
