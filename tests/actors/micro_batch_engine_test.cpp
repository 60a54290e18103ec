// Sub-batch overlap in the host engine (run.micro_batches): a layer's micro-batches are issued
// one after another while the earlier ones are in flight, the outputs are the same bits as
// with one micro-batch, and the step is charged as schedulers/step_model.hpp predicts it.
#include <gtest/gtest.h>

#include <set>
#include <vector>

#include "actors/host_engine.hpp"
#include "schedulers/step_model.hpp"
#include "tests/actors/harness.hpp"

namespace pnmkv {
namespace {

std::set<uint64_t> queried(const std::vector<device_work>& work) {
  std::set<uint64_t> ids;
  for (const auto& w : work)
    if (w.what == device_work::kind::query) ids.insert(w.query.request_id);
  return ids;
}

TEST(micro_batch_engine, issues_each_micro_batch_behind_the_last_and_keeps_every_output) {
  auto m = tiny_model(2, 4, 4, 64);
  for (run_mode mode : {run_mode::pnm_kv, run_mode::png_kv}) {
    SCOPED_TRACE(int(mode));
    host_engine_config hc;
    hc.mode = mode;
    hc.live_layers = 2;
    hc.budget_tokens = 256;
    std::map<uint64_t, uint64_t> digests[2];
    double serial = 0, step_ns = 0;
    for (uint32_t mb : {1u, 2u}) {
      hc.micro_batches = mb;
      harness h(m, hc, 4, 5);
      for (uint64_t id = 1; id <= 4; ++id) h.add(id, 900 + 37 * id, 4);
      h.prefill();
      if (mb == 2) {
        // The first layer's work is micro-batch 0's alone; micro-batch 1 waits to be taken.
        auto first = h.host.begin_step(0);
        ASSERT_TRUE(first) << first.error().to_string();
        const std::set<uint64_t> a = queried(*first);
        EXPECT_EQ(a.size(), 2u);
        ASSERT_TRUE(h.host.micro_batch_pending());
        auto second = h.host.next_micro_batch();
        ASSERT_TRUE(second) << second.error().to_string();
        const std::set<uint64_t> b = queried(*second);
        EXPECT_EQ(b.size(), 2u);
        for (uint64_t id : b) EXPECT_EQ(a.count(id), 0u);
        EXPECT_FALSE(h.host.micro_batch_pending());
        // Serve the rest of the step as the harness does.
        std::vector<device_work> work = std::move(*first);
        for (auto& w : *second) work.push_back(std::move(w));
        while (!work.empty()) {
          std::vector<device_work> next;
          for (auto& w : work) {
            device_engine& d = h.devices.at(w.device_id);
            if (w.what == device_work::kind::write) {
              h.write_or_hold(d, w);
              continue;
            }
            device_reply r;
            r.tag = w.tag;
            r.device_id = w.device_id;
            if (w.what == device_work::kind::recall) {
              r.answer.pages = w.pages;
              ASSERT_TRUE(d.read_pages(w.request_id, w.layer, w.kv_head, w.pages, r.rows_per_page, r.k, r.v));
              r.vt_done_ns = w.vt_arrival_ns + w.device_cost_ns;
            } else {
              ASSERT_TRUE(d.query(w.query, r.answer));
              r.vt_done_ns = w.vt_arrival_ns;
            }
            auto more = h.host.on_reply(r);
            ASSERT_TRUE(more) << more.error().to_string();
            for (auto& x : *more) next.push_back(std::move(x));
          }
          work = std::move(next);
          h.drain_micro_batches(work);
        }
        ASSERT_TRUE(h.host.step_done());
        for (uint32_t s = 1; s < 4; ++s) h.step(s);
        EXPECT_EQ(h.host.last_step().micro_batches, 2u);
        serial = h.host.last_step().serial_ns;
        step_ns = h.host.last_step().virtual_ns - h.host.last_step().lm_head_ns - h.host.last_step().copy_ns;
      } else {
        for (uint32_t s = 0; s < 4; ++s) h.step(s);
        EXPECT_EQ(h.host.last_step().micro_batches, 1u);
        EXPECT_EQ(h.host.last_step().overlap_ns, 0.0);
      }
      digests[mb - 1] = h.host.request_digests();
    }
    EXPECT_EQ(digests[0], digests[1]);
    EXPECT_LE(step_ns, serial * (1 + 1e-12));
    EXPECT_GT(serial, 0.0);
  }
}

}  // namespace
}  // namespace pnmkv
