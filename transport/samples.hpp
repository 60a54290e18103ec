// Deterministic sample messages of every kind (content from a seed), for tests, fuzz seed
// corpora and `pnmkv bench fabric|wire`. Shapes default to one Llama-3.1 page / query.
// A sample is an `outbound`: a test may change any field through its builder before
// finish(), e.g. to break one validation rule.
#pragma once

#include <cstdint>

#include "transport/messages.hpp"

namespace pnmkv::transport {

struct sample_shape {
  uint32_t head_dim = 128;
  uint32_t group = 4;         // query heads per KV head
  uint32_t kv_heads = 1;      // in a query / token append
  uint32_t page_tokens = 16;  // prefill write n_tokens, recall page size
  uint32_t pages = 8;         // candidates / recall messages
};

outbound sample_message(msg_kind kind, uint64_t seed, const sample_shape& shape = {});

// Recomputes the CRC32C of a KV message's payload (prefill write, token append, every page
// of a recall reply) after a test changed it; other kinds are left as they are.
void reseal(outbound& m);

}  // namespace pnmkv::transport
