// The timeline (schedulers/timeline_trace.hpp, `--timeline-out`): what the layer timeline
// draws on a hand-worked layer; the trace-event JSON's schema; that spans on one track are
// serial where the model serialises them (a link direction's messages, a device's work);
// that span sums are the step's figures (busiest device, busiest link direction, step
// time); that the live host engine and the step model draw the same spans for the same
// small configuration (tests/sim/agreement_test.cpp's); and that tracing changes nothing.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include <unistd.h>

#include "actors/cluster.hpp"
#include "actors/node_main.hpp"
#include "schedulers/step_timeline.hpp"
#include "schedulers/timeline_trace.hpp"
#include "sim/simulator.hpp"
#include "tests/sim/sim_fixture.hpp"

namespace pnmkv {
namespace {

using sim_fixture::setup_of;

// The agreement test's small configuration (live and sim equal up to rounding there; the
// baseline's recall cache off, since the simulator charges its hits as a calibrated fraction;
// flat search, since it charges exact-int8's rescored pages as a calibrated ratio too).
std::vector<std::string> small(std::vector<std::string> extra) {
  std::vector<std::string> sets = {"workload.context_tokens=32768", "run.steps=4",
                                   "selection.budget_tokens=512", "run.step_timeout_ms=60000",
                                   "sim.step_reuse_steps=1", "sim.baseline_overlap=false",
                                   "baseline.recall_cache=none", "selection.search=flat"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  return sets;
}

TEST(timeline, layer_timeline_draws_a_hand_worked_layer) {
  auto s = setup_of({});
  ASSERT_TRUE(s);
  const cost_model& c = *s->costs;
  timeline_trace tr("sim", 1);
  ASSERT_TRUE(tr.begin_step(0, 1000.0));
  layer_timeline tl(c, /*host_links=*/1, /*devices=*/2);
  tl.set_trace(&tr);
  tl.begin(100);
  const uint64_t B = 4096;
  const double ser = c.link_serialisation_ns(double(B)), lat = c.link_latency_ns();
  // Three messages leave link 0 back to back from t = 100.
  const double a1 = tl.send(0, 100, B), a2 = tl.send(0, 100, B), a3 = tl.send(0, 100, B);
  EXPECT_DOUBLE_EQ(a1, 100 + ser + lat);
  // Device 0 gets the first two (the second queues behind the first), device 1 the third.
  const double cost = 5 * ser;
  tl.expect(a1, 0, 0, cost, B);
  tl.expect(a2, 0, 0, cost, B);
  tl.expect(a3, 1, 0, cost, B);
  tl.serve();
  tl.receive();
  tr.end_step();
  std::map<std::tuple<trace_track, uint32_t>, std::vector<trace_span>> by_track;
  for (const trace_span& sp : tr.spans()) by_track[{sp.track, sp.index}].push_back(sp);
  const auto& out = by_track[{trace_track::link_out, 0}];
  ASSERT_EQ(out.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_DOUBLE_EQ(out[i].start_ns, 1000 + 100 + i * ser);  // origin 1000
    EXPECT_DOUBLE_EQ(out[i].dur_ns, ser);
    EXPECT_EQ(out[i].name, trace_name::send);
    EXPECT_EQ(out[i].bytes, B);
  }
  const auto& d0 = by_track[{trace_track::device, 0}];
  ASSERT_EQ(d0.size(), 2u);
  EXPECT_NEAR(d0[0].start_ns, 1000 + a1, 1e-9);
  EXPECT_NEAR(d0[1].start_ns, 1000 + a1 + cost, 1e-9);  // after the first: the device is busy
  const auto& d1 = by_track[{trace_track::device, 1}];
  ASSERT_EQ(d1.size(), 1u);
  EXPECT_NEAR(d1[0].start_ns, 1000 + a3, 1e-9);
  // Replies in done order over the inbound link: device 0's first (done a1 + cost), then
  // device 1's (done a3 + cost < a1 + 2 cost), then device 0's second.
  const auto& in = by_track[{trace_track::link_in, 0}];
  ASSERT_EQ(in.size(), 3u);
  EXPECT_NEAR(in[0].start_ns, 1000 + a1 + cost + lat, 1e-9);
  EXPECT_NEAR(in[1].start_ns, 1000 + std::max(a1 + cost + lat + ser, a3 + cost + lat), 1e-9);
  EXPECT_EQ(in[2].name, trace_name::reply);
  // Past the one step asked for, nothing is drawn.
  EXPECT_FALSE(tr.begin_step(1, 5000));
  tl.begin(0);
  tl.send(0, 0, B);
  EXPECT_EQ(tr.spans().size(), 3u + 3u + 3u);
}

TEST(timeline, span_cap_stops_recording_and_the_file_says_so) {
  timeline_trace tr("sim", 2, /*spans_max=*/5);
  ASSERT_TRUE(tr.begin_step(0, 0));
  for (int i = 0; i < 8; ++i) tr.span(trace_track::link_out, 0, trace_name::send, i * 10.0, 5.0, 64);
  tr.span(trace_track::link_out, 0, trace_name::send, 100.0, 0.0);  // zero length: not kept
  tr.end_step();
  EXPECT_EQ(tr.spans().size(), 5u);
  EXPECT_TRUE(tr.truncated());
  EXPECT_FALSE(tr.begin_step(1, 100)) << "a truncated trace draws no more steps";
  const auto j = nlohmann::json::parse(chrome_trace_json(tr));
  EXPECT_TRUE(j["otherData"]["truncated"].get<bool>());
  EXPECT_NE(j["otherData"]["note"].get<std::string>().find("cap"), std::string::npos);
}

struct event {
  std::string cat, name;
  int pid, tid;
  double ts_us, dur_us;
  uint32_t step, layer;
};

// The file's "X" events, after checking the schema: every event has ph, pid, tid; "X" have
// name, cat, ts, dur >= 0 and args.step / args.layer; every (pid, tid) used is named by "M"
// thread_name and every pid by process_name.
std::vector<event> parse_checked(const std::string& text) {
  const auto j = nlohmann::json::parse(text);
  EXPECT_TRUE(j.contains("traceEvents"));
  std::map<int, std::string> processes;
  std::map<std::pair<int, int>, std::string> threads;
  std::vector<event> out;
  for (const auto& e : j["traceEvents"]) {
    const std::string ph = e.at("ph");
    const int pid = e.at("pid"), tid = e.at("tid");
    if (ph == "M") {
      if (e.at("name") == "process_name") processes[pid] = e.at("args").at("name");
      if (e.at("name") == "thread_name") threads[{pid, tid}] = e.at("args").at("name");
      continue;
    }
    EXPECT_EQ(ph, "X");
    event ev{e.at("cat"), e.at("name"), pid, tid, e.at("ts"), e.at("dur"), e.at("args").at("step"),
             e.at("args").at("layer")};
    EXPECT_GE(ev.dur_us, 0.0);
    out.push_back(ev);
  }
  for (const event& ev : out) {
    EXPECT_TRUE(processes.count(ev.pid)) << "pid " << ev.pid << " has no process_name";
    EXPECT_TRUE(threads.count({ev.pid, ev.tid})) << "pid " << ev.pid << " tid " << ev.tid << " has no thread_name";
  }
  return out;
}

// Spans of one link direction, one device or one GPU rank never overlap (the model
// serialises them).
void expect_serial_tracks(const timeline_trace& tr) {
  std::map<std::tuple<trace_track, uint32_t, uint32_t>, std::vector<const trace_span*>> by;
  for (const trace_span& s : tr.spans()) by[{s.track, s.index, s.step}].push_back(&s);
  ASSERT_FALSE(by.empty());
  for (auto& [key, v] : by) {
    std::sort(v.begin(), v.end(), [](auto* a, auto* b) { return a->start_ns < b->start_ns; });
    for (size_t i = 1; i < v.size(); ++i)
      EXPECT_LE(v[i - 1]->start_ns + v[i - 1]->dur_ns, v[i]->start_ns + 1e-6 * v[i]->dur_ns)
          << to_string(std::get<0>(key)) << " " << std::get<1>(key) << " step " << std::get<2>(key) << " span " << i;
  }
}

result<sim_result> sim_traced(const std::vector<std::string>& sets, timeline_trace* tr) {
  auto s = setup_of(sets);
  if (!s) return status{errc::invalid_argument, "no setup"};
  return simulate(s, {}, tr);
}

TEST(timeline, sim_trace_is_serial_and_sums_to_the_step) {
  for (const auto& extra : std::vector<std::vector<std::string>>{
           {"run.mode=pnm-kv", "cluster.pnm_devices=4", "selection.lookahead=false"},
           {"run.mode=pnm-kv", "cluster.pnm_devices=16", "selection.cross_shard=local", "selection.lookahead=false"},
           {"run.mode=baseline", "cluster.pnm_devices=4"},
           {"run.mode=pnm-kv", "cluster.pnm_devices=4", "selection.lookahead=true"}}) {
    SCOPED_TRACE(extra[0] + " " + extra[1] + " " + extra.back());
    // Lookahead: the background searches are charged (busy fractions) but not drawn.
    const bool ahead = extra.back() == "selection.lookahead=true";
    timeline_trace tr("sim", 4);
    auto r = sim_traced(small(extra), &tr);
    ASSERT_TRUE(r) << r.error().to_string();
    ASSERT_EQ(r->decode_steps, 4u);
    const auto events = parse_checked(chrome_trace_json(tr));
    EXPECT_EQ(events.size(), tr.spans().size());
    expect_serial_tracks(tr);
    // Every step drawn; the last span ends where four steps end.
    double end = 0;
    std::map<uint32_t, std::map<uint32_t, double>> device_busy;  // step -> device -> ns
    std::map<uint32_t, std::map<std::pair<int, uint32_t>, double>> link_busy;
    for (const trace_span& s : tr.spans()) {
      end = std::max(end, s.start_ns + s.dur_ns);
      if (s.track == trace_track::device) device_busy[s.step][s.index] += s.dur_ns;
      if (s.track == trace_track::link_out || s.track == trace_track::link_in)
        link_busy[s.step][{int(s.track), s.index}] += s.dur_ns;
    }
    EXPECT_NEAR(end, 4 * r->step_ms * 1e6, 4 * r->step_ms * 1e6 * 1e-9);
    ASSERT_EQ(device_busy.size(), 4u);
    // The busiest device's work and busiest link direction's, one layer drawn per step and
    // charged for every layer: the simulator's busy fractions.
    const double L = 32;  // Llama-3.1-8B (default config)
    double dev = 0, link = 0;
    for (auto& [step, d] : device_busy) {
      double m = 0;
      for (auto& [id, ns] : d) m = std::max(m, ns);
      dev += m * L;
    }
    for (auto& [step, l] : link_busy) {
      double m = 0;
      for (auto& [k, ns] : l) m = std::max(m, ns);
      link += m * L;
    }
    const double decode_ns = 4 * r->step_ms * 1e6;
    EXPECT_GT(r->device_busy_fraction, 0.0);
    EXPECT_GT(r->link_busy_fraction, 0.0);
    if (ahead) {
      EXPECT_LT(dev / decode_ns, r->device_busy_fraction);
      EXPECT_LT(link / decode_ns, r->link_busy_fraction);
      continue;
    }
    EXPECT_NEAR(dev / decode_ns, r->device_busy_fraction, 1e-9);
    EXPECT_NEAR(link / decode_ns, r->link_busy_fraction, 1e-9);
  }
}

// png-kv's copy engine: the copies leave at the step's start, beside the dense layer (their
// own timeline from idle links and devices, as the live engine sends them), and what the
// dense-layer windows do not hide is drawn after the LM head, so the last span of the run
// still ends where its steps end.
TEST(timeline, png_kv_copies_leave_beside_the_dense_layer) {
  timeline_trace tr("sim", 4);
  auto r = sim_traced(small({"run.mode=png-kv"}), &tr);
  ASSERT_TRUE(r) << r.error().to_string();
  double end = 0;
  for (const trace_span& s : tr.spans()) end = std::max(end, s.start_ns + s.dur_ns);
  EXPECT_NEAR(end, 4 * r->step_ms * 1e6, 4 * r->step_ms * 1e6 * 1e-9);
  size_t steps_with_copies = 0;
  for (uint32_t step = 0; step < 4; ++step) {
    SCOPED_TRACE(step);
    const trace_span* dense = nullptr;
    double first_send = 1e300, first_copy = 1e300;
    size_t copies = 0;
    for (const trace_span& s : tr.spans()) {
      if (s.step != step) continue;
      if (s.name == trace_name::dense && s.index == 0) dense = &s;
      if (s.name == trace_name::send) first_send = std::min(first_send, s.start_ns);
      if (s.name == trace_name::copy) first_copy = std::min(first_copy, s.start_ns), ++copies;
    }
    ASSERT_TRUE(dense);
    if (copies == 0) continue;
    ++steps_with_copies;
    EXPECT_NEAR(first_send, dense->start_ns, 1e-9 * dense->start_ns + 1e-9) << "copies leave at the step's start";
    EXPECT_LT(first_copy, dense->start_ns + dense->dur_ns) << "a copy is served during the dense layer";
  }
  EXPECT_GT(steps_with_copies, 0u);
}

TEST(timeline, steps_are_limited_and_tracing_changes_nothing) {
  const auto sets = small({"run.mode=pnm-kv", "cluster.pnm_devices=4"});
  timeline_trace tr("sim", 2);
  auto traced = sim_traced(sets, &tr);
  auto plain = sim_traced(sets, nullptr);
  ASSERT_TRUE(traced && plain);
  EXPECT_EQ(traced->step_ms, plain->step_ms);
  EXPECT_EQ(traced->energy_j_per_token, plain->energy_j_per_token);
  for (const trace_span& s : tr.spans()) EXPECT_LT(s.step, 2u);
  EXPECT_FALSE(tr.spans().empty());
}

// Sorted for comparison: by track, index, step, start.
std::vector<trace_span> sorted(std::vector<trace_span> v) {
  std::sort(v.begin(), v.end(), [](const trace_span& a, const trace_span& b) {
    return std::tie(a.track, a.index, a.step, a.start_ns, a.name) < std::tie(b.track, b.index, b.step, b.start_ns, b.name);
  });
  return v;
}

TEST(timeline, live_and_sim_draw_the_same_spans) {
  const std::string default_file = sim_fixture::default_file;
  // An open workload too (the agreement test's trace): admissions, prompt writes next to
  // decoding, steps at their serving times.
  const std::string trace_file = (std::filesystem::temp_directory_path() /
                                  ("pnmkv_timeline_trace_" + std::to_string(::getpid()) + ".csv"))
                                     .string();
  std::ofstream(trace_file) << "arrival_s,prompt_tokens,output_tokens\n"
                               "0,3000,6\n0.01,700,5\n0.02,2048,8\n0.5,4000,4\n0.52,1500,7\n";
  const std::vector<std::string> open = {"workload.arrivals=trace", "workload.trace_file=" + trace_file,
                                         "workload.prefill_chunk_tokens=1024", "workload.context_tokens=4096"};
  std::vector<std::vector<std::string>> points = {
      {"run.mode=pnm-kv", "cluster.pnm_devices=4"},
      {"run.mode=pnm-kv", "cluster.pnm_devices=16", "selection.cross_shard=local"},
      {"run.mode=baseline", "cluster.pnm_devices=4"},
      {"run.mode=gpu-only", "cluster.pnm_devices=4"}};
  for (const char* mode : {"run.mode=pnm-kv", "run.mode=baseline"}) {
    points.push_back({mode, "(open)"});
    points.back().insert(points.back().end(), open.begin(), open.end());
  }
  for (auto extra : points) {
    SCOPED_TRACE(extra[0] + " " + extra[1]);
    const bool is_open = extra[1] == "(open)";
    if (is_open) extra.erase(extra.begin() + 1);
    const auto sets = small(extra);
    const uint32_t steps = is_open ? 8 : 2;
    auto cfg = load_config(default_file, sets);
    ASSERT_TRUE(cfg) << cfg.error().to_string();
    cluster_run_options ro;
    ro.timeline = std::make_shared<timeline_trace>("live", steps);
    auto live = run_embedded(*cfg, ro);
    ASSERT_TRUE(live) << live.error().to_string();
    auto plain = run_embedded(*cfg, {});
    ASSERT_TRUE(plain) << plain.error().to_string();
    // Tracing on changes no output, digest or step time.
    EXPECT_EQ(live->output_digest, plain->output_digest);
    EXPECT_EQ(live->virtual_step_ms_mean, plain->virtual_step_ms_mean);
    timeline_trace st("sim", steps);
    auto sim = sim_traced(sets, &st);
    ASSERT_TRUE(sim) << sim.error().to_string();
    const auto l = sorted(ro.timeline->spans()), s = sorted(st.spans());
    expect_serial_tracks(*ro.timeline);
    // What each mode draws: PNM scans, or the GPU scoring, the expanders' recalls and attention.
    std::set<trace_name> names;
    for (const trace_span& sp : s) names.insert(sp.name);
    const bool gpu_only = extra[0] == "run.mode=gpu-only";
    const std::vector<trace_name> want =
        extra[0] == "run.mode=baseline"
            ? std::vector<trace_name>{trace_name::score, trace_name::recall, trace_name::attention}
        : gpu_only ? std::vector<trace_name>{trace_name::attention}
                   : std::vector<trace_name>{trace_name::scan};
    for (trace_name n : want) EXPECT_TRUE(names.count(n)) << to_string(n);
    for (trace_name n : {trace_name::dense, trace_name::other_layers, trace_name::lm_head})
      EXPECT_TRUE(names.count(n)) << to_string(n);
    for (trace_name n : {trace_name::send, trace_name::reply, trace_name::merge})
      EXPECT_EQ(names.count(n), gpu_only ? 0u : 1u) << to_string(n) << ": gpu-only crosses no link";
    if (is_open) {
      EXPECT_TRUE(names.count(trace_name::prefill_write));
    }
    parse_checked(chrome_trace_json(*ro.timeline));
    ASSERT_EQ(l.size(), s.size());
    ASSERT_FALSE(l.empty());
    // Within 1e-6 of a step (of the run's time so far, later in an open run).
    const double step_ns = sim->step_ms * 1e6;
    size_t differ = 0;
    for (size_t i = 0; i < l.size() && differ < 10; ++i) {
      const double tol = 1e-6 * std::max(step_ns, std::abs(s[i].start_ns));
      const bool same = l[i].track == s[i].track && l[i].index == s[i].index && l[i].name == s[i].name &&
                        l[i].step == s[i].step && l[i].layer == s[i].layer && l[i].bytes == s[i].bytes &&
                        std::abs(l[i].start_ns - s[i].start_ns) <= tol && std::abs(l[i].dur_ns - s[i].dur_ns) <= tol;
      if (!same) {
        ++differ;
        ADD_FAILURE() << "span " << i << ": live " << to_string(l[i].track) << " " << l[i].index << " "
                      << to_string(l[i].name) << " step " << l[i].step << " at " << l[i].start_ns << " for "
                      << l[i].dur_ns << "; sim " << to_string(s[i].track) << " " << s[i].index << " "
                      << to_string(s[i].name) << " step " << s[i].step << " at " << s[i].start_ns << " for "
                      << s[i].dur_ns;
      }
    }
  }
  std::filesystem::remove(trace_file);
}

TEST(timeline, multiprocess_refuses_a_timeline) {
  auto cfg = load_config(sim_fixture::default_file, small({}));
  ASSERT_TRUE(cfg);
  cluster_run_options ro;
  ro.timeline = std::make_shared<timeline_trace>("live", 1);
  // Checked before any process is started.
  auto r = run_multiprocess(*cfg, ro, multiprocess_options{});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code(), errc::unsupported);
  EXPECT_NE(r.error().to_string().find("embedded"), std::string::npos);
}

}  // namespace
}  // namespace pnmkv
