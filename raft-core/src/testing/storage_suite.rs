//! The conformance suite every [`LogStore`] and [`SnapshotStore`] must pass.
//!
//! A store crate runs it from its own tests with a factory that creates an
//! empty store and reopens it "after a restart":
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use raft_core::memory::{MemoryLogStore, MemorySnapshotStore};
//! use raft_core::storage::{LogStore, SnapshotStore};
//! use raft_core::testing::storage_suite::{run_log_store_suite, run_snapshot_store_suite, StoreFactory};
//!
//! /// In-memory stores "survive" a restart by handing back the same object.
//! struct MemoryFactory;
//!
//! #[async_trait]
//! impl StoreFactory for MemoryFactory {
//!     async fn create_log_store(&mut self) -> Arc<dyn LogStore> {
//!         Arc::new(MemoryLogStore::new())
//!     }
//!     async fn reopen_log_store(&mut self, store: Arc<dyn LogStore>) -> Arc<dyn LogStore> {
//!         store
//!     }
//!     async fn create_snapshot_store(&mut self) -> Arc<dyn SnapshotStore> {
//!         Arc::new(MemorySnapshotStore::new())
//!     }
//!     async fn reopen_snapshot_store(&mut self, store: Arc<dyn SnapshotStore>) -> Arc<dyn SnapshotStore> {
//!         store
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! run_log_store_suite(&mut MemoryFactory).await;
//! run_snapshot_store_suite(&mut MemoryFactory).await;
//! # });
//! ```
//!
//! Each check panics with a message naming the contract it found broken.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::storage::{LogStore, LogWrite, SnapshotStore, StorageError};
use crate::types::{Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};

/// Creates stores for the suite.
#[async_trait]
pub trait StoreFactory: Send {
    /// A new, empty log store.
    async fn create_log_store(&mut self) -> Arc<dyn LogStore>;
    /// The same log store after a restart; the suite drops `store` first.
    async fn reopen_log_store(&mut self, store: Arc<dyn LogStore>) -> Arc<dyn LogStore>;
    /// A new, empty snapshot store.
    async fn create_snapshot_store(&mut self) -> Arc<dyn SnapshotStore>;
    /// The same snapshot store after a restart.
    async fn reopen_snapshot_store(&mut self, store: Arc<dyn SnapshotStore>) -> Arc<dyn SnapshotStore>;
}

/// An entry for the suite: a command whose data names its index and term.
pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        term: Term(term),
        index: LogIndex(index),
        payload: EntryPayload::Command { client: None, data: Bytes::from(format!("entry {index}/{term}")) },
    }
}

fn entries(range: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    range.map(|index| entry(index, term)).collect()
}

fn meta(index: u64, term: u64) -> SnapshotMeta {
    SnapshotMeta {
        last_index: LogIndex(index),
        last_term: Term(term),
        membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
    }
}

fn write(entries: Vec<Entry>, hard_state: Option<HardState>) -> LogWrite {
    LogWrite { install_snapshot: None, entries, hard_state, sync: true }
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term: Term(term), vote: NodeId(vote), commit: LogIndex(commit) }
}

fn indexes_and_terms(entries: &[Entry]) -> Vec<(u64, u64)> {
    entries.iter().map(|e| (e.index.get(), e.term.get())).collect()
}

/// Runs every log store check.
pub async fn run_log_store_suite(factory: &mut dyn StoreFactory) {
    empty_store_reads_as_empty(factory).await;
    writes_survive_a_restart(factory).await;
    later_entries_overwrite_a_suffix(factory).await;
    snapshots_and_compaction(factory).await;
    installing_a_snapshot_replaces_the_log(factory).await;
    range_reads(factory).await;
}

async fn empty_store_reads_as_empty(factory: &mut dyn StoreFactory) {
    let store = factory.create_log_store().await;
    let state = store.read_state().await.expect("an empty store reads");
    assert_eq!(state.hard_state, HardState::default(), "an empty store has the default hard state");
    assert!(state.snapshot.is_none(), "an empty store has no snapshot");
    assert!(state.entries.is_empty(), "an empty store has no entries");
}

async fn writes_survive_a_restart(factory: &mut dyn StoreFactory) {
    let store = factory.create_log_store().await;
    store.write(write(entries(1..=10, 1), Some(hard_state(1, 2, 4)))).await.expect("write");
    store.write(write(entries(11..=12, 2), Some(hard_state(2, 0, 10)))).await.expect("write");
    store.write(write(Vec::new(), Some(hard_state(2, 3, 11)))).await.expect("a hard state alone");
    let store = factory.reopen_log_store(store).await;
    let state = store.read_state().await.expect("read after restart");
    assert_eq!(state.hard_state, hard_state(2, 3, 11), "the last hard state survives a restart");
    assert_eq!(state.entries.len(), 12, "every synced entry survives a restart");
    assert_eq!(
        state.entries,
        [entries(1..=10, 1), entries(11..=12, 2)].concat(),
        "entries read back exactly"
    );
}

async fn later_entries_overwrite_a_suffix(factory: &mut dyn StoreFactory) {
    let store = factory.create_log_store().await;
    store.write(write(entries(1..=6, 1), None)).await.expect("write");
    store.write(write(entries(4..=4, 2), None)).await.expect("overwrite");
    let state = store.read_state().await.expect("read");
    assert_eq!(
        indexes_and_terms(&state.entries),
        vec![(1, 1), (2, 1), (3, 1), (4, 2)],
        "appending at index 4 discards the stored entries from 4 on"
    );
}

async fn snapshots_and_compaction(factory: &mut dyn StoreFactory) {
    let store = factory.create_log_store().await;
    store.write(write(entries(1..=20, 1), Some(hard_state(1, 1, 20)))).await.expect("write");
    store.set_snapshot(meta(15, 1)).await.expect("set snapshot");
    store.compact(LogIndex(10)).await.expect("compact");
    let state = store.read_state().await.expect("read");
    assert_eq!(state.snapshot, Some(meta(15, 1)), "the current snapshot is recorded");
    assert_eq!(
        indexes_and_terms(&state.entries).first(),
        Some(&(16, 1)),
        "read_state returns the entries after the snapshot"
    );
    let kept = store.entries(LogIndex(11), LogIndex(20)).await.expect("entries after the compaction point");
    assert_eq!(kept.len(), 10, "compaction keeps entries after its index");
    match store.entries(LogIndex(5), LogIndex(12)).await {
        Err(StorageError::Compacted { .. }) => {}
        other => panic!("reading compacted entries must fail with Compacted, got {other:?}"),
    }
    store.compact(LogIndex(30)).await.expect("compaction past the snapshot is clamped");
    let after = store.entries(LogIndex(16), LogIndex(20)).await.expect("entries after the snapshot stay");
    assert_eq!(after.len(), 5, "compaction never removes entries after the current snapshot");
    store.set_snapshot(meta(12, 1)).await.expect("an older snapshot is ignored");
    let store = factory.reopen_log_store(store).await;
    let state = store.read_state().await.expect("read after restart");
    assert_eq!(state.snapshot, Some(meta(15, 1)), "the snapshot survives a restart and never moves back");
}

async fn installing_a_snapshot_replaces_the_log(factory: &mut dyn StoreFactory) {
    let store = factory.create_log_store().await;
    store.write(write(entries(1..=8, 1), Some(hard_state(1, 1, 3)))).await.expect("write");
    let install = LogWrite {
        install_snapshot: Some(meta(50, 3)),
        entries: entries(51..=52, 3),
        hard_state: Some(hard_state(3, 0, 50)),
        sync: true,
    };
    store.write(install).await.expect("install");
    let store = factory.reopen_log_store(store).await;
    let state = store.read_state().await.expect("read");
    assert_eq!(state.snapshot, Some(meta(50, 3)), "the installed snapshot is current");
    assert_eq!(
        indexes_and_terms(&state.entries),
        vec![(51, 3), (52, 3)],
        "installing discards the old log and keeps the entries written with it"
    );
    assert_eq!(state.hard_state, hard_state(3, 0, 50));
}

async fn range_reads(factory: &mut dyn StoreFactory) {
    let store = factory.create_log_store().await;
    store.write(write(entries(1..=5, 1), None)).await.expect("write");
    let middle = store.entries(LogIndex(2), LogIndex(4)).await.expect("range");
    assert_eq!(indexes_and_terms(&middle), vec![(2, 1), (3, 1), (4, 1)], "ranges are inclusive");
    let past_end = store.entries(LogIndex(4), LogIndex(9)).await.expect("a range past the end is cut");
    assert_eq!(past_end.len(), 2, "a range past the end returns what exists");
    let empty = store.entries(LogIndex(7), LogIndex(9)).await.expect("a range after the end is empty");
    assert!(empty.is_empty());
}

/// Runs every snapshot store check.
pub async fn run_snapshot_store_suite(factory: &mut dyn StoreFactory) {
    let store = factory.create_snapshot_store().await;
    assert!(store.latest().await.expect("latest").is_none(), "an empty store has no snapshot");
    let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let mut writer = store.create(meta(10, 1)).await.expect("create");
    for chunk in data.chunks(7_777) {
        writer.write(Bytes::copy_from_slice(chunk)).await.expect("write chunk");
    }
    assert!(store.latest().await.expect("latest").is_none(), "an unfinished snapshot is invisible");
    let size = writer.finish().await.expect("finish");
    assert_eq!(size, data.len() as u64, "finish reports the size");
    // An abandoned snapshot leaves no trace.
    let mut abandoned = store.create(meta(20, 2)).await.expect("create");
    abandoned.write(Bytes::from_static(b"partial")).await.expect("write");
    drop(abandoned);
    let store = factory.reopen_snapshot_store(store).await;
    assert_eq!(store.latest().await.expect("latest"), Some(meta(10, 1)), "the finished snapshot survives");
    let mut reader = store.open(LogIndex(10)).await.expect("open");
    assert_eq!(reader.meta(), &meta(10, 1));
    let mut read_back = Vec::new();
    loop {
        let (chunk, done) = reader.read_at(read_back.len() as u64, 65_536).await.expect("read");
        assert!(chunk.len() <= 65_536, "reads respect max_bytes");
        read_back.extend_from_slice(&chunk);
        if done {
            break;
        }
        assert!(!chunk.is_empty(), "a read before the end returns bytes");
    }
    assert_eq!(read_back, data, "a snapshot reads back exactly");
    match store.open(LogIndex(20)).await {
        Err(StorageError::SnapshotNotFound(_)) => {}
        Err(other) => panic!("opening a missing snapshot must fail with SnapshotNotFound, got {other}"),
        Ok(_) => panic!("an abandoned snapshot must not be readable"),
    }
    let mut newer = store.create(meta(30, 2)).await.expect("create");
    newer.write(Bytes::from_static(b"newer")).await.expect("write");
    newer.finish().await.expect("finish");
    store.retain(LogIndex(30)).await.expect("retain");
    assert_eq!(store.latest().await.expect("latest"), Some(meta(30, 2)));
    assert!(store.open(LogIndex(10)).await.is_err(), "retain deletes older snapshots");
}
