// The in-process fabric. A frame is delivered by calling the receiver's on_frame() from the
// sender's thread (fault points, CRC, duplicate suppression, bounded inbox), so a full inbox
// is reported to the sender at once. A per-endpoint progress thread, started on first need,
// runs delayed deliveries and the handler; a caller-driven hub (actors/detsim) has none.
#include "transport/inproc_fabric.hpp"

#include <condition_variable>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <random>
#include <set>
#include <shared_mutex>
#include <thread>

#include "core/check.hpp"
#include "transport/fabric_base.hpp"
#include "transport/log.hpp"

namespace pnmkv::transport {

namespace {
constexpr uint32_t address_magic = 0x52504e49;  // "INPR"
constexpr uint32_t key_magic = 0x4b524e49;      // "INRK"

template <class T>
void put_le(std::vector<uint8_t>& out, T v) {
  size_t n = out.size();
  out.resize(n + sizeof v);
  std::memcpy(out.data() + n, &v, sizeof v);
}
template <class T>
T get_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace

class inproc_endpoint;

class inproc_hub {
 public:
  explicit inproc_hub(inproc_progress progress) : progress(progress) {
    std::random_device rd;
    id_ = (uint64_t{rd()} << 32) ^ rd() ^ reinterpret_cast<uintptr_t>(this);
  }
  uint64_t id() const { return id_; }
  const inproc_progress progress;

  struct region {
    node_id owner;
    uint8_t* base;
    size_t length;
    uint64_t token;
  };

  std::mutex mu;  // endpoints, dead, watchers
  std::map<node_id, inproc_endpoint*> endpoints;
  std::set<node_id> dead;
  std::map<node_id, std::set<node_id>> watchers;  // target -> endpoints connected to it

  std::shared_mutex regions_mu;
  std::map<uint64_t, region> regions;
  uint64_t next_region = 1;
  std::mt19937_64 token_rng{std::random_device{}()};

 private:
  uint64_t id_;
};

std::shared_ptr<inproc_hub> make_inproc_hub(inproc_progress progress) {
  return std::make_shared<inproc_hub>(progress);
}

class inproc_endpoint final : public detail::fabric_base {
 public:
  inproc_endpoint(std::shared_ptr<inproc_hub> hub, const fabric_options& opts,
                  std::shared_ptr<fault_injector> faults)
      : fabric_base(opts, std::move(faults)), hub_(std::move(hub)) {}

  ~inproc_endpoint() override {
    die(status{errc::peer_down, "node " + std::to_string(self()) + " shut down"});
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      hub_->endpoints.erase(self());
      hub_->dead.erase(self());
      for (auto& [target, set] : hub_->watchers) set.erase(self());
    }
    {
      std::unique_lock<std::shared_mutex> lock(hub_->regions_mu);
      for (auto it = hub_->regions.begin(); it != hub_->regions.end();)
        it = it->second.owner == self() ? hub_->regions.erase(it) : std::next(it);
    }
    std::unique_lock<std::shared_mutex> wait_deliveries(alive_mu_);
    {
      std::lock_guard<std::mutex> lock(thr_mu_);
      thr_stop_ = true;
    }
    thr_cv_.notify_all();
    if (thr_.joinable()) thr_.join();
  }

  // The node's endpoint goes down as if its process had died: peers get peer-down events,
  // its own sends fail from now on.
  void crash(const std::string& why) override {
    detail::warn_once("fault_crash", "node " + std::to_string(self()) + " crashed: " + why);
    die(status{errc::peer_down, "node " + std::to_string(self()) + " crashed (" + why + ")"});
  }

  // Marks this endpoint crashed and tells everyone connected to it.
  void die(status why) {
    if (dead_.exchange(true)) return;
    std::set<node_id> watchers;
    std::vector<inproc_endpoint*> notify;
    std::lock_guard<std::mutex> lock(hub_->mu);
    hub_->dead.insert(self());
    watchers = hub_->watchers[self()];
    hub_->watchers.erase(self());
    for (node_id w : watchers) {
      auto it = hub_->endpoints.find(w);
      if (it != hub_->endpoints.end() && !it->second->dead_) it->second->emit_peer_down(self(), why);
    }
  }

  std::vector<uint8_t> address() const override {
    std::vector<uint8_t> a;
    put_le(a, address_magic);
    put_le(a, self());
    put_le(a, hub_->id());
    return a;
  }

  status connect(node_id peer, const std::vector<uint8_t>& addr) override {
    if (addr.size() != 16 || get_le<uint32_t>(addr.data()) != address_magic ||
        get_le<uint64_t>(addr.data() + 8) != hub_->id())
      return {errc::invalid_argument, "not an address of this in-process hub"};
    if (get_le<uint32_t>(addr.data() + 4) != peer)
      return {errc::invalid_argument, "address belongs to node " +
                                          std::to_string(get_le<uint32_t>(addr.data() + 4)) +
                                          ", not " + std::to_string(peer)};
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      if (!hub_->endpoints.count(peer) || hub_->dead.count(peer))
        return {errc::peer_down, "node " + std::to_string(peer) + " is not running"};
      hub_->watchers[peer].insert(self());
    }
    add_peer(peer);
    std::lock_guard<std::mutex> lock(mu_);
    connected_.insert(peer);
    return status::ok();
  }

  void disconnect(node_id peer) override {
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      hub_->watchers[peer].erase(self());
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      connected_.erase(peer);
    }
    remove_peer(peer);
  }

  bool self_down() const override { return dead_; }

  status peer_status(node_id dest) const override {
    if (dead_) return {errc::peer_down, "this node (" + std::to_string(self()) + ") is down"};
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!connected_.count(dest))
        return {errc::invalid_argument, "node " + std::to_string(dest) + " is not connected"};
    }
    std::lock_guard<std::mutex> lock(hub_->mu);
    if (hub_->dead.count(dest) || !hub_->endpoints.count(dest))
      return {errc::peer_down, "node " + std::to_string(dest) + " is down"};
    return status::ok();
  }

  status transmit(node_id dest, const detail::frame_header& h, std::vector<uint8_t>&& bytes,
                  std::chrono::nanoseconds, completion user, bool holds_slot) override {
    if (dead_) return {errc::peer_down, "this node is down"};
    inproc_endpoint* target = nullptr;
    {
      std::lock_guard<std::mutex> lock(hub_->mu);
      auto it = hub_->endpoints.find(dest);
      if (it == hub_->endpoints.end() || hub_->dead.count(dest))
        return {errc::peer_down, "node " + std::to_string(dest) + " is down"};
      target = it->second;
      target->alive_mu_.lock_shared();  // the target cannot finish destruction meanwhile
    }
    status s = target->on_frame(h, std::move(bytes));
    target->alive_mu_.unlock_shared();
    if (!s) return s;
    complete(dest, user, status::ok(), holds_slot);
    return status::ok();
  }

  result<local_region> register_region(void* base, size_t length) override {
    if (!base || !length) return status{errc::invalid_argument, "empty region"};
    local_region r;
    uint64_t token;
    {
      std::unique_lock<std::shared_mutex> lock(hub_->regions_mu);
      r.id = hub_->next_region++;
      token = hub_->token_rng();
      hub_->regions[r.id] = {self(), static_cast<uint8_t*>(base), length, token};
    }
    r.base = base;
    r.length = length;
    put_le(r.remote_key, key_magic);
    put_le(r.remote_key, uint32_t{0});
    put_le(r.remote_key, hub_->id());
    put_le(r.remote_key, r.id);
    put_le(r.remote_key, token);
    put_le(r.remote_key, uint64_t{length});
    return r;
  }

  result<local_region> allocate_region(size_t length) override {
    if (!length) return status{errc::invalid_argument, "empty region"};
    std::unique_ptr<uint8_t[]> mem(new (std::nothrow) uint8_t[length]());
    if (!mem) return status{errc::capacity, "cannot allocate " + std::to_string(length) + " bytes"};
    auto r = register_region(mem.get(), length);
    if (!r) return r;
    std::lock_guard<std::mutex> lock(mu_);
    owned_[r->id] = std::move(mem);
    return r;
  }

  status deregister_region(uint64_t id) override {
    {
      std::unique_lock<std::shared_mutex> lock(hub_->regions_mu);
      auto it = hub_->regions.find(id);
      if (it == hub_->regions.end() || it->second.owner != self())
        return {errc::invalid_argument, "region " + std::to_string(id) + " is not registered here"};
      hub_->regions.erase(it);
    }
    std::lock_guard<std::mutex> lock(mu_);
    owned_.erase(id);
    return status::ok();
  }

  result<remote_region> import_region(node_id peer, const std::vector<uint8_t>& key) override {
    if (key.size() != 40 || get_le<uint32_t>(key.data()) != key_magic ||
        get_le<uint64_t>(key.data() + 8) != hub_->id())
      return status{errc::invalid_argument, "not a remote key of this in-process hub"};
    uint64_t region = get_le<uint64_t>(key.data() + 16);
    uint64_t token = get_le<uint64_t>(key.data() + 24);
    {
      std::shared_lock<std::shared_mutex> lock(hub_->regions_mu);
      auto it = hub_->regions.find(region);
      if (it == hub_->regions.end() || it->second.token != token || it->second.owner != peer)
        return status{errc::invalid_argument, "remote key does not name a region of node " +
                                                  std::to_string(peer)};
    }
    std::lock_guard<std::mutex> lock(mu_);
    remote_region r;
    r.peer = peer;
    r.id = next_import_++;
    r.length = get_le<uint64_t>(key.data() + 32);
    imports_[r.id] = {peer, region, token};
    return r;
  }

  status put(const remote_region& dst, uint64_t offset, const void* src, size_t length,
             op_options opts) override {
    return rma(dst, offset, const_cast<void*>(src), length, std::move(opts), true);
  }
  status get(const remote_region& src, uint64_t offset, void* dst, size_t length,
             op_options opts) override {
    return rma(src, offset, dst, length, std::move(opts), false);
  }

  void progress_for(std::chrono::nanoseconds) override {}

  void wake() override {
    if (hub_->progress == inproc_progress::caller) return;  // the caller moves events and timers
    std::lock_guard<std::mutex> lock(thr_mu_);
    if (thr_stop_) return;
    if (!thr_.joinable()) thr_ = std::thread([this] { loop(); });
    wake_ = true;
    thr_cv_.notify_all();
  }

  std::shared_mutex alive_mu_;
  std::atomic<bool> dead_{false};

  // Caller-driven progress (inproc_progress::caller).
  bool has_events() const { return has_handler() && !inbox_empty(); }
  bool deliver_one() { return drain_to_handler(1) == 1; }
  fabric_clock::time_point timer_due() const { return next_timer(); }
  void timers_until(fabric_clock::time_point t) { run_timers(t); }

 private:
  struct import_entry {
    node_id peer;
    uint64_t region;
    uint64_t token;
  };

  status rma(const remote_region& r, uint64_t offset, void* local, size_t length,
             op_options opts, bool is_put) {
    if (status s = peer_status(r.peer); !s) return s;
    import_entry imp;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = imports_.find(r.id);
      if (it == imports_.end() || it->second.peer != r.peer)
        return {errc::invalid_argument, "remote region not imported"};
      imp = it->second;
    }
    if (offset > r.length || length > r.length - offset)
      return {errc::out_of_range, "[" + std::to_string(offset) + ", +" + std::to_string(length) +
                                      ") outside the " + std::to_string(r.length) +
                                      "-byte remote region"};
    if (status s = acquire_slot(r.peer); !s) return s;
    completion done = wrap(r.peer, std::move(opts.on_done));
    status outcome = status::ok();
    {
      std::shared_lock<std::shared_mutex> lock(hub_->regions_mu);
      auto it = hub_->regions.find(imp.region);
      if (it == hub_->regions.end() || it->second.token != imp.token) {
        outcome = {errc::invalid_argument, "remote region was deregistered"};
      } else if (offset + length > it->second.length) {
        outcome = {errc::out_of_range, "outside the remote region"};
      } else if (is_put) {
        std::memcpy(it->second.base + offset, local, length);
      } else {
        std::memcpy(local, it->second.base + offset, length);
      }
    }
    if (outcome) {
      (is_put ? c_.puts : c_.gets)++;
      (is_put ? c_.put_bytes : c_.get_bytes) += length;
    }
    done(std::move(outcome));
    return status::ok();
  }

  void loop() {
    std::unique_lock<std::mutex> lock(thr_mu_);
    while (!thr_stop_) {
      lock.unlock();
      run_timers(fabric_clock::now());
      drain_to_handler();
      lock.lock();
      if (thr_stop_) break;
      if (!wake_) {
        auto until = std::min(next_timer(), fabric_clock::now() + std::chrono::milliseconds(50));
        thr_cv_.wait_until(lock, until, [&] { return wake_ || thr_stop_; });
      }
      wake_ = false;
    }
  }

  std::shared_ptr<inproc_hub> hub_;
  mutable std::mutex mu_;
  std::set<node_id> connected_;
  std::map<uint64_t, import_entry> imports_;
  uint64_t next_import_ = 1;
  std::map<uint64_t, std::unique_ptr<uint8_t[]>> owned_;  // allocate_region()

  std::mutex thr_mu_;
  std::condition_variable thr_cv_;
  std::thread thr_;
  bool thr_stop_ = false;
  bool wake_ = false;
};

result<std::unique_ptr<fabric>> make_inproc_fabric(const std::shared_ptr<inproc_hub>& hub,
                                                   const fabric_options& opts) {
  if (!hub) return status{errc::invalid_argument, "no hub"};
  std::shared_ptr<fault_injector> faults;
  if (!opts.faults.empty()) {
    auto f = fault_injector::make(opts.faults, opts.self);
    if (!f) return f.error();
    faults = std::move(f).value();
  }
  auto ep = std::make_unique<inproc_endpoint>(hub, opts, std::move(faults));
  {
    std::lock_guard<std::mutex> lock(hub->mu);
    if (hub->endpoints.count(opts.self))
      return status{errc::invalid_argument, "node id " + std::to_string(opts.self) +
                                                " already has an endpoint on this hub"};
    hub->endpoints[opts.self] = ep.get();
  }
  return std::unique_ptr<fabric>(std::move(ep));
}

void inproc_kill(inproc_hub& hub, node_id node) {
  inproc_endpoint* ep = nullptr;
  {
    std::lock_guard<std::mutex> lock(hub.mu);
    auto it = hub.endpoints.find(node);
    if (it == hub.endpoints.end()) return;
    ep = it->second;
  }
  ep->die(status{errc::peer_down, "node " + std::to_string(node) + " crashed"});
}

}  // namespace pnmkv::transport

namespace pnmkv::transport {

namespace {
// The endpoints of a caller-driven hub, by node id (the caller's thread is the only one).
std::vector<inproc_endpoint*> driven(inproc_hub& hub) {
  PNMKV_CHECK(hub.progress == inproc_progress::caller, "a hub with progress threads is not driven by its caller");
  std::lock_guard<std::mutex> lock(hub.mu);
  std::vector<inproc_endpoint*> out;
  for (auto& [id, ep] : hub.endpoints) out.push_back(ep);
  return out;
}
}  // namespace

std::vector<node_id> inproc_ready(inproc_hub& hub) {
  std::vector<node_id> out;
  for (inproc_endpoint* ep : driven(hub))
    if (ep->has_events()) out.push_back(ep->self());
  return out;
}

bool inproc_deliver_one(inproc_hub& hub, node_id node) {
  for (inproc_endpoint* ep : driven(hub))
    if (ep->self() == node) return ep->deliver_one();
  return false;
}

fabric_clock::time_point inproc_next_timer(inproc_hub& hub) {
  auto t = fabric_clock::time_point::max();
  for (inproc_endpoint* ep : driven(hub)) t = std::min(t, ep->timer_due());
  return t;
}

void inproc_run_timers(inproc_hub& hub, fabric_clock::time_point now) {
  for (inproc_endpoint* ep : driven(hub)) ep->timers_until(now);
}

std::vector<node_id> inproc_endpoints(inproc_hub& hub) {
  std::lock_guard<std::mutex> lock(hub.mu);
  std::vector<node_id> out;
  for (const auto& [id, ep] : hub.endpoints) out.push_back(id);
  return out;
}

}  // namespace pnmkv::transport
