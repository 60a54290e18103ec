// A short deterministic fault simulation in the actors suite (actors/detsim.hpp), the suite
// `./pnmkv test` also builds and runs under AddressSanitizer and UndefinedBehaviorSanitizer:
// 100 seeds of fault schedules (crashes, hangs, partitions, lost, duplicated, delayed and
// corrupted messages) through failover, fencing, retries and shutdown, with every invariant
// checked (--strict). The full 1000-seed sweep is tests/cluster/detsim_test.cpp.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "actors/detsim.hpp"

namespace pnmkv {
namespace {

TEST(detsim_short, a_hundred_seeds_hold_every_invariant) {
  auto sets = detsim_base_sets();
  auto cfg = load_config(std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml", sets);
  ASSERT_TRUE(cfg) << cfg.error().to_string();
  detsim_sweep_options so;
  so.first_seed = 5001;  // not the cluster sweep's seeds
  so.last_seed = 5100;
  so.strict = true;
  so.replay_hint = "build/pnmkv detsim --seed {} --strict";
  std::string failures;
  so.log = [&](const std::string& s) { failures += s + "\n"; };
  auto res = detsim_sweep(*cfg, so);
  ASSERT_TRUE(res) << res.error().to_string();
  EXPECT_EQ(res->seeds, 100u);
  EXPECT_TRUE(res->failed.empty()) << failures;
  EXPECT_GT(res->devices_lost, 0u);
}

}  // namespace
}  // namespace pnmkv
