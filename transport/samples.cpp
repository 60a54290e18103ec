// Sample messages, built through the generated builders (see samples.hpp).
#include "transport/samples.hpp"

#include <random>

namespace pnmkv::transport {
namespace {

struct filler {
  std::mt19937_64 rng;
  std::uniform_real_distribution<float> uf{-2.f, 2.f};

  uint32_t below(uint64_t n) { return static_cast<uint32_t>(rng() % n); }
  void bytes(capnp::Data::Builder d) {
    for (auto& b : d) b = static_cast<kj::byte>(rng());
  }
  void floats(capnp::Data::Builder d) {
    for (float* f = fill_as<float>(d), *e = f + d.size() / 4; f != e; ++f) *f = uf(rng);
  }
  void kv(capnp::Data::Builder d) {
    for (bf16* x = fill_as<bf16>(d), *e = x + d.size() / 2; x != e; ++x) *x = to_bf16(uf(rng));
  }
  void ids(capnp::Data::Builder d, uint32_t bound) {
    for (uint32_t* x = fill_as<uint32_t>(d), *e = x + d.size() / 4; x != e; ++x) *x = below(bound);
  }
};

void membership(filler& f, wire::Membership::Builder m) {
  m.setEpoch(f.rng() % 1000);
  auto members = m.initMembers(5);
  for (uint32_t i = 0; i < 5; ++i) {
    members[i].setNodeId(i);
    members[i].setRole(static_cast<wire::Role>(i % 4));
    members[i].setAlive(i != 3);
    f.bytes(members[i].initWorkerAddress(64));
  }
  auto placements = m.initPlacements(3);
  for (uint32_t r = 0; r < 3; ++r) {
    placements[r].setRequestId(r);
    auto shards = placements[r].initShards(4);
    for (uint32_t sh = 0; sh < 4; ++sh) {
      auto s = shards[sh];
      s.setShardId(sh);
      s.setDeviceId(1 + sh);
      s.setKvHead0(2 * (sh % 2));
      s.setKvHead1(2 * (sh % 2) + 2);
      if (sh % 2) {
        s.getSplit().initInterleave().setStride(2);
        s.getSplit().getInterleave().setClass(sh / 2);
      } else {
        s.getSplit().initPages().setPage0(100 * sh);
        s.getSplit().getPages().setPage1(100 * sh + 100);
      }
      s.initReplicas(1).set(0, 9 + sh);
      s.setSequenceShards(1);
    }
  }
}

void kv_messages(filler& f, msg_kind kind, const sample_shape& s, uint64_t request,
                 uint32_t layer, wire::Envelope::Body::Builder body) {
  if (kind == msg_kind::prefill_write) {
    auto w = body.initPrefillWrite();
    w.setRequestId(request);
    w.setLayer(layer);
    w.setKvHead(f.below(8));
    w.setPosition0(uint64_t{f.below(1000)} * s.page_tokens);
    w.setNTokens(s.page_tokens);
    w.setHeadDim(s.head_dim);
    f.kv(w.initK(s.page_tokens * s.head_dim * 2));
    f.kv(w.initV(s.page_tokens * s.head_dim * 2));
  } else if (kind == msg_kind::token_append) {
    auto a = body.initTokenAppend();
    a.setRequestId(request);
    a.setLayer(layer);
    a.setKvHead0(0);
    a.setNHeads(s.kv_heads);
    a.setPosition(f.rng() % 100000);
    a.setHeadDim(s.head_dim);
    f.kv(a.initK(s.kv_heads * s.head_dim * 2));
    f.kv(a.initV(s.kv_heads * s.head_dim * 2));
  } else {
    auto r = body.initRecallReply();
    r.setRequestId(request);
    r.setStep(f.below(100));
    r.setLayer(layer);
    r.setKvHead(3);
    r.setPageTokens(s.page_tokens);
    r.setHeadDim(s.head_dim);
    auto pages = r.initPages(s.pages);
    for (uint32_t i = 0; i < s.pages; ++i) {
      auto p = pages[i];
      p.setPageId(f.below(65536));
      const uint32_t n = i + 1 == s.pages ? 1 + f.below(s.page_tokens) : s.page_tokens;
      p.setNTokens(n);
      f.kv(p.initK(n * s.head_dim * 2));
      f.kv(p.initV(n * s.head_dim * 2));
    }
  }
}

void query(filler& f, const sample_shape& s, uint64_t request, uint32_t layer,
           wire::Query::Builder q) {
  q.setRequestId(request);
  q.setStep(f.below(100));
  q.setLayer(layer);
  q.setKvHead0(0);
  q.setKvHead1(s.kv_heads);
  q.setGroup(s.group);
  q.setHeadDim(s.head_dim);
  f.floats(q.initQ(s.kv_heads * s.group * s.head_dim * 4));
  q.setBudgetPages(128);
  q.setRound(static_cast<wire::SelectionRound>(f.below(3)));
  q.setScoreThreshold(f.uf(f.rng));
  q.setDeadlineNs(f.rng() % (1ull << 40));
  q.setShardId(f.below(4));
  q.setSequenceTokens(f.rng() % 1000000);
  f.ids(q.initExcludedPages(5 * 4), 60000);
  uint32_t* listed = fill_as<uint32_t>(q.initListedPages(7 * 4));
  for (uint32_t i = 0; i < 7; ++i) listed[i] = 3 * i;
}

void replies(filler& f, msg_kind kind, const sample_shape& s, uint64_t request, uint32_t layer,
             wire::Envelope::Body::Builder body) {
  if (kind == msg_kind::partial) {
    auto p = body.initPartial();
    p.setRequestId(request);
    p.setStep(f.below(100));
    p.setLayer(layer);
    p.setKvHead(f.below(8));
    p.setShardId(f.below(4));
    p.setGroup(s.group);
    p.setHeadDim(s.head_dim);
    f.floats(p.initO(s.group * s.head_dim * 4));
    f.floats(p.initLse(s.group * 4));
    p.setPagesSelected(s.pages);
    f.ids(p.initPageIds(s.pages * 4), 65536);
    p.setBytesScanned(f.rng() % (1ull << 30));
    p.setFlops(static_cast<double>(f.rng() % 1000000));
    p.setRound(static_cast<wire::SelectionRound>(f.below(3)));
    p.setDeviceBytesHeld(f.rng() % (1ull << 36));
  } else if (kind == msg_kind::candidates) {
    auto c = body.initCandidates();
    c.setRequestId(request);
    c.setStep(f.below(100));
    c.setLayer(layer);
    c.setKvHead(1);
    c.setShardId(2);
    c.setNPages(s.pages);
    f.ids(c.initPageIds(s.pages * 4), 65536);
    f.floats(c.initScores(s.pages * 4));
  } else {
    auto r = body.initRecallRequest();
    r.setRequestId(request);
    r.setStep(f.below(100));
    r.setLayer(layer);
    r.setKvHead(3);
    r.setNPages(s.pages);
    f.ids(r.initPageIds(s.pages * 4), 65536);
  }
}

void small(filler& f, msg_kind kind, wire::Envelope::Body::Builder body) {
  switch (kind) {
    case msg_kind::challenge: f.bytes(body.initChallenge().initNonce(32)); break;
    case msg_kind::join: {
      auto j = body.initJoin();
      j.setNodeId(f.below(64));
      j.setRole(static_cast<wire::Role>(f.below(4)));
      f.bytes(j.initNonce(32));
      f.bytes(j.initProof(32));
      f.bytes(j.initWorkerAddress(200 + f.below(100)));
      break;
    }
    case msg_kind::join_ack: {
      auto a = body.initJoinAck();
      a.setAccepted(f.rng() % 2 == 0);
      a.setNodeId(7);
      a.setEpoch(f.rng() % 100);
      a.setReason("wrong secret");
      break;
    }
    case msg_kind::error: {
      auto e = body.initError();
      e.setCode(static_cast<uint16_t>(errc::timeout));
      e.setMessage("step 3 missed its deadline");
      e.setRefersToSeq(f.rng() % 1000);
      break;
    }
    case msg_kind::heartbeat: {
      auto h = body.initHeartbeat();
      h.setIncarnation(f.rng());
      h.setQueueDepth(f.below(100));
      break;
    }
    case msg_kind::region_advert: {
      auto r = body.initRegionAdvert();
      r.setRegionId(f.rng() % 100);
      r.setLength(1ull << 26);
      f.bytes(r.initRemoteKey(120));
      r.setPurpose(7);
      break;
    }
    case msg_kind::write_ack: {
      auto a = body.initWriteAck();
      a.setRequestId(f.rng() % 100);
      a.setLayer(3);
      a.setKvHead(5);
      a.setPosition0(4096);
      a.setNTokens(4096);
      a.setOk(true);
      break;
    }
    default: PNMKV_CHECK(false, "not a small kind: ", to_string(kind));
  }
}

// Payload bytes of a sample, for the builder's size hint.
size_t payload_bytes(const sample_shape& s) {
  const size_t kv = size_t{s.pages} * s.page_tokens * s.head_dim * 2 * 2;
  const size_t q = size_t{s.kv_heads} * s.group * s.head_dim * 4;
  return kv + q + 64 * s.pages + 4096;
}

}  // namespace

outbound sample_message(msg_kind kind, uint64_t seed, const sample_shape& s) {
  filler f{std::mt19937_64(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(kind))};
  envelope env;
  env.sender = f.below(16);
  env.seq = f.rng() % 100000;
  env.vtime_ns = double(f.rng() % (1ull << 40)) + 0.25;
  const uint32_t layer = f.below(32);
  const uint64_t request = f.rng() % 1000;
  outbound m(env, payload_bytes(s));
  auto body = m.body();
  switch (kind) {
    case msg_kind::membership: membership(f, body.initMembership()); break;
    case msg_kind::prefill_write:
    case msg_kind::token_append:
    case msg_kind::recall_reply: kv_messages(f, kind, s, request, layer, body); break;
    case msg_kind::query: query(f, s, request, layer, body.initQuery()); break;
    case msg_kind::partial:
    case msg_kind::candidates:
    case msg_kind::recall_request: replies(f, kind, s, request, layer, body); break;
    default: small(f, kind, body);
  }
  reseal(m);
  return m;
}

void reseal(outbound& m) {
  auto body = m.body();
  switch (body.which()) {
    case wire::Envelope::Body::PREFILL_WRITE: {
      auto w = body.getPrefillWrite();
      w.setCrc32c(kv_crc32c(w.getK().asReader(), w.getV().asReader()));
      break;
    }
    case wire::Envelope::Body::TOKEN_APPEND: {
      auto a = body.getTokenAppend();
      a.setCrc32c(kv_crc32c(a.getK().asReader(), a.getV().asReader()));
      break;
    }
    case wire::Envelope::Body::RECALL_REPLY:
      for (auto p : body.getRecallReply().getPages())
        p.setCrc32c(kv_crc32c(p.getK().asReader(), p.getV().asReader()));
      break;
    default: break;
  }
}

}  // namespace pnmkv::transport
