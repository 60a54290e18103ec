#include "schedulers/recovery_cost.hpp"

#include "core/check.hpp"

namespace pnmkv {

namespace {
op_cost device_memory(const cost_model& c, double bytes, bool passive_expander) {
  return passive_expander ? c.expander_read(bytes) : c.pnm_compute(bytes, 0);
}
}  // namespace

op_cost copy_chunk_cost(const cost_model& c, double kv_bytes, bool passive_expander) {
  PNMKV_CHECK_GE(kv_bytes, 0.0);
  op_cost out = device_memory(c, kv_bytes, passive_expander);  // read at the source
  out += c.link_transfer(kv_bytes);                            // source -> host
  out += rebuild_write_cost(c, kv_bytes, passive_expander);    // host -> target, stored
  return out;
}

op_cost recompute_chunk_cost(const cost_model& c, uint64_t tokens, uint64_t prefix_tokens) {
  if (tokens == 0) return {};
  const model_shape& m = c.model();
  PNMKV_CHECK_LE(tokens, uint64_t(UINT32_MAX));
  op_cost out;
  const op_cost dense = c.gpu_dense_layer(static_cast<uint32_t>(tokens));
  // Causal: token i of the chunk attends prefix_tokens + i + 1 tokens.
  const double attended = double(tokens) * double(prefix_tokens) + double(tokens) * double(tokens + 1) / 2.0;
  const double kv_read = c.kv_bytes(double(prefix_tokens + tokens)) * m.kv_heads;
  const op_cost attn = c.gpu_attention(kv_read, attended * 4.0 * m.head_dim * m.q_heads);
  for (uint32_t l = 0; l < m.layers; ++l) {
    out += dense;
    out += attn;
  }
  return out;
}

op_cost rebuild_write_cost(const cost_model& c, double kv_bytes, bool passive_expander) {
  PNMKV_CHECK_GE(kv_bytes, 0.0);
  op_cost out = c.link_transfer(kv_bytes);
  out += device_memory(c, kv_bytes, passive_expander);
  return out;
}

}  // namespace pnmkv
