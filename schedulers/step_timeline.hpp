// The virtual-time arithmetic of one layer of a decode step (docs/DESIGN.md §5), shared by the
// live host engine (actors/host_engine.cpp), which feeds it what actually happened, and
// the step model (schedulers/step_model.cpp), which feeds it what it predicts:
//
//   send      a message leaves its host link after the ones before it (serialised at link
//             bandwidth, from max(link free, now)) and reaches the device link latency later;
//   serve     a device serves its work in arrival order: clock = max(clock, arrival) + cost
//             (device_service_done; the live devices run the same function on their own
//             clocks and report the done time: served());
//   receive   replies come back over the inbound link of their host link in (done, issue)
//             order: in = max(in free, done + latency) + serialisation;
//   GPU       the layer starts after the dense layer and its all-reduces (t0); the GPU's own
//             attention overlaps the devices (gpu_overlap); a second round starts at
//             t0 + max(wait, overlap); prompt writes still on the link hold the layer; the
//             merges come last;
//   copies    png-kv's copy engine (steady_copy_charge): the step's steady-page copies run on
//             the host links and the devices in the dense-layer windows and cost the step
//             only what does not fit in them, plus their HBM writes.
#pragma once

#include <cstdint>
#include <vector>

#include "core/check.hpp"
#include "model/cost_model.hpp"
#include "schedulers/placement.hpp"
#include "schedulers/timeline_trace.hpp"

namespace pnmkv {

// What a device's work costs it, live and predicted alike: a PNM device scanning `bytes` and
// doing `flops` (queries, steady copies), or a passive expander reading `bytes` (recalls,
// summary reads).
enum class device_op : uint8_t { pnm, expander };
op_cost device_service_cost(const cost_model& c, device_op op, double bytes, double flops = 0,
                            double int_ops = 0);
// A device's clock after serving work that arrives at arrival_ns and costs cost_ns.
inline double device_service_done(double clock_ns, double arrival_ns, double cost_ns) {
  return (clock_ns > arrival_ns ? clock_ns : arrival_ns) + cost_ns;
}

// Which host link carries (KV head, shard j of s): the (head, shard) pairs of a layer are
// spread over the links in order.
uint32_t host_link_of(uint32_t host_links, uint32_t kv_heads, uint32_t kv_head, uint32_t shard_j,
                      uint32_t shards);

// Prompt tokens [from, to) of one KV head go out as one write per run of pages on one
// shard: where the run that starts at `from` ends (at `to`, or where the next page belongs
// to another shard).
inline uint64_t write_run_end(const request_placement& pl, uint32_t kv_head, uint64_t from, uint64_t to,
                              uint32_t page_size_tokens) {
  const uint32_t ps = page_size_tokens;
  const int shard = pl.shard_of(kv_head, from / ps);
  PNMKV_CHECK(shard >= 0, "no shard holds kv_head=", kv_head, " page=", from / ps);
  for (uint64_t p = from / ps + 1; p * ps < to; ++p)
    if (pl.shard_of(kv_head, p) != shard) return p * ps;
  return to;
}

class layer_timeline {
 public:
  // One device work item: arrives, is served, its reply goes back.
  struct item {
    double arrival_ns;
    uint64_t seq;         // issue order (ties on the inbound link)
    uint32_t device;      // 0 .. devices-1
    uint32_t link;
    double cost_ns;       // the device's service time
    uint64_t reply_bytes;
    uint32_t slot;        // the caller's index (e.g. a baseline head)
    double done_ns;       // device done; after receive(): the reply is in GPU memory
  };

  layer_timeline(const cost_model& c, uint32_t host_links, uint32_t devices);

  // Live device ids are mapped to 0 .. n-1 by the caller; more devices may join.
  void reserve_devices(uint32_t n);
  uint32_t devices() const { return uint32_t(device_clock_ns_.size()); }

  // A layer (or copy phase) starts: outbound links free from t0_ns, inbound idle, devices
  // idle, no items, no bytes.
  void begin(double t0_ns);
  double t0() const { return t0_ns_; }

  // A message of `bytes` leaves `link` no earlier than now_ns; returns its arrival.
  double send(uint32_t link, double now_ns, uint64_t bytes);
  double out_free_ns(uint32_t link) const { return out_free_ns_[link]; }

  // Work for a device that will reply. Predicted: served by serve(). Live: the device
  // served it on its own clock and reported done_ns (served()).
  void expect(double arrival_ns, uint32_t device, uint32_t link, double cost_ns,
              uint64_t reply_bytes, uint32_t slot = 0);
  void served(uint64_t seq, uint32_t device, uint32_t link, double cost_ns, double done_ns,
              uint64_t reply_bytes, uint32_t slot = 0);
  void serve();
  // Replies over the inbound links; returns the last arrival (t0 when there were none).
  // Items keep their per-reply arrival in done_ns until clear_items().
  double receive();
  const std::vector<item>& items() const { return items_; }
  void clear_items() { items_.clear(); }

  // Spans of sends, device service and replies go to `trace` while it is active (null: none).
  void set_trace(timeline_trace* trace) { trace_ = trace; }
  timeline_trace* trace() const { return trace_; }

  // Busiest device's service time since begin(), and every link byte since begin().
  double device_busy_max_ns() const { return device_busy_max_ns_; }
  // One device's service time since begin() (0 for a device it never served).
  double device_busy_ns(uint32_t device) const {
    return device < device_busy_ns_.size() ? device_busy_ns_[device] : 0;
  }
  double link_bytes() const { return link_bytes_; }
  // Busiest link direction's serialisation time since begin().
  double link_busy_max_ns() const;

  // The GPU side of a layer: the part of `wait_ns` it spent waiting, split into device,
  // link and queueing (device: at most the busiest device's work; link: serialisation of
  // the busiest direction plus a round trip of latency; the rest queueing).
  struct wait_split {
    double device_ns = 0, link_ns = 0, queueing_ns = 0;
  };
  wait_split attribute_wait(double wait_ns) const;

 private:
  void group_by_device(bool sort_runs_by_done);

  const cost_model& c_;
  double t0_ns_ = 0;
  std::vector<double> out_free_ns_, in_free_ns_, out_ser_ns_, in_ser_ns_;
  std::vector<double> device_clock_ns_, device_busy_ns_;
  std::vector<uint32_t> touched_;
  std::vector<item> items_, scratch_;
  std::vector<size_t> bucket_start_;
  bool grouped_ = false;  // items_ device-major, each run in completion order
  uint64_t seq_ = 0;
  double link_bytes_ = 0, device_busy_max_ns_ = 0;
  timeline_trace* trace_ = nullptr;
};

// When a layer's device traffic starts: after the GPU dense layer and the two tensor-parallel
// all-reduces around its attention, from `origin_ns` (the step model: 0; the host engine:
// its virtual clock).
inline double layer_t0(double origin_ns, const op_cost& dense, const op_cost& all_reduce) {
  return origin_ns + dense.time_ns + 2.0 * all_reduce.time_ns;
}

// The GPU's attention ranks (the tp GPUs of a stage sharing per-head work; one live GPU):
// each runs its work in the order given, starting each piece when it is ready.
class gpu_ranks {
 public:
  gpu_ranks(uint32_t ranks, double t0_ns) : clock_(ranks, t0_ns), busy_(ranks, 0) {}
  // What run() draws on `trace` (null: nothing) while it is active.
  void set_trace(timeline_trace* trace, trace_name name) { trace_ = trace, name_ = name; }
  // Runs `ns` of work on `rank` once it is free and the work is ready; returns its end.
  double run(uint32_t rank, double ready_ns, double ns) {
    const double start = clock_[rank] > ready_ns ? clock_[rank] : ready_ns;
    if (trace_ && trace_->active()) trace_->span(trace_track::gpu_rank, rank, name_, start, ns);
    clock_[rank] = start + ns;
    busy_[rank] += ns;
    return clock_[rank];
  }
  // Every rank waits for t_ns (layer-wide rounds).
  void hold_until(double t_ns) {
    for (double& c : clock_) c = c > t_ns ? c : t_ns;
  }
  // The rank that finishes last (the first of equals) and its end.
  uint32_t critical() const {
    uint32_t k = 0;
    for (uint32_t i = 1; i < clock_.size(); ++i)
      if (clock_[i] > clock_[k]) k = i;
    return k;
  }
  double end() const { return clock_[critical()]; }
  double busy(uint32_t rank) const { return busy_[rank]; }

 private:
  std::vector<double> clock_, busy_;
  timeline_trace* trace_ = nullptr;
  trace_name name_ = trace_name::attention;
};

// The GPU's end of a layer (both sides): after the first round's replies (wait since t0)
// and the GPU's overlapping attention, a second round if any, prompt writes that are still
// arriving, then the merges. With a trace: the overlapping attention (from t0) and the
// merges are drawn.
struct layer_end {
  double prefill_extra_ns = 0; // prompt writes arriving after the GPU is done waiting
  double time_ns = 0;          // t0 + max(wait, overlap) + prefill_extra + merge
};
layer_end end_of_layer(double t0_ns, double wait_ns, double overlap_ns, double prefill_last_ns,
                       double merge_ns, timeline_trace* trace = nullptr);
// baseline: the GPU's ranks are done (scoring, attention) at gpu_end_ns; the merges follow;
// prompt writes still arriving then hold the layer.
layer_end end_of_layer_after_gpu(double gpu_end_ns, double prefill_last_ns, double merge_ns,
                                 timeline_trace* trace = nullptr);
// When a second round starts: the first round's replies are in and the GPU's overlapping
// attention is done.
inline double second_round_start(double t0_ns, double wait_ns, double overlap_ns) {
  return t0_ns + (wait_ns > overlap_ns ? wait_ns : overlap_ns);
}

// Lookahead selection (selection.lookahead): a device searches for the next step while it is
// otherwise idle (the GPU's dense layers, the gaps between its queries), so its searches add
// nothing to a step's path; but no device does more work in a step than the step lasts. A
// step (or a layer, in the step model, whose layers are alike) takes at least its busiest
// device's total work, its queries and its searches: what that adds to `time_ns`, 0 when the
// devices keep up.
inline double lookahead_excess_ns(double time_ns, double busiest_device_total_ns) {
  return busiest_device_total_ns > time_ns ? busiest_device_total_ns - time_ns : 0;
}

// png-kv's copy engine (docs/DESIGN.md §5). A step's steady-page copies run beside the GPU's
// dense compute: on the host links and the devices, but only in the dense-layer windows (from
// a layer's start to its t0: the dense layer and its all-reduces), when pnm-kv and png-kv put
// none of the layer's own traffic on either (queries leave at t0; every reply and prompt
// write is in before the layer ends). So the copies never share the link with a layer's
// device traffic, and they are charged as
//
//   exposed = max(copy, window) − window + hbm_write
//
// copy_ns:      the copies on their own, from idle links and devices (send, serve, receive on
//               a layer_timeline): the copy engine's busy time;
// window_ns:    the step's dense-layer windows, summed over its layers;
// hbm_write_ns: the copied bytes written into HBM. Never hidden: the dense layers are bound
//               by HBM bandwidth, which the writes take from them.
// What does not fit in the windows runs after the step's last layer (the link and devices
// are free again then) and holds the next step: pages copied in step t are attended from
// step t + 1 (schedulers/step_model.cpp, actors/host_engine.cpp).
struct steady_copy_charge {
  double hidden_ns = 0;   // copy time inside the dense-layer windows
  double exposed_ns = 0;  // what the step grows by
};
inline steady_copy_charge charge_steady_copies(double copy_ns, double window_ns, double hbm_write_ns) {
  PNMKV_CHECK(copy_ns >= 0 && window_ns >= 0 && hbm_write_ns >= 0, "copy_ns=", copy_ns,
              " window_ns=", window_ns, " hbm_write_ns=", hbm_write_ns);
  steady_copy_charge c;
  c.hidden_ns = copy_ns < window_ns ? copy_ns : window_ns;
  c.exposed_ns = (copy_ns - c.hidden_ns) + hbm_write_ns;
  return c;
}

// Sub-batch overlap (run.micro_batches, docs/DESIGN.md §5): the batch of a step (of a
// pipeline stage) is cut into micro-batches and the GPU runs the dense layer of one while
// the devices serve another (NeuPIMs-style interleaving). The schedule is a pipeline over
// (layer, micro-batch) on two resources, the GPU and the device pool (its host links and
// devices, taken as one: a micro-batch's device phase is timed from idle links and devices,
// as a layer is, and phases do not share the pool). Data dependencies, per micro-batch k:
//
//   dense(l, k) -> device(l, k)            a layer's queries need its QKV projection;
//   device(l, k), overlap(l, k) -> merge(l, k) -> dense(l + 1, k)
//                                          the next layer's dense needs the attention output.
//
// The GPU runs its work in program order, layer by layer and micro-batch by micro-batch:
// merge(l - 1, k), dense(l, k), overlap(l, k) (png-kv's steady attention, beside the
// devices); the pool serves device phases in the order the GPU issues them. Each piece
// starts when its resource is free and its inputs are ready. One micro-batch gives
// dense + max(device, overlap) + merge per layer: the serial layer.
struct micro_batch_costs {
  double dense_ns = 0;    // GPU: dense layer and its all-reduces (to the layer's t0)
  double overlap_ns = 0;  // GPU: its own attention beside the devices (png-kv), from t0
  double device_ns = 0;   // pool: from t0 to the last reply (and prompt write) in
  double merge_ns = 0;    // GPU: the merges, after the replies and the overlap
  // The micro-batch's layer on its own: dense + max(device, overlap) + merge.
  double serial_ns() const { return dense_ns + (device_ns > overlap_ns ? device_ns : overlap_ns) + merge_ns; }
};
struct micro_batch_schedule {
  double time_ns = 0;         // the last merge of the last layer
  double serial_ns = 0;       // every micro-batch's layers one after another
  double gpu_busy_ns = 0;     // dense, overlap and merges of every (layer, micro-batch)
  double device_busy_ns = 0;  // device phases of every (layer, micro-batch)
  double overlap_ns() const { return serial_ns - time_ns; }  // hidden by the interleaving
  double gpu_idle_ns() const { return time_ns - gpu_busy_ns; }
  double device_idle_ns() const { return time_ns - device_busy_ns; }
};
// `mb` is one layer of each micro-batch (the same for every layer); `layers` >= 1. With a
// trace, the first layer of each micro-batch is drawn at its place in the schedule: dense,
// overlap (attention) and merge on the GPU, the device phase on its micro-batch track.
micro_batch_schedule schedule_micro_batches(const std::vector<micro_batch_costs>& mb, uint32_t layers,
                                            timeline_trace* trace = nullptr);

// Which micro-batch each request of a batch goes to: requests sorted by pool (stable), then
// dealt round-robin over `micro_batches`, so each takes an even share of every pool's
// requests and keeps every device busy. `pools[i]`: request i's pool. The effective count is
// min(micro_batches, requests) (fewer requests than micro-batches: one request each).
std::vector<uint32_t> micro_batch_of(const std::vector<uint32_t>& pools, uint32_t micro_batches);
inline uint32_t effective_micro_batches(uint32_t micro_batches, size_t requests) {
  return requests == 0 ? 1 : uint32_t(micro_batches < requests ? micro_batches : requests);
}

}  // namespace pnmkv
