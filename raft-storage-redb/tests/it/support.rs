//! Shared helpers: entries, writes and a store factory on temporary
//! directories.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::storage::{LogStore, LogWrite, SnapshotStore};
use raft_core::testing::storage_suite::StoreFactory;
use raft_core::types::{Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raft_storage_redb::{RedbLogStore, RedbSnapshotStore};
use tempfile::TempDir;

/// An entry whose data names it, `size` bytes long.
pub fn entry(index: u64, term: u64, size: usize) -> Entry {
    let mut data = format!("entry {index}/{term} ").into_bytes();
    data.resize(size.max(data.len()), b'x');
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command { client: None, data: Bytes::from(data) },
    }
}

/// A durable write of `entries` and `hard_state`.
pub fn write(entries: Vec<Entry>, hard_state: Option<HardState>) -> LogWrite {
    LogWrite { install_snapshot: None, entries, hard_state, sync: true }
}

/// Snapshot metadata at `index`, `term` for a three-node cluster.
pub fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(term),
        membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

/// Creates stores in fresh temporary directories and reopens them from the
/// same path after dropping the old handle.
#[derive(Default)]
pub struct DiskFactory {
    directories: Vec<TempDir>,
    log_path: Option<PathBuf>,
    snapshot_path: Option<PathBuf>,
}

impl DiskFactory {
    fn fresh_directory(&mut self) -> PathBuf {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let path = directory.path().to_path_buf();
        self.directories.push(directory);
        path
    }
}

/// Opens the log store at `path`, panicking with the error (test helper).
pub async fn open_log(path: &Path) -> RedbLogStore {
    RedbLogStore::open_async(path, Default::default()).await.expect("open the log store")
}

#[async_trait]
impl StoreFactory for DiskFactory {
    async fn create_log_store(&mut self) -> Arc<dyn LogStore> {
        let path = self.fresh_directory().join("log.redb");
        self.log_path = Some(path.clone());
        Arc::new(open_log(&path).await)
    }

    async fn reopen_log_store(&mut self, store: Arc<dyn LogStore>) -> Arc<dyn LogStore> {
        drop(store);
        let path = self.log_path.clone().expect("a log store was created");
        Arc::new(open_log(&path).await)
    }

    async fn create_snapshot_store(&mut self) -> Arc<dyn SnapshotStore> {
        let path = self.fresh_directory().join("snapshots");
        self.snapshot_path = Some(path.clone());
        Arc::new(RedbSnapshotStore::open_async(&path).await.expect("open the snapshot store"))
    }

    async fn reopen_snapshot_store(&mut self, store: Arc<dyn SnapshotStore>) -> Arc<dyn SnapshotStore> {
        drop(store);
        let path = self.snapshot_path.clone().expect("a snapshot store was created");
        Arc::new(RedbSnapshotStore::open_async(&path).await.expect("reopen the snapshot store"))
    }
}
