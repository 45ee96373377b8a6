//! The messages Raft nodes exchange. Plain data: no codec lives here.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogIndex, NodeId, ReadId, ReadMode, SnapshotMeta, Term};

/// One message from one node to another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// The sender.
    pub from: NodeId,
    /// The receiver.
    pub to: NodeId,
    /// The sender's term (for a pre-vote request: the term it would campaign in).
    pub term: Term,
    /// What the message says.
    pub body: MessageBody,
}

impl Message {
    /// A short name of the message's kind, for logs, metrics and tests.
    pub fn kind(&self) -> &'static str {
        self.body.kind()
    }

    /// Approximate size in bytes of the payload the message carries, used
    /// by flow control and by transports to pick a stream.
    pub fn payload_bytes(&self) -> u64 {
        match &self.body {
            MessageBody::AppendEntries(append) => append.entries.iter().map(Entry::size_bytes).sum(),
            MessageBody::InstallSnapshot(chunk) => chunk.data.len() as u64,
            _ => 0,
        }
    }
}

/// Whether a vote request is a real vote or a pre-vote (Raft dissertation
/// §9.6): a pre-vote asks "would you vote for me?" without changing anyone's
/// term, so a node cut off from the cluster cannot disrupt it on return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VoteKind {
    /// A pre-vote round.
    PreVote,
    /// A real election.
    Vote,
}

/// The bodies of [`Message`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum MessageBody {
    /// A candidate (or pre-candidate) asks for a vote.
    RequestVote(RequestVote),
    /// The answer to [`MessageBody::RequestVote`].
    RequestVoteResponse(RequestVoteResponse),
    /// The leader replicates entries (possibly none) after a consistency check.
    AppendEntries(AppendEntries),
    /// The answer to [`MessageBody::AppendEntries`].
    AppendEntriesResponse(AppendEntriesResponse),
    /// The leader's heartbeat: asserts leadership, advances followers' commit
    /// and confirms leadership for reads.
    Heartbeat(Heartbeat),
    /// The answer to [`MessageBody::Heartbeat`].
    HeartbeatResponse(HeartbeatResponse),
    /// One chunk of a snapshot the leader streams to a follower.
    InstallSnapshot(InstallSnapshot),
    /// The answer to [`MessageBody::InstallSnapshot`].
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// A follower asks the leader for a read index on behalf of its client.
    ReadIndex(ReadIndexRequest),
    /// The leader's answer to [`MessageBody::ReadIndex`].
    ReadIndexResponse(ReadIndexResponse),
    /// The leader tells a caught-up follower to start an election at once
    /// (leadership transfer).
    TimeoutNow,
}

impl MessageBody {
    /// A short name of the message's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            MessageBody::RequestVote(r) if r.kind == VoteKind::PreVote => "RequestPreVote",
            MessageBody::RequestVote(_) => "RequestVote",
            MessageBody::RequestVoteResponse(r) if r.kind == VoteKind::PreVote => "RequestPreVoteResponse",
            MessageBody::RequestVoteResponse(_) => "RequestVoteResponse",
            MessageBody::AppendEntries(_) => "AppendEntries",
            MessageBody::AppendEntriesResponse(_) => "AppendEntriesResponse",
            MessageBody::Heartbeat(_) => "Heartbeat",
            MessageBody::HeartbeatResponse(_) => "HeartbeatResponse",
            MessageBody::InstallSnapshot(_) => "InstallSnapshot",
            MessageBody::InstallSnapshotResponse(_) => "InstallSnapshotResponse",
            MessageBody::ReadIndex(_) => "ReadIndex",
            MessageBody::ReadIndexResponse(_) => "ReadIndexResponse",
            MessageBody::TimeoutNow => "TimeoutNow",
        }
    }
}

/// A request for a vote or a pre-vote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// Pre-vote or vote.
    pub kind: VoteKind,
    /// Index of the candidate's last log entry.
    pub last_log_index: LogIndex,
    /// Term of the candidate's last log entry.
    pub last_log_term: Term,
    /// Set when the election was started by a leadership transfer; voters then
    /// grant the vote even though they heard from a leader recently.
    pub leadership_transfer: bool,
}

/// The answer to a vote request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteResponse {
    /// Pre-vote or vote.
    pub kind: VoteKind,
    /// Whether the vote was granted.
    pub granted: bool,
}

/// Entries the leader replicates, after the entry at `prev_log_index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// Index of the entry just before `entries`.
    pub prev_log_index: LogIndex,
    /// Term of that entry.
    pub prev_log_term: Term,
    /// The entries, consecutive from `prev_log_index + 1`; may be empty.
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
}

/// The answer to [`AppendEntries`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// Whether the follower's log matched and now holds the entries.
    pub success: bool,
    /// On success: the index of the last entry known to match the leader's
    /// (`prev_log_index + entries.len()`), durable on the follower.
    /// On failure: the `prev_log_index` that was rejected.
    pub index: LogIndex,
    /// On failure, where the leader should look next (fast back-off): the
    /// first index of `conflict_term` in the follower's log, or the
    /// follower's last index + 1 when its log is too short.
    pub conflict_index: LogIndex,
    /// On failure, the term of the follower's entry at `prev_log_index`, or
    /// `None` when the follower has no entry there.
    pub conflict_term: Option<Term>,
    /// The follower's last log index, for status displays.
    pub last_log_index: LogIndex,
}

/// The leader's heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The leader's commit index, capped at what the follower is known to
    /// hold, so a follower never commits an entry it has not matched.
    pub commit: LogIndex,
    /// The leader's read round: echoed back, it confirms that the leader was
    /// still leader when the round started (ReadIndex).
    pub read_round: u64,
}

/// The answer to a heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The read round of the heartbeat being answered.
    pub read_round: u64,
}

/// One chunk of a snapshot. The snapshot's size is not known up front: the
/// last chunk says `done`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// Which snapshot the chunk belongs to.
    pub snapshot: SnapshotMeta,
    /// Byte offset of `data` in the snapshot.
    pub offset: u64,
    /// The chunk's bytes.
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// The answer to a snapshot chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The snapshot the answer is about.
    pub snapshot_index: LogIndex,
    /// The offset the follower expects next (everything before it is durable).
    pub next_offset: u64,
    /// Set once the follower installed the whole snapshot, or when it does not
    /// need it because its commit index is already at or past it.
    pub done: bool,
    /// When `done`: the follower's last log index (so the leader can resume
    /// replication there).
    pub last_log_index: LogIndex,
}

/// A follower forwards a read to the leader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexRequest {
    /// The follower's id of the read.
    pub id: ReadId,
    /// How the leader should confirm it.
    pub mode: ReadMode,
}

/// The leader's answer to a forwarded read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexResponse {
    /// The follower's id of the read.
    pub id: ReadId,
    /// The index the follower must apply before serving the read; `None` if
    /// the leader could not serve it (it lost leadership, or is transferring).
    pub index: Option<LogIndex>,
}
