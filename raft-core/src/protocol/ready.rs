//! The batch of work the engine hands to its caller.

use bytes::Bytes;

use crate::message::Message;
use crate::types::{Entry, HardState, LogIndex, NodeId, ReadId, Role, SnapshotMeta, Term};

/// Identifies one batch of writes to durable storage. Report completion
/// with [`super::Engine::persisted`], in the order the ids were issued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PersistId(pub u64);

/// One batch of work produced by [`super::Engine::ready`].
///
/// Handle the parts in this order:
/// 1. Send `messages` at once: none of them promises state that is not
///    durable yet (a vote request may leave before the candidate's own
///    term and vote are written; its vote for itself counts only after).
/// 2. Persist, as one atomic and durable write if the store allows:
///    `snapshot_chunks` (in order), then `install_snapshot`, then `entries`,
///    then `hard_state`. Then call [`super::Engine::persisted`] with
///    `persist_id`. This may happen asynchronously, while later batches are
///    produced, as long as completions are reported in order.
/// 3. Once the write carrying `install_snapshot` is durable, restore the state
///    machine from that snapshot before applying any later entry.
/// 4. Apply `committed_entries` in order and report progress with
///    [`super::Engine::applied`].
/// 5. Serve each of `reads` once the applied index reaches its index; fail
///    each of `failed_reads`.
/// 6. For each of `snapshot_reads`, read the chunk from the snapshot store
///    and hand it back with [`super::Engine::snapshot_chunk_read`].
/// 7. `compact_to` may be applied to storage at any time.
#[derive(Debug, Default)]
#[must_use = "a Ready carries work that must be done"]
pub struct Ready {
    /// Messages to send now.
    pub messages: Vec<Message>,
    /// Chunks of a snapshot being received, to write to the snapshot store.
    pub snapshot_chunks: Vec<SnapshotChunkWrite>,
    /// A completely received snapshot: the store makes it the current
    /// snapshot and discards its whole log. The entries the engine keeps
    /// after the snapshot arrive in `entries` of the same batch.
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to append. Any stored entry at an index at or after the first
    /// one's index is discarded first (the leader overwrote it).
    pub entries: Vec<Entry>,
    /// Hard state to persist, if it changed.
    pub hard_state: Option<HardState>,
    /// Set when the four fields above must be made durable (synced): the id
    /// to report to [`super::Engine::persisted`] once they are. It is `None`
    /// when the batch writes nothing or only moves the commit index in
    /// `hard_state`, which may then be written without a sync.
    pub persist_id: Option<PersistId>,
    /// Committed entries to apply, in order, consecutive.
    pub committed_entries: Vec<Entry>,
    /// Confirmed linearizable reads: serve each once the state machine has
    /// applied its index.
    pub reads: Vec<ReadState>,
    /// Reads that could not be confirmed.
    pub failed_reads: Vec<FailedRead>,
    /// Chunks of the local snapshot the engine needs to stream to followers.
    pub snapshot_reads: Vec<SnapshotRead>,
    /// Log entries up to and including this index may be removed from
    /// storage: a durable snapshot covers them.
    pub compact_to: Option<LogIndex>,
    /// Set when the role, term or known leader changed since the last batch.
    pub soft_state: Option<SoftState>,
}

impl Ready {
    /// Whether the batch carries anything that must be made durable.
    pub fn must_persist(&self) -> bool {
        self.persist_id.is_some()
    }
}

/// Role, term and leader: the volatile state observers care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SoftState {
    /// The node's role.
    pub role: Role,
    /// The node's term.
    pub term: Term,
    /// The leader this node knows of, or [`NodeId::NONE`].
    pub leader: NodeId,
}

/// A chunk of an incoming snapshot to write to the snapshot store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotChunkWrite {
    /// The snapshot being received. A chunk at offset 0 starts a new one and
    /// discards any partially received snapshot.
    pub snapshot: SnapshotMeta,
    /// Byte offset of `data`.
    pub offset: u64,
    /// The bytes.
    pub data: Bytes,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// A request to read a chunk of the local snapshot for a follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRead {
    /// The follower the chunk is for.
    pub to: NodeId,
    /// The snapshot to read (the store must keep it readable until the
    /// transfer ends, or report [`super::Engine::snapshot_read_failed`]).
    pub snapshot: SnapshotMeta,
    /// Where to start reading.
    pub offset: u64,
    /// The most bytes to return.
    pub max_bytes: u64,
}

/// A read confirmed by the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadState {
    /// The caller's id of the read.
    pub id: ReadId,
    /// The read may be served once the applied index is at least this.
    pub index: LogIndex,
}

/// A read that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRead {
    /// The caller's id of the read.
    pub id: ReadId,
    /// Why it failed.
    pub error: super::ReadError,
}
