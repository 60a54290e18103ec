// transport_ucx_peer: the other process of the UCX tests. It prints its worker address,
// reads the parent's, connects, advertises a registered region filled with a known pattern,
// (two, in fact: see below), then serves until the parent says "exit", goes down, or stdin closes:
//   - an error message whose text is "crc REGION OFFSET LENGTH" is answered with "crc HEX"
//     over that range of region 0 (allocated by the fabric) or 1 (registered user memory),
//     so the parent can check its puts landed;
//   - "stats" is answered with this endpoint's fabric_stats as JSON;
//   - "stop" makes it stop progressing (SIGSTOP itself) -- the parent then kills it;
//   - "flood" makes it send messages to the parent without end, as fast as the fabric takes
//     them -- the parent kills it mid-stream;
//   - anything else is echoed back byte for byte.
// Usage: transport_ucx_peer tcp|shm NODE REGION_BYTES
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <iostream>
#include <string>

#include "transport/crc32c.hpp"
#include "transport/hex.hpp"
#include "transport/messages.hpp"
#include "transport/ucx_fabric.hpp"

using namespace pnmkv;
using namespace pnmkv::transport;

namespace {

// An answer to the parent: an error message (code internal) carrying `text`.
std::vector<uint8_t> reply(node_id self, uint64_t seq, const std::string& text,
                           uint64_t refers_to) {
  outbound out(envelope{protocol_version, self, seq, 0}, text.size());
  auto e = out.body().initError();
  e.setCode(static_cast<uint16_t>(errc::internal));
  e.setMessage(capnp::Text::Reader(text.data(), text.size()));
  e.setRefersToSeq(refers_to);
  return out.finish();
}

}  // namespace

int main(int argc, char** argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);  // never outlive the test
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s tcp|shm NODE REGION_BYTES\n", argv[0]);
    return 2;
  }
  ucx_options u;
  if (!parse_ucx_transport(argv[1], u.transport)) return 2;
  fabric_options o;
  o.self = static_cast<node_id>(std::stoul(argv[2]));
  size_t region_bytes = std::stoull(argv[3]);
  o.op_timeout = std::chrono::milliseconds(10000);
  auto f = make_ucx_fabric(o, u);
  if (!f) {
    std::fprintf(stderr, "peer: %s\n", f.error().to_string().c_str());
    return 1;
  }
  fabric& fab = **f;
  std::cout << "ADDR " << to_hex(fab.address()) << std::endl;

  std::string word;
  node_id parent;
  std::string parent_hex;
  if (!(std::cin >> word >> parent >> parent_hex) || word != "PEER") return 3;
  auto parent_address = from_hex(parent_hex);
  if (!parent_address) {
    std::fprintf(stderr, "peer: parent address: %s\n", parent_address.error().to_string().c_str());
    return 3;
  }
  if (status s = fab.connect(parent, *parent_address); !s) {
    std::fprintf(stderr, "peer: connect: %s\n", s.to_string().c_str());
    return 1;
  }
  // Region 0: allocated by the fabric (the fast path); region 1: registered user memory.
  auto reg = fab.allocate_region(region_bytes);
  std::vector<uint8_t> user(std::min<size_t>(region_bytes, 8u << 20));
  auto reg_user = fab.register_region(user.data(), user.size());
  if (!reg || !reg_user) {
    std::fprintf(stderr, "peer: region: %s\n",
                 (!reg ? reg.error() : reg_user.error()).to_string().c_str());
    return 1;
  }
  uint8_t* const bases[2] = {static_cast<uint8_t*>(reg->base), user.data()};
  const size_t lengths[2] = {reg->length, user.size()};
  for (int r = 0; r < 2; ++r)
    for (size_t i = 0; i < lengths[r]; ++i) bases[r][i] = static_cast<uint8_t>(i * 131 + o.self + r);
  for (uint32_t r = 0; r < 2; ++r) {
    const local_region& lr = r == 0 ? *reg : *reg_user;
    outbound out(envelope{protocol_version, o.self, r, 0}, lr.remote_key.size());
    auto adv = out.body().initRegionAdvert();
    adv.setRegionId(lr.id);
    adv.setLength(lr.length);
    adv.setRemoteKey(as_data(lr.remote_key));
    adv.setPurpose(r);
    if (status s = fab.send_wait(parent, out.finish()); !s) {
      std::fprintf(stderr, "peer: advert: %s\n", s.to_string().c_str());
      return 1;
    }
  }
  std::cout << "READY" << std::endl;

  wire_limits limits;
  wire_stats quiet;
  std::vector<fabric_event> events;
  uint64_t seq = 1;
  for (;;) {
    events.clear();
    fab.poll(events, std::chrono::milliseconds(200));
    for (auto& e : events) {
      if (e.kind == fabric_event_kind::peer_down) return 0;
      auto m = peek_envelope(e.bytes.data(), e.bytes.size());
      if (m && m->kind == msg_kind::error) {
        auto d = decode(e.bytes, limits, &quiet);
        if (d) {
          const std::string text = d->error().getMessage().cStr();
          if (text == "exit") return 0;
          if (text == "stats") {  // this endpoint's counters, as JSON
            (void)fab.send(parent, reply(o.self, seq++, fab.stats().to_json(), d->env().seq));
            continue;
          }
          if (text == "stop") {
            raise(SIGSTOP);
            continue;
          }
          if (text == "flood") {
            const std::vector<uint8_t> junk(2000, 0x5a);
            for (;;) {
              if (fab.send(parent, junk).code() == errc::capacity) {
                std::vector<fabric_event> ignored;
                fab.poll(ignored, std::chrono::milliseconds(1));
              }
            }
          }
          size_t off = 0, len = 0;
          unsigned which = 0;
          if (std::sscanf(text.c_str(), "crc %u %zu %zu", &which, &off, &len) == 3 && which < 2 &&
              off <= lengths[which] && len <= lengths[which] - off) {
            char buf[32];
            std::snprintf(buf, sizeof buf, "crc %08x", crc32c(bases[which] + off, len));
            (void)fab.send(parent, reply(o.self, seq++, buf, d->env().seq));
            continue;
          }
        }
      }
      (void)fab.send(e.peer, std::move(e.bytes));  // echo
    }
  }
}
