// sim.pool_auto (sim/simulator.cpp choose_pool_devices): the pool size it picks is never
// worse, by the tokens/s the run reports, than one pool of every device or any other
// divisor of the device count, each simulated explicitly with cluster.pool_devices set.
// The configurations are the ones where rating a pool at a batch other than the one the
// run admits went wrong: a baseline closed batch at its largest size, capped by GPU
// memory (summaries resident while they fit) below workload.batch_max, on 8B at 128K and
// on 405B with 16 expanders; also summaries forced resident or over the link, a fixed
// batch, a TPOT limit, and pnm-kv / png-kv at the same points.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "sim/simulator.hpp"
#include "tests/sim/sim_fixture.hpp"

namespace pnmkv {
namespace {

using namespace sim_fixture;
constexpr uint32_t devices = 16;

sim_result sim_of(std::vector<std::string> sets, const std::vector<std::string>& extra) {
  sets.insert(sets.end(), extra.begin(), extra.end());
  auto s = setup_of(sets);
  if (!s) return {};
  auto r = simulate(s);
  EXPECT_TRUE(r) << r.error().to_string();
  return r ? *r : sim_result{};
}

struct point {
  std::string name;
  std::vector<std::string> sets;
};

std::vector<point> points() {
  std::vector<point> out;
  const std::vector<std::string> common = {"cluster.pnm_devices=" + std::to_string(devices), "run.steps=8",
                                           "sim.batch_policy=max"};
  auto add = [&](std::string name, std::vector<std::string> sets) {
    sets.insert(sets.begin(), common.begin(), common.end());
    out.push_back({std::move(name), std::move(sets)});
  };
  for (const char* summaries : {"auto", "link", "resident"}) {
    const std::string sm = std::string("baseline.summaries=") + summaries;
    // 8B at 128K on one GPU: GPU memory holds 54 requests with resident summaries.
    add(std::string("baseline 8B 128K ") + summaries,
        {"run.mode=baseline", "model.file=" + m8, "workload.context_tokens=131072", "workload.batch_max=64", sm});
    // 405B on 16 GPUs and 16 expanders: GPU memory holds 23 requests at 512K, 11 at 1M;
    // one expander holds fewer than that.
    add(std::string("baseline 405B 512K ") + summaries,
        {"run.mode=baseline", "model.file=" + m405, "sim.tp=0", "workload.context_tokens=524288",
         "workload.batch_max=32", sm});
    add(std::string("baseline 405B 1M ") + summaries,
        {"run.mode=baseline", "model.file=" + m405, "sim.tp=0", "workload.context_tokens=1048576",
         "workload.batch_max=16", sm});
  }
  add("baseline 405B 512K fixed batch 12",
      {"run.mode=baseline", "model.file=" + m405, "sim.tp=0", "workload.context_tokens=524288",
       "sim.batch_policy=config", "workload.batch=12"});
  for (const char* mode : {"pnm-kv", "png-kv"})
    add(std::string(mode) + " 405B 512K",
        {std::string("run.mode=") + mode, "model.file=" + m405, "sim.tp=0", "workload.context_tokens=524288",
         "workload.batch_max=32"});
  // A TPOT limit of 60 ms stops admission before GPU memory or device capacity do.
  for (const char* mode : {"baseline", "pnm-kv"})
    add(std::string(mode) + " 405B 512K TPOT 60 ms",
        {std::string("run.mode=") + mode, "model.file=" + m405, "sim.tp=0", "workload.context_tokens=524288",
         "workload.batch_max=32", "workload.tpot_ms_max=60"});
  return out;
}

TEST(sim_pool_choice, chosen_pool_is_never_worse_than_one_pool_or_any_other_pool_size) {
  for (const point& p : points()) {
    SCOPED_TRACE(p.name);
    const sim_result chosen = sim_of(p.sets, {"sim.pool_auto=true"});
    ASSERT_GT(chosen.tokens_per_s, 0);
    ASSERT_EQ(devices % chosen.pool_devices, 0u) << chosen.pool_devices;
    auto setup = setup_of(p.sets);
    ASSERT_TRUE(setup);
    auto d = choose_pool_devices(*setup);
    ASSERT_TRUE(d) << d.error().to_string();
    EXPECT_EQ(*d, chosen.pool_devices);

    const sim_result one_pool = sim_of(p.sets, {"sim.pool_auto=false", "cluster.pool_devices=0"});
    EXPECT_EQ(one_pool.pools, 1u);
    EXPECT_GE(chosen.tokens_per_s, one_pool.tokens_per_s);
    for (uint32_t pool = 1; pool <= devices; ++pool) {
      if (devices % pool) continue;
      SCOPED_TRACE("pool_devices " + std::to_string(pool));
      const sim_result r =
          sim_of(p.sets, {"sim.pool_auto=false", "cluster.pool_devices=" + std::to_string(pool)});
      EXPECT_GE(chosen.tokens_per_s, r.tokens_per_s) << "chose " << chosen.pool_devices;
      // The chosen pool's run is the one reported.
      if (pool == chosen.pool_devices) {
        EXPECT_EQ(chosen.tokens_per_s, r.tokens_per_s);
        EXPECT_EQ(chosen.batch_peak, r.batch_peak);
      }
    }
  }
}

TEST(sim_pool_choice, a_pool_size_that_admits_nothing_is_never_chosen_and_none_is_an_error) {
  // 405B at 1M: a request (575 GB) does not fit one 512 GB expander, so pools of one
  // admit nothing and are never chosen.
  const std::vector<std::string> sets = {"run.mode=baseline", "model.file=" + m405, "sim.tp=0",
                                         "workload.context_tokens=1048576", "sim.batch_policy=max",
                                         "workload.batch_max=16", "run.steps=4", "cluster.pnm_devices=16"};
  std::vector<std::string> ones = sets;
  ones.push_back("cluster.pool_devices=1");
  const sim_result r1 = sim_of(ones, {});
  EXPECT_EQ(r1.batch_peak, 0u);
  EXPECT_EQ(r1.batch_limited_by.rfind("device_capacity", 0), 0u) << r1.batch_limited_by;
  auto s = setup_of(sets);
  ASSERT_TRUE(s);
  auto d = choose_pool_devices(*s);
  ASSERT_TRUE(d) << d.error().to_string();
  EXPECT_NE(*d, 1u);
  // 4M tokens (2.3 TB a request) on 2 expanders: no pool size admits a request.
  std::vector<std::string> none = sets;
  none.push_back("workload.context_tokens=4194304");
  none.push_back("cluster.pnm_devices=2");
  auto s2 = setup_of(none);
  ASSERT_TRUE(s2);
  auto d2 = choose_pool_devices(*s2);
  ASSERT_FALSE(d2);
  EXPECT_NE(d2.error().to_string().find("no pool size of the 2 devices admits a request"), std::string::npos)
      << d2.error().to_string();
}

}  // namespace
}  // namespace pnmkv
