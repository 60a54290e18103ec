// Wire protocol properties: every kind round-trips bit-exactly; each validation rule rejects
// the field it guards (one test per rule) with its own reason counter; seeded random
// mutations of valid messages never crash a decoder; CRC32C and the join proof behave.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "transport/auth.hpp"
#include "transport/crc32c.hpp"
#include "transport/hex.hpp"
#include "transport/messages.hpp"
#include "transport/samples.hpp"

namespace pnmkv::transport {
namespace {

const wire_limits limits{};

std::vector<msg_kind> all_kinds() {
  std::vector<msg_kind> k;
  for (size_t i = 0; i < msg_kind_count; ++i) k.push_back(static_cast<msg_kind>(i));
  return k;
}

// Decodes `bytes` with fresh counters and expects a rejection for `reason` only.
void expect_rejected(const std::vector<uint8_t>& bytes, reject_reason reason,
                     const wire_limits& l = limits) {
  wire_stats st;
  auto r = decode(bytes, l, &st);
  ASSERT_FALSE(r.is_ok()) << "accepted a message that breaks rule " << to_string(reason);
  EXPECT_EQ(st.count(reason), 1u) << "rejected for another reason: " << r.error().to_string();
  EXPECT_EQ(st.total_rejected(), 1u);
  EXPECT_TRUE(st.logged[static_cast<size_t>(reason)].load());
  EXPECT_NE(r.error().message().find(to_string(reason)), std::string::npos)
      << r.error().message();
}

TEST(Crc32c, KnownVectorAndIncremental) {
  const char* s = "123456789";
  EXPECT_EQ(crc32c(s, 9), 0xE3069283u);
  std::mt19937_64 rng(7);
  std::vector<uint8_t> big(300000 + 13);
  for (auto& b : big) b = static_cast<uint8_t>(rng());
  // The striped path (large buffers) equals byte-chunked incremental computation.
  uint32_t whole = crc32c(big.data() + 1, big.size() - 1);
  uint32_t inc = 0;
  for (size_t off = 1; off < big.size(); off += 1000)
    inc = crc32c(big.data() + off, std::min<size_t>(1000, big.size() - off), inc);
  EXPECT_EQ(whole, inc);
  // Every length and alignment through the block paths equals one byte at a time.
  for (size_t len : {size_t{0}, size_t{7}, size_t{191}, size_t{192}, size_t{250}, size_t{767}, size_t{768}, size_t{769}, size_t{1024},
                     size_t{3 * 8192 - 1}, size_t{3 * 8192}, size_t{3 * 8192 + 3 * 256 + 5}}) {
    for (size_t off = 0; off < 3; ++off) {
      uint32_t bytewise = 0;
      for (size_t i = 0; i < len; ++i) bytewise = crc32c(big.data() + off + i, 1, bytewise);
      EXPECT_EQ(crc32c(big.data() + off, len), bytewise) << len << " at offset " << off;
    }
  }
}

TEST(Messages, EveryKindRoundTripsBitExactly) {
  for (msg_kind k : all_kinds()) {
    for (uint64_t seed = 1; seed <= 5; ++seed) {
      message m = sample_message(k, seed);
      ASSERT_EQ(m.kind(), k);
      auto bytes = encode(m);
      EXPECT_EQ(bytes.size() % 8, 0u);
      wire_stats st;
      auto d = decode(bytes, limits, &st);
      ASSERT_TRUE(d.is_ok()) << to_string(k) << ": " << d.error().to_string();
      EXPECT_EQ(d->kind(), k);
      EXPECT_EQ(d->env.seq, m.env.seq);
      EXPECT_EQ(d->env.sender, m.env.sender);
      EXPECT_EQ(d->env.vtime_ns, m.env.vtime_ns);
      EXPECT_EQ(encode(*d), bytes) << to_string(k) << ": re-encoding differs";
      auto typed = decode_kind(k, bytes.data(), bytes.size(), limits, &st);
      EXPECT_TRUE(typed.is_ok());
      auto peek = peek_envelope(bytes.data(), bytes.size());
      ASSERT_TRUE(peek.is_ok());
      EXPECT_EQ(peek->kind, k);
      EXPECT_EQ(peek->env.seq, m.env.seq);
      EXPECT_EQ(st.total_rejected(), 0u);
    }
  }
}

TEST(Messages, FieldsSurviveRoundTrip) {
  message m = sample_message(msg_kind::query, 3);
  auto d = decode(encode(m), limits);
  ASSERT_TRUE(d.is_ok());
  auto& a = std::get<query_msg>(m.body);
  auto& b = std::get<query_msg>(d->body);
  EXPECT_EQ(a.q, b.q);
  EXPECT_EQ(a.round, b.round);
  EXPECT_EQ(a.score_threshold, b.score_threshold);
  EXPECT_EQ(a.kv_head1, b.kv_head1);
  message p = sample_message(msg_kind::prefill_write, 4);
  auto dp = decode(encode(p), limits);
  ASSERT_TRUE(dp.is_ok());
  auto& pw = std::get<prefill_write_msg>(dp->body);
  EXPECT_EQ(pw.crc32c, kv_crc32c(pw.k, pw.v));
  EXPECT_EQ(std::memcmp(pw.k.data(), std::get<prefill_write_msg>(p.body).k.data(), pw.k.size() * 2), 0);
}

// The enum codec (messages.cpp): every value of each enum a message shares with the rest of
// the code (selection_round, sequence_split, node_role) comes back as itself, and a round
// this build does not know is refused.
TEST(Messages, EveryValueOfEachSharedEnumSurvivesTheWire) {
  for (auto round : {selection_round::local, selection_round::exact_candidates,
                     selection_round::exact_attend, selection_round::dense}) {
    message q = sample_message(msg_kind::query, 5);
    std::get<query_msg>(q.body).round = round;
    auto dq = decode(encode(q), limits);
    ASSERT_TRUE(dq.is_ok());
    EXPECT_EQ(std::get<query_msg>(dq->body).round, round);
    message p = sample_message(msg_kind::partial, 5);
    std::get<partial_msg>(p.body).round = round;
    auto dp = decode(encode(p), limits);
    ASSERT_TRUE(dp.is_ok());
    EXPECT_EQ(std::get<partial_msg>(dp->body).round, round);
  }
  for (auto role : {node_role::gpu_host, node_role::pnm_device, node_role::coordinator,
                    node_role::driver}) {
    message j = sample_message(msg_kind::join, 5);
    std::get<join_msg>(j.body).role = role;
    auto dj = decode(encode(j), limits);
    ASSERT_TRUE(dj.is_ok());
    EXPECT_EQ(std::get<join_msg>(dj->body).role, role);
  }
  message m = sample_message(msg_kind::membership, 5);
  auto dm = decode(encode(m), limits);
  ASSERT_TRUE(dm.is_ok());
  const auto& sent = std::get<membership_msg>(m.body).placements[0].shards;
  const auto& got = std::get<membership_msg>(dm->body).placements[0].shards;
  ASSERT_EQ(sent.size(), got.size());
  bool both = false;
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(got[i].split, sent[i].split);
    both = both || got[i].split != got[0].split;
  }
  EXPECT_TRUE(both) << "the sample should hold both splits";

  message bad = sample_message(msg_kind::query, 5);
  std::get<query_msg>(bad.body).round = static_cast<selection_round>(7);
  expect_rejected(encode(bad), reject_reason::bad_value);
}

TEST(Messages, UnalignedInputIsCopiedNotRejected) {
  auto bytes = encode(sample_message(msg_kind::partial, 1));
  std::vector<uint8_t> shifted(bytes.size() + 1);
  std::memcpy(shifted.data() + 1, bytes.data(), bytes.size());
  EXPECT_TRUE(decode(shifted.data() + 1, bytes.size(), limits).is_ok());
}

TEST(Messages, LargestLegitimateMessageIsAccepted) {
  // A prefill write at max_tokens_per_write x max_head_dim must fit the traversal limit.
  wire_limits l;
  l.max_tokens_per_write = 1024;
  sample_shape s;
  s.page_tokens = l.max_tokens_per_write;
  s.head_dim = l.max_head_dim;
  auto bytes = encode(sample_message(msg_kind::prefill_write, 1, s));
  EXPECT_LE(bytes.size(), max_legit_message_bytes(l));
  EXPECT_TRUE(decode(bytes, l).is_ok());
}

// --- one test per validation rule ------------------------------------------------------

TEST(Validation, RefusesUnknownProtocolVersion) {
  message m = sample_message(msg_kind::heartbeat, 1);
  m.env.version = protocol_version + 1;
  wire_stats st;
  auto r = decode(encode(m), limits, &st);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.error().code(), errc::unsupported);
  EXPECT_NE(r.error().message().find("protocol version"), std::string::npos);
  EXPECT_EQ(st.count(reject_reason::bad_version), 1u);
}

TEST(Validation, RefusesVirtualTimeThatIsNotAFiniteNonNegativeNumber) {
  for (double bad : {std::nan(""), -1.0, -std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(bad);
    message m = sample_message(msg_kind::partial, 1);
    m.env.vtime_ns = bad;
    expect_rejected(encode(m), reject_reason::bad_value);
  }
  message ok = sample_message(msg_kind::partial, 1);
  ok.env.vtime_ns = 1234.5678;  // the fraction survives
  auto d = decode(encode(ok), limits);
  ASSERT_TRUE(d.is_ok()) << d.error().to_string();
  EXPECT_EQ(d->env.vtime_ns, 1234.5678);
}

TEST(Validation, RefusesOversizedMessage) {
  wire_limits l;
  l.max_message_bytes = 1 << 16;
  sample_shape s;
  s.page_tokens = 512;  // 2 x 512 x 128 x 2 B = 256 KiB of KV
  expect_rejected(encode(sample_message(msg_kind::prefill_write, 1, s)), reject_reason::oversized, l);
}

TEST(Validation, RefusesCountAboveLimit) {
  message m = sample_message(msg_kind::query, 1);
  auto& q = std::get<query_msg>(m.body);
  q.head_dim = 1024;  // > max_head_dim 512
  q.q.resize(size_t{q.group} * q.head_dim);
  expect_rejected(encode(m), reject_reason::limit);

  message g = sample_message(msg_kind::partial, 1);
  std::get<partial_msg>(g.body).group = 65;  // > max_group 64
  expect_rejected(encode(g), reject_reason::limit);
}

TEST(Validation, RefusesBlobWhoseLengthDisagreesWithShape) {
  message m = sample_message(msg_kind::prefill_write, 1);
  std::get<prefill_write_msg>(m.body).k.pop_back();
  expect_rejected(encode(m), reject_reason::shape);

  message q = sample_message(msg_kind::query, 1);
  std::get<query_msg>(q.body).kv_head1 = 2;  // q holds one head's worth
  expect_rejected(encode(q), reject_reason::shape);

  message c = sample_message(msg_kind::candidates, 1);
  std::get<candidates_msg>(c.body).scores.pop_back();
  expect_rejected(encode(c), reject_reason::shape);
}

TEST(Validation, RefusesIndexOutOfRange) {
  message m = sample_message(msg_kind::prefill_write, 1);
  std::get<prefill_write_msg>(m.body).layer = limits.max_layers;
  expect_rejected(encode(m), reject_reason::index);

  message p = sample_message(msg_kind::prefill_write, 2);
  std::get<prefill_write_msg>(p.body).position0 = limits.max_context_tokens - 1;  // runs past the end
  expect_rejected(encode(p), reject_reason::index);

  message q = sample_message(msg_kind::query, 1);
  auto& qq = std::get<query_msg>(q.body);
  qq.kv_head0 = 1;
  qq.kv_head1 = 1;  // empty range
  qq.q.clear();
  expect_rejected(encode(q), reject_reason::index);

  message r = sample_message(msg_kind::recall_request, 1);
  std::get<recall_request_msg>(r.body).page_ids[0] = static_cast<uint32_t>(limits.max_context_tokens);
  expect_rejected(encode(r), reject_reason::index);

  message s = sample_message(msg_kind::membership, 1);
  auto& sh = std::get<membership_msg>(s.body).placements[0].shards[1];
  sh.cls = sh.stride;  // interleave class must be below the stride
  expect_rejected(encode(s), reject_reason::index);
}

TEST(Validation, RefusesCrcMismatch) {
  message m = sample_message(msg_kind::prefill_write, 1);
  auto bytes = encode(m);
  // Find the V payload in the encoded bytes and flip one bit of it.
  auto& v = std::get<prefill_write_msg>(m.body).v;
  auto* vb = reinterpret_cast<const uint8_t*>(v.data());
  auto it = std::search(bytes.begin(), bytes.end(), vb, vb + 64);
  ASSERT_NE(it, bytes.end());
  *(it + 10) ^= 0x10;
  expect_rejected(bytes, reject_reason::crc);

  message r = sample_message(msg_kind::recall_reply, 1);
  auto rb = encode(r);
  auto& k = std::get<recall_reply_msg>(r.body).pages[2].k;
  auto* kb = reinterpret_cast<const uint8_t*>(k.data());
  auto jt = std::search(rb.begin(), rb.end(), kb, kb + 32);
  ASSERT_NE(jt, rb.end());
  *jt ^= 1;
  expect_rejected(rb, reject_reason::crc);
}

TEST(Validation, RefusesTruncatedBytes) {
  auto bytes = encode(sample_message(msg_kind::partial, 1));
  for (size_t cut : {size_t{8}, bytes.size() / 2, size_t{4}}) {
    std::vector<uint8_t> t(bytes.begin(), bytes.end() - static_cast<long>(cut));
    if (t.size() % 8) t.resize(t.size() / 8 * 8);
    expect_rejected(t, reject_reason::truncated);
  }
  expect_rejected({}, reject_reason::truncated);
}

TEST(Validation, RefusesGarbage) {
  std::mt19937_64 rng(42);
  for (int i = 0; i < 200; ++i) {
    std::vector<uint8_t> g(8 * (1 + rng() % 64));
    for (auto& b : g) b = static_cast<uint8_t>(rng());
    wire_stats st;
    auto r = decode(g, limits, &st);
    EXPECT_FALSE(r.is_ok());
    EXPECT_EQ(st.total_rejected(), 1u);
  }
  // Valid segment table, garbage content: malformed.
  std::vector<uint8_t> g(32, 0xff);
  uint32_t zero = 0, three = 3;
  std::memcpy(g.data(), &zero, 4);
  std::memcpy(g.data() + 4, &three, 4);
  expect_rejected(g, reject_reason::malformed);
}

TEST(Validation, RefusesUnknownKind) {
  auto bytes = encode(sample_message(msg_kind::heartbeat, 1));
  // One segment: table (8) + root pointer (8); the union tag is the u16 at byte 2 of the
  // envelope's data section (after version, before sender).
  uint16_t tag;
  std::memcpy(&tag, bytes.data() + 18, 2);
  ASSERT_EQ(tag, static_cast<uint16_t>(msg_kind::heartbeat));
  uint16_t bad = 200;
  std::memcpy(bytes.data() + 18, &bad, 2);
  expect_rejected(bytes, reject_reason::unknown_kind);
}

TEST(Validation, RefusesWrongKindForTypedDecoder) {
  auto bytes = encode(sample_message(msg_kind::heartbeat, 1));
  wire_stats st;
  auto r = decode_kind(msg_kind::query, bytes.data(), bytes.size(), limits, &st);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(st.count(reject_reason::wrong_kind), 1u);
}

TEST(Validation, RefusesBadValues) {
  message q = sample_message(msg_kind::query, 1);
  std::get<query_msg>(q.body).score_threshold = std::numeric_limits<float>::quiet_NaN();
  expect_rejected(encode(q), reject_reason::bad_value);

  message j = sample_message(msg_kind::join, 1);
  std::get<join_msg>(j.body).role = static_cast<node_role>(9);
  expect_rejected(encode(j), reject_reason::bad_value);

  message e = sample_message(msg_kind::error, 1);
  std::get<error_msg>(e.body).code = errc::ok;
  expect_rejected(encode(e), reject_reason::bad_value);
}

TEST(Validation, EachReasonIsLoggedOnceAndCountedEveryTime) {
  wire_stats st;
  auto bytes = encode(sample_message(msg_kind::heartbeat, 1));
  bytes.resize(8);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(decode(bytes, limits, &st).is_ok());
  EXPECT_EQ(st.count(reject_reason::truncated), 5u);
  EXPECT_TRUE(st.logged[static_cast<size_t>(reject_reason::truncated)].load());
}

// --- seeded random mutations -------------------------------------------------------------

// Property: no mutation of a valid message crashes any decoder; whatever is accepted
// re-encodes and decodes again (the decoder never returns a struct it would refuse).
TEST(Mutation, TwentyThousandSeededMutationsNeverCrash) {
  const uint64_t seed = 20240601;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint8_t>> corpus;
  for (msg_kind k : all_kinds())
    for (uint64_t s = 1; s <= 3; ++s) corpus.push_back(encode(sample_message(k, s)));
  wire_stats st;
  size_t accepted = 0;
  for (int i = 0; i < 20000; ++i) {
    std::vector<uint8_t> b = corpus[rng() % corpus.size()];
    switch (rng() % 4) {
      case 0:  // bit flips
        for (int f = 0, n = 1 + static_cast<int>(rng() % 8); f < n; ++f) {
          size_t bit = rng() % (b.size() * 8);
          b[bit / 8] ^= static_cast<uint8_t>(1u << (bit % 8));
        }
        break;
      case 1:  // truncation
        b.resize(rng() % (b.size() + 1));
        break;
      case 2: {  // splice with another message
        auto& o = corpus[rng() % corpus.size()];
        size_t at = rng() % (b.size() + 1), from = rng() % (o.size() + 1);
        size_t len = rng() % (o.size() - from + 1);
        b.resize(at);
        b.insert(b.end(), o.begin() + static_cast<long>(from), o.begin() + static_cast<long>(from + len));
        break;
      }
      default:  // overwrite a word with a random value (pointers, counts, tags)
        if (b.size() >= 8) {
          size_t w = rng() % (b.size() / 8);
          uint64_t v = rng();
          std::memcpy(b.data() + 8 * w, &v, 8);
        }
        break;
    }
    auto r = decode(b, limits, &st);
    auto kind = static_cast<msg_kind>(rng() % msg_kind_count);
    (void)decode_kind(kind, b.data(), b.size(), limits, &st);
    (void)peek_envelope(b.data(), b.size());
    if (r.is_ok()) {
      ++accepted;
      auto again = decode(encode(*r), limits);
      ASSERT_TRUE(again.is_ok()) << "seed " << seed << " iteration " << i << ": "
                                 << again.error().to_string();
    }
  }
  // Most mutations are caught (the rest hit payload bytes of kinds without a CRC).
  EXPECT_GT(st.total_rejected(), 10000u) << "seed " << seed;
  RecordProperty("accepted_mutations", static_cast<int>(accepted));
}

// --- join proofs -----------------------------------------------------------------------------

TEST(Auth, JoinProofVerifiesOnlyWithTheSecretNonceAndIdentity) {
  const std::string secret = "correct horse battery staple";
  auto nonce = make_nonce();
  ASSERT_EQ(nonce.size(), join_nonce_bytes);
  join_msg j;
  j.node = 4;
  j.role = node_role::pnm_device;
  j.worker_address = {1, 2, 3};
  sign_join(secret, nonce, j);
  EXPECT_TRUE(verify_join(secret, nonce, j).is_ok());
  EXPECT_FALSE(verify_join("wrong secret", nonce, j).is_ok());
  EXPECT_FALSE(verify_join(secret, make_nonce(), j).is_ok());  // replay against a new challenge
  join_msg other = j;
  other.node = 5;  // proof bound to the identity
  EXPECT_FALSE(verify_join(secret, nonce, other).is_ok());
  other = j;
  other.role = node_role::coordinator;
  EXPECT_FALSE(verify_join(secret, nonce, other).is_ok());
  EXPECT_FALSE(verify_join("", nonce, j).is_ok());
  // And it survives the wire.
  auto d = decode(encode(envelope{}, j), limits);
  ASSERT_TRUE(d.is_ok());
  EXPECT_TRUE(verify_join(secret, nonce, std::get<join_msg>(d->body)).is_ok());
}

// Worker addresses travel between processes as hex text.
TEST(Hex, RoundTripsEveryByteAndNamesBadInput) {
  std::vector<uint8_t> all(256);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<uint8_t>(i);
  const std::string text = to_hex(all);
  EXPECT_EQ(text.size(), 512u);
  EXPECT_EQ(text.substr(0, 6), "000102");
  auto back = from_hex(text);
  ASSERT_TRUE(back) << back.error().to_string();
  EXPECT_EQ(*back, all);
  EXPECT_EQ(from_hex("ABff").value(), (std::vector<uint8_t>{0xab, 0xff}));
  auto odd = from_hex("abc");
  ASSERT_FALSE(odd);
  EXPECT_NE(odd.error().message().find("odd length"), std::string::npos);
  auto bad = from_hex("0g");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message().find("offset 1"), std::string::npos) << bad.error().message();
}

}  // namespace
}  // namespace pnmkv::transport
