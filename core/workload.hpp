// Synthetic KV and query workload with the structure real attention has (docs/DESIGN.md §4):
// attention sinks, a local window, topic clusters that recur and drift slowly across decode
// steps, and rare needles that a query sometimes asks for. Everything is a pure function of
// its coordinates — keys and values of (seed, request, layer, kv_head, position), the GQA
// group of queries of (seed, request, layer, kv_head, step) — computed with counter-based
// hashes (splitmix64 mixing of the coordinates, then a wyrand-style counter stream along a
// row; noise is a sum of four hashed bytes, near normal), never with sequential RNG state.
// So any page can be regenerated on its own, on any node, bit-identical to the same page
// from a bulk run: that is what verification and recompute-after-loss rely on.
//
// The model, in logit units (scale · q·k with scale = 1/sqrt(head_dim)):
//   text (per request, shared by every layer and head, as real text is):
//     positions are cut into segments (passages) of varying length, each on one of
//     topic_count topics; at most one needle per needle_block_tokens block; the first
//     sink_tokens positions are sinks.
//   keys (per layer and head):   k = noise + salience·(topic dir + segment dir)
//                                       [+ sink dir] [+ needle dir]
//   queries at step t (position context + t):
//     sink component (always) + the current segment and its topic (local window)
//     + a few segments of the context the query refers back to, each with a weight
//     sin²(π(t/T + j/n)) that fades in and out over drift_period_steps T, swapping to a
//     new referenced segment at each zero [+ the asked needle's direction, in some of the
//     group's heads] + noise (part persistent per head, part fresh per step).
//   values: noise + a topic component; sinks have near-zero values (observed in real
//     models: sinks act as a no-op); needles a distinctive direction.
// A component with logit L puts sqrt(L)·head_dim^¼ on each side, so a key and a query
// sharing it score L. The defaults and why they were chosen are in workload_params.
//
// Bit reproducibility: every product in the key/value path is float × float (or small
// integer × float) evaluated in double, which is exact, so a compiler contracting
// `a*b + c` into an FMA cannot change a single bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/bf16.hpp"
#include "core/status.hpp"

namespace pnmkv {

class kv_head_store;
class config;

// Parameters of the synthetic workload. Defaults aim at published observations, not at
// good accuracy figures: heavy sinks (StreamingLLM, Xiao et al. 2023: the first tokens
// take a large share of attention in most layers), attention concentrated on a small
// fraction of tokens (H2O, Zhang et al. 2023; Quest, Tang et al. 2024: a few % of tokens
// hold most of the mass at 32K), a strong local window, recurring themes over a long
// document, and retrieval heads that put most of their attention on a needle when asked
// (Wu et al. 2024, "Retrieval head"). Numbers that no paper states are marked assumed.
// Measured with these defaults (dense attention, 6 heads x 6 steps, head_dim 128, group 4;
// "best 2048" = mass of the 128 best pages, an oracle bound on any selection):
//   context   sinks  current passage  tokens holding 90% of mass  best 2048 tokens
//   32K       31%    29%              0.2%                         99.7%
//   128K      37%    10%              0.8%                         94.6%
//   1M        25%    12%              2.4%                         81.5%
// Heads differ widely (sink share from <1% to >95%), as in real models. An asked needle
// takes ~50-60% of the mass of a responding head at 32K-1M. Logits do not grow with
// context, so attention dilutes at 1M; that is an assumption the workload.* keys let a
// study vary.
struct workload_params {
  // --- text structure (per request) ---
  uint32_t sink_tokens = 4;  // StreamingLLM keeps 4 initial tokens
  // Themes of a long document; each recurs in several passages of a 1M-token context
  // (assumed: ~16 recurrences at 1M with 512-token passages).
  uint32_t topic_count = 128;
  // Passage lengths are uniform-ish in [mean - spread, mean + spread] (paragraph to
  // section sized; assumed).
  uint32_t topic_segment_tokens_mean = 512;
  uint32_t topic_segment_tokens_spread = 384;
  // Rare facts: about one per 32K tokens (assumed), at most one per block.
  double needle_rate_per_mtokens = 32.0;
  uint32_t needle_block_tokens = 8192;

  // --- key/query geometry, in logits ---
  // Sinks take ~30-40% of the mass at 32-128K (StreamingLLM: a large share in most
  // layers), ~25% at 1M. Each head scales it by U[1-f/5, 1+f/5] (f below).
  double sink_logit = 14.0;
  // A key of a topic the query is on scores topic_logit; of the very passage it refers
  // to, topic_logit + segment_logit (times the slot weight and token salience).
  double topic_logit = 3.0;
  double segment_logit = 4.0;
  // Per-token salience multiplies the topic+segment part by U[1-f, 1+f]: inside a passage
  // some tokens matter more (assumed).
  double salience_spread_fraction = 0.5;
  // Std of the noise·noise part of a logit. The structured parts of the query add more
  // through the key noise (they project onto it), so the logits of one query over its
  // context end up with std ~2.2 (assumed; within the 1.5-3 seen in published logit
  // histograms).
  double noise_logit_std = 0.5;
  // When asked, a needle stands out: a responding head puts ~half of its mass on it on
  // average (retrieval heads attend to the needle they copy, Wu et al. 2024).
  double needle_logit = 20.0;

  // --- queries ---
  uint32_t query_referenced_segments = 4;  // passages a query draws on at once (assumed)
  double query_local_weight = 1.2;         // weight of the current passage (local window)
  // Period over which a referenced passage fades in and out: consecutive steps select
  // nearly the same pages (steady pages exist), 100s of steps apart they differ (assumed).
  uint32_t drift_period_steps = 64;
  double query_noise_persistent_fraction = 0.5;  // of query noise variance fixed per head
  // The heads of a GQA group weight the shared referenced passages by U[1-f, 1+f].
  double query_head_spread_fraction = 0.5;
  // Share of episodes (of needle_ask_episode_steps steps) in which the query asks for one
  // needle of the context, and share of the group's heads that respond (>= 1 head).
  double needle_ask_fraction = 0.25;
  uint32_t needle_ask_episode_steps = 4;
  double needle_heads_fraction = 0.5;

  // --- values (per-dimension RMS) ---
  double value_noise_std = 1.0;
  double value_topic_rms = 1.0;   // topic part as large as the noise: outputs differ by topic
  double value_sink_scale = 0.1;  // sink values are ~10x smaller (sinks as no-op)
  double value_needle_rms = 2.0;  // a needle's value stands out

  // Context length used by the overloads that do not take one (workload.context_tokens).
  uint64_t context_tokens = 1ull << 20;

  // Ok, or invalid_argument naming the field, its value and the allowed range.
  status validate() const;
};

// Reads workload.* (workload.kind synthetic or trace; the parameters serve the former). Defined in
// config/schema_workload.cpp next to the keys, so core/ does not depend on config/.
result<workload_params> workload_params_from_config(const config& cfg);

// A segment (passage) of the text: [begin, end) positions on one topic.
struct workload_segment {
  uint64_t index = 0;
  uint64_t begin = 0;
  uint64_t end = 0;
  uint32_t topic = 0;
};

// Where K/V and queries come from: the synthetic workload below, or a KV trace of a real
// model (trace/, docs/TRACE_FORMAT.md). Every method is a pure function of its
// coordinates, so any page can be regenerated on its own (verification, recompute after
// loss). Rows are head_dim() wide; queries come as the gqa_group() rows of one KV head's
// group. Callers keep coordinates inside what the source holds (a trace checks its range
// when it is opened and asserts on every call).
class kv_workload {
 public:
  virtual ~kv_workload() = default;
  virtual uint32_t head_dim() const = 0;
  virtual uint32_t gqa_group() const = 0;
  // Keys / values of positions [position_begin, position_begin + n_tokens): n_tokens ×
  // head_dim row-major, bf16 as stored.
  virtual void keys(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
                    uint64_t n_tokens, bf16* out) const = 0;
  virtual void values(uint64_t request, uint32_t layer, uint32_t kv_head,
                      uint64_t position_begin, uint64_t n_tokens, bf16* out) const = 0;
  // The same, widened: exactly the bf16 values as floats.
  void keys(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
            uint64_t n_tokens, float* out) const;
  void values(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
              uint64_t n_tokens, float* out) const;
  // One page: page_size_tokens rows of K and V starting at page · page_size_tokens.
  void fill_page(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t page,
                 uint32_t page_size_tokens, bf16* k_out, bf16* v_out) const;
  // Queries of the GQA group at decode step `step` (group × head_dim, row per query
  // head): the query of position context_tokens + step.
  virtual void queries(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t step,
                       uint64_t context_tokens, float* out) const = 0;
  // Labelled needles, where the source has them (the synthetic workload); none otherwise.
  virtual std::optional<uint64_t> asked_needle_position(uint64_t /*request*/, uint32_t /*layer*/,
                                                        uint32_t /*kv_head*/, uint64_t /*step*/,
                                                        uint64_t /*context_tokens*/) const {
    return std::nullopt;
  }
  virtual uint64_t needle_heads_mask(uint64_t /*request*/, uint32_t /*layer*/,
                                     uint32_t /*kv_head*/, uint64_t /*step*/,
                                     uint64_t /*context_tokens*/) const {
    return 0;
  }
  virtual std::vector<uint64_t> needle_positions(uint64_t /*request*/, uint64_t /*begin*/,
                                                 uint64_t /*end*/) const {
    return {};
  }
};

class synthetic_workload final : public kv_workload {
 public:
  // head_dim: 16..1024, multiple of 2; gqa_group: 1..256. Validates params.
  static result<synthetic_workload> create(const workload_params& params, uint64_t seed,
                                           uint32_t head_dim, uint32_t gqa_group);

  const workload_params& params() const { return params_; }
  uint64_t seed() const { return seed_; }
  uint32_t head_dim() const override { return head_dim_; }
  uint32_t gqa_group() const override { return group_; }

  using kv_workload::keys;
  using kv_workload::values;
  void keys(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
            uint64_t n_tokens, bf16* out) const override;
  void values(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t position_begin,
              uint64_t n_tokens, bf16* out) const override;

  // Queries of the GQA group at decode step `step` (group × head_dim, row per query
  // head). The query sits at position context_tokens + step; it refers back only to
  // positions < context_tokens and continues the passage its own position falls in.
  void queries(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t step,
               uint64_t context_tokens, float* out) const override;
  // Same with params().context_tokens.
  void queries(uint64_t request, uint32_t layer, uint32_t kv_head, uint64_t step,
               float* out) const;

  // The needle the query of this step asks for (a position < context_tokens), if any.
  std::optional<uint64_t> asked_needle_position(uint64_t request, uint32_t layer,
                                                uint32_t kv_head, uint64_t step,
                                                uint64_t context_tokens) const override;
  // Which heads of the group respond to an asked needle at this step (bit h set for
  // query head h; 0 when no needle is asked).
  uint64_t needle_heads_mask(uint64_t request, uint32_t layer, uint32_t kv_head,
                             uint64_t step, uint64_t context_tokens) const override;
  // Needle positions in [begin, end), ascending. Needles are a property of the text, so
  // they depend on (seed, request) only.
  std::vector<uint64_t> needle_positions(uint64_t request, uint64_t begin,
                                         uint64_t end) const override;

  // The passage holding `position` (O(1)).
  workload_segment segment_of(uint64_t request, uint64_t position) const;

 private:
  synthetic_workload() = default;
  struct head_keys;  // hashed bases of one (request, layer, kv_head)
  head_keys head(uint64_t request, uint32_t layer, uint32_t kv_head) const;
  uint64_t segment_boundary(uint64_t request_key, uint64_t index) const;
  workload_segment segment_at(uint64_t request_key, uint64_t position) const;
  std::vector<uint64_t> needles_in(uint64_t request_key, uint64_t begin, uint64_t end) const;
  void generate(const head_keys& h, bool is_value, uint64_t position_begin,
                uint64_t n_tokens, bf16* out) const;
  void direction(uint64_t key, float amplitude, float* out) const;

  workload_params params_{};
  uint64_t seed_ = 0;
  uint32_t head_dim_ = 0;
  uint32_t group_ = 0;
  // Derived constants (floats so every product in the hot loop is exact in double).
  float key_noise_scale_ = 0;    // per unit of the integer noise
  float value_noise_scale_ = 0;
  float value_sink_noise_scale_ = 0;
  float query_noise_scale_ = 0;
  float sink_amplitude_ = 0;     // sqrt(logit) · head_dim^¼
  float topic_amplitude_ = 0;
  float segment_amplitude_ = 0;
  float needle_amplitude_ = 0;
  float value_topic_amplitude_ = 0;   // value_topic_rms · sqrt(head_dim)
  float value_needle_amplitude_ = 0;
  uint64_t needle_threshold_ = 0;     // a block holds a needle when its hash is below
};

// Appends positions [position_begin, position_begin + n_tokens) of (request, layer,
// kv_head) to the store, in chunks (bounded scratch memory). Fails like
// kv_head_store::append (position rules, capacity) or on a head_dim mismatch.
status fill_store(const kv_workload& workload, kv_head_store& store,
                  uint64_t request, uint32_t layer, uint32_t kv_head,
                  uint64_t position_begin, uint64_t n_tokens);

}  // namespace pnmkv
