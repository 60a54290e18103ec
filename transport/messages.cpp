// Cap'n Proto encoders and validating decoders for transport/messages.hpp. The only place
// (with the fabrics' envelope peek) that sees capnp types.
#include "transport/messages.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>

#include <cmath>
#include <cstring>
#include <type_traits>

#include "transport/crc32c.hpp"
#include "transport/log.hpp"
#include "transport/wire.capnp.h"

namespace pnmkv::transport {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "tensor blobs are little-endian; a big-endian port must swap them");

using W = wire::Envelope::Body::Which;
static_assert(static_cast<int>(W::CHALLENGE) == static_cast<int>(msg_kind::challenge));
static_assert(static_cast<int>(W::PREFILL_WRITE) == static_cast<int>(msg_kind::prefill_write));
static_assert(static_cast<int>(W::QUERY) == static_cast<int>(msg_kind::query));
static_assert(static_cast<int>(W::PARTIAL) == static_cast<int>(msg_kind::partial));
static_assert(static_cast<int>(W::RECALL_REPLY) == static_cast<int>(msg_kind::recall_reply));
static_assert(static_cast<int>(W::REGION_ADVERT) == static_cast<int>(msg_kind::region_advert));
static_assert(static_cast<int>(W::WRITE_ACK) == static_cast<int>(msg_kind::write_ack));
static_assert(static_cast<int>(W::WRITE_ACK) + 1 == static_cast<int>(msg_kind_count));

namespace {

// ---------------------------------------------------------------------------------------
// Enum codec: where each C++ enum a message carries meets its wire.capnp counterpart, here
// and nowhere else. The numbers agree (checked below), so encoding is a cast: a value out of
// range travels as it is and the receiver refuses it (bad_value) like any malformed field.
// Decoding names every value it knows; the validator refuses the rest.

#define PNMKV_SAME_VALUE(cpp, capnp) \
  static_assert(static_cast<int>(cpp) == static_cast<int>(capnp), #cpp " != " #capnp)
PNMKV_SAME_VALUE(node_role::gpu_host, wire::Role::GPU_HOST);
PNMKV_SAME_VALUE(node_role::pnm_device, wire::Role::PNM_DEVICE);
PNMKV_SAME_VALUE(node_role::coordinator, wire::Role::COORDINATOR);
PNMKV_SAME_VALUE(node_role::driver, wire::Role::DRIVER);
PNMKV_SAME_VALUE(selection_round::local, wire::SelectionRound::LOCAL);
PNMKV_SAME_VALUE(selection_round::exact_candidates, wire::SelectionRound::EXACT_CANDIDATES);
PNMKV_SAME_VALUE(selection_round::exact_attend, wire::SelectionRound::EXACT_ATTEND);
PNMKV_SAME_VALUE(selection_round::dense, wire::SelectionRound::DENSE);
#undef PNMKV_SAME_VALUE

wire::Role to_wire(node_role r) { return static_cast<wire::Role>(r); }
wire::SelectionRound to_wire(selection_round r) { return static_cast<wire::SelectionRound>(r); }

// False for a value this build does not know.
bool from_wire(wire::Role w, node_role& out) {
  switch (w) {
    case wire::Role::GPU_HOST: out = node_role::gpu_host; return true;
    case wire::Role::PNM_DEVICE: out = node_role::pnm_device; return true;
    case wire::Role::COORDINATOR: out = node_role::coordinator; return true;
    case wire::Role::DRIVER: out = node_role::driver; return true;
  }
  return false;
}

bool from_wire(wire::SelectionRound w, selection_round& out) {
  switch (w) {
    case wire::SelectionRound::LOCAL: out = selection_round::local; return true;
    case wire::SelectionRound::EXACT_CANDIDATES: out = selection_round::exact_candidates; return true;
    case wire::SelectionRound::EXACT_ATTEND: out = selection_round::exact_attend; return true;
    case wire::SelectionRound::DENSE: out = selection_round::dense; return true;
  }
  return false;
}

// sequence_split is the Shard.split union: contiguous carries its page range, interleave
// its stride and class.
void put_split(wire::Shard::Builder sb, const shard_info& s) {
  if (s.split == sequence_split::contiguous) {
    auto g = sb.getSplit().initPages();
    g.setPage0(s.page0);
    g.setPage1(s.page1);
  } else {
    auto g = sb.getSplit().initInterleave();
    g.setStride(s.stride);
    g.setClass(s.cls);
  }
}

bool from_wire(wire::Shard::Split::Which w, sequence_split& out) {
  switch (w) {
    case wire::Shard::Split::PAGES: out = sequence_split::contiguous; return true;
    case wire::Shard::Split::INTERLEAVE: out = sequence_split::interleave; return true;
  }
  return false;
}

const char* const kind_names[msg_kind_count] = {
    "challenge",  "join",           "join_ack",     "membership", "prefill_write",
    "token_append", "query",        "partial",      "candidates", "recall_request",
    "recall_reply", "error",        "heartbeat",    "region_advert", "write_ack"};

const char* const reason_names[reject_reason_count] = {
    "bad_version", "oversized", "truncated", "malformed", "unknown_kind", "wrong_kind",
    "limit",       "shape",     "index",     "crc",       "bad_value"};

constexpr uint64_t align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

// ---------------------------------------------------------------------------------------
// Encoding

// Blobs are referenced (not copied) only when large, aligned and word-sized, and only a
// bounded number per message: each referenced blob becomes its own segment and readers
// refuse messages with hundreds of segments.
constexpr size_t reference_min_bytes = 16384;
constexpr int reference_max_count = 64;

struct blob_writer {
  capnp::Orphanage orphanage;
  int referenced = 0;

  template <class Setter, class Adopter>
  void put(const void* p, size_t n, Setter set, Adopter adopt) {
    auto addr = reinterpret_cast<uintptr_t>(p);
    if (n >= reference_min_bytes && (addr & 7) == 0 && (n & 7) == 0 &&
        referenced < reference_max_count) {
      ++referenced;
      adopt(orphanage.referenceExternalData(
          capnp::Data::Reader(static_cast<const kj::byte*>(p), n)));
    } else {
      set(capnp::Data::Reader(static_cast<const kj::byte*>(p), n));
    }
  }
};

#define PNMKV_PUT_BLOB(bw, builder, Field, vec)                                        \
  (bw).put((vec).data(), (vec).size() * sizeof((vec)[0]),                              \
           [&](capnp::Data::Reader r) { (builder).set##Field(r); },                    \
           [&](capnp::Orphan<capnp::Data>&& o) { (builder).adopt##Field(kj::mv(o)); })

// Bytes a blob adds to the first segment: large ones are referenced, not copied (when
// aligned, which vectors' storage is).
constexpr uint64_t inl(uint64_t bytes) { return bytes < reference_min_bytes ? bytes : 16; }

// Rough encoded size of the first segment (everything but referenced blobs), so most
// messages need one segment and no more is zeroed than will be written.
uint64_t estimate_bytes(const message& m) {
  struct v {
    uint64_t operator()(const challenge_msg& x) const { return x.nonce.size(); }
    uint64_t operator()(const join_msg& x) const {
      return x.nonce.size() + x.proof.size() + x.worker_address.size();
    }
    uint64_t operator()(const join_ack_msg& x) const { return x.reason.size(); }
    uint64_t operator()(const membership_msg& x) const {
      uint64_t n = 0;
      for (auto& mm : x.members) n += 32 + mm.worker_address.size();
      for (auto& p : x.placements) {
        n += 32;
        for (auto& s : p.shards) n += 80 + 4 * s.replicas.size();
      }
      return n;
    }
    uint64_t operator()(const prefill_write_msg& x) const {
      return inl(2 * x.k.size()) + inl(2 * x.v.size());
    }
    uint64_t operator()(const token_append_msg& x) const {
      return inl(2 * x.k.size()) + inl(2 * x.v.size());
    }
    uint64_t operator()(const query_msg& x) const {
      return inl(4 * x.q.size()) + inl(4 * x.excluded_pages.size()) + inl(4 * x.listed_pages.size());
    }
    uint64_t operator()(const partial_msg& x) const {
      return inl(4 * x.o.size()) + inl(4 * x.lse.size()) + inl(4 * x.page_ids.size());
    }
    uint64_t operator()(const candidates_msg& x) const {
      return inl(4 * x.page_ids.size()) + inl(4 * x.scores.size());
    }
    uint64_t operator()(const recall_request_msg& x) const { return inl(4 * x.page_ids.size()); }
    uint64_t operator()(const recall_reply_msg& x) const {
      uint64_t n = 0;
      for (auto& p : x.pages) n += 48 + inl(2 * p.k.size()) + inl(2 * p.v.size());
      return n;
    }
    uint64_t operator()(const error_msg& x) const { return x.message.size(); }
    uint64_t operator()(const heartbeat_msg&) const { return 0; }
    uint64_t operator()(const region_advert_msg& x) const { return x.remote_key.size(); }
    uint64_t operator()(const write_ack_msg&) const { return 0; }
  };
  return 256 + std::visit(v{}, m.body);
}

void build(wire::Envelope::Builder root, const message& m, capnp::Orphanage orphanage) {
  root.setVersion(m.env.version);
  root.setSender(m.env.sender);
  root.setSeq(m.env.seq);
  root.setVtimeNs(m.env.vtime_ns);
  blob_writer bw{orphanage};
  auto body = root.getBody();
  switch (m.kind()) {
    case msg_kind::challenge: {
      auto& x = std::get<challenge_msg>(m.body);
      auto b = body.initChallenge();
      PNMKV_PUT_BLOB(bw, b, Nonce, x.nonce);
      break;
    }
    case msg_kind::join: {
      auto& x = std::get<join_msg>(m.body);
      auto b = body.initJoin();
      b.setNodeId(x.node);
      b.setRole(to_wire(x.role));
      PNMKV_PUT_BLOB(bw, b, Nonce, x.nonce);
      PNMKV_PUT_BLOB(bw, b, Proof, x.proof);
      PNMKV_PUT_BLOB(bw, b, WorkerAddress, x.worker_address);
      break;
    }
    case msg_kind::join_ack: {
      auto& x = std::get<join_ack_msg>(m.body);
      auto b = body.initJoinAck();
      b.setAccepted(x.accepted);
      b.setNodeId(x.node);
      b.setEpoch(x.epoch);
      b.setReason(x.reason);
      break;
    }
    case msg_kind::membership: {
      auto& x = std::get<membership_msg>(m.body);
      auto b = body.initMembership();
      b.setEpoch(x.epoch);
      auto members = b.initMembers(static_cast<unsigned>(x.members.size()));
      for (size_t i = 0; i < x.members.size(); ++i) {
        auto mb = members[static_cast<unsigned>(i)];
        mb.setNodeId(x.members[i].node);
        mb.setRole(to_wire(x.members[i].role));
        mb.setAlive(x.members[i].alive);
        mb.setWorkerAddress(capnp::Data::Reader(x.members[i].worker_address.data(),
                                                x.members[i].worker_address.size()));
      }
      auto pls = b.initPlacements(static_cast<unsigned>(x.placements.size()));
      for (size_t i = 0; i < x.placements.size(); ++i) {
        auto pb = pls[static_cast<unsigned>(i)];
        pb.setRequestId(x.placements[i].request_id);
        auto& shards = x.placements[i].shards;
        auto sl = pb.initShards(static_cast<unsigned>(shards.size()));
        for (size_t j = 0; j < shards.size(); ++j) {
          auto sb = sl[static_cast<unsigned>(j)];
          auto& s = shards[j];
          sb.setShardId(s.shard_id);
          sb.setDeviceId(s.device);
          sb.setKvHead0(s.kv_head0);
          sb.setKvHead1(s.kv_head1);
          put_split(sb, s);
          auto reps = sb.initReplicas(static_cast<unsigned>(s.replicas.size()));
          for (size_t r = 0; r < s.replicas.size(); ++r)
            reps.set(static_cast<unsigned>(r), s.replicas[r]);
          sb.setPagesHeld(s.pages_held);
          sb.setSequenceIndex(s.sequence_index);
          sb.setSequenceShards(s.sequence_shards);
          sb.setBytesModelled(s.bytes_modelled);
        }
      }
      break;
    }
    case msg_kind::prefill_write: {
      auto& x = std::get<prefill_write_msg>(m.body);
      auto b = body.initPrefillWrite();
      b.setRequestId(x.request_id);
      b.setLayer(x.layer);
      b.setKvHead(x.kv_head);
      b.setPosition0(x.position0);
      b.setNTokens(x.n_tokens);
      b.setHeadDim(x.head_dim);
      PNMKV_PUT_BLOB(bw, b, K, x.k);
      PNMKV_PUT_BLOB(bw, b, V, x.v);
      b.setCrc32c(kv_crc32c(x.k, x.v));
      break;
    }
    case msg_kind::token_append: {
      auto& x = std::get<token_append_msg>(m.body);
      auto b = body.initTokenAppend();
      b.setRequestId(x.request_id);
      b.setLayer(x.layer);
      b.setKvHead0(x.kv_head0);
      b.setNHeads(x.n_heads);
      b.setPosition(x.position);
      b.setHeadDim(x.head_dim);
      PNMKV_PUT_BLOB(bw, b, K, x.k);
      PNMKV_PUT_BLOB(bw, b, V, x.v);
      b.setCrc32c(kv_crc32c(x.k, x.v));
      break;
    }
    case msg_kind::query: {
      auto& x = std::get<query_msg>(m.body);
      auto b = body.initQuery();
      b.setRequestId(x.request_id);
      b.setStep(x.step);
      b.setLayer(x.layer);
      b.setKvHead0(x.kv_head0);
      b.setKvHead1(x.kv_head1);
      b.setGroup(x.group);
      b.setHeadDim(x.head_dim);
      PNMKV_PUT_BLOB(bw, b, Q, x.q);
      b.setBudgetPages(x.budget_pages);
      b.setRound(to_wire(x.round));
      b.setScoreThreshold(x.score_threshold);
      b.setDeadlineNs(x.deadline_ns);
      b.setShardId(x.shard_id);
      b.setSequenceTokens(x.sequence_tokens);
      PNMKV_PUT_BLOB(bw, b, ExcludedPages, x.excluded_pages);
      PNMKV_PUT_BLOB(bw, b, ListedPages, x.listed_pages);
      break;
    }
    case msg_kind::partial: {
      auto& x = std::get<partial_msg>(m.body);
      auto b = body.initPartial();
      b.setRequestId(x.request_id);
      b.setStep(x.step);
      b.setLayer(x.layer);
      b.setKvHead(x.kv_head);
      b.setShardId(x.shard_id);
      b.setGroup(x.group);
      b.setHeadDim(x.head_dim);
      PNMKV_PUT_BLOB(bw, b, O, x.o);
      PNMKV_PUT_BLOB(bw, b, Lse, x.lse);
      b.setPagesSelected(x.pages_selected);
      b.setBytesScanned(x.bytes_scanned);
      PNMKV_PUT_BLOB(bw, b, PageIds, x.page_ids);
      b.setFlops(x.flops);
      b.setRound(to_wire(x.round));
      b.setDeviceBytesHeld(x.device_bytes_held);
      break;
    }
    case msg_kind::candidates: {
      auto& x = std::get<candidates_msg>(m.body);
      auto b = body.initCandidates();
      b.setRequestId(x.request_id);
      b.setStep(x.step);
      b.setLayer(x.layer);
      b.setKvHead(x.kv_head);
      b.setShardId(x.shard_id);
      b.setNPages(static_cast<uint32_t>(x.page_ids.size()));
      PNMKV_PUT_BLOB(bw, b, PageIds, x.page_ids);
      PNMKV_PUT_BLOB(bw, b, Scores, x.scores);
      b.setBytesScanned(x.bytes_scanned);
      b.setFlops(x.flops);
      break;
    }
    case msg_kind::recall_request: {
      auto& x = std::get<recall_request_msg>(m.body);
      auto b = body.initRecallRequest();
      b.setRequestId(x.request_id);
      b.setStep(x.step);
      b.setLayer(x.layer);
      b.setKvHead(x.kv_head);
      b.setNPages(static_cast<uint32_t>(x.page_ids.size()));
      PNMKV_PUT_BLOB(bw, b, PageIds, x.page_ids);
      break;
    }
    case msg_kind::recall_reply: {
      auto& x = std::get<recall_reply_msg>(m.body);
      auto b = body.initRecallReply();
      b.setRequestId(x.request_id);
      b.setStep(x.step);
      b.setLayer(x.layer);
      b.setKvHead(x.kv_head);
      b.setPageTokens(x.page_tokens);
      b.setHeadDim(x.head_dim);
      auto pages = b.initPages(static_cast<unsigned>(x.pages.size()));
      for (size_t i = 0; i < x.pages.size(); ++i) {
        auto pb = pages[static_cast<unsigned>(i)];
        auto& p = x.pages[i];
        pb.setPageId(p.page_id);
        pb.setNTokens(p.n_tokens);
        PNMKV_PUT_BLOB(bw, pb, K, p.k);
        PNMKV_PUT_BLOB(bw, pb, V, p.v);
        pb.setCrc32c(kv_crc32c(p.k, p.v));
      }
      break;
    }
    case msg_kind::error: {
      auto& x = std::get<error_msg>(m.body);
      auto b = body.initError();
      b.setCode(static_cast<uint16_t>(x.code));
      b.setMessage(x.message);
      b.setRefersToSeq(x.refers_to_seq);
      break;
    }
    case msg_kind::heartbeat: {
      auto& x = std::get<heartbeat_msg>(m.body);
      auto b = body.initHeartbeat();
      b.setIncarnation(x.incarnation);
      b.setQueueDepth(x.queue_depth);
      break;
    }
    case msg_kind::region_advert: {
      auto& x = std::get<region_advert_msg>(m.body);
      auto b = body.initRegionAdvert();
      b.setRegionId(x.region_id);
      b.setLength(x.length);
      PNMKV_PUT_BLOB(bw, b, RemoteKey, x.remote_key);
      b.setPurpose(x.purpose);
      break;
    }
    case msg_kind::write_ack: {
      auto& x = std::get<write_ack_msg>(m.body);
      auto b = body.initWriteAck();
      b.setRequestId(x.request_id);
      b.setLayer(x.layer);
      b.setKvHead(x.kv_head);
      b.setPosition0(x.position0);
      b.setNTokens(x.n_tokens);
      b.setOk(x.ok);
      break;
    }
  }
}

// ---------------------------------------------------------------------------------------
// Decoding

struct rejection {
  reject_reason reason;
  errc code;
  std::string what;
};

// Thrown inside the decoder (never escapes it) to unwind out of nested validation.
struct reject_exception {
  rejection r;
};

template <class... Args>
[[noreturn]] void reject(reject_reason reason, errc code, fmt::format_string<Args...> f,
                         Args&&... args) {
  throw reject_exception{{reason, code, fmt::format(f, std::forward<Args>(args)...)}};
}

struct validator {
  const wire_limits& L;

  void count_limit(const char* field, uint64_t n, uint64_t lo, uint64_t hi) const {
    if (n < lo || n > hi)
      reject(reject_reason::limit, errc::capacity, "{} = {} outside [{}, {}]", field, n, lo, hi);
  }
  void index(const char* field, uint64_t i, uint64_t bound) const {
    if (i >= bound)
      reject(reject_reason::index, errc::out_of_range, "{} = {} not below {}", field, i, bound);
  }
  void range(const char* field, uint64_t a, uint64_t b, uint64_t bound) const {
    if (!(a < b && b <= bound))
      reject(reject_reason::index, errc::out_of_range, "{} = [{}, {}) not a non-empty range "
             "within [0, {})", field, a, b, bound);
  }
  void layer(uint32_t l) const { index("layer", l, L.max_layers); }
  void kv_head(uint32_t h) const { index("kv_head", h, L.max_kv_heads); }
  void head_dim(uint32_t d) const { count_limit("head_dim", d, 1, L.max_head_dim); }
  void group(uint32_t g) const { count_limit("group", g, 1, L.max_group); }
  void blob_limit(const char* field, capnp::Data::Reader d, uint64_t max) const {
    if (d.size() > max)
      reject(reject_reason::limit, errc::capacity, "{}: {} bytes, limit {}", field, d.size(), max);
  }
  void text(const char* field, capnp::Text::Reader t) const {
    if (t.size() > L.max_text_bytes)
      reject(reject_reason::limit, errc::capacity, "{}: {} bytes, limit {}", field, t.size(),
             L.max_text_bytes);
  }
  node_role role(wire::Role r) const {
    node_role out{};
    if (!from_wire(r, out))
      reject(reject_reason::bad_value, errc::invalid_argument, "role = {} unknown",
             static_cast<uint16_t>(r));
    return out;
  }
  selection_round round(wire::SelectionRound r) const {
    selection_round out{};
    if (!from_wire(r, out))
      reject(reject_reason::bad_value, errc::invalid_argument, "round = {} unknown",
             static_cast<uint16_t>(r));
    return out;
  }
};

template <class T>
void copy_blob(const char* field, capnp::Data::Reader d, uint64_t elems, std::vector<T>& out) {
  static_assert(std::is_trivially_copyable_v<T>);
  if (d.size() != elems * sizeof(T))
    reject(reject_reason::shape, errc::shape_mismatch, "{}: {} bytes, declared shape needs {}",
           field, d.size(), elems * sizeof(T));
  // Range-assign of a trivially copyable type is one memmove, without first zeroing the
  // vector (resize would initialise element by element). Blobs are word-aligned.
  const T* src = reinterpret_cast<const T*>(d.begin());
  out.assign(src, src + elems);
}

void copy_bytes(capnp::Data::Reader d, std::vector<uint8_t>& out) {
  out.assign(d.begin(), d.end());
}

void check_crc(const char* what, uint32_t declared, const std::vector<bf16>& k,
               const std::vector<bf16>& v) {
  uint32_t got = kv_crc32c(k, v);
  if (got != declared)
    reject(reject_reason::crc, errc::parse, "{}: CRC32C {:08x} but payload gives {:08x}", what,
           declared, got);
}

message_body decode_body(const validator& c, wire::Envelope::Body::Reader body) {
  const wire_limits& L = c.L;
  switch (body.which()) {
    case W::CHALLENGE: {
      auto r = body.getChallenge();
      challenge_msg x;
      auto nonce = r.getNonce();
      if (nonce.size() != 32)
        reject(reject_reason::shape, errc::shape_mismatch, "challenge.nonce: {} bytes, want 32",
               nonce.size());
      copy_bytes(nonce, x.nonce);
      return x;
    }
    case W::JOIN: {
      auto r = body.getJoin();
      join_msg x;
      x.node = r.getNodeId();
      x.role = c.role(r.getRole());
      auto nonce = r.getNonce();
      auto proof = r.getProof();
      auto addr = r.getWorkerAddress();
      if (nonce.size() != 32 || proof.size() != 32)
        reject(reject_reason::shape, errc::shape_mismatch,
               "join: nonce {} and proof {} bytes, want 32 each", nonce.size(), proof.size());
      c.blob_limit("join.worker_address", addr, L.max_blob_bytes);
      copy_bytes(nonce, x.nonce);
      copy_bytes(proof, x.proof);
      copy_bytes(addr, x.worker_address);
      return x;
    }
    case W::JOIN_ACK: {
      auto r = body.getJoinAck();
      join_ack_msg x;
      x.accepted = r.getAccepted();
      x.node = r.getNodeId();
      x.epoch = r.getEpoch();
      auto reason = r.getReason();
      c.text("join_ack.reason", reason);
      x.reason.assign(reason.cStr(), reason.size());
      return x;
    }
    case W::MEMBERSHIP: {
      auto r = body.getMembership();
      membership_msg x;
      x.epoch = r.getEpoch();
      auto members = r.getMembers();
      c.count_limit("membership.members", members.size(), 0, L.max_members);
      x.members.resize(members.size());
      for (unsigned i = 0; i < members.size(); ++i) {
        auto mr = members[i];
        auto& m = x.members[i];
        m.node = mr.getNodeId();
        m.role = c.role(mr.getRole());
        m.alive = mr.getAlive();
        auto addr = mr.getWorkerAddress();
        c.blob_limit("member.worker_address", addr, L.max_blob_bytes);
        copy_bytes(addr, m.worker_address);
      }
      auto pls = r.getPlacements();
      c.count_limit("membership.placements", pls.size(), 0, L.max_shards);
      x.placements.resize(pls.size());
      uint64_t total_shards = 0;
      for (unsigned i = 0; i < pls.size(); ++i) {
        auto pr = pls[i];
        auto& p = x.placements[i];
        p.request_id = pr.getRequestId();
        auto shards = pr.getShards();
        total_shards += shards.size();
        c.count_limit("membership shards (all placements)", total_shards, 0, L.max_shards);
        p.shards.resize(shards.size());
        for (unsigned j = 0; j < shards.size(); ++j) {
          auto sr = shards[j];
          auto& s = p.shards[j];
          s.shard_id = sr.getShardId();
          s.device = sr.getDeviceId();
          s.kv_head0 = sr.getKvHead0();
          s.kv_head1 = sr.getKvHead1();
          c.range("shard.kv_heads", s.kv_head0, s.kv_head1, L.max_kv_heads);
          auto split = sr.getSplit();
          if (!from_wire(split.which(), s.split))
            reject(reject_reason::bad_value, errc::invalid_argument, "shard.split: unknown "
                   "variant {}", static_cast<unsigned>(split.which()));
          if (s.split == sequence_split::contiguous) {
            s.page0 = split.getPages().getPage0();
            s.page1 = split.getPages().getPage1();
            c.range("shard.pages", s.page0, s.page1, L.max_context_tokens);
          } else {
            s.stride = split.getInterleave().getStride();
            s.cls = split.getInterleave().getClass();
            c.count_limit("shard.stride", s.stride, 1, L.max_context_tokens);
            c.index("shard.class", s.cls, s.stride);
          }
          auto reps = sr.getReplicas();
          c.count_limit("shard.replicas", reps.size(), 0, L.max_replicas);
          s.replicas.resize(reps.size());
          for (unsigned r = 0; r < reps.size(); ++r) s.replicas[r] = reps[r];
          s.pages_held = sr.getPagesHeld();
          c.count_limit("shard.pages_held", s.pages_held, 0, L.max_context_tokens);
          s.sequence_shards = sr.getSequenceShards();
          c.count_limit("shard.sequence_shards", s.sequence_shards, 1, L.max_shards);
          s.sequence_index = sr.getSequenceIndex();
          c.index("shard.sequence_index", s.sequence_index, s.sequence_shards);
          s.bytes_modelled = sr.getBytesModelled();
        }
      }
      return x;
    }
    case W::PREFILL_WRITE: {
      auto r = body.getPrefillWrite();
      prefill_write_msg x;
      x.request_id = r.getRequestId();
      x.layer = r.getLayer();
      x.kv_head = r.getKvHead();
      x.position0 = r.getPosition0();
      x.n_tokens = r.getNTokens();
      x.head_dim = r.getHeadDim();
      c.layer(x.layer);
      c.kv_head(x.kv_head);
      c.count_limit("n_tokens", x.n_tokens, 1, L.max_tokens_per_write);
      c.head_dim(x.head_dim);
      if (x.position0 >= L.max_context_tokens || x.position0 + x.n_tokens > L.max_context_tokens)
        reject(reject_reason::index, errc::out_of_range, "positions [{}, {}) exceed {}",
               x.position0, x.position0 + x.n_tokens, L.max_context_tokens);
      uint64_t elems = uint64_t{x.n_tokens} * x.head_dim;
      copy_blob("prefill_write.k", r.getK(), elems, x.k);
      copy_blob("prefill_write.v", r.getV(), elems, x.v);
      x.crc32c = r.getCrc32c();
      check_crc("prefill_write", x.crc32c, x.k, x.v);
      return x;
    }
    case W::TOKEN_APPEND: {
      auto r = body.getTokenAppend();
      token_append_msg x;
      x.request_id = r.getRequestId();
      x.layer = r.getLayer();
      x.kv_head0 = r.getKvHead0();
      x.n_heads = r.getNHeads();
      x.position = r.getPosition();
      x.head_dim = r.getHeadDim();
      c.layer(x.layer);
      c.count_limit("n_heads", x.n_heads, 1, L.max_kv_heads);
      c.range("token_append.kv_heads", x.kv_head0, uint64_t{x.kv_head0} + x.n_heads,
              L.max_kv_heads);
      c.index("position", x.position, L.max_context_tokens);
      c.head_dim(x.head_dim);
      uint64_t elems = uint64_t{x.n_heads} * x.head_dim;
      copy_blob("token_append.k", r.getK(), elems, x.k);
      copy_blob("token_append.v", r.getV(), elems, x.v);
      x.crc32c = r.getCrc32c();
      check_crc("token_append", x.crc32c, x.k, x.v);
      return x;
    }
    case W::QUERY: {
      auto r = body.getQuery();
      query_msg x;
      x.request_id = r.getRequestId();
      x.step = r.getStep();
      x.layer = r.getLayer();
      x.kv_head0 = r.getKvHead0();
      x.kv_head1 = r.getKvHead1();
      x.group = r.getGroup();
      x.head_dim = r.getHeadDim();
      c.layer(x.layer);
      c.range("query.kv_heads", x.kv_head0, x.kv_head1, L.max_kv_heads);
      c.group(x.group);
      c.head_dim(x.head_dim);
      x.budget_pages = r.getBudgetPages();
      c.count_limit("budget_pages", x.budget_pages, 0, L.max_context_tokens);
      x.round = c.round(r.getRound());
      x.score_threshold = r.getScoreThreshold();
      x.sequence_tokens = r.getSequenceTokens();
      c.count_limit("query.sequence_tokens", x.sequence_tokens, 0, L.max_context_tokens);
      if (std::isnan(x.score_threshold))
        reject(reject_reason::bad_value, errc::invalid_argument, "score_threshold is NaN");
      x.deadline_ns = r.getDeadlineNs();
      x.shard_id = r.getShardId();
      uint64_t elems = uint64_t{x.kv_head1 - x.kv_head0} * x.group * x.head_dim;
      copy_blob("query.q", r.getQ(), elems, x.q);
      for (auto [name, blob, out] :
           {std::tuple{"query.excluded_pages", r.getExcludedPages(), &x.excluded_pages},
            std::tuple{"query.listed_pages", r.getListedPages(), &x.listed_pages}}) {
        if (blob.size() % 4 != 0)
          reject(reject_reason::shape, errc::shape_mismatch, "{} is {} bytes, not a multiple of 4",
                 name, blob.size());
        c.count_limit(name, blob.size() / 4, 0, L.max_pages_per_message);
        copy_blob(name, blob, blob.size() / 4, *out);
        for (uint32_t id : *out) c.index(name, id, L.max_context_tokens);
      }
      return x;
    }
    case W::PARTIAL: {
      auto r = body.getPartial();
      partial_msg x;
      x.request_id = r.getRequestId();
      x.step = r.getStep();
      x.layer = r.getLayer();
      x.kv_head = r.getKvHead();
      x.shard_id = r.getShardId();
      x.group = r.getGroup();
      x.head_dim = r.getHeadDim();
      c.layer(x.layer);
      c.kv_head(x.kv_head);
      c.group(x.group);
      c.head_dim(x.head_dim);
      x.pages_selected = r.getPagesSelected();
      c.count_limit("pages_selected", x.pages_selected, 0, L.max_context_tokens);
      x.bytes_scanned = r.getBytesScanned();
      copy_blob("partial.o", r.getO(), uint64_t{x.group} * x.head_dim, x.o);
      copy_blob("partial.lse", r.getLse(), x.group, x.lse);
      c.count_limit("partial.pages_selected", x.pages_selected, 0, L.max_pages_per_message);
      copy_blob("partial.page_ids", r.getPageIds(), x.pages_selected, x.page_ids);
      for (uint32_t id : x.page_ids) c.index("partial.page_id", id, L.max_context_tokens);
      x.flops = r.getFlops();
      if (!std::isfinite(x.flops) || x.flops < 0)
        reject(reject_reason::bad_value, errc::invalid_argument, "partial.flops is not a finite "
               "non-negative number");
      x.round = c.round(r.getRound());
      x.device_bytes_held = r.getDeviceBytesHeld();
      return x;
    }
    case W::CANDIDATES: {
      auto r = body.getCandidates();
      candidates_msg x;
      x.request_id = r.getRequestId();
      x.step = r.getStep();
      x.layer = r.getLayer();
      x.kv_head = r.getKvHead();
      x.shard_id = r.getShardId();
      c.layer(x.layer);
      c.kv_head(x.kv_head);
      uint32_t n = r.getNPages();
      c.count_limit("candidates.n_pages", n, 0, L.max_pages_per_message);
      copy_blob("candidates.page_ids", r.getPageIds(), n, x.page_ids);
      copy_blob("candidates.scores", r.getScores(), n, x.scores);
      for (uint32_t id : x.page_ids) c.index("candidates.page_id", id, L.max_context_tokens);
      for (float s : x.scores)
        if (std::isnan(s))
          reject(reject_reason::bad_value, errc::invalid_argument, "candidate score is NaN");
      x.bytes_scanned = r.getBytesScanned();
      x.flops = r.getFlops();
      if (!std::isfinite(x.flops) || x.flops < 0)
        reject(reject_reason::bad_value, errc::invalid_argument, "candidates.flops is not a "
               "finite non-negative number");
      return x;
    }
    case W::RECALL_REQUEST: {
      auto r = body.getRecallRequest();
      recall_request_msg x;
      x.request_id = r.getRequestId();
      x.step = r.getStep();
      x.layer = r.getLayer();
      x.kv_head = r.getKvHead();
      c.layer(x.layer);
      c.kv_head(x.kv_head);
      uint32_t n = r.getNPages();
      c.count_limit("recall_request.n_pages", n, 0, L.max_pages_per_message);
      copy_blob("recall_request.page_ids", r.getPageIds(), n, x.page_ids);
      for (uint32_t id : x.page_ids) c.index("recall_request.page_id", id, L.max_context_tokens);
      return x;
    }
    case W::RECALL_REPLY: {
      auto r = body.getRecallReply();
      recall_reply_msg x;
      x.request_id = r.getRequestId();
      x.step = r.getStep();
      x.layer = r.getLayer();
      x.kv_head = r.getKvHead();
      x.page_tokens = r.getPageTokens();
      x.head_dim = r.getHeadDim();
      c.layer(x.layer);
      c.kv_head(x.kv_head);
      c.count_limit("page_tokens", x.page_tokens, 1, L.max_page_tokens);
      c.head_dim(x.head_dim);
      auto pages = r.getPages();
      c.count_limit("recall_reply.pages", pages.size(), 0, L.max_pages_per_message);
      x.pages.resize(pages.size());
      for (unsigned i = 0; i < pages.size(); ++i) {
        auto pr = pages[i];
        auto& p = x.pages[i];
        p.page_id = pr.getPageId();
        c.index("recall_reply.page_id", p.page_id, L.max_context_tokens);
        p.n_tokens = pr.getNTokens();
        c.count_limit("recalled_page.n_tokens", p.n_tokens, 1, x.page_tokens);
        uint64_t elems = uint64_t{p.n_tokens} * x.head_dim;
        copy_blob("recalled_page.k", pr.getK(), elems, p.k);
        copy_blob("recalled_page.v", pr.getV(), elems, p.v);
        p.crc32c = pr.getCrc32c();
        check_crc("recalled_page", p.crc32c, p.k, p.v);
      }
      return x;
    }
    case W::ERROR: {
      auto r = body.getError();
      error_msg x;
      uint16_t code = r.getCode();
      if (code == 0 || code > static_cast<uint16_t>(errc::not_ready))
        reject(reject_reason::bad_value, errc::invalid_argument, "error.code = {} unknown", code);
      x.code = static_cast<errc>(code);
      auto text = r.getMessage();
      c.text("error.message", text);
      x.message.assign(text.cStr(), text.size());
      x.refers_to_seq = r.getRefersToSeq();
      return x;
    }
    case W::HEARTBEAT: {
      auto r = body.getHeartbeat();
      heartbeat_msg x;
      x.incarnation = r.getIncarnation();
      x.queue_depth = r.getQueueDepth();
      return x;
    }
    case W::REGION_ADVERT: {
      auto r = body.getRegionAdvert();
      region_advert_msg x;
      x.region_id = r.getRegionId();
      x.length = r.getLength();
      auto key = r.getRemoteKey();
      c.blob_limit("region_advert.remote_key", key, L.max_blob_bytes);
      copy_bytes(key, x.remote_key);
      x.purpose = r.getPurpose();
      return x;
    }
    case W::WRITE_ACK: {
      auto r = body.getWriteAck();
      write_ack_msg x;
      x.request_id = r.getRequestId();
      x.layer = r.getLayer();
      x.kv_head = r.getKvHead();
      x.position0 = r.getPosition0();
      x.n_tokens = r.getNTokens();
      x.ok = r.getOk();
      c.layer(x.layer);
      c.kv_head(x.kv_head);
      c.count_limit("write_ack.n_tokens", x.n_tokens, 0, L.max_tokens_per_write);
      c.index("write_ack.position0", x.position0, L.max_context_tokens);
      return x;
    }
  }
  reject(reject_reason::unknown_kind, errc::unsupported, "message kind {} unknown",
         static_cast<unsigned>(body.which()));
}

void note(wire_stats& st, const rejection& r) {
  auto i = static_cast<size_t>(r.reason);
  st.rejected[i].fetch_add(1, std::memory_order_relaxed);
  if (!st.logged[i].exchange(true))
    log().warn("message rejected reason={} detail=\"{}\" (further rejections for this reason "
               "are only counted)", reason_names[i], r.what);
}

// Segment-table check done by hand so that truncated input is told apart from garbage.
// Returns the message's size in words, or a rejection.
bool check_segment_table(const uint8_t* p, size_t size, rejection& out) {
  if (size < 8) {
    out = {reject_reason::truncated, errc::parse, fmt::format("{} bytes, less than a segment "
                                                              "table", size)};
    return false;
  }
  uint32_t count_minus_one;
  std::memcpy(&count_minus_one, p, 4);
  if (count_minus_one >= 512) {
    out = {reject_reason::malformed, errc::parse,
           fmt::format("segment count {} implausible", uint64_t{count_minus_one} + 1)};
    return false;
  }
  uint64_t count = uint64_t{count_minus_one} + 1;
  uint64_t table_bytes = align8(4 + 4 * count);
  if (size < table_bytes) {
    out = {reject_reason::truncated, errc::parse,
           fmt::format("{} bytes, segment table alone needs {}", size, table_bytes)};
    return false;
  }
  uint64_t words = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t w;
    std::memcpy(&w, p + 4 + 4 * i, 4);
    words += w;
  }
  uint64_t need = table_bytes + 8 * words;
  if (size < need) {
    out = {reject_reason::truncated, errc::parse,
           fmt::format("{} bytes, segment table declares {}", size, need)};
    return false;
  }
  if (size != need) {
    out = {reject_reason::malformed, errc::parse,
           fmt::format("{} trailing bytes after the message", size - need)};
    return false;
  }
  return true;
}

// Aligned view of the input: the input itself when 8-byte aligned, else a copy.
struct aligned_words {
  kj::ArrayPtr<const capnp::word> words;
  std::vector<uint64_t> copy;  // capnp::word is not copyable under every compiler
  aligned_words(const void* data, size_t size) {
    if ((reinterpret_cast<uintptr_t>(data) & 7) == 0) {
      words = kj::arrayPtr(static_cast<const capnp::word*>(data), size / 8);
    } else {
      copy.resize(size / 8);
      std::memcpy(copy.data(), data, size / 8 * 8);
      words = kj::arrayPtr(reinterpret_cast<const capnp::word*>(copy.data()), copy.size());
    }
  }
};

result<message> decode_impl(const msg_kind* expected, const void* data, size_t size,
                            const wire_limits& limits, wire_stats* stats) {
  wire_stats& st = stats ? *stats : global_wire_stats();
  auto fail = [&](const rejection& r) -> result<message> {
    note(st, r);
    return status{r.code, fmt::format("{}: {}", reason_names[static_cast<size_t>(r.reason)],
                                      r.what)};
  };
  const uint64_t max_bytes = max_legit_message_bytes(limits);
  if (size > max_bytes)
    return fail({reject_reason::oversized, errc::capacity,
                 fmt::format("{} bytes, the largest legitimate message is {}", size, max_bytes)});
  if (data == nullptr && size) return fail({reject_reason::malformed, errc::parse, "null data"});
  rejection seg;
  if (!check_segment_table(static_cast<const uint8_t*>(data), size, seg)) return fail(seg);
  aligned_words in(data, size);
  try {
    capnp::ReaderOptions opts;
    // A legitimate message traverses each of its words about once; the decoder reads each
    // pointer once. Twice the input size bounds amplification by crafted pointers.
    opts.traversalLimitInWords = std::min<uint64_t>(2 * (size / 8) + 64, 2 * (max_bytes / 8));
    opts.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(in.words, opts);
    auto root = reader.getRoot<wire::Envelope>();
    message m;
    m.env.version = root.getVersion();
    if (m.env.version != protocol_version)
      return fail({reject_reason::bad_version, errc::unsupported,
                   fmt::format("protocol version {} (this node speaks {})", m.env.version,
                               protocol_version)});
    m.env.sender = root.getSender();
    m.env.seq = root.getSeq();
    m.env.vtime_ns = root.getVtimeNs();
    if (!std::isfinite(m.env.vtime_ns) || m.env.vtime_ns < 0)
      return fail({reject_reason::bad_value, errc::invalid_argument,
                   fmt::format("vtime_ns = {} (must be finite and >= 0)", m.env.vtime_ns)});
    auto body = root.getBody();
    auto which = static_cast<unsigned>(body.which());
    if (which >= msg_kind_count)
      return fail({reject_reason::unknown_kind, errc::unsupported,
                   fmt::format("message kind {} unknown (newer sender?)", which)});
    if (expected && which != static_cast<unsigned>(*expected))
      return fail({reject_reason::wrong_kind, errc::invalid_argument,
                   fmt::format("expected {}, got {}", to_string(*expected), kind_names[which])});
    validator c{limits};
    m.body = decode_body(c, body);
    st.decoded.fetch_add(1, std::memory_order_relaxed);
    return m;
  } catch (const reject_exception& e) {
    return fail(e.r);
  } catch (const kj::Exception& e) {
    auto desc = e.getDescription();
    bool limit = std::strstr(desc.cStr(), "traversal limit") != nullptr;
    return fail({limit ? reject_reason::oversized : reject_reason::malformed,
                 limit ? errc::capacity : errc::parse, std::string(desc.cStr())});
  } catch (const std::exception& e) {
    return fail({reject_reason::malformed, errc::parse, e.what()});
  }
}

}  // namespace

const char* to_string(msg_kind kind) {
  auto i = static_cast<size_t>(kind);
  return i < msg_kind_count ? kind_names[i] : "unknown";
}

bool parse_msg_kind(const std::string& name, msg_kind& out) {
  for (size_t i = 0; i < msg_kind_count; ++i)
    if (name == kind_names[i]) {
      out = static_cast<msg_kind>(i);
      return true;
    }
  return false;
}

const char* to_string(node_role role) {
  switch (role) {
    case node_role::gpu_host: return "gpu-host";
    case node_role::pnm_device: return "pnm-device";
    case node_role::coordinator: return "coordinator";
    case node_role::driver: return "driver";
  }
  return "unknown";
}

const char* to_string(reject_reason reason) {
  auto i = static_cast<size_t>(reason);
  return i < reject_reason_count ? reason_names[i] : "unknown";
}

uint64_t wire_stats::total_rejected() const {
  uint64_t n = 0;
  for (auto& r : rejected) n += r.load();
  return n;
}

wire_stats& global_wire_stats() {
  static wire_stats stats;
  return stats;
}

uint32_t kv_crc32c(const std::vector<bf16>& k, const std::vector<bf16>& v) {
  uint32_t c = crc32c(k.data(), k.size() * sizeof(bf16));
  return crc32c(v.data(), v.size() * sizeof(bf16), c);
}

uint64_t max_legit_message_bytes(const wire_limits& L) {
  // Per kind: payload bytes plus structure words, generously. Structure overhead per list
  // element is bounded by the element struct's size plus one pointer per blob.
  const uint64_t overhead = 4096 + 8 * 512;  // envelope, pointers, up to 512 segment entries
  auto blob = [](uint64_t n) { return align8(n) + 8; };
  uint64_t kv_write = 2 * blob(uint64_t{L.max_tokens_per_write} * L.max_head_dim * 2);
  uint64_t append = 2 * blob(uint64_t{L.max_kv_heads} * L.max_head_dim * 2);
  uint64_t query = blob(uint64_t{L.max_kv_heads} * L.max_group * L.max_head_dim * 4);
  uint64_t partial = blob(uint64_t{L.max_group} * L.max_head_dim * 4) + blob(L.max_group * 4ull) +
                     blob(uint64_t{L.max_pages_per_message} * 4);
  uint64_t cands = 2 * blob(uint64_t{L.max_pages_per_message} * 4);
  uint64_t recall = uint64_t{L.max_pages_per_message} *
                    (64 + 2 * blob(uint64_t{L.max_page_tokens} * L.max_head_dim * 2));
  uint64_t member = uint64_t{L.max_members} * (64 + blob(L.max_blob_bytes));
  uint64_t shards = uint64_t{L.max_shards} * (96 + blob(4ull * L.max_replicas));
  uint64_t membership = member + shards + uint64_t{L.max_shards} * 32;
  uint64_t small = 3 * blob(L.max_blob_bytes) + blob(L.max_text_bytes);
  uint64_t m = std::max({kv_write, append, query, partial, cands, recall, membership, small});
  return std::min<uint64_t>(m + overhead, align8(L.max_message_bytes));
}

void encode_into(const message& m, std::vector<uint8_t>& out) {
  uint64_t est_words = estimate_bytes(m) / 8 + 16;
  capnp::MallocMessageBuilder builder(static_cast<unsigned>(std::min<uint64_t>(est_words, 1u << 20)));
  auto root = builder.initRoot<wire::Envelope>();
  build(root, m, builder.getOrphanage());
  auto segments = builder.getSegmentsForOutput();
  size_t n = segments.size();
  size_t table_bytes = align8(4 + 4 * n);
  size_t total = table_bytes;
  for (auto& s : segments) total += s.size() * sizeof(capnp::word);
  out.clear();
  out.reserve(total);
  out.resize(table_bytes, 0);
  uint32_t v = static_cast<uint32_t>(n - 1);
  std::memcpy(out.data(), &v, 4);
  for (size_t i = 0; i < n; ++i) {
    v = static_cast<uint32_t>(segments[i].size());
    std::memcpy(out.data() + 4 + 4 * i, &v, 4);
  }
  for (auto& s : segments) {
    auto* b = reinterpret_cast<const uint8_t*>(s.begin());
    out.insert(out.end(), b, b + s.size() * sizeof(capnp::word));
  }
}

std::vector<uint8_t> encode(const message& m) {
  std::vector<uint8_t> out;
  encode_into(m, out);
  return out;
}

result<message> decode(const void* data, size_t size, const wire_limits& limits,
                       wire_stats* stats) {
  return decode_impl(nullptr, data, size, limits, stats);
}

result<message> decode_kind(msg_kind expected, const void* data, size_t size,
                            const wire_limits& limits, wire_stats* stats) {
  return decode_impl(&expected, data, size, limits, stats);
}

result<envelope_peek> peek_envelope(const void* data, size_t size) {
  rejection seg;
  if (!check_segment_table(static_cast<const uint8_t*>(data), size, seg))
    return status{seg.code, seg.what};
  aligned_words in(data, size);
  try {
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = 2 * (size / 8) + 64;
    capnp::FlatArrayMessageReader reader(in.words, opts);
    auto root = reader.getRoot<wire::Envelope>();
    envelope_peek p;
    p.env.version = root.getVersion();
    p.env.sender = root.getSender();
    p.env.seq = root.getSeq();
    p.env.vtime_ns = root.getVtimeNs();
    auto body = root.getBody();
    auto which = static_cast<unsigned>(body.which());
    if (which >= msg_kind_count) return status{errc::unsupported, "unknown message kind"};
    p.kind = static_cast<msg_kind>(which);
    switch (body.which()) {
      case W::QUERY: p.step = body.getQuery().getStep(); break;
      case W::PARTIAL: p.step = body.getPartial().getStep(); break;
      case W::CANDIDATES: p.step = body.getCandidates().getStep(); break;
      case W::RECALL_REQUEST: p.step = body.getRecallRequest().getStep(); break;
      case W::RECALL_REPLY: p.step = body.getRecallReply().getStep(); break;
      default: break;
    }
    return p;
  } catch (const kj::Exception& e) {
    return status{errc::parse, e.getDescription().cStr()};
  } catch (const std::exception& e) {
    return status{errc::parse, e.what()};
  }
}

}  // namespace pnmkv::transport
