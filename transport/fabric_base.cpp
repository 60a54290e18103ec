// Framing, fault points, back-pressure, sequence tracking, timers and the inbox shared by
// both fabrics; plus the blocking conveniences of `fabric`.
#include "transport/fabric_base.hpp"

#include <cstring>
#include <set>
#include <thread>

#include "transport/crc32c.hpp"
#include "transport/log.hpp"

namespace pnmkv::transport {

std::string fabric_stats::to_json() const {
  std::string s = "{";
  auto add = [&](const char* k, uint64_t v) {
    if (s.size() > 1) s += ",";
    s += "\"";
    s += k;
    s += "\":" + std::to_string(v);
  };
  add("sent_msgs", sent_msgs);
  add("sent_bytes", sent_bytes);
  add("recv_msgs", recv_msgs);
  add("recv_bytes", recv_bytes);
  add("puts", puts);
  add("put_bytes", put_bytes);
  add("gets", gets);
  add("get_bytes", get_bytes);
  add("capacity_rejects", capacity_rejects);
  add("timeouts", timeouts);
  add("op_errors", op_errors);
  add("peer_down_events", peer_down_events);
  add("frame_crc_errors", frame_crc_errors);
  add("bad_frames", bad_frames);
  add("duplicates", duplicates);
  add("reordered", reordered);
  add("gaps", gaps);
  add("inbox_overflows", inbox_overflows);
  add("stalled_frames", stalled_frames);
  add("delayed_frames", delayed_frames);
  for (int pt = 0; pt < 2; ++pt) {
    s += pt ? ",\"injected_recv\":{" : ",\"injected_send\":{";
    for (size_t k = 0; k < fault_kind_count; ++k) {
      if (k) s += ",";
      s += "\"" + std::string(to_string(static_cast<fault_kind>(k))) + "\":" +
           std::to_string(pt ? injected_recv[k] : injected_send[k]);
    }
    s += "}";
  }
  return s + "}";
}

namespace {

// Shared state of a blocking convenience call.
struct waiter {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  status result;
  void set(status s) {
    std::lock_guard<std::mutex> lock(mu);
    result = std::move(s);
    done = true;
    cv.notify_all();
  }
};

}  // namespace

// Defined here so that fabric.hpp needs no <mutex>: the three conveniences share this.
struct fabric_wait_access {
  static status wait(fabric& f, const std::shared_ptr<waiter>& w,
                     std::chrono::nanoseconds timeout) {
    // The operation's own deadline completes it; the extra margin only guards against a
    // broken implementation hanging the caller forever.
    auto until = fabric_clock::now() + timeout + std::chrono::seconds(5);
    std::unique_lock<std::mutex> lock(w->mu);
    while (!w->done) {
      if (fabric_clock::now() > until)
        return {errc::timeout, "operation did not complete (fabric deadline not honoured)"};
      lock.unlock();
      f.progress_for(std::chrono::microseconds(200));
      lock.lock();
      if (!w->done) w->cv.wait_for(lock, std::chrono::microseconds(200));
    }
    return w->result;
  }
};

namespace {
std::chrono::nanoseconds effective(std::chrono::nanoseconds t) {
  return t.count() > 0 ? t : std::chrono::nanoseconds(std::chrono::hours(1));
}
}  // namespace

status fabric::send_wait(node_id dest, std::vector<uint8_t> bytes, std::chrono::nanoseconds timeout) {
  auto w = std::make_shared<waiter>();
  op_options o;
  o.timeout = timeout;
  o.on_done = [w](status s) { w->set(std::move(s)); };
  status s = send(dest, std::move(bytes), std::move(o));
  if (!s) return s;
  return fabric_wait_access::wait(*this, w, effective(timeout));
}

status fabric::put_wait(const remote_region& dst, uint64_t offset, const void* src, size_t length,
                        std::chrono::nanoseconds timeout) {
  auto w = std::make_shared<waiter>();
  op_options o;
  o.timeout = timeout;
  o.on_done = [w](status s) { w->set(std::move(s)); };
  status s = put(dst, offset, src, length, std::move(o));
  if (!s) return s;
  return fabric_wait_access::wait(*this, w, effective(timeout));
}

status fabric::get_wait(const remote_region& src, uint64_t offset, void* dst, size_t length,
                        std::chrono::nanoseconds timeout) {
  auto w = std::make_shared<waiter>();
  op_options o;
  o.timeout = timeout;
  o.on_done = [w](status s) { w->set(std::move(s)); };
  status s = get(src, offset, dst, length, std::move(o));
  if (!s) return s;
  return fabric_wait_access::wait(*this, w, effective(timeout));
}

namespace detail {

void warn_once(const char* key, const std::string& what) {
  static std::mutex mu;
  static std::set<std::string> seen;
  {
    std::lock_guard<std::mutex> lock(mu);
    if (!seen.insert(key).second) return;
  }
  log().warn("{} (logged once; later occurrences are only counted)", what);
}

namespace {
// Counter updates made while holding a lock that serialises all writers: a plain load and
// store (no locked read-modify-write), still atomic for readers.
void bump(std::atomic<uint64_t>& a, uint64_t v) {
  a.store(a.load(std::memory_order_relaxed) + v, std::memory_order_relaxed);
}

int64_t to_ns(fabric_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
}  // namespace

fabric_base::fabric_base(const fabric_options& opts, std::shared_ptr<fault_injector> faults)
    : opts_(opts), faults_(std::move(faults)), pacing_origin_(opts.clock ? opts.clock() : fabric_clock::now()) {
  bool can_corrupt = false;
  if (faults_)
    for (const auto& r : faults_->plan().rules) can_corrupt |= r.kind == fault_kind::corrupt;
  crc_on_ = opts_.frame_crc == crc_mode::on ||
            (opts_.frame_crc == crc_mode::automatic && can_corrupt);
}

fabric_base::~fabric_base() = default;

fabric_clock::time_point fabric_base::deadline_of(const op_options& o) const {
  auto t = o.timeout.count() > 0 ? o.timeout
                                 : std::chrono::nanoseconds(opts_.op_timeout);
  return now() + t;
}

void fabric_base::add_peer(node_id peer) {
  std::lock_guard<std::mutex> lock(peers_mu_);
  auto& p = peers_[peer];
  p.link = link_occupancy(opts_.link);
}

void fabric_base::remove_peer(node_id peer) {
  std::lock_guard<std::mutex> lock(peers_mu_);
  peers_.erase(peer);
}

status fabric_base::acquire_slot(node_id peer) {
  std::lock_guard<std::mutex> lock(peers_mu_);
  auto it = peers_.find(peer);
  if (it == peers_.end())
    return {errc::invalid_argument, "node " + std::to_string(peer) + " is not connected"};
  if (it->second.inflight >= opts_.send_queue_depth) {
    c_.capacity_rejects++;
    return {errc::capacity, "node " + std::to_string(peer) + ": " +
                                std::to_string(opts_.send_queue_depth) +
                                " operations in flight (fabric.send_queue_depth)"};
  }
  it->second.inflight++;
  return status::ok();
}

void fabric_base::release_slot(node_id peer) {
  std::lock_guard<std::mutex> lock(peers_mu_);
  auto it = peers_.find(peer);
  if (it != peers_.end() && it->second.inflight) it->second.inflight--;
}

void fabric_base::complete(node_id peer, completion& user, status s, bool holds_slot) {
  if (holds_slot) release_slot(peer);
  if (!s) {
    if (s.code() == errc::timeout)
      c_.timeouts++;
    else
      c_.op_errors++;
  }
  if (user) {
    completion u = std::move(user);
    u(std::move(s));
  }
}

completion fabric_base::wrap(node_id peer, completion user) {
  return [this, peer, user = std::move(user)](status s) {
    release_slot(peer);
    if (!s) {
      if (s.code() == errc::timeout)
        c_.timeouts++;
      else
        c_.op_errors++;
    }
    if (user) user(std::move(s));
  };
}

fault_message fabric_base::describe(const std::vector<uint8_t>& bytes, node_id from,
                                    node_id to) const {
  fault_message m;
  m.from = from;
  m.to = to;
  auto p = peek_envelope(bytes.data(), bytes.size());
  if (p) {
    m.kind_known = true;
    m.kind = p->kind;
    m.seq = p->env.seq;
    m.step = p->step;
    m.vtime_ns = p->env.vtime_ns;
  }
  return m;
}

void fabric_base::start_stall(uint32_t ms) {
  int64_t until = to_ns(now()) + int64_t{ms} * 1000000;
  int64_t cur = stall_until_ns_.load();
  while (cur < until && !stall_until_ns_.compare_exchange_weak(cur, until)) {
  }
  log().info("fault stall node={} ms={}", opts_.self, ms);
}

fabric_clock::time_point fabric_base::stalled_until() const {
  return fabric_clock::time_point(std::chrono::nanoseconds(stall_until_ns_.load()));
}

fabric_clock::time_point fabric_base::pacing_due(node_id dest, size_t bytes) {
  auto now = this->now();
  uint64_t now_v = static_cast<uint64_t>(
      static_cast<double>((now - pacing_origin_).count()) / opts_.pacing_scale);
  uint64_t arrive;
  {
    std::lock_guard<std::mutex> lock(peers_mu_);
    auto it = peers_.find(dest);
    if (it == peers_.end()) return now;
    arrive = it->second.link.reserve(now_v, bytes, link_direction::host_to_device);
  }
  return pacing_origin_ + std::chrono::nanoseconds(static_cast<int64_t>(
                              static_cast<double>(arrive) * opts_.pacing_scale));
}

status fabric_base::send(node_id dest, std::vector<uint8_t> bytes, op_options opts) {
  if (bytes.size() > opts_.max_message_bytes)
    return {errc::invalid_argument, std::to_string(bytes.size()) +
                                        "-byte message exceeds fabric.max_message_bytes = " +
                                        std::to_string(opts_.max_message_bytes) +
                                        " (use put/get for bulk data)"};
  frame_header h;
  h.src = opts_.self;
  {
    // One lock for the peer's state, the back-pressure slot and the link sequence number.
    std::lock_guard<std::mutex> lock(peers_mu_);
    auto it = peers_.find(dest);
    if (it == peers_.end())
      return {errc::invalid_argument, "node " + std::to_string(dest) + " is not connected"};
    if (it->second.down) return {errc::peer_down, "node " + std::to_string(dest) + " is down"};
    if (it->second.inflight >= opts_.send_queue_depth) {
      c_.capacity_rejects++;
      return {errc::capacity, "node " + std::to_string(dest) + ": " +
                                  std::to_string(opts_.send_queue_depth) +
                                  " operations in flight (fabric.send_queue_depth)"};
    }
    it->second.inflight++;
    h.link_seq = it->second.next_link_seq++;
    bump(c_.sent_msgs, 1);
    bump(c_.sent_bytes, bytes.size());
  }
  const auto timeout =
      opts.timeout.count() > 0 ? opts.timeout : std::chrono::nanoseconds(opts_.op_timeout);
  completion user = std::move(opts.on_done);

  fault_decision d;
  if (faults_) {
    d = faults_->decide(fault_point::send, describe(bytes, opts_.self, dest));
    if (d.crash) crash("a crash fault fired sending to node " + std::to_string(dest));
    if (d.stall_ms) start_stall(d.stall_ms);
    if (d.drop) {  // lost on the wire (its link sequence number is spent): the sender cannot tell
      c_.sent_msgs--;
      c_.sent_bytes -= bytes.size();
      complete(dest, user, status::ok());
      return status::ok();
    }
  }
  if (crc_on_) {
    h.flags |= frame_header::flag_crc;
    h.crc = crc32c(bytes.data(), bytes.size());
  }
  if (d.corrupt_bits) fault_injector::corrupt(bytes, d.corrupt_bits, d.corrupt_salt);

  // Only fault points and pacing hold frames: without them, no clock is read here.
  const auto now = (faults_ || opts_.pacing) ? this->now() : fabric_clock::time_point{};
  auto due = now;
  if (faults_ || opts_.pacing) {
    if (d.delay_ms) due += std::chrono::milliseconds(d.delay_ms);
    if (opts_.pacing) due = std::max(due, pacing_due(dest, bytes.size()));
    auto stall = stalled_until();
    if (stall > now) {
      due = std::max(due, stall);
      c_.stalled_frames++;
    }
  }
  if (d.duplicate) {
    auto copy = bytes;
    auto fire = [this, dest, h, copy = std::move(copy), timeout]() mutable {
      (void)transmit(dest, h, std::move(copy), timeout, completion{}, false);
    };
    if (due > now)
      schedule(due, std::move(fire));
    else
      fire();
  }
  if (due > now) {
    if (d.delay_ms || opts_.pacing) c_.delayed_frames++;
    schedule(due, [this, dest, h, b = std::move(bytes), timeout, user]() mutable {
      completion keep = user;  // transmit consumes its copy only on success
      status s = transmit(dest, h, std::move(b), timeout, std::move(user), true);
      if (!s) complete(dest, keep, std::move(s));
    });
    return status::ok();
  }
  const size_t size = bytes.size();
  status s = transmit(dest, h, std::move(bytes), timeout, std::move(user), true);
  if (!s) {
    release_slot(dest);
    if (s.code() == errc::capacity) c_.capacity_rejects++;
    c_.sent_msgs--;
    c_.sent_bytes -= size;
  }
  return s;
}

status fabric_base::on_frame(const frame_header& h, std::vector<uint8_t>&& bytes) {
  if (h.magic != frame_header::magic_value || h.version != 1) {
    c_.bad_frames++;
    warn_once("bad_frame", "dropped frame with bad header magic/version");
    return status::ok();
  }
  fault_decision d;
  if (faults_) {
    d = faults_->decide(fault_point::recv, describe(bytes, h.src, opts_.self));
    if (d.crash) crash("a crash fault fired receiving from node " + std::to_string(h.src));
    if (d.stall_ms) start_stall(d.stall_ms);
    if (d.drop) return status::ok();
    if (d.corrupt_bits) {
      // The link CRC belongs to the frame before the link corrupts it: a sender that did not
      // compute one (its own plan cannot corrupt) gets one computed here, as a link would.
      if (crc_on_ && !(h.flags & frame_header::flag_crc)) {
        frame_header with_crc = h;
        with_crc.flags |= frame_header::flag_crc;
        with_crc.crc = crc32c(bytes.data(), bytes.size());
        fault_injector::corrupt(bytes, d.corrupt_bits, d.corrupt_salt);
        return on_frame_held(with_crc, std::move(bytes), d);
      }
      fault_injector::corrupt(bytes, d.corrupt_bits, d.corrupt_salt);
    }
  }
  return on_frame_held(h, std::move(bytes), d);
}

status fabric_base::on_frame_held(const frame_header& h, std::vector<uint8_t>&& bytes,
                                  const fault_decision& d) {
  if (!faults_) return deliver(h, std::move(bytes));  // no fault point can hold it
  auto now = this->now();
  auto due = now;
  if (d.delay_ms) due += std::chrono::milliseconds(d.delay_ms);
  auto stall = stalled_until();
  if (stall > now) {
    due = std::max(due, stall);
    c_.stalled_frames++;
  }
  if (d.duplicate) {
    auto copy = bytes;
    if (due > now)
      schedule(due, [this, h, copy = std::move(copy)]() mutable {
        (void)deliver(h, std::move(copy));
      });
    else
      (void)deliver(h, std::move(copy));
  }
  if (due > now) {
    if (d.delay_ms) c_.delayed_frames++;
    schedule(due, [this, h, b = std::move(bytes)]() mutable { (void)deliver(h, std::move(b)); });
    return status::ok();
  }
  return deliver(h, std::move(bytes));
}

status fabric_base::deliver(const frame_header& h, std::vector<uint8_t>&& bytes) {
  if ((h.flags & frame_header::flag_crc) && crc32c(bytes.data(), bytes.size()) != h.crc) {
    c_.frame_crc_errors++;
    warn_once("frame_crc", "dropped frame whose CRC32C does not match (corrupted in flight) "
                           "from=" + std::to_string(h.src));
    return status::ok();
  }
  const size_t size = bytes.size();
  {
    // The sequence tracker and the inbox share one lock: one critical section per frame.
    std::lock_guard<std::mutex> lock(inbox_mu_);
    if (inbox_messages_ >= opts_.inbox_depth) {  // refused frames are not recorded as seen
      c_.inbox_overflows++;
      warn_once("inbox_full", "inbox full (fabric.inbox_depth = " +
                                  std::to_string(opts_.inbox_depth) + "): refusing messages");
      return {errc::capacity, "receiver inbox full"};
    }
    auto& t = tracks_[h.src];
    if (t.ring.empty()) t.ring.assign(seq_track::window_bits / 64, 0);
    const uint64_t s = h.link_seq;
    auto bit = [&](uint64_t x) -> uint64_t& { return t.ring[(x % seq_track::window_bits) / 64]; };
    auto mask = [](uint64_t x) { return uint64_t{1} << (x % 64); };
    bool dup = false;
    if (s > t.highest) {
      // Clear the slots of the sequence numbers skipped over (not seen yet).
      if (s - t.highest >= seq_track::window_bits) {
        std::fill(t.ring.begin(), t.ring.end(), 0);
      } else {
        for (uint64_t x = t.highest + 1; x < s; ++x) bit(x) &= ~mask(x);
      }
      bit(s) |= mask(s);
      t.highest = s;
    } else if (t.highest - s >= seq_track::window_bits) {
      dup = true;  // too old to tell: treat as a replay
    } else if (bit(s) & mask(s)) {
      dup = true;
    } else {
      bit(s) |= mask(s);
      bump(c_.reordered, 1);
    }
    if (dup) {
      bump(c_.duplicates, 1);
      if (opts_.drop_duplicates) return status::ok();
    } else {
      t.unique++;
    }
    bump(c_.recv_msgs, 1);
    bump(c_.recv_bytes, size);
    fabric_event e;
    e.kind = fabric_event_kind::message;
    e.peer = h.src;
    e.bytes = std::move(bytes);
    inbox_messages_++;
    inbox_.push_back(std::move(e));
    inbox_size_.store(inbox_.size(), std::memory_order_release);
  }
  inbox_cv_.notify_one();
  if (has_handler()) wake();
  return status::ok();
}

status fabric_base::push_event(fabric_event&& e, bool bounded) {
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    if (bounded && inbox_messages_ >= opts_.inbox_depth) {
      c_.inbox_overflows++;
      warn_once("inbox_full", "inbox full (fabric.inbox_depth = " +
                                  std::to_string(opts_.inbox_depth) + "): refusing messages");
      return {errc::capacity, "receiver inbox full"};
    }
    if (e.kind == fabric_event_kind::message) inbox_messages_++;
    inbox_.push_back(std::move(e));
    inbox_size_.store(inbox_.size(), std::memory_order_release);
  }
  inbox_cv_.notify_one();
  if (has_handler()) wake();
  return status::ok();
}

void fabric_base::emit_peer_down(node_id peer, status why) {
  c_.peer_down_events++;
  {
    std::lock_guard<std::mutex> lock(peers_mu_);
    auto it = peers_.find(peer);
    if (it != peers_.end()) it->second.down = true;
  }
  log().info("peer down node={} peer={} reason=\"{}\"", opts_.self, peer, why.to_string());
  fabric_event e;
  e.kind = fabric_event_kind::peer_down;
  e.peer = peer;
  e.reason = std::move(why);
  (void)push_event(std::move(e), false);
}

void fabric_base::set_handler(std::function<void(fabric_event&&)> handler) {
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    handler_ = std::move(handler);
    has_handler_.store(static_cast<bool>(handler_), std::memory_order_release);
  }
  if (has_handler()) wake();
}

size_t fabric_base::drain_to_handler(size_t max_events) {
  if (!has_handler()) return 0;
  std::lock_guard<std::mutex> run(handler_run_mu_);
  size_t n = 0;
  while (n < max_events) {
    fabric_event e;
    std::function<void(fabric_event&&)> h;
    {
      std::lock_guard<std::mutex> lock(inbox_mu_);
      if (inbox_.empty() || !handler_) break;
      e = std::move(inbox_.front());
      inbox_.pop_front();
      inbox_size_.store(inbox_.size(), std::memory_order_release);
      if (e.kind == fabric_event_kind::message) inbox_messages_--;
      h = handler_;
    }
    h(std::move(e));
    ++n;
  }
  return n;
}

void fabric_base::wait_inbox(fabric_clock::time_point until) {
  std::unique_lock<std::mutex> lock(inbox_mu_);
  inbox_cv_.wait_until(lock, until, [&] { return !inbox_.empty(); });
}

size_t fabric_base::poll(std::vector<fabric_event>& out, std::chrono::nanoseconds timeout,
                         size_t max_events) {
  if (timeout.count() <= 0 && inbox_empty()) return 0;
  std::unique_lock<std::mutex> lock(inbox_mu_);
  if (inbox_.empty() && timeout.count() > 0)
    inbox_cv_.wait_for(lock, timeout, [&] { return !inbox_.empty(); });
  size_t n = 0;
  while (!inbox_.empty() && n < max_events) {
    if (inbox_.front().kind == fabric_event_kind::message) inbox_messages_--;
    out.push_back(std::move(inbox_.front()));
    inbox_.pop_front();
    ++n;
  }
  inbox_size_.store(inbox_.size(), std::memory_order_release);
  return n;
}

void fabric_base::schedule(fabric_clock::time_point due, std::function<void()> fn) {
  bool earliest;
  {
    std::lock_guard<std::mutex> lock(timers_mu_);
    earliest = timers_.empty() || due < timers_.top().due;
    timers_.push({due, timer_order_++, std::move(fn)});
    earliest_timer_ns_.store(to_ns(timers_.top().due), std::memory_order_release);
  }
  if (earliest) wake();
}

fabric_clock::time_point fabric_base::next_timer() const {
  int64_t ns = earliest_timer_ns_.load(std::memory_order_acquire);
  return ns == INT64_MAX ? fabric_clock::time_point::max()
                         : fabric_clock::time_point(std::chrono::nanoseconds(ns));
}

void fabric_base::run_timers(fabric_clock::time_point now) {
  if (next_timer() > now) return;
  for (;;) {
    std::function<void()> fn;
    {
      std::lock_guard<std::mutex> lock(timers_mu_);
      if (timers_.empty() || timers_.top().due > now) return;
      fn = std::move(const_cast<timer_item&>(timers_.top()).fn);
      timers_.pop();
      earliest_timer_ns_.store(timers_.empty() ? INT64_MAX : to_ns(timers_.top().due),
                               std::memory_order_release);
    }
    fn();
  }
}

fabric_stats fabric_base::stats() const {
  fabric_stats s;
  s.sent_msgs = c_.sent_msgs;
  s.sent_bytes = c_.sent_bytes;
  s.recv_msgs = c_.recv_msgs;
  s.recv_bytes = c_.recv_bytes;
  s.puts = c_.puts;
  s.put_bytes = c_.put_bytes;
  s.gets = c_.gets;
  s.get_bytes = c_.get_bytes;
  s.capacity_rejects = c_.capacity_rejects;
  s.timeouts = c_.timeouts;
  s.op_errors = c_.op_errors;
  s.peer_down_events = c_.peer_down_events;
  s.frame_crc_errors = c_.frame_crc_errors;
  s.bad_frames = c_.bad_frames;
  s.duplicates = c_.duplicates;
  s.reordered = c_.reordered;
  s.inbox_overflows = c_.inbox_overflows;
  s.stalled_frames = c_.stalled_frames;
  s.delayed_frames = c_.delayed_frames;
  {
    std::lock_guard<std::mutex> lock(inbox_mu_);
    for (auto& [src, t] : tracks_) s.gaps += t.highest - t.unique;
  }
  if (faults_)
    for (size_t k = 0; k < fault_kind_count; ++k) {
      s.injected_send[k] = faults_->injected(fault_point::send, static_cast<fault_kind>(k));
      s.injected_recv[k] = faults_->injected(fault_point::recv, static_cast<fault_kind>(k));
    }
  return s;
}

}  // namespace detail
}  // namespace pnmkv::transport
