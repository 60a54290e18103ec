// Recovery without losing a request (issue 13), on the whole cluster:
//  - re-replication and recompute (the defaults): two failures in sequence with r = 2, the
//    second taking the first's replica, and one failure with r = 1 complete every request
//    with the outputs of a run without failures (per-request digests and the run's);
//  - with them off, when every copy of one of a request's shards is gone, that request
//    alone fails, with the reason, and every other request completes with its outputs;
//  - a device that was failed over is fenced: its late messages are counted and dropped,
//    and it is told to leave (a stalled device in one process, a SIGSTOPped and SIGCONTed
//    device process in a multi-process cluster);
//  - SIGINT or SIGTERM to `pnmkv run --multiprocess` (SIGINT ignored by its shell, as in a
//    script's background job) stops the cluster, leaves no process and prints what finished.
#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "actors/cluster.hpp"
#include "actors/control.hpp"
#include "actors/coordinator.hpp"
#include "actors/node_main.hpp"
#include "transport/journal.hpp"
#include "tests/cluster/processes.hpp"

namespace pnmkv {
namespace {

namespace fs = std::filesystem;
const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

// Two requests of 8K tokens, a small budget (the cluster tests' size).
std::vector<std::string> small_sets(std::vector<std::string> extra) {
  std::vector<std::string> sets = {"workload.context_tokens=8192", "workload.batch=2", "selection.budget_tokens=512",
                                   "run.step_timeout_ms=30000"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  if (const char* seed = std::getenv("PNMKV_TEST_SEED")) sets.push_back(std::string("run.seed=") + seed);
  return sets;
}

config small_config(std::vector<std::string> extra) {
  auto c = load_config(default_file, small_sets(std::move(extra)));
  EXPECT_TRUE(c) << c.error().to_string();
  return *c;
}

std::map<uint64_t, uint64_t> digests(const run_report& r) {
  return std::map<uint64_t, uint64_t>(r.request_digests.begin(), r.request_digests.end());
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += s + "\n";
  return out;
}

// Two pools of four devices with r = 2: request 1 on 100..103 (shard 0 on 100, its copy on
// 102), request 2 on 104..107. 100 dies at step 3 (request 1 fails over to 102), 104 at
// step 4 (request 2 fails over), then 102 at step 6: the second failure of request 1's
// shard takes the first's replica. Request 1 alone fails, naming the device and the shard;
// request 2 completes with the outputs of the run without failures.
TEST(recovery, two_failures_in_sequence_lose_only_the_request_whose_every_copy_went) {
  const std::vector<std::string> shape = {"run.steps=12", "cluster.pnm_devices=8", "cluster.pool_devices=4",
                                          "cluster.replication=2", "cluster.rereplicate=false",
                                          "cluster.recompute=false"};
  auto clean = run_embedded(small_config(shape), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  ASSERT_EQ(clean->completed, 2u);
  ASSERT_EQ(digests(*clean).size(), 2u);
  auto with = shape;
  with.push_back("faults.script=crash node=100 step=3; crash node=104 step=4; crash node=102 step=6");
  auto rep = run_embedded(small_config(with), {});
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->devices_lost, (std::vector<uint32_t>{100, 102, 104}));
  EXPECT_EQ(rep->submitted, 2u);
  EXPECT_EQ(rep->completed, 1u);
  EXPECT_EQ(rep->failed, 1u);
  ASSERT_EQ(rep->failures.size(), 1u) << joined(rep->failures);
  const std::string& why = rep->failures[0];
  EXPECT_EQ(why.rfind("request 1: ", 0), 0u) << why;
  EXPECT_NE(why.find("device 102 held the last copy of shard 0 of request 1"), std::string::npos) << why;
  const auto d = digests(*rep);
  ASSERT_EQ(d.size(), 1u) << "only request 2 completed";
  EXPECT_EQ(d.at(2), digests(*clean).at(2)) << "request 2's outputs changed";
  EXPECT_EQ(rep->steps_done, 12u);
}

// Replication 1, two pools of two devices: a closed batch puts request 1 on 100 and 101 and
// request 2 on 102 and 103; an open workload spreads four requests over both pools as they
// come. Device 101 dies at step 5: the requests with a shard on it fail, naming it; the
// others (placed elsewhere, or placed later, after the coordinator fenced 101) complete
// with their outputs of the run without the failure.
TEST(recovery, one_loss_without_replicas_fails_only_the_requests_on_that_device) {
  const std::vector<std::vector<std::string>> workloads = {
      {"run.steps=12"},
      {"workload.arrivals=poisson", "workload.requests=4", "workload.arrival_rate_per_s=100",
       "workload.output_tokens=8", "workload.context_tokens=4096", "workload.prefill_chunk_tokens=2048"}};
  for (const auto& workload : workloads) {
    SCOPED_TRACE(workload.front());
    auto shape = workload;
    shape.insert(shape.end(), {"cluster.pool_devices=2", "cluster.replication=1", "cluster.recompute=false"});
    auto clean = run_embedded(small_config(shape), {});
    ASSERT_TRUE(clean) << clean.error().to_string();
    ASSERT_EQ(clean->completed, clean->submitted);
    shape.push_back("faults.script=crash node=101 step=5");
    auto rep = run_embedded(small_config(shape), {});
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_EQ(rep->devices_lost, std::vector<uint32_t>{101});
    EXPECT_GE(rep->failed, 1u) << "device 101 held a shard of a running request";
    EXPECT_GE(rep->completed, 1u) << "requests on the other pool were lost too";
    EXPECT_EQ(rep->completed + rep->failed, rep->submitted);
    ASSERT_EQ(rep->failures.size(), rep->failed) << joined(rep->failures);
    for (const auto& f : rep->failures) {
      EXPECT_NE(f.find("device 101 went down"), std::string::npos) << f;
      EXPECT_NE(f.find("device 101 held the last copy"), std::string::npos) << f;
    }
    const auto want = digests(*clean);
    const auto got = digests(*rep);
    EXPECT_EQ(got.size(), rep->completed);
    for (const auto& [id, digest] : got) EXPECT_EQ(digest, want.at(id)) << "request " << id << "'s outputs changed";
  }
}

// The same two pools of four devices with r = 2, re-replication on. Without recompute: 100
// dies at step 3, its shard is copied from 102 to a device of the other pool (which holds
// nothing of request 1) while decoding goes on; 102 dies at step 9, after the copy: the
// new copy serves, and every request completes with the clean outputs. With recompute
// too, the failures of the test above (the second one before the copy may have finished)
// lose nothing either.
TEST(recovery, two_failures_in_sequence_with_r2_complete_with_the_clean_digest) {
  const std::vector<std::string> shape = {"run.steps=12", "cluster.pnm_devices=8", "cluster.pool_devices=4",
                                          "cluster.replication=2"};
  auto clean = run_embedded(small_config(shape), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  ASSERT_EQ(clean->completed, 2u);
  struct scenario {
    std::string faults;
    bool recompute;
  };
  for (const scenario& sc : {scenario{"crash node=100 step=3; crash node=102 step=9", false},
                             scenario{"crash node=100 step=3; crash node=104 step=4; crash node=102 step=6", true}}) {
    SCOPED_TRACE(sc.faults);
    auto with = shape;
    with.push_back("faults.script=" + sc.faults);
    with.push_back(std::string("cluster.recompute=") + (sc.recompute ? "true" : "false"));
    auto rep = run_embedded(small_config(with), {});
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_EQ(rep->completed, 2u);
    EXPECT_TRUE(rep->failures.empty()) << joined(rep->failures);
    EXPECT_EQ(digests(*rep), digests(*clean));
    EXPECT_EQ(rep->output_digest, clean->output_digest);
    EXPECT_EQ(rep->steps_done, 12u);
    // Request 1's shard 0 was copied from 102 (its replica, primary after 100 went) before
    // 102 went too. A copy started by the last failure may still be under way at the end.
    bool copied = false;
    for (const auto& b : rep->rebuilds) {
      SCOPED_TRACE("shard " + std::to_string(b.shard_id) + " of request " + std::to_string(b.request_id));
      EXPECT_TRUE(b.outcome == "done" || b.outcome == "unfinished when the run ended") << b.outcome;
      if (b.outcome != "done") continue;
      EXPECT_GT(b.bytes, 0u);
      EXPECT_GT(b.stall_ms, 0.0);
      EXPECT_NE(b.target, 0u);
      copied = copied || (b.kind == "re-replicate" && b.request_id == 1 && b.shard_id == 0 && b.source == 102);
      if (!sc.recompute) {
        EXPECT_EQ(b.kind, "re-replicate");
      }
    }
    if (!sc.recompute) {
      EXPECT_TRUE(copied);
    }
    EXPECT_GT(rep->recovery_stall_ms, 0.0);
  }
}

// Replication 1 with recompute (the default): device 101 dies at step 5 and every shard it
// held is rebuilt from its prompt on a device of the other pool; decoding resumes and every
// request completes with the clean outputs, in a closed batch and in an open workload.
TEST(recovery, one_loss_with_r1_is_recomputed_and_every_request_completes) {
  const std::vector<std::vector<std::string>> workloads = {
      {"run.steps=12"},
      {"workload.arrivals=poisson", "workload.requests=4", "workload.arrival_rate_per_s=100",
       "workload.output_tokens=8", "workload.context_tokens=4096", "workload.prefill_chunk_tokens=2048"}};
  for (const auto& workload : workloads) {
    SCOPED_TRACE(workload.front());
    auto shape = workload;
    shape.insert(shape.end(), {"cluster.pool_devices=2", "cluster.replication=1"});
    auto clean = run_embedded(small_config(shape), {});
    ASSERT_TRUE(clean) << clean.error().to_string();
    ASSERT_EQ(clean->completed, clean->submitted);
    shape.push_back("faults.script=crash node=101 step=5");
    auto rep = run_embedded(small_config(shape), {});
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_EQ(rep->devices_lost, std::vector<uint32_t>{101});
    EXPECT_EQ(rep->completed, rep->submitted);
    EXPECT_TRUE(rep->failures.empty()) << joined(rep->failures);
    EXPECT_EQ(digests(*rep), digests(*clean));
    uint64_t tokens = 0;
    for (const auto& b : rep->rebuilds) {
      EXPECT_EQ(b.kind, "recompute");
      EXPECT_EQ(b.outcome, "done");
      EXPECT_NE(b.target, 101u);
      EXPECT_NE(b.target, 0u);
      tokens += b.tokens;
    }
    EXPECT_GT(tokens, 0u) << "device 101 held a shard of a running request";
    EXPECT_GT(rep->recovery_stall_ms, 0.0);
  }
}

// In one process: device 100 (primary of shard 0, its copy on 102) stalls at step 3 for
// 2.5 s, holding what it receives and sends. The GPU host finds it silent past
// cluster.device_timeout_ms, fails it over and fences it. When the stall ends the device
// answers the queries it held: those late partials are counted and dropped, never taken
// for the replica's; the device then reads its fence notice and leaves. Outputs equal the
// run without the stall. The run is long enough (2000 steps, ~2 ms each here) to outlast
// the stall, so the late messages arrive while it runs.
TEST(recovery, a_stalled_device_is_fenced_and_its_late_messages_are_dropped) {
  const std::vector<std::string> shape = {"run.steps=2000", "run.verify=false", "cluster.replication=2",
                                          "cluster.device_timeout_ms=500"};
  auto clean = run_embedded(small_config(shape), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  ASSERT_EQ(clean->fenced_messages, 0u);
  ASSERT_TRUE(clean->devices_lost.empty()) << "a healthy device was found silent: the test proves nothing";
  auto with = shape;
  with.push_back("faults.script=stall node=100 step=3 ms=2500");
  auto rep = run_embedded(small_config(with), {});
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->completed, 2u);
  EXPECT_TRUE(rep->failures.empty()) << joined(rep->failures);
  EXPECT_EQ(rep->devices_lost, std::vector<uint32_t>{100});
  EXPECT_GE(rep->fenced_messages, 1u) << "the stalled device's late answers never came back";
  EXPECT_EQ(rep->output_digest, clean->output_digest);
  EXPECT_EQ(digests(*rep), digests(*clean));
}

// Many processes: device 101 is frozen (SIGSTOP) in the middle of decoding; the
// coordinator's heartbeats find it gone (cluster.connection_timeout_ms), the GPU host
// fails it over; then it is resumed (SIGCONT). It must not come back as the owner of its
// shards: its late messages are dropped (counted), it leaves on its own (fence notice, or
// the coordinator's closed connection), and the run completes with the outputs of a run
// without it, leaving no process and killing none.
TEST(recovery, a_frozen_then_resumed_device_process_is_fenced_and_leaves) {
  const std::vector<std::string> shape = {"run.steps=1500", "run.verify=false", "cluster.replication=2"};
  auto clean = run_embedded(small_config(shape), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-frozen-" + std::to_string(getpid()));
  fs::remove_all(dir);
  multiprocess_options mp;
  mp.node_binary = PNMKV_BINARY;
  mp.work_dir = dir.string();
  std::promise<void> begun;
  std::atomic<bool> signalled{false};
  cluster_run_options opts;
  opts.on_progress = [&](const std::string& p, uint64_t done, uint64_t) {
    if (p == "decode" && done >= 3 && !signalled.exchange(true)) begun.set_value();
  };
  const config cfg = small_config(shape);
  auto run = std::async(std::launch::async, [&] { return run_multiprocess(cfg, opts, mp); });
  ASSERT_EQ(begun.get_future().wait_for(std::chrono::seconds(120)), std::future_status::ready);
  auto victim = children_matching("--id 101");
  ASSERT_EQ(victim.size(), 1u);
  kill(victim[0], SIGSTOP);
  // Resumed once the GPU host has failed it over (its log says so), or after 30 s.
  bool failed_over = false;
  for (int i = 0; i < 600 && !failed_over; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream log(dir / "gpu-host.log");
    std::stringstream text;
    text << log.rdbuf();
    failed_over = text.str().find("event=failover device=101") != std::string::npos;
  }
  kill(victim[0], SIGCONT);
  EXPECT_TRUE(failed_over) << "device 101 was never failed over";
  ASSERT_EQ(run.wait_for(std::chrono::seconds(120)), std::future_status::ready) << "the run hung";
  auto rep = run.get();
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->completed, 2u);
  EXPECT_TRUE(rep->failures.empty()) << joined(rep->failures);
  EXPECT_EQ(rep->devices_lost, std::vector<uint32_t>{101});
  EXPECT_EQ(rep->output_digest, clean->output_digest);
  // Whether its late answers reach the GPU host before it notices it is out is a race of
  // its two threads: counted when they do, never used (the digest above).
  std::printf("late messages from the fenced device: %llu\n", static_cast<unsigned long long>(rep->fenced_messages));
  EXPECT_TRUE(rep->shutdown_events.empty()) << joined(rep->shutdown_events);  // it left: nobody killed it
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
  fs::remove_all(dir);
}

// `pnmkv run --multiprocess` started as a script starts a background job: SIGINT ignored
// (trap "" INT, inherited through exec). SIGINT (then, in a second run, SIGTERM) sent to
// the launcher alone stops the run within seconds: the report of what finished is printed
// (stopped early, the steps done) and written, the exit status is 128 + the signal, the
// node processes were reaped by the launcher (none killed, none left).
TEST(recovery, sigint_or_sigterm_to_the_launcher_stops_the_cluster_and_prints_what_finished) {
  for (int sig : {SIGINT, SIGTERM}) {
    const std::string name = sig == SIGINT ? "SIGINT" : "SIGTERM";
    SCOPED_TRACE(name);
    const fs::path dir = fs::temp_directory_path() / ("pnmkv-stop-" + std::to_string(getpid()) + "-" + name);
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string out = (dir / "stdout").string(), err = (dir / "stderr").string(),
                      json = (dir / "report.json").string();
    std::string cmd = "trap '' INT; exec '" + std::string(PNMKV_BINARY) + "' run --multiprocess --config '" +
                      default_file + "' --work-dir '" + (dir / "work").string() + "' --json '" + json + "'";
    for (const auto& s : small_sets({"run.steps=100000", "run.verify=false"})) cmd += " --set " + s;
    std::vector<std::string> args = {"/bin/sh", "-c", cmd};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    pid_t launcher = 0;
    ASSERT_EQ(posix_spawn(&launcher, "/bin/sh", &fa, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&fa);
    // Decoding (the progress line on stderr), then a moment of it.
    bool decoding = false;
    for (int i = 0; i < 1200 && !decoding && waitpid(launcher, nullptr, WNOHANG) == 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      std::ifstream e(err);
      std::stringstream text;
      text << e.rdbuf();
      decoding = text.str().find("pnmkv run: decode") != std::string::npos;
    }
    std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::vector<pid_t> nodes = children_of(launcher, "node --role");
    EXPECT_EQ(nodes.size(), 6u) << "coordinator, GPU host and four devices";
    kill(launcher, sig);
    int st = 0;
    bool exited = false;
    const auto t0 = std::chrono::steady_clock::now();
    while (!exited && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
      exited = waitpid(launcher, &st, WNOHANG) == launcher;
      if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    if (!exited) {  // the old behaviour: the run went on
      kill(launcher, SIGKILL);
      waitpid(launcher, &st, 0);
    }
    ASSERT_TRUE(decoding) << "the run never reached decode: " << [&] {
      std::stringstream e;
      e << std::ifstream(err).rdbuf();
      return e.str();
    }();
    ASSERT_TRUE(exited) << name << " to the launcher did not stop the run within 30 s";
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 128 + sig) << "status " << st;
    for (pid_t p : nodes) EXPECT_NE(kill(p, 0), 0) << "node process " << p << " left running";
    std::stringstream table;
    table << std::ifstream(out).rdbuf();
    EXPECT_NE(table.str().find("stopped early"), std::string::npos) << table.str();
    EXPECT_NE(table.str().find(name + " to the launcher"), std::string::npos) << table.str();
    std::ifstream in(json);
    const auto j = nlohmann::json::parse(in, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << "no JSON report";
    EXPECT_EQ(j["requests"].value("stopped", std::string()), name + " to the launcher");
    EXPECT_GT(j["requests"].value("steps_done", uint64_t(0)), 0u) << "a second of decoding did no step";
    EXPECT_EQ(j["requests"].value("completed", uint64_t(1)), 0u);
    EXPECT_TRUE(j["faults"]["shutdown_events"].empty()) << j["faults"]["shutdown_events"].dump();
    fs::remove_all(dir);
  }
}

}  // namespace
}  // namespace pnmkv

namespace pnmkv {
namespace {

// Coordinator restart (issue 13 item 5): `crash node=0 step=N` makes the launcher SIGKILL the
// coordinator process when the run reports step N; it restarts it on the same port from its
// journal, the nodes and the driver join it again, and the run completes with the outputs
// of a run without the kill: a closed batch killed twice (during decode), an open workload
// (between admissions), and a kill right after a device crash whose shards are being
// recomputed. The journal reads back whole and starts with the run's identity.
TEST(recovery, a_coordinator_killed_mid_run_resumes_from_its_journal_and_changes_no_output) {
  struct scenario {
    std::vector<std::string> shape;
    std::string faults;
    uint32_t restarts;
    bool device_lost;
  };
  const std::vector<scenario> scenarios = {
      // Long enough (200 steps of 8K tokens) that the second kill lands after the first
      // restart has been joined: progress reaches the launcher through the coordinator.
      {{"run.steps=200", "run.verify=false"}, "crash node=0 step=2; crash node=0 step=120", 2, false},
      {{"workload.arrivals=poisson", "workload.requests=4", "workload.arrival_rate_per_s=100",
        "workload.output_tokens=8", "workload.context_tokens=4096", "workload.prefill_chunk_tokens=2048"},
       "crash node=0 step=1",
       1,
       false},
      {{"run.steps=16", "cluster.pool_devices=2"}, "crash node=101 step=5; crash node=0 step=6", 1, true},
  };
  for (const auto& sc : scenarios) {
    SCOPED_TRACE(sc.faults + " on " + sc.shape.front());
    auto clean = run_embedded(small_config(sc.shape), {});
    ASSERT_TRUE(clean) << clean.error().to_string();
    ASSERT_EQ(clean->completed, clean->submitted);
    auto shape = sc.shape;
    shape.push_back("faults.script=" + sc.faults);
    const fs::path dir = fs::temp_directory_path() / ("pnmkv-restart-" + std::to_string(::getpid()));
    fs::remove_all(dir);
    multiprocess_options mp;
    mp.node_binary = PNMKV_BINARY;
    mp.work_dir = dir.string();
    auto rep = run_multiprocess(small_config(shape), {}, mp);
    ASSERT_TRUE(rep) << rep.error().to_string();
    EXPECT_EQ(rep->coordinator_restarts, sc.restarts);
    EXPECT_EQ(rep->completed, rep->submitted);
    EXPECT_TRUE(rep->failures.empty()) << joined(rep->failures);
    EXPECT_EQ(digests(*rep), digests(*clean));
    EXPECT_EQ(rep->output_digest, clean->output_digest);
    if (sc.device_lost) {
      EXPECT_EQ(rep->devices_lost, std::vector<uint32_t>{101});
      ASSERT_FALSE(rep->rebuilds.empty());
      for (const auto& b : rep->rebuilds) EXPECT_EQ(b.outcome, "done");
    }
    // The journal: whole records (no torn tail after clean restarts), the first the run's
    // identity, every member's join and the admissions in it.
    auto j = transport::read_journal((dir / "coordinator.journal").string());
    ASSERT_TRUE(j) << j.error().to_string();
    ASSERT_FALSE(j->records.empty());
    std::map<control::journal_kind, size_t> kinds;
    for (auto& r : j->records) {
      auto e = control::decode_journal_record(std::move(r));
      ASSERT_TRUE(e) << e.error().to_string();
      if (kinds.empty()) {
        EXPECT_EQ(e->kind(), control::journal_kind::BEGIN);
      }
      ++kinds[e->kind()];
    }
    EXPECT_EQ(kinds[control::journal_kind::BEGIN], 1u);
    EXPECT_EQ(kinds[control::journal_kind::MEMBER], 5u);  // the GPU host and 4 devices, once each
    EXPECT_EQ(kinds[control::journal_kind::READY], 1u);
    EXPECT_GE(kinds[control::journal_kind::DECIDED], 1u);
    EXPECT_EQ(kinds[control::journal_kind::RUN_STARTED], 1u);
    if (sc.device_lost) {
      EXPECT_GE(kinds[control::journal_kind::FENCED], 1u);
    }
    EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
    fs::remove_all(dir);
  }
}

// A coordinator killed during start-up (listening, the other nodes still connecting) is
// restarted as well: the nodes retry their first connection, join the restarted one (which
// replays whatever joins it had journaled) and the run has the outputs of a run without it.
TEST(recovery, a_coordinator_killed_during_start_up_is_restarted_and_changes_no_output) {
  auto clean = run_embedded(small_config({"run.steps=8"}), {});
  ASSERT_TRUE(clean) << clean.error().to_string();
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-restart-up-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  multiprocess_options mp;
  mp.node_binary = PNMKV_BINARY;
  mp.work_dir = dir.string();
  auto run = std::async(std::launch::async, [&] { return run_multiprocess(small_config({"run.steps=8"}), {}, mp); });
  bool killed = false;
  for (int i = 0; i < 2000 && !killed; ++i) {
    if (fs::exists(dir / "coordinator.port"))
      for (pid_t pid : children_matching("--role coordinator")) killed = ::kill(pid, SIGKILL) == 0;
    if (!killed) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  auto rep = run.get();
  ASSERT_TRUE(killed) << "the coordinator was never seen";
  ASSERT_TRUE(rep) << rep.error().to_string();
  EXPECT_EQ(rep->coordinator_restarts, 1u);
  EXPECT_EQ(rep->completed, rep->submitted);
  EXPECT_EQ(digests(*rep), digests(*clean));
  EXPECT_TRUE(children_matching("pnmkv").empty()) << "node processes left behind";
  fs::remove_all(dir);
}

// A journal a coordinator cannot trust stops it before it serves anything, naming why: not
// a journal, corrupt before its end, or written for another configuration. A crash of node
// 0 in the embedded cluster (which has no coordinator process) is refused the same way.
TEST(recovery, a_journal_that_cannot_be_trusted_stops_the_coordinator_naming_why) {
  const fs::path dir = fs::temp_directory_path() / ("pnmkv-journal-bad-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string path = (dir / "coordinator.journal").string();
  const std::string secret = (dir / "cluster.secret").string();
  std::ofstream(secret) << "0123456789abcdef0123456789abcdef";
  auto start = [&](std::vector<std::string> extra) {
    extra.push_back("cluster.journal_file=" + path);
    extra.push_back("fabric.cluster_secret_file=" + secret);
    node_options opts;
    opts.role = transport::node_role::coordinator;
    return run_node(small_config(extra), opts);
  };
  std::ofstream(path) << "this is not a journal at all";
  auto st = start({});
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("not a pnmkv journal"), std::string::npos) << st.message();
  // A journal of another configuration: written by a coordinator of 4 devices, read by one
  // of 8.
  fs::remove(path);
  {
    auto j = actors::open_coordinator_journal(path);
    ASSERT_TRUE(j) << j.error().to_string();
    control::journal_outbound out;
    auto b = out.body().initBegin();
    b.setConfigHash(actors::journal_config_hash(
        small_config({"cluster.journal_file=" + path, "fabric.cluster_secret_file=" + secret})));
    b.setDevices(4);
    ASSERT_TRUE((*j)->writer->append(out.finish(), true));
  }
  st = start({"cluster.pnm_devices=8"});
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("another configuration"), std::string::npos) << st.message();
  // Corrupt before the end: a flipped byte in the first of two records.
  {
    auto j = actors::open_coordinator_journal(path);
    ASSERT_TRUE(j);
    control::journal_outbound out;
    out.body().setReady();
    ASSERT_TRUE((*j)->writer->append(out.finish(), true));
  }
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(static_cast<std::streamoff>(transport::journal_header_bytes + 12));
    f.put('\x5a');
  }
  st = start({});
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("CRC32C"), std::string::npos) << st.message();
  auto embedded = run_embedded(small_config({"run.steps=4", "faults.script=crash node=0 step=2"}), {});
  ASSERT_FALSE(embedded);
  EXPECT_NE(embedded.error().message().find("--multiprocess"), std::string::npos) << embedded.error().message();
  fs::remove_all(dir);
}

}  // namespace
}  // namespace pnmkv
