//! The checkpoint store: durable, atomic, checked, and bounded in what a
//! name may be.

use bytes::Bytes;
use raft_core::storage::{CheckpointMeta, CheckpointStore, StorageError};
use raft_core::types::{LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raft_storage_redb::RedbCheckpointStore;

fn meta(name: &str, index: u64) -> CheckpointMeta {
    CheckpointMeta {
        name: name.to_string(),
        snapshot: SnapshotMeta {
            last_index: LogIndex(index),
            last_term: Term(2),
            membership: Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]),
        },
        created_unix_ms: 1_763_900_000_000,
    }
}

async fn read_all(store: &RedbCheckpointStore, name: &str) -> Vec<u8> {
    let mut reader = store.open(name).await.unwrap();
    let mut out = Vec::new();
    loop {
        let (chunk, done) = reader.read_at(out.len() as u64, 100_000).await.unwrap();
        out.extend_from_slice(&chunk);
        if done {
            return out;
        }
    }
}

#[tokio::test]
async fn checkpoints_survive_reopening_and_deletes_are_durable() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbCheckpointStore::open_async(directory.path()).await.unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = store.create(meta("before-upgrade", 42)).await.unwrap();
    for chunk in data.chunks(70_000) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    let info = writer.finish(crc32c::crc32c(&data)).await.unwrap();
    assert_eq!(info.size_bytes, data.len() as u64);
    assert_eq!(info.meta, meta("before-upgrade", 42));
    let mut writer = store.create(meta("second", 50)).await.unwrap();
    writer.write(Bytes::from_static(b"small")).await.unwrap();
    writer.finish(7).await.unwrap();
    // A checkpoint abandoned half-way leaves nothing.
    let mut abandoned = store.create(meta("abandoned", 60)).await.unwrap();
    abandoned.write(Bytes::from_static(b"half")).await.unwrap();
    drop(abandoned);
    drop(store);

    let store = RedbCheckpointStore::open_async(directory.path()).await.unwrap();
    let listed = store.list().await.unwrap();
    assert_eq!(listed.iter().map(|i| i.meta.name.as_str()).collect::<Vec<_>>(), ["before-upgrade", "second"]);
    assert_eq!(listed[0], info);
    assert_eq!(read_all(&store, "before-upgrade").await, data);
    assert_eq!(store.open("second").await.unwrap().meta().last_index, LogIndex(50));
    assert_eq!(store.total_bytes().unwrap(), data.len() as u64 + 5);

    store.delete("second").await.unwrap();
    store.delete("never-existed").await.unwrap();
    drop(store);
    let store = RedbCheckpointStore::open_async(directory.path()).await.unwrap();
    assert_eq!(store.list().await.unwrap().len(), 1);
    assert!(matches!(store.open("second").await, Err(StorageError::CheckpointNotFound(_))));
}

#[tokio::test]
async fn a_damaged_info_file_fails_the_open_and_names_the_checkpoint() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbCheckpointStore::open_async(directory.path()).await.unwrap();
    let mut writer = store.create(meta("kept", 9)).await.unwrap();
    writer.write(Bytes::from_static(b"state")).await.unwrap();
    writer.finish(1).await.unwrap();
    drop(store);
    let info = directory.path().join("kept").join("info");
    let mut bytes = std::fs::read(&info).unwrap();
    bytes[3] ^= 0x40;
    std::fs::write(&info, bytes).unwrap();
    match RedbCheckpointStore::open_async(directory.path()).await {
        Err(StorageError::Corrupt(message)) => assert!(message.contains("kept"), "{message}"),
        other => panic!("expected a corruption error, got {other:?}"),
    }
}

#[tokio::test]
async fn names_that_are_not_plain_file_names_are_refused() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbCheckpointStore::open_async(directory.path()).await.unwrap();
    for name in ["../escape", "a/b", "", ".hidden"] {
        assert!(matches!(store.create(meta(name, 1)).await, Err(StorageError::InvalidWrite(_))), "{name:?}");
    }
}
