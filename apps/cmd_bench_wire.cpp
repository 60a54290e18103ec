// `pnmkv bench wire`: building and decoding (with full validation and CRC checks) every
// message kind, each next to a memcpy of the same number of bytes measured in the same run.
// encode: a prepared message's fields and blobs copied into an outbound, then finish() (what
// a sender does: fill the builders, take the bytes). decode: decode() of a vector moved in,
// as a fabric hands a frame over, then a view of every blob (their contents are the
// handler's work). Registered by register_bench_fabric (apps/cmd_bench_fabric.cpp) and
// included in `pnmkv bench fabric`.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "transport/samples.hpp"

namespace pnmkv::apps {

namespace {

using namespace transport;
using clk = std::chrono::steady_clock;

template <class F>
double ns_per_call(F&& f, double seconds) {
  long n = 1;
  for (;;) {
    auto t0 = clk::now();
    for (long i = 0; i < n; ++i) f();
    double s = std::chrono::duration<double>(clk::now() - t0).count();
    if (s >= seconds || n > (1L << 30)) return s * 1e9 / static_cast<double>(n);
    n = s > 0 ? std::max(2 * n, static_cast<long>(static_cast<double>(n) * seconds / s * 1.1)) : n * 10;
  }
}

void clobber(void* p) { asm volatile("" : : "g"(p) : "memory"); }

// The sender's work: every field of `from` copied into a new outbound, then finish().
std::vector<uint8_t> build(const received& from, size_t payload_bytes) {
  outbound out(from.env(), payload_bytes);
  auto to = out.body();
  switch (from.kind()) {
    case msg_kind::challenge: to.setChallenge(from.challenge()); break;
    case msg_kind::join: to.setJoin(from.join()); break;
    case msg_kind::join_ack: to.setJoinAck(from.join_ack()); break;
    case msg_kind::membership: to.setMembership(from.membership()); break;
    case msg_kind::prefill_write: to.setPrefillWrite(from.prefill_write()); break;
    case msg_kind::token_append: to.setTokenAppend(from.token_append()); break;
    case msg_kind::query: to.setQuery(from.query()); break;
    case msg_kind::partial: to.setPartial(from.partial()); break;
    case msg_kind::candidates: to.setCandidates(from.candidates()); break;
    case msg_kind::recall_request: to.setRecallRequest(from.recall_request()); break;
    case msg_kind::recall_reply: to.setRecallReply(from.recall_reply()); break;
    case msg_kind::error: to.setError(from.error()); break;
    case msg_kind::heartbeat: to.setHeartbeat(from.heartbeat()); break;
    case msg_kind::region_advert: to.setRegionAdvert(from.region_advert()); break;
    case msg_kind::write_ack: to.setWriteAck(from.write_ack()); break;
  }
  return out.finish();
}

// The receiver's first touch: a typed view of every blob (elements counted, so nothing is
// optimised away).
size_t view_blobs(const received& m) {
  size_t n = 0;
  auto bytes = [&](capnp::Data::Reader d) { n += view_as<uint8_t>(d).size(); };
  auto kv = [&](capnp::Data::Reader k, capnp::Data::Reader v) {
    n += view_as<bf16>(k).size() + view_as<bf16>(v).size();
  };
  auto f32 = [&](capnp::Data::Reader d) { n += view_as<float>(d).size(); };
  auto ids = [&](capnp::Data::Reader d) { n += view_as<uint32_t>(d).size(); };
  switch (m.kind()) {
    case msg_kind::challenge: bytes(m.challenge().getNonce()); break;
    case msg_kind::join:
      bytes(m.join().getNonce());
      bytes(m.join().getProof());
      bytes(m.join().getWorkerAddress());
      break;
    case msg_kind::membership:
      for (auto member : m.membership().getMembers()) bytes(member.getWorkerAddress());
      for (auto p : m.membership().getPlacements())
        for (auto s : p.getShards()) n += s.getReplicas().size();
      break;
    case msg_kind::prefill_write: kv(m.prefill_write().getK(), m.prefill_write().getV()); break;
    case msg_kind::token_append: kv(m.token_append().getK(), m.token_append().getV()); break;
    case msg_kind::query:
      f32(m.query().getQ());
      ids(m.query().getExcludedPages());
      ids(m.query().getListedPages());
      break;
    case msg_kind::partial:
      f32(m.partial().getO());
      f32(m.partial().getLse());
      ids(m.partial().getPageIds());
      break;
    case msg_kind::candidates:
      ids(m.candidates().getPageIds());
      f32(m.candidates().getScores());
      break;
    case msg_kind::recall_request: ids(m.recall_request().getPageIds()); break;
    case msg_kind::recall_reply:
      for (auto p : m.recall_reply().getPages()) kv(p.getK(), p.getV());
      break;
    case msg_kind::region_advert: bytes(m.region_advert().getRemoteKey()); break;
    case msg_kind::join_ack:
    case msg_kind::error:
    case msg_kind::heartbeat:
    case msg_kind::write_ack: break;
  }
  return n;
}

// Decodes batches of fresh copies of `bytes`, each moved in; only decode() and the blob
// views are timed (making the copies and freeing the messages are not).
double decode_ns_per_call(const std::vector<uint8_t>& bytes, const wire_limits& limits,
                          double seconds) {
  const size_t batch = std::clamp<size_t>((16u << 20) / bytes.size(), 4, 256);
  std::vector<std::vector<uint8_t>> fresh(batch);
  std::vector<received> kept;
  kept.reserve(batch);
  double timed_s = 0;
  size_t calls = 0, sink = 0;
  while (timed_s < seconds || calls == 0) {
    for (auto& f : fresh) f = bytes;
    auto t0 = clk::now();
    for (auto& f : fresh) {
      auto r = decode(std::move(f), limits);
      if (!r) std::abort();
      sink += view_blobs(*r);
      kept.push_back(std::move(r).value());
    }
    timed_s += std::chrono::duration<double>(clk::now() - t0).count();
    calls += batch;
    kept.clear();
  }
  clobber(&sink);
  return timed_s * 1e9 / static_cast<double>(calls);
}

}  // namespace

nlohmann::json run_wire_bench(double seconds_per_case) {
  const wire_limits limits{};
  struct wire_case {
    std::string name;
    received m;  // the prepared message a sender copies from
    size_t bytes;
  };
  std::vector<wire_case> cases;
  auto add = [&](std::string name, outbound m) {
    auto bytes = m.finish();
    const size_t n = bytes.size();
    cases.push_back({std::move(name), decode(std::move(bytes), limits).value(), n});
  };
  for (size_t i = 0; i < msg_kind_count; ++i) {
    auto k = static_cast<msg_kind>(i);
    add(to_string(k), sample_message(k, 1));
  }
  sample_shape big;
  big.page_tokens = 1024;  // 1024 tokens x 128 x bf16 x (K, V) = 512 KiB
  add("prefill_write_1024tok", sample_message(msg_kind::prefill_write, 2, big));
  sample_shape pages;
  pages.pages = 64;  // a baseline-mode recall of 64 pages
  add("recall_reply_64pages", sample_message(msg_kind::recall_reply, 3, pages));

  nlohmann::json rows = nlohmann::json::array();
  for (auto& c : cases) {
    const std::vector<uint8_t> out = build(c.m, c.bytes);
    PNMKV_CHECK(out.size() == c.bytes, c.name, ": built ", out.size(), " bytes, sample has ",
                c.bytes);
    const size_t bytes = out.size();
    std::vector<uint8_t> dst(bytes);
    double enc = ns_per_call([&] {
      auto b = build(c.m, bytes);
      clobber(b.data());
    }, seconds_per_case);
    double dec = decode_ns_per_call(out, limits, seconds_per_case);
    double cpy = ns_per_call([&] {
      std::memcpy(dst.data(), out.data(), bytes);
      clobber(dst.data());
    }, seconds_per_case);
    nlohmann::json r;
    r["kind"] = c.name;
    r["bytes"] = bytes;
    r["encode_ns"] = enc;
    r["decode_ns"] = dec;
    r["memcpy_ns"] = cpy;
    r["encode_vs_memcpy"] = enc / cpy;
    r["decode_vs_memcpy"] = dec / cpy;
    r["encode_gbps"] = static_cast<double>(bytes) / enc;
    r["decode_gbps"] = static_cast<double>(bytes) / dec;
    rows.push_back(r);
  }
  return rows;
}

void print_wire(const nlohmann::json& rows) {
  std::printf("\n%-24s %10s %11s %11s %11s %8s %8s %9s %9s\n", "message", "bytes", "encode ns",
              "decode ns", "memcpy ns", "enc/cpy", "dec/cpy", "enc GB/s", "dec GB/s");
  for (auto& r : rows)
    std::printf("%-24s %10zu %11.0f %11.0f %11.0f %8.1f %8.1f %9.2f %9.2f\n",
                r["kind"].get<std::string>().c_str(), r["bytes"].get<size_t>(),
                r["encode_ns"].get<double>(), r["decode_ns"].get<double>(),
                r["memcpy_ns"].get<double>(), r["encode_vs_memcpy"].get<double>(),
                r["decode_vs_memcpy"].get<double>(), r["encode_gbps"].get<double>(),
                r["decode_gbps"].get<double>());
}

void register_bench_wire(CLI::App& bench) {
  auto* cmd = bench.add_subcommand("wire", "Encode/decode (validated) cost of every message "
                                           "kind against memcpy of the same bytes");
  static std::string json_out;
  static double seconds = 0.1;
  cmd->add_option("--json", json_out, "Also write the results as JSON to FILE");
  cmd->add_option("--seconds", seconds, "Seconds per measurement")->check(CLI::Range(0.001, 10.0));
  cmd->callback([] {
    auto rows = run_wire_bench(seconds);
    print_wire(rows);
    if (!json_out.empty()) {
      std::ofstream f(json_out);
      f << nlohmann::json{{"tool", "pnmkv bench wire"}, {"wire", rows}}.dump(2) << "\n";
      if (!f) {
        std::fprintf(stderr, "pnmkv bench wire: cannot write %s\n", json_out.c_str());
        throw CLI::RuntimeError(1);
      }
    }
  });
}

}  // namespace pnmkv::apps
