#include "schedulers/admission.hpp"

#include <algorithm>
#include <cstdio>

#include "core/check.hpp"
#include "schedulers/head_groups.hpp"

namespace pnmkv {

const char* to_string(admission_reason r) {
  switch (r) {
    case admission_reason::admitted: return "admitted";
    case admission_reason::batch_cap: return "batch_max";
    case admission_reason::gpu_memory: return "gpu_memory";
    case admission_reason::device_capacity: return "device_capacity";
    case admission_reason::invalid_placement: return "placement";
    case admission_reason::emulator_memory: return "emulator_memory";
    case admission_reason::tpot_budget: return "tpot";
  }
  return "?";
}

namespace {
admission_verdict ok() { return {}; }
admission_verdict refuse(admission_reason r, std::string detail) { return {r, std::move(detail)}; }
}  // namespace

// ---------------------------------------------------------------------------------------
// Batch cap

admission_verdict batch_cap_constraint::check(const admission_candidate& c, admission_grant&) {
  if (batch_max_ == 0 || in_system_ < batch_max_) return ok();
  return refuse(admission_reason::batch_cap,
                "request " + std::to_string(c.request_id) + " waits: " + std::to_string(in_system_) +
                    " requests in the system, workload.batch_max = " + std::to_string(batch_max_));
}

void batch_cap_constraint::release(const admission_grant&) {
  PNMKV_CHECK_GT(in_system_, 0u);
  --in_system_;
}

// ---------------------------------------------------------------------------------------
// GPU memory

gpu_memory_constraint::gpu_memory_constraint(gpu_memory_params p) : p_(std::move(p)), free_(p_.free_bytes) {}

double gpu_memory_constraint::request_bytes(uint64_t final_tokens, bool summaries_resident) const {
  gpu_memory_query q = p_.query;
  q.batch = 1;
  q.context_tokens = final_tokens;
  q.summaries_resident = summaries_resident;
  const gpu_memory_use u = gpu_memory(p_.model, p_.hw, q);
  return u.total_bytes() - u.weights_bytes;
}

gpu_memory_constraint::request_size gpu_memory_constraint::size_of(uint64_t final_tokens,
                                                                   double free_bytes) const {
  request_size s;
  s.summaries_resident = p_.query.summaries_resident;
  s.bytes = request_bytes(final_tokens, s.summaries_resident);
  if (p_.summaries == summary_policy::fit_per_request && p_.query.mode == run_mode::baseline &&
      s.summaries_resident && s.bytes > free_bytes) {
    s.summaries_resident = false;
    s.bytes = request_bytes(final_tokens, false);
  }
  return s;
}

admission_verdict gpu_memory_constraint::check(const admission_candidate& c, admission_grant& g) {
  if (p_.sizing == gpu_sizing::per_request) {
    const request_size s = size_of(c.final_tokens(), free_);
    if (s.bytes > free_) {
      char buf[200];
      std::snprintf(buf, sizeof buf, "GPU memory: request %llu needs %.1f GB, %.1f GB free",
                    static_cast<unsigned long long>(c.request_id), s.bytes / 1e9, free_ / 1e9);
      return refuse(admission_reason::gpu_memory, buf);
    }
    g.gpu_bytes = s.bytes;
    g.summaries_resident = s.summaries_resident;
    return ok();
  }
  // The batch with this request in it, every request as long as the longest.
  gpu_memory_query q = p_.query;
  q.batch = static_cast<uint32_t>(final_tokens_.size() + 1);
  q.context_tokens = std::max(p_.floor_tokens, c.final_tokens());
  for (const auto& [id, tokens] : final_tokens_) q.context_tokens = std::max(q.context_tokens, tokens);
  const gpu_memory_use use = gpu_memory(p_.model, p_.hw, q);
  if (!use.fits()) {
    char buf[300];
    std::snprintf(buf, sizeof buf,
                  "GPU memory: a batch of %u in %s mode needs %.1f GB of %.1f GB "
                  "(weights %.1f, summaries %.1f, recall buffers %.1f, recall cache %.1f, steady %.1f, KV %.1f)",
                  q.batch, to_string(q.mode), use.total_bytes() / 1e9, use.capacity_bytes / 1e9,
                  use.weights_bytes / 1e9, use.summaries_bytes / 1e9, use.recall_bytes / 1e9, use.recall_cache_bytes / 1e9,
                  use.steady_bytes / 1e9, use.kv_bytes / 1e9);
    return refuse(admission_reason::gpu_memory,
                  "request " + std::to_string(c.request_id) + " not admitted: " + buf);
  }
  g.summaries_resident = q.summaries_resident;
  return ok();
}

void gpu_memory_constraint::commit(const admission_grant& g) {
  if (p_.sizing == gpu_sizing::per_request) free_ -= g.gpu_bytes;
  else final_tokens_[g.request_id] = g.final_tokens;
}

void gpu_memory_constraint::release(const admission_grant& g) {
  if (p_.sizing == gpu_sizing::per_request) free_ += g.gpu_bytes;
  else final_tokens_.erase(g.request_id);
}

// ---------------------------------------------------------------------------------------
// Placement on the pools

placement_constraint::placement_constraint(placement_params p) : p_(std::move(p)) {
  for (uint32_t i = 0; i < p_.pools.size(); ++i) {
    const pool_state& pool = p_.pools[i];
    PNMKV_CHECK_EQ(pool.free_bytes.size(), pool.device_ids.size());
    for (uint32_t k = 0; k < pool.device_ids.size(); ++k) {
      const bool fresh = where_.emplace(pool.device_ids[k], std::make_pair(i, k)).second;
      PNMKV_CHECK(fresh, "device ", pool.device_ids[k], " is in two pools");
    }
  }
}

admission_verdict placement_constraint::check(const admission_candidate& c, admission_grant& g) {
  placement_request pr = p_.request;
  pr.request_id = c.request_id;
  pr.context_tokens = c.prompt_tokens;
  pr.decode_tokens = c.decode_tokens;
  const size_t n = p_.pools.size();
  std::vector<double> free_sum(n, 0);
  for (size_t i = 0; i < n; ++i)
    for (uint64_t b : p_.pools[i].free_bytes) free_sum[i] += double(b);
  std::vector<uint32_t> order(n);
  for (uint32_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) { return free_sum[a] > free_sum[b]; });
  status last{errc::capacity, "request " + std::to_string(c.request_id) + " does not fit: there is no pool"};
  bool invalid = false;  // some pool cannot take its shape at all
  for (uint32_t i : order) {
    pool_state trial = p_.pools[i];  // place_request debits it; commit() debits the real one
    if (p_.request.head_groups == 0 && p_.costs) {
      head_group_query hq;
      hq.pool_devices = uint32_t(trial.device_ids.size() / std::max<uint32_t>(1, p_.request.replication));
      hq.context_tokens = c.final_tokens();
      hq.budget_tokens = p_.budget_tokens;
      hq.page_size_tokens = p_.request.page_size_tokens;
      hq.summary_elem_bytes = p_.request.summary_elem_bytes;
      hq.cross_shard = p_.cross_shard;
      pr.head_groups = choose_head_groups(*p_.costs, hq).head_groups;
    }
    result<request_placement> pl = place_request(pr, trial);
    if (pl) {
      g.pool = i;
      g.placement = std::move(pl).value();
      return ok();
    }
    invalid = invalid || pl.error().code() != errc::capacity;
    last = pl.error();
  }
  return refuse(invalid ? admission_reason::invalid_placement : admission_reason::device_capacity,
                last.message());
}

void placement_constraint::add(const admission_grant& g, bool take) {
  for (const shard_placement& sh : g.placement.shards) {
    std::vector<uint32_t> devs{sh.device_id};
    devs.insert(devs.end(), sh.replica_device_ids.begin(), sh.replica_device_ids.end());
    for (uint32_t d : devs) {
      if (!take && lost_.count(d)) continue;  // a lost device stays empty
      const auto it = where_.find(d);
      PNMKV_CHECK(it != where_.end(), "request ", g.request_id, " placed on device ", d, " of no pool");
      uint64_t& free = p_.pools[it->second.first].free_bytes[it->second.second];
      if (take) {
        PNMKV_CHECK_GE(free, sh.bytes_modelled);
        free -= sh.bytes_modelled;
      } else {
        free += sh.bytes_modelled;
      }
    }
  }
}

void placement_constraint::commit(const admission_grant& g) { add(g, true); }
void placement_constraint::release(const admission_grant& g) { add(g, false); }

result<std::optional<uint64_t>> placement_constraint::copy_room(uint32_t device, const shard_placement& shard,
                                                                const admission_grant&) const {
  const auto it = where_.find(device);
  if (it == where_.end()) return std::optional<uint64_t>{};
  const uint64_t free = p_.pools[it->second.first].free_bytes[it->second.second];
  if (lost_.count(device) || free < shard.bytes_modelled)
    return status{errc::capacity, "device " + std::to_string(device) + " has " + std::to_string(free) +
                                      " bytes of modelled capacity free, the copy needs " +
                                      std::to_string(shard.bytes_modelled)};
  return std::optional<uint64_t>{free - shard.bytes_modelled};
}

void placement_constraint::take_copy(uint32_t device, const shard_placement& shard, const admission_grant&) {
  const auto it = where_.find(device);
  if (it == where_.end()) return;
  uint64_t& free = p_.pools[it->second.first].free_bytes[it->second.second];
  PNMKV_CHECK_GE(free, shard.bytes_modelled);
  free -= shard.bytes_modelled;
}

std::vector<uint32_t> placement_constraint::devices() const {
  std::vector<uint32_t> out;
  for (const auto& [d, where] : where_) out.push_back(d);
  return out;
}

void placement_constraint::device_lost(uint32_t device_id) {
  lost_.insert(device_id);
  const auto it = where_.find(device_id);
  if (it != where_.end()) p_.pools[it->second.first].free_bytes[it->second.second] = 0;
}

// ---------------------------------------------------------------------------------------
// Emulator memory

emulator_memory_constraint::emulator_memory_constraint(std::map<uint32_t, uint64_t> free_bytes,
                                                       uint32_t layers, uint32_t live_layers)
    : free_(std::move(free_bytes)), layers_(layers), live_layers_(live_layers) {
  PNMKV_CHECK(layers_ > 0 && live_layers_ <= layers_, "layers=", layers_, " live_layers=", live_layers_);
}

uint64_t emulator_memory_constraint::free_bytes(uint32_t device_id) const {
  const auto it = free_.find(device_id);
  return it == free_.end() ? 0 : it->second;
}

admission_verdict emulator_memory_constraint::check(const admission_candidate& c, admission_grant& g) {
  std::string too_big;  // the last device that cannot take its share
  for (const auto& [dev, need] : live_bytes_by_device(g.placement, layers_, live_layers_))
    if (need > free_bytes(dev))
      too_big = "request " + std::to_string(c.request_id) + " does not fit the emulator: device " +
                std::to_string(dev) + " would hold " + std::to_string(need) +
                " bytes of live layers, " + std::to_string(free_bytes(dev)) +
                " left of cluster.device_memory_bytes_max";
  if (!too_big.empty()) return refuse(admission_reason::emulator_memory, too_big);
  return ok();
}

void emulator_memory_constraint::commit(const admission_grant& g) {
  for (const auto& [dev, need] : live_bytes_by_device(g.placement, layers_, live_layers_)) {
    PNMKV_CHECK_GE(free_[dev], need);
    free_[dev] -= need;
  }
}

void emulator_memory_constraint::release(const admission_grant& g) {
  for (const auto& [dev, need] : live_bytes_by_device(g.placement, layers_, live_layers_))
    if (!lost_.count(dev)) free_[dev] += need;  // a lost device stays empty
}

result<std::optional<uint64_t>> emulator_memory_constraint::copy_room(uint32_t device,
                                                                      const shard_placement& shard,
                                                                      const admission_grant&) const {
  const uint64_t need = live_bytes(shard, layers_, live_layers_);
  const uint64_t free = free_bytes(device);
  if (lost_.count(device) || free < need)
    return status{errc::capacity, "device " + std::to_string(device) + " has " + std::to_string(free) +
                                      " bytes of cluster.device_memory_bytes_max left, the copy's live layers need " +
                                      std::to_string(need)};
  return std::optional<uint64_t>{};
}

void emulator_memory_constraint::take_copy(uint32_t device, const shard_placement& shard, const admission_grant&) {
  const uint64_t need = live_bytes(shard, layers_, live_layers_);
  PNMKV_CHECK_GE(free_[device], need);
  free_[device] -= need;
}

void emulator_memory_constraint::device_lost(uint32_t device_id) {
  lost_.insert(device_id);
  free_[device_id] = 0;
}

// ---------------------------------------------------------------------------------------
// TPOT budget

tpot_constraint::tpot_constraint(double tpot_ms_max, step_predictor_ms predict)
    : tpot_ms_max_(tpot_ms_max), predict_(std::move(predict)) {
  PNMKV_CHECK(tpot_ms_max_ > 0 && predict_, "a TPOT budget needs a limit and a predictor");
}

admission_verdict tpot_constraint::check(const admission_candidate& c, admission_grant& g) {
  const double ms = predict_(c, g);
  if (ms <= tpot_ms_max_) return ok();  // a NaN prediction refuses
  char why[200];
  std::snprintf(why, sizeof why,
                "the predicted decode step with it, %.3f ms, passes workload.tpot_ms_max = %.3f ms "
                "(link and device budget)",
                ms, tpot_ms_max_);
  return refuse(admission_reason::tpot_budget, why);
}

// ---------------------------------------------------------------------------------------
// Admission

void admission::add(std::unique_ptr<admission_constraint> c) {
  PNMKV_CHECK(c != nullptr, "a null constraint");
  PNMKV_CHECK(grants_.empty(), "constraints are added before the first admission");
  constraints_.push_back(std::move(c));
}

admission_verdict admission::try_admit(const admission_candidate& c) {
  PNMKV_CHECK(!grants_.count(c.request_id), "request ", c.request_id, " is already admitted");
  admission_grant g;
  g.request_id = c.request_id;
  g.final_tokens = c.final_tokens();
  for (const auto& k : constraints_) {
    admission_verdict v = k->check(c, g);
    if (!v.admitted()) return v;
  }
  for (const auto& k : constraints_) k->commit(g);
  grants_.emplace(c.request_id, std::move(g));
  return ok();
}

void admission::release(uint64_t request_id) {
  const auto it = grants_.find(request_id);
  if (it == grants_.end()) return;
  for (const auto& k : constraints_) k->release(it->second);
  grants_.erase(it);
}

void admission::device_lost(uint32_t device_id) {
  lost_.insert(device_id);
  for (const auto& k : constraints_) k->device_lost(device_id);
}

result<uint32_t> admission::add_copy(uint64_t request_id, uint32_t shard_id) {
  const auto it = grants_.find(request_id);
  if (it == grants_.end())
    return status{errc::invalid_argument, "request " + std::to_string(request_id) + " is not admitted"};
  admission_grant& g = it->second;
  shard_placement* shard = nullptr;
  std::set<uint32_t> of_request;  // devices holding any shard of the request
  for (auto& sh : g.placement.shards) {
    if (sh.shard_id == shard_id) shard = &sh;
    of_request.insert(sh.device_id);
    of_request.insert(sh.replica_device_ids.begin(), sh.replica_device_ids.end());
  }
  if (!shard)
    return status{errc::invalid_argument, "request " + std::to_string(request_id) + " has no shard " +
                                              std::to_string(shard_id)};
  std::set<uint32_t> of_shard{shard->device_id};
  of_shard.insert(shard->replica_device_ids.begin(), shard->replica_device_ids.end());
  std::set<uint32_t> candidates;
  for (const auto& k : constraints_)
    for (uint32_t d : k->devices()) candidates.insert(d);
  std::string passed_over;  // why, for the error (bounded: the first few)
  unsigned reasons = 0, eligible = 0;
  // Best: a device holding nothing of the request (its load spreads), then the most room.
  std::optional<uint32_t> best;
  std::pair<bool, uint64_t> best_rank{false, 0};
  for (uint32_t d : candidates) {
    if (of_shard.count(d) || lost_.count(d)) continue;
    ++eligible;
    std::optional<uint64_t> room;  // the placement's (modelled) room ranks the devices
    status why = status::ok();
    for (const auto& k : constraints_) {
      auto r = k->copy_room(d, *shard, g);
      if (!r) {
        why = r.error();
        break;
      }
      if (r->has_value() && !room) room = **r;
    }
    if (!why) {
      if (reasons++ < 4) passed_over += "; " + why.message();
      continue;
    }
    const std::pair<bool, uint64_t> rank{!of_request.count(d), room.value_or(0)};
    if (!best || rank > best_rank) best = d, best_rank = rank;
  }
  if (!best) {
    std::string what = "no device can take a new copy of shard " + std::to_string(shard_id) + " of request " +
                       std::to_string(request_id) + ": ";
    what += eligible == 0 ? "every live device holds that shard already"
                          : "every live device without that shard is full" + passed_over;
    return status{errc::capacity, what};
  }
  for (const auto& k : constraints_) k->take_copy(*best, *shard, g);
  shard->replica_device_ids.push_back(*best);
  return *best;
}

const admission_grant* admission::grant_of(uint64_t request_id) const {
  const auto it = grants_.find(request_id);
  return it == grants_.end() ? nullptr : &it->second;
}

admission make_admission(admission_params p) {
  admission a;
  if (p.batch_max) a.add(std::make_unique<batch_cap_constraint>(p.batch_max));
  if (p.gpu) a.add(std::make_unique<gpu_memory_constraint>(std::move(*p.gpu)));
  if (p.placement) a.add(std::make_unique<placement_constraint>(std::move(*p.placement)));
  if (p.emulator_free_bytes)
    a.add(std::make_unique<emulator_memory_constraint>(std::move(*p.emulator_free_bytes), p.layers,
                                                       p.live_layers));
  if (p.tpot_ms_max > 0) a.add(std::make_unique<tpot_constraint>(p.tpot_ms_max, std::move(p.predict_step_ms)));
  return a;
}

placement_params gpu_local_placement(placement_request request, uint32_t gpu_id) {
  placement_params p;
  // The slot's "capacity" never binds: a quarter of the range leaves room for the sums.
  p.pools = make_pools({gpu_id}, 1, UINT64_MAX / 4);
  request.head_groups = 1;
  request.replication = 1;
  request.split = sequence_split::contiguous;
  p.request = request;
  return p;
}

std::vector<pool_state> make_pools(const std::vector<uint32_t>& device_ids, uint32_t per_pool,
                                   uint64_t capacity_bytes) {
  const size_t per = per_pool ? per_pool : std::max<size_t>(1, device_ids.size());
  std::vector<pool_state> pools;
  for (size_t i = 0; i < device_ids.size(); ++i) {
    if (i % per == 0) pools.emplace_back();
    pools.back().device_ids.push_back(device_ids[i]);
    pools.back().free_bytes.push_back(capacity_bytes);
    pools.back().failure_domain.push_back(device_ids[i]);
  }
  return pools;
}

}  // namespace pnmkv
