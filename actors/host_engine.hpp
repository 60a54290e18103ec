// What the GPU host does in a decode step, free of CAF and of the wire: for each live
// layer it appends the new token's K/V to the shard holding the last page, sends each
// shard a query, merges the partials in shard order, checks them against dense attention
// (verification queries, not charged), and keeps the step's virtual time on the modelled
// hardware (DESIGN.md §5). The gpu_host actor moves its work items over the fabric and
// feeds answers back; tests drive it directly with a device_engine per device.
//
// Virtual time of one step (pnm-kv):
//   for each layer: GPU dense layer; queries leave over the host link one after another
//   (each waits for the link: serialisation at link bandwidth), arrive after the link
//   latency; each device serves its queries in order (clock = max(clock, arrival) +
//   pnm_compute); partials come back over the shared host link in the same way; the GPU
//   merges once the last partial is in. Then the LM head. Layers past live_layers are
//   charged as copies of the mean live layer — the report says so.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "actors/device_engine.hpp"
#include "core/accuracy.hpp"
#include "core/workload.hpp"
#include "model/cost_model.hpp"
#include "schedulers/placement.hpp"

namespace pnmkv {

struct host_engine_config {
  uint32_t live_layers = 1;
  uint32_t page_size_tokens = 16;
  uint64_t budget_tokens = 2048;
  bool verify = true;                 // dense verification queries each step
  uint64_t prefill_chunk_tokens = 4096;
};

struct request_spec {
  uint64_t request_id = 0;
  uint64_t context_tokens = 0;
  uint32_t steps = 0;
};

// One item of work for one device: a K/V write (prefill chunk or decode append) or a query.
struct device_work {
  enum class kind : uint8_t { write, query } what = kind::write;
  uint32_t device_id = 0;
  uint64_t tag = 0;                // identifies the answer (queries)
  double vt_arrival_ns = 0;        // when it reaches the device, virtual
  uint64_t wire_bytes = 0;         // payload bytes on the link
  bool verification = false;       // dense check: not charged, not timed
  // write
  uint64_t request_id = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint64_t position = 0;
  uint64_t n_tokens = 0;
  std::vector<bf16> k, v;
  // query
  device_query query{};            // q points into q_storage
  std::vector<float> q_storage;
};

struct device_reply {
  uint64_t tag = 0;
  uint32_t device_id = 0;
  double vt_done_ns = 0;           // device clock when the answer left
  device_answer answer;
};

struct step_report {
  uint32_t step = 0;
  double virtual_ns = 0;           // whole step, every layer, LM head
  double live_layers_ns = 0;       // the live layers as measured in virtual time
  double dense_ns = 0, link_ns = 0, device_ns = 0, merge_ns = 0, lm_head_ns = 0;
  double energy_j = 0;             // dynamic energy of the whole step (all layers)
  uint64_t link_bytes = 0;         // both directions, all layers
  uint64_t device_bytes_scanned = 0;  // all layers
  uint64_t tokens = 0;             // tokens produced (one per request)
};

class host_engine {
 public:
  host_engine(host_engine_config cfg, const cost_model& costs, const synthetic_workload& wl);

  status add_request(const request_spec& r, const request_placement& placement);
  const std::vector<request_spec>& requests() const { return requests_; }

  // Prefill: every chunk of every live (layer, KV head) of every request, in a fixed
  // order. Returns false when done. Chunks go to every device holding the pages
  // (primary and replicas).
  bool next_prefill_chunk(std::vector<device_work>& out);
  uint64_t prefill_bytes() const { return prefill_bytes_; }

  // Decode: start a step; returns the work of its first live layer.
  std::vector<device_work> begin_step(uint32_t step);
  // Feed one answer; when every answer of the current layer is in, merges and returns
  // the next layer's work. After the last live layer the timed part of the step is over
  // (timed_phase_done()); with verification on, the dense queries of every live layer follow
  // (untimed, uncharged), then step_done() is true.
  result<std::vector<device_work>> on_reply(const device_reply& r);
  bool timed_phase_done() const { return phase_ != phase::sparse; }
  bool step_done() const { return phase_ == phase::done; }
  const step_report& last_step() const { return last_step_; }

  // Everything measured so far.
  const accuracy_accumulator& accuracy() const { return accuracy_; }
  uint64_t output_digest() const { return digest_; }
  uint64_t answers_pending() const { return pending_.size(); }

 private:
  struct pending_query {
    uint64_t request_id;
    uint32_t layer, kv_head, shard_index;
    bool verification;
  };
  struct head_state {  // answers of one (layer, request, kv_head) in this step
    std::vector<partial> parts;        // by shard order
    std::vector<partial> dense_parts;  // verification
    std::vector<uint64_t> pages;       // every selected global page
    partial merged;                    // the output
    uint32_t expected = 0, got = 0, dense_expected = 0, dense_got = 0;
  };
  enum class phase { sparse, verify, done };
  std::vector<device_work> layer_work(uint32_t layer);
  std::vector<device_work> verify_work();
  status finish_layer();
  void finish_timed_phase();
  status finish_verification();
  const request_spec& spec(uint64_t request_id) const;
  double link_out(double now_ns, uint64_t bytes);  // host -> switch, returns arrival
  double link_in(double sent_ns, uint64_t bytes);  // switch -> host, returns arrival

  host_engine_config cfg_;
  const cost_model& costs_;
  const synthetic_workload& wl_;
  std::vector<request_spec> requests_;
  std::map<uint64_t, request_placement> placements_;

  // prefill cursor
  size_t pf_request_ = 0;
  uint32_t pf_layer_ = 0, pf_head_ = 0;
  uint64_t pf_position_ = 0;
  uint64_t prefill_bytes_ = 0;

  // step state
  uint32_t step_ = 0;
  uint32_t layer_ = 0;
  phase phase_ = phase::done;
  uint64_t next_tag_ = 1;
  std::map<uint64_t, pending_query> pending_;
  std::map<std::tuple<uint32_t, uint64_t, uint32_t>, head_state> heads_;  // (layer, request, kv_head)
  double clock_ns_ = 0;          // GPU virtual clock
  double host_out_free_ns_ = 0;  // host link, outbound, busy until
  double host_in_free_ns_ = 0;   // inbound
  double layer_start_ns_ = 0, last_arrival_ns_ = 0, step_start_ns_ = 0;
  double layer_device_ns_ = 0;                 // busiest device's work in this layer
  std::map<uint32_t, double> device_busy_ns_;  // per device, this layer
  struct inbound {
    double sent_ns;
    uint64_t tag;
    uint64_t bytes;
  };
  std::vector<inbound> inbound_;  // partials of this layer, for the inbound link
  step_report cur_{}, last_step_{};
  accuracy_accumulator accuracy_;
  uint64_t digest_ = 1469598103934665603ull;
};

}  // namespace pnmkv
