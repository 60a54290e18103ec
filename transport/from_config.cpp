#include "transport/from_config.hpp"

#include <fstream>
#include <sstream>

namespace pnmkv::transport {

wire_limits wire_limits_from(const config& cfg) {
  wire_limits l;
  auto u32 = [&](const char* k) { return static_cast<uint32_t>(cfg.get_int(k)); };
  l.max_tokens_per_write = u32("fabric.max_tokens_per_write");
  l.max_head_dim = u32("fabric.max_head_dim");
  l.max_group = u32("fabric.max_group");
  l.max_kv_heads = u32("fabric.max_kv_heads");
  l.max_layers = u32("fabric.max_layers");
  l.max_context_tokens = static_cast<uint64_t>(cfg.get_int("fabric.max_context_tokens"));
  l.max_page_tokens = u32("fabric.max_page_tokens");
  l.max_pages_per_message = u32("fabric.max_pages_per_message");
  l.max_members = u32("fabric.max_members");
  l.max_shards = u32("fabric.max_shards");
  l.max_replicas = u32("fabric.max_replicas");
  l.max_message_bytes = static_cast<uint64_t>(cfg.get_int("fabric.max_message_bytes"));
  return l;
}

result<fault_plan> fault_plan_from(const config& cfg) {
  fault_plan plan;
  plan.seed = static_cast<uint64_t>(cfg.get_int("faults.seed"));
  plan.log_path = cfg.get_string("faults.log");
  std::string common = " at=" + cfg.get_string("faults.at");
  if (!cfg.get_string("faults.messages").empty()) common += " msg=" + cfg.get_string("faults.messages");
  auto add = [&](const char* kind, const char* key, const std::string& extra) -> status {
    double p = cfg.get_number(key);
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
  if (!(s = add("drop", "faults.drop_prob", ""))) return s;
  if (!(s = add("delay", "faults.delay_prob", ms + std::to_string(cfg.get_int("faults.delay_ms")))))
    return s;
  if (!(s = add("duplicate", "faults.duplicate_prob", ""))) return s;
  if (!(s = add("corrupt", "faults.corrupt_prob",
                " bits=" + std::to_string(cfg.get_int("faults.corrupt_bits")))))
    return s;
  // A probabilistic stall may fire many times (count is per rule).
  if (!(s = add("stall", "faults.stall_prob",
                ms + std::to_string(cfg.get_int("faults.stall_ms")) + " count=1000000000")))
    return s;
  if (!(s = add("partition", "faults.partition_prob",
                " window=" + std::to_string(cfg.get_int("faults.partition_window_msgs")))))
    return s;
  std::string script = cfg.get_string("faults.script");
  auto parsed = parse_fault_script(script);
  if (!parsed) return status{parsed.error().code(), "faults.script: " + parsed.error().message()};
  for (auto& r : parsed.value()) plan.rules.push_back(std::move(r));
  const std::string& file = cfg.get_string("faults.script_file");
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

result<fabric_options> fabric_options_from(const config& cfg, node_id self) {
  fabric_options o;
  o.self = self;
  o.send_queue_depth = static_cast<size_t>(cfg.get_int("fabric.send_queue_depth"));
  o.inbox_depth = static_cast<size_t>(cfg.get_int("fabric.inbox_depth"));
  o.op_timeout = std::chrono::milliseconds(cfg.get_int("fabric.op_timeout_ms"));
  o.connect_timeout = std::chrono::milliseconds(cfg.get_int("fabric.connect_timeout_ms"));
  o.max_message_bytes = static_cast<size_t>(cfg.get_int("fabric.max_message_bytes"));
  const std::string& crc = cfg.get_string("fabric.frame_crc");
  o.frame_crc = crc == "on" ? crc_mode::on : crc == "off" ? crc_mode::off : crc_mode::automatic;
  o.drop_duplicates = cfg.get_bool("fabric.drop_duplicates");
  o.pacing = cfg.get_bool("fabric.pacing");
  o.pacing_scale = cfg.get_number("fabric.pacing_scale");
  auto plan = fault_plan_from(cfg);
  if (!plan) return plan.error();
  o.faults = std::move(plan).value();
  return o;
}

ucx_options ucx_options_from(const config& cfg) {
  ucx_options u;
  (void)parse_ucx_transport(cfg.get_string("fabric.ucx_transport"), u.transport);
  u.net_devices = cfg.get_string("fabric.ucx_net_devices");
  const std::string& rma = cfg.get_string("fabric.ucx_rma");
  u.rma = rma == "native" ? ucx_rma_mode::native
          : rma == "am"   ? ucx_rma_mode::am
                          : ucx_rma_mode::automatic;
  u.progress_thread = cfg.get_string("fabric.ucx_progress") == "thread";
  u.spin = std::chrono::microseconds(cfg.get_int("fabric.ucx_spin_us"));
  u.keepalive = std::chrono::milliseconds(cfg.get_int("fabric.ucx_keepalive_ms"));
  return u;
}

result<std::string> cluster_secret_from(const config& cfg) {
  const std::string& file = cfg.get_string("fabric.cluster_secret_file");
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
