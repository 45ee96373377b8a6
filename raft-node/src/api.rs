//! The JSON bodies of the client HTTP API (DESIGN.md §7.2), shared by the
//! server, the CLI's client and the tests so that the two sides cannot
//! drift apart.
//!
//! Keys and values travel raw: a value is the body of `PUT /v1/kv/{key}` and
//! of a `200` answer to `GET /v1/kv/{key}`; only metadata is JSON.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Header naming a write's idempotency key, `<client>/<sequence>`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Header carrying the admin token on membership and snapshot endpoints:
/// `Authorization: Bearer <token>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";

/// Header a node sets when it forwards a request to the leader, so the
/// leader never forwards it again (a request is forwarded at most once).
pub const FORWARDED_HEADER: &str = "x-raft-forwarded-by";

/// Header naming the node that answered, on every response.
pub const NODE_HEADER: &str = "x-raft-node";

/// How fresh a read must be: `?consistency=` on `GET /v1/kv/{key}` and
/// `GET /v1/kv`. The wire form is the snake-case name ([`Consistency::as_str`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    /// Confirmed with a quorum (ReadIndex): sees every write acknowledged
    /// before the read started. The default.
    #[default]
    Linearizable,
    /// Served by the leader under its lease, without a quorum round: as
    /// fresh as linearizable unless clocks drift beyond the lease's margin.
    Lease,
    /// Served from this node's state machine as it is: may miss recent
    /// writes, but needs no leader.
    Stale,
}

impl Consistency {
    /// Every consistency, strongest first.
    pub const ALL: [Consistency; 3] = [Consistency::Linearizable, Consistency::Lease, Consistency::Stale];

    /// The consistency a `consistency` query value names, if any.
    pub fn from_name(name: &str) -> Option<Consistency> {
        Consistency::ALL.into_iter().find(|consistency| consistency.as_str() == name)
    }

    /// The value of the `consistency` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Lease => "lease",
            Consistency::Stale => "stale",
        }
    }
}

impl From<Consistency> for raft_core::runtime::ReadConsistency {
    fn from(consistency: Consistency) -> Self {
        match consistency {
            Consistency::Linearizable => raft_core::runtime::ReadConsistency::Linearizable,
            Consistency::Lease => raft_core::runtime::ReadConsistency::Lease,
            Consistency::Stale => raft_core::runtime::ReadConsistency::Stale,
        }
    }
}

/// The answer to a successful write (`PUT` or `DELETE` on a key): the log
/// position of the entry, once it is committed and applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteResult {
    /// The entry's index; for a `PUT` also the key's new version.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
}

/// One key of a listing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    /// The key.
    pub key: String,
    /// The index of the entry that last wrote it.
    pub version: u64,
}

/// The answer to `GET /v1/kv?prefix=P&limit=N`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyList {
    /// Keys in byte order, at most `limit` of them.
    pub keys: Vec<KeyVersion>,
    /// Whether more keys match the prefix after the last one listed.
    pub more: bool,
}

/// The error body of every failed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, for machines (`code`) and people (`message`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A stable snake-case code, for example `precondition_failed`.
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// The leader this node knows of, when it knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<LeaderHint>,
}

/// Where the leader is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: u64,
    /// Its client API base URL, when this node knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
}

/// The answer to `GET /v1/cluster`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node_id: u64,
    /// The cluster's id (from the certificates).
    pub cluster_id: String,
    /// `follower`, `pre_candidate`, `candidate`, `leader`, or `starting`.
    pub role: String,
    /// The node's current term.
    pub term: u64,
    /// The leader this node knows of, if any.
    pub leader: Option<LeaderHint>,
    /// The highest index known to be committed.
    pub commit_index: u64,
    /// The highest index applied to this node's state machine.
    pub applied_index: u64,
    /// The last index in this node's log.
    pub last_index: u64,
    /// The index of this node's latest snapshot.
    pub snapshot_index: u64,
    /// The configuration in force on this node.
    pub members: Members,
    /// Every node's addresses, as replicated in the cluster's directory.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// On a leader: each peer's replication progress.
    pub peers: Vec<PeerProgress>,
    /// Set when the node stopped because storage or the state machine failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
}

/// A configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The voters (of the incoming configuration while joint).
    pub voters: Vec<u64>,
    /// The outgoing voters while the cluster is in joint consensus.
    pub outgoing_voters: Vec<u64>,
    /// Non-voting members.
    pub learners: Vec<u64>,
    /// Whether the cluster is in a joint configuration.
    pub joint: bool,
}

/// How to reach a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The QUIC address peers dial (`host:port`).
    pub peer_address: String,
    /// The client API base URL (`http://host:port` or `https://…`).
    pub client_address: String,
}

/// One peer's replication progress, as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerProgress {
    /// The peer.
    pub id: u64,
    /// The highest index known to be replicated on it.
    pub match_index: u64,
    /// How many entries it is behind the leader's last index.
    pub lag: u64,
}

/// The body of `POST /v1/cluster/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddMemberRequest {
    /// The new node's id (not 0, not a current member).
    pub id: u64,
    /// Its QUIC address.
    pub peer_address: String,
    /// Its client API base URL.
    pub client_address: String,
    /// Add it as a voter directly (default: as a learner, to be promoted
    /// once it caught up).
    #[serde(default)]
    pub voter: bool,
}

/// The body of `POST /v1/cluster/leader`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferRequest {
    /// The voter to hand leadership to; absent: the most up-to-date one.
    #[serde(default)]
    pub target: Option<u64>,
}

/// The answer to `POST /v1/cluster/leader`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferResult {
    /// The node leadership was handed to.
    pub target: u64,
}

/// The answer to a membership change: the configuration entry's position
/// and the configuration that results.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipResult {
    /// The configuration entry's index.
    pub index: u64,
    /// Its term.
    pub term: u64,
    /// The configuration once the change is in force.
    pub members: Members,
}

/// The answer to `POST /v1/cluster/snapshot`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResult {
    /// The last index the snapshot covers.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
}

/// The answer to `GET /v1/cluster/digest` (used by tests and the chaos checker
/// to compare replicas): a summary of the whole key space.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The index the state machine had applied when the digest was taken.
    pub applied_index: u64,
    /// How many keys exist.
    pub keys: u64,
    /// A 64-bit hash of every key, version and value in key order.
    pub hash: String,
}

/// Response header of `GET /v1/checkpoints/{name}/export`: the index of the
/// entry that created the checkpoint.
pub const CHECKPOINT_INDEX_HEADER: &str = "x-raft-checkpoint-index";

/// Response header of the export: the term of that entry.
pub const CHECKPOINT_TERM_HEADER: &str = "x-raft-checkpoint-term";

/// Response header of the export: the CRC-32C of the checkpoint's snapshot
/// bytes, as 8 lowercase hex digits.
pub const CHECKPOINT_CHECKSUM_HEADER: &str = "x-raft-checkpoint-checksum";

/// The body of `POST /v1/checkpoints`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCheckpointRequest {
    /// The checkpoint's name: 1 to 128 characters from `A-Z a-z 0-9 . _ -`,
    /// not starting with `.`.
    pub name: String,
}

/// One checkpoint, as `POST /v1/checkpoints` and `GET /v1/checkpoints`
/// show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSummary {
    /// Its name.
    pub name: String,
    /// The index of the entry that created it: the state it keeps is the
    /// state machine's after applying that entry.
    pub index: u64,
    /// The term of that entry.
    pub term: u64,
    /// When the leader proposed it, in milliseconds since the Unix epoch.
    pub created_unix_ms: u64,
    /// The size of its snapshot, in bytes.
    pub size_bytes: u64,
    /// The CRC-32C of its snapshot bytes, 8 lowercase hex digits.
    pub checksum: String,
}

/// The answer to `GET /v1/checkpoints`: what the answering node holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointList {
    /// The node that answered.
    pub node_id: u64,
    /// Its applied index when it answered (the list is as of that index).
    pub applied_index: u64,
    /// The index of the last rollback this node applied since it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollback_index: Option<u64>,
    /// The checkpoints durable on that node, by name.
    pub checkpoints: Vec<CheckpointSummary>,
}

/// The answer to a rollback or a delete: the committed entry's position.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointOpResult {
    /// The checkpoint.
    pub name: String,
    /// The entry's index. After a rollback, the state machine holds the
    /// checkpoint's state at this index, and later entries apply on top.
    pub index: u64,
    /// The entry's term.
    pub term: u64,
}
