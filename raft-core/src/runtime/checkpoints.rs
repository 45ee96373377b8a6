//! Named checkpoints and rollback through the log.
//!
//! A checkpoint is a committed [`CheckpointOp::Create`] entry: when a replica
//! applies it, the apply task passes the entry to the state machine (which
//! treats it as a no-op), captures the state machine's snapshot at exactly
//! that index and streams it into the [`CheckpointStore`] in the
//! background, so applying goes on meanwhile. A [`CheckpointOp::Rollback`]
//! entry restores that snapshot into the state machine
//! ([`StateMachine::restore_checkpoint`], which is `restore` unless the state
//! machine keeps some state out of rollbacks) before the entry itself is
//! passed on, so every replica holds the checkpoint's state at the
//! rollback's index, and entries after it apply on top. A
//! [`CheckpointOp::Delete`] entry forgets one.
//!
//! Whether an operation succeeds is decided when it is applied, from the
//! replicated catalog of checkpoints, so every replica decides the same
//! ([`decide`]): a duplicate name, an unknown name or a full catalog
//! (`max_count`) fail everywhere alike. The byte bound (`max_total_bytes`) is checked by the
//! leader when a checkpoint is proposed, against the sizes it has; it is an
//! admission check, not a replicated decision.
//!
//! The catalog travels with snapshots: a snapshot of a node that holds
//! checkpoints starts with an *envelope* (a magic number, the catalog, the
//! checkpoints' bytes) followed by the state machine's own snapshot. A node
//! that installs such a snapshot (a new or lagging member) or restarts from
//! one gets the checkpoints it lacks from it. Snapshots without checkpoints
//! carry no envelope and are exactly the state machine's bytes.
//!
//! Architecture Invariant: a rollback restores only the state machine; the
//! membership, the log and the catalog of checkpoints are not rolled back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::sync::watch;

use crate::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use crate::storage::{
    CheckpointInfo, CheckpointMeta, CheckpointStore, SnapshotReader, SnapshotStore, StorageError,
};
use crate::types::{CheckpointOp, LogIndex, Membership, NodeId, SnapshotMeta, Term};

/// Bounds of the retained checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckpointLimits {
    /// The most checkpoints retained at once; creating one more fails with
    /// [`CheckpointError::TooMany`] on every replica.
    pub max_count: usize,
    /// The most bytes of retained checkpoints; the leader refuses a new
    /// checkpoint with [`CheckpointError::TooLarge`] once its checkpoints
    /// add up to this. Every snapshot carries the retained checkpoints, so
    /// this also bounds how much they add to each snapshot.
    pub max_total_bytes: u64,
}

impl Default for CheckpointLimits {
    fn default() -> Self {
        CheckpointLimits { max_count: 16, max_total_bytes: 8 << 30 }
    }
}

/// The longest checkpoint name.
pub const MAX_NAME_BYTES: usize = 128;

/// Why a checkpoint operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The name is empty, too long or has characters outside
    /// `A-Z a-z 0-9 . _ -` (names become file names in durable stores).
    #[error(
        "invalid checkpoint name {name:?}: use 1 to {MAX_NAME_BYTES} characters from A-Z, a-z, 0-9, '.', '_' \
         and '-', not starting with '.'"
    )]
    InvalidName {
        /// The name given.
        name: String,
    },
    /// No checkpoint has this name.
    #[error("no checkpoint named {0:?}")]
    NotFound(String),
    /// A checkpoint of this name exists.
    #[error("a checkpoint named {0:?} already exists")]
    AlreadyExists(String),
    /// The catalog is full.
    #[error("{count} checkpoints are retained, the most allowed (max_count {max_count}); delete one first")]
    TooMany {
        /// Checkpoints retained now.
        count: usize,
        /// The bound.
        max_count: usize,
    },
    /// The retained checkpoints' bytes reached the bound.
    #[error(
        "retained checkpoints take {total_bytes} bytes, at or over the bound of {max_total_bytes} bytes \
         (max_total_bytes); delete one first"
    )]
    TooLarge {
        /// Bytes retained now.
        total_bytes: u64,
        /// The bound.
        max_total_bytes: u64,
    },
    /// This node could not write or read the checkpoint.
    #[error("checkpoint storage failed: {0}")]
    Storage(String),
}

/// Checks a checkpoint name.
pub fn validate_name(name: &str) -> Result<(), CheckpointError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME_BYTES || name.starts_with('.') || !name.chars().all(allowed) {
        return Err(CheckpointError::InvalidName { name: name.to_string() });
    }
    Ok(())
}

/// What applying a checkpoint operation does, as decided by [`decide`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Keep the state machine's state at the entry's index under the name.
    Create,
    /// This very entry created the checkpoint already (a restart applying
    /// the entry again): nothing to do, and the operation succeeded.
    AlreadyCreated,
    /// Restore the checkpoint's state into the state machine.
    Rollback,
    /// Forget the checkpoint.
    Delete,
}

/// Decides a checkpoint operation applied at `index` from the replicated
/// catalog alone, so that every replica decides alike: `created_at` is the
/// index at which the catalog's checkpoint of the same name was created
/// (`None`: the catalog has none), `count` how many checkpoints the catalog
/// holds, `max_count` the bound on them.
///
/// A create fails with [`CheckpointError::InvalidName`] for a bad name,
/// [`CheckpointError::AlreadyExists`] if the name is taken (unless this
/// entry took it, see [`Decision::AlreadyCreated`]) and
/// [`CheckpointError::TooMany`] if the catalog is full; a rollback or a
/// delete fails with [`CheckpointError::NotFound`] for a name the catalog
/// lacks. The runtime carries out the decision; the deterministic
/// simulator's state machine (`testing::sim::kv`) uses the same function,
/// so the simulator checks the rules the runtime applies.
pub fn decide(
    op: &CheckpointOp,
    index: LogIndex,
    created_at: Option<LogIndex>,
    count: usize,
    max_count: usize,
) -> Result<Decision, CheckpointError> {
    let name = op.name();
    let missing = || CheckpointError::NotFound(name.to_string());
    match op {
        CheckpointOp::Create { .. } => {
            validate_name(name)?;
            match created_at {
                Some(existing) if existing == index => Ok(Decision::AlreadyCreated),
                Some(_) => Err(CheckpointError::AlreadyExists(name.to_string())),
                None if count >= max_count => Err(CheckpointError::TooMany { count, max_count }),
                None => Ok(Decision::Create),
            }
        }
        CheckpointOp::Rollback { .. } => created_at.map(|_| Decision::Rollback).ok_or_else(missing),
        CheckpointOp::Delete { .. } => created_at.map(|_| Decision::Delete).ok_or_else(missing),
    }
}

/// One checkpoint of the catalog.
#[derive(Clone, Debug)]
enum Slot {
    /// Applied here; its snapshot is being written. The receiver turns true
    /// when the write ended (either way).
    Writing(CheckpointMeta, watch::Receiver<bool>),
    /// Durable in the checkpoint store.
    Ready(CheckpointInfo),
    /// Writing it failed on this node.
    Failed(CheckpointMeta, String),
}

impl Slot {
    fn meta(&self) -> &CheckpointMeta {
        match self {
            Slot::Writing(meta, _) | Slot::Failed(meta, _) => meta,
            Slot::Ready(info) => &info.meta,
        }
    }
}

#[derive(Debug, Default)]
struct CatalogState {
    slots: BTreeMap<String, Slot>,
    last_rollback_index: Option<LogIndex>,
}

/// The replicated catalog of checkpoints as this node has applied it,
/// shared by the apply task (which changes it), its background writers and
/// the node's handle (which reads it).
#[derive(Clone, Debug, Default)]
pub(super) struct Catalog(Arc<Mutex<CatalogState>>);

impl Catalog {
    fn lock(&self) -> MutexGuard<'_, CatalogState> {
        // A panic while holding this lock leaves a map that is still whole.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The checkpoints durable here, by name.
    pub(super) fn list(&self) -> Vec<CheckpointInfo> {
        self.lock()
            .slots
            .values()
            .filter_map(|slot| match slot {
                Slot::Ready(info) => Some(info.clone()),
                _ => None,
            })
            .collect()
    }

    pub(super) fn contains(&self, name: &str) -> bool {
        self.lock().slots.contains_key(name)
    }

    pub(super) fn count(&self) -> usize {
        self.lock().slots.len()
    }

    pub(super) fn total_bytes(&self) -> u64 {
        self.list().iter().map(|info| info.size_bytes).sum()
    }

    /// The index of the last rollback this node applied since it started.
    pub(super) fn last_rollback_index(&self) -> Option<LogIndex> {
        self.lock().last_rollback_index
    }

    /// Whether the checkpoint `name` is durable here.
    pub(super) fn is_ready(&self, name: &str) -> bool {
        matches!(self.lock().slots.get(name), Some(Slot::Ready(_)))
    }

    /// The checkpoint `name` if it is durable here and was created at `index`.
    pub(super) fn ready_at(&self, name: &str, index: LogIndex) -> Option<CheckpointInfo> {
        match self.lock().slots.get(name) {
            Some(Slot::Ready(info)) if info.meta.snapshot.last_index == index => Some(info.clone()),
            _ => None,
        }
    }

    fn meta(&self, name: &str) -> Option<CheckpointMeta> {
        self.lock().slots.get(name).map(|slot| slot.meta().clone())
    }

    /// Waits until the checkpoint `name`'s write ended; returns its info,
    /// or why it is not available here.
    async fn settled(&self, name: &str) -> Result<CheckpointInfo, CheckpointError> {
        let writing = match self.lock().slots.get(name) {
            None => return Err(CheckpointError::NotFound(name.to_string())),
            Some(Slot::Ready(info)) => return Ok(info.clone()),
            Some(Slot::Failed(_, why)) => return Err(CheckpointError::Storage(why.clone())),
            Some(Slot::Writing(_, done)) => done.clone(),
        };
        let mut done = writing;
        // The sender is dropped only after it reported the end.
        let _ = done.wait_for(|ended| *ended).await;
        match self.lock().slots.get(name) {
            Some(Slot::Ready(info)) => Ok(info.clone()),
            Some(Slot::Failed(_, why)) => Err(CheckpointError::Storage(why.clone())),
            _ => Err(CheckpointError::NotFound(name.to_string())),
        }
    }

    /// Records the end of a write, unless the slot was replaced meanwhile
    /// (deleted, or the catalog replaced by a snapshot's).
    fn settle(&self, meta: &CheckpointMeta, outcome: Result<CheckpointInfo, String>) {
        let mut state = self.lock();
        let Some(slot) = state.slots.get_mut(&meta.name) else {
            return;
        };
        if !matches!(slot, Slot::Writing(current, _) if current == meta) {
            return;
        }
        *slot = match outcome {
            Ok(info) => Slot::Ready(info),
            Err(why) => Slot::Failed(meta.clone(), why),
        };
    }
}

/// What the apply task needs for checkpoints.
pub(super) struct Checkpoints {
    pub(super) store: Arc<dyn CheckpointStore>,
    pub(super) catalog: Catalog,
}

/// The outcome of applying a checkpoint operation, for its client.
pub(super) type OpOutcome = Result<(), CheckpointError>;

impl Checkpoints {
    /// Applies a Create (already passed to the state machine) at the index
    /// of `meta`: captures the state and writes it in the background. The
    /// returned receiver turns true when the write ended; `None` if the
    /// operation failed or needs no write (a restart re-applying a
    /// checkpoint that is already durable here).
    pub(super) async fn create(
        &self,
        state_machine: &mut dyn StateMachine,
        op: &CheckpointOp,
        meta: CheckpointMeta,
        max_count: usize,
    ) -> Result<(OpOutcome, Option<watch::Receiver<bool>>), StateMachineError> {
        let index = meta.snapshot.last_index;
        let created_at = self.catalog.meta(&meta.name).map(|existing| existing.snapshot.last_index);
        match decide(op, index, created_at, self.catalog.count(), max_count) {
            Ok(Decision::Create) => {}
            Ok(_) => return Ok((Ok(()), None)),
            Err(error) => return Ok((Err(error), None)),
        }
        // A restart re-applies entries after the last snapshot: a checkpoint
        // written from this very entry before the restart is taken as is.
        let stored = self.store.list().await.map_err(StateMachineError::Storage)?;
        if let Some(info) = stored.into_iter().find(|info| info.meta == meta) {
            self.catalog.lock().slots.insert(meta.name.clone(), Slot::Ready(info));
            return Ok((Ok(()), None));
        }
        let source = state_machine.begin_snapshot().await?;
        let (ended, done) = watch::channel(false);
        self.catalog.lock().slots.insert(meta.name.clone(), Slot::Writing(meta.clone(), done.clone()));
        let store = Arc::clone(&self.store);
        let catalog = self.catalog.clone();
        tokio::spawn(async move {
            let outcome =
                write_checkpoint(store.as_ref(), meta.clone(), source).await.map_err(|e| e.to_string());
            if let Err(why) = &outcome {
                tracing::error!(checkpoint = %meta.name, error = %why, "writing a checkpoint failed");
            }
            catalog.settle(&meta, outcome);
            let _ = ended.send(true);
        });
        Ok((Ok(()), Some(done)))
    }

    /// The catalog's decision on a Rollback or Delete of `op`'s name (the
    /// count bound concerns only creates).
    fn decide_on_existing(&self, op: &CheckpointOp, index: LogIndex) -> Result<Decision, CheckpointError> {
        let created_at = self.catalog.meta(op.name()).map(|existing| existing.snapshot.last_index);
        decide(op, index, created_at, self.catalog.count(), usize::MAX)
    }

    /// Applies a Rollback (before the entry is passed to the state
    /// machine): restores the checkpoint's state through
    /// [`StateMachine::restore_checkpoint`]. An unknown name fails the
    /// operation on every replica alike; a checkpoint this node failed to
    /// write stops the node, which cannot take the state the others take.
    pub(super) async fn rollback(
        &self,
        state_machine: &mut dyn StateMachine,
        op: &CheckpointOp,
        index: LogIndex,
    ) -> Result<OpOutcome, StateMachineError> {
        let name = op.name();
        if let Err(error) = self.decide_on_existing(op, index) {
            return Ok(Err(error));
        }
        if let Err(error) = self.catalog.settled(name).await {
            return Err(StateMachineError::Other(format!(
                "rolling back to checkpoint {name:?} at index {index}: {error}; this replica cannot take \
                 the state the others take"
            )));
        }
        let mut reader = self.store.open(name).await?;
        state_machine.restore_checkpoint(reader.as_mut()).await?;
        self.catalog.lock().last_rollback_index = Some(index);
        Ok(Ok(()))
    }

    /// Applies a Delete: forgets the checkpoint and removes it from the
    /// store once any write of it ended.
    pub(super) async fn delete(
        &self,
        op: &CheckpointOp,
        index: LogIndex,
    ) -> Result<OpOutcome, StateMachineError> {
        let name = op.name();
        if let Err(error) = self.decide_on_existing(op, index) {
            return Ok(Err(error));
        }
        // Wait for a write in progress, so it does not land after the delete.
        let _ = self.catalog.settled(name).await;
        self.catalog.lock().slots.remove(name);
        if let Err(error) = self.store.delete(name).await {
            // The catalog no longer names it: the bytes are only garbage.
            tracing::warn!(checkpoint = %name, %error, "deleting a checkpoint's bytes failed");
        }
        Ok(Ok(()))
    }

    /// The catalog as it is now, for a snapshot of the state as it is now.
    pub(super) fn catalog_now(&self) -> RetainedNow {
        let slots = self.catalog.lock().slots.values().cloned().collect();
        RetainedNow { slots, catalog: self.catalog.clone() }
    }
}

/// The checkpoints retained at the index of a snapshot being taken.
pub(super) struct RetainedNow {
    slots: Vec<Slot>,
    catalog: Catalog,
}

impl RetainedNow {
    /// Their final information, once writes in progress ended. A checkpoint
    /// this node failed to write is left out (the failure was logged), and
    /// so is one deleted before its write ended.
    pub(super) async fn settled(self) -> Vec<CheckpointInfo> {
        let mut infos = Vec::with_capacity(self.slots.len());
        for slot in self.slots {
            match slot {
                Slot::Ready(info) => infos.push(info),
                Slot::Writing(meta, mut done) => {
                    let _ = done.wait_for(|ended| *ended).await;
                    if let Some(info) = self.catalog.ready_at(&meta.name, meta.snapshot.last_index) {
                        infos.push(info);
                    }
                }
                Slot::Failed(..) => {}
            }
        }
        infos
    }
}

/// Streams a state machine snapshot into the checkpoint store, computing
/// its checksum.
async fn write_checkpoint(
    store: &dyn CheckpointStore,
    meta: CheckpointMeta,
    mut source: Box<dyn SnapshotSource>,
) -> Result<CheckpointInfo, StateMachineError> {
    let mut writer = store.create(meta).await?;
    let mut checksum = 0u32;
    while let Some(chunk) = source.next_chunk().await? {
        checksum = crc32c::crc32c_append(checksum, &chunk);
        writer.write(chunk).await?;
    }
    Ok(writer.finish(checksum).await?)
}

// ---------------------------------------------------------------------------
// The snapshot envelope.

/// The first bytes of a snapshot that carries checkpoints. A state machine
/// snapshot that happens to start with these bytes would be misread: the
/// eight bytes include a zero and a version byte that no text format starts
/// with.
const ENVELOPE_MAGIC: [u8; 8] = *b"RAFTCK\x00\x01";

/// The most bytes of an envelope's catalog (well above 16 checkpoints of
/// 128-byte names with large memberships); a larger one is malformed.
const MAX_CATALOG_BYTES: u32 = 16 << 20;

/// The bytes of the snapshot's start: the magic, the catalog's length and
/// the catalog.
pub(super) fn envelope_head(checkpoints: &[CheckpointInfo]) -> Bytes {
    let mut catalog = BytesMut::new();
    catalog.put_u32_le(checkpoints.len() as u32);
    for info in checkpoints {
        let meta = &info.meta;
        catalog.put_u16_le(meta.name.len() as u16);
        catalog.put_slice(meta.name.as_bytes());
        catalog.put_u64_le(meta.snapshot.last_index.get());
        catalog.put_u64_le(meta.snapshot.last_term.get());
        let membership = &meta.snapshot.membership;
        for set in [&membership.voters, &membership.outgoing_voters, &membership.learners] {
            put_ids(&mut catalog, set);
        }
        catalog.put_u64_le(meta.created_unix_ms);
        catalog.put_u64_le(info.size_bytes);
        catalog.put_u32_le(info.checksum);
    }
    let mut head = BytesMut::with_capacity(12 + catalog.len());
    head.put_slice(&ENVELOPE_MAGIC);
    head.put_u32_le(catalog.len() as u32);
    head.put_slice(&catalog);
    head.freeze()
}

fn put_ids(buffer: &mut BytesMut, ids: &BTreeSet<NodeId>) {
    buffer.put_u32_le(ids.len() as u32);
    for id in ids {
        buffer.put_u64_le(id.0);
    }
}

/// A snapshot's envelope, read back.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Envelope {
    /// The checkpoints, in the order their bytes follow the head.
    pub(super) checkpoints: Vec<CheckpointInfo>,
    /// Where the first checkpoint's bytes start.
    pub(super) data_offset: u64,
    /// Where the state machine's snapshot starts.
    pub(super) state_offset: u64,
}

fn malformed(what: impl Into<String>) -> StateMachineError {
    StateMachineError::MalformedSnapshot(format!("the checkpoint envelope is malformed: {}", what.into()))
}

/// Reads exactly `length` bytes at `offset`.
async fn read_exact(
    reader: &mut dyn SnapshotReader,
    offset: u64,
    length: u64,
) -> Result<Bytes, StateMachineError> {
    let mut out = BytesMut::with_capacity(length.min(1 << 20) as usize);
    while (out.len() as u64) < length {
        let position = offset + out.len() as u64;
        let (chunk, done) = reader.read_at(position, length - out.len() as u64).await?;
        if chunk.is_empty() {
            return Err(malformed(format!("it ends at {position}, before {}", offset + length)));
        }
        out.extend_from_slice(&chunk);
        if done && (out.len() as u64) < length {
            return Err(malformed(format!(
                "it ends at {}, before {}",
                offset + out.len() as u64,
                offset + length
            )));
        }
    }
    Ok(out.freeze())
}

/// Reads the envelope at the start of a snapshot, if it has one.
pub(super) async fn read_envelope(reader: &mut dyn SnapshotReader) -> Result<Envelope, StateMachineError> {
    let (start, _) = reader.read_at(0, 12).await?;
    if start.len() < ENVELOPE_MAGIC.len() || start[..ENVELOPE_MAGIC.len()] != ENVELOPE_MAGIC {
        return Ok(Envelope::default());
    }
    let start = read_exact(reader, 0, 12).await?;
    let catalog_length = (&start[8..12]).get_u32_le();
    if catalog_length > MAX_CATALOG_BYTES {
        return Err(malformed(format!("its catalog claims {catalog_length} bytes")));
    }
    let mut catalog = read_exact(reader, 12, u64::from(catalog_length)).await?;
    let data_offset = 12 + u64::from(catalog_length);
    let checkpoints = decode_catalog(&mut catalog)?;
    let data_bytes = checkpoints.iter().try_fold(0u64, |sum, info| sum.checked_add(info.size_bytes));
    let state_offset = data_bytes
        .and_then(|bytes| data_offset.checked_add(bytes))
        .ok_or_else(|| malformed("its checkpoint sizes overflow"))?;
    Ok(Envelope { checkpoints, data_offset, state_offset })
}

fn decode_catalog(input: &mut Bytes) -> Result<Vec<CheckpointInfo>, StateMachineError> {
    fn need(input: &Bytes, bytes: usize) -> Result<(), StateMachineError> {
        if input.remaining() < bytes {
            return Err(malformed("its catalog is cut short"));
        }
        Ok(())
    }
    fn ids(input: &mut Bytes) -> Result<BTreeSet<NodeId>, StateMachineError> {
        need(input, 4)?;
        let count = input.get_u32_le() as usize;
        need(input, count.saturating_mul(8))?;
        Ok((0..count).map(|_| NodeId(input.get_u64_le())).collect())
    }
    need(input, 4)?;
    let count = input.get_u32_le() as usize;
    let mut checkpoints = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        need(input, 2)?;
        let name_length = input.get_u16_le() as usize;
        need(input, name_length)?;
        let name = String::from_utf8(input.split_to(name_length).to_vec())
            .map_err(|_| malformed("a checkpoint name is not UTF-8"))?;
        validate_name(&name).map_err(|error| malformed(error.to_string()))?;
        need(input, 16)?;
        let last_index = LogIndex(input.get_u64_le());
        let last_term = Term(input.get_u64_le());
        let voters = ids(input)?;
        let outgoing_voters = ids(input)?;
        let learners = ids(input)?;
        need(input, 20)?;
        let created_unix_ms = input.get_u64_le();
        let size_bytes = input.get_u64_le();
        let checksum = input.get_u32_le();
        let membership = Membership { voters, outgoing_voters, learners };
        let snapshot = SnapshotMeta { last_index, last_term, membership };
        checkpoints.push(CheckpointInfo {
            meta: CheckpointMeta { name, snapshot, created_unix_ms },
            size_bytes,
            checksum,
        });
    }
    if input.has_remaining() {
        return Err(malformed("its catalog has trailing bytes"));
    }
    Ok(checkpoints)
}

/// Streams a snapshot: the envelope (if there are checkpoints), each
/// checkpoint's bytes, then the state machine's snapshot.
pub(super) struct EnvelopedSource {
    head: Option<Bytes>,
    checkpoints: std::vec::IntoIter<CheckpointInfo>,
    current: Option<(Box<dyn SnapshotReader>, u64, u64)>,
    store: Arc<dyn CheckpointStore>,
    state: Box<dyn SnapshotSource>,
}

impl EnvelopedSource {
    pub(super) fn new(
        checkpoints: Vec<CheckpointInfo>,
        store: Arc<dyn CheckpointStore>,
        state: Box<dyn SnapshotSource>,
    ) -> Self {
        let head = (!checkpoints.is_empty()).then(|| envelope_head(&checkpoints));
        EnvelopedSource { head, checkpoints: checkpoints.into_iter(), current: None, store, state }
    }
}

/// The size of the chunks read from checkpoints into a snapshot.
const COPY_CHUNK_BYTES: u64 = 1 << 20;

#[async_trait]
impl SnapshotSource for EnvelopedSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        if let Some(head) = self.head.take() {
            return Ok(Some(head));
        }
        loop {
            if let Some((reader, offset, size)) = self.current.as_mut() {
                if *offset < *size {
                    let want = (*size - *offset).min(COPY_CHUNK_BYTES);
                    let chunk = read_exact(reader.as_mut(), *offset, want).await?;
                    *offset += want;
                    return Ok(Some(chunk));
                }
                self.current = None;
            }
            let Some(info) = self.checkpoints.next() else {
                return self.state.next_chunk().await;
            };
            let reader = self.store.open(&info.meta.name).await?;
            self.current = Some((reader, 0, info.size_bytes));
        }
    }
}

/// A view of a snapshot from `base` on, for the state machine's `restore`.
struct OffsetReader<'a> {
    inner: &'a mut dyn SnapshotReader,
    base: u64,
}

#[async_trait]
impl SnapshotReader for OffsetReader<'_> {
    fn meta(&self) -> &SnapshotMeta {
        self.inner.meta()
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let position = self
            .base
            .checked_add(offset)
            .ok_or_else(|| StorageError::InvalidWrite("offset overflows".into()))?;
        self.inner.read_at(position, max_bytes).await
    }
}

/// Restores the state machine from the snapshot at `meta` in the snapshot
/// store, first taking the checkpoints its envelope carries: those missing
/// from (or different in) the checkpoint store are written there, and the
/// catalog becomes the envelope's. Checkpoints in the store created after
/// the snapshot stay for the entries that created them, which are applied
/// again.
pub(super) async fn restore_snapshot(
    state_machine: &mut dyn StateMachine,
    snapshots: &dyn SnapshotStore,
    checkpoints: &Checkpoints,
    meta: &SnapshotMeta,
) -> Result<(), StateMachineError> {
    let mut reader = snapshots.open(meta.last_index).await?;
    let envelope = read_envelope(reader.as_mut()).await?;
    let stored = checkpoints.store.list().await?;
    let mut offset = envelope.data_offset;
    for info in &envelope.checkpoints {
        if !stored.contains(info) {
            copy_checkpoint(reader.as_mut(), offset, info, checkpoints.store.as_ref()).await?;
        }
        offset += info.size_bytes;
    }
    let keep: BTreeSet<&str> = envelope.checkpoints.iter().map(|info| info.meta.name.as_str()).collect();
    for info in &stored {
        let name = info.meta.name.as_str();
        if !keep.contains(name) && info.meta.snapshot.last_index <= meta.last_index {
            checkpoints.store.delete(name).await?;
        }
    }
    {
        let mut catalog = checkpoints.catalog.lock();
        catalog.slots = envelope
            .checkpoints
            .into_iter()
            .map(|info| (info.meta.name.clone(), Slot::Ready(info)))
            .collect();
    }
    let mut state = OffsetReader { inner: reader.as_mut(), base: envelope.state_offset };
    state_machine.restore(&mut state).await
}

/// Copies one checkpoint out of a snapshot's envelope into the store,
/// checking its checksum.
async fn copy_checkpoint(
    reader: &mut dyn SnapshotReader,
    offset: u64,
    info: &CheckpointInfo,
    store: &dyn CheckpointStore,
) -> Result<(), StateMachineError> {
    let mut writer = store.create(info.meta.clone()).await?;
    let mut checksum = 0u32;
    let mut copied = 0u64;
    while copied < info.size_bytes {
        let want = (info.size_bytes - copied).min(COPY_CHUNK_BYTES);
        let chunk = read_exact(reader, offset + copied, want).await?;
        checksum = crc32c::crc32c_append(checksum, &chunk);
        copied += want;
        writer.write(chunk).await?;
    }
    if checksum != info.checksum {
        return Err(malformed(format!(
            "checkpoint {:?} has checksum {checksum:#010x}, the catalog says {:#010x}",
            info.meta.name, info.checksum
        )));
    }
    writer.finish(checksum).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, index: u64, size_bytes: u64) -> CheckpointInfo {
        let membership = Membership::with_voters([NodeId(1), NodeId(2)]);
        CheckpointInfo {
            meta: CheckpointMeta {
                name: name.to_string(),
                snapshot: SnapshotMeta { last_index: LogIndex(index), last_term: Term(3), membership },
                created_unix_ms: 1_700_000_000_000,
            },
            size_bytes,
            checksum: 0xdead_beef,
        }
    }

    struct BytesReader(SnapshotMeta, Bytes);

    #[async_trait]
    impl SnapshotReader for BytesReader {
        fn meta(&self) -> &SnapshotMeta {
            &self.0
        }
        async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
            let length = self.1.len() as u64;
            let start = offset.min(length);
            let end = start.saturating_add(max_bytes).min(length);
            Ok((self.1.slice(start as usize..end as usize), end == length))
        }
    }

    #[tokio::test]
    async fn the_envelope_round_trips_and_plain_snapshots_have_none() {
        let checkpoints = vec![info("before-upgrade", 7, 10), info("b", 12, 0)];
        let mut bytes = envelope_head(&checkpoints).to_vec();
        let data_offset = bytes.len() as u64;
        bytes.extend_from_slice(&[7; 10]);
        bytes.extend_from_slice(b"state");
        let mut reader = BytesReader(SnapshotMeta::default(), Bytes::from(bytes));
        let envelope = read_envelope(&mut reader).await.unwrap();
        assert_eq!(envelope.checkpoints, checkpoints);
        assert_eq!(envelope.data_offset, data_offset);
        assert_eq!(envelope.state_offset, data_offset + 10);

        let mut plain = BytesReader(SnapshotMeta::default(), Bytes::from_static(b"RAFT plain state"));
        assert_eq!(read_envelope(&mut plain).await.unwrap(), Envelope::default());
    }

    #[tokio::test]
    async fn a_damaged_envelope_is_an_error_at_every_cut() {
        let head = envelope_head(&[info("one", 3, 5)]);
        for cut in ENVELOPE_MAGIC.len()..head.len() {
            let mut reader = BytesReader(SnapshotMeta::default(), head.slice(..cut));
            let outcome = read_envelope(&mut reader).await;
            assert!(
                matches!(outcome, Err(StateMachineError::MalformedSnapshot(_))),
                "cut at {cut}: {outcome:?}"
            );
        }
        let mut huge = head.to_vec();
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let mut reader = BytesReader(SnapshotMeta::default(), Bytes::from(huge));
        assert!(read_envelope(&mut reader).await.is_err());
    }

    #[test]
    fn decisions_follow_the_catalog_only() {
        let create = CheckpointOp::Create { name: "a".into(), created_unix_ms: 1 };
        let rollback = CheckpointOp::Rollback { name: "a".into() };
        let delete = CheckpointOp::Delete { name: "a".into() };
        let at = LogIndex(9);
        assert_eq!(decide(&create, at, None, 0, 2), Ok(Decision::Create));
        assert_eq!(decide(&create, at, Some(at), 2, 2), Ok(Decision::AlreadyCreated));
        assert_eq!(
            decide(&create, at, Some(LogIndex(4)), 1, 2),
            Err(CheckpointError::AlreadyExists("a".into()))
        );
        // A taken name is reported before a full catalog.
        assert_eq!(
            decide(&create, at, Some(LogIndex(4)), 2, 2),
            Err(CheckpointError::AlreadyExists("a".into()))
        );
        assert_eq!(decide(&create, at, None, 2, 2), Err(CheckpointError::TooMany { count: 2, max_count: 2 }));
        let bad = CheckpointOp::Create { name: "../x".into(), created_unix_ms: 1 };
        assert!(matches!(decide(&bad, at, None, 0, 2), Err(CheckpointError::InvalidName { .. })));
        for (op, done) in [(&rollback, Decision::Rollback), (&delete, Decision::Delete)] {
            assert_eq!(decide(op, at, Some(LogIndex(4)), 2, 2), Ok(done));
            assert_eq!(decide(op, at, None, 1, 2), Err(CheckpointError::NotFound("a".into())));
        }
    }

    #[test]
    fn names_are_checked() {
        for good in ["a", "before-upgrade", "v1.2_3", &"x".repeat(MAX_NAME_BYTES)] {
            assert_eq!(validate_name(good), Ok(()), "{good}");
        }
        for bad in ["", ".hidden", "a/b", "a b", "é", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
