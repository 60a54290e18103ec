// The paged KV store of one (request, layer, KV head) shard. Storage is reserved once with
// uninitialised new[] so the OS commits pages only as tokens arrive; a page's unused rows
// are zeroed when the page starts, so kernels may read whole pages. Key summaries (Quest
// min/max) are updated incrementally on every append, including the last partial page,
// so selection never needs a rescan.
#include "core/kv_store.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include <limits>
#include <string>
#include <type_traits>

#include "core/check.hpp"

namespace pnmkv {

const char* to_string(summary_precision p) { return name_of(summary_precision_names, p); }
const char* to_string(page_search s) { return name_of(page_search_names, s); }

status validate(const kv_head_shape& shape) {
  if (shape.head_dim < 16 || shape.head_dim > 512 || shape.head_dim % 16 != 0) {
    return {errc::invalid_argument, "kv_head_shape.head_dim = " +
                                        std::to_string(shape.head_dim) +
                                        " is not allowed: 16..512, a multiple of 16"};
  }
  if (shape.page_size_tokens < 1 || shape.page_size_tokens > 1024) {
    return {errc::invalid_argument, "kv_head_shape.page_size_tokens = " +
                                        std::to_string(shape.page_size_tokens) +
                                        " is not allowed: 1..1024"};
  }
  if (shape.summaries != summary_precision::bf16 && shape.summaries != summary_precision::fp32) {
    return {errc::invalid_argument,
            "kv_head_shape.summaries = " + std::to_string(static_cast<int>(shape.summaries)) +
                " is not allowed: bf16 or fp32"};
  }
  if (shape.search != page_search::flat && shape.search != page_search::exact_int8) {
    return {errc::invalid_argument,
            "kv_head_shape.search = " + std::to_string(static_cast<int>(shape.search)) +
                " is not allowed: flat or exact-int8"};
  }
  return status::ok();
}

namespace {

constexpr size_t storage_alignment_bytes = 64;  // one cache line

constexpr size_t huge_page_bytes = size_t{2} << 20;
constexpr size_t huge_page_threshold_bytes = size_t{32} << 20;

// Uninitialised, cache-line aligned; nullptr when the reservation fails. Large arrays
// are aligned to 2 MiB and offered to transparent huge pages: the kernels stream them,
// and with 4 KiB pages every 4 KiB of a stream costs a TLB miss.
void* allocate_aligned(size_t bytes) {
  const bool huge = bytes >= huge_page_threshold_bytes;
  const size_t align = huge ? huge_page_bytes : storage_alignment_bytes;
  const size_t rounded = (std::max<size_t>(bytes, 1) + align - 1) / align * align;
  void* p = std::aligned_alloc(align, rounded);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  if (p != nullptr && huge) (void)madvise(p, rounded, MADV_HUGEPAGE);
#endif
  return p;
}

}  // namespace

void kv_head_store::free_deleter::operator()(void* p) const { std::free(p); }

result<kv_head_store> kv_head_store::create(kv_head_shape shape, uint64_t capacity_tokens_max) {
  if (status s = validate(shape); !s) return s;
  if (capacity_tokens_max < 1 || capacity_tokens_max > kv_capacity_tokens_limit) {
    return result<kv_head_store>{
        errc::capacity, "kv_head_store capacity_tokens_max = " +
                            std::to_string(capacity_tokens_max) + " is not allowed: 1.." +
                            std::to_string(kv_capacity_tokens_limit)};
  }
  kv_head_store store;
  store.shape_ = shape;
  store.capacity_tokens_ = capacity_tokens_max;
  const uint64_t pages =
      (capacity_tokens_max + shape.page_size_tokens - 1) / shape.page_size_tokens;
  PNMKV_CHECK_LE(pages, uint64_t{std::numeric_limits<uint32_t>::max()});
  store.capacity_pages_ = static_cast<uint32_t>(pages);
  const size_t rows = static_cast<size_t>(pages) * shape.page_size_tokens;
  const size_t elems = rows * shape.head_dim;
  // Uninitialised on purpose: the OS commits memory as pages are written.
  store.kv_.reset(static_cast<bf16*>(allocate_aligned(2 * elems * sizeof(bf16))));
  store.summaries_.reset(
      static_cast<uint8_t*>(allocate_aligned(pages * store.summary_bytes_per_page())));
  if (!store.kv_ || !store.summaries_) {
    return result<kv_head_store>{
        errc::capacity, "kv_head_store: cannot reserve " +
                            std::to_string(2 * elems * sizeof(bf16)) + " bytes of K/V for " +
                            std::to_string(capacity_tokens_max) + " tokens"};
  }
  if (shape.search == page_search::exact_int8) {
    store.int8_ = int8_summary_index(2 * shape.head_dim, store.capacity_pages_,
                                     int8_summary_index::default_block_pages);
  }
  return result<kv_head_store>{std::move(store)};
}

kv_head_store::kv_head_store(kv_head_store&&) noexcept = default;
kv_head_store& kv_head_store::operator=(kv_head_store&&) noexcept = default;
kv_head_store::~kv_head_store() = default;

size_t kv_head_store::summary_bytes_per_page() const {
  const size_t elem = shape_.summaries == summary_precision::bf16 ? sizeof(bf16) : sizeof(float);
  return 2 * static_cast<size_t>(shape_.head_dim) * elem;
}

uint64_t kv_head_store::bytes_held() const {
  const uint64_t kv_bytes_per_page =
      2ull * shape_.page_size_tokens * shape_.head_dim * sizeof(bf16);
  return static_cast<uint64_t>(page_count()) * (kv_bytes_per_page + summary_bytes_per_page()) +
         int8_.bytes_held(page_count());
}

int64_t kv_head_store::local_page_of(uint64_t global_page) const {
  const auto it = std::lower_bound(global_page_.begin(), global_page_.end(), global_page);
  if (it == global_page_.end() || *it != global_page) return -1;
  return static_cast<int64_t>(it - global_page_.begin());
}

uint32_t kv_head_store::page_tokens(uint32_t local_page) const {
  PNMKV_CHECK_LT(local_page, page_count());
  return page_tokens_[local_page];
}

const bf16* kv_head_store::page_keys(uint32_t local_page) const {
  PNMKV_CHECK_LT(local_page, page_count());
  return kv_.get() +
         static_cast<size_t>(local_page) * 2 * shape_.page_size_tokens * shape_.head_dim;
}

const bf16* kv_head_store::page_values(uint32_t local_page) const {
  PNMKV_CHECK_LT(local_page, page_count());
  return kv_.get() + (static_cast<size_t>(local_page) * 2 + 1) * shape_.page_size_tokens *
                        shape_.head_dim;
}

namespace {

inline bf16 convert_row_elem(bf16 x) { return x; }
inline bf16 convert_row_elem(float x) { return to_bf16(x); }

template <class Src>
void copy_rows(bf16* dst, const Src* src, size_t elems) {
  if constexpr (std::is_same_v<Src, bf16>) {
    std::memcpy(dst, src, elems * sizeof(bf16));
  } else {
    for (size_t i = 0; i < elems; ++i) dst[i] = convert_row_elem(src[i]);
  }
}

}  // namespace

void kv_head_store::update_summary(uint32_t local_page, uint32_t first_row, uint32_t n_rows) {
  const uint32_t d = shape_.head_dim;
  PNMKV_CHECK_LT(local_page, page_count());
  PNMKV_CHECK(n_rows > 0 && first_row + n_rows <= shape_.page_size_tokens, "first_row=", first_row,
              ", n_rows=", n_rows, ", page_size_tokens=", shape_.page_size_tokens);
  PNMKV_CHECK_LE(d, 512u);
  float mx[512];
  float mn[512];
  uint8_t* sum_bytes = summaries_.get() + local_page * summary_bytes_per_page();
  const bool bf = shape_.summaries == summary_precision::bf16;
  if (first_row == 0) {
    std::fill(mx, mx + d, -std::numeric_limits<float>::infinity());
    std::fill(mn, mn + d, std::numeric_limits<float>::infinity());
  } else if (bf) {
    const bf16* s = reinterpret_cast<const bf16*>(sum_bytes);
    for (uint32_t j = 0; j < d; ++j) {
      mx[j] = to_float(s[j]);
      mn[j] = to_float(s[d + j]);
    }
  } else {
    std::memcpy(mx, sum_bytes, d * sizeof(float));
    std::memcpy(mn, sum_bytes + d * sizeof(float), d * sizeof(float));
  }
  const bf16* rows = page_keys(local_page) + static_cast<size_t>(first_row) * d;
  for (uint32_t r = 0; r < n_rows; ++r) {
    const bf16* row = rows + static_cast<size_t>(r) * d;
    for (uint32_t j = 0; j < d; ++j) {
      const float x = to_float(row[j]);
      // NaN keys never enter a summary (comparisons with NaN are false).
      mx[j] = x > mx[j] ? x : mx[j];
      mn[j] = x < mn[j] ? x : mn[j];
    }
  }
  if (bf) {
    // Exact: every summary value is a bf16 key or ±inf.
    bf16* s = reinterpret_cast<bf16*>(sum_bytes);
    for (uint32_t j = 0; j < d; ++j) {
      s[j] = to_bf16(mx[j]);
      s[d + j] = to_bf16(mn[j]);
    }
  } else {
    std::memcpy(sum_bytes, mx, d * sizeof(float));
    std::memcpy(sum_bytes + d * sizeof(float), mn, d * sizeof(float));
  }
}

template <class Src>
status kv_head_store::append_rows(uint64_t position, const Src* k, const Src* v,
                                  uint64_t n_tokens) {
  if (n_tokens == 0) return status::ok();
  if (k == nullptr || v == nullptr) {
    return {errc::invalid_argument, "kv_head_store::append: k and v must not be null"};
  }
  const uint64_t page_size = shape_.page_size_tokens;
  const uint32_t d = shape_.head_dim;
  if (tokens_ + n_tokens > capacity_tokens_ || n_tokens > capacity_tokens_) {
    return {errc::capacity, "kv_head_store::append of " + std::to_string(n_tokens) +
                                " tokens at position " + std::to_string(position) +
                                " exceeds capacity_tokens_max = " +
                                std::to_string(capacity_tokens_) + " (holding " +
                                std::to_string(tokens_) + ")"};
  }
  if (position > std::numeric_limits<uint64_t>::max() - n_tokens) {
    return {errc::out_of_range, "kv_head_store::append: position " + std::to_string(position) +
                                    " + " + std::to_string(n_tokens) + " tokens overflows"};
  }
  bool continues = false;
  if (!global_page_.empty()) {
    const uint32_t last = page_count() - 1;
    const uint64_t end = global_page_[last] * page_size + page_tokens_[last];
    const bool last_full = page_tokens_[last] == page_size;
    if (!last_full) {
      if (position != end) {
        return {errc::invalid_argument,
                "kv_head_store::append at position " + std::to_string(position) +
                    ": the last page (global " + std::to_string(global_page_[last]) +
                    ") holds " + std::to_string(page_tokens_[last]) + " of " +
                    std::to_string(page_size) + " tokens; expected position " +
                    std::to_string(end) + " to continue it"};
      }
      continues = true;
    } else if (position % page_size != 0 || position / page_size <= global_page_[last]) {
      return {errc::invalid_argument,
              "kv_head_store::append at position " + std::to_string(position) +
                  ": expected a page boundary (multiple of " + std::to_string(page_size) +
                  ") at or after " + std::to_string(end) + ", beyond global page " +
                  std::to_string(global_page_[last])};
    }
  } else if (position % page_size != 0) {
    return {errc::invalid_argument, "kv_head_store::append at position " +
                                        std::to_string(position) +
                                        ": the first page must start at a page boundary "
                                        "(multiple of " +
                                        std::to_string(page_size) + ")"};
  }
  // Pages needed; the capacity check above bounds them (only the last page is partial).
  const uint64_t first_fill = continues ? page_size - page_tokens_.back() : 0;
  const uint64_t new_pages =
      n_tokens > first_fill ? (n_tokens - first_fill + page_size - 1) / page_size : 0;
  PNMKV_CHECK(page_count() + new_pages <= capacity_pages_, "pages=", page_count(),
              ", new_pages=", new_pages, ", capacity_pages=", capacity_pages_);

  uint64_t done = 0;
  uint64_t pos = position;
  const uint32_t first_touched = continues ? page_count() - 1 : page_count();
  while (done < n_tokens) {
    uint32_t local;
    uint32_t first_row;
    if (continues) {
      local = page_count() - 1;
      first_row = page_tokens_[local];
      continues = false;
    } else {
      PNMKV_CHECK_EQ(pos % page_size, 0u);
      local = page_count();
      PNMKV_CHECK_LT(local, capacity_pages_);
      global_page_.push_back(pos / page_size);
      page_tokens_.push_back(0);
      first_row = 0;
    }
    const uint32_t rows = static_cast<uint32_t>(std::min<uint64_t>(page_size - first_row,
                                                                   n_tokens - done));
    bf16* kdst = kv_.get() + (static_cast<size_t>(local) * 2 * page_size + first_row) * d;
    bf16* vdst = kdst + page_size * d;
    copy_rows(kdst, k + done * d, static_cast<size_t>(rows) * d);
    copy_rows(vdst, v + done * d, static_cast<size_t>(rows) * d);
    if (first_row == 0 && rows < page_size) {
      // Rows past page_tokens() read as zero; they are written only by later appends.
      const size_t tail = static_cast<size_t>(page_size - rows) * d * sizeof(bf16);
      std::memset(kdst + static_cast<size_t>(rows) * d, 0, tail);
      std::memset(vdst + static_cast<size_t>(rows) * d, 0, tail);
    }
    page_tokens_[local] = first_row + rows;
    update_summary(local, first_row, rows);
    done += rows;
    pos += rows;
  }
  tokens_ += n_tokens;
  // The int8 summaries of every page this append touched, at once (int8_summaries.hpp).
  if (!int8_.empty()) {
    int8_.update_pages(first_touched, page_count() - 1, summaries_.get(),
                       shape_.summaries == summary_precision::bf16);
  }
  return status::ok();
}

status kv_head_store::append(uint64_t position, const bf16* k, const bf16* v,
                             uint64_t n_tokens) {
  return append_rows(position, k, v, n_tokens);
}

status kv_head_store::append(uint64_t position, const float* k, const float* v,
                             uint64_t n_tokens) {
  return append_rows(position, k, v, n_tokens);
}

}  // namespace pnmkv
