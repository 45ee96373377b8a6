//! A deterministic simulator of a whole Raft cluster, driven by one seed.
//!
//! Three to seven engines run against a simulated network (loss,
//! duplication, delay and reordering, symmetric and one-way partitions, an
//! isolated leader), simulated disks (writes are buffered until a sync; a
//! crash loses what was not synced), a replicated key-value state machine
//! with client deduplication and the runtime's replicated checkpoints, and
//! clients that read, write, compare-and-set and delete, and now and then
//! create a checkpoint, roll back to one or delete one. A fault schedule crashes and restarts nodes, changes the
//! membership (learners, promotion, joint consensus, removal of the leader)
//! and transfers leadership, while the nodes snapshot and compact their logs
//! and stream snapshots to each other in small chunks.
//!
//! After every step the [`checker`] verifies each engine's own invariants
//! and the cluster-wide properties of Raft: Election Safety, Log Matching,
//! Leader Completeness, State Machine Safety, and that term, vote and commit
//! index never go backwards. After the fault phase, a liveness phase heals
//! everything and requires the cluster to recover; finally the client
//! history is checked for linearizability.
//!
//! Everything random comes from the seed, the world has no clock and no
//! hash-ordered iteration, so a seed replays bit for bit: run it again with
//! [`Verbosity::Events`] to read its story.
//!
//! ```
//! use raft_core::testing::sim::{run_seed, SimOptions};
//!
//! let mut options = SimOptions::new(7);
//! options.fault_steps = 300;
//! let report = run_seed(&options).expect("no violation");
//! assert_eq!(report.seed, 7);
//! ```

pub mod checker;
mod client;
pub mod disk;
mod faults;
pub mod history;
pub mod kv;
mod linearizable;
mod liveness;
mod membership;
pub mod network;
pub mod node;
pub mod rng;
pub mod scenario;
pub mod trace;
mod world;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use trace::Verbosity;
pub use world::RunStats;

use crate::protocol::InjectedBugs;

/// Steps of the fault phase in a default run.
pub const DEFAULT_FAULT_STEPS: u64 = 3_000;

/// The least number of steps the liveness phase is given to recover.
pub const DEFAULT_LIVENESS_STEPS: u64 = 3_000;

/// How to run one seed.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// The seed: it decides everything else.
    pub seed: u64,
    /// Protocol bugs to switch on in every engine.
    pub bugs: InjectedBugs,
    /// Mistakes for every node's state machine to make with checkpoints.
    pub kv_bugs: kv::KvBugs,
    /// How much of the trace to print.
    pub verbosity: Verbosity,
    /// Steps of the fault phase.
    pub fault_steps: u64,
    /// The least number of steps the liveness phase may take.
    pub liveness_steps: u64,
    /// Whether to check the history for linearizability at the end.
    pub check_linearizability: bool,
    /// Whether to run the per-step safety checks (engine invariants, Election
    /// Safety, Log Matching, Leader Completeness, State Machine Safety,
    /// monotonicity, durability). Switched off only to show that the
    /// end-to-end checks (liveness, linearizability) catch bugs by themselves.
    pub per_step_checks: bool,
}

impl SimOptions {
    /// Default options for `seed`: no bugs, quiet, default lengths.
    pub fn new(seed: u64) -> Self {
        SimOptions {
            seed,
            bugs: InjectedBugs::default(),
            kv_bugs: kv::KvBugs::default(),
            verbosity: Verbosity::Quiet,
            fault_steps: DEFAULT_FAULT_STEPS,
            liveness_steps: DEFAULT_LIVENESS_STEPS,
            check_linearizability: true,
            per_step_checks: true,
        }
    }
}

/// The property a failing seed violated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Property {
    /// An engine's own `check_invariants()` failed.
    EngineInvariant,
    /// Two leaders in one term, or two votes by one node in one term.
    ElectionSafety,
    /// Two logs disagree before a point where they agree.
    LogMatching,
    /// A leader lacks an entry committed before its term.
    LeaderCompleteness,
    /// Two nodes applied different entries (or reached different states) at
    /// the same index, or a committed entry changed.
    StateMachineSafety,
    /// Term, vote within a term or commit index went backwards.
    Monotonicity,
    /// A message promised state that was not durable yet.
    Durability,
    /// A `Ready` asked storage for something impossible.
    StorageContract,
    /// An engine rejected a message as a protocol violation.
    ProtocolViolation,
    /// A node could not restart from its own disk.
    Restore,
    /// The cluster did not recover after the faults stopped.
    Liveness,
    /// The client history is not linearizable.
    Linearizability,
    /// The simulator recorded an impossible history (a simulator bug).
    History,
    /// Something panicked.
    Panic,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A safety or liveness violation found by the simulator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The step at which it was found.
    pub step: u64,
    /// The property violated.
    pub property: Property,
    /// What exactly went wrong.
    pub details: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} violated at step {}: {}", self.property, self.step, self.details)
    }
}

impl std::error::Error for Violation {}

/// What a passing seed did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Steps of the fault phase.
    pub fault_steps: u64,
    /// Steps in total, the liveness phase included.
    pub total_steps: u64,
    /// A hash of the whole run: equal for two runs of a seed.
    pub trace_hash: u64,
    /// Client operations recorded.
    pub operations: usize,
    /// Operations with a definite outcome.
    pub definite_operations: usize,
    /// Checkpoint operations (create, rollback, delete) among them all.
    pub checkpoint_operations: usize,
    /// Rollbacks that a client saw succeed.
    pub rollbacks: usize,
    /// Terms that had a leader.
    pub terms_with_leader: usize,
    /// Messages sent.
    pub messages_sent: u64,
    /// Messages lost or swallowed by partitions.
    pub messages_lost: u64,
    /// Fault and driver counters.
    pub stats: RunStats,
    /// Voters at the start.
    pub initial_voters: u64,
    /// Voters at the end.
    pub final_voters: usize,
}

/// Runs one seed. Panics inside the engine propagate; see [`run_seed`].
pub fn run(options: &SimOptions) -> Result<SimReport, Violation> {
    world::World::new(options.clone())?.run()
}

/// Runs one seed and also returns the client history it recorded (empty if
/// the world could not even be built). Panics propagate.
pub fn run_with_history(options: &SimOptions) -> (Result<SimReport, Violation>, history::History) {
    match world::World::new(options.clone()) {
        Ok(mut world) => {
            let result = world.run();
            (result, world.history().clone())
        }
        Err(violation) => (Err(violation), history::History::default()),
    }
}

/// Runs one seed, reporting a panic (in the engine or the simulator) as a
/// [`Property::Panic`] violation instead of unwinding.
pub fn run_seed(options: &SimOptions) -> Result<SimReport, Violation> {
    match catch_unwind(AssertUnwindSafe(|| run(options))) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with no message".to_string());
            Err(Violation { step: 0, property: Property::Panic, details: message })
        }
    }
}

/// The injected bugs by name, as the CLI and the tests name them.
pub const BUG_NAMES: [&str; 6] = [
    "vote_without_log_check",
    "commit_previous_terms",
    "apply_before_commit",
    "forget_vote",
    "count_self_vote_early",
    "lead_before_own_write",
];

/// The injected bug called `name` (one of [`BUG_NAMES`]).
pub fn injected_bug(name: &str) -> Option<InjectedBugs> {
    let mut bugs = InjectedBugs::default();
    match name {
        "vote_without_log_check" => bugs.vote_without_log_check = true,
        "commit_previous_terms" => bugs.commit_previous_terms = true,
        "apply_before_commit" => bugs.apply_before_commit = true,
        "forget_vote" => bugs.forget_vote = true,
        "count_self_vote_early" => bugs.count_self_vote_early = true,
        "lead_before_own_write" => bugs.lead_before_own_write = true,
        _ => return None,
    }
    Some(bugs)
}

/// The mistakes with checkpoints the simulated state machine can be told to
/// make, by name, as the CLI and the tests name them: a rollback that
/// reports success but keeps the keys (every replica alike, so only the
/// client history can tell), and snapshots that leave the checkpoints out.
pub const KV_BUG_NAMES: [&str; 2] = ["rollback_keeps_data", "snapshot_drops_checkpoints"];

/// The state machine's mistakes called `name` (one of [`KV_BUG_NAMES`]).
pub fn kv_bug(name: &str) -> Option<kv::KvBugs> {
    let mut bugs = kv::KvBugs::default();
    match name {
        "rollback_keeps_data" => bugs.rollback_keeps_data = true,
        "snapshot_drops_checkpoints" => bugs.snapshot_drops_checkpoints = true,
        _ => return None,
    }
    Some(bugs)
}

/// Runs seeds `start..start + max_seeds` with `bugs` switched on (and the
/// template's state machine bugs) until one reports a violation; returns
/// how many seeds that took and the violation.
pub fn hunt(
    template: &SimOptions,
    bugs: InjectedBugs,
    start: u64,
    max_seeds: u64,
) -> Option<(u64, Violation)> {
    (0..max_seeds).find_map(|offset| {
        let options = SimOptions { seed: start + offset, bugs, ..template.clone() };
        run_seed(&options).err().map(|violation| (offset + 1, violation))
    })
}
