// HMAC join proofs with OpenSSL.
#include "transport/auth.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <stdexcept>

namespace pnmkv::transport {

std::vector<uint8_t> make_nonce() {
  std::vector<uint8_t> nonce(join_nonce_bytes);
  if (RAND_bytes(nonce.data(), static_cast<int>(nonce.size())) != 1)
    throw std::runtime_error("OpenSSL RAND_bytes failed");  // no entropy: cannot go on safely
  return nonce;
}

std::vector<uint8_t> join_proof(const std::string& secret, capnp::Data::Reader nonce,
                                node_id node, node_role role, capnp::Data::Reader worker_address) {
  static const char tag[] = "pnmkv-join-v1";
  std::vector<uint8_t> transcript(tag, tag + sizeof tag - 1);
  transcript.insert(transcript.end(), nonce.begin(), nonce.end());
  for (int i = 0; i < 4; ++i) transcript.push_back(static_cast<uint8_t>(node >> (8 * i)));
  transcript.push_back(static_cast<uint8_t>(role));
  transcript.insert(transcript.end(), worker_address.begin(), worker_address.end());
  std::vector<uint8_t> mac(EVP_MAX_MD_SIZE);
  unsigned int len = 0;
  HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()), transcript.data(),
       transcript.size(), mac.data(), &len);
  mac.resize(len);
  return mac;
}

void sign_join(const std::string& secret, capnp::Data::Reader nonce, wire::Join::Builder join) {
  join.setNonce(nonce);
  join.setProof(as_data(join_proof(secret, nonce, join.getNodeId(), from_wire(join.getRole()),
                                   join.getWorkerAddress().asReader())));
}

status verify_join(const std::string& secret, const std::vector<uint8_t>& nonce_sent,
                   wire::Join::Reader join) {
  if (secret.empty())
    return {errc::invalid_argument, "join refused: this node has no cluster secret configured"};
  auto nonce = join.getNonce();
  if (nonce.size() != nonce_sent.size() ||
      CRYPTO_memcmp(nonce.begin(), nonce_sent.data(), nonce_sent.size()) != 0)
    return {errc::invalid_argument, "join refused: nonce does not match the challenge (stale "
                                    "or replayed join)"};
  auto expect = join_proof(secret, as_data(nonce_sent), join.getNodeId(), from_wire(join.getRole()),
                           join.getWorkerAddress());
  auto proof = join.getProof();
  if (proof.size() != expect.size() ||
      CRYPTO_memcmp(proof.begin(), expect.data(), expect.size()) != 0)
    return {errc::invalid_argument, "join refused: proof does not match (wrong cluster secret "
                                    "or altered identity)"};
  return status::ok();
}

}  // namespace pnmkv::transport
