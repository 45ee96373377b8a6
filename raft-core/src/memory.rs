//! In-memory implementations of the storage traits, for tests, examples and
//! library users who keep durability elsewhere. Nothing survives the
//! process; "durable" means "visible to the next `read_state` of the same
//! store object", which is what restart tests within one process need.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};

use crate::protocol::RestoredState;
use crate::storage::{LogStore, LogWrite, SnapshotReader, SnapshotStore, SnapshotWriter, StorageError};
use crate::types::{Entry, HardState, LogIndex, SnapshotMeta};

#[derive(Debug, Default)]
struct LogState {
    hard_state: HardState,
    snapshot: Option<SnapshotMeta>,
    /// Entries after the compaction point, by index.
    entries: BTreeMap<LogIndex, Entry>,
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

#[async_trait]
impl LogStore for MemoryLogStore {
    async fn read_state(&self) -> Result<RestoredState, StorageError> {
        let state = self.lock()?;
        let after = state.snapshot.as_ref().map_or(LogIndex(0), |s| s.last_index);
        Ok(RestoredState {
            hard_state: state.hard_state,
            snapshot: state.snapshot.clone(),
            entries: state.entries.range(after.next()..).map(|(_, e)| e.clone()).collect(),
        })
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let mut state = self.lock()?;
        if let Some(meta) = write.install_snapshot {
            state.entries.clear();
            state.snapshot = Some(meta);
        }
        if let Some(first) = write.entries.first() {
            let first_index = first.index;
            let _ = state.entries.split_off(&first_index);
            for entry in write.entries {
                state.entries.insert(entry.index, entry);
            }
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
        state.entries = state.entries.split_off(&limit.next());
        Ok(())
    }

    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        let state = self.lock()?;
        if let Some((first, _)) = state.entries.first_key_value() {
            if from < *first && from > LogIndex(0) {
                return Err(StorageError::Compacted { from, start: first.prev() });
            }
        }
        if from > to {
            return Ok(Vec::new());
        }
        Ok(state.entries.range(from..=to).map(|(_, e)| e.clone()).collect())
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
