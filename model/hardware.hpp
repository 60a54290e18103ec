// Hardware figures read from a YAML file under cluster_configs/hardware/. Every figure
// carries its source and whether it is assumed (no public figure); results print the file
// and can list every figure with its source. Units are in the names.
#pragma once

#include <map>
#include <string>
#include <vector>

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
    // Integer arithmetic of the page search's bounds (exact-int8: int16 × uint8
    // multiply-adds into int32, 2 ops each), rate and energy (docs/HARDWARE.md §4, §6).
    double int_tops, pj_per_int_op;
  } pnm{};
  struct expander_t {
    double capacity_bytes, internal_bw_gbps, memory_pj_per_bit, power_w, idle_power_w,
        price_usd;
  } expander{};
  struct energy_t {
    double hbm_pj_per_bit, gpu_pj_per_flop, gpu_idle_power_w;
    // The GPU's energy per HBM bit streamed, measured all-in at the board (SMs, L2,
    // regulators and HBM, above idle): the all-in energy figure charges HBM bytes at this
    // instead of hbm_pj_per_bit (docs/HARDWARE.md §6).
    double gpu_all_in_pj_per_bit;
  } energy{};
  // Optional figures (absent: 0, not charged, and the report says so): the host server's
  // non-GPU power per GPU and the CXL switch's power per x16 port in use, both static and
  // charged only in the all-in energy figure (docs/HARDWARE.md §6a).
  struct host_t {
    double power_w;
  } host{};
  double switch_power_w_per_port = 0;  // cxl.switch_power_w_per_port
  struct cost_t {
    double electricity_usd_per_kwh, pue, amortisation_years;
  } cost{};

  // Every figure by its dotted key ("gpu.memory_bw_gbps"), with source.
  std::map<std::string, figure> figures;
};

// One part's power rating next to the highest power its own figures let the cost model
// charge it: idle plus the dynamic power of running flat out at the rates it can sustain
// (docs/HARDWARE.md §6a says which rates).
struct rated_power {
  std::string component;   // "gpu", "pnm_device", "expander"
  std::string rating_key;  // "gpu.tdp_w", ...
  double rating_w = 0;
  double peak_w = 0;       // idle + dynamic at full rate
  std::string peak_terms;  // how peak_w is made, e.g. "79 W idle + 100.5 W HBM + ..."
};
std::vector<rated_power> rated_power_peaks(const hardware_spec& hw);

// Reads and validates a hardware file. Errors name the file, the key and what is allowed:
// unknown keys, missing keys, a figure without a source, non-positive values, an idle
// power or a full-rate power above the part's rating (naming the rating key and both
// figures).
result<hardware_spec> load_hardware(const std::string& file);

// Multiplies figures of a loaded hardware spec, for sensitivity studies (config key
// hardware.scale): `scales` is "key=factor[,key=factor...]" over the file's numeric
// figures, e.g. "pnm_device.compute_tflops=0.5,cxl.link_bw_gbps_per_direction=2". A
// scaled figure keeps its range check and its source says it was scaled. Errors name the
// unknown key (with the allowed ones), a factor that is not a number in (0, 100], or a
// scaled value outside the figure's range. An empty string changes nothing. The file's
// full-rate power check (rated_power_peaks) is not repeated on scaled figures — a scale is a
// what-if on one figure, its rating unchanged — but a simulated run still may not charge a
// part more than its rating over any step (cost_model::check_peak_power).
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
