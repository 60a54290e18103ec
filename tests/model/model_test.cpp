// Model shapes and hardware files: the published figures follow from the files, and bad
// files are errors naming file, key and allowed values.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "model/hardware.hpp"
#include "model/model_shape.hpp"
#include "model/selection_budget.hpp"

namespace pnmkv {
namespace {

const std::string configs = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/";

std::string write_temp(const std::string& name, const std::string& text) {
  auto dir = std::filesystem::temp_directory_path() / "pnmkv_model_test";
  std::filesystem::create_directories(dir);
  auto p = dir / name;
  std::ofstream(p) << text;
  return p.string();
}

TEST(model_shape, kv_bytes_per_token_match_hardware_md) {
  // docs/HARDWARE.md: 128 KiB (8B), 320 KiB (70B), 504 KiB (405B) per token in bf16.
  struct {
    const char* file;
    uint64_t kib;
    double params;
  } cases[] = {{"llama-3.1-8b.yaml", 128, 8.0e9},
               {"llama-3.1-70b.yaml", 320, 70.6e9},
               {"llama-3.1-405b.yaml", 504, 405.9e9}};
  for (const auto& c : cases) {
    auto m = load_model_shape(configs + "models/" + c.file);
    ASSERT_TRUE(m) << m.error().to_string();
    EXPECT_EQ(m->kv_bytes_per_token(), c.kib * 1024);
    // 1M tokens: 128 / 320 / 504 GiB.
    EXPECT_EQ(m->kv_bytes_per_token() * (1ull << 20), c.kib * (1ull << 30));
    // Parameters computed from the shape agree with the published count within 1.5%.
    EXPECT_NEAR(m->params_from_shape() / c.params, 1.0, 0.015) << c.file;
    EXPECT_EQ(m->gqa_group(), m->q_heads / m->kv_heads);
  }
}

TEST(model_shape, any_gqa_decoder_from_its_shape) {
  auto f = write_temp("mistral.yaml",
                      "name: Mistral-7B\nlayers: 32\nhidden: 4096\nq_heads: 32\nkv_heads: 8\n"
                      "head_dim: 128\nffn: 14336\nvocab: 32000\n");
  auto m = load_model_shape(f);
  ASSERT_TRUE(m) << m.error().to_string();
  EXPECT_NEAR(m->params_from_shape(), 7.24e9, 0.05e9);
}

TEST(model_shape, bad_files_are_clear_errors) {
  struct {
    const char* text;
    const char* expect;
  } cases[] = {
      {"layers: 32\n", "missing required key 'hidden'"},
      {"layers: 0\nhidden: 64\nq_heads: 4\nkv_heads: 2\nhead_dim: 64\nffn: 1\nvocab: 1\n",
       "layers = 0"},
      {"layers: 1\nhidden: 64\nq_heads: 6\nkv_heads: 4\nhead_dim: 64\nffn: 1\nvocab: 1\n",
       "multiple of kv_heads"},
      {"layers: 1\nhidden: 64\nq_heads: 4\nkv_heads: 4\nhead_dim: 60\nffn: 1\nvocab: 1\n",
       "multiple of 16"},
      {"layerz: 1\n", "unknown key 'layerz'"},
      {"[1, 2]", "must be a map"},
  };
  for (const auto& c : cases) {
    auto m = load_model_shape(write_temp("bad_model.yaml", c.text));
    ASSERT_FALSE(m) << c.text;
    EXPECT_NE(m.error().message().find(c.expect), std::string::npos) << m.error().message();
  }
}

TEST(hardware, default_file_loads_with_a_source_for_every_figure) {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  ASSERT_TRUE(hw) << hw.error().to_string();
  EXPECT_DOUBLE_EQ(hw->gpu.memory_bw_gbps, 3350);
  EXPECT_DOUBLE_EQ(hw->pnm.capacity_bytes, 512e9);
  EXPECT_DOUBLE_EQ(hw->pnm.internal_bw_gbps, 1100);
  EXPECT_DOUBLE_EQ(hw->cxl.link_bw_gbps_per_direction, 64);
  EXPECT_EQ(hw->gpu.model, "H100 SXM5 80GB");
  for (const auto& [key, f] : hw->figures) EXPECT_FALSE(f.source.empty()) << key;
}

// Each part's full-rate power by hand (docs/HARDWARE.md §6a), all within their ratings.
TEST(hardware, full_rate_power_of_the_default_file_by_hand) {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  ASSERT_TRUE(hw) << hw.error().to_string();
  const auto peaks = rated_power_peaks(*hw);
  ASSERT_EQ(peaks.size(), 4u);
  // GPU: 79 + 3350 GB/s x 8 x 3.75 pJ (100.5) + 989 TFLOP/s x 0.5 pJ (494.5).
  EXPECT_NEAR(peaks[0].peak_w, 674.0, 1e-9);
  EXPECT_EQ(peaks[0].rating_key, "gpu.tdp_w");
  // GPU streaming all-in: 79 + 3350 x 8 x 18.8 pJ = 79 + 503.84.
  EXPECT_NEAR(peaks[1].peak_w, 582.84, 1e-9);
  // PNM: 20 + 1100 x 8 x 4.5 pJ (39.6) + 8 x 0.5 (4).
  EXPECT_NEAR(peaks[2].peak_w, 63.6, 1e-9);
  // Expander: 10 + min(153.6, 64 x 0.85 = 54.4) GB/s x 8 x 12.5 pJ = 10 + 5.44 (at its
  // DDR rate it would be 25.36 W, above its 25 W: its link never lets it).
  EXPECT_NEAR(peaks[3].peak_w, 15.44, 1e-9);
  for (const auto& p : peaks) EXPECT_LE(p.peak_w, p.rating_w) << p.component;
  EXPECT_DOUBLE_EQ(hw->host.power_w, 575);
  EXPECT_DOUBLE_EQ(hw->switch_power_w_per_port, 3);
  EXPECT_DOUBLE_EQ(hw->energy.gpu_all_in_pj_per_bit, 18.8);
}

// host.power_w and cxl.switch_power_w_per_port are optional: absent, they are 0.
TEST(hardware, host_and_switch_power_are_optional) {
  std::ifstream in(configs + "hardware/h100-cxl-pnm.yaml");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string kept;
  std::istringstream lines(text);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("host:", 0) != 0 && line.find("power_w: {value: 575") == std::string::npos &&
        line.find("switch_power_w_per_port") == std::string::npos)
      kept += line + "\n";
  auto hw = load_hardware(write_temp("no_host.yaml", kept));
  ASSERT_TRUE(hw) << hw.error().to_string();
  EXPECT_DOUBLE_EQ(hw->host.power_w, 0);
  EXPECT_DOUBLE_EQ(hw->switch_power_w_per_port, 0);
  EXPECT_EQ(hw->figures.count("host.power_w"), 0u);
}

TEST(hardware, bad_files_are_clear_errors) {
  auto good = configs + "hardware/h100-cxl-pnm.yaml";
  std::ifstream in(good);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto replace = [&](const std::string& from, const std::string& to) {
    std::string t = text;
    auto pos = t.find(from);
    EXPECT_NE(pos, std::string::npos) << from;
    return t.replace(pos, from.size(), to);
  };
  struct {
    std::string text;
    const char* expect;
  } cases[] = {
      {replace("tdp_w: {value: 700, source: \"NVIDIA H100 datasheet\"}", "tdp_w: {value: 700}"),
       "has no source"},
      {replace("tdp_w: {value: 700,", "tdp_w: {value: -1,"), "outside the allowed range"},
      {replace("tdp_w: {value: 700,", "tdp_w: {value: lots,"), "is not a number"},
      {replace("tdp_w:", "tdp_watts:"), "unknown key 'gpu.tdp_watts'"},
      {replace("  pue: {value: 1.3, source: \"docs/HARDWARE.md §7\", assumed: true}\n", ""),
       "missing figure 'cost.pue'"},
      // A figure above its rating names the figure and the rating (docs/HARDWARE.md §6a).
      {replace("idle_power_w: {value: 20,", "idle_power_w: {value: 80,"),
       "pnm_device.idle_power_w = 80 W is above the rating pnm_device.power_w = 75 W"},
      {replace("tdp_w: {value: 700,", "tdp_w: {value: 600,"),
       "gpu at full rate draws 674 W (79 W idle + 100.5 W HBM at gpu.memory_bw_gbps + 494.5 W bf16 at "
       "gpu.bf16_tflops), above its rating gpu.tdp_w = 600 W"},
      {replace("memory_pj_per_bit: {value: 12.5,", "memory_pj_per_bit: {value: 40,"),
       "expander at full rate draws 27.41 W"},
      {replace("gpu_all_in_pj_per_bit: {value: 18.8,", "gpu_all_in_pj_per_bit: {value: 25,"),
       "gpu (all-in streaming) at full rate draws 749 W"},
  };
  for (const auto& c : cases) {
    auto hw = load_hardware(write_temp("bad_hw.yaml", c.text));
    ASSERT_FALSE(hw);
    EXPECT_NE(hw.error().message().find(c.expect), std::string::npos) << hw.error().message();
  }
}

// hardware.scale multiplies the named figures (value and the figures table), notes the scale in
// the source, leaves every other figure alone, and refuses bad items by name.
TEST(hardware, scale_multiplies_named_figures_only) {
  auto base = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  ASSERT_TRUE(base) << base.error().to_string();
  hardware_spec hw = *base;
  ASSERT_TRUE(scale_hardware(hw, "pnm_device.compute_tflops=0.5,cxl.link_bw_gbps_per_direction=2"));
  EXPECT_DOUBLE_EQ(hw.pnm.compute_tflops, base->pnm.compute_tflops * 0.5);
  EXPECT_DOUBLE_EQ(hw.cxl.link_bw_gbps_per_direction, base->cxl.link_bw_gbps_per_direction * 2);
  EXPECT_DOUBLE_EQ(hw.figures.at("pnm_device.compute_tflops").value, hw.pnm.compute_tflops);
  EXPECT_NE(hw.figures.at("cxl.link_bw_gbps_per_direction").source.find("scaled x2 by hardware.scale"),
            std::string::npos);
  size_t changed = 0;
  for (const auto& [key, f] : hw.figures) changed += f.value != base->figures.at(key).value;
  EXPECT_EQ(changed, 2u);
  hardware_spec same = *base;
  ASSERT_TRUE(scale_hardware(same, ""));
  EXPECT_DOUBLE_EQ(same.gpu.memory_bw_gbps, base->gpu.memory_bw_gbps);

  struct {
    const char* scales;
    const char* expect;
  } bad[] = {
      {"pnm_device.tflops=2", "unknown figure 'pnm_device.tflops'; allowed: gpu.memory_bytes"},
      {"pnm_device.compute_tflops", "must be key=factor"},
      {"pnm_device.compute_tflops=0", "must be a number in (0, 100]"},
      {"pnm_device.compute_tflops=two", "must be a number in (0, 100]"},
      {"pnm_device.compute_tflops=2x", "must be a number in (0, 100]"},
      {"cost.pue=10", "outside the allowed range [1, 10]"},
  };
  for (const auto& c : bad) {
    hardware_spec h = *base;
    const status st = scale_hardware(h, c.scales);
    ASSERT_FALSE(st) << c.scales;
    EXPECT_NE(st.message().find(c.expect), std::string::npos) << st.message();
  }
}

// selection.budget_fraction: round(f x context) tokens, up to whole pages, at least the two
// always-kept pages; worked by hand for each row.
TEST(selection_budget, fraction_of_the_context_in_whole_pages) {
  struct row {
    double fraction;
    uint64_t context_tokens;
    uint32_t page_size_tokens;
    uint64_t pages;
  };
  for (const row& r : std::vector<row>{
           {0.002, 131072, 16, 17},   // 262.144 -> 262 tokens -> 16.4 -> 17 pages
           {0.01, 131072, 16, 82},    // 1310.72 -> 1311 -> 81.9 -> 82
           {0.002, 1048576, 16, 132}, // 2097.152 -> 2097 -> 131.06 -> 132
           {0.01, 1048576, 16, 656},  // 10485.76 -> 10486 -> 655.4 -> 656
           {0.01, 1048576, 64, 164},  // 10486 / 64 = 163.8 -> 164
           {0.03, 32768, 16, 62},     // 983.04 -> 983 -> 61.4 -> 62
           {0.0001, 32768, 16, 2},    // 3.28 -> 3 tokens -> 1 page -> the two kept pages
           {0.5, 4096, 32, 64},       // 2048 tokens, exactly 64 pages
           {1.0, 1000, 16, 63},       // the whole context: 62.5 -> 63 pages
       }) {
    SCOPED_TRACE(std::to_string(r.fraction) + " of " + std::to_string(r.context_tokens) + " at page " +
                 std::to_string(r.page_size_tokens));
    const selection_budget_policy p{r.page_size_tokens, 2048, r.fraction};
    EXPECT_EQ(selection_budget_pages(p, r.context_tokens), r.pages);
    EXPECT_EQ(selection_budget_tokens(p, r.context_tokens), r.pages * r.page_size_tokens);
    EXPECT_STREQ(p.name(), "budget_fraction");
  }
  // Off (the default): budget_tokens whatever the context, in whole pages as before.
  const selection_budget_policy fixed{16, 2048, 0};
  for (uint64_t ctx : {1024ull, 131072ull, 1048576ull}) {
    EXPECT_EQ(selection_budget_tokens(fixed, ctx), 2048u);
    EXPECT_EQ(selection_budget_pages(fixed, ctx), 128u);
  }
  EXPECT_EQ(selection_budget_pages(selection_budget_policy{16, 1000, 0}, 131072), 62u);
  EXPECT_STREQ(fixed.name(), "budget_tokens");
}

}  // namespace
}  // namespace pnmkv
