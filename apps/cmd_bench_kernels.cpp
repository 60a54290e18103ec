// `pnmkv bench kernels`: how close the device kernels (Quest scoring, top-k selection,
// sparse and dense attention) come to this core's own memory-read bandwidth, measured in
// the same run. The real PNM device is memory-bound, so the emulator's kernels should be
// too; this command says whether they are, on this CPU, with the Highway target chosen.
//
// Method: one (layer, KV head) store of --context-tokens random bf16 tokens. Every timed
// run starts with cold caches (a buffer several times the LLC is read first), and every
// kernel measurement is interleaved with a plain vectorised read of the same number of
// bytes from a separate buffer, best of --repeats for both, so a noisy neighbour hits
// both sides of each ratio alike. Sparse attention over a small budget touches too few
// bytes per call to leave the caches, so it runs a batch of distinct queries (distinct
// selected pages) per timed run.
//
// Roofline: the GQA 4/16 kernels do 4–16 flops per byte, which on a CPU core can be more
// than its FMA units finish in the time the bytes take to arrive, so read bandwidth alone
// is the wrong yardstick. Each measurement is also interleaved with a burst of
// register-only FMAs (core/peak.hpp, best of --repeats), and each kernel is held to
// min(read GB/s, peak Gflop/s / arithmetic intensity), its flops and bytes counted by
// core/roofline.hpp (2 flops per FMA; exp and softmax bookkeeping not counted).


#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#endif

#include "apps/commands.hpp"
#include "core/attention.hpp"
#include "core/check.hpp"
#include "core/exact_search.hpp"
#include "core/kv_store.hpp"
#include "core/membw.hpp"
#include "core/peak.hpp"
#include "core/roofline.hpp"
#include "core/score.hpp"
#include "core/select.hpp"
#include "core/workload.hpp"

namespace pnmkv::apps {


namespace {

struct bench_options {
  std::string json_file;
  uint64_t context_tokens = uint64_t{1} << 20;
  uint32_t head_dim = 128;
  uint32_t page_size_tokens = 16;
  uint64_t budget_tokens = 2048;
  uint64_t large_budget_tokens = 65536;
  uint32_t repeats = 5;
  uint64_t seed = 1;
  std::string summaries = "bf16";
  std::vector<uint64_t> search_contexts = {uint64_t{1} << 17, uint64_t{1} << 20};
  uint32_t search_queries = 8;
};

constexpr uint32_t repeats_max = 1000;
constexpr uint64_t context_tokens_max = uint64_t{1} << 23;  // 8M tokens: 4 GiB of K+V at d=128

volatile uint64_t sink_u64;  // keeps reads and results alive
volatile float sink_f32;

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// CPU time of this thread: on a shared 2-core machine the kernel is often descheduled
// mid-run, and wall time then measures the neighbours, not the kernel. Kernels and the
// read reference are timed alike; wall times go to the JSON too.
double thread_seconds() {
#if defined(__linux__)
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) == 0) return ts.tv_sec + ts.tv_nsec * 1e-9;
#endif
  return seconds_now();
}

// A cache-line aligned buffer; large ones offered to transparent huge pages, exactly as
// the KV store does, so the read reference pays the same TLB costs as the kernels.
struct big_buffer {
  struct free_deleter {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  std::unique_ptr<uint8_t[], free_deleter> data;
  size_t bytes = 0;

  explicit big_buffer(size_t n) : bytes(n) {
    const size_t align = n >= (size_t{32} << 20) ? (size_t{2} << 20) : 64;
    const size_t rounded = (std::max<size_t>(n, 1) + align - 1) / align * align;
    data.reset(static_cast<uint8_t*>(std::aligned_alloc(align, rounded)));
    if (!data) return;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align > 64) (void)madvise(data.get(), rounded, MADV_HUGEPAGE);
#endif
    // Touch every byte so no page fault lands inside a timed region.
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 131u + 7u);
  }
};

uint64_t read_bytes(const uint8_t* p, size_t n) { return read_sum(p, n); }

struct timing {
  double kernel_s = INFINITY;  // best of the repeats (thread CPU time)
  double read_s = INFINITY;    // best read of the same byte count, interleaved
  double kernel_wall_s = INFINITY;
  double read_wall_s = INFINITY;
  double bytes = 0;            // bytes one timed kernel run reads
  double peak_gflops = 0;      // best FMA burst interleaved with this measurement
  double kernel_gbps() const { return bytes / kernel_s / 1e9; }
  double read_gbps() const { return bytes / read_s / 1e9; }
  double vs_read() const { return read_s / kernel_s; }
};

class bench_context {
 public:
  bench_context(size_t flush_bytes, size_t read_bytes_max)
      : flush_(flush_bytes), read_(read_bytes_max) {}
  bool ok() const { return flush_.data && read_.data; }

  void flush_caches() { sink_u64 = read_bytes(flush_.data.get(), flush_.bytes); }

  // Best of `repeats` for fn (cold caches each time) and for a plain read of `bytes`.
  timing measure(double bytes, uint32_t repeats, const std::function<void()>& fn) {
    timing t;
    t.bytes = bytes;
    const size_t read_n = std::min(read_.bytes, static_cast<size_t>(bytes));
    const double read_scale = bytes / double(read_n);
    for (uint32_t r = 0; r < repeats; ++r) {
      flush_caches();
      double w0 = seconds_now();
      double c0 = thread_seconds();
      sink_u64 = read_bytes(read_.data.get(), read_n);
      t.read_s = std::min(t.read_s, (thread_seconds() - c0) * read_scale);
      t.read_wall_s = std::min(t.read_wall_s, (seconds_now() - w0) * read_scale);
      flush_caches();
      w0 = seconds_now();
      c0 = thread_seconds();
      fn();
      t.kernel_s = std::min(t.kernel_s, thread_seconds() - c0);
      t.kernel_wall_s = std::min(t.kernel_wall_s, seconds_now() - w0);
      t.peak_gflops = std::max(t.peak_gflops, measure_peak_gflops(peak_burst_flops, 1).gflops);
    }
    return t;
  }

  // About 2 ms of FMAs at 200 Gflop/s: long against the clock, short against the run.
  static constexpr double peak_burst_flops = 4e8;

 private:
  big_buffer flush_;
  big_buffer read_;
};

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

// The last-level cache one core sees: sysfs first (sysconf reports the whole package on
// some VMs, e.g. 256 MiB for an EPYC whose cores share 32 MiB).
size_t llc_bytes() {
  for (int index = 3; index >= 2; --index) {
    std::ifstream in("/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/size");
    std::string text;
    if (in >> text && !text.empty()) {
      char unit = text.back();
      const size_t value = std::strtoull(text.c_str(), nullptr, 10);
      if (value > 0) {
        if (unit == 'K') return value << 10;
        if (unit == 'M') return value << 20;
        return value;
      }
    }
  }
#if defined(__linux__) && defined(_SC_LEVEL3_CACHE_SIZE)
  const long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
  if (l3 > 0) return static_cast<size_t>(l3);
#endif
  return size_t{32} << 20;  // a generous guess when the OS does not say
}

uint64_t physical_memory_bytes() {
#if defined(__linux__)
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page = sysconf(_SC_PAGE_SIZE);
  if (pages > 0 && page > 0) return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
#endif
  return 0;
}

// splitmix64: fast and seeded; four bf16 values per call.
struct fast_rng {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
};

// Fills the store with uniform bf16 values in [-2, 2) (keys get a per-dimension offset so
// page summaries differ), 8192 tokens per append.
status fill_store(kv_head_store& store, uint64_t tokens, uint64_t seed) {
  const uint32_t d = store.shape().head_dim;
  std::vector<bf16> table(65536);
  for (uint32_t u = 0; u < 65536; ++u) table[u] = to_bf16(static_cast<float>(u) / 16384.0f - 2.0f);
  fast_rng rng{seed};
  std::vector<uint16_t> offset(d);
  for (uint32_t j = 0; j < d; ++j) offset[j] = static_cast<uint16_t>(rng.next() & 0x3fff);
  const uint64_t chunk = 8192;
  std::vector<bf16> k(chunk * d);
  std::vector<bf16> v(chunk * d);
  for (uint64_t t0 = 0; t0 < tokens; t0 += chunk) {
    const uint64_t n = std::min(chunk, tokens - t0);
    for (size_t i = 0; i < n * d; i += 4) {
      uint64_t rk = rng.next();
      uint64_t rv = rng.next();
      for (size_t j = 0; j < 4 && i + j < n * d; ++j) {
        const uint16_t uk = static_cast<uint16_t>(rk >> (16 * j));
        k[i + j] = table[static_cast<uint16_t>((uk >> 1) + offset[(i + j) % d])];
        v[i + j] = table[static_cast<uint16_t>(rv >> (16 * j))];
      }
    }
    if (status s = store.append(t0, k.data(), v.data(), n); !s) return s;
  }
  return status::ok();
}

std::vector<float> random_queries(std::mt19937_64& gen, size_t n) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> q(n);
  for (float& x : q) x = dist(gen);
  return q;
}

[[noreturn]] void fail(const std::string& what, int code = 1) {
  std::fprintf(stderr, "pnmkv bench kernels: error: %s\n", what.c_str());
  throw CLI::RuntimeError(code);
}

void check(const status& s, const char* what) {
  if (!s) fail(std::string(what) + ": " + s.to_string());
}

void progress(const char* step) { std::fprintf(stderr, "pnmkv bench kernels: %s\n", step); }

std::string fmt_bytes(double b) {
  char buf[64];
  if (b >= double(1 << 30)) {
    std::snprintf(buf, sizeof buf, "%.2f GiB", b / double(1 << 30));
  } else if (b >= double(1 << 20)) {
    std::snprintf(buf, sizeof buf, "%.1f MiB", b / double(1 << 20));
  } else {
    std::snprintf(buf, sizeof buf, "%.1f KiB", b / 1024.0);
  }
  return buf;
}

std::string fmt_time(double s) {
  char buf[64];
  if (s >= 1.0) {
    std::snprintf(buf, sizeof buf, "%.2f s", s);
  } else if (s >= 1e-3) {
    std::snprintf(buf, sizeof buf, "%.2f ms", s * 1e3);
  } else {
    std::snprintf(buf, sizeof buf, "%.1f us", s * 1e6);
  }
  return buf;
}

struct kernel_row {
  std::string name;
  timing t;
  double scalar_gbps = 0;      // 0: no scalar counterpart
  double pages_read_gbps = 0;  // 0: not a sparse run
  kernel_work work;            // flops and bytes of one timed run (core/roofline.hpp)

  // What the kernel could reach here: min(read, peak / AI), from the read and the FMA
  // bursts interleaved with this very measurement.
  double roofline_gbps() const {
    return pnmkv::roofline_gbps(t.read_gbps(), t.peak_gflops, work.flop_per_byte());
  }
  double roofline_ratio() const { return t.kernel_gbps() / roofline_gbps(); }
};

void print_row(const kernel_row& r) {
  char scalar[64] = "";
  char pages[64] = "";
  if (r.scalar_gbps > 0) {
    std::snprintf(scalar, sizeof scalar, "%8.2f %7.1fx", r.scalar_gbps,
                  r.t.kernel_gbps() / r.scalar_gbps);
  }
  if (r.pages_read_gbps > 0) {
    std::snprintf(pages, sizeof pages, " %8.2f %6.2f", r.pages_read_gbps,
                  r.t.kernel_gbps() / r.pages_read_gbps);
  }
  std::printf("%-30s %10s %10s %7.2f %7.2f %6.2f %6.1f %7.1f %7.2f %6.2f %-17s%s\n",
              r.name.c_str(), fmt_bytes(r.t.bytes).c_str(), fmt_time(r.t.kernel_s).c_str(),
              r.t.kernel_gbps(), r.t.read_gbps(), r.t.vs_read(), r.work.flop_per_byte(),
              r.t.peak_gflops, r.roofline_gbps(), r.roofline_ratio(), scalar, pages);
}

nlohmann::json row_json(const kernel_row& r) {
  nlohmann::json j = {{"gbps", r.t.kernel_gbps()},
                      {"seconds", r.t.kernel_s},
                      {"bytes_read", r.t.bytes},
                      {"read_gbps", r.t.read_gbps()},
                      {"vs_read", r.t.vs_read()},
                      {"wall_gbps", r.t.bytes / r.t.kernel_wall_s / 1e9},
                      {"read_wall_gbps", r.t.bytes / r.t.read_wall_s / 1e9},
                      {"flops", r.work.flops},
                      {"arithmetic_intensity_flop_per_byte", r.work.flop_per_byte()},
                      {"peak_gflops", r.t.peak_gflops},
                      {"roofline_gbps", r.roofline_gbps()},
                      {"roofline_ratio", r.roofline_ratio()}};
  if (r.scalar_gbps > 0) {
    j["scalar_gbps"] = r.scalar_gbps;
    j["vs_scalar"] = r.t.kernel_gbps() / r.scalar_gbps;
  }
  if (r.pages_read_gbps > 0) {
    j["pages_read_gbps"] = r.pages_read_gbps;
    j["vs_pages_read"] = r.t.kernel_gbps() / r.pages_read_gbps;
  }
  return j;
}

// (7) Page search per selection.search (core/exact_search.hpp): the whole selection of one
// query (flat: score every summary and select; exact-int8: bound from the int8 summaries,
// rescore, select), on stores of the synthetic workload (sinks, topics, needles: real
// attention structure, which the bounds prune on; uniform random keys would be the worst
// case) at each --search-contexts length, with that workload's queries at successive
// decode steps. Each query is timed from cold caches (best of --repeats), next to a plain
// read of the bytes the search touched; the bytes are the ones the search counted.
struct search_row {
  std::string name;
  uint64_t context_tokens = 0;
  uint32_t group = 0;
  gqa_aggregation agg = gqa_aggregation::max;
  page_search search = page_search::flat;
  double seconds_per_query = 0;
  double read_seconds_per_query = 0;  // plain read of the same bytes, interleaved
  double bytes_per_query = 0;
  double summary_bytes_per_query = 0;
  double int8_bytes_per_query = 0;
  double flops_per_query = 0;
  double int_ops_per_query = 0;
  double rescored_fraction = 0;
  double bytes_vs_flat = 0;
  double time_vs_flat = 0;
  double vs_read() const { return read_seconds_per_query / seconds_per_query; }
};

std::vector<search_row> bench_searches(const bench_options& opt, bench_context& ctx,
                                       const kv_head_shape& base_shape) {
  std::vector<search_row> rows;
  for (uint64_t context : opt.search_contexts) {
    for (uint32_t group : {4u, 16u}) {
      auto wl = synthetic_workload::create(workload_params{}, opt.seed, base_shape.head_dim, group);
      if (!wl) fail("workload: " + wl.error().to_string());
      kv_head_shape shape = base_shape;
      shape.search = page_search::exact_int8;  // keeps both summaries: flat ignores the int8 ones
      progress(("search: filling " + std::to_string(context) + " tokens of the synthetic "
                "workload (GQA " + std::to_string(group) + ")").c_str());
      auto created = kv_head_store::create(shape, context);
      if (!created) fail("kv_head_store: " + created.error().to_string());
      kv_head_store store = std::move(created).value();
      check(fill_store(*wl, store, 0, 0, 0, 0, context), "fill_store");
      const uint32_t pages = store.page_count();
      const uint64_t budget = budget_pages(selection_budget{opt.budget_tokens, shape.page_size_tokens});
      std::vector<std::vector<float>> qs(opt.search_queries, std::vector<float>(size_t(group) * shape.head_dim));
      for (uint32_t i = 0; i < opt.search_queries; ++i) wl->queries(0, 0, 0, i, context, qs[i].data());
      for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
        search_row flat_row;
        for (page_search search : {page_search::flat, page_search::exact_int8}) {
          progress(("search " + std::string(to_string(search)) + " GQA " + std::to_string(group) +
                    " " + to_string(agg) + " at " + std::to_string(context) + " tokens").c_str());
          search_row r;
          r.context_tokens = context;
          r.group = group;
          r.agg = agg;
          r.search = search;
          r.name = std::string(to_string(search)) + " GQA " + std::to_string(group) + " " +
                   to_string(agg) + " " + std::to_string(context / 1024) + "K";
          search_scratch scratch;
          std::vector<uint32_t> sel;
          std::vector<float> sel_scores;
          search_query q;
          q.group = group;
          q.aggregation = agg;
          q.forced = always_kept_pages(pages);
          q.budget_pages = std::min<uint64_t>(budget, pages);
          search_work total;
          for (uint32_t i = 0; i < opt.search_queries; ++i) {
            q.q_group = qs[i].data();
            search_work once;
            check(search_top_pages(store, search, q, sel, sel_scores, once, scratch), "search");
            total += once;
            const timing t = ctx.measure(double(once.bytes()), opt.repeats, [&] {
              search_work w;
              check(search_top_pages(store, search, q, sel, sel_scores, w, scratch), "search");
              sink_u64 = sel.size();
            });
            r.seconds_per_query += t.kernel_s / opt.search_queries;
            r.read_seconds_per_query += t.read_s / opt.search_queries;
          }
          const double n = opt.search_queries;
          r.bytes_per_query = double(total.bytes()) / n;
          r.summary_bytes_per_query = double(total.summary_bytes) / n;
          r.int8_bytes_per_query = double(total.int8_bytes) / n;
          r.flops_per_query = total.flops / n;
          r.int_ops_per_query = total.int_ops / n;
          r.rescored_fraction = double(total.pages_rescored) / double(total.pages);
          if (search == page_search::flat) flat_row = r;
          r.bytes_vs_flat = r.bytes_per_query / flat_row.bytes_per_query;
          r.time_vs_flat = r.seconds_per_query / flat_row.seconds_per_query;
          rows.push_back(r);
        }
      }
    }
  }
  return rows;
}

void print_search_rows(const std::vector<search_row>& rows, uint64_t budget_tokens) {
  std::printf("\npage search per selection.search (synthetic workload, budget %llu tokens, per "
              "query, cold caches):\n",
              static_cast<unsigned long long>(budget_tokens));
  std::printf("%-32s %10s %10s %9s %9s %7s %7s %9s %7s %7s\n", "search", "bytes", "time", "GB/s",
              "read", "/read", "rescore", "B vs flat", "t/flat", "int8 B");
  for (const search_row& r : rows) {
    std::printf("%-32s %10s %10s %9.2f %9.2f %7.2f %7.3f %9.3f %7.3f %7s\n", r.name.c_str(),
                fmt_bytes(r.bytes_per_query).c_str(), fmt_time(r.seconds_per_query).c_str(),
                r.bytes_per_query / r.seconds_per_query / 1e9,
                r.bytes_per_query / r.read_seconds_per_query / 1e9, r.vs_read(), r.rescored_fraction,
                r.bytes_vs_flat, r.time_vs_flat, fmt_bytes(r.int8_bytes_per_query).c_str());
  }
}

nlohmann::json search_rows_json(const std::vector<search_row>& rows) {
  nlohmann::json out = nlohmann::json::array();
  for (const search_row& r : rows) {
    out.push_back({{"search", to_string(r.search)},
                   {"context_tokens", r.context_tokens},
                   {"gqa_group", r.group},
                   {"gqa_aggregation", to_string(r.agg)},
                   {"seconds_per_query", r.seconds_per_query},
                   {"bytes_per_query", r.bytes_per_query},
                   {"summary_bytes_per_query", r.summary_bytes_per_query},
                   {"int8_bytes_per_query", r.int8_bytes_per_query},
                   {"flops_per_query", r.flops_per_query},
                   {"int_ops_per_query", r.int_ops_per_query},
                   {"gbps", r.bytes_per_query / r.seconds_per_query / 1e9},
                   {"read_gbps", r.bytes_per_query / r.read_seconds_per_query / 1e9},
                   {"vs_read", r.vs_read()},
                   {"rescored_fraction", r.rescored_fraction},
                   {"bytes_vs_flat", r.bytes_vs_flat},
                   {"time_vs_flat", r.time_vs_flat}});
  }
  return out;
}

void run_bench(const bench_options& opt) {
  if (opt.repeats < 1 || opt.repeats > repeats_max) {
    fail("--repeats = " + std::to_string(opt.repeats) + " is not allowed: 1.." +
             std::to_string(repeats_max), 2);
  }
  if (opt.context_tokens < 1 || opt.context_tokens > context_tokens_max) {
    fail("--context-tokens = " + std::to_string(opt.context_tokens) + " is not allowed: 1.." +
             std::to_string(context_tokens_max), 2);
  }
  for (uint64_t c : opt.search_contexts) {
    if (c < 1 || c > context_tokens_max) {
      fail("--search-contexts: " + std::to_string(c) + " is not allowed: 1.." +
               std::to_string(context_tokens_max), 2);
    }
  }
  if (opt.search_queries < 1 || opt.search_queries > 256) {
    fail("--search-queries = " + std::to_string(opt.search_queries) + " is not allowed: 1..256", 2);
  }
  kv_head_shape shape;
  shape.head_dim = opt.head_dim;
  shape.page_size_tokens = opt.page_size_tokens;
  if (opt.summaries == "bf16") {
    shape.summaries = summary_precision::bf16;
  } else if (opt.summaries == "fp32") {
    shape.summaries = summary_precision::fp32;
  } else {
    fail("--summaries = " + opt.summaries + " is not allowed: bf16 or fp32", 2);
  }
  if (status s = validate(shape); !s) fail("--head-dim / --page-size: " + s.message(), 2);
  const uint64_t budget_small = budget_pages(selection_budget{opt.budget_tokens, shape.page_size_tokens});
  const uint64_t budget_large =
      budget_pages(selection_budget{opt.large_budget_tokens, shape.page_size_tokens});
  if (budget_small < 2 || budget_large < 2) {
    fail("--budget-tokens and --large-budget-tokens must buy at least 2 pages (the sink and "
         "the last page) of " + std::to_string(shape.page_size_tokens) + " tokens", 2);
  }

  // The peak bursts and the kernels are dispatched alike; a different target would hold
  // the kernels to another core's peak.
  if (std::strcmp(peak_target_name(), kernel_target_name()) != 0) {
    fail(std::string("the compute-peak probe runs ") + peak_target_name() +
         " but the kernels run " + kernel_target_name());
  }
  const double d = shape.head_dim;
  const double kv_bytes_total = double(opt.context_tokens) * d * 2 * sizeof(bf16);
  const size_t flush_bytes = std::max<size_t>(size_t{256} << 20, 8 * llc_bytes());
  const uint64_t need = static_cast<uint64_t>(2.2 * kv_bytes_total) + flush_bytes;
  const uint64_t phys = physical_memory_bytes();
  if (phys > 0 && need > phys / 4 * 3) {
    fail("--context-tokens = " + std::to_string(opt.context_tokens) + " needs about " +
             fmt_bytes(double(need)) + " of memory, more than 3/4 of the " +
             fmt_bytes(double(phys)) + " here", 2);
  }

  progress(("filling " + std::to_string(opt.context_tokens) + " tokens").c_str());
  auto created = kv_head_store::create(shape, opt.context_tokens);
  if (!created) fail("kv_head_store: " + created.error().to_string());
  kv_head_store store = std::move(created).value();
  check(fill_store(store, opt.context_tokens, opt.seed), "fill");
  const uint32_t pages = store.page_count();
  const double summary_bytes = double(pages) * store.summary_bytes_per_page();
  const double kv_bytes_per_token = d * 2 * sizeof(bf16);

  bench_context ctx(flush_bytes, static_cast<size_t>(kv_bytes_total));
  if (!ctx.ok()) fail("cannot allocate the read-reference and cache-flush buffers");
  const float scale = 1.0f / std::sqrt(static_cast<float>(shape.head_dim));
  std::mt19937_64 gen(opt.seed);
  std::vector<float> scores(pages);
  const uint32_t scalar_repeats = std::min<uint32_t>(opt.repeats, 3);
  const std::vector<uint32_t> forced = always_kept_pages(pages);

  std::vector<kernel_row> rows;
  nlohmann::json details;

  // (1) the read reference on the largest size any kernel reads.
  progress("read reference");
  kernel_row read_row{"read reference (K+V bytes)", ctx.measure(kv_bytes_total, opt.repeats, [] {}), 0, 0, {}};
  read_row.t.kernel_s = read_row.t.read_s;
  read_row.t.kernel_wall_s = read_row.t.read_wall_s;
  read_row.work.bytes = kv_bytes_total;  // a read: no flops, roofline = read bandwidth
  rows.push_back(read_row);

  // The rows roofline_ratio_min is taken over: the kernels whose intensity grows with
  // the group (score max, sparse attention), at GQA 4 and 16.
  double roofline_ratio_min = INFINITY;
  auto count_in_roofline = [&](const kernel_row& r) {
    roofline_ratio_min = std::min(roofline_ratio_min, r.roofline_ratio());
  };

  // (2) scoring, (6) its scalar loop.
  double headline_score = 0;
  double headline_scalar_score = 0;
  for (uint32_t group : {4u, 16u}) {
    const std::vector<float> q = random_queries(gen, size_t{group} * shape.head_dim);
    for (gqa_aggregation agg : {gqa_aggregation::max, gqa_aggregation::sum}) {
      progress(("score GQA " + std::to_string(group) + " " + to_string(agg)).c_str());
      kernel_row r{"score GQA " + std::to_string(group) + " " + to_string(agg), {}, 0, 0, {}};
      r.work = score_work(shape.head_dim, shape.summaries, group, agg, pages);
      PNMKV_CHECK(r.work.bytes == summary_bytes, "work.bytes=", r.work.bytes,
                  " summary_bytes=", summary_bytes);
      r.t = ctx.measure(summary_bytes, opt.repeats, [&] {
        check(score_pages(store, q.data(), group, agg, scores.data()), "score_pages");
      });
      const timing scalar = ctx.measure(summary_bytes, scalar_repeats, [&] {
        check(score_pages_scalar(store, q.data(), group, agg, scores.data()),
              "score_pages_scalar");
      });
      r.scalar_gbps = scalar.kernel_gbps();
      if (group == 4 && agg == gqa_aggregation::max) {
        headline_score = r.t.kernel_gbps();
        headline_scalar_score = r.scalar_gbps;
      }
      if (agg == gqa_aggregation::max) count_in_roofline(r);
      details["score"]["gqa" + std::to_string(group)][to_string(agg)] = row_json(r);
      rows.push_back(r);
    }
  }

  // (3) selection on GQA-4 max scores: cache-resident, so timed hot (best of repeats).
  {
    const std::vector<float> q = random_queries(gen, size_t{4} * shape.head_dim);
    check(score_pages(store, q.data(), 4, gqa_aggregation::max, scores.data()), "score_pages");
    for (uint64_t budget : {budget_small, budget_large}) {
      progress(("select top " + std::to_string(budget) + " pages").c_str());
      double best = INFINITY;
      for (uint32_t r = 0; r < opt.repeats; ++r) {
        const double t0 = thread_seconds();
        auto sel = select_top_pages(scores.data(), pages, forced, budget);
        best = std::min(best, thread_seconds() - t0);
        if (!sel) fail("select_top_pages: " + sel.error().to_string());
        sink_u64 = sel->size();
      }
      const std::string key = "budget_" + std::to_string(budget * shape.page_size_tokens);
      details["select"][key] = {{"seconds", best},
                                {"pages_scored", pages},
                                {"pages_selected", std::min<uint64_t>(budget, pages)},
                                {"pages_per_s", pages / best}};
    }
  }

  // (4) sparse attention over real selections, (5) dense, (6) the scalar loop.
  double headline_attend = 0;
  double headline_scalar_attend = 0;
  double headline_dense = 0;
  for (uint32_t group : {4u, 16u}) {
    for (uint64_t budget : {budget_small, budget_large}) {
      // Enough distinct queries (distinct selections) per timed run that one run reads at
      // least the flush size (≥ 8× the LLC), so pages are not found in cache; ≤ 256.
      const double call_bytes = double(std::min<uint64_t>(budget, pages)) *
                                shape.page_size_tokens * kv_bytes_per_token;
      const size_t n_queries = static_cast<size_t>(std::clamp<double>(
          std::ceil(double(flush_bytes) / call_bytes), 1.0, 256.0));
      progress(("attend GQA " + std::to_string(group) + ", budget " +
                std::to_string(budget * shape.page_size_tokens) + " tokens, " +
                std::to_string(n_queries) + " queries per run")
                   .c_str());
      std::vector<std::vector<float>> qs;
      std::vector<std::vector<uint32_t>> sels;
      double batch_bytes = 0;
      uint64_t batch_tokens = 0;
      for (size_t i = 0; i < n_queries; ++i) {
        qs.push_back(random_queries(gen, size_t{group} * shape.head_dim));
        check(score_pages(store, qs.back().data(), group, gqa_aggregation::max, scores.data()),
              "score_pages");
        auto sel = select_top_pages(scores.data(), pages, forced, budget);
        if (!sel) fail("select_top_pages: " + sel.error().to_string());
        for (uint32_t p : *sel) {
          batch_bytes += double(store.page_tokens(p)) * kv_bytes_per_token;
          batch_tokens += store.page_tokens(p);
        }
        sels.push_back(std::move(sel).value());
      }
      partial out;
      auto run = [&](auto&& attend, size_t n_calls) {
        for (size_t i = 0; i < n_calls; ++i) {
          check(attend(store, qs[i].data(), group, sels[i].data(), sels[i].size(), scale, out),
                "attend");
          sink_f32 = out.o[0];
        }
      };
      kernel_row r{"attend GQA " + std::to_string(group) + " budget " +
                       std::to_string(budget * shape.page_size_tokens),
                   {}, 0, 0, {}};
      r.work = attend_work(shape.head_dim, group, batch_tokens);
      PNMKV_CHECK(r.work.bytes == batch_bytes, "work.bytes=", r.work.bytes,
                  " batch_bytes=", batch_bytes);
      r.t = ctx.measure(batch_bytes, opt.repeats, [&] { run(attend_pages, n_queries); });
      // A plain read of exactly the selected pages, in the same order: what the access
      // pattern itself allows (scattered pages read slower than one stream).
      const double row_bytes = double(shape.head_dim) * sizeof(bf16);
      const timing pages_read = ctx.measure(batch_bytes, opt.repeats, [&] {
        uint64_t total = 0;
        for (const auto& sel : sels) {
          for (uint32_t p : sel) {
            const size_t n = static_cast<size_t>(store.page_tokens(p) * row_bytes);
            total += read_bytes(reinterpret_cast<const uint8_t*>(store.page_keys(p)), n);
            total += read_bytes(reinterpret_cast<const uint8_t*>(store.page_values(p)), n);
          }
        }
        sink_u64 = total;
      });
      r.pages_read_gbps = pages_read.kernel_gbps();
      // The scalar loop is compute-bound and slow: one pass over at most 64 calls.
      const size_t scalar_calls = std::min<size_t>(n_queries, 64);
      double scalar_bytes = 0;
      for (size_t i = 0; i < scalar_calls; ++i) {
        for (uint32_t p : sels[i]) scalar_bytes += double(store.page_tokens(p)) * kv_bytes_per_token;
      }
      const timing scalar = ctx.measure(scalar_bytes, 1, [&] { run(attend_pages_scalar, scalar_calls); });
      r.scalar_gbps = scalar.kernel_gbps();
      if (group == 4 && budget == budget_small) {
        headline_attend = r.t.kernel_gbps();
        headline_scalar_attend = r.scalar_gbps;
      }
      count_in_roofline(r);
      nlohmann::json j = row_json(r);
      j["queries_per_run"] = n_queries;
      j["budget_tokens"] = budget * shape.page_size_tokens;
      details["attend"]["gqa" + std::to_string(group)]["budget_" +
                                                        std::to_string(budget * shape.page_size_tokens)] = j;
      rows.push_back(r);
    }
    progress(("dense attention GQA " + std::to_string(group)).c_str());
    std::vector<uint32_t> all(pages);
    for (uint32_t p = 0; p < pages; ++p) all[p] = p;
    const std::vector<float> q = random_queries(gen, size_t{group} * shape.head_dim);
    partial out;
    kernel_row r{"dense attention GQA " + std::to_string(group), {}, 0, 0, {}};
    r.work = attend_work(shape.head_dim, group, store.token_count());
    r.t = ctx.measure(double(store.token_count()) * kv_bytes_per_token, opt.repeats, [&] {
      check(attend_pages(store, q.data(), group, all.data(), all.size(), scale, out), "attend");
      sink_f32 = out.o[0];
    });
    // The scalar loop over every page: one run, it is compute-bound and slow.
    const timing scalar = ctx.measure(double(store.token_count()) * kv_bytes_per_token, 1, [&] {
      check(attend_pages_scalar(store, q.data(), group, all.data(), all.size(), scale, out),
            "attend_pages_scalar");
      sink_f32 = out.o[0];
    });
    r.scalar_gbps = scalar.kernel_gbps();
    if (group == 4) headline_dense = r.t.kernel_gbps();
    details["dense"]["gqa" + std::to_string(group)] = row_json(r);
    rows.push_back(r);
  }

  const std::vector<search_row> search_rows = bench_searches(opt, ctx, shape);

  // This core's peak: the best burst of the whole run (each row keeps its own for its
  // roofline, measured alongside it).
  double peak_gflops = 0;
  for (const kernel_row& r : rows) peak_gflops = std::max(peak_gflops, r.t.peak_gflops);

  // The table.
  std::printf("\npnmkv bench kernels: %llu tokens, head_dim %u, page %u tokens, %s summaries, "
              "budgets %llu / %llu tokens, best of %u\n",
              static_cast<unsigned long long>(opt.context_tokens), shape.head_dim,
              shape.page_size_tokens, to_string(shape.summaries),
              static_cast<unsigned long long>(budget_small * shape.page_size_tokens),
              static_cast<unsigned long long>(budget_large * shape.page_size_tokens),
              opt.repeats);
  std::printf("cpu: %s, %u hardware threads, LLC %s; kernels single-threaded; Highway target %s\n",
              cpu_model().c_str(), std::thread::hardware_concurrency(),
              fmt_bytes(double(llc_bytes())).c_str(), kernel_target_name());
  std::printf("read = plain vectorised read of as many bytes, one stream, interleaved with the "
              "kernel;\npg-read = the same read over exactly the selected pages; cold caches; "
              "best of %u by thread CPU time (wall time in the JSON)\n",
              opt.repeats);
  std::printf("peak = fp32 FMA bursts of this core, interleaved likewise: best %.1f Gflop/s "
              "(%s);\nflop/B = arithmetic intensity (2 per FMA, exp not counted); roof = "
              "min(read, peak / (flop/B)); /roof = GB/s / roof\n\n",
              peak_gflops, peak_target_name());
  std::printf("%-30s %10s %10s %7s %7s %6s %6s %7s %7s %6s %8s %8s %8s %6s\n", "kernel",
              "bytes/run", "time", "GB/s", "read", "/read", "flop/B", "peak", "roof", "/roof",
              "scalar", "speedup", "pg-read", "/pg");
  for (const kernel_row& r : rows) print_row(r);
  std::printf("\nroofline ratio min (score max and attend, GQA 4 and 16, both budgets): %.2f\n\n",
              roofline_ratio_min);
  print_search_rows(search_rows, budget_small * shape.page_size_tokens);
  std::printf("\n");
  for (const auto& [key, sel] : details["select"].items()) {
    std::printf("select top-k (%s): %s for %u pages = %.1f M pages/s\n", key.c_str(),
                fmt_time(sel["seconds"].get<double>()).c_str(), pages,
                sel["pages_per_s"].get<double>() / 1e6);
  }

  if (!opt.json_file.empty()) {
    const double read_gbps = read_row.t.read_gbps();
    nlohmann::json j;
    j["read_gbps"] = read_gbps;
    j["score_gbps"] = headline_score;
    j["attend_gbps"] = headline_attend;
    j["dense_gbps"] = headline_dense;
    j["scalar_score_gbps"] = headline_scalar_score;
    j["scalar_attend_gbps"] = headline_scalar_attend;
    j["ratios"] = {
        {"score_vs_read", details["score"]["gqa4"]["max"]["vs_read"]},
        {"attend_vs_read", details["attend"]["gqa4"]["budget_" + std::to_string(budget_small * shape.page_size_tokens)]["vs_read"]},
        {"dense_vs_read", details["dense"]["gqa4"]["vs_read"]},
        {"score_vs_scalar", headline_score / headline_scalar_score},
        {"attend_vs_scalar", headline_attend / headline_scalar_attend}};
    j["headline"] = "GQA 4, max aggregation, budget " +
                    std::to_string(budget_small * shape.page_size_tokens) + " tokens";
    j["target"] = kernel_target_name();
    j["simd_target"] = kernel_target_name();
    j["peak_gflops"] = peak_gflops;
    j["roofline_ratio_min"] = roofline_ratio_min;
    j["roofline_ratio_min_over"] = {"score gqa4 max", "score gqa16 max", "attend gqa4 (both budgets)",
                                    "attend gqa16 (both budgets)"};
    j["cpu"] = {{"model", cpu_model()},
                {"hardware_threads", std::thread::hardware_concurrency()},
                {"llc_bytes", llc_bytes()},
                {"kernel_threads", 1}};
    j["config"] = {{"context_tokens", opt.context_tokens},
                   {"head_dim", shape.head_dim},
                   {"page_size_tokens", shape.page_size_tokens},
                   {"summaries", to_string(shape.summaries)},
                   {"budget_tokens", budget_small * shape.page_size_tokens},
                   {"large_budget_tokens", budget_large * shape.page_size_tokens},
                   {"repeats", opt.repeats},
                   {"seed", opt.seed},
                   {"flush_bytes", flush_bytes}};
    j["details"] = details;
    j["search"] = search_rows_json(search_rows);
    std::ofstream out(opt.json_file);
    out << j.dump(2) << "\n";
    if (!out) fail("cannot write --json " + opt.json_file, 1);
    std::printf("wrote %s\n", opt.json_file.c_str());
  }
}

}  // namespace

void register_bench_kernels(CLI::App& bench) {
  auto opt = std::make_shared<bench_options>();
  CLI::App* cmd = bench.add_subcommand(
      "kernels", "Device kernels (score, select, attend) vs this core's memory-read bandwidth");
  cmd->add_option("--json", opt->json_file, "Also write the results as JSON to FILE");
  cmd->add_option("--context-tokens", opt->context_tokens, "Tokens in the (layer, KV head) store")
      ->capture_default_str();
  cmd->add_option("--head-dim", opt->head_dim, "Head dimension (16..512, multiple of 16)")
      ->capture_default_str();
  cmd->add_option("--page-size", opt->page_size_tokens, "Page size in tokens (1..1024)")
      ->capture_default_str();
  cmd->add_option("--budget-tokens", opt->budget_tokens,
                  "Sparse-attention budget in tokens, always-kept pages included")
      ->capture_default_str();
  cmd->add_option("--large-budget-tokens", opt->large_budget_tokens,
                  "A second, larger budget where the K/V read dominates")
      ->capture_default_str();
  cmd->add_option("--repeats", opt->repeats, "Timed runs per figure; the best counts")
      ->capture_default_str();
  cmd->add_option("--seed", opt->seed, "Seed of the random K/V and queries")->capture_default_str();
  cmd->add_option("--summaries", opt->summaries, "Summary precision: bf16 or fp32")
      ->capture_default_str();
  cmd->add_option("--search-contexts", opt->search_contexts,
                  "Context lengths of the page-search rows (synthetic workload)")
      ->capture_default_str();
  cmd->add_option("--search-queries", opt->search_queries,
                  "Queries (successive decode steps) per page-search row")
      ->capture_default_str();
  cmd->callback([opt] { run_bench(*opt); });
}

}  // namespace pnmkv::apps
