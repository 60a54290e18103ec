#include "transport/from_config.hpp"

#include <fstream>
#include <sstream>

namespace pnmkv::transport {

wire_limits wire_limits_from(const fabric_section& f) {
  wire_limits l;
  l.max_tokens_per_write = f.max_tokens_per_write;
  l.max_head_dim = f.max_head_dim;
  l.max_group = f.max_group;
  l.max_kv_heads = f.max_kv_heads;
  l.max_layers = f.max_layers;
  l.max_context_tokens = f.max_context_tokens;
  l.max_page_tokens = f.max_page_tokens;
  l.max_pages_per_message = f.max_pages_per_message;
  l.max_members = f.max_members;
  l.max_shards = f.max_shards;
  l.max_replicas = f.max_replicas;
  l.max_message_bytes = f.max_message_bytes;
  return l;
}

result<fault_plan> fault_plan_from(const faults_section& f) {
  fault_plan plan;
  plan.seed = f.seed;
  plan.log_path = f.log;
  std::string common = std::string(" at=") + to_string(f.at);
  if (!f.messages.empty()) common += " msg=" + f.messages;
  // Each *_prob key becomes a rule of the script grammar (transport/faults.hpp).
  auto add = [&](const char* kind, const char* key, double p, const std::string& extra) -> status {
    if (p <= 0) return status::ok();
    std::ostringstream text;
    text.precision(17);
    text << kind << " p=" << p << common << extra;
    auto r = parse_fault_rule(text.str());
    if (!r) return {r.error().code(), std::string(key) + ": " + r.error().message()};
    plan.rules.push_back(std::move(r).value());
    return status::ok();
  };
  std::string ms = " ms=";
  status s;
  if (!(s = add("drop", "faults.drop_prob", f.drop_prob, ""))) return s;
  if (!(s = add("delay", "faults.delay_prob", f.delay_prob, ms + std::to_string(f.delay_ms)))) return s;
  if (!(s = add("duplicate", "faults.duplicate_prob", f.duplicate_prob, ""))) return s;
  if (!(s = add("corrupt", "faults.corrupt_prob", f.corrupt_prob,
                " bits=" + std::to_string(f.corrupt_bits))))
    return s;
  // A probabilistic stall may fire many times (count is per rule).
  if (!(s = add("stall", "faults.stall_prob", f.stall_prob,
                ms + std::to_string(f.stall_ms) + " count=1000000000")))
    return s;
  if (!(s = add("partition", "faults.partition_prob", f.partition_prob,
                " window=" + std::to_string(f.partition_window_msgs))))
    return s;
  auto parsed = parse_fault_script(f.script);
  if (!parsed) return status{parsed.error().code(), "faults.script: " + parsed.error().message()};
  for (auto& r : parsed.value()) plan.rules.push_back(std::move(r));
  const std::string& file = f.script_file;
  if (!file.empty()) {
    std::ifstream in(file);
    if (!in) return status{errc::io, "faults.script_file: cannot read \"" + file + "\""};
    std::stringstream buf;
    buf << in.rdbuf();
    auto more = parse_fault_script(buf.str());
    if (!more)
      return status{more.error().code(), "faults.script_file \"" + file + "\": " +
                                             more.error().message()};
    for (auto& r : more.value()) plan.rules.push_back(std::move(r));
  }
  return plan;
}

result<fabric_options> fabric_options_from(const run_spec& spec, node_id self) {
  const fabric_section& f = spec.fabric;
  fabric_options o;
  o.self = self;
  o.send_queue_depth = static_cast<size_t>(f.send_queue_depth);
  o.inbox_depth = static_cast<size_t>(f.inbox_depth);
  o.op_timeout = std::chrono::milliseconds(f.op_timeout_ms);
  o.connect_timeout = std::chrono::milliseconds(f.connect_timeout_ms);
  o.max_message_bytes = static_cast<size_t>(f.max_message_bytes);
  o.frame_crc = f.frame_crc;
  o.drop_duplicates = f.drop_duplicates;
  o.pacing = f.pacing;
  o.pacing_scale = f.pacing_scale;
  auto plan = fault_plan_from(spec.faults);
  if (!plan) return plan.error();
  o.faults = std::move(plan).value();
  return o;
}

ucx_options ucx_options_from(const fabric_section& f) {
  ucx_options u;
  u.transport = f.ucx_transport;
  u.net_devices = f.ucx_net_devices;
  u.rma = f.ucx_rma;
  u.progress_thread = f.ucx_progress == ucx_progress::thread;
  u.spin = std::chrono::microseconds(f.ucx_spin_us);
  u.keepalive = std::chrono::milliseconds(f.ucx_keepalive_ms);
  return u;
}

result<std::string> cluster_secret_from(const fabric_section& f) {
  const std::string& file = f.cluster_secret_file;
  if (file.empty()) return std::string();
  std::ifstream in(file, std::ios::binary);
  if (!in) return status{errc::io, "fabric.cluster_secret_file: cannot read \"" + file + "\""};
  std::stringstream buf;
  buf << in.rdbuf();
  std::string s = buf.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  if (s.size() < 16)
    return status{errc::invalid_argument, "fabric.cluster_secret_file \"" + file +
                                              "\": secret shorter than 16 bytes"};
  return s;
}

}  // namespace pnmkv::transport
