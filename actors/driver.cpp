// The driver actor (see driver.hpp).
#include "actors/driver.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>

namespace pnmkv::actors {

caf::behavior driver_actor(driver_state::actor_type* self, std::shared_ptr<const run_setup> setup,
                           caf::actor coordinator, caf::actor report_to) {
  self->state.init(std::move(setup), std::move(coordinator), std::move(report_to));
  return {
      [self](ctl_atom, const std::string& bytes) { self->state.on_control(bytes); },
      [self](join_atom, const std::string& bytes) { self->state.on_join(bytes); },
      [self](stop_atom) { self->state.on_stop(); },
      [self](coord_atom, const caf::actor& c) { self->state.on_coordinator(c); },
  };
}

std::string driver_refusal(const std::string& report_json) {
  const auto j = nlohmann::json::parse(report_json, nullptr, false);
  if (j.is_discarded() || !j.is_object() || !j.contains("refused") || !j["refused"].is_string()) return {};
  return j["refused"].get<std::string>();
}

void driver_state::init(std::shared_ptr<const run_setup> setup, caf::actor coordinator,
                        caf::actor report_to) {
  setup_ = std::move(setup);
  coordinator_ = std::move(coordinator);
  report_to_ = std::move(report_to);
  start_join(self_, coordinator_, driver_node, transport::node_role::driver);
}

void driver_state::on_join(const std::string& bytes) {
  on_join_bytes(self_, *setup_, coordinator_, driver_node, transport::node_role::driver, {}, bytes,
                [this](bool accepted, const std::string& reason) {
                  if (accepted) return submit_all();
                  cluster_log().error("node={} event=driver_refused reason=\"{}\"", driver_node, reason);
                  nlohmann::ordered_json j;
                  j["refused"] = "the coordinator refused this driver's join: " + reason +
                                 " (a driver proves the cluster secret like a node: fabric.cluster_secret_file)";
                  self_->send(report_to_, done_atom::value, false, j.dump());
                  self_->quit();
                });
}

// Asks the coordinator (which trusts this driver: it joined) to shut the cluster down; quits.
void driver_state::on_stop() {
  control::outbound out(driver_node);
  out.body().setShutdown();
  self_->send(coordinator_, ctl_atom::value, wire_string(out));
  self_->quit();
}

void driver_state::submit_all() {
  if (setup_->open_workload()) {
    // Open workloads: every request with its arrival; the GPU host admits them over
    // virtual time. Ids are 1.. in arrival order.
    for (size_t i = 0; i < setup_->arrivals.size(); ++i) {
      const trace_row& a = setup_->arrivals[i];
      submit({i + 1, a.prompt_tokens, uint32_t(std::max<uint64_t>(1, a.output_tokens) - 1),
              uint64_t(std::llround(a.arrival_s * 1e9))});
    }
  } else {
    for (uint32_t i = 0; i < setup_->batch; ++i) submit({i + 1, setup_->context_tokens, setup_->steps});
  }
}

void driver_state::submit(const control::request_spec& r) {
  control::outbound out(driver_node);
  control::to_wire(r, out.body().initSubmit().initRequest());
  self_->send(coordinator_, ctl_atom::value, wire_string(out));
}

void driver_state::on_control(const std::string& bytes) {
  auto m = control::decode(bytes);
  if (!m) return;
  switch (m->kind()) {
    case control::msg_kind::ADMISSION: return on_admission(m->admission());
    case control::msg_kind::PROGRESS: return self_->send(report_to_, ctl_atom::value, bytes);
    case control::msg_kind::RUN_RESULT: return on_result(m->run_result());
    case control::msg_kind::STOP:
      if (!stopping_.empty()) return;
      stopping_ = m->stop().getReason().cStr();
      return self_->send(coordinator_, ctl_atom::value, bytes);
    default: return;
  }
}

void driver_state::on_coordinator(const caf::actor& coordinator) {
  cluster_log().warn("node={} event=coordinator_back", driver_node);
  coordinator_ = coordinator;
  start_join(self_, coordinator_, driver_node, transport::node_role::driver);
}

void driver_state::on_admission(control::wire::Admission::Reader a) {
  if (!answered_.insert(a.getRequestId()).second) return;  // repeated by a restarted coordinator
  if (a.getAccepted()) {
    ++accepted_;
  } else {
    ++refused_;
    failures_.push_back("request " + std::to_string(a.getRequestId()) + ": " + a.getReason().cStr());
  }
}

// The GPU host's report, with what the driver knows: the requests refused at admission.
// The host counts the requests it lost with their devices (requests.failed, one line each
// in requests.failures) and, in a run stopped early, what finished.
void driver_state::on_result(control::wire::RunResult::Reader r) {
  nlohmann::ordered_json j = nlohmann::ordered_json::object();
  const auto report = r.getReportJson();
  if (report.size() > 0) j = nlohmann::ordered_json::parse(report.begin(), report.end(), nullptr, false);
  if (j.is_discarded() || !j.is_object()) j = nlohmann::ordered_json::object();
  auto& req = j["requests"];
  if (!req.is_object()) req = nlohmann::ordered_json::object();
  const bool stopped = !stopping_.empty();
  if (stopped && !req.contains("stopped")) req["stopped"] = stopping_;
  const bool ran = r.getOk() || stopped;  // the report says what finished
  const uint64_t lost = ran ? req.value("failed", uint64_t(0)) : 0;
  auto failures = failures_;
  if (ran && req.contains("failures") && req["failures"].is_array())
    for (const auto& f : req["failures"])
      if (f.is_string()) failures.push_back(f.get<std::string>());
  if (setup_->open_workload()) {
    // The GPU host's scheduler knows what became of each request.
    const auto& s = j.contains("serving") ? j["serving"] : nlohmann::ordered_json::object();
    const uint64_t n = setup_->arrivals.size(), completed = ran ? s.value("completed", uint64_t(0)) : 0;
    req["submitted"] = n;
    req["completed"] = completed;
    req["failed"] = stopped ? s.value("refused", uint64_t(0)) + lost : n - completed;
    if (s.contains("requests"))
      for (const auto& q : s["requests"])
        if (q.value("refused", false))
          failures.push_back("request " + std::to_string(q.value("id", uint64_t(0))) +
                             " refused: " + q.value("refusal", std::string()));
  } else {
    const uint64_t completed = r.getOk() ? accepted_ - std::min(accepted_, lost) : 0;
    req["submitted"] = setup_->batch;
    req["completed"] = completed;
    req["failed"] = refused_ + (ran ? lost : accepted_);
  }
  if (!r.getOk() && !stopped) failures.push_back(std::string("run: ") + r.getReason().cStr());
  req["failures"] = failures;
  self_->send(report_to_, done_atom::value, r.getOk(), j.dump());
  on_stop();
}

}  // namespace pnmkv::actors
