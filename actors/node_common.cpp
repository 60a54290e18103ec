// The helpers every actor of a cluster shares (see node_common.hpp).
#include "actors/node_common.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "transport/auth.hpp"
#include "transport/from_config.hpp"

namespace pnmkv::actors {

spdlog::logger& cluster_log() {
  static std::shared_ptr<spdlog::logger> l = [] {
    auto existing = spdlog::get("cluster");
    if (existing) return existing;
    auto made = spdlog::stderr_color_mt("cluster");
    return made;
  }();
  return *l;
}

std::string to_str(const std::vector<uint8_t>& b) { return std::string(b.begin(), b.end()); }

std::string ctl(uint32_t sender, control::control_body body) {
  return control::encode(control::control_message{sender, std::move(body)});
}

namespace {

transport::shard_info to_wire(const shard_placement& s) {
  transport::shard_info w;
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

shard_placement from_wire(const transport::shard_info& w) {
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

}  // namespace

request_placement placement_from_wire(const transport::placement_info& p) {
  request_placement r;
  r.request_id = p.request_id;
  for (const auto& s : p.shards) r.shards.push_back(from_wire(s));
  std::sort(r.shards.begin(), r.shards.end(),
            [](const auto& a, const auto& b) { return a.shard_id < b.shard_id; });
  r.sequence_shards = r.shards.empty() ? 1 : r.shards.front().sequence_shards;
  r.head_groups = r.shards.empty() ? 1 : uint32_t(r.shards.size()) / r.sequence_shards;
  return r;
}

transport::placement_info placement_to_wire(const request_placement& p) {
  transport::placement_info w;
  w.request_id = p.request_id;
  for (const auto& s : p.shards) w.shards.push_back(to_wire(s));
  return w;
}

void start_join(caf::event_based_actor* self, const caf::actor& coordinator, uint32_t node,
                transport::node_role role) {
  self->send(coordinator, ctl_atom::value,
             ctl(node, control::hello_msg{node, static_cast<uint8_t>(role)}));
}

bool on_join_bytes(caf::event_based_actor* self, const run_setup& setup,
                   const caf::actor& coordinator, uint32_t node, transport::node_role role,
                   const std::vector<uint8_t>& address, const std::string& bytes) {
  transport::wire_limits limits;
  auto m = transport::decode(bytes.data(), bytes.size(), limits);
  if (!m) {
    cluster_log().warn("node={} event=bad_join_message reason=\"{}\"", node, m.error().to_string());
    return true;
  }
  if (auto* ch = std::get_if<transport::challenge_msg>(&m->body)) {
    transport::join_msg j;
    j.node = node;
    j.role = role;
    j.worker_address = address;
    transport::sign_join(setup.secret, ch->nonce, j);
    self->send(coordinator, join_atom::value, wire_bytes(node, std::move(j)));
    return true;
  }
  if (auto* ack = std::get_if<transport::join_ack_msg>(&m->body)) {
    if (!ack->accepted) {
      cluster_log().error("node={} event=join_refused reason=\"{}\"", node, ack->reason);
      self->quit();
    }
    return true;
  }
  return false;
}

result<transport::fabric_options> node_fabric_options(const run_setup& setup, uint32_t node) {
  auto fo = transport::fabric_options_from(setup.spec, node);
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

void bridge_fabric(transport::fabric& fab, const caf::actor& target) {
  caf::weak_actor_ptr weak = caf::actor_cast<caf::weak_actor_ptr>(target);
  fab.set_handler([weak](transport::fabric_event&& ev) {
    auto hdl = caf::actor_cast<caf::actor>(weak);
    if (!hdl) return;
    if (ev.kind == transport::fabric_event_kind::message)
      caf::anon_send(hdl, wire_atom::value, std::move(ev.bytes));
    else
      caf::anon_send(hdl, peer_down_atom::value, ev.peer);
  });
}

}  // namespace pnmkv::actors
