// `pnmkv eval`: the accuracy table of Quest page selection against dense attention on the
// synthetic workload (docs/DESIGN.md §4), or on a KV trace of a real model
// (workload.kind = trace, docs/TRACE_FORMAT.md: every layer of the trace, its first
// eval.kv_heads KV heads). For each context length (as far as memory allows),
// each of eval.kv_heads KV heads of layer 0 of request 0 and each of eval.steps decode
// steps it builds the store from the workload, appends the step's token, scores pages
// under both GQA aggregations (max and sum), selects the top pages for every budget of
// eval.budgets_tokens (always-kept pages included), attends, and compares with the dense
// double-precision reference: output relative error (mean, p99, max over query heads and
// steps), attention mass captured (mean, min) and needle hit rate. Running both
// aggregations backs the selection.gqa_aggregation policy with measured accuracy.
//
// KV heads run in parallel (one thread each, up to --threads and what memory allows);
// results are merged in head order, so the output does not depend on scheduling.
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <time.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "apps/commands.hpp"
#include "apps/progress.hpp"
#include "config/spec.hpp"
#include "core/accuracy.hpp"
#include "core/attention.hpp"
#include "core/kv_store.hpp"
#include "core/score.hpp"
#include "core/select.hpp"
#include "core/workload.hpp"
#include "model/model_shape.hpp"
#include "trace/kv_trace.hpp"

namespace pnmkv::apps {
namespace {

constexpr uint64_t memory_cap_bytes = 8ull << 30;  // never plan past 8 GiB
constexpr gqa_aggregation aggregations[] = {gqa_aggregation::max, gqa_aggregation::sum};
constexpr size_t n_aggregations = 2;

[[noreturn]] void fail(const std::string& message) {
  std::fprintf(stderr, "pnmkv eval: %s\n", message.c_str());
  throw CLI::RuntimeError(2);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// CPU time of the calling thread: generation speed should not depend on how many other
// processes share the cores.
double thread_cpu_s() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// MemAvailable from /proc/meminfo in bytes, or 0 when it cannot be read.
uint64_t mem_available_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  uint64_t value = 0;
  std::string unit;
  while (in >> key >> value) {
    std::getline(in, unit);
    if (key == "MemAvailable:") return value * 1024;
  }
  return 0;
}

std::string fmt_bytes(double b) {
  char buf[64];
  if (b >= double(1ull << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1ull << 30));
  } else {
    std::snprintf(buf, sizeof buf, "%.0f MiB", b / double(1ull << 20));
  }
  return buf;
}

struct eval_setup {
  model_shape model;
  workload_params params;
  uint64_t seed = 0;
  uint32_t page_size = 16;
  summary_precision summaries = summary_precision::bf16;
  gqa_aggregation configured = gqa_aggregation::max;
  std::vector<uint64_t> budgets;
  std::vector<uint64_t> contexts;
  uint32_t kv_heads = 0;  // (layer, KV head) units evaluated per context
  uint32_t steps = 0;
  // What each unit evaluates: layer 0 and KV heads 0..eval.kv_heads-1 on the synthetic
  // workload; on a trace, the first eval.kv_heads KV heads of every layer it holds.
  std::vector<std::pair<uint32_t, uint32_t>> units;
  bool from_trace = false;
  std::string source;  // what the workload is, as the header line says it
};

// Accumulators of one (KV head, context): [aggregation][budget].
struct head_result {
  std::vector<std::vector<accuracy_accumulator>> acc;
  std::vector<std::vector<std::string>> errors;  // per budget, e.g. below forced pages
  double generate_s = 0;  // keys() + values() only, thread CPU time
  double append_s = 0;    // store appends (copy + summaries), thread CPU time
  uint64_t generated_tokens = 0;
  uint64_t needle_asks = 0;
  double sink_mass_sum = 0;  // dense mass on page 0, per query head and step
  uint64_t sink_mass_n = 0;
  std::string failure;       // non-empty: this head could not be evaluated
};

head_result eval_head(const eval_setup& s, const kv_workload& w, uint64_t context,
                      uint32_t unit, progress_bar& bar) {
  const uint32_t layer = s.units[unit].first, kv_head = s.units[unit].second;
  head_result r;
  r.acc.assign(n_aggregations, std::vector<accuracy_accumulator>(s.budgets.size()));
  r.errors.assign(n_aggregations, std::vector<std::string>(s.budgets.size()));
  const uint32_t d = s.model.head_dim;
  const uint32_t g = s.model.gqa_group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  auto created = kv_head_store::create({d, s.page_size, s.summaries}, context + s.steps);
  if (!created) {
    r.failure = "kv_head_store::create: " + created.error().to_string();
    return r;
  }
  kv_head_store store = std::move(created).value();
  {
    // fill_store's loop, timed in two parts so generation speed is reported on its own.
    constexpr uint64_t chunk_tokens = 4096;
    std::vector<bf16> k(chunk_tokens * d), v(chunk_tokens * d);
    for (uint64_t done = 0; done < context;) {
      const uint64_t n = std::min(chunk_tokens, context - done);
      const double t0 = thread_cpu_s();
      w.keys(0, layer, kv_head, done, n, k.data());
      w.values(0, layer, kv_head, done, n, v.data());
      const double t1 = thread_cpu_s();
      if (auto st = store.append(done, k.data(), v.data(), n); !st) {
        r.failure = "append: " + st.to_string();
        return r;
      }
      r.generate_s += t1 - t0;
      r.append_s += thread_cpu_s() - t1;
      done += n;
    }
    r.generated_tokens = context;
  }

  std::vector<float> q(static_cast<size_t>(g) * d);
  std::vector<float> scores;
  partial dense, sparse;
  for (uint32_t step = 0; step < s.steps; ++step) {
    // The decoded token joins the context before it attends, as in real decoding.
    if (auto st = fill_store(w, store, 0, layer, kv_head, context + step, 1); !st) {
      r.failure = "append step token: " + st.to_string();
      return r;
    }
    w.queries(0, layer, kv_head, step, context, q.data());
    if (auto st = dense_attention_reference(store, q.data(), g, scale, dense); !st) {
      r.failure = "dense_attention_reference: " + st.to_string();
      return r;
    }
    auto mass = dense_page_mass(store, q.data(), g, scale);
    if (!mass) {
      r.failure = "dense_page_mass: " + mass.error().to_string();
      return r;
    }
    const uint32_t pages = store.page_count();
    for (uint32_t h = 0; h < g; ++h) r.sink_mass_sum += (*mass)[static_cast<size_t>(h) * pages];
    r.sink_mass_n += g;
    const auto needle = w.asked_needle_position(0, layer, kv_head, step, context);
    r.needle_asks += needle.has_value();
    const std::vector<uint32_t> forced = always_kept_pages(pages);
    scores.resize(pages);
    for (size_t a = 0; a < n_aggregations; ++a) {
      if (auto st = score_pages(store, q.data(), g, aggregations[a], scores.data()); !st) {
        r.failure = "score_pages: " + st.to_string();
        return r;
      }
      for (size_t b = 0; b < s.budgets.size(); ++b) {
        auto sel = select_top_pages(scores.data(), pages, forced,
                                    budget_pages({s.budgets[b], s.page_size}));
        if (!sel) {
          r.errors[a][b] = sel.error().message();
          continue;
        }
        if (auto st = attend_pages(store, q.data(), g, sel->data(), sel->size(), scale, sparse);
            !st) {
          r.failure = "attend_pages: " + st.to_string();
          return r;
        }
        auto err = output_relative_errors(sparse, dense);
        auto captured = mass_captured(*mass, g, pages, *sel);
        if (!err || !captured) {
          r.failure = "metrics: " + (!err ? err.error() : captured.error()).to_string();
          return r;
        }
        accuracy_accumulator& acc = r.acc[a][b];
        acc.add_rel_errors(*err);
        acc.add_mass(*captured);
        acc.add_pages_selected(sel->size());
        if (needle) acc.add_needle(needle_hit(store, *sel, *needle));
      }
    }
    bar.advance("context " + std::to_string(context) + " layer " + std::to_string(layer) + " head " +
                std::to_string(kv_head) +
                " step " + std::to_string(step + 1) + "/" + std::to_string(s.steps));
  }
  return r;
}

struct context_result {
  uint64_t context = 0;
  std::string skipped;  // reason, when not evaluated
  std::vector<std::vector<accuracy_accumulator>> acc;  // [aggregation][budget]
  std::vector<std::vector<std::string>> errors;
  uint64_t needles_in_context = 0;
  uint64_t needle_asks = 0;  // (head, step) pairs asking
  double sink_mass_mean = 0;
  double generate_s = 0;
  double append_s = 0;
  uint64_t generated_tokens = 0;
  double wall_s = 0;
  uint32_t threads = 0;
  uint64_t store_bytes = 0;
};

uint64_t store_bytes_needed(const eval_setup& s, uint64_t tokens) {
  const uint64_t pages = (tokens + s.page_size - 1) / s.page_size;
  const uint64_t elem = s.summaries == summary_precision::bf16 ? 2 : 4;
  const uint64_t kv = pages * s.page_size * s.model.head_dim * 2ull * sizeof(bf16);
  const uint64_t summaries = pages * 2ull * s.model.head_dim * elem;
  const uint64_t dense_scratch = tokens * sizeof(double);  // the reference's logits
  return kv + summaries + dense_scratch;
}

context_result eval_context(const eval_setup& s, const kv_workload& w, uint64_t context,
                            uint32_t threads_max, progress_bar& bar) {
  context_result c;
  c.context = context;
  c.acc.assign(n_aggregations, std::vector<accuracy_accumulator>(s.budgets.size()));
  c.errors.assign(n_aggregations, std::vector<std::string>(s.budgets.size()));
  c.store_bytes = store_bytes_needed(s, context + s.steps);
  const uint64_t available = mem_available_bytes();
  const uint64_t budget_bytes =
      available ? std::min(available, memory_cap_bytes) : memory_cap_bytes;
  if (c.store_bytes > budget_bytes) {
    c.skipped = "needs " + fmt_bytes(static_cast<double>(c.store_bytes)) + " per KV head, more than " +
                (available && available < memory_cap_bytes
                     ? "MemAvailable (" + fmt_bytes(static_cast<double>(available)) + ")"
                     : "the " + fmt_bytes(static_cast<double>(memory_cap_bytes)) + " cap");
    bar.note("skipping context " + std::to_string(context) + ": " + c.skipped);
    return c;
  }
  c.threads = static_cast<uint32_t>(std::max<uint64_t>(
      1, std::min<uint64_t>({threads_max, s.kv_heads, budget_bytes / c.store_bytes})));
  c.needles_in_context = w.needle_positions(0, 0, context).size();

  const auto t0 = std::chrono::steady_clock::now();
  std::vector<head_result> heads(s.kv_heads);
  std::atomic<uint32_t> next{0};
  auto worker = [&] {
    for (uint32_t h = next++; h < s.kv_heads; h = next++) heads[h] = eval_head(s, w, context, h, bar);
  };
  std::vector<std::thread> pool;
  for (uint32_t t = 1; t < c.threads; ++t) pool.emplace_back(worker);
  worker();
  for (auto& t : pool) t.join();
  c.wall_s = seconds_since(t0);

  double sink_sum = 0;
  uint64_t sink_n = 0;
  for (uint32_t h = 0; h < s.kv_heads; ++h) {  // head order: deterministic aggregates
    const head_result& r = heads[h];
    if (!r.failure.empty()) fail("context " + std::to_string(context) + ", layer " +
                                 std::to_string(s.units[h].first) + ", KV head " +
                                 std::to_string(s.units[h].second) + ": " + r.failure);
    for (size_t a = 0; a < n_aggregations; ++a)
      for (size_t b = 0; b < s.budgets.size(); ++b) {
        c.acc[a][b].merge(r.acc[a][b]);
        if (c.errors[a][b].empty()) c.errors[a][b] = r.errors[a][b];
      }
    c.generate_s += r.generate_s;
    c.append_s += r.append_s;
    c.generated_tokens += r.generated_tokens;
    c.needle_asks += r.needle_asks;
    sink_sum += r.sink_mass_sum;
    sink_n += r.sink_mass_n;
  }
  c.sink_mass_mean = sink_n ? sink_sum / static_cast<double>(sink_n) : 0;
  return c;
}

std::string fmt_g(double v, const char* fmt = "%.3g") {
  if (std::isnan(v)) return "-";
  char buf[32];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

nlohmann::ordered_json num_or_null(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

// Which aggregation gives the lower mean output error, cell by cell ((context, budget)
// pairs where both ran), ties when both are within 1% or both already at dense accuracy.
struct comparison {
  int wins[n_aggregations] = {0, 0};
  int ties = 0;
  double log_ratio_sum = 0;  // Σ log(err_sum / err_max) over compared cells
  int compared = 0;
  double mass_mean[n_aggregations] = {0, 0};
  uint64_t needle_hits[n_aggregations] = {0, 0};
  uint64_t needle_asks = 0;
  std::string winner;
};

comparison compare(const eval_setup& s, const std::vector<context_result>& results) {
  comparison cmp;
  int mass_cells = 0;
  for (const auto& c : results) {
    if (!c.skipped.empty()) continue;
    for (size_t b = 0; b < s.budgets.size(); ++b) {
      const auto mx = c.acc[0][b].summary();
      const auto sm = c.acc[1][b].summary();
      if (mx.samples == 0 || sm.samples == 0) continue;
      const double e_max = mx.rel_err_mean, e_sum = sm.rel_err_mean;
      if ((e_max < 1e-4 && e_sum < 1e-4) ||
          std::fabs(e_max - e_sum) <= 0.01 * std::max(e_max, e_sum)) {
        ++cmp.ties;
      } else {
        ++cmp.wins[e_max < e_sum ? 0 : 1];
      }
      if (e_max > 0 && e_sum > 0) {
        cmp.log_ratio_sum += std::log(e_sum / e_max);
        ++cmp.compared;
      }
      cmp.mass_mean[0] += mx.mass_mean;
      cmp.mass_mean[1] += sm.mass_mean;
      ++mass_cells;
      cmp.needle_hits[0] += mx.needle_hits;
      cmp.needle_hits[1] += sm.needle_hits;
      cmp.needle_asks += mx.needle_asks;
    }
  }
  if (mass_cells) {
    cmp.mass_mean[0] /= mass_cells;
    cmp.mass_mean[1] /= mass_cells;
  }
  if (cmp.wins[0] == cmp.wins[1]) {
    cmp.winner = cmp.log_ratio_sum > 0 ? "max" : cmp.log_ratio_sum < 0 ? "sum" : "tie";
  } else {
    cmp.winner = cmp.wins[0] > cmp.wins[1] ? "max" : "sum";
  }
  return cmp;
}

struct eval_options {
  config_options cfg;
  std::string json_file;
  std::string csv_file;
  unsigned threads = 0;
};

void run_eval(const eval_options& opt) {
  const auto wall0 = std::chrono::steady_clock::now();
  const config cfg = load_config_or_exit(opt.cfg);
  auto resolved = resolve_run_spec(cfg);
  if (!resolved) fail("config: " + resolved.error().to_string());
  const run_spec& spec = *resolved;
  eval_setup s;
  s.model = spec.model;
  s.params = spec.workload.synthetic;
  s.seed = spec.run.seed;
  s.page_size = spec.selection.page_size_tokens;
  s.summaries = spec.selection.summary_precision;
  s.configured = spec.selection.gqa_aggregation;
  s.budgets = spec.eval.budgets_tokens;
  s.contexts = spec.eval.contexts_tokens;
  s.kv_heads = spec.eval.kv_heads;
  s.steps = spec.eval.steps;
  if (s.kv_heads > s.model.kv_heads)
    fail("config: eval.kv_heads = " + std::to_string(s.kv_heads) + " exceeds the " +
         std::to_string(s.model.kv_heads) + " KV heads of " + s.model.name + " (" +
         s.model.file + "); allowed: [1, " + std::to_string(s.model.kv_heads) + "]");
  if (auto st = validate(kv_head_shape{s.model.head_dim, s.page_size, s.summaries}); !st)
    fail("store shape: " + st.to_string());
  std::unique_ptr<kv_workload> workload;
  std::string source = "the synthetic workload";
  std::string where = "layer 0, request 0, " + std::to_string(s.kv_heads) + " KV heads";
  if (spec.workload.from_trace) {
    auto tr = trace::kv_trace::open(spec.workload.trace_dir,
                                    {s.model.file, s.model.layers, s.model.q_heads,
                                     s.model.kv_heads, s.model.head_dim});
    if (!tr) fail("workload: " + tr.error().to_string());
    const trace::trace_manifest& m = (*tr)->manifest();
    if (s.kv_heads > m.heads.size())
      fail("config: eval.kv_heads = " + std::to_string(s.kv_heads) + " exceeds the " +
           std::to_string(m.heads.size()) + " KV heads of trace '" + spec.workload.trace_dir +
           "'; allowed: [1, " + std::to_string(m.heads.size()) + "]");
    for (uint64_t context : s.contexts)
      if (auto st = (*tr)->check_span(context, s.steps,
                                      "eval.contexts_tokens entry " + std::to_string(context) +
                                          " with eval.steps = " + std::to_string(s.steps));
          !st)
        fail("config: " + st.message());
    for (uint32_t l : m.layers)
      for (uint32_t i = 0; i < s.kv_heads; ++i) s.units.emplace_back(l, m.heads[i]);
    s.from_trace = true;
    source = "the KV trace '" + spec.workload.trace_dir + "' (" +
             (m.model_name.empty() ? std::string("unnamed model") : m.model_name) + ", " +
             trace::to_string(m.type) + ", " + std::to_string(m.positions) + " positions" +
             (m.head_dim != s.model.head_dim ? ", head_dim " + std::to_string(m.head_dim) +
                                                   " zero-padded to " + std::to_string(s.model.head_dim)
                                             : std::string()) +
             ")";
    where = std::to_string(m.layers.size()) + " layer(s) x " + std::to_string(s.kv_heads) +
            " KV heads, request 0";
    workload = std::move(tr).value();
  } else {
    auto created = synthetic_workload::create(s.params, s.seed, s.model.head_dim, s.model.gqa_group());
    if (!created) fail("workload: " + created.error().to_string());
    workload = std::make_unique<synthetic_workload>(std::move(created).value());
    for (uint32_t h = 0; h < s.kv_heads; ++h) s.units.emplace_back(0, h);
  }
  const kv_workload& w = *workload;
  s.source = source;
  s.kv_heads = static_cast<uint32_t>(s.units.size());
  const unsigned threads =
      opt.threads ? opt.threads : std::max(1u, std::thread::hardware_concurrency());

  std::printf("pnmkv eval: Quest page selection vs dense attention on %s\n", source.c_str());
  std::printf("model %s (%s): head_dim %u, GQA group %u | page %u tokens, %s summaries | "
              "seed %llu | %s x %u steps per context\n",
              s.model.name.c_str(), s.model.file.c_str(), s.model.head_dim,
              s.model.gqa_group(), s.page_size, to_string(s.summaries),
              static_cast<unsigned long long>(s.seed), where.c_str(), s.steps);
  std::printf("config %s | budgets count every selected page x page size, always-kept "
              "pages (first, last) included | each cell aggregates %u query heads x %u steps x "
              "%u KV heads = %u samples%s\n",
              cfg.source_file().empty() ? "(defaults)" : cfg.source_file().c_str(),
              s.model.gqa_group(), s.steps, s.kv_heads, s.model.gqa_group() * s.steps * s.kv_heads,
              s.model.gqa_group() * s.steps * s.kv_heads < 100 ? " (p99 of < 100 samples is the max)"
                                                                 : "");
  std::fflush(stdout);

  progress_bar bar("pnmkv eval", static_cast<uint64_t>(s.contexts.size()) * s.kv_heads * s.steps);
  std::vector<context_result> results;
  for (uint64_t context : s.contexts) {
    results.push_back(eval_context(s, w, context, threads, bar));
    const auto& c = results.back();
    if (c.skipped.empty())
      bar.note("context " + std::to_string(context) + " done in " + fmt_g(c.wall_s, "%.1f") +
               " s on " + std::to_string(c.threads) + " thread(s)");
  }
  bar.finish();

  // Human table.
  double gen_s = 0, append_s = 0;
  uint64_t gen_tokens = 0;
  for (const auto& c : results) {
    std::printf("\n");
    if (!c.skipped.empty()) {
      std::printf("context %llu tokens: skipped (%s)\n",
                  static_cast<unsigned long long>(c.context), c.skipped.c_str());
      continue;
    }
    gen_s += c.generate_s;
    append_s += c.append_s;
    gen_tokens += c.generated_tokens;
    if (s.from_trace) {
      std::printf("context %llu tokens (+%u decoded): a trace has no labelled needles; dense mass "
                  "on the sink page %.1f%%; %.1f s\n",
                  static_cast<unsigned long long>(c.context), s.steps, 100 * c.sink_mass_mean, c.wall_s);
    } else {
      std::printf("context %llu tokens (+%u decoded): %llu needles in context, %llu of %llu "
                  "(head, step) pairs ask for one; dense mass on the sink page %.1f%%; %.1f s\n",
                  static_cast<unsigned long long>(c.context), s.steps,
                  static_cast<unsigned long long>(c.needles_in_context),
                  static_cast<unsigned long long>(c.needle_asks),
                  static_cast<unsigned long long>(uint64_t{s.kv_heads} * s.steps),
                  100 * c.sink_mass_mean, c.wall_s);
    }
    std::printf("  %-4s %8s %6s %10s %10s %10s %9s %9s %9s\n", "gqa", "budget", "pages",
                "err_mean", "err_p99", "err_max", "mass_mean", "mass_min", "needle");
    for (size_t a = 0; a < n_aggregations; ++a) {
      for (size_t b = 0; b < s.budgets.size(); ++b) {
        const auto sm = c.acc[a][b].summary();
        if (sm.samples == 0) {
          std::printf("  %-4s %8llu  not run: %s\n", to_string(aggregations[a]),
                      static_cast<unsigned long long>(s.budgets[b]), c.errors[a][b].c_str());
          continue;
        }
        const std::string needle =
            sm.needle_asks ? std::to_string(sm.needle_hits) + "/" + std::to_string(sm.needle_asks)
                           : "-";
        std::printf("  %-4s %8llu %6.0f %10s %10s %10s %9s %9s %9s\n", to_string(aggregations[a]),
                    static_cast<unsigned long long>(s.budgets[b]), sm.pages_selected_mean,
                    fmt_g(sm.rel_err_mean).c_str(), fmt_g(sm.rel_err_p99).c_str(),
                    fmt_g(sm.rel_err_max).c_str(), fmt_g(sm.mass_mean, "%.4f").c_str(),
                    fmt_g(sm.mass_min, "%.4f").c_str(), needle.c_str());
      }
    }
  }
  const comparison cmp = compare(s, results);
  std::printf("\nGQA aggregation, by mean output relative error per (context, budget) cell: "
              "max better in %d, sum better in %d, within 1%% in %d",
              cmp.wins[0], cmp.wins[1], cmp.ties);
  if (cmp.compared)
    std::printf("; geometric mean of err(sum)/err(max) = %.3f",
                std::exp(cmp.log_ratio_sum / cmp.compared));
  std::printf("\n  mean mass captured: max %.4f, sum %.4f; needle hits: max %llu, sum %llu of %llu asks\n",
              cmp.mass_mean[0], cmp.mass_mean[1],
              static_cast<unsigned long long>(cmp.needle_hits[0]),
              static_cast<unsigned long long>(cmp.needle_hits[1]),
              static_cast<unsigned long long>(cmp.needle_asks));
  std::printf("  measured winner: %s; configured selection.gqa_aggregation = %s%s\n",
              cmp.winner.c_str(), to_string(s.configured),
              cmp.winner == to_string(s.configured) || cmp.winner == "tie"
                  ? ""
                  : "  <-- the measurements favour the other policy");
  const double wall_s = seconds_since(wall0);
  if (gen_tokens)
    std::printf("workload generation: %.2f M tokens (K and V, %u dims each) in %.2f s of thread "
                "CPU time = %.2f M tokens/s per thread (%.2f s per 1M tokens); store appends "
                "%.2f s CPU; %u thread(s) on %u hardware threads; total wall time %.1f s\n",
                gen_tokens / 1e6, s.model.head_dim, gen_s, gen_tokens / 1e6 / gen_s,
                gen_s / (gen_tokens / 1048576.0), append_s, threads,
                std::thread::hardware_concurrency(), wall_s);

  // CSV and JSON.
  if (!opt.csv_file.empty()) {
    std::ofstream out(opt.csv_file);
    if (!out) fail("cannot write --csv file '" + opt.csv_file + "'");
    out << "context_tokens,gqa_aggregation,budget_tokens,pages_selected_mean,samples,"
           "rel_err_mean,rel_err_p99,rel_err_max,mass_captured_mean,mass_captured_min,"
           "needle_asks,needle_hits,needle_hit_rate,skipped\n";
    auto csv_num = [](double v) { return std::isfinite(v) ? fmt_g(v, "%.9g") : std::string(); };
    for (const auto& c : results) {
      if (!c.skipped.empty()) {
        out << c.context << ",,,,,,,,,,,,,\"" << c.skipped << "\"\n";
        continue;
      }
      for (size_t a = 0; a < n_aggregations; ++a)
        for (size_t b = 0; b < s.budgets.size(); ++b) {
          const auto sm = c.acc[a][b].summary();
          out << c.context << ',' << to_string(aggregations[a]) << ',' << s.budgets[b] << ','
              << csv_num(sm.pages_selected_mean) << ',' << sm.samples << ','
              << csv_num(sm.rel_err_mean) << ',' << csv_num(sm.rel_err_p99) << ','
              << csv_num(sm.rel_err_max) << ',' << csv_num(sm.mass_mean) << ','
              << csv_num(sm.mass_min) << ',' << sm.needle_asks << ',' << sm.needle_hits << ','
              << csv_num(sm.needle_hit_rate) << ','
              << (sm.samples ? "" : "\"" + c.errors[a][b] + "\"") << '\n';
        }
    }
    if (!out) fail("error writing --csv file '" + opt.csv_file + "'");
  }
  if (!opt.json_file.empty()) {
    nlohmann::ordered_json j;
    j["command"] = "eval";
    j["config_file"] = cfg.source_file();
    j["config"] = nlohmann::ordered_json::parse(cfg.to_json());
    j["model"] = {{"name", s.model.name}, {"file", s.model.file},
                  {"head_dim", s.model.head_dim}, {"gqa_group", s.model.gqa_group()}};
    j["workload"] = {{"kind", s.from_trace ? "trace" : "synthetic"}, {"source", s.source}};
    nlohmann::ordered_json rows = nlohmann::ordered_json::array();
    nlohmann::ordered_json contexts = nlohmann::ordered_json::array();
    for (const auto& c : results) {
      nlohmann::ordered_json cj = {{"context_tokens", c.context}};
      if (!c.skipped.empty()) {
        cj["skipped"] = c.skipped;
        contexts.push_back(cj);
        continue;
      }
      cj["decoded_tokens"] = s.steps;
      cj["kv_heads"] = s.kv_heads;
      cj["needles_in_context"] = c.needles_in_context;
      cj["needle_asking_head_steps"] = c.needle_asks;
      cj["sink_page_mass_mean"] = c.sink_mass_mean;
      cj["store_bytes_per_head"] = c.store_bytes;
      cj["threads"] = c.threads;
      cj["wall_s"] = c.wall_s;
      cj["generate_s"] = c.generate_s;
      cj["append_s"] = c.append_s;
      contexts.push_back(cj);
      for (size_t a = 0; a < n_aggregations; ++a)
        for (size_t b = 0; b < s.budgets.size(); ++b) {
          const auto sm = c.acc[a][b].summary();
          nlohmann::ordered_json r = {{"context_tokens", c.context},
                                      {"gqa_aggregation", to_string(aggregations[a])},
                                      {"budget_tokens", s.budgets[b]},
                                      {"samples", sm.samples}};
          if (sm.samples == 0) {
            r["not_run"] = c.errors[a][b];
          } else {
            r["pages_selected_mean"] = sm.pages_selected_mean;
            r["rel_err_mean"] = num_or_null(sm.rel_err_mean);
            r["rel_err_p99"] = num_or_null(sm.rel_err_p99);
            r["rel_err_max"] = num_or_null(sm.rel_err_max);
            r["mass_captured_mean"] = num_or_null(sm.mass_mean);
            r["mass_captured_min"] = num_or_null(sm.mass_min);
            r["needle_asks"] = sm.needle_asks;
            r["needle_hits"] = sm.needle_hits;
            r["needle_hit_rate"] = num_or_null(sm.needle_hit_rate);
          }
          rows.push_back(r);
        }
    }
    j["contexts"] = contexts;
    j["results"] = rows;
    j["gqa_aggregation_comparison"] = {
        {"max_better_cells", cmp.wins[0]},
        {"sum_better_cells", cmp.wins[1]},
        {"tied_cells", cmp.ties},
        {"geomean_err_sum_over_max",
         num_or_null(cmp.compared ? std::exp(cmp.log_ratio_sum / cmp.compared) : NAN)},
        {"mass_captured_mean_max", cmp.mass_mean[0]},
        {"mass_captured_mean_sum", cmp.mass_mean[1]},
        {"needle_hits_max", cmp.needle_hits[0]},
        {"needle_hits_sum", cmp.needle_hits[1]},
        {"needle_asks", cmp.needle_asks},
        {"winner", cmp.winner},
        {"configured", to_string(s.configured)}};
    j["generation"] = {{"tokens", gen_tokens},
                       {"thread_cpu_s", gen_s},
                       {"append_thread_cpu_s", append_s},
                       {"tokens_per_s_per_thread", num_or_null(gen_tokens / gen_s)}};
    j["wall_s"] = wall_s;
    std::ofstream out(opt.json_file);
    if (!out) fail("cannot write --json file '" + opt.json_file + "'");
    out << j.dump(2) << '\n';
    if (!out) fail("error writing --json file '" + opt.json_file + "'");
  }
}

}  // namespace

void register_eval(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "eval", "Accuracy of Quest page selection vs dense attention on the synthetic workload "
              "or a KV trace (workload.kind = trace): "
              "output error, attention mass captured and needle hits per context, budget and "
              "GQA aggregation (eval.*, workload.*, selection.* keys)");
  static eval_options opt;
  add_config_options(cmd, opt.cfg);
  cmd->add_option("--json", opt.json_file, "Also write the results as JSON to this file");
  cmd->add_option("--csv", opt.csv_file, "Also write the results as CSV to this file");
  cmd->add_option("--threads", opt.threads,
                  "KV heads evaluated in parallel (default: hardware threads; memory permitting)");
  cmd->callback([] { run_eval(opt); });
}

}  // namespace pnmkv::apps
