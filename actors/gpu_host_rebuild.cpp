// The GPU host's rebuilds after a device loss (gpu_host.hpp, docs/DESIGN.md §7): a shard left
// with fewer than cluster.replication copies gets a new one copied from a live copy
// (re-replication), a shard with none left is rebuilt from the prompt (recompute). The
// coordinator picks each new copy's device; the engine knows what a shard holds, builds the
// writes and charges the virtual time.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "actors/gpu_host.hpp"

namespace pnmkv::actors {

namespace {
// Asks for one shard's new copy at most this often: each failed ask names a device that is
// not chosen again, so this bounds a cluster of failing devices, not a slow one.
constexpr uint32_t copy_asks_max = 8;

uint64_t kv_bytes_of(const std::vector<device_work>& writes) {
  uint64_t b = 0;
  for (const auto& w : writes) b += (w.k.size() + w.v.size()) * sizeof(bf16);
  return b;
}
}  // namespace

void gpu_host_state::forget_copy_recalls(const job_key& key) {
  for (auto c = copy_tags_.begin(); c != copy_tags_.end();) {
    if (c->second != key) {
      ++c;
      continue;
    }
    copy_sent_.erase(c->first);
    c = copy_tags_.erase(c);
  }
}

void gpu_host_state::plan_rebuild(const rebuild_need& need, const std::string& cause) {
  if (finished_ || failed_.count(need.request_id)) return;
  const job_key key{need.request_id, need.shard_id};
  auto it = rebuilds_.find(key);
  if (!need.recompute) {
    if (!setup_->rereplicate || setup_->replication < 2) return;
    if (it != rebuilds_.end()) {
      rebuild_job& job = it->second;
      // A copy under way goes on from the shard's primary now; a chunk in flight from a
      // source that is gone starts again. A recompute under way gets its copies after it.
      if (!job.need.recompute && job.need.source != need.source) {
        job.need.source = need.source;
        if (job.chunk_running && lost_.count(job.chunk_source)) {
          forget_copy_recalls(key);
          job.recalls_out = 0;
          job.chunk_running = false;
          job.chunk_epoch = UINT64_MAX;  // this boundary may run it again
        }
      }
      return;
    }
  } else if (it != rebuilds_.end()) {
    // Its last copy went while it was being copied: rebuilt from the prompt instead, on the
    // device that took the copy when there is one (rows it holds already are acknowledged
    // unchanged: the same bytes).
    rebuild_job& job = it->second;
    forget_copy_recalls(key);
    job.need = need;
    job.cause = cause;
    job.restart(/*forget_target=*/false);
    return;
  }
  rebuild_job job;
  job.need = need;
  job.cause = cause;
  job.detected = steady::now();
  cluster_log().warn("event=rebuild_needed request={} shard={} kind={} source={}", need.request_id, need.shard_id,
                     need.recompute ? "recompute" : "re-replicate", need.source);
  auto& j = rebuilds_.emplace(key, std::move(job)).first->second;
  ask_copy(j);
}

void gpu_host_state::ask_copy(rebuild_job& job) {
  ++job.asks;
  control::outbound out(node_);
  auto a = out.body().initCopyAsk();
  a.setRequestId(job.need.request_id);
  a.setShardId(job.need.shard_id);
  a.setRecompute(job.need.recompute);
  self_->send(coordinator_, ctl_atom::value, wire_string(out));
}

void gpu_host_state::on_copy_grant(control::wire::CopyGrant::Reader g) {
  const job_key key{g.getRequestId(), g.getShardId()};
  auto it = rebuilds_.find(key);
  if (finished_ || it == rebuilds_.end() || it->second.target != 0) return;  // not asked for (any more)
  rebuild_job& job = it->second;
  const uint32_t dev = g.getDeviceId();
  if (g.getOk() && !lost_.count(dev)) {
    job.target = dev;
    cluster_log().info("event=rebuild_granted request={} shard={} device={}", key.first, key.second, dev);
    return pump_rebuilds();
  }
  const std::string why = g.getOk() ? "device " + std::to_string(dev) + " went down before the copy started"
                                    : std::string(g.getReason().cStr());
  // A device that failed to take it is not chosen again: ask once more.
  if (dev != 0 && job.asks < copy_asks_max) return ask_copy(job);
  const uint64_t rid = key.first;
  const bool recompute = job.need.recompute;
  const std::string cause = job.cause;
  rebuild_done(it, why);
  if (recompute) {
    fail_request(rid, cause + ": shard " + std::to_string(key.second) + " of request " + std::to_string(rid) +
                          " lost its last copy and cannot be recomputed: " + why);
    auto more = engine_->abandon(rid);  // its work waited for the shard: the step goes on without it
    if (!more) return fail_run(more.error().to_string());
    send_all(*more);
    if (finished_) return;
  }
  pump_rebuilds();
}

shard_rebuild gpu_host_state::rebuild_record(const job_key& key, const rebuild_job& job,
                                            const std::string& outcome) const {
  shard_rebuild r;
  r.request_id = key.first;
  r.shard_id = key.second;
  r.kind = job.need.recompute ? "recompute" : "re-replicate";
  r.source = job.need.recompute ? 0 : job.need.source;
  r.target = job.target;
  r.outcome = outcome;
  r.bytes = job.bytes;
  r.tokens = job.tokens;
  r.wall_ms = std::chrono::duration<double, std::milli>(steady::now() - job.detected).count();
  r.stall_ms = job.stall_ns * 1e-6;
  return r;
}

void gpu_host_state::rebuild_done(std::map<job_key, rebuild_job>::iterator it, const std::string& outcome) {
  shard_rebuild r = rebuild_record(it->first, it->second, outcome);
  cluster_log().warn("event=rebuild_{} request={} shard={} kind={} target={} bytes={} wall_ms={:.1f} stall_ms={:.3f}{}",
                     outcome == "done" ? "done" : "given_up", r.request_id, r.shard_id, r.kind, r.target, r.bytes,
                     r.wall_ms, r.stall_ms, outcome == "done" ? "" : " reason=\"" + outcome + "\"");
  rebuilt_.push_back(std::move(r));
  const job_key key = it->first;
  forget_copy_recalls(key);
  rebuilds_.erase(it);
}

void gpu_host_state::check_copies(uint64_t request_id, uint32_t shard_id) {
  if (!engine_ || !setup_->rereplicate || setup_->replication < 2 || rebuilds_.count({request_id, shard_id})) return;
  const shard_placement* sh = engine_->shard(request_id, shard_id);
  if (!sh || engine_->recovering(request_id)) return;
  if (1 + sh->replica_device_ids.size() < setup_->replication)
    plan_rebuild({request_id, shard_id, false, sh->device_id}, "a copy short of cluster.replication");
}

void gpu_host_state::pump_rebuilds() {
  if (finished_ || !engine_) return;
  auto writes_to = [&](uint32_t dev, uint64_t rid) {
    for (const auto& [k, w] : writes_out_)
      if (std::get<0>(k) == dev && std::get<1>(k) == rid) return true;
    return false;
  };
  // The closed batch's prompt goes out first: a recompute rebuilds what was written.
  const bool prompt_out = open_ || prefill_exhausted_;
  for (auto it = rebuilds_.begin(); it != rebuilds_.end();) {
    rebuild_job& job = it->second;
    const auto [rid, sid] = it->first;
    const shard_placement* sh = engine_->shard(rid, sid);
    if (!sh) {  // its request left (finished, or failed)
      auto done = it++;
      rebuild_done(done, "its request left first");
      continue;
    }
    if (job.target == 0 || (job.need.recompute && !prompt_out)) {
      ++it;
      continue;
    }
    if (job.need.recompute) {
      const uint32_t heads = sh->kv_head_end - sh->kv_head_begin;
      const uint32_t ps = setup_->host.page_size_tokens;
      const uint64_t first = sh->split == sequence_split::interleave ? uint64_t(sh->sequence_index) * ps
                                                                       : sh->page_begin * ps;
      while (!job.pass_done && writes_out_.size() < setup_->prefill_window_chunks) {
        const uint32_t h = sh->kv_head_begin + job.head_index;
        const uint64_t end = engine_->tokens_written(rid, job.layer, h);
        job.position = std::max(job.position, first);
        if (job.position >= end) {
          job.done_to[{job.layer, h}] = std::max(job.done_to[{job.layer, h}], end);
          job.position = 0;
          if (++job.head_index == heads) {
            job.head_index = 0;
            if (++job.layer == setup_->host.live_layers) job.pass_done = true;
          }
          continue;
        }
        std::vector<device_work> w;
        const double stall0 = engine_->recovery().stall_ns;
        const uint64_t tokens0 = engine_->recovery().recomputed_tokens;
        job.position = engine_->recompute_writes(rid, sid, job.target, job.layer, h, job.position, end, w);
        job.stall_ns += engine_->recovery().stall_ns - stall0;
        job.tokens += engine_->recovery().recomputed_tokens - tokens0;
        job.bytes += kv_bytes_of(w);
        send_all(w);
        if (finished_) return;
      }
      if (!job.pass_done) {
        ++it;
        continue;
      }
      // Written since the pass went by (prompt chunks of a request prefilling in steps):
      // another pass from there.
      bool behind = false;
      for (uint32_t l = 0; l < setup_->host.live_layers && !behind; ++l)
        for (uint32_t i = 0; i < heads && !behind; ++i)
          if (engine_->tokens_written(rid, l, sh->kv_head_begin + i) > job.done_to[{l, sh->kv_head_begin + i}]) {
            behind = true;
            job.layer = l;
            job.head_index = i;
            job.position = job.done_to[{l, sh->kv_head_begin + i}];
            job.pass_done = false;
          }
      if (behind) continue;  // this job again, from where it is behind
      if (writes_to(job.target, rid)) {
        ++it;
        continue;
      }
      auto resend = engine_->shard_recomputed(rid, sid, job.target);
      if (!resend) return fail_run(resend.error().to_string());
      placements_[rid] = *engine_->placement_of(rid);
      auto done = it++;
      rebuild_done(done, "done");
      send_all(*resend);
      if (finished_) return;
      check_copies(rid, sid);
      continue;
    }
    // A copy: its chunk is over when every recall is answered and every write acknowledged.
    if (job.chunk_running && job.recalls_out == 0 && !writes_to(job.target, rid)) {
      job.chunk_running = false;
      job.next_page += job.chunk_pages;
      if (job.last_chunk) {
        auto st = engine_->replica_added(rid, sid, job.target);
        if (!st) return fail_run(st.to_string());
        placements_[rid] = *engine_->placement_of(rid);
        auto done = it++;
        rebuild_done(done, "done");
        check_copies(rid, sid);
        continue;
      }
    }
    ++it;
  }
  if (boundary_waiting_ && rebuild_at_boundary()) {
    boundary_waiting_ = false;
    return boundary();
  }
  if (step_running_) after_progress();
}

bool gpu_host_state::rebuild_at_boundary() {
  if (!engine_) return true;
  bool wait = false;
  for (auto& [key, job] : rebuilds_) {
    if (job.need.recompute) {  // its request's work waits for it: so does the step
      wait = true;
      continue;
    }
    if (job.target == 0) continue;  // asked: steps go on meanwhile
    if (!job.chunk_running && job.chunk_epoch != step_epoch_) start_copy_chunk(job);
    wait = wait || job.chunk_running;
  }
  // A boundary waits for rebuilds at most run.step_timeout_ms (a lost reply must not hang
  // the run: on_deadline).
  if (wait && !boundary_waiting_) {
    self_->delayed_send(self_, std::chrono::milliseconds(setup_->step_timeout_ms), tick_atom::value,
                        boundary_deadline_bit | step_epoch_);
    // Its recalls and writes can be lost too: retried as a step's are (on_retry).
    start_retries();
  }
  boundary_waiting_ = wait;
  return !wait;
}

void gpu_host_state::start_copy_chunk(rebuild_job& job) {
  const auto [rid, sid] = std::make_pair(job.need.request_id, job.need.shard_id);
  const shard_placement* sh = engine_->shard(rid, sid);
  if (!sh) return;
  const uint32_t ps = setup_->host.page_size_tokens;
  const uint64_t per_chunk = std::max<uint64_t>(1, setup_->host.rebuild_chunk_tokens / ps);
  const std::vector<uint64_t> pages = engine_->shard_pages_written(rid, sid, 0, sh->kv_head_begin);
  const uint64_t from = std::min<uint64_t>(job.next_page, pages.size());
  const uint64_t to = std::min<uint64_t>(from + per_chunk, pages.size());
  job.chunk_pages = to - from;
  job.last_chunk = to == pages.size();
  job.chunk_epoch = step_epoch_;
  job.chunk_source = job.need.source;
  job.chunk_running = true;
  job.recalls_out = 0;
  if (from == to) return;  // nothing (more) written: the copy is complete now
  std::vector<device_work> recalls;
  for (uint32_t l = 0; l < setup_->host.live_layers; ++l)
    for (uint32_t h = sh->kv_head_begin; h < sh->kv_head_end; ++h) {
      const std::vector<uint64_t> mine = engine_->shard_pages_written(rid, sid, l, h);
      PNMKV_CHECK(mine == pages, "between steps every (layer, KV head) of a shard holds the same pages");
      recalls.push_back(engine_->copy_recall(rid, sid, job.need.source, l, h,
                                             std::vector<uint64_t>(mine.begin() + ptrdiff_t(from),
                                                                   mine.begin() + ptrdiff_t(to))));
      copy_tags_[reply_key{rid, l, h, sid, reply_kind::recall}] = {rid, sid};
      if (setup_->retry_after_ms) copy_sent_[reply_key{rid, l, h, sid, reply_kind::recall}] = recalls.back();
      ++job.recalls_out;
    }
  send_all(recalls);
}

bool gpu_host_state::on_copy_reply(const transport::received& m) {
  if (copy_tags_.empty()) return false;
  device_reply r;
  r.device_id = m.env().sender;
  const reply_key key = read_recall(m.env(), m.recall_reply(), r);
  auto c = copy_tags_.find(key);
  if (c == copy_tags_.end()) return false;
  auto it = rebuilds_.find(c->second);
  if (it == rebuilds_.end() || it->second.need.source != m.env().sender) return true;  // stale
  copy_sent_.erase(c->first);
  copy_tags_.erase(c);
  rebuild_job& job = it->second;
  --job.recalls_out;
  const double stall0 = engine_->recovery().stall_ns;
  auto writes = engine_->copy_writes(job.need.request_id, job.need.shard_id, job.target, std::get<1>(key),
                                     std::get<2>(key), r);
  job.stall_ns += engine_->recovery().stall_ns - stall0;
  job.bytes += kv_bytes_of(writes);
  send_all(writes);
  pump_rebuilds();
  return true;
}

}  // namespace pnmkv::actors
