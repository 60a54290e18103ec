// Serving scheduler: seeded random workloads driven the way a caller drives it keep every
// bookkeeping invariant (FCFS head-of-line admission, chunked prefill that continues each
// prompt, decode only after the prompt, batch cap, monotone time, every request finished or
// refused); a hand-worked two-request run gives exact TTFT/TPOT/queueing and batch series;
// summarise, poisson_arrivals and load_trace match hand calculations and reject bad input.
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "schedulers/serving.hpp"

namespace pnmkv {
namespace {

// ---------------------------------------------------------------------------------------
// 1. Random workloads against a model of what the scheduler must do.

// Mirrors a caller: at each boundary offer candidates while a token capacity allows (head of
// line: stop at the first one that does not fit), plan, check the plan, complete it.
void run_random_workload(uint64_t seed) {
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const uint32_t n = 1 + uint32_t(rng() % 24);
  // Arrivals on a coarse grid sometimes, so ties (and the stable order among them) occur.
  const double horizon_s = std::uniform_real_distribution<double>(0.01, 30.0)(rng);
  const bool coarse = rng() % 2;
  std::vector<trace_row> rows(n);
  for (auto& r : rows) {
    double a = std::uniform_real_distribution<double>(0, horizon_s)(rng);
    if (coarse) a = std::floor(a);
    r.arrival_s = a;
    r.prompt_tokens = 1 + rng() % 20000;
    r.output_tokens = 1 + rng() % 50;
  }
  const uint64_t chunks[] = {16, 100, 4096};
  serving_params p;
  p.prefill_chunk_tokens = chunks[rng() % 3];
  p.batch_max = uint32_t(rng() % 6);
  // Some requests exceed the capacity on their own and must be refused once the system is empty.
  const uint64_t capacity = 1000 + rng() % 60000;
  SCOPED_TRACE("n " + std::to_string(n) + " chunk " + std::to_string(p.prefill_chunk_tokens) +
               " batch_max " + std::to_string(p.batch_max) + " capacity " + std::to_string(capacity));

  // Expected ids: 1.. in stable arrival order.
  std::vector<trace_row> sorted = rows;
  std::stable_sort(sorted.begin(), sorted.end(),
                   [](const trace_row& x, const trace_row& y) { return x.arrival_s < y.arrival_s; });

  serving_scheduler s(rows, p);
  ASSERT_EQ(s.outcomes().size(), size_t(n));
  for (uint32_t i = 0; i < n; ++i) {
    const auto& o = s.outcome(i + 1);
    ASSERT_EQ(o.id, i + 1);
    ASSERT_EQ(o.arrival_s, sorted[i].arrival_s);
    ASSERT_EQ(o.prompt_tokens, sorted[i].prompt_tokens);
    ASSERT_EQ(o.output_tokens, sorted[i].output_tokens);
  }

  // The model.
  enum class phase { not_arrived_or_waiting, active, finished, refused };
  std::vector<phase> ph(n + 1, phase::not_arrived_or_waiting);
  std::vector<uint64_t> prefilled(n + 1, 0), generated(n + 1, 0);
  std::vector<bool> decoding(n + 1, false);
  std::vector<double> admitted_at(n + 1, -1);
  std::vector<uint64_t> active;  // admission order
  uint64_t used = 0;
  auto need = [&](uint64_t id) { return sorted[id - 1].prompt_tokens + sorted[id - 1].output_tokens; };
  uint64_t next_undecided = 1;  // lowest id neither admitted nor refused (FCFS)
  auto advance_undecided = [&] {
    while (next_undecided <= n && ph[next_undecided] != phase::not_arrived_or_waiting) ++next_undecided;
  };

  uint64_t work = 0;
  for (const auto& r : rows) work += r.prompt_tokens + r.output_tokens;
  const uint64_t iterations_max = work + 2 * n + 10;  // every step does at least one token of work
  uint64_t iterations = 0, steps = 0;
  double prev_now = s.now_s();
  ASSERT_EQ(prev_now, 0.0);

  while (!s.done()) {
    ASSERT_LT(++iterations, iterations_max) << "scheduler loop does not terminate";
    // Admission at the boundary.
    while (auto c = s.next_candidate()) {
      advance_undecided();
      ASSERT_EQ(*c, next_undecided) << "candidate is not the oldest waiting request (FCFS)";
      ASSERT_LE(s.outcome(*c).arrival_s, s.now_s()) << "candidate offered before it arrived";
      ASSERT_TRUE(p.batch_max == 0 || s.in_system() < p.batch_max);
      if (used + need(*c) <= capacity) {
        s.admit(*c);
        ph[*c] = phase::active;
        admitted_at[*c] = s.now_s();
        active.push_back(*c);
        used += need(*c);
        ASSERT_EQ(s.outcome(*c).admitted_s, s.now_s());
      } else {
        const bool empty = s.in_system() == 0;
        const bool refused = s.not_admitted(*c, "needs " + std::to_string(need(*c)) + " tokens");
        ASSERT_EQ(refused, empty) << "refusal must happen exactly when nothing else is in the system";
        if (!refused) {
          // Head of line: the same request is offered again, nothing behind it jumps ahead.
          ASSERT_EQ(s.next_candidate(), c);
          break;
        }
        ph[*c] = phase::refused;
        ASSERT_TRUE(s.outcome(*c).refused);
      }
    }
    ASSERT_EQ(s.in_system(), active.size());
    if (p.batch_max) { ASSERT_LE(s.in_system(), p.batch_max); }
    // No candidate: either the cap is reached, or every arrived request was decided.
    if (!s.next_candidate() && !(p.batch_max && s.in_system() >= p.batch_max)) {
      advance_undecided();
      if (next_undecided <= n) { ASSERT_GT(s.outcome(next_undecided).arrival_s, s.now_s()); }
    }

    const step_plan plan = s.plan();
    if (plan.empty()) {
      ASSERT_TRUE(active.empty()) << "requests in the system but nothing planned";
      advance_undecided();
      const bool moved = s.idle_until_next_arrival();
      if (!moved) {
        ASSERT_GT(next_undecided, uint64_t(n)) << "idle refused with arrivals left";
        break;
      }
      ASSERT_LE(next_undecided, uint64_t(n)) << "idle moved with no arrival left";
      ASSERT_EQ(s.now_s(), std::max(prev_now, s.outcome(next_undecided).arrival_s));
      ASSERT_GE(s.now_s(), prev_now);
      prev_now = s.now_s();
      continue;
    }

    // The plan: every decoding request decodes, in admission order.
    std::vector<uint64_t> want_decoding;
    for (uint64_t id : active)
      if (decoding[id]) want_decoding.push_back(id);
    ASSERT_EQ(plan.decoding, want_decoding);
    std::set<uint64_t> in_plan(plan.decoding.begin(), plan.decoding.end());
    uint64_t chunk_sum = 0, prompt_left = 0;
    for (uint64_t id : active)
      if (!decoding[id]) prompt_left += sorted[id - 1].prompt_tokens - prefilled[id];
    size_t last_pos = 0;
    for (size_t k = 0; k < plan.prefill.size(); ++k) {
      const prefill_chunk& c = plan.prefill[k];
      ASSERT_GE(c.request_id, 1u);
      ASSERT_LE(c.request_id, uint64_t(n));
      ASSERT_EQ(ph[c.request_id], phase::active) << "prefill of a request not in the system";
      ASSERT_FALSE(decoding[c.request_id]) << "prefill of a request already decoding";
      ASSERT_TRUE(in_plan.insert(c.request_id).second) << "request both decoding and prefilling, or twice";
      ASSERT_EQ(c.position, prefilled[c.request_id]) << "chunk does not continue the prompt";
      ASSERT_GT(c.tokens, 0u);
      ASSERT_LE(c.position + c.tokens, sorted[c.request_id - 1].prompt_tokens);
      ASSERT_EQ(c.completes, c.position + c.tokens == sorted[c.request_id - 1].prompt_tokens);
      // Admission order.
      const size_t pos = size_t(std::find(active.begin(), active.end(), c.request_id) - active.begin());
      if (k) { ASSERT_GT(pos, last_pos); }
      last_pos = pos;
      // Only the last chunk may stop short of its prompt.
      if (k + 1 < plan.prefill.size()) { ASSERT_TRUE(c.completes); }
      chunk_sum += c.tokens;
    }
    ASSERT_LE(chunk_sum, p.prefill_chunk_tokens);
    // Work-conserving: the chunk budget is used up to what the prompts still need.
    ASSERT_EQ(chunk_sum, std::min<uint64_t>(p.prefill_chunk_tokens, prompt_left));

    const double step_s = std::uniform_real_distribution<double>(1e-4, 0.5)(rng);
    const std::vector<uint64_t> finished = s.complete(plan, step_s);
    ++steps;
    ASSERT_GE(s.now_s(), prev_now);
    ASSERT_EQ(s.now_s(), prev_now + step_s);
    prev_now = s.now_s();

    // Update the model.
    std::set<uint64_t> want_finished;
    for (uint64_t id : plan.decoding) {
      ++generated[id];
      if (generated[id] == sorted[id - 1].output_tokens) want_finished.insert(id);
    }
    for (const prefill_chunk& c : plan.prefill) {
      prefilled[c.request_id] += c.tokens;
      if (!c.completes) continue;
      decoding[c.request_id] = true;
      generated[c.request_id] = 1;
      ASSERT_EQ(s.outcome(c.request_id).first_token_s, s.now_s());
      if (sorted[c.request_id - 1].output_tokens == 1) want_finished.insert(c.request_id);
    }
    ASSERT_EQ(std::set<uint64_t>(finished.begin(), finished.end()), want_finished);
    ASSERT_EQ(finished.size(), want_finished.size()) << "a request reported finished twice";
    for (uint64_t id : finished) {
      ph[id] = phase::finished;
      used -= need(id);
      active.erase(std::find(active.begin(), active.end(), id));
      ASSERT_EQ(s.outcome(id).finish_s, s.now_s());
    }
    for (uint64_t id : active) ASSERT_EQ(s.outcome(id).generated, generated[id]);
    // The series records the step.
    ASSERT_EQ(s.series().size(), steps);
    ASSERT_EQ(s.series().back().t_s, s.now_s());
    ASSERT_EQ(s.series().back().decode_batch, plan.decoding.size());
    ASSERT_EQ(s.series().back().prefill_tokens, chunk_sum);
  }
  ASSERT_TRUE(s.done());
  ASSERT_TRUE(active.empty());
  ASSERT_EQ(s.in_system(), 0u);

  // Every request ends refused or finished, with consistent times.
  double last_admitted = -1;
  for (uint64_t id = 1; id <= n; ++id) {
    const request_outcome& o = s.outcome(id);
    SCOPED_TRACE("request " + std::to_string(id));
    ASSERT_NE(ph[id], phase::not_arrived_or_waiting);
    ASSERT_NE(ph[id], phase::active);
    if (o.refused) {
      ASSERT_EQ(ph[id], phase::refused);
      ASSERT_FALSE(o.refusal.empty());
      ASSERT_GT(need(id), capacity) << "a request that fits alone was refused";
      ASSERT_LT(o.admitted_s, 0);
      ASSERT_LT(o.first_token_s, 0);
      ASSERT_LT(o.finish_s, 0);
      ASSERT_EQ(o.generated, 0u);
      continue;
    }
    ASSERT_EQ(ph[id], phase::finished);
    ASSERT_EQ(o.generated, o.output_tokens);
    ASSERT_GE(o.admitted_s, o.arrival_s) << "admitted before arrival";
    ASSERT_EQ(o.admitted_s, admitted_at[id]);
    ASSERT_GE(o.first_token_s, o.admitted_s);
    ASSERT_GE(o.finish_s, o.first_token_s);
    ASSERT_LE(o.queueing_ms(), o.ttft_ms());
    ASSERT_GE(o.queueing_ms(), 0);
    if (o.output_tokens == 1) { ASSERT_EQ(o.finish_s, o.first_token_s); }
    // FCFS: admission times do not decrease in arrival order.
    ASSERT_GE(o.admitted_s, last_admitted) << "admitted ahead of an earlier arrival";
    last_admitted = o.admitted_s;
  }
  // Series times do not decrease.
  for (size_t i = 1; i < s.series().size(); ++i) ASSERT_GE(s.series()[i].t_s, s.series()[i - 1].t_s);
}

TEST(ServingScheduler, random_workloads_keep_invariants) {
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    run_random_workload(seed);
    if (HasFatalFailure()) return;
  }
}

// ---------------------------------------------------------------------------------------
// 2. Hand-worked run. Step 0.125 s (exact in binary), chunk 100 tokens, no cap.
// A: arrives 0, prompt 250, 3 outputs. B: arrives 0.0625, prompt 100, 2 outputs.
//   step 1 [0, .125]:     A prefills 0..100                      decode 0, prefill 100
//   step 2 [.125, .25]:   B admitted at .125; A 100..200 (budget spent, B waits)
//                                                                 decode 0, prefill 100
//   step 3 [.25, .375]:   A 200..250 completes, B 0..50           decode 0, prefill 100
//                         A's first token at .375
//   step 4 [.375, .5]:    A decodes; B 50..100 completes          decode 1, prefill 50
//                         B's first token at .5
//   step 5 [.5, .625]:    A and B decode; both finish at .625     decode 2, prefill 0
// A: queueing 0, TTFT 375 ms, TPOT (625 − 375) / 2 = 125 ms.
// B: queueing 62.5 ms, TTFT 437.5 ms, TPOT (625 − 500) / 1 = 125 ms.
TEST(ServingScheduler, hand_worked_two_requests) {
  serving_params p;
  p.prefill_chunk_tokens = 100;
  serving_scheduler s({{0.0625, 100, 2}, {0.0, 250, 3}}, p);  // out of order on purpose
  ASSERT_EQ(s.outcome(1).prompt_tokens, 250u);  // ids follow arrival order
  ASSERT_EQ(s.outcome(2).prompt_tokens, 100u);
  auto admit_all = [&] {
    while (auto c = s.next_candidate()) s.admit(*c);
  };
  struct expect_chunk {
    uint64_t id, position, tokens;
    bool completes;
  };
  auto check_plan = [&](const step_plan& plan, std::vector<uint64_t> dec, std::vector<expect_chunk> pre) {
    EXPECT_EQ(plan.decoding, dec);
    ASSERT_EQ(plan.prefill.size(), pre.size());
    for (size_t i = 0; i < pre.size(); ++i) {
      EXPECT_EQ(plan.prefill[i].request_id, pre[i].id);
      EXPECT_EQ(plan.prefill[i].position, pre[i].position);
      EXPECT_EQ(plan.prefill[i].tokens, pre[i].tokens);
      EXPECT_EQ(plan.prefill[i].completes, pre[i].completes);
    }
  };
  const double dt = 0.125;

  admit_all();
  ASSERT_EQ(s.in_system(), 1u);  // B has not arrived yet
  step_plan plan = s.plan();
  check_plan(plan, {}, {{1, 0, 100, false}});
  EXPECT_TRUE(s.complete(plan, dt).empty());

  admit_all();
  ASSERT_EQ(s.in_system(), 2u);
  plan = s.plan();
  check_plan(plan, {}, {{1, 100, 100, false}});
  EXPECT_TRUE(s.complete(plan, dt).empty());

  admit_all();
  plan = s.plan();
  check_plan(plan, {}, {{1, 200, 50, true}, {2, 0, 50, false}});
  EXPECT_TRUE(s.complete(plan, dt).empty());

  plan = s.plan();
  check_plan(plan, {1}, {{2, 50, 50, true}});
  EXPECT_TRUE(s.complete(plan, dt).empty());

  plan = s.plan();
  check_plan(plan, {1, 2}, {});
  EXPECT_EQ(s.complete(plan, dt), (std::vector<uint64_t>{1, 2}));
  EXPECT_TRUE(s.done());
  EXPECT_TRUE(s.plan().empty());
  EXPECT_FALSE(s.idle_until_next_arrival());

  const request_outcome& a = s.outcome(1);
  const request_outcome& b = s.outcome(2);
  EXPECT_DOUBLE_EQ(a.admitted_s, 0.0);
  EXPECT_DOUBLE_EQ(a.first_token_s, 0.375);
  EXPECT_DOUBLE_EQ(a.finish_s, 0.625);
  EXPECT_EQ(a.generated, 3u);
  EXPECT_DOUBLE_EQ(a.queueing_ms(), 0.0);
  EXPECT_DOUBLE_EQ(a.ttft_ms(), 375.0);
  EXPECT_DOUBLE_EQ(a.tpot_ms(), 125.0);
  EXPECT_DOUBLE_EQ(b.admitted_s, 0.125);
  EXPECT_DOUBLE_EQ(b.first_token_s, 0.5);
  EXPECT_DOUBLE_EQ(b.finish_s, 0.625);
  EXPECT_EQ(b.generated, 2u);
  EXPECT_DOUBLE_EQ(b.queueing_ms(), 62.5);
  EXPECT_DOUBLE_EQ(b.ttft_ms(), 437.5);
  EXPECT_DOUBLE_EQ(b.tpot_ms(), 125.0);

  const std::vector<batch_sample>& ser = s.series();
  ASSERT_EQ(ser.size(), 5u);
  const double t[] = {0.125, 0.25, 0.375, 0.5, 0.625};
  const uint32_t dec[] = {0, 0, 0, 1, 2};
  const uint64_t pre[] = {100, 100, 100, 50, 0};
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_DOUBLE_EQ(ser[i].t_s, t[i]) << i;
    EXPECT_EQ(ser[i].decode_batch, dec[i]) << i;
    EXPECT_EQ(ser[i].prefill_tokens, pre[i]) << i;
  }

  const serving_summary sum = summarise(s.outcomes(), ser);
  EXPECT_EQ(sum.completed, 2u);
  EXPECT_DOUBLE_EQ(sum.ttft_ms_mean, (375.0 + 437.5) / 2);
  EXPECT_DOUBLE_EQ(sum.ttft_ms_p99, 437.5);
  EXPECT_DOUBLE_EQ(sum.batch_mean, 1.5);  // steps 4 and 5 decoded 1 and 2
  EXPECT_EQ(sum.batch_peak, 2u);
}

// Head of line and refusal, step by step: a request that does not fit waits while something
// runs (nothing behind it is offered), and is refused once the system is empty; the batch
// cap hides candidates; idle jumps the clock to the next arrival.
TEST(ServingScheduler, head_of_line_refusal_and_cap) {
  serving_params p;
  p.prefill_chunk_tokens = 4096;
  p.batch_max = 1;
  serving_scheduler s({{0, 10, 2}, {0, 10, 1}, {5, 10, 1}}, p);
  ASSERT_EQ(s.next_candidate(), std::optional<uint64_t>(1));
  s.admit(1);
  EXPECT_EQ(s.next_candidate(), std::nullopt) << "batch cap of 1 reached";
  step_plan plan = s.plan();
  s.complete(plan, 1.0);  // request 1: first token
  EXPECT_EQ(s.next_candidate(), std::nullopt);
  plan = s.plan();
  EXPECT_EQ(s.complete(plan, 1.0), std::vector<uint64_t>{1});
  ASSERT_EQ(s.next_candidate(), std::optional<uint64_t>(2));
  // Nothing in the system: "does not fit" is final.
  EXPECT_TRUE(s.not_admitted(2, "too big"));
  EXPECT_TRUE(s.outcome(2).refused);
  EXPECT_EQ(s.outcome(2).refusal, "too big");
  EXPECT_EQ(s.next_candidate(), std::nullopt) << "request 3 has not arrived at t=2";
  EXPECT_TRUE(s.plan().empty());
  EXPECT_FALSE(s.done());
  EXPECT_TRUE(s.idle_until_next_arrival());
  EXPECT_EQ(s.now_s(), 5.0);
  ASSERT_EQ(s.next_candidate(), std::optional<uint64_t>(3));
  s.admit(3);
  plan = s.plan();
  EXPECT_EQ(s.complete(plan, 0.5), std::vector<uint64_t>{3});
  EXPECT_TRUE(s.done());
  EXPECT_FALSE(s.idle_until_next_arrival());

  // Not admitted while something runs: waits, stays at the head.
  serving_scheduler w({{0, 10, 3}, {0, 10, 1}, {0, 10, 1}}, serving_params{});
  w.admit(1);
  ASSERT_EQ(w.next_candidate(), std::optional<uint64_t>(2));
  EXPECT_FALSE(w.not_admitted(2, "busy"));
  EXPECT_FALSE(w.outcome(2).refused);
  EXPECT_EQ(w.next_candidate(), std::optional<uint64_t>(2));
}

// A closed batch built as it is admitted (the simulator's): submit() appends arrivals,
// admit_prefilled() starts a request decoding with its first token out now, refuse() is
// final even with others running, and the batch series keeps at most series_points_max.
// Equal to the same rows given to the constructor and admitted the ordinary way, but for
// the prefill steps the prefilled requests skip.
TEST(ServingScheduler, closed_batch_submitted_prefilled_and_refused) {
  serving_params p;
  p.prefill_chunk_tokens = 8;
  p.series_points_max = 3;
  serving_scheduler s({}, p);
  EXPECT_TRUE(s.done()) << "no requests yet";
  for (uint64_t i = 1; i <= 3; ++i) {
    ASSERT_EQ(s.submit({0, 100, 5}), i);
    ASSERT_EQ(s.next_candidate(), std::optional<uint64_t>(i));
    if (i == 2) {
      s.refuse(i, "does not fit");  // final though request 1 is in the system
      continue;
    }
    s.admit_prefilled(i);
    EXPECT_EQ(s.outcome(i).first_token_s, 0.0);
    EXPECT_EQ(s.outcome(i).generated, 1u);
  }
  EXPECT_TRUE(s.outcome(2).refused);
  EXPECT_EQ(s.outcome(2).refusal, "does not fit");
  EXPECT_EQ(s.outcome(2).generated, 0u) << "a refused request generated nothing";
  EXPECT_EQ(s.in_system_ids(), (std::vector<uint64_t>{1, 3}));
  // Four decode steps finish both (5 output tokens: the first came with the prefill).
  for (int k = 0; k < 4; ++k) {
    const step_plan plan = s.plan();
    EXPECT_TRUE(plan.prefill.empty()) << "prefilled requests need no chunks";
    EXPECT_EQ(plan.decoding, (std::vector<uint64_t>{1, 3}));
    const auto done = s.complete(plan, 0.25);
    EXPECT_EQ(done.size(), k == 3 ? 2u : 0u);
  }
  EXPECT_TRUE(s.done());
  EXPECT_EQ(s.outcome(1).finish_s, 1.0);
  EXPECT_EQ(s.outcome(3).tpot_ms(), 250.0);
  EXPECT_EQ(s.series().size(), 3u) << "capped at series_points_max";
  EXPECT_EQ(s.series().back().t_s, 0.75);
  // An arrival earlier than the last one submitted is a caller's bug.
  EXPECT_DEATH(s.submit({-1, 10, 1}), "submitted after");
}

// A request lost with its devices in the middle of a step (fail()): it leaves the system at
// once, the step planned with it completes without it (no token, no finish), the others go
// on as before, it is counted failed (not unfinished) and its room lets the next one in.
TEST(ServingScheduler, a_failed_request_leaves_and_the_others_go_on) {
  serving_params p;
  p.prefill_chunk_tokens = 8;
  p.batch_max = 2;
  serving_scheduler s({{0, 8, 3}, {0, 16, 3}, {0, 8, 2}}, p);
  s.admit(1);
  s.admit(2);
  EXPECT_EQ(s.next_candidate(), std::nullopt) << "batch cap of 2 reached";
  step_plan plan = s.plan();  // request 1's whole prompt; nothing of 2 yet (chunk budget 8)
  s.complete(plan, 1.0);
  plan = s.plan();  // 1 decodes, 2 prefills its first chunk
  ASSERT_EQ(plan.decoding, std::vector<uint64_t>{1});
  ASSERT_EQ(plan.prefill.size(), 1u);
  s.fail(2, "device 101 held the last copy");
  EXPECT_EQ(s.in_system_ids(), std::vector<uint64_t>{1});
  EXPECT_EQ(s.next_candidate(), std::optional<uint64_t>(3)) << "its room is free at once";
  EXPECT_TRUE(s.complete(plan, 1.0).empty());
  EXPECT_EQ(s.outcome(2).generated, 0u);
  EXPECT_LT(s.outcome(2).finish_s, 0.0);
  EXPECT_EQ(s.series().back().decode_batch, 1u);
  EXPECT_EQ(s.series().back().prefill_tokens, 0u) << "the lost request's chunk does not count";
  s.admit(3);
  while (!s.done()) s.complete(s.plan(), 1.0);
  EXPECT_GE(s.outcome(1).finish_s, 0.0);
  EXPECT_GE(s.outcome(3).finish_s, 0.0);
  const serving_summary sum = summarise(s.outcomes(), s.series());
  EXPECT_EQ(sum.completed, 2u);
  EXPECT_EQ(sum.failed, 1u);
  EXPECT_EQ(sum.unfinished, 0u);
  EXPECT_TRUE(s.outcome(2).failed);
  EXPECT_EQ(s.outcome(2).failure, "device 101 held the last copy");
  EXPECT_DEATH(s.fail(2, "again"), "not in the system");
}

// ---------------------------------------------------------------------------------------
// 3. summarise.

request_outcome finished_outcome(uint64_t id, double arr, double adm, double first, double fin,
                                 uint64_t gen) {
  request_outcome o;
  o.id = id;
  o.prompt_tokens = 10;
  o.output_tokens = gen;
  o.generated = gen;
  o.arrival_s = arr, o.admitted_s = adm, o.first_token_s = first, o.finish_s = fin;
  return o;
}

TEST(ServingSummary, hand_computed_means_and_p99) {
  std::vector<request_outcome> v;
  // queueing 0, 100, 300 ms; TTFT 200, 400, 1000 ms; TPOT (1.2−0.2)/4 = 250, (2.4−1.4)/2 = 500 ms;
  // the third generated one token: no TPOT.
  v.push_back(finished_outcome(1, 0.0, 0.0, 0.2, 1.2, 5));
  v.push_back(finished_outcome(2, 1.0, 1.1, 1.4, 2.4, 3));
  v.push_back(finished_outcome(3, 2.0, 2.3, 3.0, 3.0, 1));
  // Refused: contributes to no latency.
  request_outcome r;
  r.id = 4, r.arrival_s = 3.0, r.refused = true, r.refusal = "too big";
  v.push_back(r);
  // Unfinished: admitted (queueing 500 ms) and got its first token (TTFT 1000 ms), no finish.
  request_outcome u;
  u.id = 5, u.arrival_s = 4.0, u.admitted_s = 4.5, u.first_token_s = 5.0, u.generated = 2, u.output_tokens = 9;
  v.push_back(u);
  // Unfinished and still waiting: no latency at all.
  request_outcome q;
  q.id = 6, q.arrival_s = 5.0;
  v.push_back(q);

  const std::vector<batch_sample> ser = {{1, 0, 100}, {2, 3, 0}, {3, 1, 50}, {4, 0, 0}, {5, 2, 0}};
  const serving_summary s = summarise(v, ser);
  EXPECT_EQ(s.submitted, 6u);
  EXPECT_EQ(s.completed, 3u);
  EXPECT_EQ(s.refused, 1u);
  EXPECT_EQ(s.unfinished, 2u);
  EXPECT_NEAR(s.queueing_ms_mean, (0 + 100 + 300 + 500) / 4.0, 1e-9);
  EXPECT_NEAR(s.queueing_ms_p99, 500, 1e-9);
  EXPECT_NEAR(s.ttft_ms_mean, (200 + 400 + 1000 + 1000) / 4.0, 1e-9);
  EXPECT_NEAR(s.ttft_ms_p99, 1000, 1e-9);
  EXPECT_NEAR(s.tpot_ms_mean, (250 + 500) / 2.0, 1e-9);
  EXPECT_NEAR(s.tpot_ms_p99, 500, 1e-9);
  EXPECT_DOUBLE_EQ(s.batch_mean, 2.0);  // steps that decoded: 3, 1, 2
  EXPECT_EQ(s.batch_peak, 3u);

  // Nothing: zeros, no division by zero.
  const serving_summary z = summarise({}, {});
  EXPECT_EQ(z.submitted, 0u);
  EXPECT_EQ(z.ttft_ms_mean, 0);
  EXPECT_EQ(z.ttft_ms_p99, 0);
  EXPECT_EQ(z.batch_mean, 0);
}

// p99 is the nearest rank: of 101 values 1..101 ms it is the 100th, not the maximum; of 200
// it is the 198th.
TEST(ServingSummary, p99_is_nearest_rank) {
  for (uint64_t count : {101u, 200u}) {
    std::vector<request_outcome> v;
    for (uint64_t i = 1; i <= count; ++i)  // TTFT i ms, listed in reverse
      v.push_back(finished_outcome(i, 0, 0, double(count + 1 - i) * 1e-3, 10.0, 1));
    const serving_summary s = summarise(v, {});
    const double want = std::ceil(0.99 * double(count));
    EXPECT_NEAR(s.ttft_ms_p99, want, 1e-9) << count;
    EXPECT_NEAR(s.ttft_ms_mean, double(count + 1) / 2, 1e-9) << count;
  }
}

// ---------------------------------------------------------------------------------------
// 4. poisson_arrivals.

TEST(ServingPoisson, deterministic_rate_spread_outputs) {
  const double rate = 4.0;
  const uint64_t prompt = 1000, out = 7;
  const double spread = 0.25;
  const auto a = poisson_arrivals(42, 20000, rate, prompt, spread, out);
  const auto b = poisson_arrivals(42, 20000, rate, prompt, spread, out);
  const auto c = poisson_arrivals(43, 20000, rate, prompt, spread, out);
  ASSERT_EQ(a.size(), 20000u);
  ASSERT_EQ(b.size(), a.size());
  bool differs = false;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].arrival_s, b[i].arrival_s) << i;
    ASSERT_EQ(a[i].prompt_tokens, b[i].prompt_tokens) << i;
    ASSERT_EQ(a[i].output_tokens, b[i].output_tokens) << i;
    differs |= a[i].arrival_s != c[i].arrival_s;
  }
  EXPECT_TRUE(differs) << "another seed gives the same arrivals";

  const uint64_t lo = uint64_t(std::llround(prompt * (1 - spread)));
  const uint64_t hi = uint64_t(std::llround(prompt * (1 + spread)));
  uint64_t pmin = UINT64_MAX, pmax = 0;
  double prev = 0;
  for (const auto& r : a) {
    ASSERT_GE(r.arrival_s, prev) << "arrivals not in order";
    prev = r.arrival_s;
    ASSERT_GE(r.prompt_tokens, lo);
    ASSERT_LE(r.prompt_tokens, hi);
    ASSERT_EQ(r.output_tokens, out);
    pmin = std::min(pmin, r.prompt_tokens), pmax = std::max(pmax, r.prompt_tokens);
  }
  ASSERT_GT(a.front().arrival_s, 0);
  const double mean_gap = a.back().arrival_s / double(a.size());
  EXPECT_NEAR(mean_gap, 1 / rate, 0.03 / rate);
  // The spread is used: 20000 uniform draws come within 1% of both ends.
  EXPECT_LE(pmin, lo + 10);
  EXPECT_GE(pmax, hi - 10);

  // No spread: every prompt is the given one; a tiny prompt never rounds to 0.
  for (const auto& r : poisson_arrivals(1, 100, 1.0, 512, 0.0, 3)) {
    EXPECT_EQ(r.prompt_tokens, 512u);
    EXPECT_EQ(r.output_tokens, 3u);
  }
  for (const auto& r : poisson_arrivals(1, 1000, 1.0, 1, 0.9, 1)) {
    EXPECT_GE(r.prompt_tokens, 1u);
    EXPECT_LE(r.prompt_tokens, 2u);
  }
}

// ---------------------------------------------------------------------------------------
// 5. load_trace.

class ServingTrace : public ::testing::Test {
 protected:
  void SetUp() override {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    dir_ = std::filesystem::temp_directory_path() /
           ("pnmkv_serving_test_" + std::to_string(::getpid()) + "_" + info->name());
    std::filesystem::remove_all(dir_);
    ASSERT_TRUE(std::filesystem::create_directories(dir_));
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& text) {
    const std::string path = (dir_ / name).string();
    std::ofstream f(path, std::ios::binary);
    f << text;
    return path;
  }
  std::filesystem::path dir_;
};

TEST_F(ServingTrace, sorted_header_and_comments_skipped) {
  const std::string f = write("t.csv",
                              "arrival_s,prompt_tokens,output_tokens\r\n"
                              "# a comment\n"
                              "2.5,10,1\n"
                              "\n"
                              "1,20,2\r\n"
                              "#1,999,999\n"
                              "1,30,3\n"
                              "0,40,4\n");
  auto rows = load_trace(f);
  ASSERT_TRUE(rows) << rows.error().to_string();
  ASSERT_EQ(rows->size(), 4u);
  // Sorted by arrival; the two rows at 1 s keep their file order.
  const double arr[] = {0, 1, 1, 2.5};
  const uint64_t pr[] = {40, 20, 30, 10}, out[] = {4, 2, 3, 1};
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_EQ((*rows)[i].arrival_s, arr[i]) << i;
    EXPECT_EQ((*rows)[i].prompt_tokens, pr[i]) << i;
    EXPECT_EQ((*rows)[i].output_tokens, out[i]) << i;
  }
  // Without a header the first line is data.
  auto nh = load_trace(write("nh.csv", "3,5,6\n"));
  ASSERT_TRUE(nh);
  ASSERT_EQ(nh->size(), 1u);
  EXPECT_EQ((*nh)[0].prompt_tokens, 5u);
  // Bounds are inclusive.
  auto edge = load_trace(write("edge.csv", "0,67108864,10000000\n0,1,1\n"));
  ASSERT_TRUE(edge) << edge.error().to_string();
  EXPECT_EQ((*edge)[0].prompt_tokens, 67108864u);
  EXPECT_EQ((*edge)[0].output_tokens, 10000000u);
}

TEST_F(ServingTrace, bad_line_names_file_and_line) {
  // Line numbers count comments and blank lines: the bad line is the 5th.
  const std::string f = write("bad.csv", "arrival_s,prompt_tokens,output_tokens\n# c\n0,10,1\n\nnot,a,row\n1,2,3\n");
  auto rows = load_trace(f);
  ASSERT_FALSE(rows);
  EXPECT_EQ(rows.error().code(), errc::parse);
  EXPECT_NE(rows.error().message().find(f), std::string::npos) << rows.error().message();
  EXPECT_NE(rows.error().message().find("line 5"), std::string::npos) << rows.error().message();
  // A header after data is a bad line too.
  auto late = load_trace(write("late.csv", "0,10,1\narrival_s,prompt_tokens,output_tokens\n"));
  ASSERT_FALSE(late);
  EXPECT_NE(late.error().message().find("line 2"), std::string::npos) << late.error().message();
  // Missing separator.
  auto semi = load_trace(write("semi.csv", "0,10,1\n0;10;1\n"));
  ASSERT_FALSE(semi);
  EXPECT_NE(semi.error().message().find("line 2"), std::string::npos) << semi.error().message();
  // No file, no rows.
  const std::string missing = (dir_ / "missing.csv").string();
  auto none = load_trace(missing);
  ASSERT_FALSE(none);
  EXPECT_EQ(none.error().code(), errc::io);
  EXPECT_NE(none.error().message().find(missing), std::string::npos);
  EXPECT_FALSE(load_trace(write("empty.csv", "")));
  EXPECT_FALSE(load_trace(write("header.csv", "arrival_s,prompt_tokens,output_tokens\n# nothing\n")));
}

TEST_F(ServingTrace, out_of_range_values_rejected) {
  const char* bad[] = {
      "-1,10,1",         // negative arrival
      "0,0,1",           // empty prompt
      "0,67108865,1",    // prompt past 2^26
      "0,1e30,1",        // absurd prompt
      "0,10.5,1",        // fractional prompt
      "0,10,0",          // no output
      "0,10,10000001",   // output past 1e7
      "0,10,2.5",        // fractional output
      "0,-3,1",          // negative prompt
  };
  int i = 0;
  for (const char* line : bad) {
    const std::string f = write("r" + std::to_string(i++) + ".csv", std::string("0,1,1\n") + line + "\n");
    auto rows = load_trace(f);
    ASSERT_FALSE(rows) << line;
    EXPECT_EQ(rows.error().code(), errc::invalid_argument) << line << ": " << rows.error().to_string();
    EXPECT_NE(rows.error().message().find(f), std::string::npos) << line;
    EXPECT_NE(rows.error().message().find("line 2"), std::string::npos) << line << ": " << rows.error().message();
  }
}

}  // namespace
}  // namespace pnmkv
