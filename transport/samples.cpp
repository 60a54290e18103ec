#include "transport/samples.hpp"

#include <random>

namespace pnmkv::transport {

message sample_message(msg_kind kind, uint64_t seed, const sample_shape& s) {
  std::mt19937_64 rng(seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(kind));
  std::uniform_real_distribution<float> uf(-2.f, 2.f);
  auto bytes = [&](size_t n) {
    std::vector<uint8_t> v(n);
    for (auto& b : v) b = static_cast<uint8_t>(rng());
    return v;
  };
  auto floats = [&](size_t n) {
    std::vector<float> v(n);
    for (auto& f : v) f = uf(rng);
    return v;
  };
  auto kv = [&](size_t n) {
    std::vector<bf16> v(n);
    for (auto& x : v) x = to_bf16(uf(rng));
    return v;
  };
  message m;
  m.env.sender = static_cast<node_id>(rng() % 16);
  m.env.seq = rng() % 100000;
  m.env.vtime_ns = double(rng() % (1ull << 40)) + 0.25;
  const uint32_t layer = static_cast<uint32_t>(rng() % 32);
  const uint64_t request = rng() % 1000;
  switch (kind) {
    case msg_kind::challenge: m.body = challenge_msg{bytes(32)}; break;
    case msg_kind::join: {
      join_msg j;
      j.node = static_cast<node_id>(rng() % 64);
      j.role = static_cast<node_role>(rng() % 4);
      j.nonce = bytes(32);
      j.proof = bytes(32);
      j.worker_address = bytes(200 + rng() % 100);
      m.body = j;
      break;
    }
    case msg_kind::join_ack: m.body = join_ack_msg{rng() % 2 == 0, 7, rng() % 100, "wrong secret"}; break;
    case msg_kind::membership: {
      membership_msg mm;
      mm.epoch = rng() % 1000;
      for (int i = 0; i < 5; ++i)
        mm.members.push_back({static_cast<node_id>(i), static_cast<node_role>(i % 4), i != 3, bytes(64)});
      for (int r = 0; r < 3; ++r) {
        placement_info p;
        p.request_id = static_cast<uint64_t>(r);
        for (uint32_t sh = 0; sh < 4; ++sh) {
          shard_info si;
          si.shard_id = sh;
          si.device = 1 + sh;
          si.kv_head0 = 2 * (sh % 2);
          si.kv_head1 = si.kv_head0 + 2;
          if (sh % 2) {
            si.split = sequence_split::interleave;
            si.stride = 2;
            si.cls = sh / 2;
          } else {
            si.split = sequence_split::contiguous;
            si.page0 = 100 * sh;
            si.page1 = 100 * sh + 100;
          }
          si.replicas = {static_cast<node_id>(9 + sh)};
          p.shards.push_back(si);
        }
        mm.placements.push_back(p);
      }
      m.body = mm;
      break;
    }
    case msg_kind::prefill_write: {
      prefill_write_msg w;
      w.request_id = request;
      w.layer = layer;
      w.kv_head = static_cast<uint32_t>(rng() % 8);
      w.position0 = (rng() % 1000) * s.page_tokens;
      w.n_tokens = s.page_tokens;
      w.head_dim = s.head_dim;
      w.k = kv(size_t{s.page_tokens} * s.head_dim);
      w.v = kv(size_t{s.page_tokens} * s.head_dim);
      m.body = w;
      break;
    }
    case msg_kind::token_append: {
      token_append_msg a;
      a.request_id = request;
      a.layer = layer;
      a.kv_head0 = 0;
      a.n_heads = s.kv_heads;
      a.position = rng() % 100000;
      a.head_dim = s.head_dim;
      a.k = kv(size_t{s.kv_heads} * s.head_dim);
      a.v = kv(size_t{s.kv_heads} * s.head_dim);
      m.body = a;
      break;
    }
    case msg_kind::query: {
      query_msg q;
      q.request_id = request;
      q.step = static_cast<uint32_t>(rng() % 100);
      q.layer = layer;
      q.kv_head0 = 0;
      q.kv_head1 = s.kv_heads;
      q.group = s.group;
      q.head_dim = s.head_dim;
      q.q = floats(size_t{s.kv_heads} * s.group * s.head_dim);
      q.budget_pages = 128;
      q.round = static_cast<selection_round>(rng() % 3);
      q.score_threshold = uf(rng);
      q.deadline_ns = rng() % (1ull << 40);
      q.shard_id = static_cast<uint32_t>(rng() % 4);
      q.sequence_tokens = rng() % 1000000;
      for (int i = 0; i < 5; ++i) q.excluded_pages.push_back(static_cast<uint32_t>(rng() % 60000));
      for (int i = 0; i < 7; ++i) q.listed_pages.push_back(static_cast<uint32_t>(i * 3));
      m.body = q;
      break;
    }
    case msg_kind::partial: {
      partial_msg p;
      p.request_id = request;
      p.step = static_cast<uint32_t>(rng() % 100);
      p.layer = layer;
      p.kv_head = static_cast<uint32_t>(rng() % 8);
      p.shard_id = static_cast<uint32_t>(rng() % 4);
      p.group = s.group;
      p.head_dim = s.head_dim;
      p.o = floats(size_t{s.group} * s.head_dim);
      p.lse = floats(s.group);
      p.pages_selected = s.pages;
      for (uint32_t i = 0; i < s.pages; ++i) p.page_ids.push_back(static_cast<uint32_t>(rng() % 65536));
      p.bytes_scanned = rng() % (1ull << 30);
      p.flops = static_cast<double>(rng() % 1000000);
      p.round = static_cast<selection_round>(rng() % 3);
      p.device_bytes_held = rng() % (1ull << 36);
      m.body = p;
      break;
    }
    case msg_kind::candidates: {
      candidates_msg c;
      c.request_id = request;
      c.step = static_cast<uint32_t>(rng() % 100);
      c.layer = layer;
      c.kv_head = 1;
      c.shard_id = 2;
      for (uint32_t i = 0; i < s.pages; ++i) c.page_ids.push_back(static_cast<uint32_t>(rng() % 65536));
      c.scores = floats(s.pages);
      m.body = c;
      break;
    }
    case msg_kind::recall_request: {
      recall_request_msg r;
      r.request_id = request;
      r.step = static_cast<uint32_t>(rng() % 100);
      r.layer = layer;
      r.kv_head = 3;
      for (uint32_t i = 0; i < s.pages; ++i) r.page_ids.push_back(static_cast<uint32_t>(rng() % 65536));
      m.body = r;
      break;
    }
    case msg_kind::recall_reply: {
      recall_reply_msg r;
      r.request_id = request;
      r.step = static_cast<uint32_t>(rng() % 100);
      r.layer = layer;
      r.kv_head = 3;
      r.page_tokens = s.page_tokens;
      r.head_dim = s.head_dim;
      for (uint32_t i = 0; i < s.pages; ++i) {
        recalled_page p;
        p.page_id = static_cast<uint32_t>(rng() % 65536);
        p.n_tokens = i + 1 == s.pages ? 1 + static_cast<uint32_t>(rng() % s.page_tokens) : s.page_tokens;
        p.k = kv(size_t{p.n_tokens} * s.head_dim);
        p.v = kv(size_t{p.n_tokens} * s.head_dim);
        r.pages.push_back(std::move(p));
      }
      m.body = r;
      break;
    }
    case msg_kind::error: m.body = error_msg{errc::timeout, "step 3 missed its deadline", rng() % 1000}; break;
    case msg_kind::heartbeat: m.body = heartbeat_msg{rng(), static_cast<uint32_t>(rng() % 100)}; break;
    case msg_kind::region_advert:
      m.body = region_advert_msg{rng() % 100, 1ull << 26, bytes(120), 7};
      break;
    case msg_kind::write_ack:
      m.body = write_ack_msg{rng() % 100, 3, 5, 4096, 4096, true};
      break;
  }
  return m;
}

}  // namespace pnmkv::transport
