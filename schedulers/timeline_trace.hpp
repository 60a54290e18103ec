// A timeline to look at (docs/DESIGN.md §5): the virtual-time schedule of the first few
// steps of a run, span by span, per GPU rank, host link direction and device, and its
// Chrome / Perfetto trace-event JSON. The live host engine (actors/host_engine.cpp) and the
// simulator's step model (schedulers/step_model.cpp) feed the same recorder through the
// shared arithmetic (schedulers/step_timeline.hpp: sends, device service, replies, GPU
// ranks, end of a layer) plus a few call sites (dense layers, LM head, copies), so a live
// and a simulated step of the same configuration have the same spans.
//
// Recording is off unless a caller holds a recorder (a null pointer costs one test per
// call) and, inside it, outside the first `steps` steps. Limits: at most timeline_steps_max
// steps and spans_max spans; past the cap nothing more is kept and the file says so
// (otherData.truncated).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace pnmkv {

// micro_batch: sub-batch overlap's device phases (the pool's links and devices as one, per
// micro-batch; schedule_micro_batches), drawn with the devices.
enum class trace_track : uint8_t { gpu_rank, link_out, link_in, device, micro_batch };
enum class trace_name : uint8_t {
  dense,          // GPU: the dense layer of the batch (and prefill chunks)
  allreduce,      // GPU: the tensor-parallel all-reduces around attention
  score,          // GPU (baseline): scoring the page summaries
  attention,      // GPU: attention over pages it holds (baseline recalls, png-kv steady)
  merge,          // GPU: merging the partials of every head
  copy_exposed,   // GPU (png-kv): the copy engine's time the dense-layer windows do not hide
  other_layers,   // GPU: the layers charged as copies of the one(s) drawn
  lm_head,        // GPU
  handoff,        // GPU (pp > 1): activations to the next stage
  send,           // link out: appends, queries, recall requests
  prefill_write,  // link out: prompt chunks
  reply,          // link in: partials, candidates, recalled pages
  scan,           // device (PNM): scoring and attention near memory
  summary_read,   // device (expander, baseline): page summaries read for the GPU
  recall,         // device (expander, baseline): selected pages read for the GPU
  copy,           // device (png-kv): pages newly steady read for the GPU
  device_phase,   // micro-batch: its queries out to its last reply in (sub-batch overlap)
};
const char* to_string(trace_name n);
const char* to_string(trace_track t);

struct trace_span {
  trace_track track;
  trace_name name;
  uint32_t index;   // GPU rank, host link or device id
  uint32_t step;
  uint32_t layer;
  double start_ns;  // run virtual time
  double dur_ns;
  uint64_t bytes;   // link spans: the message's bytes; else 0
};

inline constexpr uint32_t timeline_steps_max = 64;
inline constexpr size_t timeline_spans_max = 200000;  // ~30 MB of JSON

class timeline_trace {
 public:
  // source names the processes in the file ("live", "sim"); steps: 1..timeline_steps_max.
  timeline_trace(std::string source, uint32_t steps, size_t spans_max = timeline_spans_max);

  // A step begins at origin_ns of run virtual time; true while it is one of the first
  // `steps` steps (then spans are kept until end_step).
  bool begin_step(uint32_t step, double origin_ns);
  void end_step();
  bool active() const { return active_; }

  // A caller's time t lands at origin + offset + t (live: offset = -the engine clock at the
  // step's start; the step model: where the layer it computes from 0 sits in the step).
  void set_offset(double offset_ns) { offset_ns_ = offset_ns; }
  double offset() const { return offset_ns_; }
  void set_layer(uint32_t layer) { layer_ = layer; }
  // GPU-wide spans (dense, merges, LM head) are drawn on ranks 0..ranks-1.
  void set_gpu_ranks(uint32_t ranks) { gpu_ranks_ = ranks ? ranks : 1; }
  // What the layer timeline's sends and device work are called in the current phase.
  void set_send_name(trace_name n) { send_name_ = n; }
  void set_device_name(trace_name n) { device_name_ = n; }
  trace_name send_name() const { return send_name_; }
  trace_name device_name() const { return device_name_; }
  // The layer timeline's device index `slot` is device `id` (live: slots in order of use),
  // drawn as device id - base (live: node ids start at a base; the simulator counts from 0).
  void map_device(uint32_t slot, uint32_t id);
  void set_device_id_base(uint32_t base) { device_id_base_ = base; }

  // Spans of zero length are not kept.
  void span(trace_track track, uint32_t index, trace_name name, double start_ns, double dur_ns,
            uint64_t bytes = 0);
  void device_span(uint32_t slot, double start_ns, double dur_ns);
  void gpu(trace_name name, double start_ns, double dur_ns);  // every rank

  // The simulator reused the previous step's result: its spans again for this step.
  void repeat_previous_step();

  const std::string& source() const { return source_; }
  uint32_t steps() const { return steps_; }
  const std::vector<trace_span>& spans() const { return spans_; }
  bool truncated() const { return truncated_; }
  size_t spans_max() const { return spans_max_; }

 private:
  std::string source_;
  uint32_t steps_;
  size_t spans_max_;
  std::vector<trace_span> spans_;
  std::vector<uint32_t> device_ids_;
  bool active_ = false, truncated_ = false;
  uint32_t steps_begun_ = 0, step_ = 0, layer_ = 0, gpu_ranks_ = 1, device_id_base_ = 0;
  double origin_ns_ = 0, offset_ns_ = 0;
  size_t step_first_ = 0;                       // this step's first span
  size_t prev_first_ = 0, prev_end_ = 0;        // the previous recorded step's spans
  double prev_origin_ns_ = 0;
  trace_name send_name_ = trace_name::send, device_name_ = trace_name::scan;
};

// The Chrome trace-event JSON (chrome://tracing, ui.perfetto.dev): "X" events with ts and
// dur in microseconds, a process per kind of track (GPU, host links, devices) named
// "<source> · ..." and a thread per track, "M" events naming them. Live and sim files use
// different process ids, so their traceEvents can be concatenated into one file.
std::string chrome_trace_json(const timeline_trace& t);

}  // namespace pnmkv
