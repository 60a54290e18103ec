// The cost model against hand calculations from the hardware file.
#include <gtest/gtest.h>

#include "model/cost_model.hpp"

namespace pnmkv {
namespace {

const std::string configs = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/";

cost_model make() {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  auto m = load_model_shape(configs + "models/llama-3.1-8b.yaml");
  EXPECT_TRUE(hw && m);
  return cost_model(*hw, *m);
}

TEST(cost_model, pnm_scan_is_bandwidth_bound_by_hand) {
  auto cm = make();
  // 1 GiB at 1100 GB/s × 0.8 = 880 GB/s -> 1073741824 / 880 ns.
  auto c = cm.pnm_compute(1073741824.0, 0);
  EXPECT_NEAR(c.time_ns, 1073741824.0 / 880.0, 1e-6);
  // Energy: 8 Gbit × 4.5 pJ/bit.
  EXPECT_NEAR(c.energy_j, 1073741824.0 * 8 * 4.5e-12, 1e-12);
  // Compute-bound when FLOPs dominate: 8 TFLOP/s -> 8e3 FLOP/ns.
  auto d = cm.pnm_compute(0, 8e6);
  EXPECT_NEAR(d.time_ns, 1000.0, 1e-9);
}

TEST(cost_model, link_transfer_by_hand) {
  auto cm = make();
  // 300 ns latency + 1 hop × 100 ns + bytes / (64 × 0.85) GB/s.
  auto c = cm.link_transfer(1e6);
  EXPECT_NEAR(c.time_ns, 400.0 + 1e6 / (64 * 0.85), 1e-6);
  EXPECT_NEAR(c.energy_j, 2 * 8e6 * 5e-12, 1e-15);
}

TEST(cost_model, gpu_dense_layer_is_weight_bound_at_small_batch) {
  auto cm = make();
  const auto& m = cm.model();
  double per_layer = double(m.hidden) * (32 * 128) * 2 + 2.0 * m.hidden * 8 * 128 +
                     3.0 * m.hidden * m.ffn + 2.0 * m.hidden;
  auto c = cm.gpu_dense_layer(1);
  // Weights stream at gpu.weight_stream_efficiency of peak (measured: experiments/gpu/).
  double weight_ns = per_layer * 2 / (3350 * 0.79);
  EXPECT_GE(c.time_ns, weight_ns);
  EXPECT_LT(c.time_ns, weight_ns * 1.01);
  // Tensor parallel halves the time.
  EXPECT_NEAR(cm.gpu_dense_layer(1, 2).time_ns, c.time_ns / 2, c.time_ns * 1e-9);
  // Time never falls as the batch grows.
  EXPECT_GE(cm.gpu_dense_layer(512).time_ns, c.time_ns);
}

TEST(cost_model, tokens_per_dollar_by_hand) {
  auto cm = make();
  double capital = cm.capital_usd(1, 4, 0);
  EXPECT_DOUBLE_EQ(capital, 30000 + 1250 + 4 * 4000);
  double seconds = 3 * 365.25 * 24 * 3600;
  double dollars = capital + 1000 * 1.3 * seconds / 3.6e6 * 0.10;
  EXPECT_NEAR(cm.tokens_per_dollar(100, 1000, capital), 100 * seconds / dollars, 1e-6);
}

}  // namespace
}  // namespace pnmkv
