// Fault rules, their parser and the deterministic decision function.
#include "transport/faults.hpp"

#include <algorithm>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <sstream>

#include "transport/log.hpp"

namespace pnmkv::transport {
namespace {

const char* const fault_names[fault_kind_count] = {"drop",  "delay",     "duplicate", "corrupt",
                                                   "stall", "partition", "crash"};
constexpr size_t max_events_kept = 1u << 18;

uint64_t mix(uint64_t x) {  // splitmix64 finaliser
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\r\n");
  if (a == std::string::npos) return "";
  size_t b = s.find_last_not_of(" \t\r\n");
  return s.substr(a, b - a + 1);
}

bool parse_u64(const std::string& s, uint64_t& out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  out = v;
  return true;
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> parts;
  std::string cur;
  for (char c : s) {
    if (c == sep) {
      parts.push_back(cur);
      cur.clear();
    } else {
      cur += c;
    }
  }
  parts.push_back(cur);
  return parts;
}

}  // namespace

const char* to_string(fault_kind kind) {
  auto i = static_cast<size_t>(kind);
  return i < fault_kind_count ? fault_names[i] : "unknown";
}

const char* to_string(fault_point point) { return point == fault_point::send ? "send" : "recv"; }

double fault_uniform(uint64_t seed, uint64_t a, uint64_t b, uint64_t c, uint64_t d, uint64_t e) {
  uint64_t h = mix(seed);
  h = mix(h ^ a);
  h = mix(h ^ b);
  h = mix(h ^ c);
  h = mix(h ^ d);
  h = mix(h ^ e);
  return static_cast<double>(h >> 11) * 0x1.0p-53;
}

result<fault_rule> parse_fault_rule(const std::string& text_in) {
  std::string text = trim(text_in);
  std::istringstream in(text);
  std::string word;
  in >> word;
  fault_rule r;
  r.text = text;
  auto bad = [&](const std::string& what) -> result<fault_rule> {
    return status{errc::invalid_argument, "fault rule \"" + text + "\": " + what};
  };
  bool found = false;
  for (size_t i = 0; i < fault_kind_count; ++i)
    if (word == fault_names[i]) {
      r.kind = static_cast<fault_kind>(i);
      found = true;
    }
  if (!found)
    return bad("starts with \"" + word + "\"; want one of drop, delay, duplicate, corrupt, "
               "stall, partition, crash");
  if (r.kind == fault_kind::stall) {
    r.at_send = false;
    r.at_recv = true;
    r.max_count = 1;
    r.duration_ms = 1000;
  }
  if (r.kind == fault_kind::delay) r.duration_ms = 10;
  if (r.kind == fault_kind::crash) {
    r.at_send = false;
    r.at_recv = true;
    r.max_count = 1;
  }
  if (r.kind == fault_kind::partition) r.at_send = r.at_recv = true;
  while (in >> word) {
    auto eq = word.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == word.size())
      return bad("setting \"" + word + "\" is not key=value");
    std::string key = word.substr(0, eq), val = word.substr(eq + 1);
    uint64_t u = 0;
    if (key == "p" || key == "prob") {
      char* end = nullptr;
      double p = std::strtod(val.c_str(), &end);
      if (end == val.c_str() || *end || !(p >= 0 && p <= 1))
        return bad("p=" + val + " is not a probability in [0, 1]");
      r.probability = p;
    } else if (key == "at") {
      if (val == "send") {
        r.at_send = true;
        r.at_recv = false;
      } else if (val == "recv") {
        r.at_send = false;
        r.at_recv = true;
      } else if (val == "both") {
        r.at_send = r.at_recv = true;
      } else {
        return bad("at=" + val + "; want send, recv or both");
      }
    } else if (key == "node" || key == "from" || key == "to") {
      if (!parse_u64(val, u) || u > UINT32_MAX) return bad(key + "=" + val + " is not a node id");
      (key == "node" ? r.node : key == "from" ? r.from : r.to) = static_cast<int64_t>(u);
    } else if (key == "msg") {
      r.msg_kinds = 0;
      r.any_kind = false;
      for (auto& name : split(val, ',')) {
        msg_kind k;
        if (!parse_msg_kind(name, k))
          return bad("msg=" + name + " is not a message kind (e.g. query, partial, "
                     "prefill_write, token_append, heartbeat)");
        r.msg_kinds |= 1u << static_cast<unsigned>(k);
      }
    } else if (key == "step" || key == "seq") {
      auto dots = val.find("..");
      uint64_t lo = 0, hi = 0;
      bool open = false;
      if (dots == std::string::npos) {
        if (!parse_u64(val, lo)) return bad(key + "=" + val + " is not N, N..M or N..");
        hi = lo;
      } else {
        if (!parse_u64(val.substr(0, dots), lo)) return bad(key + "=" + val + " bad lower bound");
        std::string rest = val.substr(dots + 2);
        if (rest.empty()) {
          open = true;
        } else if (!parse_u64(rest, hi) || hi < lo) {
          return bad(key + "=" + val + " bad upper bound");
        }
      }
      if (key == "step") {
        if (lo > INT64_MAX / 2 || hi > INT64_MAX / 2) return bad("step too large");
        r.step_lo = static_cast<int64_t>(lo);
        r.step_hi = open ? -1 : static_cast<int64_t>(hi);
      } else {
        r.seq_lo = lo;
        r.seq_hi = open ? UINT64_MAX : hi;
      }
    } else if (key == "ms") {
      if (!parse_u64(val, u) || u > 3600000) return bad("ms=" + val + " not in [0, 3600000]");
      r.duration_ms = static_cast<uint32_t>(u);
    } else if (key == "bits") {
      if (!parse_u64(val, u) || u < 1 || u > 4096) return bad("bits=" + val + " not in [1, 4096]");
      r.bits = static_cast<uint32_t>(u);
    } else if (key == "group") {
      for (auto& id : split(val, ',')) {
        if (!parse_u64(id, u) || u > UINT32_MAX) return bad("group: \"" + id + "\" not a node id");
        r.group.push_back(static_cast<node_id>(u));
      }
    } else if (key == "window") {
      if (!parse_u64(val, u) || u < 1) return bad("window=" + val + " must be >= 1");
      r.window_msgs = u;
    } else if (key == "count") {
      if (!parse_u64(val, u) || u < 1) return bad("count=" + val + " must be >= 1");
      r.max_count = u;
    } else {
      return bad("unknown setting \"" + key + "\" (p, at, node, from, to, msg, step, seq, ms, "
                 "bits, group, window, count)");
    }
  }
  if (r.kind == fault_kind::partition && r.group.empty() && r.node >= 0)
    r.group.push_back(static_cast<node_id>(r.node));
  if ((r.kind == fault_kind::delay || r.kind == fault_kind::stall) && r.duration_ms == 0)
    return bad("ms must be > 0 for " + std::string(to_string(r.kind)));
  return r;
}

result<std::vector<uint32_t>> coordinator_crash_steps(const std::vector<fault_rule>& rules) {
  std::vector<uint32_t> steps;
  for (const auto& r : rules) {
    if (r.kind != fault_kind::crash || r.node != 0) continue;
    if (r.step_lo < 0)
      return status{errc::invalid_argument, "fault rule \"" + r.text +
                                                "\": a crash of node 0 (the coordinator) needs step=N: the "
                                                "launcher kills it when the run reports that decode step"};
    steps.push_back(static_cast<uint32_t>(r.step_lo));
  }
  std::sort(steps.begin(), steps.end());
  return steps;
}

result<std::vector<fault_rule>> parse_fault_script(const std::string& script) {
  std::vector<fault_rule> rules;
  std::string norm = script;
  for (char& c : norm)
    if (c == '\n') c = ';';
  for (auto& part : split(norm, ';')) {
    std::string t = trim(part);
    if (t.empty() || t[0] == '#') continue;
    auto r = parse_fault_rule(t);
    if (!r) return r.error();
    rules.push_back(std::move(r).value());
  }
  return rules;
}

std::string fault_event::to_json() const {
  std::string s = "{\"node\":" + std::to_string(node) + ",\"point\":\"" + to_string(point) +
                  "\",\"fault\":\"" + to_string(kind) + "\",\"msg\":\"" +
                  (msg.kind_known ? to_string(msg.kind) : "unknown") +
                  "\",\"from\":" + std::to_string(msg.from) + ",\"to\":" +
                  std::to_string(msg.to) + ",\"seq\":" + std::to_string(msg.seq) +
                  ",\"step\":" + std::to_string(msg.step) + ",\"vt_ns\":" +
                  std::to_string(msg.vtime_ns) + ",\"rule\":" + std::to_string(rule) +
                  ",\"unix_ms\":" + std::to_string(unix_ms) + ",\"t_ns\":" + std::to_string(t_ns) + "}";
  return s;
}

result<std::shared_ptr<fault_injector>> fault_injector::make(fault_plan plan, node_id self) {
  int fd = -1;
  if (!plan.log_path.empty()) {
    fd = ::open(plan.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
      return status{errc::io, "faults.log: cannot open \"" + plan.log_path + "\" for appending: " +
                                  std::strerror(errno)};
  }
  return std::shared_ptr<fault_injector>(new fault_injector(std::move(plan), self, fd));
}

fault_injector::fault_injector(fault_plan plan, node_id self, int fd)
    : plan_(std::move(plan)), self_(self), fd_(fd), t0_ns_(now_ns()) {
  fired_.reset(new std::atomic<uint64_t>[plan_.rules.size() + 1]);
  open_.reset(new std::atomic<bool>[plan_.rules.size() + 1]);
  for (size_t i = 0; i <= plan_.rules.size(); ++i) {
    fired_[i] = 0;
    open_[i] = false;
  }
}

fault_injector::~fault_injector() {
  if (fd_ >= 0) ::close(fd_);
}

void fault_injector::record(fault_point point, fault_kind kind, const fault_message& m,
                            size_t rule) {
  injected_[static_cast<size_t>(point) * fault_kind_count + static_cast<size_t>(kind)]++;
  fault_event e;
  e.node = self_;
  e.point = point;
  e.kind = kind;
  e.msg = m;
  e.rule = rule;
  e.t_ns = static_cast<uint64_t>(now_ns() - t0_ns_);
  e.unix_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
  if (fd_ >= 0) {
    std::string line = e.to_json() + "\n";
    ssize_t n = ::write(fd_, line.data(), line.size());
    if (n != static_cast<ssize_t>(line.size())) {
      static std::atomic<bool> warned{false};
      if (!warned.exchange(true))
        log().warn("fault log write failed path={} error=\"{}\"", plan_.log_path,
                   std::strerror(errno));
    }
  }
  std::lock_guard<std::mutex> lock(events_mu_);
  if (events_.size() < max_events_kept) events_.push_back(e);
}

fault_decision fault_injector::decide(fault_point point, const fault_message& m) {
  fault_decision d;
  const uint64_t pt = static_cast<uint64_t>(point);
  for (size_t i = 0; i < plan_.rules.size(); ++i) {
    const fault_rule& r = plan_.rules[i];
    if (!(point == fault_point::send ? r.at_send : r.at_recv)) continue;
    if (r.node >= 0 && static_cast<node_id>(r.node) != self_) continue;
    if (r.from >= 0 && static_cast<node_id>(r.from) != m.from) continue;
    if (r.to >= 0 && static_cast<node_id>(r.to) != m.to) continue;
    if (m.kind_known ? !(r.msg_kinds & (1u << static_cast<unsigned>(m.kind))) : !r.any_kind)
      continue;
    if (r.step_lo >= 0) {
      if (m.step >= 0 || r.kind != fault_kind::partition) {
        const bool in = m.step >= r.step_lo && (r.step_hi < 0 || m.step <= r.step_hi);
        if (r.kind == fault_kind::partition) open_[i].store(in, std::memory_order_relaxed);
        if (!in) continue;
      } else if (!open_[i].load(std::memory_order_relaxed)) {
        // A message that names no step (a decode append, a write ack, a prefill write)
        // is cut while the partition's steps last: from the first message of its range
        // this node sees to the first past it.
        continue;
      }
    }
    if (m.seq < r.seq_lo || m.seq > r.seq_hi) continue;
    if (r.kind == fault_kind::partition) {
      auto in = [&](node_id n) {
        for (node_id g : r.group)
          if (g == n) return true;
        return false;
      };
      // Without a group every link may be cut; with one, only links crossing the cut.
      if (!r.group.empty() && in(m.from) == in(m.to)) continue;
    }
    if (r.probability < 1.0) {
      double u;
      if (r.kind == fault_kind::partition) {
        // One draw per (link, window of sequence numbers): partitions last a while.
        uint64_t lo = std::min(m.from, m.to), hi = std::max(m.from, m.to);
        // Same draw at both ends of the link, so a cut is a cut in both directions.
        u = fault_uniform(plan_.seed, i, 0x9a47, (lo << 32) | hi, m.seq / r.window_msgs, m.from);
      } else {
        u = fault_uniform(plan_.seed, i, pt, self_, (uint64_t{m.from} << 32) | m.to,
                          m.seq ^ (uint64_t{m.kind_known} << 63));
      }
      if (u >= r.probability) continue;
    }
    if (r.max_count != UINT64_MAX && fired_[i].fetch_add(1) >= r.max_count) continue;
    switch (r.kind) {
      case fault_kind::drop:
      case fault_kind::partition: d.drop = true; break;
      case fault_kind::delay: d.delay_ms = std::max(d.delay_ms, r.duration_ms); break;
      case fault_kind::duplicate: d.duplicate = true; break;
      case fault_kind::corrupt:
        d.corrupt_bits += r.bits;
        d.corrupt_salt = mix(plan_.seed ^ mix(i) ^ mix(pt) ^ mix(m.seq) ^ mix(m.from));
        break;
      case fault_kind::stall: d.stall_ms = std::max(d.stall_ms, r.duration_ms); break;
      case fault_kind::crash:
        d.crash = true;
        d.drop = true;  // the message dies with the node
        break;
    }
    record(point, r.kind, m, i);
    if (d.drop) break;  // nothing else matters for a message that is gone
  }
  return d;
}

void fault_injector::corrupt(std::vector<uint8_t>& bytes, uint32_t bits, uint64_t salt) {
  if (bytes.empty()) return;
  const uint64_t nbits = uint64_t{bytes.size()} * 8;
  for (uint32_t b = 0; b < bits; ++b) {
    uint64_t pos = mix(salt + b) % nbits;
    bytes[pos / 8] ^= static_cast<uint8_t>(1u << (pos % 8));
  }
}

uint64_t fault_injector::injected(fault_point point, fault_kind kind) const {
  return injected_[static_cast<size_t>(point) * fault_kind_count + static_cast<size_t>(kind)]
      .load();
}

std::vector<fault_event> fault_injector::events() const {
  std::lock_guard<std::mutex> lock(events_mu_);
  return events_;
}

}  // namespace pnmkv::transport
