// Synthetic workload (see workload.hpp): hashing, the text structure (segments, needles),
// the key/value row generator and the query model.
#include "core/workload.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>

#include "core/check.hpp"
#include "core/kv_store.hpp"

namespace pnmkv {

namespace {

constexpr uint64_t golden_gamma = 0x9E3779B97F4A7C15ull;
constexpr double pi = 3.14159265358979323846;

// splitmix64's finaliser (Stafford variant 13): a bijection with full avalanche.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// wyrand's output function on a counter: one 64x64->128 multiply per 64 random bits; a
// pure function of (key, counter). Used for the bulk noise stream inside a row, whose key
// is already a full mix64 hash of the coordinates.
inline uint64_t wy_stream(uint64_t key, uint64_t counter) {
  const uint64_t s = key + 0xA0761D6478BD642Full * (counter + 1);
  const unsigned __int128 m =
      static_cast<unsigned __int128>(s) * (s ^ 0xE7037ED1A0B428DBull);
  return static_cast<uint64_t>(m >> 64) ^ static_cast<uint64_t>(m);
}

inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

// Combines a key with one more coordinate. Not symmetric, so (a, b) and (b, a) differ.
inline uint64_t hash2(uint64_t key, uint64_t v) {
  return mix64(rotl(key, 23) ^ mix64(v ^ 0xD6E8FEB86659FD93ull));
}
inline uint64_t hash3(uint64_t key, uint64_t a, uint64_t b) { return hash2(hash2(key, a), b); }
inline uint64_t hash4(uint64_t key, uint64_t a, uint64_t b, uint64_t c) {
  return hash2(hash3(key, a, b), c);
}

// Distinct streams, so no two uses of the hash ever share an input.
enum tag : uint64_t {
  tag_request = 1,
  tag_segment_offset,
  tag_segment_topic,
  tag_needle_present,
  tag_needle_offset,
  tag_needle_ask,
  tag_needle_pick,
  tag_key_noise,
  tag_value_noise,
  tag_sink_dir,
  tag_topic_dir,
  tag_segment_dir,
  tag_needle_dir,
  tag_value_topic_dir,
  tag_value_needle_dir,
  tag_query_sink,
  tag_query_ref,
  tag_query_head_weight,
  tag_query_noise_persistent,
  tag_query_noise_step,
  tag_needle_heads,
};

// Two approximately normal integers from one 64-bit hash: each the sum of four uniform
// bytes (Irwin-Hall), centred: range [-510, 510], std sqrt(4·(256²-1)/12) ≈ 147.80.
constexpr double irwin_hall_std = 147.80020297550673;  // sqrt(21845)
inline void noise_pair(uint64_t r, int32_t& a, int32_t& b) {
  uint64_t s = (r & 0x00FF00FF00FF00FFull) + ((r >> 8) & 0x00FF00FF00FF00FFull);
  s = (s & 0x0000FFFF0000FFFFull) + ((s >> 16) & 0x0000FFFF0000FFFFull);
  a = static_cast<int32_t>(s & 0xFFFFFFFFull) - 510;
  b = static_cast<int32_t>(s >> 32) - 510;
}

// Uniform in [-1, 1), exact in float (25 significant bits at most, scaled by 2^-24).
inline float uniform_pm1(uint64_t h) {
  int32_t u24 = static_cast<int32_t>(h >> 40);  // [0, 2^24)
  return static_cast<float>(2 * u24 - (1 << 24)) * (1.0f / 16777216.0f);
}
// Uniform in [0, 1) with 53 bits.
inline double uniform01(uint64_t h) { return static_cast<double>(h >> 11) * 0x1.0p-53; }

// 1 + f·u for u in [-1, 1): exact product in double, one rounding.
inline float spread_factor(float f, uint64_t h) {
  return static_cast<float>(1.0 + static_cast<double>(f) * static_cast<double>(uniform_pm1(h)));
}

// bf16 round-to-nearest-even of a finite float: the same bits as to_bf16 (generated values
// are bounded, never NaN), without its NaN branch so the loop vectorises.
inline bf16 bf16_finite(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return bf16{static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

// One row: x_d = noise_d · noise_scale + weight · w[d] (+ extra[d]). Every product is of
// a float and a small integer or two floats, evaluated in double, hence exact: contracting
// into an FMA gives the same bits. Two passes (integer hashing, then arithmetic) so each
// is a simple loop the compiler can unroll or vectorise.
void emit_row(uint64_t row_key, float noise_scale, float weight, const float* w,
              const float* extra, uint32_t head_dim, bf16* out) {
  int32_t n[1024];
  for (uint32_t i = 0; i < head_dim / 2; ++i)
    noise_pair(wy_stream(row_key, i), n[2 * i], n[2 * i + 1]);
  const double ns = noise_scale;
  const double wt = weight;
  bf16* o = out;
  if (w && extra) {
    for (uint32_t k = 0; k < head_dim; ++k) {
      double x = static_cast<double>(n[k]) * ns + wt * static_cast<double>(w[k]);
      x += static_cast<double>(extra[k]);
      o[k] = bf16_finite(static_cast<float>(x));
    }
  } else if (w) {
    for (uint32_t k = 0; k < head_dim; ++k) {
      const double x = static_cast<double>(n[k]) * ns + wt * static_cast<double>(w[k]);
      o[k] = bf16_finite(static_cast<float>(x));
    }
  } else if (extra) {
    for (uint32_t k = 0; k < head_dim; ++k) {
      const double x = static_cast<double>(n[k]) * ns + static_cast<double>(extra[k]);
      o[k] = bf16_finite(static_cast<float>(x));
    }
  } else {
    for (uint32_t k = 0; k < head_dim; ++k)
      o[k] = bf16_finite(static_cast<float>(static_cast<double>(n[k]) * ns));
  }
}

status bad(const std::string& field, const std::string& value, const std::string& allowed) {
  return {errc::invalid_argument,
          "workload." + field + " = " + value + " is out of range; allowed: " + allowed};
}

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}

}  // namespace

status workload_params::validate() const {
  auto finite_in = [](double v, double lo, double hi) {
    return std::isfinite(v) && v >= lo && v <= hi;
  };
  if (sink_tokens > 1024) return bad("sink_tokens", num(sink_tokens), "[0, 1024]");
  if (topic_count < 1 || topic_count > (1u << 20))
    return bad("topic_count", num(topic_count), "[1, 1048576]");
  if (topic_segment_tokens_mean < 1 || topic_segment_tokens_mean > (1u << 24))
    return bad("topic_segment_tokens_mean", num(topic_segment_tokens_mean),
               "[1, 16777216] (a segment has at least one token)");
  if (topic_segment_tokens_spread >= topic_segment_tokens_mean)
    return bad("topic_segment_tokens_spread", num(topic_segment_tokens_spread),
               "[0, topic_segment_tokens_mean - 1] = [0, " +
                   num(topic_segment_tokens_mean - 1.0) + "] (shortest segment >= 1 token)");
  if (needle_block_tokens < 16 || needle_block_tokens > (1u << 26))
    return bad("needle_block_tokens", num(needle_block_tokens), "[16, 67108864]");
  const double needle_max = 1e6 / needle_block_tokens;  // at most one needle per block
  if (!finite_in(needle_rate_per_mtokens, 0, needle_max))
    return bad("needle_rate_per_mtokens", num(needle_rate_per_mtokens),
               "[0, 1e6 / needle_block_tokens] = [0, " + num(needle_max) +
                   "] (at most one needle per block)");
  struct {
    const char* name;
    double v, lo, hi;
  } numbers[] = {
      {"sink_logit", sink_logit, 0, 100},
      {"topic_logit", topic_logit, 0, 100},
      {"segment_logit", segment_logit, 0, 100},
      {"salience_spread_fraction", salience_spread_fraction, 0, 1},
      {"noise_logit_std", noise_logit_std, 1e-6, 100},
      {"needle_logit", needle_logit, 0, 100},
      {"query_local_weight", query_local_weight, 0, 100},
      {"query_noise_persistent_fraction", query_noise_persistent_fraction, 0, 1},
      {"query_head_spread_fraction", query_head_spread_fraction, 0, 1},
      {"needle_ask_fraction", needle_ask_fraction, 0, 1},
      {"needle_heads_fraction", needle_heads_fraction, 0, 1},
      {"value_noise_std", value_noise_std, 1e-6, 1e6},
      {"value_topic_rms", value_topic_rms, 0, 1e6},
      {"value_sink_scale", value_sink_scale, 0, 1e6},
      {"value_needle_rms", value_needle_rms, 0, 1e6},
  };
  for (const auto& n : numbers)
    if (!finite_in(n.v, n.lo, n.hi))
      return bad(n.name, num(n.v), "[" + num(n.lo) + ", " + num(n.hi) + "]");
  if (query_referenced_segments > 64)
    return bad("query_referenced_segments", num(query_referenced_segments), "[0, 64]");
  if (drift_period_steps < 1 || drift_period_steps > 100000000)
    return bad("drift_period_steps", num(drift_period_steps), "[1, 1e8]");
  if (needle_ask_episode_steps < 1 || needle_ask_episode_steps > 1000000)
    return bad("needle_ask_episode_steps", num(needle_ask_episode_steps), "[1, 1e6]");
  if (context_tokens < 1 || context_tokens > (1ull << 32))
    return bad("context_tokens", num(static_cast<double>(context_tokens)), "[1, 2^32]");
  return {};
}

struct synthetic_workload::head_keys {
  uint64_t request_key;  // text structure: segments, topics, needles
  uint64_t head_key;     // geometry of one (layer, kv_head): directions and noise
};

result<synthetic_workload> synthetic_workload::create(const workload_params& params,
                                                      uint64_t seed, uint32_t head_dim,
                                                      uint32_t gqa_group) {
  if (auto st = params.validate(); !st) return st;
  if (head_dim < 16 || head_dim > 1024 || head_dim % 2 != 0)
    return status{errc::invalid_argument, "synthetic workload: head_dim = " +
                                              std::to_string(head_dim) +
                                              " is out of range; allowed: even, [16, 1024]"};
  if (gqa_group < 1 || gqa_group > 64)
    return status{errc::invalid_argument, "synthetic workload: gqa_group = " +
                                              std::to_string(gqa_group) +
                                              " is out of range; allowed: [1, 64]"};
  synthetic_workload w;
  w.params_ = params;
  w.seed_ = seed;
  w.head_dim_ = head_dim;
  w.group_ = gqa_group;
  const double d = head_dim;
  const double quarter = std::pow(d, 0.25);
  // Key and query noise each carry sqrt(noise_logit_std) per dimension, so their dot
  // product scaled by 1/sqrt(d) has std noise_logit_std.
  const double noise_std = std::sqrt(params.noise_logit_std);
  w.key_noise_scale_ = static_cast<float>(noise_std / irwin_hall_std);
  w.query_noise_scale_ = static_cast<float>(noise_std / irwin_hall_std);
  w.value_noise_scale_ = static_cast<float>(params.value_noise_std / irwin_hall_std);
  w.value_sink_noise_scale_ =
      static_cast<float>(params.value_noise_std * params.value_sink_scale / irwin_hall_std);
  w.sink_amplitude_ = static_cast<float>(std::sqrt(params.sink_logit) * quarter);
  w.topic_amplitude_ = static_cast<float>(std::sqrt(params.topic_logit) * quarter);
  w.segment_amplitude_ = static_cast<float>(std::sqrt(params.segment_logit) * quarter);
  w.needle_amplitude_ = static_cast<float>(std::sqrt(params.needle_logit) * quarter);
  w.value_topic_amplitude_ = static_cast<float>(params.value_topic_rms * std::sqrt(d));
  w.value_needle_amplitude_ = static_cast<float>(params.value_needle_rms * std::sqrt(d));
  const double p_block = params.needle_rate_per_mtokens * params.needle_block_tokens / 1e6;
  w.needle_threshold_ = p_block >= 1.0 ? ~0ull
                                       : static_cast<uint64_t>(std::ldexp(p_block, 64));
  return w;
}

synthetic_workload::head_keys synthetic_workload::head(uint64_t request, uint32_t layer,
                                                       uint32_t kv_head) const {
  head_keys h;
  h.request_key = hash3(mix64(seed_ ^ 0x5851F42D4C957F2Dull), tag_request, request);
  h.head_key = hash3(h.request_key, layer, kv_head);
  return h;
}

// Boundary i of the segment grid: i·mean + a hashed offset in [-J, J], J = spread / 2, so
// consecutive boundaries are mean ± spread apart and segment_at is O(1).
uint64_t synthetic_workload::segment_boundary(uint64_t request_key, uint64_t index) const {
  const uint64_t mean = params_.topic_segment_tokens_mean;
  if (index == 0) return 0;
  const uint64_t j = params_.topic_segment_tokens_spread / 2;
  const uint64_t off = hash3(request_key, tag_segment_offset, index) % (2 * j + 1);
  return index * mean + off - j;  // >= mean - j > 0
}

workload_segment synthetic_workload::segment_at(uint64_t request_key, uint64_t p) const {
  const uint64_t mean = params_.topic_segment_tokens_mean;
  uint64_t i = p / mean;
  if (p < segment_boundary(request_key, i)) {
    --i;
  } else if (p >= segment_boundary(request_key, i + 1)) {
    ++i;
  }
  workload_segment s;
  s.index = i;
  s.begin = segment_boundary(request_key, i);
  s.end = segment_boundary(request_key, i + 1);
  s.topic = static_cast<uint32_t>(hash3(request_key, tag_segment_topic, i) %
                                  params_.topic_count);
  PNMKV_CHECK(s.begin <= p && p < s.end, "position=", p, " outside its segment [", s.begin, ", ",
              s.end, ")");
  return s;
}

workload_segment synthetic_workload::segment_of(uint64_t request, uint64_t position) const {
  return segment_at(head(request, 0, 0).request_key, position);
}

// A direction of norm `amplitude`, hashed from `key`: approximately uniform on the
// sphere (normal components), normalised with an exact integer sum of squares.
void synthetic_workload::direction(uint64_t key, float amplitude, float* out) const {
  const uint32_t d = head_dim_;
  int32_t n[1024];
  int64_t sum_sq = 0;
  for (uint32_t i = 0; i < d / 2; ++i) {
    noise_pair(mix64(key + golden_gamma * (i + 1)), n[2 * i], n[2 * i + 1]);
    sum_sq += int64_t{n[2 * i]} * n[2 * i] + int64_t{n[2 * i + 1]} * n[2 * i + 1];
  }
  if (sum_sq == 0) {  // astronomically unlikely; keep it well defined
    n[0] = 1;
    sum_sq = 1;
  }
  const double inv = static_cast<double>(amplitude) / std::sqrt(static_cast<double>(sum_sq));
  for (uint32_t k = 0; k < d; ++k) out[k] = static_cast<float>(static_cast<double>(n[k]) * inv);
}

std::vector<uint64_t> synthetic_workload::needle_positions(uint64_t request, uint64_t begin,
                                                           uint64_t end) const {
  return needles_in(head(request, 0, 0).request_key, begin, end);
}

std::vector<uint64_t> synthetic_workload::needles_in(uint64_t rk, uint64_t begin,
                                                     uint64_t end) const {
  std::vector<uint64_t> out;
  if (begin >= end || needle_threshold_ == 0) return out;
  const uint64_t b = params_.needle_block_tokens;
  for (uint64_t blk = begin / b; blk <= (end - 1) / b; ++blk) {
    if (hash3(rk, tag_needle_present, blk) >= needle_threshold_) continue;
    const uint64_t pos = blk * b + hash3(rk, tag_needle_offset, blk) % b;
    if (pos < params_.sink_tokens) continue;  // a sink is never a needle
    if (pos >= begin && pos < end) out.push_back(pos);
  }
  return out;
}

void synthetic_workload::generate(const head_keys& h, bool is_value, uint64_t begin,
                                  uint64_t n_tokens, bf16* out) const {
  const uint32_t d = head_dim_;
  const uint64_t end = begin + n_tokens;
  PNMKV_CHECK(end >= begin, "position range overflows: begin=", begin, ", n_tokens=", n_tokens);
  std::unique_ptr<float[]> scratch(new float[4 * d]);
  float* w = scratch.get();        // structured row of the current segment
  float* tmp = w + d;              // second direction
  float* sink = w + 2 * d;         // sink row (keys), computed when needed
  float* needle = w + 3 * d;       // needle row of the current needle
  const auto needles = needles_in(h.request_key, begin, end);
  size_t next_needle = 0;
  bool sink_ready = false;
  const uint64_t noise_key = hash2(h.head_key, is_value ? tag_value_noise : tag_key_noise);

  uint64_t p = begin;
  while (p < end) {
    const workload_segment seg = segment_at(h.request_key, p);
    const uint64_t seg_end = std::min(seg.end, end);
    if (!is_value) {
      direction(hash3(h.head_key, tag_topic_dir, seg.topic), topic_amplitude_, w);
      direction(hash3(h.head_key, tag_segment_dir, seg.index), segment_amplitude_, tmp);
      for (uint32_t k = 0; k < d; ++k) w[k] += tmp[k];
    } else {
      direction(hash3(h.head_key, tag_value_topic_dir, seg.topic), value_topic_amplitude_, w);
    }
    for (; p < seg_end; ++p) {
      bf16* row = out + (p - begin) * d;
      const uint64_t row_key = hash2(noise_key, p);
      const bool is_sink = p < params_.sink_tokens;
      while (next_needle < needles.size() && needles[next_needle] < p) ++next_needle;
      const bool is_needle = next_needle < needles.size() && needles[next_needle] == p;
      if (!is_value) {
        const float salience =
            spread_factor(static_cast<float>(params_.salience_spread_fraction), mix64(row_key));
        const float* extra = nullptr;
        if (is_sink) {
          if (!sink_ready) {
            direction(hash2(h.head_key, tag_sink_dir), sink_amplitude_, sink);
            sink_ready = true;
          }
          extra = sink;
        } else if (is_needle) {
          direction(hash3(h.head_key, tag_needle_dir, p), needle_amplitude_, needle);
          extra = needle;
        }
        emit_row(row_key, key_noise_scale_, salience, w, extra, d, row);
      } else if (is_sink) {
        emit_row(row_key, value_sink_noise_scale_, 0.0f, nullptr, nullptr, d, row);
      } else if (is_needle) {
        direction(hash3(h.head_key, tag_value_needle_dir, p), value_needle_amplitude_, needle);
        emit_row(row_key, value_noise_scale_, 0.0f, nullptr, needle, d, row);
      } else {
        emit_row(row_key, value_noise_scale_, 1.0f, w, nullptr, d, row);
      }
    }
  }
}

void synthetic_workload::keys(uint64_t request, uint32_t layer, uint32_t kv_head,
                              uint64_t position_begin, uint64_t n_tokens, bf16* out) const {
  generate(head(request, layer, kv_head), false, position_begin, n_tokens, out);
}

void synthetic_workload::values(uint64_t request, uint32_t layer, uint32_t kv_head,
                                uint64_t position_begin, uint64_t n_tokens, bf16* out) const {
  generate(head(request, layer, kv_head), true, position_begin, n_tokens, out);
}

namespace {
// Generates bf16 in bounded chunks and widens, so the float overloads return exactly the
// stored values.
template <class Gen>
void widen_in_chunks(uint64_t position_begin, uint64_t n_tokens, uint32_t head_dim,
                     float* out, Gen&& gen) {
  constexpr uint64_t chunk_tokens = 1024;
  std::unique_ptr<bf16[]> buf(new bf16[chunk_tokens * head_dim]);
  for (uint64_t done = 0; done < n_tokens;) {
    const uint64_t n = std::min(chunk_tokens, n_tokens - done);
    gen(position_begin + done, n, buf.get());
    for (uint64_t i = 0; i < n * head_dim; ++i) out[done * head_dim + i] = to_float(buf[i]);
    done += n;
  }
}
}  // namespace

void kv_workload::keys(uint64_t request, uint32_t layer, uint32_t kv_head,
                       uint64_t position_begin, uint64_t n_tokens, float* out) const {
  widen_in_chunks(position_begin, n_tokens, head_dim(), out, [&](uint64_t b, uint64_t n, bf16* o) {
    keys(request, layer, kv_head, b, n, o);
  });
}

void kv_workload::values(uint64_t request, uint32_t layer, uint32_t kv_head,
                         uint64_t position_begin, uint64_t n_tokens, float* out) const {
  widen_in_chunks(position_begin, n_tokens, head_dim(), out, [&](uint64_t b, uint64_t n, bf16* o) {
    values(request, layer, kv_head, b, n, o);
  });
}

void kv_workload::fill_page(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t page,
                            uint32_t page_size_tokens, bf16* k_out, bf16* v_out) const {
  PNMKV_CHECK_GE(page_size_tokens, 1u);
  keys(request, layer, kv_head, page * page_size_tokens, page_size_tokens, k_out);
  values(request, layer, kv_head, page * page_size_tokens, page_size_tokens, v_out);
}

std::optional<uint64_t> synthetic_workload::asked_needle_position(
    uint64_t request, uint32_t /*layer*/, uint32_t /*kv_head*/, uint64_t step,
    uint64_t context_tokens) const {
  // The question is about the text, so every layer and head of the request is asked for
  // the same needle in an episode.
  const uint64_t rk = head(request, 0, 0).request_key;
  const uint64_t episode = step / params_.needle_ask_episode_steps;
  if (uniform01(hash3(rk, tag_needle_ask, episode)) >= params_.needle_ask_fraction)
    return std::nullopt;
  const auto needles = needles_in(rk, 0, context_tokens);
  if (needles.empty()) return std::nullopt;
  return needles[hash3(rk, tag_needle_pick, episode) % needles.size()];
}

uint64_t synthetic_workload::needle_heads_mask(uint64_t request, uint32_t layer,
                                               uint32_t kv_head, uint64_t step,
                                               uint64_t context_tokens) const {
  if (!asked_needle_position(request, layer, kv_head, step, context_tokens)) return 0;
  const uint64_t hk = head(request, layer, kv_head).head_key;
  const uint64_t episode = step / params_.needle_ask_episode_steps;
  uint64_t mask = 0;
  for (uint32_t q = 0; q < group_; ++q)
    if (uniform01(hash4(hk, tag_needle_heads, episode, q)) < params_.needle_heads_fraction)
      mask |= 1ull << q;
  if (mask == 0) mask = 1ull << (hash3(hk, tag_needle_heads, episode) % group_);
  return mask;
}

void synthetic_workload::queries(uint64_t request, uint32_t layer, uint32_t kv_head,
                                 uint64_t step, float* out) const {
  queries(request, layer, kv_head, step, params_.context_tokens, out);
}

void synthetic_workload::queries(uint64_t request, uint32_t layer, uint32_t kv_head,
                                 uint64_t step, uint64_t context_tokens, float* out) const {
  const uint32_t d = head_dim_;
  const uint32_t g = group_;
  const head_keys h = head(request, layer, kv_head);
  std::vector<double> acc(static_cast<size_t>(g) * d, 0.0);
  std::vector<float> a(d), b(d);
  std::vector<double> weight(g);
  auto add = [&](uint32_t q, double wt, const float* row) {
    for (uint32_t k = 0; k < d; ++k) acc[q * d + k] += wt * row[k];
  };

  // Sink: every head leans on the sink, some more than others.
  direction(hash2(h.head_key, tag_sink_dir), sink_amplitude_, a.data());
  const float sink_spread = static_cast<float>(0.2 * params_.query_head_spread_fraction);
  for (uint32_t q = 0; q < g; ++q)
    add(q, spread_factor(sink_spread, hash3(h.head_key, tag_query_sink, q)), a.data());

  // A passage: its topic and its own direction, the same sum the keys carry.
  auto add_segment = [&](const workload_segment& s) {
    direction(hash3(h.head_key, tag_topic_dir, s.topic), topic_amplitude_, a.data());
    direction(hash3(h.head_key, tag_segment_dir, s.index), segment_amplitude_, b.data());
    for (uint32_t k = 0; k < d; ++k) a[k] += b[k];
    for (uint32_t q = 0; q < g; ++q)
      if (weight[q] != 0) add(q, weight[q], a.data());
  };

  // Local window: decoding continues the passage the query's own position is in.
  std::fill(weight.begin(), weight.end(), params_.query_local_weight);
  add_segment(segment_at(h.request_key, context_tokens + step));

  // Referenced passages, fading in and out with staggered phases; a slot swaps to a new
  // passage exactly when its weight is zero, so the query moves continuously.
  const uint32_t slots = params_.query_referenced_segments;
  const float head_spread = static_cast<float>(params_.query_head_spread_fraction);
  for (uint32_t j = 0; j < slots && context_tokens > 0; ++j) {
    const double x = static_cast<double>(step) / params_.drift_period_steps +
                     static_cast<double>(j) / slots;
    const uint64_t epoch = static_cast<uint64_t>(std::floor(x));
    const double s = std::sin(pi * (x - static_cast<double>(epoch)));
    const double slot_weight = s * s;
    const uint64_t ref = hash4(h.head_key, tag_query_ref, j, epoch) % context_tokens;
    for (uint32_t q = 0; q < g; ++q)
      weight[q] = slot_weight *
                  spread_factor(head_spread, hash4(h.head_key, tag_query_head_weight,
                                                   (uint64_t{j} << 32) | q, epoch));
    add_segment(segment_at(h.request_key, ref));
  }

  // The asked needle, in the heads that respond.
  if (auto pos = asked_needle_position(request, layer, kv_head, step, context_tokens)) {
    const uint64_t mask = needle_heads_mask(request, layer, kv_head, step, context_tokens);
    direction(hash3(h.head_key, tag_needle_dir, *pos), needle_amplitude_, a.data());
    for (uint32_t q = 0; q < g; ++q)
      if (mask >> q & 1) add(q, 1.0, a.data());
  }

  // Noise: a persistent part per head (heads have stable preferences) and a fresh part.
  const double rho = params_.query_noise_persistent_fraction;
  const double persistent = std::sqrt(rho) * query_noise_scale_;
  const double fresh = std::sqrt(1.0 - rho) * query_noise_scale_;
  for (uint32_t q = 0; q < g; ++q) {
    const uint64_t pk = hash3(h.head_key, tag_query_noise_persistent, q);
    const uint64_t sk = hash4(h.head_key, tag_query_noise_step, q, step);
    for (uint32_t i = 0; i < d / 2; ++i) {
      int32_t p0, p1, s0, s1;
      noise_pair(mix64(pk + golden_gamma * (i + 1)), p0, p1);
      noise_pair(mix64(sk + golden_gamma * (i + 1)), s0, s1);
      acc[q * d + 2 * i] += persistent * p0 + fresh * s0;
      acc[q * d + 2 * i + 1] += persistent * p1 + fresh * s1;
    }
  }
  for (size_t i = 0; i < acc.size(); ++i) out[i] = static_cast<float>(acc[i]);
}

status fill_store(const kv_workload& workload, kv_head_store& store, uint64_t request,
                  uint32_t layer, uint32_t kv_head, uint64_t position_begin,
                  uint64_t n_tokens) {
  const uint32_t d = workload.head_dim();
  if (store.shape().head_dim != d)
    return {errc::shape_mismatch, "fill_store: store head_dim " +
                                      std::to_string(store.shape().head_dim) +
                                      " != workload head_dim " + std::to_string(d)};
  constexpr uint64_t chunk_tokens = 4096;  // 2 MiB of scratch at head_dim 128
  std::unique_ptr<bf16[]> k(new bf16[chunk_tokens * d]);
  std::unique_ptr<bf16[]> v(new bf16[chunk_tokens * d]);
  for (uint64_t done = 0; done < n_tokens;) {
    const uint64_t n = std::min(chunk_tokens, n_tokens - done);
    workload.keys(request, layer, kv_head, position_begin + done, n, k.get());
    workload.values(request, layer, kv_head, position_begin + done, n, v.get());
    if (auto st = store.append(position_begin + done, k.get(), v.get(), n); !st) return st;
    done += n;
  }
  return {};
}

}  // namespace pnmkv
