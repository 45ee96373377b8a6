//! Interaction tests: scenarios written as text files in `testdata/`, in the
//! style of etcd-io/raft's `rafttest` package. Each file tells one story
//! (an election, a snapshot transfer, a membership change...) as a sequence
//! of commands against a hand-driven [`Cluster`](raft_core::testing::cluster::Cluster),
//! with the output each command must produce written below it:
//!
//! ```text
//! # a comment
//! command arg1 arg2 key=value list=(1 2 3)
//! ----
//! expected output
//!
//! ```
//!
//! After every command the runner checks each engine's invariants
//! (`Engine::check_invariants`), that no two nodes lead the same term, and
//! that every node applies the same entry at each index; a violation fails
//! the test. `RAFT_REWRITE=1 cargo test -p raft-core --test it interaction`
//! writes the actual outputs into the files instead of comparing them;
//! review the result with `git diff`: the files are only worth something
//! because a human checked that each story is correct Raft behaviour.
//!
//! # Output conventions
//!
//! Log positions are written `term/index`. Entries print as
//! `1/3 Command "x"` (with `client=C:S` when deduplicated), `1/2 Blank` or
//! `1/4 Membership voters=(1 2 3)&&(1 2 4) learners=(5)` (`&&` joins the
//! incoming and outgoing voters of a joint configuration). Messages print
//! as `FROM->TO Kind term=T ...fields`. Role changes print as
//! `INFO 2 became follower at term 3 (leader 1)` right after the input that
//! caused them. Errors print as `error Variant: message`.
//!
//! # Commands
//!
//! Nodes and configuration:
//! - `add-nodes N [voters=(..)] [learners=(..)] [prevote=B] [checkquorum=B]
//!   [lease=B] [drift=T] [election=T] [heartbeat=T] [max-inflight=N]
//!   [max-inflight-bytes=N] [max-entries=N] [max-bytes=N] [max-uncommitted=N]
//!   [max-pending-reads=N] [max-apply=N] [trailing=N] [chunk=N]
//!   [chunks-in-flight=N] [promotion-lag=N] [seed=N] [async-storage=B]`: the first call
//!   bootstraps nodes 1..=N with the given membership (default: all voters);
//!   later calls add N empty nodes that join through membership changes.
//!   With `async-storage=true` a node's writes wait for `persist`.
//! - `crash ID` (volatile state, unsynced writes and messages to it are
//!   lost), `restart ID` (from its disk).
//!
//! Inputs:
//! - `campaign ID`; `tick ID|(IDS)|all [N]`; `tick-heartbeat ID` (one
//!   heartbeat interval); `tick-election ID` (tick until its election timer
//!   fires; prints how many ticks that took).
//! - `propose ID DATA`; `propose-client ID CLIENT SEQ DATA`;
//!   `propose-checkpoint ID create|rollback|delete NAME` (the recording
//!   state machine carries checkpoint entries out with the runtime's rules,
//!   retaining at most two; `applied` then also lists its checkpoints and
//!   each checkpoint operation it applied, with the outcome).
//! - `read-index ID id=N [mode=read-index|lease]`.
//! - `propose-conf-change ID add-learner N | promote N | remove N |
//!   replace voters=(..) [learners=(..)]`.
//! - `transfer-leader ID TARGET`.
//! - `snapshot ID`: the state machine takes a snapshot at its applied index
//!   and reports it to the engine, which compacts its log.
//! - `inject FROM TO KIND [term=T] [fields]`: steps a hand-made message into
//!   node TO and prints the step's result (`via=network` queues it
//!   instead). Fields by kind: `RequestVote|RequestPreVote last=T/I
//!   transfer=B`; `RequestVoteResponse|RequestPreVoteResponse granted=B`;
//!   `AppendEntries prev=T/I commit=N entries=(T/I T/I:data ..)`;
//!   `AppendEntriesResponse ok=B index=N conflict-term=T conflict-index=N
//!   last=N`; `Heartbeat commit=N round=N`; `HeartbeatResponse round=N`;
//!   `InstallSnapshot snapshot=T/I voters=(..) offset=N data=S done=B`;
//!   `InstallSnapshotResponse snapshot=I next-offset=N done=B last=N`;
//!   `ReadIndex id=N mode=M`; `ReadIndexResponse id=N [index=N]`;
//!   `TimeoutNow`. The term defaults to the receiver's; `at=N` hands the
//!   message to node N whatever its addressee.
//!
//! Driving the work:
//! - `process-ready ID...`: takes each node's `Ready` and prints it (the
//!   write, hard state, entries, committed entries, messages, reads...),
//!   then handles it: messages go in flight, the write is done (`Ready
//!   (persisted)`) or queued with async storage (`Ready (write #N
//!   queued)`), committed entries are applied (a retried client request is
//!   skipped, as a deduplicating state machine would), reads are served
//!   once applied, snapshot chunks are read for the engine.
//! - `deliver-msgs ID... [type=KIND] [drop=true] [count=N]`: steps (or
//!   drops) the in-flight messages addressed to those nodes, printing each;
//!   with `count`, only the first N of them (per node).
//! - `stabilize [ID...] [quiet=true]`: handles batches, delivers messages
//!   and completes queued writes among those nodes (default all) until
//!   nothing moves, printing everything (or only `ok` when quiet).
//! - `persist ID [N|all]`: completes a node's oldest queued write(s).
//!
//! The network: `isolate ID`, `cut FROM TO [both=true]`, `heal`. A message
//! over a cut link, or to a node that is down, is dropped when it is sent
//! (marked `[dropped: ...]` in the Ready) or, if the link was cut while it
//! was in flight, when it is delivered.
//!
//! Inspection: `status ID...`, `raft-log ID`, `applied ID...` (the state
//! machine's commands and the reads served), `stats ID` (the engine's
//! non-zero counters), `election-timer ID...` (ticks elapsed and the
//! randomized timeout), `check-invariants`.

mod datadriven;
mod env;
mod format;

use std::path::PathBuf;

fn testdata() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata")
}

fn run(name: &str) {
    let mut env = env::Env::new();
    datadriven::run_file(&testdata().join(format!("{name}.txt")), |cmd| env.handle(cmd));
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run(&stringify!($name).replace('_', "-"));
            }
        )*

        /// Every file in `testdata/` has a test above.
        #[test]
        fn every_scenario_file_runs() {
            let known = [$(stringify!($name).replace('_', "-")),*];
            for entry in std::fs::read_dir(testdata()).expect("testdata exists") {
                let path = entry.expect("a readable directory").path();
                if path.extension().is_some_and(|e| e == "txt") {
                    let stem = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
                    assert!(known.contains(&stem), "{} has no test in interaction.rs", path.display());
                }
            }
        }
    };
}

scenarios!(
    election,
    election_timer,
    candidate_write,
    prevote,
    check_quorum,
    replication,
    async_storage,
    conflicts,
    snapshots,
    snapshot_window,
    membership,
    joint_consensus,
    learners,
    read_index,
    lease_read,
    transfer,
    dedup,
    checkpoints,
    flow_control,
    bad_input,
    commit_updates,
);
