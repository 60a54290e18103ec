// Shape of a GQA decoder (Llama, Mistral, Qwen, ...) read from a YAML model file, and the
// quantities that follow from it: KV bytes per token, weight bytes, FLOPs per token.
#pragma once

#include <cstdint>
#include <string>

#include "core/status.hpp"

namespace pnmkv {

struct model_shape {
  std::string name;
  std::string source;       // where the figures come from
  std::string file;         // the file it was read from
  uint32_t layers = 0;
  uint32_t hidden = 0;
  uint32_t q_heads = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t ffn = 0;
  uint32_t vocab = 0;
  bool tied_embeddings = false;
  double params_stated = 0;  // as published (0 when the file gives none)

  uint32_t gqa_group() const { return q_heads / kv_heads; }
  // K and V of one token over every layer, bf16 (2 bytes per element).
  uint64_t kv_bytes_per_token() const {
    return 2ull * layers * kv_heads * head_dim * 2ull;
  }
  // K and V of one token for one (layer, KV head).
  uint64_t kv_bytes_per_token_per_head() const { return 2ull * head_dim * 2ull; }
  // Parameters computed from the shape (attention, MLP, norms, embeddings).
  double params_from_shape() const;
  // Dense FLOPs per generated token excluding attention over the context (2 per MAC).
  double dense_flops_per_token() const;
};

// Reads and validates a model file; errors name the file, the key and the allowed range.
result<model_shape> load_model_shape(const std::string& file);
status validate(const model_shape& m);

}  // namespace pnmkv
