// Placement properties: every (KV head, page) is held by exactly one shard (r = 1), shards
// spread over distinct devices, modelled bytes add up, capacity is never exceeded and a
// request that does not fit is refused without debiting the pool.
#include <gtest/gtest.h>

#include <random>
#include <set>

#include "schedulers/placement.hpp"

namespace pnmkv {
namespace {

pool_state make_pool(uint32_t n, uint64_t free_bytes) {
  pool_state p;
  for (uint32_t i = 0; i < n; ++i) {
    p.device_ids.push_back(100 + i);
    p.free_bytes.push_back(free_bytes);
    p.failure_domain.push_back(i);
  }
  return p;
}

TEST(placement, every_page_held_exactly_once_for_every_h_s) {
  for (uint32_t seed = 1; seed <= 20; ++seed) {
    std::mt19937_64 rng(seed);
    SCOPED_TRACE("seed " + std::to_string(seed));
    const uint32_t pool_size = 1u << (rng() % 5);  // 1..16
    for (auto split : {sequence_split::contiguous, sequence_split::interleave}) {
      for (uint32_t h : {1u, 2u, 4u, 8u}) {
        if (pool_size % h != 0) continue;
        placement_request r;
        r.request_id = seed;
        r.context_tokens = 1 + rng() % 5000;
        r.decode_tokens = rng() % 40;
        r.page_size_tokens = 16;
        r.layers = 2;
        r.kv_heads = 8;
        r.head_groups = h;
        r.split = split;
        auto pool = make_pool(pool_size, 1ull << 40);
        auto before = pool.free_bytes;
        auto pl = place_request(r, pool);
        ASSERT_TRUE(pl) << pl.error().to_string();
        EXPECT_EQ(pl->head_groups * pl->sequence_shards, pool_size);
        const uint64_t pages = (r.context_tokens + r.decode_tokens + 15) / 16;
        uint64_t pages_sum = 0, bytes_sum = 0;
        std::set<uint32_t> devices;
        for (const auto& s : pl->shards) {
          devices.insert(s.device_id);
          pages_sum += s.pages_held * (s.kv_head_end - s.kv_head_begin);
          bytes_sum += s.bytes_modelled;
        }
        EXPECT_EQ(devices.size(), pool_size) << "shards spread over distinct devices";
        EXPECT_EQ(pages_sum, pages * r.kv_heads);
        uint64_t debited = 0;
        for (size_t i = 0; i < pool.free_bytes.size(); ++i) debited += before[i] - pool.free_bytes[i];
        EXPECT_EQ(debited, bytes_sum) << "bytes per device add up";
        EXPECT_EQ(bytes_sum, shard_bytes_per_layer_head(r, pages) * r.kv_heads * r.layers);
        // tokens_held_at agrees with counting tokens of held pages, at every length.
        for (uint64_t len : {uint64_t(0), uint64_t(1), r.context_tokens, r.context_tokens + r.decode_tokens}) {
          uint64_t total = 0;
          for (const auto& s : pl->shards) {
            uint64_t counted = 0;
            for (uint64_t t = 0; t < len; ++t) counted += s.holds_page(t / 16);
            ASSERT_EQ(s.tokens_held_at(len, 16), counted) << "len " << len;
            if (s.holds_head(0)) total += counted;
          }
          EXPECT_EQ(total, len);
        }
        for (uint32_t head = 0; head < r.kv_heads; ++head) {
          for (uint64_t p = 0; p < pages; ++p) {
            int holders = 0;
            for (const auto& s : pl->shards) holders += s.holds_head(head) && s.holds_page(p);
            ASSERT_EQ(holders, 1) << "head " << head << " page " << p;
          }
        }
      }
    }
  }
}

TEST(placement, too_large_is_refused_and_pool_untouched) {
  placement_request r;
  r.context_tokens = 1 << 20;
  r.layers = 32;
  r.kv_heads = 8;
  auto pool = make_pool(4, 1ull << 30);  // 1 GiB each: far too small for 128 GiB of KV
  auto before = pool.free_bytes;
  auto pl = place_request(r, pool);
  ASSERT_FALSE(pl);
  EXPECT_EQ(pl.error().code(), errc::capacity);
  EXPECT_NE(pl.error().message().find("does not fit"), std::string::npos);
  EXPECT_EQ(pool.free_bytes, before);
}

TEST(placement, capacity_never_exceeded_over_random_arrivals) {
  std::mt19937_64 rng(7);
  auto pool = make_pool(8, 64ull << 30);
  const auto capacity = pool.free_bytes;
  int placed = 0, refused = 0;
  for (int i = 0; i < 200; ++i) {
    placement_request r;
    r.request_id = i;
    r.context_tokens = 1 + rng() % (1 << 19);
    r.layers = 32;
    r.kv_heads = 8;
    auto pl = place_request(r, pool);
    (pl ? placed : refused)++;
    for (size_t d = 0; d < pool.free_bytes.size(); ++d) ASSERT_LE(pool.free_bytes[d], capacity[d]);
  }
  EXPECT_GT(placed, 0);
  EXPECT_GT(refused, 0);
}

TEST(placement, replicas_on_distinct_devices) {
  placement_request r;
  r.context_tokens = 4096;
  r.kv_heads = 8;
  r.replication = 2;
  auto pool = make_pool(8, 1ull << 40);
  auto pl = place_request(r, pool);
  ASSERT_TRUE(pl) << pl.error().to_string();
  for (const auto& s : pl->shards) {
    ASSERT_EQ(s.replica_device_ids.size(), 1u);
    EXPECT_NE(s.replica_device_ids[0], s.device_id);
  }
}

TEST(placement, bad_shapes_are_clear_errors) {
  placement_request r;
  r.context_tokens = 100;
  r.kv_heads = 8;
  r.head_groups = 3;
  auto pool = make_pool(6, 1ull << 40);
  auto pl = place_request(r, pool);
  ASSERT_FALSE(pl);
  EXPECT_NE(pl.error().message().find("must divide"), std::string::npos);
  r.head_groups = 0;
  r.replication = 7;
  pl = place_request(r, pool);
  ASSERT_FALSE(pl);
  EXPECT_NE(pl.error().message().find("replication"), std::string::npos);
}

}  // namespace
}  // namespace pnmkv
