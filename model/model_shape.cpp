#include "model/model_shape.hpp"

#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>

namespace pnmkv {

double model_shape::params_from_shape() const {
  const double h = hidden, qd = double(q_heads) * head_dim, kvd = double(kv_heads) * head_dim;
  const double attn = h * qd + 2.0 * h * kvd + qd * h;  // q, k, v, o projections
  const double mlp = 3.0 * h * ffn;                     // gate, up, down (SwiGLU)
  const double norms = 2.0 * h;
  const double embed = double(vocab) * h * (tied_embeddings ? 1.0 : 2.0);
  return layers * (attn + mlp + norms) + embed + h;
}

double model_shape::dense_flops_per_token() const {
  const double h = hidden, qd = double(q_heads) * head_dim, kvd = double(kv_heads) * head_dim;
  const double per_layer = h * qd + 2.0 * h * kvd + qd * h + 3.0 * h * ffn;
  return 2.0 * (layers * per_layer + double(vocab) * h);
}

status validate(const model_shape& m) {
  auto range = [&](const char* key, double v, double lo, double hi) -> status {
    if (v < lo || v > hi)
      return {errc::invalid_argument, "model file '" + m.file + "': " + key + " = " +
                                          std::to_string(static_cast<long long>(v)) +
                                          " is outside the allowed range [" +
                                          std::to_string(static_cast<long long>(lo)) + ", " +
                                          std::to_string(static_cast<long long>(hi)) + "]"};
    return {};
  };
  for (auto st : {range("layers", m.layers, 1, 1024), range("hidden", m.hidden, 16, 1 << 17),
                  range("q_heads", m.q_heads, 1, 1024), range("kv_heads", m.kv_heads, 1, 1024),
                  range("head_dim", m.head_dim, 16, 512), range("ffn", m.ffn, 1, 1 << 20),
                  range("vocab", m.vocab, 1, 1 << 24)}) {
    if (!st) return st;
  }
  if (m.head_dim % 16 != 0)
    return {errc::invalid_argument,
            "model file '" + m.file + "': head_dim must be a multiple of 16"};
  if (m.q_heads % m.kv_heads != 0)
    return {errc::invalid_argument, "model file '" + m.file +
                                        "': q_heads must be a multiple of kv_heads (GQA)"};
  return {};
}

result<model_shape> load_model_shape(const std::string& file) {
  model_shape m;
  m.file = file;
  try {
    if (!std::filesystem::exists(file))
      return status{errc::io, "model file '" + file + "' does not exist"};
    YAML::Node n = YAML::LoadFile(file);
    if (!n.IsMap()) return status{errc::parse, "model file '" + file + "' must be a map"};
    static const char* known[] = {"name", "source", "layers", "hidden", "q_heads", "kv_heads",
                                  "head_dim", "ffn", "vocab", "tied_embeddings", "params"};
    for (const auto& kv : n) {
      std::string k = kv.first.as<std::string>();
      bool ok = false;
      for (const char* x : known) ok = ok || k == x;
      if (!ok) {
        std::string allowed;
        for (const char* x : known) allowed += (allowed.empty() ? "" : ", ") + std::string(x);
        return status{errc::invalid_argument,
                      "model file '" + file + "': unknown key '" + k + "'; allowed: " + allowed};
      }
    }
    auto need = [&](const char* key) -> YAML::Node {
      if (!n[key]) throw std::runtime_error(std::string("missing required key '") + key + "'");
      return n[key];
    };
    auto u32 = [&](const char* key) -> uint32_t {
      int64_t v = need(key).as<int64_t>();
      if (v < 0 || v > int64_t(UINT32_MAX))
        throw std::runtime_error(std::string(key) + " must be a non-negative integer");
      return static_cast<uint32_t>(v);
    };
    m.name = n["name"] ? n["name"].as<std::string>() : std::filesystem::path(file).stem().string();
    m.source = n["source"] ? n["source"].as<std::string>() : "";
    m.layers = u32("layers");
    m.hidden = u32("hidden");
    m.q_heads = u32("q_heads");
    m.kv_heads = u32("kv_heads");
    m.head_dim = u32("head_dim");
    m.ffn = u32("ffn");
    m.vocab = u32("vocab");
    m.tied_embeddings = n["tied_embeddings"] ? n["tied_embeddings"].as<bool>() : false;
    m.params_stated = n["params"] ? n["params"].as<double>() : 0.0;
  } catch (const std::exception& e) {
    return status{errc::parse, "model file '" + file + "': " + e.what()};
  }
  auto st = validate(m);
  if (!st) return st;
  return m;
}

}  // namespace pnmkv
