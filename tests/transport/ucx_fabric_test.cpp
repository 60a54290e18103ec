// UCX fabric between two processes on loopback, over tcp and over shared memory. The test
// process spawns transport_ucx_peer children (transport/piped_child.hpp: parent-death signal, killed and
// reaped at the end of every test) and exchanges worker addresses through their pipes.
// Properties: active messages and RMA put/get carry every byte intact from 8 B to 64 MiB;
// a SIGKILLed peer is reported down within 100 ms, its operations in flight fail, and the
// other peer keeps working.
#include <gtest/gtest.h>


#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>

#include "transport/crc32c.hpp"
#include "transport/hex.hpp"
#include "transport/messages.hpp"
#include "transport/piped_child.hpp"
#include "transport/ucx_fabric.hpp"

namespace pnmkv::transport {
namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

// A command to a peer (see ucx_peer_main.cpp): an error message whose text is the command.
std::vector<uint8_t> command(uint64_t seq, const std::string& text) {
  outbound out(envelope{protocol_version, 0, seq, 0});
  auto e = out.body().initError();
  e.setCode(static_cast<uint16_t>(errc::internal));
  e.setMessage(capnp::Text::Reader(text.data(), text.size()));
  return out.finish();
}

struct peer_link {
  std::unique_ptr<piped_child> proc;  // a transport_ucx_peer
  remote_region region;       // allocated by the peer's fabric
  remote_region user_region;  // the peer's own memory, registered
  size_t region_bytes = 0;
};

class UcxFabric : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override { make_fabric({}); }
  void make_fabric(const fault_plan& faults) {
    fab_.reset();
    ASSERT_TRUE(parse_ucx_transport(GetParam(), u_.transport));
    fabric_options o;
    o.self = 0;
    o.op_timeout = 10s;
    o.faults = faults;
    auto f = make_ucx_fabric(o, u_);
    ASSERT_TRUE(f.is_ok()) << f.error().to_string();
    fab_ = std::move(f).value();
  }
  void TearDown() override { fab_.reset(); }

  // Spawns a peer, connects both ways and imports its region.
  peer_link start_peer(node_id node, size_t region_bytes) {
    peer_link p;
    p.proc = std::make_unique<piped_child>(std::vector<std::string>{
        PNMKV_UCX_PEER, GetParam(), std::to_string(node), std::to_string(region_bytes)});
    p.region_bytes = region_bytes;
    // A start-up deadline: a peer that stays silent fails here with its stderr, not after
    // minutes of nothing.
    auto addr_line = p.proc->await_line("ADDR ", piped_child::startup_timeout_default);
    EXPECT_TRUE(addr_line) << "peer did not start: " << addr_line.error().to_string();
    if (!addr_line) return p;
    const std::string line = *addr_line;
    EXPECT_TRUE(p.proc->write_line("PEER 0 " + to_hex(fab_->address())));
    auto address = from_hex(line.substr(5));
    EXPECT_TRUE(address) << address.error().to_string();
    if (!address) return p;
    status s = fab_->connect(node, *address);
    EXPECT_TRUE(s.is_ok()) << s.to_string();
    // The peer advertises its two regions.
    auto until = clk::now() + 10s;
    int adverts = 0;
    while (clk::now() < until) {
      std::vector<fabric_event> ev;
      fab_->poll(ev, 100ms);
      for (auto& e : ev) {
        if (e.kind != fabric_event_kind::message) continue;
        auto m = decode(e.bytes, wire_limits{});
        if (m && m->kind() == msg_kind::region_advert) {
          auto adv = m->region_advert();
          auto key = adv.getRemoteKey();
          auto r = fab_->import_region(node, std::vector<uint8_t>(key.begin(), key.end()));
          EXPECT_TRUE(r.is_ok()) << r.error().to_string();
          if (r) (adv.getPurpose() == 0 ? p.region : p.user_region) = *r;
          if (++adverts < 2) continue;
          auto ready = p.proc->await_line("READY", piped_child::startup_timeout_default);
          EXPECT_TRUE(ready) << ready.error().to_string();
          return p;
        }
      }
    }
    ADD_FAILURE() << "no region advert from node " << node;
    return p;
  }

  // Waits for the next message from `from`.
  std::vector<uint8_t> next_message(node_id from, std::chrono::milliseconds timeout = 20000ms) {
    auto until = clk::now() + timeout;
    while (clk::now() < until) {
      std::vector<fabric_event> ev;
      fab_->poll(ev, 50ms, 1);
      for (auto& e : ev)
        if (e.kind == fabric_event_kind::message && e.peer == from) return std::move(e.bytes);
    }
    return {};
  }

  uint32_t remote_crc(node_id peer, int region, size_t off, size_t len) {
    const std::string cmd = "crc " + std::to_string(region) + " " + std::to_string(off) + " " +
                            std::to_string(len);
    EXPECT_TRUE(fab_->send_wait(peer, command(seq_++, cmd)).is_ok());
    auto reply = decode(next_message(peer), wire_limits{});
    if (!reply || reply->kind() != msg_kind::error) return 0;
    const std::string text = reply->error().getMessage().cStr();
    return static_cast<uint32_t>(std::stoul(text.substr(4), nullptr, 16));
  }

  ucx_options u_;
  std::unique_ptr<fabric> fab_;
  uint64_t seq_ = 1;
};

const std::vector<size_t> sizes = {8, 64, 1000, 8192, 65536, 1u << 20, 8u << 20, 64u << 20};

TEST_P(UcxFabric, ActiveMessagesArriveIntactFrom8BTo64MiB) {
  auto p = start_peer(1, 4096);
  std::mt19937_64 rng(11);
  for (size_t n : sizes) {
    std::vector<uint8_t> msg(n);
    for (auto& b : msg) b = static_cast<uint8_t>(rng());
    std::memset(msg.data(), 0xff, std::min<size_t>(n, 4));  // never parses as a command
    uint32_t crc = crc32c(msg.data(), n);
    auto t0 = clk::now();
    ASSERT_TRUE(fab_->send_wait(1, msg).is_ok()) << n;
    auto echo = next_message(1);
    ASSERT_EQ(echo.size(), n) << "echo of " << n << " bytes missing";
    EXPECT_EQ(crc32c(echo.data(), n), crc) << n;
    EXPECT_TRUE(echo == msg) << n;
    RecordProperty("am_rtt_us_" + std::to_string(n),
                   static_cast<int>(std::chrono::duration_cast<std::chrono::microseconds>(clk::now() - t0).count()));
  }
  auto st = fab_->stats();
  EXPECT_EQ(st.frame_crc_errors, 0u);
  EXPECT_EQ(st.duplicates, 0u);
}

TEST_P(UcxFabric, PutAndGetMoveEveryByteFrom8BTo64MiB) {
  const size_t region = (64u << 20) + 8192;
  auto p = start_peer(1, region);
  ASSERT_GT(p.region.length, 0u);
  ASSERT_GT(p.user_region.length, 0u);
  // The peer filled its regions with its pattern: get proves bytes come from the peer.
  std::vector<uint8_t> got(4096);
  ASSERT_TRUE(fab_->get_wait(p.region, 100, got.data(), got.size()).is_ok());
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_EQ(got[i], static_cast<uint8_t>((100 + i) * 131 + 1)) << i;

  std::mt19937_64 rng(12);
  size_t ops = 1;
  for (int which = 0; which < 2; ++which) {
    const remote_region& rr = which == 0 ? p.region : p.user_region;
    for (size_t n : sizes) {
      size_t off = n >= (8u << 20) ? 0 : 4096 + 13;  // also unaligned offsets
      if (off + n > rr.length) continue;              // the registered region is 8 MiB
      std::vector<uint8_t> data(n);
      for (auto& b : data) b = static_cast<uint8_t>(rng());
      status s = fab_->put_wait(rr, off, data.data(), n);
      ASSERT_TRUE(s.is_ok()) << n << ": " << s.to_string();
      EXPECT_EQ(remote_crc(1, which, off, n), crc32c(data.data(), n))
          << "put of " << n << " bytes into region " << which;
      std::vector<uint8_t> back(n);
      s = fab_->get_wait(rr, off, back.data(), n);
      ASSERT_TRUE(s.is_ok()) << n << ": " << s.to_string();
      EXPECT_TRUE(back == data) << "get of " << n << " bytes from region " << which;
      ++ops;
    }
  }
  // Out-of-region accesses are refused locally, before touching the wire.
  std::vector<uint8_t> big(16);
  EXPECT_EQ(fab_->put(p.region, p.region.length - 8, big.data(), 16).code(), errc::out_of_range);
  auto st = fab_->stats();
  EXPECT_EQ(st.puts, ops - 1);
  EXPECT_EQ(st.gets, ops);
}

TEST_P(UcxFabric, KilledPeerIsReportedDownWithin100msAndOthersKeepWorking) {
  auto a = start_peer(1, 1 << 20);
  auto b = start_peer(2, 1 << 20);
  // Stop A (it stops progressing), then start operations it will never answer.
  ASSERT_TRUE(fab_->send_wait(1, command(seq_++, "stop")).is_ok());
  std::this_thread::sleep_for(100ms);
  std::mutex mu;
  std::vector<status> outcomes;
  const int inflight = 4;
  std::vector<uint8_t> big(4u << 20, 0xab);
  for (int i = 0; i < inflight; ++i) {
    op_options o;
    o.on_done = [&](status s) {
      std::lock_guard<std::mutex> lock(mu);
      outcomes.push_back(std::move(s));
    };
    ASSERT_TRUE(fab_->send(1, big, std::move(o)).is_ok());
  }
  std::this_thread::sleep_for(50ms);
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_TRUE(outcomes.empty()) << "operations completed although the peer is stopped";
  }
  auto t0 = clk::now();
  a.proc->kill_now();
  bool down = false;
  double ms = 0;
  while (!down && clk::now() - t0 < 5s) {
    std::vector<fabric_event> ev;
    fab_->poll(ev, 5ms);
    for (auto& e : ev)
      if (e.kind == fabric_event_kind::peer_down && e.peer == 1) {
        down = true;
        ms = std::chrono::duration<double, std::milli>(clk::now() - t0).count();
        EXPECT_EQ(e.reason.code(), errc::peer_down);
      }
  }
  ASSERT_TRUE(down) << "no peer_down event for the killed peer";
  EXPECT_LT(ms, 100.0) << "peer_down after " << ms << " ms";
  RecordProperty("peer_down_ms", static_cast<int>(ms));
  std::this_thread::sleep_for(20ms);
  {
    std::lock_guard<std::mutex> lock(mu);
    ASSERT_EQ(outcomes.size(), static_cast<size_t>(inflight)) << "in-flight operations not completed";
    for (auto& s : outcomes) EXPECT_FALSE(s.is_ok()) << "in-flight operation succeeded";
  }
  EXPECT_EQ(fab_->send(1, {1, 2, 3}).code(), errc::peer_down);
  // B is unaffected: message echo and RMA still work.
  std::vector<uint8_t> hello(100, 7);
  hello[0] = hello[1] = hello[2] = hello[3] = 0xff;
  ASSERT_TRUE(fab_->send_wait(2, hello).is_ok());
  EXPECT_EQ(next_message(2), hello);
  std::vector<uint8_t> data(1 << 16, 0x5a), back(1 << 16);
  ASSERT_TRUE(fab_->put_wait(b.region, 0, data.data(), data.size()).is_ok());
  ASSERT_TRUE(fab_->get_wait(b.region, 0, back.data(), back.size()).is_ok());
  EXPECT_EQ(back, data);
}

// A peer killed in the middle of sending must not stop anyone else's messages: the rest of
// the cluster keeps serving. Each trial starts a peer that floods this process with
// messages, SIGKILLs it after a random few milliseconds, and then needs B's echo within 3 s.
// UCX's shared-memory transports (posix/sysv mm) fail this: a sender claims a slot of the
// receiver's one FIFO with a compare-and-swap, copies the message in and only then flips the
// slot's owner flag; killed in between, it leaves a slot the receiver waits on forever, and
// every later message from every sender queues behind it. That is why the fabric's default
// is tcp (fabric.ucx_transport); the shm and any cases measure how often it happens.
TEST_P(UcxFabric, APeerKilledMidStreamNeverStopsTheOthersMessages) {
  const char* trials_env = std::getenv("PNMKV_KILL_TRIALS");
  const int trials = trials_env ? std::max(1, std::atoi(trials_env)) : 12;
  auto b = start_peer(1, 1 << 16);
  std::mt19937 rng(20261203);
  int wedged_at = -1;
  uint64_t flood_messages = 0;  // taken from the victims before their kills
  for (int t = 0; t < trials; ++t) {
    const node_id victim = 10 + t;
    auto a = start_peer(victim, 1 << 16);
    ASSERT_TRUE(fab_->send_wait(victim, command(seq_++, "flood")).is_ok());
    // The kill lands mid-stream: after the flood's first message, a random 0.2-5.2 ms later.
    uint64_t heard = 0;
    auto kill_at = clk::time_point::max();
    for (const auto give_up = clk::now() + 5s; clk::now() < std::min(kill_at, give_up);) {
      std::vector<fabric_event> ev;
      fab_->poll(ev, 0ms, 64);
      for (auto& e : ev) heard += e.kind == fabric_event_kind::message && e.peer == victim;
      if (heard && kill_at == clk::time_point::max())
        kill_at = clk::now() + std::chrono::microseconds(200 + rng() % 5000);
    }
    ASSERT_GT(heard, 0u) << "peer " << victim << " never started its flood";
    flood_messages += heard;
    a.proc->kill_now();
    std::vector<uint8_t> hello(64, uint8_t(t));
    hello[0] = hello[1] = hello[2] = hello[3] = 0xff;
    ASSERT_TRUE(fab_->send(1, hello).is_ok());
    // Drain the flood and wait for B's echo.
    bool echoed = false;
    const auto until = clk::now() + 3s;
    while (!echoed && clk::now() < until) {
      std::vector<fabric_event> ev;
      fab_->poll(ev, 5ms);
      for (auto& e : ev)
        if (e.kind == fabric_event_kind::message && e.peer == 1 && e.bytes == hello) echoed = true;
    }
    if (!echoed) {
      wedged_at = t;
      if (GetParam() == "tcp") ADD_FAILURE() << "trial " << t << ": B's echo never came after peer " << victim << " was killed";
      break;  // the receive path is wedged for good
    }
  }
  RecordProperty("wedged_at_kill", wedged_at + 1);
  if (wedged_at >= 0)
    std::printf("[ transport %s ] kill %d of the flooding peers wedged the receiver (%llu flood messages taken)\n",
                GetParam().c_str(), wedged_at + 1, (unsigned long long)flood_messages);
  else
    std::printf("[ transport %s ] %d kills mid-stream, none wedged the receiver (%llu flood messages taken)\n",
                GetParam().c_str(), trials, (unsigned long long)flood_messages);
}

// Fault points sit in front of UCX too: drops and duplicates injected at the sender show up
// in the event log and as gaps and duplicates in the other process's counters.
TEST_P(UcxFabric, InjectedFaultsShowUpInThePeersCounters) {
  auto rules = parse_fault_script("drop p=0.05 msg=heartbeat; duplicate p=0.05 msg=heartbeat");
  ASSERT_TRUE(rules.is_ok());
  const std::string log = std::string(::testing::TempDir()) + "pnmkv_ucx_faults_" + GetParam() + ".jsonl";
  std::remove(log.c_str());
  make_fabric(fault_plan{99, rules.value(), log});
  auto p = start_peer(1, 4096);
  const int n = 2000;
  for (int i = 0; i < n; ++i) {
    outbound hb(envelope{protocol_version, 0, static_cast<uint64_t>(i), 0});
    hb.body().initHeartbeat();
    ASSERT_TRUE(fab_->send_wait(1, hb.finish()).is_ok());
  }
  // Not a heartbeat: never dropped.
  ASSERT_TRUE(fab_->send_wait(1, command(n + 1, "stats")).is_ok());
  std::string stats;
  auto until = clk::now() + 20s;
  while (stats.empty() && clk::now() < until) {
    auto m = decode(next_message(1), wire_limits{});
    if (m && m->kind() == msg_kind::error) stats = m->error().getMessage().cStr();
  }
  ASSERT_FALSE(stats.empty());
  auto field = [&](const std::string& name) {
    auto at = stats.find("\"" + name + "\":");
    return at == std::string::npos ? ~0ull : std::stoull(stats.substr(at + name.size() + 3));
  };
  auto inj = fab_->faults();
  ASSERT_TRUE(inj);
  uint64_t drops = inj->injected(fault_point::send, fault_kind::drop);
  uint64_t dups = inj->injected(fault_point::send, fault_kind::duplicate);
  EXPECT_GT(drops, 50u);
  EXPECT_LT(drops, 160u);
  EXPECT_GT(dups, 50u);
  EXPECT_LT(dups, 160u);
  EXPECT_EQ(field("gaps"), drops) << stats;
  EXPECT_EQ(field("duplicates"), dups) << stats;
  std::ifstream in(log);
  size_t lines = 0;
  for (std::string l; std::getline(in, l);) ++lines;
  EXPECT_EQ(lines, drops + dups);
}

INSTANTIATE_TEST_SUITE_P(Loopback, UcxFabric, ::testing::Values("tcp", "shm", "any"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace pnmkv::transport
