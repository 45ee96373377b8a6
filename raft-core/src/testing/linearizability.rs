//! A linearizability checker for client histories of a key-value store.
//!
//! A test records every client operation on the store as an [`Operation`]:
//! which key it touched, what it asked for, when it was invoked, when it
//! completed and what it returned. [`check`] then decides whether some
//! sequential order of those operations exists that (a) respects real time
//! (if operation A completed before B was invoked, A comes first) and (b)
//! explains every result under the semantics of a single register per key.
//! Such a history is *linearizable*.
//!
//! # Per-key decomposition
//!
//! Linearizability is compositional (Herlihy & Wing, 1990): a history of
//! independent objects is linearizable exactly when the sub-history of each
//! object is. Every key is an independent register, so each key is checked
//! on its own. This turns one search over `n` operations into several
//! searches over far fewer, which matters because the search is exponential
//! in the worst case.
//!
//! # The search (Wing & Gong, with Lowe's memoisation)
//!
//! Each operation on a key contributes a *call* event at its invoke time and
//! a *return* event at its completion time. The events are sorted by time,
//! calls before returns at equal times, because precedence requires a strict
//! `complete < invoke` and so touching operations are concurrent. They are
//! kept in a doubly linked list.
//!
//! Scanning the list from its head, every call met before the first return
//! event belongs to an operation that may take effect next: nothing that is
//! still pending completed before it was invoked. The search tries such an
//! operation against the register model; if the model accepts it, the
//! operation is *lifted* (both its events leave the list) and the scan
//! restarts from the head. When the scan meets a return event instead, the
//! operation it belongs to should already have taken effect, so the last
//! choice was wrong: the search pops it, puts its events back, and tries the
//! next candidate after it. Removing and restoring list nodes in
//! last-in-first-out order is O(1) each (Knuth's "dancing links").
//!
//! Lowe ("Testing for linearizability", 2017) observed that the future of
//! the search depends only on *which* operations have been linearized and on
//! the register's state (its value, and with checkpoints the values they
//! remember), not on the order in which they were. The checker therefore
//! remembers every configuration (set of linearized operations as a bitset,
//! the key's state) it has explored to failure and never explores
//! one twice. With bounded client concurrency `c`, the reachable sets differ
//! only within a window of about `c` overlapping operations, so the number
//! of configurations is in practice around `n · 2^c` at worst, and about ten
//! per operation for a linearizable history from 8 clients. Deciding
//! linearizability is NP-complete in general (Gibbons & Korach, 1997), so no
//! bound better than exponential exists for adversarial histories; the
//! [`SearchBudget`] turns those into [`Verdict::Unknown`].
//!
//! # Uncertain outcomes
//!
//! * [`Outcome::Failed`] means the store guarantees the operation did not
//!   take effect, so it is dropped from the history before the search.
//! * [`Outcome::Indeterminate`] (a timeout, a lost connection) means the
//!   operation may or may not have taken effect, at any time after its
//!   invoke. It gets no return event, as if it completed at infinity, and its
//!   result is unconstrained. The search succeeds once every *determinate*
//!   operation is linearized: the indeterminate ones left over are placed at
//!   the end of the order, where they affect nothing, which is the same as
//!   never having taken effect. Indeterminate reads constrain and change
//!   nothing, so they are dropped.
//!
//! Done naively, indeterminate operations multiply the search: every
//! timed-out write may be placed before any later operation, and each
//! placement is a different set of linearized operations. A failing history
//! of 2,000 operations with 30 timeouts then exceeds ten million
//! configurations. The `search` submodule documents four rules that avoid
//! this without changing any verdict: indeterminate operations are tried
//! last; only before an operation that depends on their effect; values that
//! nothing reads are merged, so that identical timed-out operations form
//! classes of which only the earliest pending member is tried; and a
//! configuration explored to failure also covers those that differ from it
//! only in having used fewer of such a class, unless that class ran short
//! during its exploration. The same history is then decided in about 300,000
//! configurations. An exhaustive comparison with a brute-force checker on
//! thousands of small random histories guards these rules in the tests.
//!
//! # Cost
//!
//! Each configuration costs a scan of the pending window and a hash lookup
//! with an `O(n / 64)` bitset comparison, a few microseconds in a release
//! build. Measured in release builds on the 2-core development machine while
//! it was busy with other work: one key with 2,000 operations from 8
//! clients, 3% of them timed out, checks in 30–80 ms when linearizable; with
//! one read corrupted near the end, the exhaustive search that proves the
//! violation takes 0.6–5 s.
//!
//! Maybe-applied checkpoint creates cost more than maybe-applied writes: a
//! create remembers the value the key holds where it takes effect, so its
//! place relative to every later write matters, and the rule that tries an
//! indeterminate operation only right before one that depends on it prunes
//! almost nothing for it. A simulator history with 170 checkpoint operations
//! per key, 27 of them indeterminate, needed millions of configurations on
//! one key; with 7 indeterminate (its clients learned the outcome of most
//! attempts), a few thousand. Another, with 1,203 operations on one key of
//! which 21 maybe-applied checkpoint operations and 84 maybe-applied
//! writes, ran out of the default budget (10 million configurations) and
//! was reported [`Verdict::Unknown`], never as a violation. Keep such
//! operations rare in what is checked: the simulator's clients wait for the
//! outcome of a checkpoint operation they got accepted.
//!
//! # The model
//!
//! The sequential specification of a key is [`Op::apply`]: from a key's
//! [`KeyState`], the state after the operation and the outcome a correct
//! store reports. An outcome is consistent when it is that one (or
//! indeterminate). The search's pruning relies on two more facts, kept next
//! to it: which values an operation compares against (`observed_values`)
//! and which it only stores (`map_written_values`). A new kind of operation
//! is a new [`Op`] variant with an arm in each of these.
//!
//! # Checkpoints and rollback
//!
//! A store with named checkpoints (raft-core's replicated checkpoints, see
//! [`crate::runtime::checkpoints`]) is checked with three more operations,
//! which act on every key at once: [`Op::CreateCheckpoint`] makes every key
//! remember its current value under the name, [`Op::Rollback`] sets every
//! key to the value it remembered under the name (absent if it was absent),
//! and [`Op::DeleteCheckpoint`] forgets the name. Their outcomes
//! ([`CheckpointOutcome`]: done, already exists, not found, too many) follow
//! from which names exist, with at most [`Model::max_checkpoints`] at once,
//! exactly as the runtime decides them; so a key's state is its value plus,
//! for each of at most [`MAX_CHECKPOINT_NAMES`] names, whether it exists and
//! what the key remembered under it. A checkpoint operation that timed out
//! may have taken effect, like a write.
//!
//! Every key's sub-history gets all the checkpoint operations, and each
//! key is still checked on its own. A rollback touches every key, so keys
//! are no longer independent objects and the decomposition above is no
//! longer exact: each key having a linearization is necessary for the whole
//! history to have one, but not sufficient, since the keys' linearizations
//! may order the same checkpoint operations differently. The check can miss
//! such a violation (one that needs two keys to show); it never reports one
//! that is not there. Names are capped so that the extra state stays small:
//! a name's remembered value is only ever compared through the reads after
//! a rollback, so values nobody reads stay merged (see the `search` module)
//! and a key's state grows by a few words, not by a history.
//!
//! # Example
//!
//! ```
//! use raft_core::testing::linearizability::{History, HistoryError, Op, Outcome, Verdict};
//!
//! let mut history = History::new();
//! let write = history.invoke(1, 7, Op::Write(5));
//! let read = history.invoke(2, 7, Op::Read);
//! history.complete(write, Outcome::Written)?;
//! // Concurrent with the write, so it may see the old value.
//! history.complete(read, Outcome::Read(None))?;
//! assert_eq!(history.check(None)?, Verdict::Linearizable);
//!
//! // A read that starts after the write completed must see it.
//! let stale = history.invoke(3, 7, Op::Read);
//! history.complete(stale, Outcome::Read(None))?;
//! assert!(matches!(history.check(None)?, Verdict::NotLinearizable { key: 7, .. }));
//! # Ok::<(), HistoryError>(())
//! ```

mod search;

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};

use serde::{Deserialize, Serialize};

use search::{search_key, BestPrefix, SearchResult};

/// The default for [`SearchBudget::max_explored_states`]. A linearizable
/// history explores about ten configurations per operation and proving a
/// violation in 2,000 operations takes up to about a million, so ten
/// million leaves room for long or highly concurrent keys, while a
/// pathological key gives up after some tens of seconds rather than hanging.
pub const DEFAULT_MAX_EXPLORED_STATES: u64 = 10_000_000;

/// The default for [`SearchBudget::max_cache_bytes`]: 2 GiB, a tenth of
/// the memory of the machines the test suites run on, so that two test
/// threads searching at once cannot exhaust it.
pub const DEFAULT_MAX_CACHE_BYTES: u64 = 2 << 30;

/// How many operations of the longest linearizable prefix an explanation
/// lists (the last ones, which are the ones nearest the violation).
const EXPLANATION_PREFIX_OPERATIONS_MAX: usize = 20;

/// How many candidate operations an explanation lists.
const EXPLANATION_CANDIDATES_MAX: usize = 16;

/// What a client asked the store to do with one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// Read the key's value.
    Read,
    /// Set the key to a value unconditionally.
    Write(u64),
    /// Compare-and-set: if the key holds `expected`, set it to `new`.
    Cas {
        /// The value the key must hold for the operation to succeed; `None`
        /// means "only if the key is absent" (create).
        expected: Option<u64>,
        /// The value to set on success; `None` deletes the key.
        new: Option<u64>,
    },
    /// Remove the key.
    Delete,
    /// Create the checkpoint `name`: every key remembers its current value
    /// under it. Fails if the name exists, or if
    /// [`Model::max_checkpoints`] checkpoints exist.
    CreateCheckpoint(CheckpointName),
    /// Roll back to the checkpoint `name`: every key takes the value it
    /// remembered under it (absent if it was absent). Fails if the name
    /// does not exist.
    Rollback(CheckpointName),
    /// Forget the checkpoint `name`. Fails if the name does not exist.
    DeleteCheckpoint(CheckpointName),
}

/// The most checkpoint names a history may use: each adds a remembered
/// value to every configuration the search explores, so they are capped.
pub const MAX_CHECKPOINT_NAMES: usize = 4;

/// A checkpoint's name in a history: a number below
/// [`MAX_CHECKPOINT_NAMES`], standing for one of the few names the test
/// uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CheckpointName(pub u8);

impl fmt::Display for CheckpointName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "checkpoint {}", self.0)
    }
}

/// What a checkpoint operation reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CheckpointOutcome {
    /// It took effect.
    Done,
    /// A create found the name taken.
    AlreadyExists,
    /// A rollback or a delete found no checkpoint of the name.
    NotFound,
    /// A create found [`Model::max_checkpoints`] checkpoints.
    TooMany,
}

/// One key's state in the model: its value and, for each checkpoint name,
/// whether the checkpoint exists and the value the key had when it was
/// created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct KeyState {
    /// The key's value (`None`: absent).
    pub value: Option<u64>,
    /// By name: `None` if no such checkpoint exists, else the value
    /// remembered.
    checkpoints: [Option<Option<u64>>; MAX_CHECKPOINT_NAMES],
}

impl KeyState {
    /// A key holding `value`, with no checkpoint.
    pub fn new(value: Option<u64>) -> Self {
        KeyState { value, checkpoints: [None; MAX_CHECKPOINT_NAMES] }
    }

    /// The value remembered under `name`: `None` if no such checkpoint
    /// exists, `Some(None)` if the key was absent when it was created.
    pub fn remembered(&self, name: CheckpointName) -> Option<Option<u64>> {
        self.checkpoints.get(usize::from(name.0)).copied().flatten()
    }

    /// How many checkpoints exist.
    pub fn checkpoint_count(&self) -> usize {
        self.checkpoints.iter().filter(|slot| slot.is_some()).count()
    }

    fn slot(&mut self, name: CheckpointName) -> Option<&mut Option<Option<u64>>> {
        self.checkpoints.get_mut(usize::from(name.0))
    }
}

/// The sequential specification every key is checked against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Model {
    /// Every key's value at the start (`None`: absent). No checkpoint
    /// exists at the start.
    pub initial: Option<u64>,
    /// The most checkpoints that may exist at once: one more create fails
    /// with [`CheckpointOutcome::TooMany`] (the runtime's `max_count`).
    pub max_checkpoints: usize,
}

impl Model {
    /// Keys start at `initial`; up to [`MAX_CHECKPOINT_NAMES`] checkpoints
    /// (so a create never fails for their number).
    pub fn new(initial: Option<u64>) -> Self {
        Model { initial, max_checkpoints: MAX_CHECKPOINT_NAMES }
    }
}

impl Op {
    /// What this operation does to a key in state `before`, with at most
    /// `max_checkpoints` checkpoints: the state after it and the outcome a
    /// correct store reports. This is the whole sequential specification;
    /// a recorded outcome is consistent when it is this one. A checkpoint
    /// name out of range (see [`MAX_CHECKPOINT_NAMES`]) is a name that can
    /// never exist: creating it is refused as too many.
    pub fn apply(self, before: KeyState, max_checkpoints: usize) -> (KeyState, Outcome) {
        let mut after = before;
        let outcome = match self {
            Op::Read => Outcome::Read(before.value),
            Op::Write(value) => {
                after.value = Some(value);
                Outcome::Written
            }
            Op::Cas { expected, new } => {
                let matched = before.value == expected;
                if matched {
                    after.value = new;
                }
                Outcome::Cas(matched)
            }
            Op::Delete => {
                after.value = None;
                Outcome::Deleted
            }
            Op::CreateCheckpoint(name) => {
                let count = before.checkpoint_count();
                Outcome::Checkpoint(match after.slot(name) {
                    None => CheckpointOutcome::TooMany,
                    Some(Some(_)) => CheckpointOutcome::AlreadyExists,
                    Some(None) if count >= max_checkpoints => CheckpointOutcome::TooMany,
                    Some(slot) => {
                        *slot = Some(before.value);
                        CheckpointOutcome::Done
                    }
                })
            }
            Op::Rollback(name) => Outcome::Checkpoint(match before.remembered(name) {
                None => CheckpointOutcome::NotFound,
                Some(value) => {
                    after.value = value;
                    CheckpointOutcome::Done
                }
            }),
            Op::DeleteCheckpoint(name) => Outcome::Checkpoint(match after.slot(name) {
                Some(slot @ Some(_)) => {
                    *slot = None;
                    CheckpointOutcome::Done
                }
                _ => CheckpointOutcome::NotFound,
            }),
        };
        (after, outcome)
    }

    /// Whether this is a checkpoint operation, which acts on every key.
    pub fn is_checkpoint(self) -> bool {
        matches!(self, Op::CreateCheckpoint(_) | Op::Rollback(_) | Op::DeleteCheckpoint(_))
    }

    /// The checkpoint a checkpoint operation names.
    pub fn checkpoint_name(self) -> Option<CheckpointName> {
        match self {
            Op::CreateCheckpoint(name) | Op::Rollback(name) | Op::DeleteCheckpoint(name) => Some(name),
            Op::Read | Op::Write(_) | Op::Cas { .. } | Op::Delete => None,
        }
    }
}

/// What a client learnt about one operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Outcome {
    /// A read returned this value (`None`: the key was absent).
    Read(Option<u64>),
    /// A write was applied.
    Written,
    /// A compare-and-set was applied and reported whether it succeeded.
    Cas(bool),
    /// A delete was applied.
    Deleted,
    /// A checkpoint operation was applied and reported this.
    Checkpoint(CheckpointOutcome),
    /// The store guarantees the operation did not take effect.
    Failed,
    /// The client does not know whether the operation took effect (timeout,
    /// lost connection, crash). It may have, at any time after its invoke.
    /// Operations that were invoked but never completed are indeterminate.
    Indeterminate,
}

impl Outcome {
    /// Whether this outcome is a definite result of the operation, as
    /// opposed to [`Outcome::Failed`] or [`Outcome::Indeterminate`].
    pub fn is_definite(self) -> bool {
        !matches!(self, Outcome::Failed | Outcome::Indeterminate)
    }

    /// Whether this outcome can be the result of `op`: a read's outcome is a
    /// read result, a write's is "written", and so on. Failed and
    /// indeterminate fit every operation.
    pub fn fits(self, op: Op) -> bool {
        matches!(
            (op, self),
            (_, Outcome::Failed | Outcome::Indeterminate)
                | (Op::Read, Outcome::Read(_))
                | (Op::Write(_), Outcome::Written)
                | (Op::Cas { .. }, Outcome::Cas(_))
                | (Op::Delete, Outcome::Deleted)
                | (
                    Op::CreateCheckpoint(_),
                    Outcome::Checkpoint(
                        CheckpointOutcome::Done
                            | CheckpointOutcome::AlreadyExists
                            | CheckpointOutcome::TooMany
                    )
                )
                | (
                    Op::Rollback(_) | Op::DeleteCheckpoint(_),
                    Outcome::Checkpoint(CheckpointOutcome::Done | CheckpointOutcome::NotFound)
                )
        )
    }
}

/// One client operation on one key, as recorded by a test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Operation {
    /// The client that issued it. Only used in explanations.
    pub client: u64,
    /// The key it touched. A checkpoint operation acts on every key of the
    /// history; its own key is only made sure to be checked, so that a
    /// history of checkpoint operations alone is checked too.
    pub key: u64,
    /// What was asked.
    pub op: Op,
    /// Logical time at which the client sent it, from a counter shared by
    /// all clients of the history.
    pub invoke: u64,
    /// Logical time at which the client learnt the outcome, on the same
    /// counter; `None` if it never did. Must not be less than `invoke`.
    pub complete: Option<u64>,
    /// What the client learnt. A definite outcome needs a `complete` time.
    pub outcome: Outcome,
}

/// Identifies an operation of a [`History`]: its position in
/// [`History::operations`], also used to name operations in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub usize);

impl OpId {
    /// The operation's position in the history.
    pub const fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A recorded history, built as operations start and finish.
///
/// Call [`History::invoke`] when a client sends an operation and
/// [`History::complete`] when it learns the outcome; both stamp the event
/// with the history's own logical clock, which ticks once per event. A test
/// that keeps its own clock uses [`History::invoke_at`] and
/// [`History::complete_at`], or [`History::push`] for a finished record;
/// the internal clock then moves past every time it is given, so the two
/// styles can be mixed. Operations never completed stay
/// [`Outcome::Indeterminate`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    operations: Vec<Operation>,
    /// The next logical time the history hands out.
    #[serde(default)]
    clock: u64,
}

impl History {
    /// An empty history whose clock starts at zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `client` sent `op` on `key` now, by the history's clock.
    pub fn invoke(&mut self, client: u64, key: u64, op: Op) -> OpId {
        let time = self.clock;
        self.invoke_at(client, key, op, time)
    }

    /// Records that `client` sent `op` on `key` at logical time `time`.
    pub fn invoke_at(&mut self, client: u64, key: u64, op: Op, time: u64) -> OpId {
        self.push(Operation {
            client,
            key,
            op,
            invoke: time,
            complete: None,
            outcome: Outcome::Indeterminate,
        })
    }

    /// Records the outcome of operation `id` now, by the history's clock.
    pub fn complete(&mut self, id: OpId, outcome: Outcome) -> Result<(), HistoryError> {
        let time = self.clock;
        self.complete_at(id, outcome, time)
    }

    /// Records the outcome of operation `id` at logical time `time`. Fails,
    /// changing nothing, if the id is unknown, the operation already
    /// completed, the outcome does not fit the operation, or `time` is
    /// before the invoke.
    pub fn complete_at(&mut self, id: OpId, outcome: Outcome, time: u64) -> Result<(), HistoryError> {
        let operations = self.operations.len();
        let operation =
            self.operations.get_mut(id.0).ok_or(HistoryError::UnknownOperation { id, operations })?;
        if operation.complete.is_some() || operation.outcome != Outcome::Indeterminate {
            return Err(HistoryError::AlreadyCompleted { id });
        }
        if !outcome.fits(operation.op) {
            return Err(HistoryError::OutcomeMismatch { id, op: operation.op, outcome });
        }
        if time < operation.invoke {
            let invoke = operation.invoke;
            return Err(HistoryError::CompletedBeforeInvoked { id, invoke, complete: time });
        }
        operation.complete = Some(time);
        operation.outcome = outcome;
        self.advance_clock_past(time);
        Ok(())
    }

    /// Appends a finished (or never finished) record as it is. It is
    /// validated by [`check`], not here, so that a history read back from a
    /// file can be pushed whole and then checked.
    pub fn push(&mut self, operation: Operation) -> OpId {
        self.advance_clock_past(operation.invoke);
        if let Some(complete) = operation.complete {
            self.advance_clock_past(complete);
        }
        self.operations.push(operation);
        OpId(self.operations.len() - 1)
    }

    /// The operations recorded so far, in the order they were invoked or
    /// pushed; an [`OpId`] is a position in this slice.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// The recorded operations, by value.
    pub fn into_operations(self) -> Vec<Operation> {
        self.operations
    }

    /// The number of operations recorded.
    pub fn len(&self) -> usize {
        self.operations.len()
    }

    /// Whether no operation has been recorded.
    pub fn is_empty(&self) -> bool {
        self.operations.is_empty()
    }

    /// Checks this history with [`check`]: every key starts at `initial`.
    pub fn check(&self, initial: Option<u64>) -> Result<Verdict, HistoryError> {
        check(&self.operations, initial)
    }

    fn advance_clock_past(&mut self, time: u64) {
        self.clock = self.clock.max(time.saturating_add(1));
    }
}

/// Why a history cannot be checked: it describes something impossible, which
/// points at a bug in the harness that recorded it rather than in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HistoryError {
    /// An operation id that the history does not contain.
    UnknownOperation {
        /// The id given.
        id: OpId,
        /// How many operations the history holds.
        operations: usize,
    },
    /// An operation was completed twice.
    AlreadyCompleted {
        /// The operation.
        id: OpId,
    },
    /// An operation completed before it was invoked.
    CompletedBeforeInvoked {
        /// The operation.
        id: OpId,
        /// Its invoke time.
        invoke: u64,
        /// Its (earlier) completion time.
        complete: u64,
    },
    /// An operation has a definite outcome but no completion time.
    MissingCompletion {
        /// The operation.
        id: OpId,
    },
    /// A checkpoint name at or above [`MAX_CHECKPOINT_NAMES`].
    CheckpointNameOutOfRange {
        /// The operation.
        id: OpId,
        /// Its name.
        name: CheckpointName,
    },
    /// An outcome that the operation cannot have, such as a read that
    /// reports "written".
    OutcomeMismatch {
        /// The operation.
        id: OpId,
        /// What it asked for.
        op: Op,
        /// The outcome recorded for it.
        outcome: Outcome,
    },
}

impl fmt::Display for HistoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HistoryError::UnknownOperation { id, operations } => {
                write!(f, "operation {id} does not exist (the history has {operations})")
            }
            HistoryError::AlreadyCompleted { id } => {
                write!(f, "operation {id} was already completed")
            }
            HistoryError::CompletedBeforeInvoked { id, invoke, complete } => {
                write!(f, "operation {id} completed at time {complete}, before its invoke at time {invoke}")
            }
            HistoryError::MissingCompletion { id } => {
                write!(f, "operation {id} has a definite outcome but no completion time")
            }
            HistoryError::CheckpointNameOutOfRange { id, name } => write!(
                f,
                "operation {id} names {name}; names must be below {MAX_CHECKPOINT_NAMES}, the cap on names"
            ),
            HistoryError::OutcomeMismatch { id, op, outcome } => {
                write!(f, "operation {id} ({op}) cannot have the outcome {outcome}")
            }
        }
    }
}

impl std::error::Error for HistoryError {}

/// The checker's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Every key's sub-history has a linearization.
    Linearizable,
    /// Some key's sub-history has none. If several keys fail, the lowest key
    /// is reported.
    NotLinearizable {
        /// The key whose operations cannot be linearized.
        key: u64,
        /// For a person: the longest linearizable prefix the search found,
        /// the key's value after it, and why none of the operations that
        /// could come next fits.
        explanation: String,
    },
    /// No key failed, but the search of this key ran out of its
    /// [`SearchBudget`] before deciding.
    Unknown {
        /// The first key (the lowest) whose search gave up.
        key: u64,
        /// Which bound was reached.
        reason: String,
    },
}

impl Verdict {
    /// Whether the verdict is [`Verdict::Linearizable`].
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { key, explanation } => {
                write!(f, "not linearizable on key {key}:\n{explanation}")
            }
            Verdict::Unknown { key, reason } => write!(f, "unknown on key {key}: {reason}"),
        }
    }
}

/// Bounds on the search of one key. Each key has the whole budget, so a
/// check of `k` keys does at most `k` times this much work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SearchBudget {
    /// The most configurations (set of linearized operations, register
    /// value) one key's search may enter. Each costs a list scan over the
    /// pending operations and a cache insertion, so this bounds time.
    pub max_explored_states: u64,
    /// The most bytes, approximately, that one key's cache of explored
    /// configurations may hold. Each entry holds a bitset of up to `n / 8`
    /// bytes for `n` operations on the key, so this bounds memory where
    /// `max_explored_states` alone would not.
    pub max_cache_bytes: u64,
}

impl Default for SearchBudget {
    fn default() -> Self {
        Self { max_explored_states: DEFAULT_MAX_EXPLORED_STATES, max_cache_bytes: DEFAULT_MAX_CACHE_BYTES }
    }
}

/// Checks `history` for linearizability, every key starting at `initial`,
/// within the default [`SearchBudget`]. The operations may be in any order.
/// Fails if the history describes something impossible (see
/// [`HistoryError`]); an `OpId` in an error is a position in `history`.
pub fn check(history: &[Operation], initial: Option<u64>) -> Result<Verdict, HistoryError> {
    check_with_budget(history, initial, SearchBudget::default())
}

/// Like [`check`], with explicit bounds on the search of each key.
pub fn check_with_budget(
    history: &[Operation],
    initial: Option<u64>,
    budget: SearchBudget,
) -> Result<Verdict, HistoryError> {
    check_with_model(history, Model::new(initial), budget)
}

/// Like [`check`], against `model` (the keys' initial value and the bound
/// on checkpoints), with explicit bounds on the search of each key.
pub fn check_with_model(
    history: &[Operation],
    model: Model,
    budget: SearchBudget,
) -> Result<Verdict, HistoryError> {
    let keys = partition_by_key(history)?;
    let mut first_unknown = None;
    for (&key, operations) in &keys {
        match search_key(operations, model, budget).result {
            SearchResult::Linearizable => {}
            SearchResult::NotLinearizable(best) => {
                let explanation = explain(history, operations, model, &best);
                return Ok(Verdict::NotLinearizable { key, explanation });
            }
            SearchResult::Unknown(reason) => {
                // A definite violation on a later key is worth more than
                // this, so keep looking.
                first_unknown.get_or_insert(Verdict::Unknown { key, reason });
            }
        }
    }
    Ok(first_unknown.unwrap_or(Verdict::Linearizable))
}

/// One operation of a key's sub-history, as the search sees it.
#[derive(Clone, Copy, Debug)]
struct KeyOperation {
    /// Position in the full history, for explanations.
    index: usize,
    op: Op,
    /// A definite outcome, or [`Outcome::Indeterminate`].
    outcome: Outcome,
    invoke: u64,
    /// `None` for an indeterminate operation: it completes at infinity.
    complete: Option<u64>,
}

impl KeyOperation {
    fn is_indeterminate(&self) -> bool {
        self.complete.is_none()
    }
}

/// Validates every operation and splits the history into per-key
/// sub-histories, dropping operations that cannot matter: failed ones and
/// indeterminate reads. Checkpoint operations go into every key's.
fn partition_by_key(history: &[Operation]) -> Result<BTreeMap<u64, Vec<KeyOperation>>, HistoryError> {
    let mut keys: BTreeMap<u64, Vec<KeyOperation>> = BTreeMap::new();
    let mut checkpoint_operations = Vec::new();
    for (index, operation) in history.iter().enumerate() {
        validate(OpId(index), operation)?;
        let complete = match operation.outcome {
            Outcome::Failed => continue,
            Outcome::Indeterminate if operation.op == Op::Read => continue,
            Outcome::Indeterminate => None,
            _ => operation.complete,
        };
        let key_operation = KeyOperation {
            index,
            op: operation.op,
            outcome: operation.outcome,
            invoke: operation.invoke,
            complete,
        };
        let operations = keys.entry(operation.key).or_default();
        if operation.op.is_checkpoint() {
            checkpoint_operations.push(key_operation);
        } else {
            operations.push(key_operation);
        }
    }
    for operations in keys.values_mut() {
        operations.extend_from_slice(&checkpoint_operations);
    }
    Ok(keys)
}

fn validate(id: OpId, operation: &Operation) -> Result<(), HistoryError> {
    if let Some(complete) = operation.complete {
        if complete < operation.invoke {
            let invoke = operation.invoke;
            return Err(HistoryError::CompletedBeforeInvoked { id, invoke, complete });
        }
    }
    if !operation.outcome.fits(operation.op) {
        let (op, outcome) = (operation.op, operation.outcome);
        return Err(HistoryError::OutcomeMismatch { id, op, outcome });
    }
    if operation.outcome.is_definite() && operation.complete.is_none() {
        return Err(HistoryError::MissingCompletion { id });
    }
    if let Some(name) = operation.op.checkpoint_name() {
        if usize::from(name.0) >= MAX_CHECKPOINT_NAMES {
            return Err(HistoryError::CheckpointNameOutOfRange { id, name });
        }
    }
    Ok(())
}

/// The model's verdict on one operation: the key's state after `op` with
/// result `outcome` takes effect on state `before`, or `None` if the
/// outcome is impossible from `before`. Only definite outcomes and
/// `Indeterminate` reach here; an indeterminate operation has the effect
/// the specification gives it.
fn step(model: Model, before: KeyState, op: Op, outcome: Outcome) -> Option<KeyState> {
    let (after, expected) = op.apply(before, model.max_checkpoints);
    (outcome == Outcome::Indeterminate || outcome == expected).then_some(after)
}

/// The values that `op` with `outcome` compares the key against: a read's
/// result and a compare-and-set's expected value. Every other value is only
/// ever stored, and the search treats all such values as one.
fn observed_values(op: Op, outcome: Outcome) -> [Option<u64>; 2] {
    let read = match outcome {
        Outcome::Read(observed) => observed,
        _ => None,
    };
    let expected = match op {
        Op::Cas { expected, .. } => expected,
        // A checkpoint operation compares no value: its outcome depends on
        // which names exist, and a rollback only moves remembered values.
        Op::Read | Op::Write(_) | Op::Delete => None,
        Op::CreateCheckpoint(_) | Op::Rollback(_) | Op::DeleteCheckpoint(_) => None,
    };
    [read, expected]
}

/// `op` with every value it stores (not the ones it compares against)
/// passed through `map`.
fn map_written_values(op: Op, map: impl Fn(u64) -> u64) -> Op {
    match op {
        Op::Write(value) => Op::Write(map(value)),
        Op::Cas { expected, new } => Op::Cas { expected, new: new.map(map) },
        Op::Read | Op::Delete => op,
        Op::CreateCheckpoint(_) | Op::Rollback(_) | Op::DeleteCheckpoint(_) => op,
    }
}

/// Why `op` with `outcome` cannot take effect when the key is in `state`,
/// in words, for explanations.
fn mismatch_reason(model: Model, op: Op, outcome: Outcome, state: KeyState) -> String {
    let value = Value(state.value);
    match (op, outcome) {
        (Op::Read, Outcome::Read(observed)) => {
            format!("it returned {} but the key holds {value}", Value(observed))
        }
        (Op::Cas { expected, .. }, Outcome::Cas(true)) => {
            format!("it succeeded, which needs the key to hold {}, but it holds {value}", Value(expected))
        }
        (Op::Cas { .. }, Outcome::Cas(false)) => {
            format!("it failed, but the key holds {value}, the value it expected")
        }
        (_, Outcome::Checkpoint(reported)) => {
            let (_, expected) = op.apply(state, model.max_checkpoints);
            format!(
                "it reported {reported}, but with {} checkpoint(s) of at most {} it gives {expected}",
                state.checkpoint_count(),
                model.max_checkpoints
            )
        }
        _ => format!("its outcome is impossible when the key holds {value}"),
    }
}

/// A key's value in words: a number, or "absent".
struct Value(Option<u64>);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(value) => write!(f, "{value}"),
            None => write!(f, "absent"),
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Read => write!(f, "read"),
            Op::Write(value) => write!(f, "write {value}"),
            Op::Cas { expected, new } => write!(f, "cas {} to {}", Value(expected), Value(new)),
            Op::Delete => write!(f, "delete"),
            Op::CreateCheckpoint(name) => write!(f, "create {name}"),
            Op::Rollback(name) => write!(f, "rollback to {name}"),
            Op::DeleteCheckpoint(name) => write!(f, "delete {name}"),
        }
    }
}

impl fmt::Display for CheckpointOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CheckpointOutcome::Done => "ok",
            CheckpointOutcome::AlreadyExists => "already exists",
            CheckpointOutcome::NotFound => "not found",
            CheckpointOutcome::TooMany => "too many",
        })
    }
}

/// The value, then what each existing checkpoint remembered.
impl fmt::Display for KeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", Value(self.value))?;
        let mut first = true;
        for (name, slot) in self.checkpoints.iter().enumerate() {
            if let Some(remembered) = slot {
                write!(f, "{}checkpoint {name} = {}", if first { " (" } else { ", " }, Value(*remembered))?;
                first = false;
            }
        }
        if !first {
            write!(f, ")")?;
        }
        Ok(())
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Outcome::Read(value) => write!(f, "{}", Value(value)),
            Outcome::Written | Outcome::Deleted => write!(f, "ok"),
            Outcome::Cas(true) => write!(f, "succeeded"),
            Outcome::Cas(false) => write!(f, "did not match"),
            Outcome::Checkpoint(outcome) => write!(f, "{outcome}"),
            Outcome::Failed => write!(f, "failed"),
            Outcome::Indeterminate => write!(f, "indeterminate"),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "client {} key {}: {} -> {} [invoke {}, ",
            self.client, self.key, self.op, self.outcome, self.invoke
        )?;
        match self.complete {
            Some(complete) => write!(f, "complete {complete}]"),
            None => write!(f, "never completed]"),
        }
    }
}

/// Writes the explanation of a failed key: the longest linearizable prefix
/// the search found and, for every operation that could come next after it,
/// why it does not fit.
fn explain(history: &[Operation], operations: &[KeyOperation], model: Model, best: &BestPrefix) -> String {
    let describe = |position: usize| {
        let index = operations[position].index;
        match history.get(index) {
            Some(operation) => format!("{} {operation}", OpId(index)),
            None => format!("{}", OpId(index)),
        }
    };
    // Replayed here because the search works on placeholder values.
    let state = best.operations.iter().fold(KeyState::new(model.initial), |state, &position| {
        operations[position].op.apply(state, model.max_checkpoints).0
    });
    let mut text = String::new();
    let shown_from = best.operations.len().saturating_sub(EXPLANATION_PREFIX_OPERATIONS_MAX);
    let hidden =
        if shown_from > 0 { format!(" (the first {shown_from} are not shown)") } else { String::new() };
    let _ = writeln!(
        text,
        "the key starts {}; the longest linearizable prefix found has {} of its {} operations{hidden}",
        Value(model.initial),
        best.operations.len(),
        operations.len(),
    );
    for (position, &operation) in best.operations.iter().enumerate().skip(shown_from) {
        let _ = writeln!(text, "  {}. {}", position + 1, describe(operation));
    }
    let _ = writeln!(text, "after that prefix the key holds {state}");
    write_candidates(&mut text, operations, best, model, state, &describe);
    text
}

/// The part of an explanation about the operations that could come after
/// the longest prefix, when the key holds `state`.
fn write_candidates(
    text: &mut String,
    operations: &[KeyOperation],
    best: &BestPrefix,
    model: Model,
    state: KeyState,
    describe: &dyn Fn(usize) -> String,
) {
    let mut linearized = vec![false; operations.len()];
    for &operation in &best.operations {
        linearized[operation] = true;
    }
    let pending = || (0..operations.len()).filter(|&position| !linearized[position]);
    // The earliest completion among the determinate operations left: that
    // operation must take effect by then, and nothing invoked later may
    // come before it.
    let Some(deadline) = pending().filter_map(|position| operations[position].complete).min() else {
        return;
    };
    let _ = writeln!(
        text,
        "no order of the remaining operations follows: one must take effect by time {deadline}, \
         and the candidates to come next (those invoked by then) are:"
    );
    let candidates: Vec<usize> =
        pending().filter(|&position| operations[position].invoke <= deadline).collect();
    for &position in candidates.iter().take(EXPLANATION_CANDIDATES_MAX) {
        let operation = operations[position];
        let why = match step(model, state, operation.op, operation.outcome) {
            None => mismatch_reason(model, operation.op, operation.outcome, state),
            Some(_) if operation.is_indeterminate() => {
                "it may take effect here, but no order of the rest follows from that".to_string()
            }
            Some(_) => "it fits here, but no order of the rest follows from it".to_string(),
        };
        let _ = writeln!(text, "  {}: {why}", describe(position));
    }
    if candidates.len() > EXPLANATION_CANDIDATES_MAX {
        let hidden = candidates.len() - EXPLANATION_CANDIDATES_MAX;
        let _ = writeln!(text, "  ... and {hidden} more");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key that the single-key tests use.
    const KEY: u64 = 0;

    fn record(client: u64, op: Op, invoke: u64, complete: u64, outcome: Outcome) -> Operation {
        Operation { client, key: KEY, op, invoke, complete: Some(complete), outcome }
    }

    fn read(client: u64, invoke: u64, complete: u64, observed: Option<u64>) -> Operation {
        record(client, Op::Read, invoke, complete, Outcome::Read(observed))
    }

    fn write(client: u64, invoke: u64, complete: u64, value: u64) -> Operation {
        record(client, Op::Write(value), invoke, complete, Outcome::Written)
    }

    fn cas(
        client: u64,
        invoke: u64,
        complete: u64,
        expected: Option<u64>,
        new: Option<u64>,
        succeeded: bool,
    ) -> Operation {
        record(client, Op::Cas { expected, new }, invoke, complete, Outcome::Cas(succeeded))
    }

    fn delete(client: u64, invoke: u64, complete: u64) -> Operation {
        record(client, Op::Delete, invoke, complete, Outcome::Deleted)
    }

    fn indeterminate(client: u64, op: Op, invoke: u64) -> Operation {
        Operation { client, key: KEY, op, invoke, complete: None, outcome: Outcome::Indeterminate }
    }

    fn verdict(history: &[Operation]) -> Verdict {
        check(history, None).expect("the test history is valid")
    }

    fn assert_linearizable(history: &[Operation]) {
        let verdict = verdict(history);
        assert_eq!(verdict, Verdict::Linearizable, "{verdict}");
    }

    /// Asserts a violation on `KEY` and returns its explanation.
    fn assert_not_linearizable(history: &[Operation]) -> String {
        match verdict(history) {
            Verdict::NotLinearizable { key, explanation } => {
                assert_eq!(key, KEY);
                explanation
            }
            other => panic!("expected a violation, got {other}"),
        }
    }

    // Linearizable histories.

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_operations_are_linearizable() {
        assert_linearizable(&[
            read(1, 1, 2, None),
            write(1, 3, 4, 1),
            read(2, 5, 6, Some(1)),
            cas(1, 7, 8, Some(1), Some(2), true),
            cas(2, 9, 10, Some(1), Some(3), false),
            read(1, 11, 12, Some(2)),
            delete(2, 13, 14),
            read(1, 15, 16, None),
            cas(1, 17, 18, None, Some(4), true),
            read(2, 19, 20, Some(4)),
        ]);
    }

    #[test]
    fn read_concurrent_with_write_may_see_old_or_new_value() {
        let history = [write(1, 1, 4, 1), read(2, 2, 3, None)];
        assert_linearizable(&history);
        let history = [write(1, 1, 4, 1), read(2, 2, 3, Some(1))];
        assert_linearizable(&history);
        // Touching times are concurrent: precedence needs complete < invoke.
        let history = [write(1, 1, 3, 1), read(2, 3, 4, None)];
        assert_linearizable(&history);
    }

    #[test]
    fn concurrent_writes_may_take_effect_in_either_order() {
        let history = [write(1, 1, 4, 1), write(2, 2, 5, 2), read(3, 6, 7, Some(1))];
        assert_linearizable(&history);
        let history = [write(1, 1, 4, 1), write(2, 2, 5, 2), read(3, 6, 7, Some(2))];
        assert_linearizable(&history);
    }

    #[test]
    fn indeterminate_write_read_later_is_linearizable() {
        // The write timed out but took effect, long after its client gave up.
        let history = [
            indeterminate(1, Op::Write(7), 1),
            read(2, 5, 6, None),
            write(3, 7, 8, 1),
            read(2, 9, 10, Some(7)),
            read(2, 11, 12, Some(7)),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn indeterminate_write_never_observed_is_linearizable() {
        let history = [
            indeterminate(1, Op::Write(7), 1),
            read(2, 2, 3, None),
            write(3, 4, 5, 1),
            read(2, 6, 7, Some(1)),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn indeterminate_operation_with_completion_time_is_still_uncertain() {
        // The client gave up at time 2; the write still took effect later.
        let mut timed_out = record(1, Op::Write(7), 1, 2, Outcome::Indeterminate);
        timed_out.complete = Some(2);
        assert_linearizable(&[timed_out, read(2, 3, 4, None), read(2, 5, 6, Some(7))]);
    }

    #[test]
    fn indeterminate_reads_and_failed_operations_are_ignored() {
        let history = [
            indeterminate(1, Op::Read, 1),
            record(2, Op::Write(5), 2, 3, Outcome::Failed),
            read(3, 4, 5, None),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn cas_patterns_consistent_with_some_order_are_linearizable() {
        // Two concurrent creates: exactly one wins, and a read sees the winner.
        let history =
            [cas(1, 1, 5, None, Some(1), false), cas(2, 2, 6, None, Some(2), true), read(3, 7, 8, Some(2))];
        assert_linearizable(&history);
        // A chain of concurrent increments that all succeed, in some order.
        let history = [
            cas(1, 1, 10, Some(0), Some(1), true),
            cas(2, 2, 11, Some(2), Some(3), true),
            cas(3, 3, 12, Some(1), Some(2), true),
            read(4, 13, 14, Some(3)),
        ];
        assert_eq!(check(&history, Some(0)), Ok(Verdict::Linearizable));
        // A compare-and-delete, and a failed CAS that read the deletion.
        let history = [
            write(1, 1, 2, 4),
            cas(1, 3, 6, Some(4), None, true),
            cas(2, 4, 7, Some(4), Some(5), false),
            read(3, 8, 9, None),
        ];
        assert_linearizable(&history);
    }

    #[test]
    fn indeterminate_cas_may_or_may_not_have_applied() {
        let applied = [
            write(1, 1, 2, 1),
            indeterminate(2, Op::Cas { expected: Some(1), new: Some(2) }, 3),
            read(3, 4, 5, Some(2)),
        ];
        assert_linearizable(&applied);
        let not_applied = [
            write(1, 1, 2, 1),
            indeterminate(2, Op::Cas { expected: Some(1), new: Some(2) }, 3),
            read(3, 4, 5, Some(1)),
        ];
        assert_linearizable(&not_applied);
    }

    #[test]
    fn keys_are_checked_independently() {
        let mut other_key = write(1, 2, 3, 9);
        other_key.key = 1;
        let history = [write(1, 1, 4, 1), other_key, read(2, 5, 6, Some(1))];
        assert_linearizable(&history);
    }

    // Histories that are not linearizable.

    #[test]
    fn stale_read_is_not_linearizable() {
        let history = [write(1, 1, 2, 1), write(1, 3, 4, 2), read(2, 5, 6, Some(1))];
        let explanation = assert_not_linearizable(&history);
        assert!(explanation.contains("#2 client 2 key 0: read -> 1"), "{explanation}");
        assert!(explanation.contains("it returned 1 but the key holds 2"), "{explanation}");
    }

    #[test]
    fn lost_write_is_not_linearizable() {
        assert_not_linearizable(&[write(1, 1, 2, 1), read(2, 3, 4, None)]);
    }

    /// The shape raft-chaos records: a compare-and-set through `If-Match`
    /// follows a read and expects the value read; a `412` is a failed
    /// compare-and-set; a refused write (not applied) is dropped; a write
    /// that timed out may show up later. All of it together is fine...
    #[test]
    fn chaos_shaped_history_is_linearizable() {
        let refused = Operation {
            client: 3,
            key: KEY,
            op: Op::Write(99),
            invoke: 2,
            complete: Some(3),
            outcome: Outcome::Failed,
        };
        assert_linearizable(&[
            write(1, 1, 4, 1),
            refused,
            read(2, 5, 6, Some(1)),
            cas(2, 7, 9, Some(1), Some(2), true),
            read(1, 8, 10, Some(2)),
            // Raced by client 2's compare-and-set, this one fails (412).
            cas(1, 11, 12, Some(1), Some(3), false),
            indeterminate(3, Op::Write(4), 13),
            read(2, 20, 21, Some(2)),
            read(1, 22, 23, Some(4)),
            read(2, 24, 25, Some(4)),
        ]);
    }

    /// ... but with one answer changed, each of these is caught.
    #[test]
    fn chaos_shaped_violations_are_caught() {
        // A compare-and-set that succeeded from a value overwritten before
        // it started.
        assert_not_linearizable(&[
            write(1, 1, 2, 1),
            write(1, 3, 4, 2),
            cas(2, 5, 6, Some(1), Some(3), true),
        ]);
        // A failed compare-and-set (412) while the key held the expected value.
        assert_not_linearizable(&[write(1, 1, 2, 1), cas(2, 3, 4, Some(1), Some(3), false)]);
        // A timed-out write seen, then unseen: once it took effect it stays.
        assert_not_linearizable(&[
            write(1, 1, 2, 1),
            indeterminate(3, Op::Write(4), 3),
            read(2, 5, 6, Some(4)),
            read(2, 7, 8, Some(1)),
        ]);
        // An acknowledged write lost behind a final read, with a timed-out
        // write of another value that was never seen.
        assert_not_linearizable(&[
            write(1, 1, 2, 1),
            indeterminate(2, Op::Write(5), 3),
            write(1, 4, 5, 2),
            read(3, 10, 11, Some(1)),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written_is_not_linearizable() {
        let explanation =
            assert_not_linearizable(&[write(1, 1, 2, 1), read(2, 3, 6, Some(42)), read(3, 4, 5, Some(1))]);
        assert!(explanation.contains("it returned 42 but the key holds 1"), "{explanation}");
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_not_linearizable() {
        let history =
            [write(1, 1, 2, 1), cas(1, 3, 4, Some(1), Some(2), true), cas(2, 5, 6, Some(1), Some(3), true)];
        let explanation = assert_not_linearizable(&history);
        assert!(explanation.contains("needs the key to hold 1, but it holds 2"), "{explanation}");
        // Concurrency does not rescue them: the first one's effect is visible.
        let history =
            [write(1, 1, 2, 1), cas(1, 3, 6, Some(1), Some(2), true), cas(2, 4, 7, Some(1), Some(3), true)];
        assert_not_linearizable(&history);
    }

    #[test]
    fn failed_cas_while_the_value_matched_is_not_linearizable() {
        assert_not_linearizable(&[write(1, 1, 2, 1), cas(2, 3, 4, Some(1), Some(2), false)]);
    }

    #[test]
    fn new_then_old_read_is_not_linearizable() {
        // The second write is slow; one reader sees it, and a later reader
        // sees the value before it.
        let history = [write(1, 1, 2, 1), write(1, 3, 20, 2), read(2, 4, 5, Some(2)), read(3, 6, 7, Some(1))];
        assert_not_linearizable(&history);
    }

    #[test]
    fn failed_write_that_is_read_is_not_linearizable() {
        let history = [record(1, Op::Write(1), 1, 2, Outcome::Failed), read(2, 3, 4, Some(1))];
        assert_not_linearizable(&history);
        // The same write, merely indeterminate, is fine.
        let history = [indeterminate(1, Op::Write(1), 1), read(2, 3, 4, Some(1))];
        assert_linearizable(&history);
    }

    #[test]
    fn read_after_delete_seeing_the_value_is_not_linearizable() {
        assert_not_linearizable(&[write(1, 1, 2, 1), delete(1, 3, 4), read(2, 5, 6, Some(1))]);
    }

    #[test]
    fn indeterminate_write_cannot_take_effect_before_its_invoke() {
        assert_not_linearizable(&[read(2, 1, 2, Some(7)), indeterminate(1, Op::Write(7), 3)]);
    }

    #[test]
    fn violation_on_one_key_is_reported_for_that_key() {
        let mut stale = [write(1, 1, 2, 1), read(2, 3, 4, None)];
        for operation in &mut stale {
            operation.key = 5;
        }
        let history = [write(1, 1, 2, 3), read(2, 3, 4, Some(3)), stale[0], stale[1]];
        match verdict(&history) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, 5),
            other => panic!("expected a violation on key 5, got {other}"),
        }
    }

    #[test]
    fn explanation_shows_the_longest_prefix() {
        let history = [
            write(1, 1, 2, 1),
            cas(1, 3, 4, Some(1), Some(2), true),
            read(2, 5, 6, Some(2)),
            read(2, 7, 8, Some(1)),
        ];
        let explanation = assert_not_linearizable(&history);
        assert!(explanation.contains("has 3 of its 4 operations"), "{explanation}");
        assert!(explanation.contains("3. #2 client 2"), "{explanation}");
        assert!(explanation.contains("after that prefix the key holds 2"), "{explanation}");
    }

    // Checkpoints and rollback.

    fn checkpoint_op(
        client: u64,
        op: Op,
        invoke: u64,
        complete: u64,
        outcome: CheckpointOutcome,
    ) -> Operation {
        record(client, op, invoke, complete, Outcome::Checkpoint(outcome))
    }

    fn create(client: u64, invoke: u64, complete: u64, name: u8, outcome: CheckpointOutcome) -> Operation {
        checkpoint_op(client, Op::CreateCheckpoint(CheckpointName(name)), invoke, complete, outcome)
    }

    fn rollback(client: u64, invoke: u64, complete: u64, name: u8, outcome: CheckpointOutcome) -> Operation {
        checkpoint_op(client, Op::Rollback(CheckpointName(name)), invoke, complete, outcome)
    }

    fn forget(client: u64, invoke: u64, complete: u64, name: u8, outcome: CheckpointOutcome) -> Operation {
        checkpoint_op(client, Op::DeleteCheckpoint(CheckpointName(name)), invoke, complete, outcome)
    }

    use CheckpointOutcome::{AlreadyExists, Done, NotFound, TooMany};

    #[test]
    fn a_rollback_brings_back_the_value_at_the_checkpoint() {
        let history = [
            write(1, 1, 2, 1),
            create(9, 3, 4, 0, Done),
            write(1, 5, 6, 2),
            rollback(9, 7, 8, 0, Done),
            read(2, 9, 10, Some(1)),
            write(1, 11, 12, 3),
            read(2, 13, 14, Some(3)),
            // Rolled back again: the checkpoint is still there.
            rollback(9, 15, 16, 0, Done),
            read(2, 17, 18, Some(1)),
        ];
        assert_linearizable(&history);
        // A checkpoint of an absent key brings back "absent".
        assert_linearizable(&[
            create(9, 1, 2, 1, Done),
            write(1, 3, 4, 5),
            rollback(9, 5, 6, 1, Done),
            read(2, 7, 8, None),
        ]);
    }

    #[test]
    fn a_read_after_a_completed_rollback_that_sees_the_value_before_it_is_not_linearizable() {
        let explanation = assert_not_linearizable(&[
            write(1, 1, 2, 1),
            create(9, 3, 4, 0, Done),
            write(1, 5, 6, 2),
            rollback(9, 7, 8, 0, Done),
            read(2, 9, 10, Some(2)),
        ]);
        assert!(explanation.contains("it returned 2 but the key holds 1"), "{explanation}");
        assert!(explanation.contains("checkpoint 0 = 1"), "{explanation}");
    }

    #[test]
    fn a_read_of_a_value_the_checkpoint_never_held_is_not_linearizable() {
        // 1 was the value before the checkpoint, not at it.
        assert_not_linearizable(&[
            write(1, 1, 2, 1),
            write(1, 3, 4, 2),
            create(9, 5, 6, 0, Done),
            write(1, 7, 8, 3),
            rollback(9, 9, 10, 0, Done),
            read(2, 11, 12, Some(1)),
        ]);
    }

    #[test]
    fn a_rollback_reported_done_for_a_deleted_name_is_not_linearizable() {
        let history = [
            write(1, 1, 2, 1),
            create(9, 3, 4, 0, Done),
            forget(9, 5, 6, 0, Done),
            rollback(9, 7, 8, 0, Done),
        ];
        let explanation = assert_not_linearizable(&history);
        assert!(explanation.contains("it reported ok"), "{explanation}");
        assert!(explanation.contains("it gives not found"), "{explanation}");
        // Reported not found, it is fine, and changes nothing.
        let mut fine = history;
        fine[3] = rollback(9, 7, 8, 0, NotFound);
        let mut fine = fine.to_vec();
        fine.push(read(2, 9, 10, Some(1)));
        assert_linearizable(&fine);
    }

    #[test]
    fn checkpoint_outcomes_follow_the_names_that_exist_and_the_bound() {
        let model = Model { initial: None, max_checkpoints: 1 };
        let verdict =
            |history: &[Operation]| check_with_model(history, model, SearchBudget::default()).unwrap();
        let good = [
            create(9, 1, 2, 0, Done),
            create(9, 3, 4, 0, AlreadyExists),
            create(9, 5, 6, 1, TooMany),
            forget(9, 7, 8, 1, NotFound),
            forget(9, 9, 10, 0, Done),
            create(9, 11, 12, 1, Done),
        ];
        assert_eq!(verdict(&good), Verdict::Linearizable);
        // Each outcome changed to another one it could have is caught.
        for (position, wrong) in [
            (1, create(9, 3, 4, 0, Done)),
            (2, create(9, 5, 6, 1, Done)),
            (2, create(9, 5, 6, 1, AlreadyExists)),
            (3, forget(9, 7, 8, 1, Done)),
            (4, forget(9, 9, 10, 0, NotFound)),
            (5, create(9, 11, 12, 1, TooMany)),
        ] {
            let mut bad = good;
            bad[position] = wrong;
            assert!(matches!(verdict(&bad), Verdict::NotLinearizable { .. }), "{}", bad[position]);
        }
        // A history of checkpoint operations alone is checked (under the
        // key its records name).
        assert_not_linearizable(&[create(9, 1, 2, 0, Done), create(9, 3, 4, 0, Done)]);
    }

    #[test]
    fn a_maybe_applied_rollback_may_or_may_not_have_taken_effect() {
        let base = [write(1, 1, 2, 1), create(9, 3, 4, 0, Done), write(1, 5, 6, 2)];
        let maybe = indeterminate(9, Op::Rollback(CheckpointName(0)), 7);
        let with = |reads: &[Operation]| [&base[..], &[maybe], reads].concat();
        assert_linearizable(&with(&[read(2, 8, 9, Some(1))]));
        assert_linearizable(&with(&[read(2, 8, 9, Some(2))]));
        // Once it took effect, the value it restored stays until a write.
        assert_linearizable(&with(&[read(2, 8, 9, Some(2)), read(2, 10, 11, Some(1))]));
        assert_not_linearizable(&with(&[read(2, 8, 9, Some(1)), read(2, 10, 11, Some(2))]));
        // It cannot take effect before it was invoked.
        let early =
            [&base[..], &[read(2, 7, 8, Some(1)), indeterminate(9, Op::Rollback(CheckpointName(0)), 9)]]
                .concat();
        assert_not_linearizable(&early);
    }

    #[test]
    fn a_maybe_applied_create_followed_by_a_write_may_be_rolled_back_to() {
        // The create took effect before the write of 2 (it remembered 1) or
        // after it (it remembered 2); a read of "absent" fits neither.
        let base = [
            write(1, 1, 2, 1),
            indeterminate(9, Op::CreateCheckpoint(CheckpointName(0)), 3),
            write(1, 5, 6, 2),
            rollback(8, 7, 8, 0, Done),
        ];
        for (seen, fits) in [(Some(1), true), (Some(2), true), (None, false)] {
            let history = [&base[..], &[read(2, 9, 10, seen)]].concat();
            assert_eq!(verdict(&history).is_linearizable(), fits, "{seen:?}");
        }
    }

    #[test]
    fn checkpoint_operations_act_on_every_key() {
        let on = |key: u64, mut operation: Operation| {
            operation.key = key;
            operation
        };
        let history = [
            on(0, write(1, 1, 2, 1)),
            on(1, write(1, 1, 2, 10)),
            create(9, 3, 4, 0, Done),
            on(0, write(1, 5, 6, 2)),
            on(1, write(1, 5, 6, 20)),
            rollback(9, 7, 8, 0, Done),
            on(0, read(2, 9, 10, Some(1))),
            on(1, read(2, 9, 10, Some(10))),
        ];
        assert_linearizable(&history);
        let mut stale = history;
        stale[7] = on(1, read(2, 9, 10, Some(20)));
        match verdict(&stale) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, 1),
            other => panic!("expected a violation on key 1, got {other}"),
        }
    }

    #[test]
    fn checkpoint_names_are_capped() {
        let too_far = create(9, 1, 2, MAX_CHECKPOINT_NAMES as u8, Done);
        assert_eq!(
            check(&[too_far], None),
            Err(HistoryError::CheckpointNameOutOfRange {
                id: OpId(0),
                name: CheckpointName(MAX_CHECKPOINT_NAMES as u8)
            })
        );
        assert!(matches!(
            check(&[record(9, Op::Rollback(CheckpointName(0)), 1, 2, Outcome::Checkpoint(TooMany))], None),
            Err(HistoryError::OutcomeMismatch { .. })
        ));
    }

    #[test]
    fn random_histories_with_checkpoints_are_linearizable_and_check_cheaply() {
        let settings =
            Settings { operations: 2_000, keys: 3, checkpoint_per_mille: 30, ..Settings::default() };
        for seed in 0..3 {
            let history = generate_history(seed, &settings);
            assert!(history.iter().filter(|o| o.op.is_checkpoint()).count() > 20, "seed {seed}");
            let verdict = check_with_model(&history, settings.model(None), SearchBudget::default()).unwrap();
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
            for (key, operations) in partition_by_key(&history).unwrap() {
                let report = search_key(&operations, settings.model(None), SearchBudget::default());
                assert!(matches!(report.result, SearchResult::Linearizable), "seed {seed} key {key}");
                // The same bound as without checkpoints: their extra state
                // must not cost the memoisation its effect.
                let bound = 50 * operations.len() as u64;
                assert!(report.explored_states < bound, "seed {seed} key {key}: {}", report.explored_states);
            }
        }
    }

    /// The last rollback whose outcome real time forces: with no
    /// maybe-applied operation on its name, the name exists or not after
    /// every definite operation on it, whatever came before (a create that
    /// succeeded or found the name taken leaves it existing, and so on). So
    /// if the operation on the name that completed last before the rollback
    /// overlaps no other on the name, and none overlaps the rollback, the
    /// rollback's outcome is that one's.
    fn forced_rollback(history: &[Operation]) -> Option<usize> {
        let overlap = |a: &Operation, b: &Operation| {
            a.invoke <= b.complete.unwrap_or(u64::MAX) && b.invoke <= a.complete.unwrap_or(u64::MAX)
        };
        let name_of = |operation: &Operation| operation.op.checkpoint_name();
        (0..history.len()).rev().find(|&position| {
            let target = &history[position];
            if !matches!(target.op, Op::Rollback(_)) || !target.outcome.is_definite() {
                return false;
            }
            let same_name: Vec<&Operation> = history
                .iter()
                .enumerate()
                .filter(|(other, operation)| {
                    *other != position
                        && name_of(operation) == name_of(target)
                        && operation.outcome != Outcome::Failed
                })
                .map(|(_, operation)| operation)
                .collect();
            if same_name.iter().any(|o| !o.outcome.is_definite() || overlap(o, target)) {
                return false;
            }
            let before = same_name.iter().filter(|o| o.complete.is_some_and(|c| c < target.invoke));
            match before.max_by_key(|o| o.complete) {
                None => true,
                Some(last) => same_name.iter().all(|o| std::ptr::eq(*o, *last) || !overlap(o, last)),
            }
        })
    }

    /// Proving a violation is the expensive case: in release builds, 300
    /// operations with 5% checkpoint operations took 300 to 1.4 million
    /// configurations (against 8,000 to 25,000 for a corrupted read without
    /// checkpoints), because every maybe-applied create remembers whichever
    /// value its placement gives it. Shorter histories keep this test quick
    /// in a debug build.
    #[test]
    fn corrupted_random_histories_with_checkpoints_are_not_linearizable() {
        let settings = Settings { operations: 120, checkpoint_per_mille: 60, ..Settings::default() };
        let mut corrupted = 0;
        for seed in 0..40 {
            let mut history = generate_history(seed, &settings);
            let Some(position) = forced_rollback(&history) else {
                continue;
            };
            // Report the other outcome a rollback can have.
            let rollback = &mut history[position];
            rollback.outcome = Outcome::Checkpoint(match rollback.outcome {
                Outcome::Checkpoint(Done) => NotFound,
                _ => Done,
            });
            corrupted += 1;
            let verdict = check_with_model(&history, settings.model(None), SearchBudget::default()).unwrap();
            assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "seed {seed}: {verdict}");
        }
        assert!(corrupted >= 10, "only {corrupted} histories had a rollback to corrupt");
    }

    // Malformed histories and bounds.

    #[test]
    fn completion_before_invoke_is_an_error() {
        let history = [write(1, 1, 2, 1), write(1, 5, 4, 2)];
        let error = check(&history, None).unwrap_err();
        assert_eq!(error, HistoryError::CompletedBeforeInvoked { id: OpId(1), invoke: 5, complete: 4 });
        assert!(error.to_string().contains("before its invoke"), "{error}");
    }

    #[test]
    fn outcome_that_does_not_fit_the_operation_is_an_error() {
        let history = [record(1, Op::Read, 1, 2, Outcome::Written)];
        assert!(matches!(check(&history, None), Err(HistoryError::OutcomeMismatch { .. })));
    }

    #[test]
    fn definite_outcome_without_completion_is_an_error() {
        let mut missing = read(1, 1, 2, None);
        missing.complete = None;
        assert_eq!(check(&[missing], None), Err(HistoryError::MissingCompletion { id: OpId(0) }));
    }

    #[test]
    fn builder_records_times_and_rejects_bad_completions() {
        let mut history = History::new();
        let write = history.invoke(1, KEY, Op::Write(5));
        let read = history.invoke(2, KEY, Op::Read);
        assert_eq!(history.complete(write, Outcome::Written), Ok(()));
        assert_eq!(history.complete(read, Outcome::Read(Some(5))), Ok(()));
        assert_eq!(history.operations()[write.index()].invoke, 0);
        assert_eq!(history.operations()[read.index()].complete, Some(3));
        assert_eq!(history.check(None), Ok(Verdict::Linearizable));

        assert_eq!(
            history.complete(OpId(9), Outcome::Written),
            Err(HistoryError::UnknownOperation { id: OpId(9), operations: 2 })
        );
        assert_eq!(
            history.complete(write, Outcome::Written),
            Err(HistoryError::AlreadyCompleted { id: write })
        );
        let pending = history.invoke_at(3, KEY, Op::Delete, 10);
        assert!(matches!(
            history.complete(pending, Outcome::Cas(true)),
            Err(HistoryError::OutcomeMismatch { .. })
        ));
        assert!(matches!(
            history.complete_at(pending, Outcome::Deleted, 9),
            Err(HistoryError::CompletedBeforeInvoked { .. })
        ));
        // A pending operation is indeterminate, and the history stays valid.
        assert_eq!(history.operations()[pending.index()].outcome, Outcome::Indeterminate);
        assert_eq!(history.check(None), Ok(Verdict::Linearizable));
        // The clock moved past the explicit time.
        let later = history.invoke(1, KEY, Op::Read);
        assert_eq!(history.operations()[later.index()].invoke, 11);
    }

    #[test]
    fn history_types_are_serializable() {
        fn assert_serde<T: Serialize + for<'de> Deserialize<'de>>() {}
        assert_serde::<History>();
        assert_serde::<Operation>();
        assert_serde::<OpId>();
    }

    #[test]
    fn exhausted_budget_gives_unknown() {
        let history = generate_history(7, &Settings { operations: 200, ..Settings::default() });
        let budget = SearchBudget { max_explored_states: 10, ..SearchBudget::default() };
        let verdict = check_with_budget(&history, None, budget).unwrap();
        assert!(
            matches!(&verdict, Verdict::Unknown { reason, .. } if reason.contains("max_explored_states")),
            "{verdict}"
        );
        let budget = SearchBudget { max_cache_bytes: 1_000, ..SearchBudget::default() };
        let verdict = check_with_budget(&history, None, budget).unwrap();
        assert!(
            matches!(&verdict, Verdict::Unknown { reason, .. } if reason.contains("max_cache_bytes")),
            "{verdict}"
        );
    }

    #[test]
    fn violation_outranks_unknown() {
        // Key 0 needs a few states; key 1 is a stale read found at once.
        let mut history = generate_history(3, &Settings { operations: 50, ..Settings::default() });
        let mut stale = [write(1, 1, 2, 1), read(2, 3, 4, None)];
        for operation in &mut stale {
            operation.key = 1;
        }
        history.extend(stale);
        let budget = SearchBudget { max_explored_states: 5, ..SearchBudget::default() };
        let verdict = check_with_budget(&history, None, budget).unwrap();
        assert!(matches!(verdict, Verdict::NotLinearizable { key: 1, .. }), "{verdict}");
    }

    #[test]
    fn pathological_concurrency_stays_within_budget() {
        // Many concurrent writes and one long read that sees none of the
        // values: the search has to rule out every subset before failing.
        let mut history: Vec<Operation> = (0..40).map(|value| write(value, 1, 100, value)).collect();
        history.push(read(99, 101, 102, Some(1_000)));
        let budget = SearchBudget { max_explored_states: 20_000, ..SearchBudget::default() };
        let verdict = check_with_budget(&history, None, budget).unwrap();
        assert!(matches!(verdict, Verdict::Unknown { key: KEY, .. }), "{verdict}");
    }

    // Randomized histories from real sequential executions.

    /// SplitMix64, so that the tests need no dependency and are repeatable.
    struct TestRng(u64);

    impl TestRng {
        fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, bound: u64) -> u64 {
            self.next_u64() % bound
        }

        fn percent(&mut self, chance_percent: u64) -> bool {
            self.below(100) < chance_percent
        }
    }

    struct Settings {
        operations: usize,
        clients: u64,
        keys: u64,
        failed_percent: u64,
        indeterminate_percent: u64,
        /// Chance per operation (per mille) of a checkpoint operation, on
        /// one of `checkpoint_names` names.
        checkpoint_per_mille: u64,
        checkpoint_names: u8,
        max_checkpoints: usize,
    }

    impl Default for Settings {
        fn default() -> Self {
            Settings {
                operations: 300,
                clients: 8,
                keys: 1,
                failed_percent: 3,
                indeterminate_percent: 3,
                checkpoint_per_mille: 0,
                checkpoint_names: 3,
                max_checkpoints: 2,
            }
        }
    }

    impl Settings {
        fn model(&self, initial: Option<u64>) -> Model {
            Model { initial, max_checkpoints: self.max_checkpoints }
        }
    }

    #[derive(Clone, Copy)]
    enum ClientPhase {
        Idle,
        Invoked(OpId),
        Applied(OpId, Outcome),
    }

    /// Runs random operations against a real register per key, one event
    /// at a time: clients invoke, operations take effect at some later
    /// event, and complete at a later one still. Some fail without effect,
    /// some become indeterminate before or after taking effect. The history
    /// is linearizable by construction: the moments of effect are the order.
    /// A checkpoint operation takes effect on every key at once.
    fn generate_history(seed: u64, settings: &Settings) -> Vec<Operation> {
        let mut rng = TestRng(seed);
        let mut history = History::new();
        let mut registers = vec![KeyState::default(); settings.keys as usize];
        let mut phases = vec![ClientPhase::Idle; settings.clients as usize];
        let mut next_value = 1;
        let mut invoked = 0;
        while invoked < settings.operations || phases.iter().any(|p| !matches!(p, ClientPhase::Idle)) {
            let client = rng.below(settings.clients);
            let phase = &mut phases[client as usize];
            *phase = match *phase {
                ClientPhase::Idle if invoked < settings.operations => {
                    invoked += 1;
                    let key = rng.below(settings.keys);
                    let op = if rng.below(1000) < settings.checkpoint_per_mille {
                        random_checkpoint_op(&mut rng, settings.checkpoint_names)
                    } else {
                        random_op(&mut rng, registers[key as usize].value, &mut next_value)
                    };
                    ClientPhase::Invoked(history.invoke(client, key, op))
                }
                ClientPhase::Idle => ClientPhase::Idle,
                ClientPhase::Invoked(id) => {
                    if rng.percent(settings.failed_percent) {
                        history.complete(id, Outcome::Failed).unwrap();
                        ClientPhase::Idle
                    } else if rng.percent(settings.indeterminate_percent / 2) {
                        history.complete(id, Outcome::Indeterminate).unwrap();
                        ClientPhase::Idle
                    } else {
                        let operation = history.operations()[id.index()];
                        let outcome = if operation.op.is_checkpoint() {
                            // The same on every key: they hold the same names.
                            let mut outcome = Outcome::Indeterminate;
                            for register in &mut registers {
                                outcome = take_effect(operation.op, register, settings.max_checkpoints);
                            }
                            outcome
                        } else {
                            let register = &mut registers[operation.key as usize];
                            take_effect(operation.op, register, settings.max_checkpoints)
                        };
                        ClientPhase::Applied(id, outcome)
                    }
                }
                ClientPhase::Applied(id, outcome) => {
                    let known =
                        !rng.percent(settings.indeterminate_percent - settings.indeterminate_percent / 2);
                    history.complete(id, if known { outcome } else { Outcome::Indeterminate }).unwrap();
                    ClientPhase::Idle
                }
            };
        }
        history.into_operations()
    }

    fn random_op(rng: &mut TestRng, current: Option<u64>, next_value: &mut u64) -> Op {
        match rng.below(100) {
            0..=39 => Op::Read,
            40..=69 => Op::Write(fresh_value(next_value)),
            70..=94 => {
                // Usually the value read last, which is often stale by the
                // time the CAS takes effect; sometimes something else.
                let expected = if rng.percent(70) { current } else { Some(rng.below(*next_value + 1)) };
                let new = if rng.percent(90) { Some(fresh_value(next_value)) } else { None };
                Op::Cas { expected, new }
            }
            _ => Op::Delete,
        }
    }

    fn random_checkpoint_op(rng: &mut TestRng, names: u8) -> Op {
        let name = CheckpointName(rng.below(u64::from(names)) as u8);
        match rng.below(10) {
            0..=4 => Op::CreateCheckpoint(name),
            5..=7 => Op::Rollback(name),
            _ => Op::DeleteCheckpoint(name),
        }
    }

    /// A value never used before, so that reads tell writes apart.
    fn fresh_value(next_value: &mut u64) -> u64 {
        *next_value += 1;
        *next_value
    }

    fn take_effect(op: Op, register: &mut KeyState, max_checkpoints: usize) -> Outcome {
        let (after, outcome) = op.apply(*register, max_checkpoints);
        *register = after;
        outcome
    }

    #[test]
    fn random_histories_from_sequential_executions_are_linearizable() {
        for seed in 0..20 {
            let history = generate_history(seed, &Settings::default());
            let verdict = verdict(&history);
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
        }
    }

    #[test]
    fn random_multi_key_histories_are_linearizable() {
        for seed in 0..10 {
            let settings = Settings { operations: 500, keys: 5, ..Settings::default() };
            let history = generate_history(seed, &settings);
            let verdict = verdict(&history);
            assert_eq!(verdict, Verdict::Linearizable, "seed {seed}: {verdict}");
        }
    }

    #[test]
    fn corrupted_random_histories_are_not_linearizable() {
        for seed in 0..20 {
            let mut history = generate_history(seed, &Settings::default());
            // Make one read, late in the history, report a value nobody wrote.
            let Some(read) =
                history.iter_mut().rev().find(|operation| matches!(operation.outcome, Outcome::Read(_)))
            else {
                continue;
            };
            read.outcome = Outcome::Read(Some(u64::MAX));
            let verdict = verdict(&history);
            assert!(matches!(verdict, Verdict::NotLinearizable { .. }), "seed {seed}: {verdict}");
        }
    }

    #[test]
    fn two_thousand_operations_from_eight_clients_check_cheaply() {
        let settings = Settings { operations: 2_000, ..Settings::default() };
        for seed in 0..3 {
            let history = generate_history(seed, &settings);
            let operations = partition_by_key(&history).unwrap().remove(&KEY).unwrap();
            let report = search_key(&operations, Model::new(None), SearchBudget::default());
            assert!(matches!(report.result, SearchResult::Linearizable), "seed {seed}");
            // A correct history needs about one configuration per operation;
            // the bound catches a search that lost its memoisation.
            assert!(report.explored_states < 50 * 2_000, "seed {seed}: {}", report.explored_states);
        }
    }

    /// The definition of linearizability, checked by brute force for tiny
    /// histories: try every operation allowed next by real time, with
    /// indeterminate ones optional, memoising only exact (set, state)
    /// pairs. It shares nothing with the search but the model's `step`, and
    /// takes the history whole: checkpoint operations are part of the one
    /// sequence every key goes through, so for a single key it decides
    /// exactly what the per-key search must.
    fn reference_linearizable(history: &[Operation], model: Model) -> bool {
        let operations: Vec<&Operation> = history.iter().filter(|o| o.outcome != Outcome::Failed).collect();
        let determinate = |o: &Operation| o.outcome != Outcome::Indeterminate;
        let mut failed = std::collections::HashSet::new();
        fn explore(
            done: u32,
            state: KeyState,
            model: Model,
            operations: &[&Operation],
            determinate: &dyn Fn(&Operation) -> bool,
            failed: &mut std::collections::HashSet<(u32, KeyState)>,
        ) -> bool {
            let pending = |i: usize| done & (1 << i) == 0;
            if (0..operations.len()).all(|i| !pending(i) || !determinate(operations[i])) {
                return true;
            }
            if failed.contains(&(done, state)) {
                return false;
            }
            for (i, candidate) in operations.iter().enumerate() {
                let blocked = (0..operations.len()).any(|j| {
                    pending(j)
                        && determinate(operations[j])
                        && operations[j].complete.is_some_and(|c| c < candidate.invoke)
                });
                if !pending(i) || blocked {
                    continue;
                }
                if let Some(after) = step(model, state, candidate.op, candidate.outcome) {
                    if explore(done | (1 << i), after, model, operations, determinate, failed) {
                        return true;
                    }
                }
            }
            failed.insert((done, state));
            false
        }
        explore(0, KeyState::new(model.initial), model, &operations, &determinate, &mut failed)
    }

    /// A tiny random history over few values, so that values repeat: either
    /// a real execution, or operations with random outcomes (mostly not
    /// linearizable). Many outcomes are indeterminate. With `checkpoints`,
    /// some operations create, roll back to and delete one of two names,
    /// with at most one checkpoint at a time (so every outcome occurs).
    fn tiny_history(rng: &mut TestRng, checkpoints: bool) -> Vec<Operation> {
        let values = 1 + rng.below(2);
        let value = |rng: &mut TestRng| {
            if rng.percent(20) {
                None
            } else {
                Some(1 + rng.below(values))
            }
        };
        let mut register = KeyState::default();
        let real = rng.percent(50);
        let count = 1 + rng.below(16);
        let mut history = Vec::new();
        for client in 0..count {
            let op = match rng.below(if checkpoints { 13 } else { 10 }) {
                0..=2 => Op::Read,
                3..=4 => Op::Write(1 + rng.below(values)),
                5..=8 => Op::Cas { expected: value(rng), new: value(rng) },
                9 => Op::Delete,
                roll => {
                    let name = CheckpointName(rng.below(2) as u8);
                    match roll {
                        10 => Op::CreateCheckpoint(name),
                        11 => Op::Rollback(name),
                        _ => Op::DeleteCheckpoint(name),
                    }
                }
            };
            let invoke = rng.below(12);
            let complete = invoke + rng.below(6);
            let outcome = if real {
                // Real executions take effect in client order, within
                // windows that overlap at random.
                take_effect(op, &mut register, TINY_MAX_CHECKPOINTS)
            } else {
                match op {
                    Op::Read => Outcome::Read(value(rng)),
                    Op::Write(_) => Outcome::Written,
                    Op::Cas { .. } => Outcome::Cas(rng.percent(50)),
                    Op::Delete => Outcome::Deleted,
                    Op::CreateCheckpoint(_) => Outcome::Checkpoint(match rng.below(3) {
                        0 => CheckpointOutcome::Done,
                        1 => CheckpointOutcome::AlreadyExists,
                        _ => CheckpointOutcome::TooMany,
                    }),
                    Op::Rollback(_) | Op::DeleteCheckpoint(_) => Outcome::Checkpoint(if rng.percent(50) {
                        CheckpointOutcome::Done
                    } else {
                        CheckpointOutcome::NotFound
                    }),
                }
            };
            let outcome = match rng.below(100) {
                0..=34 => Outcome::Indeterminate,
                35..=39 => Outcome::Failed,
                _ => outcome,
            };
            history.push(Operation { client, key: KEY, op, invoke, complete: Some(complete), outcome });
        }
        if real {
            // Give the real execution consistent times: each operation's
            // window contains its moment of effect, which is its index.
            for (moment, operation) in history.iter_mut().enumerate() {
                let moment = 10 * moment as u64 + 5;
                operation.invoke = moment.saturating_sub(rng.below(25));
                operation.complete = Some(moment + rng.below(25));
            }
        }
        history
    }

    /// The bound on checkpoints in tiny histories: with two names, creates
    /// fail both for a taken name and for a full catalog.
    const TINY_MAX_CHECKPOINTS: usize = 1;

    #[test]
    fn search_agrees_with_brute_force_on_tiny_histories() {
        assert_search_agrees_with_brute_force(42, false);
    }

    /// The same comparison with checkpoint operations, which make the
    /// search's state more than a value and exercise its pruning rules with
    /// operations that change the state without changing the value.
    #[test]
    fn search_agrees_with_brute_force_on_tiny_histories_with_checkpoints() {
        assert_search_agrees_with_brute_force(4242, true);
    }

    fn assert_search_agrees_with_brute_force(seed: u64, checkpoints: bool) {
        let mut rng = TestRng(seed);
        // Enough cases to catch each of several deliberate bugs tried in the
        // search's pruning rules; a few seconds in a debug build.
        let cases = 8_000;
        let mut linearizable = 0;
        for case in 0..cases {
            let history = tiny_history(&mut rng, checkpoints);
            let initial = if rng.percent(50) { None } else { Some(1) };
            let model = Model { initial, max_checkpoints: TINY_MAX_CHECKPOINTS };
            let expected = reference_linearizable(&history, model);
            let verdict =
                check_with_model(&history, model, SearchBudget::default()).expect("tiny histories are valid");
            linearizable += u64::from(expected);
            assert_eq!(
                verdict.is_linearizable(),
                expected,
                "case {case}: {verdict}\n{history:#?}\ninitial {initial:?}"
            );
        }
        // Both kinds must be well represented for the comparison to mean much.
        assert!(linearizable > cases / 5 && linearizable < cases * 4 / 5, "{linearizable} of {cases}");
    }
}
