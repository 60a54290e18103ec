// Properties of top-k page selection: output sorted and unique, forced pages always in,
// the chosen pages are the best under the total order (score desc, NaN lowest, ties to
// the lower index), selections nest as the budget grows, and bad input is an error.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <vector>

#include "core/score.hpp"
#include "core/select.hpp"
#include "tests/core/test_util.hpp"

namespace pnmkv {
namespace {

using test::base_seed;
using test::seed_trace;

// True when page a ranks strictly before page b.
bool ranks_before(const std::vector<float>& s, uint32_t a, uint32_t b) {
  const bool na = std::isnan(s[a]);
  const bool nb = std::isnan(s[b]);
  if (na != nb) return nb;
  if (!na && s[a] != s[b]) return s[a] > s[b];
  return a < b;
}

// Scores with many ties, some NaN, some ±inf and ±0.
std::vector<float> tricky_scores(std::mt19937_64& gen, uint32_t n) {
  std::vector<float> s(n);
  for (float& x : s) {
    switch (gen() % 10) {
      case 0: x = NAN; break;
      case 1: x = static_cast<float>(gen() % 5); break;  // ties
      case 2: x = -0.0f; break;
      case 3: x = 0.0f; break;
      case 4: x = gen() % 2 ? INFINITY : -INFINITY; break;
      default: x = std::normal_distribution<float>(0.0f, 10.0f)(gen); break;
    }
  }
  return s;
}

void check_selection(const std::vector<float>& scores, const std::vector<uint32_t>& forced,
                     uint64_t budget, const std::vector<uint32_t>& sel) {
  const uint32_t n = static_cast<uint32_t>(scores.size());
  ASSERT_TRUE(std::is_sorted(sel.begin(), sel.end()));
  ASSERT_TRUE(std::adjacent_find(sel.begin(), sel.end()) == sel.end());
  ASSERT_EQ(sel.size(), std::min<uint64_t>(budget, n));
  const std::set<uint32_t> chosen(sel.begin(), sel.end());
  const std::set<uint32_t> forced_set(forced.begin(), forced.end());
  for (uint32_t f : forced) ASSERT_TRUE(chosen.count(f)) << "forced page " << f << " missing";
  // Every chosen free page ranks before every unchosen page.
  for (uint32_t a : sel) {
    if (forced_set.count(a)) continue;
    for (uint32_t b = 0; b < n; ++b) {
      if (chosen.count(b)) continue;
      ASSERT_TRUE(ranks_before(scores, a, b)) << "chose " << a << " over " << b;
    }
  }
}

TEST(select, picks_the_best_pages_under_a_total_order) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 40; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t n = 1 + static_cast<uint32_t>(gen() % 300);
    const std::vector<float> scores = tricky_scores(gen, n);
    std::vector<uint32_t> forced = always_kept_pages(n);
    if (gen() % 2) forced.push_back(static_cast<uint32_t>(gen() % n));  // maybe a duplicate
    const uint64_t n_forced = std::set<uint32_t>(forced.begin(), forced.end()).size();
    const uint64_t budget = n_forced + gen() % (n + 3);
    auto sel = select_top_pages(scores.data(), n, forced, budget);
    ASSERT_TRUE(sel.is_ok()) << sel.error().to_string();
    check_selection(scores, forced, budget, *sel);
  }
}

// Small budgets over many pages take the heap path (at most 1/64 of the candidates kept):
// the same total order decides, ties, NaN and ±0 included.
TEST(select, a_few_best_of_many_pages_follow_the_same_order) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 12; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t n = 2000 + static_cast<uint32_t>(gen() % 20000);
    const std::vector<float> scores = tricky_scores(gen, n);
    const std::vector<uint32_t> forced = always_kept_pages(n);
    const uint64_t budget = 2 + gen() % (n / 64);
    auto sel = select_top_pages(scores.data(), n, forced, budget);
    ASSERT_TRUE(sel.is_ok()) << sel.error().to_string();
    check_selection(scores, forced, budget, *sel);
  }
}

TEST(select, selections_nest_as_the_budget_grows) {
  for (uint64_t seed = base_seed(); seed < base_seed() + 20; ++seed) {
    SCOPED_TRACE(seed_trace(seed));
    std::mt19937_64 gen(seed);
    const uint32_t n = 1 + static_cast<uint32_t>(gen() % 500);
    const std::vector<float> scores = tricky_scores(gen, n);
    const std::vector<uint32_t> forced = always_kept_pages(n);
    std::vector<uint32_t> prev;
    for (uint64_t budget = forced.size(); budget <= n + 1; ++budget) {
      auto sel = select_top_pages(scores.data(), n, forced, budget);
      ASSERT_TRUE(sel.is_ok()) << sel.error().to_string();
      ASSERT_TRUE(std::includes(sel->begin(), sel->end(), prev.begin(), prev.end()))
          << "budget " << budget;
      ASSERT_EQ(sel->size(), std::min<uint64_t>(budget, n));
      prev = *sel;
    }
    EXPECT_EQ(prev.size(), n);
  }
}

TEST(select, ties_go_to_the_lower_index_and_nan_ranks_lowest) {
  const std::vector<float> equal(10, 3.0f);
  auto sel = select_top_pages(equal.data(), 10, {}, 4);
  ASSERT_TRUE(sel.is_ok());
  EXPECT_EQ(*sel, (std::vector<uint32_t>{0, 1, 2, 3}));

  const std::vector<float> s = {NAN, -INFINITY, 0.0f, -0.0f, NAN, 5.0f, -1.0f};
  sel = select_top_pages(s.data(), 7, {}, 3);
  ASSERT_TRUE(sel.is_ok());
  EXPECT_EQ(*sel, (std::vector<uint32_t>{2, 3, 5}));  // 5, then the two zeros (tie)
  sel = select_top_pages(s.data(), 7, {}, 5);
  ASSERT_TRUE(sel.is_ok());
  EXPECT_EQ(*sel, (std::vector<uint32_t>{1, 2, 3, 5, 6}));  // -inf before NaN
  sel = select_top_pages(s.data(), 7, {4}, 2);  // a forced NaN page is still kept
  ASSERT_TRUE(sel.is_ok());
  EXPECT_EQ(*sel, (std::vector<uint32_t>{4, 5}));
}

TEST(select, bad_input_is_an_error) {
  const std::vector<float> s(8, 1.0f);
  auto r = select_top_pages(s.data(), 8, {0, 8}, 4);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.error().code(), errc::out_of_range);
  EXPECT_NE(r.error().message().find("8"), std::string::npos);
  r = select_top_pages(s.data(), 8, {0, 3, 7}, 2);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.error().code(), errc::invalid_argument);
  EXPECT_NE(r.error().message().find("budget"), std::string::npos);
  // Duplicated forced pages count once.
  r = select_top_pages(s.data(), 8, {7, 7, 0, 0}, 2);
  ASSERT_TRUE(r.is_ok());
  EXPECT_EQ(*r, (std::vector<uint32_t>{0, 7}));
  r = select_top_pages(nullptr, 8, {}, 2);
  EXPECT_EQ(r.error().code(), errc::invalid_argument);
  // Zero pages, zero budget: nothing chosen, no error.
  r = select_top_pages(nullptr, 0, {}, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_TRUE(r->empty());
  r = select_top_pages(s.data(), 8, {}, 0);
  ASSERT_TRUE(r.is_ok());
  EXPECT_TRUE(r->empty());
}

TEST(select, budget_counts_tokens_including_always_kept_pages) {
  EXPECT_EQ(budget_pages(selection_budget{2048, 16}), 128u);
  EXPECT_EQ(budget_pages(selection_budget{2047, 16}), 127u);
  EXPECT_EQ(budget_pages(selection_budget{15, 16}), 0u);
  EXPECT_EQ(budget_pages(selection_budget{100, 0}), 0u);
  EXPECT_TRUE(always_kept_pages(0).empty());
  EXPECT_EQ(always_kept_pages(1), (std::vector<uint32_t>{0}));
  EXPECT_EQ(always_kept_pages(2), (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(always_kept_pages(100), (std::vector<uint32_t>{0, 99}));
}

// End to end on a real store: the selection from Quest scores holds the forced pages and
// the pages with the highest bounds.
TEST(select, from_page_scores) {
  std::mt19937_64 gen(base_seed());
  const kv_head_store s = test::make_store(kv_head_shape{64, 16}, 4099, gen);
  const std::vector<float> q = test::normal_floats(gen, 4 * 64);
  std::vector<float> scores(s.page_count());
  ASSERT_TRUE(score_pages(s, q.data(), 4, gqa_aggregation::max, scores.data()).is_ok());
  const uint64_t pages = budget_pages(selection_budget{512, 16});
  auto sel = select_top_pages(scores.data(), s.page_count(), always_kept_pages(s.page_count()),
                              pages);
  ASSERT_TRUE(sel.is_ok());
  check_selection(scores, always_kept_pages(s.page_count()), pages, *sel);
}

}  // namespace
}  // namespace pnmkv
