// The GPU-to-GPU fabric (NVLink) of the simulator's tensor- and pipeline-parallel GPUs:
// figures with sources from a small YAML file (cluster_configs/hardware/*-fabric.yaml, same
// {value, source, assumed} format as the hardware file) and the two costs built on them —
// the ring all-reduce after the attention and MLP blocks of a tensor-parallel layer, and
// the activation hand-off between pipeline stages. Pure once loaded.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.hpp"
#include "model/cost_model.hpp"

namespace pnmkv {

struct gpu_fabric {
  std::string name, file;
  double bw_gbps_per_direction = 0, efficiency = 0, latency_ns = 0, pj_per_bit = 0;
  std::string bw_source, efficiency_source, latency_source, pj_source;

  // Ring all-reduce of `bytes` (per GPU) over `gpus` GPUs: 2(g-1)/g of the bytes cross each
  // GPU's link; energy for every byte moved on every link. Zero for one GPU.
  op_cost all_reduce(double bytes, uint32_t gpus) const;
  // One point-to-point transfer of `bytes` (pipeline stage hand-off).
  op_cost send(double bytes) const;
};

result<gpu_fabric> load_gpu_fabric(const std::string& file);

}  // namespace pnmkv
