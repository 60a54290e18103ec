// run.*, model.*, hardware.*, selection.*, cluster.*, eval.* keys.
#include "config/schema_parts.hpp"

namespace pnmkv {

std::vector<config_key> schema_keys_run() {
  using t = config_type;
  return {
      {"run.mode", t::choice, "pnm-kv", 0, 0, {"baseline", "pnm-kv", "png-kv"},
       "Execution mode (DESIGN.md §2)"},
      {"run.steps", t::integer, "16", 1, 100000, {}, "Decode steps per request"},
      {"run.seed", t::integer, "1", 0, 9.0e15, {}, "Seed of every random choice in the run"},
      {"model.file", t::path, "models/llama-3.1-8b.yaml", 0, 0, {},
       "Model shape file (any GQA decoder)"},
      {"hardware.file", t::path, "hardware/h100-cxl-pnm.yaml", 0, 0, {},
       "Hardware figures with sources"},
      {"selection.page_size_tokens", t::integer, "16", 1, 1024, {}, "Tokens per KV page"},
      {"selection.budget_tokens", t::integer, "2048", 1, 1 << 26, {},
       "Tokens attended per (request, layer, KV head) per step, always-kept pages included"},
      {"selection.gqa_aggregation", t::choice, "max", 0, 0, {"max", "sum"},
       "How the query heads of a GQA group combine page scores"},
      {"selection.summary_precision", t::choice, "bf16", 0, 0, {"bf16", "fp32"},
       "Precision of the per-page min/max key summaries"},
      {"cluster.pnm_devices", t::integer, "4", 1, 4096, {}, "PNM devices in the cluster"},
      {"cluster.live_layers", t::integer, "1", 0, 1024, {},
       "Layers computed with real arithmetic; the rest are charged by the cost model only"},
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
