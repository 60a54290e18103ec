// The GPU host: joins the cluster, runs the decode loop through its host_engine (prefill
// writes under a window of unacknowledged chunks, then one decode step after another, or,
// for open workloads, the serving scheduler's steps with admission asked of the coordinator
// at each step boundary), sends the engine's device work over the fabric, matches replies to
// the work they answer, enforces deadlines and retries, fails over to replicas, and reports
// progress and the run's result to the coordinator, which forwards them to the driver.
#pragma once

#include <caf/all.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "actors/control.hpp"
#include "actors/host_engine.hpp"
#include "actors/node_common.hpp"
#include "actors/run_report.hpp"
#include "actors/run_setup.hpp"
#include "schedulers/admission.hpp"
#include "schedulers/serving.hpp"
#include "transport/fabric.hpp"
#include "transport/messages.hpp"

namespace pnmkv {
class step_model;
}

namespace pnmkv::actors {

// The kinds of reply a piece of device work gets.
enum class reply_kind : uint8_t {
  selection,   // a partial of a selection (selection_round local or exact_attend)
  dense,       // a dense (verification) partial
  candidates,  // exact round 1's candidate pages
  recall,      // recalled pages
};
reply_kind reply_kind_of(selection_round round);

class gpu_host_state {
 public:
  using actor_type = caf::stateful_actor<gpu_host_state>;
  explicit gpu_host_state(actor_type* self);
  ~gpu_host_state();  // step_model is complete only in gpu_host.cpp

  // Before the behavior: the join.
  // timeline: the first steps' schedule is drawn on it (embedded runs; null: not traced).
  void init(std::shared_ptr<const run_setup> setup, caf::actor coordinator,
            std::shared_ptr<transport::fabric> fab, std::shared_ptr<timeline_trace> timeline);

  // Handlers.
  void on_join(const std::string& bytes);
  // The coordinator came back (restarted from its journal): join it again, then tell it what
  // happened meanwhile (Resume) and repeat the result if the run is over.
  void on_coordinator(const caf::actor& coordinator);
  void on_membership(const std::string& bytes);
  void on_control(const std::string& bytes);
  void on_wire(std::vector<uint8_t>& bytes);
  void on_deadline(uint64_t epoch);
  void on_peer_down(uint32_t peer);
  void on_retry(uint64_t epoch);
  // cluster.device_timeout_ms: a device owing work that has been silent that long is lost.
  void on_silence();
  // Sends held back by back-pressure, again (hold_back).
  void on_backlog();

 private:
  using steady = std::chrono::steady_clock;
  // What a reply answers: (request, layer, KV head, shard, kind).
  using reply_key = std::tuple<uint64_t, uint32_t, uint32_t, uint32_t, reply_kind>;
  // A bulk write: (device, request, layer, KV head, position).
  using write_key = std::tuple<uint32_t, uint64_t, uint32_t, uint32_t, uint64_t>;

  // Control messages.
  void on_admission(control::wire::Admission::Reader a);
  void on_open_start(const std::vector<control::request_spec>& requests);
  void on_closed_start(std::vector<control::request_spec> requests);
  // Wire replies.
  void on_write_ack(const transport::envelope& env, transport::wire::WriteAck::Reader ack);
  // A partial, candidates or recalled pages: handed to the engine if it answers work of
  // this step that is still open.
  void on_reply(const transport::received& m);
  reply_key read_partial(const transport::envelope& env, transport::wire::Partial::Reader p,
                         device_reply& r);
  reply_key read_candidates(transport::wire::Candidates::Reader c, device_reply& r);
  reply_key read_recall(const transport::envelope& env, transport::wire::RecallReply::Reader rr,
                        device_reply& r);

  // Device work on the wire.
  status send_work(device_work& w);
  void put_write(const device_work& w, transport::wire::Envelope::Body::Builder body);
  void put_recall(const device_work& w, transport::wire::Envelope::Body::Builder body);
  void put_query(const device_work& w, transport::wire::Envelope::Body::Builder body);
  void send_all(std::vector<device_work>& work);
  // Sub-batch overlap (run.micro_batches): after a send, the running layer's next
  // micro-batches are built and sent, one after another, while the devices serve the ones
  // already out (host_engine::next_micro_batch).
  void issue_micro_batches();
  bool issuing_micro_batches_ = false;
  // Back-pressure: a send refused for a full inbox or send queue (errc::capacity) is held
  // and sent again 1 ms later, in order; past backlog_max held messages the run fails.
  void hold_back(device_work&& w, const status& why);
  std::vector<device_work> backlog_;
  bool backlog_tick_ = false;
  uint64_t backlog_logged_ = 0, backpressure_retries_ = 0;
  static constexpr size_t backlog_max = 1 << 16;

  // The run's course.
  void fail_run(const std::string& reason);
  void finish();
  // The run's result (its report as JSON) to the driver, through the coordinator.
  void send_result(const run_report& rep, bool ok, const std::string& reason);
  // The request is finished or will not be admitted: the coordinator takes its room back.
  void send_release(uint64_t request_id);
  void progress(const char* phase, uint64_t done, uint64_t total);
  void pump_prefill();
  void serve_closed_batch();
  void start_step(uint32_t step);
  // Called whenever the running step may have moved on: records its timed phase once and,
  // when it is over (every reply in, every prompt write acknowledged), goes to the next.
  void after_progress();
  // Open workloads: admission (one request at a time, head of line), then the next step.
  void boundary();
  // The decode step of everything in the system plus `candidate`, predicted by the
  // step model on the composition the host engine charges (run_setup::step).
  double predicted_step_ms(uint64_t candidate, const request_placement& cand_pl);
  // A device is gone: the engine moves its shards to replicas and resends what it owed;
  // writes it will never acknowledge stop counting. A request with no copy left of one of
  // its shards fails alone (fail_request); the others go on. The device is fenced from now
  // on: told to leave (fence notice), its late messages dropped (fenced()).
  void device_lost(uint32_t dev, const std::string& why);
  // A request lost with its devices leaves the run (scheduler, placement, outstanding work);
  // the coordinator takes its room back and the devices drop its shards.
  void fail_request(uint64_t request_id, const std::string& reason);
  // The serving scheduler's id of a request (a closed batch: its position in requests_, 1..).
  uint64_t sched_id(uint64_t request_id) const;
  // Fencing: true when `env` comes from a device already failed over; the message is
  // dropped and counted, and the first from each such device is logged.
  bool fenced(const transport::envelope& env);
  // Tells a failed-over device to leave, on the data plane (behind the work it holds).
  void send_fence_notice(uint32_t dev, const std::string& why);
  // The run ends now at the driver's request (SIGINT / SIGTERM to the launcher): the
  // report of what finished goes to the driver.
  void stop_run(const std::string& reason);

  // --- Rebuilding copies after a loss (docs/DESIGN.md §7; gpu_host_rebuild.cpp). One job
  // per shard that needs a copy: asked of the coordinator (CopyAsk), which picks the device
  // and has it take the shard (CopyGrant). A recompute starts at once (after the closed
  // batch's prefill is out), its writes under the prefill window; no step starts while one
  // runs, and a step waiting for the shard goes on when it is done. A re-replication copies
  // one chunk per step boundary (recalls from the live copy, writes to the new one, all
  // acknowledged before the step starts), the last one up to the shard's end, and then the
  // new device is a replica. Their virtual time is charged by the engine as a stall.
  struct rebuild_job {
    rebuild_need need;
    uint32_t target = 0;          // 0 until the coordinator grants one
    uint32_t asks = 0;            // CopyAsk sent (a failed device is not chosen again)
    steady::time_point detected;  // the loss that started it
    std::string cause;            // that loss ("device 101 went down (...)")
    double stall_ns = 0;          // virtual time its writes added to steps
    uint64_t bytes = 0, tokens = 0;
    // recompute: the cursor over the shard's live (layer, KV head) and tokens; what each
    // (layer, KV head) was rebuilt up to (a pass that ends behind what was written since
    // goes round again)
    uint32_t layer = 0, head_index = 0;
    uint64_t position = 0;
    bool pass_done = false;
    std::map<std::pair<uint32_t, uint32_t>, uint64_t> done_to;
    // re-replication: the next page (index into the shard's pages written), the chunk in
    // flight (recalls out, the boundary it ran at) and whether it reaches the shard's end
    uint64_t next_page = 0, chunk_pages = 0;
    uint32_t recalls_out = 0;
    uint64_t chunk_epoch = UINT64_MAX;
    uint32_t chunk_source = 0;
    bool chunk_running = false, last_chunk = false;
    // Back to the start of its copy or recompute (its new device, or its kind, changed);
    // with the target, the copy is placed anew.
    void restart(bool forget_target) {
      if (forget_target) {
        target = 0;
        next_page = 0;
      }
      recalls_out = 0;
      chunk_running = false;
      chunk_epoch = UINT64_MAX;
      layer = head_index = 0;
      position = 0;
      pass_done = false;
      done_to.clear();
    }
  };
  // The report's line of a rebuild, finished or not.
  shard_rebuild rebuild_record(const std::pair<uint64_t, uint32_t>& key, const rebuild_job& job,
                               const std::string& outcome) const;
  using job_key = std::pair<uint64_t, uint32_t>;  // (request, shard)
  void plan_rebuild(const rebuild_need& need, const std::string& cause);
  void ask_copy(rebuild_job& job);
  void on_copy_grant(control::wire::CopyGrant::Reader g);
  // Moves the rebuilds on (recompute writes under the window, finished copies); resumes a
  // step boundary that waited for them.
  void pump_rebuilds();
  // At a step boundary: true when the next step may start (no recompute running, this
  // boundary's copy chunks done); else the chunks are started and pump_rebuilds resumes.
  bool rebuild_at_boundary();
  void start_copy_chunk(rebuild_job& job);
  bool on_copy_reply(const transport::received& m);
  void rebuild_done(std::map<job_key, rebuild_job>::iterator it, const std::string& outcome);
  // After a rebuild (or a failed one): a shard still below cluster.replication gets another.
  void check_copies(uint64_t request_id, uint32_t shard_id);
  std::map<job_key, rebuild_job> rebuilds_;
  std::map<reply_key, job_key> copy_tags_;   // copy recalls out -> their job
  std::map<reply_key, device_work> copy_sent_;  // and the recalls themselves (retries)
  void forget_copy_recalls(const job_key& key);
  bool boundary_waiting_ = false;            // a step boundary waits for rebuilds
  // Marks a deadline tick as a waiting boundary's (the rest is the step epoch).
  static constexpr uint64_t boundary_deadline_bit = 1ull << 62;
  std::vector<shard_rebuild> rebuilt_;       // finished (or given up), for the report

  // The report, in parts.
  run_report build_report() const;
  void report_run(run_report& rep) const;
  void report_steps(run_report& rep) const;
  void report_capacity(run_report& rep) const;
  void report_engine(run_report& rep) const;
  void report_recovery(run_report& rep) const;

  actor_type* self_;
  std::shared_ptr<const run_setup> setup_;
  const cost_model* costs_ = nullptr;
  const uint32_t node_ = gpu_host_node;

  caf::actor coordinator_, driver_;
  bool rejoining_ = false;        // joining a restarted coordinator
  bool run_started_ = false;      // the run start arrived
  std::set<uint64_t> released_;   // requests whose room went back (Release sent)
  std::string result_bytes_;      // the run's result, once sent (repeated after a restart)
  void send_resume();
  std::shared_ptr<transport::fabric> fab_;
  std::unique_ptr<host_engine> engine_;
  std::map<uint64_t, request_placement> placements_;
  std::vector<control::request_spec> requests_;
  uint64_t seq_ = 0;
  // prefill
  // Bulk writes (prefill chunks, prompt chunks of open workloads) not acknowledged yet: a
  // repeated write or ack is counted once. With retries on, each keeps its copy to send again.
  std::map<write_key, device_work> writes_out_;
  // Retries (run.retry_after_ms), per device: each look resends to a device what it passed
  // over (sent at or before its ack_seq, unanswered: lost, or its reply was), and all it owes
  // when it said nothing since the last look. One chain of looks at a time: starting one
  // (prefill, step, waiting boundary) ends the last.
  using work_ident = std::tuple<uint32_t, uint8_t, uint64_t, uint32_t, uint32_t, uint64_t>;
  static work_ident ident_of(const device_work& w);
  void start_retries();
  std::vector<device_work> due_for_retry(std::vector<device_work> owed);
  uint64_t retry_chain_ = 0;
  std::map<work_ident, uint64_t> sent_seq_;        // the seq each piece of work last left with
  std::map<uint32_t, uint64_t> acked_seq_;         // each device's highest ack_seq
  std::set<uint32_t> heard_since_look_;            // devices that sent anything since the last look
  uint64_t retries_ = 0;
  uint64_t prefill_chunks_sent_ = 0, prefill_chunks_total_ = 0;
  bool prefill_exhausted_ = false;  // every chunk sent
  bool prefill_done_ = false;       // and acknowledged
  steady::time_point prefill_start_;
  double prefill_wall_s_ = 0;
  // decode
  uint32_t step_ = 0;
  bool step_timed_ = false;  // the step's timed (sparse) phase is over and recorded
  uint64_t step_epoch_ = 0;  // bumps per step; stale deadline ticks are ignored
  steady::time_point step_start_;
  std::vector<double> step_wall_ms_;
  std::vector<step_report> steps_;
  std::map<reply_key, uint64_t> tags_;  // what a reply answers -> the engine's tag
  std::map<uint32_t, uint64_t> device_bytes_held_;
  std::set<uint32_t> connected_;  // fabric peers already connected
  bool finished_ = false;
  // The serving scheduler decides each step's work. Open workloads: admission is asked of
  // the coordinator one request at a time at step boundaries; a closed batch is admitted
  // before its prefill (serve_closed_batch).
  bool open_ = false;
  std::unique_ptr<serving_scheduler> sched_;
  std::map<uint64_t, control::request_spec> open_specs_;
  step_plan plan_;                   // the running step's
  uint64_t awaiting_admission_ = 0;  // request asked for, answer pending
  bool admitting_ = true;            // false: the head of the queue did not fit this boundary
  bool step_running_ = false;
  std::unique_ptr<step_model> predictor_;  // workload.tpot_ms_max
  // The TPOT budget, the admission constraint the simulator checks too
  // (schedulers/admission.hpp); null when workload.tpot_ms_max = 0.
  std::unique_ptr<tpot_constraint> tpot_;
  std::set<uint32_t> lost_;  // devices failed over: fenced
  std::map<uint64_t, std::string> failed_;  // requests lost with their devices -> why
  uint64_t fenced_messages_ = 0;            // late messages from fenced devices, dropped
  std::set<uint32_t> fence_logged_;         // fenced devices whose late messages were logged
  // cluster.device_timeout_ms: when each device was last heard from, and since when (first
  // look) it has owed work without a break.
  std::map<uint32_t, steady::time_point> heard_, owing_since_;
  std::vector<device_loss> losses_;  // devices failed over, in the order detected, with when and how
  void record_loss(uint32_t dev, const std::string& why);
  std::shared_ptr<timeline_trace> timeline_;
};

// Reports progress and the run's result to the coordinator, which forwards them to the
// driver that submitted the requests.
caf::behavior gpu_host_actor(gpu_host_state::actor_type* self, std::shared_ptr<const run_setup> setup,
                             caf::actor coordinator, std::shared_ptr<transport::fabric> fab,
                             std::shared_ptr<timeline_trace> timeline);

}  // namespace pnmkv::actors
