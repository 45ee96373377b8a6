//! The storage traits: a durable log with hard state ([`LogStore`]), a
//! store of snapshot files ([`SnapshotStore`]) and a store of named
//! checkpoints ([`CheckpointStore`]).
//!
//! Only raft-core defines these traits; storage crates implement them. Every
//! implementation must pass the conformance suite in
//! `raft_core::testing::storage_suite` (feature `testing`).

use async_trait::async_trait;
use bytes::Bytes;

use crate::protocol::RestoredState;
use crate::types::{Entry, HardState, LogIndex, SnapshotMeta};

use serde::{Deserialize, Serialize};

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The operating system reported an error.
    #[error("storage I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The stored data is damaged (checksum mismatch, torn write, bad
    /// encoding). The store refuses to serve it.
    #[error("storage is corrupt: {0}")]
    Corrupt(String),
    /// The store was written by a newer release.
    #[error("storage format version {found} is newer than this release supports ({supported})")]
    UnsupportedVersion {
        /// The version found on disk.
        found: u32,
        /// The newest version this release reads.
        supported: u32,
    },
    /// The requested entries were compacted away.
    #[error("entries from {from} were compacted (the log starts after {start})")]
    Compacted {
        /// The first index asked for.
        from: LogIndex,
        /// The compaction point.
        start: LogIndex,
    },
    /// The requested snapshot does not exist (any more).
    #[error("snapshot at index {0} not found")]
    SnapshotNotFound(LogIndex),
    /// The requested checkpoint does not exist.
    #[error("checkpoint {0:?} not found")]
    CheckpointNotFound(String),
    /// A snapshot chunk arrived at the wrong offset.
    #[error("snapshot chunk at offset {offset}, expected {expected}")]
    ChunkOutOfOrder {
        /// The chunk's offset.
        offset: u64,
        /// The offset the writer expected.
        expected: u64,
    },
    /// The caller broke the write contract (for example entries that do not
    /// follow one another or leave a gap after the stored log).
    #[error("invalid write: {0}")]
    InvalidWrite(String),
    /// The store was closed.
    #[error("storage is closed")]
    Closed,
    /// Any other failure of the backend, described.
    #[error("storage backend failed: {0}")]
    Backend(String),
}

/// One atomic write to the log store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogWrite {
    /// A snapshot, already complete and durable in the snapshot store, that
    /// replaces the log: record it as the current snapshot and discard every
    /// stored entry (the entries kept after it arrive in `entries`).
    pub install_snapshot: Option<SnapshotMeta>,
    /// Entries to append, consecutive. Any stored entry at or after the first
    /// one's index is discarded first.
    pub entries: Vec<Entry>,
    /// The hard state to record.
    pub hard_state: Option<HardState>,
    /// Whether the write must be durable when `write` returns. It is false
    /// only when nothing but the commit index moved.
    pub sync: bool,
}

impl LogWrite {
    /// Whether the write carries nothing.
    pub fn is_empty(&self) -> bool {
        self.install_snapshot.is_none() && self.entries.is_empty() && self.hard_state.is_none()
    }
}

/// The durable log: entries, hard state and the current snapshot's metadata.
///
/// Contract:
/// - `write` is atomic: after a crash, either all of it or none of it is
///   visible. With `sync`, it is durable when the call returns. Writes are
///   issued one at a time, in order.
/// - `read_state` returns exactly what was durably written: a write that
///   returned with `sync` is never lost; corruption is reported as
///   [`StorageError::Corrupt`], never served.
/// - `compact` may run at any time after the snapshot covering it is current;
///   it never removes entries after the current snapshot's index.
/// - Implementations bound their memory: they do not keep the log in memory.
#[async_trait]
pub trait LogStore: Send + Sync + 'static {
    /// Reads the state to restart from: the hard state, the current snapshot's
    /// metadata, and the entries after the snapshot.
    async fn read_state(&self) -> Result<RestoredState, StorageError>;

    /// Writes one batch atomically (see the trait's contract).
    async fn write(&self, write: LogWrite) -> Result<(), StorageError>;

    /// Records a snapshot created locally (already durable in the snapshot
    /// store) as the current one.
    async fn set_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError>;

    /// Removes entries up to and including `up_to`.
    async fn compact(&self, up_to: LogIndex) -> Result<(), StorageError>;

    /// Reads the entries in `from ..= to` (fewer if the log ends before `to`).
    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError>;
}

/// Snapshot files: written in chunks, read in chunks, never whole in memory.
///
/// Contract:
/// - A writer's data becomes visible only when `finish` returns; a snapshot
///   abandoned before (dropped writer, crash) leaves no trace once the store
///   is reopened.
/// - `open` of a finished snapshot keeps working until a newer one is
///   finished and `retain` no longer names it.
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// Starts a new snapshot.
    async fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError>;

    /// Opens the finished snapshot whose last index is `index`.
    async fn open(&self, index: LogIndex) -> Result<Box<dyn SnapshotReader>, StorageError>;

    /// The newest finished snapshot's metadata.
    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError>;

    /// Deletes finished snapshots older than `keep_from` (still-open readers
    /// may keep working, at the implementation's choice).
    async fn retain(&self, keep_from: LogIndex) -> Result<(), StorageError>;
}

/// Writes one snapshot, chunk by chunk.
#[async_trait]
pub trait SnapshotWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;

    /// Makes the snapshot durable and visible; returns its size in bytes.
    async fn finish(self: Box<Self>) -> Result<u64, StorageError>;
}

/// Reads one snapshot, chunk by chunk.
#[async_trait]
pub trait SnapshotReader: Send {
    /// The snapshot's metadata.
    fn meta(&self) -> &SnapshotMeta;

    /// Reads up to `max_bytes` at `offset`; returns the bytes and whether
    /// they reach the end of the snapshot.
    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError>;
}

/// What identifies a checkpoint: its name and the snapshot it keeps (the
/// index and term of the entry that created it, and the configuration in
/// force there).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The checkpoint's name, unique in the cluster.
    pub name: String,
    /// The state machine snapshot's position: the checkpoint entry's index
    /// and term.
    pub snapshot: SnapshotMeta,
    /// When the leader proposed the checkpoint, in milliseconds since the
    /// Unix epoch.
    pub created_unix_ms: u64,
}

/// A finished checkpoint, as listed by a [`CheckpointStore`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    /// Name and position.
    pub meta: CheckpointMeta,
    /// Size of the state machine snapshot, in bytes.
    pub size_bytes: u64,
    /// CRC-32C of the snapshot's bytes, computed by the runtime while it
    /// wrote them (so the same checkpoint has the same checksum on every
    /// replica whose state machine snapshots deterministically).
    pub checksum: u32,
}

/// Named checkpoints: state machine snapshots kept until deleted, out of
/// reach of compaction.
///
/// Contract:
/// - A writer's checkpoint becomes visible (in `list`, to `open`) only when
///   `finish` returns, durably; one abandoned before leaves no trace once
///   the store is reopened. Finishing a checkpoint replaces any other of
///   the same name.
/// - `open` of a listed checkpoint keeps working until it is deleted; a
///   reader opened before a delete may keep working, at the
///   implementation's choice.
/// - `delete` of a name that does not exist succeeds.
#[async_trait]
pub trait CheckpointStore: Send + Sync + 'static {
    /// Starts writing a checkpoint.
    async fn create(&self, meta: CheckpointMeta) -> Result<Box<dyn CheckpointWriter>, StorageError>;

    /// Opens a finished checkpoint; the reader's `meta` is the checkpoint's
    /// snapshot metadata.
    async fn open(&self, name: &str) -> Result<Box<dyn SnapshotReader>, StorageError>;

    /// Every finished checkpoint, by name.
    async fn list(&self) -> Result<Vec<CheckpointInfo>, StorageError>;

    /// Deletes a checkpoint.
    async fn delete(&self, name: &str) -> Result<(), StorageError>;
}

/// Writes one checkpoint, chunk by chunk.
#[async_trait]
pub trait CheckpointWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError>;

    /// Makes the checkpoint durable and visible, recording `checksum` (the
    /// CRC-32C of everything written); returns what `list` will show.
    async fn finish(self: Box<Self>, checksum: u32) -> Result<CheckpointInfo, StorageError>;
}
