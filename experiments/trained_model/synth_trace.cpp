// Writes the synthetic workload (core/workload.hpp, default workload_params, run.seed 1) as
// KV traces in docs/TRACE_FORMAT.md's layout, so experiments/trained_model/analyze_trace.py
// measures the generator with the very code it measures a real model's trace with.
// Synthetic queries depend on the context (a query refers back only to positions before
// it), so there is one trace per context C: K/V of positions 0..C+N-1, queries of the N
// decode steps (query_begin = C).
//   synth_trace <out_dir> <head_dim> <group> <layers> <kv_heads> <steps> <C1,C2,...>
// Build: experiments/trained_model/build_synth_trace.sh (links build/core/libpnmkv_core.a).
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
#include <sys/stat.h>

#include "core/workload.hpp"

namespace {

void write_npy(const std::string& path, const std::vector<float>& data,
               const std::vector<uint64_t>& shape) {
  std::ostringstream h;
  h << "{'descr': '<f4', 'fortran_order': False, 'shape': (";
  for (size_t i = 0; i < shape.size(); ++i) h << shape[i] << (shape.size() == 1 ? "," : (i + 1 < shape.size() ? ", " : ""));
  h << "), }";
  std::string hs = h.str();
  size_t total = 10 + hs.size() + 1;
  hs.append((64 - total % 64) % 64, ' ');
  hs.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  f.write("\x93NUMPY\x01\x00", 8);
  uint16_t n = static_cast<uint16_t>(hs.size());
  f.write(reinterpret_cast<const char*>(&n), 2);
  f.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * 4));
  if (!f) {
    std::fprintf(stderr, "synth_trace: cannot write %s\n", path.c_str());
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 8) {
    std::fprintf(stderr, "usage: synth_trace <out_dir> <head_dim> <group> <layers> <kv_heads> <steps> <C1,C2,...> [field=value ...]\n");
    return 2;
  }
  const std::string out = argv[1];
  const uint32_t hd = std::stoul(argv[2]), group = std::stoul(argv[3]);
  const uint32_t layers = std::stoul(argv[4]), kvh = std::stoul(argv[5]);
  const uint64_t steps = std::stoull(argv[6]);
  std::vector<uint64_t> contexts;
  std::stringstream cs(argv[7]);
  for (std::string t; std::getline(cs, t, ',');) contexts.push_back(std::stoull(t));
  pnmkv::workload_params params;  // the defaults of workload.* (a test checks they agree)
  // Overrides, named as the workload.* keys without the prefix (the fields a fit varies).
  for (int i = 8; i < argc; ++i) {
    const std::string a = argv[i];
    const auto eq = a.find('=');
    const std::string key = a.substr(0, eq);
    const double val = eq == std::string::npos ? 0 : std::stod(a.substr(eq + 1));
    if (key == "sink_tokens") params.sink_tokens = static_cast<uint32_t>(val);
    else if (key == "sink_logit") params.sink_logit = val;
    else if (key == "topic_logit") params.topic_logit = val;
    else if (key == "segment_logit") params.segment_logit = val;
    else if (key == "noise_logit_std") params.noise_logit_std = val;
    else if (key == "salience_spread_fraction") params.salience_spread_fraction = val;
    else if (key == "query_local_weight") params.query_local_weight = val;
    else if (key == "query_referenced_segments") params.query_referenced_segments = static_cast<uint32_t>(val);
    else if (key == "drift_period_steps") params.drift_period_steps = static_cast<uint32_t>(val);
    else if (key == "topic_segment_tokens_mean") params.topic_segment_tokens_mean = static_cast<uint32_t>(val);
    else if (key == "topic_segment_tokens_spread") params.topic_segment_tokens_spread = static_cast<uint32_t>(val);
    else if (key == "topic_count") params.topic_count = static_cast<uint32_t>(val);
    else if (key == "needle_rate_per_mtokens") params.needle_rate_per_mtokens = val;
    else {
      std::fprintf(stderr, "synth_trace: unknown field '%s'\n", key.c_str());
      return 2;
    }
  }
  const uint64_t seed = 1;        // run.seed default
  auto w = pnmkv::synthetic_workload::create(params, seed, hd, group);
  if (!w) {
    std::fprintf(stderr, "synth_trace: %s\n", w.error().message().c_str());
    return 1;
  }
  mkdir(out.c_str(), 0755);
  for (uint64_t C : contexts) {
    const std::string dir = out + "/c" + std::to_string(C);
    mkdir(dir.c_str(), 0755);
    const uint64_t P = C + steps;
    std::string layer_list, head_list;
    for (uint32_t L = 0; L < layers; ++L) {
      layer_list += (L ? "," : "") + std::to_string(L);
      for (uint32_t H = 0; H < kvh; ++H) {
        std::vector<float> k(P * hd), v(P * hd), q(steps * group * hd);
        w->keys(0, L, H, 0, P, k.data());
        w->values(0, L, H, 0, P, v.data());
        for (uint64_t s = 0; s < steps; ++s) w->queries(0, L, H, s, C, q.data() + s * group * hd);
        const std::string pre = dir + "/layer." + std::to_string(L) + ".kv." + std::to_string(H) + ".";
        write_npy(pre + "k.npy", k, {P, hd});
        write_npy(pre + "v.npy", v, {P, hd});
        write_npy(pre + "q.npy", q, {steps, group, hd});
      }
    }
    for (uint32_t H = 0; H < kvh; ++H) head_list += (H ? "," : "") + std::to_string(H);
    std::ofstream m(dir + "/manifest.json");
    m << "{\"format\": \"pnmkv-kv-trace\", \"version\": 1, \"storage\": \"npy\", \"files\": [], "
      << "\"dtype\": \"float32\", \"model\": {\"name\": \"synthetic\", \"layers\": " << layers
      << ", \"q_heads\": " << kvh * group << ", \"kv_heads\": " << kvh << ", \"head_dim\": " << hd
      << "}, \"gqa\": \"contiguous\", \"rope_applied\": true, \"context_tokens\": " << C
      << ", \"decode_steps\": " << steps << ", \"positions\": " << P << ", \"query_begin\": " << C
      << ", \"layers\": [" << layer_list << "], \"kv_heads\": [" << head_list << "], "
      << "\"source\": \"synthetic workload, default workload_params, seed 1, request 0\"}\n";
    std::printf("%s: %llu positions\n", dir.c_str(), static_cast<unsigned long long>(P));
  }
  return 0;
}
