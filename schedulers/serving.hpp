// Serving an open workload (docs/DESIGN.md §2–§3): requests arrive over (virtual) time from a
// trace file or a Poisson generator, wait in arrival order, are admitted at step
// boundaries while the cluster's admission test holds, prefill in chunks next to the
// decoding batch (continuous batching) and leave after their last output token.
//
// The scheduler is the bookkeeping only: it never decides capacity itself — the caller
// asks whoever owns GPU memory and device capacity (the live coordinator, the simulator's
// admission) and reports the answer. Times are virtual seconds. Pure logic: no CAF or UCX.
//
// One output token per request per step: a request's first token comes with the step that
// completes its prompt, each later token with one decode step, so a request with T output
// tokens decodes T − 1 steps and appends T − 1 tokens (the last token is never appended).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <vector>

#include "core/status.hpp"

namespace pnmkv {

// One request of an open workload.
struct trace_row {
  double arrival_s = 0;
  uint64_t prompt_tokens = 0, output_tokens = 0;
};

// Reads a trace (CSV: arrival_s,prompt_tokens,output_tokens; an optional header line; '#'
// comments). Rows come back sorted by arrival (stable). Errors name the file, the line
// and the allowed values.
result<std::vector<trace_row>> load_trace(const std::string& file);

// n requests with exponential inter-arrival gaps (rate per second), prompts of
// prompt_tokens × U(1 − spread, 1 + spread) rounded, output_tokens each. Deterministic in
// seed (std::mt19937_64, the simulator's generator).
std::vector<trace_row> poisson_arrivals(uint64_t seed, uint32_t n, double rate_per_s,
                                        uint64_t prompt_tokens, double spread_fraction,
                                        uint64_t output_tokens);

struct request_outcome {
  uint64_t id = 0;
  uint64_t prompt_tokens = 0, output_tokens = 0, generated = 0;
  double arrival_s = 0, admitted_s = -1, first_token_s = -1, finish_s = -1;
  bool refused = false;
  std::string refusal;
  // Admitted, then lost (every copy of one of its shards gone with its devices): it
  // leaves the system unfinished, with the reason.
  bool failed = false;
  std::string failure;
  double queueing_ms() const { return admitted_s >= 0 ? (admitted_s - arrival_s) * 1e3 : 0; }
  double ttft_ms() const { return first_token_s >= 0 ? (first_token_s - arrival_s) * 1e3 : 0; }
  double tpot_ms() const {
    return finish_s >= 0 && generated > 1 ? (finish_s - first_token_s) * 1e3 / double(generated - 1) : 0;
  }
};

struct batch_sample {
  double t_s = 0;               // end of the step
  uint32_t decode_batch = 0;    // requests that decoded a token in the step
  uint64_t prefill_tokens = 0;  // prompt tokens prefilled in the step
};

// Prompt tokens of one request prefilled in a step.
struct prefill_chunk {
  uint64_t request_id = 0;
  uint64_t position = 0;  // first prompt token of the chunk
  uint64_t tokens = 0;
  bool completes = false;  // the prompt's last chunk: the first output token follows
};

struct step_plan {
  std::vector<uint64_t> decoding;      // request ids, in admission order
  std::vector<prefill_chunk> prefill;  // in admission order
  bool empty() const { return decoding.empty() && prefill.empty(); }
};

struct serving_params {
  uint64_t prefill_chunk_tokens = 4096;  // prompt tokens prefilled per step, all requests
  uint32_t batch_max = 0;                // requests in the system at once (0: no cap)
  uint64_t series_points_max = 0;        // batch samples kept (0: every step)
};

class serving_scheduler {
 public:
  // Request ids are 1.. in row order (rows sorted by arrival).
  serving_scheduler(std::vector<trace_row> rows, serving_params p);

  double now_s() const { return now_s_; }
  // Appends a request arriving at or after the last one (a workload built as it is
  // admitted, like the simulator's closed batch); returns its id.
  uint64_t submit(const trace_row& row);
  // The request to offer for admission now: the oldest arrived one still waiting, unless
  // the batch cap is reached. Head-of-line: callers stop at the first one not admitted.
  std::optional<uint64_t> next_candidate() const;
  void admit(uint64_t id);                                 // at now_s()
  // Admitted with its prompt already in the cache (a closed batch, prefilled before the
  // run): its first token is out now and it decodes from the next step.
  void admit_prefilled(uint64_t id);
  // Refused for good whatever else is in the system (a closed batch is formed once).
  void refuse(uint64_t id, const std::string& why);
  // Not admitted now. With nothing in the system the request can never fit: it is
  // refused for good (returns true); otherwise it waits for the next boundary (false).
  bool not_admitted(uint64_t id, const std::string& why);
  // An admitted request is lost (its KV went with its devices): it leaves the system now,
  // unfinished; a step planned with it skips it in complete(). Between or during steps.
  void fail(uint64_t id, const std::string& why);
  // Nothing to run: moves the clock to the next arrival. False when none is left.
  bool idle_until_next_arrival();

  // The next step's work: every decoding request, then prompt chunks of the prefilling
  // requests in admission order up to prefill_chunk_tokens in all.
  step_plan plan() const;
  // The step ran for step_s of virtual time; returns the requests that finished with it.
  std::vector<uint64_t> complete(const step_plan& plan, double step_s);

  bool done() const;  // every request finished, refused or failed
  uint32_t in_system() const { return uint32_t(active_.size()); }
  const std::vector<uint64_t>& in_system_ids() const { return active_; }  // admission order
  const std::vector<request_outcome>& outcomes() const { return out_; }
  const std::vector<batch_sample>& series() const { return series_; }
  const request_outcome& outcome(uint64_t id) const { return out_.at(id - 1); }

 private:
  struct state {
    uint64_t prefilled = 0;
    bool decoding = false;
  };
  serving_params p_;
  std::vector<request_outcome> out_;
  std::vector<state> st_;
  size_t next_arrival_ = 0;      // index of the first row not arrived yet
  std::deque<uint64_t> waiting_;   // arrived, not admitted, in arrival order
  std::vector<uint64_t> active_;   // admitted, not finished, in admission order
  std::vector<batch_sample> series_;
  double now_s_ = 0;
  uint64_t finished_ = 0;
  void arrive();
};

// Summary over a run's outcomes (means and p99s over requests that got that far).
struct serving_summary {
  uint64_t submitted = 0, completed = 0, refused = 0, unfinished = 0, failed = 0;
  double ttft_ms_mean = 0, ttft_ms_p99 = 0, tpot_ms_mean = 0, tpot_ms_p99 = 0,
         queueing_ms_mean = 0, queueing_ms_p99 = 0;
  double batch_mean = 0;  // decoding requests per decode step
  uint32_t batch_peak = 0;
};
serving_summary summarise(const std::vector<request_outcome>& outcomes,
                          const std::vector<batch_sample>& series);

}  // namespace pnmkv
