// Properties of the synthetic workload as a pure function: the same coordinates give the
// same bits, other coordinates give other data, a page regenerated alone equals the page
// from a bulk run, and the text structure (segments, needles, asks) keeps its contracts.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <set>

#include "core/kv_store.hpp"
#include "tests/workload/wl_test_util.hpp"

namespace pnmkv::test {
namespace {

constexpr uint32_t kDim = 128;
constexpr uint32_t kGroup = 4;

std::vector<bf16> keys_of(const synthetic_workload& w, uint64_t req, uint32_t layer,
                          uint32_t head, uint64_t begin, uint64_t n) {
  std::vector<bf16> out(n * w.head_dim());
  w.keys(req, layer, head, begin, n, out.data());
  return out;
}
std::vector<bf16> values_of(const synthetic_workload& w, uint64_t req, uint32_t layer,
                            uint32_t head, uint64_t begin, uint64_t n) {
  std::vector<bf16> out(n * w.head_dim());
  w.values(req, layer, head, begin, n, out.data());
  return out;
}
bool same_bits(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(bf16)) == 0;
}
double fraction_differing(const std::vector<bf16>& a, const std::vector<bf16>& b) {
  size_t diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff += a[i].bits != b[i].bits;
  return static_cast<double>(diff) / static_cast<double>(a.size());
}

TEST(Workload, SameCoordinatesGiveSameBits) {
  for (uint64_t s = 0; s < 3; ++s) {
    const uint64_t seed = wl_base_seed() + s;
    SCOPED_TRACE(wl_seed_trace(seed));
    // Two separately constructed generators: nothing may depend on object state.
    auto a = make_workload(seed);
    auto b = make_workload(seed);
    EXPECT_TRUE(same_bits(keys_of(a, 3, 5, 1, 1000, 700), keys_of(b, 3, 5, 1, 1000, 700)));
    EXPECT_TRUE(same_bits(values_of(a, 3, 5, 1, 1000, 700), values_of(b, 3, 5, 1, 1000, 700)));
    for (uint64_t step : {0ull, 1ull, 77ull}) {
      std::vector<float> qa(kGroup * kDim), qb(kGroup * kDim);
      a.queries(3, 5, 1, step, 65536, qa.data());
      b.queries(3, 5, 1, step, 65536, qb.data());
      EXPECT_EQ(0, std::memcmp(qa.data(), qb.data(), qa.size() * sizeof(float)));
      EXPECT_EQ(a.asked_needle_position(3, 5, 1, step, 65536),
                b.asked_needle_position(3, 5, 1, step, 65536));
    }
  }
}

TEST(Workload, OtherCoordinatesGiveOtherData) {
  const uint64_t seed = wl_base_seed();
  SCOPED_TRACE(wl_seed_trace(seed));
  auto w = make_workload(seed);
  auto other_seed = make_workload(seed + 1);
  const auto base_k = keys_of(w, 0, 0, 0, 4096, 512);
  const auto base_v = values_of(w, 0, 0, 0, 4096, 512);
  // bf16 rows of independent noise differ almost everywhere.
  EXPECT_GT(fraction_differing(base_k, keys_of(other_seed, 0, 0, 0, 4096, 512)), 0.9);
  EXPECT_GT(fraction_differing(base_k, keys_of(w, 1, 0, 0, 4096, 512)), 0.9);  // request
  EXPECT_GT(fraction_differing(base_k, keys_of(w, 0, 1, 0, 4096, 512)), 0.9);  // layer
  EXPECT_GT(fraction_differing(base_k, keys_of(w, 0, 0, 1, 4096, 512)), 0.9);  // kv head
  EXPECT_GT(fraction_differing(base_k, keys_of(w, 0, 0, 0, 4608, 512)), 0.9);  // position
  EXPECT_GT(fraction_differing(base_v, values_of(w, 1, 0, 0, 4096, 512)), 0.9);
  EXPECT_GT(fraction_differing(base_k, base_v), 0.9);  // keys and values are distinct streams
  std::vector<float> q0(kGroup * kDim), q1(kGroup * kDim);
  w.queries(0, 0, 0, 5, 65536, q0.data());
  w.queries(0, 0, 1, 5, 65536, q1.data());
  EXPECT_NE(0, std::memcmp(q0.data(), q1.data(), q0.size() * sizeof(float)));
  // The heads of a group are not copies of each other.
  EXPECT_NE(0, std::memcmp(q0.data(), q0.data() + kDim, kDim * sizeof(float)));
}

// Pages are regenerated on other nodes and by other builds (recompute after loss), so the
// bits must not depend on compiler, flags (FMA contraction included) or code changes that
// were meant to be neutral. This hash was the same with gcc -O0, gcc -O3, gcc -O3
// -march=native -ffp-contract=fast and clang -O3 -march=native. Change it only together
// with an intended change of the generator, and say so in the commit.
TEST(Workload, GoldenBitsOfAFixedRange) {
  workload_params p;  // the values the hash was taken with, spelled out
  p.sink_tokens = 4;
  p.topic_count = 128;
  p.topic_segment_tokens_mean = 512;
  p.topic_segment_tokens_spread = 384;
  p.needle_rate_per_mtokens = 32;
  p.needle_block_tokens = 8192;
  p.sink_logit = 14;
  p.topic_logit = 3;
  p.segment_logit = 4;
  p.salience_spread_fraction = 0.5;
  p.noise_logit_std = 0.5;
  p.needle_logit = 20;
  p.value_noise_std = 1;
  p.value_topic_rms = 1;
  p.value_sink_scale = 0.1;
  p.value_needle_rms = 2;
  auto w = make_workload(5, p);
  const uint64_t n = 1 << 16;
  ASSERT_FALSE(w.needle_positions(1, 0, n).empty());  // the range covers a needle and sinks
  uint64_t fnv = 1469598103934665603ull;
  for (const auto& rows : {keys_of(w, 1, 2, 3, 0, n), values_of(w, 1, 2, 3, 0, n)})
    for (bf16 x : rows) fnv = (fnv ^ x.bits) * 1099511628211ull;
  EXPECT_EQ(fnv, 0x3ee000a849778a86ull);
}

TEST(Workload, PageRegeneratedAloneEqualsBulk) {
  // Dense needles so needle rows are covered too.
  workload_params p;
  p.needle_block_tokens = 256;
  p.needle_rate_per_mtokens = 2000;  // ~one needle per two blocks
  for (uint64_t s = 0; s < 3; ++s) {
    const uint64_t seed = wl_base_seed() + 10 * s;
    SCOPED_TRACE(wl_seed_trace(seed));
    auto w = make_workload(seed, p);
    const uint64_t begin = 0, n = 9001;  // odd length
    const auto bulk_k = keys_of(w, 2, 3, 4, begin, n);
    const auto bulk_v = values_of(w, 2, 3, 4, begin, n);
    ASSERT_FALSE(w.needle_positions(2, begin, begin + n).empty());
    std::mt19937_64 gen(seed);
    std::vector<std::pair<uint64_t, uint64_t>> ranges = {{0, 1}, {0, 5}, {3, 2}, {4, 1},
                                                         {n - 1, 1}, {0, n}};
    for (uint64_t np : w.needle_positions(2, begin, begin + n)) ranges.push_back({np, 1});
    for (int i = 0; i < 40; ++i) {
      const uint64_t b = gen() % n;
      ranges.push_back({b, 1 + gen() % std::min<uint64_t>(777, n - b)});
    }
    for (auto [b, len] : ranges) {
      SCOPED_TRACE("range [" + std::to_string(b) + ", " + std::to_string(b + len) + ")");
      const auto k = keys_of(w, 2, 3, 4, b, len);
      const auto v = values_of(w, 2, 3, 4, b, len);
      ASSERT_EQ(0, std::memcmp(k.data(), bulk_k.data() + b * kDim, k.size() * sizeof(bf16)));
      ASSERT_EQ(0, std::memcmp(v.data(), bulk_v.data() + b * kDim, v.size() * sizeof(bf16)));
    }
    // fill_page with odd page sizes, and the float overloads widen exactly.
    for (uint32_t page_size : {7u, 16u, 33u}) {
      for (uint64_t page : {uint64_t{0}, uint64_t{1}, uint64_t{100}, n / page_size - 1}) {
        std::vector<bf16> k(page_size * kDim), v(page_size * kDim);
        w.fill_page(2, 3, 4, page, page_size, k.data(), v.data());
        const uint64_t off = page * page_size * kDim;
        ASSERT_EQ(0, std::memcmp(k.data(), bulk_k.data() + off, k.size() * sizeof(bf16)));
        ASSERT_EQ(0, std::memcmp(v.data(), bulk_v.data() + off, v.size() * sizeof(bf16)));
      }
    }
    std::vector<float> kf(300 * kDim);
    w.keys(2, 3, 4, 1234, 300, kf.data());
    for (size_t i = 0; i < kf.size(); ++i)
      ASSERT_EQ(kf[i], to_float(bulk_k[1234 * kDim + i])) << "element " << i;
  }
}

TEST(Workload, FillStoreHoldsTheGeneratedPages) {
  const uint64_t seed = wl_base_seed();
  SCOPED_TRACE(wl_seed_trace(seed));
  auto w = make_workload(seed);
  const uint64_t n = 10000 + 5;  // a partial last page
  auto created = kv_head_store::create({kDim, 16, summary_precision::bf16}, n);
  ASSERT_TRUE(created.is_ok()) << created.error().to_string();
  kv_head_store store = std::move(created).value();
  ASSERT_TRUE(fill_store(w, store, 1, 2, 3, 0, n).is_ok());
  ASSERT_EQ(store.token_count(), n);
  const auto k = keys_of(w, 1, 2, 3, 0, n);
  const auto v = values_of(w, 1, 2, 3, 0, n);
  for (uint32_t p = 0; p < store.page_count(); ++p) {
    const uint32_t t = store.page_tokens(p);
    ASSERT_EQ(0, std::memcmp(store.page_keys(p), k.data() + p * 16ull * kDim,
                             t * kDim * sizeof(bf16)));
    ASSERT_EQ(0, std::memcmp(store.page_values(p), v.data() + p * 16ull * kDim,
                             t * kDim * sizeof(bf16)));
  }
  // A mismatched store is refused, not filled.
  auto other = kv_head_store::create({64, 16, summary_precision::bf16}, 64);
  ASSERT_TRUE(other.is_ok());
  EXPECT_EQ(fill_store(w, *other, 0, 0, 0, 0, 16).code(), errc::shape_mismatch);
}

TEST(Workload, SegmentsTileThePositionsWithinTheLengthRange) {
  workload_params p;
  for (uint64_t s = 0; s < 3; ++s) {
    const uint64_t seed = wl_base_seed() + s;
    SCOPED_TRACE(wl_seed_trace(seed));
    auto w = make_workload(seed, p);
    const uint64_t lo = p.topic_segment_tokens_mean - p.topic_segment_tokens_spread;
    const uint64_t hi = p.topic_segment_tokens_mean + p.topic_segment_tokens_spread;
    uint64_t pos = 0, expected_index = 0;
    std::set<uint32_t> topics;
    uint64_t shortest = ~0ull, longest = 0;
    while (pos < 400000) {
      const workload_segment seg = w.segment_of(s, pos);
      ASSERT_EQ(seg.begin, pos);
      ASSERT_EQ(seg.index, expected_index);
      ASSERT_LT(seg.topic, p.topic_count);
      const uint64_t len = seg.end - seg.begin;
      if (seg.index > 0) {  // segment 0 starts at 0, not at a jittered boundary
        ASSERT_GE(len, lo);
        ASSERT_LE(len, hi);
        shortest = std::min(shortest, len);
        longest = std::max(longest, len);
      }
      // Every position inside maps back to this segment.
      for (uint64_t q : {seg.begin, (seg.begin + seg.end) / 2, seg.end - 1})
        ASSERT_EQ(w.segment_of(s, q).index, seg.index);
      topics.insert(seg.topic);
      pos = seg.end;
      ++expected_index;
    }
    // Lengths really vary, and topics recur across a long context.
    EXPECT_LT(shortest, p.topic_segment_tokens_mean - p.topic_segment_tokens_spread / 2);
    EXPECT_GT(longest, p.topic_segment_tokens_mean + p.topic_segment_tokens_spread / 2);
    EXPECT_GT(topics.size(), p.topic_count / 2);
    EXPECT_LT(topics.size(), expected_index);
  }
}

TEST(Workload, NeedlesAreRareAtMostOnePerBlockAndAskedOnesExist) {
  workload_params p;
  const uint64_t seed = wl_base_seed();
  SCOPED_TRACE(wl_seed_trace(seed));
  auto w = make_workload(seed, p);
  const uint64_t span = 1ull << 26;  // 64M tokens: ~2048 expected needles
  uint64_t total = 0;
  for (uint64_t req = 0; req < 2; ++req) {
    const auto needles = w.needle_positions(req, 0, span);
    total += needles.size();
    for (size_t i = 0; i < needles.size(); ++i) {
      ASSERT_GE(needles[i], p.sink_tokens);
      if (i > 0) {
        ASSERT_NE(needles[i] / p.needle_block_tokens, needles[i - 1] / p.needle_block_tokens);
      }
    }
    // A sub-range query returns exactly the needles inside it.
    const uint64_t b = 123457, e = 9876543;
    std::vector<uint64_t> expect;
    for (uint64_t x : needles)
      if (x >= b && x < e) expect.push_back(x);
    EXPECT_EQ(w.needle_positions(req, b, e), expect);
  }
  // Rate within 5 standard deviations of the binomial count.
  const double blocks = 2.0 * span / p.needle_block_tokens;
  const double prob = p.needle_rate_per_mtokens * p.needle_block_tokens / 1e6;
  const double mean = blocks * prob, sd = std::sqrt(blocks * prob * (1 - prob));
  EXPECT_NEAR(static_cast<double>(total), mean, 5 * sd);

  // Asks: only existing needles of the context, roughly the configured share of
  // episodes, constant within an episode, and the responding heads are non-empty.
  const uint64_t context = 1 << 20;
  const auto in_context = w.needle_positions(0, 0, context);
  ASSERT_FALSE(in_context.empty());
  uint64_t asked_episodes = 0;
  const uint64_t episodes = 2000;
  for (uint64_t e = 0; e < episodes; ++e) {
    const uint64_t step0 = e * p.needle_ask_episode_steps;
    const auto asked = w.asked_needle_position(0, 0, 0, step0, context);
    for (uint64_t t = 1; t < p.needle_ask_episode_steps; ++t)
      ASSERT_EQ(asked, w.asked_needle_position(0, 0, 0, step0 + t, context));
    const uint64_t mask = w.needle_heads_mask(0, 0, 0, step0, context);
    if (asked) {
      ++asked_episodes;
      ASSERT_TRUE(std::binary_search(in_context.begin(), in_context.end(), *asked));
      ASSERT_NE(mask, 0u);
      ASSERT_EQ(mask >> kGroup, 0u);
    } else {
      ASSERT_EQ(mask, 0u);
    }
  }
  const double sd_ask = std::sqrt(episodes * p.needle_ask_fraction * (1 - p.needle_ask_fraction));
  EXPECT_NEAR(static_cast<double>(asked_episodes), episodes * p.needle_ask_fraction, 5 * sd_ask);
  // A context without needles is never asked about.
  workload_params none = p;
  none.needle_rate_per_mtokens = 0;
  auto w0 = make_workload(seed, none);
  for (uint64_t t = 0; t < 200; ++t) ASSERT_FALSE(w0.asked_needle_position(0, 0, 0, t, context));
}

}  // namespace
}  // namespace pnmkv::test
