// The baseline's recall cache (schedulers/recall_cache.hpp): hits, misses and evictions of a
// hand-worked trace, LRU's ties, `none`, and the property the default capacity rests on (a
// cache of one selection's size hits exactly the pages the previous step selected too).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <random>
#include <vector>

#include "schedulers/recall_cache.hpp"

namespace pnmkv {
namespace {

using pages = std::vector<uint64_t>;

// Capacity 4 pages, LRU by last use (the lookup number), ties to the lower page. Worked by
// hand; "held" lists page:last-use after the step's evictions.
//   step 1 {0,3,5,9}: nothing held -> 0 hits, misses 0,3,5,9.  held 0:1 3:1 5:1 9:1
//   step 2 {0,3,7,9}: 0,3,9 held -> 3 hits, miss 7. 5 pages > 4: evict the least recent,
//                     5 (used at 1).                           held 0:2 3:2 7:2 9:2
//   step 3 {0,5,7,9}: 0,7,9 held -> 3 hits, miss 5 (evicted at step 2). 5 pages: evict 3
//                     (used at 2; the others at 3).             held 0:3 5:3 7:3 9:3
//   step 4 {0,2,4,9}: 0,9 held -> 2 hits, misses 2,4. 6 pages: evict 5 then 7 (both used
//                     at 3, the lower page first).              held 0:4 2:4 4:4 9:4
//   step 5 {0,7,9,11}: 0,9 held -> 2 hits, misses 7,11. 6 pages: evict 2 then 4 (used at 4).
// Hits 0 + 3 + 3 + 2 + 2 = 10 of 20 selected pages (0.5); after the cold first step
// 10 of 16 (0.625).
TEST(recall_cache, lru_hand_worked_trace) {
  recall_cache c(recall_cache_policy::lru, 4);
  struct expect_step {
    pages selected;
    uint64_t hits;
    pages missed, evicted;
  };
  const std::vector<expect_step> trace = {
      {{0, 3, 5, 9}, 0, {0, 3, 5, 9}, {}},
      {{0, 3, 7, 9}, 3, {7}, {5}},
      {{0, 5, 7, 9}, 3, {5}, {3}},
      {{0, 2, 4, 9}, 2, {2, 4}, {5, 7}},
      {{0, 7, 9, 11}, 2, {7, 11}, {2, 4}},
  };
  uint64_t hits = 0, selected = 0, warm_hits = 0, warm_selected = 0;
  for (size_t i = 0; i < trace.size(); ++i) {
    SCOPED_TRACE("step " + std::to_string(i + 1));
    const recall_lookup r = c.lookup(trace[i].selected);
    EXPECT_EQ(r.hits, trace[i].hits);
    EXPECT_EQ(r.missed, trace[i].missed);
    EXPECT_EQ(r.evicted, trace[i].evicted);
    EXPECT_EQ(r.hits + r.misses(), trace[i].selected.size());
    EXPECT_LE(c.held_pages(), 4u);
    hits += r.hits;
    selected += trace[i].selected.size();
    if (i > 0) warm_hits += r.hits, warm_selected += trace[i].selected.size();
  }
  EXPECT_EQ(hits, 10u);
  EXPECT_EQ(selected, 20u);
  EXPECT_DOUBLE_EQ(double(warm_hits) / double(warm_selected), 0.625);
  for (uint64_t p : {0, 7, 9, 11}) EXPECT_TRUE(c.holds(p)) << p;
  for (uint64_t p : {2, 3, 4, 5}) EXPECT_FALSE(c.holds(p)) << p;
  EXPECT_EQ(c.lookups(), 5u);
}

// A selection larger than the capacity: the step's own pages tie on last use and the lower
// ones go first.
TEST(recall_cache, lru_ties_evict_the_lower_page) {
  recall_cache c(recall_cache_policy::lru, 2);
  recall_lookup r = c.lookup({1, 2, 3});
  EXPECT_EQ(r.hits, 0u);
  EXPECT_EQ(r.evicted, pages({1}));
  r = c.lookup({1, 2});  // 2 held; 1 comes back; 3 (used at 1) is the least recent
  EXPECT_EQ(r.hits, 1u);
  EXPECT_EQ(r.missed, pages({1}));
  EXPECT_EQ(r.evicted, pages({3}));
  EXPECT_TRUE(c.holds(1));
  EXPECT_TRUE(c.holds(2));
}

TEST(recall_cache, none_recalls_every_page_every_step) {
  recall_cache c(recall_cache_policy::none, 1000);
  for (int step = 0; step < 3; ++step) {
    const recall_lookup r = c.lookup({0, 4, 8});
    EXPECT_EQ(r.hits, 0u);
    EXPECT_EQ(r.missed, pages({0, 4, 8}));
    EXPECT_EQ(c.held_pages(), 0u);
  }
}

TEST(recall_cache, zero_capacity_holds_nothing) {
  recall_cache c(recall_cache_policy::lru, 0);
  c.lookup({1, 2});
  const recall_lookup r = c.lookup({1, 2});
  EXPECT_EQ(r.hits, 0u);
  EXPECT_EQ(c.held_pages(), 0u);
}

// The default capacity is one selection (baseline.recall_cache_tokens = 0: the budget): every
// page of the last step is then held, so the hits of a step are exactly its overlap with the
// previous step's selection, |sel_t ∩ sel_t-1| — the selection_overlap the calibration
// measures. A larger cache hits at least as often. Random selections of 8 of 40 pages,
// seeded.
TEST(recall_cache, capacity_of_one_selection_hits_the_step_overlap) {
  std::mt19937_64 rng(11);
  recall_cache exact(recall_cache_policy::lru, 8), larger(recall_cache_policy::lru, 16);
  pages previous;
  for (int step = 0; step < 200; ++step) {
    pages all(40);
    for (uint64_t i = 0; i < all.size(); ++i) all[i] = i;
    std::shuffle(all.begin(), all.end(), rng);
    // Keep pages 0 and 39 always (the forced pages of a selection), six random others.
    pages sel = {0, 39};
    for (uint64_t p : all)
      if (sel.size() < 8 && p != 0 && p != 39) sel.push_back(p);
    std::sort(sel.begin(), sel.end());
    pages both;
    std::set_intersection(sel.begin(), sel.end(), previous.begin(), previous.end(), std::back_inserter(both));
    const recall_lookup r = exact.lookup(sel);
    EXPECT_EQ(r.hits, both.size()) << "step " << step;
    EXPECT_GE(larger.lookup(sel).hits, r.hits) << "step " << step;
    previous = sel;
  }
}

// baseline.recall_cache_tokens: 0 is the budget (whole pages), a value is rounded down to
// whole pages and refused, naming the key, below one step's selection; none holds nothing.
TEST(recall_cache, capacity_resolves_from_the_budget) {
  EXPECT_EQ(*recall_cache_capacity_tokens(recall_cache_policy::lru, 0, 2048, 16), 2048u);
  EXPECT_EQ(*recall_cache_capacity_tokens(recall_cache_policy::lru, 0, 2050, 16), 2048u);
  EXPECT_EQ(*recall_cache_capacity_tokens(recall_cache_policy::lru, 4100, 2048, 16), 4096u);
  EXPECT_EQ(*recall_cache_capacity_tokens(recall_cache_policy::none, 4100, 2048, 16), 0u);
  auto small = recall_cache_capacity_tokens(recall_cache_policy::lru, 1024, 2048, 16);
  ASSERT_FALSE(small);
  EXPECT_NE(small.error().message().find("baseline.recall_cache_tokens = 1024"), std::string::npos)
      << small.error().message();
  EXPECT_NE(small.error().message().find("at least 2048"), std::string::npos) << small.error().message();
}

TEST(recall_cache, refuses_an_unsorted_selection) {
  recall_cache c(recall_cache_policy::lru, 4);
  EXPECT_DEATH(c.lookup({3, 1}), "ascending");
}

}  // namespace
}  // namespace pnmkv
