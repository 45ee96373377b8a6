//! raft-core's storage conformance suite against both stores, reopening
//! from disk where the suite restarts.

use std::future::Future;

use raft_core::storage::{LogStore, LogWrite, StorageError};
use raft_core::testing::storage_suite::{run_log_store_suite, run_snapshot_store_suite};
use raft_core::types::LogIndex;

use crate::support::{entry, meta, open_log, write, DiskFactory};

#[tokio::test]
async fn the_log_store_passes_the_conformance_suite() {
    run_log_store_suite(&mut DiskFactory::default()).await;
}

#[tokio::test]
async fn the_snapshot_store_passes_the_conformance_suite() {
    run_snapshot_store_suite(&mut DiskFactory::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suites_pass_on_a_multi_threaded_runtime() {
    run_log_store_suite(&mut DiskFactory::default()).await;
    run_snapshot_store_suite(&mut DiskFactory::default()).await;
}

#[test]
fn the_stores_work_without_a_tokio_runtime() {
    // Library users may drive the futures with another executor: the stores
    // then do their disk work inline instead of on tokio's blocking pool.
    let directory = tempfile::tempdir().unwrap();
    let store = raft_storage_redb::RedbLogStore::open(directory.path().join("log.redb")).unwrap();
    let waker = std::task::Waker::noop();
    let mut context = std::task::Context::from_waker(waker);
    let mut future = std::pin::pin!(store.write(write(vec![entry(1, 1, 10)], None)));
    assert!(matches!(future.as_mut().poll(&mut context), std::task::Poll::Ready(Ok(()))));
}

#[tokio::test]
async fn a_write_that_would_leave_a_gap_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let store = open_log(&directory.path().join("log.redb")).await;
    store.write(write(vec![entry(1, 1, 10), entry(2, 1, 10)], None)).await.unwrap();
    let gap = store.write(write(vec![entry(4, 1, 10)], None)).await;
    assert!(matches!(gap, Err(StorageError::InvalidWrite(message)) if message.contains("gap")));
    let holes = store.write(write(vec![entry(3, 1, 10), entry(5, 1, 10)], None)).await;
    assert!(matches!(holes, Err(StorageError::InvalidWrite(message)) if message.contains("consecutive")));
    assert_eq!(store.read_state().await.unwrap().entries.len(), 2, "a refused write changes nothing");
}

#[tokio::test]
async fn compaction_of_everything_then_appending_continues_the_log() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let store = open_log(&path).await;
    store.write(write((1..=100).map(|index| entry(index, 1, 64)).collect(), None)).await.unwrap();
    store.set_snapshot(meta(100, 1)).await.unwrap();
    store.compact(LogIndex(100)).await.unwrap();
    assert!(matches!(store.entries(LogIndex(50), LogIndex(60)).await, Err(StorageError::Compacted { .. })));
    store.write(write(vec![entry(101, 2, 64)], None)).await.unwrap();
    drop(store);
    let store = open_log(&path).await;
    let state = store.read_state().await.unwrap();
    assert_eq!(state.snapshot, Some(meta(100, 1)));
    assert_eq!(state.entries, vec![entry(101, 2, 64)]);
}

#[tokio::test]
async fn an_unsynced_write_is_visible_and_survives_a_clean_close() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let store = open_log(&path).await;
    store.write(write(vec![entry(1, 1, 10)], None)).await.unwrap();
    let commit_only = LogWrite {
        hard_state: Some(raft_core::types::HardState { commit: LogIndex(1), ..Default::default() }),
        sync: false,
        ..LogWrite::default()
    };
    store.write(commit_only).await.unwrap();
    assert_eq!(store.read_state().await.unwrap().hard_state.commit, LogIndex(1));
    drop(store);
    let store = open_log(&path).await;
    assert_eq!(store.read_state().await.unwrap().hard_state.commit, LogIndex(1));
}

#[tokio::test]
async fn compaction_gives_the_file_space_back_when_most_of_it_is_free() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let mut options = raft_storage_redb::LogStoreOptions::default();
    options.file_compaction_min_bytes = 0;
    options.file_compaction_free_fraction = Some(0.5);
    let store = raft_storage_redb::RedbLogStore::open_async(&path, options.clone()).await.unwrap();
    for first in (1..=4_000).step_by(200) {
        store
            .write(write((first..first + 200).map(|index| entry(index, 1, 1_000)).collect(), None))
            .await
            .unwrap();
    }
    // The writes reach redb at a checkpoint (the WAL holds them until then).
    store.checkpoint().await.unwrap();
    let full = store.file_size_bytes().unwrap();
    store.set_snapshot(meta(3_990, 1)).await.unwrap();
    store.compact(LogIndex(3_990)).await.unwrap();
    let compacted = store.file_size_bytes().unwrap();
    assert!(compacted * 4 < full, "the file shrank from {full} to {compacted} bytes");
    store.write(write(vec![entry(4_001, 2, 10)], None)).await.unwrap();
    drop(store);
    let store = raft_storage_redb::RedbLogStore::open_async(&path, options).await.unwrap();
    let state = store.read_state().await.unwrap();
    let indexes: Vec<u64> = state.entries.iter().map(|entry| entry.index.get()).collect();
    assert_eq!(
        indexes,
        (3_991..=4_001).collect::<Vec<_>>(),
        "the kept entries survive the file's compaction"
    );
    assert_eq!(state.entries[0], entry(3_991, 1, 1_000));
}
