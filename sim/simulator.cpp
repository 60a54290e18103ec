// The discrete-event simulator (see simulator.hpp): the live cluster's policy objects
// (schedulers/serving.hpp for arrivals, batching and chunked prefill; schedulers/admission.hpp
// for admission) driven on a virtual clock that the step model advances. The batch changes
// only at step boundaries (continuous batching). Admission is FIFO with head-of-line
// blocking: a request that does not fit waits for others to leave, and is refused only when
// it cannot fit an otherwise empty system.
#include "sim/simulator.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "core/check.hpp"
#include "schedulers/admission.hpp"

namespace pnmkv {

// ---------------------------------------------------------------------------------------
// Memory

gpu_memory_query gpu_query(const sim_setup& s, uint64_t final_tokens, bool summaries_resident,
                           uint32_t batch) {
  gpu_memory_query q;
  q.mode = s.mode;
  q.batch = batch;
  q.context_tokens = final_tokens;
  q.budget_tokens = s.budget_tokens;
  q.steady_tokens = steady_set_pages(s) * s.page_size_tokens;  // 0 unless png-kv
  q.page_size_tokens = s.page_size_tokens;
  q.summary_elem_bytes = s.summary_elem_bytes;
  q.tp = s.gpus();  // every GPU of every stage holds its share of weights and buffers
  q.summaries_resident = summaries_resident;
  q.recall_cache_tokens = s.recall_cache_tokens;
  return q;
}

sim_gpu_memory gpu_memory_of(const sim_setup& s) {
  sim_gpu_memory g;
  const gpu_memory_use u = gpu_memory(s.model, s.hw, gpu_query(s, s.context_tokens, true, 0));
  g.usable_bytes = u.capacity_bytes;
  g.weight_bytes = u.weights_bytes;
  // Open workloads prefill next to the batch: one chunk's activations stay reserved.
  if (s.workload != workload_arrivals::closed) {
    gpu_memory_query q = gpu_query(s, s.context_tokens, true, uint32_t(s.prefill_chunk_tokens));
    q.mode = run_mode::pnm_kv;
    g.prefill_working_bytes = gpu_memory(s.model, s.hw, q).activations_bytes;
  }
  return g;
}

namespace {
// GPU memory as a ledger of per-request bytes (requests of different lengths), summaries
// per request with baseline.summaries = auto: resident while they fit, else over the link.
gpu_memory_params gpu_params(const sim_setup& s) {
  gpu_memory_params p;
  p.model = s.model;
  p.hw = s.hw;
  p.query = gpu_query(s, s.context_tokens, s.summaries != summary_residence::link, 0);
  p.sizing = gpu_sizing::per_request;
  p.summaries = s.summaries == summary_residence::auto_fit ? summary_policy::fit_per_request
                                                           : summary_policy::fixed;
  p.free_bytes = gpu_memory_of(s).free_bytes();
  return p;
}

}  // namespace

double device_bytes_per_request(const sim_setup& s, uint64_t final_tokens) {
  if (s.mode == run_mode::gpu_only) return 0;  // the KV is in HBM
  placement_request pr = s.placement;
  const uint64_t pages = (final_tokens + s.page_size_tokens - 1) / s.page_size_tokens;
  return double(shard_bytes_per_layer_head(pr, pages)) * s.model.layers * s.model.kv_heads *
         std::max<uint32_t>(1, pr.replication);
}

// ---------------------------------------------------------------------------------------
// Admission: schedulers/admission.hpp with the simulator's sizing (see gpu_params)

namespace {

// Without workload.batch_max, the loops that offer requests until admission refuses one
// (a closed batch under sim.batch_policy = max, the device-capacity limit) stop at this
// many: at the long contexts the simulator is for, the GPU-memory ledger and the pools
// refuse long before (every request takes HBM and device bytes); it only bounds the loop.
constexpr uint32_t offered_requests_max = 1'000'000;
// For an open workload choose_pool_devices predicts one decode step of the batch it admits
// for every pool size, which costs O(batch) per layer: without workload.batch_max, that
// batch is offered at most this many requests.
constexpr uint32_t pool_probe_requests_max = 100'000;

placement_params placement_params_of(const sim_setup& s) {
  if (s.mode == run_mode::gpu_only) return gpu_local_placement(s.placement, 0);
  placement_params p;
  std::vector<uint32_t> ids(s.devices);
  for (uint32_t i = 0; i < s.devices; ++i) ids[i] = i;  // the step model counts devices from 0
  p.pools = make_pools(ids, s.pool_devices, uint64_t(s.device_capacity_bytes));
  p.request = s.placement;
  p.costs = s.costs;
  p.budget_tokens = s.budget_tokens;
  p.cross_shard = s.exact_cross_shard ? cross_shard_selection::exact : cross_shard_selection::local;
  return p;
}

// Batch cap, GPU memory (unless placement_only), placement, and the TPOT budget when a
// predictor is given and sim.tpot_ms_max is set.
admission sim_admission(const sim_setup& s, bool placement_only, step_predictor_ms predict = {}) {
  admission_params p;
  if (!placement_only) {
    p.batch_max = s.batch_cap;
    p.gpu = gpu_params(s);
  }
  p.placement = placement_params_of(s);
  if (predict && s.tpot_ms_max > 0) {
    p.tpot_ms_max = s.tpot_ms_max;
    p.predict_step_ms = std::move(predict);
  }
  return make_admission(std::move(p));
}

// The request as placement and GPU memory size it: the prompt, then every generated token
// but the last appended (at least one).
admission_candidate candidate_of(uint64_t id, uint64_t prompt_tokens, uint64_t output_tokens) {
  return {id, prompt_tokens, std::max<uint64_t>(1, output_tokens - 1)};
}

// The words the simulator reports (batch_limited_by, a request's refusal).
std::string reason_text(const admission_verdict& v) {
  if (v.reason == admission_reason::invalid_placement) return "placement: " + v.detail;
  return to_string(v.reason);
}

step_request step_of(uint64_t id, const admission_grant& g, uint64_t seq_tokens, bool first_decode_step,
                     bool recall_cache_cold = false) {
  step_request q;
  q.id = id;
  q.pool = g.pool;
  q.placement = &g.placement;
  q.seq_tokens = seq_tokens;
  q.summaries_resident = g.summaries_resident;
  q.first_decode_step = first_decode_step;
  q.recall_cache_cold = recall_cache_cold;
  return q;
}

// Time to prefill one request of `tokens` tokens on an idle system (its TTFT there).
double idle_prefill_s(const sim_setup& s, step_model& sm, uint64_t tokens) {
  admission adm = sim_admission(s, false);
  if (!adm.try_admit(candidate_of(1, tokens, s.sizing_output_tokens())).admitted()) return 0;
  const admission_grant& g = *adm.grant_of(1);
  double t_ns = 0;
  for (uint64_t pos = 0; pos < tokens; pos += s.prefill_chunk_tokens) {
    prefill_piece p;
    p.request_id = 1;
    p.placement = &g.placement;
    p.position = pos;
    p.tokens = std::min<uint64_t>(s.prefill_chunk_tokens, tokens - pos);
    p.completes = pos + p.tokens >= tokens;
    t_ns += sm.run({}, {p}).time_ns;
  }
  return t_ns * 1e-9;
}

// A closed batch's TTFT: every request is prefilled at t = 0, so it is that of one request
// on an idle system (a step model of its own: one step's time does not depend on the steps
// run before it).
double closed_ttft_ms(const std::shared_ptr<const sim_setup>& s) {
  step_model sm(s);
  return idle_prefill_s(*s, sm, s->context_tokens) * 1e3;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Simulation: serving_scheduler and admission driven on a virtual clock

namespace {

class sim_driver {
 public:
  // closed_ttft: a closed batch's TTFT (one request prefilled on an idle system) is
  // computed; the pool choice leaves it to the run it keeps (see closed_ttft_ms).
  // trace: the first steps' schedule is drawn on it (null: not traced).
  sim_driver(std::shared_ptr<const sim_setup> setup, const sim_progress& progress, bool closed_ttft = true,
             timeline_trace* trace = nullptr)
      : setup_(std::move(setup)),
        S_(*setup_),
        progress_(progress),
        closed_(S_.workload == workload_arrivals::closed),
        closed_ttft_(closed_ttft),
        sm_(setup_),
        sched_({}, serving_params_of(S_)),
        adm_(sim_admission(S_, false, [this](const admission_candidate& c, const admission_grant& g) {
          return predicted_step_ms(c, g);
        })),
        trace_(trace) {}

  result<sim_result> run(std::chrono::steady_clock::time_point wall0);

 private:
  // The admission's batch cap decides (a closed batch's refusals name it); the scheduler
  // only keeps the books.
  static serving_params serving_params_of(const sim_setup& s) {
    serving_params p;
    p.prefill_chunk_tokens = s.prefill_chunk_tokens;
    p.batch_max = 0;
    p.series_points_max = 4'000'000;
    return p;
  }
  void describe();
  void analytic_limits();
  void fill_closed_batch();
  status load_open_workload();
  void serve();
  void admit_waiting();
  bool still_held(uint64_t id);
  void hold(uint64_t id, const admission_verdict& v);
  void admitted(uint64_t id, bool prefilled);
  void step(const step_plan& plan);
  const step_result& step_result_of(const std::vector<step_request>& dec,
                                    const std::vector<prefill_piece>& pf);
  void report_progress(bool last);
  void totals();
  double predicted_step_ms(const admission_candidate& c, const admission_grant& g);
  uint64_t seq_tokens(uint64_t id) const {
    const request_outcome& o = sched_.outcome(id);
    return o.prompt_tokens + (o.generated > 0 ? o.generated - 1 : 0);
  }

  struct request_state {
    const admission_grant* grant = nullptr;  // while admitted
    bool first_decode_pending = true;        // png-kv: its whole steady set is copied then; lookahead: it selects fresh
    bool recall_cache_cold = true;           // baseline: no decode step yet, its recall cache empty
  };

  std::shared_ptr<const sim_setup> setup_;
  const sim_setup& S_;
  sim_progress progress_;
  bool closed_;
  bool closed_ttft_;
  step_model sm_;
  serving_scheduler sched_;
  admission adm_;
  std::vector<request_state> req_;  // by id − 1
  sim_result res_;

  // Sums over the run.
  double busy_s_ = 0, decode_time_s_ = 0, batch_sum_ = 0;
  double link_bytes_sum_ = 0, device_bytes_sum_ = 0, dev_busy_ns_ = 0, link_busy_ns_ = 0;
  step_breakdown crit_sum_;
  double mb_serial_ns_ = 0, mb_overlap_ns_ = 0;
  step_energy energy_sum_;
  step_power_w power_peak_;
  uint64_t tokens_out_ = 0;
  uint64_t total_work_ = 0, done_work_ = 0, reported_ = 0;

  timeline_trace* trace_;
  uint32_t steps_run_ = 0;

  // Step reuse (sim.step_reuse_steps).
  step_result last_step_;
  std::vector<uint64_t> reuse_ids_;
  uint32_t reuse_left_ = 0;

  // The head of the queue, not admitted, and the requests in the system when it was
  // refused (see still_held).
  struct held_request {
    uint64_t id = 0;
    std::vector<uint64_t> in_system;
    bool by_tpot = false;
    uint32_t steps_left = 0;  // by_tpot: boundaries the refusal still stands
  };
  held_request held_;
};

result<sim_result> sim_driver::run(std::chrono::steady_clock::time_point wall0) {
  describe();
  analytic_limits();
  if (closed_) {
    fill_closed_batch();
  } else if (status s = load_open_workload(); !s) {
    return s;
  }
  serve();
  totals();
  if (status st = S_.costs->check_peak_power(power_peak_, S_.mode == run_mode::baseline); !st) return st;
  res_.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  report_progress(true);
  return std::move(res_);
}

void sim_driver::describe() {
  res_.mode = to_string(S_.mode);
  res_.recall_cache = to_string(S_.recall_cache);
  res_.recall_cache_tokens = S_.recall_cache_tokens;
  res_.model_name = S_.model.name;
  res_.model_file = S_.model.file;
  res_.hardware_name = S_.hw.name;
  res_.hardware_file = S_.hw.file;
  res_.fabric_file = S_.fabric.file;
  res_.calibration_file = S_.cal.file;
  for (const auto& [name, v] : S_.cal.entries()) res_.calibration.emplace_back(name, *v);
  res_.config_json = S_.cfg.to_json();
  res_.workload = to_string(S_.workload);
  res_.context_tokens = S_.context_tokens;
  res_.budget_tokens = S_.budget_tokens;
  res_.selection = S_.selection;
  res_.budget_fraction = S_.budget_policy.budget_fraction;
  res_.gpus = S_.gpus();
  res_.tp = S_.tp;
  res_.pp = S_.pp;
  res_.pnm_devices = S_.pnm_devices();
  res_.expanders = S_.expanders();
  res_.pool_devices = S_.pool_devices;
  res_.pools = S_.devices / S_.pool_devices;
}

// Analytic limits at the configured context (for the max-batch table): requests placed on
// empty pools until one does not fit, and free GPU memory over one request's bytes.
void sim_driver::analytic_limits() {
  const admission_candidate c = candidate_of(0, S_.context_tokens, S_.sizing_output_tokens());
  res_.gpu_free_bytes = gpu_memory_of(S_).free_bytes();
  res_.device_bytes_per_request = device_bytes_per_request(S_, c.final_tokens());
  admission cap = sim_admission(S_, /*placement_only=*/true);
  uint32_t n = 0;
  // gpu-only has no device capacity (its one slot never binds): reported as 0.
  const uint32_t limit = S_.mode == run_mode::gpu_only ? 0 : S_.batch_cap ? S_.batch_cap : offered_requests_max;
  for (; n < limit; ++n)
    if (!cap.try_admit(candidate_of(n + 1, S_.context_tokens, S_.sizing_output_tokens())).admitted()) break;
  res_.batch_limit_device_capacity = n;
  const auto size = gpu_memory_constraint(gpu_params(S_)).size_of(c.final_tokens(), res_.gpu_free_bytes);
  res_.gpu_bytes_per_request = size.bytes;
  res_.summaries_resident = size.summaries_resident;
  res_.batch_limit_gpu_memory =
      res_.gpu_free_bytes > 0 ? uint32_t(std::min(1e9, std::floor(res_.gpu_free_bytes / size.bytes))) : 0;
}

// A closed batch: every request arrives at t = 0 already prefilled (the first token came out
// of the prefill; then run.steps decode steps, as the live cluster's run.steps). With
// sim.batch_policy = max requests are offered until the first refusal; otherwise
// workload.batch are offered and the ones that do not fit are refused.
void sim_driver::fill_closed_batch() {
  uint32_t n = S_.batch_max_policy ? (S_.batch_cap ? S_.batch_cap : offered_requests_max) : S_.batch;
  // baseline, summaries resident when they fit: the max batch is the one where they all
  // still fit (past it every further request would read its summaries over the link).
  bool resident_cap = false;
  if (S_.mode == run_mode::baseline && S_.batch_max_policy && S_.summaries == summary_residence::auto_fit &&
      res_.summaries_resident && res_.batch_limit_gpu_memory < n) {
    n = std::max<uint32_t>(1, res_.batch_limit_gpu_memory);
    resident_cap = true;
  }
  const trace_row row{0, S_.context_tokens, uint64_t(S_.steps) + 1};
  req_.reserve(std::min<uint32_t>(n, 1u << 16));
  for (uint32_t i = 0; i < n; ++i) {
    // workload.batch_max caps the requests offered: past it a request is refused for the
    // cap even when fewer were admitted (the admission's own cap counts admitted ones).
    admission_verdict v{admission_reason::batch_cap, "past workload.batch_max"};
    if (!S_.batch_cap || i < S_.batch_cap)
      v = adm_.try_admit(candidate_of(i + 1, row.prompt_tokens, row.output_tokens));
    if (!v.admitted()) res_.batch_limited_by = reason_text(v);
    if (!v.admitted() && S_.batch_max_policy) break;
    const uint64_t id = sched_.submit(row);
    PNMKV_CHECK_EQ(id, uint64_t(i) + 1);
    if (!v.admitted()) {
      sched_.refuse(id, res_.batch_limited_by);
      continue;
    }
    sched_.admit_prefilled(id);
    // Steady state: png-kv's first steady set was copied with the warm-up, like the prefill.
    admitted(id, /*prefilled=*/true);
  }
  if (res_.batch_limited_by.empty())
    res_.batch_limited_by = !S_.batch_max_policy ? "config"
                            : resident_cap       ? "gpu_memory"
                            : S_.batch_cap       ? "batch_max"
                                                 : "none";
  total_work_ = S_.steps;
}

status sim_driver::load_open_workload() {
  std::vector<trace_row> rows;
  if (S_.workload == workload_arrivals::trace) {
    auto t = load_trace(S_.trace_file);
    if (!t) return t.error();
    rows = std::move(t).value();
  } else {
    rows = poisson_arrivals(S_.seed, S_.requests, S_.arrival_rate_per_s, S_.context_tokens,
                            S_.prompt_spread_fraction, S_.output_tokens);
  }
  total_work_ = rows.size();
  req_.reserve(rows.size());
  sched_ = serving_scheduler(std::move(rows), serving_params_of(S_));
  res_.batch_limited_by = "open workload";
  return {};
}

void sim_driver::admitted(uint64_t id, bool prefilled) {
  if (req_.size() < id) req_.resize(id);
  req_[id - 1].grant = adm_.grant_of(id);
  // Lookahead: a request's first decode step has no earlier selection to attend and selects
  // with its own query, also in a closed batch that starts prefilled (as the live cluster).
  req_[id - 1].first_decode_pending = !prefilled || S_.lookahead;
  req_[id - 1].recall_cache_cold = true;
  if (res_.head_groups == 0) {  // the point's h × s: the first admitted request's
    res_.head_groups = req_[id - 1].grant->placement.head_groups;
    res_.sequence_shards = req_[id - 1].grant->placement.sequence_shards;
  }
}

// FIFO at the step boundary, head of line: the first request that does not fit waits for
// others to leave, and is refused only when it cannot fit an otherwise empty system.
void sim_driver::admit_waiting() {
  while (auto id = sched_.next_candidate()) {
    if (still_held(*id)) break;
    const request_outcome& o = sched_.outcome(*id);
    const admission_verdict v = adm_.try_admit(candidate_of(*id, o.prompt_tokens, o.output_tokens));
    if (v.admitted()) {
      sched_.admit(*id);
      admitted(*id, /*prefilled=*/false);
    } else if (sched_.not_admitted(*id, reason_text(v))) {
      ++done_work_;
    } else {
      hold(*id, v);
      break;
    }
  }
}

// Whether the waiting head `id` is refused again without asking admission. The batch cap,
// GPU memory and placement change only when a request is admitted or leaves, i.e. with the
// requests in the system: while those are the ones it was refused with, so is it. The TPOT
// budget also depends on their lengths, one token longer each step, and not monotonically
// (the tokens attended drop when a head's last page restarts): its refusal stands for as
// many boundaries as a step result is reused (sim.step_reuse_steps, the same bound on how
// much a step's work may change; 1 predicts at every boundary, exactly), then the step is
// predicted again. Saves predicting a whole step at every boundary while a request waits.
bool sim_driver::still_held(uint64_t id) {
  if (held_.id != id || sched_.in_system_ids() != held_.in_system) return false;
  if (!held_.by_tpot) return true;
  if (held_.steps_left == 0) return false;
  --held_.steps_left;
  return true;
}

void sim_driver::hold(uint64_t id, const admission_verdict& v) {
  held_.id = id;
  held_.in_system = sched_.in_system_ids();
  held_.by_tpot = v.reason == admission_reason::tpot_budget;
  held_.steps_left = S_.step_reuse_steps > 0 ? S_.step_reuse_steps - 1 : 0;
}

// The link and device budget: the decode step of the requests in the system with the
// candidate (one step of the model per admission).
double sim_driver::predicted_step_ms(const admission_candidate& c, const admission_grant& g) {
  std::vector<step_request> dec;
  // Lookahead: a request's first decode step selects with its own query (longer than the
  // steps after it), so the step the candidate first decodes in is the one predicted.
  for (uint64_t id : sched_.in_system_ids())
    dec.push_back(step_of(id, *req_[id - 1].grant, seq_tokens(id), S_.lookahead && req_[id - 1].first_decode_pending));
  dec.push_back(step_of(c.request_id, g, c.prompt_tokens, S_.lookahead));
  return sm_.run(dec, {}).time_ns * 1e-6;
}

void sim_driver::serve() {
  while (true) {
    if (!closed_) admit_waiting();
    const step_plan plan = sched_.plan();
    if (plan.empty()) {
      if (closed_ || !sched_.idle_until_next_arrival()) break;
      continue;
    }
    if (closed_ && res_.decode_steps >= S_.steps) break;
    if (sched_.now_s() > S_.duration_s_max) break;
    step(plan);
    report_progress(false);
  }
}

// A step's result is reused while the batch is unchanged, for at most step_reuse_steps
// steps: each step adds one token per request, i.e. at most one more K/V row attended and
// one more summary scanned per head, so the work of a head (at least the budget's rows)
// changes by less than step_reuse_steps / budget_tokens.
const step_result& sim_driver::step_result_of(const std::vector<step_request>& dec,
                                              const std::vector<prefill_piece>& pf) {
  bool reuse = S_.step_reuse_steps > 1 && pf.empty() && reuse_left_ > 0 && dec.size() == reuse_ids_.size();
  for (size_t i = 0; reuse && i < dec.size(); ++i)
    reuse = dec[i].id == reuse_ids_[i] && !dec[i].first_decode_step && !dec[i].recall_cache_cold;
  if (reuse) {
    --reuse_left_;
    if (trace_) trace_->repeat_previous_step();
    return last_step_;
  }
  sm_.set_trace(trace_ && trace_->active() ? trace_ : nullptr);
  last_step_ = sm_.run(dec, pf);
  sm_.set_trace(nullptr);
  reuse_ids_.clear();
  // A step with a request's first decode step in it (png-kv's whole steady set copied, the
  // baseline's recall cache cold) is not one the next steps repeat.
  bool first = false;
  for (const auto& q : dec) {
    reuse_ids_.push_back(q.id);
    first = first || q.first_decode_step || q.recall_cache_cold;
  }
  reuse_left_ = pf.empty() && !first ? S_.step_reuse_steps - 1 : 0;
  return last_step_;
}

void sim_driver::step(const step_plan& plan) {
  std::vector<step_request> dec;
  dec.reserve(plan.decoding.size());
  for (uint64_t id : plan.decoding)
    dec.push_back(step_of(id, *req_[id - 1].grant, seq_tokens(id), req_[id - 1].first_decode_pending,
                          req_[id - 1].recall_cache_cold));
  std::vector<prefill_piece> pf;
  for (const prefill_chunk& c : plan.prefill)
    pf.push_back({c.request_id, &req_[c.request_id - 1].grant->placement, c.position, c.tokens, c.completes});
  if (trace_) trace_->begin_step(steps_run_, sched_.now_s() * 1e9);
  ++steps_run_;
  const step_result& sr = step_result_of(dec, pf);
  if (trace_) trace_->end_step();
  const double dt = sr.time_ns * 1e-9;
  busy_s_ += dt;
  energy_sum_ += sr.energy;
  power_peak_.max_with(S_.costs->power_over_step(sr.time_ns, sr.energy.gpu_j(), sr.energy.gpu_hbm_bytes, S_.gpus(),
                                                 sr.device_energy_j_max, S_.mode == run_mode::baseline));
  if (!dec.empty()) {
    crit_sum_ += sr.crit;
    mb_serial_ns_ += sr.serial_ns;
    mb_overlap_ns_ += sr.overlap_ns;
    res_.micro_batches = std::max(res_.micro_batches, sr.micro_batches);
    decode_time_s_ += dt;
    ++res_.decode_steps;
    batch_sum_ += double(dec.size());
    res_.batch_peak = std::max<uint32_t>(res_.batch_peak, uint32_t(dec.size()));
    link_bytes_sum_ += sr.link_bytes;
    device_bytes_sum_ += sr.device_bytes;
    dev_busy_ns_ += sr.device_busy_ns_max;
    link_busy_ns_ += sr.link_busy_ns_max;
  }
  tokens_out_ += plan.decoding.size();
  for (uint64_t id : plan.decoding) req_[id - 1].first_decode_pending = req_[id - 1].recall_cache_cold = false;
  for (const prefill_chunk& c : plan.prefill) tokens_out_ += c.completes;
  for (uint64_t id : sched_.complete(plan, dt)) {
    adm_.release(id);
    req_[id - 1].grant = nullptr;
    ++res_.completed;
    ++done_work_;
  }
  if (closed_) done_work_ = res_.decode_steps;
}

void sim_driver::report_progress(bool last) {
  if (!progress_) return;
  if (last) {
    if (reported_ != total_work_) progress_(total_work_, total_work_);
    return;
  }
  if (done_work_ - reported_ >= std::max<uint64_t>(1, total_work_ / 100) || done_work_ == total_work_) {
    reported_ = done_work_;
    progress_(done_work_, total_work_);
  }
}

void sim_driver::totals() {
  res_.unfinished = sched_.in_system();
  res_.simulated_s = sched_.now_s();
  res_.tokens_out = tokens_out_;
  // Per request: the same summary as the live cluster's (schedulers/serving.hpp).
  res_.requests = sched_.outcomes();
  const serving_summary sv = summarise(res_.requests, {});
  res_.refused = sv.refused;
  if (closed_) {
    if (closed_ttft_) res_.ttft_ms = res_.ttft_ms_p99 = closed_ttft_ms(setup_);
  } else {
    res_.ttft_ms = sv.ttft_ms_mean;
    res_.ttft_ms_p99 = sv.ttft_ms_p99;
  }
  res_.tpot_ms = sv.tpot_ms_mean;
  res_.tpot_ms_p99 = sv.tpot_ms_p99;
  res_.queueing_ms = sv.queueing_ms_mean;

  const double n_steps = std::max<double>(1, double(res_.decode_steps));
  res_.batch_mean = batch_sum_ / n_steps;
  res_.step_ms = decode_time_s_ * 1e3 / n_steps;
  res_.breakdown_ms = crit_sum_.scaled(1e-6 / n_steps);
  res_.micro_batch_serial_ms = mb_serial_ns_ * 1e-6 / n_steps;
  res_.micro_batch_overlap_ms = mb_overlap_ns_ * 1e-6 / n_steps;
  res_.link_bytes_per_step = link_bytes_sum_ / n_steps;
  res_.device_bytes_per_step = device_bytes_sum_ / n_steps;
  res_.device_busy_fraction = decode_time_s_ > 0 ? dev_busy_ns_ * 1e-9 / decode_time_s_ : 0;
  res_.link_busy_fraction = decode_time_s_ > 0 ? link_busy_ns_ * 1e-9 / decode_time_s_ : 0;
  const double static_w = S_.costs->static_power_w(S_.gpus(), S_.pnm_devices(), S_.expanders());
  const double elapsed = closed_ ? busy_s_ : sched_.now_s();
  const double static_j = static_w * elapsed;
  const double energy = energy_sum_.sum() + static_j;
  const double tok = std::max<double>(1, double(tokens_out_));
  res_.tokens_per_s = elapsed > 0 ? double(tokens_out_) / elapsed : 0;
  res_.energy_j_per_token = tokens_out_ ? energy / tok : 0;
  res_.energy_j_per_token_by = energy_sum_.scaled(1.0 / tok);
  res_.static_j_per_token = tokens_out_ ? static_j / tok : 0;
  res_.power_w = elapsed > 0 ? energy / elapsed : 0;
  res_.capital_usd = S_.costs->capital_usd(S_.gpus(), S_.pnm_devices(), S_.expanders());
  res_.tokens_per_dollar = S_.costs->tokens_per_dollar(res_.tokens_per_s, res_.power_w, res_.capital_usd);
  // All-in (docs/HARDWARE.md §6a).
  const double extra_j = S_.costs->gpu_all_in_extra_j(energy_sum_.gpu_hbm_bytes);
  res_.host_switch_power_w = S_.costs->host_switch_power_w(S_.gpus(), S_.devices);
  const double all_in = energy + extra_j + res_.host_switch_power_w * elapsed;
  res_.energy_all_in_j_per_token = tokens_out_ ? all_in / tok : 0;
  res_.gpu_all_in_extra_j_per_token = tokens_out_ ? extra_j / tok : 0;
  res_.host_switch_j_per_token = tokens_out_ ? res_.host_switch_power_w * elapsed / tok : 0;
  res_.power_all_in_w = elapsed > 0 ? all_in / elapsed : 0;
  res_.tokens_per_dollar_all_in =
      S_.costs->tokens_per_dollar(res_.tokens_per_s, res_.power_all_in_w, res_.capital_usd);
  res_.power_peak = S_.costs->peak_power_vs_rating(power_peak_, S_.mode == run_mode::baseline);

  // Batch series, thinned evenly.
  const std::vector<batch_sample>& series = sched_.series();
  const size_t keep = S_.batch_series_points_max;
  if (series.size() <= keep) {
    res_.batch_series = series;
  } else {
    for (size_t i = 0; i < keep; ++i) res_.batch_series.push_back(series[i * (series.size() - 1) / (keep - 1)]);
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Pool choice: every divisor of the device count, rated at the batch the run admits with it

namespace {

std::shared_ptr<const sim_setup> with_pool_devices(const sim_setup& setup, uint32_t pool_devices) {
  auto s = std::make_shared<sim_setup>(setup);
  s->pool_devices = pool_devices;
  s->pool_auto = false;
  return s;
}

status no_pool_admits(const sim_setup& setup, const std::string& last_reason) {
  return status{errc::capacity, "no pool size of the " + std::to_string(setup.devices) +
                                    " devices admits a request of " + std::to_string(setup.context_tokens) +
                                    " tokens (" + last_reason + ")"};
}

struct pool_choice {
  uint32_t pool_devices = 0;
  sim_result run;  // the chosen pool size's run
};

// A closed batch: every pool size is run exactly as simulate() runs it (the same admission,
// hence the same batch and summary residence — baseline with summaries resident while they
// fit stops at the batch where they all still fit — the same steps) and the one reporting
// the most tokens/s is kept, with its run; on equal tokens/s the smaller pool size. Rating
// a pool size at any other batch can pick a worse one: the probe this replaces filled the
// baseline past the GPU-memory limit with summaries read over the link, where splitting
// the expanders into small pools paid, while the run then stopped at the limit with every
// summary resident, where it does not.
// A pool size that admits no request is skipped. Progress goes over all the runs; only the
// kept run's TTFT is computed (a closed batch's TTFT prefills a whole request: it costs
// more than the decode steps).
result<pool_choice> choose_by_closed_runs(const sim_setup& setup, const sim_progress& progress,
                                          std::chrono::steady_clock::time_point wall0,
                                          timeline_trace* trace = nullptr) {
  std::vector<uint32_t> sizes;
  for (uint32_t d = 1; d <= setup.devices; ++d)
    if (setup.devices % d == 0) sizes.push_back(d);
  std::optional<pool_choice> best;
  std::string last_reason = "no pool size admits a request";
  for (size_t k = 0; k < sizes.size(); ++k) {
    sim_progress part;
    if (progress)
      part = [&progress, k, n = uint64_t(sizes.size())](uint64_t done, uint64_t total) {
        progress(k * total + done, n * total);
      };
    // Each pool size draws its own timeline; the kept run's is returned.
    std::optional<timeline_trace> tk;
    if (trace) tk.emplace(trace->source(), trace->steps(), trace->spans_max());
    auto r = sim_driver(with_pool_devices(setup, sizes[k]), part, /*closed_ttft=*/false, tk ? &*tk : nullptr)
                 .run(wall0);
    if (!r) return r.error();
    if (r->batch_peak == 0) {
      last_reason = r->batch_limited_by;
      continue;
    }
    if (!best || r->tokens_per_s > best->run.tokens_per_s) {
      best = pool_choice{sizes[k], std::move(r).value()};
      if (tk) *trace = std::move(*tk);
    }
  }
  if (!best) return no_pool_admits(setup, last_reason);
  best->run.ttft_ms = best->run.ttft_ms_p99 = closed_ttft_ms(with_pool_devices(setup, best->pool_devices));
  return std::move(*best);
}

// An open workload has no one batch: every pool size is rated at saturation, the batch
// the run's admission (batch cap, GPU memory with per-request summary residence,
// placement, TPOT budget) reaches when requests of the configured context keep arriving,
// by the tokens/s of one decode step of it.
result<uint32_t> choose_by_saturated_step(const sim_setup& setup) {
  uint32_t best = 0;
  double best_tps = -1;
  std::string last_reason = "no pool size admits a request";
  const uint32_t target = setup.batch_cap ? setup.batch_cap : pool_probe_requests_max;
  for (uint32_t d = 1; d <= setup.devices; ++d) {
    if (setup.devices % d) continue;
    auto s = with_pool_devices(setup, d);
    step_model sm(s);
    std::vector<step_request> dec;
    admission adm = sim_admission(*s, false, [&](const admission_candidate& c, const admission_grant& g) {
      std::vector<step_request> with = dec;
      with.push_back(step_of(c.request_id, g, c.prompt_tokens, false));
      return sm.run(with, {}).time_ns * 1e-6;
    });
    for (uint32_t i = 0; i < target; ++i) {
      const admission_verdict v =
          adm.try_admit(candidate_of(i + 1, setup.context_tokens, setup.sizing_output_tokens()));
      if (!v.admitted()) {
        last_reason = reason_text(v);
        break;
      }
      dec.push_back(step_of(i + 1, *adm.grant_of(i + 1), setup.context_tokens, false));
    }
    if (dec.empty()) continue;
    const double t = sm.run(dec, {}).time_ns;
    const double tps = t > 0 ? double(dec.size()) / (t * 1e-9) : 0;
    if (tps > best_tps * (1 + 1e-9)) best_tps = tps, best = d;
  }
  if (best == 0) return no_pool_admits(setup, last_reason);
  return best;
}

}  // namespace

result<uint32_t> choose_pool_devices(const sim_setup& setup) {
  if (setup.workload != workload_arrivals::closed) return choose_by_saturated_step(setup);
  auto c = choose_by_closed_runs(setup, {}, std::chrono::steady_clock::now());
  if (!c) return c.error();
  return c->pool_devices;
}

result<sim_result> simulate(std::shared_ptr<const sim_setup> setup, const sim_progress& progress,
                            timeline_trace* trace) {
  const auto wall0 = std::chrono::steady_clock::now();
  if (setup->pool_auto && setup->workload == workload_arrivals::closed) {
    auto c = choose_by_closed_runs(*setup, progress, wall0, trace);
    if (!c) return c.error();
    c->run.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return std::move(c->run);
  }
  if (setup->pool_auto) {
    auto d = choose_by_saturated_step(*setup);
    if (!d) return d.error();
    setup = with_pool_devices(*setup, *d);
  }
  return sim_driver(std::move(setup), progress, /*closed_ttft=*/true, trace).run(wall0);
}

// ---------------------------------------------------------------------------------------
// Output

namespace {
nlohmann::ordered_json num(double v) {
  if (!std::isfinite(v)) return nullptr;
  return v;
}
nlohmann::ordered_json breakdown_json(const step_breakdown& b) {
  return {{"gpu_dense", num(b.gpu_dense_ns)}, {"allreduce", num(b.allreduce_ns)},
          {"gpu_attention", num(b.gpu_attention_ns)}, {"link", num(b.link_ns)},
          {"device_scan", num(b.device_scan_ns)}, {"queueing", num(b.queueing_ns)},
          {"merge", num(b.merge_ns)}, {"lm_head", num(b.lm_head_ns)}, {"copy", num(b.copy_ns)}};
}
nlohmann::ordered_json energy_json(const step_energy& e, double static_j) {
  return {{"gpu_dense", num(e.gpu_dense_j)}, {"allreduce", num(e.allreduce_j)},
          {"lm_head", num(e.lm_head_j)}, {"gpu_attention", num(e.gpu_attention_j)},
          {"merge", num(e.merge_j)}, {"device", num(e.device_j)}, {"link", num(e.link_j)},
          {"hbm_write", num(e.hbm_write_j)}, {"static", num(static_j)}};
}
}  // namespace

namespace {
nlohmann::ordered_json power_peak_json(const std::vector<rated_power>& rows) {
  nlohmann::ordered_json out = nlohmann::ordered_json::array();
  for (const rated_power& r : rows)
    out.push_back({{"component", r.component}, {"modelled_w", num(r.peak_w)}, {"rating_key", r.rating_key},
                   {"rating_w", num(r.rating_w)}, {"what", r.peak_terms}});
  return out;
}
double peak_of(const std::vector<rated_power>& rows, size_t i) { return i < rows.size() ? rows[i].peak_w : 0; }
}  // namespace

std::string sim_result::to_json(bool with_series) const {
  nlohmann::ordered_json j;
  j["mode"] = mode;
  j["model"] = {{"name", model_name}, {"file", model_file}};
  j["hardware"] = {{"name", hardware_name}, {"file", hardware_file}, {"gpu_fabric_file", fabric_file}};
  nlohmann::ordered_json cal = nlohmann::ordered_json::object();
  for (const auto& [name, v] : calibration) cal[name] = {{"value", num(v.value)}, {"source", v.source}};
  j["calibration"] = {{"file", calibration_file}, {"values", cal}};
  j["workload"] = workload;
  j["context_tokens"] = context_tokens;
  j["budget_tokens"] = budget_tokens;
  j["selection"] = selection;
  // Only under the fraction policy, so the default report is unchanged.
  if (budget_fraction > 0) j["budget_policy"] = {{"name", "budget_fraction"}, {"fraction", budget_fraction}};
  j["gpus"] = gpus;
  j["tp"] = tp;
  j["pp"] = pp;
  j["pnm_devices"] = pnm_devices;
  j["expanders"] = expanders;
  j["pool_devices"] = pool_devices;
  j["pools"] = pools;
  j["head_groups"] = head_groups;
  j["sequence_shards"] = sequence_shards;
  j["batch"] = num(batch_mean);
  j["batch_peak"] = batch_peak;
  j["batch_limited_by"] = batch_limited_by;
  j["batch_limit_gpu_memory"] = batch_limit_gpu_memory;
  j["batch_limit_device_capacity"] = batch_limit_device_capacity;
  j["gpu_free_bytes"] = num(gpu_free_bytes);
  j["gpu_bytes_per_request"] = num(gpu_bytes_per_request);
  j["device_bytes_per_request"] = num(device_bytes_per_request);
  j["summaries_resident"] = summaries_resident;
  j["recall_cache"] = {{"policy", recall_cache}, {"capacity_tokens", recall_cache_tokens}};
  j["tokens_per_s"] = num(tokens_per_s);
  j["step_ms"] = num(step_ms);
  j["tpot_ms"] = num(tpot_ms);
  j["tpot_ms_p99"] = num(tpot_ms_p99);
  j["ttft_ms"] = num(ttft_ms);
  j["ttft_ms_p99"] = num(ttft_ms_p99);
  j["queueing_ms"] = num(queueing_ms);
  j["energy_j_per_token"] = num(energy_j_per_token);
  j["power_w"] = num(power_w);
  j["capital_usd"] = num(capital_usd);
  j["tokens_per_dollar"] = num(tokens_per_dollar);
  j["energy_all_in_j_per_token"] = num(energy_all_in_j_per_token);
  j["power_all_in_w"] = num(power_all_in_w);
  j["tokens_per_dollar_all_in"] = num(tokens_per_dollar_all_in);
  j["energy_all_in"] = {{"gpu_all_in_extra_j_per_token", num(gpu_all_in_extra_j_per_token)},
                        {"host_switch_j_per_token", num(host_switch_j_per_token)},
                        {"host_switch_power_w", num(host_switch_power_w)}};
  j["power_peak_w"] = power_peak_json(power_peak);
  j["breakdown_ms"] = breakdown_json(breakdown_ms);
  if (micro_batches > 1)
    j["micro_batches"] = {{"count", micro_batches},
                          {"serial_ms", num(micro_batch_serial_ms)},
                          {"overlap_ms", num(micro_batch_overlap_ms)}};
  j["energy_j_per_token_by"] = energy_json(energy_j_per_token_by, static_j_per_token);
  j["link_bytes_per_step"] = num(link_bytes_per_step);
  j["device_bytes_per_step"] = num(device_bytes_per_step);
  j["device_busy_fraction"] = num(device_busy_fraction);
  j["link_busy_fraction"] = num(link_busy_fraction);
  j["decode_steps"] = decode_steps;
  j["tokens_out"] = tokens_out;
  j["requests"] = {{"completed", completed}, {"refused", refused}, {"unfinished", unfinished}};
  j["simulated_s"] = num(simulated_s);
  j["wall_s"] = num(wall_s);
  if (with_series) {
    nlohmann::ordered_json rs = nlohmann::ordered_json::array();
    for (const auto& r : requests)
      rs.push_back({{"id", r.id}, {"arrival_s", num(r.arrival_s)}, {"prompt_tokens", r.prompt_tokens},
                    {"output_tokens", r.output_tokens}, {"generated", r.generated},
                    {"refused", r.refused}, {"refusal", r.refusal},
                    {"queueing_ms", num(r.queueing_ms())}, {"ttft_ms", num(r.ttft_ms())},
                    {"tpot_ms", num(r.tpot_ms())}, {"finish_s", num(r.finish_s)}});
    j["request_outcomes"] = rs;
    nlohmann::ordered_json bs = nlohmann::ordered_json::array();
    for (const auto& b : batch_series) bs.push_back({num(b.t_s), b.decode_batch, b.prefill_tokens});
    j["batch_series"] = {{"columns", {"t_s", "decode_batch", "prefill_tokens"}}, {"rows", bs}};
  }
  j["config"] = config_json.empty() ? nlohmann::ordered_json::object()
                                    : nlohmann::ordered_json::parse(config_json);
  return j.dump(2);
}

std::string sim_result::csv_header() {
  return "mode,model,model_file,hardware_file,calibration,context_tokens,budget_tokens,batch,"
         "batch_limited_by,batch_limit_gpu_memory,batch_limit_device_capacity,gpus,tp,pp,"
         "pnm_devices,expanders,pool_devices,pools,head_groups,sequence_shards,tokens_per_s,"
         "tpot_ms,ttft_ms,queueing_ms,energy_j_per_token,tokens_per_dollar,power_w,capital_usd,"
         "step_ms,bd_gpu_dense_ms,bd_allreduce_ms,bd_gpu_attention_ms,bd_link_ms,bd_device_scan_ms,"
         "bd_queueing_ms,bd_merge_ms,bd_lm_head_ms,bd_copy_ms,e_gpu_dense_j,e_allreduce_j,e_lm_head_j,"
         "e_gpu_attention_j,e_merge_j,e_device_j,e_link_j,e_hbm_write_j,e_static_j,"
         "link_bytes_per_step,device_bytes_per_step,device_busy_fraction,link_busy_fraction,"
         "summaries_resident,decode_steps,wall_s,recall_cache,recall_cache_tokens,"
         "energy_all_in_j_per_token,power_all_in_w,"
         "tokens_per_dollar_all_in,gpu_power_peak_w,gpu_all_in_power_peak_w,device_power_peak_w";
}

std::string sim_result::csv_row() const {
  std::ostringstream os;
  os.precision(8);
  auto cal_src = calibration_file.empty() ? std::string("config") : calibration_file;
  const auto& b = breakdown_ms;
  const auto& e = energy_j_per_token_by;
  os << mode << ',' << model_name << ',' << model_file << ',' << hardware_file << ',' << cal_src << ','
     << context_tokens << ',' << budget_tokens << ',' << batch_mean << ',' << batch_limited_by << ','
     << batch_limit_gpu_memory << ',' << batch_limit_device_capacity << ',' << gpus << ',' << tp << ','
     << pp << ',' << pnm_devices << ',' << expanders << ',' << pool_devices << ',' << pools << ','
     << head_groups << ',' << sequence_shards << ',' << tokens_per_s << ',' << tpot_ms << ','
     << ttft_ms << ',' << queueing_ms << ',' << energy_j_per_token << ',' << tokens_per_dollar << ','
     << power_w << ',' << capital_usd << ',' << step_ms << ',' << b.gpu_dense_ns << ','
     << b.allreduce_ns << ',' << b.gpu_attention_ns << ',' << b.link_ns << ',' << b.device_scan_ns
     << ',' << b.queueing_ns << ',' << b.merge_ns << ',' << b.lm_head_ns << ',' << b.copy_ns << ',' << e.gpu_dense_j
     << ',' << e.allreduce_j << ',' << e.lm_head_j << ',' << e.gpu_attention_j << ',' << e.merge_j
     << ',' << e.device_j << ',' << e.link_j << ',' << e.hbm_write_j << ',' << static_j_per_token
     << ',' << link_bytes_per_step << ',' << device_bytes_per_step << ',' << device_busy_fraction
     << ',' << link_busy_fraction << ',' << (summaries_resident ? 1 : 0) << ',' << decode_steps
     << ',' << wall_s << ',' << recall_cache << ',' << recall_cache_tokens
     << ',' << energy_all_in_j_per_token << ',' << power_all_in_w << ','
     << tokens_per_dollar_all_in << ',' << peak_of(power_peak, 0) << ',' << peak_of(power_peak, 1) << ','
     << peak_of(power_peak, 2);
  return os.str();
}

std::string sim_result::to_table() const {
  std::ostringstream os;
  char line[256];
  auto row = [&](const char* name, const std::string& v) {
    std::snprintf(line, sizeof line, "  %-34s %s\n", name, v.c_str());
    os << line;
  };
  auto f = [](const char* fmt, double v) {
    char b[96];
    std::snprintf(b, sizeof b, fmt, v);
    return std::string(b);
  };
  os << "pnmkv sim — " << mode << " (" << workload << " workload)\n";
  row("model", model_name + " (" + model_file + ")");
  row("hardware", hardware_name + " (" + hardware_file + ")");
  row("GPU fabric", fabric_file);
  row("calibration", calibration_file.empty() ? std::string("config sim.* values") : calibration_file);
  for (const auto& [name, v] : calibration) row(("  " + name).c_str(), f("%.4g", v.value) + " (" + v.source + ")");
  row("context / budget", std::to_string(context_tokens) + " / " + std::to_string(budget_tokens) + " tokens" +
                              (budget_fraction > 0 ? " (selection.budget_fraction = " + f("%g", budget_fraction) + ")" : ""));
  row("selection", selection);
  row("GPUs (tp x pp)", std::to_string(gpus) + " (" + std::to_string(tp) + " x " + std::to_string(pp) + ")");
  if (mode == to_string(run_mode::gpu_only))
    row("memory devices", "none (the KV is in GPU HBM)");
  else
    row(mode == to_string(run_mode::baseline) ? "expanders / pool" : "PNM devices / pool",
      std::to_string(mode == to_string(run_mode::baseline) ? expanders : pnm_devices) + " / " + std::to_string(pool_devices) +
          " (" + std::to_string(pools) + " pools, h=" + std::to_string(head_groups) + " x s=" +
          std::to_string(sequence_shards) + ")");
  row("batch mean / peak", f("%.1f", batch_mean) + " / " + std::to_string(batch_peak) +
                               " (limited by " + batch_limited_by + ")");
  row("batch limit: GPU memory / devices", std::to_string(batch_limit_gpu_memory) + " / " +
                                               std::to_string(batch_limit_device_capacity));
  if (mode == to_string(run_mode::baseline))
    row("recall cache", recall_cache == "none" ? std::string("none (every selected page recalled every step)")
                                               : recall_cache + ", " + std::to_string(recall_cache_tokens) +
                                                     " tokens per (request, layer, KV head)");
  row("throughput", f("%.1f tokens/s", tokens_per_s));
  row("step / TPOT / TTFT", f("%.3f", step_ms) + " / " + f("%.3f", tpot_ms) + " / " + f("%.1f ms", ttft_ms));
  row("queueing delay (mean)", f("%.1f ms", queueing_ms));
  const auto& b = breakdown_ms;
  row("step: gpu dense / allreduce", f("%.3f", b.gpu_dense_ns) + " / " + f("%.3f ms", b.allreduce_ns));
  row("step: gpu attention / merge", f("%.3f", b.gpu_attention_ns) + " / " + f("%.3f ms", b.merge_ns));
  row("step: link / device / queueing", f("%.3f", b.link_ns) + " / " + f("%.3f", b.device_scan_ns) +
                                            " / " + f("%.3f ms", b.queueing_ns));
  row("step: lm head / steady copies", f("%.3f", b.lm_head_ns) + " / " + f("%.3f ms", b.copy_ns));
  row("energy: component-level", f("%.4f J/token", energy_j_per_token) + f(" (%.0f W average)", power_w));
  row("energy: all-in", f("%.4f J/token", energy_all_in_j_per_token) + f(" (%.0f W average; ", power_all_in_w) +
                            f("GPU HBM all-in +%.4f J, ", gpu_all_in_extra_j_per_token) +
                            f("host + switch %.0f W", host_switch_power_w) + f(" = %.4f J)", host_switch_j_per_token));
  for (const rated_power& r : power_peak)
    row(("peak power: " + r.component).c_str(),
        f("%.1f W", r.peak_w) + " of " + r.rating_key + f(" = %.0f W", r.rating_w) + " (" + r.peak_terms + ")");
  row("capital / cost efficiency", f("$%.0f", capital_usd) + f(" / %.3e tokens/$", tokens_per_dollar) +
                                       f(" (all-in power: %.3e)", tokens_per_dollar_all_in));
  row("link / device bytes per step", f("%.3e", link_bytes_per_step) + " / " + f("%.3e", device_bytes_per_step));
  row("busiest device / link busy", f("%.2f", device_busy_fraction) + " / " + f("%.2f", link_busy_fraction));
  row("requests done / refused / unfinished", std::to_string(completed) + " / " + std::to_string(refused) +
                                                  " / " + std::to_string(unfinished));
  row("simulated / wall", f("%.3f s", simulated_s) + " / " + f("%.3f s", wall_s));
  return os.str();
}

}  // namespace pnmkv
