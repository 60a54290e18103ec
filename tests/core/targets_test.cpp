// Runtime dispatch picks one Highway target per CPU, so a single machine exercises only
// one kernel build. This forces every compiled target this CPU supports in turn (SSSE3,
// SSE4, AVX2, AVX3 where present, and the scalar fallback) and checks the same
// properties on each: vectorised score equals the scalar loop, attention over every page
// equals the dense reference.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "core/attention.hpp"
#include "core/score.hpp"
#include "hwy/targets.h"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

TEST(targets, every_supported_target_computes_the_same_kernels) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  ASSERT_FALSE(targets.empty());
  for (int64_t target : targets) {
    hwy::SetSupportedTargetsForTest(target);
    SCOPED_TRACE(std::string("target ") + hwy::TargetName(target));
    EXPECT_STREQ(kernel_target_name(), hwy::TargetName(target));
    for (uint64_t seed = test::base_seed(); seed < test::base_seed() + 4; ++seed) {
      SCOPED_TRACE(test::seed_trace(seed));
      std::mt19937_64 gen(seed);
      const uint32_t d = 16u << (gen() % 4);
      const uint32_t page = 1 + static_cast<uint32_t>(gen() % 20);
      const uint32_t group = 1 + static_cast<uint32_t>(gen() % 9);
      const summary_precision prec = seed % 2 ? summary_precision::bf16 : summary_precision::fp32;
      const kv_head_store s = test::make_store(kv_head_shape{d, page, prec}, 1 + gen() % 900, gen);
      const std::vector<float> q = test::normal_floats(gen, group * d);
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        std::vector<float> fast(s.page_count());
        std::vector<float> slow(s.page_count());
        ASSERT_TRUE(score_pages(s, q.data(), group, agg, fast.data()).is_ok());
        ASSERT_TRUE(score_pages_scalar(s, q.data(), group, agg, slow.data()).is_ok());
        for (uint32_t p = 0; p < s.page_count(); ++p) {
          ASSERT_NEAR(fast[p], slow[p], 1e-4 * (1.0 + std::fabs(slow[p]))) << p;
        }
      }
      std::vector<uint32_t> pages(s.page_count());
      for (uint32_t p = 0; p < s.page_count(); ++p) pages[p] = p;
      partial sparse;
      partial dense;
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      ASSERT_TRUE(attend_pages(s, q.data(), group, pages.data(), pages.size(), scale, sparse).is_ok());
      ASSERT_TRUE(dense_attention_reference(s, q.data(), group, scale, dense).is_ok());
      for (uint32_t h = 0; h < group; ++h) {
        EXPECT_LT(test::rel_error(sparse.o.data() + h * d, dense.o.data() + h * d, d), 1e-5);
        EXPECT_LT(test::lse_error(sparse.lse[h], dense.lse[h]), 1e-5);
      }
    }
  }
  hwy::SetSupportedTargetsForTest(0);  // back to what the CPU offers
}

}  // namespace
}  // namespace pnmkv
