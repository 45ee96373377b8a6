//! Plain data types shared by the engine, the traits and the runtime.
//!
//! They carry serde derives so that storage and transport crates can encode
//! them, but no codec lives here: the wire encoding belongs to the transport
//! crate and the on-disk encoding to the storage crate.

use std::collections::BTreeSet;
use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

macro_rules! counter_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl $name {
            /// The value as a plain integer.
            pub const fn get(self) -> u64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<u64> for $name {
            fn from(value: u64) -> Self {
                Self(value)
            }
        }
    };
}

counter_newtype!(
    /// Identifies one member of a cluster. Zero is reserved for "nobody".
    NodeId
);
counter_newtype!(
    /// A Raft term: a logical clock that only moves forward.
    Term
);
counter_newtype!(
    /// The position of an entry in the log. The first entry has index 1;
    /// index 0 stands for "before the first entry".
    LogIndex
);

impl NodeId {
    /// The reserved id meaning "no node" (for example "no leader known").
    pub const NONE: NodeId = NodeId(0);
}

impl LogIndex {
    /// The index after this one.
    pub const fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one, saturating at zero.
    pub const fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl Term {
    /// The term after this one.
    pub const fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

/// Identifies one client request for deduplication: a client picks a unique
/// `client` id and numbers its writes with an increasing `sequence`. The id
/// travels inside the entry, so every replica's state machine sees it and a
/// retry after a failover still finds the first result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClientRequestId {
    /// The client's unique id.
    pub client: u64,
    /// The client's request number, increasing per client.
    pub sequence: u64,
}

/// What an entry carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EntryPayload {
    /// The empty entry a new leader appends to commit entries of earlier terms.
    Blank,
    /// An application command for the state machine.
    Command {
        /// Set when the client asked for deduplication of retries.
        client: Option<ClientRequestId>,
        /// The opaque command.
        data: Bytes,
    },
    /// A new cluster configuration. It takes effect on every node as soon as
    /// it is appended to that node's log, committed or not (Raft dissertation
    /// §4.1).
    Membership(Membership),
    /// An operation on the cluster's named checkpoints, carried out by the
    /// runtime on every replica when the entry is applied (see
    /// [`crate::runtime`]). The engine treats it like a command.
    Checkpoint(CheckpointOp),
}

/// A replicated operation on named checkpoints of the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CheckpointOp {
    /// Keep the state machine's snapshot at this entry's index under `name`.
    Create {
        /// The checkpoint's name.
        name: String,
        /// When the leader proposed it, in milliseconds since the Unix epoch
        /// (informational; in the entry so every replica records the same).
        created_unix_ms: u64,
    },
    /// Restore the state machine to the checkpoint `name`.
    Rollback {
        /// The checkpoint's name.
        name: String,
    },
    /// Forget the checkpoint `name`.
    Delete {
        /// The checkpoint's name.
        name: String,
    },
}

impl CheckpointOp {
    /// The checkpoint the operation names.
    pub fn name(&self) -> &str {
        match self {
            CheckpointOp::Create { name, .. }
            | CheckpointOp::Rollback { name }
            | CheckpointOp::Delete { name } => name,
        }
    }
}

/// One log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The term of the leader that created the entry.
    pub term: Term,
    /// The entry's position in the log.
    pub index: LogIndex,
    /// What the entry carries.
    pub payload: EntryPayload,
}

impl Entry {
    /// Approximate in-memory size of the entry's payload in bytes, used by
    /// flow control. Fixed-size fields count as a small constant so that
    /// empty entries are not free.
    pub fn size_bytes(&self) -> u64 {
        const OVERHEAD_BYTES: u64 = 24;
        OVERHEAD_BYTES
            + match &self.payload {
                EntryPayload::Blank => 0,
                EntryPayload::Command { data, .. } => data.len() as u64,
                EntryPayload::Membership(m) => 8 * m.node_count() as u64,
                EntryPayload::Checkpoint(op) => op.name().len() as u64 + 8,
            }
    }
}

/// The state a node must persist before answering any message: its term,
/// its vote in that term, and the highest index it knows to be committed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HardState {
    /// The latest term the node has seen.
    pub term: Term,
    /// The candidate voted for in `term`, or [`NodeId::NONE`].
    pub vote: NodeId,
    /// A commit index known to the node. Persisting it is an optimisation:
    /// a restarted node may apply up to it without waiting for a leader.
    pub commit: LogIndex,
}

/// A cluster configuration: the voters, the outgoing voters while in joint
/// consensus, and the learners (non-voting members that receive the log).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// The voters of the (incoming) configuration.
    pub voters: BTreeSet<NodeId>,
    /// The voters of the outgoing configuration while the cluster is in
    /// joint consensus; empty otherwise. Decisions then need a majority of
    /// both `voters` and `outgoing_voters`.
    pub outgoing_voters: BTreeSet<NodeId>,
    /// Members that receive the log but do not vote.
    pub learners: BTreeSet<NodeId>,
}

impl Membership {
    /// A simple (non-joint) configuration of the given voters.
    pub fn with_voters(voters: impl IntoIterator<Item = NodeId>) -> Self {
        Membership { voters: voters.into_iter().collect(), ..Membership::default() }
    }

    /// Whether the configuration is joint (two voter sets).
    pub fn is_joint(&self) -> bool {
        !self.outgoing_voters.is_empty()
    }

    /// Whether `id` votes in either voter set.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id) || self.outgoing_voters.contains(&id)
    }

    /// Whether `id` is a learner.
    pub fn is_learner(&self, id: NodeId) -> bool {
        self.learners.contains(&id)
    }

    /// Whether `id` is a voter or a learner.
    pub fn contains(&self, id: NodeId) -> bool {
        self.is_voter(id) || self.is_learner(id)
    }

    /// Every member, voters of both sets and learners, in ascending order
    /// without repeats.
    pub fn members(&self) -> BTreeSet<NodeId> {
        let mut all = self.voters.clone();
        all.extend(self.outgoing_voters.iter().copied());
        all.extend(self.learners.iter().copied());
        all
    }

    /// Number of ids mentioned (voters of both sets plus learners).
    pub fn node_count(&self) -> usize {
        self.voters.len() + self.outgoing_voters.len() + self.learners.len()
    }

    /// Whether a set of nodes that agree forms a quorum: a majority of
    /// `voters` and, while joint, also of `outgoing_voters`.
    pub fn is_quorum(&self, agreeing: impl Fn(NodeId) -> bool) -> bool {
        fn majority(set: &BTreeSet<NodeId>, agreeing: &impl Fn(NodeId) -> bool) -> bool {
            if set.is_empty() {
                return true;
            }
            let yes = set.iter().filter(|id| agreeing(**id)).count();
            yes * 2 > set.len()
        }
        !self.voters.is_empty()
            && majority(&self.voters, &agreeing)
            && majority(&self.outgoing_voters, &agreeing)
    }

    /// The highest value that a quorum has reached, given each voter's value
    /// (for example the commit index from match indexes). Joint
    /// configurations take the smaller of the two majorities' values.
    pub fn quorum_value(&self, value_of: impl Fn(NodeId) -> u64) -> u64 {
        fn majority_value(set: &BTreeSet<NodeId>, value_of: &impl Fn(NodeId) -> u64) -> u64 {
            // Voter sets of up to this size are sorted on the stack: the
            // leader computes this on every acknowledgement, and a heap
            // allocation per call showed in the runtime's profile.
            const ON_STACK: usize = 16;
            /// The highest value that a majority of `values` has reached.
            fn reached_by_majority(values: &mut [u64]) -> u64 {
                values.sort_unstable_by(|a, b| b.cmp(a));
                values[values.len() / 2]
            }
            if set.is_empty() {
                return u64::MAX;
            }
            if set.len() <= ON_STACK {
                let mut buffer = [0u64; ON_STACK];
                for (slot, id) in buffer.iter_mut().zip(set) {
                    *slot = value_of(*id);
                }
                return reached_by_majority(&mut buffer[..set.len()]);
            }
            let mut values: Vec<u64> = set.iter().map(|id| value_of(*id)).collect();
            reached_by_majority(&mut values)
        }
        if self.voters.is_empty() {
            return 0;
        }
        majority_value(&self.voters, &value_of).min(majority_value(&self.outgoing_voters, &value_of))
    }
}

impl fmt::Display for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn list(f: &mut fmt::Formatter<'_>, set: &BTreeSet<NodeId>) -> fmt::Result {
            write!(f, "(")?;
            for (i, id) in set.iter().enumerate() {
                if i > 0 {
                    write!(f, " ")?;
                }
                write!(f, "{id}")?;
            }
            write!(f, ")")
        }
        write!(f, "voters=")?;
        list(f, &self.voters)?;
        if self.is_joint() {
            write!(f, "&&")?;
            list(f, &self.outgoing_voters)?;
        }
        if !self.learners.is_empty() {
            write!(f, " learners=")?;
            list(f, &self.learners)?;
        }
        Ok(())
    }
}

/// Describes a snapshot: the last entry it covers and the configuration in
/// force at that entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// Index of the last entry included in the snapshot.
    pub last_index: LogIndex,
    /// Term of that entry.
    pub last_term: Term,
    /// The configuration as of `last_index`.
    pub membership: Membership,
}

/// The caller's identifier for a linearizable read request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ReadId(pub u64);

impl fmt::Display for ReadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The role a node plays in its current term.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asks for pre-votes without disturbing the cluster's term.
    PreCandidate,
    /// Asks for votes in a new term.
    Candidate,
    /// Leads the cluster in its term.
    Leader,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre-candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        f.write_str(name)
    }
}

/// How one linearizable read is confirmed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReadMode {
    /// Confirm leadership with a quorum of heartbeat answers for every batch
    /// of reads (Raft dissertation §6.4). Safe under any clock behaviour.
    ReadIndex,
    /// Serve the read from the leader's lease when a quorum answered recently
    /// enough; fall back to ReadIndex otherwise. Needs `lease_reads` and
    /// CheckQuorum. Safe as long as no node's clock runs faster than the
    /// leader's by more than `lease_drift_margin_ticks` per election timeout.
    Lease,
}
