// Drives a host_engine with one device_engine per device, in one thread, with no CAF and
// no wire: the engines' contract, tested directly. Recalls are served like the device
// actor serves them; devices charge their clocks unless the work is on the GPU's behalf.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>
#include <string>

#include "actors/device_engine.hpp"
#include "actors/host_engine.hpp"
#include "schedulers/step_model.hpp"
#include "schedulers/step_timeline.hpp"
#include "core/workload.hpp"

namespace pnmkv {

inline const std::string configs = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/";

inline model_shape tiny_model(uint32_t layers, uint32_t kv_heads, uint32_t group, uint32_t head_dim) {
  model_shape m;
  m.name = "tiny";
  m.layers = layers;
  m.kv_heads = kv_heads;
  m.q_heads = kv_heads * group;
  m.head_dim = head_dim;
  m.hidden = m.q_heads * head_dim;
  m.ffn = 4 * m.hidden;
  m.vocab = 1000;
  return m;
}

// The step model's setup for what a harness runs (one GPU, layer-wide baseline rounds).
inline std::shared_ptr<step_setup> step_setup_of(const cost_model& c, const host_engine_config& hc,
                                          uint32_t devices) {
  auto s = std::make_shared<step_setup>();
  s->mode = hc.mode;
  s->model = c.model();
  s->costs = std::make_shared<cost_model>(c);
  s->devices = devices;
  s->pool_devices = devices;
  s->page_size_tokens = hc.page_size_tokens;
  s->budget_tokens = hc.budget_tokens;
  s->heads_scored = c.model().gqa_group();
  s->exact_cross_shard = hc.cross_shard == cross_shard_selection::exact;
  s->lookahead = hc.lookahead;
  s->wire = hc.wire;
  s->baseline_overlap = false;
  return s;
}

struct harness {
  cost_model costs;
  synthetic_workload wl;
  host_engine host;
  std::map<uint32_t, device_engine> devices;
  std::vector<double> device_clocks_seen;

  harness(const model_shape& m, host_engine_config hc, uint32_t n_devices, uint64_t seed)
      : costs(*load_hardware(configs + "hardware/h100-cxl-pnm.yaml"), m),
        wl(*synthetic_workload::create(workload_params{}, seed, m.head_dim, m.gqa_group())),
        host(hc, costs, wl) {
    for (uint32_t i = 0; i < n_devices; ++i) {
      device_engine_config dc;
      dc.device_id = 10 + i;
      dc.shape.head_dim = m.head_dim;
      dc.shape.page_size_tokens = hc.page_size_tokens;
      dc.live_layers = hc.live_layers;
      devices.emplace(dc.device_id, device_engine(dc));
    }
  }

  uint32_t head_groups = 0;
  sequence_split split = sequence_split::contiguous;
  uint32_t replication = 1;
  // The devices the next add() places on (empty: every device).
  std::vector<uint32_t> pool_devices;
  // A device that has "died": work sent to it is lost (never served, never answered).
  std::set<uint32_t> dead;
  // Requests the host gave up on when it failed the dead devices over.
  std::vector<lost_request> lost;
  // Rebuild what a failover asks for at once (as the GPU host does, with the coordinator's
  // choice made here: the lowest live device holding nothing of the request): recompute a
  // shard with no copy left, copy a shard below its copies from its primary. A device
  // holding nothing of the request is preferred, then one without that shard.
  bool rebuild = false;
  bool rebuild_copies = true;         // with rebuild: re-replicate too
  // Decode appends lost on the way to this device in this step (an unacknowledged message
  // dropped): the device misses those rows.
  uint32_t drop_appends_to = 0;
  int drop_appends_step = -1;
  std::vector<rebuild_need> rebuilt;  // what was rebuilt, in order
  // Called with every query a device answered (not the lookahead searches that follow an
  // attend) and its answer; the device may be queried again.
  std::function<void(device_engine&, const device_query&, const device_answer&)> on_answer;

  // A write that arrives before an earlier row of its shard is held (as the device actor
  // holds it) and applied once the gap is filled.
  std::vector<device_work> held;
  void write_or_hold(device_engine& d, const device_work& w) {
    auto st = d.write(w.request_id, w.layer, w.kv_head, w.position, w.k.data(), w.v.data(), w.n_tokens);
    if (!st && st.code() == errc::not_ready) {
      held.push_back(w);
      return;
    }
    ASSERT_TRUE(st) << st.to_string();
    for (bool moved = true; moved;) {
      moved = false;
      for (auto it = held.begin(); it != held.end();) {
        auto r = devices.at(it->device_id)
                     .write(it->request_id, it->layer, it->kv_head, it->position, it->k.data(), it->v.data(),
                            it->n_tokens);
        if (!r && r.code() == errc::not_ready) {
          ++it;
          continue;
        }
        ASSERT_TRUE(r) << r.to_string();
        it = held.erase(it);
        moved = true;
      }
    }
  }

  void rebuild_now(const rebuild_need& n, std::vector<device_work>& next) {
    const shard_placement* sh = host.shard(n.request_id, n.shard_id);
    ASSERT_NE(sh, nullptr);
    const shard_placement shard = *sh;
    uint32_t target = 0;
    for (auto& [id, d] : devices)
      if (!dead.count(id) && !d.holds(n.request_id)) {
        target = id;
        break;
      }
    for (auto& [id, d] : devices)
      if (!target && !dead.count(id) && !d.shard(n.request_id, n.shard_id)) target = id;
    ASSERT_NE(target, 0u) << "no device free for a copy of request " << n.request_id;
    ASSERT_TRUE(devices.at(target).add_shard(n.request_id, shard));
    const uint32_t layers = host.config().live_layers;
    for (uint32_t l = 0; l < layers; ++l)
      for (uint32_t h = shard.kv_head_begin; h < shard.kv_head_end; ++h) {
        std::vector<device_work> writes;
        if (n.recompute) {
          const uint64_t end = host.tokens_written(n.request_id, l, h);
          for (uint64_t at = 0; at < end;) at = host.recompute_writes(n.request_id, n.shard_id, target, l, h, at, end, writes);
        } else {
          const std::vector<uint64_t> pages = host.shard_pages_written(n.request_id, n.shard_id, l, h);
          if (pages.empty()) continue;
          const device_work recall = host.copy_recall(n.request_id, n.shard_id, n.source, l, h, pages);
          device_reply r;
          r.answer.pages = recall.pages;
          ASSERT_TRUE(devices.at(n.source).read_pages(n.request_id, l, h, recall.pages, r.rows_per_page, r.k, r.v));
          writes = host.copy_writes(n.request_id, n.shard_id, target, l, h, r);
        }
        for (const auto& w : writes) {
          ASSERT_EQ(w.device_id, target);
          ASSERT_TRUE(devices.at(target).write(w.request_id, w.layer, w.kv_head, w.position, w.k.data(), w.v.data(),
                                               w.n_tokens));
        }
      }
    if (n.recompute) {
      auto resend = host.shard_recomputed(n.request_id, n.shard_id, target);
      ASSERT_TRUE(resend) << resend.error().to_string();
      for (auto& w : *resend) next.push_back(std::move(w));
    } else {
      ASSERT_TRUE(host.replica_added(n.request_id, n.shard_id, target));
    }
    rebuilt.push_back(n);
  }

  void add(uint64_t id, uint64_t context, uint32_t steps) {
    placement_request pr;
    pr.head_groups = head_groups;
    pr.split = split;
    pr.request_id = id;
    pr.context_tokens = context;
    pr.decode_tokens = steps;
    pr.page_size_tokens = 16;
    pr.layers = costs.model().layers;
    pr.kv_heads = costs.model().kv_heads;
    pr.head_dim = costs.model().head_dim;
    pr.replication = replication;
    pool_state pool;
    for (auto& [id_, d] : devices) {
      if (!pool_devices.empty() && std::find(pool_devices.begin(), pool_devices.end(), id_) == pool_devices.end())
        continue;
      pool.device_ids.push_back(id_);
      pool.free_bytes.push_back(1ull << 40);
    }
    auto pl = place_request(pr, pool);
    ASSERT_TRUE(pl) << pl.error().to_string();
    for (const auto& s : pl->shards) {
      ASSERT_TRUE(devices.at(s.device_id).add_shard(id, s));
      for (uint32_t r : s.replica_device_ids) ASSERT_TRUE(devices.at(r).add_shard(id, s));
    }
    ASSERT_TRUE(host.add_request({id, context, steps}, *pl));
  }

  void prefill() {
    std::vector<device_work> work;
    while (host.next_prefill_chunk(work))
      for (auto& w : work)
        ASSERT_TRUE(devices.at(w.device_id).write(w.request_id, w.layer, w.kv_head, w.position,
                                                  w.k.data(), w.v.data(), w.n_tokens));
  }

  // kill_after_round: before serving the step's round k (0 = its first work), device
  // `kill` dies; once the round's other work is served, the host fails over.
  // Per device, the service time of the step's queries it served (on its clock or, lookahead
  // searches, in its idle time), priced as the devices price them.
  std::map<uint32_t, double> step_served_ns;

  void step(uint32_t s, int kill_after_round = -1, uint32_t kill = 0) {
    step_served_ns.clear();
    auto first = host.begin_step(s);
    ASSERT_TRUE(first) << first.error().to_string();
    std::vector<device_work> work = std::move(first).value();
    drain_micro_batches(work);
    int round = 0;
    bool failed_over = false;
    while (!work.empty() || (!dead.empty() && !failed_over && !host.step_done())) {
      if (round == kill_after_round) dead.insert(kill);
      std::vector<device_work> next;
      if (work.empty() && !dead.empty() && !failed_over) {
        // Nothing left to serve but answers from the dead device: fail over.
        failed_over = true;
        for (uint32_t d : dead) {
          auto resend = host.fail_over(d);
          ASSERT_TRUE(resend) << resend.error().to_string();
          for (auto& m : resend->resend) next.push_back(std::move(m));
          for (const auto& l : resend->lost) lost.push_back(l);
          if (rebuild)
            for (const auto& n : resend->rebuild) {
              if (!n.recompute && !rebuild_copies) continue;
              rebuild_now(n, next);
              if (::testing::Test::HasFatalFailure()) return;
            }
        }
        work = std::move(next);
        continue;
      }
      ++round;
      for (auto& w : work) {
        if (dead.count(w.device_id)) continue;  // lost with the device
        device_engine& d = devices.at(w.device_id);
        if (w.what == device_work::kind::recall) {
          device_reply r;
          r.tag = w.tag;
          r.device_id = w.device_id;
          r.answer.pages = w.pages;
          ASSERT_TRUE(d.read_pages(w.request_id, w.layer, w.kv_head, w.pages, r.rows_per_page, r.k, r.v));
          // png-kv's steady copies run on the copy engine's schedule, not the device clock.
          r.vt_done_ns = w.charge_device ? d.charge(w.vt_arrival_ns, w.device_cost_ns)
                                         : w.vt_arrival_ns + w.device_cost_ns;
          auto more = host.on_reply(r);
          ASSERT_TRUE(more) << more.error().to_string();
          for (auto& m : *more) next.push_back(std::move(m));
          continue;
        }
        if (w.what == device_work::kind::write) {
          if (!w.bulk && w.device_id == drop_appends_to && int(s) == drop_appends_step) continue;
          write_or_hold(d, w);
          if (::testing::Test::HasFatalFailure()) return;
          continue;
        }
        device_reply r;
        r.tag = w.tag;
        r.device_id = w.device_id;
        ASSERT_TRUE(d.query(w.query, r.answer));
        if (on_answer) on_answer(d, w.query, r.answer);
        const double cost_ns = device_service_cost(costs, device_op::pnm, double(r.answer.bytes_scanned),
                                                   r.answer.flops, r.answer.search.int_ops).time_ns;
        if (w.charge_device || w.query.background) step_served_ns[w.device_id] += cost_ns;
        if (w.charge_device) {  // a lookahead search (background) is served off the clock
          double before = d.clock_ns();
          r.vt_done_ns = d.charge(w.vt_arrival_ns, cost_ns);
          EXPECT_GE(r.vt_done_ns, before);
        }
        auto more = host.on_reply(r);
        ASSERT_TRUE(more) << more.error().to_string();
        for (auto& m : *more) next.push_back(std::move(m));
        if (w.search_tag) {  // lookahead: the search after the attend, off the device's clock
          device_reply sr;
          sr.tag = w.search_tag;
          sr.device_id = w.device_id;
          device_query sq = w.query;
          sq.round = selection_round::exact_candidates;
          sq.listed_pages = nullptr;
          sq.n_listed = 0;
          ASSERT_TRUE(d.query(sq, sr.answer));
          step_served_ns[w.device_id] += device_service_cost(costs, device_op::pnm, double(sr.answer.bytes_scanned),
                                                             sr.answer.flops, sr.answer.search.int_ops).time_ns;
          sr.vt_done_ns = d.clock_ns();
          auto after = host.on_reply(sr);
          ASSERT_TRUE(after) << after.error().to_string();
          for (auto& m : *after) next.push_back(std::move(m));
        }
      }
      work = std::move(next);
      drain_micro_batches(work);
    }
    ASSERT_TRUE(host.step_done());
  }

  // Sub-batch overlap: the running layer's next micro-batches go out behind `work` (as the
  // GPU host sends them, before any of their replies).
  void drain_micro_batches(std::vector<device_work>& work) {
    while (host.micro_batch_pending()) {
      auto more = host.next_micro_batch();
      ASSERT_TRUE(more) << more.error().to_string();
      for (auto& m : *more) work.push_back(std::move(m));
    }
  }
};


}  // namespace pnmkv
