// The control plane (docs/DESIGN.md §6) between the driver, the coordinator, the GPU host
// and the devices: actors/control.capnp messages, carried as bytes in CAF messages (the
// middleman in cluster mode). As on the data plane (transport/messages.hpp) there is no
// hand-written mirror of the schema: senders fill the generated builders of an `outbound`,
// e.g.
//   control::outbound out(node_);
//   out.body().initRelease().setRequestId(id);
//   self_->send(coordinator_, ctl_atom::value, wire_string(out));
// and receivers read the generated readers of a `received`, which only decode() makes.
//
// Validation happens in one place, decode(): size, protocol version, traversal limit, the
// kind, the role of a hello, request ids, every text against max_text_bytes (the run report
// against the message size) and the requests of a run start against max_requests_per_run.
// A refusal is a status naming the field and the allowed values; malformed bytes never
// throw. What a reader of a `received` sees is therefore safe to use as it is.
//
// Plain C++ stays where it earns its place: `request_spec`, a value the actors keep in their
// state (the coordinator's queue and specs, the GPU host's requests), converted once each
// way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "actors/control.capnp.h"
#include "core/status.hpp"
#include "transport/messages.hpp"  // basic_outbound, node_role

namespace pnmkv::control {

// Bumped on any incompatible change to control.capnp. Receivers refuse other versions.
inline constexpr uint16_t control_version = 1;
inline constexpr size_t max_control_bytes = 16u << 20;  // a run report fits easily
inline constexpr size_t max_requests_per_run = 4096;
// Reasons and phases; the run report is bounded by max_control_bytes only.
inline constexpr size_t max_text_bytes = 64u << 10;

// The Control.body union's alternatives: the generated enum (HELLO, SUBMIT, ...).
using msg_kind = wire::Control::Body::Which;
// The schema's name of a kind ("placementAck"); "unknown" for a value it does not have.
const char* to_string(msg_kind kind);

// ---------------------------------------------------------------------------------------
// The one plain struct: a request as the actors keep it in their state.

struct request_spec {
  uint64_t request_id = 0;      // >= 1: decode() refuses 0 (the GPU host's "none")
  uint64_t context_tokens = 0;
  uint32_t steps = 0;           // decode steps; open workloads: output tokens - 1
  uint64_t arrival_ns = 0;      // open workloads: virtual arrival
};
void to_wire(const request_spec& r, wire::RequestSpec::Builder out);
request_spec from_wire(wire::RequestSpec::Reader r);

// Hello.role is a UInt8 holding transport::node_role (decode() admits known roles only).
void set_role(wire::Hello::Builder hello, transport::node_role role);
transport::node_role role_of(wire::Hello::Reader hello);

// A reason as it may travel: cut to max_text_bytes, so that the receiver never refuses a
// message for a reason longer than the limit (such a reason is never legitimate anyway).
std::string bounded_text(std::string text);

// ---------------------------------------------------------------------------------------
// Sending: a Control root with its version and sender set, built in place in the bytes
// finish() returns (the data plane's arena, transport/messages.hpp).

class outbound : public transport::basic_outbound<wire::Control> {
 public:
  // payload_bytes: what the texts and lists will take, roughly (a run report: its size).
  explicit outbound(uint32_t sender, size_t payload_bytes = 0);
  wire::Control::Body::Builder body() { return root().getBody(); }
};

// ---------------------------------------------------------------------------------------
// Receiving.

// A message that passed validation: it owns its bytes (transport::validated_bytes).
class received : public transport::validated_bytes {
 public:
  uint32_t sender() const { return sender_; }
  msg_kind kind() const { return kind_; }
  wire::Control::Body::Reader body() const { return root<wire::Control>().getBody(); }
  // The body as its kind's reader; checks the kind (a wrong one is a programming error).
  wire::Hello::Reader hello() const;
  wire::Submit::Reader submit() const;
  wire::Admission::Reader admission() const;
  wire::PlacementAck::Reader placement_ack() const;
  wire::RunStart::Reader run_start() const;
  wire::RunResult::Reader run_result() const;
  wire::Progress::Reader progress() const;
  wire::MemberDown::Reader member_down() const;
  wire::Admit::Reader admit() const;
  wire::Release::Reader release() const;
  wire::Stop::Reader stop() const;
  wire::CopyAsk::Reader copy_ask() const;
  wire::CopyGrant::Reader copy_grant() const;
  wire::Resume::Reader resume() const;

 private:
  friend struct received_access;
  received(std::vector<uint8_t>&& bytes, uint32_t sender, msg_kind kind)
      : transport::validated_bytes(std::move(bytes)), sender_(sender), kind_(kind) {}
  void expect(msg_kind k) const;
  uint32_t sender_ = 0;
  msg_kind kind_ = msg_kind::SHUTDOWN;
};

// Validates `bytes` and, on success, keeps a copy; never throws.
result<received> decode(const std::string& bytes);

// ---------------------------------------------------------------------------------------
// The coordinator's journal records (JournalRecord; the file's framing is
// transport/journal.hpp). Validated like a message: version, kind, texts, request ids.

inline constexpr uint16_t journal_record_version = 1;
using journal_kind = wire::JournalRecord::Body::Which;

class journal_entry : public transport::validated_bytes {
 public:
  wire::JournalRecord::Reader record() const { return root<wire::JournalRecord>(); }
  journal_kind kind() const { return record().getBody().which(); }

 private:
  friend struct received_access;
  explicit journal_entry(std::vector<uint8_t>&& bytes) : transport::validated_bytes(std::move(bytes)) {}
};

result<journal_entry> decode_journal_record(std::vector<uint8_t>&& bytes);
// A record to fill: version and time set.
class journal_outbound : public transport::basic_outbound<wire::JournalRecord> {
 public:
  explicit journal_outbound(size_t payload_bytes = 0);
  wire::JournalRecord::Body::Builder body() { return root().getBody(); }
};

}  // namespace pnmkv::control
