//! The Raft protocol as a pure, deterministic state machine.
//!
//! The engine does no I/O, reads no clock and spawns nothing: time arrives as
//! [`Engine::tick`], messages as [`Engine::step`], client requests as
//! [`Engine::propose`], [`Engine::read_index`] and friends, and everything the
//! engine wants done comes out of [`Engine::ready`] as one typed batch.
//!
//! # Call order
//!
//! ```text
//! loop {
//!     feed inputs:   tick() | step(msg) | propose(..) | read_index(..) | change_membership(..)
//!                    | transfer_leadership(..) | snapshot_chunk_read(..) | snapshot_created(..)
//!     let ready = engine.ready();          // take the batch of work
//!     send ready.messages;                 // immediately
//!     persist ready.snapshot_chunks, ready.install_snapshot, ready.entries, ready.hard_state;
//!     engine.persisted(ready.persist_id);  // once durable, in order (may be later)
//!     apply ready.committed_entries;       // then engine.applied(index)
//!     serve ready.reads once applied >= read.index;
//! }
//! ```
//!
//! Messages that must not leave before local state is durable (vote grants,
//! append acknowledgements) are held inside the engine and come out of a
//! later `ready()` after [`Engine::persisted`], so a caller cannot send them
//! too early. A node's own writes run in parallel with what it asks of the
//! others: a candidate's vote requests leave at once and it counts its own
//! vote only once its term and vote are durable; a leader's AppendEntries
//! leave at once and it counts itself toward the commit quorum only once its
//! write is durable. Every vote and every acknowledgement that is counted
//! is therefore durable.
//!
//! The module is split by concern: [`election`](self) (timers, pre-vote,
//! votes, CheckQuorum), replication (AppendEntries, commit), reads
//! (ReadIndex and leases), snapshots (chunked InstallSnapshot, compaction),
//! membership (learners, joint consensus) and leadership transfer.

mod config;
mod election;
mod error;
mod invariants;
mod log;
mod membership;
mod progress;
mod reads;
mod ready;
mod replication;
mod rng;
#[cfg(test)]
mod smoke_tests;
mod snapshot;
mod transfer;

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

pub use config::{Config, ConfigError};
pub use error::{MembershipError, ProposeError, ReadError, RestoreError, SnapshotError, TransferError};
pub use invariants::InvariantViolation;
pub use membership::MembershipChange;
pub use ready::{FailedRead, PersistId, ReadState, Ready, SnapshotChunkWrite, SnapshotRead, SoftState};

use crate::message::{Message, MessageBody};
pub use crate::types::ReadMode;
use crate::types::{
    CheckpointOp, ClientRequestId, Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, ReadId,
    Role, SnapshotMeta, Term,
};
use log::RaftLog;
use progress::Progress;
use rng::Rng;

/// Protocol bugs that can be switched on to prove that the simulator and the
/// tests catch them. They can be switched on only with the `testing` feature
/// ([`Engine::inject_bugs`]); otherwise they are always off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedBugs {
    /// Grant votes without checking that the candidate's log is up to date.
    pub vote_without_log_check: bool,
    /// Commit entries of earlier terms by counting replicas (Figure 8).
    pub commit_previous_terms: bool,
    /// Hand out entries for applying before they are committed.
    pub apply_before_commit: bool,
    /// Never persist the vote (a restart forgets it).
    pub forget_vote: bool,
    /// Count a candidate's own vote as soon as it campaigns, before its term
    /// and vote are durable (its vote requests leave at once either way).
    pub count_self_vote_early: bool,
    /// Take office once others' grants are a majority, before the
    /// candidate's own term and vote are durable.
    pub lead_before_own_write: bool,
}

/// The state a node restarts from, as read from storage.
#[derive(Clone, Debug, Default)]
pub struct RestoredState {
    /// The persisted hard state.
    pub hard_state: HardState,
    /// The latest durable snapshot, if any.
    pub snapshot: Option<SnapshotMeta>,
    /// The log entries after the snapshot (entries the snapshot covers are
    /// ignored), consecutive.
    pub entries: Vec<Entry>,
}

/// Counters of what the engine dropped or refused, for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Messages dropped because they carried a stale term.
    pub dropped_stale_term: u64,
    /// Messages dropped because they came from a node the leader does not track.
    pub dropped_unknown_peer: u64,
    /// Messages dropped because they were addressed to another node.
    pub dropped_wrong_destination: u64,
    /// Messages dropped as out of date or not applicable in the current role.
    pub dropped_irrelevant: u64,
    /// Messages that contradict the protocol (for example an attempt to
    /// overwrite a committed entry), dropped.
    pub protocol_violations: u64,
    /// Vote requests ignored because a leader was heard from recently.
    pub votes_ignored_in_lease: u64,
    /// Elections started (real, not pre-vote).
    pub elections_started: u64,
    /// Pre-vote rounds started.
    pub pre_votes_started: u64,
    /// Times this node became leader.
    pub leadership_won: u64,
    /// Proposals refused.
    pub proposals_refused: u64,
    /// Snapshot chunks sent.
    pub snapshot_chunks_sent: u64,
    /// Times a snapshot transfer went back to an earlier offset because the
    /// follower reported a lost chunk.
    pub snapshot_rewinds: u64,
    /// Snapshots installed from a leader.
    pub snapshots_installed: u64,
}

/// Why a message was not processed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    /// The message was addressed to another node.
    #[error("message for node {to} delivered to node {me}")]
    WrongDestination {
        /// The addressee.
        to: NodeId,
        /// This node.
        me: NodeId,
    },
    /// The message carried a term older than the node's.
    #[error("stale term {message_term} (current {current_term})")]
    StaleTerm {
        /// The message's term.
        message_term: Term,
        /// This node's term.
        current_term: Term,
    },
    /// The sender is not a node the leader tracks.
    #[error("message from unknown node {0}")]
    UnknownPeer(NodeId),
    /// The message contradicts the protocol; it was dropped.
    #[error("protocol violation by node {from}: {reason}")]
    ProtocolViolation {
        /// The sender.
        from: NodeId,
        /// What was wrong.
        reason: &'static str,
    },
}

/// The leader's progress toward one peer, for status displays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer.
    pub id: NodeId,
    /// Whether it votes.
    pub voter: bool,
    /// The highest index known to be replicated there.
    pub match_index: LogIndex,
    /// The next index the leader will send.
    pub next_index: LogIndex,
    /// "probe", "replicate" or "snapshot".
    pub state: &'static str,
    /// Whether it answered within the current CheckQuorum window.
    pub recent_active: bool,
    /// AppendEntries messages in flight.
    pub inflight_messages: usize,
    /// Payload bytes in flight.
    pub inflight_bytes: u64,
}

/// A plain snapshot of the engine's state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// This node.
    pub id: NodeId,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: Term,
    /// Its vote in that term.
    pub vote: NodeId,
    /// The leader it knows of.
    pub leader: NodeId,
    /// The commit index.
    pub commit_index: LogIndex,
    /// The applied index reported by the caller.
    pub applied_index: LogIndex,
    /// The last log index.
    pub last_index: LogIndex,
    /// The term of the last entry.
    pub last_term: Term,
    /// The durable last index.
    pub persisted_index: LogIndex,
    /// The first index still in the log.
    pub first_index: LogIndex,
    /// The latest snapshot's index.
    pub snapshot_index: LogIndex,
    /// The configuration in force.
    pub membership: Membership,
    /// Index of the entry that set it.
    pub membership_index: LogIndex,
    /// On a leader: its peers' progress, ordered by id.
    pub peers: Vec<PeerStatus>,
    /// On a leader: the target of an ongoing leadership transfer.
    pub transfer_target: Option<NodeId>,
}

/// Where a node's election timer stands ([`Engine::election_timer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionTimer {
    /// Ticks since the timer last restarted. On a leader, ticks since its
    /// last CheckQuorum check.
    pub elapsed_ticks: u64,
    /// The randomized timeout it runs to: a follower or candidate campaigns
    /// once `elapsed_ticks` reaches it (a leader does not use it).
    pub timeout_ticks: u64,
}

/// A read waiting on the leader for confirmation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingRead {
    id: ReadId,
    /// The node that asked (this node, or a follower that forwarded it).
    from: NodeId,
    /// The commit index when the read arrived: the read is served at it.
    index: LogIndex,
    /// The read round whose quorum confirmation releases it.
    round: u64,
}

/// A read forwarded by this follower, waiting for the leader's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ForwardedRead {
    id: ReadId,
    leader: NodeId,
    sent_tick: u64,
}

/// A leadership transfer under way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Transfer {
    target: NodeId,
    elapsed_ticks: u64,
    timeout_now_sent: bool,
}

/// State only the leader has; dropped when it steps down.
#[derive(Debug, Default)]
struct LeaderState {
    /// Every member other than this node.
    progress: BTreeMap<NodeId, Progress>,
    /// Whether an entry of the current term is committed (required before
    /// serving reads: until then the leader's commit index may be stale).
    committed_in_term: bool,
    /// The newest read round started.
    read_round: u64,
    /// When each recent round was sent: (round, tick). Bounded by
    /// `MAX_TRACKED_ROUNDS`; older rounds no longer matter for leases.
    round_ticks: VecDeque<(u64, u64)>,
    /// Reads waiting for a round to be started by the next `ready()`.
    reads_awaiting_round: Vec<PendingRead>,
    /// Reads waiting for their round's quorum.
    pending_reads: VecDeque<PendingRead>,
    /// Reads that arrived before an entry of this term was committed.
    reads_awaiting_commit: Vec<(ReadId, NodeId, ReadMode)>,
    transfer: Option<Transfer>,
    /// Bytes of entries proposed in this term and not yet committed.
    uncommitted_bytes: u64,
}

impl LeaderState {
    fn pending_read_count(&self) -> usize {
        self.reads_awaiting_round.len() + self.pending_reads.len() + self.reads_awaiting_commit.len()
    }
}

/// A snapshot being received from the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
struct IncomingSnapshot {
    snapshot: SnapshotMeta,
    next_offset: u64,
}

/// A write handed to storage and not yet reported durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InflightPersist {
    id: PersistId,
    /// The log's last entry when the write was issued (capped when a later
    /// truncation removed it).
    last_index: LogIndex,
}

/// A candidate's vote for itself, waiting for the write that records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PendingSelfVote {
    /// The term of the campaign.
    term: Term,
    /// The persist id of the write that carries the campaign's term and
    /// vote: the vote counts once `persisted()` reaches it.
    persist_id: u64,
}

/// The bound on read rounds remembered for lease computation.
const MAX_TRACKED_ROUNDS: usize = 1024;

/// One Raft node's protocol state. See the [module documentation](self) for
/// the call order.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    rng: Rng,

    // The node's persistent state, as the engine knows it (durable once the
    // `Ready` that carried it is acknowledged).
    term: Term,
    vote: NodeId,
    log: RaftLog,
    /// The latest snapshot: received and installed, or created locally.
    snapshot: SnapshotMeta,

    commit: LogIndex,
    role: Role,
    leader: NodeId,
    /// The configuration in force: the latest in the log, or the snapshot's.
    membership: Membership,
    /// Index of the entry (or snapshot) that set `membership`.
    membership_index: LogIndex,
    /// The configuration as of the log's compaction point, for recomputing
    /// `membership` after truncation.
    base_membership: (LogIndex, Membership),

    /// Ticks since the engine was created (the engine's only clock).
    ticks: u64,
    election_elapsed: u64,
    randomized_election_timeout: u64,
    heartbeat_elapsed: u64,
    /// Votes received in the current (pre-)election.
    votes: BTreeMap<NodeId, bool>,
    /// A candidate's own vote, counted into `votes` only once it is durable.
    pending_self_vote: Option<PendingSelfVote>,
    leader_state: Option<Box<LeaderState>>,
    /// Reads this follower forwarded to the leader; bounded by `max_pending_reads`.
    forwarded_reads: VecDeque<ForwardedRead>,
    incoming_snapshot: Option<IncomingSnapshot>,

    // The persistence pipeline.
    next_persist_id: u64,
    inflight_persists: VecDeque<InflightPersist>,
    /// The highest persist id acknowledged.
    acked_persist_id: u64,
    /// Messages generated since the last `ready()` that must wait for the
    /// state of that batch (or an earlier one) to be durable.
    unbound_held: Vec<Message>,
    /// Held messages bound to the persist id they wait for.
    held_messages: VecDeque<(u64, Message)>,
    /// The log is durable up to here.
    persisted_index: LogIndex,
    emitted_hard_state: HardState,
    pending_chunk_writes: Vec<SnapshotChunkWrite>,
    pending_install: Option<SnapshotMeta>,

    applied: LogIndex,
    /// Committed entries handed out for applying.
    handed_out: LogIndex,

    // Output buffers, drained by `ready()`.
    messages: Vec<Message>,
    reads_out: Vec<ReadState>,
    failed_reads_out: Vec<FailedRead>,
    snapshot_reads_out: Vec<SnapshotRead>,
    compact_to_out: Option<LogIndex>,
    emitted_soft_state: SoftState,

    /// Set while a freshly started node must not vote (lease safety).
    vote_embargo: bool,
    stats: EngineStats,
    bugs: InjectedBugs,
}

impl Engine {
    /// An engine with no state: a node that will join an existing cluster.
    pub fn new(config: Config) -> Result<Self, RestoreError> {
        Self::restore(config, RestoredState::default())
    }

    /// An engine for a member of a brand-new cluster: its log starts with the
    /// initial configuration at index 1, term 0. Every initial member
    /// bootstraps with the same membership, so their logs agree.
    pub fn bootstrap(config: Config, membership: Membership) -> Result<Self, RestoreError> {
        if membership.voters.is_empty()
            || membership.is_joint()
            || membership.members().contains(&NodeId::NONE)
        {
            return Err(RestoreError::BadMembership);
        }
        let mut engine = Self::new(config)?;
        let entry =
            Entry { term: Term(0), index: LogIndex(1), payload: EntryPayload::Membership(membership) };
        engine.append_entry_to_log(entry);
        Ok(engine)
    }

    /// An engine restarting from durable state.
    pub fn restore(config: Config, state: RestoredState) -> Result<Self, RestoreError> {
        config.validate()?;
        let snapshot = state.snapshot.unwrap_or_default();
        let mut log = RaftLog::new(snapshot.last_index, snapshot.last_term);
        for entry in state.entries {
            if entry.index <= snapshot.last_index {
                continue;
            }
            if entry.index != log.last_index().next() {
                return Err(RestoreError::Gap { after: log.last_index() });
            }
            if entry.term > state.hard_state.term {
                return Err(RestoreError::BadTerm { index: entry.index, term: entry.term });
            }
            if entry.term < log.last_term() {
                // Entries older than the snapshot's term that follow it can
                // only be an uncommitted suffix left behind by a crash between
                // installing a received snapshot and rewriting the log: the
                // snapshot's leader replaced them. Drop them.
                break;
            }
            log.append(entry);
        }
        // Everything read from storage is durable already.
        let _ = log.take_unstable();
        let commit = state.hard_state.commit.max(snapshot.last_index).min(log.last_index());
        let rng = Rng::new(config.random_seed);
        let base_membership = (snapshot.last_index, snapshot.membership.clone());
        let vote_embargo = config.lease_reads;
        let mut engine = Engine {
            rng,
            term: state.hard_state.term,
            vote: state.hard_state.vote,
            persisted_index: log.last_index(),
            log,
            commit,
            role: Role::Follower,
            leader: NodeId::NONE,
            membership: snapshot.membership.clone(),
            membership_index: snapshot.last_index,
            base_membership,
            ticks: 0,
            election_elapsed: 0,
            randomized_election_timeout: config.election_timeout_ticks,
            heartbeat_elapsed: 0,
            votes: BTreeMap::new(),
            pending_self_vote: None,
            leader_state: None,
            forwarded_reads: VecDeque::new(),
            incoming_snapshot: None,
            next_persist_id: 1,
            inflight_persists: VecDeque::new(),
            acked_persist_id: 0,
            unbound_held: Vec::new(),
            held_messages: VecDeque::new(),
            emitted_hard_state: state.hard_state,
            pending_chunk_writes: Vec::new(),
            pending_install: None,
            applied: snapshot.last_index,
            handed_out: snapshot.last_index,
            messages: Vec::new(),
            reads_out: Vec::new(),
            failed_reads_out: Vec::new(),
            snapshot_reads_out: Vec::new(),
            compact_to_out: None,
            emitted_soft_state: SoftState {
                role: Role::Follower,
                term: state.hard_state.term,
                leader: NodeId::NONE,
            },
            vote_embargo,
            stats: EngineStats::default(),
            snapshot,
            config,
            bugs: InjectedBugs::default(),
        };
        engine.recompute_membership();
        engine.reset_randomized_election_timeout();
        debug_assert_eq!(engine.check_invariants(), Ok(()));
        Ok(engine)
    }

    /// Switches on protocol bugs (tests only).
    #[cfg(feature = "testing")]
    pub fn inject_bugs(&mut self, bugs: InjectedBugs) {
        self.bugs = bugs;
    }

    /// Whether an injected bug is switched on.
    #[inline(always)]
    fn bug(&self, pick: impl Fn(&InjectedBugs) -> bool) -> bool {
        pick(&self.bugs)
    }

    // ---------------------------------------------------------------------
    // Getters.

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The leader this node knows of, or [`NodeId::NONE`].
    pub fn leader(&self) -> NodeId {
        self.leader
    }

    /// The commit index.
    pub fn commit_index(&self) -> LogIndex {
        self.commit
    }

    /// The last log index.
    pub fn last_index(&self) -> LogIndex {
        self.log.last_index()
    }

    /// On a leader: whether an entry of its term is committed, so that its
    /// commit index is current (reads and membership changes wait for it).
    pub fn committed_in_term(&self) -> bool {
        self.leader_state.as_deref().is_some_and(|s| s.committed_in_term)
    }

    /// The configuration in force.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The latest snapshot's metadata.
    pub fn snapshot(&self) -> &SnapshotMeta {
        &self.snapshot
    }

    /// Number of entries held in memory (bounded by the snapshot policy).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }

    /// The election timer: how far it has run and the timeout it runs to.
    pub fn election_timer(&self) -> ElectionTimer {
        ElectionTimer {
            elapsed_ticks: self.election_elapsed,
            timeout_ticks: self.randomized_election_timeout,
        }
    }

    /// The engine's counters.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// Whether `ready()` would return any work.
    pub fn has_ready(&self) -> bool {
        !self.messages.is_empty()
            || !self.unbound_held.is_empty()
            || self.log.has_unstable()
            || self.hard_state() != self.emitted_hard_state
            || !self.pending_chunk_writes.is_empty()
            || self.pending_install.is_some()
            || self.next_committed_to() > self.handed_out
            || !self.reads_out.is_empty()
            || !self.failed_reads_out.is_empty()
            || !self.snapshot_reads_out.is_empty()
            || self.compact_to_out.is_some()
            || self.soft_state() != self.emitted_soft_state
            || self.leader_has_work()
    }

    /// A plain summary of the engine's state.
    pub fn status(&self) -> Status {
        let peers = self
            .leader_state
            .as_ref()
            .map(|leader| {
                leader
                    .progress
                    .iter()
                    .map(|(id, p)| PeerStatus {
                        id: *id,
                        voter: self.membership.is_voter(*id),
                        match_index: p.match_index,
                        next_index: p.next_index,
                        state: p.state_name(),
                        recent_active: p.recent_active,
                        inflight_messages: p.inflights.count(),
                        inflight_bytes: p.inflights.bytes(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Status {
            id: self.config.id,
            role: self.role,
            term: self.term,
            vote: self.vote,
            leader: self.leader,
            commit_index: self.commit,
            applied_index: self.applied,
            last_index: self.log.last_index(),
            last_term: self.log.last_term(),
            persisted_index: self.persisted_index,
            first_index: self.log.first_index(),
            snapshot_index: self.snapshot.last_index,
            membership: self.membership.clone(),
            membership_index: self.membership_index,
            peers,
            transfer_target: self.leader_state.as_ref().and_then(|l| l.transfer.map(|t| t.target)),
        }
    }

    /// The entries in `from ..= to` still held in memory (for tests and for
    /// callers that want to inspect the log).
    pub fn entries(&self, from: LogIndex, to: LogIndex) -> Vec<Entry> {
        self.log.slice(from, to)
    }

    /// The term of the entry at `index`, if the engine still holds it.
    pub fn term_at(&self, index: LogIndex) -> Option<Term> {
        self.log.term(index)
    }

    fn hard_state(&self) -> HardState {
        HardState { term: self.term, vote: self.vote, commit: self.commit }
    }

    fn soft_state(&self) -> SoftState {
        SoftState { role: self.role, term: self.term, leader: self.leader }
    }

    // ---------------------------------------------------------------------
    // Inputs.

    /// Advances the engine's clock by one tick.
    pub fn tick(&mut self) {
        self.ticks += 1;
        if self.vote_embargo && self.ticks >= self.config.election_timeout_ticks {
            self.vote_embargo = false;
        }
        self.expire_forwarded_reads();
        match self.role {
            Role::Leader => self.tick_leader(),
            Role::Follower | Role::PreCandidate | Role::Candidate => self.tick_election(),
        }
    }

    /// Handles a message from another node.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        if message.to != self.config.id {
            self.stats.dropped_wrong_destination += 1;
            return Err(StepError::WrongDestination { to: message.to, me: self.config.id });
        }
        if message.from == self.config.id || message.from == NodeId::NONE {
            self.stats.protocol_violations += 1;
            return Err(StepError::ProtocolViolation {
                from: message.from,
                reason: "a message must come from another, real node",
            });
        }
        if !self.step_term(&message)? {
            return Ok(());
        }
        match self.role {
            Role::Leader => self.step_leader(message),
            Role::Candidate | Role::PreCandidate => self.step_candidate(message),
            Role::Follower => self.step_follower(message),
        }
    }

    /// Proposes a command. On success returns the (term, index) the entry was
    /// appended at: if the entry applied at that index has another term, the
    /// proposal was lost to a leader change.
    pub fn propose(
        &mut self,
        data: Bytes,
        client: Option<ClientRequestId>,
    ) -> Result<(Term, LogIndex), ProposeError> {
        self.propose_payload(EntryPayload::Command { client, data })
    }

    /// Proposes a checkpoint operation (see [`crate::runtime`]); like
    /// [`Engine::propose`], only a leader accepts it.
    pub fn propose_checkpoint(&mut self, op: CheckpointOp) -> Result<(Term, LogIndex), ProposeError> {
        self.propose_payload(EntryPayload::Checkpoint(op))
    }

    /// Starts a linearizable read. The outcome arrives in a later
    /// `Ready::reads` (or `Ready::failed_reads`) under the same id.
    pub fn read_index(&mut self, id: ReadId, mode: ReadMode) -> Result<(), ReadError> {
        if mode == ReadMode::Lease && !(self.config.lease_reads && self.config.check_quorum) {
            return Err(ReadError::LeaseDisabled);
        }
        if self.role == Role::Leader {
            return self.leader_read(id, self.config.id, mode);
        }
        self.forward_read(id, mode)
    }

    /// Reports that the write of the `Ready` with this id (and every earlier
    /// one) is durable.
    pub fn persisted(&mut self, id: PersistId) {
        while let Some(front) = self.inflight_persists.front().copied() {
            if front.id > id {
                break;
            }
            self.inflight_persists.pop_front();
            if front.last_index > self.persisted_index {
                self.persisted_index = front.last_index.min(self.log.last_index());
            }
        }
        self.acked_persist_id = self.acked_persist_id.max(id.0);
        while let Some((tag, _)) = self.held_messages.front() {
            if *tag > self.acked_persist_id {
                break;
            }
            if let Some((_, message)) = self.held_messages.pop_front() {
                self.messages.push(message);
            }
        }
        self.count_durable_self_vote();
        if self.role == Role::Leader {
            self.maybe_commit();
        }
    }

    /// Reports that the state machine applied every entry up to `index`.
    pub fn applied(&mut self, index: LogIndex) {
        if index > self.applied && index <= self.handed_out {
            self.applied = index;
        }
    }

    // ---------------------------------------------------------------------
    // Output.

    /// Takes the pending batch of work. See [`Ready`] for how to handle it.
    pub fn ready(&mut self) -> Ready {
        if self.role == Role::Leader {
            self.leader_prepare_ready(self.config.eager_commit_updates);
        }
        let mut ready = Ready {
            messages: std::mem::take(&mut self.messages),
            snapshot_chunks: std::mem::take(&mut self.pending_chunk_writes),
            install_snapshot: self.pending_install.take(),
            ..Ready::default()
        };
        if ready.install_snapshot.is_some() {
            // The install replaces the stored log, so every entry we hold
            // after the snapshot must be written again.
            self.log.mark_all_unstable();
        }
        ready.entries = self.log.take_unstable();
        let hard_state = self.hard_state();
        let hard_state_changed = hard_state != self.emitted_hard_state;
        let durable_change = hard_state.term != self.emitted_hard_state.term
            || hard_state.vote != self.emitted_hard_state.vote;
        if hard_state_changed {
            let mut written = hard_state;
            if self.bug(|b| b.forget_vote) {
                written.vote = NodeId::NONE;
            }
            ready.hard_state = Some(written);
            self.emitted_hard_state = hard_state;
        }
        let must_sync = durable_change
            || !ready.entries.is_empty()
            || !ready.snapshot_chunks.is_empty()
            || ready.install_snapshot.is_some();
        // A campaign's own vote waits for the persist id this batch issues
        // (see `campaign`); the new term always makes the batch a synced write.
        debug_assert!(
            must_sync || self.pending_self_vote.is_none_or(|p| p.persist_id < self.next_persist_id),
            "a campaign's term and vote must go out in a synced write"
        );
        if must_sync {
            let id = PersistId(self.next_persist_id);
            self.next_persist_id += 1;
            self.inflight_persists.push_back(InflightPersist { id, last_index: self.log.last_index() });
            ready.persist_id = Some(id);
        }
        self.bind_held_messages(&mut ready);
        ready.committed_entries = self.take_committed_entries();
        ready.reads = std::mem::take(&mut self.reads_out);
        ready.failed_reads = std::mem::take(&mut self.failed_reads_out);
        ready.snapshot_reads = std::mem::take(&mut self.snapshot_reads_out);
        ready.compact_to = self.compact_to_out.take();
        let soft_state = self.soft_state();
        if soft_state != self.emitted_soft_state {
            ready.soft_state = Some(soft_state);
            self.emitted_soft_state = soft_state;
        }
        debug_assert!(ready.install_snapshot.is_none() || ready.committed_entries.is_empty());
        ready
    }

    /// Ties messages generated since the last batch to the newest write they
    /// may depend on; sends them at once if every write is durable already.
    fn bind_held_messages(&mut self, ready: &mut Ready) {
        if self.unbound_held.is_empty() {
            return;
        }
        let newest_issued = self.next_persist_id - 1;
        if newest_issued <= self.acked_persist_id {
            ready.messages.append(&mut self.unbound_held);
            return;
        }
        for message in self.unbound_held.drain(..) {
            self.held_messages.push_back((newest_issued, message));
        }
    }

    /// The highest index that may be handed out for applying now.
    fn next_committed_to(&self) -> LogIndex {
        let limit = LogIndex(self.applied.0.saturating_add(self.config.max_apply_backlog_entries));
        let committed = if self.bug(|b| b.apply_before_commit) { self.log.last_index() } else { self.commit };
        committed.min(self.persisted_index).min(limit)
    }

    fn take_committed_entries(&mut self) -> Vec<Entry> {
        let to = self.next_committed_to();
        if to <= self.handed_out {
            return Vec::new();
        }
        let entries = self.log.slice(self.handed_out.next(), to);
        if let Some(last) = entries.last() {
            self.handed_out = last.index;
        }
        entries
    }

    // ---------------------------------------------------------------------
    // Helpers shared by the concerns.

    /// Queues a message that may leave at once.
    fn send(&mut self, to: NodeId, body: MessageBody) {
        self.messages.push(Message { from: self.config.id, to, term: self.term, body });
    }

    /// Queues a message that may leave only once the current state is durable.
    fn send_after_persist(&mut self, to: NodeId, term: Term, body: MessageBody) {
        self.unbound_held.push(Message { from: self.config.id, to, term, body });
    }

    /// Appends an entry to the log, tracking configuration entries.
    fn append_entry_to_log(&mut self, entry: Entry) {
        if let EntryPayload::Membership(membership) = &entry.payload {
            self.membership = membership.clone();
            self.membership_index = entry.index;
            self.on_membership_changed();
        }
        self.log.append(entry);
    }

    /// Removes the log's suffix from `index`, reverting configuration
    /// entries it held and capping durable-write bookkeeping.
    fn truncate_log_from(&mut self, index: LogIndex) {
        self.log.truncate_from(index);
        let last = self.log.last_index();
        self.persisted_index = self.persisted_index.min(last);
        for persist in self.inflight_persists.iter_mut() {
            persist.last_index = persist.last_index.min(last);
        }
        if self.membership_index >= index {
            self.recompute_membership();
        }
    }

    /// Sets `membership` from the newest configuration entry in the log, or
    /// the compaction point's.
    fn recompute_membership(&mut self) {
        let newest = self.log.iter_range(self.log.first_index(), self.log.last_index()).rev().find_map(|e| {
            match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            }
        });
        let (index, membership) = newest.unwrap_or_else(|| self.base_membership.clone());
        self.membership = membership;
        self.membership_index = index;
        self.on_membership_changed();
    }

    fn reset_randomized_election_timeout(&mut self) {
        let base = self.config.election_timeout_ticks;
        let random_ticks = self.config.election_timeout_random_ticks.unwrap_or(base);
        self.randomized_election_timeout = base + self.rng.below(random_ticks);
    }
}
