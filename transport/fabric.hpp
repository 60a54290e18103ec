// The data-plane fabric (docs/DESIGN.md §6): endpoints addressed by node id, small messages
// (the encoded bytes of transport/messages.hpp), and RMA put/get of bulk bytes into memory
// regions a peer registered. Two implementations: in-process (transport/inproc_fabric.hpp,
// the embedded cluster) and UCX (transport/ucx_fabric.hpp, one node per process). Both carry
// the same bytes, apply the same fault points and report the same statistics.
//
// Contract, for every implementation:
// - Every operation has a deadline (op_options::timeout, else fabric_options::op_timeout)
//   and completes exactly once: ok, timeout, peer_down or another error.
// - Back-pressure: each peer has a bounded number of operations in flight
//   (send_queue_depth); beyond it an operation is refused at once with errc::capacity.
//   The in-process fabric also refuses when the receiver's inbox is full.
// - Receiving: events (messages and peer-down notices) go to a bounded inbox drained by
//   poll(), or to a handler set with set_handler(). Each small message is framed with the
//   sender id, a per-link sequence number and (fabric_options::frame_crc) a CRC32C, so
//   corrupt frames, duplicates, reorders and gaps are counted before anyone decodes.
// - A peer that disappears (process killed, endpoint error) yields one peer_down event;
//   its operations in flight fail with errc::peer_down; other peers are unaffected.
// - Completion callbacks and the handler run on the fabric's progress thread (or, for a
//   caller-driven UCX fabric, inside poll()). They may call send()/put()/get() but must
//   not block.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "config/fabric_choices.hpp"
#include "core/status.hpp"
#include "transport/faults.hpp"
#include "transport/link_model.hpp"
#include "transport/messages.hpp"

namespace pnmkv::transport {

using fabric_clock = std::chrono::steady_clock;
using completion = std::function<void(status)>;

struct op_options {
  std::chrono::nanoseconds timeout{0};  // 0: fabric_options::op_timeout
  completion on_done;                   // optional; runs on the progress thread
};

enum class fabric_event_kind : uint8_t { message, peer_down };

struct fabric_event {
  fabric_event_kind kind = fabric_event_kind::message;
  node_id peer = 0;            // sender, or the peer that went down
  std::vector<uint8_t> bytes;  // message: exactly the bytes the sender passed to send()
  status reason;               // peer_down: why
};

// A local memory region peers may put into and get from. remote_key is what a peer passes
// to import_region (send it in a region_advert message or over the control plane).
struct local_region {
  uint64_t id = 0;
  void* base = nullptr;
  size_t length = 0;
  std::vector<uint8_t> remote_key;
};

// A peer's region, imported from its remote_key.
struct remote_region {
  node_id peer = 0;
  uint64_t id = 0;     // fabric-local handle
  size_t length = 0;
};

// Frame CRC32C (automatic | on | off): defined with the config choice fabric.frame_crc.
using ::pnmkv::crc_mode;

struct fabric_options {
  node_id self = 0;
  size_t send_queue_depth = 1024;  // operations in flight per peer
  size_t inbox_depth = 4096;       // received events waiting for poll()
  std::chrono::milliseconds op_timeout{5000};
  std::chrono::milliseconds connect_timeout{5000};
  size_t max_message_bytes = 64u << 20;  // one small message (framed send)
  crc_mode frame_crc = crc_mode::automatic;  // CRC32C per frame, checked before delivery
  bool drop_duplicates = true;  // deliver each (sender, link sequence number) once
  // Pacing: hold each message until the link model says it would have arrived, scaled
  // (wall ns per virtual ns). For demos; off in tests and benchmarks.
  bool pacing = false;
  double pacing_scale = 1.0;
  link_params link;
  fault_plan faults;  // no rules: no fault points
  // The clock of deadlines, delays and stalls; empty: fabric_clock::now(). The deterministic
  // simulator (actors/detsim) passes its virtual clock.
  std::function<fabric_clock::time_point()> clock;
};

// Counters of one endpoint. Received-side counters see what the faults did: gaps (lost
// frames), duplicates, reorders, frame CRC failures, frames held by a stall.
struct fabric_stats {
  uint64_t sent_msgs = 0, sent_bytes = 0, recv_msgs = 0, recv_bytes = 0;
  uint64_t puts = 0, put_bytes = 0, gets = 0, get_bytes = 0;
  uint64_t capacity_rejects = 0;  // operations refused for back-pressure
  uint64_t timeouts = 0;          // operations that missed their deadline
  uint64_t op_errors = 0;         // operations failed otherwise (peer down, ...)
  uint64_t peer_down_events = 0;
  uint64_t frame_crc_errors = 0;  // frames dropped because their CRC32C did not match
  uint64_t bad_frames = 0;        // frames with a malformed header
  uint64_t duplicates = 0;        // frames seen before (dropped if drop_duplicates)
  uint64_t reordered = 0;         // frames older than one already delivered
  uint64_t gaps = 0;              // link sequence numbers never received (so far)
  uint64_t inbox_overflows = 0;   // events dropped because the inbox was full
  uint64_t stalled_frames = 0;    // frames held while this node was stalled
  uint64_t delayed_frames = 0;    // frames held for a delay fault or pacing
  std::array<uint64_t, fault_kind_count> injected_send{};
  std::array<uint64_t, fault_kind_count> injected_recv{};
  std::string to_json() const;
};

class fabric {
 public:
  virtual ~fabric() = default;

  virtual node_id self() const = 0;
  // Whether this node's own endpoint is down (a crash fault fired here): every send fails
  // then, and no peer is to blame.
  virtual bool self_down() const { return false; }
  // Bytes a peer passes to connect() to reach this endpoint (exchange them out of band).
  virtual std::vector<uint8_t> address() const = 0;
  // Creates the endpoint to `peer`. Blocks at most connect_timeout.
  virtual status connect(node_id peer, const std::vector<uint8_t>& address) = 0;
  // Closes the endpoint to `peer`; its operations in flight fail with peer_down.
  virtual void disconnect(node_id peer) = 0;

  // Sends one small message. Returns at once: ok (queued; on_done reports the outcome),
  // capacity (back-pressure), peer_down, or invalid_argument (unknown peer, too large).
  virtual status send(node_id dest, std::vector<uint8_t> bytes, op_options opts = {}) = 0;

  // Registers [base, base + length) for remote access by connected peers.
  virtual result<local_region> register_region(void* base, size_t length) = 0;
  // Allocates a zeroed region of `length` bytes for remote access, owned by the fabric until
  // deregister_region() or destruction. Prefer it for memory peers write and read in bulk:
  // on shared memory UCX places it in a segment the peer maps directly (ucx_perftest's
  // buffers are allocated this way), whereas registered user memory is copied through
  // bounce buffers (about 1 GB/s here).
  virtual result<local_region> allocate_region(size_t length) = 0;
  virtual status deregister_region(uint64_t id) = 0;
  virtual result<remote_region> import_region(node_id peer,
                                              const std::vector<uint8_t>& remote_key) = 0;
  // Writes [src, src + length) into `dst` at `offset`. on_done(ok) means the bytes are
  // visible at the target. `src` must stay valid until on_done has run.
  virtual status put(const remote_region& dst, uint64_t offset, const void* src, size_t length,
                     op_options opts = {}) = 0;
  // Reads `length` bytes at `offset` of `src` into `dst`. `dst` must stay valid until on_done
  // has run; after a timeout the fabric may still write it until the peer is disconnected.
  virtual status get(const remote_region& src, uint64_t offset, void* dst, size_t length,
                     op_options opts = {}) = 0;

  // Events go to `handler` (on the progress thread) instead of the inbox. Set it before
  // connecting peers; pass {} to go back to poll().
  virtual void set_handler(std::function<void(fabric_event&&)> handler) = 0;
  // Moves up to `max_events` waiting events into `out`, waiting at most `timeout` for the
  // first. A caller-driven fabric makes progress inside poll().
  virtual size_t poll(std::vector<fabric_event>& out, std::chrono::nanoseconds timeout,
                      size_t max_events = SIZE_MAX) = 0;

  virtual fabric_stats stats() const = 0;
  // Faults injected at this endpoint (null without fault rules).
  virtual std::shared_ptr<fault_injector> faults() const = 0;

  // Blocking conveniences: start the operation and wait for its completion (making
  // progress when the fabric is caller-driven). They return the operation's outcome.
  status send_wait(node_id dest, std::vector<uint8_t> bytes,
                   std::chrono::nanoseconds timeout = std::chrono::nanoseconds{0});
  status put_wait(const remote_region& dst, uint64_t offset, const void* src, size_t length,
                  std::chrono::nanoseconds timeout = std::chrono::nanoseconds{0});
  status get_wait(const remote_region& src, uint64_t offset, void* dst, size_t length,
                  std::chrono::nanoseconds timeout = std::chrono::nanoseconds{0});

 protected:
  // Caller-driven fabrics make progress here for the blocking conveniences; fabrics with
  // their own progress thread return at once.
  virtual void progress_for(std::chrono::nanoseconds max_wait) = 0;
  friend struct fabric_wait_access;
};

}  // namespace pnmkv::transport
