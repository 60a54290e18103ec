// `pnmkv bench wire`: encode and decode (with full validation and CRC checks) of every
// message kind, each next to a memcpy of the same number of bytes measured in the same run.
// Registered by register_bench_fabric (apps/cmd_bench_fabric.cpp) and included in
// `pnmkv bench fabric`.
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "transport/samples.hpp"

namespace pnmkv::apps {

namespace {

using namespace transport;
using clk = std::chrono::steady_clock;

template <class F>
double ns_per_call(F&& f, double seconds) {
  long n = 1;
  for (;;) {
    auto t0 = clk::now();
    for (long i = 0; i < n; ++i) f();
    double s = std::chrono::duration<double>(clk::now() - t0).count();
    if (s >= seconds || n > (1L << 30)) return s * 1e9 / static_cast<double>(n);
    n = s > 0 ? std::max(2 * n, static_cast<long>(static_cast<double>(n) * seconds / s * 1.1)) : n * 10;
  }
}

void clobber(void* p) { asm volatile("" : : "g"(p) : "memory"); }

}  // namespace

nlohmann::json run_wire_bench(double seconds_per_case) {
  struct wire_case {
    std::string name;
    message m;
  };
  std::vector<wire_case> cases;
  for (size_t i = 0; i < msg_kind_count; ++i) {
    auto k = static_cast<msg_kind>(i);
    cases.push_back({to_string(k), sample_message(k, 1)});
  }
  sample_shape big;
  big.page_tokens = 1024;  // 1024 tokens x 128 x bf16 x (K, V) = 512 KiB
  cases.push_back({"prefill_write_1024tok", sample_message(msg_kind::prefill_write, 2, big)});
  sample_shape pages;
  pages.pages = 64;  // a baseline-mode recall of 64 pages
  cases.push_back({"recall_reply_64pages", sample_message(msg_kind::recall_reply, 3, pages)});

  const wire_limits limits{};
  nlohmann::json rows = nlohmann::json::array();
  for (auto& c : cases) {
    std::vector<uint8_t> out;
    encode_into(c.m, out);
    const size_t bytes = out.size();
    std::vector<uint8_t> dst(bytes);
    double enc = ns_per_call([&] { encode_into(c.m, out); clobber(out.data()); }, seconds_per_case);
    double dec = ns_per_call([&] {
      auto r = decode(out, limits);
      if (!r) std::abort();
      clobber(&r);
    }, seconds_per_case);
    double cpy = ns_per_call([&] {
      std::memcpy(dst.data(), out.data(), bytes);
      clobber(dst.data());
    }, seconds_per_case);
    nlohmann::json r;
    r["kind"] = c.name;
    r["bytes"] = bytes;
    r["encode_ns"] = enc;
    r["decode_ns"] = dec;
    r["memcpy_ns"] = cpy;
    r["encode_vs_memcpy"] = enc / cpy;
    r["decode_vs_memcpy"] = dec / cpy;
    r["encode_gbps"] = static_cast<double>(bytes) / enc;
    r["decode_gbps"] = static_cast<double>(bytes) / dec;
    rows.push_back(r);
  }
  return rows;
}

void print_wire(const nlohmann::json& rows) {
  std::printf("\n%-24s %10s %11s %11s %11s %8s %8s %9s %9s\n", "message", "bytes", "encode ns",
              "decode ns", "memcpy ns", "enc/cpy", "dec/cpy", "enc GB/s", "dec GB/s");
  for (auto& r : rows)
    std::printf("%-24s %10zu %11.0f %11.0f %11.0f %8.1f %8.1f %9.2f %9.2f\n",
                r["kind"].get<std::string>().c_str(), r["bytes"].get<size_t>(),
                r["encode_ns"].get<double>(), r["decode_ns"].get<double>(),
                r["memcpy_ns"].get<double>(), r["encode_vs_memcpy"].get<double>(),
                r["decode_vs_memcpy"].get<double>(), r["encode_gbps"].get<double>(),
                r["decode_gbps"].get<double>());
}

void register_bench_wire(CLI::App& bench) {
  auto* cmd = bench.add_subcommand("wire", "Encode/decode (validated) cost of every message "
                                           "kind against memcpy of the same bytes");
  static std::string json_out;
  static double seconds = 0.1;
  cmd->add_option("--json", json_out, "Also write the results as JSON to FILE");
  cmd->add_option("--seconds", seconds, "Seconds per measurement")->check(CLI::Range(0.001, 10.0));
  cmd->callback([] {
    auto rows = run_wire_bench(seconds);
    print_wire(rows);
    if (!json_out.empty()) {
      std::ofstream f(json_out);
      f << nlohmann::json{{"tool", "pnmkv bench wire"}, {"wire", rows}}.dump(2) << "\n";
      if (!f) {
        std::fprintf(stderr, "pnmkv bench wire: cannot write %s\n", json_out.c_str());
        throw CLI::RuntimeError(1);
      }
    }
  });
}

}  // namespace pnmkv::apps
