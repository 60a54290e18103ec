// Admission (schedulers/admission.hpp), as properties:
//  1. constraints are checked in the order added; the first failing one is the verdict, the
//     later ones are not asked, and a refusal takes nothing;
//  2. release gives back exactly what an admission took (pools, GPU bytes, emulator bytes,
//     the batch count): after any admit/release sequence that empties the system, every
//     candidate gets the verdict it got from the fresh system;
//  3. an empty system has the most room: a request refused by it is refused with any other
//     requests in the system (so refusing it for good then is right);
//  4. the live sizing (batch_of_longest) and the simulator's (per_request) admit the same
//     number of equal requests; summaries fall back to the link only under fit_per_request;
//  5. hand-checked details: the fullest pool is skipped, shape errors are not capacity, the
//     emulator names the device, the TPOT predictor sees the placement, a NaN refuses.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "schedulers/admission.hpp"

namespace pnmkv {
namespace {

const std::string configs = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/";

// --- 1. order --------------------------------------------------------------------------------

struct log_entry {
  int constraint;
  char what;  // 'c'heck, 'C'ommit, 'r'elease
};

class scripted final : public admission_constraint {
 public:
  scripted(int index, std::vector<log_entry>& log, const bool& pass)
      : index_(index), log_(log), pass_(pass) {}
  admission_verdict check(const admission_candidate&, admission_grant&) override {
    log_.push_back({index_, 'c'});
    if (pass_) return {};
    return {admission_reason::gpu_memory, "constraint " + std::to_string(index_)};
  }
  void commit(const admission_grant&) override { log_.push_back({index_, 'C'}); }
  void release(const admission_grant&) override { log_.push_back({index_, 'r'}); }

 private:
  int index_;
  std::vector<log_entry>& log_;
  const bool& pass_;
};

TEST(admission_property, first_failing_constraint_is_named_and_nothing_is_taken) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + int(rng() % 6);
    std::vector<log_entry> log;
    // deque-like stable storage for the flags the constraints read
    std::unique_ptr<bool[]> pass(new bool[n]);
    admission a;
    for (int i = 0; i < n; ++i) a.add(std::make_unique<scripted>(i, log, pass[i]));
    for (uint64_t id = 1; id <= 5; ++id) {
      int first_fail = -1;
      for (int i = 0; i < n; ++i) {
        pass[i] = rng() % 3 != 0;
        if (!pass[i] && first_fail < 0) first_fail = i;
      }
      log.clear();
      const admission_verdict v = a.try_admit({id, 100, 10});
      if (first_fail < 0) {
        ASSERT_TRUE(v.admitted());
        ASSERT_EQ(log.size(), size_t(2 * n));  // every check, then every commit, in order
        for (int i = 0; i < n; ++i) {
          EXPECT_EQ(log[i].constraint, i);
          EXPECT_EQ(log[i].what, 'c');
          EXPECT_EQ(log[n + i].constraint, i);
          EXPECT_EQ(log[n + i].what, 'C');
        }
        ASSERT_NE(a.grant_of(id), nullptr);
      } else {
        ASSERT_FALSE(v.admitted());
        EXPECT_EQ(v.detail, "constraint " + std::to_string(first_fail));
        ASSERT_EQ(log.size(), size_t(first_fail + 1));  // later constraints not asked
        for (int i = 0; i <= first_fail; ++i) EXPECT_EQ(log[i].what, 'c');
        EXPECT_EQ(a.grant_of(id), nullptr);
      }
    }
    const uint32_t held = a.in_system();
    for (uint64_t id = 1; id <= 5; ++id) {
      log.clear();
      const bool was_held = a.grant_of(id) != nullptr;
      a.release(id);
      EXPECT_EQ(log.size(), was_held ? size_t(n) : size_t(0)) << "release of a request not held is a no-op";
    }
    EXPECT_EQ(a.in_system(), 0u) << held;
  }
}

TEST(admission, reason_names_are_stable) {
  // The simulator reports these words (batch_limited_by, per-request refusals).
  EXPECT_STREQ(to_string(admission_reason::admitted), "admitted");
  EXPECT_STREQ(to_string(admission_reason::batch_cap), "batch_max");
  EXPECT_STREQ(to_string(admission_reason::gpu_memory), "gpu_memory");
  EXPECT_STREQ(to_string(admission_reason::device_capacity), "device_capacity");
  EXPECT_STREQ(to_string(admission_reason::invalid_placement), "placement");
  EXPECT_STREQ(to_string(admission_reason::emulator_memory), "emulator_memory");
  EXPECT_STREQ(to_string(admission_reason::tpot_budget), "tpot");
}

// --- A real admission on small devices ----------------------------------------------------

struct fixture_parts {
  model_shape model;
  hardware_spec hw;
  std::shared_ptr<const cost_model> costs;
};

fixture_parts load_parts() {
  auto hw = load_hardware(configs + "hardware/h100-cxl-pnm.yaml");
  auto m = load_model_shape(configs + "models/llama-3.1-8b.yaml");
  EXPECT_TRUE(hw && m);
  fixture_parts p{*m, *hw, nullptr};
  p.costs = std::make_shared<cost_model>(*hw, *m);
  return p;
}

placement_request shape_of(const model_shape& m) {
  placement_request r;
  r.page_size_tokens = 16;
  r.layers = m.layers;
  r.kv_heads = m.kv_heads;
  r.head_dim = m.head_dim;
  r.summary_elem_bytes = 2;
  return r;
}

gpu_memory_params gpu_of(const fixture_parts& p, run_mode mode, gpu_sizing sizing) {
  gpu_memory_params g;
  g.model = p.model;
  g.hw = p.hw;
  g.query.mode = mode;
  g.query.budget_tokens = 2048;
  g.query.page_size_tokens = 16;
  g.query.summary_elem_bytes = 2;
  g.sizing = sizing;
  const gpu_memory_use u = gpu_memory(p.model, p.hw, [&] {
    gpu_memory_query q = g.query;
    q.batch = 0;
    return q;
  }());
  g.free_bytes = u.capacity_bytes - u.weights_bytes;
  return g;
}

// 8 devices in pools of `per_pool`, `capacity` bytes each; GPU per request; emulator with
// `emulator` bytes per device (live layers: 2 of 32); a batch cap.
admission small_system(const fixture_parts& p, uint32_t per_pool, uint64_t capacity, uint64_t emulator,
                       uint32_t batch_max, placement_constraint** pools_out = nullptr) {
  std::vector<uint32_t> ids;
  for (uint32_t i = 0; i < 8; ++i) ids.push_back(100 + i);
  admission_params ap;
  ap.batch_max = batch_max;
  ap.gpu = gpu_of(p, run_mode::pnm_kv, gpu_sizing::per_request);
  placement_params pp;
  pp.pools = make_pools(ids, per_pool, capacity);
  pp.request = shape_of(p.model);
  pp.costs = p.costs;
  pp.cross_shard = cross_shard_selection::local;
  admission a;
  a.add(std::make_unique<batch_cap_constraint>(batch_max));
  a.add(std::make_unique<gpu_memory_constraint>(*ap.gpu));
  auto pc = std::make_unique<placement_constraint>(pp);
  if (pools_out) *pools_out = pc.get();
  a.add(std::move(pc));
  std::map<uint32_t, uint64_t> em;
  for (uint32_t id : ids) em[id] = emulator;
  a.add(std::make_unique<emulator_memory_constraint>(em, p.model.layers, 2));
  return a;
}

admission_candidate random_candidate(std::mt19937_64& rng, uint64_t id) {
  return {id, 1000 + rng() % 200000, 1 + rng() % 2000};
}

std::vector<admission_reason> verdicts(admission& a, const std::vector<admission_candidate>& cs) {
  std::vector<admission_reason> out;
  for (const auto& c : cs) {
    const admission_verdict v = a.try_admit(c);
    out.push_back(v.reason);
    a.release(c.request_id);
  }
  return out;
}

// --- 2. release restores capacity ---------------------------------------------------------

TEST(admission_property, release_restores_every_constraint) {
  const fixture_parts p = load_parts();
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 30; ++trial) {
    const uint32_t per_pool = (trial % 3 == 0) ? 8 : (trial % 3 == 1) ? 4 : 2;
    placement_constraint* pc = nullptr;
    admission a = small_system(p, per_pool, 20'000'000'000ull, 1'200'000'000ull, 12, &pc);
    const std::vector<pool_state> pools0 = pc->pools();
    // Probe candidates (ids far from the others), their verdicts on the fresh system.
    std::vector<admission_candidate> probes;
    for (uint64_t k = 0; k < 20; ++k) probes.push_back(random_candidate(rng, 1'000'000 + k));
    const std::vector<admission_reason> fresh = verdicts(a, probes);
    // Random admits and releases, then release everything.
    std::vector<uint64_t> held;
    for (uint64_t id = 1; id <= 60; ++id) {
      if (!held.empty() && rng() % 3 == 0) {
        const size_t k = rng() % held.size();
        a.release(held[k]);
        held.erase(held.begin() + long(k));
      }
      if (a.try_admit(random_candidate(rng, id)).admitted()) held.push_back(id);
    }
    EXPECT_GT(held.size(), 0u);
    for (uint64_t id : held) a.release(id);
    ASSERT_EQ(a.in_system(), 0u);
    for (size_t i = 0; i < pools0.size(); ++i) EXPECT_EQ(pc->pools()[i].free_bytes, pools0[i].free_bytes);
    EXPECT_EQ(verdicts(a, probes), fresh) << "trial " << trial;
  }
}

// --- 3. an empty system has the most room -------------------------------------------------

TEST(admission_property, refused_by_an_empty_system_means_refused_always) {
  const fixture_parts p = load_parts();
  std::mt19937_64 rng(13);
  int refused_seen = 0;
  for (int trial = 0; trial < 30; ++trial) {
    admission a = small_system(p, trial % 2 ? 4 : 8, 600'000'000ull, 60'000'000ull, 8);
    std::vector<admission_candidate> probes;
    for (uint64_t k = 0; k < 10; ++k) {
      admission_candidate c = random_candidate(rng, 1'000'000 + k);
      c.prompt_tokens *= 1 + rng() % 8;  // some too long for an empty system
      probes.push_back(c);
    }
    const std::vector<admission_reason> empty = verdicts(a, probes);
    for (uint64_t id = 1; id <= 20; ++id) (void)a.try_admit(random_candidate(rng, id));
    for (size_t k = 0; k < probes.size(); ++k) {
      if (empty[k] == admission_reason::admitted) continue;
      ++refused_seen;
      const admission_verdict v = a.try_admit(probes[k]);
      EXPECT_FALSE(v.admitted()) << "refused when empty (" << to_string(empty[k]) << "), admitted with "
                                 << a.in_system() << " others";
      a.release(probes[k].request_id);
    }
  }
  EXPECT_GT(refused_seen, 10) << "the test must see refusals to mean anything";
}

// --- 4. GPU sizing ------------------------------------------------------------------------

TEST(admission_property, live_and_sim_gpu_sizing_admit_the_same_equal_requests) {
  const fixture_parts p = load_parts();
  for (run_mode mode : {run_mode::baseline, run_mode::pnm_kv, run_mode::png_kv, run_mode::gpu_only}) {
    for (uint64_t tokens : {8192ull, 131072ull, 1048576ull}) {
      // A GPU with room for 700.5 of these requests next to the weights.
      fixture_parts q = p;
      gpu_memory_params probe = gpu_of(p, mode, gpu_sizing::per_request);
      probe.query.steady_tokens = mode == run_mode::png_kv ? 512 : 0;
      const double per = gpu_memory_constraint(probe).request_bytes(tokens, true);
      q.hw.gpu.memory_bytes = p.hw.gpu.reserved_bytes + p.model.params_from_shape() * 2.0 + 700.5 * per;
      gpu_memory_params live = gpu_of(q, mode, gpu_sizing::batch_of_longest);
      gpu_memory_params sim = gpu_of(q, mode, gpu_sizing::per_request);
      live.query.steady_tokens = sim.query.steady_tokens = probe.query.steady_tokens;
      gpu_memory_constraint a(live), b(sim);
      auto admitted = [&](gpu_memory_constraint& c) {
        uint32_t n = 0;
        for (uint64_t id = 1; id <= 2000; ++id, ++n) {
          admission_grant g;
          g.request_id = id;
          g.final_tokens = tokens;
          if (!c.check({id, tokens - 1, 1}, g).admitted()) break;
          c.commit(g);
        }
        return n;
      };
      const uint32_t n_live = admitted(a), n_sim = admitted(b);
      gpu_memory_query mq = live.query;
      mq.context_tokens = tokens;
      EXPECT_EQ(n_live, max_batch(q.model, q.hw, mq)) << to_string(mode) << " " << tokens;
      // The ledger subtracts per request, the batch formula multiplies: equal to rounding.
      EXPECT_EQ(n_live, 700u) << to_string(mode) << " " << tokens;
      EXPECT_EQ(n_sim, 700u) << to_string(mode) << " " << tokens;
    }
  }
}

TEST(admission, summaries_fall_back_to_the_link_only_when_fit_per_request) {
  const fixture_parts p = load_parts();
  for (summary_policy policy : {summary_policy::fixed, summary_policy::fit_per_request}) {
    gpu_memory_params g = gpu_of(p, run_mode::baseline, gpu_sizing::per_request);
    g.query.summaries_resident = true;
    g.summaries = policy;
    gpu_memory_constraint c(g);
    const uint64_t tokens = 1 << 20;
    const double resident = c.request_bytes(tokens, true), link = c.request_bytes(tokens, false);
    ASSERT_GT(resident, link);
    bool saw_link = false;
    uint32_t n = 0;
    for (uint64_t id = 1; id < 10000; ++id, ++n) {
      admission_grant gr;
      gr.request_id = id;
      if (!c.check({id, tokens - 1, 1}, gr).admitted()) break;
      EXPECT_EQ(gr.gpu_bytes, gr.summaries_resident ? resident : link);
      // A request reads its summaries over the link only when they no longer fit.
      if (!gr.summaries_resident) {
        EXPECT_GT(resident, c.free_bytes());
      }
      saw_link = saw_link || !gr.summaries_resident;
      c.commit(gr);
    }
    EXPECT_EQ(saw_link, policy == summary_policy::fit_per_request);
    EXPECT_EQ(n, uint32_t(std::floor(g.free_bytes / resident)) +
                     (policy == summary_policy::fixed
                          ? 0
                          : uint32_t(std::floor((g.free_bytes - std::floor(g.free_bytes / resident) * resident) / link))))
        << "resident ones while they fit, then link ones";
  }
}

// --- 5. details ---------------------------------------------------------------------------

TEST(admission, fullest_pool_skipped_and_shape_errors_are_not_capacity) {
  const fixture_parts p = load_parts();
  placement_params pp;
  pp.pools = make_pools({1, 2, 3, 4, 5, 6}, 4, 1ull << 40);  // pools of 4 and 2 devices
  ASSERT_EQ(pp.pools.size(), 2u);
  EXPECT_EQ(pp.pools[1].device_ids, (std::vector<uint32_t>{5, 6}));
  pp.request = shape_of(p.model);
  pp.request.head_groups = 2;  // fixed h: divides both pools
  placement_constraint c(pp);
  admission_grant g;
  ASSERT_TRUE(c.check({1, 100000, 10}, g).admitted());
  EXPECT_EQ(g.pool, 0u) << "the pool with the most free bytes first";
  c.commit(g);
  admission_grant g2;
  ASSERT_TRUE(c.check({2, 100000, 10}, g2).admitted());
  EXPECT_EQ(g2.pool, 0u) << "still the most free bytes";
  // Replication 5 fits neither pool: a shape error, not capacity.
  placement_params bad = pp;
  bad.request.replication = 5;
  placement_constraint cb(bad);
  admission_grant g3;
  const admission_verdict v = cb.check({3, 1000, 10}, g3);
  EXPECT_EQ(v.reason, admission_reason::invalid_placement);
  EXPECT_NE(v.detail.find("replication 5"), std::string::npos) << v.detail;
  // Too long for any device: capacity, naming the device and bytes.
  admission_grant g4;
  const admission_verdict w = c.check({4, uint64_t(1) << 34, 10}, g4);
  EXPECT_EQ(w.reason, admission_reason::device_capacity);
  EXPECT_NE(w.detail.find("does not fit: device"), std::string::npos) << w.detail;
  // A lost device takes nothing new.
  c.device_lost(1);
  admission_grant g5;
  ASSERT_TRUE(c.check({5, 1000, 10}, g5).admitted());
  EXPECT_EQ(g5.pool, 1u) << "pool 0 has a device with no room";
}

TEST(admission, emulator_names_the_device_and_device_lost_refuses) {
  const fixture_parts p = load_parts();
  placement_params pp;
  pp.pools = make_pools({100, 101}, 0, 1ull << 40);
  pp.request = shape_of(p.model);
  pp.request.head_groups = 1;  // s = 2: one shard per device
  admission a;
  a.add(std::make_unique<placement_constraint>(pp));
  auto em = std::make_unique<emulator_memory_constraint>(std::map<uint32_t, uint64_t>{{100, 1ull << 30}, {101, 1ull << 30}},
                                                         p.model.layers, 1);
  emulator_memory_constraint* e = em.get();
  a.add(std::move(em));
  ASSERT_TRUE(a.try_admit({1, 4096, 16}).admitted());
  const admission_grant& g = *a.grant_of(1);
  const auto need = live_bytes_by_device(g.placement, p.model.layers, 1);
  EXPECT_EQ(e->free_bytes(100), (1ull << 30) - need.at(100));
  a.release(1);
  EXPECT_EQ(e->free_bytes(100), 1ull << 30);
  // One byte short on device 101 only: the emulator refuses and names it.
  admission b;
  b.add(std::make_unique<placement_constraint>(pp));
  b.add(std::make_unique<emulator_memory_constraint>(
      std::map<uint32_t, uint64_t>{{100, need.at(100)}, {101, need.at(101) - 1}}, p.model.layers, 1));
  const admission_verdict v = b.try_admit({2, 4096, 16});
  EXPECT_EQ(v.reason, admission_reason::emulator_memory);
  EXPECT_NE(v.detail.find("device 101 would hold " + std::to_string(need.at(101))), std::string::npos) << v.detail;
  // A lost device: both its pool bytes and its emulator bytes go to zero; the pool is
  // checked first.
  a.device_lost(101);
  EXPECT_EQ(e->free_bytes(101), 0u);
  EXPECT_EQ(a.try_admit({3, 4096, 16}).reason, admission_reason::device_capacity);
}

// A request that fails because a device it used was lost is released (the GPU host sends
// Release, the coordinator gives its room back): every constraint gets back what it took,
// except on the lost device, which stays at zero whatever is released onto it.
TEST(admission, release_after_a_device_loss_frees_the_survivors_and_never_the_lost_device) {
  const fixture_parts p = load_parts();
  placement_constraint* pc = nullptr;
  admission a = small_system(p, 4, 20'000'000'000ull, 1'200'000'000ull, 12, &pc);
  const std::vector<pool_state> before = pc->pools();
  ASSERT_TRUE(a.try_admit({1, 50'000, 100}).admitted());
  ASSERT_TRUE(a.try_admit({2, 50'000, 100}).admitted());
  const uint32_t pool1 = a.grant_of(1)->pool;
  const uint32_t lost = a.grant_of(1)->placement.shards.front().device_id;
  a.device_lost(lost);
  a.release(1);
  EXPECT_EQ(a.in_system(), 1u);
  const auto& pool = pc->pools()[pool1];
  for (size_t k = 0; k < pool.device_ids.size(); ++k) {
    if (pool.device_ids[k] == lost) {
      EXPECT_EQ(pool.free_bytes[k], 0u) << "the lost device got room back";
      continue;
    }
    // What request 2 holds there (nothing when it went to the other pool).
    uint64_t held2 = 0;
    if (a.grant_of(2)->pool == pool1)
      for (const auto& sh : a.grant_of(2)->placement.shards) {
        if (sh.device_id == pool.device_ids[k]) held2 += sh.bytes_modelled;
        for (uint32_t r : sh.replica_device_ids) held2 += r == pool.device_ids[k] ? sh.bytes_modelled : 0;
      }
    EXPECT_EQ(pool.free_bytes[k], before[pool1].free_bytes[k] - held2) << "device " << pool.device_ids[k];
  }
  // Releasing the survivor too leaves the lost device at zero; the other pool is whole.
  a.release(2);
  EXPECT_EQ(a.in_system(), 0u);
  for (size_t i = 0; i < before.size(); ++i)
    for (size_t k = 0; k < before[i].device_ids.size(); ++k)
      EXPECT_EQ(pc->pools()[i].free_bytes[k], before[i].device_ids[k] == lost ? 0 : before[i].free_bytes[k]);
}

// A new copy after a loss (re-replication, recompute) goes to a live device holding nothing
// of the request, the one with the most modelled room; both the pool and the emulator pay
// for it, the grant lists it, and a release gives it back. With no device left that holds
// nothing of the request, or none with room, the error says which.
TEST(admission, a_new_copy_goes_where_there_is_most_room_and_is_given_back_on_release) {
  const fixture_parts p = load_parts();
  placement_params pp;
  pp.pools = make_pools({100, 101, 102, 103}, 2, 1ull << 40);
  pp.request = shape_of(p.model);
  pp.request.head_groups = 1;  // s = 2: one shard per device of a pool
  admission a;
  auto pc_owned = std::make_unique<placement_constraint>(pp);
  placement_constraint* pc = pc_owned.get();
  a.add(std::move(pc_owned));
  std::map<uint32_t, uint64_t> emu{{100, 1ull << 30}, {101, 1ull << 30}, {102, 1ull << 30}, {103, 1ull << 30}};
  auto em = std::make_unique<emulator_memory_constraint>(emu, p.model.layers, 1);
  emulator_memory_constraint* e = em.get();
  a.add(std::move(em));
  ASSERT_TRUE(a.try_admit({1, 4096, 16}).admitted());  // the fuller pool is skipped next
  ASSERT_TRUE(a.try_admit({2, 4096, 16}).admitted());
  const request_placement pl1 = a.grant_of(1)->placement;
  ASSERT_EQ(pl1.shards.size(), 2u);
  const std::vector<pool_state> before = pc->pools();
  const uint32_t lost = pl1.shards[0].device_id;
  a.device_lost(lost);
  // Request 1's pool: one device lost, the other holds shard 1: the copy goes to the
  // other pool, on its device with the most room (both equal: the lower id).
  auto d = a.add_copy(1, pl1.shards[0].shard_id);
  ASSERT_TRUE(d) << d.error().to_string();
  const uint32_t other_pool_first = lost < 102 ? 102 : 100;
  EXPECT_EQ(*d, other_pool_first);
  const shard_placement& now = a.grant_of(1)->placement.shards[0];
  ASSERT_EQ(now.replica_device_ids.size(), 1u);
  EXPECT_EQ(now.replica_device_ids[0], *d);
  EXPECT_EQ(e->free_bytes(*d), (1ull << 30) - live_bytes_by_device(a.grant_of(2)->placement, p.model.layers, 1).at(*d) -
                                   live_bytes(now, p.model.layers, 1));
  // A second copy of the same shard: not on *d again, not on the holder of shard 1.
  auto d2 = a.add_copy(1, pl1.shards[0].shard_id);
  ASSERT_TRUE(d2) << d2.error().to_string();
  EXPECT_NE(*d2, *d);
  EXPECT_EQ(*d2, other_pool_first + 1);
  // Shard 1: every live device but its holder holds shard 0 now; one of them takes it (a
  // device may hold several shards of a request), then the last; then none is left.
  const uint32_t holder1 = pl1.shards[1].device_id;
  auto d3 = a.add_copy(1, pl1.shards[1].shard_id);
  ASSERT_TRUE(d3) << d3.error().to_string();
  EXPECT_TRUE(*d3 == *d || *d3 == *d2);
  EXPECT_NE(*d3, holder1);
  auto d4 = a.add_copy(1, pl1.shards[1].shard_id);
  ASSERT_TRUE(d4) << d4.error().to_string();
  EXPECT_NE(*d4, *d3);
  auto none = a.add_copy(1, pl1.shards[1].shard_id);
  ASSERT_FALSE(none);
  EXPECT_NE(none.error().message().find("every live device holds that shard already"), std::string::npos)
      << none.error().to_string();
  // Released: every survivor gets back exactly what request 1 took, copies included.
  a.release(1);
  for (size_t i = 0; i < before.size(); ++i)
    for (size_t k = 0; k < before[i].device_ids.size(); ++k) {
      const uint32_t dev = before[i].device_ids[k];
      if (dev == lost) continue;
      uint64_t held1 = 0;
      for (const auto& sh : pl1.shards) held1 += sh.device_id == dev ? sh.bytes_modelled : 0;
      EXPECT_EQ(pc->pools()[i].free_bytes[k], before[i].free_bytes[k] + held1) << "device " << dev;
    }
  // Full devices: the error names the device and the bytes.
  admission b;
  placement_params tight = pp;
  b.add(std::make_unique<placement_constraint>(tight));
  b.add(std::make_unique<emulator_memory_constraint>(emu, p.model.layers, 1));
  ASSERT_TRUE(b.try_admit({1, 4096, 16}).admitted());
  const request_placement& pb = b.grant_of(1)->placement;
  b.device_lost(pb.shards[0].device_id);
  admission c;  // same, the emulator memory just what the first placement needs, none elsewhere
  const auto need_b = live_bytes_by_device(pb, p.model.layers, 1);
  std::map<uint32_t, uint64_t> small = emu;
  for (auto& [dev, bytes] : small) bytes = need_b.count(dev) ? need_b.at(dev) : 0;
  c.add(std::make_unique<placement_constraint>(tight));
  c.add(std::make_unique<emulator_memory_constraint>(small, p.model.layers, 1));
  ASSERT_TRUE(c.try_admit({1, 4096, 16}).admitted());
  c.device_lost(c.grant_of(1)->placement.shards[0].device_id);
  auto full = c.add_copy(1, c.grant_of(1)->placement.shards[0].shard_id);
  ASSERT_FALSE(full);
  EXPECT_NE(full.error().message().find("is full"), std::string::npos) << full.error().to_string();
  EXPECT_NE(full.error().message().find("cluster.device_memory_bytes_max"), std::string::npos)
      << full.error().to_string();
}

TEST(admission, batch_cap_counts_admitted_requests) {
  admission a;
  a.add(std::make_unique<batch_cap_constraint>(2));
  EXPECT_TRUE(a.try_admit({1, 10, 1}).admitted());
  EXPECT_TRUE(a.try_admit({2, 10, 1}).admitted());
  EXPECT_EQ(a.try_admit({3, 10, 1}).reason, admission_reason::batch_cap);
  a.release(1);
  EXPECT_TRUE(a.try_admit({3, 10, 1}).admitted());
}

TEST(admission, tpot_predictor_sees_the_placement_and_nan_refuses) {
  const fixture_parts p = load_parts();
  placement_params pp;
  pp.pools = make_pools({0, 1, 2, 3}, 0, 1ull << 40);
  pp.request = shape_of(p.model);
  pp.costs = p.costs;
  double predicted = 10;
  uint32_t shards_seen = 0;
  admission_params ap;
  ap.placement = pp;
  ap.tpot_ms_max = 20;
  ap.predict_step_ms = [&](const admission_candidate&, const admission_grant& g) {
    shards_seen = uint32_t(g.placement.shards.size());
    return predicted;
  };
  admission a = make_admission(std::move(ap));
  EXPECT_TRUE(a.try_admit({1, 4096, 16}).admitted());
  EXPECT_EQ(shards_seen, 4u) << "TPOT is checked after placement, with the candidate placed";
  predicted = 20.5;
  const admission_verdict v = a.try_admit({2, 4096, 16});
  EXPECT_EQ(v.reason, admission_reason::tpot_budget);
  EXPECT_NE(v.detail.find("20.500 ms, passes workload.tpot_ms_max = 20.000 ms"), std::string::npos) << v.detail;
  predicted = std::nan("");
  EXPECT_EQ(a.try_admit({3, 4096, 16}).reason, admission_reason::tpot_budget);
  predicted = 20;
  EXPECT_TRUE(a.try_admit({4, 4096, 16}).admitted()) << "at the limit is within it";
}

TEST(admission, make_admission_checks_in_the_one_order) {
  // Every later constraint would refuse too (TPOT always does): the first failing one in
  // the order batch cap, GPU memory, devices, emulator, TPOT is named.
  const fixture_parts p = load_parts();
  auto build = [&](bool gpu_fits, bool pool_fits, bool emulator_fits) {
    admission_params ap;
    ap.batch_max = 1;
    ap.gpu = gpu_of(p, run_mode::pnm_kv, gpu_sizing::per_request);
    if (!gpu_fits) ap.gpu->free_bytes = 1;
    placement_params pp;
    pp.pools = make_pools({0, 1}, 0, pool_fits ? 1ull << 40 : 1);
    pp.request = shape_of(p.model);
    pp.request.head_groups = 1;
    ap.placement = pp;
    ap.emulator_free_bytes = std::map<uint32_t, uint64_t>{{0, emulator_fits ? 1ull << 40 : 0},
                                                          {1, emulator_fits ? 1ull << 40 : 0}};
    ap.layers = p.model.layers;
    ap.tpot_ms_max = 1;
    ap.predict_step_ms = [](const admission_candidate&, const admission_grant&) { return 1e9; };
    return make_admission(std::move(ap));
  };
  EXPECT_EQ(build(false, false, false).try_admit({1, 4096, 16}).reason, admission_reason::gpu_memory);
  EXPECT_EQ(build(true, false, false).try_admit({1, 4096, 16}).reason, admission_reason::device_capacity);
  EXPECT_EQ(build(true, true, false).try_admit({1, 4096, 16}).reason, admission_reason::emulator_memory);
  EXPECT_EQ(build(true, true, true).try_admit({1, 4096, 16}).reason, admission_reason::tpot_budget);
  // With one request in, the cap comes first whatever else would fail.
  admission capped;
  capped.add(std::make_unique<batch_cap_constraint>(1));
  capped.add(std::make_unique<tpot_constraint>(
      1, [](const admission_candidate& c, const admission_grant&) { return c.request_id == 1 ? 0.5 : 1e9; }));
  ASSERT_TRUE(capped.try_admit({1, 10, 1}).admitted());
  EXPECT_EQ(capped.try_admit({2, 10, 1}).reason, admission_reason::batch_cap);
}

}  // namespace
}  // namespace pnmkv
