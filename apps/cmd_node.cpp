// `pnmkv node`: one node of a multi-process cluster (coordinator, GPU host or PNM device).
#include <CLI/CLI.hpp>

#include <cstdio>

#include "actors/node_main.hpp"
#include "apps/commands.hpp"

namespace pnmkv::apps {

void register_node(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "node", "Run one node of a multi-process cluster; nodes reach the coordinator at "
              "cluster.coordinator_host:port and join with the cluster secret");
  static config_options cfg_opts;
  static std::string role, coordinator, port_file, ready_file;
  static uint32_t id = 0;
  add_config_options(cmd, cfg_opts);
  cmd->add_option("--role", role, "coordinator|gpu-host|pnm-device")->required();
  cmd->add_option("--id", id, "Node id (PNM devices: 100, 101, ...)");
  cmd->add_option("--coordinator", coordinator, "HOST:PORT of the coordinator (overrides the config)");
  cmd->add_option("--port-file", port_file, "Coordinator: write the published port to this file");
  cmd->add_option("--ready-file", ready_file,
                  "Write this file once the node is up (connected, fabric open): a launcher's start-up signal");
  cmd->callback([] {
    config cfg = load_config_or_exit(cfg_opts);
    auto r = parse_node_role(role);
    if (!r) {
      std::fprintf(stderr, "pnmkv node: %s\n", r.error().message().c_str());
      throw CLI::RuntimeError(2);
    }
    node_options o;
    o.role = *r;
    o.id = id;
    o.port_file = port_file;
    o.ready_file = ready_file;
    if (!coordinator.empty()) {
      auto colon = coordinator.rfind(':');
      unsigned long p = colon == std::string::npos ? 0 : std::strtoul(coordinator.c_str() + colon + 1, nullptr, 10);
      if (colon == std::string::npos || p == 0 || p > 65535) {
        std::fprintf(stderr, "pnmkv node: --coordinator '%s' is not HOST:PORT (port 1..65535)\n",
                     coordinator.c_str());
        throw CLI::RuntimeError(2);
      }
      o.coordinator_host = coordinator.substr(0, colon);
      o.coordinator_port = static_cast<uint16_t>(p);
    }
    if (o.role == transport::node_role::pnm_device && o.id < 100) {
      std::fprintf(stderr, "pnmkv node: a pnm-device needs --id >= 100 (device i is 100 + i)\n");
      throw CLI::RuntimeError(2);
    }
    auto st = run_node(cfg, o);
    if (!st) {
      std::fprintf(stderr, "pnmkv node: %s\n", st.to_string().c_str());
      throw CLI::RuntimeError(1);
    }
  });
}

}  // namespace pnmkv::apps
