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

transport::outbound wire_message(uint32_t sender, size_t payload_bytes) {
  transport::envelope env;
  env.sender = sender;
  return transport::outbound(env, payload_bytes);
}

void placement_to_wire(const request_placement& p, transport::wire::Placement::Builder out) {
  out.setRequestId(p.request_id);
  auto shards = out.initShards(static_cast<unsigned>(p.shards.size()));
  for (size_t i = 0; i < p.shards.size(); ++i) {
    const shard_placement& s = p.shards[i];
    auto w = shards[static_cast<unsigned>(i)];
    w.setShardId(s.shard_id);
    w.setDeviceId(s.device_id);
    w.setKvHead0(s.kv_head_begin);
    w.setKvHead1(s.kv_head_end);
    if (s.split == sequence_split::interleave) {
      auto g = w.getSplit().initInterleave();
      g.setStride(s.sequence_shards);
      g.setClass(s.sequence_index);
    } else {
      auto g = w.getSplit().initPages();
      g.setPage0(static_cast<uint32_t>(s.page_begin));
      g.setPage1(static_cast<uint32_t>(s.page_end));
    }
    auto reps = w.initReplicas(static_cast<unsigned>(s.replica_device_ids.size()));
    for (size_t r = 0; r < s.replica_device_ids.size(); ++r)
      reps.set(static_cast<unsigned>(r), s.replica_device_ids[r]);
    w.setPagesHeld(s.pages_held);
    w.setSequenceIndex(s.sequence_index);
    w.setSequenceShards(s.sequence_shards);
    w.setBytesModelled(s.bytes_modelled);
  }
}

request_placement placement_from_wire(transport::wire::Placement::Reader p) {
  request_placement r;
  r.request_id = p.getRequestId();
  for (auto w : p.getShards()) {
    shard_placement s;
    s.shard_id = w.getShardId();
    s.device_id = w.getDeviceId();
    s.kv_head_begin = w.getKvHead0();
    s.kv_head_end = w.getKvHead1();
    s.split = transport::split_of(w);
    if (s.split == sequence_split::contiguous) {
      s.page_begin = w.getSplit().getPages().getPage0();
      s.page_end = w.getSplit().getPages().getPage1();
    }
    s.sequence_index = w.getSequenceIndex();
    s.sequence_shards = w.getSequenceShards();  // >= 1: decode() refuses 0
    s.pages_held = w.getPagesHeld();
    s.bytes_modelled = w.getBytesModelled();
    for (uint32_t d : w.getReplicas()) s.replica_device_ids.push_back(d);
    r.shards.push_back(std::move(s));
  }
  std::sort(r.shards.begin(), r.shards.end(),
            [](const auto& a, const auto& b) { return a.shard_id < b.shard_id; });
  r.sequence_shards = r.shards.empty() ? 1 : r.shards.front().sequence_shards;
  r.head_groups = r.shards.empty() ? 1 : uint32_t(r.shards.size()) / r.sequence_shards;
  return r;
}

void connect_members(transport::fabric& fab, transport::wire::Membership::Reader membership,
                     transport::node_role role, std::set<uint32_t>& connected, uint32_t self) {
  for (auto mem : membership.getMembers()) {
    auto addr = mem.getWorkerAddress();
    if (transport::from_wire(mem.getRole()) != role || addr.size() == 0 ||
        !connected.insert(mem.getNodeId()).second)
      continue;
    auto s = fab.connect(mem.getNodeId(), std::vector<uint8_t>(addr.begin(), addr.end()));
    if (!s)
      cluster_log().warn("node={} event=connect_failed peer={} reason=\"{}\"", self,
                         mem.getNodeId(), s.to_string());
  }
}

void start_join(caf::event_based_actor* self, const caf::actor& coordinator, uint32_t node,
                transport::node_role role) {
  control::outbound out(node);
  auto hello = out.body().initHello();
  hello.setNodeId(node);
  control::set_role(hello, role);
  self->send(coordinator, ctl_atom::value, wire_string(out));
}

bool on_join_bytes(caf::event_based_actor* self, const run_setup& setup,
                   const caf::actor& coordinator, uint32_t node, transport::node_role role,
                   const std::vector<uint8_t>& address, const std::string& bytes) {
  auto m = transport::decode(bytes.data(), bytes.size(), setup.limits);
  if (!m) {
    cluster_log().warn("node={} event=bad_join_message reason=\"{}\"", node, m.error().to_string());
    return true;
  }
  if (m->kind() == transport::msg_kind::challenge) {
    auto out = wire_message(node, address.size());
    auto j = out.body().initJoin();
    j.setNodeId(node);
    j.setRole(transport::to_wire(role));
    j.setWorkerAddress(transport::as_data(address));
    transport::sign_join(setup.secret, m->challenge().getNonce(), j);
    self->send(coordinator, join_atom::value, wire_string(out));
    return true;
  }
  if (m->kind() == transport::msg_kind::join_ack) {
    auto ack = m->join_ack();
    if (!ack.getAccepted()) {
      cluster_log().error("node={} event=join_refused reason=\"{}\"", node, ack.getReason().cStr());
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
