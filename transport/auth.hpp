// Cluster-secret proof for joins (docs/DESIGN.md §7): the coordinator sends a fresh nonce
// (challenge), the joining node answers with HMAC-SHA256(secret, transcript) where the
// transcript binds the nonce to the node id, role and worker address it claims, so a proof
// cannot be replayed for another identity. OpenSSL does the cryptography.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "core/status.hpp"
#include "transport/messages.hpp"

namespace pnmkv::transport {

inline constexpr size_t join_nonce_bytes = 32;
inline constexpr size_t join_proof_bytes = 32;

// 32 bytes from OpenSSL's CSPRNG.
std::vector<uint8_t> make_nonce();

// HMAC-SHA256(secret, "pnmkv-join-v1" | nonce | node (LE32) | role | worker_address).
std::vector<uint8_t> join_proof(const std::string& secret, capnp::Data::Reader nonce,
                                node_id node, node_role role, capnp::Data::Reader worker_address);

// Fills the join's proof (and echoes the nonce) for the identity it already carries: node id,
// role and worker address.
void sign_join(const std::string& secret, capnp::Data::Reader nonce, wire::Join::Builder join);

// ok when `join` echoes `nonce_sent` and carries a valid proof; otherwise
// errc::invalid_argument saying which check failed (never which bytes were expected).
// Comparison is constant time.
status verify_join(const std::string& secret, const std::vector<uint8_t>& nonce_sent,
                   wire::Join::Reader join);

}  // namespace pnmkv::transport
