// fabric.* and faults.* keys (owned by transport/; read by transport/from_config.cpp).
#include "config/enums.hpp"
#include "config/schema_parts.hpp"

namespace pnmkv {

std::vector<config_key> schema_keys_transport() {
  using t = config_type;
  return {
      // Fabric behaviour.
      {"fabric.ucx_transport", t::choice, "tcp", 0, 0, names_of(ucx_transport_names),
       "UCX transports in cluster mode: tcp (UCX_TLS=tcp; survives a peer killed mid-message), "
       "shm (shared memory) or any (UCX picks: shared memory on one host). A peer killed while "
       "writing into a receiver's shared-memory FIFO leaves a slot the receiver waits on "
       "forever: every later message to that node stalls (transport/README.md, \"Peer failure\")"},
      {"fabric.ucx_net_devices", t::string, "lo", 0, 0, {},
       "UCX_NET_DEVICES for tcp (empty: UCX default; `lo` keeps traffic on loopback)"},
      {"fabric.ucx_rma", t::choice, "auto", 0, 0, names_of(ucx_rma_mode_names),
       "RMA put/get: native ucp_put/get, or rendezvous active messages (auto: am on tcp)"},
      {"fabric.ucx_progress", t::choice, "thread", 0, 0, names_of(ucx_progress_names),
       "Who owns the UCX worker: an internal progress thread, or the caller inside poll()"},
      {"fabric.ucx_spin_us", t::integer, "50", 0, 1000000, {},
       "Busy-poll this long after the last activity before sleeping on the event fd"},
      {"fabric.ucx_keepalive_ms", t::integer, "50", 1, 600000, {},
       "UCX keepalive round interval: bounds how fast a dead peer is noticed"},
      {"fabric.send_queue_depth", t::integer, "1024", 1, 1000000, {},
       "Operations in flight per peer; more are refused with errc::capacity"},
      {"fabric.inbox_depth", t::integer, "4096", 1, 10000000, {},
       "Received messages waiting for poll(); in-process sends beyond it are refused"},
      {"fabric.op_timeout_ms", t::integer, "5000", 1, 3600000, {},
       "Default deadline of every fabric operation"},
      {"fabric.connect_timeout_ms", t::integer, "5000", 1, 3600000, {},
       "Deadline of connect() (endpoint wire-up)"},
      {"fabric.max_message_bytes", t::integer, "67108864", 4096, 2147483647, {},
       "Largest small message (send); bulk data goes through put/get"},
      {"fabric.frame_crc", t::choice, "auto", 0, 0, names_of(crc_mode_names),
       "CRC32C per frame, checked before delivery; auto: on when the fault plan can corrupt"},
      {"fabric.drop_duplicates", t::boolean, "true", 0, 0, {},
       "Deliver each (sender, link sequence number) once"},
      {"fabric.pacing", t::boolean, "false", 0, 0, {},
       "Hold messages until the link model says they arrive (wall time follows virtual time)"},
      {"fabric.pacing_scale", t::number, "1", 0.001, 1000000, {},
       "Pacing: wall ns per virtual ns"},
      {"fabric.cluster_secret_file", t::string, "", 0, 0, {},
       "File holding the cluster secret for join proofs (empty: joins are refused)"},
      // Wire limits: every decoded message is checked against them.
      {"fabric.max_tokens_per_write", t::integer, "4096", 1, 1048576, {},
       "Tokens in one prefill page write"},
      {"fabric.max_head_dim", t::integer, "512", 1, 512, {}, "Largest head_dim accepted"},
      {"fabric.max_group", t::integer, "64", 1, 64, {}, "Largest GQA group (query heads per KV head)"},
      {"fabric.max_kv_heads", t::integer, "256", 1, 65536, {}, "KV head indices are below this"},
      {"fabric.max_layers", t::integer, "1024", 1, 65536, {}, "Layer indices are below this"},
      {"fabric.max_context_tokens", t::integer, "16777216", 1, 4294967295.0, {},
       "Token positions and page ids are below this"},
      {"fabric.max_page_tokens", t::integer, "1024", 1, 65536, {}, "Largest page in a recall reply"},
      {"fabric.max_pages_per_message", t::integer, "65536", 1, 16777216, {},
       "Pages in one candidates / recall message"},
      {"fabric.max_members", t::integer, "4096", 1, 1048576, {}, "Members in one membership message"},
      {"fabric.max_shards", t::integer, "65536", 1, 16777216, {},
       "Shards summed over the placements of one membership message"},
      {"fabric.max_replicas", t::integer, "8", 0, 64, {}, "Replicas per shard"},
      // Fault points (transport/faults.hpp).
      {"faults.seed", t::integer, "1", 0, 9.0e15, {},
       "Seed of every fault decision: the same seed and script replay the same faults"},
      {"faults.at", t::choice, "send", 0, 0, names_of(fault_points_names),
       "Fault point of the *_prob faults below"},
      {"faults.messages", t::string, "", 0, 0, {},
       "Message kinds the *_prob faults apply to, comma-separated (empty: all)"},
      {"faults.drop_prob", t::number, "0", 0, 1, {}, "Probability a message is dropped"},
      {"faults.delay_prob", t::number, "0", 0, 1, {}, "Probability a message is delayed"},
      {"faults.delay_ms", t::integer, "10", 1, 3600000, {}, "Delay of a delayed message"},
      {"faults.duplicate_prob", t::number, "0", 0, 1, {}, "Probability a message is duplicated"},
      {"faults.corrupt_prob", t::number, "0", 0, 1, {}, "Probability a message gets bit flips"},
      {"faults.corrupt_bits", t::integer, "1", 1, 4096, {}, "Bits flipped in a corrupted message"},
      {"faults.stall_prob", t::number, "0", 0, 1, {},
       "Probability a received message stalls the node (it holds all traffic)"},
      {"faults.stall_ms", t::integer, "1000", 1, 3600000, {}, "Length of a stall"},
      {"faults.partition_prob", t::number, "0", 0, 1, {},
       "Probability per window that the link between sender and receiver is cut"},
      {"faults.partition_window_msgs", t::integer, "64", 1, 1000000000, {},
       "Sender sequence numbers per partition decision"},
      {"faults.script", t::string, "", 0, 0, {},
       "Scripted faults, rules separated by ';' (e.g. \"stall node=3 step=40 ms=2000; drop "
       "p=0.05 msg=partial from=2\"); grammar in transport/faults.hpp"},
      {"faults.script_file", t::string, "", 0, 0, {},
       "File with more fault rules, one per line"},
      {"faults.log", t::string, "", 0, 0, {},
       "JSONL event log of every injected fault (empty: none)"},
  };
}

}  // namespace pnmkv
