//! Engine configuration and its validation.

use crate::types::NodeId;
#[cfg(doc)]
use crate::types::ReadMode;

/// Settings of one engine. Every queue the engine owns has its bound here.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's id (never [`NodeId::NONE`]).
    pub id: NodeId,
    /// The minimum election timeout. Each follower waits a random number of
    /// ticks in `[election_timeout_ticks, election_timeout_ticks +
    /// election_timeout_random_ticks)` without hearing from a leader or
    /// granting a vote before it campaigns. The timer restarts only on
    /// those two events (§5.2, Figure 2) and when a campaign of its own
    /// starts or is lost; a higher term seen in a vote request it refuses
    /// does not restart it.
    pub election_timeout_ticks: u64,
    /// The width of the random part of the election timeout; `None` means
    /// `election_timeout_ticks` (the timeout is then in `[T, 2T)`, as in the
    /// Raft paper's 150–300 ms). `Some(0)` disables randomisation, which
    /// invites split votes: it exists to reproduce the paper's Figure 16.
    pub election_timeout_random_ticks: Option<u64>,
    /// The leader sends heartbeats every this many ticks. Must be less than
    /// `election_timeout_ticks`.
    pub heartbeat_interval_ticks: u64,
    /// Run a pre-vote round before a real election (on by default).
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an
    /// election timeout, and followers that heard from a leader within the
    /// minimum election timeout ignore vote requests (on by default).
    pub check_quorum: bool,
    /// Allow lease reads ([`ReadMode::Lease`]); off by default. Requires
    /// `check_quorum`. While on, a node that has just started refuses votes
    /// for one election timeout, because it cannot know whether it promised a
    /// leader not to vote before it restarted.
    pub lease_reads: bool,
    /// Send each follower the leader's new commit index as soon as it
    /// advances, in an empty AppendEntries of its own (off by default). Off,
    /// the commit index travels with the next AppendEntries or heartbeat,
    /// as in etcd and hashicorp/raft, so a follower's state machine trails
    /// the leader's by up to a heartbeat interval when no entries flow. On,
    /// followers apply a write about one round trip after the leader, at
    /// the cost of a message and its answer per follower and commit on a
    /// lightly loaded cluster (measured: a quarter longer writes at one
    /// client). Under load entries flow anyway and the two behave alike.
    /// Linearizable and lease reads are correct either way: they wait for
    /// the commit index their heartbeat round brings.
    pub eager_commit_updates: bool,
    /// Lease safety margin for clock drift, in ticks: the leader's lease ends
    /// this many ticks before the followers' minimum election timeout.
    pub lease_drift_margin_ticks: u64,
    /// The most entries in one AppendEntries message.
    pub max_entries_per_message: usize,
    /// The most payload bytes in one AppendEntries message (one entry is
    /// always allowed, however large).
    pub max_bytes_per_message: u64,
    /// The most AppendEntries messages in flight to one follower.
    pub max_inflight_messages: usize,
    /// The most payload bytes in flight to one follower.
    pub max_inflight_bytes: u64,
    /// The most bytes of proposed but uncommitted entries a leader accepts;
    /// past it, proposals fail with [`super::ProposeError::Busy`].
    pub max_uncommitted_bytes: u64,
    /// The most reads waiting on one leader or follower for confirmation.
    pub max_pending_reads: usize,
    /// The most committed entries handed out for applying but not yet
    /// reported applied (the apply backlog).
    pub max_apply_backlog_entries: u64,
    /// Snapshot chunk size the leader asks for.
    pub snapshot_chunk_bytes: u64,
    /// The most snapshot chunks sent to one follower and not yet
    /// acknowledged. A window of several chunks keeps the link busy while
    /// the follower writes the previous ones; it bounds the snapshot bytes
    /// in flight to one follower at `snapshot_chunks_in_flight *
    /// snapshot_chunk_bytes`.
    pub snapshot_chunks_in_flight: usize,
    /// After a snapshot at index `i`, entries up to `i - snapshot_trailing_entries`
    /// are compacted; the rest stay so slightly lagging followers catch up
    /// from the log instead of a snapshot.
    pub snapshot_trailing_entries: u64,
    /// A learner is promoted only when its match index is within this many
    /// entries of the leader's last index.
    pub promotion_max_lag_entries: u64,
    /// Seed of the engine's random number generator (election timeouts).
    pub random_seed: u64,
}

impl Config {
    /// A configuration with the defaults used by `raft-node`: 10-tick
    /// election timeout, 1-tick heartbeats (the node ticks every 15 ms).
    pub fn new(id: NodeId) -> Self {
        Config {
            id,
            election_timeout_ticks: 10,
            election_timeout_random_ticks: None,
            heartbeat_interval_ticks: 1,
            pre_vote: true,
            check_quorum: true,
            lease_reads: false,
            eager_commit_updates: false,
            lease_drift_margin_ticks: 2,
            max_entries_per_message: 512,
            max_bytes_per_message: 1 << 20,
            max_inflight_messages: 256,
            max_inflight_bytes: 32 << 20,
            max_uncommitted_bytes: 64 << 20,
            max_pending_reads: 65_536,
            max_apply_backlog_entries: 65_536,
            snapshot_chunk_bytes: 1 << 20,
            snapshot_chunks_in_flight: 4,
            snapshot_trailing_entries: 1_024,
            promotion_max_lag_entries: 1_000,
            random_seed: id.0,
        }
    }

    /// Checks that the settings make sense together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == NodeId::NONE {
            return Err(ConfigError::ZeroId);
        }
        if self.heartbeat_interval_ticks == 0 {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return Err(ConfigError::ElectionTimeoutTooShort {
                election_timeout_ticks: self.election_timeout_ticks,
                heartbeat_interval_ticks: self.heartbeat_interval_ticks,
            });
        }
        if self.lease_reads {
            if !self.check_quorum {
                return Err(ConfigError::LeaseWithoutCheckQuorum);
            }
            if self.lease_drift_margin_ticks >= self.election_timeout_ticks {
                return Err(ConfigError::LeaseMarginTooLarge);
            }
        }
        let positive = [
            ("max_entries_per_message", self.max_entries_per_message as u64),
            ("max_bytes_per_message", self.max_bytes_per_message),
            ("max_inflight_messages", self.max_inflight_messages as u64),
            ("max_inflight_bytes", self.max_inflight_bytes),
            ("max_uncommitted_bytes", self.max_uncommitted_bytes),
            ("max_pending_reads", self.max_pending_reads as u64),
            ("max_apply_backlog_entries", self.max_apply_backlog_entries),
            ("snapshot_chunk_bytes", self.snapshot_chunk_bytes),
            ("snapshot_chunks_in_flight", self.snapshot_chunks_in_flight as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::ZeroBound(name));
            }
        }
        Ok(())
    }
}

/// Why a [`Config`] was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved for \"no node\"")]
    ZeroId,
    /// Heartbeats must have a positive interval.
    #[error("heartbeat_interval_ticks must be at least 1")]
    ZeroHeartbeat,
    /// The election timeout must exceed the heartbeat interval.
    #[error(
        "election_timeout_ticks ({election_timeout_ticks}) must be greater than \
         heartbeat_interval_ticks ({heartbeat_interval_ticks})"
    )]
    ElectionTimeoutTooShort {
        /// The configured election timeout.
        election_timeout_ticks: u64,
        /// The configured heartbeat interval.
        heartbeat_interval_ticks: u64,
    },
    /// Lease reads rely on CheckQuorum.
    #[error("lease reads require check_quorum")]
    LeaseWithoutCheckQuorum,
    /// The drift margin would leave no lease at all.
    #[error("lease_drift_margin_ticks must be less than election_timeout_ticks")]
    LeaseMarginTooLarge,
    /// A bound of zero would stop all progress.
    #[error("{0} must be at least 1")]
    ZeroBound(&'static str),
}
