// The UCX fabric. Every UCX call happens on the worker's owner thread; other threads post
// closures to `posted_` and poke an eventfd. Operations are `op` records owned by `ops_`
// until UCX has released their request; the user's completion runs once, at UCX completion,
// deadline, peer failure or shutdown, whichever comes first.
//
// Active-message ids: small messages, and (rma = am) put, put-ack, get-request, get-reply.
// A put/get-reply sent with rendezvous is received straight into the target memory.
#include "transport/ucx_fabric.hpp"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <ucp/api/ucp.h>

#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "transport/fabric_base.hpp"
#include "transport/log.hpp"

namespace pnmkv::transport {

const char* to_string(ucx_transport t) {
  switch (t) {
    case ucx_transport::any: return "any";
    case ucx_transport::tcp: return "tcp";
    case ucx_transport::shm: return "shm";
  }
  return "unknown";
}

bool parse_ucx_transport(const std::string& name, ucx_transport& out) {
  if (name == "any" || name == "auto") out = ucx_transport::any;
  else if (name == "tcp") out = ucx_transport::tcp;
  else if (name == "shm" || name == "sm") out = ucx_transport::shm;
  else return false;
  return true;
}

namespace {

using detail::frame_header;

enum am_id : unsigned { am_msg = 11, am_put = 12, am_put_ack = 13, am_get_req = 14, am_get_rep = 15 };

struct rma_header {  // am_put, am_get_req
  uint64_t op_id;
  uint64_t region;
  uint64_t token;
  uint64_t offset;
  uint64_t length;
  uint32_t src;
  uint32_t pad;
};
struct ack_header {  // am_put_ack, am_get_rep
  uint64_t op_id;
  int32_t status;  // errc
  uint32_t pad;
};

constexpr uint32_t key_magic = 0x4b524355;  // "UCRK"

status ucs_error(const char* what, ucs_status_t st) {
  errc code = errc::io;
  if (st == UCS_ERR_CANCELED || st == UCS_ERR_TIMED_OUT) code = errc::timeout;
  if (st == UCS_ERR_ENDPOINT_TIMEOUT || st == UCS_ERR_CONNECTION_RESET ||
      st == UCS_ERR_UNREACHABLE || st == UCS_ERR_REJECTED || st == UCS_ERR_NOT_CONNECTED)
    code = errc::peer_down;
  return {code, std::string(what) + ": " + ucs_status_string(st)};
}

int64_t ms_until(fabric_clock::time_point t) {
  auto d = std::chrono::duration_cast<std::chrono::milliseconds>(t - fabric_clock::now()).count();
  return d < 0 ? 0 : d;
}

}  // namespace

class ucx_endpoint final : public detail::fabric_base {
 public:
  // A node process with a crash fault dies at once, as a crashed process would: its peers
  // see the endpoint fail (peer-down) and the cluster's monitors see the process gone.
  void crash(const std::string& why) override {
    std::fprintf(stderr, "node %u crashed: %s\n", unsigned(opts_.self), why.c_str());
    std::fflush(stderr);
    std::_Exit(70);
  }
  ucx_endpoint(const fabric_options& opts, const ucx_options& u,
               std::shared_ptr<fault_injector> faults)
      : fabric_base(opts, std::move(faults)), u_(u) {
    rma_am_ = u.rma == ucx_rma_mode::am ||
              (u.rma == ucx_rma_mode::automatic && u.transport == ucx_transport::tcp);
    std::random_device rd;
    token_rng_.seed((uint64_t{rd()} << 32) ^ rd());
  }

  ~ucx_endpoint() override { shutdown(); }

  status init() {
    ucp_config_t* cfg = nullptr;
    if (ucs_status_t st = ucp_config_read(nullptr, nullptr, &cfg); st != UCS_OK)
      return ucs_error("ucp_config_read", st);
    auto modify = [&](const char* k, const std::string& v) {
      ucs_status_t st = ucp_config_modify(cfg, k, v.c_str());
      if (st != UCS_OK)
        log().debug("ucp_config_modify {}={} failed: {}", k, v, ucs_status_string(st));
      return st;
    };
    if (u_.transport == ucx_transport::tcp) {
      modify("TLS", "tcp");
      if (!u_.net_devices.empty()) modify("NET_DEVICES", u_.net_devices);
    } else if (u_.transport == ucx_transport::shm) {
      modify("TLS", "sm,self");
    }
    modify("KEEPALIVE_INTERVAL", std::to_string(u_.keepalive.count()) + "ms");

    ucp_params_t params{};
    params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED |
                        UCP_PARAM_FIELD_ESTIMATED_NUM_EPS;
    wakeup_ = true;  // the event fd lets an idle owner sleep instead of spinning
    params.features = UCP_FEATURE_AM | UCP_FEATURE_RMA | (wakeup_ ? UCP_FEATURE_WAKEUP : 0);
    params.mt_workers_shared = 0;
    params.estimated_num_eps = 16;
    ucs_status_t st = ucp_init(&params, cfg, &ctx_);
    ucp_config_release(cfg);
    if (st != UCS_OK) return ucs_error("ucp_init", st);

    ucp_worker_params_t wp{};
    wp.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
    wp.thread_mode = UCS_THREAD_MODE_SINGLE;
    {
      // Shared-memory lanes are dropped under UCP_ERR_HANDLING_MODE_PEER unless the mm
      // transports do error handling (transport/README.md, "Peer failure"). ucp_config_modify does not reach
      // these transport settings in UCX 1.13; they are read from the environment when the
      // worker opens its interfaces, so they are set around worker creation only (never
      // overriding a user's value, and not for tcp, where UCX would warn they are unused).
      static std::mutex env_mu;
      std::lock_guard<std::mutex> lock(env_mu);
      std::vector<const char*> set_here;
      if (u_.transport != ucx_transport::tcp)
        for (const char* var : {"UCX_POSIX_ERROR_HANDLING", "UCX_SYSV_ERROR_HANDLING"})
          if (!std::getenv(var)) {
            setenv(var, "y", 0);
            set_here.push_back(var);
          }
      st = ucp_worker_create(ctx_, &wp, &worker_);
      for (const char* var : set_here) unsetenv(var);
    }
    if (st != UCS_OK) return ucs_error("ucp_worker_create", st);

    ucp_address_t* addr = nullptr;
    size_t addr_len = 0;
    if ((st = ucp_worker_get_address(worker_, &addr, &addr_len)) != UCS_OK)
      return ucs_error("ucp_worker_get_address", st);
    address_.assign(reinterpret_cast<uint8_t*>(addr), reinterpret_cast<uint8_t*>(addr) + addr_len);
    ucp_worker_release_address(worker_, addr);

    for (unsigned id : {am_msg, am_put, am_put_ack, am_get_req, am_get_rep}) {
      ucp_am_handler_param_t hp{};
      hp.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
      hp.id = id;
      hp.flags = UCP_AM_FLAG_WHOLE_MSG;
      hp.arg = this;
      switch (id) {
        case am_msg: hp.cb = &ucx_endpoint::on_am_msg; break;
        case am_put: hp.cb = &ucx_endpoint::on_am_put; break;
        case am_put_ack: hp.cb = &ucx_endpoint::on_am_ack; break;
        case am_get_req: hp.cb = &ucx_endpoint::on_am_get_req; break;
        default: hp.cb = &ucx_endpoint::on_am_get_rep; break;
      }
      if ((st = ucp_worker_set_am_recv_handler(worker_, &hp)) != UCS_OK)
        return ucs_error("ucp_worker_set_am_recv_handler", st);
    }

    int ucx_fd = -1;
    if (wakeup_ && (st = ucp_worker_get_efd(worker_, &ucx_fd)) != UCS_OK)
      return ucs_error("ucp_worker_get_efd", st);
    evfd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    epfd_ = epoll_create1(EPOLL_CLOEXEC);
    if (evfd_ < 0 || epfd_ < 0) return {errc::io, "eventfd/epoll_create1 failed"};
    epoll_event ev{};
    ev.events = EPOLLIN;
    ev.data.fd = ucx_fd;
    if (wakeup_) epoll_ctl(epfd_, EPOLL_CTL_ADD, ucx_fd, &ev);
    ev.data.fd = evfd_;
    epoll_ctl(epfd_, EPOLL_CTL_ADD, evfd_, &ev);

    if (u_.progress_thread) {
      thread_ = std::thread([this] {
        owner_ = std::this_thread::get_id();
        {
          // Set under the waiter's mutex: set between the waiter's check and its sleep, the
          // flag's notification was lost and the process hung in start-up, silent, for
          // good (seen under load: a peer that never printed its address).
          std::lock_guard<std::mutex> lock(posted_mu_);
          owner_set_.store(true);
        }
        owner_cv_.notify_all();
        while (!stop_.load(std::memory_order_acquire)) round(true);
        final_cleanup();
      });
      std::unique_lock<std::mutex> lock(posted_mu_);
      owner_cv_.wait(lock, [&] { return owner_set_.load(); });
    } else {
      owner_ = std::this_thread::get_id();
      owner_set_ = true;
    }
    log().info("ucx fabric up node={} transport={} rma={} progress={} address_bytes={}",
               opts_.self, to_string(u_.transport), rma_am_ ? "am" : "native",
               u_.progress_thread ? "thread" : "caller", address_.size());
    if (u_.transport != ucx_transport::tcp)
      log().warn("node={} fabric.ucx_transport={}: a peer killed while sending to this node over shared "
                 "memory can stall its receive path for good (UCX's mm FIFO; transport/README.md, "
                 "\"Peer failure\"); use tcp for fault experiments",
                 opts_.self, to_string(u_.transport));
    return status::ok();
  }

  // fabric -------------------------------------------------------------------------
  std::vector<uint8_t> address() const override { return address_; }

  status connect(node_id peer, const std::vector<uint8_t>& address) override {
    auto deadline = fabric_clock::now() + opts_.connect_timeout;
    auto state = std::make_shared<std::promise<status>>();
    auto fut = state->get_future();
    {
      std::lock_guard<std::mutex> lock(pstate_mu_);
      if (pstate_.count(peer) && pstate_[peer] == peer_up)
        return {errc::invalid_argument, "node " + std::to_string(peer) + " already connected"};
      pstate_[peer] = peer_connecting;
    }
    add_peer(peer);
    on_owner([this, peer, address, deadline, state] { start_connect(peer, address, deadline, state); });
    status s = wait_future(fut, deadline + std::chrono::milliseconds(100));
    std::lock_guard<std::mutex> lock(pstate_mu_);
    pstate_[peer] = s ? peer_up : peer_down;
    return s;
  }

  void disconnect(node_id peer) override {
    auto done = std::make_shared<std::promise<status>>();
    auto fut = done->get_future();
    on_owner([this, peer, done] {
      fail_peer(peer, status{errc::peer_down, "disconnected"}, false);
      done->set_value(status::ok());
    });
    (void)wait_future(fut, fabric_clock::now() + std::chrono::seconds(2));
    {
      std::lock_guard<std::mutex> lock(pstate_mu_);
      pstate_.erase(peer);
    }
    remove_peer(peer);
  }

  status peer_status(node_id dest) const override {
    if (stop_) return {errc::peer_down, "fabric shut down"};
    std::lock_guard<std::mutex> lock(pstate_mu_);
    auto it = pstate_.find(dest);
    if (it == pstate_.end())
      return {errc::invalid_argument, "node " + std::to_string(dest) + " is not connected"};
    if (it->second == peer_down)
      return {errc::peer_down, "node " + std::to_string(dest) + " is down"};
    return status::ok();
  }

  status transmit(node_id dest, const frame_header& h, std::vector<uint8_t>&& bytes,
                  std::chrono::nanoseconds timeout, completion user,
                  bool holds_slot) override {
    auto o = make_op();
    o->kind = op_kind::send;
    o->peer = dest;
    o->timeout = timeout;
    o->done = std::move(user);
    o->holds_slot = holds_slot;
    o->hdr = h;
    o->bytes = std::move(bytes);
    post_op(std::move(o));
    return status::ok();
  }

  result<local_region> register_region(void* base, size_t length) override {
    if (!base || !length) return status{errc::invalid_argument, "empty region"};
    auto p = std::make_shared<std::promise<result<local_region>>>();
    auto fut = p->get_future();
    on_owner([this, base, length, p] { p->set_value(do_register(base, length)); });
    if (fut.wait_until(fabric_clock::now() + opts_.connect_timeout) != std::future_status::ready)
      return status{errc::timeout, "register_region: owner thread did not respond"};
    return fut.get();
  }

  result<local_region> allocate_region(size_t length) override {
    if (!length) return status{errc::invalid_argument, "empty region"};
    auto p = std::make_shared<std::promise<result<local_region>>>();
    auto fut = p->get_future();
    on_owner([this, length, p] { p->set_value(do_register(nullptr, length)); });
    if (fut.wait_until(fabric_clock::now() + opts_.connect_timeout) != std::future_status::ready)
      return status{errc::timeout, "allocate_region: owner thread did not respond"};
    return fut.get();
  }

  status deregister_region(uint64_t id) override {
    auto p = std::make_shared<std::promise<status>>();
    auto fut = p->get_future();
    on_owner([this, id, p] {
      auto it = regions_.find(id);
      if (it == regions_.end()) {
        p->set_value(status{errc::invalid_argument, "region not registered here"});
        return;
      }
      ucp_mem_unmap(ctx_, it->second.memh);
      regions_.erase(it);
      p->set_value(status::ok());
    });
    return wait_future(fut, fabric_clock::now() + opts_.connect_timeout);
  }

  result<remote_region> import_region(node_id peer, const std::vector<uint8_t>& key) override {
    if (status s = peer_status(peer); !s) return s;
    auto p = std::make_shared<std::promise<result<remote_region>>>();
    auto fut = p->get_future();
    on_owner([this, peer, key, p] { p->set_value(do_import(peer, key)); });
    if (fut.wait_until(fabric_clock::now() + opts_.connect_timeout) != std::future_status::ready)
      return status{errc::timeout, "import_region: owner thread did not respond"};
    auto r = fut.get();
    if (r) {
      std::lock_guard<std::mutex> lock(pstate_mu_);
      import_len_[r->id] = {peer, r->length};
    }
    return r;
  }

  status put(const remote_region& dst, uint64_t offset, const void* src, size_t length,
             op_options opts) override {
    return start_rma(op_kind::put, dst, offset, const_cast<void*>(src), length, std::move(opts));
  }
  status get(const remote_region& src, uint64_t offset, void* dst, size_t length,
             op_options opts) override {
    return start_rma(op_kind::get, src, offset, dst, length, std::move(opts));
  }

  size_t poll(std::vector<fabric_event>& out, std::chrono::nanoseconds timeout,
              size_t max_events) override {
    if (u_.progress_thread || !on_owner_thread()) return fabric_base::poll(out, timeout, max_events);
    const auto until = fabric_clock::now() + timeout;
    for (;;) {
      if (!inbox_empty())
        if (size_t n = fabric_base::poll(out, std::chrono::nanoseconds{0}, max_events)) return n;
      auto now = round(true, until);
      if (now >= until) return fabric_base::poll(out, std::chrono::nanoseconds{0}, max_events);
    }
  }

  void progress_for(std::chrono::nanoseconds max_wait) override {
    if (u_.progress_thread || !on_owner_thread()) return;
    round(max_wait.count() > 0, fabric_clock::now() + max_wait);
  }

  void wake() override {
    if (on_owner_thread()) return;
    poke();
  }

 private:
  enum class op_kind : uint8_t { send, put, get, flush, am_reply };
  enum pstate_t : uint8_t { peer_connecting, peer_up, peer_down };

  struct op {
    uint64_t id = 0;
    op_kind kind = op_kind::send;
    node_id peer = 0;
    fabric_clock::time_point deadline;  // set when the op is started (or posted)
    std::chrono::nanoseconds timeout{0};
    completion done;
    bool finished = false;  // user told
    bool holds_slot = false;  // a back-pressure slot of fabric_base
    bool ucx_busy = false;  // a UCX request still references this op
    int pending_requests = 0;
    frame_header hdr;
    rma_header rhdr{};
    ack_header ahdr{};
    std::vector<uint8_t> bytes;
    // RMA
    void* local = nullptr;
    size_t length = 0;
    uint64_t remote_addr = 0;
    ucp_rkey_h rkey = nullptr;
    uint64_t import_id = 0;
    ucp_ep_h ep = nullptr;
    ucx_endpoint* self = nullptr;
  };

  struct peer_rec {
    ucp_ep_h ep = nullptr;
    bool up = false;
    node_id id = 0;
    ucx_endpoint* self = nullptr;
  };

  struct region_rec {
    ucp_mem_h memh = nullptr;
    uint8_t* base = nullptr;
    size_t length = 0;
    uint64_t token = 0;
  };

  struct import_rec {
    node_id peer;
    uint64_t region;
    uint64_t token;
    uint64_t base;
    uint64_t length;
    ucp_rkey_h rkey;
  };

  struct rndv_recv {
    enum class what : uint8_t { msg, put, get_rep } kind;
    frame_header hdr;
    rma_header rhdr;
    uint64_t op_id = 0;
    void* desc;
    size_t length;
    std::vector<uint8_t> buf;
    ucx_endpoint* self;
    node_id src = 0;
  };

  // threads ------------------------------------------------------------------------
  bool on_owner_thread() const {
    return owner_set_.load(std::memory_order_acquire) && std::this_thread::get_id() == owner_;
  }

  void poke() {
    if (sleeping_.load()) {
      uint64_t one = 1;
      ssize_t n = ::write(evfd_, &one, sizeof one);
      (void)n;
    }
  }

  void on_owner(std::function<void()> fn) {
    if (on_owner_thread()) {
      fn();
      return;
    }
    {
      std::lock_guard<std::mutex> lock(posted_mu_);
      posted_.push_back(std::move(fn));
      posted_nonempty_.store(true);
    }
    poke();
  }

  template <class F>
  status wait_future(F& fut, fabric_clock::time_point deadline) {
    if (on_owner_thread() && !u_.progress_thread) {
      while (fut.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
        if (fabric_clock::now() > deadline) return {errc::timeout, "operation timed out"};
        round(false);
      }
      return fut.get();
    }
    if (fut.wait_until(deadline) != std::future_status::ready)
      return {errc::timeout, "owner thread did not complete the operation in time"};
    return fut.get();
  }

  void post_op(std::unique_ptr<op> o) {
    o->self = this;
    o->deadline = fabric_clock::time_point::max();
    if (on_owner_thread()) {
      start_op(std::move(o), true);
      return;
    }
    o->deadline = fabric_clock::now() + o->timeout;  // waiting in the queue counts
    op* raw = o.release();
    on_owner([this, raw] { start_op(std::unique_ptr<op>(raw), false); });
  }

  // One round of the progress loop. `may_sleep`: block on the event fd (up to `until`)
  // once nothing happened for `spin`.
  // Returns the time it read.
  fabric_clock::time_point round(bool may_sleep,
                                 fabric_clock::time_point until = fabric_clock::time_point::max()) {
    unsigned did = 0;
    if (posted_nonempty_.load(std::memory_order_acquire)) {
      std::vector<std::function<void()>> batch;
      {
        std::lock_guard<std::mutex> lock(posted_mu_);
        batch.swap(posted_);
        posted_nonempty_.store(false);
      }
      for (auto& fn : batch) fn();
      did += static_cast<unsigned>(batch.size());
    }
    did += ucp_worker_progress(worker_);
    if (!deferred_down_.empty() || !deferred_rndv_.empty() || !closing_.empty())
      did += static_cast<unsigned>(process_deferred());
    if (has_handler()) did += static_cast<unsigned>(drain_to_handler());
    // Busy polling: the clock (deadlines, timers, the spin budget) is read every 32nd round
    // only, busy or idle, which keeps both the polling loop and each message short.
    if (did) active_ = true;
    if (++rounds_ < 32 && cached_now_ < until) return cached_now_;
    rounds_ = 0;
    auto now = fabric_clock::now();
    cached_now_ = now;
    if (active_) {
      last_activity_ = now;
      active_ = false;
      did++;
    }
    if (now >= next_deadline_scan_) {
      scan_deadlines(now);
      next_deadline_scan_ = now + std::chrono::milliseconds(1);
    }
    if (next_timer() <= now) {
      run_timers(now);
      did++;
    }
    if (did) {
      last_activity_ = now;
      return now;
    }
    if (!may_sleep || now - last_activity_ < u_.spin || now >= until) return now;
    // Sleep on the worker's event fd and the post queue's eventfd.
    sleeping_.store(true);
    if (posted_nonempty_.load() || (has_handler() && !inbox_empty())) {
      sleeping_.store(false);
      return now;
    }
    ucs_status_t st = wakeup_ ? ucp_worker_arm(worker_) : UCS_OK;
    if (st == UCS_ERR_BUSY) {
      sleeping_.store(false);
      return now;
    }
    // UCX runs keepalive from progress: never sleep longer than half its interval.
    auto wake_at = std::min({next_timer(), next_deadline_scan_ + std::chrono::milliseconds(9),
                             until, now + std::max(std::chrono::milliseconds(1), u_.keepalive / 2)});
    if (!ops_.empty()) wake_at = std::min(wake_at, now + std::chrono::milliseconds(2));
    int64_t ms = ms_until(wake_at);
    if (ms > 0) {
      epoll_event evs[2];
      epoll_wait(epfd_, evs, 2, static_cast<int>(ms));
    }
    sleeping_.store(false);
    uint64_t v;
    while (::read(evfd_, &v, sizeof v) > 0) {
    }
    last_activity_ = cached_now_ = fabric_clock::now();  // spin briefly after waking
    return last_activity_;
  }

  // operations ---------------------------------------------------------------------
  uint64_t adopt(std::unique_ptr<op> o) {
    o->id = next_op_id_++;
    o->self = this;
    uint64_t id = o->id;
    ops_.emplace(id, std::move(o));
    return id;
  }

  void finish(op& o, status s) {
    if (o.finished) return;
    o.finished = true;
    if (s) {
      if (o.kind == op_kind::put) {
        c_.puts++;
        c_.put_bytes += o.length;
      } else if (o.kind == op_kind::get) {
        c_.gets++;
        c_.get_bytes += o.length;
      }
    }
    if (o.kind == op_kind::flush) {  // internal (connect): no slot, no statistics
      if (o.done) {
        auto d = std::move(o.done);
        d(std::move(s));
      }
      return;
    }
    complete(o.peer, o.done, std::move(s), o.holds_slot);
  }

  void maybe_free(uint64_t id) {
    auto it = ops_.find(id);
    if (it == ops_.end()) return;
    if (it->second->finished && it->second->pending_requests == 0) {
      recycle(std::move(it->second));
      ops_.erase(it);
    }
  }

  // Op records are reused on the owner thread: a send costs no allocation besides its bytes.
  std::unique_ptr<op> make_op() {
    if (on_owner_thread() && !op_pool_.empty()) {
      auto o = std::move(op_pool_.back());
      op_pool_.pop_back();
      return o;
    }
    return std::make_unique<op>();
  }
  void recycle(std::unique_ptr<op> o) {
    if (!o || op_pool_.size() >= 256) return;
    o->done = nullptr;
    o->bytes = std::vector<uint8_t>();
    o->finished = false;
    o->holds_slot = false;
    o->pending_requests = 0;
    o->local = nullptr;
    o->rkey = nullptr;
    o->ep = nullptr;
    op_pool_.push_back(std::move(o));
  }

  ucp_ep_h ep_of(node_id peer) {
    auto it = peers_.find(peer);
    return it != peers_.end() && it->second->up ? it->second->ep : nullptr;
  }

  // Issues the UCX calls of an operation. The op joins ops_ only if something is still
  // outstanding afterwards (UCX calls back only from progress, never from inside an nbx
  // call, so inserting after the calls is safe); immediate completions cost no table entry.
  void start_op(std::unique_ptr<op> up, bool inline_call) {
    op& o = *up;
    o.id = next_op_id_++;
    o.self = this;
    const uint64_t id = o.id;
    struct insert_if_pending {
      ucx_endpoint* self;
      std::unique_ptr<op>& up;
      ~insert_if_pending() {
        if (!up->finished || up->pending_requests > 0) {
          // Only now does the deadline matter (read the clock: the owner may have been busy
          // elsewhere since its last round).
          if (up->deadline == fabric_clock::time_point::max())
            up->deadline = fabric_clock::now() + up->timeout;
          uint64_t key = up->id;
          self->ops_.emplace(key, std::move(up));
        } else {
          self->recycle(std::move(up));
        }
      }
    } guard{this, up};
    ucp_ep_h ep = ep_of(o.peer);
    if (!ep) {
      finish(o, status{errc::peer_down, "node " + std::to_string(o.peer) + " is down"});
      return;
    }
    if (!inline_call && fabric_clock::now() > o.deadline) {
      finish(o, status{errc::timeout, "deadline passed before the operation started"});
      return;
    }
    o.ep = ep;
    switch (o.kind) {
      case op_kind::send: {
        ucp_request_param_t p{};
        p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
        p.cb.send = &ucx_endpoint::on_send_done;
        p.user_data = &o;
        ucs_status_ptr_t r = ucp_am_send_nbx(ep, am_msg, &o.hdr, sizeof o.hdr, o.bytes.data(),
                                             o.bytes.size(), &p);
        track(o, id, r, "ucp_am_send_nbx");
        break;
      }
      case op_kind::put: {
        if (rma_am_) {
          auto& imp = imports_.at(o.import_id);
          o.rhdr = {id, imp.region, imp.token, o.remote_addr, o.length, opts_.self, 0};
          ucp_request_param_t p{};
          p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          p.cb.send = &ucx_endpoint::on_request_done_keep;  // completion comes with the ack
          p.user_data = &o;
          ucs_status_ptr_t r = ucp_am_send_nbx(ep, am_put, &o.rhdr, sizeof o.rhdr, o.local,
                                               o.length, &p);
          track_keep(o, id, r, "ucp_am_send_nbx(put)");
        } else {
          auto& imp = imports_.at(o.import_id);
          ucp_request_param_t p{};
          p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          p.cb.send = &ucx_endpoint::on_request_done_keep;
          p.user_data = &o;
          ucs_status_ptr_t r =
              ucp_put_nbx(ep, o.local, o.length, imp.base + o.remote_addr, imp.rkey, &p);
          if (!track_keep(o, id, r, "ucp_put_nbx")) break;
          // Remote completion: flush the endpoint; the flush callback finishes the op.
          ucp_request_param_t fp{};
          fp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          fp.cb.send = &ucx_endpoint::on_send_done;
          fp.user_data = &o;
          ucs_status_ptr_t f = ucp_ep_flush_nbx(ep, &fp);
          track(o, id, f, "ucp_ep_flush_nbx");
        }
        break;
      }
      case op_kind::get: {
        if (rma_am_) {
          auto& imp = imports_.at(o.import_id);
          o.rhdr = {id, imp.region, imp.token, o.remote_addr, o.length, opts_.self, 0};
          ucp_request_param_t p{};
          p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          p.cb.send = &ucx_endpoint::on_request_done_keep;  // completion comes with the reply
          p.user_data = &o;
          ucs_status_ptr_t r =
              ucp_am_send_nbx(ep, am_get_req, &o.rhdr, sizeof o.rhdr, nullptr, 0, &p);
          track_keep(o, id, r, "ucp_am_send_nbx(get)");
        } else {
          auto& imp = imports_.at(o.import_id);
          ucp_request_param_t p{};
          p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
          p.cb.send = &ucx_endpoint::on_send_done;
          p.user_data = &o;
          ucs_status_ptr_t r =
              ucp_get_nbx(ep, o.local, o.length, imp.base + o.remote_addr, imp.rkey, &p);
          track(o, id, r, "ucp_get_nbx");
        }
        break;
      }
      default: break;
    }
  }

  // A request whose completion finishes the op.
  bool track(op& o, uint64_t id, ucs_status_ptr_t r, const char* what) {
    if (r == nullptr) {
      finish(o, status::ok());
      maybe_free(id);
      return true;
    }
    if (UCS_PTR_IS_ERR(r)) {
      finish(o, ucs_error(what, UCS_PTR_STATUS(r)));
      maybe_free(id);
      return false;
    }
    o.pending_requests++;
    return true;
  }
  // A request whose completion does not finish the op (an ack or a flush will).
  bool track_keep(op& o, uint64_t id, ucs_status_ptr_t r, const char* what) {
    if (r == nullptr) return true;
    if (UCS_PTR_IS_ERR(r)) {
      finish(o, ucs_error(what, UCS_PTR_STATUS(r)));
      maybe_free(id);
      return false;
    }
    o.pending_requests++;
    return true;
  }

  // user_data is the op: it stays in ops_ while a request references it, and UCX calls
  // back on the owner thread, the only one touching ops_.
  static void on_send_done(void* request, ucs_status_t st, void* user_data) {
    op& o = *static_cast<op*>(user_data);
    ucx_endpoint* self = o.self;
    uint64_t id = o.id;
    ucp_request_free(request);
    o.pending_requests--;
    self->finish(o, st == UCS_OK ? status::ok() : ucs_error("ucx", st));
    self->maybe_free(id);
  }

  static void on_request_done_keep(void* request, ucs_status_t st, void* user_data) {
    op& o = *static_cast<op*>(user_data);
    ucx_endpoint* self = o.self;
    uint64_t id = o.id;
    ucp_request_free(request);
    o.pending_requests--;
    if (st != UCS_OK) self->finish(o, ucs_error("ucx", st));
    self->maybe_free(id);
  }

  status start_rma(op_kind kind, const remote_region& r, uint64_t offset, void* local,
                   size_t length, op_options opts) {
    if (status s = peer_status(r.peer); !s) return s;
    {
      std::lock_guard<std::mutex> lock(pstate_mu_);
      auto it = import_len_.find(r.id);
      if (it == import_len_.end() || it->second.first != r.peer)
        return {errc::invalid_argument, "remote region not imported"};
      if (offset > it->second.second || length > it->second.second - offset)
        return {errc::out_of_range, "[" + std::to_string(offset) + ", +" +
                                        std::to_string(length) + ") outside the " +
                                        std::to_string(it->second.second) + "-byte remote region"};
    }
    if (status s = acquire_slot(r.peer); !s) return s;
    auto o = make_op();
    o->kind = kind;
    o->peer = r.peer;
    o->timeout = opts.timeout.count() > 0 ? opts.timeout : std::chrono::nanoseconds(opts_.op_timeout);
    o->done = std::move(opts.on_done);
    o->holds_slot = true;
    o->local = local;
    o->length = length;
    o->remote_addr = offset;
    o->import_id = r.id;
    post_op(std::move(o));
    return status::ok();
  }

  void scan_deadlines(fabric_clock::time_point now) {
    std::vector<uint64_t> expired;
    for (auto& [id, o] : ops_)
      if (!o->finished && now > o->deadline) expired.push_back(id);
    for (uint64_t id : expired) {
      auto it = ops_.find(id);
      if (it == ops_.end()) continue;
      finish(*it->second, status{errc::timeout, "deadline passed (node " +
                                                    std::to_string(it->second->peer) + ")"});
      maybe_free(id);
    }
  }

  // connect / peers ------------------------------------------------------------------
  void start_connect(node_id peer, const std::vector<uint8_t>& address,
                     fabric_clock::time_point deadline,
                     std::shared_ptr<std::promise<status>> result) {
    if (auto it = peers_.find(peer); it != peers_.end()) close_ep(*it->second);
    auto rec = std::make_unique<peer_rec>();
    rec->id = peer;
    rec->self = this;
    ucp_ep_params_t ep{};
    ep.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                    UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep.address = reinterpret_cast<const ucp_address_t*>(address.data());
    ep.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    ep.err_handler.cb = &ucx_endpoint::on_ep_error;
    ep.err_handler.arg = rec.get();
    ucs_status_t st = ucp_ep_create(worker_, &ep, &rec->ep);
    if (st != UCS_OK) {
      result->set_value(ucs_error("ucp_ep_create", st));
      return;
    }
    rec->up = true;
    // Diagnostics: which UCX lanes and protocols this endpoint uses.
    if (std::getenv("PNMKV_UCX_EP_INFO")) ucp_ep_print_info(rec->ep, stderr);
    peer_rec* raw = rec.get();
    peers_[peer] = std::move(rec);
    // Flush so that wire-up is complete when connect() returns.
    auto fl = std::make_unique<op>();
    fl->kind = op_kind::flush;
    fl->peer = peer;
    fl->deadline = deadline;
    fl->done = [result](status s) { result->set_value(std::move(s)); };
    op& o = *fl;
    uint64_t id = adopt(std::move(fl));
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &ucx_endpoint::on_send_done;
    p.user_data = &o;
    o.ep = raw->ep;
    track(o, id, ucp_ep_flush_nbx(raw->ep, &p), "ucp_ep_flush_nbx(connect)");
  }

  static void on_ep_error(void* arg, ucp_ep_h, ucs_status_t st) {
    auto* rec = static_cast<peer_rec*>(arg);
    // Called from within progress: defer closing to after ucp_worker_progress returns.
    rec->self->deferred_down_.push_back({rec->id, st});
  }

  void close_ep(peer_rec& rec) {
    if (!rec.ep) return;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = UCP_EP_CLOSE_FLAG_FORCE;
    ucs_status_ptr_t r = ucp_ep_close_nbx(rec.ep, &p);
    if (UCS_PTR_IS_PTR(r)) closing_.push_back(r);
    rec.ep = nullptr;
    rec.up = false;
  }

  // Fails every operation on `peer`, closes its endpoint, optionally reports peer_down.
  void fail_peer(node_id peer, status why, bool report) {
    std::vector<uint64_t> ids;
    for (auto& [id, o] : ops_)
      if (o->peer == peer && !o->finished) ids.push_back(id);
    for (uint64_t id : ids) {
      auto it = ops_.find(id);
      if (it != ops_.end()) finish(*it->second, why);
    }
    for (auto it = imports_.begin(); it != imports_.end();) {
      if (it->second.peer == peer) {
        if (it->second.rkey) ucp_rkey_destroy(it->second.rkey);
        it = imports_.erase(it);
      } else {
        ++it;
      }
    }
    auto it = peers_.find(peer);
    if (it != peers_.end()) {
      close_ep(*it->second);
      retired_peers_.push_back(std::move(it->second));  // UCX may still hold its arg
      peers_.erase(it);
    }
    for (uint64_t id : ids) maybe_free(id);
    if (report) {
      {
        std::lock_guard<std::mutex> lock(pstate_mu_);
        if (pstate_.count(peer)) pstate_[peer] = peer_down;
      }
      emit_peer_down(peer, std::move(why));
    }
  }

  size_t process_deferred() {
    size_t n = 0;
    while (!deferred_down_.empty()) {
      auto [peer, st] = deferred_down_.front();
      deferred_down_.erase(deferred_down_.begin());
      if (peers_.count(peer))
        fail_peer(peer, status{errc::peer_down, std::string("endpoint error: ") +
                                                    ucs_status_string(st)}, true);
      ++n;
    }
    if (!deferred_rndv_.empty()) {
      std::vector<std::unique_ptr<rndv_recv>> batch;
      batch.swap(deferred_rndv_);
      for (auto& r : batch) start_rndv(std::move(r));
      n += batch.size();
    }
    if (!closing_.empty()) {
      for (auto it = closing_.begin(); it != closing_.end();) {
        if (ucp_request_check_status(*it) != UCS_INPROGRESS) {
          ucp_request_free(*it);
          it = closing_.erase(it);
        } else {
          ++it;
        }
      }
    }
    return n;
  }

  // receive side ---------------------------------------------------------------------
  static ucs_status_t on_am_msg(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
    auto* self = static_cast<ucx_endpoint*>(arg);
    if (header_length != sizeof(frame_header) || length > self->opts_.max_message_bytes) {
      self->c_.bad_frames++;
      detail::warn_once("ucx_bad_frame", "dropped active message with a bad frame header or "
                                         "over fabric.max_message_bytes");
      return (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) ? UCS_ERR_MESSAGE_TRUNCATED
                                                              : UCS_OK;
    }
    frame_header h;
    std::memcpy(&h, header, sizeof h);
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
      auto r = std::make_unique<rndv_recv>();
      r->kind = rndv_recv::what::msg;
      r->hdr = h;
      r->desc = data;
      r->length = length;
      r->self = self;
      self->deferred_rndv_.push_back(std::move(r));
      return UCS_INPROGRESS;
    }
    const auto* p = static_cast<const uint8_t*>(data);
    (void)self->on_frame(h, std::vector<uint8_t>(p, p + length));
    return UCS_OK;
  }

  void start_rndv(std::unique_ptr<rndv_recv> r) {
    void* target = nullptr;
    if (r->kind == rndv_recv::what::msg) {
      r->buf.resize(r->length);
      target = r->buf.data();
    } else if (r->kind == rndv_recv::what::put) {
      auto it = regions_.find(r->rhdr.region);
      if (it == regions_.end()) {  // deregistered meanwhile
        ucp_am_data_release(worker_, r->desc);
        send_ack(am_put_ack, r->src, r->rhdr.op_id, errc::invalid_argument, nullptr, 0);
        return;
      }
      target = it->second.base + r->rhdr.offset;
    } else {
      auto it = ops_.find(r->op_id);
      if (it == ops_.end() || it->second->finished) {  // timed out: do not touch user memory
        ucp_am_data_release(worker_, r->desc);
        return;
      }
      target = it->second->local;
    }
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = &ucx_endpoint::on_rndv_done;
    rndv_recv* raw = r.get();
    p.user_data = raw;
    ucs_status_ptr_t st = ucp_am_recv_data_nbx(worker_, r->desc, target, r->length, &p);
    if (st == nullptr) {
      rndv_complete(std::move(r), UCS_OK);
    } else if (UCS_PTR_IS_ERR(st)) {
      rndv_complete(std::move(r), UCS_PTR_STATUS(st));
    } else {
      r.release();  // owned by the request until on_rndv_done
    }
  }

  static void on_rndv_done(void* request, ucs_status_t st, size_t, void* user_data) {
    std::unique_ptr<rndv_recv> r(static_cast<rndv_recv*>(user_data));
    ucp_request_free(request);
    r->self->rndv_complete(std::move(r), st);
  }

  void rndv_complete(std::unique_ptr<rndv_recv> r, ucs_status_t st) {
    switch (r->kind) {
      case rndv_recv::what::msg:
        if (st == UCS_OK) (void)on_frame(r->hdr, std::move(r->buf));
        break;
      case rndv_recv::what::put:
        send_ack(am_put_ack, r->src, r->rhdr.op_id, st == UCS_OK ? errc::ok : errc::io, nullptr, 0);
        break;
      case rndv_recv::what::get_rep: {
        auto it = ops_.find(r->op_id);
        if (it == ops_.end()) break;
        finish(*it->second, st == UCS_OK ? status::ok() : ucs_error("get reply", st));
        maybe_free(r->op_id);
        break;
      }
    }
  }

  // Checks an incoming RMA request against the region table.
  errc check_rma(const rma_header& h, size_t data_length, bool is_put) {
    auto it = regions_.find(h.region);
    if (it == regions_.end() || it->second.token != h.token) return errc::invalid_argument;
    if (h.offset > it->second.length || h.length > it->second.length - h.offset)
      return errc::out_of_range;
    if (is_put && data_length != h.length) return errc::shape_mismatch;
    return errc::ok;
  }

  static ucs_status_t on_am_put(void* arg, const void* header, size_t header_length, void* data,
                                size_t length, const ucp_am_recv_param_t* param) {
    auto* self = static_cast<ucx_endpoint*>(arg);
    bool rndv = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;
    if (header_length != sizeof(rma_header)) {
      self->c_.bad_frames++;
      return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
    }
    rma_header h;
    std::memcpy(&h, header, sizeof h);
    errc e = self->check_rma(h, length, true);
    if (e != errc::ok) {
      detail::warn_once("ucx_bad_put", "refused a remote put outside a registered region");
      self->send_ack(am_put_ack, h.src, h.op_id, e, nullptr, 0);
      return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
    }
    if (rndv) {
      auto r = std::make_unique<rndv_recv>();
      r->kind = rndv_recv::what::put;
      r->rhdr = h;
      r->desc = data;
      r->length = length;
      r->self = self;
      r->src = h.src;
      self->deferred_rndv_.push_back(std::move(r));
      return UCS_INPROGRESS;
    }
    std::memcpy(self->regions_[h.region].base + h.offset, data, length);
    self->send_ack(am_put_ack, h.src, h.op_id, errc::ok, nullptr, 0);
    return UCS_OK;
  }

  static ucs_status_t on_am_get_req(void* arg, const void* header, size_t header_length, void*,
                                    size_t, const ucp_am_recv_param_t*) {
    auto* self = static_cast<ucx_endpoint*>(arg);
    if (header_length != sizeof(rma_header)) {
      self->c_.bad_frames++;
      return UCS_OK;
    }
    rma_header h;
    std::memcpy(&h, header, sizeof h);
    errc e = self->check_rma(h, 0, false);
    if (e != errc::ok) {
      self->send_ack(am_get_rep, h.src, h.op_id, e, nullptr, 0);
      return UCS_OK;
    }
    self->send_ack(am_get_rep, h.src, h.op_id, errc::ok,
                   self->regions_[h.region].base + h.offset, h.length);
    return UCS_OK;
  }

  static ucs_status_t on_am_ack(void* arg, const void* header, size_t header_length, void*,
                                size_t, const ucp_am_recv_param_t*) {
    auto* self = static_cast<ucx_endpoint*>(arg);
    if (header_length != sizeof(ack_header)) return UCS_OK;
    ack_header h;
    std::memcpy(&h, header, sizeof h);
    auto it = self->ops_.find(h.op_id);
    if (it == self->ops_.end()) return UCS_OK;
    auto code = static_cast<errc>(h.status);
    self->finish(*it->second, code == errc::ok
                                  ? status::ok()
                                  : status{code, "remote refused the put"});
    self->maybe_free(h.op_id);
    return UCS_OK;
  }

  static ucs_status_t on_am_get_rep(void* arg, const void* header, size_t header_length,
                                    void* data, size_t length, const ucp_am_recv_param_t* param) {
    auto* self = static_cast<ucx_endpoint*>(arg);
    bool rndv = param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV;
    if (header_length != sizeof(ack_header)) return rndv ? UCS_ERR_INVALID_PARAM : UCS_OK;
    ack_header h;
    std::memcpy(&h, header, sizeof h);
    auto it = self->ops_.find(h.op_id);
    if (it == self->ops_.end() || it->second->finished || it->second->kind != op_kind::get)
      return rndv ? UCS_ERR_CANCELED : UCS_OK;
    op& o = *it->second;
    auto code = static_cast<errc>(h.status);
    if (code != errc::ok || length != o.length) {
      self->finish(o, code != errc::ok ? status{code, "remote refused the get"}
                                       : status{errc::shape_mismatch, "get reply length"});
      self->maybe_free(h.op_id);
      return rndv ? UCS_ERR_CANCELED : UCS_OK;
    }
    if (rndv) {
      auto r = std::make_unique<rndv_recv>();
      r->kind = rndv_recv::what::get_rep;
      r->op_id = h.op_id;
      r->desc = data;
      r->length = length;
      r->self = self;
      self->deferred_rndv_.push_back(std::move(r));
      return UCS_INPROGRESS;
    }
    std::memcpy(o.local, data, length);
    self->finish(o, status::ok());
    self->maybe_free(h.op_id);
    return UCS_OK;
  }

  // Sends an ack (or a get reply with `data`) to `peer`; fire and forget.
  void send_ack(unsigned id, node_id peer, uint64_t op_id, errc code, const void* data,
                size_t length) {
    ucp_ep_h ep = ep_of(peer);
    if (!ep) {
      detail::warn_once("ucx_no_reply_ep", "cannot answer an RMA request from node " +
                                               std::to_string(peer) +
                                               ": not connected to it (connect both ways)");
      return;
    }
    auto* h = new ack_header{op_id, static_cast<int32_t>(code), 0};
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = [](void* request, ucs_status_t, void* user_data) {
      delete static_cast<ack_header*>(user_data);
      ucp_request_free(request);
    };
    p.user_data = h;
    ucs_status_ptr_t r = ucp_am_send_nbx(ep, id, h, sizeof *h, data, length, &p);
    if (!UCS_PTR_IS_PTR(r)) delete h;
  }

  // regions --------------------------------------------------------------------------
  // base == nullptr: UCX allocates (shared-memory segment when it can).
  result<local_region> do_register(void* base, size_t length) {
    ucp_mem_map_params_t mp{};
    mp.field_mask = UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH |
                    UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    mp.address = base;
    mp.length = length;
    mp.flags = base ? 0 : UCP_MEM_MAP_ALLOCATE;
    region_rec rec;
    rec.token = token_rng_();
    if (ucs_status_t st = ucp_mem_map(ctx_, &mp, &rec.memh); st != UCS_OK)
      return ucs_error("ucp_mem_map", st);
    if (!base) {
      ucp_mem_attr_t attr{};
      attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
      if (ucs_status_t st = ucp_mem_query(rec.memh, &attr); st != UCS_OK) {
        ucp_mem_unmap(ctx_, rec.memh);
        return ucs_error("ucp_mem_query", st);
      }
      base = attr.address;
      std::memset(base, 0, length);
    }
    rec.base = static_cast<uint8_t*>(base);
    rec.length = length;
    void* rkey_buf = nullptr;
    size_t rkey_len = 0;
    if (ucs_status_t st = ucp_rkey_pack(ctx_, rec.memh, &rkey_buf, &rkey_len); st != UCS_OK) {
      ucp_mem_unmap(ctx_, rec.memh);
      return ucs_error("ucp_rkey_pack", st);
    }
    local_region r;
    r.id = next_region_++;
    r.base = base;
    r.length = length;
    auto put64 = [&](uint64_t v) {
      uint8_t b[8];
      std::memcpy(b, &v, 8);
      r.remote_key.insert(r.remote_key.end(), b, b + 8);
    };
    put64(key_magic);
    put64(r.id);
    put64(reinterpret_cast<uint64_t>(base));
    put64(length);
    put64(rec.token);
    put64(rkey_len);
    auto* kb = static_cast<uint8_t*>(rkey_buf);
    r.remote_key.insert(r.remote_key.end(), kb, kb + rkey_len);
    ucp_rkey_buffer_release(rkey_buf);
    regions_[r.id] = rec;
    return r;
  }

  result<remote_region> do_import(node_id peer, const std::vector<uint8_t>& key) {
    auto get64 = [&](size_t i) {
      uint64_t v;
      std::memcpy(&v, key.data() + 8 * i, 8);
      return v;
    };
    if (key.size() < 48 || get64(0) != key_magic || get64(5) != key.size() - 48)
      return status{errc::invalid_argument, "not a UCX fabric remote key"};
    ucp_ep_h ep = ep_of(peer);
    if (!ep) return status{errc::peer_down, "node " + std::to_string(peer) + " is down"};
    import_rec rec{peer, get64(1), get64(4), get64(2), get64(3), nullptr};
    if (!rma_am_) {
      ucs_status_t st = ucp_ep_rkey_unpack(ep, key.data() + 48, &rec.rkey);
      if (st != UCS_OK) return ucs_error("ucp_ep_rkey_unpack", st);
    }
    remote_region r;
    r.peer = peer;
    r.id = next_import_++;
    r.length = rec.length;
    imports_[r.id] = rec;
    return r;
  }

  // shutdown -------------------------------------------------------------------------
  void shutdown() {
    if (!worker_) return;
    if (u_.progress_thread) {
      stop_.store(true, std::memory_order_release);
      sleeping_.store(true);
      poke();
      if (thread_.joinable()) thread_.join();
    } else {
      stop_ = true;
      final_cleanup();
    }
    if (worker_) ucp_worker_destroy(worker_);
    worker_ = nullptr;
    if (ctx_) ucp_cleanup(ctx_);
    ctx_ = nullptr;
    if (evfd_ >= 0) ::close(evfd_);
    if (epfd_ >= 0) ::close(epfd_);
  }

  // On the owner thread: run what was posted, fail what is left, close endpoints.
  void final_cleanup() {
    std::vector<std::function<void()>> batch;
    {
      std::lock_guard<std::mutex> lock(posted_mu_);
      batch.swap(posted_);
    }
    for (auto& fn : batch) fn();
    std::vector<node_id> ids;
    for (auto& [id, rec] : peers_) ids.push_back(id);
    for (node_id id : ids) fail_peer(id, status{errc::peer_down, "fabric shut down"}, false);
    for (auto& [id, o] : ops_) finish(*o, status{errc::peer_down, "fabric shut down"});
    auto until = fabric_clock::now() + std::chrono::seconds(1);
    while ((!closing_.empty() || !ops_.empty()) && fabric_clock::now() < until) {
      ucp_worker_progress(worker_);
      process_deferred();
      for (auto it = ops_.begin(); it != ops_.end();)
        it = it->second->pending_requests == 0 ? ops_.erase(it) : std::next(it);
    }
    for (auto& [id, imp] : imports_)
      if (imp.rkey) ucp_rkey_destroy(imp.rkey);
    imports_.clear();
    for (auto& [id, reg] : regions_) ucp_mem_unmap(ctx_, reg.memh);
    regions_.clear();
    // Requests still open now are abandoned; ucp_worker_destroy reclaims them.
    ops_.clear();
    run_timers(fabric_clock::time_point::max());
  }

 private:
  ucx_options u_;
  bool rma_am_ = false;
  bool wakeup_ = true;
  ucp_context_h ctx_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  std::vector<uint8_t> address_;
  int evfd_ = -1;
  int epfd_ = -1;

  std::thread thread_;
  std::thread::id owner_;
  std::atomic<bool> owner_set_{false};
  std::condition_variable owner_cv_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> sleeping_{false};
  std::mutex posted_mu_;
  std::vector<std::function<void()>> posted_;
  std::atomic<bool> posted_nonempty_{false};
  fabric_clock::time_point last_activity_ = fabric_clock::now();
  fabric_clock::time_point cached_now_ = fabric_clock::now();  // owner's last clock read
  unsigned rounds_ = 0;
  bool active_ = false;
  fabric_clock::time_point next_deadline_scan_ = fabric_clock::now();

  // Thread-safe view of peers for peer_status() and RMA bounds.
  mutable std::mutex pstate_mu_;
  std::map<node_id, pstate_t> pstate_;
  std::map<uint64_t, std::pair<node_id, uint64_t>> import_len_;

  // Owner-thread state.
  std::map<node_id, std::unique_ptr<peer_rec>> peers_;
  std::vector<std::unique_ptr<peer_rec>> retired_peers_;
  std::unordered_map<uint64_t, std::unique_ptr<op>> ops_;
  std::vector<std::unique_ptr<op>> op_pool_;
  uint64_t next_op_id_ = 1;
  std::map<uint64_t, region_rec> regions_;
  uint64_t next_region_ = 1;
  std::map<uint64_t, import_rec> imports_;
  uint64_t next_import_ = 1;
  std::vector<std::pair<node_id, ucs_status_t>> deferred_down_;
  std::vector<std::unique_ptr<rndv_recv>> deferred_rndv_;
  std::vector<void*> closing_;
  std::mt19937_64 token_rng_;
};

result<std::unique_ptr<fabric>> make_ucx_fabric(const fabric_options& opts,
                                                const ucx_options& ucx) {
  std::shared_ptr<fault_injector> faults;
  if (!opts.faults.empty()) {
    auto f = fault_injector::make(opts.faults, opts.self);
    if (!f) return f.error();
    faults = std::move(f).value();
  }
  auto ep = std::make_unique<ucx_endpoint>(opts, ucx, std::move(faults));
  if (status s = ep->init(); !s) return s;
  return std::unique_ptr<fabric>(std::move(ep));
}

}  // namespace pnmkv::transport
