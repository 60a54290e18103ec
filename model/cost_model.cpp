// Cost model implementation. Conventions: GB/s = 1e9 bytes/s, so bytes / gbps = ns.
// pJ/bit × 8 × bytes × 1e-12 = joules. TFLOP/s × 1e3 = FLOP/ns.
#include "model/cost_model.hpp"

#include <algorithm>
#include <cstdio>

#include "core/check.hpp"

namespace pnmkv {

namespace {
constexpr double joules_per_pj = 1e-12;
double bits(double bytes) { return bytes * 8.0; }
}  // namespace

op_cost cost_model::pnm_compute(double bytes, double flops, double int_ops) const {
  PNMKV_CHECK(bytes >= 0 && flops >= 0 && int_ops >= 0, "bytes=", bytes, ", flops=", flops,
              ", int_ops=", int_ops);
  const auto& p = hw_.pnm;
  double mem_ns = bytes / (p.internal_bw_gbps * p.internal_bw_efficiency);
  // Float and integer work one after the other (one compute engine), overlapped with the
  // memory stream.
  double cmp_ns = flops / (p.compute_tflops * 1e3) + int_ops / (p.int_tops * 1e3);
  return {std::max(mem_ns, cmp_ns),
          (bits(bytes) * p.memory_pj_per_bit + flops * p.pj_per_flop + int_ops * p.pj_per_int_op) *
              joules_per_pj};
}

op_cost cost_model::expander_read(double bytes) const {
  PNMKV_CHECK_GE(bytes, 0.0);
  const auto& e = hw_.expander;
  return {bytes / e.internal_bw_gbps, bits(bytes) * e.memory_pj_per_bit * joules_per_pj};
}

double cost_model::link_latency_ns() const {
  return hw_.cxl.memory_latency_ns + hw_.cxl.switch_hops * hw_.cxl.switch_hop_ns;
}

double cost_model::link_serialisation_ns(double bytes) const {
  return bytes / (hw_.cxl.link_bw_gbps_per_direction * hw_.cxl.link_efficiency);
}

op_cost cost_model::link_transfer(double bytes) const {
  PNMKV_CHECK_GE(bytes, 0.0);
  // A transfer crosses the host's link and the device's link (two SerDes pairs) when a
  // switch sits between them, one link otherwise.
  double links_crossed = hw_.cxl.switch_hops > 0 ? 2.0 : 1.0;
  return {link_latency_ns() + link_serialisation_ns(bytes),
          links_crossed * bits(bytes) * hw_.cxl.link_pj_per_bit * joules_per_pj};
}

op_cost cost_model::gpu_dense_layer(uint32_t batch, uint32_t tp) const {
  PNMKV_CHECK_GE(tp, 1u);
  const auto& m = model_;
  const double h = m.hidden, qd = double(m.q_heads) * m.head_dim,
               kvd = double(m.kv_heads) * m.head_dim;
  const double params = h * qd + 2.0 * h * kvd + qd * h + 3.0 * h * m.ffn + 2.0 * h;
  const double weight_bytes = params * 2.0 / tp;  // bf16
  const double flops = 2.0 * params * batch / tp;
  // Activations in and out are tiny next to weights at decode; they ride in the roofline.
  const double act_bytes = double(batch) * (h * 6.0 + m.ffn * 4.0) * 2.0 / tp;
  const auto& g = hw_.gpu;
  // Decode GEMMs stream the weights at a lower fraction of peak than a plain copy
  // (weight_stream_efficiency, measured with cuBLAS: bench/gpu/dense_layer_bench.cu).
  double mem_ns = (weight_bytes + act_bytes) / (g.memory_bw_gbps * g.weight_stream_efficiency);
  double cmp_ns = flops / (g.bf16_tflops * 1e3 * g.compute_efficiency);
  return {std::max(mem_ns, cmp_ns),
          (bits(weight_bytes + act_bytes) * hw_.energy.hbm_pj_per_bit +
           flops * hw_.energy.gpu_pj_per_flop) * joules_per_pj * tp,
          (weight_bytes + act_bytes) * tp};
}

op_cost cost_model::gpu_lm_head(uint32_t batch, uint32_t tp) const {
  PNMKV_CHECK_GE(tp, 1u);
  const double params = double(model_.vocab) * model_.hidden;
  const double weight_bytes = params * 2.0 / tp;
  const double flops = 2.0 * params * batch / tp;
  const auto& g = hw_.gpu;
  double mem_ns = weight_bytes / (g.memory_bw_gbps * g.weight_stream_efficiency);
  double cmp_ns = flops / (g.bf16_tflops * 1e3 * g.compute_efficiency);
  return {std::max(mem_ns, cmp_ns),
          (bits(weight_bytes) * hw_.energy.hbm_pj_per_bit + flops * hw_.energy.gpu_pj_per_flop) *
              joules_per_pj * tp,
          weight_bytes * tp};
}

op_cost cost_model::gpu_attention(double kv_bytes, double flops) const {
  const auto& g = hw_.gpu;
  double mem_ns = kv_bytes / (g.memory_bw_gbps * g.memory_bw_efficiency);
  double cmp_ns = flops / (g.bf16_tflops * 1e3 * g.compute_efficiency);
  return {std::max(mem_ns, cmp_ns),
          (bits(kv_bytes) * hw_.energy.hbm_pj_per_bit + flops * hw_.energy.gpu_pj_per_flop) *
              joules_per_pj,
          kv_bytes};
}

op_cost cost_model::gpu_merge(uint32_t n_partials, uint32_t group) const {
  // Read every partial (o and lse, fp32), write one; ~4 FLOPs per element.
  const double elems = double(n_partials) * group * (model_.head_dim + 1);
  return gpu_attention(elems * 4.0 * 2.0, elems * 4.0);
}

op_cost cost_model::gpu_hbm_write(double bytes) const {
  const auto& g = hw_.gpu;
  return {bytes / (g.memory_bw_gbps * g.memory_bw_efficiency),
          bits(bytes) * hw_.energy.hbm_pj_per_bit * joules_per_pj, bytes};
}

double cost_model::static_power_w(uint32_t gpus, uint32_t pnm_devices, uint32_t expanders) const {
  return gpus * hw_.energy.gpu_idle_power_w + pnm_devices * hw_.pnm.idle_power_w +
         expanders * hw_.expander.idle_power_w;
}

double cost_model::gpu_all_in_extra_j(double hbm_bytes) const {
  PNMKV_CHECK_GE(hbm_bytes, 0.0);
  return bits(hbm_bytes) * (hw_.energy.gpu_all_in_pj_per_bit - hw_.energy.hbm_pj_per_bit) * joules_per_pj;
}

double cost_model::host_switch_power_w(uint32_t gpus, uint32_t devices) const {
  const double ports = hw_.cxl.switch_hops > 0 ? gpus * hw_.cxl.host_links + devices : 0;
  return gpus * hw_.host.power_w + ports * hw_.switch_power_w_per_port;
}

step_power_w cost_model::power_over_step(double step_ns, double gpu_dynamic_j, double gpu_hbm_bytes,
                                          uint32_t gpus, double device_dynamic_j_max, bool passive_expander) const {
  PNMKV_CHECK_GE(gpus, 1u);
  step_power_w p;
  if (step_ns <= 0) return p;
  const double s = step_ns * 1e-9;
  p.gpu = hw_.energy.gpu_idle_power_w + gpu_dynamic_j / gpus / s;
  p.gpu_all_in = p.gpu + gpu_all_in_extra_j(gpu_hbm_bytes) / gpus / s;
  const double idle = passive_expander ? hw_.expander.idle_power_w : hw_.pnm.idle_power_w;
  p.device = idle + device_dynamic_j_max / s;
  return p;
}

std::vector<rated_power> cost_model::peak_power_vs_rating(const step_power_w& peak, bool passive_expander) const {
  std::vector<rated_power> out;
  out.push_back({"gpu", "gpu.tdp_w", hw_.gpu.tdp_w, peak.gpu, "component-level"});
  out.push_back({"gpu (all-in)", "gpu.tdp_w", hw_.gpu.tdp_w, peak.gpu_all_in,
                 "HBM at energy.gpu_all_in_pj_per_bit; informative"});
  if (passive_expander)
    out.push_back({"expander", "expander.power_w", hw_.expander.power_w, peak.device, "busiest expander"});
  else
    out.push_back({"pnm_device", "pnm_device.power_w", hw_.pnm.power_w, peak.device, "busiest device"});
  return out;
}

status cost_model::check_peak_power(const step_power_w& peak, bool passive_expander) const {
  for (const rated_power& r : peak_power_vs_rating(peak, passive_expander)) {
    if (r.component == "gpu (all-in)" || r.peak_w <= r.rating_w) continue;
    char line[256];
    std::snprintf(line, sizeof line, "%s: modelled power %.1f W (%s) over a step is above its rating %s = %.1f W",
                  r.component.c_str(), r.peak_w, r.peak_terms.c_str(), r.rating_key.c_str(), r.rating_w);
    return {errc::invalid_argument, line};
  }
  return {};
}

double cost_model::capital_usd(uint32_t gpus, uint32_t pnm_devices, uint32_t expanders) const {
  return gpus * (hw_.gpu.price_usd + hw_.gpu.host_server_usd) + pnm_devices * hw_.pnm.price_usd +
         expanders * hw_.expander.price_usd;
}

double cost_model::tokens_per_dollar(double tokens_per_s, double average_power_w,
                                     double capital) const {
  const double seconds = hw_.cost.amortisation_years * 365.25 * 24 * 3600;
  const double kwh = average_power_w * hw_.cost.pue * seconds / 3.6e6;
  const double dollars = capital + kwh * hw_.cost.electricity_usd_per_kwh;
  if (dollars <= 0) return 0;
  return tokens_per_s * seconds / dollars;
}

}  // namespace pnmkv
