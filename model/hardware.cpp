// Loading a hardware file (see hardware.hpp). The binding table below is the single list
// of figures: a key missing from the file, a key the table does not know, or a figure
// without a source is an error.
#include "model/hardware.hpp"

#include <yaml-cpp/yaml.h>

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
      PNMKV_FIG("cost.electricity_usd_per_kwh", cost.electricity_usd_per_kwh, 0, 100),
      PNMKV_FIG("cost.pue", cost.pue, 1, 10),
      PNMKV_FIG("cost.amortisation_years", cost.amortisation_years, 0.1, 50),
  };
  return table;
}
#undef PNMKV_FIG

const char* const textual_keys[] = {"gpu.model"};

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
      if (!seen.count(k))
        return status{errc::invalid_argument,
                      "hardware file '" + file + "': missing figure '" + k + "'"};
  } catch (const std::exception& e) {
    return status{errc::parse, "hardware file '" + file + "': " + e.what()};
  }
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
