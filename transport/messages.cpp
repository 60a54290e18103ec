// The wire's builder arena, its validating decoder and its enum codec (transport/messages.hpp).
#include "transport/messages.hpp"

#include <capnp/any.h>
#include <capnp/schema.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "transport/crc32c.hpp"
#include "transport/log.hpp"

namespace pnmkv::transport {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "tensor blobs are little-endian; a big-endian port must swap them");

using W = wire::Envelope::Body::Which;
static_assert(static_cast<int>(W::CHALLENGE) == static_cast<int>(msg_kind::challenge));
static_assert(static_cast<int>(W::PREFILL_WRITE) == static_cast<int>(msg_kind::prefill_write));
static_assert(static_cast<int>(W::QUERY) == static_cast<int>(msg_kind::query));
static_assert(static_cast<int>(W::PARTIAL) == static_cast<int>(msg_kind::partial));
static_assert(static_cast<int>(W::RECALL_REPLY) == static_cast<int>(msg_kind::recall_reply));
static_assert(static_cast<int>(W::REGION_ADVERT) == static_cast<int>(msg_kind::region_advert));
static_assert(static_cast<int>(W::WRITE_ACK) == static_cast<int>(msg_kind::write_ack));
static_assert(static_cast<int>(W::WRITE_ACK) + 1 == static_cast<int>(msg_kind_count));

// ---------------------------------------------------------------------------------------
// Enum codec. The numbers agree, so encoding is a cast: a value out of range travels as it is
// and the receiver refuses it (bad_value) like any malformed field.

#define PNMKV_SAME_VALUE(cpp, capnp) \
  static_assert(static_cast<int>(cpp) == static_cast<int>(capnp), #cpp " != " #capnp)
PNMKV_SAME_VALUE(node_role::gpu_host, wire::Role::GPU_HOST);
PNMKV_SAME_VALUE(node_role::pnm_device, wire::Role::PNM_DEVICE);
PNMKV_SAME_VALUE(node_role::coordinator, wire::Role::COORDINATOR);
PNMKV_SAME_VALUE(node_role::driver, wire::Role::DRIVER);
PNMKV_SAME_VALUE(selection_round::local, wire::SelectionRound::LOCAL);
PNMKV_SAME_VALUE(selection_round::exact_candidates, wire::SelectionRound::EXACT_CANDIDATES);
PNMKV_SAME_VALUE(selection_round::exact_attend, wire::SelectionRound::EXACT_ATTEND);
PNMKV_SAME_VALUE(selection_round::dense, wire::SelectionRound::DENSE);
#undef PNMKV_SAME_VALUE

wire::Role to_wire(node_role r) { return static_cast<wire::Role>(r); }
wire::SelectionRound to_wire(selection_round r) { return static_cast<wire::SelectionRound>(r); }

namespace {

// False for a value this build does not know.
bool known(wire::Role w) {
  switch (w) {
    case wire::Role::GPU_HOST:
    case wire::Role::PNM_DEVICE:
    case wire::Role::COORDINATOR:
    case wire::Role::DRIVER: return true;
  }
  return false;
}

bool known(wire::SelectionRound w) {
  switch (w) {
    case wire::SelectionRound::LOCAL:
    case wire::SelectionRound::EXACT_CANDIDATES:
    case wire::SelectionRound::EXACT_ATTEND:
    case wire::SelectionRound::DENSE: return true;
  }
  return false;
}

bool known(wire::Shard::Split::Which w) {
  return w == wire::Shard::Split::PAGES || w == wire::Shard::Split::INTERLEAVE;
}

}  // namespace

node_role from_wire(wire::Role r) {
  PNMKV_CHECK(known(r), "role=", static_cast<int>(r), " (decode() admits known roles only)");
  return static_cast<node_role>(r);
}

selection_round from_wire(wire::SelectionRound r) {
  PNMKV_CHECK(known(r), "round=", static_cast<int>(r), " (decode() admits known rounds only)");
  return static_cast<selection_round>(r);
}

// sequence_split is the Shard.split union: contiguous carries its page range, interleave its
// stride and class.
sequence_split split_of(wire::Shard::Reader shard) {
  auto w = shard.getSplit().which();
  PNMKV_CHECK(known(w), "split=", static_cast<int>(w));
  return w == wire::Shard::Split::PAGES ? sequence_split::contiguous : sequence_split::interleave;
}

namespace {

const char* const kind_names[msg_kind_count] = {
    "challenge",  "join",           "join_ack",     "membership", "prefill_write",
    "token_append", "query",        "partial",      "candidates", "recall_request",
    "recall_reply", "error",        "heartbeat",    "region_advert", "write_ack"};

const char* const reason_names[reject_reason_count] = {
    "bad_version", "oversized", "truncated", "malformed", "unknown_kind", "wrong_kind",
    "limit",       "shape",     "index",     "crc",       "bad_value"};

constexpr uint64_t align8(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

// Words of a segment table for n segments.
constexpr size_t table_bytes(size_t n) { return align8(4 + 4 * n); }

}  // namespace

// ---------------------------------------------------------------------------------------
// Building

// A MessageBuilder whose first segment lives in the byte vector finish() hands over, after
// room for a one-segment table. Further segments (a message larger than its hint) are
// separate, zeroed allocations, each at least as large as everything before it.
class flat_arena final : public capnp::MessageBuilder {
 public:
  explicit flat_arena(size_t first_words) : bytes_(table_bytes(1) + first_words * 8, 0) {}

  kj::ArrayPtr<capnp::word> allocateSegment(unsigned minimum_words) override {
    const size_t first_words = (bytes_.size() - table_bytes(1)) / 8;
    if (!first_given_ && minimum_words <= first_words) {
      first_given_ = true;
      allocated_words_ = first_words;
      return {reinterpret_cast<capnp::word*>(bytes_.data() + table_bytes(1)), first_words};
    }
    first_given_ = true;
    const size_t words = std::max<size_t>({minimum_words, allocated_words_, 1024});
    more_.emplace_back(new uint64_t[words]());
    allocated_words_ += words;
    return {reinterpret_cast<capnp::word*>(more_.back().get()), words};
  }

  std::vector<uint8_t> finish() {
    auto segments = getSegmentsForOutput();
    const auto* first = reinterpret_cast<const capnp::word*>(bytes_.data() + table_bytes(1));
    if (segments.size() == 1 && segments[0].begin() == first) {
      const uint32_t header[2] = {0, static_cast<uint32_t>(segments[0].size())};
      std::memcpy(bytes_.data(), header, sizeof header);
      bytes_.resize(table_bytes(1) + segments[0].size() * 8);
      return std::move(bytes_);
    }
    // Spilled: flatten the segments behind a table of their sizes.
    std::vector<uint8_t> out(table_bytes(segments.size()), 0);
    const uint32_t count_minus_one = static_cast<uint32_t>(segments.size() - 1);
    std::memcpy(out.data(), &count_minus_one, 4);
    for (size_t i = 0; i < segments.size(); ++i) {
      const uint32_t words = static_cast<uint32_t>(segments[i].size());
      std::memcpy(out.data() + 4 + 4 * i, &words, 4);
    }
    for (auto s : segments) {
      const auto* b = reinterpret_cast<const uint8_t*>(s.begin());
      out.insert(out.end(), b, b + s.size() * sizeof(capnp::word));
    }
    return out;
  }

 private:
  std::vector<uint8_t> bytes_;
  std::vector<std::unique_ptr<uint64_t[]>> more_;
  size_t allocated_words_ = 0;
  bool first_given_ = false;
};

void flat_arena_deleter::operator()(flat_arena* a) const noexcept { delete a; }

flat_arena_ptr make_flat_arena(size_t payload_bytes) {
  // The root struct, a union's member and a pointer per blob fit in 256 bytes; each blob
  // rounds up to a word.
  return flat_arena_ptr(new flat_arena((256 + payload_bytes) / 8 + 16));
}

capnp::MessageBuilder& builder_of(flat_arena& a) { return a; }

std::vector<uint8_t> finish_flat(flat_arena& a) { return a.finish(); }

outbound::outbound(const envelope& env, size_t payload_bytes) : basic_outbound(payload_bytes) {
  auto r = root();
  r.setVersion(env.version);
  r.setSender(env.sender);
  r.setSeq(env.seq);
  r.setVtimeNs(env.vtime_ns);
  r.setAckSeq(env.ack_seq);
}

// ---------------------------------------------------------------------------------------
// Validation: the one place that decides whether bytes are a message this node accepts.

namespace {

struct rejection {
  reject_reason reason;
  errc code;
  std::string what;
};

// Thrown inside the decoder (never escapes it) to unwind out of nested validation.
struct reject_exception {
  rejection r;
};

template <class... Args>
[[noreturn]] void reject(reject_reason reason, errc code, fmt::format_string<Args...> f,
                         Args&&... args) {
  throw reject_exception{{reason, code, fmt::format(f, std::forward<Args>(args)...)}};
}

struct validator {
  const wire_limits& L;

  void count_limit(const char* field, uint64_t n, uint64_t lo, uint64_t hi) const {
    if (n < lo || n > hi)
      reject(reject_reason::limit, errc::capacity, "{} = {} outside [{}, {}]", field, n, lo, hi);
  }
  void index(const char* field, uint64_t i, uint64_t bound) const {
    if (i >= bound)
      reject(reject_reason::index, errc::out_of_range, "{} = {} not below {}", field, i, bound);
  }
  void range(const char* field, uint64_t a, uint64_t b, uint64_t bound) const {
    if (!(a < b && b <= bound))
      reject(reject_reason::index, errc::out_of_range, "{} = [{}, {}) not a non-empty range "
             "within [0, {})", field, a, b, bound);
  }
  void layer(uint32_t l) const { index("layer", l, L.max_layers); }
  void kv_head(uint32_t h) const { index("kv_head", h, L.max_kv_heads); }
  void head_dim(uint32_t d) const { count_limit("head_dim", d, 1, L.max_head_dim); }
  void group(uint32_t g) const { count_limit("group", g, 1, L.max_group); }
  void blob_limit(const char* field, capnp::Data::Reader d, uint64_t max) const {
    if (d.size() > max)
      reject(reject_reason::limit, errc::capacity, "{}: {} bytes, limit {}", field, d.size(), max);
  }
  void exact_bytes(const char* field, capnp::Data::Reader d, uint64_t want) const {
    if (d.size() != want)
      reject(reject_reason::shape, errc::shape_mismatch, "{}: {} bytes, want {}", field,
             d.size(), want);
  }
  void text(const char* field, capnp::Text::Reader t) const {
    if (t.size() > L.max_text_bytes)
      reject(reject_reason::limit, errc::capacity, "{}: {} bytes, limit {}", field, t.size(),
             L.max_text_bytes);
  }
  void role(wire::Role r) const {
    if (!known(r))
      reject(reject_reason::bad_value, errc::invalid_argument, "role = {} unknown",
             static_cast<uint16_t>(r));
  }
  void round(wire::SelectionRound r) const {
    if (!known(r))
      reject(reject_reason::bad_value, errc::invalid_argument, "round = {} unknown",
             static_cast<uint16_t>(r));
  }
  void flops(const char* field, double f) const {
    if (!std::isfinite(f) || f < 0)
      reject(reject_reason::bad_value, errc::invalid_argument, "{} is not a finite "
             "non-negative number", field);
  }
  // A blob of `elems` elements of `elem_bytes` each, as its declared shape says.
  void shape(const char* field, capnp::Data::Reader d, uint64_t elems, size_t elem_bytes) const {
    if (d.size() != elems * elem_bytes)
      reject(reject_reason::shape, errc::shape_mismatch, "{}: {} bytes, declared shape needs {}",
             field, d.size(), elems * elem_bytes);
  }
  // A blob of uint32 global page ids, each a valid token-page index.
  void page_ids(const char* field, capnp::Data::Reader d, uint64_t n) const {
    shape(field, d, n, 4);
    for (uint32_t id : view_as<uint32_t>(d)) index(field, id, L.max_context_tokens);
  }
  void crc(const char* what, uint32_t declared, capnp::Data::Reader k, capnp::Data::Reader v) const {
    const uint32_t got = kv_crc32c(k, v);
    if (got != declared)
      reject(reject_reason::crc, errc::parse, "{}: CRC32C {:08x} but payload gives {:08x}", what,
             declared, got);
  }

  // A struct's pointers beyond those its schema knows are never read here, but a deep copy
  // of a reader (setX(reader), AnyStruct equality, printing) follows them: refuse any that is
  // set, or such a copy of an accepted message could throw. A sender of this protocol
  // version sets none.
  template <class Reader>
  void known_pointers_only(Reader r) const {
    using T = typename Reader::Reads;
    constexpr unsigned known = T::_capnpPrivate::pointerCount;
    auto ptrs = capnp::AnyStruct::Reader(r).getPointerSection();
    for (unsigned i = known; i < ptrs.size(); ++i)
      if (!ptrs[i].isNull())
        reject(reject_reason::malformed, errc::parse, "{}: pointer {} set, the schema has {}",
               capnp::Schema::from<T>().getShortDisplayName().cStr(), i, known);
  }
  // A list of zero-sized structs costs nothing to send but one word per element to read:
  // capnp's traversal limit counts it so, and a copy of such a message can be refused as
  // oversized. Every element struct of this schema has fields, so no sender makes one.
  template <class List>
  void sized_elements(const char* what, List list) const {
    if (list.size() == 0) return;
    auto first = capnp::AnyStruct::Reader(list[0]);
    if (first.getDataSection().size() == 0 && first.getPointerSection().size() == 0)
      reject(reject_reason::malformed, errc::parse, "{}: {} elements of zero size", what,
             list.size());
  }
  template <class Reader>
  void checked(Reader r) const {
    known_pointers_only(r);
    check(r);
  }

  void check(wire::Challenge::Reader r) const { exact_bytes("challenge.nonce", r.getNonce(), 32); }
  void check(wire::Join::Reader r) const {
    role(r.getRole());
    exact_bytes("join.nonce", r.getNonce(), 32);
    exact_bytes("join.proof", r.getProof(), 32);
    blob_limit("join.worker_address", r.getWorkerAddress(), L.max_blob_bytes);
  }
  void check(wire::JoinAck::Reader r) const { text("join_ack.reason", r.getReason()); }
  void check(wire::Shard::Reader s) const {
    range("shard.kv_heads", s.getKvHead0(), s.getKvHead1(), L.max_kv_heads);
    auto split = s.getSplit();
    if (!known(split.which()))
      reject(reject_reason::bad_value, errc::invalid_argument, "shard.split: unknown variant {}",
             static_cast<unsigned>(split.which()));
    if (split.which() == wire::Shard::Split::PAGES) {
      range("shard.pages", split.getPages().getPage0(), split.getPages().getPage1(),
            L.max_context_tokens);
    } else {
      const uint32_t stride = split.getInterleave().getStride();
      count_limit("shard.stride", stride, 1, L.max_context_tokens);
      index("shard.class", split.getInterleave().getClass(), stride);
    }
    // Each get of a list counts its size against the traversal limit again: get it once.
    auto replicas = s.getReplicas();
    count_limit("shard.replicas", replicas.size(), 0, L.max_replicas);
    // A List(UInt32) may arrive as a struct list (capnp reads either); its pointers would be
    // copied unread.
    if (replicas.size() > 0 &&
        capnp::AnyList::Reader(replicas).getElementSize() != capnp::ElementSize::FOUR_BYTES)
      reject(reject_reason::malformed, errc::parse, "shard.replicas: not a list of UInt32");
    count_limit("shard.pages_held", s.getPagesHeld(), 0, L.max_context_tokens);
    count_limit("shard.sequence_shards", s.getSequenceShards(), 1, L.max_shards);
    index("shard.sequence_index", s.getSequenceIndex(), s.getSequenceShards());
  }
  void check(wire::Membership::Reader r) const {
    auto members = r.getMembers();
    count_limit("membership.members", members.size(), 0, L.max_members);
    sized_elements("membership.members", members);
    for (auto m : members) {
      known_pointers_only(m);
      role(m.getRole());
      blob_limit("member.worker_address", m.getWorkerAddress(), L.max_blob_bytes);
    }
    auto placements = r.getPlacements();
    count_limit("membership.placements", placements.size(), 0, L.max_shards);
    sized_elements("membership.placements", placements);
    uint64_t total_shards = 0;
    for (auto p : placements) {
      known_pointers_only(p);
      auto shards = p.getShards();  // once: each get counts against the traversal limit
      total_shards += shards.size();
      count_limit("membership shards (all placements)", total_shards, 0, L.max_shards);
      sized_elements("placement.shards", shards);
      for (auto s : shards) checked(s);
    }
  }
  void check(wire::PrefillWrite::Reader r) const {
    layer(r.getLayer());
    kv_head(r.getKvHead());
    count_limit("n_tokens", r.getNTokens(), 1, L.max_tokens_per_write);
    head_dim(r.getHeadDim());
    const uint64_t p0 = r.getPosition0(), n = r.getNTokens();
    if (p0 >= L.max_context_tokens || p0 + n > L.max_context_tokens)
      reject(reject_reason::index, errc::out_of_range, "positions [{}, {}) exceed {}", p0, p0 + n,
             L.max_context_tokens);
    const uint64_t elems = n * r.getHeadDim();
    shape("prefill_write.k", r.getK(), elems, sizeof(bf16));
    shape("prefill_write.v", r.getV(), elems, sizeof(bf16));
    crc("prefill_write", r.getCrc32c(), r.getK(), r.getV());
  }
  void check(wire::TokenAppend::Reader r) const {
    layer(r.getLayer());
    count_limit("n_heads", r.getNHeads(), 1, L.max_kv_heads);
    range("token_append.kv_heads", r.getKvHead0(), uint64_t{r.getKvHead0()} + r.getNHeads(),
          L.max_kv_heads);
    index("position", r.getPosition(), L.max_context_tokens);
    head_dim(r.getHeadDim());
    const uint64_t elems = uint64_t{r.getNHeads()} * r.getHeadDim();
    shape("token_append.k", r.getK(), elems, sizeof(bf16));
    shape("token_append.v", r.getV(), elems, sizeof(bf16));
    crc("token_append", r.getCrc32c(), r.getK(), r.getV());
  }
  void check(wire::Query::Reader r) const {
    layer(r.getLayer());
    range("query.kv_heads", r.getKvHead0(), r.getKvHead1(), L.max_kv_heads);
    group(r.getGroup());
    head_dim(r.getHeadDim());
    count_limit("budget_pages", r.getBudgetPages(), 0, L.max_context_tokens);
    round(r.getRound());
    if (r.getBackground() && r.getRound() != wire::SelectionRound::EXACT_CANDIDATES &&
        r.getRound() != wire::SelectionRound::EXACT_ATTEND)
      reject(reject_reason::bad_value, errc::invalid_argument,
             "query.background is set on a {} round; only exactCandidates (a lookahead search) or "
             "exactAttend (an attend followed by one) asks for a search in the background",
             static_cast<int>(r.getRound()));
    count_limit("query.sequence_tokens", r.getSequenceTokens(), 0, L.max_context_tokens);
    if (std::isnan(r.getScoreThreshold()))
      reject(reject_reason::bad_value, errc::invalid_argument, "score_threshold is NaN");
    const uint64_t elems =
        uint64_t{r.getKvHead1() - r.getKvHead0()} * r.getGroup() * r.getHeadDim();
    if (r.getBf16() && r.getRound() == wire::SelectionRound::DENSE)
      reject(reject_reason::bad_value, errc::invalid_argument,
             "query.bf16 is set on a dense round; a dense verification query is fp32 (its partial is "
             "the reference)");
    shape("query.q", r.getQ(), elems, r.getBf16() ? sizeof(bf16) : sizeof(float));
    for (auto [name, blob] : {std::pair{"query.excluded_pages", r.getExcludedPages()},
                              std::pair{"query.listed_pages", r.getListedPages()}}) {
      if (blob.size() % 4 != 0)
        reject(reject_reason::shape, errc::shape_mismatch, "{} is {} bytes, not a multiple of 4",
               name, blob.size());
      count_limit(name, blob.size() / 4, 0, L.max_pages_per_message);
      page_ids(name, blob, blob.size() / 4);
    }
  }
  void check(wire::Partial::Reader r) const {
    layer(r.getLayer());
    kv_head(r.getKvHead());
    group(r.getGroup());
    head_dim(r.getHeadDim());
    count_limit("pages_selected", r.getPagesSelected(), 0, L.max_context_tokens);
    if (r.getOBf16() && r.getRound() == wire::SelectionRound::DENSE)
      reject(reject_reason::bad_value, errc::invalid_argument,
             "partial.o_bf16 is set on a dense round; a dense verification partial is fp32");
    shape("partial.o", r.getO(), uint64_t{r.getGroup()} * r.getHeadDim(), r.getOBf16() ? sizeof(bf16) : sizeof(float));
    shape("partial.lse", r.getLse(), r.getGroup(), sizeof(float));
    count_limit("partial.pages_selected", r.getPagesSelected(), 0, L.max_pages_per_message);
    page_ids("partial.page_ids", r.getPageIds(), r.getPagesSelected());
    flops("partial.flops", r.getFlops());
    round(r.getRound());
  }
  void check(wire::Candidates::Reader r) const {
    layer(r.getLayer());
    kv_head(r.getKvHead());
    const uint32_t n = r.getNPages();
    count_limit("candidates.n_pages", n, 0, L.max_pages_per_message);
    page_ids("candidates.page_ids", r.getPageIds(), n);
    shape("candidates.scores", r.getScores(), n, sizeof(float));
    for (float s : view_as<float>(r.getScores()))
      if (std::isnan(s))
        reject(reject_reason::bad_value, errc::invalid_argument, "candidate score is NaN");
    flops("candidates.flops", r.getFlops());
  }
  void check(wire::RecallRequest::Reader r) const {
    layer(r.getLayer());
    kv_head(r.getKvHead());
    count_limit("recall_request.n_pages", r.getNPages(), 0, L.max_pages_per_message);
    page_ids("recall_request.page_ids", r.getPageIds(), r.getNPages());
  }
  void check(wire::RecallReply::Reader r) const {
    layer(r.getLayer());
    kv_head(r.getKvHead());
    count_limit("page_tokens", r.getPageTokens(), 1, L.max_page_tokens);
    head_dim(r.getHeadDim());
    auto pages = r.getPages();
    count_limit("recall_reply.pages", pages.size(), 0, L.max_pages_per_message);
    sized_elements("recall_reply.pages", pages);
    for (auto p : pages) {
      known_pointers_only(p);
      index("recall_reply.page_id", p.getPageId(), L.max_context_tokens);
      count_limit("recalled_page.n_tokens", p.getNTokens(), 1, r.getPageTokens());
      const uint64_t elems = uint64_t{p.getNTokens()} * r.getHeadDim();
      shape("recalled_page.k", p.getK(), elems, sizeof(bf16));
      shape("recalled_page.v", p.getV(), elems, sizeof(bf16));
      crc("recalled_page", p.getCrc32c(), p.getK(), p.getV());
    }
  }
  void check(wire::Error::Reader r) const {
    const uint16_t code = r.getCode();
    if (code == 0 || code > static_cast<uint16_t>(errc::not_ready))
      reject(reject_reason::bad_value, errc::invalid_argument, "error.code = {} unknown", code);
    text("error.message", r.getMessage());
  }
  void check(wire::Heartbeat::Reader) const {}
  void check(wire::RegionAdvert::Reader r) const {
    blob_limit("region_advert.remote_key", r.getRemoteKey(), L.max_blob_bytes);
  }
  void check(wire::WriteAck::Reader r) const {
    layer(r.getLayer());
    kv_head(r.getKvHead());
    count_limit("write_ack.n_tokens", r.getNTokens(), 0, L.max_tokens_per_write);
    index("write_ack.position0", r.getPosition0(), L.max_context_tokens);
  }

  void check(wire::Envelope::Body::Reader body) const {
    known_pointers_only(capnp::AnyStruct::Reader(body).as<wire::Envelope>());
    switch (body.which()) {
      case W::CHALLENGE: return checked(body.getChallenge());
      case W::JOIN: return checked(body.getJoin());
      case W::JOIN_ACK: return checked(body.getJoinAck());
      case W::MEMBERSHIP: return checked(body.getMembership());
      case W::PREFILL_WRITE: return checked(body.getPrefillWrite());
      case W::TOKEN_APPEND: return checked(body.getTokenAppend());
      case W::QUERY: return checked(body.getQuery());
      case W::PARTIAL: return checked(body.getPartial());
      case W::CANDIDATES: return checked(body.getCandidates());
      case W::RECALL_REQUEST: return checked(body.getRecallRequest());
      case W::RECALL_REPLY: return checked(body.getRecallReply());
      case W::ERROR: return checked(body.getError());
      case W::HEARTBEAT: return checked(body.getHeartbeat());
      case W::REGION_ADVERT: return checked(body.getRegionAdvert());
      case W::WRITE_ACK: return checked(body.getWriteAck());
    }
    reject(reject_reason::unknown_kind, errc::unsupported, "message kind {} unknown",
           static_cast<unsigned>(body.which()));
  }
};

void note(wire_stats& st, const rejection& r) {
  auto i = static_cast<size_t>(r.reason);
  st.rejected[i].fetch_add(1, std::memory_order_relaxed);
  if (!st.logged[i].exchange(true))
    log().warn("message rejected reason={} detail=\"{}\" (further rejections for this reason "
               "are only counted)", reason_names[i], r.what);
}

// Segment-table check done by hand so that truncated input is told apart from garbage.
bool check_segment_table(const uint8_t* p, size_t size, rejection& out) {
  if (size < 8) {
    out = {reject_reason::truncated, errc::parse, fmt::format("{} bytes, less than a segment "
                                                              "table", size)};
    return false;
  }
  uint32_t count_minus_one;
  std::memcpy(&count_minus_one, p, 4);
  if (count_minus_one >= 512) {
    out = {reject_reason::malformed, errc::parse,
           fmt::format("segment count {} implausible", uint64_t{count_minus_one} + 1)};
    return false;
  }
  const uint64_t count = uint64_t{count_minus_one} + 1;
  if (size < table_bytes(count)) {
    out = {reject_reason::truncated, errc::parse,
           fmt::format("{} bytes, segment table alone needs {}", size, table_bytes(count))};
    return false;
  }
  uint64_t words = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint32_t w;
    std::memcpy(&w, p + 4 + 4 * i, 4);
    words += w;
  }
  const uint64_t need = table_bytes(count) + 8 * words;
  if (size < need) {
    out = {reject_reason::truncated, errc::parse,
           fmt::format("{} bytes, segment table declares {}", size, need)};
    return false;
  }
  if (size != need) {
    out = {reject_reason::malformed, errc::parse,
           fmt::format("{} trailing bytes after the message", size - need)};
    return false;
  }
  return true;
}

}  // namespace

kj::ArrayPtr<const capnp::word> words_of(const std::vector<uint8_t>& bytes) {
  PNMKV_CHECK(reinterpret_cast<uintptr_t>(bytes.data()) % 8 == 0, "vector storage unaligned");
  return kj::arrayPtr(reinterpret_cast<const capnp::word*>(bytes.data()), bytes.size() / 8);
}

// ---------------------------------------------------------------------------------------
// Received messages

validated_bytes::validated_bytes() = default;
validated_bytes::~validated_bytes() = default;
validated_bytes::validated_bytes(validated_bytes&&) noexcept = default;
validated_bytes& validated_bytes::operator=(validated_bytes&&) noexcept = default;

validated_bytes::validated_bytes(std::vector<uint8_t>&& bytes) : bytes_(std::move(bytes)) {
  capnp::ReaderOptions opts;
  opts.traversalLimitInWords = std::numeric_limits<uint64_t>::max() / 8;
  opts.nestingLimit = 16;
  reader_ = std::make_unique<capnp::FlatArrayMessageReader>(words_of(bytes_), opts);
}

struct received_access {
  static received make(std::vector<uint8_t>&& bytes, msg_kind kind, const envelope& env) {
    return received(std::move(bytes), kind, env);
  }
};

void received::expect(msg_kind k) const {
  PNMKV_CHECK(kind_ == k, "reading a ", to_string(kind_), " message as ", to_string(k));
}

#define PNMKV_BODY_READER(Type, name, kind, getter)  \
  wire::Type::Reader received::name() const {        \
    expect(msg_kind::kind);                          \
    return body().getter();                          \
  }
PNMKV_BODY_READER(Challenge, challenge, challenge, getChallenge)
PNMKV_BODY_READER(Join, join, join, getJoin)
PNMKV_BODY_READER(JoinAck, join_ack, join_ack, getJoinAck)
PNMKV_BODY_READER(Membership, membership, membership, getMembership)
PNMKV_BODY_READER(PrefillWrite, prefill_write, prefill_write, getPrefillWrite)
PNMKV_BODY_READER(TokenAppend, token_append, token_append, getTokenAppend)
PNMKV_BODY_READER(Query, query, query, getQuery)
PNMKV_BODY_READER(Partial, partial, partial, getPartial)
PNMKV_BODY_READER(Candidates, candidates, candidates, getCandidates)
PNMKV_BODY_READER(RecallRequest, recall_request, recall_request, getRecallRequest)
PNMKV_BODY_READER(RecallReply, recall_reply, recall_reply, getRecallReply)
PNMKV_BODY_READER(Error, error, error, getError)
PNMKV_BODY_READER(Heartbeat, heartbeat, heartbeat, getHeartbeat)
PNMKV_BODY_READER(RegionAdvert, region_advert, region_advert, getRegionAdvert)
PNMKV_BODY_READER(WriteAck, write_ack, write_ack, getWriteAck)
#undef PNMKV_BODY_READER

namespace {

// Checks the size and segment table of raw bytes before anything is copied.
bool precheck(const void* data, size_t size, const wire_limits& limits, rejection& out) {
  const uint64_t max_bytes = max_legit_message_bytes(limits);
  if (size > max_bytes) {
    out = {reject_reason::oversized, errc::capacity,
           fmt::format("{} bytes, the largest legitimate message is {}", size, max_bytes)};
    return false;
  }
  if (data == nullptr && size) {
    out = {reject_reason::malformed, errc::parse, "null data"};
    return false;
  }
  return check_segment_table(static_cast<const uint8_t*>(data), size, out);
}

// Validates the message in `bytes` (already prechecked); on success fills kind and env.
bool validate(const msg_kind* expected, const std::vector<uint8_t>& bytes,
              const wire_limits& limits, msg_kind& kind, envelope& env, rejection& out) {
  try {
    capnp::ReaderOptions opts;
    // A legitimate message traverses each of its words about once; the validator reads each
    // pointer once. Twice the input size bounds amplification by crafted pointers.
    const uint64_t max_bytes = max_legit_message_bytes(limits);
    opts.traversalLimitInWords = std::min<uint64_t>(2 * (bytes.size() / 8) + 64, 2 * (max_bytes / 8));
    opts.nestingLimit = 16;
    capnp::FlatArrayMessageReader reader(words_of(bytes), opts);
    auto root = reader.getRoot<wire::Envelope>();
    env.version = root.getVersion();
    if (env.version != protocol_version) {
      out = {reject_reason::bad_version, errc::unsupported,
             fmt::format("protocol version {} (this node speaks {})", env.version, protocol_version)};
      return false;
    }
    env.sender = root.getSender();
    env.seq = root.getSeq();
    env.vtime_ns = root.getVtimeNs();
    env.ack_seq = root.getAckSeq();
    if (!std::isfinite(env.vtime_ns) || env.vtime_ns < 0) {
      out = {reject_reason::bad_value, errc::invalid_argument,
             fmt::format("vtime_ns = {} (must be finite and >= 0)", env.vtime_ns)};
      return false;
    }
    auto body = root.getBody();
    const auto which = static_cast<unsigned>(body.which());
    if (which >= msg_kind_count) {
      out = {reject_reason::unknown_kind, errc::unsupported,
             fmt::format("message kind {} unknown (newer sender?)", which)};
      return false;
    }
    if (expected && which != static_cast<unsigned>(*expected)) {
      out = {reject_reason::wrong_kind, errc::invalid_argument,
             fmt::format("expected {}, got {}", to_string(*expected), kind_names[which])};
      return false;
    }
    validator{limits}.check(body);
    kind = static_cast<msg_kind>(which);
    return true;
  } catch (const reject_exception& e) {
    out = e.r;
  } catch (const kj::Exception& e) {
    auto desc = e.getDescription();
    const bool limit = std::strstr(desc.cStr(), "traversal limit") != nullptr;
    out = {limit ? reject_reason::oversized : reject_reason::malformed,
           limit ? errc::capacity : errc::parse, std::string(desc.cStr())};
  } catch (const std::exception& e) {
    out = {reject_reason::malformed, errc::parse, e.what()};
  }
  return false;
}

result<received> decode_owned(const msg_kind* expected, std::vector<uint8_t>&& bytes,
                              const wire_limits& limits, wire_stats* stats, bool prechecked) {
  wire_stats& st = stats ? *stats : global_wire_stats();
  rejection why;
  msg_kind kind{};
  envelope env;
  if ((prechecked || precheck(bytes.data(), bytes.size(), limits, why)) &&
      validate(expected, bytes, limits, kind, env, why)) {
    st.decoded.fetch_add(1, std::memory_order_relaxed);
    return received_access::make(std::move(bytes), kind, env);
  }
  note(st, why);
  return status{why.code, fmt::format("{}: {}", reason_names[static_cast<size_t>(why.reason)],
                                      why.what)};
}

result<received> decode_copy(const msg_kind* expected, const void* data, size_t size,
                             const wire_limits& limits, wire_stats* stats) {
  rejection why;
  if (!precheck(data, size, limits, why)) {
    wire_stats& st = stats ? *stats : global_wire_stats();
    note(st, why);
    return status{why.code, fmt::format("{}: {}", reason_names[static_cast<size_t>(why.reason)],
                                        why.what)};
  }
  const auto* p = static_cast<const uint8_t*>(data);
  return decode_owned(expected, std::vector<uint8_t>(p, p + size), limits, stats, true);
}

}  // namespace

result<received> decode(std::vector<uint8_t>&& bytes, const wire_limits& limits,
                        wire_stats* stats) {
  return decode_owned(nullptr, std::move(bytes), limits, stats, false);
}

result<received> decode(const void* data, size_t size, const wire_limits& limits,
                        wire_stats* stats) {
  return decode_copy(nullptr, data, size, limits, stats);
}

result<received> decode_kind(msg_kind expected, const void* data, size_t size,
                             const wire_limits& limits, wire_stats* stats) {
  return decode_copy(&expected, data, size, limits, stats);
}

// ---------------------------------------------------------------------------------------
// Names, counters, CRCs, limits, peek

const char* to_string(msg_kind kind) {
  auto i = static_cast<size_t>(kind);
  return i < msg_kind_count ? kind_names[i] : "unknown";
}

bool parse_msg_kind(const std::string& name, msg_kind& out) {
  for (size_t i = 0; i < msg_kind_count; ++i)
    if (name == kind_names[i]) {
      out = static_cast<msg_kind>(i);
      return true;
    }
  return false;
}

const char* to_string(node_role role) {
  switch (role) {
    case node_role::gpu_host: return "gpu-host";
    case node_role::pnm_device: return "pnm-device";
    case node_role::coordinator: return "coordinator";
    case node_role::driver: return "driver";
  }
  return "unknown";
}

const char* to_string(reject_reason reason) {
  auto i = static_cast<size_t>(reason);
  return i < reject_reason_count ? reason_names[i] : "unknown";
}

uint64_t wire_stats::total_rejected() const {
  uint64_t n = 0;
  for (auto& r : rejected) n += r.load();
  return n;
}

wire_stats& global_wire_stats() {
  static wire_stats stats;
  return stats;
}

uint32_t kv_crc32c(capnp::Data::Reader k, capnp::Data::Reader v) {
  return crc32c(v.begin(), v.size(), crc32c(k.begin(), k.size()));
}

void fill_bf16(capnp::Data::Builder d, const float* x, size_t n) {
  PNMKV_CHECK_EQ(d.size(), n * sizeof(bf16));
  bf16* out = fill_as<bf16>(d);
  for (size_t i = 0; i < n; ++i) out[i] = to_bf16(x[i]);
}

void widen_bf16(capnp::Data::Reader d, std::vector<float>& out) {
  const auto in = view_as<bf16>(d);
  out.resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) out[i] = to_float(in[i]);
}

uint32_t kv_crc32c(const bf16* k, const bf16* v, size_t elems) {
  return crc32c(v, elems * sizeof(bf16), crc32c(k, elems * sizeof(bf16)));
}

uint64_t max_legit_message_bytes(const wire_limits& L) {
  // Per kind: payload bytes plus structure words, generously. Structure overhead per list
  // element is bounded by the element struct's size plus one pointer per blob.
  const uint64_t overhead = 4096 + 8 * 512;  // envelope, pointers, up to 512 segment entries
  auto blob = [](uint64_t n) { return align8(n) + 8; };
  uint64_t kv_write = 2 * blob(uint64_t{L.max_tokens_per_write} * L.max_head_dim * 2);
  uint64_t append = 2 * blob(uint64_t{L.max_kv_heads} * L.max_head_dim * 2);
  uint64_t query = blob(uint64_t{L.max_kv_heads} * L.max_group * L.max_head_dim * 4);
  uint64_t partial = blob(uint64_t{L.max_group} * L.max_head_dim * 4) + blob(L.max_group * 4ull) +
                     blob(uint64_t{L.max_pages_per_message} * 4);
  uint64_t cands = 2 * blob(uint64_t{L.max_pages_per_message} * 4);
  uint64_t recall = uint64_t{L.max_pages_per_message} *
                    (64 + 2 * blob(uint64_t{L.max_page_tokens} * L.max_head_dim * 2));
  uint64_t member = uint64_t{L.max_members} * (64 + blob(L.max_blob_bytes));
  uint64_t shards = uint64_t{L.max_shards} * (96 + blob(4ull * L.max_replicas));
  uint64_t membership = member + shards + uint64_t{L.max_shards} * 32;
  uint64_t small = 3 * blob(L.max_blob_bytes) + blob(L.max_text_bytes);
  uint64_t m = std::max({kv_write, append, query, partial, cands, recall, membership, small});
  return std::min<uint64_t>(m + overhead, align8(L.max_message_bytes));
}

result<envelope_peek> peek_envelope(const void* data, size_t size) {
  rejection seg;
  if (!check_segment_table(static_cast<const uint8_t*>(data), size, seg))
    return status{seg.code, seg.what};
  // Fabric frames are not always word-aligned: copy the words when they are not.
  std::vector<uint64_t> copy;
  kj::ArrayPtr<const capnp::word> words;
  if (reinterpret_cast<uintptr_t>(data) % 8 == 0) {
    words = kj::arrayPtr(static_cast<const capnp::word*>(data), size / 8);
  } else {
    copy.resize(size / 8);
    std::memcpy(copy.data(), data, size / 8 * 8);
    words = kj::arrayPtr(reinterpret_cast<const capnp::word*>(copy.data()), copy.size());
  }
  try {
    capnp::ReaderOptions opts;
    opts.traversalLimitInWords = 2 * (size / 8) + 64;
    capnp::FlatArrayMessageReader reader(words, opts);
    auto root = reader.getRoot<wire::Envelope>();
    envelope_peek p;
    p.env.version = root.getVersion();
    p.env.sender = root.getSender();
    p.env.seq = root.getSeq();
    p.env.vtime_ns = root.getVtimeNs();
    p.env.ack_seq = root.getAckSeq();
    auto body = root.getBody();
    auto which = static_cast<unsigned>(body.which());
    if (which >= msg_kind_count) return status{errc::unsupported, "unknown message kind"};
    p.kind = static_cast<msg_kind>(which);
    switch (body.which()) {
      case W::QUERY: p.step = body.getQuery().getStep(); break;
      case W::PARTIAL: p.step = body.getPartial().getStep(); break;
      case W::CANDIDATES: p.step = body.getCandidates().getStep(); break;
      case W::RECALL_REQUEST: p.step = body.getRecallRequest().getStep(); break;
      case W::RECALL_REPLY: p.step = body.getRecallReply().getStep(); break;
      case W::TOKEN_APPEND: p.step = body.getTokenAppend().getStep(); break;
      case W::PREFILL_WRITE: p.step = body.getPrefillWrite().getStep(); break;
      default: break;
    }
    return p;
  } catch (const kj::Exception& e) {
    return status{errc::parse, e.getDescription().cStr()};
  } catch (const std::exception& e) {
    return status{errc::parse, e.what()};
  }
}

}  // namespace pnmkv::transport
