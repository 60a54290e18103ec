// Wire protocol properties: every kind round-trips bit-exactly; each validation rule rejects
// the field it guards (one test per rule) with its own reason counter; seeded random
// mutations of valid messages never crash a decoder; CRC32C and the join proof behave.
// Messages are built through `outbound` (samples.hpp's, changed field by field where a test
// breaks a rule) and read back through `received`.
#include <gtest/gtest.h>

#include <capnp/any.h>
#include <capnp/dynamic.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <deque>
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

envelope envelope_of(wire::Envelope::Reader r) {
  return {r.getVersion(), r.getSender(), r.getSeq(), r.getVtimeNs()};
}

// A body is a group of the root struct: as an AnyStruct it is the whole envelope, so two
// bodies are equal when envelope and body agree field by field, blobs and lists included.
bool same(wire::Envelope::Body::Reader a, wire::Envelope::Body::Reader b) {
  return capnp::AnyStruct::Reader(a) == capnp::AnyStruct::Reader(b);
}

// Copies the union member a body holds (deeply) into `to`.
void copy_body(wire::Envelope::Body::Reader from, wire::Envelope::Body::Builder to) {
  auto f = capnp::toDynamic(from);
  auto t = capnp::toDynamic(to);
  KJ_IF_MAYBE(field, f.which()) { t.set(*field, f.get(*field)); }
}

// A received message sent again: its envelope and body copied into a fresh outbound.
std::vector<uint8_t> reencode(const received& m, size_t payload_bytes = 0) {
  outbound out(m.env(), payload_bytes);
  copy_body(m.body(), out.body());
  return out.finish();
}

uint32_t segment_count(const std::vector<uint8_t>& bytes) {
  uint32_t count_minus_one = 0;
  std::memcpy(&count_minus_one, bytes.data(), 4);
  return count_minus_one + 1;
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
      SCOPED_TRACE(to_string(k));
      const outbound sent = sample_message(k, seed);  // what was built, to compare against
      ASSERT_EQ(static_cast<unsigned>(sent.reader().getBody().which()), static_cast<unsigned>(k));
      auto bytes = sample_message(k, seed).finish();
      EXPECT_EQ(bytes.size() % 8, 0u);
      EXPECT_EQ(segment_count(bytes), 1u) << "a sample fits its size hint";
      wire_stats st;
      auto d = decode(bytes, limits, &st);
      ASSERT_TRUE(d.is_ok()) << d.error().to_string();
      EXPECT_EQ(d->kind(), k);
      EXPECT_EQ(d->env().seq, sent.reader().getSeq());
      EXPECT_EQ(d->env().sender, sent.reader().getSender());
      EXPECT_EQ(d->env().vtime_ns, sent.reader().getVtimeNs());
      EXPECT_TRUE(same(d->body(), sent.reader().getBody())) << "decoded differs from built";
      // Everything the receiver sees is what the sender built, and nothing else: copied into
      // a new outbound it gives the same bytes.
      EXPECT_EQ(reencode(*d, bytes.size()), bytes) << "re-encoding differs";
      auto typed = decode_kind(k, bytes.data(), bytes.size(), limits, &st);
      ASSERT_TRUE(typed.is_ok());
      EXPECT_TRUE(same(typed->body(), sent.reader().getBody()));
      auto peek = peek_envelope(bytes.data(), bytes.size());
      ASSERT_TRUE(peek.is_ok());
      EXPECT_EQ(peek->kind, k);
      EXPECT_EQ(peek->env.seq, sent.reader().getSeq());
      EXPECT_EQ(st.total_rejected(), 0u);
      EXPECT_EQ(st.decoded.load(), 2u);
    }
  }
}

TEST(Messages, FieldsSurviveRoundTrip) {
  const outbound m = sample_message(msg_kind::query, 3);
  auto d = decode(sample_message(msg_kind::query, 3).finish(), limits);
  ASSERT_TRUE(d.is_ok());
  auto a = m.reader().getBody().getQuery();
  auto b = d->query();
  EXPECT_EQ(view_as<float>(a.getQ()).vec(), view_as<float>(b.getQ()).vec());
  EXPECT_EQ(a.getRound(), b.getRound());
  EXPECT_EQ(a.getScoreThreshold(), b.getScoreThreshold());
  EXPECT_EQ(a.getKvHead1(), b.getKvHead1());
  EXPECT_EQ(view_as<uint32_t>(a.getListedPages()).vec(),
            view_as<uint32_t>(b.getListedPages()).vec());
  const outbound p = sample_message(msg_kind::prefill_write, 4);
  auto dp = decode(sample_message(msg_kind::prefill_write, 4).finish(), limits);
  ASSERT_TRUE(dp.is_ok());
  auto pw = dp->prefill_write();
  EXPECT_EQ(pw.getCrc32c(), kv_crc32c(pw.getK(), pw.getV()));
  auto k = view_as<bf16>(pw.getK());
  EXPECT_EQ(pw.getCrc32c(), kv_crc32c(k.data(), view_as<bf16>(pw.getV()).data(), k.size()));
  auto sent_k = p.reader().getBody().getPrefillWrite().getK();
  ASSERT_EQ(pw.getK().size(), sent_k.size());
  EXPECT_EQ(std::memcmp(pw.getK().begin(), sent_k.begin(), sent_k.size()), 0);
}

// The enum codec (messages.cpp): every value of each enum a message shares with the rest of
// the code (selection_round, sequence_split, node_role) comes back as itself, and a round
// this build does not know is refused.
TEST(Messages, EveryValueOfEachSharedEnumSurvivesTheWire) {
  for (auto round : {selection_round::local, selection_round::exact_candidates,
                     selection_round::exact_attend, selection_round::dense}) {
    outbound q = sample_message(msg_kind::query, 5);
    q.body().getQuery().setRound(to_wire(round));
    auto dq = decode(q.finish(), limits);
    ASSERT_TRUE(dq.is_ok());
    EXPECT_EQ(from_wire(dq->query().getRound()), round);
    outbound p = sample_message(msg_kind::partial, 5);
    p.body().getPartial().setRound(to_wire(round));
    auto dp = decode(p.finish(), limits);
    ASSERT_TRUE(dp.is_ok());
    EXPECT_EQ(from_wire(dp->partial().getRound()), round);
  }
  for (auto role : {node_role::gpu_host, node_role::pnm_device, node_role::coordinator,
                    node_role::driver}) {
    outbound j = sample_message(msg_kind::join, 5);
    j.body().getJoin().setRole(to_wire(role));
    auto dj = decode(j.finish(), limits);
    ASSERT_TRUE(dj.is_ok());
    EXPECT_EQ(from_wire(dj->join().getRole()), role);
  }
  outbound m = sample_message(msg_kind::membership, 5);
  std::vector<sequence_split> sent;
  for (auto s : m.reader().getBody().getMembership().getPlacements()[0].getShards())
    sent.push_back(split_of(s));
  auto dm = decode(m.finish(), limits);
  ASSERT_TRUE(dm.is_ok());
  auto got = dm->membership().getPlacements()[0].getShards();
  ASSERT_EQ(sent.size(), got.size());
  bool both = false;
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(split_of(got[static_cast<unsigned>(i)]), sent[i]);
    both = both || sent[i] != sent[0];
  }
  EXPECT_TRUE(both) << "the sample should hold both splits";

  outbound bad = sample_message(msg_kind::query, 5);
  bad.body().getQuery().setRound(static_cast<wire::SelectionRound>(7));
  expect_rejected(bad.finish(), reject_reason::bad_value);
}

TEST(Messages, UnalignedInputIsCopiedNotRejected) {
  auto bytes = sample_message(msg_kind::partial, 1).finish();
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
  auto bytes = sample_message(msg_kind::prefill_write, 1, s).finish();
  EXPECT_LE(bytes.size(), max_legit_message_bytes(l));
  EXPECT_TRUE(decode(bytes, l).is_ok());
}

// The traversal limit (twice the message's size) must leave room for the validator's reads
// of a legitimate message that is nearly all structure: memberships of many shards, each
// with replicas, in one compact segment.
TEST(Messages, MembershipsOfManyShardsWithReplicasAreAccepted) {
  for (auto [placements, shards, replicas] : {std::array<uint32_t, 3>{1, 64, 8},
                                              std::array<uint32_t, 3>{3, 64, 1},
                                              std::array<uint32_t, 3>{64, 4, 2},
                                              std::array<uint32_t, 3>{1000, 16, 3}}) {
    SCOPED_TRACE(testing::Message() << placements << " x " << shards << " x " << replicas);
    outbound m(envelope{}, size_t{placements} * shards * 96);
    auto ps = m.body().initMembership().initPlacements(placements);
    for (uint32_t p = 0; p < placements; ++p) {
      auto ss = ps[p].initShards(shards);
      for (uint32_t i = 0; i < shards; ++i) {
        ss[i].setKvHead1(1);
        ss[i].getSplit().initPages().setPage1(10);
        ss[i].setSequenceShards(1);
        auto r = ss[i].initReplicas(replicas);
        for (uint32_t j = 0; j < replicas; ++j) r.set(j, j + 1);
      }
    }
    auto bytes = m.finish();
    EXPECT_EQ(segment_count(bytes), 1u);
    auto d = decode(std::move(bytes), limits);
    EXPECT_TRUE(d.is_ok()) << d.error().to_string();
  }
}

// An outbound whose payload outgrows its size hint takes more segments; finish() flattens
// them behind a segment table and the receiver reads the same message.
TEST(Messages, MessageLargerThanItsSizeHintSpillsIntoSegmentsAndDecodesExactly) {
  sample_shape kv;
  kv.page_tokens = 1024;  // 512 KiB of K and V
  sample_shape pages;
  pages.pages = 64;  // 64 pages, 128 blobs
  for (auto [kind, shape] : {std::pair{msg_kind::prefill_write, kv},
                             std::pair{msg_kind::recall_reply, pages},
                             std::pair{msg_kind::membership, sample_shape{}}}) {
    SCOPED_TRACE(to_string(kind));
    const outbound sent = sample_message(kind, 2, shape);
    outbound spilled(envelope_of(sent.reader()), 0);  // no payload hint at all
    copy_body(sent.reader().getBody(), spilled.body());
    auto bytes = spilled.finish();
    EXPECT_GE(segment_count(bytes), 2u) << "the message should not fit the hint";
    EXPECT_EQ(segment_count(sample_message(kind, 2, shape).finish()), 1u);
    wire_stats st;
    auto d = decode(std::move(bytes), limits, &st);
    ASSERT_TRUE(d.is_ok()) << d.error().to_string();
    EXPECT_TRUE(same(d->body(), sent.reader().getBody()));
    if (kind == msg_kind::recall_reply) {  // blobs of later segments read as their type
      auto pages_got = d->recall_reply().getPages();
      auto last = pages_got[pages_got.size() - 1];
      auto want = sent.reader().getBody().getRecallReply().getPages()[pages_got.size() - 1];
      auto v = view_as<bf16>(last.getV());
      ASSERT_EQ(v.size(), want.getV().size() / sizeof(bf16));
      EXPECT_EQ(std::memcmp(v.data(), want.getV().begin(), want.getV().size()), 0);
    }
  }
}

// A received message owns its bytes: it can wait in a queue, be moved around, and its
// readers still see the message after the result it came in is gone.
TEST(Messages, ReceivedSurvivesBeingMovedIntoAQueue) {
  std::deque<received> queue;
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    auto d = decode(sample_message(msg_kind::query, seed).finish(), limits);
    ASSERT_TRUE(d.is_ok());
    queue.push_back(std::move(d).value());
  }
  for (uint64_t seed = 1; seed <= 40; ++seed) {
    const outbound sent = sample_message(msg_kind::query, seed);
    auto want_q = view_as<float>(sent.reader().getBody().getQuery().getQ()).vec();
    ASSERT_EQ(queue.front().kind(), msg_kind::query);
    EXPECT_EQ(view_as<float>(queue.front().query().getQ()).vec(), want_q);  // read in place
    received m = std::move(queue.front());
    queue.pop_front();
    EXPECT_EQ(m.env().seq, sent.reader().getSeq());
    EXPECT_TRUE(same(m.body(), sent.reader().getBody()));
    EXPECT_EQ(view_as<float>(m.query().getQ()).vec(), want_q);
  }
}

// decode(std::vector&&) keeps the buffer it was given: the readers point into it, no copy.
TEST(Messages, DecodingAnOwnedBufferReadsItInPlace) {
  auto bytes = sample_message(msg_kind::prefill_write, 1).finish();
  const uint8_t* base = bytes.data();
  const size_t size = bytes.size();
  auto inside = [&](capnp::Data::Reader blob) {
    return blob.size() > 0 && blob.begin() >= base && blob.end() <= base + size;
  };
  auto d = decode(std::move(bytes), limits);
  ASSERT_TRUE(d.is_ok());
  received m = std::move(d).value();
  EXPECT_TRUE(inside(m.prefill_write().getK()));
  EXPECT_TRUE(inside(m.prefill_write().getV()));
  EXPECT_EQ(reinterpret_cast<const uint8_t*>(view_as<bf16>(m.prefill_write().getV()).data()),
            m.prefill_write().getV().begin());
  // The borrowing overload copies (the caller keeps its buffer).
  auto kept = sample_message(msg_kind::prefill_write, 1).finish();
  auto c = decode(kept, limits);
  ASSERT_TRUE(c.is_ok());
  auto k = c->prefill_write().getK();
  EXPECT_TRUE(k.end() <= kept.data() || k.begin() >= kept.data() + kept.size());
}

// --- one test per validation rule ------------------------------------------------------

TEST(Validation, RefusesUnknownProtocolVersion) {
  outbound m = sample_message(msg_kind::heartbeat, 1);
  m.root().setVersion(protocol_version + 1);
  wire_stats st;
  auto r = decode(m.finish(), limits, &st);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.error().code(), errc::unsupported);
  EXPECT_NE(r.error().message().find("protocol version"), std::string::npos);
  EXPECT_EQ(st.count(reject_reason::bad_version), 1u);
}

TEST(Validation, RefusesVirtualTimeThatIsNotAFiniteNonNegativeNumber) {
  for (double bad : {std::nan(""), -1.0, -std::numeric_limits<double>::infinity(),
                     std::numeric_limits<double>::infinity()}) {
    SCOPED_TRACE(bad);
    outbound m = sample_message(msg_kind::partial, 1);
    m.root().setVtimeNs(bad);
    expect_rejected(m.finish(), reject_reason::bad_value);
  }
  outbound ok = sample_message(msg_kind::partial, 1);
  ok.root().setVtimeNs(1234.5678);  // the fraction survives
  auto d = decode(ok.finish(), limits);
  ASSERT_TRUE(d.is_ok()) << d.error().to_string();
  EXPECT_EQ(d->env().vtime_ns, 1234.5678);
}

TEST(Validation, RefusesOversizedMessage) {
  wire_limits l;
  l.max_message_bytes = 1 << 16;
  sample_shape s;
  s.page_tokens = 512;  // 2 x 512 x 128 x 2 B = 256 KiB of KV
  expect_rejected(sample_message(msg_kind::prefill_write, 1, s).finish(), reject_reason::oversized,
                  l);
}

TEST(Validation, RefusesCountAboveLimit) {
  outbound m = sample_message(msg_kind::query, 1);
  auto q = m.body().getQuery();
  q.setHeadDim(1024);  // > max_head_dim 512; q keeps the shape it declares
  q.initQ(uint64_t{q.getKvHead1() - q.getKvHead0()} * q.getGroup() * 1024 * sizeof(float));
  expect_rejected(m.finish(), reject_reason::limit);

  outbound g = sample_message(msg_kind::partial, 1);
  g.body().getPartial().setGroup(65);  // > max_group 64
  expect_rejected(g.finish(), reject_reason::limit);
}

// The capnp default of an unset count is 0, not the 1 the old structs defaulted to: a sender
// that forgets shard.sequenceShards is refused, not taken as one sequence shard.
TEST(Validation, RefusesAShardWhoseSequenceShardsWasLeftAtZero) {
  auto membership = [](bool set_sequence_shards) {
    outbound m(envelope{}, 0);
    auto shard = m.body().initMembership().initPlacements(1)[0].initShards(1)[0];
    shard.setKvHead0(0);
    shard.setKvHead1(1);
    shard.getSplit().initPages().setPage1(10);
    if (set_sequence_shards) shard.setSequenceShards(1);
    return m.finish();
  };
  auto ok = decode(membership(true), limits);
  ASSERT_TRUE(ok.is_ok()) << ok.error().to_string();
  expect_rejected(membership(false), reject_reason::limit);
}

TEST(Validation, RefusesBlobWhoseLengthDisagreesWithShape) {
  outbound m = sample_message(msg_kind::prefill_write, 1);
  auto w = m.body().getPrefillWrite();
  auto k = w.getK().asReader();
  w.setK(as_data(std::vector<uint8_t>(k.begin(), k.end() - sizeof(bf16))));  // one element short
  reseal(m);
  expect_rejected(m.finish(), reject_reason::shape);

  outbound q = sample_message(msg_kind::query, 1);
  q.body().getQuery().setKvHead1(2);  // q holds one head's worth
  expect_rejected(q.finish(), reject_reason::shape);

  outbound c = sample_message(msg_kind::candidates, 1);
  auto cand = c.body().getCandidates();
  auto scores = cand.getScores().asReader();
  cand.setScores(as_data(std::vector<uint8_t>(scores.begin(), scores.end() - sizeof(float))));
  expect_rejected(c.finish(), reject_reason::shape);
}

TEST(Validation, RefusesIndexOutOfRange) {
  outbound m = sample_message(msg_kind::prefill_write, 1);
  m.body().getPrefillWrite().setLayer(limits.max_layers);
  expect_rejected(m.finish(), reject_reason::index);

  outbound p = sample_message(msg_kind::prefill_write, 2);
  p.body().getPrefillWrite().setPosition0(limits.max_context_tokens - 1);  // runs past the end
  expect_rejected(p.finish(), reject_reason::index);

  outbound q = sample_message(msg_kind::query, 1);
  auto qq = q.body().getQuery();
  qq.setKvHead0(1);
  qq.setKvHead1(1);  // empty range
  qq.initQ(0);
  expect_rejected(q.finish(), reject_reason::index);

  outbound r = sample_message(msg_kind::recall_request, 1);
  fill_as<uint32_t>(r.body().getRecallRequest().getPageIds())[0] =
      static_cast<uint32_t>(limits.max_context_tokens);
  expect_rejected(r.finish(), reject_reason::index);

  outbound s = sample_message(msg_kind::membership, 1);
  auto split = s.body().getMembership().getPlacements()[0].getShards()[1].getSplit();
  ASSERT_EQ(split.which(), wire::Shard::Split::INTERLEAVE);
  split.getInterleave().setClass(split.getInterleave().getStride());  // class must be below it
  expect_rejected(s.finish(), reject_reason::index);
}

// Finds `needle` in `bytes` (ASSERTs it is there) and returns its offset.
size_t offset_of(const std::vector<uint8_t>& bytes, const std::vector<uint8_t>& needle) {
  auto it = std::search(bytes.begin(), bytes.end(), needle.begin(), needle.end());
  EXPECT_NE(it, bytes.end());
  return it == bytes.end() ? 0 : static_cast<size_t>(it - bytes.begin());
}

TEST(Validation, RefusesCrcMismatch) {
  outbound m = sample_message(msg_kind::prefill_write, 1);
  auto v = m.reader().getBody().getPrefillWrite().getV();
  const std::vector<uint8_t> v_head(v.begin(), v.begin() + 64);
  auto bytes = m.finish();
  // Flip one bit of the V payload in the encoded bytes.
  bytes[offset_of(bytes, v_head) + 10] ^= 0x10;
  expect_rejected(bytes, reject_reason::crc);

  outbound r = sample_message(msg_kind::recall_reply, 1);
  auto k = r.reader().getBody().getRecallReply().getPages()[2].getK();
  const std::vector<uint8_t> k_head(k.begin(), k.begin() + 32);
  auto rb = r.finish();
  rb[offset_of(rb, k_head)] ^= 1;
  expect_rejected(rb, reject_reason::crc);
}

TEST(Validation, RefusesTruncatedBytes) {
  auto bytes = sample_message(msg_kind::partial, 1).finish();
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
  auto bytes = sample_message(msg_kind::heartbeat, 1).finish();
  // One segment: table (8) + root pointer (8); the union tag is the u16 at byte 2 of the
  // envelope's data section (after version, before sender).
  uint16_t tag;
  std::memcpy(&tag, bytes.data() + 18, 2);
  ASSERT_EQ(tag, static_cast<uint16_t>(msg_kind::heartbeat));
  uint16_t bad = 200;
  std::memcpy(bytes.data() + 18, &bad, 2);
  expect_rejected(bytes, reject_reason::unknown_kind);
}

// A struct whose pointer section is longer than its schema's hides pointers the validator
// never reads; a deep copy of the accepted reader (setX(reader), AnyStruct equality,
// printing) would follow them. Here the envelope claims a second pointer, which overlaps the
// heartbeat's first word, set to an out-of-bounds struct pointer.
TEST(Validation, RefusesPointersBeyondTheSchema) {
  outbound m = sample_message(msg_kind::heartbeat, 1);
  m.body().getHeartbeat().setIncarnation(0x00010000'00fffff0ull);  // struct, far out of bounds
  auto bytes = m.finish();
  // One segment: table (8), root pointer (8) whose upper half is data words (u16) then
  // pointer count (u16); the envelope's 3 data words and 1 pointer, then the heartbeat.
  uint16_t pointers;
  std::memcpy(&pointers, bytes.data() + 14, 2);
  ASSERT_EQ(pointers, 1u);
  pointers = 2;
  std::memcpy(bytes.data() + 14, &pointers, 2);
  expect_rejected(bytes, reject_reason::malformed);
}

// A list of zero-sized structs costs no bytes but one word per element to read (capnp's
// traversal limit counts it so): a copy of such a message could be refused as oversized.
// Here the membership's placements list (3 elements of 1 data word and 1 pointer) is made
// to claim zero-sized elements.
TEST(Validation, RefusesListsOfZeroSizedStructs) {
  auto bytes = sample_message(msg_kind::membership, 1).finish();
  // The inline-composite tag: element count << 2 (struct kind), then data words, pointers.
  const std::vector<uint8_t> tag = {3 << 2, 0, 0, 0, 1, 0, 1, 0};
  const size_t at = offset_of(bytes, tag);
  ASSERT_EQ(std::search(bytes.begin() + static_cast<long>(at) + 1, bytes.end(), tag.begin(),
                        tag.end()),
            bytes.end())
      << "the tag should be unique";
  std::memset(bytes.data() + at + 4, 0, 4);
  expect_rejected(bytes, reject_reason::malformed);
}

TEST(Validation, RefusesWrongKindForTypedDecoder) {
  auto bytes = sample_message(msg_kind::heartbeat, 1).finish();
  wire_stats st;
  auto r = decode_kind(msg_kind::query, bytes.data(), bytes.size(), limits, &st);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(st.count(reject_reason::wrong_kind), 1u);
}

TEST(Validation, RefusesBadValues) {
  outbound q = sample_message(msg_kind::query, 1);
  q.body().getQuery().setScoreThreshold(std::numeric_limits<float>::quiet_NaN());
  expect_rejected(q.finish(), reject_reason::bad_value);

  // Only a candidates round (a lookahead search) or an attend followed by one asks for a
  // search in a device's background.
  for (auto round : {wire::SelectionRound::LOCAL, wire::SelectionRound::DENSE}) {
    outbound b = sample_message(msg_kind::query, 1);
    b.body().getQuery().setRound(round);
    b.body().getQuery().setBackground(true);
    expect_rejected(b.finish(), reject_reason::bad_value);
  }
  outbound c = sample_message(msg_kind::query, 1);
  c.body().getQuery().setRound(wire::SelectionRound::EXACT_CANDIDATES);
  c.body().getQuery().setBackground(true);
  auto bytes = c.finish();
  EXPECT_TRUE(decode(bytes, limits, nullptr).is_ok());
  outbound a = sample_message(msg_kind::query, 1);
  a.body().getQuery().setRound(wire::SelectionRound::EXACT_ATTEND);
  a.body().getQuery().setBackground(true);
  auto attend = a.finish();
  EXPECT_TRUE(decode(attend, limits, nullptr).is_ok());

  outbound j = sample_message(msg_kind::join, 1);
  j.body().getJoin().setRole(static_cast<wire::Role>(9));
  expect_rejected(j.finish(), reject_reason::bad_value);

  outbound e = sample_message(msg_kind::error, 1);
  e.body().getError().setCode(static_cast<uint16_t>(errc::ok));
  expect_rejected(e.finish(), reject_reason::bad_value);
}

// run.wire_precision bf16 (model/work_sizes.hpp): a query's q and a partial's o may be bf16,
// flagged, half the bytes of fp32; the blob must then have the bf16 size (an fp32-sized one
// is refused, and an fp32 query's bf16-sized one too); a dense verification query or
// partial is never bf16.
TEST(Validation, Bf16QueriesAndPartialsHaveTheirOwnShape) {
  auto query_with = [](bool flag, size_t elem_bytes, wire::SelectionRound round) {
    outbound m = sample_message(msg_kind::query, 1);
    auto q = m.body().getQuery();
    const size_t elems = size_t(q.getKvHead1() - q.getKvHead0()) * q.getGroup() * q.getHeadDim();
    q.setRound(round);
    bf16* out = fill_as<bf16>(q.initQ(static_cast<unsigned>(elems * elem_bytes)));
    for (size_t i = 0; i < elems * elem_bytes / sizeof(bf16); ++i) out[i] = to_bf16(0.25f * float(i % 7));
    q.setBf16(flag);
    return m.finish();
  };
  const auto attend = wire::SelectionRound::EXACT_ATTEND;
  auto ok = query_with(true, 2, attend);
  auto decoded = decode(ok, limits, nullptr);
  ASSERT_TRUE(decoded.is_ok()) << decoded.error().to_string();
  EXPECT_TRUE(decoded->query().getBf16());
  EXPECT_LT(ok.size(), query_with(false, 4, attend).size());
  expect_rejected(query_with(true, 4, attend), reject_reason::shape);
  expect_rejected(query_with(false, 2, attend), reject_reason::shape);
  expect_rejected(query_with(true, 2, wire::SelectionRound::DENSE), reject_reason::bad_value);

  auto partial_with = [](bool flag, size_t elem_bytes, wire::SelectionRound round) {
    outbound m = sample_message(msg_kind::partial, 1);
    auto p = m.body().getPartial();
    p.setRound(round);
    const size_t elems = size_t(p.getGroup()) * p.getHeadDim();
    bf16* out = fill_as<bf16>(p.initO(static_cast<unsigned>(elems * elem_bytes)));
    for (size_t i = 0; i < elems * elem_bytes / sizeof(bf16); ++i) out[i] = to_bf16(-0.5f * float(i % 5));
    p.setOBf16(flag);
    return m.finish();
  };
  auto pok = partial_with(true, 2, attend);
  auto pdec = decode(pok, limits, nullptr);
  ASSERT_TRUE(pdec.is_ok()) << pdec.error().to_string();
  EXPECT_TRUE(pdec->partial().getOBf16());
  expect_rejected(partial_with(true, 4, attend), reject_reason::shape);
  expect_rejected(partial_with(false, 2, attend), reject_reason::shape);
  expect_rejected(partial_with(true, 2, wire::SelectionRound::DENSE), reject_reason::bad_value);
}

TEST(Validation, EachReasonIsLoggedOnceAndCountedEveryTime) {
  wire_stats st;
  auto bytes = sample_message(msg_kind::heartbeat, 1).finish();
  bytes.resize(8);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(decode(bytes, limits, &st).is_ok());
  EXPECT_EQ(st.count(reject_reason::truncated), 5u);
  EXPECT_TRUE(st.logged[static_cast<size_t>(reject_reason::truncated)].load());
}

// --- seeded random mutations -------------------------------------------------------------

// Property: no mutation of a valid message crashes any decoder; whatever is accepted, copied
// into a new outbound, decodes again (the decoder never hands out a message it would refuse).
TEST(Mutation, TwentyThousandSeededMutationsNeverCrash) {
  const uint64_t seed = 20240601;
  std::mt19937_64 rng(seed);
  std::vector<std::vector<uint8_t>> corpus;
  for (msg_kind k : all_kinds())
    for (uint64_t s = 1; s <= 3; ++s) corpus.push_back(sample_message(k, s).finish());
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
      auto again = decode(reencode(*r), limits);
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
  outbound out(envelope{}, 0);
  auto j = out.body().initJoin();
  j.setNodeId(4);
  j.setRole(to_wire(node_role::pnm_device));
  j.setWorkerAddress(as_data(std::vector<uint8_t>{1, 2, 3}));
  sign_join(secret, as_data(nonce), j);
  EXPECT_EQ(j.getProof().size(), join_proof_bytes);
  EXPECT_TRUE(verify_join(secret, nonce, j.asReader()).is_ok());
  EXPECT_FALSE(verify_join("wrong secret", nonce, j.asReader()).is_ok());
  // Replayed against a new challenge.
  EXPECT_FALSE(verify_join(secret, make_nonce(), j.asReader()).is_ok());
  // The proof is bound to the identity: node, role and worker address.
  j.setNodeId(5);
  EXPECT_FALSE(verify_join(secret, nonce, j.asReader()).is_ok());
  j.setNodeId(4);
  j.setRole(to_wire(node_role::coordinator));
  EXPECT_FALSE(verify_join(secret, nonce, j.asReader()).is_ok());
  j.setRole(to_wire(node_role::pnm_device));
  j.setWorkerAddress(as_data(std::vector<uint8_t>{1, 2, 4}));
  EXPECT_FALSE(verify_join(secret, nonce, j.asReader()).is_ok());
  j.setWorkerAddress(as_data(std::vector<uint8_t>{1, 2, 3}));
  EXPECT_TRUE(verify_join(secret, nonce, j.asReader()).is_ok());
  EXPECT_FALSE(verify_join("", nonce, j.asReader()).is_ok());
  // And it survives the wire.
  auto d = decode(out.finish(), limits);
  ASSERT_TRUE(d.is_ok()) << d.error().to_string();
  EXPECT_TRUE(verify_join(secret, nonce, d->join()).is_ok());
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
