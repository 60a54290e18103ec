// Deterministic fault simulation (issue 13, item 7; actors/detsim.hpp): the embedded cluster
// on one thread and a virtual clock, a seed fixing every interleaving, every timer and every
// fault.
//  - The sweep: 1000 seeds of random fault schedules (crash, hang, partition, message loss,
//    duplication, delay, corruption; pnm-kv, png-kv and baseline; contiguous and
//    interleaved shards; fp32 and bf16 queries and partial outputs) on a small config, every invariant checked with --strict. A
//    failing seed is printed with its schedule and replays alone:
//      PNMKV_DETSIM_SEED=N ctest -R detsim.sweep --output-on-failure
//      build/pnmkv detsim --seed N --strict
//    (PNMKV_DETSIM_SEEDS=A..B sweeps other seeds.)
//  - A seed replays event for event; the device timeout runs on the virtual clock.
//  - DISABLED_ reproducers of open bugs in the GPU host (README, "Deterministic fault
//    simulation"): run them with --gtest_also_run_disabled_tests.
#include <gtest/gtest.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "actors/cluster.hpp"
#include "actors/detsim.hpp"

namespace pnmkv {
namespace {

const std::string default_file = std::string(PNMKV_SOURCE_DIR) + "/cluster_configs/default.yaml";

config detsim_config(std::vector<std::string> extra = {}) {
  auto sets = detsim_base_sets();
  sets.insert(sets.end(), extra.begin(), extra.end());
  auto c = load_config(default_file, sets);
  EXPECT_TRUE(c) << c.error().to_string();
  return *c;
}

std::string joined(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += s + "\n";
  return out;
}

bool parse_range(const std::string& s, uint64_t& a, uint64_t& b) {
  const auto dots = s.find("..");
  if (dots == std::string::npos) return false;
  a = std::strtoull(s.substr(0, dots).c_str(), nullptr, 10);
  b = std::strtoull(s.substr(dots + 2).c_str(), nullptr, 10);
  return a >= 1 && a <= b;
}

TEST(detsim, sweep_of_1000_seeds_holds_every_invariant) {
  detsim_sweep_options so;
  so.first_seed = 1;
  so.last_seed = 1000;
  so.strict = true;
  bool one = false;
  if (const char* r = std::getenv("PNMKV_DETSIM_SEEDS")) {
    ASSERT_TRUE(parse_range(r, so.first_seed, so.last_seed)) << "PNMKV_DETSIM_SEEDS=" << r << ": want A..B";
  }
  if (const char* s = std::getenv("PNMKV_DETSIM_SEED")) {
    so.first_seed = so.last_seed = std::strtoull(s, nullptr, 10);
    ASSERT_GE(so.first_seed, 1u) << "PNMKV_DETSIM_SEED=" << s;
    so.quiet = false;  // one seed: the nodes' own log lines too
    one = true;
  }
  so.replay_hint = "PNMKV_DETSIM_SEED={} ctest -R detsim.sweep --output-on-failure   (or: build/pnmkv detsim --seed {} --strict)";
  std::vector<std::string> failures;
  so.log = [&](const std::string& s) {
    failures.push_back(s);
    std::fprintf(stderr, "%s\n", s.c_str());
  };
  auto res = detsim_sweep(detsim_config(), so);
  ASSERT_TRUE(res) << res.error().to_string();
  EXPECT_EQ(res->seeds, so.last_seed - so.first_seed + 1);
  EXPECT_TRUE(res->failed.empty()) << res->failed.size() << " of " << res->seeds << " seeds failed:\n" << joined(failures);
  std::fprintf(stderr, "detsim: %llu seeds in %.1f s, %llu events, %llu fault rules, %llu devices lost, %llu requests failed with a reason\n",
               static_cast<unsigned long long>(res->seeds), res->wall_s, static_cast<unsigned long long>(res->events),
               static_cast<unsigned long long>(res->faults_injected), static_cast<unsigned long long>(res->devices_lost),
               static_cast<unsigned long long>(res->requests_failed));
  if (!one && res->seeds >= 100) {
    // Not vacuous: the schedules strike devices, and some strike every copy of a shard.
    EXPECT_GT(res->devices_lost, res->seeds / 10);
    EXPECT_GT(res->faults_injected, res->seeds);
  }
}

// The same seed is the same run: every pick, every timer jump, every fault, the same report.
// Lookahead selection under the same fault schedules (pnm-kv: its background searches are lost,
// duplicated, delayed and sent again to new primaries like any query): every invariant holds,
// its outputs equal its own clean run's. 200 seeds (~8 s).
TEST(detsim, lookahead_selection_holds_every_invariant_under_faults) {
  detsim_sweep_options so;
  so.first_seed = 1;
  so.last_seed = 200;
  so.strict = true;
  so.fixed_keys = {"run.mode"};  // the variants draw the mode otherwise
  so.replay_hint = "build/pnmkv detsim --seed {} --strict --set selection.lookahead=true --set run.mode=pnm-kv";
  std::vector<std::string> failures;
  so.log = [&](const std::string& s) { failures.push_back(s); };
  auto res = detsim_sweep(detsim_config({"run.mode=pnm-kv", "selection.lookahead=true"}), so);
  ASSERT_TRUE(res) << res.error().to_string();
  EXPECT_EQ(res->seeds, 200u);
  EXPECT_TRUE(res->failed.empty()) << res->failed.size() << " of " << res->seeds << " seeds failed:\n" << joined(failures);
  EXPECT_GT(res->devices_lost, res->seeds / 10);  // not vacuous
}

TEST(detsim, a_seed_replays_event_for_event) {
  const config cfg = detsim_config();
  // A seed with a device lost, so the replay covers a failover.
  detsim_options o;
  for (o.seed = 1; o.seed < 100; ++o.seed) {
    auto probe = run_detsim(cfg, o);
    ASSERT_TRUE(probe) << probe.error().to_string();
    if (!probe->report.device_losses.empty()) break;
  }
  ASSERT_LT(o.seed, 100u) << "no seed in 1..99 lost a device";
  auto a = run_detsim(cfg, o);
  auto b = run_detsim(cfg, o);
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->trace_hash, b->trace_hash);
  EXPECT_EQ(a->events, b->events);
  EXPECT_EQ(a->virtual_ms, b->virtual_ms);
  EXPECT_EQ(a->schedule.script(), b->schedule.script());
  EXPECT_EQ(a->report.request_digests, b->report.request_digests);
  EXPECT_EQ(a->report.failures, b->report.failures);
  ASSERT_EQ(a->report.device_losses.size(), b->report.device_losses.size());
  for (size_t i = 0; i < a->report.device_losses.size(); ++i) {
    EXPECT_EQ(a->report.device_losses[i].device, b->report.device_losses[i].device);
    EXPECT_EQ(a->report.device_losses[i].reason, b->report.device_losses[i].reason);
  }
  // Another seed picks another interleaving (and here, no fault at all): the clean outputs
  // do not depend on it.
  detsim_options c1, c2;
  c1.clean = c2.clean = true;
  c1.seed = 1;
  c2.seed = 2;
  auto x = run_detsim(cfg, c1), y = run_detsim(cfg, c2);
  ASSERT_TRUE(x && y);
  EXPECT_NE(x->trace_hash, y->trace_hash);
  EXPECT_EQ(x->report.request_digests, y->report.request_digests);
  EXPECT_EQ(x->report.output_digest, y->report.output_digest);
}

// One thread and a virtual clock change no output: the clean run's digests are those of
// the embedded cluster on CAF's threads (pnmkv run) with the same configuration.
TEST(detsim, the_clean_run_has_the_embedded_runs_digests) {
  for (const char* mode : {"run.mode=pnm-kv", "run.mode=png-kv"}) {
    const config cfg = detsim_config({mode});
    detsim_options co;
    co.clean = true;
    auto clean = run_detsim(cfg, co);
    ASSERT_TRUE(clean) << clean.error().to_string();
    auto embedded = run_embedded(cfg, {});
    ASSERT_TRUE(embedded) << embedded.error().to_string();
    EXPECT_EQ(clean->report.output_digest, embedded->output_digest) << mode;
    EXPECT_EQ(clean->report.request_digests, embedded->request_digests) << mode;
    EXPECT_EQ(clean->report.completed, 2u) << mode;
  }
}

// Wall-clock timeouts run on the virtual clock: a device hung for 30 s is found by
// cluster.device_timeout_ms (1 s) and failed over, in virtual time, at once in wall time;
// the outputs are the clean run's.
TEST(detsim, a_hang_is_found_on_the_virtual_clock) {
  const config cfg = detsim_config({"run.mode=pnm-kv", "faults.script=stall node=101 step=2 ms=30000"});
  detsim_options o;
  o.faults = false;  // the config's own script
  const auto wall0 = std::chrono::steady_clock::now();
  auto run = run_detsim(cfg, o);
  const double wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  ASSERT_TRUE(run) << run.error().to_string();
  detsim_options co;
  co.clean = true;
  auto clean = run_detsim(cfg, co);
  ASSERT_TRUE(clean) << clean.error().to_string();
  const auto v = detsim_violations(*run, *clean, 2, true);
  EXPECT_TRUE(v.empty()) << joined(v);
  ASSERT_EQ(run->report.device_losses.size(), 1u);
  EXPECT_EQ(run->report.device_losses[0].device, 101u);
  EXPECT_NE(run->report.device_losses[0].reason.find("cluster.device_timeout_ms"), std::string::npos);
  EXPECT_EQ(run->report.completed, 2u);
  EXPECT_GE(run->virtual_ms, 1000.0);  // at least the device timeout passed, virtually
  EXPECT_LT(wall_s, 20.0);             // and none of it was waited for
}

// ---------------------------------------------------------------------------------------
// Bugs found by the sweep with `pnmkv detsim --explore --strict` (README, "Deterministic
// fault simulation"). Fixed on main (db836e8, e8c1e72): bugs 1, 2, 3 and 7, kept as
// regression tests. Open: DISABLED_.

std::vector<std::string> scripted(const std::vector<std::string>& extra, uint64_t seed = 1,
                                  const std::string& mode = "pnm-kv") {
  std::vector<std::string> sets = {"run.mode=" + mode, "cluster.sequence_split=contiguous"};
  sets.insert(sets.end(), extra.begin(), extra.end());
  const config cfg = detsim_config(sets);
  const config clean_cfg = detsim_config({"run.mode=" + mode});
  detsim_options o;
  o.seed = seed;
  o.faults = false;
  auto run = run_detsim(cfg, o);
  detsim_options co;
  co.clean = true;
  auto clean = run_detsim(clean_cfg, co);
  if (!run || !clean) return {"run failed to start"};
  return detsim_violations(*run, *clean, 2, true);
}

// Bug 1: decode appends are not acknowledged. One lost on its way to a replica (102, the
// replica of device 100's shards) is never sent again once its step is over; when 100
// dies, 102 is promoted but lacks that row, holds every query back waiting for it, goes
// silent and is declared lost: both requests fail with one device struck and replication 2.
TEST(detsim, bug1_a_replica_that_missed_an_append_takes_over) {
  const auto v = scripted({"faults.script=drop to=102 msg=token_append count=1; crash node=100 step=3"});
  EXPECT_TRUE(v.empty()) << joined(v);
}

// Bug 2: a full receiver inbox (fabric.inbox_depth=8: back-pressure, errc::capacity) is
// taken for a lost device by the GPU host's send_all: no fault at all, devices failed
// over and both requests lost.
TEST(detsim, bug2_a_full_inbox_is_not_a_lost_device) {
  const auto v = scripted({"fabric.inbox_depth=8"});
  EXPECT_TRUE(v.empty()) << joined(v);
}

// Bug 3: the GPU host's own endpoint dies (crash node=1); its sends fail with "peer_down:
// this node is down" and send_all blames each destination device in turn. The requests
// must fail naming the GPU host; no device may be reported lost.
TEST(detsim, bug3_the_gpu_hosts_crash_is_not_a_devices_fault) {
  const auto v = scripted({"faults.script=crash node=1 step=2"});
  std::vector<std::string> misattributed;
  for (const auto& x : v)
    if (x.find("reported lost") != std::string::npos) misattributed.push_back(x);
  EXPECT_TRUE(misattributed.empty()) << joined(misattributed);
}

// Re-replication after a loss (cluster.rereplicate, merged from main while detsim was
// built; the sweep runs it only with --explore):
// Bug 4: the copy of a shard is read from the surviving copy with recall requests; one
// lost is never sent again, the rebuild never ends, and the step boundary that waits for
// it fails the run at run.step_timeout_ms.
TEST(detsim, bug4_a_lost_copy_read_does_not_stall_re_replication) {
  const auto v = scripted({"cluster.rereplicate=true", "faults.script=crash node=100 step=3; drop msg=recall_request count=1"});
  EXPECT_TRUE(v.empty()) << joined(v);
}

// Bug 5: the copy is written to its new device with prefill writes; with some lost (20%),
// devices the schedule never struck are declared silent (cluster.device_timeout_ms) and
// failed over one after another.
TEST(detsim, bug5_lost_copy_writes_do_not_make_healthy_devices_silent) {
  const auto v = scripted({"cluster.rereplicate=true", "faults.script=crash node=100 step=2; drop p=0.2 msg=prefill_write"});
  EXPECT_TRUE(v.empty()) << joined(v);
}

// Bug 7: a segmentation fault in gpu_host_state::rebuild_at_boundary (called from
// pump_rebuilds on a control message): the GPU host's own endpoint dies at step 0 (bug 3
// fails every device over, one of them "node 0", the coordinator), with full inboxes
// (bug 2) and re-replication and recompute on; a rebuild then targets node 0. Run in a
// child process, as it takes the process down.
TEST(detsim, bug7_no_crash_rebuilding_after_the_hosts_own_crash) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        const config cfg = detsim_config({"run.mode=pnm-kv", "cluster.sequence_split=interleave",
                                          "cluster.rereplicate=true", "cluster.recompute=true", "fabric.inbox_depth=8",
                                          "faults.script=crash node=1 step=0"});
        detsim_options o;
        o.seed = 707;
        o.faults = false;
        auto run = run_detsim(cfg, o);
        std::exit(run ? 0 : 3);
      },
      ::testing::ExitedWithCode(0), "");
}

// Bug 8 (open; appeared with db836e8, where a replica promoted at a failover gets its
// request's decoded tokens again, acknowledged): when write acks are late (300 ms) after
// device 100 dies, decode step 3 never ends and the run fails at run.step_timeout_ms;
// when some are lost, the promoted replica (102) is declared silent and failed over. 22 of
// the sweep's 1000 seeds fail on it after merging main at e8c1e72 (each a device fault with
// lost or late write acks or prefill writes: the promoted replica's catch-up).
// Fixed: a closed batch's step now waits for the catch-up writes' acks and the last one
// moves it on; retries resend the writes whose acks were lost. (Every ack of a device lost
// for good, p=1, is a device that looks dead: declared lost, as it should be.)
TEST(detsim, bug8_late_or_lost_write_acks_after_a_failover) {
  const auto late = scripted({"faults.script=crash node=100 step=3; delay p=1 msg=write_ack ms=300"});
  EXPECT_TRUE(late.empty()) << joined(late);
  for (const char* p : {"0.3", "0.6"}) {
    const auto lost = scripted({std::string("faults.script=crash node=100 step=3; drop p=") + p + " msg=write_ack from=102"});
    EXPECT_TRUE(lost.empty()) << p << ": " << joined(lost);
  }
}

// Bug 10 (seed 34 of the sweep once it drew rebuilds): a device lost during the prefill
// leaves its shards to re-replicate at the boundary before decode step 0, whose retry ticks
// were taken for the prefill's (both carried epoch 0) and dropped, the prefill being over: a
// lost copy recall was never sent again and the run failed at run.step_timeout_ms. Now one
// chain of retries runs at a time, started by the prefill, each step and each boundary that
// waits.
TEST(detsim, bug10_a_lost_copy_recall_before_the_first_step_is_sent_again) {
  const auto v = scripted({"cluster.rereplicate=true", "faults.script=crash node=103 step=0; drop msg=recall_request count=1"});
  EXPECT_TRUE(v.empty()) << joined(v);
}

// Bug 11 (seeds 95, 242, 453, 606, 773, 840, 868 and 991 of that sweep): retries were all or
// nothing, sent only when no device at all had answered since the last look. A device whose
// work or reply was lost waited behind the others' answers until cluster.device_timeout_ms
// called it silent, a healthy device failed over; with a second one, requests failed with
// replication 2. Now each look resends per device what it passed over (its messages say
// the highest seq it took: ack_seq), and a probe, the oldest work it owes, when it said
// nothing since the last look.
// Seed 95's schedule and variant, replayed on its interleaving:
TEST(detsim, bug11_one_devices_lost_work_is_sent_again_while_others_answer) {
  const auto v = scripted({"cluster.sequence_split=interleave", "cluster.rereplicate=true", "cluster.recompute=true",
                           "faults.script=crash node=100 step=0; crash node=103 step=0; drop p=0.055 msg=candidates; "
                           "corrupt p=0.00815 msg=recall_request bits=1; corrupt p=0.0786 bits=3"},
                          95, "png-kv");
  EXPECT_TRUE(v.empty()) << joined(v);
}

}  // namespace
}  // namespace pnmkv
