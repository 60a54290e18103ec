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

struct Resume {           # gpu host -> a restarted coordinator, once it has joined again: what
  runStarted @0 :Bool;    # it did while the coordinator was away, so that nothing the lost
  finished @1 :Bool;      # coordinator was told (or was about to be) is lost. Every field is
  released @2 :List(UInt64);   # state, not a message log: repeating it changes nothing.
  failedOver @3 :List(MemberDown);  # devices it failed over (fenced), with why
  awaitingAdmission @4 :UInt64;     # open workloads: the Admit it waits on (0: none)
  copyAsks @5 :List(CopyAsk);       # rebuilds waiting for their CopyGrant
}

# The coordinator's journal (cluster.journal_file; transport/journal.hpp frames each record):
# the decisions it made, in order, so that a restarted coordinator replays them into the
# same state. Admission calls are journaled with their outcome and re-executed on replay
# (admission is deterministic); a replay that decides otherwise is refused.
struct JournalBegin {
  configHash @0 :UInt64;  # the run's configuration (actors/coordinator_journal.hpp)
  devices @1 :UInt32;
}
struct JournalMember {
  nodeId @0 :UInt32;
  role @1 :UInt8;         # transport::node_role
  address @2 :Data;       # its worker address
}
struct JournalAdmitTried {
  request @0 :RequestSpec;
  placed @1 :Bool;
}
struct JournalCopyPlaced {
  requestId @0 :UInt64;
  shardId @1 :UInt32;
  deviceId @2 :UInt32;
}
struct JournalRecord {
  version @0 :UInt16;
  unixMs @1 :UInt64;
  body :union {
    begin @2 :JournalBegin;
    member @3 :JournalMember;
    ready @4 :Void;                 # every configured member had joined
    fenced @5 :MemberDown;          # a device failed over: never a member again
    admitTried @6 :JournalAdmitTried;
    decided @7 :Admission;          # the answer (closed: to the driver; open: to the gpu host)
    runStarted @8 :Bool;            # RunStart sent (open workload or not)
    released @9 :UInt64;            # a request's room given back
    copyPlaced @10 :JournalCopyPlaced;
    copyGranted @11 :CopyGrant;     # the answer to a CopyAsk
  }
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
    resume @16 :Resume;
  }
}
