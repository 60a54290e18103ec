// Paged KV store for one shard of one (request, layer, KV head): bf16 K and V rows grouped
// in pages of `page_size_tokens`, plus per-page key summaries (element-wise min and max,
// Quest) kept up to date on every append, the last partial page included.
//
// A shard may hold any increasing set of global pages (a contiguous range or an
// interleave class); local page i holds global page global_page(i). Storage is allocated
// once for `capacity_tokens_max` and committed by the OS as it is written, so a 1M-token
// store costs only what it holds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/bf16.hpp"
#include "core/enum_names.hpp"
#include "core/int8_summaries.hpp"
#include "core/status.hpp"

namespace pnmkv {

enum class summary_precision { bf16, fp32 };
inline constexpr enum_name<summary_precision> summary_precision_names[] = {{"bf16", summary_precision::bf16},
                                                                           {"fp32", summary_precision::fp32}};
const char* to_string(summary_precision p);

// How a query finds its top pages (selection.search; core/exact_search.hpp): `flat` scores
// every page summary; `exact_int8` bounds every page from int8 summaries with outward
// rounding and rescores exactly only the pages that may make the top-k (the same
// selection). A store keeps the int8 summaries only for exact_int8.
enum class page_search { flat, exact_int8 };
inline constexpr enum_name<page_search> page_search_names[] = {{"flat", page_search::flat},
                                                               {"exact-int8", page_search::exact_int8}};
const char* to_string(page_search s);

struct kv_head_shape {
  uint32_t head_dim = 128;         // allowed: 16..512, multiple of 16
  uint32_t page_size_tokens = 16;  // allowed: 1..1024
  summary_precision summaries = summary_precision::bf16;
  page_search search = page_search::flat;  // exact_int8: the store also keeps int8 summaries
};

// Validates a shape; the message names the field and the allowed range.
status validate(const kv_head_shape& shape);

// Limits on what one store may reserve (a limit on everything). 2^24 tokens is
// 16× the longest context we model; a shard never needs more.
constexpr uint64_t kv_capacity_tokens_limit = uint64_t{1} << 24;

class kv_head_store {
 public:
  // capacity_tokens_max bounds what the store may ever hold (limit on everything).
  static result<kv_head_store> create(kv_head_shape shape, uint64_t capacity_tokens_max);

  kv_head_store(kv_head_store&&) noexcept;
  kv_head_store& operator=(kv_head_store&&) noexcept;
  ~kv_head_store();

  // Appends n_tokens rows starting at global token `position`. The position must either
  // continue the last page (position == end of held tokens, last page not full) or start
  // a new page at a page boundary beyond every held page. A bulk append may span pages.
  // k and v are n_tokens × head_dim row-major. Only the last page may be partial, so a new
  // page may start only once the last one is full (otherwise: invalid_argument naming the
  // position to continue at). Past capacity_tokens_max: errc::capacity. On any error the
  // store is unchanged. The float overload rounds to bf16 (to_bf16) first; n_tokens = 0
  // is a no-op.
  status append(uint64_t position, const bf16* k, const bf16* v, uint64_t n_tokens);
  status append(uint64_t position, const float* k, const float* v, uint64_t n_tokens);

  const kv_head_shape& shape() const { return shape_; }
  uint32_t page_count() const { return static_cast<uint32_t>(global_page_.size()); }
  uint64_t token_count() const { return tokens_; }
  uint64_t capacity_tokens_max() const { return capacity_tokens_; }

  // Local page index -> global page index (= first token position / page size).
  uint64_t global_page(uint32_t local_page) const { return global_page_[local_page]; }
  const std::vector<uint64_t>& global_pages() const { return global_page_; }
  // Local index of a global page, or -1 when this shard does not hold it.
  int64_t local_page_of(uint64_t global_page) const;
  // Tokens held in a local page (page_size_tokens except possibly the last page).
  uint32_t page_tokens(uint32_t local_page) const;

  // page_size_tokens × head_dim rows; rows at and past page_tokens() are zero.
  const bf16* page_keys(uint32_t local_page) const;
  const bf16* page_values(uint32_t local_page) const;

  // Summaries of all pages, contiguous: per page [max(0..d-1), min(0..d-1)], in
  // shape().summaries precision (bf16 or float). summary_bytes_per_page() = 2·d·elem.
  const void* summaries() const { return summaries_.get(); }
  size_t summary_bytes_per_page() const;

  // exact_int8 stores: the int8 summaries (int8_summaries.hpp), kept up to date on every
  // append like the summaries; empty for flat stores.
  const int8_summary_index& int8_summaries() const { return int8_; }

  // Bytes of K, V and summaries (int8 summaries included) actually held (pages × page
  // size, not capacity).
  uint64_t bytes_held() const;

 private:
  kv_head_store() = default;
  void update_summary(uint32_t local_page, uint32_t first_row, uint32_t n_rows);
  template <class Src>
  status append_rows(uint64_t position, const Src* k, const Src* v, uint64_t n_tokens);

  kv_head_shape shape_{};
  uint64_t capacity_tokens_ = 0;
  uint32_t capacity_pages_ = 0;
  uint64_t tokens_ = 0;
  std::vector<uint64_t> global_page_;
  std::vector<uint32_t> page_tokens_;
  // 64-byte aligned (std::aligned_alloc, uninitialised) so vector loads never split a
  // cache line; freed with std::free.
  struct free_deleter {
    void operator()(void* p) const;
  };
  // Per page: its K rows then its V rows (page_size × head_dim each), pages back to back,
  // so a page is one contiguous block: a scattered selection reads 2·P·d·2 contiguous
  // bytes per page, and K and V never sit at a power-of-two distance that makes their
  // two streams collide in the same DRAM banks (measured here: 17.8 vs 21.5 GB/s).
  std::unique_ptr<bf16[], free_deleter> kv_;
  std::unique_ptr<uint8_t[], free_deleter> summaries_;  // capacity_pages × summary_bytes_per_page
  int8_summary_index int8_;                             // exact_int8 only
};

}  // namespace pnmkv
