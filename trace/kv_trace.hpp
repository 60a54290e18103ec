// A KV trace of a real model (docs/TRACE_FORMAT.md) opened as a workload: the manifest is
// read and checked, every tensor it promises is found, its dtype and shape checked and its
// values checked finite, then keys, values and queries are served from the mapped files
// (deflated .npz members are inflated into memory, within a limit). Like the synthetic
// workload, every call is a pure function of its coordinates, so any page can be read
// again (verification, recompute after loss) for as long as the object lives.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "core/status.hpp"
#include "core/workload.hpp"
#include "trace/formats.hpp"

namespace pnmkv::trace {

inline constexpr uint64_t manifest_bytes_max = 1u << 20;
inline constexpr uint32_t listed_max = 4096;           // layers, KV heads, files
inline constexpr uint64_t inflated_bytes_max = 4ull << 30;

struct trace_manifest {
  std::string storage;  // npy | npz | safetensors
  std::vector<std::string> files;
  dtype type = dtype::f32;
  std::string model_name;
  uint32_t model_layers = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
  double softmax_scale = 0;  // resolved: 1/sqrt(head_dim) when absent
  uint64_t context_tokens = 0, decode_steps = 0, positions = 0, query_begin = 0;
  std::vector<uint32_t> layers, heads;
  std::vector<int64_t> tokens;  // empty when absent
  std::string source;
  uint32_t group() const { return q_heads / kv_heads; }
};

// Parses and checks manifest.json text; errors name `file` and the key.
result<trace_manifest> parse_manifest(const std::string& text, const std::string& file);

// The model the trace is opened for (the run's model file).
struct trace_model {
  std::string file;  // for messages
  uint32_t layers = 0, q_heads = 0, kv_heads = 0, head_dim = 0;
};

class mapped_file;

class kv_trace final : public kv_workload {
 public:
  // Opens <dir>/manifest.json and the tensors; checks them against `model` (q_heads,
  // kv_heads, layers equal; head_dim equal or the trace's rounded up to 16, zero-padded).
  static result<std::unique_ptr<kv_trace>> open(const std::string& dir, const trace_model& model);
  ~kv_trace() override;

  const trace_manifest& manifest() const { return m_; }
  const std::string& dir() const { return dir_; }
  bool has(uint32_t layer, uint32_t kv_head) const;
  // Bytes mapped and inflated (what the trace holds of memory or page cache).
  uint64_t mapped_bytes() const { return mapped_bytes_; }
  uint64_t inflated_bytes() const { return inflated_bytes_; }

  // A run at `context` with `steps` decode steps fits the trace; otherwise an error naming
  // `what` (e.g. "workload.context_tokens = 1024 with run.steps = 8") and what the trace has.
  status check_span(uint64_t context, uint64_t steps, const std::string& what) const;
  // Every (layer, kv_head) of the lists is in the trace; otherwise an error naming the
  // first missing one, `what` needs it, and what the trace holds.
  status check_heads(const std::vector<uint32_t>& layers, const std::vector<uint32_t>& heads,
                     const std::string& what) const;

  uint32_t head_dim() const override { return head_dim_; }
  uint32_t gqa_group() const override { return m_.group(); }
  using kv_workload::keys;
  using kv_workload::values;
  // `request` is ignored: every request reads the one sequence of the trace.
  void keys(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
            uint64_t n_tokens, bf16* out) const override;
  void values(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
              uint64_t n_tokens, bf16* out) const override;
  void queries(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t step,
               uint64_t context_tokens, float* out) const override;

 private:
  kv_trace() = default;
  struct tensor {
    const uint8_t* data = nullptr;
    std::vector<uint64_t> shape;
    std::string where;  // "file 'x', key 'y'"
  };
  struct head_tensors {
    tensor k, v, q;
  };
  status index_files();
  status add_tensor(const std::string& name, const uint8_t* data, const std::string& descr_or_dtype,
                    bool npy, bool fortran, const std::vector<uint64_t>& shape, uint64_t bytes,
                    const std::string& where);
  status check_tensors();
  void rows(const tensor& t, uint64_t row_begin, uint64_t n_rows, bf16* out) const;
  const head_tensors& at(uint32_t layer, uint32_t kv_head) const;

  std::string dir_;
  trace_manifest m_;
  uint32_t head_dim_ = 0;  // storage head_dim (the model file's), >= the trace's
  float query_scale_ = 1;  // softmax_scale · sqrt(head_dim_): attention at 1/sqrt(head_dim_)
  std::vector<std::unique_ptr<mapped_file>> files_;
  std::vector<std::vector<uint8_t>> inflated_;
  std::map<std::string, tensor> by_name_;
  std::map<std::pair<uint32_t, uint32_t>, head_tensors> heads_;
  uint64_t mapped_bytes_ = 0, inflated_bytes_ = 0;
};

}  // namespace pnmkv::trace
