// Virtual time, energy and bytes of one decode step of a batch, per mode, without numerics
// (docs/DESIGN.md §2, §5). The composition is the live host engine's (actors/host_engine.cpp),
// made general to tensor/pipeline-parallel GPUs, several host links and device pools:
//
//   per layer: GPU dense layer for the batch (+ prefill chunk) and its tensor-parallel
//   all-reduces; then, on each host link in order, per (request, KV head): the new token's
//   append and one query per shard (serialised at link bandwidth, arriving link latency
//   later); each device serves its work in arrival order (clock = max(clock, arrival) +
//   cost); replies come back over the shared inbound link in virtual-time order; the GPU
//   merges (gpu_merge per (request, head)). After all layers, the LM head.
//
//   pnm-kv   devices scan every held page's summary and the selected pages' K/V
//            (pnm_compute), local selection across sequence shards.
//   png-kv   the GPU attends the steady pages (gpu_attention, in parallel with the
//            devices); devices select the rest of the budget; the pages newly steady are
//            copied before the first layer (recalled from the devices, gpu_hbm_write), as
//            the live copy phase (amortised: the set's churn every R steps, the whole set
//            on a request's first step).
//   gpu-only no devices, no link: the KV is in HBM. Per (request, KV head) on its attention
//            rank: the new token's K/V written to HBM (gpu_hbm_write), then scoring every
//            page summary and attending the selected pages, priced as GPU attention over
//            the bytes and flops a one-shard PNM query would take (pnm_query_work: the
//            same selection); one partial, so no merge. Prompt chunks are HBM writes on the
//            same ranks after the decode heads.
//   baseline passive expanders (expander_read, no compute): the GPU scores the summaries
//            (gpu_attention; resident in HBM, or read over the link first), recalls the
//            selected pages over the link and attends each head as its pages arrive.
//
// Every layer starts with idle links and devices (the last layer's replies are all in), so
// one layer is computed per micro-batch and multiplied. With pp > 1 stages the batch is cut
// into pp micro-batches; a round (one token per request) takes the sum of the micro-batches'
// stage times, and at least the busiest device's work of all stages (shared devices).
#pragma once

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "schedulers/placement.hpp"
#include "schedulers/step_setup.hpp"
#include "schedulers/step_timeline.hpp"

namespace pnmkv {

// One decoding request as the step model sees it.
struct step_request {
  uint64_t id = 0;
  uint32_t pool = 0;  // devices pool·pool_devices .. +pool_devices-1
  const request_placement* placement = nullptr;  // device ids are global
  uint64_t seq_tokens = 0;         // tokens before this step's new token
  bool summaries_resident = true;  // baseline
  bool first_decode_step = false;  // png-kv: the whole steady set is copied (attended from the next step)
  bool recall_cache_cold = false;  // baseline: its first decode step, the recall cache empty
};

// Prompt tokens of one request prefilled in this step.
struct prefill_piece {
  uint64_t request_id = 0;
  const request_placement* placement = nullptr;
  uint64_t position = 0;
  uint64_t tokens = 0;
  bool completes = false;  // the prompt's last chunk: the request's first token follows
};

// Step time on the critical path, by what it waits for; sums to the step time.
struct step_breakdown {
  double gpu_dense_ns = 0, allreduce_ns = 0, gpu_attention_ns = 0, link_ns = 0,
         device_scan_ns = 0, queueing_ns = 0, merge_ns = 0, lm_head_ns = 0, copy_ns = 0;
  double sum() const {
    return gpu_dense_ns + allreduce_ns + gpu_attention_ns + link_ns + device_scan_ns +
           queueing_ns + merge_ns + lm_head_ns + copy_ns;
  }
  step_breakdown& operator+=(const step_breakdown& o);
  step_breakdown scaled(double f) const;
};

// Dynamic energy by where it is spent (static energy is charged per elapsed time).
struct step_energy {
  double gpu_dense_j = 0, allreduce_j = 0, lm_head_j = 0, gpu_attention_j = 0, merge_j = 0,
         device_j = 0, link_j = 0, hbm_write_j = 0;
  // Not an energy: the GPU HBM bytes behind the GPU's charges (every GPU), which the all-in
  // figure charges at energy.gpu_all_in_pj_per_bit (cost_model::gpu_all_in_extra_j).
  double gpu_hbm_bytes = 0;
  double sum() const {
    return gpu_dense_j + allreduce_j + lm_head_j + gpu_attention_j + merge_j + device_j +
           link_j + hbm_write_j;
  }
  // The GPUs' own dynamic energy (the NVLink all-reduces, the CXL links and the devices apart).
  double gpu_j() const { return gpu_dense_j + lm_head_j + gpu_attention_j + merge_j + hbm_write_j; }
  // Charges a GPU operation's energy to `field` and its HBM bytes.
  void add_gpu(double step_energy::*field, const op_cost& op) {
    this->*field += op.energy_j;
    gpu_hbm_bytes += op.hbm_bytes;
  }
  step_energy& operator+=(const step_energy& o);
  step_energy scaled(double f) const;
};

struct step_result {
  double time_ns = 0;
  step_breakdown crit;
  step_energy energy;
  // Work, every layer: bytes over the CXL links (both directions), bytes the devices or
  // expanders read, busiest device's and busiest link direction's busy time.
  double link_bytes = 0, device_bytes = 0;
  double device_busy_ns_max = 0, link_busy_ns_max = 0;
  // The dynamic energy of the device that spends the most in a layer, summed over the layers
  // (and the steady copies): its power over the step (cost_model::power_over_step).
  double device_energy_j_max = 0;
  uint32_t decode_tokens = 0;
  uint64_t prefill_tokens = 0;
  // png-kv: steady-page copy time hidden in the dense-layer windows (crit.copy_ns is what
  // the step grew by: step_timeline.hpp, charge_steady_copies).
  double copy_hidden_ns = 0;
  // Sub-batch overlap (run.micro_batches): the micro-batches the step ran (per pipeline
  // stage; 1: off), their layers one after another (serial_ns) and the time the interleaving
  // hid (overlap_ns = serial_ns - the layers' time); 0 with one micro-batch.
  uint32_t micro_batches = 1;
  double serial_ns = 0, overlap_ns = 0;
};

// png-kv: the steady pages per (request, layer, KV head) the GPU holds, as the calibration
// predicts them: steady_set_fraction of the budget, and at least the pages the GPU attends
// (pngkv_budget_split's share), never more than png.steady_budget_tokens holds (the live
// policy's cap, step_setup::steady_cap_pages); 0 in the other modes. The step model, the simulator's GPU
// memory and the live TPOT prediction size the steady set with this one figure.
uint64_t steady_set_pages(const step_setup& s);

class step_model {
 public:
  explicit step_model(std::shared_ptr<const step_setup> setup);

  // One step of `decode` (each produces a token) with `prefill` chunks alongside.
  step_result run(const std::vector<step_request>& decode, const std::vector<prefill_piece>& prefill);
  // The next runs draw their schedule on `trace` (null: not traced). The step's one computed
  // layer per micro-batch is drawn once, the layers charged as copies of it as one span.
  void set_trace(timeline_trace* trace);

 private:
  struct layer_result {
    double time_ns = 0;
    step_breakdown crit;
    step_energy energy;
    double link_bytes = 0, device_bytes = 0, device_busy_ns_max = 0, link_busy_ns_max = 0;
    double device_energy_j_max = 0;
    double window_ns = 0;     // a layer: its dense-layer window (start to t0)
    // Sub-batch overlap (pnm-kv, png-kv): the GPU's attention beside the devices, the device
    // phase from t0 (last reply or prompt write in), the merges, and the device phase's
    // split into device, link and queueing (schedule_micro_batches, step_timeline.hpp).
    double gpu_overlap_ns = 0, device_phase_ns = 0, merge_ns = 0;
    layer_timeline::wait_split device_split;
    double hbm_write_ns = 0;  // steady copies: their HBM writes (time_ns: the copy engine's)
  };
  // A head that needs exact selection's second round.
  struct round_b_head {
    const step_request* r;
    uint32_t kv_head;
    uint64_t device_budget;
    uint64_t steady;
    uint32_t req_index;
  };
  // One pnm-kv / png-kv layer in the making.
  struct pnm_layer {
    double t0 = 0;
    bool png = false;
    uint64_t budget_pages = 0, split_gpu_pages = 0, steady_pages = 0;
    std::vector<round_b_head> round_b;
    double gpu_attn_ns = 0, merge_ns = 0;
    double background_link_bytes = 0;  // lookahead: the searches' queries and candidates
  };
  // Baseline: one (request, KV head) through the layer's phases.
  struct baseline_slot {
    uint32_t rank;
    uint32_t req;
    uint32_t kv_head;
    double ready_ns;  // summaries in (phase 1), selection done (phase 2), pages in (phase 3)
    double score_ns;
    uint64_t sel_tokens;
  };
  bool baseline_appends_and_summaries(const std::vector<const step_request*>& reqs, double t0,
                                      std::vector<baseline_slot>& slots, layer_result& lr);
  void baseline_recalls(const std::vector<const step_request*>& reqs, const std::vector<uint32_t>& order,
                        std::vector<baseline_slot>& slots, layer_result& lr);
  void pnm_round_a(const step_request& r, uint32_t ri, pnm_layer& L, layer_result& lr);
  void pnm_round_b(const pnm_layer& L, double tb, layer_result& lr);
  void pnm_lookahead_head(const step_request& r, uint32_t ri, uint32_t h, uint64_t device_budget,
                          bool two_rounds, pnm_layer& L, layer_result& lr);
  layer_result layer_pnm(const std::vector<const step_request*>& reqs,
                         const std::vector<const prefill_piece*>& prefill);
  layer_result layer_baseline(const std::vector<const step_request*>& reqs,
                              const std::vector<const prefill_piece*>& prefill);
  layer_result layer_gpu_only(const std::vector<const step_request*>& reqs,
                              const std::vector<const prefill_piece*>& prefill);
  layer_result steady_copies(const std::vector<step_request>& decode);
  std::pair<op_cost, op_cost> dense_layer(size_t decode_tokens,
                                          const std::vector<const prefill_piece*>& prefill) const;
  void send_prefill(const std::vector<const prefill_piece*>& prefill, layer_result& lr,
                    double& last_arrival_ns);
  uint32_t link_of(uint32_t kv_head, uint32_t shard_j, uint32_t shards) const;
  // The layer's bytes, device and link busy times and link energy, from the timeline (plus
  // bytes sent off it: lookahead's searches); the most any device spent.
  void close_layer(layer_result& lr, double off_timeline_link_bytes = 0);
  // A device's dynamic energy: to the layer's and to the device's own.
  void charge_device(uint32_t device, double energy_j, layer_result& lr) {
    lr.energy.device_j += energy_j;
    device_energy_j_[device] += energy_j;
  }

  // One pipeline stage's layers for the decoding requests `reqs` (and `prefill`), cut into
  // micro-batches and interleaved (schedule_micro_batches): the stage's time and charges.
  layer_result stage_micro_batched(const std::vector<const step_request*>& reqs,
                                   const std::vector<const prefill_piece*>& prefill, double layers,
                                   step_result& out);

  std::shared_ptr<const step_setup> s_;
  const cost_model& c_;
  layer_timeline tl_;
  timeline_trace* tr_ = nullptr;
  std::vector<double> device_energy_j_;  // per device, this layer
  std::vector<double> background_ns_;    // lookahead: per device, this layer's searches
};

}  // namespace pnmkv
