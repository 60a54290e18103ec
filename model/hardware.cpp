// Loading a hardware file (see hardware.hpp). The binding table below is the single list
// of figures: a key missing from the file, a key the table does not know, or a figure
// without a source is an error.
#include "model/hardware.hpp"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <sstream>
#include <vector>

namespace pnmkv {

namespace {

struct binding {
  const char* key;
  double& (*ref)(hardware_spec&);
  double lo;  // inclusive
  double hi;  // inclusive
};

#define PNMKV_FIG(key, expr, lo, hi) \
  binding { key, [](hardware_spec& s) -> double& { return s.expr; }, lo, hi }

const std::vector<binding>& bindings() {
  static const std::vector<binding> table = {
      PNMKV_FIG("gpu.memory_bytes", gpu.memory_bytes, 1e6, 1e15),
      PNMKV_FIG("gpu.memory_bw_gbps", gpu.memory_bw_gbps, 1, 1e6),
      PNMKV_FIG("gpu.memory_bw_efficiency", gpu.memory_bw_efficiency, 0.01, 1),
      PNMKV_FIG("gpu.weight_stream_efficiency", gpu.weight_stream_efficiency, 0.01, 1),
      PNMKV_FIG("gpu.bf16_tflops", gpu.bf16_tflops, 0.001, 1e6),
      PNMKV_FIG("gpu.compute_efficiency", gpu.compute_efficiency, 0.01, 1),
      PNMKV_FIG("gpu.tdp_w", gpu.tdp_w, 1, 1e5),
      PNMKV_FIG("gpu.reserved_bytes", gpu.reserved_bytes, 0, 1e15),
      PNMKV_FIG("gpu.price_usd", gpu.price_usd, 0, 1e9),
      PNMKV_FIG("gpu.host_server_usd", gpu.host_server_usd, 0, 1e9),
      PNMKV_FIG("cxl.link_bw_gbps_per_direction", cxl.link_bw_gbps_per_direction, 0.001, 1e5),
      PNMKV_FIG("cxl.link_efficiency", cxl.link_efficiency, 0.01, 1),
      PNMKV_FIG("cxl.memory_latency_ns", cxl.memory_latency_ns, 0, 1e6),
      PNMKV_FIG("cxl.switch_hop_ns", cxl.switch_hop_ns, 0, 1e6),
      PNMKV_FIG("cxl.switch_hops", cxl.switch_hops, 0, 16),
      PNMKV_FIG("cxl.link_pj_per_bit", cxl.link_pj_per_bit, 0, 1e3),
      PNMKV_FIG("cxl.host_links", cxl.host_links, 1, 1024),
      PNMKV_FIG("pnm_device.capacity_bytes", pnm.capacity_bytes, 1e6, 1e15),
      PNMKV_FIG("pnm_device.internal_bw_gbps", pnm.internal_bw_gbps, 0.001, 1e6),
      PNMKV_FIG("pnm_device.internal_bw_efficiency", pnm.internal_bw_efficiency, 0.01, 1),
      PNMKV_FIG("pnm_device.compute_tflops", pnm.compute_tflops, 0.001, 1e6),
      PNMKV_FIG("pnm_device.memory_pj_per_bit", pnm.memory_pj_per_bit, 0, 1e3),
      PNMKV_FIG("pnm_device.pj_per_flop", pnm.pj_per_flop, 0, 1e3),
      PNMKV_FIG("pnm_device.int_tops", pnm.int_tops, 0.001, 1e6),
      PNMKV_FIG("pnm_device.pj_per_int_op", pnm.pj_per_int_op, 0, 1e3),
      PNMKV_FIG("pnm_device.power_w", pnm.power_w, 0, 1e5),
      PNMKV_FIG("pnm_device.idle_power_w", pnm.idle_power_w, 0, 1e5),
      PNMKV_FIG("pnm_device.price_usd", pnm.price_usd, 0, 1e9),
      PNMKV_FIG("expander.capacity_bytes", expander.capacity_bytes, 1e6, 1e15),
      PNMKV_FIG("expander.internal_bw_gbps", expander.internal_bw_gbps, 0.001, 1e6),
      PNMKV_FIG("expander.memory_pj_per_bit", expander.memory_pj_per_bit, 0, 1e3),
      PNMKV_FIG("expander.power_w", expander.power_w, 0, 1e5),
      PNMKV_FIG("expander.idle_power_w", expander.idle_power_w, 0, 1e5),
      PNMKV_FIG("expander.price_usd", expander.price_usd, 0, 1e9),
      PNMKV_FIG("energy.hbm_pj_per_bit", energy.hbm_pj_per_bit, 0, 1e3),
      PNMKV_FIG("energy.gpu_pj_per_flop", energy.gpu_pj_per_flop, 0, 1e3),
      PNMKV_FIG("energy.gpu_idle_power_w", energy.gpu_idle_power_w, 0, 1e5),
      PNMKV_FIG("energy.gpu_all_in_pj_per_bit", energy.gpu_all_in_pj_per_bit, 0, 1e3),
      PNMKV_FIG("host.power_w", host.power_w, 0, 1e5),
      PNMKV_FIG("cxl.switch_power_w_per_port", switch_power_w_per_port, 0, 1e4),
      PNMKV_FIG("cost.electricity_usd_per_kwh", cost.electricity_usd_per_kwh, 0, 100),
      PNMKV_FIG("cost.pue", cost.pue, 1, 10),
      PNMKV_FIG("cost.amortisation_years", cost.amortisation_years, 0.1, 50),
  };
  return table;
}
#undef PNMKV_FIG

const char* const textual_keys[] = {"gpu.model"};
// Figures a file may leave out: 0 then, i.e. not charged (docs/HARDWARE.md §6a).
const char* const optional_keys[] = {"host.power_w", "cxl.switch_power_w_per_port"};

bool is_optional(const std::string& key) {
  for (const char* k : optional_keys)
    if (key == k) return true;
  return false;
}

std::string watts(double w) {
  std::ostringstream os;
  os.precision(4);
  os << w << " W";
  return os.str();
}

// A figure above its rating is an error naming both keys and values.
status check_power_ratings(const hardware_spec& hw) {
  auto where = "hardware file '" + hw.file + "': ";
  struct idle_rating {
    const char* idle_key;
    double idle_w;
    const char* rating_key;
    double rating_w;
  } idles[] = {{"energy.gpu_idle_power_w", hw.energy.gpu_idle_power_w, "gpu.tdp_w", hw.gpu.tdp_w},
               {"pnm_device.idle_power_w", hw.pnm.idle_power_w, "pnm_device.power_w", hw.pnm.power_w},
               {"expander.idle_power_w", hw.expander.idle_power_w, "expander.power_w", hw.expander.power_w}};
  for (const auto& i : idles)
    if (i.idle_w > i.rating_w)
      return {errc::invalid_argument, where + i.idle_key + " = " + watts(i.idle_w) +
                                          " is above the rating " + i.rating_key + " = " + watts(i.rating_w)};
  for (const rated_power& r : rated_power_peaks(hw))
    if (r.peak_w > r.rating_w)
      return {errc::invalid_argument,
              where + r.component + " at full rate draws " + watts(r.peak_w) + " (" + r.peak_terms +
                  "), above its rating " + r.rating_key + " = " + watts(r.rating_w) +
                  "; a figure is wrong: change the one with the weaker source (docs/HARDWARE.md §6a)"};
  return {};
}

status parse_figure(const std::string& file, const std::string& key, const YAML::Node& node,
                    bool textual, figure& out) {
  auto where = "hardware file '" + file + "': " + key;
  if (!node.IsMap() || !node["value"])
    return {errc::parse, where + " must be a map {value: ..., source: \"...\", assumed: bool}"};
  for (const auto& kv : node) {
    auto k = kv.first.as<std::string>();
    if (k != "value" && k != "source" && k != "assumed")
      return {errc::invalid_argument,
              where + ": unknown field '" + k + "'; allowed: value, source, assumed"};
  }
  if (!node["source"] || node["source"].as<std::string>().empty())
    return {errc::invalid_argument, where + " has no source; every figure needs one "
                                            "(and assumed: true when no public figure exists)"};
  out.source = node["source"].as<std::string>();
  out.assumed = node["assumed"] ? node["assumed"].as<bool>() : false;
  if (textual) {
    out.text = node["value"].as<std::string>();
    return {};
  }
  try {
    out.value = node["value"].as<double>();
  } catch (const std::exception&) {
    return {errc::parse, where + " value '" + node["value"].as<std::string>() +
                             "' is not a number"};
  }
  if (!std::isfinite(out.value)) return {errc::invalid_argument, where + " is not finite"};
  return {};
}

}  // namespace

// GB/s × 8 bit × pJ/bit = mW: × 1e-3 gives W; TFLOP/s × pJ/flop = W.
std::vector<rated_power> rated_power_peaks(const hardware_spec& hw) {
  auto mem_w = [](double gbps, double pj_per_bit) { return gbps * 8.0 * pj_per_bit * 1e-3; };
  auto term = [](const char* what, double w) { return watts(w) + " " + what; };
  std::vector<rated_power> out;
  {
    const double idle = hw.energy.gpu_idle_power_w, m = mem_w(hw.gpu.memory_bw_gbps, hw.energy.hbm_pj_per_bit),
                 f = hw.gpu.bf16_tflops * hw.energy.gpu_pj_per_flop;
    out.push_back({"gpu", "gpu.tdp_w", hw.gpu.tdp_w, idle + m + f,
                   term("idle", idle) + " + " + term("HBM at gpu.memory_bw_gbps", m) + " + " +
                       term("bf16 at gpu.bf16_tflops", f)});
    // The measured all-in figure covers streaming (the SMs that stream included), not
    // arithmetic at full rate: checked streaming alone.
    const double a = mem_w(hw.gpu.memory_bw_gbps, hw.energy.gpu_all_in_pj_per_bit);
    out.push_back({"gpu (all-in streaming)", "gpu.tdp_w", hw.gpu.tdp_w, idle + a,
                   term("idle", idle) + " + " + term("HBM at gpu.memory_bw_gbps x energy.gpu_all_in_pj_per_bit", a)});
  }
  {
    const double idle = hw.pnm.idle_power_w, m = mem_w(hw.pnm.internal_bw_gbps, hw.pnm.memory_pj_per_bit),
                 f = hw.pnm.compute_tflops * hw.pnm.pj_per_flop,
                 n = hw.pnm.int_tops * hw.pnm.pj_per_int_op;
    // Float and integer work take turns on one compute engine (cost_model::pnm_compute):
    // the larger of the two at full rate.
    out.push_back({"pnm_device", "pnm_device.power_w", hw.pnm.power_w, idle + m + std::max(f, n),
                   term("idle", idle) + " + " + term("LPDDR5X at pnm_device.internal_bw_gbps", m) + " + " +
                       (f >= n ? term("compute at pnm_device.compute_tflops", f)
                               : term("integer ops at pnm_device.int_tops", n))});
  }
  {
    // A passive expander reads only what it sends: every byte leaves over its own x16
    // link, so it sustains at most the link's effective rate.
    const double link_gbps = hw.cxl.link_bw_gbps_per_direction * hw.cxl.link_efficiency;
    const double gbps = std::min(hw.expander.internal_bw_gbps, link_gbps);
    const double idle = hw.expander.idle_power_w, m = mem_w(gbps, hw.expander.memory_pj_per_bit);
    out.push_back({"expander", "expander.power_w", hw.expander.power_w, idle + m,
                   term("idle", idle) + " + " +
                       term(gbps < hw.expander.internal_bw_gbps
                                ? "DDR at the link's effective rate (cxl.link_bw_gbps_per_direction x cxl.link_efficiency)"
                                : "DDR at expander.internal_bw_gbps",
                            m)});
  }
  return out;
}

result<hardware_spec> load_hardware(const std::string& file) {
  hardware_spec hw;
  hw.file = file;
  YAML::Node root;
  try {
    if (!std::filesystem::exists(file))
      return status{errc::io, "hardware file '" + file + "' does not exist"};
    root = YAML::LoadFile(file);
  } catch (const std::exception& e) {
    return status{errc::parse, "hardware file '" + file + "' is not valid YAML: " + e.what()};
  }
  if (!root.IsMap()) return status{errc::parse, "hardware file '" + file + "' must be a map"};

  std::set<std::string> known;
  for (const auto& b : bindings()) known.insert(b.key);
  for (const char* t : textual_keys) known.insert(t);

  try {
    hw.name = root["name"] ? root["name"].as<std::string>()
                           : std::filesystem::path(file).stem().string();
    std::set<std::string> seen;
    for (const auto& section : root) {
      auto sname = section.first.as<std::string>();
      if (sname == "name") continue;
      if (!section.second.IsMap())
        return status{errc::parse, "hardware file '" + file + "': section '" + sname +
                                       "' must be a map of figures"};
      for (const auto& kv : section.second) {
        std::string key = sname + "." + kv.first.as<std::string>();
        if (!known.count(key)) {
          std::string allowed;
          for (const auto& k : known)
            if (k.rfind(sname + ".", 0) == 0) allowed += (allowed.empty() ? "" : ", ") + k;
          if (allowed.empty())
            for (const auto& k : known) allowed += (allowed.empty() ? "" : ", ") + k;
          return status{errc::invalid_argument, "hardware file '" + file + "': unknown key '" +
                                                    key + "'; allowed: " + allowed};
        }
        bool textual = false;
        for (const char* t : textual_keys) textual = textual || key == t;
        figure f;
        auto st = parse_figure(file, key, kv.second, textual, f);
        if (!st) return st;
        if (textual) {
          if (key == "gpu.model") hw.gpu.model = f.text;
        } else {
          for (const auto& b : bindings()) {
            if (key != b.key) continue;
            if (f.value < b.lo || f.value > b.hi) {
              std::ostringstream os;
              os << "hardware file '" << file << "': " << key << " = " << f.value
                 << " is outside the allowed range [" << b.lo << ", " << b.hi << "]";
              return status{errc::invalid_argument, os.str()};
            }
            b.ref(hw) = f.value;
          }
        }
        hw.figures[key] = f;
        seen.insert(key);
      }
    }
    for (const auto& k : known)
      if (!seen.count(k) && !is_optional(k))
        return status{errc::invalid_argument,
                      "hardware file '" + file + "': missing figure '" + k + "'"};
  } catch (const std::exception& e) {
    return status{errc::parse, "hardware file '" + file + "': " + e.what()};
  }
  if (auto st = check_power_ratings(hw); !st) return st;
  return hw;
}

status scale_hardware(hardware_spec& hw, const std::string& scales) {
  constexpr double factor_max = 100;
  std::stringstream in(scales);
  std::string item;
  while (std::getline(in, item, ',')) {
    const auto where = "hardware.scale item '" + item + "'";
    const size_t eq = item.find('=');
    if (eq == std::string::npos)
      return {errc::invalid_argument, where + " must be key=factor, e.g. pnm_device.compute_tflops=0.5"};
    const std::string key = item.substr(0, eq), text = item.substr(eq + 1);
    const binding* b = nullptr;
    for (const auto& c : bindings())
      if (key == c.key) b = &c;
    if (b == nullptr) {
      std::string allowed;
      for (const auto& c : bindings()) allowed += (allowed.empty() ? "" : ", ") + std::string(c.key);
      return {errc::invalid_argument, where + ": unknown figure '" + key + "'; allowed: " + allowed};
    }
    double factor = 0;
    size_t used = 0;
    try {
      factor = std::stod(text, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != text.size() || !std::isfinite(factor) || factor <= 0 || factor > factor_max) {
      std::ostringstream os;
      os << where << ": factor '" << text << "' must be a number in (0, " << factor_max << "]";
      return {errc::invalid_argument, os.str()};
    }
    double& value = b->ref(hw);
    const double scaled = value * factor;
    if (scaled < b->lo || scaled > b->hi) {
      std::ostringstream os;
      os << where << ": " << key << " = " << value << " x " << factor << " = " << scaled
         << " is outside the allowed range [" << b->lo << ", " << b->hi << "]";
      return {errc::invalid_argument, os.str()};
    }
    value = scaled;
    figure& f = hw.figures[key];
    f.value = scaled;
    std::ostringstream note;
    note << " (scaled x" << factor << " by hardware.scale)";
    f.source += note.str();
  }
  return {};
}

}  // namespace pnmkv
