// One output digest on every CPU: the same config and seed give the same output_digest
// whichever SIMD target the kernels run (AVX2, AVX3), because they share one canonical
// arithmetic (core/simd_internal.hpp). The run is forced through every canonical target
// this CPU supports and must give the pinned digest, so a machine with AVX2 only checks
// the same bits as one with AVX-512. Targets without fused multiply-add (SSE4, ...) are
// outside the guarantee: their run must still agree in accuracy to rounding.
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "core/simd_target.hpp"
#include "hwy/targets.h"

namespace pnmkv {
namespace {

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

// The small run at the defaults (lookahead on, bf16 queries and partial outputs: bf16
// rounding on the host and on the devices), pinned on an AMD EPYC (Zen 4) under AVX3 and
// AVX2 alike; and at fresh selection with fp32 on the links, pinned on an AMD EPYC (Zen 5)
// under AVX3 and AVX2 alike. They change when the workload, the selection or the canonical
// arithmetic changes on purpose: update them with the kernel digest in
// tests/core/targets_test.cpp.
struct pinned_run {
  const char* what;
  std::vector<std::string> sets;
  const char* golden_digest;
};
const pinned_run pinned_runs[] = {
    {"defaults", {}, "fcf7fc7b897b483d"},
    {"fresh selection, fp32 links", {"selection.lookahead=false", "run.wire_precision=fp32"}, "387f733e0b3e45e6"},
};

run_report run_small(const std::vector<std::string>& extra) {
  std::vector<std::string> sets = {"workload.context_tokens=8192", "run.steps=3", "workload.batch=2",
                                   "selection.budget_tokens=512", "run.step_timeout_ms=60000", "run.seed=1"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  auto c = load_config(default_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  auto rep = run_embedded(*c, {});
  EXPECT_TRUE(rep) << rep.error().to_string();
  return rep ? *rep : run_report{};
}

TEST(digest, every_simd_target_gives_the_one_pinned_digest) {
  const std::vector<int64_t> targets = hwy::SupportedAndGeneratedTargets();
  for (const pinned_run& p : pinned_runs) {
    SCOPED_TRACE(p.what);
    bool ran_canonical = false;
    run_report reference;
    for (int64_t t : targets) {
      const std::string name = hwy::TargetName(t);
      if (!kernel_target_is_canonical(name)) continue;
      SCOPED_TRACE("target " + name);
      hwy::SetSupportedTargetsForTest(t);
      const run_report r = run_small(p.sets);
      EXPECT_EQ(r.completed, 2u);
      EXPECT_EQ(r.output_digest_hex(), p.golden_digest);
      if (!ran_canonical) reference = r;
      ran_canonical = true;
    }
    ASSERT_TRUE(ran_canonical) << "this CPU has none of AVX2, AVX3: the guarantee is not checked";
    for (int64_t t : targets) {
      const std::string name = hwy::TargetName(t);
      if (kernel_target_is_canonical(name) || t == HWY_SCALAR || t == HWY_EMU128) continue;
      SCOPED_TRACE("non-canonical target " + name);
      hwy::SetSupportedTargetsForTest(t);
      const run_report r = run_small(p.sets);
      EXPECT_EQ(r.completed, 2u);
      EXPECT_NEAR(r.output_rel_err_mean, reference.output_rel_err_mean, 1e-4);
      EXPECT_NEAR(r.attention_mass_recall_mean, reference.attention_mass_recall_mean, 1e-4);
    }
  }
  hwy::SetSupportedTargetsForTest(0);
}

TEST(digest, a_bad_simd_target_name_is_refused_naming_the_allowed_ones) {
  const status s = restrict_kernel_target("AVX9");
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("AVX9"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(hwy::TargetName(hwy::SupportedAndGeneratedTargets().front())),
            std::string::npos)
      << s.message();
}

}  // namespace
}  // namespace pnmkv
