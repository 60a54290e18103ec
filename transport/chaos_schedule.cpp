#include "transport/chaos_schedule.hpp"

#include <cstdio>
#include <random>

#include "transport/faults.hpp"

namespace pnmkv::transport {

namespace {
constexpr const char* names[chaos_fault_count] = {"crash",   "hang",  "partition", "drop",
                                                  "duplicate", "corrupt", "delay", "slow-link",
                                                  "coordinator-kill"};

std::string allowed() {
  std::string s;
  for (const char* n : names) s += (s.empty() ? "" : "|") + std::string(n);
  return s + "|all";
}
}  // namespace

const char* to_string(chaos_fault f) {
  const auto i = static_cast<size_t>(f);
  return i < chaos_fault_count ? names[i] : "unknown";
}

result<std::vector<chaos_fault>> parse_chaos_faults(const std::string& csv, bool multiprocess) {
  std::vector<chaos_fault> out;
  size_t at = 0;
  while (at <= csv.size()) {
    size_t end = csv.find(',', at);
    if (end == std::string::npos) end = csv.size();
    std::string name = csv.substr(at, end - at);
    while (!name.empty() && name.front() == ' ') name.erase(name.begin());
    while (!name.empty() && name.back() == ' ') name.pop_back();
    at = end + 1;
    if (name.empty()) continue;
    if (name == "all") {
      for (size_t i = 0; i < chaos_fault_count; ++i)
        if (multiprocess || static_cast<chaos_fault>(i) != chaos_fault::coordinator_kill)
          out.push_back(static_cast<chaos_fault>(i));
      continue;
    }
    if (name == "coordinator") name = "coordinator-kill";
    if (name == "coordinator-kill" && !multiprocess)
      return status{errc::unsupported, "chaos fault \"coordinator-kill\" needs --multiprocess or --compose: the "
                                       "coordinator process is killed and restarted from its journal; the "
                                       "embedded cluster's coordinator shares the process"};
    bool found = false;
    for (size_t i = 0; i < chaos_fault_count && !found; ++i)
      if (name == names[i]) {
        out.push_back(static_cast<chaos_fault>(i));
        found = true;
      }
    if (!found) return status{errc::invalid_argument, "chaos fault \"" + name + "\" is unknown; allowed: " + allowed()};
  }
  if (out.empty()) return status{errc::invalid_argument, "no chaos fault named; allowed: " + allowed()};
  return out;
}

std::string chaos_schedule::script() const {
  std::string s;
  for (const auto& e : events) s += (s.empty() ? "" : "; ") + e.rule;
  return s;
}

result<chaos_schedule> draw_chaos_schedule(const chaos_params& p, uint64_t seed) {
  if (p.kinds.empty()) return status{errc::invalid_argument, "chaos: no fault kind to draw from"};
  if (p.devices.empty()) return status{errc::invalid_argument, "chaos: no device to hit"};
  if (p.steps < 2) return status{errc::invalid_argument, "chaos: a run needs 2 decode steps at least (run.steps)"};
  if (p.faults_per_trial_max == 0 || p.faults_per_trial_max > 64)
    return status{errc::invalid_argument, "chaos: faults per trial must be in [1, 64]"};
  if (!(p.rate_max > 0 && p.rate_max <= 1)) return status{errc::invalid_argument, "chaos: rate_max must be in (0, 1]"};
  std::mt19937_64 rng(seed);
  auto below = [&](uint64_t n) { return n ? rng() % n : 0; };
  auto unit = [&] { return double(rng() >> 11) * 0x1.0p-53; };  // [0, 1)
  chaos_schedule s;
  s.seed = seed;
  const uint64_t n = 1 + below(p.faults_per_trial_max);
  char buf[160];
  for (uint64_t i = 0; i < n; ++i) {
    chaos_event e;
    e.kind = p.kinds[below(p.kinds.size())];
    const uint32_t dev = p.devices[below(p.devices.size())];
    e.step = 1 + uint32_t(below(p.steps - 1));
    switch (e.kind) {
      case chaos_fault::crash:
        e.node = dev;
        std::snprintf(buf, sizeof buf, "crash node=%u step=%u", dev, e.step);
        break;
      case chaos_fault::hang:
        e.node = dev;
        e.ms = 200 + uint32_t(below(std::max<uint32_t>(1, p.hang_ms_max - 200)));
        std::snprintf(buf, sizeof buf, "stall node=%u step=%u ms=%u", dev, e.step, e.ms);
        break;
      case chaos_fault::partition:
        e.node = dev;
        e.step_end = e.step + uint32_t(below(std::max<uint32_t>(1, p.partition_steps_max)));
        std::snprintf(buf, sizeof buf, "partition group=%u step=%u..%u", dev, e.step, e.step_end);
        break;
      case chaos_fault::coordinator_kill:
        e.node = 0;
        std::snprintf(buf, sizeof buf, "crash node=0 step=%u", e.step);
        break;
      case chaos_fault::slow_link:
        e.node = dev;
        e.ms = 1 + uint32_t(below(5));
        std::snprintf(buf, sizeof buf, "delay node=%u ms=%u", dev, e.ms);
        break;
      case chaos_fault::drop:
      case chaos_fault::duplicate:
      case chaos_fault::corrupt:
      case chaos_fault::delay: {
        e.probability = p.rate_max * (1.0 - unit());  // (0, rate_max]
        const char* rule = e.kind == chaos_fault::drop        ? "drop"
                           : e.kind == chaos_fault::duplicate ? "duplicate"
                           : e.kind == chaos_fault::corrupt   ? "corrupt"
                                                              : "delay";
        if (e.kind == chaos_fault::delay) {
          e.ms = 1 + uint32_t(below(50));
          std::snprintf(buf, sizeof buf, "%s p=%.6f ms=%u step=%u..", rule, e.probability, e.ms, e.step);
        } else {
          std::snprintf(buf, sizeof buf, "%s p=%.6f step=%u..", rule, e.probability, e.step);
        }
        break;
      }
    }
    e.rule = buf;
    auto check = parse_fault_rule(e.rule);  // the grammar's own check: never a bad script
    if (!check) return status{errc::internal, "chaos drew an invalid rule \"" + e.rule + "\": " + check.error().message()};
    s.events.push_back(std::move(e));
  }
  return s;
}

}  // namespace pnmkv::transport
