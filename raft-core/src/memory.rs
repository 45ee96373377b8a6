//! In-memory implementations of the storage traits, for tests, examples and
//! library users who keep durability elsewhere. Nothing survives the
//! process; "durable" means "visible to the next `read_state` of the same
//! store object", which is what restart tests within one process need.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::protocol::RestoredState;
use crate::storage::{
    CheckpointInfo, CheckpointMeta, CheckpointStore, CheckpointWriter, LogStore, LogWrite, SnapshotReader,
    SnapshotStore, SnapshotWriter, StorageError,
};
use crate::types::{Entry, HardState, LogIndex, SnapshotMeta};

#[derive(Debug, Default)]
struct LogState {
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    /// The index of `entries[0]`; meaningless while `entries` is empty.
    first_index: LogIndex,
    /// Consecutive entries after the compaction point. A double-ended queue
    /// rather than an ordered map: appends go to the back and compaction
    /// drops from the front, both without rebalancing or allocating per
    /// entry, which is what the runtime benchmark spent most of its storage
    /// time on.
    entries: VecDeque<Entry>,
}

impl LogState {
    /// The index after the last stored entry, or after the snapshot when no
    /// entry is stored.
    fn next_index(&self) -> LogIndex {
        let snapshot_index = self.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        if self.entries.is_empty() {
            return snapshot_index.next();
        }
        LogIndex(self.first_index.get() + self.entries.len() as u64).max(snapshot_index.next())
    }

    /// The position of `index` in `entries`, clamped to `0 ..= len`.
    fn position(&self, index: LogIndex) -> usize {
        (index.get().saturating_sub(self.first_index.get()) as usize).min(self.entries.len())
    }
}

/// A log store in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryLogStore {
    state: Arc<Mutex<LogState>>,
}

impl MemoryLogStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, LogState>, StorageError> {
        self.state.lock().map_err(|_| StorageError::Backend("the store's lock is poisoned".into()))
    }
}

/// Refuses a write that would leave a log `read_state` cannot return as one
/// consecutive run: entries that do not follow each other, or a first entry
/// past the end of the stored log. Checked before anything changes, so a
/// refused write leaves the store as it was.
fn check_write(state: &LogState, write: &LogWrite) -> Result<(), StorageError> {
    for pair in write.entries.windows(2) {
        if pair[1].index != pair[0].index.next() {
            return Err(StorageError::InvalidWrite(format!(
                "refusing a write whose entries are not consecutive ({} follows {})",
                pair[1].index, pair[0].index
            )));
        }
    }
    let Some(first) = write.entries.first() else {
        return Ok(());
    };
    let next_expected = match &write.install_snapshot {
        Some(meta) => meta.last_index.next(),
        None => state.next_index(),
    };
    if first.index > next_expected {
        return Err(StorageError::InvalidWrite(format!(
            "refusing to append entry {}: the log ends at {}, so it would leave a gap",
            first.index,
            next_expected.prev()
        )));
    }
    Ok(())
}

#[async_trait]
impl LogStore for MemoryLogStore {
    async fn read_state(&self) -> Result<RestoredState, StorageError> {
        let state = self.lock()?;
        let after = state.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        let from = state.position(after.next());
        Ok(RestoredState {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            entries: state.entries.range(from..).cloned().collect(),
        })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut state = self.lock()?;
        check_write(&state, &write)?;
        if let Some(meta) = write.install_snapshot {
            state.entries.clear();
            state.snapshot = Some(meta);
        }
        if let Some(first) = write.entries.first() {
            let first_index = first.index;
            let stored_next = LogIndex(state.first_index.get() + state.entries.len() as u64);
            if state.entries.is_empty() || first_index < state.first_index || first_index > stored_next {
                // Nothing stored is kept: the new entries start before the
                // stored ones, or after a snapshot that covers them all.
                state.entries.clear();
                state.first_index = first_index;
            } else {
                // Later entries replace the stored suffix from their first index.
                let keep = state.position(first_index);
                state.entries.truncate(keep);
            }
            state.entries.extend(write.entries);
        }
        if let Some(hard_state) = write.hard_state {
            state.hard_state = hard_state;
        }
        Ok(())
    }

    async fn set_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        let mut state = self.lock()?;
        if state.snapshot.as_ref().is_none_or(|s| s.last_index < meta.last_index) {
            state.snapshot = Some(meta);
        }
        Ok(())
    }

    async fn compact(&self, up_to: LogIndex) -> Result<(), StorageError> {
        let mut state = self.lock()?;
        let limit = state.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index).min(up_to);
        let drop_count = state.position(limit.next());
        state.entries.drain(..drop_count);
        state.first_index = LogIndex(state.first_index.get() + drop_count as u64);
        Ok(())
    }

    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let state = self.lock()?;
        if !state.entries.is_empty() && from < state.first_index && from > LogIndex(0) {
            return Err(StorageError::Compacted { from, start: state.first_index.prev() });
        }
        if from > to {
            return Ok(Vec::new());
        }
        let (begin, end) = (state.position(from), state.position(to.next()));
        Ok(state.entries.range(begin..end).cloned().collect())
    }
}

/// Finished snapshots by last index.
type SnapshotMap = BTreeMap<LogIndex, (SnapshotMeta, Bytes)>;

/// A snapshot store in memory.
#[derive(Debug, Default, Clone)]
pub struct MemorySnapshotStore {
    snapshots: Arc<Mutex<SnapshotMap>>,
}

impl MemorySnapshotStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, SnapshotMap>, StorageError> {
        self.snapshots.lock().map_err(|_| StorageError::Backend("the store's lock is poisoned".into()))
    }
}

#[async_trait]
impl SnapshotStore for MemorySnapshotStore {
    async fn create(&self, meta: SnapshotMeta) -> Result<Box<dyn SnapshotWriter>, StorageError> {
        Ok(Box::new(MemorySnapshotWriter { store: self.clone(), meta, data: BytesMut::new() }))
    }

    async fn open(&self, index: LogIndex) -> Result<Box<dyn SnapshotReader>, StorageError> {
        let snapshots = self.lock()?;
        let (meta, data) = snapshots.get(&index).cloned().ok_or(StorageError::SnapshotNotFound(index))?;
        Ok(Box::new(MemorySnapshotReader { meta, data }))
    }

    async fn latest(&self) -> Result<Option<SnapshotMeta>, StorageError> {
        Ok(self.lock()?.values().next_back().map(|(meta, _)| meta.clone()))
    }

    async fn retain(&self, keep_from: LogIndex) -> Result<(), StorageError> {
        let mut snapshots = self.lock()?;
        *snapshots = snapshots.split_off(&keep_from);
        Ok(())
    }
}

struct MemorySnapshotWriter {
    store: MemorySnapshotStore,
    meta: SnapshotMeta,
    data: BytesMut,
}

#[async_trait]
impl SnapshotWriter for MemorySnapshotWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>) -> Result<u64, StorageError> {
        let size = self.data.len() as u64;
        let mut snapshots = self.store.lock()?;
        snapshots.insert(self.meta.last_index, (self.meta, self.data.freeze()));
        Ok(size)
    }
}

struct MemorySnapshotReader {
    meta: SnapshotMeta,
    data: Bytes,
}

#[async_trait]
impl SnapshotReader for MemorySnapshotReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let length = self.data.len() as u64;
        let start = offset.min(length);
        let end = start.saturating_add(max_bytes).min(length);
        Ok((self.data.slice(start as usize..end as usize), end == length))
    }
}

// The conformance suite runs against these stores in the doctest of
// `crate::testing::storage_suite`.

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryPayload, Term};

    fn entries(indexes: std::ops::RangeInclusive<u64>) -> Vec<Entry> {
        indexes.map(|i| Entry { term: Term(1), index: LogIndex(i), payload: EntryPayload::Blank }).collect()
    }

    fn write(entries: Vec<Entry>) -> LogWrite {
        LogWrite { entries, sync: true, ..LogWrite::default() }
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(future)
    }

    #[test]
    fn a_write_that_would_leave_a_gap_is_refused_and_changes_nothing() {
        block_on(async {
            let store = MemoryLogStore::new();
            store.write(write(entries(1..=2))).await.expect("write");
            let gap = store.write(write(entries(4..=4))).await;
            assert!(matches!(gap, Err(StorageError::InvalidWrite(message)) if message.contains("gap")));
            let mut holes = entries(3..=3);
            holes.extend(entries(5..=5));
            let holes = store.write(write(holes)).await;
            assert!(
                matches!(holes, Err(StorageError::InvalidWrite(message)) if message.contains("consecutive"))
            );
            assert_eq!(store.read_state().await.expect("read").entries, entries(1..=2));
        });
    }

    #[test]
    fn appending_after_compacting_everything_continues_the_log() {
        block_on(async {
            let store = MemoryLogStore::new();
            store.write(write(entries(1..=100))).await.expect("write");
            let meta =
                SnapshotMeta { last_index: LogIndex(100), last_term: Term(1), ..SnapshotMeta::default() };
            store.set_snapshot(meta).await.expect("snapshot");
            store.compact(LogIndex(100)).await.expect("compact");
            store.write(write(entries(101..=102))).await.expect("append after the snapshot");
            assert_eq!(store.entries(LogIndex(101), LogIndex(200)).await.expect("read"), entries(101..=102));
            assert!(matches!(
                store.entries(LogIndex(50), LogIndex(60)).await,
                Err(StorageError::Compacted { .. })
            ));
            store.write(write(entries(102..=103))).await.expect("overwrite the last entry");
            assert_eq!(store.read_state().await.expect("read").entries, entries(101..=103));
        });
    }
}

/// Finished checkpoints by name.
type CheckpointMap = BTreeMap<String, (CheckpointInfo, Bytes)>;

/// A checkpoint store in memory.
#[derive(Debug, Default, Clone)]
pub struct MemoryCheckpointStore {
    checkpoints: Arc<Mutex<CheckpointMap>>,
}

impl MemoryCheckpointStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> Result<MutexGuard<'_, CheckpointMap>, StorageError> {
        self.checkpoints.lock().map_err(|_| StorageError::Backend("the store's lock is poisoned".into()))
    }
}

#[async_trait]
impl CheckpointStore for MemoryCheckpointStore {
    async fn create(&self, meta: CheckpointMeta) -> Result<Box<dyn CheckpointWriter>, StorageError> {
        Ok(Box::new(MemoryCheckpointWriter { store: self.clone(), meta, data: BytesMut::new() }))
    }

    async fn open(&self, name: &str) -> Result<Box<dyn SnapshotReader>, StorageError> {
        let checkpoints = self.lock()?;
        let (info, data) = checkpoints
            .get(name)
            .cloned()
            .ok_or_else(|| StorageError::CheckpointNotFound(name.to_string()))?;
        Ok(Box::new(MemorySnapshotReader { meta: info.meta.snapshot, data }))
    }

    async fn list(&self) -> Result<Vec<CheckpointInfo>, StorageError> {
        Ok(self.lock()?.values().map(|(info, _)| info.clone()).collect())
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        self.lock()?.remove(name);
        Ok(())
    }
}

struct MemoryCheckpointWriter {
    store: MemoryCheckpointStore,
    meta: CheckpointMeta,
    data: BytesMut,
}

#[async_trait]
impl CheckpointWriter for MemoryCheckpointWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), StorageError> {
        self.data.extend_from_slice(&chunk);
        Ok(())
    }

    async fn finish(self: Box<Self>, checksum: u32) -> Result<CheckpointInfo, StorageError> {
        let info = CheckpointInfo { meta: self.meta, size_bytes: self.data.len() as u64, checksum };
        self.store.lock()?.insert(info.meta.name.clone(), (info.clone(), self.data.freeze()));
        Ok(info)
    }
}
