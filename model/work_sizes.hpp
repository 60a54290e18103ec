// Work sizes of one decode step per execution mode (docs/DESIGN.md §2): bytes on the wire per
// message, bytes and FLOPs a device or the GPU spends on one (request, layer, KV head,
// shard) query, and the budget split of png-kv. The live emulator (actors/host_engine,
// actors/device_engine) and the simulator must price the same work, so these are pure
// functions of the model shape and the cost model with no state, called by both.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "core/enum_names.hpp"
#include "model/cost_model.hpp"

namespace pnmkv {

// run.wire_precision: the element type of the query vectors and of the partial outputs on
// the host links (pnm-kv, png-kv). fp32: as the emulator computes them. bf16: the query as
// the GPU produces it (its activations are bf16; the host rounds it before anything uses
// it) and each partial's output rounded to bf16 by the device after its fp32 accumulation,
// its log-sum-exp kept fp32, as split-sequence decoding kernels keep their partials (vLLM's
// paged attention v2: partial outputs in the activation dtype, exp sums and max logits in
// fp32). Dense verification partials stay fp32: they are the reference.
enum class wire_precision : uint8_t { fp32, bf16 };
inline constexpr enum_name<wire_precision> wire_precision_names[] = {{"fp32", wire_precision::fp32},
                                                                     {"bf16", wire_precision::bf16}};
inline const char* to_string(wire_precision p) { return name_of(wire_precision_names, p); }
inline uint64_t wire_elem_bytes(wire_precision p) { return p == wire_precision::bf16 ? 2 : 4; }

}  // namespace pnmkv

namespace pnmkv::work {

// Envelope and fixed fields of a message on top of its tensors (Cap'n Proto framing); the
// live host engine uses the same figure.
inline constexpr uint64_t header_bytes = 96;

// --- pnm-kv / png-kv wire ---------------------------------------------------------------
// The new token's K and V of one (layer, KV head): bf16 each.
inline uint64_t append_wire_bytes(const model_shape& m) { return header_bytes + 4ull * m.head_dim; }
// The query of one (layer, KV head, shard): group × head_dim elements of `p`, plus the page
// ids (uint32) the shard must not select (png-kv: steady pages held on the GPU) or must
// attend (exact selection's second round, lookahead).
inline uint64_t query_wire_bytes(const model_shape& m, wire_precision p, uint64_t listed_pages = 0) {
  return header_bytes + wire_elem_bytes(p) * m.gqa_group() * m.head_dim + 4ull * listed_pages;
}
// One partial: o (group × head_dim elements of `p`), lse (group fp32), and the selected page
// ids. A dense verification partial is fp32 whatever `p` is.
inline uint64_t partial_wire_bytes(const model_shape& m, wire_precision p, uint64_t pages_selected) {
  return header_bytes + wire_elem_bytes(p) * m.gqa_group() * m.head_dim + 4ull * m.gqa_group() +
         4ull * pages_selected;
}
// Round 1 of exact selection: a shard's candidate page ids (uint32) and scores (fp32).
inline uint64_t candidates_wire_bytes(uint64_t pages) { return header_bytes + 8ull * pages; }
// A prefill chunk of n tokens of one (layer, KV head).
inline uint64_t prefill_wire_bytes(const model_shape& m, uint64_t n_tokens) {
  return header_bytes + 4ull * n_tokens * m.head_dim;
}

// --- baseline wire ------------------------------------------------------------------------
// Asking an expander for pages: their ids.
inline uint64_t recall_request_wire_bytes(uint64_t pages) { return header_bytes + 4ull * pages; }
// The recalled pages (baseline recalls, png-kv steady copies): K and V of their tokens, as
// the live host engine counts them (the per-page id, row count and CRC are not counted).
inline uint64_t recall_reply_wire_bytes(const model_shape& m, uint64_t tokens) {
  return header_bytes + 4ull * tokens * m.head_dim;
}
// Page summaries read over the link when they do not stay in GPU memory.
inline uint64_t summary_read_wire_bytes(const cost_model& c, uint64_t pages,
                                        uint32_t summary_elem_bytes) {
  return header_bytes + uint64_t(double(pages) * c.summary_bytes_per_page(summary_elem_bytes));
}

// --- selection on one shard -------------------------------------------------------------
// What one shard of one (request, layer, KV head) selects from `tokens_held` tokens when
// it may take `budget_pages` pages: every page when the budget covers them, else the
// budget's worth, the always-kept last page included (it may be partial).
struct shard_selection {
  uint64_t pages_held = 0;
  uint64_t pages_selected = 0;
  uint64_t tokens_selected = 0;
};
// holds_last_page: this shard holds the page of the sequence's last token.
inline shard_selection select_on_shard(uint64_t tokens_held, uint32_t page_size_tokens,
                                       uint64_t budget_pages, bool holds_last_page) {
  shard_selection s;
  s.pages_held = (tokens_held + page_size_tokens - 1) / page_size_tokens;
  if (budget_pages >= s.pages_held) {
    s.pages_selected = s.pages_held;
    s.tokens_selected = tokens_held;
    return s;
  }
  s.pages_selected = budget_pages;
  s.tokens_selected = budget_pages * page_size_tokens;
  const uint64_t rest = tokens_held % page_size_tokens;
  if (holds_last_page && rest != 0 && budget_pages > 0) s.tokens_selected -= page_size_tokens - rest;
  return s;
}

// The share of the budget shard j of s takes under local selection (the live host engine's
// rule: budget / s, the remainder to the first shards).
inline uint64_t local_budget_pages(uint64_t budget_pages, uint32_t s, uint32_t j) {
  return budget_pages / s + (j < budget_pages % s ? 1 : 0);
}

// --- device and GPU work of one query ---------------------------------------------------
struct query_work {
  double bytes = 0;  // memory bytes read
  double flops = 0;
  double int_ops = 0;  // integer ops (exact-int8's bounds)
};

// The page search a device runs (selection.search, core/exact_search.hpp), as the step
// model prices it. flat scores every held page's summary. exact-int8 reads every page's
// int8 summary (2·d bytes) and its block's lo and step (8 bytes per element per block of
// int8_block_pages), does 2 integer ops per element and scored row, and rescores exactly
// `rescored_per_selected` pages per selected page (measured by a live run: the
// calibration's search_rescored_per_selected), never more than it holds; plus the bound's
// float set-up as the device engine counts it. Selecting every page is a flat scan.
struct search_model {
  bool exact_int8 = false;
  double rescored_per_selected = 1;
  uint32_t int8_block_pages = 256;
};
inline query_work search_query_work(const cost_model& c, double pages_held, double pages_selected,
                                    uint32_t heads_scored, uint32_t summary_elem_bytes,
                                    const search_model& m) {
  if (!m.exact_int8 || pages_selected >= pages_held)
    return {pages_held * c.summary_bytes_per_page(summary_elem_bytes), c.score_flops(pages_held, heads_scored), 0};
  const double len = 2.0 * c.model().head_dim;
  const double blocks = std::ceil(pages_held / m.int8_block_pages);
  const double rescored = std::min(pages_held, m.rescored_per_selected * pages_selected);
  return {pages_held * len + blocks * len * 8.0 + rescored * c.summary_bytes_per_page(summary_elem_bytes),
          c.score_flops(rescored, heads_scored) + blocks * heads_scored * len * 8.0 +
              pages_held * heads_scored * 2.0,
          2.0 * pages_held * heads_scored * len};
}

// A PNM device searching its held pages and attending the selected tokens (device_engine).
inline query_work pnm_query_work(const cost_model& c, const shard_selection& s,
                                 uint32_t heads_scored, uint32_t summary_elem_bytes,
                                 const search_model& m = {}) {
  query_work w = search_query_work(c, double(s.pages_held), double(s.pages_selected), heads_scored,
                                   summary_elem_bytes, m);
  w.bytes += c.kv_bytes(double(s.tokens_selected));
  w.flops += c.attend_flops(double(s.tokens_selected), c.model().gqa_group());
  return w;
}
// The GPU scoring `pages` summaries (baseline) — priced as attention over those bytes.
inline query_work gpu_score_work(const cost_model& c, uint64_t pages, uint32_t heads_scored,
                                 uint32_t summary_elem_bytes) {
  return {double(pages) * c.summary_bytes_per_page(summary_elem_bytes),
          c.score_flops(double(pages), heads_scored)};
}
// The GPU attending `tokens` tokens it holds in HBM (baseline recalls, png-kv steady pages).
inline query_work gpu_attend_work(const cost_model& c, double tokens) {
  return {c.kv_bytes(tokens), c.attend_flops(tokens, c.model().gqa_group())};
}

// --- png-kv budget split ----------------------------------------------------------------
// Of a budget of `budget_pages`, the steady pages the GPU attends (the steady hit rate of
// the budget) and the pages left for the devices to select among the non-steady ones.
// The devices keep at least the two always-kept pages.
struct pngkv_split {
  uint64_t gpu_pages = 0;
  uint64_t device_pages = 0;
};
inline pngkv_split pngkv_budget_split(uint64_t budget_pages, double steady_hit_fraction) {
  const uint64_t floor_pages = std::min<uint64_t>(2, budget_pages);
  uint64_t gpu = uint64_t(double(budget_pages) * std::clamp(steady_hit_fraction, 0.0, 1.0));
  gpu = std::min(gpu, budget_pages - floor_pages);
  return {gpu, budget_pages - gpu};
}

// --- memory footprints --------------------------------------------------------------------
// Summary bytes of one request over every (layer, KV head) at `tokens` tokens.
inline double summary_bytes_per_request(const cost_model& c, uint64_t tokens, uint32_t page_size,
                                        uint32_t summary_elem_bytes) {
  const auto& m = c.model();
  const double pages = double((tokens + page_size - 1) / page_size);
  return double(m.layers) * m.kv_heads * pages * c.summary_bytes_per_page(summary_elem_bytes);
}
// K+V bytes of `tokens_per_head` tokens for every (layer, KV head) of `layers` layers.
inline double kv_bytes_all_heads(const cost_model& c, double tokens_per_head, uint32_t layers) {
  return double(layers) * c.model().kv_heads * c.kv_bytes(tokens_per_head);
}

}  // namespace pnmkv::work
