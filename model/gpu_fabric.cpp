// Loading the GPU fabric file and pricing collectives on it (see gpu_fabric.hpp).
#include "model/gpu_fabric.hpp"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>

namespace pnmkv {

op_cost gpu_fabric::all_reduce(double bytes, uint32_t gpus) const {
  if (gpus <= 1 || bytes <= 0) return {};
  const double g = gpus;
  const double per_gpu = 2.0 * (g - 1.0) / g * bytes;
  return {latency_ns + per_gpu / (bw_gbps_per_direction * efficiency),
          per_gpu * g * 8.0 * pj_per_bit * 1e-12};
}

op_cost gpu_fabric::send(double bytes) const {
  if (bytes <= 0) return {};
  return {latency_ns + bytes / (bw_gbps_per_direction * efficiency), bytes * 8.0 * pj_per_bit * 1e-12};
}

result<gpu_fabric> load_gpu_fabric(const std::string& file) {
  gpu_fabric f;
  f.file = file;
  const std::string where = "GPU fabric file '" + file + "'";
  YAML::Node root;
  try {
    if (!std::filesystem::exists(file)) return status{errc::io, where + " does not exist"};
    root = YAML::LoadFile(file);
  } catch (const std::exception& e) {
    return status{errc::parse, where + " is not valid YAML: " + e.what()};
  }
  if (!root.IsMap() || !root["nvlink"] || !root["nvlink"].IsMap())
    return status{errc::parse, where + " must be a map with a section 'nvlink'"};
  f.name = root["name"] ? root["name"].as<std::string>() : std::filesystem::path(file).stem().string();
  struct binding {
    const char* key;
    double* value;
    std::string* source;
    double lo, hi;
  };
  binding table[] = {
      {"bw_gbps_per_direction", &f.bw_gbps_per_direction, &f.bw_source, 0.001, 1e6},
      {"efficiency", &f.efficiency, &f.efficiency_source, 0.01, 1},
      {"latency_ns", &f.latency_ns, &f.latency_source, 0, 1e9},
      {"pj_per_bit", &f.pj_per_bit, &f.pj_source, 0, 1e3},
  };
  for (const auto& section : root) {
    const auto name = section.first.as<std::string>();
    if (name != "name" && name != "nvlink")
      return status{errc::invalid_argument, where + ": unknown section '" + name + "'; allowed: name, nvlink"};
  }
  try {
    for (const auto& kv : root["nvlink"]) {
      const auto key = kv.first.as<std::string>();
      bool known = false;
      for (const auto& b : table) known = known || key == b.key;
      if (!known)
        return status{errc::invalid_argument,
                      where + ": unknown key 'nvlink." + key +
                          "'; allowed: bw_gbps_per_direction, efficiency, latency_ns, pj_per_bit"};
    }
    for (auto& b : table) {
      const YAML::Node n = root["nvlink"][b.key];
      const std::string k = std::string("nvlink.") + b.key;
      if (!n || !n.IsMap() || !n["value"])
        return status{errc::invalid_argument, where + ": " + k + " is missing (a map {value, source, assumed})"};
      if (!n["source"] || n["source"].as<std::string>().empty())
        return status{errc::invalid_argument, where + ": " + k + " has no source"};
      const double v = n["value"].as<double>();
      if (!std::isfinite(v) || v < b.lo || v > b.hi)
        return status{errc::invalid_argument, where + ": " + k + " = " + std::to_string(v) +
                                                  " is outside [" + std::to_string(b.lo) + ", " +
                                                  std::to_string(b.hi) + "]"};
      *b.value = v;
      *b.source = n["source"].as<std::string>() +
                  (n["assumed"] && n["assumed"].as<bool>() ? " (assumed)" : "");
    }
  } catch (const std::exception& e) {
    return status{errc::parse, where + ": " + e.what()};
  }
  return f;
}

}  // namespace pnmkv
