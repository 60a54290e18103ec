# pnmkv control plane between the driver, the coordinator and the GPU host: requests,
# their admission, the start of a run and its result. Carried as bytes in CAF messages
# (the middleman in cluster mode), so every message that crosses a process is Cap'n Proto.
# Join and membership use transport/wire.capnp. Field numbers are never reused.

@0xc2b1d0a4e6f35a17;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("pnmkv::control::wire");

struct RequestSpec {
  requestId @0 :UInt64;
  contextTokens @1 :UInt64;
  steps @2 :UInt32;      # decode steps (tokens appended); open workloads: output tokens - 1
  arrivalNs @3 :UInt64;  # open workloads: virtual arrival time
}

struct Hello {           # node -> coordinator: asks for a join challenge
  nodeId @0 :UInt32;
  role @1 :UInt8;        # transport::node_role
}

struct Submit {          # driver -> coordinator
  request @0 :RequestSpec;
}

struct Admission {       # coordinator -> driver
  requestId @0 :UInt64;
  accepted @1 :Bool;
  reason @2 :Text;
}

struct PlacementAck {    # device -> coordinator
  nodeId @0 :UInt32;
  requestId @1 :UInt64;
  ok @2 :Bool;
  reason @3 :Text;
}

struct RunStart {        # coordinator -> gpu host: decode these (placed) requests
  requests @0 :List(RequestSpec);
  open @1 :Bool;         # an open workload: nothing is placed yet; the host asks (Admit)
}

struct Admit {           # gpu host -> coordinator: place this request now, or say why not
  requestId @0 :UInt64;
  inSystem @1 :UInt32;   # requests the host holds now (the GPU-memory check's batch)
}

struct Release {         # gpu host -> coordinator -> devices: the request is finished
  requestId @0 :UInt64;
}

struct RunResult {       # gpu host -> driver
  reportJson @0 :Text;   # actors/run_report.hpp fields as JSON
  ok @1 :Bool;
  reason @2 :Text;
}

struct Progress {        # gpu host -> driver -> whoever launched the run
  phase @0 :Text;        # "prefill" or "decode"
  done @1 :UInt64;
  total @2 :UInt64;
}

struct MemberDown {      # coordinator -> gpu host: a member was lost (monitor / heartbeats);
  nodeId @0 :UInt32;     # gpu host -> coordinator: it failed a device over (fenced it)
  reason @1 :Text;
}

struct Stop {            # driver -> coordinator -> gpu host: end the run now (SIGINT or
  reason @0 :Text;       # SIGTERM to the launcher) and report what finished
}

struct CopyAsk {         # gpu host -> coordinator: a shard fell below cluster.replication copies
  requestId @0 :UInt64;  # (re-replication) or lost its last one (recompute): place a new copy
  shardId @1 :UInt32;
  recompute @2 :Bool;    # no live copy: the new one is rebuilt from the prompt
}

struct CopyGrant {       # coordinator -> gpu host: the device that took the new copy (it holds
  requestId @0 :UInt64;  # the shard's stores now), or why no device can
  shardId @1 :UInt32;
  deviceId @2 :UInt32;   # not ok: the device that failed to take it (ask again: it is not
                         # chosen twice), or 0 when no device can
  ok @3 :Bool;
  reason @4 :Text;
}

struct Control {
  version @0 :UInt16;
  sender @1 :UInt32;
  body :union {
    hello @2 :Hello;
    submit @3 :Submit;
    admission @4 :Admission;
    placementAck @5 :PlacementAck;
    runStart @6 :RunStart;
    runResult @7 :RunResult;
    shutdown @8 :Void;
    progress @9 :Progress;
    memberDown @10 :MemberDown;
    admit @11 :Admit;
    release @12 :Release;
    stop @13 :Stop;
    copyAsk @14 :CopyAsk;
    copyGrant @15 :CopyGrant;
  }
}
