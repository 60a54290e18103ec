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

// All-in energy (docs/HARDWARE.md §6a): GPU HBM bytes at 18.8 pJ/bit instead of 3.75,
// host server 575 W per GPU, CXL switch 3 W per x16 port in use.
TEST(cost_model, all_in_energy_by_hand) {
  auto cm = make();
  const op_cost ga = cm.gpu_attention(1e6, 0);
  EXPECT_DOUBLE_EQ(ga.hbm_bytes, 1e6);
  EXPECT_NEAR(ga.energy_j, 1e6 * 8 * 3.75e-12, 1e-15);                // 3.0e-5 J
  EXPECT_NEAR(cm.gpu_all_in_extra_j(ga.hbm_bytes), 1.204e-4, 1e-15);   // 8e6 bit x 15.05 pJ
  EXPECT_NEAR(ga.energy_j + cm.gpu_all_in_extra_j(ga.hbm_bytes), 1e6 * 8 * 18.8e-12, 1e-15);
  // 8B dense layer, batch 1, tp 2: both GPUs' bytes. Params 218,112,000 (bf16: 436,224,000
  // bytes) + activations (4096 x 6 + 14336 x 4) x 2 = 163,840 bytes.
  EXPECT_DOUBLE_EQ(cm.gpu_dense_layer(1, 2).hbm_bytes, 436387840.0);
  EXPECT_DOUBLE_EQ(cm.gpu_lm_head(1, 1).hbm_bytes, 128256.0 * 4096 * 2);
  EXPECT_DOUBLE_EQ(cm.gpu_hbm_write(5e5).hbm_bytes, 5e5);
  EXPECT_DOUBLE_EQ(cm.pnm_compute(1e6, 1e6).hbm_bytes, 0.0);
  // 1 GPU and 4 devices: 575 + 3 x (1 host link + 4 devices) = 590 W; 16 GPUs, 64 devices:
  // 9200 + 3 x 80 = 9440 W.
  EXPECT_DOUBLE_EQ(cm.host_switch_power_w(1, 4), 590.0);
  EXPECT_DOUBLE_EQ(cm.host_switch_power_w(16, 64), 9440.0);
}

// Power over a step (docs/HARDWARE.md §6a), by hand: 1 ms step, 0.2 J of GPU work on one
// GPU moving 1e9 HBM bytes, the busiest device spending 0.03 J.
TEST(cost_model, power_over_a_step_by_hand) {
  auto cm = make();
  const step_power_w p = cm.power_over_step(1e6, 0.2, 1e9, 1, 0.03, false);
  EXPECT_NEAR(p.gpu, 79 + 200, 1e-9);
  EXPECT_NEAR(p.gpu_all_in, 279 + 120.4, 1e-9);  // 8e9 bit x 15.05 pJ = 0.1204 J in 1 ms
  EXPECT_NEAR(p.device, 20 + 30, 1e-9);          // PNM idle + 0.03 J in 1 ms
  const step_power_w e = cm.power_over_step(1e6, 0.2, 1e9, 2, 0.01, true);
  EXPECT_NEAR(e.gpu, 79 + 100, 1e-9);            // each of 2 GPUs takes half
  EXPECT_NEAR(e.device, 10 + 10, 1e-9);          // expander idle + 0.01 J in 1 ms
  // A modelled peak above a rating is an error naming the part and the rating key.
  auto over = cm.check_peak_power({701, 0, 0}, false);
  ASSERT_FALSE(over);
  EXPECT_NE(over.message().find("gpu: modelled power 701.0 W"), std::string::npos) << over.message();
  EXPECT_NE(over.message().find("gpu.tdp_w = 700.0 W"), std::string::npos) << over.message();
  auto dev = cm.check_peak_power({300, 0, 76}, false);
  ASSERT_FALSE(dev);
  EXPECT_NE(dev.message().find("pnm_device.power_w = 75.0 W"), std::string::npos) << dev.message();
  auto exp = cm.check_peak_power({300, 0, 26}, true);
  ASSERT_FALSE(exp);
  EXPECT_NE(exp.message().find("expander.power_w = 25.0 W"), std::string::npos) << exp.message();
  // The all-in GPU row is reported, not checked.
  EXPECT_TRUE(cm.check_peak_power({700, 900, 75}, false));
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
