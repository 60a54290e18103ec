// Whole-cluster properties, in one process (embedded) and as separate processes over UCX:
// the same config and seed give bit-identical outputs in both modes; with a budget covering
// every page the cluster equals dense attention; bytes held add up to the placement; a
// request too large for the devices is refused while the others proceed; runs leave no
// threads or processes behind.
#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <future>
#include <sstream>
#include <thread>

#include <cstdlib>
#include <filesystem>
#include <string>

#include <caf/all.hpp>
#include <caf/io/all.hpp>

#include "actors/cluster.hpp"
#include "actors/control.hpp"
#include "actors/node_common.hpp"
#include "actors/node_main.hpp"
#include "tests/cluster/processes.hpp"

namespace pnmkv {
namespace {

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

config small_config(std::vector<std::string> extra = {}) {
  std::vector<std::string> sets = {"workload.context_tokens=8192", "run.steps=3",
                                   "workload.batch=2", "selection.budget_tokens=512",
                                   "run.step_timeout_ms=30000"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  if (const char* seed = std::getenv("PNMKV_TEST_SEED")) sets.push_back(std::string("run.seed=") + seed);
  auto c = load_config(default_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  return *c;
}

size_t thread_count() {
  size_t n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (readdir(d)) ++n;
    closedir(d);
  }
  return n;
}

TEST(cluster, full_budget_equals_dense_and_bytes_add_up) {
  for (const char* split : {"contiguous", "interleave"}) {
    SCOPED_TRACE(split);
    // Flat search: the bound below counts K, V and bf16 summaries; exact-int8 (the default)
    // adds its int8 summaries (tests/cluster/search_test.cpp counts those). fp32 on the
    // links: the default bf16 partial outputs are dense attention only to ~2e-3.
    auto cfg = small_config({"selection.budget_tokens=16384", "cluster.head_groups=2",
                             std::string("cluster.sequence_split=") + split, "selection.search=flat",
                             "run.wire_precision=fp32"});
    auto rep = run_embedded(cfg, {});
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_EQ(rep->completed, 2u);
    EXPECT_EQ(rep->head_groups, 2u);
    EXPECT_EQ(rep->sequence_shards, 2u);
    EXPECT_GT(rep->accuracy_samples, 0u);
    EXPECT_LT(rep->output_rel_err_max, 1e-5);
    EXPECT_NEAR(rep->attention_mass_recall_min, 1.0, 1e-5);
    // Every page held exactly once: the bytes the devices hold are the KV of the live
    // layer for every token (context + appended), plus one summary per page.
    const uint64_t tokens = 8192 + 3, pages = (tokens + 15) / 16;
    uint64_t held = 0;
    for (uint64_t b : rep->device_bytes_held) held += b;
    const uint64_t kv_heads = 8, head_dim = 128;
    // Pages are allocated whole: a shard's partial last page holds page_size rows.
    const uint64_t batch = 2;
    EXPECT_GE(held, batch * kv_heads * (tokens * head_dim * 4 + pages * head_dim * 4));
    EXPECT_LE(held, batch * kv_heads * ((pages + 2) * 16 * head_dim * 4 + (pages + 2) * head_dim * 4));
    ASSERT_EQ(rep->device_ids.size(), 4u);
  }
}

// gpu-only in the live cluster (issue 11): the GPU host holds the KV; with a budget covering
// every page each output is dense attention bit for bit, no device holds a byte, and
// nothing crosses a link.
TEST(cluster, gpu_only_full_budget_equals_dense_and_devices_hold_nothing) {
  auto rep = run_embedded(small_config({"run.mode=gpu-only", "selection.budget_tokens=16384"}), {});
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->completed, 2u);
  EXPECT_GT(rep->accuracy_samples, 0u);
  EXPECT_EQ(rep->output_rel_err_max, 0.0);
  EXPECT_EQ(rep->attention_mass_recall_min, 1.0);
  EXPECT_EQ(rep->virtual_link_bytes_per_step, 0u);
  EXPECT_EQ(rep->virtual_device_bytes_per_step, 0u);
  for (uint64_t b : rep->device_bytes_held) EXPECT_EQ(b, 0u);
  // At the normal budget it is the same run as pnm-kv on one device holding one shard, when
  // pnm-kv selects fresh (lookahead, on by default there, is pnm-kv's only) and its partial
  // outputs cross the link in fp32 (gpu-only's never cross one).
  auto gpu = run_embedded(small_config({"run.mode=gpu-only", "run.wire_precision=fp32"}), {});
  auto one = run_embedded(small_config({"run.mode=pnm-kv", "cluster.pnm_devices=1", "selection.lookahead=false",
                                        "run.wire_precision=fp32"}),
                          {});
  ASSERT_TRUE(gpu && one);
  EXPECT_EQ(gpu->output_digest, one->output_digest);
  EXPECT_GT(gpu->virtual_tokens_per_s, 0.0);
}

// gpu-only admission is limited by HBM: an 8B request of 320K tokens holds 42.9 GB of K/V
// and 2.7 GB of summaries (every layer); next to 16 GB of weights on 76 GB usable one fits,
// a second is refused for GPU memory (the devices, which would hold both, are not used).
TEST(cluster, gpu_only_refuses_what_hbm_cannot_hold) {
  auto rep = run_embedded(small_config({"run.mode=gpu-only", "workload.context_tokens=327680", "run.steps=1"}), {});
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->completed, 1u);
  ASSERT_EQ(rep->failures.size(), 1u);
  EXPECT_NE(rep->failures[0].find("GPU memory"), std::string::npos) << rep->failures[0];
  EXPECT_NE(rep->failures[0].find("gpu-only"), std::string::npos) << rep->failures[0];
}

TEST(cluster, too_large_request_is_refused_and_others_proceed) {
  // Two requests of 8K tokens; each device (2 KV heads of each request) holds 513 pages ×
  // 8704 bytes × 2 heads = 8.9 MB per request, and may hold 12 MB: one request only.
  auto cfg = small_config({"cluster.device_memory_bytes_max=12000000"});
  auto rep = run_embedded(cfg, {});
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->submitted, 2u);
  EXPECT_EQ(rep->completed, 1u);
  EXPECT_EQ(rep->failed, 1u);
  ASSERT_EQ(rep->failures.size(), 1u);
  EXPECT_NE(rep->failures[0].find("does not fit"), std::string::npos) << rep->failures[0];
  EXPECT_GT(rep->accuracy_samples, 0u);
}

TEST(cluster, runs_are_reproducible_and_leave_no_threads) {
  const size_t before = thread_count();
  auto a = run_embedded(small_config(), {});
  auto b = run_embedded(small_config(), {});
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->output_digest, b->output_digest);
  // Threads that are still exiting are not leaked: give them a moment, then insist.
  for (int i = 0; i < 100 && thread_count() != before; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(thread_count(), before) << "threads leaked by the embedded cluster";
  auto c = run_embedded(small_config({"run.seed=99"}), {});
  ASSERT_TRUE(c);
  EXPECT_NE(a->output_digest, c->output_digest);
}

void expect_embedded_equals_multiprocess(const config& cfg) {
  auto embedded = run_embedded(cfg, {});
  ASSERT_TRUE(embedded) << embedded.error().to_string();
  multiprocess_options mp;
  mp.node_binary = PNMKV_BINARY;
  auto multi = run_multiprocess(cfg, {}, mp);
  ASSERT_TRUE(multi) << multi.error().to_string();
  EXPECT_TRUE(multi->multiprocess);
  EXPECT_EQ(multi->completed, 2u);
  EXPECT_TRUE(multi->failures.empty()) << multi->failures.front();
  EXPECT_TRUE(multi->shutdown_events.empty()) << multi->shutdown_events.front();  // unclean shutdowns
  EXPECT_EQ(embedded->output_digest, multi->output_digest);
  EXPECT_DOUBLE_EQ(embedded->virtual_step_ms_mean, multi->virtual_step_ms_mean);
  EXPECT_EQ(embedded->virtual_link_bytes_per_step, multi->virtual_link_bytes_per_step);
}

// Also with lookahead selection: its background searches cross the wire (Cap'n Proto over UCX)
// and are served off the devices' clocks in every process alike.
TEST(cluster, embedded_and_multiprocess_give_the_same_outputs) {
  expect_embedded_equals_multiprocess(small_config());
  SCOPED_TRACE("lookahead selection");
  expect_embedded_equals_multiprocess(small_config({"selection.lookahead=true"}));
  SCOPED_TRACE("lookahead selection, bf16 queries and partial outputs (run.wire_precision)");
  expect_embedded_equals_multiprocess(small_config({"selection.lookahead=true", "run.wire_precision=bf16"}));
}

// Kills device 101 once `phase` has begun (empty: as soon as its process exists) and
// checks the run ends promptly, names the device, and leaves no process behind. Without
// replicas or recompute every request has a shard on it (one pool of four devices): each
// fails, naming it; before the cluster is complete the run fails as a whole.
void kill_device_during(const std::string& phase) {
  auto cfg = small_config({"run.steps=2000", "run.verify=false", "cluster.recompute=false"});
  multiprocess_options mp;
  mp.node_binary = PNMKV_BINARY;
  std::promise<void> begun;
  std::atomic<bool> signalled{false};
  cluster_run_options opts;
  opts.on_progress = [&](const std::string& p, uint64_t, uint64_t) {
    if (p == phase && !signalled.exchange(true)) begun.set_value();
  };
  auto run = std::async(std::launch::async, [&] { return run_multiprocess(cfg, opts, mp); });
  if (!phase.empty()) {
    ASSERT_EQ(begun.get_future().wait_for(std::chrono::seconds(120)), std::future_status::ready)
        << "the run never reached " << phase;
  }
  std::vector<pid_t> victim;
  for (int i = 0; i < 400 && victim.empty(); ++i) {
    victim = children_matching("--id 101");
    if (victim.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ASSERT_EQ(victim.size(), 1u) << "device 101 never started";
  kill(victim[0], SIGKILL);
  ASSERT_EQ(run.wait_for(std::chrono::seconds(60)), std::future_status::ready)
      << "the run hung after a device was killed";
  auto rep = run.get();
  // Either the cluster reports the loss (a report with the failure) or the launcher does
  // (an error); both must name the device.
  std::string why;
  if (rep) {
    EXPECT_EQ(rep->completed, 0u);
    for (const auto& f : rep->failures)
      if (f.find("device 101 went down") != std::string::npos) why = f;
  } else {
    why = rep.error().message().find("device 101 went down") != std::string::npos ? rep.error().message() : "";
  }
  EXPECT_FALSE(why.empty()) << (rep ? (rep->failures.empty() ? "no failure" : rep->failures.front())
                                    : rep.error().to_string());
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
}

TEST(cluster, a_device_killed_while_decoding_fails_the_run_with_its_reason_and_leaves_no_process) {
  kill_device_during("decode");
}

TEST(cluster, a_device_killed_before_the_cluster_is_complete_fails_the_run_promptly) {
  kill_device_during("");
}

// Runs `cfg` as one process per node, SIGKILLs device `victim` once 3 decode steps are done,
// and returns the report (the run must end within 120 s).
result<run_report> run_killing(const config& cfg, const std::string& victim_id) {
  multiprocess_options mp;
  mp.node_binary = PNMKV_BINARY;
  std::promise<void> begun;
  std::atomic<bool> signalled{false};
  cluster_run_options opts;
  opts.on_progress = [&](const std::string& p, uint64_t done, uint64_t) {
    if (p == "decode" && done >= 3 && !signalled.exchange(true)) begun.set_value();
  };
  auto run = std::async(std::launch::async, [&] { return run_multiprocess(cfg, opts, mp); });
  if (begun.get_future().wait_for(std::chrono::seconds(120)) != std::future_status::ready) {
    ADD_FAILURE() << "the run never reached decode step 3";
    return run.get();
  }
  auto victim = children_matching("--id " + victim_id);
  if (victim.size() != 1) {
    ADD_FAILURE() << "device " << victim_id << " is not running";
    return run.get();
  }
  kill(victim[0], SIGKILL);
  if (run.wait_for(std::chrono::seconds(120)) != std::future_status::ready) ADD_FAILURE() << "the run hung";
  return run.get();
}

// With cluster.replication = 2 a device killed while decoding costs a failover, not the
// run: every request completes and the outputs are bit-identical to the same run with no
// failure (the replica holds the same pages; the lost work is sent to it again).
TEST(cluster, a_device_killed_with_replicas_is_failed_over_and_changes_no_output) {
  // Long enough that the run outlives the launcher's 3 s grace for unreported losses.
  auto cfg = small_config({"run.steps=3000", "cluster.replication=2", "run.verify=false"});
  auto clean = run_embedded(cfg, {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  ASSERT_TRUE(clean->failures.empty());
  for (const char* victim_id : {"100", "101"}) {
    SCOPED_TRACE(std::string("device ") + victim_id);
    auto rep = run_killing(cfg, victim_id);
    ASSERT_FALSE(::testing::Test::HasFatalFailure());
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_EQ(rep->completed, 2u);
    EXPECT_TRUE(rep->failures.empty()) << rep->failures.front();
    // The killed child was reaped when it went down: no other node needed killing.
    EXPECT_TRUE(rep->shutdown_events.empty()) << rep->shutdown_events.front();
    ASSERT_EQ(rep->devices_lost.size(), 1u);
    EXPECT_EQ(rep->devices_lost[0], uint32_t(std::stoul(victim_id)));
    EXPECT_EQ(rep->output_digest, clean->output_digest);
    EXPECT_EQ(rep->accuracy_samples, clean->accuracy_samples);
    EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
  }
}

// Back-pressure is not a loss: with inboxes of 8 messages a device refuses sends while it
// is busy; the GPU host holds them and sends them again (before, it failed such a device
// over and, without replicas, lost every request; found by detsim). And a GPU host whose
// own endpoint went down blames no device: the run fails naming the GPU host.
TEST(cluster, back_pressure_is_waited_out_and_a_gpu_host_crash_blames_no_device) {
  auto clean = run_embedded(small_config({"run.steps=12"}), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  auto pressed = run_embedded(small_config({"run.steps=12", "fabric.inbox_depth=8"}), {});
  ASSERT_TRUE(pressed) << pressed.error().to_string();
  EXPECT_EQ(pressed->completed, 2u);
  EXPECT_TRUE(pressed->devices_lost.empty());
  EXPECT_EQ(pressed->output_digest, clean->output_digest);
  auto crashed = run_embedded(small_config({"run.steps=12", "faults.script=crash node=1 step=4 at=send"}), {});
  std::string why = crashed ? (crashed->failures.empty() ? "" : crashed->failures.front()) : crashed.error().message();
  EXPECT_NE(why.find("GPU host"), std::string::npos) << why;
  if (crashed) {
    EXPECT_TRUE(crashed->devices_lost.empty()) << "a device was blamed for the GPU host's crash";
  }
}

// Without replicas, recompute (the default): a device process killed while decoding costs a
// rebuild of the shards it held, from their prompts, on the survivors (one pool of four
// devices: each holds another shard of the same request too), not a request: every request
// completes with the outputs of a run without the loss, and no process is left.
TEST(cluster, a_device_killed_without_replicas_is_recomputed_and_changes_no_output) {
  auto cfg = small_config({"run.steps=3000", "run.verify=false"});
  auto clean = run_embedded(cfg, {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  auto rep = run_killing(cfg, "101");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->completed, 2u);
  EXPECT_TRUE(rep->failures.empty()) << rep->failures.front();
  EXPECT_EQ(rep->devices_lost, std::vector<uint32_t>{101});
  EXPECT_EQ(rep->output_digest, clean->output_digest);
  ASSERT_FALSE(rep->rebuilds.empty());
  for (const auto& b : rep->rebuilds) {
    EXPECT_EQ(b.kind, "recompute");
    EXPECT_EQ(b.outcome, "done");
    EXPECT_GT(b.tokens, 0u);
    EXPECT_NE(b.target, 101u);
  }
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
}

// A scripted crash (faults.script "crash node=101 step=5") in the embedded cluster: with
// replicas, or without them by recompute, the run completes with the outputs of a run
// without it; with neither, it fails at once naming the device.
TEST(cluster, a_scripted_device_crash_is_failed_over_with_replicas_recomputed_without_and_fails_with_neither) {
  auto clean = run_embedded(small_config({"run.steps=12", "cluster.replication=2"}), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  // Devices that hold only replicas answer no query; their write acks still put them in
  // the report's device table, holding bytes.
  ASSERT_EQ(clean->device_ids.size(), 4u);
  for (uint64_t held : clean->device_bytes_held) EXPECT_GT(held, 0u);
  auto crashed = run_embedded(
      small_config({"run.steps=12", "cluster.replication=2", "faults.script=crash node=101 step=5"}), {});
  ASSERT_TRUE(crashed) << crashed.error().to_string();
  EXPECT_EQ(crashed->completed, 2u);
  EXPECT_TRUE(crashed->failures.empty()) << crashed->failures.front();
  ASSERT_EQ(crashed->devices_lost, std::vector<uint32_t>{101});
  EXPECT_EQ(crashed->output_digest, clean->output_digest);
  EXPECT_EQ(crashed->accuracy_samples, clean->accuracy_samples);
  // Without replicas the lost shards are recomputed from their prompts (cluster.recompute,
  // the default) on the survivors, which hold other shards of the same requests: nothing
  // changes. With recompute off the run fails at once, naming the device.
  auto clean1 = run_embedded(small_config({"run.steps=12"}), {});
  ASSERT_TRUE(clean1) << clean1.error().to_string();
  auto recomputed = run_embedded(small_config({"run.steps=12", "faults.script=crash node=101 step=5"}), {});
  ASSERT_TRUE(recomputed) << recomputed.error().to_string();
  EXPECT_EQ(recomputed->completed, 2u);
  EXPECT_TRUE(recomputed->failures.empty()) << recomputed->failures.front();
  EXPECT_EQ(recomputed->output_digest, clean1->output_digest);
  EXPECT_FALSE(recomputed->rebuilds.empty());
  for (const auto& b : recomputed->rebuilds) {
    EXPECT_EQ(b.kind, "recompute");
    EXPECT_EQ(b.outcome, "done");
  }
  auto unreplicated = run_embedded(
      small_config({"run.steps=12", "cluster.recompute=false", "faults.script=crash node=101 step=5"}), {});
  ASSERT_TRUE(unreplicated) << unreplicated.error().to_string();
  EXPECT_EQ(unreplicated->completed, 0u);
  bool named = false;
  for (const auto& f : unreplicated->failures) named = named || f.find("device 101 went down") != std::string::npos;
  EXPECT_TRUE(named);
}

// gpu-only: the devices hold nothing and are sent nothing, so a device process killed while
// decoding (no replicas) costs nothing: every request completes with the outputs of a run
// without the loss. (A scripted fault cannot do it: no data-plane message reaches a device.)
TEST(cluster, gpu_only_survives_a_killed_device_unchanged) {
  auto cfg = small_config({"run.mode=gpu-only", "run.steps=3000", "run.verify=false"});
  auto clean = run_embedded(cfg, {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  auto rep = run_killing(cfg, "101");
  ASSERT_FALSE(::testing::Test::HasFatalFailure());
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->completed, 2u);
  EXPECT_TRUE(rep->failures.empty()) << rep->failures.front();
  EXPECT_TRUE(rep->shutdown_events.empty()) << rep->shutdown_events.front();
  EXPECT_EQ(rep->output_digest, clean->output_digest);
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
}

// A lossy fabric (2% of every kind of data-plane message dropped, prefill writes, acks,
// appends, queries and replies alike): with run.retry_after_ms the unanswered work is sent
// again and the outputs equal those of a clean run; without, the run fails at the step
// deadline naming it.
TEST(cluster, lost_messages_are_retried_and_change_no_output) {
  auto clean = run_embedded(small_config({"run.steps=12"}), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  for (const char* drops : {"drop p=0.02", "drop p=0.1 msg=prefill_write,write_ack",
                            "drop p=0.1 msg=token_append,query,partial"}) {
    SCOPED_TRACE(drops);
    auto lossy = run_embedded(small_config({"run.steps=12", "run.retry_after_ms=50",
                                            std::string("faults.script=") + drops}),
                              {});
    ASSERT_TRUE(lossy) << lossy.error().to_string();
    EXPECT_EQ(lossy->completed, 2u);
    EXPECT_TRUE(lossy->failures.empty()) << lossy->failures.front();
    EXPECT_GT(lossy->retries, 0u) << "nothing was lost: the test proves nothing";
    EXPECT_EQ(lossy->output_digest, clean->output_digest);
    EXPECT_EQ(lossy->accuracy_samples, clean->accuracy_samples);
  }
  auto no_retry = run_embedded(
      small_config({"run.steps=12", "run.step_timeout_ms=1500", "faults.script=drop p=0.1 msg=partial"}), {});
  ASSERT_TRUE(no_retry) << no_retry.error().to_string();
  EXPECT_EQ(no_retry->completed, 0u);
  ASSERT_FALSE(no_retry->failures.empty());
  EXPECT_NE(no_retry->failures.back().find("run.step_timeout_ms"), std::string::npos) << no_retry->failures.back();
}

// A cluster started by hand (`pnmkv node` processes with a config file and a secret file,
// as a script or a container orchestrator would) is driven with `pnmkv run --attach`: same
// outputs as the embedded run of the same config, and the nodes exit after the run. The
// driver proves the secret like a node: without it, or with another, nothing is driven.
TEST(cluster, a_cluster_started_by_hand_is_driven_by_attach) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-attach-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string secret = (dir / "secret").string();
  std::ofstream(secret) << "0123456789abcdef0123456789abcdef";
  fs::permissions(secret, fs::perms::owner_read | fs::perms::owner_write);
  // A free port: bind to 0, read it, release it.
  auto cfg = small_config({"fabric.cluster_secret_file=" + secret, "cluster.coordinator_port=0"});
  const std::string cfg_file = (dir / "cluster.yaml").string();
  std::ofstream(cfg_file) << cfg.to_yaml();
  const std::string port_file = (dir / "port").string();
  std::vector<pid_t> nodes;
  std::vector<node_start> starting;
  // Each node logs to a file and signals when it is up, so a node that does not start fails
  // the test within the start-up deadline, with its log, instead of the run hanging.
  auto spawn = [&](std::vector<std::string> args, const std::string& name) {
    const std::string log = (dir / (name + ".log")).string(), ready = (dir / (name + ".ready")).string();
    const bool coordinator = args[2] == "coordinator";
    if (!coordinator) args.insert(args.end(), {"--ready-file", ready});
    args.insert(args.begin(), PNMKV_BINARY);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid = 0;
    EXPECT_EQ(posix_spawn(&pid, PNMKV_BINARY, &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    nodes.push_back(pid);
    starting.push_back({name, pid, coordinator ? port_file : ready, log});
  };
  auto kill_nodes = [&] {
    for (pid_t pid : nodes) {
      int st = 0;
      if (pid <= 0) continue;  // posix_spawn failed (already reported); kill(0) is our own group
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
    }
  };
  const std::chrono::milliseconds startup_timeout(cfg.get_int("cluster.startup_timeout_ms"));
  spawn({"node", "--role", "coordinator", "--config", cfg_file, "--port-file", port_file}, "coordinator");
  if (status s = await_nodes_up(starting, startup_timeout); !s) {
    kill_nodes();
    FAIL() << s.to_string();
  }
  unsigned port = 0;
  std::ifstream(port_file) >> port;
  ASSERT_NE(port, 0u) << "the coordinator's port file holds no port";
  const std::string at = "127.0.0.1:" + std::to_string(port);
  spawn({"node", "--role", "gpu-host", "--config", cfg_file, "--coordinator", at}, "gpu-host");
  for (const char* id : {"100", "101", "102", "103"})
    spawn({"node", "--role", "pnm-device", "--id", id, "--config", cfg_file, "--coordinator", at},
          std::string("device-") + id);
  if (status s = await_nodes_up(starting, startup_timeout); !s) {
    kill_nodes();
    FAIL() << s.to_string();
  }
  // Nobody drives the cluster without the secret. A SHUTDOWN sent straight to the
  // coordinator by a sender that never joined is ignored (the cluster still serves the run
  // below)...
  {
    caf::actor_system_config acfg;
    acfg.load<caf::io::middleman>();
    acfg.set("logger.console", caf::atom("none"));
    caf::actor_system sys{acfg};
    auto coord = sys.middleman().remote_actor("127.0.0.1", uint16_t(port));
    ASSERT_TRUE(coord) << sys.render(coord.error());
    control::outbound out(driver_node);
    out.body().setShutdown();
    caf::anon_send(*coord, actors::ctl_atom::value, actors::wire_string(out));
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  // ... a driver with another secret is refused, naming why ...
  const std::string wrong = (dir / "wrong-secret").string();
  std::ofstream(wrong) << "fedcba9876543210fedcba9876543210";
  auto wrong_cfg = cfg;
  ASSERT_TRUE(wrong_cfg.set("fabric.cluster_secret_file", wrong));
  auto refused = run_attached(wrong_cfg, {}, "127.0.0.1", uint16_t(port));
  ASSERT_FALSE(refused) << "a driver with the wrong secret drove the cluster";
  EXPECT_NE(refused.error().message().find("refused this driver's join"), std::string::npos)
      << refused.error().to_string();
  // ... and one with no secret at all is stopped before it connects.
  auto no_secret_cfg = cfg;
  ASSERT_TRUE(no_secret_cfg.set("fabric.cluster_secret_file", ""));
  auto no_secret = run_attached(no_secret_cfg, {}, "127.0.0.1", uint16_t(port));
  ASSERT_FALSE(no_secret);
  EXPECT_NE(no_secret.error().message().find("--attach"), std::string::npos) << no_secret.error().to_string();
  auto attached = run_attached(cfg, {}, "127.0.0.1", uint16_t(port));
  auto embedded = run_embedded(small_config(), {});
  // Every node exits once the run is over (the driver shuts the cluster down).
  bool all_exited = true;
  for (pid_t pid : nodes) {
    int st = 0;
    bool exited = false;
    for (int i = 0; i < 500 && !exited; ++i) {
      exited = waitpid(pid, &st, WNOHANG) == pid;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    if (!exited) {
      all_exited = false;
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
    }
  }
  fs::remove_all(dir);
  ASSERT_TRUE(attached) << attached.error().to_string();
  ASSERT_TRUE(embedded) << embedded.error().to_string();
  EXPECT_EQ(attached->completed, 2u);
  EXPECT_EQ(attached->output_digest, embedded->output_digest);
  EXPECT_TRUE(all_exited) << "nodes still running after the run";
}

// No silent start-up hangs: a node process that never comes up (here a GPU host that only
// prints a diagnostic and sleeps) fails the run within cluster.startup_timeout_ms, naming
// the node and quoting its log, and no process is left behind.
TEST(cluster, a_node_that_never_starts_fails_the_run_within_the_startup_deadline_with_its_log) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-startup-" + std::to_string(getpid()));
  fs::create_directories(dir);
  const std::string wrapper = (dir / "pnmkv-wrapper").string();
  std::ofstream(wrapper) << "#!/bin/sh\n"
                            "if [ \"$3\" = gpu-host ]; then echo some diagnostics >&2; exec sleep 60; fi\n"
                            "exec " PNMKV_BINARY " \"$@\"\n";
  fs::permissions(wrapper, fs::perms::owner_all);
  multiprocess_options mp;
  mp.node_binary = wrapper;
  mp.work_dir = (dir / "work").string();
  const auto t0 = std::chrono::steady_clock::now();
  auto rep = run_multiprocess(small_config({"cluster.startup_timeout_ms=4000"}), {}, mp);
  const auto waited = std::chrono::steady_clock::now() - t0;
  fs::remove_all(dir);
  ASSERT_FALSE(rep) << "the run went ahead without its GPU host";
  const std::string msg = rep.error().message();
  EXPECT_EQ(rep.error().code(), errc::timeout) << msg;
  EXPECT_NE(msg.find("gpu-host"), std::string::npos) << msg;
  EXPECT_NE(msg.find("some diagnostics"), std::string::npos) << msg;
  EXPECT_NE(msg.find("cluster.startup_timeout_ms"), std::string::npos) << msg;
  EXPECT_LT(waited, std::chrono::seconds(20)) << "the start-up deadline was not kept";
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
}

TEST(cluster, bad_config_is_a_clear_error) {
  auto cfg = small_config({"cluster.live_layers=99"});
  auto rep = run_embedded(cfg, {});
  ASSERT_FALSE(rep);
  EXPECT_NE(rep.error().message().find("cluster.live_layers"), std::string::npos);
  auto cfg2 = small_config({"selection.budget_tokens=16"});
  auto rep2 = run_embedded(cfg2, {});
  ASSERT_FALSE(rep2);
  EXPECT_NE(rep2.error().message().find("always-kept"), std::string::npos);
}

}  // namespace
}  // namespace pnmkv
