// Google Benchmark microbenchmarks of the device kernels at a cache-friendly size (64K
// tokens, d = 128, pages of 16): quick A/B checks of kernel changes. The figures users
// read come from `pnmkv bench kernels`, which runs cold, at 1M tokens, against the
// core's own read bandwidth measured in the same run.
#include <benchmark/benchmark.h>

#include <numeric>
#include <random>
#include <vector>

#include "core/attention.hpp"
#include "core/score.hpp"
#include "core/select.hpp"

namespace {

using namespace pnmkv;

constexpr uint64_t bench_tokens = 65536;
constexpr uint32_t bench_head_dim = 128;
constexpr uint32_t bench_page_tokens = 16;

const kv_head_store& bench_store() {
  static kv_head_store store = [] {
    auto created = kv_head_store::create(kv_head_shape{bench_head_dim, bench_page_tokens},
                                         bench_tokens);
    kv_head_store s = std::move(created).value();
    std::mt19937_64 gen(7);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> k(bench_tokens * bench_head_dim);
    std::vector<float> v(k.size());
    for (float& x : k) x = dist(gen);
    for (float& x : v) x = dist(gen);
    if (!s.append(0, k.data(), v.data(), bench_tokens)) std::abort();
    return s;
  }();
  return store;
}

std::vector<float> queries(uint32_t group) {
  std::mt19937_64 gen(11 + group);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::vector<float> q(size_t{group} * bench_head_dim);
  for (float& x : q) x = dist(gen);
  return q;
}

template <bool Vectorised>
void bm_score(benchmark::State& state) {
  const kv_head_store& s = bench_store();
  const uint32_t group = static_cast<uint32_t>(state.range(0));
  const auto agg = state.range(1) == 0 ? gqa_aggregation::max : gqa_aggregation::sum;
  const std::vector<float> q = queries(group);
  std::vector<float> scores(s.page_count());
  for (auto _ : state) {
    const status st = Vectorised ? score_pages(s, q.data(), group, agg, scores.data())
                                 : score_pages_scalar(s, q.data(), group, agg, scores.data());
    if (!st) state.SkipWithError(st.message().c_str());
    benchmark::DoNotOptimize(scores.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * s.page_count() *
                          int64_t(s.summary_bytes_per_page()));
}

template <bool Vectorised>
void bm_attend(benchmark::State& state) {
  const kv_head_store& s = bench_store();
  const uint32_t group = static_cast<uint32_t>(state.range(0));
  const uint64_t budget_tokens = static_cast<uint64_t>(state.range(1));
  const std::vector<float> q = queries(group);
  std::vector<float> scores(s.page_count());
  if (!score_pages(s, q.data(), group, gqa_aggregation::max, scores.data())) std::abort();
  auto sel = select_top_pages(scores.data(), s.page_count(), always_kept_pages(s.page_count()),
                              budget_pages(selection_budget{budget_tokens, bench_page_tokens}));
  if (!sel) std::abort();
  const float scale = 0.08838834764f;
  partial out;
  for (auto _ : state) {
    const status st =
        Vectorised ? attend_pages(s, q.data(), group, sel->data(), sel->size(), scale, out)
                   : attend_pages_scalar(s, q.data(), group, sel->data(), sel->size(), scale, out);
    if (!st) state.SkipWithError(st.message().c_str());
    benchmark::DoNotOptimize(out.o.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(sel->size()) *
                          bench_page_tokens * bench_head_dim * 2 * int64_t(sizeof(bf16)));
}

void bm_select(benchmark::State& state) {
  const kv_head_store& s = bench_store();
  const std::vector<float> q = queries(4);
  std::vector<float> scores(s.page_count());
  if (!score_pages(s, q.data(), 4, gqa_aggregation::max, scores.data())) std::abort();
  const uint64_t pages = budget_pages(selection_budget{uint64_t(state.range(0)), bench_page_tokens});
  const std::vector<uint32_t> forced = always_kept_pages(s.page_count());
  for (auto _ : state) {
    auto sel = select_top_pages(scores.data(), s.page_count(), forced, pages);
    benchmark::DoNotOptimize(sel);
  }
  state.SetItemsProcessed(int64_t(state.iterations()) * s.page_count());
}

// Args: {group, 0 = max / 1 = sum}.
BENCHMARK(bm_score<true>)->Args({4, 0})->Args({4, 1})->Args({16, 0})->Args({16, 1});
BENCHMARK(bm_score<false>)->Args({4, 0})->Args({16, 0});
// Args: {group, budget tokens}.
BENCHMARK(bm_attend<true>)->Args({4, 2048})->Args({4, 65536})->Args({16, 2048})->Args({16, 65536});
BENCHMARK(bm_attend<false>)->Args({4, 2048})->Args({16, 2048});
BENCHMARK(bm_select)->Arg(2048)->Arg(16384);

}  // namespace

BENCHMARK_MAIN();
