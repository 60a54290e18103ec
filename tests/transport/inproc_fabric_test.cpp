// In-process fabric properties: byte-identical delivery in order, bounded inboxes and send
// queues push back with errc::capacity, RMA is bounds-checked memcpy, a killed node is
// reported down to its peers while the others keep working, and handlers see every event.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <thread>

#include "transport/inproc_fabric.hpp"
#include "transport/samples.hpp"

namespace pnmkv::transport {
namespace {

using namespace std::chrono_literals;

struct cluster {
  std::shared_ptr<inproc_hub> hub = make_inproc_hub();
  std::vector<std::unique_ptr<fabric>> nodes;

  explicit cluster(size_t n, fabric_options base = {}) {
    for (size_t i = 0; i < n; ++i) {
      base.self = static_cast<node_id>(i);
      auto f = make_inproc_fabric(hub, base);
      EXPECT_TRUE(f.is_ok());
      nodes.push_back(std::move(f).value());
    }
    for (auto& a : nodes)
      for (auto& b : nodes)
        if (a != b) {
          EXPECT_TRUE(a->connect(b->self(), b->address()).is_ok());
        }
  }
  fabric& operator[](size_t i) { return *nodes[i]; }
};

TEST(InprocFabric, DeliversByteIdenticalMessagesInOrder) {
  cluster c(2);
  std::mt19937_64 rng(5);
  std::vector<std::vector<uint8_t>> sent;
  for (int i = 0; i < 200; ++i) {
    auto kind = static_cast<msg_kind>(i % msg_kind_count);
    auto bytes = sample_message(kind, static_cast<uint64_t>(i)).finish();
    if (i % 7 == 0) bytes.assign(1 + rng() % 5000, static_cast<uint8_t>(i));  // not capnp at all
    sent.push_back(bytes);
    ASSERT_TRUE(c[0].send(1, bytes).is_ok());
  }
  std::vector<fabric_event> got;
  while (got.size() < sent.size() && c[1].poll(got, 1s)) {
  }
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(got[i].kind, fabric_event_kind::message);
    EXPECT_EQ(got[i].peer, 0u);
    EXPECT_EQ(got[i].bytes, sent[i]) << i;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(got[i].bytes.data()) % 8, 0u);  // decodable in place
  }
  auto s = c[1].stats();
  EXPECT_EQ(s.recv_msgs, sent.size());
  EXPECT_EQ(s.gaps + s.duplicates + s.reordered + s.frame_crc_errors, 0u);
}

TEST(InprocFabric, FullInboxRefusesSendsWithCapacityUntilDrained) {
  fabric_options o;
  o.inbox_depth = 8;
  cluster c(2, o);
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(c[0].send(1, {1, 2, 3}).is_ok());
  status s = c[0].send(1, {4});
  EXPECT_EQ(s.code(), errc::capacity);
  EXPECT_EQ(c[0].stats().capacity_rejects, 1u);
  std::vector<fabric_event> ev;
  EXPECT_EQ(c[1].poll(ev, 0ms, 1), 1u);
  EXPECT_TRUE(c[0].send(1, {4}).is_ok());
  EXPECT_EQ(c[0].send(1, {5}).code(), errc::capacity);
}

TEST(InprocFabric, SendQueueDepthBoundsOperationsInFlight) {
  fabric_options o;
  o.send_queue_depth = 4;
  auto rules = parse_fault_script("delay ms=200");  // holds every frame: all stay in flight
  ASSERT_TRUE(rules.is_ok());
  o.faults.rules = rules.value();
  cluster c(2, o);
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(c[0].send(1, {1}).is_ok());
  EXPECT_EQ(c[0].send(1, {2}).code(), errc::capacity);
  std::vector<fabric_event> ev;
  while (ev.size() < 4 && c[1].poll(ev, 2s)) {
  }
  ASSERT_EQ(ev.size(), 4u);
  std::this_thread::sleep_for(20ms);
  EXPECT_TRUE(c[0].send(1, {3}).is_ok());  // slots were released on delivery
}

TEST(InprocFabric, PutAndGetAreBoundsCheckedCopies) {
  cluster c(2);
  std::vector<uint8_t> mem(1 << 16, 0);
  auto reg = c[1].register_region(mem.data(), mem.size());
  ASSERT_TRUE(reg.is_ok());
  auto rr = c[0].import_region(1, reg->remote_key);
  ASSERT_TRUE(rr.is_ok());
  EXPECT_FALSE(c[0].import_region(2, reg->remote_key).is_ok());  // wrong owner
  std::vector<uint8_t> data(1000);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint8_t>(i * 7);
  ASSERT_TRUE(c[0].put_wait(*rr, 123, data.data(), data.size()).is_ok());
  EXPECT_TRUE(std::equal(data.begin(), data.end(), mem.begin() + 123));
  std::vector<uint8_t> back(1000);
  ASSERT_TRUE(c[0].get_wait(*rr, 123, back.data(), back.size()).is_ok());
  EXPECT_EQ(back, data);
  EXPECT_EQ(c[0].put(*rr, mem.size() - 10, data.data(), 11).code(), errc::out_of_range);
  EXPECT_EQ(c[0].put(*rr, ~uint64_t{0}, data.data(), 2).code(), errc::out_of_range);
  ASSERT_TRUE(c[1].deregister_region(reg->id).is_ok());
  EXPECT_FALSE(c[0].put_wait(*rr, 0, data.data(), 10).is_ok());
  // A region the fabric allocates: zeroed, owned by the fabric.
  auto owned = c[1].allocate_region(4096);
  ASSERT_TRUE(owned.is_ok());
  EXPECT_EQ(static_cast<uint8_t*>(owned->base)[4095], 0);
  auto ro = c[0].import_region(1, owned->remote_key);
  ASSERT_TRUE(ro.is_ok());
  ASSERT_TRUE(c[0].put_wait(*ro, 10, data.data(), 100).is_ok());
  EXPECT_TRUE(std::equal(data.begin(), data.begin() + 100, static_cast<uint8_t*>(owned->base) + 10));
  ASSERT_TRUE(c[1].deregister_region(owned->id).is_ok());
}

TEST(InprocFabric, KilledNodeIsReportedDownAndOthersKeepWorking) {
  cluster c(3);
  inproc_kill(*c.hub, 2);
  for (size_t n : {size_t{0}, size_t{1}}) {
    std::vector<fabric_event> ev;
    ASSERT_EQ(c[n].poll(ev, 1s), 1u);
    EXPECT_EQ(ev[0].kind, fabric_event_kind::peer_down);
    EXPECT_EQ(ev[0].peer, 2u);
    EXPECT_EQ(ev[0].reason.code(), errc::peer_down);
  }
  EXPECT_EQ(c[0].send(2, {1}).code(), errc::peer_down);
  EXPECT_EQ(c[2].send(0, {1}).code(), errc::peer_down);  // the dead node cannot send either
  ASSERT_TRUE(c[0].send_wait(1, {9, 9}).is_ok());
  std::vector<fabric_event> ev;
  ASSERT_EQ(c[1].poll(ev, 1s), 1u);
  EXPECT_EQ(ev[0].bytes, (std::vector<uint8_t>{9, 9}));
  // Destroying an endpoint is a shutdown its peers hear about too.
  c.nodes[1].reset();
  ev.clear();
  ASSERT_EQ(c[0].poll(ev, 1s), 1u);
  EXPECT_EQ(ev[0].kind, fabric_event_kind::peer_down);
  EXPECT_EQ(ev[0].peer, 1u);
}

TEST(InprocFabric, HandlerSeesEveryMessage) {
  cluster c(2);
  std::atomic<int> seen{0};
  c[1].set_handler([&](fabric_event&& e) {
    if (e.kind == fabric_event_kind::message) seen++;
  });
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(c[0].send(1, {static_cast<uint8_t>(i)}).is_ok());
  auto until = std::chrono::steady_clock::now() + 2s;
  while (seen < 100 && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(seen.load(), 100);
}

TEST(InprocFabric, RefusesOversizedAndUnknownPeers) {
  fabric_options o;
  o.max_message_bytes = 100;
  cluster c(2, o);
  EXPECT_EQ(c[0].send(1, std::vector<uint8_t>(101)).code(), errc::invalid_argument);
  EXPECT_EQ(c[0].send(7, {1}).code(), errc::invalid_argument);
  fabric_options same = o;
  same.self = 0;  // taken
  EXPECT_FALSE(make_inproc_fabric(c.hub, same).is_ok());
}

TEST(InprocFabric, PacingMakesWallTimeFollowTheLinkModel) {
  fabric_options o;
  o.pacing = true;
  o.pacing_scale = 1000;  // 1 virtual ns = 1 wall us
  o.link.latency_ns = 300;
  o.link.switch_hops = 1;
  o.link.hop_latency_ns = 100;
  o.link.bw_gbps_h2d = 64;
  cluster c(2, o);
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(c[0].send(1, std::vector<uint8_t>(6400)).is_ok());  // 400 + 100 ns -> 500 us
  std::vector<fabric_event> ev;
  ASSERT_EQ(c[1].poll(ev, 2s), 1u);
  double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(us, 450);
  EXPECT_LT(us, 50000);
}

}  // namespace
}  // namespace pnmkv::transport
