// One layer's virtual time (see step_timeline.hpp). Each layer is a small discrete-event
// pass: messages leave each host link in issue order, devices serve in arrival order,
// replies return over the inbound links in completion order.
#include "schedulers/step_timeline.hpp"

#include <algorithm>
#include <functional>

#include "core/check.hpp"

namespace pnmkv {

op_cost device_service_cost(const cost_model& c, device_op op, double bytes, double flops,
                            double int_ops) {
  return op == device_op::expander ? c.expander_read(bytes) : c.pnm_compute(bytes, flops, int_ops);
}

uint32_t host_link_of(uint32_t host_links, uint32_t kv_heads, uint32_t kv_head, uint32_t shard_j,
                      uint32_t shards) {
  const uint64_t H = kv_heads;
  return static_cast<uint32_t>((uint64_t(kv_head) * shards + shard_j) * host_links / (H * shards));
}

layer_timeline::layer_timeline(const cost_model& c, uint32_t host_links, uint32_t devices) : c_(c) {
  PNMKV_CHECK(host_links > 0, "host_links=", host_links);
  out_free_ns_.assign(host_links, 0);
  in_free_ns_.assign(host_links, 0);
  out_ser_ns_.assign(host_links, 0);
  in_ser_ns_.assign(host_links, 0);
  device_clock_ns_.assign(devices, 0);
  device_busy_ns_.assign(devices, 0);
}

void layer_timeline::reserve_devices(uint32_t n) {
  if (n <= device_clock_ns_.size()) return;
  device_clock_ns_.resize(n, 0);
  device_busy_ns_.resize(n, 0);
}

void layer_timeline::begin(double t0_ns) {
  t0_ns_ = t0_ns;
  std::fill(out_free_ns_.begin(), out_free_ns_.end(), t0_ns);
  std::fill(in_free_ns_.begin(), in_free_ns_.end(), 0.0);
  std::fill(out_ser_ns_.begin(), out_ser_ns_.end(), 0.0);
  std::fill(in_ser_ns_.begin(), in_ser_ns_.end(), 0.0);
  for (uint32_t d : touched_) device_clock_ns_[d] = 0, device_busy_ns_[d] = 0;
  touched_.clear();
  items_.clear();
  grouped_ = false;
  link_bytes_ = 0;
  device_busy_max_ns_ = 0;
}

double layer_timeline::send(uint32_t link, double now_ns, uint64_t bytes) {
  PNMKV_CHECK_LT(link, out_free_ns_.size());
  const double ser = c_.link_serialisation_ns(double(bytes));
  const double start = std::max(out_free_ns_[link], now_ns);
  if (trace_ && trace_->active()) trace_->span(trace_track::link_out, link, trace_->send_name(), start, ser, bytes);
  out_free_ns_[link] = start + ser;
  out_ser_ns_[link] += ser;
  link_bytes_ += double(bytes);
  return out_free_ns_[link] + c_.link_latency_ns();
}

void layer_timeline::expect(double arrival_ns, uint32_t device, uint32_t link, double cost_ns,
                            uint64_t reply_bytes, uint32_t slot) {
  PNMKV_CHECK_LT(device, device_clock_ns_.size());
  PNMKV_CHECK_LT(link, in_free_ns_.size());
  items_.push_back({arrival_ns, seq_++, device, link, cost_ns, reply_bytes, slot, 0});
  grouped_ = false;
}

void layer_timeline::served(uint64_t seq, uint32_t device, uint32_t link, double cost_ns,
                            double done_ns, uint64_t reply_bytes, uint32_t slot) {
  PNMKV_CHECK_LT(device, device_clock_ns_.size());
  PNMKV_CHECK_LT(link, in_free_ns_.size());
  items_.push_back({0, seq, device, link, cost_ns, reply_bytes, slot, done_ns});
  seq_ = std::max(seq_, seq + 1);
  grouped_ = false;
}

// Items are pushed in issue order (seq). A stable counting sort by device keeps that order
// within a device, which is arrival order unless the device is fed by several links; only
// then is a device's run sorted. O(n) in the usual case: sorting dominated a profile.
// Live items carry their done time already: each run is put in (done, seq) order instead.
void layer_timeline::group_by_device(bool sort_runs_by_done) {
  const size_t D = device_clock_ns_.size();
  bucket_start_.assign(D + 1, 0);
  for (const item& it : items_) ++bucket_start_[it.device + 1];
  for (size_t d = 0; d < D; ++d) bucket_start_[d + 1] += bucket_start_[d];
  scratch_.resize(items_.size());
  {
    std::vector<size_t> next(bucket_start_.begin(), bucket_start_.end() - 1);
    for (const item& it : items_) scratch_[next[it.device]++] = it;
  }
  items_.swap(scratch_);
  auto by_arrival = [](const item& x, const item& y) { return x.arrival_ns < y.arrival_ns; };
  auto by_done = [](const item& x, const item& y) {
    return x.done_ns != y.done_ns ? x.done_ns < y.done_ns : x.seq < y.seq;
  };
  for (size_t d = 0; d < D; ++d) {
    const auto b = items_.begin() + std::ptrdiff_t(bucket_start_[d]);
    const auto e = items_.begin() + std::ptrdiff_t(bucket_start_[d + 1]);
    if (b == e) continue;
    if (sort_runs_by_done) {
      if (!std::is_sorted(b, e, by_done)) std::sort(b, e, by_done);
    } else if (!std::is_sorted(b, e, by_arrival)) {
      std::stable_sort(b, e, by_arrival);
    }
    double& busy = device_busy_ns_[d];
    if (busy == 0 && device_clock_ns_[d] == 0) touched_.push_back(uint32_t(d));
    const bool tracing = trace_ && trace_->active();
    for (auto it = b; it != e; ++it) {
      if (!sort_runs_by_done) {
        device_clock_ns_[d] = device_service_done(device_clock_ns_[d], it->arrival_ns, it->cost_ns);
        it->done_ns = device_clock_ns_[d];
      }
      // Live: the device's own clock said when it was done; it started cost earlier.
      if (tracing) trace_->device_span(uint32_t(d), it->done_ns - it->cost_ns, it->cost_ns);
      busy += it->cost_ns;
    }
    device_busy_max_ns_ = std::max(device_busy_max_ns_, busy);
  }
  grouped_ = true;
}

void layer_timeline::serve() { group_by_device(false); }

// After grouping, items_ is device-major and each device's run is in completion order. Per
// link, the runs of the devices it carries are merged by (done, seq) through a heap.
double layer_timeline::receive() {
  if (!grouped_) group_by_device(true);
  const size_t Lk = in_free_ns_.size();
  std::vector<size_t> start(Lk + 1, 0);
  for (const item& it : items_) ++start[it.link + 1];
  for (size_t l = 0; l < Lk; ++l) start[l + 1] += start[l];
  scratch_.resize(items_.size());
  {
    std::vector<size_t> next(start.begin(), start.end() - 1);
    for (const item& it : items_) scratch_[next[it.link]++] = it;
  }
  items_.swap(scratch_);
  const double lat = c_.link_latency_ns();
  double last = items_.empty() ? t0_ns_ : 0;
  struct head {
    double done;
    uint64_t seq;
    size_t pos, end;
    bool operator>(const head& o) const { return done != o.done ? done > o.done : seq > o.seq; }
  };
  std::vector<head> heap;
  for (size_t l = 0; l < Lk; ++l) {
    heap.clear();
    for (size_t i = start[l]; i < start[l + 1];) {  // runs of one device
      size_t j = i + 1;
      while (j < start[l + 1] && items_[j].device == items_[i].device) ++j;
      heap.push_back({items_[i].done_ns, items_[i].seq, i, j});
      i = j;
    }
    std::make_heap(heap.begin(), heap.end(), std::greater<head>());
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), std::greater<head>());
      head h = heap.back();
      heap.pop_back();
      item& it = items_[h.pos];
      const double ser = c_.link_serialisation_ns(double(it.reply_bytes));
      const double start = std::max(in_free_ns_[l], it.done_ns + lat);
      if (trace_ && trace_->active())
        trace_->span(trace_track::link_in, uint32_t(l), trace_name::reply, start, ser, it.reply_bytes);
      in_free_ns_[l] = start + ser;
      in_ser_ns_[l] += ser;
      link_bytes_ += double(it.reply_bytes);
      it.done_ns = in_free_ns_[l];  // now: when the reply is in GPU memory
      last = std::max(last, it.done_ns);
      if (++h.pos < h.end) {
        heap.push_back({items_[h.pos].done_ns, items_[h.pos].seq, h.pos, h.end});
        std::push_heap(heap.begin(), heap.end(), std::greater<head>());
      }
    }
  }
  grouped_ = false;
  return last;
}

double layer_timeline::link_busy_max_ns() const {
  double m = 0;
  for (size_t l = 0; l < out_ser_ns_.size(); ++l) m = std::max(m, std::max(out_ser_ns_[l], in_ser_ns_[l]));
  return m;
}

layer_timeline::wait_split layer_timeline::attribute_wait(double wait_ns) const {
  wait_split w;
  if (wait_ns <= 0) return w;
  w.device_ns = std::min(device_busy_max_ns_, wait_ns);
  const double rest = wait_ns - w.device_ns;
  w.link_ns = std::min(rest, link_busy_max_ns() + 2.0 * c_.link_latency_ns());
  w.queueing_ns = rest - w.link_ns;
  return w;
}

layer_end end_of_layer(double t0_ns, double wait_ns, double overlap_ns, double prefill_last_ns,
                       double merge_ns, timeline_trace* trace) {
  layer_end e;
  const double W = std::max(wait_ns, overlap_ns);
  e.prefill_extra_ns = std::max(0.0, prefill_last_ns - (t0_ns + W));
  e.time_ns = t0_ns + W + e.prefill_extra_ns + merge_ns;
  if (trace && trace->active()) {
    trace->gpu(trace_name::attention, t0_ns, overlap_ns);
    trace->gpu(trace_name::merge, e.time_ns - merge_ns, merge_ns);
  }
  return e;
}

layer_end end_of_layer_after_gpu(double gpu_end_ns, double prefill_last_ns, double merge_ns,
                                 timeline_trace* trace) {
  layer_end e;
  const double end = gpu_end_ns + merge_ns;
  e.prefill_extra_ns = std::max(0.0, prefill_last_ns - end);
  e.time_ns = end + e.prefill_extra_ns;
  if (trace && trace->active()) trace->gpu(trace_name::merge, gpu_end_ns, merge_ns);
  return e;
}

micro_batch_schedule schedule_micro_batches(const std::vector<micro_batch_costs>& mb, uint32_t layers,
                                            timeline_trace* trace) {
  PNMKV_CHECK(!mb.empty() && layers >= 1, "micro-batches=", mb.size(), " layers=", layers);
  micro_batch_schedule out;
  const size_t M = mb.size();
  std::vector<double> dev_end(M, 0), ovl_end(M, 0);  // this micro-batch's last layer
  double gpu = 0, pool = 0;
  auto draw = [&](trace_name name, double start, double dur) {
    if (trace && trace->active() && dur > 0) trace->gpu(name, start, dur);
  };
  for (const micro_batch_costs& c : mb) {
    PNMKV_CHECK(c.dense_ns >= 0 && c.overlap_ns >= 0 && c.device_ns >= 0 && c.merge_ns >= 0,
                "dense=", c.dense_ns, " overlap=", c.overlap_ns, " device=", c.device_ns, " merge=", c.merge_ns);
    out.serial_ns += double(layers) * c.serial_ns();
    out.gpu_busy_ns += double(layers) * (c.dense_ns + c.overlap_ns + c.merge_ns);
    out.device_busy_ns += double(layers) * c.device_ns;
  }
  for (uint32_t l = 0; l <= layers; ++l) {
    for (size_t k = 0; k < M; ++k) {
      const micro_batch_costs& c = mb[k];
      if (l > 0) {  // merge(l - 1, k): the replies and the GPU's own attention are in
        const double start = std::max({gpu, dev_end[k], ovl_end[k]});
        if (l == 1) draw(trace_name::merge, start, c.merge_ns);
        gpu = start + c.merge_ns;
      }
      if (l == layers) continue;
      if (l == 0) draw(trace_name::dense, gpu, c.dense_ns);
      const double t0 = gpu + c.dense_ns;  // dense(l, k): after the micro-batch's last merge
      gpu = t0 + c.overlap_ns;
      if (l == 0) draw(trace_name::attention, t0, c.overlap_ns);
      ovl_end[k] = gpu;
      const double start = std::max(pool, t0);  // device(l, k)
      if (l == 0 && trace && trace->active() && c.device_ns > 0)
        trace->span(trace_track::micro_batch, uint32_t(k), trace_name::device_phase, start, c.device_ns);
      pool = start + c.device_ns;
      dev_end[k] = pool;
    }
  }
  out.time_ns = gpu;
  return out;
}

std::vector<uint32_t> micro_batch_of(const std::vector<uint32_t>& pools, uint32_t micro_batches) {
  PNMKV_CHECK(micro_batches >= 1, "micro_batches=", micro_batches);
  std::vector<size_t> order(pools.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return pools[a] < pools[b]; });
  const uint32_t m = effective_micro_batches(micro_batches, pools.size());
  std::vector<uint32_t> out(pools.size(), 0);
  for (size_t k = 0; k < order.size(); ++k) out[order[k]] = uint32_t(k % m);
  return out;
}

}  // namespace pnmkv
