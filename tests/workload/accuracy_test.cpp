// The accuracy metrics on hand-made cases with known answers: relative error, mass
// captured over a store whose logits are set by construction, needle hits, and the
// accumulator's mean / p99 / max / min / hit rate and merge.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/accuracy.hpp"
#include "tests/workload/wl_test_util.hpp"

namespace pnmkv::test {
namespace {

TEST(Accuracy, RelativeErrorKnownValues) {
  const float dense[4] = {3, 4, 0, 0};
  const float same[4] = {3, 4, 0, 0};
  const float zero[4] = {0, 0, 0, 0};
  const float dbl[4] = {6, 8, 0, 0};
  const float off[4] = {3, 4.5f, 0, 0};
  EXPECT_EQ(output_relative_error(same, dense, 4), 0.0);
  EXPECT_DOUBLE_EQ(output_relative_error(zero, dense, 4), 1.0);
  EXPECT_DOUBLE_EQ(output_relative_error(dbl, dense, 4), 1.0);
  EXPECT_DOUBLE_EQ(output_relative_error(off, dense, 4), 0.1);
  EXPECT_EQ(output_relative_error(zero, zero, 4), 0.0);
  EXPECT_TRUE(std::isinf(output_relative_error(dense, zero, 4)));
}

TEST(Accuracy, RelativeErrorsPerHeadOfPartials) {
  partial a, b;
  a.reset(2, 4);
  b.reset(2, 4);
  b.o = {3, 4, 0, 0, 1, 0, 0, 0};
  a.o = {3, 4, 0, 0, 1, 0, 0, 0.5f};
  auto e = output_relative_errors(a, b);
  ASSERT_TRUE(e.is_ok());
  EXPECT_EQ((*e)[0], 0.0);
  EXPECT_DOUBLE_EQ((*e)[1], 0.5);
  partial c;
  c.reset(3, 4);
  EXPECT_EQ(output_relative_errors(c, b).error().code(), errc::shape_mismatch);
}

// A store of page-size-1 pages whose key j is x_j · e_0, so with q = e_0 and scale 1 the
// logit of token j is exactly x_j.
kv_head_store logit_store(const std::vector<float>& logits, uint32_t page_size) {
  const uint32_t d = 16;
  auto created = kv_head_store::create({d, page_size, summary_precision::fp32}, logits.size());
  EXPECT_TRUE(created.is_ok());
  kv_head_store store = std::move(created).value();
  std::vector<float> k(logits.size() * d, 0.0f), v(logits.size() * d, 0.0f);
  for (size_t j = 0; j < logits.size(); ++j) k[j * d] = logits[j], v[j * d + 1] = 1.0f;
  EXPECT_TRUE(store.append(0, k.data(), v.data(), logits.size()).is_ok());
  return store;
}

TEST(Accuracy, DensePageMassIsTheSoftmaxPerPage) {
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f, -1.0f, 0.5f};  // exact in bf16
  std::vector<float> q(2 * 16, 0.0f);
  q[0] = 1.0f;       // head 0: logits as given
  q[16] = -2.0f;     // head 1: logits × -2
  for (uint32_t page_size : {1u, 2u}) {
    SCOPED_TRACE("page_size " + std::to_string(page_size));
    auto store = logit_store(logits, page_size);
    auto mass = dense_page_mass(store, q.data(), 2, 1.0f);
    ASSERT_TRUE(mass.is_ok()) << mass.error().to_string();
    const uint32_t pages = store.page_count();
    ASSERT_EQ(mass->size(), 2u * pages);
    for (int h = 0; h < 2; ++h) {
      const double f = h == 0 ? 1.0 : -2.0;
      double z = 0;
      for (float x : logits) z += std::exp(f * x);
      double total = 0;
      for (uint32_t p = 0; p < pages; ++p) {
        double expect = 0;
        for (uint32_t t = p * page_size; t < std::min<size_t>((p + 1) * page_size, logits.size()); ++t)
          expect += std::exp(f * logits[t]) / z;
        EXPECT_NEAR((*mass)[h * pages + p], expect, 1e-6);
        total += (*mass)[h * pages + p];
      }
      EXPECT_NEAR(total, 1.0, 1e-12);
    }
    // Every page selected captures everything; none captures nothing.
    std::vector<uint32_t> all(pages);
    for (uint32_t p = 0; p < pages; ++p) all[p] = p;
    auto captured = mass_captured(*mass, 2, pages, all);
    ASSERT_TRUE(captured.is_ok());
    for (double m : *captured) EXPECT_NEAR(m, 1.0, 1e-12);
    auto none = mass_captured(*mass, 2, pages, {});
    ASSERT_TRUE(none.is_ok());
    for (double m : *none) EXPECT_EQ(m, 0.0);
  }
}

TEST(Accuracy, MassOfHugeLogitsDoesNotOverflow) {
  const std::vector<float> logits = {1000.0f, 1000.0f, -1000.0f, 0.0f};
  std::vector<float> q(16, 0.0f);
  q[0] = 1.0f;
  auto store = logit_store(logits, 1);
  auto mass = dense_page_mass(store, q.data(), 1, 1.0f);
  ASSERT_TRUE(mass.is_ok());
  EXPECT_NEAR((*mass)[0], 0.5, 1e-12);
  EXPECT_NEAR((*mass)[1], 0.5, 1e-12);
  EXPECT_EQ((*mass)[2], 0.0);
}

TEST(Accuracy, MassCapturedRejectsBadPageLists) {
  const std::vector<double> mass = {0.5, 0.5, 0.2, 0.8};  // group 2 × 2 pages
  EXPECT_EQ(mass_captured(mass, 2, 2, {2}).error().code(), errc::out_of_range);
  EXPECT_EQ(mass_captured(mass, 2, 2, {1, 1}).error().code(), errc::invalid_argument);
  EXPECT_EQ(mass_captured(mass, 3, 2, {0}).error().code(), errc::shape_mismatch);
  auto one = mass_captured(mass, 2, 2, {1});
  ASSERT_TRUE(one.is_ok());
  EXPECT_DOUBLE_EQ((*one)[0], 0.5);
  EXPECT_DOUBLE_EQ((*one)[1], 0.8);
}

TEST(Accuracy, NeedleHitIsThePageOfThePosition) {
  auto store = logit_store(std::vector<float>(40, 0.0f), 16);  // pages 0..2
  EXPECT_TRUE(needle_hit(store, {0, 2}, 35));
  EXPECT_TRUE(needle_hit(store, {0, 2}, 0));
  EXPECT_FALSE(needle_hit(store, {0, 2}, 16));
  EXPECT_FALSE(needle_hit(store, {0, 1, 2}, 4000));  // not held
}

TEST(Accuracy, AccumulatorAggregates) {
  accuracy_accumulator a;
  const auto empty = a.summary();
  EXPECT_EQ(empty.samples, 0u);
  EXPECT_TRUE(std::isnan(empty.rel_err_mean));
  EXPECT_TRUE(std::isnan(empty.needle_hit_rate));
  std::vector<double> errs;
  for (int i = 1; i <= 100; ++i) errs.push_back(i);
  std::mt19937_64 gen(wl_base_seed());
  std::shuffle(errs.begin(), errs.end(), gen);
  a.add_rel_errors({errs.begin(), errs.begin() + 37});
  accuracy_accumulator b;
  b.add_rel_errors({errs.begin() + 37, errs.end()});
  a.add_mass({0.9, 0.5});
  b.add_mass({0.7});
  a.add_needle(true);
  b.add_needle(false);
  b.add_needle(true);
  a.add_pages_selected(10);
  b.add_pages_selected(20);
  a.merge(b);
  const auto s = a.summary();
  EXPECT_EQ(s.samples, 100u);
  EXPECT_DOUBLE_EQ(s.rel_err_mean, 50.5);
  EXPECT_DOUBLE_EQ(s.rel_err_p99, 99.0);
  EXPECT_DOUBLE_EQ(s.rel_err_max, 100.0);
  EXPECT_DOUBLE_EQ(s.mass_mean, 0.7);
  EXPECT_DOUBLE_EQ(s.mass_min, 0.5);
  EXPECT_EQ(s.needle_asks, 3u);
  EXPECT_EQ(s.needle_hits, 2u);
  EXPECT_DOUBLE_EQ(s.needle_hit_rate, 2.0 / 3.0);
  EXPECT_DOUBLE_EQ(s.pages_selected_mean, 15.0);
}

// The mass's lower tail: p01 / p10 are the largest sampled values with at most 1 % / 10 % of
// the samples below them, whatever the order the samples came in and however they were
// split between accumulators; one sample alone is every percentile.
TEST(Accuracy, MassLowerTailIsTheNearestRankFromBelow) {
  std::vector<double> masses;
  for (int i = 0; i < 200; ++i) masses.push_back(i / 200.0);
  std::mt19937_64 gen(11);
  std::shuffle(masses.begin(), masses.end(), gen);
  accuracy_accumulator a, b;
  a.add_mass({masses.begin(), masses.begin() + 61});
  b.add_mass({masses.begin() + 61, masses.end()});
  a.merge(b);
  const auto s = a.summary();
  EXPECT_DOUBLE_EQ(s.mass_min, 0.0);
  EXPECT_DOUBLE_EQ(s.mass_p01, 2 / 200.0);   // 2 of 200 samples (1 %) below it
  EXPECT_DOUBLE_EQ(s.mass_p10, 20 / 200.0);  // 20 of 200 (10 %) below it
  EXPECT_NEAR(s.mass_mean, 199 / 400.0, 1e-12);
  accuracy_accumulator one;
  one.add_mass({0.25});
  EXPECT_DOUBLE_EQ(one.summary().mass_p01, 0.25);
  EXPECT_DOUBLE_EQ(one.summary().mass_p10, 0.25);
  EXPECT_TRUE(std::isnan(accuracy_accumulator{}.summary().mass_p01));
}

}  // namespace
}  // namespace pnmkv::test
