// Hardware figures read from a YAML file under cluster_configs/hardware/. Every figure
// carries its source and whether it is assumed (no public figure); results print the file
// and can list every figure with its source. Units are in the names.
#pragma once

#include <map>
#include <string>

#include "core/status.hpp"
#include "model/modes.hpp"

namespace pnmkv {

struct figure {
  double value = 0;
  std::string text;  // for textual figures (e.g. the GPU model name)
  std::string source;
  bool assumed = false;
};

struct hardware_spec {
  std::string name;
  std::string file;

  struct gpu_t {
    std::string model;
    double memory_bytes, memory_bw_gbps, memory_bw_efficiency, weight_stream_efficiency, bf16_tflops,
        compute_efficiency, tdp_w, reserved_bytes, price_usd, host_server_usd;
  } gpu{};
  struct cxl_t {
    double link_bw_gbps_per_direction, link_efficiency, memory_latency_ns, switch_hop_ns,
        switch_hops, link_pj_per_bit, host_links;
  } cxl{};
  struct pnm_t {
    double capacity_bytes, internal_bw_gbps, internal_bw_efficiency, compute_tflops,
        memory_pj_per_bit, pj_per_flop, power_w, idle_power_w, price_usd;
  } pnm{};
  struct expander_t {
    double capacity_bytes, internal_bw_gbps, memory_pj_per_bit, power_w, idle_power_w,
        price_usd;
  } expander{};
  struct energy_t {
    double hbm_pj_per_bit, gpu_pj_per_flop, gpu_idle_power_w;
  } energy{};
  struct cost_t {
    double electricity_usd_per_kwh, pue, amortisation_years;
  } cost{};

  // Every figure by its dotted key ("gpu.memory_bw_gbps"), with source.
  std::map<std::string, figure> figures;
};

// Reads and validates a hardware file. Errors name the file, the key and what is allowed:
// unknown keys, missing keys, a figure without a source, non-positive values.
result<hardware_spec> load_hardware(const std::string& file);

// Multiplies figures of a loaded hardware spec, for sensitivity studies (config key
// hardware.scale): `scales` is "key=factor[,key=factor...]" over the file's numeric
// figures, e.g. "pnm_device.compute_tflops=0.5,cxl.link_bw_gbps_per_direction=2". A
// scaled figure keeps its range check and its source says it was scaled. Errors name the
// unknown key (with the allowed ones), a factor that is not a number in (0, 100], or a
// scaled value outside the figure's range. An empty string changes nothing.
status scale_hardware(hardware_spec& hw, const std::string& scales);

// Bytes one memory device holds in `mode`: a passive expander in baseline, a PNM device
// otherwise (the modelled capacity placement fills; the emulator's own limit is
// cluster.device_memory_bytes_max). gpu-only uses no device: 0.
inline double device_capacity_bytes(const hardware_spec& hw, run_mode mode) {
  switch (mode) {
    case run_mode::baseline: return hw.expander.capacity_bytes;
    case run_mode::gpu_only: return 0;
    case run_mode::pnm_kv:
    case run_mode::png_kv: break;
  }
  return hw.pnm.capacity_bytes;
}

}  // namespace pnmkv
