//! The snapshot store's files: reads at any offset, crash leftovers, and
//! damaged files.

use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use raft_core::storage::{SnapshotStore, StorageError};
use raft_core::types::LogIndex;
use raft_storage_redb::RedbSnapshotStore;

use crate::support::meta;

/// Deterministic, non-repeating data: a block moved elsewhere differs.
fn data(length: usize) -> Vec<u8> {
    (0..length as u64).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
}

async fn write_snapshot(store: &RedbSnapshotStore, index: u64, content: &[u8], chunk: usize) -> u64 {
    let mut writer = store.create(meta(index, 1)).await.unwrap();
    for piece in content.chunks(chunk.max(1)) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    writer.finish().await.unwrap()
}

async fn read_all(store: &RedbSnapshotStore, index: u64, chunk: u64) -> Result<Vec<u8>, StorageError> {
    let mut reader = store.open(LogIndex(index)).await?;
    let mut out = Vec::new();
    loop {
        let (piece, done) = reader.read_at(out.len() as u64, chunk).await?;
        out.extend_from_slice(&piece);
        if done {
            return Ok(out);
        }
    }
}

fn snapshot_path(directory: &Path, index: u64) -> PathBuf {
    directory.join(format!("{index:020}.snapshot"))
}

#[tokio::test]
async fn reads_at_any_offset_and_size_return_the_written_bytes() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    let content = data(300_001);
    assert_eq!(write_snapshot(&store, 5, &content, 10_007).await, content.len() as u64);
    for chunk in [999, 65_536, 65_537, 1 << 20] {
        assert_eq!(read_all(&store, 5, chunk).await.unwrap(), content, "chunk size {chunk}");
    }
    let mut reader = store.open(LogIndex(5)).await.unwrap();
    for offset in 65_530..65_542 {
        let (byte, _) = reader.read_at(offset, 1).await.unwrap();
        assert_eq!(&byte[..], &content[offset as usize..offset as usize + 1], "one byte at {offset}");
    }
    let (middle, done) = reader.read_at(131_000, 2_000).await.unwrap();
    assert_eq!(&middle[..], &content[131_000..133_000]);
    assert!(!done);
    let (past, done) = reader.read_at(400_000, 10).await.unwrap();
    assert!(past.is_empty() && done, "a read past the end is empty and done");
}

#[tokio::test]
async fn an_empty_snapshot_round_trips() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    assert_eq!(write_snapshot(&store, 3, &[], 1).await, 0);
    drop(store);
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    assert_eq!(read_all(&store, 3, 100).await.unwrap(), Vec::<u8>::new());
}

#[tokio::test]
async fn leftovers_of_a_crashed_writer_are_removed_on_open() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    write_snapshot(&store, 10, &data(1_000), 100).await;
    // A crash mid-write leaves a partial file (no destructor ran).
    let mut writer = store.create(meta(20, 2)).await.unwrap();
    writer.write(Bytes::from(data(70_000))).await.unwrap();
    std::mem::forget(writer);
    let partial: Vec<_> = fs::read_dir(directory.path()).unwrap().filter_map(Result::ok).collect();
    assert_eq!(partial.len(), 2, "the partial file exists before the restart");
    drop(store);
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    let names: Vec<String> = fs::read_dir(directory.path())
        .unwrap()
        .map(|item| item.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![format!("{:020}.snapshot", 10)], "only the finished snapshot is left");
    assert_eq!(store.latest().await.unwrap(), Some(meta(10, 1)));
}

#[tokio::test]
async fn retain_deletes_older_files_and_keeps_newer_ones() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    for index in [10, 20, 30] {
        write_snapshot(&store, index, &data(100), 10).await;
    }
    store.retain(LogIndex(20)).await.unwrap();
    assert!(!snapshot_path(directory.path(), 10).exists());
    assert!(snapshot_path(directory.path(), 20).exists() && snapshot_path(directory.path(), 30).exists());
    assert!(matches!(store.open(LogIndex(10)).await, Err(StorageError::SnapshotNotFound(_))));
    drop(store);
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    assert_eq!(store.latest().await.unwrap(), Some(meta(30, 1)));
}

#[tokio::test]
async fn a_flipped_bit_in_the_data_is_reported_when_its_block_is_read() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    let content = data(200_000);
    write_snapshot(&store, 7, &content, 65_536).await;
    let path = snapshot_path(directory.path(), 7);
    let mut bytes = fs::read(&path).unwrap();
    let in_block_two = bytes.len() / 2 + 10_000;
    bytes[in_block_two] ^= 0x04;
    fs::write(&path, bytes).unwrap();
    let mut reader = store.open(LogIndex(7)).await.unwrap();
    let (first, _) = reader.read_at(0, 65_536).await.unwrap();
    assert_eq!(&first[..], &content[..65_536], "undamaged blocks still read");
    let damaged = read_all(&store, 7, 65_536).await;
    assert!(
        matches!(&damaged, Err(StorageError::Corrupt(message)) if message.contains("block")),
        "the damaged block is refused: {damaged:?}"
    );
}

#[tokio::test]
async fn damaged_or_truncated_snapshot_files_fail_the_open() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    write_snapshot(&store, 9, &data(150_000), 65_536).await;
    drop(store);
    let path = snapshot_path(directory.path(), 9);
    let original = fs::read(&path).unwrap();
    let damages: Vec<(&str, Vec<u8>)> = vec![
        ("magic", flipped(&original, 0)),
        ("version", flipped(&original, 8)),
        ("metadata", flipped(&original, 22)),
        ("trailer size", flipped(&original, original.len() - 20)),
        ("trailer checksum", flipped(&original, original.len() - 1)),
        ("truncated by one byte", original[..original.len() - 1].to_vec()),
        ("truncated to half", original[..original.len() / 2].to_vec()),
        ("truncated to nothing", Vec::new()),
        ("extended", [original.clone(), vec![0; 10]].concat()),
    ];
    for (what, bytes) in damages {
        fs::write(&path, &bytes).unwrap();
        match RedbSnapshotStore::open(directory.path()) {
            Err(StorageError::Corrupt(message)) => {
                assert!(message.contains("00000000000000000009"), "{message}")
            }
            other => panic!("{what}: a damaged snapshot file must fail the open, got {other:?}"),
        }
    }
}

fn flipped(bytes: &[u8], at: usize) -> Vec<u8> {
    let mut copy = bytes.to_vec();
    copy[at] ^= 0x10;
    copy
}

#[tokio::test]
async fn a_newer_snapshot_format_is_refused() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    write_snapshot(&store, 4, &data(10), 10).await;
    drop(store);
    let path = snapshot_path(directory.path(), 4);
    let mut bytes = fs::read(&path).unwrap();
    bytes[8] = 2; // the version field
    let meta_length = u32::from_le_bytes(bytes[16..20].try_into().unwrap()) as usize;
    let checksum_at = 20 + meta_length;
    let checksum = crc32c::crc32c(&bytes[..checksum_at]);
    bytes[checksum_at..checksum_at + 4].copy_from_slice(&checksum.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    assert!(matches!(
        RedbSnapshotStore::open(directory.path()),
        Err(StorageError::UnsupportedVersion { found: 2, supported: 1 })
    ));
}

#[tokio::test]
async fn two_writers_of_one_index_do_not_collide() {
    let directory = tempfile::tempdir().unwrap();
    let store = RedbSnapshotStore::open(directory.path()).unwrap();
    let mut first = store.create(meta(8, 1)).await.unwrap();
    let mut second = store.create(meta(8, 1)).await.unwrap();
    first.write(Bytes::from_static(b"first")).await.unwrap();
    second.write(Bytes::from_static(b"second")).await.unwrap();
    first.finish().await.unwrap();
    second.finish().await.unwrap();
    assert_eq!(read_all(&store, 8, 100).await.unwrap(), b"second", "the last finished wins whole");
}
