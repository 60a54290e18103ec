// The wire (docs/DESIGN.md §6): every message that crosses a node boundary is a Cap'n Proto
// Envelope (transport/wire.capnp). There is no hand-written mirror of the schema: senders fill
// the generated builders through `outbound`, receivers read the generated readers through
// `received`, which exists only for bytes that passed validation.
//
// Validation happens in one place, decode(): protocol version, total size and traversal
// limit, every count against `wire_limits`, every blob's length against its declared shape,
// every index against its bound, every enum against the values this build knows, and the
// CRC32C of KV payloads. A refusal is a value (errc + message naming the field), counted per
// reason in `wire_stats` and logged once per reason (spdlog logger "transport"); malformed
// bytes never crash. What a reader of a `received` sees is therefore safe to use as it is:
// blob sizes match their shapes, indices are below their limits.
//
// Plain C++ stays where it earns its place: the envelope (read by the fabrics' fault points
// without validating the body), the enums the rest of the code shares (selection_round,
// sequence_split: model/modes.hpp; node_role), and blob views for tensors.
#pragma once

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/bf16.hpp"
#include "core/check.hpp"
#include "core/status.hpp"
#include "model/modes.hpp"  // selection_round, sequence_split
#include "transport/wire.capnp.h"

namespace pnmkv::transport {

using node_id = uint32_t;

// Bumped on any incompatible change to wire.capnp. Receivers refuse other versions.
inline constexpr uint16_t protocol_version = 2;  // 2: vtimeNs is Float64

// The Envelope.body union's alternatives, in its order (wire.capnp; checked in messages.cpp).
enum class msg_kind : uint16_t {
  challenge,
  join,
  join_ack,
  membership,
  prefill_write,
  token_append,
  query,
  partial,
  candidates,
  recall_request,
  recall_reply,
  error,
  heartbeat,
  region_advert,
  write_ack,
};
inline constexpr size_t msg_kind_count = 15;
const char* to_string(msg_kind kind);
// "partial" -> msg_kind::partial; false when unknown.
bool parse_msg_kind(const std::string& name, msg_kind& out);

// The roles of a cluster's nodes (wire.capnp Role; `pnmkv node --role` names the first
// three by to_string()).
enum class node_role : uint8_t { gpu_host, pnm_device, coordinator, driver };
const char* to_string(node_role role);

using pnmkv::selection_round;
using pnmkv::sequence_split;

// ---------------------------------------------------------------------------------------
// Enum codec: each C++ enum a message carries meets its wire.capnp counterpart here and
// nowhere else (the numbers agree, checked in messages.cpp). from_wire is for validated
// messages, whose enums decode() has already checked.
wire::Role to_wire(node_role r);
wire::SelectionRound to_wire(selection_round r);
node_role from_wire(wire::Role r);
selection_round from_wire(wire::SelectionRound r);
sequence_split split_of(wire::Shard::Reader shard);

// ---------------------------------------------------------------------------------------
// Blobs. Tensors and id lists travel as Data (little-endian, row-major). A message's blobs
// start on 8-byte boundaries, so a validated blob is viewed in place as its element type.

template <class T>
struct blob_view {
  const T* ptr = nullptr;
  size_t n = 0;
  const T* begin() const { return ptr; }
  const T* end() const { return ptr + n; }
  const T* data() const { return ptr; }
  size_t size() const { return n; }
  bool empty() const { return n == 0; }
  const T& operator[](size_t i) const { return ptr[i]; }
  std::vector<T> vec() const { return std::vector<T>(begin(), end()); }
};

template <class T>
blob_view<T> view_as(capnp::Data::Reader d) {
  static_assert(std::is_trivially_copyable_v<T>);
  PNMKV_CHECK(d.size() % sizeof(T) == 0 && reinterpret_cast<uintptr_t>(d.begin()) % alignof(T) == 0);
  return {reinterpret_cast<const T*>(d.begin()), d.size() / sizeof(T)};
}

// Where to write n elements of a blob just made with initX(n * sizeof(T)).
template <class T>
T* fill_as(capnp::Data::Builder d) {
  static_assert(std::is_trivially_copyable_v<T>);
  PNMKV_CHECK(d.size() % sizeof(T) == 0 && reinterpret_cast<uintptr_t>(d.begin()) % alignof(T) == 0);
  return reinterpret_cast<T*>(d.begin());
}

// The bytes of n elements, for setX() (which copies them into the message).
template <class T>
capnp::Data::Reader as_data(const T* p, size_t n) {
  static_assert(std::is_trivially_copyable_v<T>);
  return capnp::Data::Reader(reinterpret_cast<const kj::byte*>(p), n * sizeof(T));
}
template <class T>
capnp::Data::Reader as_data(const std::vector<T>& v) {
  return as_data(v.data(), v.size());
}

// fp32 vectors as a bf16 blob (run.wire_precision bf16): a blob made with initX(n * 2) filled
// with n values rounded to bf16; and a bf16 blob widened to n floats (exact).
void fill_bf16(capnp::Data::Builder d, const float* x, size_t n);
void widen_bf16(capnp::Data::Reader d, std::vector<float>& out);

// CRC32C (Castagnoli) over K bytes then V bytes, as carried by KV messages.
uint32_t kv_crc32c(capnp::Data::Reader k, capnp::Data::Reader v);
uint32_t kv_crc32c(const bf16* k, const bf16* v, size_t elems);

// ---------------------------------------------------------------------------------------
// The envelope every message has: who sent it, its per-sender sequence number, and when.

struct envelope {
  uint16_t version = protocol_version;
  node_id sender = 0;
  uint64_t seq = 0;
  // Sender's virtual clock (docs/DESIGN.md §5), ns with its fraction: whole nanoseconds
  // would round every message's time and keep the live run from charging exactly what the
  // step model predicts. Finite and >= 0, or the message is refused.
  double vtime_ns = 0;
  // The highest seq this sender has taken from the destination so far (0: none): a
  // cumulative receipt a device puts on what it sends the GPU host, so the host's retries
  // resend what a device passed over (lost on the way, or its reply was) and nothing it is
  // still working through (actors/gpu_host.cpp, on_retry).
  uint64_t ack_seq = 0;
};

// ---------------------------------------------------------------------------------------
// Sending: a root struct filled through the generated builders, e.g.
//   outbound out(env, n * d * 4);
//   auto q = out.body().initQuery();
//   q.setLayer(l); ...; std::copy(src, src + n * d, fill_as<float>(q.initQ(n * d * 4)));
//   fabric.send(dest, out.finish());
// The message is built in place in the buffer finish() returns: a message that fits the
// size hint is one segment and leaves without a further copy. `basic_outbound<Root>` is that
// arena for any root struct (the control plane's too: actors/control.hpp); `outbound` is
// the data plane's, an Envelope.

// The arena (messages.cpp): a capnp MessageBuilder whose first segment lives in the byte
// vector it finishes into.
class flat_arena;
struct flat_arena_deleter {
  void operator()(flat_arena* a) const noexcept;
};
using flat_arena_ptr = std::unique_ptr<flat_arena, flat_arena_deleter>;
// payload_bytes: what the message's blobs, texts and lists will take, roughly (0 is fine
// for small messages); a message larger than the hint spills into more segments and is
// flattened.
flat_arena_ptr make_flat_arena(size_t payload_bytes);
capnp::MessageBuilder& builder_of(flat_arena& a);
// The encoded bytes (segment table and segments).
std::vector<uint8_t> finish_flat(flat_arena& a);

template <class Root>
class basic_outbound {
 public:
  explicit basic_outbound(size_t payload_bytes = 0)
      : arena_(make_flat_arena(payload_bytes)), root_(builder_of(*arena_).initRoot<Root>()) {}

  typename Root::Builder root() { return root_; }
  typename Root::Reader reader() const { return root_.asReader(); }
  // The encoded bytes. The outbound is spent afterwards.
  std::vector<uint8_t> finish() {
    PNMKV_CHECK(arena_ != nullptr, "outbound::finish() called twice");
    auto out = finish_flat(*arena_);
    arena_.reset();
    return out;
  }

 private:
  flat_arena_ptr arena_;
  typename Root::Builder root_;
};

class outbound : public basic_outbound<wire::Envelope> {
 public:
  explicit outbound(const envelope& env, size_t payload_bytes = 0);
  wire::Envelope::Body::Builder body() { return root().getBody(); }
};

// ---------------------------------------------------------------------------------------
// Receiving.

// Bounds every decoded message is checked against. Defaults fit Llama-3.1 up to 405B at 16M
// tokens; transport/from_config.hpp fills them from fabric.* keys.
struct wire_limits {
  uint32_t max_tokens_per_write = 4096;  // prefill_write.n_tokens
  uint32_t max_head_dim = 512;
  uint32_t max_group = 64;          // query heads per KV head
  uint32_t max_kv_heads = 256;      // KV head indices are < this
  uint32_t max_layers = 1024;       // layer indices are < this
  uint64_t max_context_tokens = 1ull << 24;  // token positions are < this
  uint32_t max_page_tokens = 1024;  // recall_reply.page_tokens
  uint32_t max_pages_per_message = 1u << 16;  // candidates, recall request / reply
  uint32_t max_members = 4096;
  uint32_t max_shards = 1u << 16;   // summed over all placements of one membership
  uint32_t max_replicas = 8;
  uint32_t max_text_bytes = 4096;   // error / refusal text
  uint32_t max_blob_bytes = 4096;   // nonces, proofs, worker addresses, remote keys
  uint64_t max_message_bytes = 64ull << 20;  // absolute cap on one encoded message
};

// The largest encoded size a legitimate message can have under `limits` (at most
// max_message_bytes); the decoder's traversal limit is derived from it.
uint64_t max_legit_message_bytes(const wire_limits& limits);

enum class reject_reason : uint8_t {
  bad_version,   // a protocol version this node does not speak
  oversized,     // more bytes than the largest legitimate message, or traversal limit hit
  truncated,     // fewer bytes than the segment table declares
  malformed,     // not a valid Cap'n Proto message (bad pointers, segment table, ...)
  unknown_kind,  // a union tag this node does not know
  wrong_kind,    // a decode_kind() caller expected another kind
  limit,         // a count above its configured limit
  shape,         // a blob whose length disagrees with its declared shape
  index,         // an index or range outside its bound (layer, head, position, page, ...)
  crc,           // CRC32C of a KV payload does not match
  bad_value,     // an enum or float outside its domain (e.g. NaN threshold)
};
inline constexpr size_t reject_reason_count = 11;
const char* to_string(reject_reason reason);

// Per-reason counters, shareable between threads. Each reason is logged once (warn) per
// wire_stats object; later occurrences only count.
struct wire_stats {
  std::array<std::atomic<uint64_t>, reject_reason_count> rejected{};
  std::array<std::atomic<bool>, reject_reason_count> logged{};
  std::atomic<uint64_t> decoded{0};
  uint64_t count(reject_reason r) const { return rejected[static_cast<size_t>(r)].load(); }
  uint64_t total_rejected() const;
};
// Process-wide counters used when a caller passes no wire_stats.
wire_stats& global_wire_stats();

// Bytes a decoder validated, kept with a reader over them: the base of every received
// message (this one and control::received). The readers it hands out stay valid while it
// lives and have no traversal limit (the validator bounded the traversal, and reading a
// validated message cannot fault), so a handler may read a field twice. Movable.
class validated_bytes {
 public:
  validated_bytes(validated_bytes&&) noexcept;
  validated_bytes& operator=(validated_bytes&&) noexcept;
  ~validated_bytes();
  template <class Root>
  typename Root::Reader root() const {
    return reader_->getRoot<Root>();
  }

 protected:
  validated_bytes();
  // Takes the bytes (word-aligned: operator new aligns a vector's storage to 16 bytes).
  explicit validated_bytes(std::vector<uint8_t>&& bytes);

 private:
  std::vector<uint8_t> bytes_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
};

// The words of bytes held in a vector (checked 8-byte aligned), for a capnp reader.
kj::ArrayPtr<const capnp::word> words_of(const std::vector<uint8_t>& bytes);

// A message that passed validation: it owns its bytes, so it can wait in a queue.
class received : public validated_bytes {
 public:
  const envelope& env() const { return env_; }
  msg_kind kind() const { return kind_; }
  wire::Envelope::Body::Reader body() const { return root<wire::Envelope>().getBody(); }
  // The body as its kind's reader; checks the kind (a wrong one is a programming error).
  wire::Challenge::Reader challenge() const;
  wire::Join::Reader join() const;
  wire::JoinAck::Reader join_ack() const;
  wire::Membership::Reader membership() const;
  wire::PrefillWrite::Reader prefill_write() const;
  wire::TokenAppend::Reader token_append() const;
  wire::Query::Reader query() const;
  wire::Partial::Reader partial() const;
  wire::Candidates::Reader candidates() const;
  wire::RecallRequest::Reader recall_request() const;
  wire::RecallReply::Reader recall_reply() const;
  wire::Error::Reader error() const;
  wire::Heartbeat::Reader heartbeat() const;
  wire::RegionAdvert::Reader region_advert() const;
  wire::WriteAck::Reader write_ack() const;

 private:
  friend struct received_access;
  received(std::vector<uint8_t>&& bytes, msg_kind kind, const envelope& env)
      : validated_bytes(std::move(bytes)), env_(env), kind_(kind) {}
  void expect(msg_kind k) const;
  envelope env_;
  msg_kind kind_ = msg_kind::heartbeat;
};

// Validates and, on success, keeps the bytes (moved in, or copied from data/size).
result<received> decode(std::vector<uint8_t>&& bytes, const wire_limits& limits,
                        wire_stats* stats = nullptr);
result<received> decode(const void* data, size_t size, const wire_limits& limits,
                        wire_stats* stats = nullptr);
inline result<received> decode(const std::vector<uint8_t>& bytes, const wire_limits& limits,
                               wire_stats* stats = nullptr) {
  return decode(bytes.data(), bytes.size(), limits, stats);
}
// The same, but refuses (reason wrong_kind) anything other than `expected` before
// traversing the body: one decoder per kind, for fuzzing and for typed endpoints.
result<received> decode_kind(msg_kind expected, const void* data, size_t size,
                             const wire_limits& limits, wire_stats* stats = nullptr);

// What the fabric's fault points and statistics need, read without validating the body:
// envelope, kind, and the decode step where the kind has one (query, partial, candidates,
// recall request/reply), else -1.
struct envelope_peek {
  envelope env;
  msg_kind kind = msg_kind::heartbeat;
  int64_t step = -1;
};
result<envelope_peek> peek_envelope(const void* data, size_t size);

}  // namespace pnmkv::transport
