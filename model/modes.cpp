#include "model/modes.hpp"

namespace pnmkv {

const char* to_string(run_mode m) {
  switch (m) {
    case run_mode::baseline: return "baseline";
    case run_mode::pnm_kv: return "pnm-kv";
    case run_mode::png_kv: return "png-kv";
  }
  return "?";
}

result<run_mode> parse_run_mode(const std::string& text) {
  if (text == "baseline") return run_mode::baseline;
  if (text == "pnm-kv") return run_mode::pnm_kv;
  if (text == "png-kv") return run_mode::png_kv;
  return status{errc::invalid_argument,
                "run.mode '" + text + "' is unknown; allowed: baseline|pnm-kv|png-kv"};
}

const char* to_string(cross_shard_selection s) {
  return s == cross_shard_selection::exact ? "exact" : "local";
}

result<cross_shard_selection> parse_cross_shard(const std::string& text) {
  if (text == "exact") return cross_shard_selection::exact;
  if (text == "local") return cross_shard_selection::local;
  return status{errc::invalid_argument,
                "selection.cross_shard '" + text + "' is unknown; allowed: exact|local"};
}

const char* to_string(sequence_split s) {
  return s == sequence_split::contiguous ? "contiguous" : "interleave";
}

result<sequence_split> parse_sequence_split(const std::string& text) {
  if (text == "contiguous") return sequence_split::contiguous;
  if (text == "interleave") return sequence_split::interleave;
  return status{errc::invalid_argument,
                "cluster.sequence_split '" + text + "' is unknown; allowed: contiguous|interleave"};
}

}  // namespace pnmkv
