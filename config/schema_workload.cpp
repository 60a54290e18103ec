// workload.* keys (owned by core/workload) and their reading into workload_params. The
// defaults are those of workload_params (core/workload.hpp), where each is justified; a
// test checks that the two agree.
#include <string>

#include "config/config.hpp"
#include "config/enums.hpp"
#include "config/schema_parts.hpp"
#include "core/workload.hpp"

namespace pnmkv {

std::vector<config_key> schema_keys_workload() {
  using t = config_type;
  return {
      {"workload.kind", t::choice, "synthetic", 0, 0, {"synthetic", "trace"},
       "Where KV and queries come from: synthetic (the generator, workload.* below) or trace "
       "(a KV trace of a real model in workload.trace_dir, docs/TRACE_FORMAT.md)"},
      {"workload.trace_dir", t::path, "", 0, 0, {},
       "kind = trace: folder of a KV trace (manifest.json + .npy/.npz/.safetensors tensors, "
       "docs/TRACE_FORMAT.md; scripts/dump_kv.py writes one); not workload.trace_file, the "
       "CSV of arrivals"},
      {"workload.context_tokens", t::integer, "1048576", 1, 1 << 22, {},
       "Prompt (context) tokens per request before decoding"},
      {"workload.batch", t::integer, "2", 1, 4096, {}, "Requests decoded together (closed arrivals)"},
      // Arrivals (docs/DESIGN.md §2): a closed batch, or an open workload served with
      // continuous batching (schedulers/serving.hpp).
      {"workload.arrivals", t::choice, "closed", 0, 0, names_of(workload_arrivals_names),
       "closed: workload.batch requests prefilled, then run.steps decode steps together; "
       "poisson/trace: requests arrive over virtual time, are admitted at step boundaries and "
       "prefill in chunks next to the decoding batch"},
      {"workload.requests", t::integer, "8", 1, 1.0e7, {},
       "poisson: requests generated (the live cluster takes at most 4096 per run)"},
      {"workload.arrival_rate_per_s", t::number, "1", 1e-9, 1e9, {},
       "poisson: mean arrivals per second of virtual time"},
      {"workload.prompt_tokens_spread_fraction", t::number, "0", 0, 0.99, {},
       "poisson: prompts are workload.context_tokens × U(1 − f, 1 + f)"},
      {"workload.output_tokens", t::integer, "16", 1, 1000000, {},
       "poisson: output tokens per request (the first comes with the prompt's last chunk)"},
      {"workload.trace_file", t::path, "", 0, 0, {},
       "trace: CSV of arrival_s,prompt_tokens,output_tokens (header optional, '#' comments); "
       "relative paths are from the working directory, else (in a config file) the file's "
       "folder or its parent"},
      {"workload.tpot_ms_max", t::number, "0", 0, 1e9, {},
       "Link and device budget: admit a request only while the predicted decode step with it "
       "(the simulator's step model, same composition as the live engine) stays within this; "
       "0: no limit"},
      {"workload.batch_max", t::integer, "0", 0, 1.0e6, {},
       "poisson/trace: requests in the system at once; pnmkv sim also caps a closed batch "
       "with it at sim.batch_policy = max (0: only GPU memory and device capacity limit it)"},
      {"workload.prefill_chunk_tokens", t::integer, "4096", 16, 1 << 24, {},
       "Prompt tokens written per chunk (closed: per message; open: per step, all requests)"},
      // Text structure.
      {"workload.sink_tokens", t::integer, "4", 0, 1024, {},
       "Initial positions whose keys align with the sink direction (StreamingLLM: 4)"},
      {"workload.topic_count", t::integer, "128", 1, 1 << 20, {},
       "Topics the passages of a request are drawn from (they recur over a long context)"},
      {"workload.topic_segment_tokens_mean", t::integer, "512", 1, 1 << 24, {},
       "Mean passage (segment) length; one topic per passage"},
      {"workload.topic_segment_tokens_spread", t::integer, "384", 0, 1 << 24, {},
       "Passage lengths vary in [mean - spread, mean + spread]; must be below the mean"},
      {"workload.needle_rate_per_mtokens", t::number, "32", 0, 1e6, {},
       "Needles (rare unique facts) per million context tokens, at most one per block"},
      {"workload.needle_block_tokens", t::integer, "8192", 16, 1 << 26, {},
       "Block holding at most one needle; rate · block / 1e6 must not exceed 1"},
      // Geometry, in logits (scale · q·k).
      {"workload.sink_logit", t::number, "14", 0, 100, {},
       "Logit of a sink key under any query (each head scales it by U[1-f/5, 1+f/5], f = query_head_spread_fraction)"},
      {"workload.topic_logit", t::number, "3", 0, 100, {},
       "Logit a key gets from a query on its topic (times weight and salience)"},
      {"workload.segment_logit", t::number, "4", 0, 100, {},
       "Extra logit a key gets from a query on its very passage"},
      {"workload.salience_spread_fraction", t::number, "0.5", 0, 1, {},
       "Per-token salience multiplies topic+passage logits by U[1-f, 1+f]"},
      {"workload.noise_logit_std", t::number, "0.5", 1e-6, 100, {},
       "Std of the noise-by-noise part of every logit"},
      {"workload.needle_logit", t::number, "20", 0, 100, {},
       "Logit of an asked needle in the heads that respond"},
      // Queries.
      {"workload.query_referenced_segments", t::integer, "4", 0, 64, {},
       "Passages of the context a query refers back to at once"},
      {"workload.query_local_weight", t::number, "1.2", 0, 100, {},
       "Weight of the current passage (local window) in the query"},
      {"workload.drift_period_steps", t::integer, "64", 1, 1e8, {},
       "Decode steps over which a referenced passage fades in and out"},
      {"workload.query_noise_persistent_fraction", t::number, "0.5", 0, 1, {},
       "Share of query noise variance fixed per head (the rest is fresh each step)"},
      {"workload.query_head_spread_fraction", t::number, "0.5", 0, 1, {},
       "Heads of a GQA group weight shared passages by U[1-f, 1+f]"},
      {"workload.needle_ask_fraction", t::number, "0.25", 0, 1, {},
       "Share of episodes in which the query asks for one needle of the context"},
      {"workload.needle_ask_episode_steps", t::integer, "4", 1, 1e6, {},
       "Consecutive decode steps asking for the same needle"},
      {"workload.needle_heads_fraction", t::number, "0.5", 0, 1, {},
       "Share of a group's query heads that respond to an asked needle (at least one)"},
      // Values.
      {"workload.value_noise_std", t::number, "1", 1e-6, 1e6, {},
       "Per-dimension std of value noise"},
      {"workload.value_topic_rms", t::number, "1", 0, 1e6, {},
       "Per-dimension RMS of the topic component of values"},
      {"workload.value_sink_scale", t::number, "0.1", 0, 1e6, {},
       "Sink values are this fraction of ordinary value noise (sinks act as a no-op)"},
      {"workload.value_needle_rms", t::number, "2", 0, 1e6, {},
       "Per-dimension RMS of a needle's distinctive value component"},
  };
}

result<workload_params> workload_params_from_config(const config& cfg) {
  // Read for kind = trace too: the keys keep their checked defaults, unused.
  const std::string& kind = cfg.get_string("workload.kind");
  if (kind != "synthetic" && kind != "trace")
    return status{errc::invalid_argument,
                  "workload.kind = '" + kind + "' is not supported; allowed: synthetic, trace"};
  workload_params p;
  auto u32 = [&](const char* key) { return static_cast<uint32_t>(cfg.get_int(key)); };
  p.sink_tokens = u32("workload.sink_tokens");
  p.topic_count = u32("workload.topic_count");
  p.topic_segment_tokens_mean = u32("workload.topic_segment_tokens_mean");
  p.topic_segment_tokens_spread = u32("workload.topic_segment_tokens_spread");
  p.needle_rate_per_mtokens = cfg.get_number("workload.needle_rate_per_mtokens");
  p.needle_block_tokens = u32("workload.needle_block_tokens");
  p.sink_logit = cfg.get_number("workload.sink_logit");
  p.topic_logit = cfg.get_number("workload.topic_logit");
  p.segment_logit = cfg.get_number("workload.segment_logit");
  p.salience_spread_fraction = cfg.get_number("workload.salience_spread_fraction");
  p.noise_logit_std = cfg.get_number("workload.noise_logit_std");
  p.needle_logit = cfg.get_number("workload.needle_logit");
  p.query_referenced_segments = u32("workload.query_referenced_segments");
  p.query_local_weight = cfg.get_number("workload.query_local_weight");
  p.drift_period_steps = u32("workload.drift_period_steps");
  p.query_noise_persistent_fraction =
      cfg.get_number("workload.query_noise_persistent_fraction");
  p.query_head_spread_fraction = cfg.get_number("workload.query_head_spread_fraction");
  p.needle_ask_fraction = cfg.get_number("workload.needle_ask_fraction");
  p.needle_ask_episode_steps = u32("workload.needle_ask_episode_steps");
  p.needle_heads_fraction = cfg.get_number("workload.needle_heads_fraction");
  p.value_noise_std = cfg.get_number("workload.value_noise_std");
  p.value_topic_rms = cfg.get_number("workload.value_topic_rms");
  p.value_sink_scale = cfg.get_number("workload.value_sink_scale");
  p.value_needle_rms = cfg.get_number("workload.value_needle_rms");
  p.context_tokens = static_cast<uint64_t>(cfg.get_int("workload.context_tokens"));
  if (auto st = p.validate(); !st)
    return status{st.code(), st.message() +
                                 (cfg.source_file().empty()
                                      ? std::string()
                                      : " (config file '" + cfg.source_file() + "')")};
  return p;
}

}  // namespace pnmkv
