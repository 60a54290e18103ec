// `pnmkv bench gpu-model --measured FILE`: the cost model's GPU charges next to what a real
// GPU measured for the same work (bench/gpu/dense_layer_bench.cu, run on the device
// machine): one dense layer of decode or chunked prefill per model shape and batch, the LM
// head, HBM copy bandwidth, and board power idle and while streaming weights. Prints the
// ratio model / measured for each point, and with --json FILE writes them.
//
// The hardware file is not changed by this command: a figure changes only with its source
// (docs/HARDWARE.md), and the table is the evidence for or against it.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <map>
#include <string>

#include "apps/commands.hpp"
#include "model/cost_model.hpp"
#include "model/hardware.hpp"
#include "model/model_shape.hpp"

namespace pnmkv::apps {

namespace {

struct gpu_model_options {
  std::string measured;
  std::string hardware = "cluster_configs/hardware/h100-cxl-pnm.yaml";
  std::string models_dir = "cluster_configs/models";
  std::string json_file;
};

// "llama-3.1-405b/tp8" -> the model file "llama-3.1-405b.yaml".
std::string model_file_of(const std::string& dir, const std::string& name) {
  return dir + "/" + name.substr(0, name.find('/')) + ".yaml";
}

int run_gpu_model(const gpu_model_options& o) {
  std::ifstream in(o.measured);
  if (!in) {
    std::fprintf(stderr, "pnmkv bench gpu-model: cannot read --measured '%s'\n", o.measured.c_str());
    return 2;
  }
  nlohmann::json m = nlohmann::json::parse(in, nullptr, false);
  if (m.is_discarded() || m.value("format", "") != "pnmkv-gpu-measure/1" || !m.contains("layers")) {
    std::fprintf(stderr,
                 "pnmkv bench gpu-model: '%s' is not the output of bench/gpu/dense_layer_bench "
                 "(format pnmkv-gpu-measure/1 with \"layers\")\n",
                 o.measured.c_str());
    return 2;
  }
  auto hw = load_hardware(o.hardware);
  if (!hw) {
    std::fprintf(stderr, "pnmkv bench gpu-model: %s\n", hw.error().to_string().c_str());
    return 2;
  }
  nlohmann::ordered_json out;
  out["measured_file"] = o.measured;
  out["device"] = m.value("device", "");
  out["hardware_file"] = o.hardware;
  std::printf("GPU charges of the cost model (%s) vs measured on %s\n", o.hardware.c_str(),
              m.value("device", std::string("?")).c_str());
  const auto& g = hw->gpu;
  const double hbm_model = g.memory_bw_gbps * g.memory_bw_efficiency;
  const double hbm_meas = m.value("hbm_copy_gbps", 0.0);
  std::printf("  HBM copy bandwidth: model %.0f GB/s, measured %.0f GB/s (model/measured %.2f)\n", hbm_model,
              hbm_meas, hbm_meas > 0 ? hbm_model / hbm_meas : NAN);
  out["hbm_gbps"] = {{"model", hbm_model}, {"measured", hbm_meas}};

  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  std::map<std::string, cost_model> models;
  for (const auto& L : m["layers"]) {
    const std::string name = L.value("model", "");
    const uint32_t tp = L.value("tp", 1u);
    auto shape = load_model_shape(model_file_of(o.models_dir, name));
    if (!shape) {
      std::fprintf(stderr, "pnmkv bench gpu-model: %s\n", shape.error().to_string().c_str());
      return 2;
    }
    cost_model cm(*hw, *shape);
    std::printf("  dense layer, %s (tp %u): batch, measured ms, model ms, model/measured\n", name.c_str(), tp);
    nlohmann::ordered_json pts = nlohmann::ordered_json::array();
    for (const auto& p : L["points"]) {
      const uint32_t b = p.value("batch", 1u);
      const double meas = p.value("ms", 0.0);
      const double model = cm.gpu_dense_layer(b, tp).time_ns / 1e6;
      std::printf("    %6u %10.4f %10.4f %8.2f\n", b, meas, model, meas > 0 ? model / meas : NAN);
      pts.push_back({{"batch", b}, {"measured_ms", meas}, {"model_ms", model}, {"ratio", meas > 0 ? model / meas : 0}});
    }
    layers.push_back({{"model", name}, {"tp", tp}, {"points", pts}});
    models.emplace(name, cm);
  }
  out["dense_layer"] = layers;
  nlohmann::ordered_json heads = nlohmann::ordered_json::array();
  if (m.contains("lm_head"))
    for (const auto& L : m["lm_head"]) {
      const std::string name = L.value("model", "");
      const uint32_t tp = L.value("tp", 1u);
      auto it = models.find(name);
      if (it == models.end()) continue;
      std::printf("  LM head, %s (tp %u): batch, measured ms, model ms, model/measured\n", name.c_str(), tp);
      nlohmann::ordered_json pts = nlohmann::ordered_json::array();
      for (const auto& p : L["points"]) {
        const uint32_t b = p.value("batch", 1u);
        const double meas = p.value("ms", 0.0);
        const double model = it->second.gpu_lm_head(b, tp).time_ns / 1e6;
        std::printf("    %6u %10.4f %10.4f %8.2f\n", b, meas, model, meas > 0 ? model / meas : NAN);
        pts.push_back({{"batch", b}, {"measured_ms", meas}, {"model_ms", model}, {"ratio", meas > 0 ? model / meas : 0}});
      }
      heads.push_back({{"model", name}, {"tp", tp}, {"points", pts}});
    }
  out["lm_head"] = heads;
  if (m.contains("power")) {
    const auto& p = m["power"];
    const double idle = p.value("idle_w", -1.0), stream = p.value("streaming_w", -1.0),
                 gbps = p.value("streaming_gbps", 0.0);
    // Energy per bit streamed, board power above idle: an upper bound on the HBM access
    // energy (SMs, caches and the on-board regulators draw part of it).
    const double pj_bit = stream > 0 && idle > 0 && gbps > 0 ? (stream - idle) / (gbps * 8e9) * 1e12 : NAN;
    std::printf("  board power idle: measured %.0f W, model gpu_idle_power_w %.0f W\n", idle,
                hw->energy.gpu_idle_power_w);
    std::printf("  streaming weights at %.0f GB/s: %.0f W; (W - idle) per bit %.2f pJ, model hbm_pj_per_bit %.2f "
                "(+ SMs at batch 1)\n",
                gbps, stream, pj_bit, hw->energy.hbm_pj_per_bit);
    out["power"] = {{"idle_w", idle},
                    {"model_idle_w", hw->energy.gpu_idle_power_w},
                    {"streaming_w", stream},
                    {"streaming_gbps", gbps},
                    {"streaming_pj_per_bit_above_idle", std::isfinite(pj_bit) ? nlohmann::ordered_json(pj_bit) : nullptr},
                    {"model_hbm_pj_per_bit", hw->energy.hbm_pj_per_bit}};
  }
  if (!o.json_file.empty()) {
    std::ofstream f(o.json_file);
    f << out.dump(2) << "\n";
    if (!f) {
      std::fprintf(stderr, "pnmkv bench gpu-model: cannot write --json '%s'\n", o.json_file.c_str());
      return 1;
    }
  }
  return 0;
}

}  // namespace

void register_bench_gpu_model(CLI::App& bench) {
  auto o = std::make_shared<gpu_model_options>();
  auto* cmd = bench.add_subcommand(
      "gpu-model", "The cost model's GPU charges (dense layer, LM head, HBM, power) next to a real GPU's "
                   "measurements from bench/gpu/dense_layer_bench.cu");
  cmd->add_option("--measured", o->measured, "JSON written by dense_layer_bench on a GPU")->required();
  cmd->add_option("--hardware", o->hardware, "Hardware file the model charges from");
  cmd->add_option("--models-dir", o->models_dir, "Folder of the model shape files");
  cmd->add_option("--json", o->json_file, "Also write the comparison as JSON");
  cmd->callback([o] {
    const int rc = run_gpu_model(*o);
    if (rc != 0) throw CLI::RuntimeError(rc);
  });
}

}  // namespace pnmkv::apps
