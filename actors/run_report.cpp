#include "actors/run_report.hpp"

#include <cinttypes>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <nlohmann/json.hpp>
#include <sstream>

#include "model/modes.hpp"

namespace pnmkv {

namespace {
// A 64-bit digest as 16 hex digits: the run's and each request's.
std::string hex64(uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}
}  // namespace

std::string run_report::output_digest_hex() const { return hex64(output_digest); }

namespace {
nlohmann::ordered_json num(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}

// 2026-12-03T05:31:02.123Z
std::string utc_ms(int64_t unix_ms) {
  const time_t secs = static_cast<time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                tm.tm_hour, tm.tm_min, tm.tm_sec, int(unix_ms % 1000));
  return buf;
}
}  // namespace

// The serving section of an open workload's report (to_json).
namespace {
nlohmann::ordered_json serving_json(const run_report& r) {
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const auto& o : r.request_outcomes)
    rows.push_back({{"id", o.id},
                    {"arrival_s", num(o.arrival_s)},
                    {"prompt_tokens", o.prompt_tokens},
                    {"output_tokens", o.output_tokens},
                    {"generated", o.generated},
                    {"admitted_s", num(o.admitted_s)},
                    {"first_token_s", num(o.first_token_s)},
                    {"finish_s", num(o.finish_s)},
                    {"queueing_ms", num(o.queueing_ms())},
                    {"ttft_ms", num(o.ttft_ms())},
                    {"tpot_ms", num(o.tpot_ms())},
                    {"refused", o.refused},
                    {"refusal", o.refusal},
                    {"failed", o.failed},
                    {"failure", o.failure}});
  nlohmann::ordered_json series = nlohmann::ordered_json::array();
  for (const auto& b : r.batch_series)
    series.push_back({{"t_s", num(b.t_s)}, {"decode_batch", b.decode_batch}, {"prefill_tokens", b.prefill_tokens}});
  const serving_summary& s = r.serving;
  return {{"arrivals", r.arrivals},
                  {"virtual_time_s", num(r.virtual_time_s)},
                  {"tokens_out", r.tokens_out},
                  {"submitted", s.submitted},
                  {"completed", s.completed},
                  {"refused", s.refused},
                  {"unfinished", s.unfinished},
                  {"failed", s.failed},
                  {"ttft_ms_mean", num(s.ttft_ms_mean)},
                  {"ttft_ms_p99", num(s.ttft_ms_p99)},
                  {"tpot_ms_mean", num(s.tpot_ms_mean)},
                  {"tpot_ms_p99", num(s.tpot_ms_p99)},
                  {"queueing_ms_mean", num(s.queueing_ms_mean)},
                  {"queueing_ms_p99", num(s.queueing_ms_p99)},
                  {"batch_mean", num(s.batch_mean)},
                  {"batch_peak", s.batch_peak},
                  {"requests", rows},
                  {"batch_series", series}};
}
}  // namespace

// Fencing, node shutdowns, an early stop and the per-request digests (to_json).
namespace {
void recovery_json(const run_report& r, nlohmann::ordered_json& j) {
  j["faults"]["fenced_messages"] = r.fenced_messages;
  j["faults"]["shutdown_events"] = r.shutdown_events;
  j["faults"]["coordinator_restarts"] = r.coordinator_restarts;
  j["faults"]["coordinator_detect_ms"] = r.coordinator_detect_ms;
  j["faults"]["coordinator_recover_ms"] = r.coordinator_recover_ms;
  nlohmann::ordered_json rebuilds = nlohmann::ordered_json::array();
  for (const auto& b : r.rebuilds)
    rebuilds.push_back({{"request", b.request_id},
                        {"shard", b.shard_id},
                        {"kind", b.kind},
                        {"source", b.source},
                        {"target", b.target},
                        {"outcome", b.outcome},
                        {"bytes", b.bytes},
                        {"tokens", b.tokens},
                        {"wall_ms", b.wall_ms},
                        {"stall_ms", b.stall_ms}});
  j["faults"]["rebuilds"] = rebuilds;
  j["faults"]["recovery_stall_ms"] = r.recovery_stall_ms;
  j["requests"]["steps_done"] = r.steps_done;
  if (!r.stopped.empty()) j["requests"]["stopped"] = r.stopped;
  nlohmann::ordered_json digests = nlohmann::ordered_json::array();
  for (const auto& [id, d] : r.request_digests) digests.push_back({{"id", id}, {"output_digest", hex64(d)}});
  j["requests"]["output_digests"] = digests;
}

void read_recovery(const nlohmann::json& j, run_report& r) {
  if (j.contains("faults")) {
    const auto& f = j["faults"];
    r.fenced_messages = f.value("fenced_messages", uint64_t(0));
    if (f.contains("shutdown_events")) r.shutdown_events = f["shutdown_events"].get<std::vector<std::string>>();
    r.coordinator_restarts = f.value("coordinator_restarts", 0u);
    if (f.contains("coordinator_detect_ms")) r.coordinator_detect_ms = f["coordinator_detect_ms"].get<std::vector<double>>();
    if (f.contains("coordinator_recover_ms"))
      r.coordinator_recover_ms = f["coordinator_recover_ms"].get<std::vector<double>>();
    if (f.contains("rebuilds"))
      for (const auto& b : f["rebuilds"])
        r.rebuilds.push_back({b.value("request", uint64_t(0)), b.value("shard", 0u), b.value("kind", std::string()),
                              b.value("source", 0u), b.value("target", 0u), b.value("outcome", std::string()),
                              b.value("bytes", uint64_t(0)), b.value("tokens", uint64_t(0)), b.value("wall_ms", 0.0),
                              b.value("stall_ms", 0.0)});
    r.recovery_stall_ms = f.value("recovery_stall_ms", 0.0);
  }
  if (!j.contains("requests")) return;
  const auto& q = j["requests"];
  r.steps_done = q.value("steps_done", uint64_t(0));
  r.stopped = q.value("stopped", std::string());
  if (q.contains("output_digests"))
    for (const auto& d : q["output_digests"])
      r.request_digests.emplace_back(d.value("id", uint64_t(0)),
                                     std::stoull(d.value("output_digest", std::string("0")), nullptr, 16));
}
}  // namespace

std::string run_report::to_json() const {
  nlohmann::ordered_json j;
  j["mode"] = mode;
  j["multiprocess"] = multiprocess;
  j["simd_target"] = simd_target;
  j["config"] = config_json.empty() ? nlohmann::ordered_json::object()
                                    : nlohmann::ordered_json::parse(config_json);
  j["model"] = {{"name", model_name}, {"file", model_file}, {"layers", layers},
                {"live_layers", live_layers},
                {"note", "layers past live_layers are charged by the cost model only"}};
  j["hardware"] = {{"name", hardware_name}, {"file", hardware_file}};
  j["cluster"] = {{"pnm_devices", pnm_devices}, {"batch", batch}, {"steps", steps},
                  {"context_tokens", context_tokens}, {"head_groups", head_groups},
                  {"sequence_shards", sequence_shards}};
  j["accuracy"] = {{"output_rel_err_mean", num(output_rel_err_mean)},
                   {"output_rel_err_p99", num(output_rel_err_p99)},
                   {"output_rel_err_max", num(output_rel_err_max)},
                   {"attention_mass_recall_mean", num(attention_mass_recall_mean)},
                   {"attention_mass_recall_min", num(attention_mass_recall_min)},
                   {"attention_mass_recall_p01", num(attention_mass_recall_p01)},
                   {"attention_mass_recall_p10", num(attention_mass_recall_p10)},
                   {"needle_hit_rate", num(needle_hit_rate)},
                   {"needles_asked", needles_asked},
                   {"samples", accuracy_samples}};
  j["wall"] = {{"prefill_s", num(prefill_wall_s)},
               {"step_ms_p50", num(step_wall_ms_p50)},
               {"step_ms_mean", num(step_wall_ms_mean)},
               {"step_ms_max", num(step_wall_ms_max)},
               {"read_gbps_measured", num(read_gbps_measured)},
               {"peak_gflops_measured", num(peak_gflops_measured)},
               {"kernel_threads", kernel_threads},
               {"live_device_bytes_per_step", live_device_bytes_per_step},
               {"live_device_flops_per_step", num(live_device_flops_per_step)},
               {"live_device_int_ops_per_step", num(live_device_int_ops_per_step)},
               {"step_bound_ms", num(step_bound_ms)},
               {"step_overhead_ratio", num(step_overhead_ratio)}};
  j["virtual"] = {{"step_ms_mean", num(virtual_step_ms_mean)},
                  {"tokens_per_s", num(virtual_tokens_per_s)},
                  {"energy_j_per_token", num(virtual_energy_j_per_token)},
                  {"tokens_per_dollar", num(virtual_tokens_per_dollar)},
                  {"power_w", num(virtual_power_w)},
                  {"energy_all_in_j_per_token", num(virtual_energy_all_in_j_per_token)},
                  {"power_all_in_w", num(virtual_power_all_in_w)},
                  {"tokens_per_dollar_all_in", num(virtual_tokens_per_dollar_all_in)},
                  {"host_switch_power_w", num(virtual_host_switch_power_w)},
                  {"gpu_power_peak_w", num(gpu_power_peak_w)},
                  {"gpu_all_in_power_peak_w", num(gpu_all_in_power_peak_w)},
                  {"device_power_peak_w", num(device_power_peak_w)},
                  {"gpu_tdp_w", num(gpu_tdp_w)},
                  {"device_power_rating_w", num(device_power_rating_w)},
                  {"link_bytes_per_step", virtual_link_bytes_per_step},
                  {"device_bytes_per_step", virtual_device_bytes_per_step},
                  {"prefill_link_ms", num(prefill_link_ms)},
                  {"breakdown_ms",
                   {{"gpu_dense", num(breakdown_dense_ms)},
                    {"link", num(breakdown_link_ms)},
                    {"device", num(breakdown_device_ms)},
                    {"gpu_attention", num(breakdown_gpu_attention_ms)},
                    {"merge", num(breakdown_merge_ms)},
                    {"copy", num(breakdown_copy_ms)},
                    {"lm_head", num(breakdown_lm_head_ms)}}},
                  {"steady_hit_rate", num(steady_hit_rate)},
                  {"copy_bytes_per_step", copy_bytes_per_step},
                  {"gpu_memory_bytes", num(gpu_memory_bytes)},
                  {"gpu_memory_capacity_bytes", num(gpu_memory_capacity_bytes)},
                  {"max_batch", max_batch},
                  {"max_batch_gpu_memory", max_batch_gpu_memory},
                  {"max_batch_device_capacity", max_batch_device_capacity}};
  if (micro_batches > 1)
    j["virtual"]["micro_batches"] = {{"count", micro_batches},
                                     {"serial_ms", num(micro_batch_serial_ms)},
                                     {"overlap_ms", num(micro_batch_overlap_ms)}};
  j["selection"] = {{"budget_tokens", budget_tokens}, {"rule", selection}, {"cross_shard", cross_shard},
                    {"summaries_resident", summaries_resident}};
  j["recall_cache"] = {{"policy", recall_cache},
                       {"capacity_tokens", recall_cache_tokens},
                       {"hits", recall_hits},
                       {"misses", recall_misses},
                       {"hit_rate", num(recall_hit_rate())},
                       {"shadow", recall_cache_shadow}};
  j["requests"] = {{"submitted", submitted}, {"completed", completed}, {"failed", failed},
                   {"failures", failures}};
  if (arrivals != "closed") j["serving"] = serving_json(*this);
  nlohmann::ordered_json losses = nlohmann::ordered_json::array();
  for (const auto& l : device_losses)
    losses.push_back({{"device", l.device},
                      {"steps_done", l.steps_done},
                      {"reason", l.reason},
                      {"detected_unix_ms", l.detected_unix_ms},
                      {"detected_utc", utc_ms(l.detected_unix_ms)}});
  j["faults"] = {{"devices_lost", devices_lost}, {"device_losses", losses}, {"retries", retries}};
  recovery_json(*this, j);
  nlohmann::ordered_json devs = nlohmann::ordered_json::array();
  for (size_t i = 0; i < device_ids.size(); ++i)
    devs.push_back({{"id", device_ids[i]},
                    {"bytes_held", i < device_bytes_held.size() ? device_bytes_held[i] : 0},
                    {"bytes_modelled",
                     i < device_bytes_modelled.size() ? device_bytes_modelled[i] : 0}});
  j["devices"] = devs;
  j["calibration"] = nlohmann::ordered_json::parse(calibration_json());
  j["output_digest"] = output_digest_hex();
  return j.dump(2);
}

std::string run_report::calibration_json() const {
  nlohmann::ordered_json j;
  j["format"] = "pnmkv-calibration/1";
  j["measured"] = {{"model", model_name},       {"mode", mode},
                   {"context_tokens", context_tokens}, {"budget_tokens", budget_tokens},
                   {"batch", batch},            {"steps", steps},
                   {"hardware", hardware_name},
                   {"recall_cache", {{"policy", recall_cache}, {"capacity_tokens", recall_cache_tokens}}}};
  auto v = [](double x, uint64_t n) { return nlohmann::ordered_json{{"value", x}, {"samples", n}}; };
  j["values"] = {{"steady_hit_fraction", v(cal_steady_hit_fraction, cal_samples)},
                 {"steady_set_fraction", v(cal_steady_set_fraction, cal_samples)},
                 {"steady_churn_fraction", v(cal_steady_churn_fraction, cal_churn_samples)},
                 {"steady_reeval_steps", v(std::max<uint32_t>(1, cal_steady_reeval_steps), cal_samples)},
                 {"selection_overlap", v(cal_selection_overlap, cal_samples)},
                 {"recall_hit_fraction", v(cal_recall_hit_fraction, cal_recall_samples)},
                 {"selection_spread", v(std::max(1.0, cal_selection_spread), cal_samples)}};
  // Only a run that searched with exact-int8 measures its rescoring (flat rescores all).
  if (cal_search == "exact-int8" && cal_search_samples > 0) {
    j["values"]["search_rescored_per_selected"] =
        v(std::max(1.0, cal_search_rescored_per_selected), cal_search_samples);
    j["measured"]["search"] = {{"search", cal_search},
                               {"pages_per_search_min", cal_search_pages_min},
                               {"pages_per_search_max", cal_search_pages_max}};
    // This run's point of the touched-fraction model (model/search_touch.hpp); the points of
    // several runs concatenate into one file's list (experiments/search_touch.sh).
    if (cal_search_pages_mean >= 1 && cal_search_selected_fraction > 0)
      j["search_points"] = nlohmann::ordered_json::array(
          {{{"pages", cal_search_pages_mean},
            {"selected_fraction", cal_search_selected_fraction},
            {"heads_scored", cal_search_heads_scored},
            {"aggregation", cal_search_aggregation},
            {"workload", cal_search_workload},
            {"rescored_per_selected", std::max(1.0, cal_search_rescored_per_selected)},
            {"samples", cal_search_samples}}});
  }
  return j.dump(2);
}

namespace {
double get_num(const nlohmann::json& j, const char* a, const char* b) {
  if (!j.contains(a) || !j[a].contains(b) || j[a][b].is_null()) return std::nan("");
  return j[a][b].get<double>();
}
}  // namespace

namespace {

// What ran: mode, model, hardware, cluster shape.
void read_setup(const nlohmann::json& j, run_report& r) {
  r.mode = j.value("mode", "");
  r.multiprocess = j.value("multiprocess", false);
  r.simd_target = j.value("simd_target", "");
  r.config_json = j.contains("config") ? j["config"].dump() : "{}";
  if (j.contains("model")) {
    r.model_name = j["model"].value("name", "");
    r.model_file = j["model"].value("file", "");
    r.layers = j["model"].value("layers", 0u);
    r.live_layers = j["model"].value("live_layers", 0u);
  }
  if (j.contains("hardware")) {
    r.hardware_name = j["hardware"].value("name", "");
    r.hardware_file = j["hardware"].value("file", "");
  }
  if (j.contains("cluster")) {
    const auto& c = j["cluster"];
    r.pnm_devices = c.value("pnm_devices", 0u);
    r.batch = c.value("batch", 0u);
    r.steps = c.value("steps", 0u);
    r.context_tokens = c.value("context_tokens", uint64_t(0));
    r.head_groups = c.value("head_groups", 0u);
    r.sequence_shards = c.value("sequence_shards", 0u);
  }
}

// Accuracy vs dense attention, and wall time next to its bound.
void read_accuracy_and_wall(const nlohmann::json& j, run_report& r) {
  r.output_rel_err_mean = get_num(j, "accuracy", "output_rel_err_mean");
  r.output_rel_err_p99 = get_num(j, "accuracy", "output_rel_err_p99");
  r.output_rel_err_max = get_num(j, "accuracy", "output_rel_err_max");
  r.attention_mass_recall_mean = get_num(j, "accuracy", "attention_mass_recall_mean");
  r.attention_mass_recall_min = get_num(j, "accuracy", "attention_mass_recall_min");
  r.attention_mass_recall_p01 = get_num(j, "accuracy", "attention_mass_recall_p01");
  r.attention_mass_recall_p10 = get_num(j, "accuracy", "attention_mass_recall_p10");
  r.needle_hit_rate = get_num(j, "accuracy", "needle_hit_rate");
  if (j.contains("accuracy")) {
    r.needles_asked = j["accuracy"].value("needles_asked", uint64_t(0));
    r.accuracy_samples = j["accuracy"].value("samples", uint64_t(0));
  }
  r.prefill_wall_s = get_num(j, "wall", "prefill_s");
  r.step_wall_ms_p50 = get_num(j, "wall", "step_ms_p50");
  r.step_wall_ms_mean = get_num(j, "wall", "step_ms_mean");
  r.step_wall_ms_max = get_num(j, "wall", "step_ms_max");
  r.read_gbps_measured = get_num(j, "wall", "read_gbps_measured");
  r.peak_gflops_measured = get_num(j, "wall", "peak_gflops_measured");
  r.live_device_flops_per_step = get_num(j, "wall", "live_device_flops_per_step");
  r.live_device_int_ops_per_step = get_num(j, "wall", "live_device_int_ops_per_step");
  r.step_bound_ms = get_num(j, "wall", "step_bound_ms");
  r.step_overhead_ratio = get_num(j, "wall", "step_overhead_ratio");
  if (j.contains("wall")) {
    r.live_device_bytes_per_step = j["wall"].value("live_device_bytes_per_step", uint64_t(0));
    r.kernel_threads = j["wall"].value("kernel_threads", uint32_t(0));
  }
}

// The modelled hardware (step time, breakdown, memory), the selection rule, requests.
void read_virtual(const nlohmann::json& j, run_report& r) {
  r.virtual_step_ms_mean = get_num(j, "virtual", "step_ms_mean");
  r.virtual_tokens_per_s = get_num(j, "virtual", "tokens_per_s");
  r.virtual_energy_j_per_token = get_num(j, "virtual", "energy_j_per_token");
  r.virtual_tokens_per_dollar = get_num(j, "virtual", "tokens_per_dollar");
  r.virtual_power_w = get_num(j, "virtual", "power_w");
  r.virtual_energy_all_in_j_per_token = get_num(j, "virtual", "energy_all_in_j_per_token");
  r.virtual_power_all_in_w = get_num(j, "virtual", "power_all_in_w");
  r.virtual_tokens_per_dollar_all_in = get_num(j, "virtual", "tokens_per_dollar_all_in");
  r.virtual_host_switch_power_w = get_num(j, "virtual", "host_switch_power_w");
  r.gpu_power_peak_w = get_num(j, "virtual", "gpu_power_peak_w");
  r.gpu_all_in_power_peak_w = get_num(j, "virtual", "gpu_all_in_power_peak_w");
  r.device_power_peak_w = get_num(j, "virtual", "device_power_peak_w");
  r.gpu_tdp_w = get_num(j, "virtual", "gpu_tdp_w");
  r.device_power_rating_w = get_num(j, "virtual", "device_power_rating_w");
  r.prefill_link_ms = get_num(j, "virtual", "prefill_link_ms");
  if (j.contains("virtual")) {
    const auto& v = j["virtual"];
    r.virtual_link_bytes_per_step = v.value("link_bytes_per_step", uint64_t(0));
    r.virtual_device_bytes_per_step = v.value("device_bytes_per_step", uint64_t(0));
    if (v.contains("breakdown_ms")) {
      const auto& b = v["breakdown_ms"];
      r.breakdown_dense_ms = b.value("gpu_dense", 0.0);
      r.breakdown_link_ms = b.value("link", 0.0);
      r.breakdown_device_ms = b.value("device", 0.0);
      r.breakdown_merge_ms = b.value("merge", 0.0);
      r.breakdown_lm_head_ms = b.value("lm_head", 0.0);
      r.breakdown_gpu_attention_ms = b.value("gpu_attention", 0.0);
      r.breakdown_copy_ms = b.value("copy", 0.0);
    }
    if (v.contains("micro_batches")) {
      const auto& b = v["micro_batches"];
      r.micro_batches = b.value("count", 1u);
      r.micro_batch_serial_ms = b.value("serial_ms", 0.0);
      r.micro_batch_overlap_ms = b.value("overlap_ms", 0.0);
    }
    r.steady_hit_rate = v.contains("steady_hit_rate") && !v["steady_hit_rate"].is_null() ? v["steady_hit_rate"].get<double>() : 0;
    r.copy_bytes_per_step = v.value("copy_bytes_per_step", uint64_t(0));
    r.gpu_memory_bytes = v.contains("gpu_memory_bytes") && !v["gpu_memory_bytes"].is_null() ? v["gpu_memory_bytes"].get<double>() : 0;
    r.gpu_memory_capacity_bytes = v.contains("gpu_memory_capacity_bytes") && !v["gpu_memory_capacity_bytes"].is_null() ? v["gpu_memory_capacity_bytes"].get<double>() : 0;
    r.max_batch = v.value("max_batch", 0u);
    r.max_batch_gpu_memory = v.value("max_batch_gpu_memory", 0u);
    r.max_batch_device_capacity = v.value("max_batch_device_capacity", 0u);
  }
  if (j.contains("selection")) {
    r.cross_shard = j["selection"].value("cross_shard", "");
    r.summaries_resident = j["selection"].value("summaries_resident", false);
    r.selection = j["selection"].value("rule", "");
    r.budget_tokens = j["selection"].value("budget_tokens", r.budget_tokens);
  }
  if (j.contains("recall_cache")) {
    const auto& c = j["recall_cache"];
    r.recall_cache = c.value("policy", "none");
    r.recall_cache_tokens = c.value("capacity_tokens", uint64_t(0));
    r.recall_hits = c.value("hits", uint64_t(0));
    r.recall_misses = c.value("misses", uint64_t(0));
    r.recall_cache_shadow = c.value("shadow", false);
  }
  if (j.contains("requests")) {
    const auto& q = j["requests"];
    r.submitted = q.value("submitted", uint64_t(0));
    r.completed = q.value("completed", uint64_t(0));
    r.failed = q.value("failed", uint64_t(0));
    if (q.contains("failures")) r.failures = q["failures"].get<std::vector<std::string>>();
  }
}

// Requests and, for open workloads, serving figures per request and step.
void read_serving(const nlohmann::json& j, run_report& r) {
  if (j.contains("serving")) {
    const auto& s = j["serving"];
    auto d = [&](const nlohmann::json& o, const char* k) {
      return o.contains(k) && !o[k].is_null() ? o[k].get<double>() : 0.0;
    };
    r.arrivals = s.value("arrivals", "closed");
    r.virtual_time_s = d(s, "virtual_time_s");
    r.tokens_out = s.value("tokens_out", uint64_t(0));
    r.serving.submitted = s.value("submitted", uint64_t(0));
    r.serving.completed = s.value("completed", uint64_t(0));
    r.serving.refused = s.value("refused", uint64_t(0));
    r.serving.unfinished = s.value("unfinished", uint64_t(0));
    r.serving.failed = s.value("failed", uint64_t(0));
    r.serving.ttft_ms_mean = d(s, "ttft_ms_mean");
    r.serving.ttft_ms_p99 = d(s, "ttft_ms_p99");
    r.serving.tpot_ms_mean = d(s, "tpot_ms_mean");
    r.serving.tpot_ms_p99 = d(s, "tpot_ms_p99");
    r.serving.queueing_ms_mean = d(s, "queueing_ms_mean");
    r.serving.queueing_ms_p99 = d(s, "queueing_ms_p99");
    r.serving.batch_mean = d(s, "batch_mean");
    r.serving.batch_peak = s.value("batch_peak", 0u);
    if (s.contains("requests"))
      for (const auto& q : s["requests"]) {
        request_outcome o;
        o.id = q.value("id", uint64_t(0));
        o.arrival_s = d(q, "arrival_s");
        o.prompt_tokens = q.value("prompt_tokens", uint64_t(0));
        o.output_tokens = q.value("output_tokens", uint64_t(0));
        o.generated = q.value("generated", uint64_t(0));
        o.admitted_s = d(q, "admitted_s");
        o.first_token_s = d(q, "first_token_s");
        o.finish_s = d(q, "finish_s");
        o.refused = q.value("refused", false);
        o.refusal = q.value("refusal", "");
        o.failed = q.value("failed", false);
        o.failure = q.value("failure", "");
        r.request_outcomes.push_back(std::move(o));
      }
    if (s.contains("batch_series"))
      for (const auto& b : s["batch_series"])
        r.batch_series.push_back({d(b, "t_s"), b.value("decode_batch", 0u), b.value("prefill_tokens", uint64_t(0))});
  }
}

// Faults, per-device bytes and what the run measured for the simulator.
void read_faults_devices_calibration(const nlohmann::json& j, run_report& r) {
  if (j.contains("faults") && j["faults"].contains("devices_lost"))
    r.devices_lost = j["faults"]["devices_lost"].get<std::vector<uint32_t>>();
  if (j.contains("faults")) r.retries = j["faults"].value("retries", uint64_t(0));
  if (j.contains("faults") && j["faults"].contains("device_losses"))
    for (const auto& l : j["faults"]["device_losses"])
      r.device_losses.push_back({l.value("device", 0u), l.value("steps_done", 0u), l.value("reason", std::string()),
                                 l.value("detected_unix_ms", int64_t(0))});
  if (j.contains("devices"))
    for (const auto& d : j["devices"]) {
      r.device_ids.push_back(d.value("id", 0u));
      r.device_bytes_held.push_back(d.value("bytes_held", uint64_t(0)));
      r.device_bytes_modelled.push_back(d.value("bytes_modelled", uint64_t(0)));
    }
  if (j.contains("calibration") && j["calibration"].contains("values")) {
    const auto& c = j["calibration"]["values"];
    auto val = [&](const char* k) { return c.contains(k) ? c[k].value("value", 0.0) : 0.0; };
    r.cal_steady_hit_fraction = val("steady_hit_fraction");
    r.cal_steady_set_fraction = val("steady_set_fraction");
    r.cal_steady_churn_fraction = val("steady_churn_fraction");
    r.cal_steady_reeval_steps = static_cast<uint32_t>(val("steady_reeval_steps"));
    r.cal_selection_overlap = val("selection_overlap");
    r.cal_recall_hit_fraction = val("recall_hit_fraction");
    if (c.contains("recall_hit_fraction")) r.cal_recall_samples = c["recall_hit_fraction"].value("samples", uint64_t(0));
    r.cal_selection_spread = val("selection_spread");
    if (c.contains("steady_hit_fraction")) r.cal_samples = c["steady_hit_fraction"].value("samples", uint64_t(0));
    if (c.contains("steady_churn_fraction")) r.cal_churn_samples = c["steady_churn_fraction"].value("samples", uint64_t(0));
    r.budget_tokens = j["calibration"]["measured"].value("budget_tokens", uint64_t(0));
    if (c.contains("search_rescored_per_selected")) {
      r.cal_search_rescored_per_selected = val("search_rescored_per_selected");
      r.cal_search_samples = c["search_rescored_per_selected"].value("samples", uint64_t(0));
    }
    if (j["calibration"]["measured"].contains("search")) {
      const auto& s = j["calibration"]["measured"]["search"];
      r.cal_search = s.value("search", std::string());
      r.cal_search_pages_min = s.value("pages_per_search_min", 0.0);
      r.cal_search_pages_max = s.value("pages_per_search_max", 0.0);
    }
    const auto& cal = j["calibration"];
    if (cal.contains("search_points") && cal["search_points"].is_array() && !cal["search_points"].empty()) {
      const auto& p = cal["search_points"][0];
      r.cal_search_pages_mean = p.value("pages", 0.0);
      r.cal_search_selected_fraction = p.value("selected_fraction", 0.0);
      r.cal_search_heads_scored = p.value("heads_scored", 0u);
      r.cal_search_aggregation = p.value("aggregation", std::string());
      r.cal_search_workload = p.value("workload", std::string());
    }
  }
}

}  // namespace

run_report run_report::from_json(const std::string& text) {
  auto j = nlohmann::json::parse(text);
  run_report r;
  read_setup(j, r);
  read_accuracy_and_wall(j, r);
  read_virtual(j, r);
  read_serving(j, r);
  read_faults_devices_calibration(j, r);
  read_recovery(j, r);
  if (j.contains("output_digest"))
    r.output_digest = std::stoull(j["output_digest"].get<std::string>(), nullptr, 16);
  return r;
}

namespace {
std::string bytes_h(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f %s", b, units[u]);
  return buf;
}
}  // namespace

// Two-column rows of the readable report.
struct run_report::table {
  std::ostringstream os;
  char line[256];
  void row(const char* name, const std::string& value) {
    std::snprintf(line, sizeof line, "  %-34s %s\n", name, value.c_str());
    os << line;
  }
  static std::string f(const char* fmt, double v) {
    char b[64];
    if (!std::isfinite(v)) return std::string("n/a");
    std::snprintf(b, sizeof b, fmt, v);
    return std::string(b);
  }
};

// What ran.
void run_report::table_setup(table& t) const {
  auto& os = t.os;
  auto row = [&](const char* name, const std::string& value) { t.row(name, value); };
  os << "pnmkv run — " << mode << (multiprocess ? " (multi-process, UCX data plane)" : " (embedded)")
     << "\n";
  row("model", model_name + " (" + model_file + ")");
  row("hardware", hardware_name + " (" + hardware_file + ")");
  row("SIMD target (device kernels)", simd_target.empty() ? std::string("unknown") : simd_target);
  if (arrivals == "closed") {
    row("context / batch / steps", std::to_string(context_tokens) + " tokens / " +
                                       std::to_string(batch) + " / " + std::to_string(steps));
  } else {
    uint64_t lo = UINT64_MAX, hi = 0;
    for (const auto& o : request_outcomes) lo = std::min(lo, o.prompt_tokens), hi = std::max(hi, o.prompt_tokens);
    row("workload", arrivals + " arrivals, " + std::to_string(request_outcomes.size()) + " requests, prompts " +
                        (hi ? std::to_string(lo) + ".." + std::to_string(hi) : std::string("-")) + " tokens");
  }
  if (mode == to_string(run_mode::gpu_only))
    row("devices, placement", "none used: the GPU host holds each request (" + std::to_string(pnm_devices) +
                                  " devices started, idle, not charged)");
  else
    row("devices, placement", std::to_string(pnm_devices) + " devices, h=" +
                                std::to_string(head_groups) + " head groups x s=" +
                                std::to_string(sequence_shards) + " sequence shards" +
                                (sequence_shards > 1 ? ", " + cross_shard + " selection" : ""));
  if (!selection.empty()) row("selection", std::to_string(budget_tokens) + "-token budget, " + selection);
  row("live layers", std::to_string(live_layers) + " of " + std::to_string(layers) +
                         " computed; the other " + std::to_string(layers - live_layers) +
                         " are charged by the cost model only");
}

// Accuracy vs dense attention; wall time next to its roofline bound.
void run_report::table_accuracy_wall(table& t) const {
  auto& os = t.os;
  auto row = [&](const char* name, const std::string& value) { t.row(name, value); };
  auto f = table::f;
  os << "accuracy vs dense attention (" << accuracy_samples << " head-steps)\n";
  row("output rel. error mean / p99 / max",
      f("%.2e", output_rel_err_mean) + " / " + f("%.2e", output_rel_err_p99) + " / " +
          f("%.2e", output_rel_err_max));
  row("mass captured mean/p10/p01/min",
      f("%.4f", attention_mass_recall_mean) + " / " + f("%.4f", attention_mass_recall_p10) + " / " +
          f("%.4f", attention_mass_recall_p01) + " / " + f("%.4f", attention_mass_recall_min));
  row("needle hit rate", needles_asked ? f("%.3f", needle_hit_rate) + " (" +
                                             std::to_string(needles_asked) + " asked)"
                                       : std::string("no needle asked"));
  os << "wall time (this machine)\n";
  if (arrivals == "closed") row("prefill", f("%.2f s", prefill_wall_s));
  else row("prefill", "in the steps (chunked, next to decoding)");
  row("decode step p50 / mean / max", f("%.2f", step_wall_ms_p50) + " / " +
                                          f("%.2f", step_wall_ms_mean) + " / " +
                                          f("%.2f ms", step_wall_ms_max));
  row("device work per step", f("%.1f MB", double(live_device_bytes_per_step) / 1e6) + ", " +
                                  f("%.2f Gflop", live_device_flops_per_step / 1e9) +
                                  (live_device_int_ops_per_step > 0
                                       ? f(", %.2f G integer ops", live_device_int_ops_per_step / 1e9)
                                       : std::string()));
  row("read bw / compute peak measured",
      f("%.1f GB/s", read_gbps_measured) + " / " + f("%.1f Gflop/s", peak_gflops_measured) +
          " (" + std::to_string(kernel_threads) + " kernel threads)");
  row("roofline bound per step", f("%.2f ms", step_bound_ms) +
                                     " (max of bytes / bw, flops / peak)");
  row("step / bound", f("%.2fx", step_overhead_ratio));
}

// The modelled hardware.
void run_report::table_virtual_time(table& t) const {
  auto& os = t.os;
  auto row = [&](const char* name, const std::string& value) { t.row(name, value); };
  auto f = table::f;
  os << "virtual time (modelled hardware, all " << layers << " layers)\n";
  row("step time", f("%.3f ms", virtual_step_ms_mean));
  row("  gpu dense / link / device", f("%.3f", breakdown_dense_ms) + " / " +
                                         f("%.3f", breakdown_link_ms) + " / " +
                                         f("%.3f ms", breakdown_device_ms));
  row("  gpu attention / merge", f("%.3f", breakdown_gpu_attention_ms) + " / " +
                                      f("%.3f ms", breakdown_merge_ms));
  row("  steady copies / lm head", f("%.3f", breakdown_copy_ms) + " / " + f("%.3f ms", breakdown_lm_head_ms));
  if (micro_batches > 1)
    row("  micro-batches: overlap", std::to_string(micro_batches) + f(" micro-batches hid %.3f", micro_batch_overlap_ms) +
                                        f(" of %.3f ms in series", micro_batch_serial_ms));
  row("throughput", f("%.1f tokens/s", virtual_tokens_per_s));
  row("energy: component-level", f("%.4f J/token", virtual_energy_j_per_token) + f(" (%.0f W average)", virtual_power_w));
  row("energy: all-in", f("%.4f J/token", virtual_energy_all_in_j_per_token) +
                            f(" (%.0f W average, ", virtual_power_all_in_w) +
                            f("host + switch %.0f W)", virtual_host_switch_power_w));
  row("peak power: gpu / all-in", f("%.1f", gpu_power_peak_w) + " / " + f("%.1f W", gpu_all_in_power_peak_w) +
                                      f(" of gpu.tdp_w = %.0f W", gpu_tdp_w));
  row(mode == to_string(run_mode::baseline) ? "peak power: busiest expander" : "peak power: busiest device",
      f("%.1f W", device_power_peak_w) +
          f(mode == to_string(run_mode::baseline) ? " of expander.power_w = %.0f W" : " of pnm_device.power_w = %.0f W",
            device_power_rating_w));
  row("cost efficiency", f("%.3e tokens/$", virtual_tokens_per_dollar) +
                             f(" (all-in power: %.3e)", virtual_tokens_per_dollar_all_in));
  row("link bytes per step", bytes_h(double(virtual_link_bytes_per_step)));
  if (mode == to_string(run_mode::png_kv))
    row("steady hit rate / copies per step",
        f("%.3f", steady_hit_rate) + " / " + bytes_h(double(copy_bytes_per_step)));
  if (mode == to_string(run_mode::gpu_only))
    row("KV", "in GPU memory: no device holds, scans or is charged anything");
  if (mode == to_string(run_mode::baseline))
    row("page summaries", summaries_resident ? "resident in GPU memory" : "read over the link each step");
  if (mode == to_string(run_mode::baseline))
    row("recall cache", recall_cache == "none"
                            ? std::string("none: every selected page recalled every step")
                            : recall_cache + ", " + std::to_string(recall_cache_tokens) +
                                  " tokens per head: hits " + std::to_string(recall_hits) + " / misses " +
                                  std::to_string(recall_misses) + f(" pages (hit rate %.3f", recall_hit_rate()) +
                                  f(", after the first step %.3f)", cal_recall_hit_fraction));
  row("GPU memory for the batch", bytes_h(gpu_memory_bytes) + " of " + bytes_h(gpu_memory_capacity_bytes));
  row("max batch at this context", std::to_string(max_batch) + " (GPU memory " +
                                       std::to_string(max_batch_gpu_memory) + ", device capacity " +
                                       std::to_string(max_batch_device_capacity) + ")");
  row("device bytes scanned per step", bytes_h(double(virtual_device_bytes_per_step)));
}

// Open workloads: requests over virtual time.
void run_report::table_serving(table& t) const {
  auto& os = t.os;
  auto row = [&](const char* name, const std::string& value) { t.row(name, value); };
  auto f = table::f;
  if (arrivals != "closed") {
    const serving_summary& s = serving;
    os << "serving (" << arrivals << " arrivals, continuous batching; virtual time)\n";
    row("requests completed / refused / unfinished",
        std::to_string(s.completed) + " / " + std::to_string(s.refused) + " / " + std::to_string(s.unfinished) +
            " of " + std::to_string(s.submitted) +
            (s.failed ? " (and " + std::to_string(s.failed) + " lost with their devices)" : std::string()));
    row("output tokens / virtual time", std::to_string(tokens_out) + f(" tokens / %.3f s", virtual_time_s));
    row("TTFT mean / p99", f("%.2f", s.ttft_ms_mean) + " / " + f("%.2f ms", s.ttft_ms_p99));
    row("TPOT mean / p99", f("%.3f", s.tpot_ms_mean) + " / " + f("%.3f ms", s.tpot_ms_p99));
    row("queueing delay mean / p99", f("%.2f", s.queueing_ms_mean) + " / " + f("%.2f ms", s.queueing_ms_p99));
    row("decode batch mean / peak", f("%.2f", s.batch_mean) + " / " + std::to_string(s.batch_peak));
    // Batch size over time, coarsely: up to 12 evenly spaced steps.
    if (!batch_series.empty()) {
      std::string over;
      const size_t n = batch_series.size(), k = std::min<size_t>(12, n);
      for (size_t i = 0; i < k; ++i) {
        const auto& b = batch_series[(i * (n - 1)) / std::max<size_t>(1, k - 1)];
        over += (i ? " " : "") + std::to_string(b.decode_batch) + f("@%.2fs", b.t_s);
      }
      row("decode batch over time", over);
    }
  }
}

// Requests, faults, device bytes.
void run_report::table_requests_and_devices(table& t) const {
  auto& os = t.os;
  auto row = [&](const char* name, const std::string& value) { t.row(name, value); };
  os << "requests\n";
  row("submitted / completed / failed", std::to_string(submitted) + " / " +
                                            std::to_string(completed) + " / " +
                                            std::to_string(failed));
  for (const auto& fl : failures) row("  failed", fl);
  if (!stopped.empty()) {
    const uint64_t left = submitted > completed + failed ? submitted - completed - failed : 0;
    row("stopped early", stopped + ": " + std::to_string(steps_done) + " steps done, " + std::to_string(left) +
                             " requests unfinished");
  }
  if (retries) row("retries (lost messages sent again)", std::to_string(retries));
  if (fenced_messages) row("late messages from fenced devices", std::to_string(fenced_messages) + " dropped");
  for (const auto& ev : shutdown_events) row("  node shutdown", ev);
  if (coordinator_restarts)
    row("coordinator restarts", std::to_string(coordinator_restarts) + " (resumed from its journal)");
  if (!devices_lost.empty()) {
    std::string ids;
    for (uint32_t d : devices_lost) ids += (ids.empty() ? "" : ", ") + std::to_string(d);
    row("devices lost, failed over", ids + " (fenced; their shards served by replicas, new copies or recomputed)");
  }
  for (const auto& b : rebuilds) {
    char line[320];
    std::snprintf(line, sizeof line, "%s -> device %u: %s, %s%s, %.1f ms wall, %.3f ms virtual stall",
                  b.kind == "recompute" ? "recomputed" : ("copied from device " + std::to_string(b.source)).c_str(),
                  b.target, b.outcome.c_str(), bytes_h(double(b.bytes)).c_str(),
                  b.tokens ? (", " + std::to_string(b.tokens) + " tokens re-prefilled").c_str() : "", b.wall_ms,
                  b.stall_ms);
    row(("  shard " + std::to_string(b.shard_id) + " of request " + std::to_string(b.request_id)).c_str(), line);
  }
  for (const auto& l : device_losses)
    row(("  device " + std::to_string(l.device) + " detected").c_str(),
        utc_ms(l.detected_unix_ms) + " after " + std::to_string(l.steps_done) + " decode steps: " + l.reason);
  os << "devices (bytes held: emulator, live layers | modelled, all layers)\n";
  for (size_t i = 0; i < device_ids.size(); ++i) {
    std::snprintf(t.line, sizeof t.line, "  device %-4u %14s | %s\n", device_ids[i],
                  bytes_h(double(i < device_bytes_held.size() ? device_bytes_held[i] : 0)).c_str(),
                  bytes_h(double(i < device_bytes_modelled.size() ? device_bytes_modelled[i] : 0)).c_str());
    os << t.line;
  }
}

std::string run_report::to_table() const {
  table t;
  table_setup(t);
  table_accuracy_wall(t);
  table_virtual_time(t);
  table_serving(t);
  table_requests_and_devices(t);
  t.row("output digest", output_digest_hex());
  return t.os.str();
}

}  // namespace pnmkv
