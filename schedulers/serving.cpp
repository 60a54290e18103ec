#include "schedulers/serving.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include "core/check.hpp"

namespace pnmkv {

result<std::vector<trace_row>> load_trace(const std::string& file) {
  std::ifstream in(file);
  if (!in) return status{errc::io, "trace file '" + file + "' cannot be read"};
  std::vector<trace_row> rows;
  std::string line;
  uint64_t n = 0;
  bool seen_data = false;  // a line other than a comment or a blank one
  constexpr uint64_t rows_max = 10'000'000;
  while (std::getline(in, line)) {
    ++n;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty() || line[0] == '#') continue;
    // The first line that is not a comment may be a header: names, no digits.
    if (!seen_data && std::none_of(line.begin(), line.end(), [](char c) {
          return std::isdigit(static_cast<unsigned char>(c));
        })) {
      seen_data = true;
      continue;
    }
    seen_data = true;
    double a = 0, p = 0, o = 0;
    char c1 = 0, c2 = 0;
    std::istringstream is(line);
    if (!(is >> a >> c1 >> p >> c2 >> o) || c1 != ',' || c2 != ',' || !(is >> std::ws).eof())
      return status{errc::parse, "trace file '" + file + "' line " + std::to_string(n) +
                                     ": expected arrival_s,prompt_tokens,output_tokens (three numbers)"};
    if (!std::isfinite(a) || a < 0 || a > 1e9 || p < 1 || p > double(1ull << 26) || o < 1 || o > 1e7 ||
        p != std::floor(p) || o != std::floor(o))
      return status{errc::invalid_argument,
                    "trace file '" + file + "' line " + std::to_string(n) +
                        ": arrival_s must be in [0, 1e9], prompt_tokens in [1, 2^26], output_tokens in [1, 1e7] (integers)"};
    if (rows.size() >= rows_max)
      return status{errc::capacity, "trace file '" + file + "' has more than 10M rows"};
    rows.push_back({a, uint64_t(p), uint64_t(o)});
  }
  std::stable_sort(rows.begin(), rows.end(),
                   [](const trace_row& x, const trace_row& y) { return x.arrival_s < y.arrival_s; });
  if (rows.empty()) return status{errc::invalid_argument, "trace file '" + file + "' has no rows"};
  return rows;
}

std::vector<trace_row> poisson_arrivals(uint64_t seed, uint32_t n, double rate_per_s,
                                        uint64_t prompt_tokens, double spread_fraction,
                                        uint64_t output_tokens) {
  PNMKV_CHECK(rate_per_s > 0 && spread_fraction >= 0 && spread_fraction < 1,
              "rate_per_s=", rate_per_s, ", spread_fraction=", spread_fraction);
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(rate_per_s);
  std::uniform_real_distribution<double> u(1.0 - spread_fraction, 1.0 + spread_fraction);
  std::vector<trace_row> rows;
  rows.reserve(n);
  double t = 0;
  for (uint32_t i = 0; i < n; ++i) {
    t += gap(rng);
    const double p = std::max(1.0, std::round(double(prompt_tokens) * u(rng)));
    rows.push_back({t, uint64_t(p), std::max<uint64_t>(1, output_tokens)});
  }
  return rows;
}

serving_scheduler::serving_scheduler(std::vector<trace_row> rows, serving_params p) : p_(p) {
  PNMKV_CHECK_GT(p_.prefill_chunk_tokens, 0u);
  std::stable_sort(rows.begin(), rows.end(),
                   [](const trace_row& x, const trace_row& y) { return x.arrival_s < y.arrival_s; });
  out_.resize(rows.size());
  st_.resize(rows.size());
  for (size_t i = 0; i < rows.size(); ++i) {
    out_[i].id = i + 1;
    out_[i].arrival_s = rows[i].arrival_s;
    out_[i].prompt_tokens = std::max<uint64_t>(1, rows[i].prompt_tokens);
    out_[i].output_tokens = std::max<uint64_t>(1, rows[i].output_tokens);
  }
  arrive();
}

uint64_t serving_scheduler::submit(const trace_row& row) {
  PNMKV_CHECK(out_.empty() || row.arrival_s >= out_.back().arrival_s, "request arriving at ",
              row.arrival_s, " s submitted after one arriving at ", out_.back().arrival_s, " s");
  request_outcome o;
  o.id = out_.size() + 1;
  o.arrival_s = row.arrival_s;
  o.prompt_tokens = std::max<uint64_t>(1, row.prompt_tokens);
  o.output_tokens = std::max<uint64_t>(1, row.output_tokens);
  out_.push_back(o);
  st_.emplace_back();
  arrive();
  return o.id;
}

void serving_scheduler::arrive() {
  while (next_arrival_ < out_.size() && out_[next_arrival_].arrival_s <= now_s_)
    waiting_.push_back(out_[next_arrival_++].id);
}

std::optional<uint64_t> serving_scheduler::next_candidate() const {
  if (waiting_.empty()) return std::nullopt;
  if (p_.batch_max && active_.size() >= p_.batch_max) return std::nullopt;
  return waiting_.front();
}

void serving_scheduler::admit(uint64_t id) {
  PNMKV_CHECK(!waiting_.empty() && waiting_.front() == id, "admit request ", id,
              " not at the head of the queue (", waiting_.size(), " waiting)");
  waiting_.erase(waiting_.begin());
  out_.at(id - 1).admitted_s = now_s_;
  active_.push_back(id);
}

void serving_scheduler::admit_prefilled(uint64_t id) {
  admit(id);
  state& s = st_.at(id - 1);
  request_outcome& o = out_.at(id - 1);
  s.prefilled = o.prompt_tokens;
  s.decoding = true;
  o.first_token_s = now_s_;
  o.generated = 1;
}

bool serving_scheduler::not_admitted(uint64_t id, const std::string& why) {
  PNMKV_CHECK(!waiting_.empty() && waiting_.front() == id, "refuse request ", id,
              " not at the head of the queue (", waiting_.size(), " waiting)");
  if (!active_.empty()) return false;
  refuse(id, why);
  return true;
}

void serving_scheduler::refuse(uint64_t id, const std::string& why) {
  PNMKV_CHECK(!waiting_.empty() && waiting_.front() == id, "refuse request ", id,
              " not at the head of the queue (", waiting_.size(), " waiting)");
  waiting_.erase(waiting_.begin());
  request_outcome& o = out_.at(id - 1);
  o.refused = true;
  o.refusal = why;
  ++finished_;
}

void serving_scheduler::fail(uint64_t id, const std::string& why) {
  const auto it = std::find(active_.begin(), active_.end(), id);
  PNMKV_CHECK(it != active_.end(), "fail request ", id, ", which is not in the system (", active_.size(),
              " are)");
  active_.erase(it);
  request_outcome& o = out_.at(id - 1);
  o.failed = true;
  o.failure = why;
  ++finished_;
}

bool serving_scheduler::idle_until_next_arrival() {
  if (next_arrival_ >= out_.size()) return false;
  now_s_ = std::max(now_s_, out_[next_arrival_].arrival_s);
  arrive();
  return true;
}

step_plan serving_scheduler::plan() const {
  step_plan plan;
  uint64_t chunk_left = p_.prefill_chunk_tokens;
  for (uint64_t id : active_) {
    const state& s = st_[id - 1];
    if (s.decoding) {
      plan.decoding.push_back(id);
      continue;
    }
    if (chunk_left == 0) continue;
    const request_outcome& o = out_[id - 1];
    prefill_chunk c;
    c.request_id = id;
    c.position = s.prefilled;
    c.tokens = std::min(chunk_left, o.prompt_tokens - s.prefilled);
    c.completes = s.prefilled + c.tokens == o.prompt_tokens;
    chunk_left -= c.tokens;
    plan.prefill.push_back(c);
  }
  return plan;
}

std::vector<uint64_t> serving_scheduler::complete(const step_plan& plan, double step_s) {
  PNMKV_CHECK_GE(step_s, 0.0);
  now_s_ += step_s;
  std::vector<uint64_t> finished;
  auto finish = [&](uint64_t id) {
    out_[id - 1].finish_s = now_s_;
    finished.push_back(id);
    ++finished_;
  };
  uint32_t decoded = 0;
  for (uint64_t id : plan.decoding) {
    request_outcome& o = out_[id - 1];
    if (o.failed) continue;  // lost during the step: no token
    ++decoded;
    if (++o.generated >= o.output_tokens) finish(id);
  }
  uint64_t prefill_tokens = 0;
  for (const prefill_chunk& c : plan.prefill) {
    if (out_[c.request_id - 1].failed) continue;
    state& s = st_[c.request_id - 1];
    PNMKV_CHECK(!s.decoding && c.position == s.prefilled, "request ", c.request_id,
                " chunk at position=", c.position, " prefilled=", s.prefilled,
                " decoding=", s.decoding);
    s.prefilled += c.tokens;
    prefill_tokens += c.tokens;
    if (!c.completes) continue;
    s.decoding = true;
    request_outcome& o = out_[c.request_id - 1];
    o.first_token_s = now_s_;
    o.generated = 1;
    if (o.generated >= o.output_tokens) finish(c.request_id);
  }
  if (!finished.empty())
    active_.erase(std::remove_if(active_.begin(), active_.end(),
                                 [&](uint64_t id) {
                                   return std::find(finished.begin(), finished.end(), id) != finished.end();
                                 }),
                  active_.end());
  if (!p_.series_points_max || series_.size() < p_.series_points_max)
    series_.push_back({now_s_, decoded, prefill_tokens});
  arrive();
  return finished;
}

bool serving_scheduler::done() const { return finished_ == out_.size(); }

namespace {
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, size_t(std::ceil(q * double(v.size()))) - (q > 0 ? 1 : 0));
  return v[i];
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? 0 : s / double(v.size());
}
}  // namespace

serving_summary summarise(const std::vector<request_outcome>& outcomes,
                          const std::vector<batch_sample>& series) {
  serving_summary s;
  s.submitted = outcomes.size();
  std::vector<double> ttft, tpot, queue;
  for (const auto& o : outcomes) {
    if (o.refused) {
      ++s.refused;
      continue;
    }
    if (o.failed) {
      ++s.failed;
      if (o.admitted_s >= 0) queue.push_back(o.queueing_ms());
      continue;
    }
    if (o.finish_s < 0) ++s.unfinished;
    else ++s.completed;
    if (o.admitted_s >= 0) queue.push_back(o.queueing_ms());
    if (o.first_token_s >= 0) ttft.push_back(o.ttft_ms());
    if (o.finish_s >= 0 && o.generated > 1) tpot.push_back(o.tpot_ms());
  }
  s.ttft_ms_mean = mean(ttft), s.ttft_ms_p99 = percentile(ttft, 0.99);
  s.tpot_ms_mean = mean(tpot), s.tpot_ms_p99 = percentile(tpot, 0.99);
  s.queueing_ms_mean = mean(queue), s.queueing_ms_p99 = percentile(queue, 0.99);
  double batch_sum = 0;
  uint64_t decode_steps = 0;
  for (const auto& b : series) {
    if (b.decode_batch == 0) continue;
    batch_sum += b.decode_batch;
    ++decode_steps;
    s.batch_peak = std::max(s.batch_peak, b.decode_batch);
  }
  s.batch_mean = decode_steps ? batch_sum / double(decode_steps) : 0;
  return s;
}

}  // namespace pnmkv
