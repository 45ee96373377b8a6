//! Errors of the engine's operations, one enum per operation.

use crate::types::{LogIndex, NodeId, Term};

/// Why a proposal was refused. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposeError {
    /// Only the leader accepts proposals.
    #[error("not the leader (leader: {leader})")]
    NotLeader {
        /// The leader this node knows of, or [`NodeId::NONE`].
        leader: NodeId,
    },
    /// The leader is handing leadership to another node.
    #[error("leadership transfer to {target} in progress")]
    TransferInProgress {
        /// The node taking over.
        target: NodeId,
    },
    /// Too many bytes proposed and not yet committed; retry later.
    #[error("too many uncommitted bytes ({uncommitted_bytes} of at most {max_uncommitted_bytes})")]
    Busy {
        /// Bytes proposed and not yet committed.
        uncommitted_bytes: u64,
        /// The configured bound.
        max_uncommitted_bytes: u64,
    },
    /// The leader is being removed from the cluster.
    #[error("the leader is leaving the cluster")]
    LeaderLeaving,
}

/// Why a membership change was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MembershipError {
    /// The change could not be proposed.
    #[error(transparent)]
    Propose(#[from] ProposeError),
    /// A change is already under way (uncommitted, or in joint consensus).
    #[error("a membership change at index {index} is still pending")]
    ChangePending {
        /// Index of the pending configuration entry.
        index: LogIndex,
    },
    /// The new leader has not committed an entry of its term yet, so it
    /// cannot know whether an earlier change is pending.
    #[error("the leader has not committed an entry in its term yet")]
    NotReady,
    /// The node is already a member in the requested role.
    #[error("node {0} is already a member in that role")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    UnknownNode(NodeId),
    /// The node must be a learner first, caught up, before becoming a voter.
    #[error("node {0} must be added as a learner first")]
    NotLearner(NodeId),
    /// The learner is too far behind the leader to be promoted.
    #[error("node {id} is {lag_entries} entries behind (at most {max_lag_entries} allowed)")]
    NotCaughtUp {
        /// The learner.
        id: NodeId,
        /// How far behind it is.
        lag_entries: u64,
        /// The configured bound.
        max_lag_entries: u64,
    },
    /// The change would leave no voter.
    #[error("the configuration would have no voters")]
    NoVoters,
    /// Node id 0 is reserved.
    #[error("node id 0 is reserved")]
    ZeroId,
}

/// Why a read could not be confirmed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// No leader is known.
    #[error("no leader known")]
    NoLeader,
    /// The leader lost its leadership, or this node's leader changed, before
    /// the read was confirmed.
    #[error("leadership changed before the read was confirmed")]
    LeadershipLost,
    /// Too many reads are waiting; retry later.
    #[error("too many pending reads (at most {0})")]
    Busy(usize),
    /// The leader is transferring leadership.
    #[error("leadership transfer in progress")]
    TransferInProgress,
    /// The leader did not answer a forwarded read in time.
    #[error("the leader did not answer in time")]
    Timeout,
    /// The request asked for a lease read but leases are off.
    #[error("lease reads are not enabled (they need check_quorum and lease_reads)")]
    LeaseDisabled,
}

/// Why a leadership transfer was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// Only the leader can transfer leadership.
    #[error("not the leader (leader: {leader})")]
    NotLeader {
        /// The leader this node knows of, or [`NodeId::NONE`].
        leader: NodeId,
    },
    /// The target is not a voter.
    #[error("node {0} is not a voter")]
    NotVoter(NodeId),
    /// The leader is already the target.
    #[error("node {0} is already the leader")]
    AlreadyLeader(NodeId),
    /// Another transfer is under way.
    #[error("a transfer to {0} is already in progress")]
    InProgress(NodeId),
}

/// Why the caller's report of a snapshot was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot is not newer than the engine's current one.
    #[error("snapshot at {index} is not newer than the current one at {current}")]
    Stale {
        /// The reported snapshot's index.
        index: LogIndex,
        /// The current snapshot's index.
        current: LogIndex,
    },
    /// The snapshot claims entries that are not committed or not applied.
    #[error("snapshot at {index} is past the applied index {applied}")]
    NotApplied {
        /// The reported snapshot's index.
        index: LogIndex,
        /// The applied index.
        applied: LogIndex,
    },
    /// The snapshot's term disagrees with the log.
    #[error("snapshot at {index} has term {term} but the log has term {log_term}")]
    TermMismatch {
        /// The reported snapshot's index.
        index: LogIndex,
        /// The reported term.
        term: Term,
        /// The log's term at that index.
        log_term: Term,
    },
}

/// Why [`super::Engine::restore`] or [`super::Engine::bootstrap`] refused the state.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The configuration was invalid.
    #[error(transparent)]
    Config(#[from] super::ConfigError),
    /// The entries do not follow one another or the snapshot.
    #[error("log entries are not consecutive after index {after}")]
    Gap {
        /// The last good index.
        after: LogIndex,
    },
    /// An entry's term is lower than its predecessor's or above the hard state's term.
    #[error("entry {index} has an impossible term {term}")]
    BadTerm {
        /// The entry's index.
        index: LogIndex,
        /// Its term.
        term: Term,
    },
    /// The commit index points past the log.
    #[error("commit index {commit} is past the last index {last}")]
    CommitPastLog {
        /// The stored commit index.
        commit: LogIndex,
        /// The last index of the log.
        last: LogIndex,
    },
    /// The node already has state; bootstrapping would fork the cluster.
    #[error("the node already has state (term {term}, last index {last_index})")]
    NotEmpty {
        /// The node's term.
        term: Term,
        /// The node's last log index.
        last_index: LogIndex,
    },
    /// The bootstrap membership is unusable.
    #[error("the initial membership must have at least one voter and no zero id")]
    BadMembership,
}
