// Bad workload input gives a clear error naming the field and what is allowed, whether it
// comes from code (workload_params::validate, synthetic_workload::create) or from the
// configuration (workload.* keys, --set); and the config defaults are the struct defaults.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "config/config.hpp"
#include "core/workload.hpp"

namespace pnmkv::test {
namespace {

void expect_error_naming(const status& st, const std::string& field) {
  ASSERT_FALSE(st.is_ok()) << "expected an error naming " << field;
  EXPECT_EQ(st.code(), errc::invalid_argument);
  EXPECT_NE(st.message().find(field), std::string::npos) << st.message();
  EXPECT_NE(st.message().find("allowed"), std::string::npos) << st.message();
}

TEST(WorkloadParams, DefaultsAreValidAndMatchTheConfigDefaults) {
  workload_params d;
  EXPECT_TRUE(d.validate().is_ok()) << d.validate().to_string();
  auto from = workload_params_from_config(config::defaults());
  ASSERT_TRUE(from.is_ok()) << from.error().to_string();
  const workload_params& c = *from;
  EXPECT_EQ(c.sink_tokens, d.sink_tokens);
  EXPECT_EQ(c.topic_count, d.topic_count);
  EXPECT_EQ(c.topic_segment_tokens_mean, d.topic_segment_tokens_mean);
  EXPECT_EQ(c.topic_segment_tokens_spread, d.topic_segment_tokens_spread);
  EXPECT_EQ(c.needle_rate_per_mtokens, d.needle_rate_per_mtokens);
  EXPECT_EQ(c.needle_block_tokens, d.needle_block_tokens);
  EXPECT_EQ(c.sink_logit, d.sink_logit);
  EXPECT_EQ(c.topic_logit, d.topic_logit);
  EXPECT_EQ(c.segment_logit, d.segment_logit);
  EXPECT_EQ(c.salience_spread_fraction, d.salience_spread_fraction);
  EXPECT_EQ(c.noise_logit_std, d.noise_logit_std);
  EXPECT_EQ(c.needle_logit, d.needle_logit);
  EXPECT_EQ(c.query_referenced_segments, d.query_referenced_segments);
  EXPECT_EQ(c.query_local_weight, d.query_local_weight);
  EXPECT_EQ(c.drift_period_steps, d.drift_period_steps);
  EXPECT_EQ(c.query_noise_persistent_fraction, d.query_noise_persistent_fraction);
  EXPECT_EQ(c.query_head_spread_fraction, d.query_head_spread_fraction);
  EXPECT_EQ(c.needle_ask_fraction, d.needle_ask_fraction);
  EXPECT_EQ(c.needle_ask_episode_steps, d.needle_ask_episode_steps);
  EXPECT_EQ(c.needle_heads_fraction, d.needle_heads_fraction);
  EXPECT_EQ(c.value_noise_std, d.value_noise_std);
  EXPECT_EQ(c.value_topic_rms, d.value_topic_rms);
  EXPECT_EQ(c.value_sink_scale, d.value_sink_scale);
  EXPECT_EQ(c.value_needle_rms, d.value_needle_rms);
  EXPECT_EQ(c.context_tokens, d.context_tokens);
}

TEST(WorkloadParams, InvalidValuesNameTheField) {
  struct bad_case {
    const char* field;
    std::function<void(workload_params&)> set;
  };
  const bad_case cases[] = {
      {"needle_rate_per_mtokens", [](workload_params& p) { p.needle_rate_per_mtokens = -1; }},
      {"needle_rate_per_mtokens", [](workload_params& p) { p.needle_rate_per_mtokens = 1e9; }},
      {"needle_rate_per_mtokens", [](workload_params& p) { p.needle_rate_per_mtokens = NAN; }},
      {"topic_segment_tokens_mean", [](workload_params& p) { p.topic_segment_tokens_mean = 0; }},
      {"topic_segment_tokens_spread",
       [](workload_params& p) { p.topic_segment_tokens_spread = p.topic_segment_tokens_mean; }},
      {"topic_count", [](workload_params& p) { p.topic_count = 0; }},
      {"noise_logit_std", [](workload_params& p) { p.noise_logit_std = 0; }},
      {"sink_logit", [](workload_params& p) { p.sink_logit = -3; }},
      {"needle_ask_fraction", [](workload_params& p) { p.needle_ask_fraction = 1.5; }},
      {"drift_period_steps", [](workload_params& p) { p.drift_period_steps = 0; }},
      {"needle_block_tokens", [](workload_params& p) { p.needle_block_tokens = 0; }},
      {"needle_ask_episode_steps", [](workload_params& p) { p.needle_ask_episode_steps = 0; }},
      {"value_noise_std", [](workload_params& p) { p.value_noise_std = -1; }},
      {"context_tokens", [](workload_params& p) { p.context_tokens = 0; }},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.field);
    workload_params p;
    c.set(p);
    expect_error_naming(p.validate(), c.field);
    // create refuses the same parameters.
    auto w = synthetic_workload::create(p, 1, 128, 4);
    ASSERT_FALSE(w.is_ok());
    EXPECT_NE(w.error().message().find(c.field), std::string::npos);
  }
}

TEST(WorkloadParams, CreateRejectsBadShapes) {
  workload_params p;
  expect_error_naming(synthetic_workload::create(p, 1, 0, 4).error(), "head_dim");
  expect_error_naming(synthetic_workload::create(p, 1, 127, 4).error(), "head_dim");
  expect_error_naming(synthetic_workload::create(p, 1, 128, 0).error(), "gqa_group");
  expect_error_naming(synthetic_workload::create(p, 1, 128, 65).error(), "gqa_group");
}

TEST(WorkloadParams, ConfigRejectsBadWorkloadKeys) {
  const char* bad[] = {
      "workload.kind=hdf5",  // unknown kind: the schema lists the allowed ones (synthetic, trace)
      "workload.needle_rate_per_mtokens=-1",
      "workload.topic_segment_tokens_mean=0",
      "workload.topic_count=0",
      "workload.noise_logit_std=0",
      "workload.drift_period_steps=-5",
      "workload.sink_logit=abc",
  };
  for (const char* assignment : bad) {
    SCOPED_TRACE(assignment);
    auto cfg = load_config("", {assignment});
    ASSERT_FALSE(cfg.is_ok());
    const std::string key = std::string(assignment).substr(0, std::string(assignment).find('='));
    EXPECT_NE(cfg.error().message().find(key), std::string::npos) << cfg.error().message();
    EXPECT_NE(cfg.error().message().find("allowed"), std::string::npos) << cfg.error().message();
  }
  // Values each in range but inconsistent together are caught when reading the params.
  auto cfg = load_config("", {"workload.topic_segment_tokens_mean=100",
                              "workload.topic_segment_tokens_spread=100"});
  ASSERT_TRUE(cfg.is_ok()) << cfg.error().to_string();
  auto p = workload_params_from_config(*cfg);
  ASSERT_FALSE(p.is_ok());
  expect_error_naming(p.error(), "topic_segment_tokens_spread");
  auto cfg2 = load_config("", {"workload.needle_block_tokens=65536",
                               "workload.needle_rate_per_mtokens=100"});
  ASSERT_TRUE(cfg2.is_ok());
  expect_error_naming(workload_params_from_config(*cfg2).error(), "needle_rate_per_mtokens");
  // A good override arrives in the params.
  auto cfg3 = load_config("", {"workload.topic_count=7", "workload.needle_logit=12.5"});
  ASSERT_TRUE(cfg3.is_ok());
  auto p3 = workload_params_from_config(*cfg3);
  ASSERT_TRUE(p3.is_ok());
  EXPECT_EQ(p3->topic_count, 7u);
  EXPECT_EQ(p3->needle_logit, 12.5);
}

}  // namespace
}  // namespace pnmkv::test
