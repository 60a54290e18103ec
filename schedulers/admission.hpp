// Admission of one request (docs/DESIGN.md §2–§3), shared by the live coordinator and the
// simulator: an ordered list of constraints, each either passing the request or naming why
// it cannot be admitted now. The order is fixed (make_admission):
//
//   1. batch cap          requests in the system (workload.batch_max)
//   2. GPU memory         schedulers/gpu_memory.hpp, sized per gpu_sizing
//   3. device capacity    a pool that can hold it (schedulers/placement.hpp), h × s from
//                         the cost model unless fixed
//   4. emulator memory    the live layers a device really holds (live cluster only)
//   5. TPOT budget        the predicted decode step with it, from a caller's predictor
//
// A constraint only looks while checking (it may fill its part of the grant: the
// placement, the GPU bytes); the room is taken only when every constraint passed, and given
// back by release(). So a refusal changes nothing, and the first failing constraint is the
// one reported. Pure logic: no CAF, UCX or I/O.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "model/cost_model.hpp"
#include "model/hardware.hpp"
#include "model/model_shape.hpp"
#include "schedulers/gpu_memory.hpp"
#include "model/modes.hpp"
#include "schedulers/placement.hpp"

namespace pnmkv {

enum class admission_reason {
  admitted,
  batch_cap,          // the system holds batch_max requests
  gpu_memory,         // the GPU cannot hold it next to the others
  device_capacity,    // no pool has room for its shards
  invalid_placement,  // no pool can take its shape (h, replication) at all
  emulator_memory,    // a device's live layers would pass its memory limit
  tpot_budget,        // the predicted decode step with it passes the TPOT limit
};
// Stable short names: batch_max, gpu_memory, device_capacity, placement, emulator_memory,
// tpot, admitted (the simulator reports them in batch_limited_by and per request).
const char* to_string(admission_reason r);

struct admission_verdict {
  admission_reason reason = admission_reason::admitted;
  std::string detail;  // what did not fit, with the figures; empty when admitted
  bool admitted() const { return reason == admission_reason::admitted; }
};

struct admission_candidate {
  uint64_t request_id = 0;
  uint64_t prompt_tokens = 0;
  uint64_t decode_tokens = 0;  // tokens appended while decoding (placement and GPU sizing)
  uint64_t final_tokens() const { return prompt_tokens + decode_tokens; }
};

// What an admitted request holds until it is released. Constraints fill their part.
struct admission_grant {
  uint64_t request_id = 0;
  uint64_t final_tokens = 0;
  uint32_t pool = 0;                // index into the pools
  request_placement placement;      // device ids as the pools name them
  double gpu_bytes = 0;             // gpu_sizing::per_request: what it holds on the GPU
  bool summaries_resident = true;   // baseline: its page summaries in HBM (else over the link)
};

class admission_constraint {
 public:
  virtual ~admission_constraint() = default;
  // Whether `c` fits now, given what earlier constraints put in `g`. Takes nothing.
  virtual admission_verdict check(const admission_candidate& c, admission_grant& g) = 0;
  virtual void commit(const admission_grant&) {}   // every constraint passed: take the room
  virtual void release(const admission_grant&) {}  // the request left: give it back
  virtual void device_lost(uint32_t) {}            // nothing new goes to this device
  // A new copy of `shard` of an admitted request on `device` (re-replication, recompute):
  // the bytes `device` would have left under this constraint after taking it, or an error
  // naming why it cannot (nullopt: not this constraint's concern). Takes nothing.
  virtual result<std::optional<uint64_t>> copy_room(uint32_t /*device*/, const shard_placement& /*shard*/,
                                                    const admission_grant& /*g*/) const {
    return std::optional<uint64_t>{};
  }
  virtual void take_copy(uint32_t /*device*/, const shard_placement& /*shard*/, const admission_grant& /*g*/) {}
  // The devices this constraint knows (the placement's pools); empty: none of its concern.
  virtual std::vector<uint32_t> devices() const { return {}; }
};

// --- The constraints ----------------------------------------------------------------------

class batch_cap_constraint final : public admission_constraint {
 public:
  explicit batch_cap_constraint(uint32_t batch_max) : batch_max_(batch_max) {}
  admission_verdict check(const admission_candidate& c, admission_grant& g) override;
  void commit(const admission_grant&) override { ++in_system_; }
  void release(const admission_grant&) override;

 private:
  uint32_t batch_max_ = 0, in_system_ = 0;
};

// How GPU memory is charged to requests.
enum class gpu_sizing {
  // The batch with the candidate in it, every request sized as the longest final length
  // admitted so far (and at least `floor_tokens`): the live coordinator's check.
  batch_of_longest,
  // A ledger: each request holds gpu_memory(batch 1) − weights at its own final length
  // (its recall cache included) out of `free_bytes`: the simulator's check, for requests of
  // different lengths.
  per_request,
};

// Where a baseline request's page summaries live.
enum class summary_policy {
  fixed,            // query.summaries_resident for every request (decided once at setup)
  fit_per_request,  // in HBM when this request's summaries fit what is free, else over the link
};

struct gpu_memory_params {
  model_shape model;
  hardware_spec hw;
  gpu_memory_query query;  // mode, budget, steady, page size, tp, summaries_resident
  gpu_sizing sizing = gpu_sizing::batch_of_longest;
  summary_policy summaries = summary_policy::fixed;
  uint64_t floor_tokens = 0;              // batch_of_longest
  double free_bytes = 0;                  // per_request: capacity − weights − reservations
};

class gpu_memory_constraint final : public admission_constraint {
 public:
  explicit gpu_memory_constraint(gpu_memory_params p);
  admission_verdict check(const admission_candidate& c, admission_grant& g) override;
  void commit(const admission_grant& g) override;
  void release(const admission_grant& g) override;

  // per_request: bytes one request of `final_tokens` holds, and where its summaries live,
  // with `free_bytes` free (the policy's choice for an otherwise empty GPU: free_bytes()).
  struct request_size {
    double bytes = 0;
    bool summaries_resident = true;
  };
  request_size size_of(uint64_t final_tokens, double free_bytes) const;
  double request_bytes(uint64_t final_tokens, bool summaries_resident) const;
  double free_bytes() const { return free_; }

 private:
  gpu_memory_params p_;
  double free_ = 0;                           // per_request
  std::map<uint64_t, uint64_t> final_tokens_;  // batch_of_longest: admitted request → length
};

struct placement_params {
  std::vector<pool_state> pools;
  placement_request request;  // shape; request id, context and decode tokens set per request
  // h × s: request.head_groups when non-zero, else chosen per pool with the cost model.
  std::shared_ptr<const cost_model> costs;
  uint64_t budget_tokens = 2048;
  cross_shard_selection cross_shard = cross_shard_selection::exact;
};

class placement_constraint final : public admission_constraint {
 public:
  explicit placement_constraint(placement_params p);
  // The pool with the most free bytes first; the first that can hold it takes it.
  admission_verdict check(const admission_candidate& c, admission_grant& g) override;
  void commit(const admission_grant& g) override;
  void release(const admission_grant& g) override;
  void device_lost(uint32_t device_id) override;
  result<std::optional<uint64_t>> copy_room(uint32_t device, const shard_placement& shard,
                                            const admission_grant& g) const override;
  void take_copy(uint32_t device, const shard_placement& shard, const admission_grant& g) override;
  std::vector<uint32_t> devices() const override;
  const std::vector<pool_state>& pools() const { return p_.pools; }

 private:
  placement_params p_;
  std::map<uint32_t, std::pair<uint32_t, uint32_t>> where_;  // device → (pool, index)
  std::set<uint32_t> lost_;  // devices lost: a release gives them nothing back
  void add(const admission_grant& g, bool take);
};

// The live cluster's devices hold the live layers for real (cluster.device_memory_bytes_max).
class emulator_memory_constraint final : public admission_constraint {
 public:
  emulator_memory_constraint(std::map<uint32_t, uint64_t> free_bytes, uint32_t layers,
                             uint32_t live_layers);
  admission_verdict check(const admission_candidate& c, admission_grant& g) override;
  void commit(const admission_grant& g) override;
  void release(const admission_grant& g) override;
  void device_lost(uint32_t device_id) override;
  result<std::optional<uint64_t>> copy_room(uint32_t device, const shard_placement& shard,
                                            const admission_grant& g) const override;
  void take_copy(uint32_t device, const shard_placement& shard, const admission_grant& g) override;
  uint64_t free_bytes(uint32_t device_id) const;

 private:
  std::map<uint32_t, uint64_t> free_;
  std::set<uint32_t> lost_;  // devices lost: a release gives them nothing back
  uint32_t layers_ = 1, live_layers_ = 1;
};

// The predicted decode step (ms) of the requests in the system plus the candidate, placed
// as in the grant.
using step_predictor_ms = std::function<double(const admission_candidate&, const admission_grant&)>;

class tpot_constraint final : public admission_constraint {
 public:
  tpot_constraint(double tpot_ms_max, step_predictor_ms predict);
  admission_verdict check(const admission_candidate& c, admission_grant& g) override;

 private:
  double tpot_ms_max_ = 0;
  step_predictor_ms predict_;
};

// --- The admission ------------------------------------------------------------------------

class admission {
 public:
  // Constraints are checked in the order added (make_admission adds them in the one order).
  void add(std::unique_ptr<admission_constraint> c);
  // Admitted: every constraint takes its room and the grant is held until release().
  // Otherwise the first failing constraint's verdict, and nothing is taken.
  admission_verdict try_admit(const admission_candidate& c);
  void release(uint64_t request_id);  // no-op for a request not held
  void device_lost(uint32_t device_id);
  // A new copy of shard `shard_id` of an admitted request, after a loss (docs/DESIGN.md §7):
  // on a device, not lost and not holding that shard, that every constraint lets take it;
  // one holding nothing of the request first (the load spreads), then the most modelled
  // room left (ties: the lower id). The room is taken and the grant's placement lists the
  // device as one more replica of the shard (a release gives it back). An error naming the
  // shard and why devices were passed over when none can.
  result<uint32_t> add_copy(uint64_t request_id, uint32_t shard_id);

  const admission_grant* grant_of(uint64_t request_id) const;  // null when not held
  uint32_t in_system() const { return uint32_t(grants_.size()); }

 private:
  std::vector<std::unique_ptr<admission_constraint>> constraints_;
  std::map<uint64_t, admission_grant> grants_;  // node-based: grants never move
  std::set<uint32_t> lost_;                     // devices lost: no new copy goes there
};

// Everything make_admission may build; a constraint is left out when its part is off.
struct admission_params {
  uint32_t batch_max = 0;                        // 0: no cap
  std::optional<gpu_memory_params> gpu;          // absent: GPU memory not checked
  std::optional<placement_params> placement;     // absent: nothing placed
  std::optional<std::map<uint32_t, uint64_t>> emulator_free_bytes;  // device → bytes
  uint32_t layers = 1, live_layers = 1;          // emulator memory
  double tpot_ms_max = 0;                        // 0: no TPOT budget
  step_predictor_ms predict_step_ms;
};
admission make_admission(admission_params p);

// gpu-only (docs/DESIGN.md §2): no device holds anything; every request's KV is one shard
// (every KV head, every page) on `gpu_id`, the GPU, a pool of one slot with no capacity of
// its own. GPU memory, checked before it, is what limits admission; the placement only
// gives the host engine and the step model the one shape they share with one-device pnm-kv.
placement_params gpu_local_placement(placement_request request, uint32_t gpu_id);

// Pools of `per_pool` consecutive devices (the last may be smaller), each device with
// `capacity_bytes` free and its own failure domain; per_pool 0: one pool of every device.
std::vector<pool_state> make_pools(const std::vector<uint32_t>& device_ids, uint32_t per_pool,
                                   uint64_t capacity_bytes);

}  // namespace pnmkv
