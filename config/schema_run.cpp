// run.*, model.*, hardware.*, selection.*, cluster.*, eval.* keys. A choice key's allowed
// values are its enum's name table (config/enums.hpp).
#include "config/enums.hpp"
#include "config/schema_parts.hpp"
#include "model/work_sizes.hpp"

namespace pnmkv {

std::vector<config_key> schema_keys_run() {
  using t = config_type;
  return {
      {"run.mode", t::choice, "pnm-kv", 0, 0, names_of(run_mode_names),
       "Execution mode (docs/DESIGN.md §2); gpu-only: the reference without memory devices "
       "(KV in GPU HBM, selection and attention on the GPU, admission limited by HBM)"},
      {"run.steps", t::integer, "16", 1, 100000, {}, "Decode steps per request"},
      {"run.seed", t::integer, "1", 0, 9.0e15, {}, "Seed of every random choice in the run"},
      {"run.micro_batches", t::integer, "1", 1, 16, {},
       "Sub-batch overlap (docs/DESIGN.md §5): the decoding batch is cut into this many "
       "micro-batches and the GPU runs the dense layers of one while the devices serve "
       "another; 1: off (the whole batch per layer). Modes pnm-kv and png-kv only. A step with "
       "fewer decoding requests uses one micro-batch per request"},
      {"run.wire_precision", t::choice, "bf16", 0, 0, names_of(wire_precision_names),
       "Element type of the query vectors and the partial outputs on the host links: fp32, or "
       "bf16 (the query as the GPU makes it, rounded by the host before any use, in every "
       "mode; the devices round each partial output after accumulating in fp32; "
       "log-sum-exps and dense verification partials stay fp32). Halves those bytes; changes "
       "the outputs (model/work_sizes.hpp)"},
      {"model.file", t::path, "models/llama-3.1-8b.yaml", 0, 0, {},
       "Model shape file (any GQA decoder)"},
      {"hardware.file", t::path, "hardware/h100-cxl-pnm.yaml", 0, 0, {},
       "Hardware figures with sources"},
      {"hardware.scale", t::string, "", 0, 0, {},
       "Sensitivity: multiply hardware-file figures, \"key=factor[,key=factor...]\" (factor in "
       "(0, 100]), e.g. pnm_device.compute_tflops=0.5; results name every scaled figure"},
      {"selection.page_size_tokens", t::integer, "16", 1, 1024, {}, "Tokens per KV page"},
      {"selection.budget_tokens", t::integer, "3072", 1, 1 << 26, {},
       "Tokens attended per (request, layer, KV head) per step, always-kept pages included "
       "(3072 with lookahead on by default: its stale selection needs 1.5x the budget of a fresh "
       "one to capture as much attention mass; README, \"The frontier, and the defaults it chose\")"},
      {"selection.budget_fraction", t::number, "0", 0, 1, {},
       "0: off (selection.budget_tokens is the budget); in (0, 1]: the budget of a request is "
       "round(fraction x its context) rounded up to whole pages, at least the two always-kept "
       "pages, and wins over selection.budget_tokens. Context: a request's prompt tokens at "
       "admission, taken today as workload.context_tokens (a closed batch's context, an open "
       "workload's nominal prompt) by the live cluster and the simulator alike"},
      {"selection.gqa_aggregation", t::choice, "max", 0, 0, names_of(gqa_aggregation_names),
       "How the query heads of a GQA group combine page scores"},
      {"selection.summary_precision", t::choice, "bf16", 0, 0, names_of(summary_precision_names),
       "Precision of the per-page min/max key summaries"},
      {"selection.search", t::choice, "exact-int8", 0, 0, names_of(page_search_names),
       "How a device finds its top pages: flat (score every page summary) or exact-int8 (bound "
       "every page from int8 summaries rounded outward, rescore exactly only the pages that may "
       "make the top-k: the same selection; the int8 summaries take device memory)"},
      {"selection.lookahead", t::choice, "auto", 0, 0, names_of(lookahead_setting_names),
       "Lookahead selection: auto (on for run.mode pnm-kv with run.micro_batches = 1, off "
       "otherwise), true (on; refused with any other mode or schedule) or false (off). On: the "
       "pages a step attends are those "
       "the devices selected with the previous step's query, searched while the devices are "
       "otherwise idle (the GPU's dense layers), so only the attention stays on the step's "
       "path; a request's first decode step selects with its own query. Not exact: a stale "
       "selection may miss what the new query asks for (a larger selection.budget_tokens "
       "makes up for it; docs/DESIGN.md, \"Lookahead selection\")"},
      {"selection.cross_shard", t::choice, "exact", 0, 0, names_of(cross_shard_selection_names),
       "With s > 1 sequence shards: exact (two rounds, equals one-device selection) or local "
       "(each shard selects budget/s pages, one round)"},
      {"png.steady_budget_tokens", t::integer, "512", 0, 1 << 26, {},
       "png-kv: steady tokens per (request, layer, KV head) kept in GPU memory (part of the budget)"},
      {"png.window_steps", t::integer, "16", 1, 4096, {},
       "png-kv: steps of selection history the steady policy looks at"},
      {"png.threshold", t::number, "0.75", 0.01, 1, {},
       "png-kv: a page is steady when selected in at least this fraction of the window"},
      {"png.reevaluate_every_steps", t::integer, "8", 1, 100000, {},
       "png-kv: steps between re-evaluations of the steady set (copies are charged)"},
      {"png.warmup_steps", t::integer, "4", 0, 100000, {},
       "png-kv: steps seen before the first steady set"},
      {"baseline.summaries", t::choice, "auto", 0, 0, names_of(summary_residence_names),
       "baseline: page summaries resident in HBM, read over the link each step, or resident "
       "when they fit (auto)"},
      {"baseline.recall_cache", t::choice, "lru", 0, 0, names_of(recall_cache_policy_names),
       "baseline: recalled pages the GPU keeps in HBM between steps, per (request, layer, KV "
       "head): lru (a page selected again is attended from HBM, not recalled; the least "
       "recently used page is evicted past baseline.recall_cache_tokens, ties to the lower "
       "page) or none (every selected page is recalled every step)"},
      {"baseline.recall_cache_tokens", t::integer, "0", 0, 1ll << 32, {},
       "baseline, recall_cache = lru: tokens of recalled pages kept per (request, layer, KV "
       "head), counted in GPU memory for every layer; 0: the selection budget (one step's "
       "selection: the smallest cache that holds it); else at least the budget"},
      {"cluster.pnm_devices", t::integer, "4", 1, 4096, {}, "PNM devices in the cluster (run.mode=gpu-only: the simulator ignores them; the live "
       "cluster starts them, they join and hold nothing; never charged)"},
      {"cluster.live_layers", t::integer, "1", 0, 1024, {},
       "Layers computed with real arithmetic; the rest are charged by the cost model only"},
      {"run.verify", t::boolean, "true", 0, 0, {},
       "Check every step against dense attention (extra device passes, not charged or timed)"},
      {"run.retry_after_ms", t::integer, "0", 0, 3600000, {},
       "Messages lost without losing a device: a step (or prefill) with no progress for this "
       "long sends its unanswered work again (devices ignore writes they hold); 0: off, a lost "
       "message fails the run at run.step_timeout_ms"},
      {"run.step_timeout_ms", t::integer, "60000", 1, 3600000, {},
       "Wall-clock deadline of one decode step; a request past it fails with an error"},
      {"run.prefill_timeout_ms", t::integer, "1200000", 1, 36000000, {},
       "Wall-clock deadline of the whole prefill; past it the run fails with an error"},
      {"run.prefill_window_chunks", t::integer, "16", 1, 4096, {},
       "Prefill chunks in flight from the GPU host (bounds memory and queues)"},
      {"cluster.head_groups", t::integer, "0", 0, 1024, {},
       "h of the hybrid head/sequence split (0: chosen per request from the cost model)"},
      {"cluster.sequence_split", t::choice, "contiguous", 0, 0, names_of(sequence_split_names),
       "How sequence shards cut the pages"},
      {"cluster.replication", t::integer, "1", 1, 8, {}, "Copies of each shard (r)"},
      {"cluster.rereplicate", t::boolean, "true", 0, 0, {},
       "After a device loss, each shard left with fewer than cluster.replication copies (but "
       "one at least) gets a new copy on a surviving device the coordinator picks (the most "
       "room, holding nothing of that request), copied from a live copy in chunks of "
       "cluster.rebuild_chunk_tokens at step boundaries while decoding goes on; false: the "
       "run goes on with fewer copies"},
      {"cluster.recompute", t::boolean, "true", 0, 0, {},
       "A shard whose every copy was lost is rebuilt on a surviving device by re-prefilling "
       "its tokens from the request's prompt (and the tokens decoded so far); decoding waits "
       "for it and the outputs stay bit-identical. false: the request fails with the reason "
       "(the others go on)"},
      {"cluster.rebuild_chunk_tokens", t::integer, "4096", 1, 1ll << 24, {},
       "Tokens of each (layer, KV head) a re-replication copies per step boundary (rounded "
       "to whole pages) and a recompute writes per message: bounds the stall a rebuild adds "
       "to one step and the bytes in flight"},
      {"cluster.pool_devices", t::integer, "0", 0, 4096, {},
       "Devices per pool; pools serve different requests (0: one pool of every device)"},
      {"cluster.device_memory_bytes_max", t::integer, "0", 0, 1.0e15, {},
       "Emulator memory a device may hold (live layers); a request beyond it is refused. 0: "
       "derived from this machine: (available memory − safety margin − the run's working "
       "buffers) / cluster.pnm_devices"},
      {"cluster.coordinator_host", t::string, "127.0.0.1", 0, 0, {},
       "Where nodes reach the coordinator (cluster mode)"},
      {"cluster.coordinator_port", t::integer, "0", 0, 65535, {},
       "Coordinator's control-plane port (cluster mode; 0: pick a free one)"},
      {"cluster.heartbeat_interval_ms", t::integer, "200", 10, 60000, {},
       "CAF middleman heartbeat interval (cluster mode)"},
      {"cluster.connection_timeout_ms", t::integer, "5000", 50, 600000, {},
       "A peer silent this long is considered down (cluster mode). 5 s: with 1 s a node "
       "process starved of CPU on a loaded 2-core machine was declared lost while healthy; "
       "a killed process is noticed at once (its connections close)"},
      {"cluster.device_timeout_ms", t::integer, "0", 0, 3600000, {},
       "The GPU host declares a device lost (fails it over and fences it) when the device "
       "has owed a reply or acknowledgement for this long and sent nothing: a hung or "
       "stalled device. The embedded cluster has no heartbeats, so only this notices a hang "
       "there; cluster mode has the coordinator's (cluster.connection_timeout_ms) as well. "
       "0: off"},
      {"cluster.node_scheduler", t::choice, "sharing", 0, 0, names_of(node_scheduler_names),
       "CAF scheduler of a node process (cluster mode): sharing (idle workers sleep on a "
       "condition variable) or stealing (idle workers poll; CAF's default)"},
      {"cluster.startup_timeout_ms", t::integer, "30000", 100, 3600000, {},
       "Every node process the launcher starts must be up this long after it is started, or the run fails naming it, with the end of its log"},
      {"cluster.join_timeout_ms", t::integer, "120000", 100, 3600000, {},
       "The configured members must have joined this long after the coordinator starts, or the run fails naming the missing ones"},
      {"cluster.journal_file", t::string, "", 0, 0, {},
       "The coordinator journals membership, placement and admission here (append-only, a "
       "CRC32C per record, fsync at each decision) and, restarted with the same file, "
       "resumes from it: members and the driver reconnect and the run goes on. Empty: no "
       "journal (a lost coordinator ends the run); pnmkv run --multiprocess uses its work "
       "directory's coordinator.journal when this is empty"},
      {"cluster.coordinator_reconnect_ms", t::integer, "20000", 100, 3600000, {},
       "With a journal: how long members and the driver wait for a lost coordinator to come "
       "back (restarted on the same host and port) before giving up"},
      {"cluster.coordinator_restarts_max", t::integer, "3", 0, 100, {},
       "pnmkv run --multiprocess restarts a coordinator process that died, on the same port "
       "with the same journal, at most this many times (0: never)"},
      {"eval.budgets_tokens", t::int_list, "256,512,1024,2048,4096,8192", 1, 1 << 26, {},
       "Budgets swept by `pnmkv eval`"},
      {"eval.contexts_tokens", t::int_list, "32768,131072,524288,1048576", 16, 1 << 24, {},
       "Context lengths swept by `pnmkv eval` (as far as memory allows)"},
      {"eval.kv_heads", t::integer, "2", 1, 64, {},
       "KV heads (of layer 0) evaluated per context by `pnmkv eval`"},
      {"eval.steps", t::integer, "8", 1, 10000, {}, "Decode steps evaluated per context"},
  };
}

}  // namespace pnmkv
