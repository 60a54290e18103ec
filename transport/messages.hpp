// The messages nodes exchange, as plain C++ structs, and their encoders and validating
// decoders. The wire format is Cap'n Proto (transport/wire.capnp), but no capnp type
// appears here: actors build a struct, call encode(), hand the bytes to a fabric, and on
// the other side decode() gives the struct back or says why the bytes were refused.
//
// Every decoded message is validated before it is returned: protocol version, total size
// and traversal limit, every count against `wire_limits`, every blob's length against its
// declared shape, every index against its bound, and the CRC32C of KV payloads. A refusal
// is a value (errc + message naming the field), counted per reason in `wire_stats`, and
// logged once per reason (spdlog logger "transport"); malformed bytes never crash.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "core/bf16.hpp"
#include "core/status.hpp"
#include "model/modes.hpp"  // selection_round, sequence_split

namespace pnmkv::transport {

using node_id = uint32_t;

// Bumped on any incompatible change to wire.capnp. Receivers refuse other versions.
inline constexpr uint16_t protocol_version = 2;  // 2: vtimeNs is Float64

// Order matches the Envelope.body union in wire.capnp (checked in messages.cpp) and the
// alternatives of message_body below.
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

// Every C++ enum a message carries is the one its concept has everywhere else
// (selection_round, sequence_split: model/modes.hpp); transport/messages.cpp maps each to its
// wire.capnp enum or union in one place.
using pnmkv::selection_round;
using pnmkv::sequence_split;

struct envelope {
  uint16_t version = protocol_version;
  node_id sender = 0;
  uint64_t seq = 0;
  // Sender's virtual clock (docs/DESIGN.md §5), ns with its fraction: whole nanoseconds
  // would round every message's time and keep the live run from charging exactly what the
  // step model predicts. Finite and >= 0, or the message is refused.
  double vtime_ns = 0;
};

struct challenge_msg {
  std::vector<uint8_t> nonce;  // 32 bytes
};

struct join_msg {
  node_id node = 0;
  node_role role = node_role::pnm_device;
  std::vector<uint8_t> nonce;           // the challenge's nonce, echoed
  std::vector<uint8_t> proof;           // transport/auth.hpp: join_proof()
  std::vector<uint8_t> worker_address;  // fabric::address() of the joining node
};

struct join_ack_msg {
  bool accepted = false;
  node_id node = 0;
  uint64_t epoch = 0;
  std::string reason;  // why refused
};

struct member_info {
  node_id node = 0;
  node_role role = node_role::pnm_device;
  bool alive = true;
  std::vector<uint8_t> worker_address;
};

struct shard_info {
  uint32_t shard_id = 0;
  node_id device = 0;
  uint32_t kv_head0 = 0;  // KV heads [kv_head0, kv_head1)
  uint32_t kv_head1 = 0;
  sequence_split split = sequence_split::contiguous;
  uint32_t page0 = 0;  // split == contiguous: pages [page0, page1)
  uint32_t page1 = 0;
  uint32_t stride = 1;  // split == interleave: pages p with p % stride == cls
  uint32_t cls = 0;
  std::vector<node_id> replicas;  // devices holding copies, besides `device`
  uint64_t pages_held = 0;        // pages of one (layer, KV head) at the final length
  uint32_t sequence_index = 0;    // j of the s sequence shards
  uint32_t sequence_shards = 1;   // s
  uint64_t bytes_modelled = 0;    // all layers and heads it holds
};

struct placement_info {
  uint64_t request_id = 0;
  std::vector<shard_info> shards;
};

struct membership_msg {
  uint64_t epoch = 0;
  std::vector<member_info> members;
  std::vector<placement_info> placements;
};

// n_tokens consecutive tokens of one (request, layer, KV head); k, v are [n_tokens][head_dim].
// encode() computes crc32c over K bytes then V bytes; decode() checks it and returns it.
struct prefill_write_msg {
  uint64_t request_id = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint64_t position0 = 0;
  uint32_t n_tokens = 0;
  uint32_t head_dim = 0;
  std::vector<bf16> k;
  std::vector<bf16> v;
  uint32_t crc32c = 0;  // output of encode/decode
};

// One new token for KV heads [kv_head0, kv_head0 + n_heads); k, v are [n_heads][head_dim].
struct token_append_msg {
  uint64_t request_id = 0;
  uint32_t layer = 0;
  uint32_t kv_head0 = 0;
  uint32_t n_heads = 0;
  uint64_t position = 0;
  uint32_t head_dim = 0;
  std::vector<bf16> k;
  std::vector<bf16> v;
  uint32_t crc32c = 0;  // output of encode/decode
};

// q is [kv_head1 - kv_head0][group][head_dim] fp32.
struct query_msg {
  uint64_t request_id = 0;
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t kv_head0 = 0;
  uint32_t kv_head1 = 0;
  uint32_t group = 0;
  uint32_t head_dim = 0;
  std::vector<float> q;
  uint32_t budget_pages = 0;
  selection_round round = selection_round::local;
  float score_threshold = 0;  // exact_attend: attend pages scoring >= this
  uint64_t deadline_ns = 0;   // virtual time
  uint32_t shard_id = 0;
  uint64_t sequence_tokens = 0;  // tokens in the sequence, the new one included
  std::vector<uint32_t> excluded_pages;  // not to be selected (png-kv steady pages)
  std::vector<uint32_t> listed_pages;    // exact_attend: the pages to attend
};

// o is [group][head_dim] fp32, lse is [group] fp32 (-inf for an empty subset).
struct partial_msg {
  uint64_t request_id = 0;
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint32_t shard_id = 0;
  uint32_t group = 0;
  uint32_t head_dim = 0;
  std::vector<float> o;
  std::vector<float> lse;
  uint32_t pages_selected = 0;
  uint64_t bytes_scanned = 0;
  std::vector<uint32_t> page_ids;  // global ids of the attended pages (pages_selected)
  double flops = 0;
  selection_round round = selection_round::local;
  uint64_t device_bytes_held = 0;
};

struct candidates_msg {
  uint64_t request_id = 0;
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint32_t shard_id = 0;
  std::vector<uint32_t> page_ids;  // global page ids
  std::vector<float> scores;       // same length; +inf marks an always-kept page
  uint64_t bytes_scanned = 0;
  double flops = 0;
};

struct recall_request_msg {
  uint64_t request_id = 0;
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  std::vector<uint32_t> page_ids;
};

struct recalled_page {
  uint32_t page_id = 0;
  uint32_t n_tokens = 0;  // <= page_tokens
  std::vector<bf16> k;    // [n_tokens][head_dim]
  std::vector<bf16> v;
  uint32_t crc32c = 0;  // output of encode/decode
};

struct recall_reply_msg {
  uint64_t request_id = 0;
  uint32_t step = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint32_t page_tokens = 0;
  uint32_t head_dim = 0;
  std::vector<recalled_page> pages;
};

struct error_msg {
  errc code = errc::internal;
  std::string message;
  uint64_t refers_to_seq = 0;
};

struct heartbeat_msg {
  uint64_t incarnation = 0;
  uint32_t queue_depth = 0;
};

struct region_advert_msg {
  uint64_t region_id = 0;
  uint64_t length = 0;
  std::vector<uint8_t> remote_key;  // fabric::register_region(...).remote_key
  uint32_t purpose = 0;
};

// A prefill write was applied (ok) or refused (the device also sends an error message).
struct write_ack_msg {
  uint64_t request_id = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint64_t position0 = 0;
  uint32_t n_tokens = 0;
  bool ok = true;
};

using message_body =
    std::variant<challenge_msg, join_msg, join_ack_msg, membership_msg, prefill_write_msg,
                 token_append_msg, query_msg, partial_msg, candidates_msg, recall_request_msg,
                 recall_reply_msg, error_msg, heartbeat_msg, region_advert_msg, write_ack_msg>;
static_assert(std::variant_size_v<message_body> == msg_kind_count);

struct message {
  envelope env;
  message_body body;
  msg_kind kind() const { return static_cast<msg_kind>(body.index()); }
};

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

// Encoding. KV CRCs are computed here. Blobs whose storage is 8-byte aligned and whose size
// is a multiple of 8 are referenced, not copied, so encoding costs one copy of the payload.
// The encoder does not validate: it will happily encode a message the receiver refuses
// (tests rely on that).
std::vector<uint8_t> encode(const message& m);
void encode_into(const message& m, std::vector<uint8_t>& out);  // reuses out's capacity
template <class Body>
std::vector<uint8_t> encode(const envelope& env, Body body) {
  return encode(message{env, message_body{std::move(body)}});
}

// Decoding with validation. Unaligned input is copied first (Cap'n Proto reads words).
result<message> decode(const void* data, size_t size, const wire_limits& limits,
                       wire_stats* stats = nullptr);
// The same, but refuses (reason wrong_kind) anything other than `expected` before
// traversing the body: one decoder per kind, for fuzzing and for typed endpoints.
result<message> decode_kind(msg_kind expected, const void* data, size_t size,
                            const wire_limits& limits, wire_stats* stats = nullptr);
inline result<message> decode(const std::vector<uint8_t>& bytes, const wire_limits& limits,
                              wire_stats* stats = nullptr) {
  return decode(bytes.data(), bytes.size(), limits, stats);
}

// What the fabric's fault points and statistics need, read without validating the body:
// envelope, kind, and the decode step where the kind has one (query, partial, candidates,
// recall request/reply), else -1.
struct envelope_peek {
  envelope env;
  msg_kind kind = msg_kind::heartbeat;
  int64_t step = -1;
};
result<envelope_peek> peek_envelope(const void* data, size_t size);

// CRC32C (Castagnoli) over K bytes then V bytes, as carried by KV messages.
uint32_t kv_crc32c(const std::vector<bf16>& k, const std::vector<bf16>& v);

}  // namespace pnmkv::transport
