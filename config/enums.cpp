// Names of the configuration's choices (see enums.hpp): one table per enum, read both ways.
#include "config/enums.hpp"

#include <utility>

namespace pnmkv {

namespace {

template <class E, size_t N>
using names = std::pair<const char*, E>[N];

template <class E, size_t N>
result<E> parse_named(const char* key, const std::string& text, const names<E, N>& table) {
  std::string allowed;
  for (const auto& [name, value] : table) {
    if (text == name) return value;
    allowed += (allowed.empty() ? "" : "|") + std::string(name);
  }
  return status{errc::invalid_argument,
                std::string(key) + " = '" + text + "' is not allowed; allowed: " + allowed};
}

template <class E, size_t N>
const char* name_of(E value, const names<E, N>& table) {
  for (const auto& [name, v] : table)
    if (v == value) return name;
  return "?";
}

const names<workload_arrivals, 3> arrivals_names = {
    {"closed", workload_arrivals::closed},
    {"poisson", workload_arrivals::poisson},
    {"trace", workload_arrivals::trace}};
const names<summary_residence, 3> residence_names = {
    {"auto", summary_residence::auto_fit},
    {"resident", summary_residence::hbm},
    {"link", summary_residence::link}};
const names<sim_batch_policy, 2> batch_policy_names = {
    {"config", sim_batch_policy::configured}, {"max", sim_batch_policy::max}};
const names<node_scheduler, 2> scheduler_names = {
    {"sharing", node_scheduler::sharing}, {"stealing", node_scheduler::stealing}};
const names<fault_points, 3> fault_point_names = {
    {"send", fault_points::send}, {"recv", fault_points::recv}, {"both", fault_points::both}};
const names<ucx_progress, 2> progress_names = {
    {"thread", ucx_progress::thread}, {"caller", ucx_progress::caller}};
const names<crc_mode, 3> crc_names = {
    {"auto", crc_mode::automatic}, {"on", crc_mode::on}, {"off", crc_mode::off}};
const names<ucx_transport, 3> ucx_transport_names = {
    {"any", ucx_transport::any}, {"tcp", ucx_transport::tcp}, {"shm", ucx_transport::shm}};
const names<ucx_rma_mode, 3> rma_names = {
    {"auto", ucx_rma_mode::automatic}, {"native", ucx_rma_mode::native}, {"am", ucx_rma_mode::am}};
const names<summary_precision, 2> precision_names = {
    {"bf16", summary_precision::bf16}, {"fp32", summary_precision::fp32}};

}  // namespace

const char* to_string(workload_arrivals a) { return name_of(a, arrivals_names); }
result<workload_arrivals> parse_workload_arrivals(const std::string& text) {
  return parse_named("workload.arrivals", text, arrivals_names);
}

const char* to_string(summary_residence r) { return name_of(r, residence_names); }
result<summary_residence> parse_summary_residence(const std::string& text) {
  return parse_named("baseline.summaries", text, residence_names);
}

const char* to_string(sim_batch_policy p) { return name_of(p, batch_policy_names); }
result<sim_batch_policy> parse_sim_batch_policy(const std::string& text) {
  return parse_named("sim.batch_policy", text, batch_policy_names);
}

const char* to_string(node_scheduler s) { return name_of(s, scheduler_names); }
result<node_scheduler> parse_node_scheduler(const std::string& text) {
  return parse_named("cluster.node_scheduler", text, scheduler_names);
}

const char* to_string(fault_points p) { return name_of(p, fault_point_names); }
result<fault_points> parse_fault_points(const std::string& text) {
  return parse_named("faults.at", text, fault_point_names);
}

const char* to_string(ucx_progress p) { return name_of(p, progress_names); }
result<ucx_progress> parse_ucx_progress(const std::string& text) {
  return parse_named("fabric.ucx_progress", text, progress_names);
}

result<crc_mode> parse_frame_crc(const std::string& text) {
  return parse_named("fabric.frame_crc", text, crc_names);
}

result<ucx_transport> parse_ucx_transport_choice(const std::string& text) {
  return parse_named("fabric.ucx_transport", text, ucx_transport_names);
}

result<ucx_rma_mode> parse_ucx_rma(const std::string& text) {
  return parse_named("fabric.ucx_rma", text, rma_names);
}

result<summary_precision> parse_summary_precision_choice(const std::string& text) {
  return parse_named("selection.summary_precision", text, precision_names);
}

// core/score.hpp's parse, which names the allowed values; the key is added here.
result<gqa_aggregation> parse_gqa_aggregation_choice(const std::string& text) {
  auto a = parse_gqa_aggregation(text.c_str());
  if (!a) return status{errc::invalid_argument, "selection.gqa_aggregation: " + a.error().message()};
  return a;
}

}  // namespace pnmkv
