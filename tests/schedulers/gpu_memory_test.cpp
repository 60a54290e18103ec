// GPU memory budget: baseline's maximum batch matches a hand calculation from the hardware
// and model files; admission never overcommits (the max batch fits, one more does not).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "schedulers/gpu_memory.hpp"
#include "schedulers/head_groups.hpp"
#include "schedulers/steady_pages.hpp"

namespace pnmkv {
namespace {

const std::string configs = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/";

TEST(gpu_memory, baseline_max_batch_by_hand) {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  auto m = load_model_shape(configs + "models/llama-3.1-8b.yaml");
  ASSERT_TRUE(hw && m);
  gpu_memory_query q;
  q.mode = run_mode::baseline;
  q.context_tokens = 1 << 20;
  q.budget_tokens = 2048;
  q.page_size_tokens = 16;
  q.summary_elem_bytes = 2;
  q.summaries_resident = true;
  // Hand calculation: HBM minus reservation minus bf16 weights, divided by what one request
  // needs: every page summary (min and max, 128 dims, bf16) of 8 KV heads × 32 layers, plus
  // two layers' worth of recalled pages (budget × 512 B per token per head × 8 heads) and
  // its activations.
  const double free_bytes = 80e9 - 4e9 - m->params_from_shape() * 2;
  const double summaries = 65536.0 * 2 * 128 * 2 * 8 * 32;
  const double recall = 2.0 * 2048 * 512 * 8;
  const double activations = (4.0 * 4096 + 2.0 * 14336) * 2;
  const uint32_t expect = static_cast<uint32_t>(std::floor(free_bytes / (summaries + recall + activations)));
  EXPECT_EQ(expect, 6u);
  EXPECT_EQ(max_batch(*m, *hw, q), expect);
  // pnm-kv keeps no summaries or recall buffers on the GPU: far larger batches fit.
  q.mode = run_mode::pnm_kv;
  EXPECT_GT(max_batch(*m, *hw, q), 1000u);
}

// gpu-only keeps every request's whole KV (all layers, every KV head, whole pages) and its
// page summaries in HBM: at 128K tokens an 8B request needs 8192 pages x 16 tokens x 512 B
// x 8 heads x 32 layers = 17.18 GB of K/V and 8192 x 512 B x 256 = 1.07 GB of summaries.
TEST(gpu_memory, gpu_only_holds_the_whole_kv_by_hand) {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  auto m = load_model_shape(configs + "models/llama-3.1-8b.yaml");
  ASSERT_TRUE(hw && m);
  gpu_memory_query q;
  q.mode = run_mode::gpu_only;
  q.batch = 1;
  q.context_tokens = 131072 - 5;  // rounds up to 8192 whole pages
  q.page_size_tokens = 16;
  q.summary_elem_bytes = 2;
  const gpu_memory_use u = gpu_memory(*m, *hw, q);
  EXPECT_DOUBLE_EQ(u.kv_bytes, 8192.0 * 16 * 512 * 8 * 32);
  EXPECT_DOUBLE_EQ(u.summaries_bytes, 8192.0 * 2 * 128 * 2 * 8 * 32);
  EXPECT_EQ(u.recall_bytes + u.steady_bytes + u.partials_bytes, 0.0);
  // (80 - 4) GB of HBM less 16.06 GB of weights leaves room for 3 such requests, not 4.
  const double per = u.kv_bytes + u.summaries_bytes + u.activations_bytes;
  const double free_bytes = 80e9 - 4e9 - m->params_from_shape() * 2;
  EXPECT_EQ(uint32_t(std::floor(free_bytes / per)), 3u);
  EXPECT_EQ(max_batch(*m, *hw, q), 3u);
  // Two GPUs (tp = 2) share the KV: more than twice as many (the weights are paid once).
  q.tp = 2;
  EXPECT_EQ(max_batch(*m, *hw, q), uint32_t(std::floor((2 * 76e9 - m->params_from_shape() * 2) / per)));
  // At 1M tokens not one request fits one GPU (137 GB of K/V).
  q.tp = 1;
  q.context_tokens = 1 << 20;
  EXPECT_EQ(max_batch(*m, *hw, q), 0u);
}

TEST(gpu_memory, admission_never_overcommits) {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  ASSERT_TRUE(hw);
  std::mt19937_64 rng(3);
  for (const char* model : {"llama-3.1-8b.yaml", "llama-3.1-70b.yaml", "llama-3.1-405b.yaml"}) {
    auto m = load_model_shape(configs + "models/" + model);
    ASSERT_TRUE(m);
    for (int i = 0; i < 200; ++i) {
      gpu_memory_query q;
      q.mode = static_cast<run_mode>(rng() % 4);  // gpu-only included
      q.context_tokens = 1 + rng() % (4u << 20);
      q.budget_tokens = 16 << (rng() % 10);
      q.steady_tokens = q.budget_tokens / 4;
      q.tp = 1u << (rng() % 4);
      q.summaries_resident = rng() % 2;
      const uint32_t b = max_batch(*m, *hw, q, 100000);
      SCOPED_TRACE(std::string(model) + " mode " + to_string(q.mode) + " batch " + std::to_string(b));
      if (b > 0) {
        q.batch = b;
        EXPECT_TRUE(gpu_memory(*m, *hw, q).fits());
      }
      if (b < 100000) {
        q.batch = b + 1;
        EXPECT_FALSE(gpu_memory(*m, *hw, q).fits());
      }
    }
  }
}

TEST(steady_pages, frequent_pages_become_steady_within_budget) {
  steady_params p;
  p.window_steps = 4;
  p.threshold = 0.75;
  p.budget_pages = 2;
  p.warmup_steps = 4;
  p.reevaluate_every_steps = 2;
  auto pol = make_steady_policy(p);
  EXPECT_FALSE(pol->due(0));
  // Page 0 every step, 5 in 3 of 4, 9 in 2 of 4, 7 once.
  pol->record(0, {0, 5, 9});
  pol->record(1, {0, 5, 7});
  pol->record(2, {0, 9});
  pol->record(3, {0, 5});
  ASSERT_TRUE(pol->due(4));
  EXPECT_EQ(pol->evaluate(4), (std::vector<uint64_t>{0, 5}));
  EXPECT_FALSE(pol->due(5));
  EXPECT_TRUE(pol->due(6));
  // The window slides: after four steps without page 5 it is no longer steady.
  for (uint32_t s = 4; s < 8; ++s) pol->record(s, {0, 9});
  EXPECT_EQ(pol->evaluate(8), (std::vector<uint64_t>{0, 9}));
  steady_params bad = p;
  bad.threshold = 0;
  EXPECT_FALSE(validate(bad));
}

}  // namespace
}  // namespace pnmkv

namespace pnmkv {
namespace {

TEST(head_groups, chosen_from_the_cost_model_and_admissible) {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  auto m = load_model_shape(configs + "models/llama-3.1-8b.yaml");
  ASSERT_TRUE(hw && m);
  cost_model costs(*hw, *m);
  for (uint32_t pool : {1u, 2u, 4u, 8u, 16u, 32u, 64u}) {
    head_group_query q;
    q.pool_devices = pool;
    q.context_tokens = 1 << 20;
    auto ranked = rank_head_groups(costs, q);
    ASSERT_FALSE(ranked.empty());
    for (size_t i = 1; i < ranked.size(); ++i) EXPECT_LE(ranked[i - 1].layer_ns, ranked[i].layer_ns);
    for (const auto& c : ranked) {
      EXPECT_EQ(c.head_groups * c.sequence_shards, pool);
      EXPECT_EQ(m->kv_heads % c.head_groups, 0u);
    }
    // Head parallelism needs no merge and no second round: while the pool is no larger
    // than the KV head count it should win (every device scans the same bytes either way).
    if (pool <= m->kv_heads) EXPECT_EQ(choose_head_groups(costs, q).head_groups, pool);
    else EXPECT_EQ(choose_head_groups(costs, q).head_groups, m->kv_heads);
  }
}

}  // namespace
}  // namespace pnmkv
