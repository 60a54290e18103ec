// The timeline recorder and its trace-event JSON (see timeline_trace.hpp).
#include "schedulers/timeline_trace.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <set>
#include <utility>

#include "core/check.hpp"

namespace pnmkv {

const char* to_string(trace_name n) {
  switch (n) {
    case trace_name::dense: return "dense";
    case trace_name::allreduce: return "allreduce";
    case trace_name::score: return "score";
    case trace_name::attention: return "attention";
    case trace_name::merge: return "merge";
    case trace_name::copy_exposed: return "copies exposed";
    case trace_name::other_layers: return "other layers";
    case trace_name::lm_head: return "lm_head";
    case trace_name::handoff: return "stage handoff";
    case trace_name::send: return "send";
    case trace_name::prefill_write: return "prefill write";
    case trace_name::reply: return "reply";
    case trace_name::scan: return "scan";
    case trace_name::summary_read: return "summary read";
    case trace_name::recall: return "recall";
    case trace_name::copy: return "copy";
    case trace_name::device_phase: return "device phase";
  }
  return "?";
}

const char* to_string(trace_track t) {
  switch (t) {
    case trace_track::gpu_rank: return "gpu";
    case trace_track::link_out: return "link out";
    case trace_track::link_in: return "link in";
    case trace_track::device: return "device";
    case trace_track::micro_batch: return "micro-batch";
  }
  return "?";
}

timeline_trace::timeline_trace(std::string source, uint32_t steps, size_t spans_max)
    : source_(std::move(source)), steps_(steps), spans_max_(spans_max) {
  PNMKV_CHECK(steps >= 1 && steps <= timeline_steps_max, "steps=", steps);
  PNMKV_CHECK(spans_max >= 1, "spans_max=", spans_max);
}

bool timeline_trace::begin_step(uint32_t step, double origin_ns) {
  PNMKV_CHECK(!active_, "step ", step_, " still recording");
  if (steps_begun_ >= steps_ || truncated_) return false;
  ++steps_begun_;
  active_ = true;
  step_ = step;
  layer_ = 0;
  origin_ns_ = origin_ns;
  offset_ns_ = 0;
  step_first_ = spans_.size();
  send_name_ = trace_name::send;
  return true;
}

void timeline_trace::end_step() {
  if (!active_) return;
  active_ = false;
  prev_first_ = step_first_;
  prev_end_ = spans_.size();
  prev_origin_ns_ = origin_ns_;
}

void timeline_trace::map_device(uint32_t slot, uint32_t id) {
  if (device_ids_.size() <= slot) {
    const size_t old = device_ids_.size();
    device_ids_.resize(size_t(slot) + 1);
    for (size_t i = old; i < device_ids_.size(); ++i) device_ids_[i] = uint32_t(i);
  }
  device_ids_[slot] = id >= device_id_base_ ? id - device_id_base_ : id;
}

void timeline_trace::span(trace_track track, uint32_t index, trace_name name, double start_ns,
                          double dur_ns, uint64_t bytes) {
  if (!active_ || !(dur_ns > 0)) return;
  if (spans_.size() >= spans_max_) {
    truncated_ = true;
    return;
  }
  spans_.push_back({track, name, index, step_, layer_, origin_ns_ + offset_ns_ + start_ns, dur_ns, bytes});
}

void timeline_trace::device_span(uint32_t slot, double start_ns, double dur_ns) {
  const uint32_t id = slot < device_ids_.size() ? device_ids_[slot] : slot;
  span(trace_track::device, id, device_name_, start_ns, dur_ns);
}

void timeline_trace::gpu(trace_name name, double start_ns, double dur_ns) {
  for (uint32_t r = 0; r < gpu_ranks_; ++r) span(trace_track::gpu_rank, r, name, start_ns, dur_ns);
}

void timeline_trace::repeat_previous_step() {
  if (!active_) return;
  for (size_t i = prev_first_; i < prev_end_; ++i) {
    if (spans_.size() >= spans_max_) {
      truncated_ = true;
      return;
    }
    trace_span s = spans_[i];
    s.step = step_;
    s.start_ns += origin_ns_ - prev_origin_ns_;
    spans_.push_back(s);
  }
}

namespace {
// Micro-batch tracks sit after every device's (devices are at most 4096).
constexpr uint32_t micro_batch_tid_base = 100000;
// Process ids: a kind of track each, live and sim apart so their files can be merged.
int pid_of(const std::string& source, trace_track t) {
  const int base = source == "sim" ? 10 : source == "live" ? 0 : 20;
  switch (t) {
    case trace_track::gpu_rank: return base + 1;
    case trace_track::link_out:
    case trace_track::link_in: return base + 2;
    case trace_track::device:
    case trace_track::micro_batch: return base + 3;
  }
  return base;
}
// Threads: one per track; a link's out and in next to each other.
int tid_of(const trace_span& s) {
  switch (s.track) {
    case trace_track::link_out: return int(2 * s.index);
    case trace_track::link_in: return int(2 * s.index + 1);
    case trace_track::micro_batch: return int(micro_batch_tid_base + s.index);
    default: return int(s.index);
  }
}
std::string thread_name(trace_track t, uint32_t index) {
  switch (t) {
    case trace_track::gpu_rank: return "gpu rank " + std::to_string(index);
    case trace_track::link_out: return "link " + std::to_string(index) + " out";
    case trace_track::link_in: return "link " + std::to_string(index) + " in";
    case trace_track::device: return "device " + std::to_string(index);
    case trace_track::micro_batch: return "device pool: micro-batch " + std::to_string(index);
  }
  return "?";
}
}  // namespace

std::string chrome_trace_json(const timeline_trace& t) {
  using nlohmann::json;
  std::string out = "{\"traceEvents\":[\n";
  bool first = true;
  auto put = [&](const json& e) {
    if (!first) out += ",\n";
    first = false;
    out += e.dump();
  };
  const std::string& src = t.source();
  const std::pair<trace_track, const char*> processes[] = {
      {trace_track::gpu_rank, "GPU"}, {trace_track::link_out, "host links"}, {trace_track::device, "devices"}};
  for (const auto& [track, label] : processes) {
    const int pid = pid_of(src, track);
    put({{"ph", "M"}, {"name", "process_name"}, {"pid", pid}, {"tid", 0}, {"args", {{"name", src + " · " + label}}}});
    put({{"ph", "M"}, {"name", "process_sort_index"}, {"pid", pid}, {"tid", 0}, {"args", {{"sort_index", pid}}}});
  }
  std::set<std::pair<int, int>> named;
  for (const trace_span& s : t.spans()) {
    const int pid = pid_of(src, s.track), tid = tid_of(s);
    if (!named.insert({pid, tid}).second) continue;
    put({{"ph", "M"}, {"name", "thread_name"}, {"pid", pid}, {"tid", tid},
         {"args", {{"name", thread_name(s.track, s.index)}}}});
    put({{"ph", "M"}, {"name", "thread_sort_index"}, {"pid", pid}, {"tid", tid}, {"args", {{"sort_index", tid}}}});
  }
  for (const trace_span& s : t.spans()) {
    json args = {{"step", s.step}, {"layer", s.layer}};
    if (s.bytes) args["bytes"] = s.bytes;
    put({{"ph", "X"}, {"name", to_string(s.name)}, {"cat", to_string(s.track)}, {"pid", pid_of(src, s.track)},
         {"tid", tid_of(s)}, {"ts", s.start_ns * 1e-3}, {"dur", s.dur_ns * 1e-3}, {"args", args}});
  }
  out += "\n],\"displayTimeUnit\":\"ns\",\"otherData\":";
  json other = {{"source", src},
                {"steps_max", t.steps()},
                {"spans", t.spans().size()},
                {"spans_max", t.spans_max()},
                {"truncated", t.truncated()},
                {"time", "virtual (modelled hardware); ts and dur in microseconds"}};
  if (t.truncated())
    other["note"] = "the span cap was hit: spans after the first " + std::to_string(t.spans_max()) +
                    " were dropped, so the last step drawn is incomplete";
  out += other.dump();
  out += "}\n";
  return out;
}

}  // namespace pnmkv
