// Control-plane properties (actors/control.hpp): every kind built through the generated
// builders round-trips bit-exactly; each validation rule refuses the field it guards with a
// message naming it, and the limits themselves are accepted; seeded mutations of valid
// messages never crash the decoder, and whatever it accepts can be read in full.
#include <gtest/gtest.h>

#include <capnp/any.h>
#include <capnp/dynamic.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "actors/control.hpp"

namespace pnmkv::control {
namespace {

constexpr unsigned kind_count = 15;  // the Control.body union's alternatives

std::vector<msg_kind> all_kinds() {
  std::vector<msg_kind> k;
  for (unsigned i = 0; i < kind_count; ++i) k.push_back(static_cast<msg_kind>(i));
  return k;
}

std::string str(std::vector<uint8_t> b) { return std::string(b.begin(), b.end()); }

// A message of kind `k` with every field set from `seed`.
outbound sample(msg_kind k, uint64_t seed) {
  outbound out(static_cast<uint32_t>(seed % 7), 64);
  auto b = out.body();
  const std::string why = "reason " + std::to_string(seed);
  const request_spec spec{seed, 1000 * seed, uint32_t(seed + 1), 17 * seed};
  switch (k) {
    case msg_kind::HELLO: {
      auto h = b.initHello();
      h.setNodeId(uint32_t(100 + seed));
      set_role(h, static_cast<transport::node_role>(seed % 4));
      break;
    }
    case msg_kind::SUBMIT: to_wire(spec, b.initSubmit().initRequest()); break;
    case msg_kind::ADMISSION: {
      auto a = b.initAdmission();
      a.setRequestId(seed);
      a.setAccepted(seed % 2);
      a.setReason(why);
      break;
    }
    case msg_kind::PLACEMENT_ACK: {
      auto a = b.initPlacementAck();
      a.setNodeId(uint32_t(100 + seed));
      a.setRequestId(seed);
      a.setOk(seed % 2);
      a.setReason(why);
      break;
    }
    case msg_kind::RUN_START: {
      auto rs = b.initRunStart();
      rs.setOpen(seed % 2);
      auto l = rs.initRequests(unsigned(seed));
      for (unsigned i = 0; i < seed; ++i) to_wire({i + 1, 100 * i, i, 3 * i}, l[i]);
      break;
    }
    case msg_kind::RUN_RESULT: {
      auto r = b.initRunResult();
      r.setReportJson("{\"step\":" + std::to_string(seed) + "}");
      r.setOk(seed % 2);
      r.setReason(why);
      break;
    }
    case msg_kind::SHUTDOWN: b.setShutdown(); break;
    case msg_kind::PROGRESS: {
      auto p = b.initProgress();
      p.setPhase(seed % 2 ? "decode" : "prefill");
      p.setDone(seed);
      p.setTotal(2 * seed);
      break;
    }
    case msg_kind::MEMBER_DOWN: {
      auto d = b.initMemberDown();
      d.setNodeId(uint32_t(100 + seed));
      d.setReason(why);
      break;
    }
    case msg_kind::ADMIT: {
      auto a = b.initAdmit();
      a.setRequestId(seed);
      a.setInSystem(uint32_t(seed * 3));
      break;
    }
    case msg_kind::RELEASE: b.initRelease().setRequestId(seed); break;
    case msg_kind::STOP: b.initStop().setReason(why); break;
    case msg_kind::COPY_ASK: {
      auto a = b.initCopyAsk();
      a.setRequestId(seed);
      a.setShardId(uint32_t(seed * 5));
      a.setRecompute(seed % 2);
      break;
    }
    case msg_kind::COPY_GRANT: {
      auto g = b.initCopyGrant();
      g.setRequestId(seed);
      g.setShardId(uint32_t(seed * 5));
      g.setDeviceId(uint32_t(100 + seed));
      g.setOk(seed % 2);
      g.setReason(why);
      break;
    }
    case msg_kind::RESUME: {
      auto r = b.initResume();
      r.setRunStarted(seed % 2);
      r.setFinished(seed % 3 == 0);
      auto rel = r.initReleased(unsigned(seed));
      for (unsigned i = 0; i < seed; ++i) rel.set(i, seed + i);
      auto down = r.initFailedOver(1);
      down[0].setNodeId(uint32_t(100 + seed));
      down[0].setReason(why);
      r.setAwaitingAdmission(seed);
      auto asks = r.initCopyAsks(2);
      for (unsigned i = 0; i < 2; ++i) {
        asks[i].setRequestId(seed + i);
        asks[i].setShardId(i);
        asks[i].setRecompute(i == 1);
      }
      break;
    }
  }
  return out;
}

// A body is a group of the root struct: as an AnyStruct it is the whole message, so two
// bodies are equal when sender, version and body agree field by field.
bool same(wire::Control::Body::Reader a, wire::Control::Body::Reader b) {
  return capnp::AnyStruct::Reader(a) == capnp::AnyStruct::Reader(b);
}

// A received message sent again: its sender and body copied into a fresh outbound.
std::string reencode(const received& m) {
  outbound out(m.sender());
  auto f = capnp::toDynamic(m.body());
  auto t = capnp::toDynamic(out.body());
  KJ_IF_MAYBE(field, f.which()) { t.set(*field, f.get(*field)); }
  return str(out.finish());
}

// Reads every field of an accepted message with the readers a handler uses; returns a sum so
// that nothing is optimised away.
uint64_t read_all(const received& m) {
  uint64_t sum = m.sender();
  switch (m.kind()) {
    case msg_kind::HELLO: return sum + m.hello().getNodeId() + uint8_t(role_of(m.hello()));
    case msg_kind::SUBMIT: return sum + from_wire(m.submit().getRequest()).context_tokens;
    case msg_kind::ADMISSION: return sum + m.admission().getRequestId() + m.admission().getReason().size();
    case msg_kind::PLACEMENT_ACK:
      return sum + m.placement_ack().getNodeId() + m.placement_ack().getReason().size();
    case msg_kind::RUN_START:
      for (auto r : m.run_start().getRequests()) sum += from_wire(r).steps;
      return sum + m.run_start().getOpen();
    case msg_kind::RUN_RESULT:
      return sum + std::string(m.run_result().getReportJson()).size() + m.run_result().getReason().size();
    case msg_kind::SHUTDOWN: return sum;
    case msg_kind::PROGRESS: return sum + std::string(m.progress().getPhase()).size() + m.progress().getTotal();
    case msg_kind::MEMBER_DOWN: return sum + m.member_down().getReason().size();
    case msg_kind::ADMIT: return sum + m.admit().getInSystem();
    case msg_kind::RELEASE: return sum + m.release().getRequestId();
    case msg_kind::STOP: return sum + m.stop().getReason().size();
    case msg_kind::COPY_ASK: return sum + m.copy_ask().getShardId() + m.copy_ask().getRecompute();
    case msg_kind::COPY_GRANT:
      return sum + m.copy_grant().getDeviceId() + m.copy_grant().getOk() + m.copy_grant().getReason().size();
    case msg_kind::RESUME: {
      auto r = m.resume();
      for (uint64_t id : r.getReleased()) sum += id;
      for (auto d : r.getFailedOver()) sum += d.getNodeId() + d.getReason().size();
      for (auto a : r.getCopyAsks()) sum += a.getRequestId() + a.getShardId();
      return sum + r.getRunStarted() + r.getFinished() + r.getAwaitingAdmission();
    }
  }
  ADD_FAILURE() << "an accepted message of unknown kind " << unsigned(m.kind());
  return sum;
}

// Decodes `bytes` and expects a refusal with `code` whose message contains `names`.
void expect_refused(const std::string& bytes, errc code, const std::string& names) {
  auto r = decode(bytes);
  ASSERT_FALSE(r.is_ok()) << "accepted a message that should be refused for " << names;
  EXPECT_EQ(r.error().code(), code) << r.error().to_string();
  EXPECT_NE(r.error().message().find(names), std::string::npos) << r.error().to_string();
}

TEST(control, every_kind_round_trips_bit_exactly) {
  for (msg_kind k : all_kinds()) {
    for (uint64_t seed = 1; seed <= 4; ++seed) {
      SCOPED_TRACE(to_string(k));
      const outbound sent = sample(k, seed);  // what was built, to compare against
      const std::string bytes = str(sample(k, seed).finish());
      auto d = decode(bytes);
      ASSERT_TRUE(d.is_ok()) << d.error().to_string();
      EXPECT_EQ(d->kind(), k);
      EXPECT_EQ(d->sender(), sent.reader().getSender());
      EXPECT_TRUE(same(d->body(), sent.reader().getBody()))
          << "decoded differs from built";
      EXPECT_EQ(reencode(*d), bytes) << "re-encoding differs";
    }
  }
}

TEST(control, request_spec_and_role_survive_the_wire) {
  const request_spec spec{7, 1u << 20, 15, 123456789};
  outbound out(3);
  to_wire(spec, out.body().initSubmit().initRequest());
  auto d = decode(str(out.finish()));
  ASSERT_TRUE(d.is_ok()) << d.error().to_string();
  const request_spec back = from_wire(d->submit().getRequest());
  EXPECT_EQ(back.request_id, spec.request_id);
  EXPECT_EQ(back.context_tokens, spec.context_tokens);
  EXPECT_EQ(back.steps, spec.steps);
  EXPECT_EQ(back.arrival_ns, spec.arrival_ns);
  for (auto role : {transport::node_role::gpu_host, transport::node_role::pnm_device,
                    transport::node_role::coordinator, transport::node_role::driver}) {
    outbound h(1);
    set_role(h.body().initHello(), role);
    auto r = decode(str(h.finish()));
    ASSERT_TRUE(r.is_ok()) << r.error().to_string();
    EXPECT_EQ(role_of(r->hello()), role);
  }
}

TEST(control, received_survives_a_move) {
  auto d = decode(str(sample(msg_kind::RUN_START, 3).finish()));
  ASSERT_TRUE(d.is_ok());
  received moved = std::move(d).value();
  std::vector<received> kept;
  kept.push_back(std::move(moved));
  ASSERT_EQ(kept[0].run_start().getRequests().size(), 3u);
  EXPECT_EQ(kept[0].run_start().getRequests()[2].getRequestId(), 3u);
}

TEST(control, refuses_bytes_that_are_not_a_message) {
  expect_refused("", errc::parse, "8-byte words");
  expect_refused("abc", errc::parse, "8-byte words");
  expect_refused(std::string(max_control_bytes + 8, '\0'), errc::capacity, "exceeds the limit");
  std::string truncated = str(sample(msg_kind::ADMISSION, 1).finish());
  truncated.resize(truncated.size() - 8);
  expect_refused(truncated, errc::parse, "malformed control message");
  expect_refused(std::string(64, '\xff'), errc::parse, "malformed control message");
}

TEST(control, refuses_another_protocol_version) {
  outbound out = sample(msg_kind::RELEASE, 1);
  out.root().setVersion(control_version + 1);
  expect_refused(str(out.finish()), errc::unsupported, "control protocol version 2");
}

TEST(control, refuses_an_unknown_kind) {
  std::string bytes = str(sample(msg_kind::RELEASE, 1).finish());
  // One segment: table (8) + root pointer (8); the union tag is the u16 at byte 2 of the
  // root's data section (after version, before sender).
  uint16_t tag;
  std::memcpy(&tag, bytes.data() + 18, 2);
  ASSERT_EQ(tag, uint16_t(msg_kind::RELEASE));
  const uint16_t bad = 200;
  std::memcpy(&bytes[18], &bad, 2);
  expect_refused(bytes, errc::unsupported, "message kind 200 unknown");
}

TEST(control, refuses_an_unknown_role) {
  outbound out = sample(msg_kind::HELLO, 1);
  out.body().getHello().setRole(4);
  expect_refused(str(out.finish()), errc::invalid_argument, "hello.role = 4 unknown");
}

TEST(control, refuses_request_id_zero_in_every_kind_that_names_a_request) {
  auto zero = [](msg_kind k, auto set, const char* field) {
    outbound out = sample(k, 1);
    set(out.body());
    expect_refused(str(out.finish()), errc::invalid_argument, std::string(field) + " = 0");
  };
  zero(msg_kind::SUBMIT, [](auto b) { b.getSubmit().getRequest().setRequestId(0); },
       "submit.request.request_id");
  zero(msg_kind::SUBMIT, [](auto b) { b.getSubmit().disownRequest(); }, "submit.request.request_id");
  zero(msg_kind::ADMISSION, [](auto b) { b.getAdmission().setRequestId(0); }, "admission.request_id");
  zero(msg_kind::PLACEMENT_ACK, [](auto b) { b.getPlacementAck().setRequestId(0); },
       "placement_ack.request_id");
  zero(msg_kind::RUN_START, [](auto b) { b.getRunStart().getRequests()[0].setRequestId(0); },
       "run_start.requests[].request_id");
  zero(msg_kind::ADMIT, [](auto b) { b.getAdmit().setRequestId(0); }, "admit.request_id");
  zero(msg_kind::RELEASE, [](auto b) { b.getRelease().setRequestId(0); }, "release.request_id");
}

TEST(control, refuses_a_text_over_its_limit_and_accepts_one_at_it) {
  const std::string at(max_text_bytes, 'x'), over(max_text_bytes + 1, 'x');
  auto text = [&](msg_kind k, auto set, const char* field) {
    outbound ok = sample(k, 1);
    set(ok.body(), at);
    auto d = decode(str(ok.finish()));
    EXPECT_TRUE(d.is_ok()) << field << ": " << d.error().to_string();
    outbound bad = sample(k, 1);
    set(bad.body(), over);
    expect_refused(str(bad.finish()), errc::capacity, std::string(field) + ": " +
                                                          std::to_string(over.size()) + " bytes");
  };
  text(msg_kind::ADMISSION, [](auto b, auto& t) { b.getAdmission().setReason(t); }, "admission.reason");
  text(msg_kind::PLACEMENT_ACK, [](auto b, auto& t) { b.getPlacementAck().setReason(t); },
       "placement_ack.reason");
  text(msg_kind::RUN_RESULT, [](auto b, auto& t) { b.getRunResult().setReason(t); }, "run_result.reason");
  text(msg_kind::PROGRESS, [](auto b, auto& t) { b.getProgress().setPhase(t); }, "progress.phase");
  text(msg_kind::MEMBER_DOWN, [](auto b, auto& t) { b.getMemberDown().setReason(t); }, "member_down.reason");
  // A sender cuts what it cannot vouch for, so the receiver never refuses it.
  EXPECT_EQ(bounded_text(over), at);
  EXPECT_EQ(bounded_text("short"), "short");
  // The run report is bounded by the message size only.
  outbound big = sample(msg_kind::RUN_RESULT, 1);
  big.body().getRunResult().setReportJson(std::string(4 * max_text_bytes, ' '));
  EXPECT_TRUE(decode(str(big.finish())).is_ok());
}

TEST(control, refuses_a_run_start_over_max_requests_per_run_and_accepts_one_at_it) {
  for (size_t n : {max_requests_per_run, max_requests_per_run + 1}) {
    outbound out(0, n * 32);
    auto l = out.body().initRunStart().initRequests(unsigned(n));
    for (unsigned i = 0; i < n; ++i) to_wire({i + 1, 10, 1, 0}, l[i]);
    auto d = decode(str(out.finish()));
    if (n == max_requests_per_run) {
      ASSERT_TRUE(d.is_ok()) << d.error().to_string();
      EXPECT_EQ(d->run_start().getRequests().size(), n);
    } else {
      ASSERT_FALSE(d.is_ok());
      EXPECT_EQ(d.error().code(), errc::capacity);
      EXPECT_NE(d.error().message().find("run_start.requests: 4097 requests, limit 4096"),
                std::string::npos)
          << d.error().to_string();
    }
  }
}

// Property: no mutation of a valid message crashes the decoder, and whatever it accepts a
// handler can read in full.
TEST(control, seeded_mutations_never_crash) {
  const uint64_t seed = 11;
  std::mt19937_64 rng(seed);
  std::vector<std::string> corpus;
  for (msg_kind k : all_kinds())
    for (uint64_t s = 1; s <= 3; ++s) corpus.push_back(str(sample(k, s).finish()));
  size_t accepted = 0, refused = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string b = corpus[rng() % corpus.size()];
    switch (rng() % 3) {
      case 0:  // bit flips
        for (int f = 0, n = 1 + int(rng() % 8); f < n; ++f) b[rng() % b.size()] ^= char(1u << (rng() % 8));
        break;
      case 1:  // truncation, to whole words or not
        b.resize(rng() % (b.size() + 1));
        break;
      default:  // a word overwritten with a random value (pointers, counts, tags)
        const uint64_t v = rng();
        std::memcpy(&b[8 * (rng() % (b.size() / 8))], &v, 8);
        break;
    }
    auto r = decode(b);
    if (!r.is_ok()) {
      ++refused;
      continue;
    }
    ++accepted;
    (void)read_all(*r);
  }
  // Most mutations are refused (about 85% with this seed); enough are accepted (values hit,
  // not structure) to exercise the readers.
  EXPECT_GT(refused, 10000u) << "seed " << seed;
  EXPECT_GT(accepted, 1000u) << "seed " << seed;
}

}  // namespace
}  // namespace pnmkv::control
