// The control plane's validating decoder, its outbound and its one plain struct (control.hpp).
#include "actors/control.hpp"

#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>

#include <chrono>
#include <limits>

namespace pnmkv::control {

using W = wire::Control::Body::Which;
static_assert(static_cast<int>(W::HELLO) == 0 && static_cast<int>(W::RESUME) == 14,
              "the union's alternatives in their schema order");
inline constexpr unsigned msg_kind_count = 15;

const char* to_string(msg_kind kind) {
  auto fields = capnp::Schema::from<wire::Control::Body>().getUnionFields();
  const auto i = static_cast<unsigned>(kind);
  return i < fields.size() ? fields[i].getProto().getName().cStr() : "unknown";
}

void to_wire(const request_spec& r, wire::RequestSpec::Builder out) {
  out.setRequestId(r.request_id);
  out.setContextTokens(r.context_tokens);
  out.setSteps(r.steps);
  out.setArrivalNs(r.arrival_ns);
}

request_spec from_wire(wire::RequestSpec::Reader r) {
  return {r.getRequestId(), r.getContextTokens(), r.getSteps(), r.getArrivalNs()};
}

namespace {
constexpr unsigned role_count = static_cast<unsigned>(transport::node_role::driver) + 1;
}  // namespace

void set_role(wire::Hello::Builder hello, transport::node_role role) {
  hello.setRole(static_cast<uint8_t>(role));
}

transport::node_role role_of(wire::Hello::Reader hello) {
  PNMKV_CHECK(hello.getRole() < role_count, "role=", int(hello.getRole()),
              " (decode() admits known roles only)");
  return static_cast<transport::node_role>(hello.getRole());
}

std::string bounded_text(std::string text) {
  if (text.size() > max_text_bytes) text.resize(max_text_bytes);
  return text;
}

outbound::outbound(uint32_t sender, size_t payload_bytes) : basic_outbound(payload_bytes) {
  root().setVersion(control_version);
  root().setSender(sender);
}

// ---------------------------------------------------------------------------------------
// Validation: the one place that decides whether bytes are a control message this node
// accepts. It reads every pointer a handler reads (a far pointer into nowhere is refused
// here, not thrown at a handler) and checks every value the schema cannot.

namespace {

// Thrown inside the decoder (never escapes it) to unwind out of nested validation.
struct rejection {
  errc code;
  std::string what;
};

template <class... Args>
[[noreturn]] void reject(errc code, fmt::format_string<Args...> f, Args&&... args) {
  throw rejection{code, fmt::format(f, std::forward<Args>(args)...)};
}

void text(const char* field, capnp::Text::Reader t) {
  if (t.size() > max_text_bytes)
    reject(errc::capacity, "{}: {} bytes, limit {} (control::max_text_bytes)", field, t.size(),
           max_text_bytes);
}

void request_id(const char* field, uint64_t id) {
  if (id == 0) reject(errc::invalid_argument, "{} = 0 (request ids are >= 1)", field);
}

void check(wire::Hello::Reader h) {
  if (h.getRole() >= role_count)
    reject(errc::invalid_argument, "hello.role = {} unknown (0 gpu-host, 1 pnm-device, "
           "2 coordinator, 3 driver)", h.getRole());
}

void check(wire::RunStart::Reader rs) {
  // Each get of a list counts its size against the traversal limit again: get it once.
  auto requests = rs.getRequests();
  if (requests.size() > max_requests_per_run)
    reject(errc::capacity, "run_start.requests: {} requests, limit {} (control::"
           "max_requests_per_run)", requests.size(), max_requests_per_run);
  for (auto r : requests) request_id("run_start.requests[].request_id", r.getRequestId());
}

void check(wire::Resume::Reader r) {
  auto released = r.getReleased();
  auto down = r.getFailedOver();
  auto asks = r.getCopyAsks();
  if (released.size() > max_requests_per_run || down.size() > max_requests_per_run ||
      asks.size() > max_requests_per_run)
    reject(errc::capacity, "resume: {} released, {} failed over, {} copy asks; limit {} each "
           "(control::max_requests_per_run)", released.size(), down.size(), asks.size(), max_requests_per_run);
  for (uint64_t id : released) request_id("resume.released[]", id);
  for (auto d : down) text("resume.failed_over[].reason", d.getReason());
  for (auto a : asks) request_id("resume.copy_asks[].request_id", a.getRequestId());
}

void check(wire::Control::Body::Reader body) {
  switch (body.which()) {
    case W::HELLO: return check(body.getHello());
    case W::SUBMIT: return request_id("submit.request.request_id",
                                      body.getSubmit().getRequest().getRequestId());
    case W::ADMISSION:
      request_id("admission.request_id", body.getAdmission().getRequestId());
      return text("admission.reason", body.getAdmission().getReason());
    case W::PLACEMENT_ACK:
      request_id("placement_ack.request_id", body.getPlacementAck().getRequestId());
      return text("placement_ack.reason", body.getPlacementAck().getReason());
    case W::RUN_START: return check(body.getRunStart());
    case W::RUN_RESULT:
      // Bounded by the message size; read here so that a bad pointer is refused by the
      // decoder, not met by a handler.
      (void)body.getRunResult().getReportJson();
      return text("run_result.reason", body.getRunResult().getReason());
    case W::SHUTDOWN: return;
    case W::PROGRESS: return text("progress.phase", body.getProgress().getPhase());
    case W::MEMBER_DOWN: return text("member_down.reason", body.getMemberDown().getReason());
    case W::ADMIT: return request_id("admit.request_id", body.getAdmit().getRequestId());
    case W::RELEASE: return request_id("release.request_id", body.getRelease().getRequestId());
    case W::STOP: return text("stop.reason", body.getStop().getReason());
    case W::COPY_ASK: return request_id("copy_ask.request_id", body.getCopyAsk().getRequestId());
    case W::COPY_GRANT:
      request_id("copy_grant.request_id", body.getCopyGrant().getRequestId());
      return text("copy_grant.reason", body.getCopyGrant().getReason());
    case W::RESUME: return check(body.getResume());
  }
  reject(errc::unsupported, "message kind {} unknown (a newer sender?)",
         static_cast<unsigned>(body.which()));
}

// Validates a message (whole words, at most max_control_bytes); its sender and kind.
void validate(const std::vector<uint8_t>& bytes, uint32_t& sender, msg_kind& kind) {
  capnp::ReaderOptions opts;
  // The validator reads each pointer once: twice the input's words bounds amplification by
  // crafted pointers.
  opts.traversalLimitInWords = 2 * (bytes.size() / 8) + 64;
  opts.nestingLimit = 16;
  capnp::FlatArrayMessageReader reader(transport::words_of(bytes), opts);
  auto root = reader.getRoot<wire::Control>();
  if (root.getVersion() != control_version)
    reject(errc::unsupported, "control protocol version {} (this node speaks {})",
           root.getVersion(), control_version);
  auto body = root.getBody();
  if (static_cast<unsigned>(body.which()) >= msg_kind_count)
    reject(errc::unsupported, "message kind {} unknown (a newer sender?)",
           static_cast<unsigned>(body.which()));
  check(body);
  sender = root.getSender();
  kind = body.which();
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Received messages

struct received_access {
  static received make(std::vector<uint8_t>&& bytes, uint32_t sender, msg_kind kind) {
    return received(std::move(bytes), sender, kind);
  }
  static journal_entry make_entry(std::vector<uint8_t>&& bytes) { return journal_entry(std::move(bytes)); }
};

void received::expect(msg_kind k) const {
  PNMKV_CHECK(kind_ == k, "reading a ", to_string(kind_), " message as ", to_string(k));
}

#define PNMKV_BODY_READER(Type, name, kind, getter) \
  wire::Type::Reader received::name() const {       \
    expect(W::kind);                                \
    return body().getter();                         \
  }
PNMKV_BODY_READER(Hello, hello, HELLO, getHello)
PNMKV_BODY_READER(Submit, submit, SUBMIT, getSubmit)
PNMKV_BODY_READER(Admission, admission, ADMISSION, getAdmission)
PNMKV_BODY_READER(PlacementAck, placement_ack, PLACEMENT_ACK, getPlacementAck)
PNMKV_BODY_READER(RunStart, run_start, RUN_START, getRunStart)
PNMKV_BODY_READER(RunResult, run_result, RUN_RESULT, getRunResult)
PNMKV_BODY_READER(Progress, progress, PROGRESS, getProgress)
PNMKV_BODY_READER(MemberDown, member_down, MEMBER_DOWN, getMemberDown)
PNMKV_BODY_READER(Admit, admit, ADMIT, getAdmit)
PNMKV_BODY_READER(Release, release, RELEASE, getRelease)
PNMKV_BODY_READER(Stop, stop, STOP, getStop)
PNMKV_BODY_READER(CopyAsk, copy_ask, COPY_ASK, getCopyAsk)
PNMKV_BODY_READER(CopyGrant, copy_grant, COPY_GRANT, getCopyGrant)
PNMKV_BODY_READER(Resume, resume, RESUME, getResume)
#undef PNMKV_BODY_READER

result<received> decode(const std::string& bytes) {
  if (bytes.size() > max_control_bytes)
    return status{errc::capacity, fmt::format("control message of {} bytes exceeds the limit "
                                              "of {}", bytes.size(), max_control_bytes)};
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0)
    return status{errc::parse, fmt::format("control message of {} bytes is not a whole, "
                                           "non-zero number of 8-byte words", bytes.size())};
  // Copied into aligned words: capnp reads words, a std::string need not be aligned.
  std::vector<uint8_t> owned(bytes.begin(), bytes.end());
  try {
    uint32_t sender = 0;
    msg_kind kind = msg_kind::SHUTDOWN;
    validate(owned, sender, kind);
    return received_access::make(std::move(owned), sender, kind);
  } catch (const rejection& r) {
    return status{r.code, r.what};
  } catch (const kj::Exception& e) {
    return status{errc::parse, std::string("malformed control message: ") +
                                   e.getDescription().cStr()};
  } catch (const std::exception& e) {
    return status{errc::parse, std::string("malformed control message: ") + e.what()};
  }
}

// ---------------------------------------------------------------------------------------
// Journal records

journal_outbound::journal_outbound(size_t payload_bytes) : basic_outbound(payload_bytes) {
  root().setVersion(journal_record_version);
  root().setUnixMs(static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count()));
}

namespace {

using J = wire::JournalRecord::Body::Which;
static_assert(static_cast<int>(J::BEGIN) == 0 && static_cast<int>(J::COPY_GRANTED) == 9,
              "the journal union's alternatives in their schema order");
inline constexpr unsigned journal_kind_count = 10;

void check(wire::JournalRecord::Body::Reader body) {
  switch (body.which()) {
    case J::BEGIN: return;
    case J::MEMBER: {
      auto m = body.getMember();
      if (m.getRole() >= role_count) reject(errc::invalid_argument, "member.role = {} unknown", m.getRole());
      if (m.getAddress().size() > max_text_bytes)
        reject(errc::capacity, "member.address: {} bytes, limit {}", m.getAddress().size(), max_text_bytes);
      return;
    }
    case J::READY: return;
    case J::FENCED: return text("fenced.reason", body.getFenced().getReason());
    case J::ADMIT_TRIED:
      return request_id("admit_tried.request.request_id", body.getAdmitTried().getRequest().getRequestId());
    case J::DECIDED:
      request_id("decided.request_id", body.getDecided().getRequestId());
      return text("decided.reason", body.getDecided().getReason());
    case J::RUN_STARTED: return;
    case J::RELEASED: return request_id("released", body.getReleased());
    case J::COPY_PLACED: return request_id("copy_placed.request_id", body.getCopyPlaced().getRequestId());
    case J::COPY_GRANTED:
      request_id("copy_granted.request_id", body.getCopyGranted().getRequestId());
      return text("copy_granted.reason", body.getCopyGranted().getReason());
  }
  reject(errc::unsupported, "journal record kind {} unknown (written by a newer pnmkv?)",
         static_cast<unsigned>(body.which()));
}

}  // namespace

result<journal_entry> decode_journal_record(std::vector<uint8_t>&& bytes) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0)
    return status{errc::parse, fmt::format("journal record of {} bytes is not a whole, non-zero number of "
                                           "8-byte words", bytes.size())};
  try {
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = 2 * (bytes.size() / 8) + 64;
    opts.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(transport::words_of(bytes), opts);
    auto root = reader.getRoot<wire::JournalRecord>();
    if (root.getVersion() != journal_record_version)
      reject(errc::unsupported, "journal record version {} (this pnmkv writes {})", root.getVersion(),
             journal_record_version);
    if (static_cast<unsigned>(root.getBody().which()) >= journal_kind_count)
      reject(errc::unsupported, "journal record kind {} unknown (written by a newer pnmkv?)",
             static_cast<unsigned>(root.getBody().which()));
    check(root.getBody());
  } catch (const rejection& r) {
    return status{r.code, r.what};
  } catch (const kj::Exception& e) {
    return status{errc::parse, std::string("malformed journal record: ") + e.getDescription().cStr()};
  }
  return received_access::make_entry(std::move(bytes));
}

}  // namespace pnmkv::control
