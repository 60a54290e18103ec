// The one cost model (docs/DESIGN.md §5). Every modelled figure — in the live emulator and in
// the simulator — comes from these calls on a hardware_spec (YAML with sources) and a
// model_shape. Each call returns the time the operation takes on the modelled hardware and
// its dynamic energy; static power is charged per elapsed time by static_power_w().
// Pure functions: no clocks, no I/O.
#pragma once

#include <cstdint>
#include <vector>

#include "model/hardware.hpp"
#include "model/model_shape.hpp"

namespace pnmkv {

struct op_cost {
  double time_ns = 0;
  double energy_j = 0;
  // GPU HBM bytes the operation moved (every GPU of a tensor-parallel group; 0 off the GPU):
  // what the all-in energy figure charges at energy.gpu_all_in_pj_per_bit.
  double hbm_bytes = 0;

  op_cost& operator+=(const op_cost& o) {
    time_ns += o.time_ns;
    energy_j += o.energy_j;
    hbm_bytes += o.hbm_bytes;
    return *this;
  }
};

// Where a device's memory traffic goes.
enum class memory_kind { hbm, pnm_lpddr, expander_ddr };

// Modelled power of each part over one step (docs/HARDWARE.md §6a): a GPU's share of the
// GPUs' dynamic energy over the step plus its idle power, component-level and all-in; the
// dynamic energy of the memory device that spent the most over the step plus its idle
// power. Peaks are the highest over the steps of a run.
struct step_power_w {
  double gpu = 0, gpu_all_in = 0, device = 0;
  void max_with(const step_power_w& o) {
    gpu = gpu > o.gpu ? gpu : o.gpu;
    gpu_all_in = gpu_all_in > o.gpu_all_in ? gpu_all_in : o.gpu_all_in;
    device = device > o.device ? device : o.device;
  }
};

class cost_model {
 public:
  cost_model(hardware_spec hw, model_shape model) : hw_(std::move(hw)), model_(std::move(model)) {}

  const hardware_spec& hardware() const { return hw_; }
  const model_shape& model() const { return model_; }

  // --- PNM device -------------------------------------------------------------------
  // Streams `bytes` through the device's memory and does `flops` (float) and `int_ops`
  // (integer: the exact-int8 page search's bounds): roofline, the larger of bytes /
  // (internal bw · efficiency) and flops / compute + int_ops / int_tops. Dynamic energy of
  // all three.
  op_cost pnm_compute(double bytes, double flops, double int_ops = 0) const;

  // --- passive expander (baseline) ---------------------------------------------------
  // Reads `bytes` from the expander's DDR (served to the link). Time is the DDR time; the
  // link transfer is charged separately by link_transfer().
  op_cost expander_read(double bytes) const;

  // --- CXL link ----------------------------------------------------------------------
  // One transfer between the host and a device through the switch: memory latency +
  // switch hops + bytes / (link bw · efficiency); energy for every link crossed (host
  // link and device link: 1 + switch_hops... see cost_model.cpp).
  op_cost link_transfer(double bytes) const;
  // The serialisation part alone (bytes / effective bandwidth), for occupancy tracking.
  double link_serialisation_ns(double bytes) const;
  double link_latency_ns() const;

  // --- GPU ---------------------------------------------------------------------------
  // Dense part (projections, MLP, norms) of one layer for `batch` tokens, tensor-parallel
  // over `tp` GPUs: roofline on weight bytes (read once per step) and FLOPs.
  op_cost gpu_dense_layer(uint32_t batch, uint32_t tp = 1) const;
  // Embedding lookup and LM head for `batch` tokens.
  op_cost gpu_lm_head(uint32_t batch, uint32_t tp = 1) const;
  // Attention on the GPU over `kv_bytes` of KV held in HBM, with `flops`.
  op_cost gpu_attention(double kv_bytes, double flops) const;
  // Merging `n_partials` partials of `group` query heads × head_dim.
  op_cost gpu_merge(uint32_t n_partials, uint32_t group) const;
  // Moving `bytes` into HBM from the host link side (steady-page copies, recalls land).
  op_cost gpu_hbm_write(double bytes) const;

  // --- work sizes (shared by live emulator and simulator) ---------------------------
  // Bytes of one page's summary (min and max keys) at the given element size.
  double summary_bytes_per_page(uint32_t summary_elem_bytes) const {
    return 2.0 * model_.head_dim * summary_elem_bytes;
  }
  // K+V bytes of `tokens` tokens of one (layer, KV head).
  double kv_bytes(double tokens) const { return tokens * model_.kv_bytes_per_token_per_head(); }
  // FLOPs of scoring `pages` pages for a group (max aggregation: every head; sum: one).
  double score_flops(double pages, uint32_t heads_scored) const {
    return pages * heads_scored * 4.0 * model_.head_dim;
  }
  // FLOPs of attending `tokens` tokens for a group of query heads (q·k and p·v).
  double attend_flops(double tokens, uint32_t group) const {
    return tokens * group * 4.0 * model_.head_dim;
  }

  // --- power and money ----------------------------------------------------------------
  // Idle (static) power of the parts, charged for elapsed time.
  double static_power_w(uint32_t gpus, uint32_t pnm_devices, uint32_t expanders) const;
  // All-in figure (docs/HARDWARE.md §6a): what the GPU's HBM bytes cost on top of the
  // component-level charge when streamed at energy.gpu_all_in_pj_per_bit instead of
  // energy.hbm_pj_per_bit, and the static power of the host server (host.power_w per GPU)
  // and of the CXL switch (per x16 port in use: each GPU's host links and each device).
  double gpu_all_in_extra_j(double hbm_bytes) const;
  double host_switch_power_w(uint32_t gpus, uint32_t devices) const;
  step_power_w power_over_step(double step_ns, double gpu_dynamic_j, double gpu_hbm_bytes, uint32_t gpus,
                               double device_dynamic_j_max, bool passive_expander) const;
  // The run's peak power of each part next to its rating (rated_power::peak_w is the
  // modelled peak; the all-in GPU row is informative).
  std::vector<rated_power> peak_power_vs_rating(const step_power_w& peak, bool passive_expander) const;
  // An error naming the part, its modelled peak and its rating when a component-level peak
  // is above the rating (the all-in GPU row is not checked: docs/HARDWARE.md §6a).
  status check_peak_power(const step_power_w& peak, bool passive_expander) const;
  // Capital of the parts in USD (GPUs with their host share, devices, expanders).
  double capital_usd(uint32_t gpus, uint32_t pnm_devices, uint32_t expanders) const;
  // Tokens per dollar over the amortisation period: tokens produced over it divided by
  // capital plus electricity (average power × PUE × price).
  double tokens_per_dollar(double tokens_per_s, double average_power_w, double capital) const;

 private:
  hardware_spec hw_;
  model_shape model_;
};

}  // namespace pnmkv
