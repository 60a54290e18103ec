// selection.search = exact-int8 gives the live cluster exactly the outputs of flat (the
// same output digest, accuracy and selections) in every selection path: one device per
// shard, sequence shards with exact (two-round) and local cross-shard selection, both GQA
// aggregations, png-kv's excluded steady pages and gpu-only's own device engine; and the
// device work it reports is what the search touched (less summary bytes than flat, with
// the int8 summaries counted in the device bytes held).
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "actors/cluster.hpp"

namespace pnmkv {
namespace {

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

run_report run_with(const std::vector<std::string>& extra) {
  // The later of two settings of a key wins: the test's own after these.
  std::vector<std::string> sets = {"workload.context_tokens=16384", "run.steps=3",
                                   "workload.batch=2", "selection.budget_tokens=512",
                                   "run.step_timeout_ms=60000", "run.seed=3"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  auto c = load_config(default_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  auto rep = run_embedded(*c, {});
  EXPECT_TRUE(rep) << rep.error().to_string();
  return rep ? *rep : run_report{};
}

void expect_same_outputs(const std::vector<std::string>& sets, bool fewer_bytes) {
  std::vector<std::string> flat = sets, exact = sets;
  flat.push_back("selection.search=flat");
  exact.push_back("selection.search=exact-int8");
  const run_report a = run_with(flat);
  const run_report b = run_with(exact);
  EXPECT_EQ(a.completed, 2u);
  EXPECT_EQ(b.completed, 2u);
  EXPECT_EQ(a.output_digest_hex(), b.output_digest_hex());
  EXPECT_EQ(a.output_rel_err_mean, b.output_rel_err_mean);
  EXPECT_EQ(a.attention_mass_recall_mean, b.attention_mass_recall_mean);
  if (!std::isnan(a.needle_hit_rate)) {
    EXPECT_EQ(a.needle_hit_rate, b.needle_hit_rate);
  }
  // The calibration of the rescored pages: measured by exact-int8 runs only (on devices:
  // gpu-only searches in its own engine, whose work the GPU is charged).
  if (b.mode != "gpu-only") {
    EXPECT_GT(b.cal_search_samples, 0u);
    EXPECT_GE(b.cal_search_rescored_per_selected, 1.0);
    EXPECT_NE(b.calibration_json().find("search_rescored_per_selected"), std::string::npos);
  }
  EXPECT_EQ(a.calibration_json().find("search_rescored_per_selected"), std::string::npos);
  // Integer ops are exact-int8's only (its bounds), counted and reported.
  EXPECT_EQ(a.live_device_int_ops_per_step, 0.0);
  if (b.mode != "gpu-only") {
    EXPECT_GT(b.live_device_int_ops_per_step, 0.0);
  }
  if (fewer_bytes) {
    EXPECT_LT(b.live_device_bytes_per_step, a.live_device_bytes_per_step);
    EXPECT_LT(b.virtual_device_bytes_per_step, a.virtual_device_bytes_per_step);
  }
  // The int8 summaries take device memory.
  uint64_t held_a = 0, held_b = 0;
  for (uint64_t x : a.device_bytes_held) held_a += x;
  for (uint64_t x : b.device_bytes_held) held_b += x;
  if (held_a > 0) {  // gpu-only: the devices hold nothing
    EXPECT_GT(held_b, held_a);
  }
}

TEST(search, exact_int8_gives_flats_digest_pnm_kv) {
  expect_same_outputs({}, true);
  expect_same_outputs({"selection.gqa_aggregation=sum"}, true);
}

// Lookahead selection (selection.lookahead) over the wire: the searches the devices run in the
// background for the next step are flat's or exact-int8's, which select the same pages, so
// either gives the same outputs; a step attends the last step's selection (other outputs than
// without lookahead) and is modelled shorter, the searches off its path; the same searches
// are counted. One device per head, and 2 sequence shards with either cross-shard rule.
TEST(search, lookahead_gives_the_same_outputs_with_either_search_and_a_shorter_step) {
  for (const std::vector<std::string>& sets :
       {std::vector<std::string>{}, std::vector<std::string>{"cluster.head_groups=2", "selection.cross_shard=exact"},
        std::vector<std::string>{"cluster.head_groups=2", "selection.cross_shard=local"}}) {
    SCOPED_TRACE(sets.empty() ? "one shard per head" : sets.back());
    std::vector<std::string> ahead = sets;
    ahead.push_back("selection.lookahead=true");
    expect_same_outputs(ahead, true);
    std::vector<std::string> fresh = sets;
    fresh.push_back("selection.search=exact-int8");
    fresh.push_back("selection.lookahead=false");  // on by default (auto) in pnm-kv
    ahead.push_back("selection.search=exact-int8");
    const run_report a = run_with(ahead);
    const run_report b = run_with(fresh);
    EXPECT_NE(a.output_digest_hex(), b.output_digest_hex());
    EXPECT_LT(a.virtual_step_ms_mean, b.virtual_step_ms_mean);
    EXPECT_EQ(a.cal_search_samples, b.cal_search_samples);
    EXPECT_EQ(a.cal_search_pages_mean, b.cal_search_pages_mean);
  }
}

// run.wire_precision bf16 over the wire: both searches see the same bf16 queries, so they
// still select the same pages. Against fp32 on the wire: other outputs (the query and the
// partial outputs are rounded), the same selection rule's accuracy within rounding (mass
// within 0.005, the output error within 0.01), and between half and three quarters of the
// link bytes per step (queries and partial outputs are most of them; appends, candidates,
// page ids and headers keep their size; exact sizes: engine_test's model = live check).
TEST(search, a_bf16_wire_keeps_exact_int8_equal_to_flat_and_halves_the_vectors_on_the_link) {
  expect_same_outputs({"run.wire_precision=bf16"}, true);
  expect_same_outputs({"run.wire_precision=bf16", "cluster.head_groups=2", "selection.cross_shard=exact"}, true);
  const run_report fp32 = run_with({"run.wire_precision=fp32"});
  const run_report bf16 = run_with({"run.wire_precision=bf16"});
  EXPECT_NE(fp32.output_digest_hex(), bf16.output_digest_hex());
  EXPECT_NEAR(fp32.attention_mass_recall_mean, bf16.attention_mass_recall_mean, 0.005);
  EXPECT_NEAR(fp32.output_rel_err_mean, bf16.output_rel_err_mean, 0.01);
  EXPECT_LT(bf16.virtual_link_bytes_per_step, 0.75 * fp32.virtual_link_bytes_per_step);
  EXPECT_GT(bf16.virtual_link_bytes_per_step, 0.5 * fp32.virtual_link_bytes_per_step);
  EXPECT_NE(bf16.selection.find("bf16 queries and partial outputs"), std::string::npos) << bf16.selection;
  EXPECT_EQ(fp32.selection.find("bf16"), std::string::npos) << fp32.selection;
}

TEST(search, exact_int8_gives_flats_digest_sequence_shards) {
  // 8 KV heads on 4 devices with 2 head groups: 2 sequence shards per request.
  expect_same_outputs({"cluster.head_groups=2", "selection.cross_shard=exact"}, true);
  expect_same_outputs({"cluster.head_groups=2", "selection.cross_shard=local",
                       "cluster.sequence_split=interleave"},
                      true);
}

TEST(search, exact_int8_gives_flats_digest_png_kv_and_gpu_only) {
  expect_same_outputs({"run.mode=png-kv", "run.steps=12", "png.warmup_steps=2",
                       "png.reevaluate_every_steps=2", "png.window_steps=4"},
                      false);
  expect_same_outputs({"run.mode=gpu-only"}, false);
}

}  // namespace
}  // namespace pnmkv
