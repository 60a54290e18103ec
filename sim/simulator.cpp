// The discrete-event simulator (see simulator.hpp). Events are arrivals and step ends; the
// batch changes only at step boundaries (continuous batching). Admission is FIFO with
// head-of-line blocking: a request that does not fit waits for others to leave, and is
// refused only when it cannot fit an otherwise empty system.
#include "sim/simulator.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <deque>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <queue>
#include <random>
#include <sstream>

#include "schedulers/head_groups.hpp"
#include "model/work_sizes.hpp"

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
  q.steady_tokens = s.mode == run_mode::png_kv ? steady_set_pages(s) * s.page_size_tokens : 0;
  q.page_size_tokens = s.page_size_tokens;
  q.summary_elem_bytes = s.summary_elem_bytes;
  q.tp = s.gpus();  // every GPU of every stage holds its share of weights and buffers
  q.summaries_resident = summaries_resident;
  return q;
}

uint64_t steady_set_pages(const sim_setup& s) {
  if (s.mode != run_mode::png_kv) return 0;
  return std::max<uint64_t>(
      work::pngkv_budget_split(s.budget_pages(), s.cal.steady_hit_fraction.value).gpu_pages,
      uint64_t(std::llround(s.cal.steady_set_fraction.value * double(s.budget_pages()))));
}

sim_gpu_memory gpu_memory_of(const sim_setup& s) {
  sim_gpu_memory g;
  const gpu_memory_use u = gpu_memory(s.model, s.hw, gpu_query(s, s.context_tokens, true, 0));
  g.usable_bytes = u.capacity_bytes;
  g.weight_bytes = u.weights_bytes;
  // Open workloads prefill next to the batch: one chunk's activations stay reserved.
  if (s.workload != sim_workload::closed) {
    gpu_memory_query q = gpu_query(s, s.context_tokens, true, uint32_t(s.prefill_chunk_tokens));
    q.mode = run_mode::pnm_kv;
    g.prefill_working_bytes = gpu_memory(s.model, s.hw, q).activations_bytes;
  }
  return g;
}

double gpu_bytes_per_request(const sim_setup& s, uint64_t final_tokens, bool summaries_resident) {
  const gpu_memory_use u = gpu_memory(s.model, s.hw, gpu_query(s, final_tokens, summaries_resident, 1));
  double bytes = u.total_bytes() - u.weights_bytes;
  if (s.mode == run_mode::baseline && s.recall_reuse && s.model.layers > 2)  // every layer's recalls kept
    bytes += u.recall_bytes / 2.0 * double(s.model.layers - 2);
  return bytes;
}

double device_bytes_per_request(const sim_setup& s, uint64_t final_tokens) {
  placement_request pr = s.placement;
  const uint64_t pages = (final_tokens + s.page_size_tokens - 1) / s.page_size_tokens;
  return double(shard_bytes_per_layer_head(pr, pages)) * s.model.layers * s.model.kv_heads *
         std::max<uint32_t>(1, pr.replication);
}

// ---------------------------------------------------------------------------------------
// Admission

namespace {

struct live_request {
  request_outcome out;
  bool prefilled = false;       // decoding
  uint64_t prefill_done = 0;    // prompt tokens prefilled so far
  uint64_t decode_steps = 0;    // decode steps done
  bool summaries_resident = true;
  double gpu_bytes = 0;
  uint32_t pool = 0;
  request_placement placement;
  bool first_decode_pending = true;
};

class admission {
 public:
  explicit admission(const sim_setup& s, bool check_gpu = true) : s_(s), check_gpu_(check_gpu) {
    free_gpu_ = gpu_memory_of(s).free_bytes();
    const uint32_t n = s.devices / s.pool_devices;
    pools_.resize(n);
    for (uint32_t p = 0; p < n; ++p)
      for (uint32_t i = 0; i < s.pool_devices; ++i) {
        pools_[p].device_ids.push_back(p * s.pool_devices + i);
        pools_[p].free_bytes.push_back(uint64_t(s.device_capacity_bytes));
        pools_[p].failure_domain.push_back(p * s.pool_devices + i);
      }
  }

  // Why a request cannot be admitted now ("" when it was).
  std::string try_admit(live_request& r, uint32_t active) {
    if (s_.batch_cap && active >= s_.batch_cap) return "batch_max";
    const uint64_t final_tokens = r.out.prompt_tokens + std::max<uint64_t>(1, r.out.output_tokens - 1);
    // Placement first: it fixes the sequence shards the GPU buffers depend on.
    placement_request pr = s_.placement;
    pr.request_id = r.out.id;
    pr.context_tokens = r.out.prompt_tokens;
    // Tokens appended while decoding: every generated token but the last.
    pr.decode_tokens = std::max<uint64_t>(1, r.out.output_tokens - 1);
    std::vector<uint32_t> order(pools_.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::vector<double> free_sum(pools_.size(), 0);
    for (uint32_t i = 0; i < pools_.size(); ++i)
      for (uint64_t b : pools_[i].free_bytes) free_sum[i] += double(b);
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return free_sum[a] > free_sum[b]; });
    int chosen = -1;
    result<request_placement> pl = status{errc::capacity, "no pool"};
    pool_state trial;
    for (uint32_t i : order) {
      trial = pools_[i];
      if (s_.placement.head_groups == 0) {  // h × s from the cost model, as the live coordinator
        head_group_query hq;
        hq.pool_devices = uint32_t(trial.device_ids.size() / std::max<uint32_t>(1, s_.placement.replication));
        hq.context_tokens = pr.context_tokens + pr.decode_tokens;
        hq.budget_tokens = s_.budget_tokens;
        hq.page_size_tokens = s_.page_size_tokens;
        hq.summary_elem_bytes = s_.summary_elem_bytes;
        hq.cross_shard = s_.exact_cross_shard ? cross_shard_selection::exact : cross_shard_selection::local;
        pr.head_groups = choose_head_groups(*s_.costs, hq).head_groups;
      }
      pl = place_request(pr, trial);
      if (pl) {
        chosen = int(i);
        break;
      }
      if (pl.error().code() != errc::capacity) return "placement: " + pl.error().message();
    }
    if (chosen < 0) return "device_capacity";
    bool resident = s_.summaries != summary_residence::link;
    double need = gpu_bytes_per_request(s_, final_tokens, resident);
    if (s_.mode == run_mode::baseline && resident && need > free_gpu_ &&
        s_.summaries == summary_residence::auto_fit) {
      resident = false;
      need = gpu_bytes_per_request(s_, final_tokens, false);
    }
    if (check_gpu_ && need > free_gpu_) return "gpu_memory";
    pools_[size_t(chosen)] = std::move(trial);
    free_gpu_ -= need;
    r.gpu_bytes = need;
    r.summaries_resident = resident;
    r.pool = uint32_t(chosen);
    r.placement = std::move(pl).value();
    return "";
  }

  void release(const live_request& r) {
    free_gpu_ += r.gpu_bytes;
    pool_state& p = pools_[r.pool];
    for (const auto& sh : r.placement.shards) {
      std::vector<uint32_t> devs{sh.device_id};
      devs.insert(devs.end(), sh.replica_device_ids.begin(), sh.replica_device_ids.end());
      for (uint32_t d : devs) p.free_bytes[d - r.pool * s_.pool_devices] += sh.bytes_modelled;
    }
  }

  double free_gpu_bytes() const { return free_gpu_; }

 private:
  const sim_setup& s_;
  bool check_gpu_ = true;
  double free_gpu_ = 0;
  std::vector<pool_state> pools_;
};

std::vector<step_request> decode_set(std::vector<live_request*>& active) {
  std::vector<step_request> out;
  out.reserve(active.size());
  for (live_request* r : active) {
    if (!r->prefilled) continue;
    step_request q;
    q.id = r->out.id;
    q.pool = r->pool;
    q.placement = &r->placement;
    q.seq_tokens = r->out.prompt_tokens + r->decode_steps;
    q.summaries_resident = r->summaries_resident;
    q.first_decode_step = r->first_decode_pending;
    out.push_back(q);
  }
  return out;
}

// Time to prefill one request of `tokens` tokens on an idle system (its TTFT there).
double idle_prefill_s(const std::shared_ptr<const sim_setup>& s, step_model& sm, uint64_t tokens) {
  admission adm(*s);
  live_request r;
  r.out.id = 1;
  r.out.prompt_tokens = tokens;
  r.out.output_tokens = s->sizing_output_tokens();
  if (!adm.try_admit(r, 0).empty()) return 0;
  double t_ns = 0;
  for (uint64_t pos = 0; pos < tokens; pos += s->prefill_chunk_tokens) {
    prefill_piece p;
    p.request_id = 1;
    p.placement = &r.placement;
    p.position = pos;
    p.tokens = std::min<uint64_t>(s->prefill_chunk_tokens, tokens - pos);
    p.completes = pos + p.tokens >= tokens;
    t_ns += sm.run({}, {p}).time_ns;
  }
  return t_ns * 1e-9;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Pool choice

result<uint32_t> choose_pool_devices(const sim_setup& setup) {
  uint32_t best = 0;
  double best_tps = -1;
  std::string last_reason = "no pool size admits a request";
  for (uint32_t d = 1; d <= setup.devices; ++d) {
    if (setup.devices % d) continue;
    auto s = std::make_shared<sim_setup>(setup);
    s->pool_devices = d;
    s->pool_auto = false;
    admission adm(*s);
    const uint32_t target = setup.workload == sim_workload::closed && !setup.batch_max_policy
                                ? setup.batch
                                : (setup.batch_cap ? setup.batch_cap : 100000u);
    std::vector<live_request> reqs;
    reqs.reserve(std::min<uint32_t>(target, 100000u));
    for (uint32_t i = 0; i < target; ++i) {
      live_request r;
      r.out.id = i + 1;
      r.out.prompt_tokens = setup.context_tokens;
      r.out.output_tokens = setup.sizing_output_tokens();
      std::string why = adm.try_admit(r, i);
      if (!why.empty()) {
        last_reason = why;
        break;
      }
      r.prefilled = true;
      reqs.push_back(std::move(r));
    }
    if (reqs.empty()) continue;
    std::vector<live_request*> act;
    for (auto& r : reqs) act.push_back(&r);
    step_model sm(s);
    auto dec = decode_set(act);
    for (auto& q : dec) q.first_decode_step = false;
    const double t = sm.run(dec, {}).time_ns;
    const double tps = t > 0 ? double(reqs.size()) / (t * 1e-9) : 0;
    if (tps > best_tps * (1 + 1e-9)) best_tps = tps, best = d;
  }
  if (best == 0)
    return status{errc::capacity, "no pool size of the " + std::to_string(setup.devices) +
                                      " devices admits a request of " +
                                      std::to_string(setup.context_tokens) + " tokens (" + last_reason + ")"};
  return best;
}

// ---------------------------------------------------------------------------------------
// Simulation

result<sim_result> simulate(std::shared_ptr<const sim_setup> setup, const sim_progress& progress) {
  const auto wall0 = std::chrono::steady_clock::now();
  if (setup->pool_auto) {
    auto d = choose_pool_devices(*setup);
    if (!d) return d.error();
    auto s = std::make_shared<sim_setup>(*setup);
    s->pool_devices = *d;
    s->pool_auto = false;
    setup = s;
  }
  const sim_setup& S = *setup;
  sim_result res;
  res.mode = to_string(S.mode);
  res.model_name = S.model.name;
  res.model_file = S.model.file;
  res.hardware_name = S.hw.name;
  res.hardware_file = S.hw.file;
  res.fabric_file = S.fabric.file;
  res.calibration_file = S.cal.file;
  for (const auto& [name, v] : S.cal.entries()) res.calibration.emplace_back(name, *v);
  res.config_json = S.cfg.to_json();
  res.workload = S.workload == sim_workload::closed ? "closed" : S.workload == sim_workload::poisson ? "poisson" : "trace";
  res.context_tokens = S.context_tokens;
  res.budget_tokens = S.budget_tokens;
  res.gpus = S.gpus();
  res.tp = S.tp;
  res.pp = S.pp;
  res.pnm_devices = S.pnm_devices();
  res.expanders = S.expanders();
  res.pool_devices = S.pool_devices;
  res.pools = S.devices / S.pool_devices;

  step_model sm(setup);
  admission adm(S);
  const sim_gpu_memory gm = gpu_memory_of(S);
  // The link and device budget: a request joins only if the predicted decode step with it
  // stays within sim.tpot_ms_max (one step of the model per admission; off when 0).
  auto predicted_ok = [&](std::vector<step_request>& dec, const live_request& cand) {
    step_request q;
    q.id = cand.out.id;
    q.pool = cand.pool;
    q.placement = &cand.placement;
    q.seq_tokens = cand.out.prompt_tokens;
    q.summaries_resident = cand.summaries_resident;
    dec.push_back(q);
    return sm.run(dec, {}).time_ns * 1e-6 <= S.tpot_ms_max;
  };
  auto as_step_request = [](const live_request& r) {
    step_request q;
    q.id = r.out.id;
    q.pool = r.pool;
    q.placement = &r.placement;
    q.seq_tokens = r.out.prompt_tokens + r.decode_steps;
    q.summaries_resident = r.summaries_resident;
    return q;
  };
  auto tpot_ok = [&](const std::vector<live_request>& admitted, const live_request& cand) {
    if (S.tpot_ms_max <= 0) return true;
    std::vector<step_request> dec;
    for (const auto& r : admitted)
      if (!r.out.refused) dec.push_back(as_step_request(r));
    return predicted_ok(dec, cand);
  };
  auto tpot_ok_active = [&](const std::vector<live_request*>& act, const live_request& cand) {
    if (S.tpot_ms_max <= 0) return true;
    std::vector<step_request> dec;
    for (const live_request* r : act) dec.push_back(as_step_request(*r));
    return predicted_ok(dec, cand);
  };
  res.gpu_free_bytes = gm.free_bytes();
  const uint64_t final_tokens = S.context_tokens + std::max<uint64_t>(1, S.sizing_output_tokens() - 1);  // as placed
  res.device_bytes_per_request = device_bytes_per_request(S, final_tokens);

  // Analytic limits at the configured context (for the max-batch table).
  {
    admission cap(S, /*check_gpu=*/false);
    uint32_t n = 0;
    const uint32_t limit = S.batch_cap ? S.batch_cap : 1000000u;
    for (; n < limit; ++n) {
      live_request r;
      r.out.id = n + 1;
      r.out.prompt_tokens = S.context_tokens;
      r.out.output_tokens = S.sizing_output_tokens();
      if (!cap.try_admit(r, 0).empty()) break;
    }
    res.batch_limit_device_capacity = n;
    bool resident = S.summaries != summary_residence::link;
    double per = gpu_bytes_per_request(S, final_tokens, resident);
    if (S.mode == run_mode::baseline && S.summaries == summary_residence::auto_fit && per > res.gpu_free_bytes) {
      resident = false;
      per = gpu_bytes_per_request(S, final_tokens, false);
    }
    res.gpu_bytes_per_request = per;
    res.summaries_resident = resident;
    res.batch_limit_gpu_memory =
        res.gpu_free_bytes > 0 ? uint32_t(std::min(1e9, std::floor(res.gpu_free_bytes / per))) : 0;
  }

  // Requests.
  std::vector<live_request> reqs;
  if (S.workload == sim_workload::closed) {
    uint32_t n = S.batch_max_policy ? (S.batch_cap ? S.batch_cap : 1000000u) : S.batch;
    // baseline, summaries resident when they fit: the max batch is the one where they all
    // still fit (past it every further request would read its summaries over the link).
    bool resident_cap = false;
    if (S.mode == run_mode::baseline && S.batch_max_policy && S.summaries == summary_residence::auto_fit &&
        res.summaries_resident && res.batch_limit_gpu_memory < n) {
      n = std::max<uint32_t>(1, res.batch_limit_gpu_memory);
      resident_cap = true;
    }
    reqs.reserve(std::min<uint32_t>(n, 1u << 16));
    for (uint32_t i = 0; i < n; ++i) {
      live_request r;
      r.out.id = i + 1;
      // Prefilled before t = 0: the first token came out of the prefill, then run.steps
      // decode steps append and produce one token each (as the live cluster's run.steps).
      r.out.prompt_tokens = S.context_tokens;
      r.out.output_tokens = uint64_t(S.steps) + 1;
      r.out.generated = 1;
      r.out.arrival_s = 0;
      std::string why = adm.try_admit(r, i);
      if (why.empty() && !tpot_ok(reqs, r)) {
        adm.release(r);
        why = "tpot";
      }
      if (!why.empty()) {
        res.batch_limited_by = why;
        if (S.batch_max_policy) break;
        r.out.refused = true;
        r.out.refusal = why;
        reqs.push_back(std::move(r));
        continue;
      }
      r.out.admitted_s = 0;
      r.out.first_token_s = 0;
      r.prefilled = true;
      // Steady state: png-kv's first steady set was copied with the warm-up, like the prefill.
      r.first_decode_pending = false;
      r.prefill_done = r.out.prompt_tokens;
      reqs.push_back(std::move(r));
    }
    if (res.batch_limited_by.empty())
      res.batch_limited_by = !S.batch_max_policy ? "config"
                             : resident_cap      ? "gpu_memory"
                             : S.batch_cap       ? "batch_max"
                                                 : "none";
  } else {
    std::vector<trace_row> rows;
    if (S.workload == sim_workload::trace) {
      auto t = load_trace(S.trace_file);
      if (!t) return t.error();
      rows = std::move(t).value();
    } else {
      rows = poisson_arrivals(S.seed, S.requests, S.arrival_rate_per_s, S.context_tokens,
                              S.prompt_spread_fraction, S.output_tokens);
    }
    reqs.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      reqs[i].out.id = i + 1;
      reqs[i].out.arrival_s = rows[i].arrival_s;
      reqs[i].out.prompt_tokens = rows[i].prompt_tokens;
      reqs[i].out.output_tokens = rows[i].output_tokens;
    }
    res.batch_limited_by = "open workload";
  }

  // Event loop. Arrivals are pre-sorted; the queue holds them and step ends.
  struct event {
    double t_s;
    int kind;  // 0 arrival, 1 step end
    size_t index;
    // Ties: arrivals before step ends, then requests in id order (first come, first served
    // among simultaneous arrivals, as the live GPU host).
    bool operator>(const event& o) const {
      return t_s != o.t_s ? t_s > o.t_s : kind != o.kind ? kind > o.kind : index > o.index;
    }
  };
  std::priority_queue<event, std::vector<event>, std::greater<event>> events;
  std::deque<size_t> waiting;
  std::vector<live_request*> active;
  const bool closed = S.workload == sim_workload::closed;
  if (closed) {
    for (auto& r : reqs)
      if (!r.out.refused) active.push_back(&r);
  } else {
    for (size_t i = 0; i < reqs.size(); ++i) events.push({reqs[i].out.arrival_s, 0, i});
  }
  const uint64_t total_work = closed ? S.steps : reqs.size();
  uint64_t done_work = 0, reported = 0;

  double t_s = 0;
  double busy_s = 0;
  step_breakdown crit_sum;
  step_energy energy_sum;
  double decode_time_s = 0, link_bytes_sum = 0, device_bytes_sum = 0, dev_busy_ns = 0, link_busy_ns = 0;
  double batch_sum = 0;
  std::vector<batch_sample> series;
  uint64_t tokens_out = 0;

  step_result last_step;
  std::vector<uint64_t> reuse_ids;
  uint32_t reuse_left = 0;

  auto finish = [&](live_request* r) {
    r->out.finish_s = t_s;
    adm.release(*r);
    ++res.completed;
    ++done_work;
  };

  while (true) {
    // Admit at the step boundary.
    if (!closed) {
      while (!events.empty() && events.top().kind == 0 && events.top().t_s <= t_s) {
        waiting.push_back(events.top().index);
        events.pop();
      }
      while (!waiting.empty()) {
        live_request& r = reqs[waiting.front()];
        std::string why = adm.try_admit(r, uint32_t(active.size()));
        if (why.empty() && !tpot_ok_active(active, r)) {
          adm.release(r);
          why = "tpot";
        }
        if (why.empty()) {
          r.out.admitted_s = t_s;
          active.push_back(&r);
          waiting.pop_front();
          continue;
        }
        if (active.empty()) {  // cannot fit an empty system: refuse for good
          r.out.refused = true;
          r.out.refusal = why;
          ++done_work;
          waiting.pop_front();
          continue;
        }
        break;
      }
    }
    // Form the step: every decoding request, and prefill chunks up to the chunk size.
    std::vector<step_request> dec = decode_set(active);
    std::vector<prefill_piece> pf;
    uint64_t chunk_left = S.prefill_chunk_tokens;
    for (live_request* r : active) {
      if (r->prefilled || chunk_left == 0) continue;
      prefill_piece p;
      p.request_id = r->out.id;
      p.placement = &r->placement;
      p.position = r->prefill_done;
      p.tokens = std::min(chunk_left, r->out.prompt_tokens - r->prefill_done);
      p.completes = r->prefill_done + p.tokens >= r->out.prompt_tokens;
      chunk_left -= p.tokens;
      pf.push_back(p);
    }
    if (dec.empty() && pf.empty()) {
      if (closed || events.empty()) break;
      t_s = std::max(t_s, events.top().t_s);  // idle until the next arrival
      continue;
    }
    if (closed && done_work >= total_work) break;
    if (t_s > S.duration_s_max) break;

    // A step's result is reused while the batch is unchanged, for at most step_reuse_steps
    // steps: each step adds one token per request, i.e. at most one more K/V row attended
    // and one more summary scanned per head, so the work of a head (at least the budget's
    // rows) changes by less than step_reuse_steps / budget_tokens.
    bool reuse = S.step_reuse_steps > 1 && pf.empty() && reuse_left > 0 && dec.size() == reuse_ids.size();
    for (size_t i = 0; reuse && i < dec.size(); ++i)
      reuse = dec[i].id == reuse_ids[i] && !dec[i].first_decode_step;
    if (!reuse) {
      last_step = sm.run(dec, pf);
      reuse_ids.clear();
      for (const auto& q : dec) reuse_ids.push_back(q.id);
      reuse_left = pf.empty() ? S.step_reuse_steps - 1 : 0;
    } else {
      --reuse_left;
    }
    const step_result& sr = last_step;
    const double dt = sr.time_ns * 1e-9;
    t_s += dt;
    busy_s += dt;
    energy_sum += sr.energy;
    if (!dec.empty()) {
      crit_sum += sr.crit;
      decode_time_s += dt;
      ++res.decode_steps;
      batch_sum += double(dec.size());
      res.batch_peak = std::max<uint32_t>(res.batch_peak, uint32_t(dec.size()));
      link_bytes_sum += sr.link_bytes;
      device_bytes_sum += sr.device_bytes;
      dev_busy_ns += sr.device_busy_ns_max;
      link_busy_ns += sr.link_busy_ns_max;
    }
    if (series.size() < 4'000'000) series.push_back({t_s, uint32_t(dec.size()), sr.prefill_tokens});

    // Apply the step.
    std::vector<live_request*> still;
    still.reserve(active.size());
    size_t pi = 0;
    for (live_request* r : active) {
      if (r->prefilled) {
        ++r->decode_steps;
        ++r->out.generated;
        ++tokens_out;
        r->first_decode_pending = false;
        const uint64_t target = closed ? r->out.output_tokens : r->out.output_tokens;
        if (r->out.generated >= target) {
          finish(r);
          continue;
        }
      } else if (pi < pf.size() && pf[pi].request_id == r->out.id) {
        r->prefill_done += pf[pi].tokens;
        if (pf[pi].completes) {
          r->prefilled = true;
          r->out.first_token_s = t_s;
          r->out.generated = 1;
          ++tokens_out;
          if (r->out.generated >= r->out.output_tokens) {
            ++pi;
            finish(r);
            continue;
          }
        }
        ++pi;
      }
      still.push_back(r);
    }
    active.swap(still);
    if (closed) done_work = res.decode_steps;
    if (progress && (done_work - reported >= std::max<uint64_t>(1, total_work / 100) || done_work == total_work)) {
      reported = done_work;
      progress(done_work, total_work);
    }
  }
  res.unfinished = active.size();
  res.simulated_s = t_s;
  res.tokens_out = tokens_out;

  // Per request: the same summary as the live cluster's (schedulers/serving.hpp).
  res.requests.reserve(reqs.size());
  for (auto& r : reqs) res.requests.push_back(r.out);
  const serving_summary sv = summarise(res.requests, {});
  res.refused = sv.refused;
  if (closed) {
    // Every request is prefilled at t = 0; TTFT is that of one request on an idle system.
    const double t = idle_prefill_s(setup, sm, S.context_tokens) * 1e3;
    res.ttft_ms = res.ttft_ms_p99 = t;
  } else {
    res.ttft_ms = sv.ttft_ms_mean;
    res.ttft_ms_p99 = sv.ttft_ms_p99;
  }
  res.tpot_ms = sv.tpot_ms_mean;
  res.tpot_ms_p99 = sv.tpot_ms_p99;
  res.queueing_ms = sv.queueing_ms_mean;

  // Totals.
  const double n_steps = std::max<double>(1, double(res.decode_steps));
  res.batch_mean = batch_sum / n_steps;
  res.step_ms = decode_time_s * 1e3 / n_steps;
  res.breakdown_ms = crit_sum.scaled(1e-6 / n_steps);
  res.link_bytes_per_step = link_bytes_sum / n_steps;
  res.device_bytes_per_step = device_bytes_sum / n_steps;
  res.device_busy_fraction = decode_time_s > 0 ? dev_busy_ns * 1e-9 / decode_time_s : 0;
  res.link_busy_fraction = decode_time_s > 0 ? link_busy_ns * 1e-9 / decode_time_s : 0;
  const double static_w = S.costs->static_power_w(S.gpus(), S.pnm_devices(), S.expanders());
  const double elapsed = closed ? busy_s : t_s;
  const double static_j = static_w * elapsed;
  const double energy = energy_sum.sum() + static_j;
  const double tok = std::max<double>(1, double(tokens_out));
  res.tokens_per_s = elapsed > 0 ? double(tokens_out) / elapsed : 0;
  res.energy_j_per_token = tokens_out ? energy / tok : 0;
  res.energy_j_per_token_by = energy_sum.scaled(1.0 / tok);
  res.static_j_per_token = tokens_out ? static_j / tok : 0;
  res.power_w = elapsed > 0 ? energy / elapsed : 0;
  res.capital_usd = S.costs->capital_usd(S.gpus(), S.pnm_devices(), S.expanders());
  res.tokens_per_dollar = S.costs->tokens_per_dollar(res.tokens_per_s, res.power_w, res.capital_usd);
  for (auto& r : reqs)
    if (r.placement.head_groups) {
      res.head_groups = r.placement.head_groups;
      res.sequence_shards = r.placement.sequence_shards;
      break;
    }

  // Batch series, thinned evenly.
  const size_t keep = S.batch_series_points_max;
  if (series.size() > keep) {
    std::vector<batch_sample> thin;
    for (size_t i = 0; i < keep; ++i) thin.push_back(series[i * (series.size() - 1) / (keep - 1)]);
    series.swap(thin);
  }
  res.batch_series = std::move(series);
  res.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  if (progress && reported != total_work) progress(total_work, total_work);
  return res;
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
  j["breakdown_ms"] = breakdown_json(breakdown_ms);
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
         "summaries_resident,decode_steps,wall_s";
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
     << ',' << wall_s;
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
  row("context / budget", std::to_string(context_tokens) + " / " + std::to_string(budget_tokens) + " tokens");
  row("GPUs (tp x pp)", std::to_string(gpus) + " (" + std::to_string(tp) + " x " + std::to_string(pp) + ")");
  row(mode == "baseline" ? "expanders / pool" : "PNM devices / pool",
      std::to_string(mode == "baseline" ? expanders : pnm_devices) + " / " + std::to_string(pool_devices) +
          " (" + std::to_string(pools) + " pools, h=" + std::to_string(head_groups) + " x s=" +
          std::to_string(sequence_shards) + ")");
  row("batch mean / peak", f("%.1f", batch_mean) + " / " + std::to_string(batch_peak) +
                               " (limited by " + batch_limited_by + ")");
  row("batch limit: GPU memory / devices", std::to_string(batch_limit_gpu_memory) + " / " +
                                               std::to_string(batch_limit_device_capacity));
  row("throughput", f("%.1f tokens/s", tokens_per_s));
  row("step / TPOT / TTFT", f("%.3f", step_ms) + " / " + f("%.3f", tpot_ms) + " / " + f("%.1f ms", ttft_ms));
  row("queueing delay (mean)", f("%.1f ms", queueing_ms));
  const auto& b = breakdown_ms;
  row("step: gpu dense / allreduce", f("%.3f", b.gpu_dense_ns) + " / " + f("%.3f ms", b.allreduce_ns));
  row("step: gpu attention / merge", f("%.3f", b.gpu_attention_ns) + " / " + f("%.3f ms", b.merge_ns));
  row("step: link / device / queueing", f("%.3f", b.link_ns) + " / " + f("%.3f", b.device_scan_ns) +
                                            " / " + f("%.3f ms", b.queueing_ns));
  row("step: lm head / steady copies", f("%.3f", b.lm_head_ns) + " / " + f("%.3f ms", b.copy_ns));
  row("energy", f("%.4f J/token", energy_j_per_token) + f(" (%.0f W average)", power_w));
  row("capital / cost efficiency", f("$%.0f", capital_usd) + f(" / %.3e tokens/$", tokens_per_dollar));
  row("link / device bytes per step", f("%.3e", link_bytes_per_step) + " / " + f("%.3e", device_bytes_per_step));
  row("busiest device / link busy", f("%.2f", device_busy_fraction) + " / " + f("%.2f", link_busy_fraction));
  row("requests done / refused / unfinished", std::to_string(completed) + " / " + std::to_string(refused) +
                                                  " / " + std::to_string(unfinished));
  row("simulated / wall", f("%.3f s", simulated_s) + " / " + f("%.3f s", wall_s));
  return os.str();
}

}  // namespace pnmkv
