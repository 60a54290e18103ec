// The CAF actors of a cluster (see nodes.hpp). Control plane: CAF messages whose payload is
// Cap'n Proto bytes (control.capnp, wire.capnp join/membership). Data plane: the fabric
// (in-process or UCX) carrying wire.capnp bytes; its events arrive in the mailbox through
// bridge_fabric(). The engines (device_engine, host_engine) do the work; the actors move
// bytes, keep virtual clocks, and enforce deadlines and limits.
#include "actors/nodes.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <deque>
#include <limits>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "actors/control.hpp"
#include "sim/step_model.hpp"
#include "actors/run_report.hpp"
#include "schedulers/head_groups.hpp"
#include "transport/auth.hpp"
#include "transport/from_config.hpp"
#include "transport/messages.hpp"

namespace pnmkv::actors {

namespace tp = pnmkv::transport;
using steady = std::chrono::steady_clock;

namespace {

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto existing = spdlog::get("cluster");
    if (existing) return existing;
    auto made = spdlog::stderr_color_mt("cluster");
    return made;
  }();
  return *l;
}

std::string to_str(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

template <class Body>
std::string wire_bytes(uint32_t sender, Body body) {
  tp::envelope env;
  env.sender = sender;
  return to_str(tp::encode(env, std::move(body)));
}

std::string ctl(uint32_t sender, control::control_body body) {
  return control::encode(control::control_message{sender, std::move(body)});
}

tp::shard_info to_wire(const shard_placement& s) {
  tp::shard_info w;
  w.shard_id = s.shard_id;
  w.device = s.device_id;
  w.kv_head0 = s.kv_head_begin;
  w.kv_head1 = s.kv_head_end;
  w.split = s.split;
  if (s.split == sequence_split::interleave) {
    w.stride = s.sequence_shards;
    w.cls = s.sequence_index;
  } else {
    w.page0 = static_cast<uint32_t>(s.page_begin);
    w.page1 = static_cast<uint32_t>(s.page_end);
  }
  w.replicas = s.replica_device_ids;
  w.pages_held = s.pages_held;
  w.sequence_index = s.sequence_index;
  w.sequence_shards = s.sequence_shards;
  w.bytes_modelled = s.bytes_modelled;
  return w;
}

shard_placement from_wire(const tp::shard_info& w) {
  shard_placement s;
  s.shard_id = w.shard_id;
  s.device_id = w.device;
  s.kv_head_begin = w.kv_head0;
  s.kv_head_end = w.kv_head1;
  s.split = w.split;
  s.page_begin = w.split == sequence_split::contiguous ? w.page0 : 0;
  s.page_end = w.split == sequence_split::contiguous ? w.page1 : 0;
  s.sequence_index = w.sequence_index;
  s.sequence_shards = std::max<uint32_t>(1, w.sequence_shards);
  s.pages_held = w.pages_held;
  s.bytes_modelled = w.bytes_modelled;
  s.replica_device_ids = w.replicas;
  return s;
}

request_placement placement_from_wire(const tp::placement_info& p) {
  request_placement r;
  r.request_id = p.request_id;
  for (const auto& s : p.shards) r.shards.push_back(from_wire(s));
  std::sort(r.shards.begin(), r.shards.end(),
            [](const auto& a, const auto& b) { return a.shard_id < b.shard_id; });
  uint32_t groups = 0;
  for (const auto& s : r.shards) groups = std::max(groups, s.kv_head_end);
  r.sequence_shards = r.shards.empty() ? 1 : r.shards.front().sequence_shards;
  r.head_groups = r.shards.empty() ? 1 : uint32_t(r.shards.size()) / r.sequence_shards;
  return r;
}

tp::placement_info placement_to_wire(const request_placement& p) {
  tp::placement_info w;
  w.request_id = p.request_id;
  for (const auto& s : p.shards) w.shards.push_back(to_wire(s));
  return w;
}

// Join protocol shared by devices and the GPU host: hello -> challenge -> signed join -> ack.
void start_join(caf::event_based_actor* self, const caf::actor& coordinator, uint32_t node,
                tp::node_role role) {
  self->send(coordinator, ctl_atom::value,
             ctl(node, control::hello_msg{node, static_cast<uint8_t>(role)}));
}

// Handles a join-protocol message addressed to a member; true when it was one.
bool on_join_bytes(caf::event_based_actor* self, const run_setup& setup,
                   const caf::actor& coordinator, uint32_t node, tp::node_role role,
                   const std::vector<uint8_t>& address, const std::string& bytes) {
  tp::wire_limits limits;
  auto m = tp::decode(bytes.data(), bytes.size(), limits);
  if (!m) {
    log().warn("node={} event=bad_join_message reason=\"{}\"", node, m.error().to_string());
    return true;
  }
  if (auto* ch = std::get_if<tp::challenge_msg>(&m->body)) {
    tp::join_msg j;
    j.node = node;
    j.role = role;
    j.worker_address = address;
    tp::sign_join(setup.secret, ch->nonce, j);
    self->send(coordinator, join_atom::value, wire_bytes(node, std::move(j)));
    return true;
  }
  if (auto* ack = std::get_if<tp::join_ack_msg>(&m->body)) {
    if (!ack->accepted) {
      log().error("node={} event=join_refused reason=\"{}\"", node, ack->reason);
      self->quit();
    }
    return true;
  }
  return false;
}

}  // namespace

result<tp::fabric_options> node_fabric_options(const run_setup& setup, uint32_t node) {
  auto fo = tp::fabric_options_from(setup.cfg, node);
  if (!fo) return fo.error();
  // The fabric's link model (pacing, statistics) uses the same hardware figures as the
  // cost model: effective bandwidth = raw × efficiency.
  const auto& c = setup.hw.cxl;
  fo->link.latency_ns = c.memory_latency_ns;
  fo->link.bw_gbps_h2d = c.link_bw_gbps_per_direction * c.link_efficiency;
  fo->link.bw_gbps_d2h = c.link_bw_gbps_per_direction * c.link_efficiency;
  fo->link.switch_hops = static_cast<uint32_t>(c.switch_hops);
  fo->link.hop_latency_ns = c.switch_hop_ns;
  return fo;
}

void bridge_fabric(tp::fabric& fab, const caf::actor& target) {
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(target);
  fab.set_handler([weak](tp::fabric_event&& ev) {
    auto hdl = caf::actor_cast<caf::actor>(weak);
    if (!hdl) return;
    if (ev.kind == tp::fabric_event_kind::message)
      caf::anon_send(hdl, wire_atom::value, std::move(ev.bytes));
    else
      caf::anon_send(hdl, peer_down_atom::value, ev.peer);
  });
}

// ---------------------------------------------------------------------------------------
// coordinator

namespace {
struct member {
  tp::node_role role;
  caf::actor hdl;
  std::vector<uint8_t> address;
};

struct coordinator_state {
  std::map<uint32_t, std::vector<uint8_t>> nonces;
  std::map<uint32_t, member> members;
  bool ready = false;
  caf::actor driver;
  std::deque<control::request_spec_msg> queue;
  std::vector<pool_state> pools;  // modelled capacity (512 GB devices), data parallel
  std::map<uint32_t, uint64_t> emulator_free;  // live-layer bytes a device may still take
  std::map<uint64_t, request_placement> placed;
  std::map<uint64_t, control::request_spec_msg> specs;
  std::map<uint64_t, std::set<uint32_t>> awaiting_acks;
  std::vector<uint64_t> ready_requests;
  uint32_t decided = 0;
  bool started = false;
  // A result for a driver that has not submitted yet (a member went down early).
  std::string undelivered_result;
  std::vector<control::request_spec_msg> open_specs;  // open workloads: every submitted request
};
}  // namespace

caf::behavior coordinator_actor(caf::event_based_actor* self,
                                std::shared_ptr<const run_setup> setup) {
  auto st = std::make_shared<coordinator_state>();
  // Pools of cluster.pool_devices devices serve different requests (data parallel).
  const auto ids = setup->device_ids();
  const uint32_t per_pool = setup->pool_devices ? setup->pool_devices : uint32_t(ids.size());
  const double capacity = setup->host.mode == run_mode::baseline ? setup->hw.expander.capacity_bytes
                                                                   : setup->hw.pnm.capacity_bytes;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i % per_pool == 0) st->pools.emplace_back();
    st->pools.back().device_ids.push_back(ids[i]);
    st->pools.back().free_bytes.push_back(static_cast<uint64_t>(capacity));
    st->pools.back().failure_domain.push_back(ids[i]);
    st->emulator_free[ids[i]] = setup->device.memory_bytes_max;
  }
  const uint32_t self_id = coordinator_node;

  auto membership_bytes = [=](const std::vector<uint64_t>& requests) {
    tp::membership_msg mm;
    mm.epoch = 1;
    for (const auto& [id, m] : st->members)
      mm.members.push_back(tp::member_info{id, m.role, true, m.address});
    for (uint64_t r : requests) mm.placements.push_back(placement_to_wire(st->placed.at(r)));
    return wire_bytes(self_id, std::move(mm));
  };

  auto decide = [=](uint64_t request_id, bool accepted, const std::string& reason) {
    if (setup->open_workload()) {
      // The GPU host asked; it gets the answer (after the placement, on the same channel).
      auto host = st->members.find(gpu_host_node);
      if (host == st->members.end()) return;
      if (accepted) self->send(host->second.hdl, member_atom::value, membership_bytes({request_id}));
      else log().info("event=not_admitted request={} reason=\"{}\"", request_id, reason);
      self->send(host->second.hdl, ctl_atom::value,
                 ctl(self_id, control::admission_msg{request_id, accepted, reason}));
      return;
    }
    ++st->decided;
    if (accepted) st->ready_requests.push_back(request_id);
    if (!accepted)
      log().warn("event=request_refused request={} reason=\"{}\"", request_id, reason);
    self->send(st->driver, ctl_atom::value,
               ctl(self_id, control::admission_msg{request_id, accepted, reason}));
    if (st->decided == setup->batch && !st->started) {
      st->started = true;
      control::run_start_msg rs;
      for (uint64_t r : st->ready_requests) rs.requests.push_back(st->specs.at(r));
      auto host = st->members.find(gpu_host_node);
      if (host == st->members.end()) return;
      self->send(host->second.hdl, member_atom::value, membership_bytes(st->ready_requests));
      self->send(host->second.hdl, ctl_atom::value, ctl(self_id, std::move(rs)));
    }
  };

  // Admission of one request: GPU memory, then a pool that can hold it, then the
  // emulator's real memory. "" when it is placed (membership sent, acks awaited), else why
  // it cannot be admitted now.
  auto admit_one = [=](const control::request_spec_msg& spec) -> std::string {
    {
      st->specs[spec.request_id] = spec;
      // GPU memory first: weights, activations and the mode's KV-side buffers for the
      // batch with this request in it (schedulers/gpu_memory.hpp).
      {
        gpu_memory_query q = setup->gpu_query;
        q.batch = static_cast<uint32_t>(st->placed.size() + 1);
        if (setup->open_workload()) q.context_tokens = 0;
        // Requests of different lengths (open workloads): sized as the longest of them.
        q.context_tokens = std::max<uint64_t>(q.context_tokens, spec.context_tokens + spec.steps);
        for (const auto& [id, other] : st->placed)
          if (st->specs.count(id))
            q.context_tokens = std::max<uint64_t>(q.context_tokens, st->specs.at(id).context_tokens + st->specs.at(id).steps);
        auto use = gpu_memory(setup->model, setup->hw, q);
        if (!use.fits()) {
          char buf[256];
          std::snprintf(buf, sizeof buf,
                        "GPU memory: a batch of %u in %s mode needs %.1f GB of %.1f GB "
                        "(weights %.1f, summaries %.1f, recall buffers %.1f, steady %.1f)",
                        q.batch, setup->mode.c_str(), use.total_bytes() / 1e9,
                        use.capacity_bytes / 1e9, use.weights_bytes / 1e9,
                        use.summaries_bytes / 1e9, use.recall_bytes / 1e9, use.steady_bytes / 1e9);
          return "request " + std::to_string(spec.request_id) + " not admitted: " + buf;
        }
      }
      placement_request pr = setup->placement;
      pr.request_id = spec.request_id;
      pr.context_tokens = spec.context_tokens;
      pr.decode_tokens = spec.steps;
      // The pool with the most free capacity first; the first that can hold it takes it.
      std::vector<size_t> order(st->pools.size());
      for (size_t i = 0; i < order.size(); ++i) order[i] = i;
      auto free_of = [&](size_t i) {
        uint64_t f = 0;
        for (uint64_t b : st->pools[i].free_bytes) f += b;
        return f;
      };
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return free_of(a) > free_of(b); });
      result<request_placement> pl = status{errc::capacity, "no pool"};
      pool_state trial;
      size_t chosen = 0;
      for (size_t i : order) {
        trial = st->pools[i];
        if (setup->placement.head_groups == 0) {
          // h × s from the cost model for this pool and context.
          head_group_query hq;
          hq.pool_devices = static_cast<uint32_t>(trial.device_ids.size() / setup->replication);
          hq.context_tokens = spec.context_tokens + spec.steps;
          hq.budget_tokens = setup->host.budget_tokens;
          hq.page_size_tokens = setup->host.page_size_tokens;
          hq.summary_elem_bytes = setup->placement.summary_elem_bytes;
          hq.cross_shard = setup->host.cross_shard;
          pr.head_groups = choose_head_groups(*setup->costs, hq).head_groups;
        }
        pl = place_request(pr, trial);
        if (pl) {
          chosen = i;
          break;
        }
      }
      if (!pl) return pl.error().message();
      // The emulator holds the live layers for real: check that too before committing.
      const std::map<uint32_t, uint64_t> live_need =
          live_bytes_by_device(*pl, setup->model.layers, setup->device.live_layers);
      std::string too_big;
      for (const auto& [dev, need] : live_need)
        if (need > st->emulator_free[dev])
          too_big = "request " + std::to_string(spec.request_id) + " does not fit the emulator: device " +
                    std::to_string(dev) + " would hold " + std::to_string(need) +
                    " bytes of live layers, " + std::to_string(st->emulator_free[dev]) +
                    " left of cluster.device_memory_bytes_max";
      if (!too_big.empty()) return too_big;
      st->pools[chosen] = trial;
      for (const auto& [dev, need] : live_need) st->emulator_free[dev] -= need;
      st->placed.emplace(spec.request_id, *pl);
      auto& waiting = st->awaiting_acks[spec.request_id];
      for (const auto& s : pl->shards) {
        waiting.insert(s.device_id);
        for (uint32_t r : s.replica_device_ids) waiting.insert(r);
      }
      auto bytes = membership_bytes({spec.request_id});
      for (uint32_t dev : waiting) self->send(st->members.at(dev).hdl, member_atom::value, bytes);
    }
    return "";
  };

  // Closed workloads: every submitted request, in order, as soon as the cluster is ready.
  auto try_admit = [=] {
    if (!st->ready || !st->driver) return;
    while (!st->queue.empty()) {
      control::request_spec_msg spec = st->queue.front();
      st->queue.pop_front();
      auto why = admit_one(spec);
      if (!why.empty()) decide(spec.request_id, false, why);
    }
  };

  // Open workloads: once the cluster is ready and every request is submitted, the GPU host
  // gets them all and asks for each admission at its step boundaries (admit_msg).
  auto maybe_start_open = [=] {
    if (!setup->open_workload() || st->started || !st->ready || !st->driver ||
        st->open_specs.size() < setup->arrivals.size())
      return;
    auto host = st->members.find(gpu_host_node);
    if (host == st->members.end()) return;
    st->started = true;
    control::run_start_msg rs;
    rs.open = true;
    rs.requests = st->open_specs;
    self->send(host->second.hdl, ctl_atom::value, ctl(self_id, std::move(rs)));
  };

  // A finished request: its capacity returns to the pool and the emulator, and the devices
  // drop its shards.
  auto release = [=](uint64_t request_id) {
    auto it = st->placed.find(request_id);
    if (it == st->placed.end()) return;
    std::set<uint32_t> holders;
    for (const auto& s : it->second.shards) {
      std::vector<uint32_t> devs{s.device_id};
      devs.insert(devs.end(), s.replica_device_ids.begin(), s.replica_device_ids.end());
      for (uint32_t dev : devs) {
        holders.insert(dev);
        st->emulator_free[dev] += live_bytes(s, setup->model.layers, setup->device.live_layers);
        for (auto& pool : st->pools)
          for (size_t i = 0; i < pool.device_ids.size(); ++i)
            if (pool.device_ids[i] == dev) pool.free_bytes[i] += s.bytes_modelled;
      }
    }
    st->placed.erase(it);
    auto bytes = ctl(self_id, control::release_msg{request_id});
    for (uint32_t dev : holders) {
      auto m = st->members.find(dev);
      if (m != st->members.end()) self->send(m->second.hdl, ctl_atom::value, bytes);
    }
  };

  // A member lost (killed, hung past the heartbeat timeout, partitioned): the GPU host
  // fails the run's requests with the reason instead of waiting on them.
  self->set_down_handler([=](caf::down_msg& dm) {
    for (auto& [id, m] : st->members) {
      if (!m.hdl || m.hdl.address() != dm.source) continue;
      const std::string reason = caf::to_string(dm.reason);
      log().warn("event=member_down node={} reason={}", id, reason);
      auto host = st->members.find(gpu_host_node);
      if (id != gpu_host_node && host != st->members.end() && st->ready) {
        self->send(host->second.hdl, ctl_atom::value, ctl(self_id, control::member_down_msg{id, reason}));
        // Nothing new is placed on it; a placement still waiting for its ack is refused.
        st->emulator_free[id] = 0;
        for (auto& pool : st->pools)
          for (size_t i = 0; i < pool.device_ids.size(); ++i)
            if (pool.device_ids[i] == id) pool.free_bytes[i] = 0;
        std::vector<uint64_t> stuck;
        for (const auto& [rid, waiting] : st->awaiting_acks)
          if (waiting.count(id)) stuck.push_back(rid);
        for (uint64_t rid : stuck) {
          st->awaiting_acks.erase(rid);
          release(rid);
          decide(rid, false, "device " + std::to_string(id) + " went down while request " +
                                 std::to_string(rid) + " was being placed");
        }
        continue;
      }
      // The GPU host itself, or a device lost before the cluster was complete: nobody else
      // can fail the run, so the coordinator tells the driver (now or when it submits).
      const std::string what = id == gpu_host_node
                                   ? "the GPU host went down: " + reason
                                   : "device " + std::to_string(id) + " went down (" + reason +
                                         ") before the cluster was complete";
      auto bytes = ctl(self_id, control::run_result_msg{"", false, what});
      if (st->driver) self->send(st->driver, ctl_atom::value, bytes);
      else if (st->undelivered_result.empty()) st->undelivered_result = bytes;
    }
  });

  // Members that never join (not started, crashed while starting) fail the run by name.
  self->delayed_send(self, std::chrono::milliseconds(setup->join_timeout_ms), tick_atom::value,
                     uint64_t(0));

  return {
      [=](tick_atom, uint64_t) {
        if (st->ready) return;
        std::string missing;
        auto expect = setup->device_ids();
        expect.push_back(gpu_host_node);
        for (uint32_t id : expect)
          if (!st->members.count(id))
            missing += (missing.empty() ? "" : ", ") +
                       (id == gpu_host_node ? std::string("the GPU host") : "device " + std::to_string(id));
        const std::string what = "the cluster was not complete " + std::to_string(setup->join_timeout_ms) +
                                 " ms after the coordinator started (cluster.join_timeout_ms): missing " +
                                 missing;
        log().error("event=join_timeout missing=\"{}\"", missing);
        auto bytes = ctl(self_id, control::run_result_msg{"", false, what});
        if (st->driver) self->send(st->driver, ctl_atom::value, bytes);
        else if (st->undelivered_result.empty()) st->undelivered_result = bytes;
      },
      [=](ctl_atom, const std::string& bytes) {
        auto m = control::decode(bytes);
        if (!m) {
          log().warn("event=bad_control_message reason=\"{}\"", m.error().to_string());
          return;
        }
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (auto* h = std::get_if<control::hello_msg>(&m->body)) {
          auto nonce = tp::make_nonce();
          st->nonces[h->node] = nonce;
          self->send(sender, join_atom::value, wire_bytes(self_id, tp::challenge_msg{nonce}));
        } else if (auto* s = std::get_if<control::submit_msg>(&m->body)) {
          st->driver = sender;
          if (!st->undelivered_result.empty()) {
            self->send(st->driver, ctl_atom::value, std::exchange(st->undelivered_result, {}));
            return;
          }
          if (setup->open_workload()) {
            st->open_specs.push_back(s->request);
            maybe_start_open();
            return;
          }
          st->queue.push_back(s->request);
          try_admit();
        } else if (std::holds_alternative<control::progress_msg>(m->body) ||
                   std::holds_alternative<control::run_result_msg>(m->body)) {
          if (st->driver) self->send(st->driver, ctl_atom::value, bytes);
          else if (std::holds_alternative<control::run_result_msg>(m->body) &&
                   st->undelivered_result.empty())
            st->undelivered_result = bytes;
        } else if (std::holds_alternative<control::shutdown_msg>(m->body)) {
          // Every member quits, then the coordinator itself.
          for (const auto& [id, mem] : st->members) self->send(mem.hdl, ctl_atom::value, bytes);
          self->quit();
        } else if (auto* ad = std::get_if<control::admit_msg>(&m->body)) {
          if (!setup->open_workload() || st->placed.count(ad->request_id) ||
              st->awaiting_acks.count(ad->request_id))
            return;
          const control::request_spec_msg* spec = nullptr;
          for (const auto& r : st->open_specs)
            if (r.request_id == ad->request_id) spec = &r;
          if (!spec) {
            decide(ad->request_id, false, "request " + std::to_string(ad->request_id) + " was never submitted");
            return;
          }
          auto why = admit_one(*spec);
          if (!why.empty()) decide(ad->request_id, false, why);
        } else if (auto* rl = std::get_if<control::release_msg>(&m->body)) {
          release(rl->request_id);
        } else if (auto* a = std::get_if<control::placement_ack_msg>(&m->body)) {
          auto it = st->awaiting_acks.find(a->request_id);
          if (it == st->awaiting_acks.end()) return;
          if (!a->ok) {
            st->awaiting_acks.erase(it);
            release(a->request_id);  // what the other devices took, and the pool's capacity
            decide(a->request_id, false, a->reason);
            return;
          }
          it->second.erase(a->node);
          if (it->second.empty()) {
            st->awaiting_acks.erase(it);
            decide(a->request_id, true, "");
          }
        }
      },
      [=](join_atom, const std::string& bytes) {
        tp::wire_limits limits;
        auto m = tp::decode(bytes.data(), bytes.size(), limits);
        auto sender = caf::actor_cast<caf::actor>(self->current_sender());
        if (!m || !std::holds_alternative<tp::join_msg>(m->body)) {
          log().warn("event=join_refused reason=\"{}\"",
                     m ? "not a join message" : m.error().to_string());
          return;
        }
        const auto& j = std::get<tp::join_msg>(m->body);
        auto nonce = st->nonces.find(j.node);
        status ok = nonce == st->nonces.end()
                        ? status{errc::invalid_argument, "no challenge was issued to this node"}
                        : tp::verify_join(setup->secret, nonce->second, j);
        if (!ok) {
          log().warn("event=join_refused node={} reason=\"{}\"", j.node, ok.message());
          self->send(sender, join_atom::value,
                     wire_bytes(self_id, tp::join_ack_msg{false, j.node, 0, ok.message()}));
          return;
        }
        st->nonces.erase(nonce);
        st->members[j.node] = member{j.role, sender, j.worker_address};
        self->monitor(sender);
        self->send(sender, join_atom::value, wire_bytes(self_id, tp::join_ack_msg{true, j.node, 1, ""}));
        uint32_t devices = 0;
        bool host = false;
        for (const auto& [id, mem] : st->members) {
          devices += mem.role == tp::node_role::pnm_device;
          host = host || mem.role == tp::node_role::gpu_host;
        }
        if (!st->ready && host && devices == setup->devices) {
          st->ready = true;
          log().info("event=cluster_ready devices={}", devices);
          auto bytes2 = membership_bytes({});
          for (const auto& [id, mem] : st->members) self->send(mem.hdl, member_atom::value, bytes2);
          try_admit();
          maybe_start_open();
        }
      },
  };
}

// ---------------------------------------------------------------------------------------
// pnm_device

namespace {
struct device_state {
  std::unique_ptr<device_engine> engine;
  caf::actor coordinator;
  std::shared_ptr<tp::fabric> fab;
  uint64_t seq = 0;
  std::map<uint64_t, shard_placement> shards;  // by request
  // Queries that arrived before the append they must see (a reordering fabric).
  std::deque<std::pair<tp::envelope, tp::query_msg>> deferred;
  // Writes that arrived before an earlier write of their shard (a write lost and sent
  // again): held until the gap is filled.
  std::deque<std::pair<tp::envelope, tp::prefill_write_msg>> early_writes;
  std::deque<tp::token_append_msg> early_appends;
  std::set<uint32_t> connected;  // fabric peers already connected
  uint64_t rejected = 0;
};
}  // namespace

caf::behavior pnm_device_actor(caf::event_based_actor* self, std::shared_ptr<const run_setup> setup,
                               uint32_t node, caf::actor coordinator,
                               std::shared_ptr<tp::fabric> fab) {
  auto st = std::make_shared<device_state>();
  device_engine_config dc = setup->device;
  dc.device_id = node;
  st->engine = std::make_unique<device_engine>(dc);
  st->coordinator = coordinator;
  st->fab = fab;
  const cost_model& costs = *setup->costs;
  tp::wire_limits limits;

  auto send_to = [=](uint32_t dest, double vt_ns, auto body) {
    tp::envelope env;
    env.sender = node;
    env.seq = ++st->seq;
    env.vtime_ns = static_cast<uint64_t>(vt_ns);
    auto bytes = tp::encode(env, std::move(body));
    auto s = st->fab->send(dest, std::move(bytes));
    if (!s) log().warn("node={} event=send_failed dest={} reason=\"{}\"", node, dest, s.to_string());
  };

  // A query is ready when this device holds every token of the sequence that falls in its
  // pages: prefill writes and the new token's append may still be on their way over a
  // fabric that does not order messages, and a query must never see partial data.
  auto ready = [=](const tp::query_msg& q) {
    auto sh = st->shards.find(q.request_id);
    if (sh == st->shards.end()) return true;  // the engine will refuse it with a clear error
    const uint32_t ps = setup->device.shape.page_size_tokens;
    const uint64_t want = sh->second.tokens_held_at(q.sequence_tokens, ps);
    for (uint32_t h = q.kv_head0; h < q.kv_head1; ++h) {
      const kv_head_store* s = st->engine->find(q.request_id, q.layer, h);
      if (s && s->token_count() < want) return false;
    }
    return true;
  };

  // baseline: the device is a passive expander; the scoring it runs is the GPU's work.
  const bool passive = setup->mode == "baseline";

  auto serve = [=](const tp::envelope& env, const tp::query_msg& q) {
    const uint32_t d = setup->model.head_dim;
    std::vector<uint64_t> listed(q.listed_pages.begin(), q.listed_pages.end());
    std::vector<uint64_t> excluded(q.excluded_pages.begin(), q.excluded_pages.end());
    for (uint32_t h = q.kv_head0; h < q.kv_head1; ++h) {
      device_query dq;
      dq.request_id = q.request_id;
      dq.step = q.step;
      dq.layer = q.layer;
      dq.kv_head = h;
      dq.group = q.group;
      dq.q = q.q.data() + size_t(h - q.kv_head0) * q.group * d;
      dq.sequence_tokens = q.sequence_tokens;
      dq.budget_pages = q.budget_pages;
      dq.listed_pages = listed.data();
      dq.n_listed = listed.size();
      dq.excluded_pages = excluded.data();
      dq.n_excluded = excluded.size();
      dq.round = q.round;
      device_answer ans;
      auto s = st->engine->query(dq, ans);
      if (!s) {
        log().warn("node={} event=query_failed request={} reason=\"{}\"", node, q.request_id,
                   s.to_string());
        send_to(env.sender, st->engine->clock_ns(), tp::error_msg{s.code(), s.message(), env.seq});
        continue;
      }
      double done = st->engine->clock_ns();
      if (q.round != selection_round::dense && !passive) {
        const double arrival = double(env.vtime_ns) + costs.link_latency_ns();
        done = st->engine->charge(arrival, costs.pnm_compute(double(ans.bytes_scanned), ans.flops).time_ns);
      }
      if (q.round == selection_round::exact_candidates) {
        tp::candidates_msg c;
        c.request_id = q.request_id;
        c.step = q.step;
        c.layer = q.layer;
        c.kv_head = h;
        c.shard_id = q.shard_id;
        for (size_t i = 0; i < ans.pages.size(); ++i) {
          c.page_ids.push_back(static_cast<uint32_t>(ans.pages[i]));
          c.scores.push_back(ans.candidate_forced[i] ? std::numeric_limits<float>::infinity()
                                                     : ans.candidate_scores[i]);
        }
        c.bytes_scanned = ans.bytes_scanned;
        c.flops = ans.flops;
        send_to(env.sender, done, std::move(c));
        continue;
      }
      tp::partial_msg p;
      p.request_id = q.request_id;
      p.step = q.step;
      p.layer = q.layer;
      p.kv_head = h;
      p.shard_id = q.shard_id;
      p.group = q.group;
      p.head_dim = d;
      p.o = std::move(ans.part.o);
      p.lse = std::move(ans.part.lse);
      p.pages_selected = static_cast<uint32_t>(ans.pages.size());
      p.bytes_scanned = ans.bytes_scanned;
      p.round = q.round;
      p.flops = ans.flops;
      p.device_bytes_held = st->engine->bytes_held();
      if (q.round == selection_round::dense) {
        p.pages_selected = 0;  // every page: the list would only repeat the placement
      } else {
        p.page_ids.reserve(ans.pages.size());
        for (uint64_t g : ans.pages) p.page_ids.push_back(static_cast<uint32_t>(g));
      }
      send_to(env.sender, done, std::move(p));
    }
  };

  // Recalls: baseline pages for the GPU's attention, png-kv copies of steady pages.
  auto serve_recall = [=](const tp::envelope& env, const tp::recall_request_msg& rr) {
    std::vector<uint64_t> pages(rr.page_ids.begin(), rr.page_ids.end());
    std::vector<uint32_t> rows;
    std::vector<bf16> k, v;
    auto s = st->engine->read_pages(rr.request_id, rr.layer, rr.kv_head, pages, rows, k, v);
    if (!s) {
      log().warn("node={} event=recall_failed reason=\"{}\"", node, s.to_string());
      send_to(env.sender, st->engine->clock_ns(), tp::error_msg{s.code(), s.message(), env.seq});
      return;
    }
    const double bytes = double(k.size() + v.size()) * sizeof(bf16);
    const double arrival = double(env.vtime_ns) + costs.link_latency_ns();
    const double cost = passive ? costs.expander_read(bytes).time_ns : costs.pnm_compute(bytes, 0).time_ns;
    const double done = st->engine->charge(arrival, cost);
    tp::recall_reply_msg out;
    out.request_id = rr.request_id;
    out.step = rr.step;
    out.layer = rr.layer;
    out.kv_head = rr.kv_head;
    out.page_tokens = setup->device.shape.page_size_tokens;
    out.head_dim = setup->model.head_dim;
    const size_t d = setup->model.head_dim;
    size_t off = 0;
    for (size_t i = 0; i < pages.size(); ++i) {
      tp::recalled_page pg;
      pg.page_id = static_cast<uint32_t>(pages[i]);
      pg.n_tokens = rows[i];
      pg.k.assign(k.begin() + off, k.begin() + off + rows[i] * d);
      pg.v.assign(v.begin() + off, v.begin() + off + rows[i] * d);
      off += rows[i] * d;
      out.pages.push_back(std::move(pg));
    }
    send_to(env.sender, done, std::move(out));
  };

  auto drain_deferred = [=] {
    for (size_t n = st->deferred.size(); n > 0; --n) {
      auto item = std::move(st->deferred.front());
      st->deferred.pop_front();
      if (ready(item.second))
        serve(item.first, item.second);
      else
        st->deferred.push_back(std::move(item));
    }
  };

  start_join(self, coordinator, node, tp::node_role::pnm_device);

  return {
      [=](join_atom, const std::string& bytes) {
        on_join_bytes(self, *setup, st->coordinator, node, tp::node_role::pnm_device,
                      st->fab->address(), bytes);
      },
      [=](member_atom, const std::string& bytes) {
        auto m = tp::decode(bytes.data(), bytes.size(), limits);
        if (!m || !std::holds_alternative<tp::membership_msg>(m->body)) {
          log().warn("node={} event=bad_membership", node);
          return;
        }
        const auto& mm = std::get<tp::membership_msg>(m->body);
        for (const auto& mem : mm.members)
          if (mem.role == tp::node_role::gpu_host && !mem.worker_address.empty() &&
              st->connected.insert(mem.node).second) {
            auto s = st->fab->connect(mem.node, mem.worker_address);
            if (!s) log().warn("node={} event=connect_failed peer={} reason=\"{}\"", node, mem.node, s.to_string());
          }
        for (const auto& pl : mm.placements) {
          request_placement rp = placement_from_wire(pl);
          for (const auto& s : rp.shards) {
            bool mine = s.device_id == node;
            for (uint32_t r : s.replica_device_ids) mine = mine || r == node;
            if (!mine) continue;
            auto added = st->engine->add_shard(rp.request_id, s);
            if (added) st->shards[rp.request_id] = s;
            self->send(st->coordinator, ctl_atom::value,
                       ctl(node, control::placement_ack_msg{node, rp.request_id, bool(added),
                                                            added ? "" : added.message()}));
          }
        }
      },
      [=](wire_atom, std::vector<uint8_t>& bytes) {
        auto m = tp::decode(bytes.data(), bytes.size(), limits);
        if (!m) {
          ++st->rejected;  // counted and logged once per reason by the decoder
          return;
        }
        const tp::envelope env = m->env;
        // A write applies now (acknowledged when bulk), or waits for an earlier one.
        auto try_write = [=](const tp::envelope& e, const tp::prefill_write_msg& w) {
          auto s = st->engine->write(w.request_id, w.layer, w.kv_head, w.position0, w.k.data(),
                                     w.v.data(), w.n_tokens);
          if (!s && s.code() == errc::not_ready) return false;
          if (!s) {
            log().warn("node={} event=write_failed reason=\"{}\"", node, s.to_string());
            send_to(e.sender, st->engine->clock_ns(), tp::error_msg{s.code(), s.message(), e.seq});
            return true;
          }
          // End-to-end flow control: the host keeps a bounded window of unacknowledged writes.
          send_to(e.sender, st->engine->clock_ns(),
                  tp::write_ack_msg{w.request_id, w.layer, w.kv_head, w.position0, w.n_tokens, true});
          return true;
        };
        auto try_append = [=](const tp::token_append_msg& a) {
          bool applied = true;
          for (uint32_t h = 0; h < a.n_heads; ++h) {
            const size_t off = size_t(h) * a.head_dim;
            auto s = st->engine->write(a.request_id, a.layer, a.kv_head0 + h, a.position,
                                       a.k.data() + off, a.v.data() + off, 1);
            if (!s && s.code() == errc::not_ready) applied = false;  // heads done are not redone
            else if (!s) log().warn("node={} event=append_failed reason=\"{}\"", node, s.to_string());
          }
          return applied;
        };
        auto drain_early = [=] {
          for (bool moved = true; moved;) {
            moved = false;
            for (size_t n = st->early_writes.size(); n > 0; --n) {
              auto item = std::move(st->early_writes.front());
              st->early_writes.pop_front();
              if (try_write(item.first, item.second)) moved = true;
              else st->early_writes.push_back(std::move(item));
            }
            for (size_t n = st->early_appends.size(); n > 0; --n) {
              auto item = std::move(st->early_appends.front());
              st->early_appends.pop_front();
              if (try_append(item)) moved = true;
              else st->early_appends.push_back(std::move(item));
            }
          }
        };
        constexpr size_t early_max = 4096;
        if (auto* w = std::get_if<tp::prefill_write_msg>(&m->body)) {
          if (!try_write(env, *w)) {
            if (st->early_writes.size() < early_max) st->early_writes.emplace_back(env, std::move(*w));
            else log().warn("node={} event=write_dropped reason=\"early-write queue full\"", node);
            return;
          }
          drain_early();
          drain_deferred();
        } else if (auto* a = std::get_if<tp::token_append_msg>(&m->body)) {
          if (!try_append(*a)) {
            if (st->early_appends.size() < early_max) st->early_appends.push_back(std::move(*a));
            else log().warn("node={} event=append_dropped reason=\"early-append queue full\"", node);
            return;
          }
          drain_early();
          drain_deferred();
        } else if (auto* rr = std::get_if<tp::recall_request_msg>(&m->body)) {
          serve_recall(env, *rr);
        } else if (auto* q = std::get_if<tp::query_msg>(&m->body)) {
          if (ready(*q))
            serve(env, *q);
          else if (st->deferred.size() < 4096)
            st->deferred.emplace_back(env, std::move(*q));
          else
            log().warn("node={} event=query_dropped reason=\"deferred queue full\"", node);
        }
      },
      [=](peer_down_atom, uint32_t peer) {
        log().warn("node={} event=peer_down peer={}", node, peer);
      },
      [=](ctl_atom, const std::string& bytes) {
        auto m = control::decode(bytes);
        if (!m) return;
        if (std::holds_alternative<control::shutdown_msg>(m->body)) self->quit();
        if (auto* rl = std::get_if<control::release_msg>(&m->body)) {
          // A finished request (open workloads): its memory is free for the next.
          st->engine->release(rl->request_id);
          st->shards.erase(rl->request_id);
        }
      },
  };
}

// ---------------------------------------------------------------------------------------
// gpu_host

namespace {
// The kinds of reply a piece of device work gets.
enum class reply_kind : uint8_t {
  selection,   // a partial of a selection (selection_round local or exact_attend)
  dense,       // a dense (verification) partial
  candidates,  // exact round 1's candidate pages
  recall,      // recalled pages
};
reply_kind reply_kind_of(selection_round r) {
  switch (r) {
    case selection_round::local:
    case selection_round::exact_attend: return reply_kind::selection;
    case selection_round::exact_candidates: return reply_kind::candidates;
    case selection_round::dense: return reply_kind::dense;
  }
  return reply_kind::selection;
}

// What a reply answers: (request, layer, KV head, shard, kind).
using reply_key = std::tuple<uint64_t, uint32_t, uint32_t, uint32_t, reply_kind>;

struct host_state {
  caf::actor coordinator, driver;
  std::shared_ptr<tp::fabric> fab;
  std::unique_ptr<host_engine> engine;
  std::map<uint64_t, request_placement> placements;
  std::vector<control::request_spec_msg> requests;
  uint64_t seq = 0;
  // prefill
  // Bulk writes (prefill chunks, prompt chunks of open workloads) not acknowledged yet, by
  // (device, request, layer, KV head, position): a repeated write or ack is counted once.
  // With retries on, each keeps its copy to send again.
  using write_key = std::tuple<uint32_t, uint64_t, uint32_t, uint32_t, uint64_t>;
  std::map<write_key, device_work> writes_out;
  uint64_t replies_seen = 0, replies_at_last_retry = 0, retries = 0;
  uint64_t prefill_chunks_sent = 0, prefill_chunks_total = 0;
  bool prefill_exhausted = false;  // every chunk sent
  bool prefill_done = false;       // and acknowledged
  steady::time_point prefill_start;
  double prefill_wall_s = 0;
  // decode
  uint32_t step = 0;
  bool step_timed = false;  // the step's timed (sparse) phase is over and recorded
  uint64_t step_epoch = 0;  // bumps per step; stale deadline ticks are ignored
  steady::time_point step_start;
  std::vector<double> step_wall_ms;
  std::vector<step_report> steps;
  std::map<reply_key, uint64_t> tags;  // what a reply answers -> the engine's tag
  std::map<uint32_t, uint64_t> device_bytes_held;
  std::set<uint32_t> connected;  // fabric peers already connected
  bool finished = false;
  // Open workloads: the serving scheduler decides each step's work; admission is asked of
  // the coordinator one request at a time at step boundaries.
  bool open = false;
  std::unique_ptr<serving_scheduler> sched;
  std::map<uint64_t, control::request_spec_msg> open_specs;
  step_plan plan;                  // the running step's
  uint64_t awaiting_admission = 0; // request asked for, answer pending
  bool admitting = true;           // false: the head of the queue did not fit this boundary
  bool step_running = false;
  std::unique_ptr<step_model> predictor;  // workload.tpot_ms_max
  std::set<uint32_t> lost;  // devices failed over (cluster.replication >= 2)
};


}  // namespace

caf::behavior gpu_host_actor(caf::event_based_actor* self, std::shared_ptr<const run_setup> setup,
                             caf::actor coordinator, std::shared_ptr<tp::fabric> fab) {
  auto st = std::make_shared<host_state>();
  st->coordinator = coordinator;
  st->driver = coordinator;  // results and progress go through the coordinator
  st->fab = fab;
  const uint32_t node = gpu_host_node;
  tp::wire_limits limits;
  const cost_model& costs = *setup->costs;

  auto send_work = [=](device_work& w) -> status {
    tp::envelope env;
    env.sender = node;
    env.seq = ++st->seq;
    // vtime: when the message has left the host link (arrival minus link latency).
    env.vtime_ns = static_cast<uint64_t>(std::max(0.0, w.vt_arrival_ns - costs.link_latency_ns()));
    std::vector<uint8_t> bytes;
    if (w.what == device_work::kind::write && w.bulk) {
      tp::prefill_write_msg pw;
      pw.request_id = w.request_id;
      pw.layer = w.layer;
      pw.kv_head = w.kv_head;
      pw.position0 = w.position;
      pw.n_tokens = static_cast<uint32_t>(w.n_tokens);
      pw.head_dim = setup->model.head_dim;
      pw.k = std::move(w.k);
      pw.v = std::move(w.v);
      bytes = tp::encode(env, std::move(pw));
    } else if (w.what == device_work::kind::write) {
      tp::token_append_msg ta;
      ta.request_id = w.request_id;
      ta.layer = w.layer;
      ta.kv_head0 = w.kv_head;
      ta.n_heads = 1;
      ta.position = w.position;
      ta.head_dim = setup->model.head_dim;
      ta.k = std::move(w.k);
      ta.v = std::move(w.v);
      bytes = tp::encode(env, std::move(ta));
    } else if (w.what == device_work::kind::recall) {
      tp::recall_request_msg rr;
      rr.request_id = w.request_id;
      rr.step = st->step;
      rr.layer = w.layer;
      rr.kv_head = w.kv_head;
      for (uint64_t p : w.pages) rr.page_ids.push_back(static_cast<uint32_t>(p));
      st->tags[reply_key{w.request_id, w.layer, w.kv_head, w.shard_id, reply_kind::recall}] = w.tag;
      bytes = tp::encode(env, std::move(rr));
    } else {
      const auto& q = w.query;
      tp::query_msg qm;
      qm.request_id = q.request_id;
      qm.step = q.step;
      qm.layer = q.layer;
      qm.kv_head0 = q.kv_head;
      qm.kv_head1 = q.kv_head + 1;
      qm.group = q.group;
      qm.head_dim = setup->model.head_dim;
      qm.q = std::move(w.q_storage);
      qm.budget_pages = static_cast<uint32_t>(q.budget_pages);
      qm.round = q.round;
      qm.sequence_tokens = q.sequence_tokens;
      qm.shard_id = w.shard_id;
      for (uint64_t p : w.excluded_storage) qm.excluded_pages.push_back(static_cast<uint32_t>(p));
      for (uint64_t p : w.listed_storage) qm.listed_pages.push_back(static_cast<uint32_t>(p));
      st->tags[reply_key{q.request_id, q.layer, q.kv_head, qm.shard_id, reply_kind_of(q.round)}] = w.tag;
      bytes = tp::encode(env, std::move(qm));
    }
    return st->fab->send(w.device_id, std::move(bytes));
  };

  // Defined below (it needs the state the lambdas after it set up); shared so the lambdas
  // that capture it now see the definition.
  auto build_report = std::make_shared<std::function<run_report()>>();
  auto fail_run = [=](const std::string& reason) {
    if (st->finished) return;
    st->finished = true;
    log().error("event=run_failed reason=\"{}\"", reason);
    run_report rep = (*build_report)();
    rep.completed = 0;
    self->send(st->driver, ctl_atom::value,
               ctl(node, control::run_result_msg{rep.to_json(), false, reason}));
  };

  // A device is gone: with replicas the engine moves its shards and resends what it owed;
  // writes it will never acknowledge stop counting. Without replicas the run fails.
  auto device_lost = std::make_shared<std::function<void(uint32_t, const std::string&)>>();
  auto send_all = [=](std::vector<device_work>& work) {
    for (auto& w : work) {
      if (st->lost.count(w.device_id)) continue;  // its replicas got their own copy
      if (w.bulk) {  // before sending: the send moves the rows out of w
        host_state::write_key key{w.device_id, w.request_id, w.layer, w.kv_head, w.position};
        if (!st->writes_out.count(key)) st->writes_out.emplace(key, setup->retry_after_ms ? w : device_work{});
      }
      auto s = send_work(w);
      if (!s) {
        (*device_lost)(w.device_id, "send failed: " + s.to_string());
        if (st->finished) return;
        continue;
      }
    }
  };

  *build_report = [=] {
    run_report rep;
    rep.mode = setup->mode;
    rep.steps = setup->steps;
    rep.config_json = setup->cfg.to_json();
    rep.model_name = setup->model.name;
    rep.model_file = setup->model.file;
    rep.hardware_name = setup->hw.name;
    rep.hardware_file = setup->hw.file;
    rep.layers = setup->model.layers;
    rep.live_layers = setup->host.live_layers;
    rep.pnm_devices = setup->devices;
    rep.batch = setup->batch;
    rep.context_tokens = setup->context_tokens;
    rep.budget_tokens = setup->host.budget_tokens;
    rep.cal_steady_reeval_steps = setup->host.steady.reevaluate_every_steps;
    if (st->engine) {
      auto c = st->engine->calibration();
      rep.cal_steady_hit_fraction = c.steady_hit_fraction;
      rep.cal_steady_set_fraction = c.steady_set_fraction;
      rep.cal_steady_churn_fraction = c.steady_churn_fraction;
      rep.cal_selection_overlap = c.selection_overlap;
      rep.cal_selection_spread = c.selection_spread;
      rep.cal_samples = c.samples;
      rep.cal_churn_samples = c.churn_samples;
    }
    std::vector<double> wall = st->step_wall_ms;
    std::sort(wall.begin(), wall.end());
    if (!wall.empty()) {
      rep.step_wall_ms_p50 = wall[wall.size() / 2];
      rep.step_wall_ms_max = wall.back();
      double sum = 0;
      for (double x : wall) sum += x;
      rep.step_wall_ms_mean = sum / wall.size();
    }
    rep.prefill_wall_s = st->prefill_wall_s;
    double vt = 0, energy = 0, tokens = 0;
    uint64_t link = 0, dev = 0;
    double dense = 0, lnk = 0, devns = 0, merge = 0, lm = 0, live_bytes = 0, gattn = 0, copy = 0;
    double live_flops = 0;
    uint64_t copy_bytes = 0, steady_hits = 0, selected = 0;
    // Per-step figures are over decode steps (open workloads also run prefill-only steps);
    // tokens, energy and time over every step.
    double all_vt = 0;
    size_t decode_steps = 0;
    for (const auto& s : st->steps) {
      all_vt += s.virtual_ns;
      energy += s.energy_j;
      tokens += double(s.tokens);
      if (st->open && s.decode_batch == 0) continue;
      ++decode_steps;
      vt += s.virtual_ns;
      link += s.link_bytes;
      dev += s.device_bytes_scanned;
      dense += s.dense_ns, lnk += s.link_ns, devns += s.device_ns, merge += s.merge_ns, lm += s.lm_head_ns;
      gattn += s.gpu_attention_ns, copy += s.copy_ns;
      copy_bytes += s.copy_bytes, steady_hits += s.steady_hits, selected += s.selected_pages;
      live_bytes += double(s.emulated_bytes_read);
      live_flops += s.emulated_flops;
    }
    const double n = std::max<size_t>(1, decode_steps);
    rep.virtual_step_ms_mean = vt / n / 1e6;
    // Closed runs: decode steps back to back. Open workloads: the whole virtual time the
    // run covered, idle gaps between arrivals included (as the simulator).
    const double elapsed_ns = st->open && st->sched ? st->sched->now_s() * 1e9 : all_vt;
    rep.virtual_tokens_per_s = elapsed_ns > 0 ? tokens / (elapsed_ns / 1e9) : 0;
    // baseline's memory boxes are passive expanders; the other modes' are PNM devices.
    const bool passive = setup->host.mode == run_mode::baseline;
    const uint32_t pnm_boxes = passive ? 0 : setup->devices, expanders = passive ? setup->devices : 0;
    const double static_w = costs.static_power_w(1, pnm_boxes, expanders);
    const double total_energy = energy + static_w * elapsed_ns / 1e9;
    rep.virtual_energy_j_per_token = tokens > 0 ? total_energy / tokens : 0;
    rep.virtual_power_w = elapsed_ns > 0 ? total_energy / (elapsed_ns / 1e9) : 0;
    rep.virtual_tokens_per_dollar = costs.tokens_per_dollar(
        rep.virtual_tokens_per_s, rep.virtual_power_w, costs.capital_usd(1, pnm_boxes, expanders));
    rep.virtual_link_bytes_per_step = uint64_t(double(link) / n);
    rep.virtual_device_bytes_per_step = uint64_t(double(dev) / n);
    rep.breakdown_dense_ms = dense / n / 1e6;
    rep.breakdown_link_ms = lnk / n / 1e6;
    rep.breakdown_device_ms = devns / n / 1e6;
    rep.breakdown_merge_ms = merge / n / 1e6;
    rep.breakdown_lm_head_ms = lm / n / 1e6;
    rep.breakdown_gpu_attention_ms = gattn / n / 1e6;
    rep.breakdown_copy_ms = copy / n / 1e6;
    rep.copy_bytes_per_step = uint64_t(double(copy_bytes) / n);
    rep.steady_hit_rate = selected ? double(steady_hits) / double(selected) : 0;
    rep.cross_shard = to_string(setup->host.cross_shard);
    rep.summaries_resident = setup->host.summaries_resident;
    {
      gpu_memory_query q = setup->gpu_query;
      q.batch = static_cast<uint32_t>(std::max<size_t>(1, st->requests.size()));
      auto use = gpu_memory(setup->model, setup->hw, q);
      rep.gpu_memory_bytes = use.total_bytes();
      rep.gpu_memory_capacity_bytes = use.capacity_bytes;
      // The batch is bounded by GPU memory and by what the devices (or expanders) can hold.
      const uint32_t gpu_max = max_batch(setup->model, setup->hw, setup->gpu_query);
      placement_request pr = setup->placement;
      pr.context_tokens = setup->context_tokens;
      const uint64_t pages = (pr.context_tokens + pr.decode_tokens + pr.page_size_tokens - 1) / pr.page_size_tokens;
      const double request_bytes = double(shard_bytes_per_layer_head(pr, pages)) * pr.kv_heads *
                                   pr.layers * setup->replication;
      const double capacity = setup->devices * (setup->host.mode == run_mode::baseline
                                                    ? setup->hw.expander.capacity_bytes
                                                    : setup->hw.pnm.capacity_bytes);
      const uint32_t device_max = static_cast<uint32_t>(std::floor(capacity / request_bytes));
      rep.max_batch = std::min(gpu_max, device_max);
      rep.max_batch_gpu_memory = gpu_max;
      rep.max_batch_device_capacity = device_max;
    }
    if (!st->engine) return rep;
    rep.prefill_link_ms = costs.link_serialisation_ns(double(st->engine->prefill_bytes())) / 1e6;
    // The live bytes the devices scanned per step: what the wall-time bound is made of.
    rep.live_device_bytes_per_step = uint64_t(live_bytes / n);
    rep.live_device_flops_per_step = live_flops / n;
    auto acc = st->engine->accuracy().summary();
    rep.accuracy_samples = acc.samples;
    rep.output_rel_err_mean = acc.rel_err_mean;
    rep.output_rel_err_p99 = acc.rel_err_p99;
    rep.output_rel_err_max = acc.rel_err_max;
    rep.attention_mass_recall_mean = acc.mass_mean;
    rep.attention_mass_recall_min = acc.mass_min;
    rep.needle_hit_rate = acc.needle_hit_rate;
    rep.needles_asked = acc.needle_asks;
    rep.output_digest = st->engine->output_digest();
    for (const auto& [dev_id, held] : st->device_bytes_held) {
      rep.device_ids.push_back(dev_id);
      rep.device_bytes_held.push_back(held);
      uint64_t modelled = 0;
      for (const auto& [rid, pl] : st->placements)
        for (const auto& s : pl.shards) {
          if (s.device_id == dev_id) modelled += s.bytes_modelled;
          for (uint32_t r : s.replica_device_ids)
            if (r == dev_id) modelled += s.bytes_modelled;
        }
      rep.device_bytes_modelled.push_back(modelled);
    }
    if (!st->placements.empty()) {
      rep.head_groups = st->placements.begin()->second.head_groups;
      rep.sequence_shards = st->placements.begin()->second.sequence_shards;
    }
    rep.completed = st->requests.size();
    rep.devices_lost.assign(st->lost.begin(), st->lost.end());
    rep.retries = st->retries;
    if (st->open && st->sched) {
      rep.arrivals = setup->cfg.get_string("workload.arrivals");
      rep.request_outcomes = st->sched->outcomes();
      rep.batch_series = st->sched->series();
      rep.serving = summarise(rep.request_outcomes, rep.batch_series);
      rep.virtual_time_s = st->sched->now_s();
      rep.tokens_out = uint64_t(tokens);
      rep.completed = rep.serving.completed;
      rep.batch = rep.serving.batch_peak;
    }
    return rep;
  };

  auto finish = [=] {
    if (st->finished) return;
    st->finished = true;
    self->send(st->driver, ctl_atom::value,
               ctl(node, control::run_result_msg{(*build_report)().to_json(), true, ""}));
  };

  auto progress = [=](const char* phase, uint64_t done, uint64_t total) {
    self->send(st->driver, ctl_atom::value, ctl(node, control::progress_msg{phase, done, total}));
  };

  // The decode step of everything in the system plus `candidate`, predicted by the
  // simulator's step model (the host engine's composition) on this run's hardware.
  auto predicted_step_ms = [=](uint64_t candidate, const request_placement& cand_pl) {
    if (!st->predictor) st->predictor = std::make_unique<step_model>(setup->step_predictor);
    const uint32_t per_pool = std::max<uint32_t>(1, setup->step_predictor->pool_devices);
    const auto& ids = st->sched->in_system_ids();
    std::vector<request_placement> pls;
    pls.reserve(ids.size() + 1);
    std::vector<step_request> dec;
    auto add = [&](uint64_t id, const request_placement& pl, uint64_t seq_tokens) {
      request_placement p = pl;  // the model counts devices from 0
      for (auto& sh : p.shards) {
        sh.device_id -= device_node_base;
        for (uint32_t& r : sh.replica_device_ids) r -= device_node_base;
      }
      pls.push_back(std::move(p));
      step_request q;
      q.id = id;
      q.pool = pls.back().shards.front().device_id / per_pool;
      q.placement = &pls.back();
      q.seq_tokens = seq_tokens;
      q.summaries_resident = setup->host.summaries_resident;
      dec.push_back(q);
    };
    for (uint64_t id : ids) {
      const request_outcome& o = st->sched->outcome(id);
      add(id, st->placements.at(id), o.prompt_tokens + (o.generated > 0 ? o.generated - 1 : 0));
    }
    add(candidate, cand_pl, st->sched->outcome(candidate).prompt_tokens);
    return st->predictor->run(dec, {}).time_ns * 1e-6;
  };

  // Called whenever the running step may have moved on: records its timed phase once and,
  // when it is over (every reply in, every prompt write acknowledged), goes to the next.
  auto after_progress = std::make_shared<std::function<void()>>();
  // Open workloads: admission (one request at a time, head of line), then the next step.
  auto boundary = std::make_shared<std::function<void()>>();
  // The two refer to each other (and to the state, which holds the fabric): break the cycle
  // when the actor ends, or the fabric and its threads would outlive the run.
  self->attach_functor([after_progress, boundary, device_lost] {
    *after_progress = nullptr;
    *boundary = nullptr;
    *device_lost = nullptr;
  });

  auto start_step = [=](uint32_t step) {
    if (!st->open) progress("decode", step, setup->steps);
    st->step = step;
    st->step_timed = false;
    st->step_running = true;
    ++st->step_epoch;
    st->step_start = steady::now();
    auto work = st->engine->begin_step(step);
    if (!work) return fail_run(work.error().to_string());
    send_all(*work);
    self->delayed_send(self, std::chrono::milliseconds(setup->step_timeout_ms), tick_atom::value,
                       st->step_epoch);
    if (setup->retry_after_ms)
      self->delayed_send(self, std::chrono::milliseconds(setup->retry_after_ms), retry_atom::value,
                         st->step_epoch);
    (*after_progress)();  // a step with nothing to wait for is over already
  };

  *after_progress = [=] {
    if (st->finished || !st->engine || !st->step_running) return;
    if (st->engine->timed_phase_done() && !st->step_timed) {
      st->step_timed = true;
      st->step_wall_ms.push_back(
          std::chrono::duration<double, std::milli>(steady::now() - st->step_start).count());
      st->steps.push_back(st->engine->last_step());
    }
    if (!st->engine->step_done() || !st->writes_out.empty()) return;
    st->step_running = false;
    if (!st->open) {
      if (st->step + 1 < setup->steps) return start_step(st->step + 1);
      progress("decode", setup->steps, setup->steps);
      return finish();
    }
    auto done = st->sched->complete(st->plan, st->engine->last_step().virtual_ns * 1e-9);
    for (uint64_t id : done) {
      auto s = st->engine->remove_request(id);
      if (!s) return fail_run(s.to_string());
      self->send(st->coordinator, ctl_atom::value, ctl(node, control::release_msg{id}));
    }
    uint64_t over = 0;
    for (const auto& o : st->sched->outcomes()) over += o.refused || o.finish_s >= 0;
    progress("serve", over, st->sched->outcomes().size());
    (*boundary)();
  };

  *boundary = [=] {
    if (st->finished) return;
    serving_scheduler& sc = *st->sched;
    if (st->admitting) {
      if (auto c = sc.next_candidate()) {
        st->awaiting_admission = *c;
        self->send(st->coordinator, ctl_atom::value, ctl(node, control::admit_msg{*c, sc.in_system()}));
        return;  // goes on when the answer comes
      }
    }
    st->admitting = true;
    st->plan = sc.plan();
    if (st->plan.empty()) {
      if (sc.done()) return finish();
      if (sc.idle_until_next_arrival()) return (*boundary)();
      return fail_run("serving stalled: requests are waiting but none can run");
    }
    auto s = st->engine->plan_prefill(st->plan.prefill);
    if (!s) return fail_run(s.to_string());
    start_step(st->step_epoch == 0 ? 0 : st->step + 1);
  };

  auto pump_prefill = [=] {
    std::vector<device_work> work;
    while (!st->prefill_exhausted && st->writes_out.size() < setup->prefill_window_chunks) {
      if (!st->engine->next_prefill_chunk(work)) {
        st->prefill_exhausted = true;
        break;
      }
      st->prefill_chunks_sent += work.size();
      if (st->prefill_chunks_sent % 256 == 0) progress("prefill", st->prefill_chunks_sent, st->prefill_chunks_total);
      send_all(work);
    }
    if (st->prefill_exhausted && st->writes_out.empty() && !st->finished && !st->prefill_done) {
      st->prefill_done = true;
      st->prefill_wall_s = std::chrono::duration<double>(steady::now() - st->prefill_start).count();
      if (setup->steps == 0) return finish();
      start_step(0);
    }
  };

  *device_lost = [=](uint32_t dev, const std::string& why) {
    if (st->finished || st->lost.count(dev)) return;
    const std::string what = "device " + std::to_string(dev) + " went down (" + why + ")";
    if (setup->replication < 2 || !st->engine) return fail_run(what);
    auto resend = st->engine->fail_over(dev);
    if (!resend) return fail_run(what + ": " + resend.error().message());
    st->lost.insert(dev);
    log().warn("event=failover device={} reason=\"{}\" resent={}", dev, why, resend->size());
    for (auto& [rid, pl] : st->placements)
      if (const request_placement* now = st->engine->placement_of(rid)) pl = *now;
    // Writes it still owed: its replicas received (and acknowledge) their own copies.
    for (auto it = st->writes_out.begin(); it != st->writes_out.end();)
      it = std::get<0>(it->first) == dev ? st->writes_out.erase(it) : std::next(it);
    send_all(*resend);
    if (!st->open && !st->prefill_done) pump_prefill();
    (*after_progress)();
  };

  start_join(self, coordinator, node, tp::node_role::gpu_host);

  return {
      [=](join_atom, const std::string& bytes) {
        on_join_bytes(self, *setup, st->coordinator, node, tp::node_role::gpu_host,
                      st->fab->address(), bytes);
      },
      [=](member_atom, const std::string& bytes) {
        auto m = tp::decode(bytes.data(), bytes.size(), limits);
        if (!m || !std::holds_alternative<tp::membership_msg>(m->body)) return;
        const auto& mm = std::get<tp::membership_msg>(m->body);
        for (const auto& mem : mm.members)
          if (mem.role == tp::node_role::pnm_device && !mem.worker_address.empty() &&
              st->connected.insert(mem.node).second) {
            auto s = st->fab->connect(mem.node, mem.worker_address);
            if (!s) log().warn("event=connect_failed peer={} reason=\"{}\"", mem.node, s.to_string());
          }
        for (const auto& pl : mm.placements) st->placements[pl.request_id] = placement_from_wire(pl);
      },
      [=](ctl_atom, const std::string& bytes) {
        auto m = control::decode(bytes);
        if (!m) return;
        if (std::holds_alternative<control::shutdown_msg>(m->body)) {
          self->quit();
          return;
        }
        if (auto* down = std::get_if<control::member_down_msg>(&m->body)) {
          (*device_lost)(down->node, down->reason);
          return;
        }
        if (auto* a = std::get_if<control::admission_msg>(&m->body)) {
          // Open workloads: the coordinator's answer to an admit_msg.
          if (!st->open || st->finished || a->request_id != st->awaiting_admission) return;
          st->awaiting_admission = 0;
          if (a->accepted) {
            auto pl = st->placements.find(a->request_id);
            if (pl == st->placements.end())
              return fail_run("request " + std::to_string(a->request_id) + " admitted without a placement");
            // The link and device budget: placed, but it stays out if the decode step with
            // it would pass workload.tpot_ms_max (the coordinator takes the room back).
            if (setup->step_predictor) {
              const double ms = predicted_step_ms(a->request_id, pl->second);
              if (ms > setup->tpot_ms_max) {
                char why[200];
                std::snprintf(why, sizeof why,
                              "the predicted decode step with it, %.3f ms, passes workload.tpot_ms_max = %.3f ms "
                              "(link and device budget)",
                              ms, setup->tpot_ms_max);
                self->send(st->coordinator, ctl_atom::value, ctl(node, control::release_msg{a->request_id}));
                st->placements.erase(pl);
                if (!st->sched->not_admitted(a->request_id, why)) st->admitting = false;
                return (*boundary)();
              }
            }
            const auto& spec = st->open_specs.at(a->request_id);
            auto s = st->engine->add_request({spec.request_id, spec.context_tokens, spec.steps},
                                             pl->second, /*decoding=*/false);
            if (!s) return fail_run(s.to_string());
            pl->second = *st->engine->placement_of(a->request_id);  // without lost devices
            st->sched->admit(a->request_id);
          } else if (!st->sched->not_admitted(a->request_id, a->reason)) {
            st->admitting = false;  // head of line: it waits for the next boundary
          }
          return (*boundary)();
        }
        if (auto* rs = std::get_if<control::run_start_msg>(&m->body); rs && rs->open) {
          st->open = true;
          st->engine = std::make_unique<host_engine>(setup->host, costs, *setup->workload);
          std::vector<trace_row> rows;
          for (const auto& r : rs->requests) {
            st->open_specs[r.request_id] = r;
            rows.push_back({double(r.arrival_ns) * 1e-9, r.context_tokens, uint64_t(r.steps) + 1});
          }
          st->sched = std::make_unique<serving_scheduler>(std::move(rows), setup->serving);
          // The scheduler numbers requests 1.. in arrival order, as the driver submitted them.
          for (const auto& o : st->sched->outcomes()) {
            auto it = st->open_specs.find(o.id);
            if (it == st->open_specs.end() || it->second.context_tokens != o.prompt_tokens)
              return fail_run("open workload: request " + std::to_string(o.id) +
                              " does not match the submitted requests (ids must be 1.. in arrival order)");
          }
          st->prefill_start = steady::now();
          return (*boundary)();
        }
        if (auto* rs = std::get_if<control::run_start_msg>(&m->body)) {
          st->requests = rs->requests;
          st->engine = std::make_unique<host_engine>(setup->host, costs, *setup->workload);
          for (const auto& r : rs->requests) {
            auto pl = st->placements.find(r.request_id);
            if (pl == st->placements.end()) return fail_run("no placement for request " + std::to_string(r.request_id));
            auto s = st->engine->add_request({r.request_id, r.context_tokens, r.steps}, pl->second);
            if (!s) return fail_run(s.to_string());
          }
          if (rs->requests.empty()) return finish();
          // Chunks of the prefill (for the progress bar): per live (layer, head), the
          // context in chunks of prefill_chunk_tokens, times the copies (replication).
          for (const auto& r : rs->requests)
            st->prefill_chunks_total += uint64_t(setup->host.live_layers) * setup->model.kv_heads *
                                        ((r.context_tokens + setup->host.prefill_chunk_tokens - 1) /
                                         setup->host.prefill_chunk_tokens) * setup->replication;
          st->prefill_start = steady::now();
          // Prefill has a deadline too: a lost write ack must not hang the run.
          self->delayed_send(self, std::chrono::milliseconds(setup->prefill_timeout_ms),
                             tick_atom::value, uint64_t(0));
          if (setup->retry_after_ms)
            self->delayed_send(self, std::chrono::milliseconds(setup->retry_after_ms), retry_atom::value,
                               uint64_t(0));
          pump_prefill();
        }
      },
      [=](wire_atom, std::vector<uint8_t>& bytes) {
        auto m = tp::decode(bytes.data(), bytes.size(), limits);
        if (!m) return;
        if (auto* ack = std::get_if<tp::write_ack_msg>(&m->body)) {
          ++st->replies_seen;
          st->writes_out.erase(host_state::write_key{m->env.sender, ack->request_id, ack->layer,
                                                     ack->kv_head, ack->position0});
          if (st->open) return (*after_progress)();
          pump_prefill();
        } else if (std::holds_alternative<tp::partial_msg>(m->body) ||
                   std::holds_alternative<tp::candidates_msg>(m->body) ||
                   std::holds_alternative<tp::recall_reply_msg>(m->body)) {
          if (!st->engine || st->finished) return;
          device_reply r;
          r.device_id = m->env.sender;
          r.vt_done_ns = double(m->env.vtime_ns);
          reply_key key;
          uint32_t step = 0;
          if (auto* p = std::get_if<tp::partial_msg>(&m->body)) {
            key = {p->request_id, p->layer, p->kv_head, p->shard_id,
                   p->round == selection_round::dense ? reply_kind::dense : reply_kind::selection};
            step = p->step;
            r.answer.part.group = p->group;
            r.answer.part.head_dim = p->head_dim;
            r.answer.part.o = std::move(p->o);
            r.answer.part.lse = std::move(p->lse);
            r.answer.bytes_scanned = p->bytes_scanned;
            r.answer.flops = p->flops;
            r.answer.pages.assign(p->page_ids.begin(), p->page_ids.end());
            st->device_bytes_held[m->env.sender] = p->device_bytes_held;
          } else if (auto* c = std::get_if<tp::candidates_msg>(&m->body)) {
            key = {c->request_id, c->layer, c->kv_head, c->shard_id, reply_kind::candidates};
            step = c->step;
            r.answer.pages.assign(c->page_ids.begin(), c->page_ids.end());
            for (float s : c->scores) {
              // Always-kept pages travel with score +inf.
              const bool forced = std::isinf(s) && s > 0;
              r.answer.candidate_scores.push_back(s);
              r.answer.candidate_forced.push_back(forced ? 1 : 0);
            }
            // Bytes scanned and FLOPs of the scoring: the summaries of the shard's pages.
            r.answer.bytes_scanned = c->bytes_scanned;
            r.answer.flops = c->flops;
          } else {
            auto& rr = std::get<tp::recall_reply_msg>(m->body);
            uint32_t shard = 0;
            const auto& pl = st->placements.at(rr.request_id);
            for (const auto& s : pl.shards)
              if (s.device_id == m->env.sender && s.holds_head(rr.kv_head)) shard = s.shard_id;
            key = {rr.request_id, rr.layer, rr.kv_head, shard, reply_kind::recall};
            step = rr.step;
            for (auto& pg : rr.pages) {
              r.answer.pages.push_back(pg.page_id);
              r.rows_per_page.push_back(pg.n_tokens);
              r.k.insert(r.k.end(), pg.k.begin(), pg.k.end());
              r.v.insert(r.v.end(), pg.v.begin(), pg.v.end());
            }
          }
          ++st->replies_seen;
          auto it = st->tags.find(key);
          if (it == st->tags.end() || step != st->step) return;  // stale or duplicate
          r.tag = it->second;
          st->tags.erase(it);
          auto next = st->engine->on_reply(r);
          if (!next) return fail_run(next.error().to_string());
          send_all(*next);
          (*after_progress)();
        } else if (auto* e = std::get_if<tp::error_msg>(&m->body)) {
          fail_run("device " + std::to_string(m->env.sender) + " refused work: " + e->message);
        }
      },
      [=](tick_atom, uint64_t epoch) {
        if (epoch == 0) {
          if (!st->finished && !st->prefill_done)
            fail_run("prefill missed its deadline of " + std::to_string(setup->prefill_timeout_ms) +
                     " ms (run.prefill_timeout_ms)");
          return;
        }
        if (epoch == st->step_epoch && !st->finished && st->step_running)
          fail_run("decode step " + std::to_string(st->step) + " missed its deadline of " +
                   std::to_string(setup->step_timeout_ms) + " ms (run.step_timeout_ms)");
      },
      [=](peer_down_atom, uint32_t peer) { (*device_lost)(peer, "the fabric lost it"); },
      [=](retry_atom, uint64_t epoch) {
        // No reply or ack since the last look: something was lost on the way. Send the
        // unanswered work again (writes are idempotent on the devices; a late original
        // reply and its repeat are told apart by tag, the first one counts).
        const bool prefill = epoch == 0 && !st->open;
        if (st->finished || (prefill ? st->prefill_done : (epoch != st->step_epoch || !st->step_running)))
          return;
        if (st->replies_seen == st->replies_at_last_retry) {
          std::vector<device_work> again;
          if (prefill) {
            for (const auto& [key, w] : st->writes_out) again.push_back(w);
          } else {
            again = st->engine->retry_work();
          }
          ++st->retries;
          log().warn("event=retry step={} items={} prefill={}", st->step, again.size(), prefill);
          send_all(again);
        }
        st->replies_at_last_retry = st->replies_seen;
        self->delayed_send(self, std::chrono::milliseconds(setup->retry_after_ms), retry_atom::value, epoch);
      },
  };
}

// ---------------------------------------------------------------------------------------
// driver

caf::behavior driver_actor(caf::event_based_actor* self, std::shared_ptr<const run_setup> setup,
                           caf::actor coordinator, caf::actor report_to) {
  struct driver_state {
    std::vector<std::string> failures;
    uint64_t accepted = 0, refused = 0;
  };
  auto st = std::make_shared<driver_state>();
  if (setup->open_workload()) {
    // Open workloads: every request with its arrival; the GPU host admits them over
    // virtual time. Ids are 1.. in arrival order.
    for (size_t i = 0; i < setup->arrivals.size(); ++i) {
      const trace_row& a = setup->arrivals[i];
      control::request_spec_msg r{i + 1, a.prompt_tokens, uint32_t(std::max<uint64_t>(1, a.output_tokens) - 1),
                                  uint64_t(std::llround(a.arrival_s * 1e9))};
      self->send(coordinator, ctl_atom::value, ctl(driver_node, control::submit_msg{r}));
    }
  } else {
    for (uint32_t i = 0; i < setup->batch; ++i) {
      control::request_spec_msg r{i + 1, setup->context_tokens, setup->steps};
      self->send(coordinator, ctl_atom::value, ctl(driver_node, control::submit_msg{r}));
    }
  }
  return {
      [=](ctl_atom, const std::string& bytes) {
        auto m = control::decode(bytes);
        if (!m) return;
        if (auto* a = std::get_if<control::admission_msg>(&m->body)) {
          if (a->accepted)
            ++st->accepted;
          else {
            ++st->refused;
            st->failures.push_back("request " + std::to_string(a->request_id) + ": " + a->reason);
          }
        } else if (std::holds_alternative<control::progress_msg>(m->body)) {
          self->send(report_to, ctl_atom::value, bytes);
        } else if (auto* r = std::get_if<control::run_result_msg>(&m->body)) {
          nlohmann::ordered_json j = nlohmann::ordered_json::object();
          if (!r->report_json.empty()) j = nlohmann::ordered_json::parse(r->report_json, nullptr, false);
          if (j.is_discarded()) j = nlohmann::ordered_json::object();
          auto failures = st->failures;
          if (setup->open_workload()) {
            // The GPU host's scheduler knows what became of each request.
            const auto& s = j.contains("serving") ? j["serving"] : nlohmann::ordered_json::object();
            const uint64_t n = setup->arrivals.size(), completed = r->ok ? s.value("completed", uint64_t(0)) : 0;
            j["requests"]["submitted"] = n;
            j["requests"]["completed"] = completed;
            j["requests"]["failed"] = n - completed;
            if (s.contains("requests"))
              for (const auto& q : s["requests"])
                if (q.value("refused", false))
                  failures.push_back("request " + std::to_string(q.value("id", uint64_t(0))) +
                                     " refused: " + q.value("refusal", std::string()));
          } else {
            j["requests"]["submitted"] = setup->batch;
            j["requests"]["completed"] = r->ok ? st->accepted : 0;
            j["requests"]["failed"] = st->refused + (r->ok ? 0 : st->accepted);
          }
          if (!r->ok) failures.push_back("run: " + r->reason);
          j["requests"]["failures"] = failures;
          self->send(report_to, done_atom::value, r->ok, j.dump());
          self->send(coordinator, ctl_atom::value, ctl(driver_node, control::shutdown_msg{}));
          self->quit();
        }
      },
  };
}

}  // namespace pnmkv::actors
