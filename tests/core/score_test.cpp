// Properties of Quest page scores: the score bounds q·k of every key in the page (max or
// sum over the GQA group, bf16 and fp32 summaries), it is exact for one-token pages, and
// the vectorised kernel equals the scalar loop over every shape and remainder path.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "core/score.hpp"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

class score : public test::per_target {};
PNMKV_INSTANTIATE_PER_TARGET(score);

using test::base_seed;
using test::seed_trace;

// Slack for float rounding of a sum of `terms` magnitudes.
double rounding_slack(double abs_sum) { return 2e-6 * abs_sum + 1e-6; }

// Σ_h Σ_d |q_hd| · max(|mn_d|, |mx_d|) for a page, over the heads that count.
double abs_bound(const kv_head_store& s, uint32_t page, const float* q, uint32_t group) {
  const uint32_t d = s.shape().head_dim;
  double acc = 0.0;
  for (uint32_t t = 0; t < s.page_tokens(page); ++t) {
    for (uint32_t h = 0; h < group; ++h) {
      double row = 0.0;
      for (uint32_t j = 0; j < d; ++j) {
        row += std::fabs(q[h * d + j]) * std::fabs(to_float(s.page_keys(page)[t * d + j]));
      }
      acc = std::max(acc, row * group);
    }
  }
  return acc;
}

TEST_P(score, bounds_every_key_in_the_page) {
  int checked = 0;
  for (uint64_t seed = base_seed(); seed < base_seed() + 24; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = 16u << (gen() % 4);                        // 16..128
    const uint32_t page = 1 + static_cast<uint32_t>(gen() % 32);  // 1..32
    const uint32_t group = 1 + static_cast<uint32_t>(gen() % 16);
    const uint64_t n = 1 + gen() % 700;
    for (summary_precision prec : {summary_precision::bf16, summary_precision::fp32}) {
      const kv_head_store s = test::make_store(kv_head_shape{d, page, prec}, n, gen);
      const std::vector<float> q = test::normal_floats(gen, group * d);
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        SCOPED_TRACE(std::string(to_string(agg)) + " " + to_string(prec) + " d=" +
                     std::to_string(d) + " page=" + std::to_string(page) + " group=" +
                     std::to_string(group));
        std::vector<float> fast(s.page_count());
        std::vector<float> slow(s.page_count());
        ASSERT_TRUE(score_pages(s, q.data(), group, agg, fast.data()).is_ok());
        ASSERT_TRUE(score_pages_scalar(s, q.data(), group, agg, slow.data()).is_ok());
        for (uint32_t p = 0; p < s.page_count(); ++p) {
          const double slack = rounding_slack(abs_bound(s, p, q.data(), group));
          for (uint32_t t = 0; t < s.page_tokens(p); ++t) {
            double agg_dot = agg == gqa_aggregation::max ? -INFINITY : 0.0;
            for (uint32_t h = 0; h < group; ++h) {
              double dot = 0.0;
              for (uint32_t j = 0; j < d; ++j) {
                dot += static_cast<double>(q[h * d + j]) * to_float(s.page_keys(p)[t * d + j]);
              }
              agg_dot = agg == gqa_aggregation::max ? std::max(agg_dot, dot) : agg_dot + dot;
            }
            ASSERT_GE(fast[p] + slack, agg_dot) << "page " << p << " token " << t;
            ASSERT_GE(slow[p] + slack, agg_dot) << "page " << p << " token " << t;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 10000);
}

// With one token per page, min = max = k, so the bound is q·k itself.
TEST_P(score, is_exact_for_single_token_pages) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 4; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = 64;
    const uint32_t group = 4;
    const kv_head_store s = test::make_store(kv_head_shape{d, 1}, 37, gen);
    const std::vector<float> q = test::normal_floats(gen, group * d);
    std::vector<float> scores(s.page_count());
    ASSERT_TRUE(score_pages(s, q.data(), group, gqa_aggregation::max, scores.data()).is_ok());
    for (uint32_t p = 0; p < s.page_count(); ++p) {
      double best = -INFINITY;
      double abs_sum = 0.0;
      for (uint32_t h = 0; h < group; ++h) {
        double dot = 0.0;
        for (uint32_t j = 0; j < d; ++j) {
          const double k = to_float(s.page_keys(p)[j]);
          dot += q[h * d + j] * k;
          abs_sum += std::fabs(q[h * d + j] * k);
        }
        best = std::max(best, dot);
      }
      EXPECT_NEAR(scores[p], best, rounding_slack(abs_sum)) << p;
    }
  }
}

// The vectorised kernel computes the same bound as the scalar loop, up to summation order.
TEST_P(score, vectorised_equals_scalar) {
  const uint32_t groups[] = {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 64};
  for (uint64_t seed = base_seed(); seed < base_seed() + 30; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t d = 16 * (1 + static_cast<uint32_t>(gen() % 32));  // 16..512
    const uint32_t page = 1 + static_cast<uint32_t>(gen() % 64);
    const uint64_t n = 1 + gen() % 2000;
    const uint32_t group = groups[gen() % (sizeof groups / sizeof groups[0])];
    const summary_precision prec =
        gen() % 2 ? summary_precision::bf16 : summary_precision::fp32;
    const kv_head_store s = test::make_store(kv_head_shape{d, page, prec}, n, gen);
    const std::vector<float> q = test::normal_floats(gen, group * d);
    for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
      SCOPED_TRACE(std::string(to_string(agg)) + " " + to_string(prec) + " d=" +
                   std::to_string(d) + " group=" + std::to_string(group) + " pages=" +
                   std::to_string(s.page_count()));
      std::vector<float> fast(s.page_count(), NAN);
      std::vector<float> slow(s.page_count(), NAN);
      ASSERT_TRUE(score_pages(s, q.data(), group, agg, fast.data()).is_ok());
      ASSERT_TRUE(score_pages_scalar(s, q.data(), group, agg, slow.data()).is_ok());
      // Scale of the terms summed: Σ_h Σ_d |q_hd| · max(|mn|, |mx|).
      const bf16* sb = static_cast<const bf16*>(s.summaries());
      const float* sf = static_cast<const float*>(s.summaries());
      for (uint32_t p = 0; p < s.page_count(); ++p) {
        double abs_sum = 0.0;
        for (uint32_t h = 0; h < group; ++h) {
          for (uint32_t j = 0; j < d; ++j) {
            const size_t base = static_cast<size_t>(p) * 2 * d;
            const double mx = prec == summary_precision::bf16 ? to_float(sb[base + j]) : sf[base + j];
            const double mn =
                prec == summary_precision::bf16 ? to_float(sb[base + d + j]) : sf[base + d + j];
            abs_sum += std::fabs(q[h * d + j]) * std::max(std::fabs(mx), std::fabs(mn));
          }
        }
        ASSERT_NEAR(fast[p], slow[p], 1e-6 * abs_sum + 1e-6) << "page " << p;
      }
    }
  }
}

TEST_P(score, sum_is_sum_of_single_head_scores) {
  std::mt19937_64 gen(base_seed());
  const uint32_t d = 128;
  const uint32_t group = 8;
  const kv_head_store s = test::make_store(kv_head_shape{d, 16}, 1000, gen);
  const std::vector<float> q = test::normal_floats(gen, group * d);
  std::vector<float> sum(s.page_count());
  std::vector<float> one(s.page_count());
  std::vector<double> acc(s.page_count(), 0.0);
  ASSERT_TRUE(score_pages(s, q.data(), group, gqa_aggregation::sum, sum.data()).is_ok());
  for (uint32_t h = 0; h < group; ++h) {
    ASSERT_TRUE(score_pages(s, q.data() + h * d, 1, gqa_aggregation::max, one.data()).is_ok());
    for (uint32_t p = 0; p < s.page_count(); ++p) acc[p] += one[p];
  }
  for (uint32_t p = 0; p < s.page_count(); ++p) {
    EXPECT_NEAR(sum[p], acc[p], 1e-4 * std::fabs(acc[p]) + 1e-3) << p;
  }
}

TEST_P(score, bad_input_is_an_error) {
  std::mt19937_64 gen(base_seed());
  const kv_head_store s = test::make_store(kv_head_shape{64, 16}, 100, gen);
  std::vector<float> q(65 * 64, 1.0f);
  std::vector<float> out(s.page_count());
  for (auto* fn : {&score_pages, &score_pages_scalar}) {
    EXPECT_EQ(fn(s, q.data(), 0, gqa_aggregation::max, out.data()).code(),
              errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), kernel_group_limit + 1, gqa_aggregation::max, out.data()).code(),
              errc::invalid_argument);
    EXPECT_EQ(fn(s, nullptr, 4, gqa_aggregation::sum, out.data()).code(),
              errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), 4, gqa_aggregation::sum, nullptr).code(), errc::invalid_argument);
    EXPECT_EQ(fn(s, q.data(), 4, static_cast<gqa_aggregation>(7), out.data()).code(),
              errc::invalid_argument);
  }
  // An empty store scores nothing and writes nothing.
  auto empty = kv_head_store::create(kv_head_shape{64, 16}, 16);
  ASSERT_TRUE(empty.is_ok());
  EXPECT_TRUE(score_pages(*empty, q.data(), 4, gqa_aggregation::max, nullptr).is_ok());
}

TEST_P(score, aggregation_names_read_both_ways) {
  EXPECT_STREQ(to_string(gqa_aggregation::max), "max");
  EXPECT_STREQ(to_string(gqa_aggregation::sum), "sum");
  EXPECT_EQ(value_of(gqa_aggregation_names, "sum"), gqa_aggregation::sum);
  EXPECT_EQ(value_of(gqa_aggregation_names, "mean"), std::nullopt);
  EXPECT_STREQ(to_string(static_cast<gqa_aggregation>(7)), "?");
  EXPECT_EQ(names_of(gqa_aggregation_names), (std::vector<std::string>{"max", "sum"}));
  EXPECT_NE(std::string(kernel_target_name()), "");
}

}  // namespace
}  // namespace pnmkv
