// Control-plane encoding (see control.hpp).
#include "actors/control.hpp"

#include <capnp/message.h>
#include <capnp/serialize.h>

#include <cstring>

#include "actors/control.capnp.h"

namespace pnmkv::control {

namespace {
void fill_spec(wire::RequestSpec::Builder b, const request_spec_msg& r) {
  b.setRequestId(r.request_id);
  b.setContextTokens(r.context_tokens);
  b.setSteps(r.steps);
  b.setArrivalNs(r.arrival_ns);
}
request_spec_msg read_spec(wire::RequestSpec::Reader r) {
  return {r.getRequestId(), r.getContextTokens(), r.getSteps(), r.getArrivalNs()};
}
template <class... Ts>
struct overloaded : Ts... {
  using Ts::operator()...;
};
template <class... Ts>
overloaded(Ts...) -> overloaded<Ts...>;
}  // namespace

std::string encode(const control_message& m) {
  capnp::MallocMessageBuilder mb;
  auto root = mb.initRoot<wire::Control>();
  root.setVersion(control_version);
  root.setSender(m.sender);
  auto body = root.initBody();
  std::visit(overloaded{
                 [&](const hello_msg& x) {
                   auto b = body.initHello();
                   b.setNodeId(x.node);
                   b.setRole(x.role);
                 },
                 [&](const submit_msg& x) { fill_spec(body.initSubmit().initRequest(), x.request); },
                 [&](const admission_msg& x) {
                   auto b = body.initAdmission();
                   b.setRequestId(x.request_id);
                   b.setAccepted(x.accepted);
                   b.setReason(x.reason);
                 },
                 [&](const placement_ack_msg& x) {
                   auto b = body.initPlacementAck();
                   b.setNodeId(x.node);
                   b.setRequestId(x.request_id);
                   b.setOk(x.ok);
                   b.setReason(x.reason);
                 },
                 [&](const run_start_msg& x) {
                   auto rs = body.initRunStart();
                   rs.setOpen(x.open);
                   auto l = rs.initRequests(static_cast<unsigned>(x.requests.size()));
                   for (unsigned i = 0; i < x.requests.size(); ++i) fill_spec(l[i], x.requests[i]);
                 },
                 [&](const admit_msg& x) {
                   auto b = body.initAdmit();
                   b.setRequestId(x.request_id);
                   b.setInSystem(x.in_system);
                 },
                 [&](const release_msg& x) { body.initRelease().setRequestId(x.request_id); },
                 [&](const run_result_msg& x) {
                   auto b = body.initRunResult();
                   b.setReportJson(x.report_json);
                   b.setOk(x.ok);
                   b.setReason(x.reason);
                 },
                 [&](const shutdown_msg&) { body.setShutdown(); },
                 [&](const member_down_msg& x) {
                   auto b = body.initMemberDown();
                   b.setNodeId(x.node);
                   b.setReason(x.reason);
                 },
                 [&](const progress_msg& x) {
                   auto b = body.initProgress();
                   b.setPhase(x.phase);
                   b.setDone(x.done);
                   b.setTotal(x.total);
                 },
             },
             m.body);
  auto words = capnp::messageToFlatArray(mb);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

result<control_message> decode(const std::string& bytes) {
  if (bytes.size() > max_control_bytes)
    return status{errc::capacity, "control message of " + std::to_string(bytes.size()) +
                                      " bytes exceeds the limit of " +
                                      std::to_string(max_control_bytes)};
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0)
    return status{errc::parse, "control message is not a whole number of 8-byte words"};
  // Copy into aligned words: capnp reads words.
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = bytes.size() / sizeof(capnp::word) + 64;
    opts.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(words.asPtr(), opts);
    auto root = reader.getRoot<wire::Control>();
    if (root.getVersion() != control_version)
      return status{errc::parse, "control message version " + std::to_string(root.getVersion()) +
                                     " is not the supported version " +
                                     std::to_string(control_version)};
    control_message m;
    m.sender = root.getSender();
    auto body = root.getBody();
    switch (body.which()) {
      case wire::Control::Body::HELLO:
        m.body = hello_msg{body.getHello().getNodeId(), body.getHello().getRole()};
        break;
      case wire::Control::Body::SUBMIT:
        m.body = submit_msg{read_spec(body.getSubmit().getRequest())};
        break;
      case wire::Control::Body::ADMISSION: {
        auto a = body.getAdmission();
        m.body = admission_msg{a.getRequestId(), a.getAccepted(), a.getReason()};
        break;
      }
      case wire::Control::Body::PLACEMENT_ACK: {
        auto a = body.getPlacementAck();
        m.body = placement_ack_msg{a.getNodeId(), a.getRequestId(), a.getOk(), a.getReason()};
        break;
      }
      case wire::Control::Body::RUN_START: {
        auto l = body.getRunStart().getRequests();
        if (l.size() > max_requests_per_run)
          return status{errc::capacity, "run start lists " + std::to_string(l.size()) +
                                            " requests; the limit is " +
                                            std::to_string(max_requests_per_run)};
        run_start_msg rs;
        rs.open = body.getRunStart().getOpen();
        for (auto r : l) rs.requests.push_back(read_spec(r));
        m.body = std::move(rs);
        break;
      }
      case wire::Control::Body::RUN_RESULT: {
        auto r = body.getRunResult();
        m.body = run_result_msg{r.getReportJson(), r.getOk(), r.getReason()};
        break;
      }
      case wire::Control::Body::SHUTDOWN:
        m.body = shutdown_msg{};
        break;
      case wire::Control::Body::MEMBER_DOWN: {
        auto d = body.getMemberDown();
        m.body = member_down_msg{d.getNodeId(), d.getReason()};
        break;
      }
      case wire::Control::Body::PROGRESS: {
        auto p = body.getProgress();
        m.body = progress_msg{p.getPhase(), p.getDone(), p.getTotal()};
        break;
      }
      case wire::Control::Body::ADMIT:
        m.body = admit_msg{body.getAdmit().getRequestId(), body.getAdmit().getInSystem()};
        break;
      case wire::Control::Body::RELEASE:
        m.body = release_msg{body.getRelease().getRequestId()};
        break;
      default:
        return status{errc::parse, "control message of unknown kind"};
    }
    return m;
  } catch (const std::exception& e) {
    return status{errc::parse, std::string("malformed control message: ") + e.what()};
  }
}

}  // namespace pnmkv::control
