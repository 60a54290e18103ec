// What the GPU host does in a decode step, free of CAF and of the wire, in each mode
// (docs/DESIGN.md §2): for each live layer it appends the new token's K/V to the shard holding
// the last page, has the pages selected and attended, merges partials in a fixed order,
// checks them against dense attention (verification queries: not charged, not timed), and
// keeps the step's virtual time on the modelled hardware (docs/DESIGN.md §5). The gpu_host actor
// moves its work items over the fabric and feeds the replies back; tests drive it directly
// with a device_engine per device.
//
// Modes, per (request, layer, KV head):
//   pnm-kv   devices score, select and attend; partials come back. With s > 1 sequence
//            shards, selection is `local` (each shard takes its share of the budget: one
//            round) or `exact` (round 1: each shard's best candidates; the GPU picks the
//            global top; round 2: shards attend exactly those pages).
//   png-kv   as pnm-kv, but the steady pages (schedulers/steady_pages.hpp) live in GPU
//            memory: the GPU attends them while the devices select among the other pages
//            with the remaining budget. Copies of newly steady pages go out at the step's
//            start and run on the copy engine in the dense-layer windows (charged by
//            schedulers/step_timeline.hpp, charge_steady_copies); they are attended from the
//            next step.
//   gpu-only no devices: the KV of every request it holds lives in "GPU HBM" (a
//            device_engine owned by this engine: the same stores and kernels, the same
//            local selection as one pnm-kv device holding one shard). Prefill and appends
//            are written there; each (request, layer, KV head) is scored, selected and
//            attended there, charged as GPU attention on the bytes and flops it took, with
//            HBM writes for appends and prompt chunks. No work item leaves the engine.
//   baseline devices are passive CXL memory expanders. The GPU scores page summaries
//            (resident in HBM when they fit, else read over the link), selects, recalls the
//            selected pages over the link and attends. The scoring arithmetic is run by the
//            device actor on the host's behalf (same function, same summaries, so the same
//            selection); it is charged to the GPU, never to the device. With a recall cache
//            (baseline.recall_cache, schedulers/recall_cache.hpp) the GPU keeps recalled
//            pages in HBM between steps and recalls only the selected pages it does not
//            hold; it attends all of them alike (the same bytes, so the same outputs). The
//            new token it appends to the expander it also appends to its copy of the last
//            page, when it holds that page (it computed those K/V): the growing last page
//            stays a hit; a page newly started is a miss the first time it is selected.
//
// Lookahead selection (selection.lookahead; pnm-kv, one micro-batch): from a request's second
// decode step on, each (layer, KV head) attends the pages selected with the previous step's
// query (the first and the new last page added): one attend_listed query per shard holding
// any, the step's path. The same message asks the shard to search its pages with this step's
// query for the next step (query.background: its candidates come back as a second reply,
// device_work::search_tag; a shard with nothing to attend gets a search-only `lookahead`
// query, the candidates round marked background). The host keeps their result, merged as the cross-shard rule says (exact: the global top pages of the candidates;
// local: each shard's own), for the next step. A device serves a background query in its idle
// time, off its clock (pnm_device); the host charges its energy, bytes and link bytes, and a
// step is never shorter than its busiest device's work, searches included
// (lookahead_excess_ns, schedulers/step_timeline.hpp). The first decode step selects as
// without lookahead, and its selection is the next step's.
//
// Virtual time of one layer is charged by the step model's arithmetic
// (schedulers/step_timeline.hpp), fed with what actually happened: the messages this engine
// sent (bytes, order), the done times the devices report (their clocks run
// device_service_done on device_service_cost) and the actual replies. GPU dense layer;
// messages leave over the host links in issue order; replies come back over the inbound
// links in (done, issue) order; rounds are layer-wide; then the GPU attends what it holds
// and merges. Layers past live_layers are charged as copies of the mean live layer; then
// the LM head. schedulers/step_model.hpp predicts the same composition without numerics.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "actors/device_engine.hpp"
#include "core/accuracy.hpp"
#include "core/workload.hpp"
#include "model/cost_model.hpp"
#include "model/modes.hpp"
#include "model/work_sizes.hpp"
#include "schedulers/placement.hpp"
#include "schedulers/recall_cache.hpp"
#include "schedulers/serving.hpp"
#include "schedulers/steady_pages.hpp"
#include "schedulers/step_timeline.hpp"

namespace pnmkv {


struct host_engine_config {
  run_mode mode = run_mode::pnm_kv;
  cross_shard_selection cross_shard = cross_shard_selection::exact;
  // selection.lookahead (pnm-kv, one micro-batch): see "Lookahead selection" above.
  bool lookahead = false;
  // run.wire_precision (model/work_sizes.hpp): bf16 rounds every query to bf16 where the
  // workload makes it and asks the devices for bf16 partial outputs.
  wire_precision wire = wire_precision::fp32;
  uint32_t live_layers = 1;
  uint32_t page_size_tokens = 16;
  uint64_t budget_tokens = 2048;
  bool verify = true;                 // dense verification queries each step
  uint64_t prefill_chunk_tokens = 4096;
  bool summaries_resident = true;     // baseline: page summaries kept in HBM
  // Virtual time (the live step setup's figures, schedulers/step_setup.hpp): host links the
  // (KV head, shard) pairs are spread over; query heads scored per group (0: all, as
  // gqa_aggregation max); bytes per summary element.
  uint32_t host_links = 1;
  uint32_t heads_scored = 0;
  uint32_t summary_elem_bytes = 2;
  steady_params steady{};             // png-kv
  // baseline: the GPU's cache of recalled pages and its capacity per (request, layer, KV
  // head) in tokens of whole pages (actors/run_setup resolves baseline.recall_cache_tokens).
  // Other modes run this policy on their selections as a shadow, for calibration only.
  recall_cache_policy recall_cache = recall_cache_policy::none;
  uint64_t recall_cache_tokens = 0;
  // gpu-only: the HBM store's shape and selection rule (the devices' own) and the emulator
  // bytes it may hold.
  device_engine_config hbm{};
  // Keep a copy of every query and recall of the running step until it is answered, so
  // fail_over can send it again to a replica (cluster.replication >= 2).
  bool keep_for_retry = false;
  // Also keep the step's writes (appends, prompt chunks), so retry_work can repeat them
  // (run.retry_after_ms > 0: messages lost without losing a device).
  bool keep_writes_for_retry = false;
  // cluster.recompute: a shard whose every copy was lost waits for a rebuild from the prompt
  // (recompute_writes, shard_recomputed) instead of failing its request; its work waits too.
  bool recompute = false;
  // cluster.rebuild_chunk_tokens: tokens of one (layer, KV head) per rebuild message.
  uint64_t rebuild_chunk_tokens = 4096;
  // run.micro_batches (pnm-kv, png-kv): each live layer's decoding requests are issued in
  // this many micro-batches, interleaved (next_micro_batch), and the step is charged as the
  // pipeline schedule_micro_batches allows (schedulers/step_timeline.hpp). 1: off.
  // Requests go to micro-batches by pool (micro_batch_of): a request's pool is
  // (its first shard's device id - device_id_base) / pool_devices (0: one pool).
  uint32_t micro_batches = 1;
  uint32_t pool_devices = 0;
  uint32_t device_id_base = 0;
};

struct request_spec {
  uint64_t request_id = 0;
  uint64_t context_tokens = 0;
  uint32_t steps = 0;
};

// One item of work for one device: a K/V write (prefill chunk or decode append), a query,
// or a recall of pages (baseline recalls, png-kv steady copies).
struct device_work {
  enum class kind : uint8_t { write, query, recall } what = kind::write;
  uint32_t device_id = 0;
  uint32_t shard_id = 0;
  uint64_t tag = 0;                // identifies the reply (queries, recalls)
  // Lookahead selection: an attend query that also carries the shard's search for the next
  // step (query.background on an exact_attend round) has a second reply, the candidates,
  // under this tag; 0 otherwise.
  uint64_t search_tag = 0;
  double vt_arrival_ns = 0;        // when it reaches the device, virtual
  uint64_t wire_bytes = 0;         // payload bytes on the link
  bool verification = false;       // dense check: not charged, not timed
  bool charge_device = true;       // false: the device works on the GPU's behalf (baseline scoring)
  bool bulk = false;               // a write of prompt tokens (acknowledged by the device)
  double device_cost_ns = -1;      // recalls: the expander's time (set by the engine)
  // write
  uint64_t request_id = 0;
  uint32_t layer = 0;
  uint32_t kv_head = 0;
  uint64_t position = 0;
  uint64_t n_tokens = 0;
  std::vector<bf16> k, v;
  // query
  device_query query{};            // q, listed, excluded point into the storage below
  std::vector<float> q_storage;
  std::vector<uint64_t> listed_storage;
  std::vector<uint64_t> excluded_storage;
  // recall
  std::vector<uint64_t> pages;
  // A rebuild's copy recall or write (re-replication, recompute): the GPU host tracks it,
  // not the running step.
  bool rebuild = false;

  // Points the query at this item's own q, listed and excluded storage: after it is
  // built, copied or moved (query holds raw pointers).
  void bind_query() {
    query.q = q_storage.data();
    query.listed_pages = listed_storage.data();
    query.n_listed = listed_storage.size();
    query.excluded_pages = excluded_storage.data();
    query.n_excluded = excluded_storage.size();
  }
};

struct device_reply {
  uint64_t tag = 0;
  uint32_t device_id = 0;
  double vt_done_ns = 0;           // device clock when the reply left
  device_answer answer;            // queries
  std::vector<uint32_t> rows_per_page;  // recalls: rows of each page, in request order
  std::vector<bf16> k, v;
};

// A request the engine gave up on: every copy of one of its shards was lost with its
// devices (re-prefill is not implemented). It was removed, mid-step if need be.
struct lost_request {
  uint64_t request_id = 0;
  std::string reason;  // "device 101 held the last copy of shard 0 of request 1 ..."
};

// A shard that needs a new copy after a loss (docs/DESIGN.md §7): one more copy from a live
// one (re-replication), or, with no live copy left, the shard rebuilt from the prompt
// (recompute; its request's work on it waits meanwhile).
struct rebuild_need {
  uint64_t request_id = 0;
  uint32_t shard_id = 0;
  bool recompute = false;
  uint32_t source = 0;  // re-replication: the live copy to copy (the shard's primary)
};

// What a device lost changes (host_engine::fail_over).
struct failover_result {
  std::vector<device_work> resend;  // the running step's unanswered work, to the new primaries
  std::vector<lost_request> lost;   // requests removed: no copy of a shard of theirs is left
  std::vector<rebuild_need> rebuild;  // shards below their copies, or with none (recompute)
};

// What rebuilding copies cost and moved, over the run (host_engine::recovery_totals).
struct recovery_totals {
  uint64_t copied_bytes = 0;       // re-replication: K/V bytes written to new copies (live layers)
  uint64_t recomputed_bytes = 0;   // recompute: K/V bytes regenerated and written (live layers)
  uint64_t recomputed_tokens = 0;  // tokens re-prefilled on the GPU (once per shard and token)
  double stall_ns = 0;             // virtual time the rebuilds added to steps
};

struct step_report {
  uint32_t step = 0;
  double virtual_ns = 0;           // whole step, every layer, LM head
  double live_layers_ns = 0;       // the live layers as measured in virtual time
  double dense_ns = 0, link_ns = 0, device_ns = 0, gpu_attention_ns = 0, merge_ns = 0,
         lm_head_ns = 0, copy_ns = 0;  // copy_ns: steady copies the windows did not hide
  double copy_hidden_ns = 0;       // png-kv: steady-copy time hidden in the dense-layer windows
  double recovery_ns = 0;          // rebuilds after a device loss (copies, recompute) that held
                                   // this step up (in virtual_ns)
  double energy_j = 0;             // dynamic energy of the whole step (all layers)
  double gpu_energy_j = 0;         // the GPU's share of energy_j
  double gpu_hbm_bytes = 0;        // HBM bytes behind it (the all-in figure's)
  double device_energy_j_max = 0;  // dynamic energy of the device that spent the most
  uint64_t link_bytes = 0;         // both directions, all layers
  uint64_t device_bytes_scanned = 0;  // all layers
  uint64_t steady_pages = 0;       // held on the GPU (png-kv), all layers
  uint64_t steady_hits = 0;        // selected pages served from the steady set, all layers
  uint64_t selected_pages = 0;     // all layers
  uint64_t copy_bytes = 0;         // steady copies this step, all layers
  uint64_t emulated_bytes_read = 0;  // bytes the device actors read for the live layers
                                     // (whoever is charged): the emulator's own work
  double emulated_flops = 0;         // flops of that same work (core/roofline.hpp counts)
  uint64_t tokens = 0;             // tokens produced (one per decoding request, one per
                                   // completed prompt)
  uint32_t decode_batch = 0;       // requests that decoded in the step
  uint64_t prefill_tokens = 0;     // prompt tokens written in the step (open workloads)
  double emulated_int_ops = 0;     // integer ops of the live device work (exact-int8 bounds)
  uint64_t search_pages = 0;       // pages the live selection queries searched
  uint64_t search_rescored = 0;    // of which scored exactly (flat: all)
  uint64_t search_selected = 0;    // pages the searches selected
  uint64_t search_queries = 0;     // searches (selection queries answered)
  // Sub-batch overlap (run.micro_batches): micro-batches of the step (1: off), every layer's
  // micro-batches one after another (serial_ns) and what the interleaving hid (overlap_ns);
  // 0 with one micro-batch.
  uint32_t micro_batches = 1;
  double serial_ns = 0, overlap_ns = 0;
};

class host_engine {
 public:
  host_engine(host_engine_config cfg, const cost_model& costs, const kv_workload& wl);

  const host_engine_config& config() const { return cfg_; }
  // decoding = false: the prompt is written by prefill chunks inside steps (plan_prefill);
  // the request decodes from the step after its last chunk. Between steps only.
  status add_request(const request_spec& r, const request_placement& placement, bool decoding = true);
  // Forgets a finished request (its steady pages, statistics state). Between steps only.
  status remove_request(uint64_t request_id);
  const std::vector<request_spec>& requests() const { return requests_; }
  uint32_t decoding_count() const;

  // Prefill: every chunk of every live (layer, KV head) of every request, in a fixed
  // order, to every device holding the pages (primary and replicas). False when done.
  bool next_prefill_chunk(std::vector<device_work>& out);
  uint64_t prefill_bytes() const { return prefill_bytes_; }

  // Open workloads: prompt chunks to write in the next step, next to the decoding batch
  // (continuous batching). Each chunk continues its request's prompt. Writes go out with
  // each live layer's work (device_work::bulk); the GPU's dense layers take the chunk's
  // tokens with the batch; the link carries them after the layer's decode traffic.
  status plan_prefill(std::vector<prefill_chunk> chunks);

  // Decode: start a step; returns its first work (steady copies, or the first layer's).
  // A step with nothing to wait for (prefill only) runs to its end at once.
  result<std::vector<device_work>> begin_step(uint32_t step);
  // Feed one reply; returns the next work. After the last live layer the timed part of the
  // step is over (timed_phase_done()); with verification on, the dense queries of every
  // live layer follow (untimed, uncharged), then step_done() is true.
  result<std::vector<device_work>> on_reply(const device_reply& r);
  // Sub-batch overlap: the running layer has micro-batches not yet issued. The caller sends
  // what it has (begin_step, on_reply), then takes each next micro-batch's work here while
  // the devices serve the ones before (the host builds the queries and appends of micro-batch
  // k + 1 while micro-batch k's are in flight); a layer finishes once every micro-batch is
  // issued and answered.
  bool micro_batch_pending() const { return !mb_.empty() && mb_issued_ < mb_.size() && phase_ == phase::round_a; }
  result<std::vector<device_work>> next_micro_batch();

  // A device is gone (docs/DESIGN.md §7): every shard it served as primary is served by its
  // first live replica from now on (the placement's epoch moves on), and the running step's
  // unanswered queries and recalls that went to it are sent again to the new primary
  // (resend; charged again on the link and the device, as a retry is). A request that had
  // no other copy of a shard on it is removed, mid-step if need be, and named in `lost`
  // (re-prefill is not implemented); the other requests' step goes on, and when nothing is
  // left to wait for the step moves on (its next work is in resend too). Idempotent per
  // device.
  result<failover_result> fail_over(uint32_t device_id);

  // --- Rebuilding copies after a loss (docs/DESIGN.md §7). The GPU host runs the rebuild;
  // the engine knows what a shard holds and writes, and charges the rebuild's virtual time
  // as a stall of the step it delays (schedulers/recovery_cost.hpp).
  // Tokens of (request, layer, KV head) written to the devices so far (prefill, prompt
  // chunks, appends), whichever shard holds them.
  uint64_t tokens_written(uint64_t request_id, uint32_t layer, uint32_t kv_head) const;
  // The shard's id -> its placement entry (null when the request or shard is unknown).
  const shard_placement* shard(uint64_t request_id, uint32_t shard_id) const;
  // Whether any shard of the request waits for a recompute.
  bool recovering(uint64_t request_id) const;
  bool recovering() const { return !recovering_.empty(); }
  // Recompute: the writes that rebuild tokens [from, to) of (layer, KV head) of the shard
  // on `target` from the prompt and the tokens decoded (the workload regenerates any page),
  // one per run of the shard's pages within rebuild_chunk_tokens; charged (the GPU's
  // re-prefill once per token, at the shard's first live (layer, KV head); the link and
  // the device for every write). Returns the end of what it covered (<= to).
  uint64_t recompute_writes(uint64_t request_id, uint32_t shard_id, uint32_t target, uint32_t layer,
                            uint32_t kv_head, uint64_t from, uint64_t to, std::vector<device_work>& out);
  // Every recompute write is acknowledged by `target`: it serves the shard from now on
  // (the epoch moves on) and the work that waited for the shard goes there (returned).
  result<std::vector<device_work>> shard_recomputed(uint64_t request_id, uint32_t shard_id, uint32_t target);
  // Re-replication: pages written so far of (request, layer, KV head) that the shard holds,
  // ascending; the same for every (layer, KV head) of the shard between steps.
  std::vector<uint64_t> shard_pages_written(uint64_t request_id, uint32_t shard_id, uint32_t layer,
                                            uint32_t kv_head) const;
  // A recall of `pages` of (layer, KV head) from the live copy `source`, to copy them.
  device_work copy_recall(uint64_t request_id, uint32_t shard_id, uint32_t source, uint32_t layer,
                          uint32_t kv_head, std::vector<uint64_t> pages) const;
  // The writes that put a copy recall's reply (its pages, rows, K and V) on `target`, one per
  // run of consecutive pages; charged as copy_chunk_cost.
  std::vector<device_work> copy_writes(uint64_t request_id, uint32_t shard_id, uint32_t target, uint32_t layer,
                                       uint32_t kv_head, const device_reply& r);
  // A copy is complete on `target`: one more replica of the shard (the epoch moves on).
  status replica_added(uint64_t request_id, uint32_t shard_id, uint32_t target);
  const recovery_totals& recovery() const { return recovery_; }
  // A request given up on (its shard can be neither copied nor recomputed): removed as a
  // request lost in fail_over is, mid-step if need be; the step goes on without it (its
  // next work is returned).
  result<std::vector<device_work>> abandon(uint64_t request_id);
  // Whether a reply with this tag is awaited (a late or repeated one is not).
  bool awaits(uint64_t tag) const { return pending_.count(tag) > 0; }
  const request_placement* placement_of(uint64_t request_id) const {
    auto it = placements_.find(request_id);
    return it == placements_.end() ? nullptr : &it->second;
  }
  const std::set<uint32_t>& devices_lost() const { return dead_; }
  // Devices that owe a reply to work of the running step (empty between steps).
  std::set<uint32_t> devices_owing() const;
  // The running step again, for messages that may have been lost: its writes (devices
  // ignore rows they hold) and every query and recall not answered yet, to the devices
  // serving them now. Not charged: virtual time models the step, not the lost message.
  std::vector<device_work> retry_work() const;
  bool timed_phase_done() const { return phase_ == phase::verify || phase_ == phase::done; }
  bool step_done() const { return phase_ == phase::done; }
  const step_report& last_step() const { return last_step_; }
  // The steps' schedule is drawn on `trace` (null: not traced) while the caller has begun
  // one of its steps there (timeline_trace::begin_step before begin_step here).
  void set_trace(timeline_trace* trace);

  // png-kv: replaces the steady set of (request, layer, KV head): copied in the next step,
  // attended from the one after (tests force it; the policy decides otherwise). Pages must
  // be full, ascending.
  void force_steady(uint64_t request_id, uint32_t layer, uint32_t kv_head,
                    std::vector<uint64_t> pages);
  // The selection of (request, layer, KV head) in the last step, ascending global ids
  // (steady pages included).
  std::vector<uint64_t> last_selection(uint64_t request_id, uint32_t layer, uint32_t kv_head) const;
  // The merged output of (request, layer, KV head) in the last step.
  const partial* last_output(uint64_t request_id, uint32_t layer, uint32_t kv_head) const;

  const accuracy_accumulator& accuracy() const { return accuracy_; }
  uint64_t output_digest() const { return digest_; }
  // The same digest per request (its merged outputs, in step and layer order): every request
  // held so far, finished ones included, lost ones not. A request's is the same whatever
  // else ran beside it.
  const std::map<uint64_t, uint64_t>& request_digests() const { return request_digest_; }
  uint64_t answers_pending() const { return pending_.size(); }
  // Bytes the GPU holds for the KV side now: steady pages (png-kv).
  uint64_t gpu_steady_bytes() const;

  // What only the numerics can tell the simulator (sim/calibration.hpp), measured over every
  // step so far. In modes without steady pages a shadow steady policy runs on the actual
  // selections, so any run can calibrate png-kv.
  struct calibration_stats {
    double steady_hit_fraction = 0;   // selected pages that were steady
    double steady_set_fraction = 0;   // steady pages / budget pages
    double steady_churn_fraction = 0; // new pages per re-evaluation / steady set size
    double selection_overlap = 0;     // selected pages the previous step selected too
    double selection_spread = 1;      // busiest shard's share of a selection / even share
    // Recall cache (baseline; a shadow in other modes): hits / selected pages over lookups
    // after each head's first (a cold cache misses every page), and the samples: lookups.
    double recall_hit_fraction = 0;
    uint64_t recall_samples = 0;
    uint64_t samples = 0;             // (step, layer, request, head) selections seen
    uint64_t churn_samples = 0;
  };
  calibration_stats calibration() const;

  // The recall cache over the whole run, every live (layer, request, KV head) lookup, the
  // cold first ones included: in baseline the pages attended from HBM (hits) and recalled
  // over the link (misses); a shadow in other modes.
  struct recall_stats {
    recall_cache_policy policy = recall_cache_policy::none;
    uint64_t capacity_tokens = 0;
    uint64_t hits = 0, misses = 0;
    bool shadow = false;  // not baseline: counted on the selections, nothing recalled
  };
  recall_stats recall_cache_stats() const;

 private:
  enum class phase { round_a, round_b, verify, done };
  // What an outstanding reply is for: the engine's own bookkeeping, not a message field.
  // The four query purposes become a selection_round on the wire (make_query maps them);
  // recall and steady_copy are page reads, which no selection round names.
  enum class purpose : uint8_t { select, candidates, attend_listed, recall, steady_copy, verify, lookahead };
  struct pending_item {
    uint64_t request_id;
    uint32_t layer, kv_head, shard_index;
    purpose what;
    uint32_t link = 0;  // host link the work went out on and its reply comes back on
    uint32_t slot = 0;  // baseline: the head's index among the layer's heads
    uint32_t device = 0;  // the device it went to (after a failover: the new primary)
    uint32_t mb = 0;          // sub-batch overlap: the request's micro-batch
    double arrival_ns = 0;    // sub-batch overlap: when it reached the device (virtual)
  };
  // Sub-batch overlap: one micro-batch of the running layer, timed on its own timeline from
  // idle links and devices (as the step model times it); replies are fed in issue order.
  struct mb_item {
    uint64_t tag;
    double arrival_ns;
    uint32_t device, link;
    double cost_ns;
    uint64_t reply_bytes;
  };
  struct mb_state {
    std::unique_ptr<layer_timeline> tl;
    double dense_ns = 0, t0 = 0, overlap_ns = 0, merge_ns = 0, round_start_ns = 0, last_reply_ns = 0;
    std::vector<mb_item> items;
  };
  // Issues micro-batch k of the running layer (layer_work for k = 0).
  std::vector<device_work> issue_micro_batch(uint32_t k);
  // The items of each micro-batch's round: served and received on its timeline.
  void mb_receive();
  void mb_pending(uint64_t tag, uint64_t request_id, double arrival_ns);
  layer_timeline& send_tl() { return active_mb_ >= 0 ? *mb_[size_t(active_mb_)].tl : tl_; }
  using head_key = std::tuple<uint32_t, uint64_t, uint32_t>;  // (layer, request, kv_head)
  struct head_state {
    std::vector<uint32_t> shards;      // indices into the placement, in shard order
    std::vector<float> q;              // group × head_dim
    std::vector<partial> parts;        // by shard order
    std::vector<partial> dense_parts;  // verification
    std::vector<std::vector<uint64_t>> listed;  // round b: pages per shard
    struct candidate {
      float score;
      uint64_t page;
      bool forced;
    };
    std::vector<candidate> candidates;
    // Lookahead selection: this step attends the last step's selection (one round), and
    // next_candidates gathers the search for the next step.
    bool ahead = false;
    std::vector<candidate> next_candidates;
    std::vector<uint64_t> pages;       // selected global pages (device side + steady)
    partial steady_part;               // png-kv: GPU attention over steady pages
    partial merged;
    // baseline timing: when the head's summaries are scored / pages are in; tokens recalled
    // and attended from the recall cache.
    double ready_ns = 0;
    uint64_t recalled_tokens = 0, cached_tokens = 0;
    std::vector<std::vector<uint64_t>> missed;  // baseline: pages recalled, per shard
  };
  // The recall cache of (layer, request, KV head): the policy, and in baseline the bytes of
  // the pages it holds (rows of the page so far, K and V each rows × head_dim).
  struct cached_page {
    std::vector<bf16> k, v;
    uint32_t rows = 0;
  };
  struct cache_state {
    recall_cache policy;
    std::map<uint64_t, cached_page> pages;
  };
  struct steady_state {                // png-kv, per (layer, request, kv_head)
    std::unique_ptr<steady_policy> policy;
    std::vector<uint64_t> pages;       // the steady set, ascending
    std::unique_ptr<kv_head_store> store;  // their K/V in "GPU memory"
    std::vector<uint64_t> pending_pages;   // the next set, copied this step
    std::map<uint64_t, std::pair<std::vector<bf16>, std::vector<bf16>>> arriving;
    bool forced = false;
    bool apply_next_step = false;          // pending_pages become the set at the next step
  };

  std::vector<device_work> copy_work();
  std::vector<device_work> layer_work(uint32_t layer);
  void close_round(double wait_ns);
  void append_token(const request_spec& r, uint32_t layer, uint32_t h, uint64_t position,
                    std::vector<device_work>& work);
  uint64_t attend_steady(const head_key& key, head_state& hs, uint64_t budget_pages,
                         const std::vector<uint64_t>*& excluded);
  result<std::vector<device_work>> round_b_work();
  status baseline_recalls(const head_key& key, head_state& hs, uint32_t slot, std::vector<device_work>& work);
  status attend_recalled(const head_key& key, head_state& hs, uint32_t j, const device_reply* r);
  cache_state& cache_of(const head_key& key);
  void calibrate_recall(const head_key& key, const std::vector<uint64_t>& sel, uint64_t hits);
  std::vector<device_work> verify_work();
  // The query group of (request, layer, KV head) after `decoded` tokens, as the GPU has it:
  // the workload's, rounded to bf16 under run.wire_precision bf16.
  void gpu_query(const request_spec& r, uint32_t layer, uint32_t kv_head, uint64_t decoded,
                 std::vector<float>& q) const;
  device_work make_query(uint64_t request_id, uint32_t layer, uint32_t kv_head, uint32_t shard_index,
                         const std::vector<float>& q, purpose what);
  void dispatch(device_work& w, bool charged, double now_ns, uint32_t link);
  uint32_t link_of(const request_placement& pl, uint32_t kv_head, uint32_t shard_index) const;
  uint32_t device_slot(uint32_t device_id);
  status finish_round_a();
  status finish_layer();
  status apply_copies();
  void finish_timed_phase();
  // A GPU operation's energy, with its HBM bytes for the all-in figure.
  device_work token_write(uint64_t request_id, uint32_t layer, uint32_t h, uint64_t position);
  void charge_gpu(const op_cost& op) {
    cur_.energy_j += op.energy_j;
    cur_.gpu_energy_j += op.energy_j;
    cur_.gpu_hbm_bytes += op.hbm_bytes;
  }
  status finish_verification();
  result<std::vector<device_work>> advance();  // runs the step on while nothing is pending
  bool layer_has_two_rounds(uint32_t layer) const;
  result<std::vector<device_work>> on_reply_impl(const device_reply& r);
  void remember(const std::vector<device_work>& work);
  // Takes `dead` out of a placement (see fail_over); `recompute`: a shard whose last copy
  // it held waits on it for a recompute (listed in `needs`) instead of an error.
  status move_off(request_placement& pl, uint32_t dead, bool recompute, std::vector<rebuild_need>* needs);
  void charge_recovery(const op_cost& c);
  // Bulk writes of tokens [from, to) of (layer, KV head) of the shard, regenerated from the
  // workload, to `device`, within rebuild_chunk_tokens; not charged. Returns where it
  // stopped; adds the tokens written to *tokens when given.
  uint64_t shard_writes(uint64_t request_id, uint32_t shard_id, uint32_t device, uint32_t layer, uint32_t kv_head,
                        uint64_t from, uint64_t to, std::vector<device_work>& out, uint64_t* tokens) const;
  // A rebuild's bulk write of n_tokens rows at `position` to `device`, K and V sized, unfilled.
  device_work rebuild_write(uint64_t request_id, uint32_t shard_id, uint32_t device, uint32_t layer,
                            uint32_t kv_head, uint64_t position, uint64_t n_tokens) const;
  // Removes a request whose KV is lost, between or during steps: its outstanding work, its
  // heads, its place in the step and in the prefill.
  void drop_request(uint64_t request_id);
  // baseline: the head in layer slot `slot`, or null when its request was dropped.
  head_state* slot_head(uint32_t slot);
  void prompt_work(uint32_t layer, std::vector<device_work>& work);
  // gpu-only: one layer on the GPU (appends, selection and attention, prompt chunks) and
  // the dense checks, all without device work.
  status layer_gpu_only(uint32_t layer);
  status verify_gpu_only();
  status write_hbm(const device_work& w);
  void end_step();
  void prefill_writes(const request_spec& r, uint32_t layer, uint32_t kv_head, uint64_t from,
                      uint64_t to, std::vector<device_work>& out);
  uint64_t chunk_end(const request_placement& pl, uint32_t kv_head, uint64_t from, uint64_t to) const;
  uint64_t decoded(uint64_t request_id) const { return rstate_.at(request_id).decoded; }
  bool is_decoding(uint64_t request_id) const { return rstate_.at(request_id).decoding; }
  status rebuild_steady(steady_state& ss);
  const request_spec& spec(uint64_t request_id) const;
  status finish_baseline_scoring();
  void baseline_summary_reads(const request_placement& pl, uint32_t kv_head, uint64_t sequence_tokens,
                              uint32_t slot);

  host_engine_config cfg_;
  const cost_model& costs_;
  const kv_workload& wl_;
  std::unique_ptr<device_engine> hbm_;  // gpu-only: the KV in GPU memory
  std::vector<request_spec> requests_;
  std::map<uint64_t, request_placement> placements_;
  struct request_state {
    uint64_t decoded = 0;    // decode steps done: the next token's position is context + decoded
    bool decoding = true;
    uint64_t prefilled = 0;  // prompt tokens written by in-step prefill
  };
  std::map<uint64_t, request_state> rstate_;
  std::vector<prefill_chunk> step_prefill_;  // this step's prompt chunks
  std::vector<uint64_t> step_decoding_;      // this step's decoding requests
  double prefill_last_arrival_ns_ = 0;       // this layer's prompt writes, last arrival
  std::map<head_key, steady_state> steady_;
  // Calibration: shadow steady sets (modes without steady pages) and running sums.
  std::map<head_key, std::pair<std::unique_ptr<steady_policy>, std::vector<uint64_t>>> shadow_;
  std::map<head_key, std::vector<uint64_t>> previous_selection_;
  // Lookahead selection: the pages the next step attends, per (layer, request, KV head)
  // (ascending global ids), and this step's work per device: its queries on the step's path
  // and its background searches, summed.
  std::map<head_key, std::vector<uint64_t>> lookahead_;
  std::map<uint32_t, double> step_device_work_ns_;
  // Lookahead selection: the attend queries (the last step's selection) and the background
  // searches of one (request, KV head) in the running layer.
  void lookahead_work(const request_spec& r, const head_key& key, head_state& hs, uint64_t budget_pages,
                      std::vector<device_work>& work);
  // Candidates in the order the global top takes them: always-kept first, then by score
  // (NaN last), then by page.
  static bool candidate_before(const head_state::candidate& a, const head_state::candidate& b);
  static device_work attend_part(const device_work& w);
  device_work search_part(const device_work& w) const;
  // The next step's selection from this step's searches (or, at a first step, its selection).
  void keep_lookahead(const head_key& key, head_state& hs, uint64_t budget_pages);
  std::map<head_key, cache_state> cache_;  // recall caches (baseline) or their shadows
  uint64_t recall_hits_ = 0, recall_misses_ = 0, cal_recall_hits_ = 0, cal_recall_selected_ = 0,
           cal_recall_samples_ = 0;
  double cal_hits_ = 0, cal_selected_ = 0, cal_set_fraction_sum_ = 0, cal_overlap_sum_ = 0,
         cal_spread_sum_ = 0, cal_churn_sum_ = 0;
  uint64_t cal_samples_ = 0, cal_overlap_samples_ = 0, cal_churn_samples_ = 0;
  void calibrate(const head_key& key, const head_state& hs);
  // The page search of one selection reply: pages looked at, rescored, selected.
  void count_search(const device_answer& a) {
    if (a.search.pages == 0) return;
    cur_.search_pages += a.search.pages;
    cur_.search_rescored += a.search.pages_rescored;
    cur_.search_selected += a.pages.size();
    ++cur_.search_queries;
  }

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
  std::map<uint64_t, pending_item> pending_;
  std::map<uint64_t, device_work> sent_;  // keep_for_retry: pending work by tag
  std::vector<device_work> step_writes_;  // keep_writes_for_retry: this step's writes
  std::set<uint32_t> dead_;               // devices failed over
  // Tokens written per (layer, request, KV head); shards waiting for a recompute ->
  // the dead device whose id they keep until then; rebuild charges not yet in a step.
  std::map<head_key, uint64_t> written_;
  std::map<std::pair<uint64_t, uint32_t>, uint32_t> recovering_;
  double recovery_pending_ns_ = 0, recovery_pending_j_ = 0;
  recovery_totals recovery_;
  std::map<head_key, head_state> heads_;
  double clock_ns_ = 0;          // GPU virtual clock
  double step_start_ns_ = 0;
  // The layer's (or copy phase's) links, device replies and inbound order: the step
  // model's arithmetic on what happened (schedulers/step_timeline.hpp).
  layer_timeline tl_;
  std::map<uint32_t, uint32_t> device_slots_;  // device id -> timeline index
  std::vector<head_key> layer_slots_;          // baseline: the layer's heads, in order
  gpu_ranks gpu_{1, 0};                        // baseline: the GPU's scoring and attention
  double round_start_ns_ = 0;     // when this round's traffic started (t0, or round b's)
  double last_reply_ns_ = 0;      // the layer's last reply in GPU memory so far
  double overlap_ns_ = 0;         // png-kv steady attention, overlapping the devices
  // png-kv's copy engine this step (live layers): its time from idle links and devices, and
  // its HBM writes; charged against the dense-layer windows at the step's end.
  double copy_engine_ns_ = 0, copy_hbm_write_ns_ = 0;
  double round_device_ns_ = 0;    // busiest device's work in this round (report breakdown)
  std::map<uint32_t, double> device_busy_ns_;
  std::map<uint32_t, double> step_device_energy_j_;  // this step's, per device (power report)
  step_report cur_{}, last_step_{};
  // Sub-batch overlap, this step: the micro-batches (empty: off), which one each decoding
  // request is in, how many of the running layer are issued, which one dispatch() sends on
  // (-1: tl_), and the live layers' per-micro-batch costs summed, with their waits' split.
  std::vector<mb_state> mb_;
  std::map<uint64_t, uint32_t> mb_of_;
  uint32_t mb_issued_ = 0;
  int active_mb_ = -1;
  double mb_origin_ns_ = 0;
  std::vector<micro_batch_costs> mb_sum_;
  layer_timeline::wait_split mb_split_;
  timeline_trace* trace_ = nullptr;
  accuracy_accumulator accuracy_;
  uint64_t digest_ = 1469598103934665603ull;
  std::map<uint64_t, uint64_t> request_digest_;
};

}  // namespace pnmkv
