# pnmkv wire protocol: every message that crosses a node boundary (docs/DESIGN.md §6), in the
# embedded cluster too. One root struct, Envelope, whose union names the message kind.
#
# Rules that keep the format safe to evolve and cheap to validate:
# - Tensors are Data blobs (little-endian, row-major), never List(Float32): blobs encode at
#   memcpy speed and their length is checked against the declared shape on receipt.
# - Field numbers are never reused; new fields go at the end. A message whose `version` the
#   receiver does not speak is refused (transport/messages.cpp).
# - Counts that size a blob (nTokens, headDim, group, ...) are explicit fields so the receiver
#   can check `blob.size() == product(shape) * element_size` before touching the data.

@0xf8c53344caffd918;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("pnmkv::transport::wire");

enum Role {
  gpuHost @0;
  pnmDevice @1;
  coordinator @2;
  driver @3;
}

enum SelectionRound {
  local @0;            # each shard selects budget/s pages and attends: one round
  exactCandidates @1;  # round 1 of exact selection: return candidate page scores
  exactAttend @2;      # round 2: attend pages scoring >= scoreThreshold
  dense @3;            # verification: attend every held page (not charged as device work)
}

# Server -> joining node: a fresh nonce to prove knowledge of the cluster secret over.
struct Challenge {
  nonce @0 :Data;       # 32 random bytes
}

struct Join {
  nodeId @0 :UInt32;
  role @1 :Role;
  nonce @2 :Data;          # echo of the challenge nonce
  proof @3 :Data;          # HMAC-SHA256(secret, transcript), 32 bytes (transport/auth.hpp)
  workerAddress @4 :Data;  # UCX worker address (opaque bytes) or empty in-process
}

struct JoinAck {
  accepted @0 :Bool;
  nodeId @1 :UInt32;
  epoch @2 :UInt64;     # membership epoch the node joins at
  reason @3 :Text;      # why a join was refused (empty when accepted)
}

struct Member {
  nodeId @0 :UInt32;
  role @1 :Role;
  alive @2 :Bool;
  workerAddress @3 :Data;
}

struct Shard {
  shardId @0 :UInt32;
  deviceId @1 :UInt32;
  kvHead0 @2 :UInt32;   # KV heads [kvHead0, kvHead1)
  kvHead1 @3 :UInt32;
  split :union {
    pages :group {      # contiguous pages [page0, page1)
      page0 @4 :UInt32;
      page1 @5 :UInt32;
    }
    interleave :group { # pages p with p % stride == class
      stride @6 :UInt32;
      class @7 :UInt32;
    }
  }
  replicas @8 :List(UInt32);  # device ids holding copies (not including deviceId)
  pagesHeld @9 :UInt64;       # pages of one (layer, KV head) at the request's final length
  sequenceIndex @10 :UInt32;  # j of the s sequence shards (the last one takes appends)
  sequenceShards @11 :UInt32; # s
  bytesModelled @12 :UInt64;  # K, V and summaries of every layer and head it holds
}

struct Placement {
  requestId @0 :UInt64;
  shards @1 :List(Shard);
}

struct Membership {
  epoch @0 :UInt64;
  members @1 :List(Member);
  placements @2 :List(Placement);
}

# Prefill: n consecutive tokens of one (request, layer, KV head). K and V are bf16
# [nTokens][headDim]; crc32c covers K bytes then V bytes.
struct PrefillWrite {
  requestId @0 :UInt64;
  layer @1 :UInt32;
  kvHead @2 :UInt32;
  position0 @3 :UInt64;   # global position of the first token
  nTokens @4 :UInt32;
  headDim @5 :UInt32;
  k @6 :Data;
  v @7 :Data;
  crc32c @8 :UInt32;
  step @9 :UInt32;        # the decode step it is written in (0: before the first; fault rules' step=)
}

# Decode: the new token's K and V for KV heads [kvHead0, kvHead0 + nHeads), bf16
# [nHeads][headDim]; crc32c covers K bytes then V bytes.
struct TokenAppend {
  requestId @0 :UInt64;
  layer @1 :UInt32;
  kvHead0 @2 :UInt32;
  nHeads @3 :UInt32;
  position @4 :UInt64;
  headDim @5 :UInt32;
  k @6 :Data;
  v @7 :Data;
  crc32c @8 :UInt32;
  step @9 :UInt32;        # the decode step it belongs to (fault rules' step=)
}

# q is fp32 (bf16 when `bf16` is set) [kvHead1 - kvHead0][group][headDim].
struct Query {
  requestId @0 :UInt64;
  step @1 :UInt32;
  layer @2 :UInt32;
  kvHead0 @3 :UInt32;
  kvHead1 @4 :UInt32;
  group @5 :UInt32;
  headDim @6 :UInt32;
  q @7 :Data;
  budgetPages @8 :UInt32;
  round @9 :SelectionRound;
  scoreThreshold @10 :Float32;
  deadlineNs @11 :UInt64;   # virtual time by which the partial is due
  shardId @12 :UInt32;
  sequenceTokens @13 :UInt64;  # tokens in the sequence now, the new one included
  excludedPages @14 :Data;     # uint32 global page ids the device must not select (png-kv:
                               # the GPU holds them as steady pages)
  listedPages @15 :Data;       # uint32 global page ids to attend (exactAttend), ascending
  background @16 :Bool;        # lookahead selection: on exactCandidates, the query is a search
                               # for the next step; on exactAttend, one follows the attend (its
                               # candidates a second reply). Served in the device's idle time,
                               # off its virtual clock
  bf16 @17 :Bool;              # run.wire_precision bf16: q is bf16, not fp32, and the partial's
                               # o comes back bf16 too. Never on a dense round (the verification
                               # reference stays fp32)
}

# o is fp32 (bf16 when oBf16 is set) [group][headDim], lse fp32 [group] (-inf for an empty
# subset).
struct Partial {
  requestId @0 :UInt64;
  step @1 :UInt32;
  layer @2 :UInt32;
  kvHead @3 :UInt32;
  shardId @4 :UInt32;
  group @5 :UInt32;
  headDim @6 :UInt32;
  o @7 :Data;
  lse @8 :Data;
  pagesSelected @9 :UInt32;
  bytesScanned @10 :UInt64;
  pageIds @11 :Data;          # uint32 global ids of the pages attended, pagesSelected of them
  flops @12 :Float64;         # arithmetic done, for the energy model
  round @13 :SelectionRound;  # the round this partial answers
  deviceBytesHeld @14 :UInt64;  # KV bytes the device holds after serving it
  intOps @15 :Float64;        # integer ops of the page search (exact-int8 bounds), priced apart
  searchPages @16 :UInt32;    # pages the page search looked at (0: no search, e.g. a listed round)
  searchRescored @17 :UInt32; # of which it scored exactly (flat: all)
  oBf16 @18 :Bool;            # o is bf16 (the query was bf16); never on a dense round
}

# Round 1 of exact selection: per candidate page its global id (uint32) and score (fp32).
struct Candidates {
  requestId @0 :UInt64;
  step @1 :UInt32;
  layer @2 :UInt32;
  kvHead @3 :UInt32;
  shardId @4 :UInt32;
  nPages @5 :UInt32;
  pageIds @6 :Data;
  scores @7 :Data;            # fp32; +inf marks an always-kept page
  bytesScanned @8 :UInt64;    # summaries read to score
  flops @9 :Float64;
  intOps @10 :Float64;        # integer ops of the page search (exact-int8 bounds)
  searchPages @11 :UInt32;    # pages the page search looked at
  searchRescored @12 :UInt32; # of which it scored exactly (flat: all)
}

# Baseline mode: the GPU recalls pages (uint32 global ids) from a memory expander.
struct RecallRequest {
  requestId @0 :UInt64;
  step @1 :UInt32;
  layer @2 :UInt32;
  kvHead @3 :UInt32;
  nPages @4 :UInt32;
  pageIds @5 :Data;
}

struct RecalledPage {
  pageId @0 :UInt32;
  nTokens @1 :UInt32;   # <= pageTokens (the last page may be partial)
  k @2 :Data;           # bf16 [nTokens][headDim]
  v @3 :Data;
  crc32c @4 :UInt32;    # over K bytes then V bytes
}

struct RecallReply {
  requestId @0 :UInt64;
  step @1 :UInt32;
  layer @2 :UInt32;
  kvHead @3 :UInt32;
  pageTokens @4 :UInt32;
  headDim @5 :UInt32;
  pages @6 :List(RecalledPage);
}

struct Error {
  code @0 :UInt16;      # pnmkv::errc
  message @1 :Text;
  refersToSeq @2 :UInt64;
}

struct Heartbeat {
  incarnation @0 :UInt64;  # changes when a node restarts
  queueDepth @1 :UInt32;
}

# Advertises a registered memory region for RMA put/get (transport/fabric.hpp).
struct RegionAdvert {
  regionId @0 :UInt64;
  length @1 :UInt64;
  remoteKey @2 :Data;   # fabric-specific packed key
  purpose @3 :UInt32;   # application-defined (e.g. which request's pages)
}

# Device -> GPU host: a prefill write was applied (end-to-end flow control of prefill).
struct WriteAck {
  requestId @0 :UInt64;
  layer @1 :UInt32;
  kvHead @2 :UInt32;
  position0 @3 :UInt64;
  nTokens @4 :UInt32;
  ok @5 :Bool;
  deviceBytesHeld @6 :UInt64;  # KV bytes the device holds after the write (replicas answer no query)
}

struct Envelope {
  version @0 :UInt16;   # protocol version (transport/messages.hpp: protocol_version)
  sender @1 :UInt32;
  seq @2 :UInt64;       # per-sender sequence number
  vtimeNs @3 :Float64;  # sender's virtual clock when the message left, ns with its fraction (docs/DESIGN.md §5)
  body :union {
    challenge @4 :Challenge;
    join @5 :Join;
    joinAck @6 :JoinAck;
    membership @7 :Membership;
    prefillWrite @8 :PrefillWrite;
    tokenAppend @9 :TokenAppend;
    query @10 :Query;
    partial @11 :Partial;
    candidates @12 :Candidates;
    recallRequest @13 :RecallRequest;
    recallReply @14 :RecallReply;
    error @15 :Error;
    heartbeat @16 :Heartbeat;
    regionAdvert @17 :RegionAdvert;
    writeAck @18 :WriteAck;
  }
  ackSeq @19 :UInt64;   # the highest seq this sender has taken from the destination so far (0: none);
                        # a device's to the GPU host: what it sent before that and is still
                        # unanswered was lost or is held (actors/gpu_host.cpp, on_retry)
}
