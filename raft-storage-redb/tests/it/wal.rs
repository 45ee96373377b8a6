//! The write-ahead log: torn tails at every offset of the last record,
//! damage in the middle, truncated segments, segment deletion after
//! checkpoints, replay after a checkpoint, compaction across the WAL and
//! redb.
//!
//! A crash is simulated by copying the database and the WAL directory while
//! the store is open and checkpoints are held back (a long interval), so the
//! copy holds exactly what a process killed at that moment leaves on disk.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use raft_core::protocol::RestoredState;
use raft_core::storage::{LogStore, LogWrite, StorageError};
use raft_core::types::{HardState, LogIndex, NodeId, Term};
use raft_storage_redb::{LogStoreOptions, RedbLogStore};

use crate::support::{entry, meta, write};

const SEGMENT_BYTES: u64 = 256 << 10;

/// Options under which nothing is checkpointed unless asked.
fn held_back() -> LogStoreOptions {
    let mut options = LogStoreOptions::default();
    options.wal_segment_bytes = SEGMENT_BYTES;
    options.checkpoint_interval = Duration::from_secs(3_600);
    options.checkpoint_bytes = u64::MAX;
    options.max_pending_bytes = u64::MAX;
    options
}

fn wal_of(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap().to_os_string();
    name.push(".wal");
    path.with_file_name(name)
}

/// What a crash at this moment leaves: a copy of the database and its WAL.
fn crash_copy(store: &RedbLogStore, into: &Path) -> PathBuf {
    fs::create_dir_all(into).unwrap();
    let target = into.join("log.redb");
    fs::copy(store.path(), &target).unwrap();
    let wal = wal_of(&target);
    fs::create_dir_all(&wal).unwrap();
    for item in fs::read_dir(store.wal_directory()).unwrap() {
        let item = item.unwrap();
        fs::copy(item.path(), wal.join(item.file_name())).unwrap();
    }
    target
}

/// The segment files of a WAL directory, in order.
fn segments(wal: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = fs::read_dir(wal)
        .unwrap()
        .map(|item| item.unwrap().path())
        .filter(|path| path.extension().is_some_and(|extension| extension == "seg"))
        .collect();
    paths.sort();
    paths
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().build().unwrap()
}

fn read(path: &Path) -> Result<RestoredState, StorageError> {
    runtime().block_on(async {
        let store = RedbLogStore::open_async(path, held_back()).await?;
        store.read_state().await
    })
}

/// The parts of a restored state, comparable.
type Parts = (HardState, Option<raft_core::types::SnapshotMeta>, Vec<raft_core::types::Entry>);

fn parts(state: &RestoredState) -> Parts {
    (state.hard_state, state.snapshot.clone(), state.entries.clone())
}

fn hard_state(commit: u64) -> HardState {
    HardState { term: Term(1), vote: NodeId(1), commit: LogIndex(commit) }
}

/// Writes of three small entries each; write `n` covers `3n+1 ..= 3n+3`.
fn small_write(n: u64) -> LogWrite {
    write((3 * n + 1..=3 * n + 3).map(|index| entry(index, 1, 40)).collect(), Some(hard_state(3 * n)))
}

/// Copies of the store after `writes` writes and after one more, and the
/// byte range of the last record in the (only) segment holding records.
struct LastRecord {
    before: PathBuf,
    after: PathBuf,
    segment_name: std::ffi::OsString,
    range: std::ops::Range<usize>,
    expected_before: RestoredState,
    _directory: tempfile::TempDir,
}

fn last_record(writes: u64) -> LastRecord {
    let directory = tempfile::tempdir().unwrap();
    let runtime = runtime();
    let (before, after, expected_before) = runtime.block_on(async {
        let store =
            RedbLogStore::open_async(directory.path().join("live/log.redb"), held_back()).await.unwrap();
        for n in 0..writes {
            store.write(small_write(n)).await.unwrap();
        }
        let expected_before = store.read_state().await.unwrap();
        let before = crash_copy(&store, &directory.path().join("before"));
        store.write(small_write(writes)).await.unwrap();
        let after = crash_copy(&store, &directory.path().join("after"));
        (before, after, expected_before)
    });
    let segment = segments(&wal_of(&after)).into_iter().next().unwrap();
    let segment_name = segment.file_name().unwrap().to_os_string();
    let old = fs::read(wal_of(&before).join(&segment_name)).unwrap();
    let new = fs::read(&segment).unwrap();
    let start = old.iter().zip(&new).position(|(a, b)| a != b).unwrap();
    let end = new.iter().rposition(|byte| *byte != 0).unwrap() + 1;
    LastRecord { before, after, segment_name, range: start..end, expected_before, _directory: directory }
}

impl LastRecord {
    /// A copy of the "after" store with its segment changed by `damage`.
    fn damaged(&self, name: &str, damage: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
        let mut damage = Some(damage);
        let root = self.after.parent().unwrap().with_file_name(name);
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(wal_of(&root.join("log.redb"))).unwrap();
        let target = root.join("log.redb");
        fs::copy(&self.after, &target).unwrap();
        for path in segments(&wal_of(&self.after)) {
            let mut bytes = fs::read(&path).unwrap();
            if path.file_name().unwrap() == self.segment_name {
                if let Some(damage) = damage.take() {
                    damage(&mut bytes);
                }
            }
            fs::write(wal_of(&target).join(path.file_name().unwrap()), bytes).unwrap();
        }
        target
    }
}

#[test]
fn a_torn_last_record_is_dropped_at_every_byte_offset() {
    let last = last_record(4);
    assert!(last.range.len() > 100, "the last record spans {:?}", last.range);
    let _ = &last.before;
    for cut in last.range.clone() {
        // The write reached the disk up to `cut`; the rest is still zeros.
        let path = last.damaged(&format!("cut-{cut}"), |bytes| bytes[cut..last.range.end].fill(0));
        let state = read(&path).unwrap_or_else(|error| panic!("torn at byte {cut}: {error}"));
        assert_eq!(
            parts(&state),
            parts(&last.expected_before),
            "torn at byte {cut}: exactly the acknowledged writes"
        );
        // Garbage instead of zeros (a sector of old data) is a torn tail too.
        let path = last.damaged(&format!("garbage-{cut}"), |bytes| bytes[cut..last.range.end].fill(0xa7));
        let state = read(&path).unwrap_or_else(|error| panic!("garbage from byte {cut}: {error}"));
        assert_eq!(parts(&state), parts(&last.expected_before), "garbage from byte {cut}");
    }
}

#[test]
fn writing_after_a_torn_tail_continues_the_log() {
    let last = last_record(4);
    let cut = last.range.start + last.range.len() / 2;
    let path = last.damaged("torn-then-written", |bytes| bytes[cut..last.range.end].fill(0xff));
    let crash = path.parent().unwrap().with_file_name("torn-then-written-crash");
    let expected = runtime().block_on(async {
        let store = RedbLogStore::open_async(&path, held_back()).await.unwrap();
        store.write(small_write(4)).await.unwrap();
        store.write(small_write(5)).await.unwrap();
        let expected = store.read_state().await.unwrap();
        assert_eq!(expected.entries.len(), 18);
        crash_copy(&store, &crash);
        expected
    });
    let copy = crash.join("log.redb");
    assert_eq!(
        parts(&read(&copy).unwrap()),
        parts(&expected),
        "the rewritten tail replays after another crash"
    );
    assert_eq!(parts(&read(&path).unwrap()), parts(&expected), "and after a clean close");
}

#[test]
fn a_flipped_bit_in_a_middle_record_is_corrupt() {
    let last = last_record(4);
    // Every record but the last lies before `range.start`; flip bits in the
    // first and in a middle one (header and body alike).
    let first_record = 64..(64 + 24);
    let full = read(&last.after).unwrap();
    let mut refused = 0;
    let mut offsets: Vec<usize> = first_record.collect();
    offsets.extend((64..last.range.start).step_by(37));
    for offset in offsets {
        for bit in [0, 5] {
            let path = last.damaged(&format!("flip-{offset}-{bit}"), |bytes| bytes[offset] ^= 1 << bit);
            match read(&path) {
                Err(StorageError::Corrupt(message)) => {
                    assert!(message.contains("write-ahead log"), "{message}");
                    refused += 1;
                }
                // A flip in the zero padding between records damages nothing.
                Ok(state) if parts(&state) == parts(&full) => {}
                other => panic!("bit {bit} at offset {offset} of an acknowledged record: {other:?}"),
            }
        }
    }
    assert!(refused >= 50, "only {refused} flips were refused");
}

#[test]
fn a_truncated_or_damaged_segment_header_is_corrupt() {
    let last = last_record(2);
    for (name, damage) in [
        (
            "truncated-mid",
            Box::new(|bytes: &mut Vec<u8>| bytes.truncate(bytes.len() / 2)) as Box<dyn Fn(&mut Vec<u8>)>,
        ),
        ("truncated-header", Box::new(|bytes: &mut Vec<u8>| bytes.truncate(20))),
        ("empty", Box::new(|bytes: &mut Vec<u8>| bytes.clear())),
        ("magic", Box::new(|bytes: &mut Vec<u8>| bytes[2] ^= 1)),
        ("capacity", Box::new(|bytes: &mut Vec<u8>| bytes[26] ^= 1)),
        ("number", Box::new(|bytes: &mut Vec<u8>| bytes[16] ^= 1)),
    ] {
        let path = last.damaged(name, |bytes| damage(bytes));
        assert!(matches!(read(&path), Err(StorageError::Corrupt(_))), "{name}: {:?}", read(&path));
    }
}

#[test]
fn a_missing_wal_directory_is_corrupt() {
    let last = last_record(2);
    fs::remove_dir_all(wal_of(&last.after)).unwrap();
    assert!(matches!(read(&last.after), Err(StorageError::Corrupt(message)) if message.contains("missing")));
}

#[tokio::test]
async fn checkpoints_delete_covered_segments_and_replay_continues_after_them() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("live/log.redb");
    let mut options = held_back();
    options.wal_segment_bytes = 64 << 10;
    let store = RedbLogStore::open_async(&path, options.clone()).await.unwrap();
    // About 40 KiB per write: a new segment every write or two.
    for n in 0..40u64 {
        let entries = (n * 40 + 1..=n * 40 + 40).map(|index| entry(index, 1, 1_000)).collect();
        store.write(write(entries, Some(hard_state(n * 40)))).await.unwrap();
    }
    let before = store.wal_segment_count().unwrap();
    assert!(before >= 20, "{before} segments for 40 writes of 40 KiB");
    store.checkpoint().await.unwrap();
    let after = store.wal_segment_count().unwrap();
    assert!(after <= 2, "after a checkpoint only the current segment (and a spare) remain: {after}");
    // Writes after the checkpoint live only in the WAL; a crash replays them.
    store.write(write(vec![entry(1_601, 2, 10)], Some(hard_state(1_600)))).await.unwrap();
    store.write(write(vec![entry(1_600, 3, 10)], Some(hard_state(1_599)))).await.unwrap();
    let expected = store.read_state().await.unwrap();
    assert_eq!(expected.entries.len(), 1_600);
    assert_eq!(expected.entries.last().unwrap(), &entry(1_600, 3, 10));
    let copy = crash_copy(&store, &directory.path().join("crash"));
    let replayed = RedbLogStore::open_async(&copy, options.clone()).await.unwrap();
    assert_eq!(parts(&replayed.read_state().await.unwrap()), parts(&expected));
    assert_eq!(replayed.entries(LogIndex(1_590), LogIndex(2_000)).await.unwrap(), expected.entries[1_589..]);
    drop(replayed);
    drop(store);
    let reopened = RedbLogStore::open_async(&path, options).await.unwrap();
    assert_eq!(
        parts(&reopened.read_state().await.unwrap()),
        parts(&expected),
        "a clean close checkpoints everything"
    );
    assert!(reopened.wal_segment_count().unwrap() <= 2);
}

#[tokio::test]
async fn background_checkpoints_keep_the_pending_writes_bounded() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("log.redb");
    let mut options = LogStoreOptions::default();
    options.wal_segment_bytes = 64 << 10;
    options.checkpoint_bytes = 32 << 10;
    options.max_pending_bytes = 64 << 10;
    let store = RedbLogStore::open_async(&path, options.clone()).await.unwrap();
    for n in 0..200u64 {
        let entries = (n * 10 + 1..=n * 10 + 10).map(|index| entry(index, 1, 1_000)).collect();
        store.write(write(entries, Some(hard_state(n * 10)))).await.unwrap();
    }
    // 2 MB went through 64 KiB segments; covered ones were deleted.
    assert!(store.wal_segment_count().unwrap() < 10, "{} segments", store.wal_segment_count().unwrap());
    let state = store.read_state().await.unwrap();
    assert_eq!(state.entries.len(), 2_000);
    drop(store);
    let store = RedbLogStore::open_async(&path, options).await.unwrap();
    assert_eq!(parts(&store.read_state().await.unwrap()), parts(&state));
}

#[tokio::test]
async fn truncation_install_and_compaction_span_the_wal_and_redb() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("live/log.redb");
    let store = RedbLogStore::open_async(&path, held_back()).await.unwrap();
    store.write(write((1..=100).map(|index| entry(index, 1, 50)).collect(), None)).await.unwrap();
    store.checkpoint().await.unwrap();
    // In the WAL only: more entries, then a truncation reaching into redb.
    store.write(write((101..=200).map(|index| entry(index, 1, 50)).collect(), None)).await.unwrap();
    store
        .write(write((90..=95).map(|index| entry(index, 2, 50)).collect(), Some(hard_state(80))))
        .await
        .unwrap();
    let state = store.read_state().await.unwrap();
    assert_eq!(state.entries.len(), 95);
    assert_eq!(state.entries[89], entry(90, 2, 50));
    assert_eq!(store.entries(LogIndex(85), LogIndex(300)).await.unwrap().len(), 11);
    let gap = store.write(write(vec![entry(97, 2, 50)], None)).await;
    assert!(matches!(gap, Err(StorageError::InvalidWrite(_))), "{gap:?}");
    let copy = crash_copy(&store, &directory.path().join("crash-1"));
    assert_eq!(
        parts(&RedbLogStore::open_async(&copy, held_back()).await.unwrap().read_state().await.unwrap()),
        parts(&state)
    );

    // Snapshot and compaction while the tail is in the WAL.
    store.write(write((96..=120).map(|index| entry(index, 2, 50)).collect(), None)).await.unwrap();
    store.set_snapshot(meta(110, 2)).await.unwrap();
    store.compact(LogIndex(110)).await.unwrap();
    store.write(write((121..=130).map(|index| entry(index, 2, 50)).collect(), None)).await.unwrap();
    assert!(matches!(store.entries(LogIndex(100), LogIndex(115)).await, Err(StorageError::Compacted { .. })));
    let state = store.read_state().await.unwrap();
    assert_eq!(state.snapshot, Some(meta(110, 2)));
    assert_eq!(state.entries.first().unwrap().index, LogIndex(111));
    assert_eq!(state.entries.len(), 20);

    // An installed snapshot in the WAL replaces everything below it.
    let install = LogWrite {
        install_snapshot: Some(meta(500, 3)),
        entries: vec![entry(501, 3, 50)],
        hard_state: Some(hard_state(500)),
        sync: true,
    };
    store.write(install).await.unwrap();
    let state = store.read_state().await.unwrap();
    assert_eq!(state.snapshot, Some(meta(500, 3)));
    assert_eq!(state.entries, vec![entry(501, 3, 50)]);
    assert!(matches!(store.entries(LogIndex(120), LogIndex(130)).await, Err(StorageError::Compacted { .. })));
    let copy = crash_copy(&store, &directory.path().join("crash-2"));
    assert_eq!(
        parts(&RedbLogStore::open_async(&copy, held_back()).await.unwrap().read_state().await.unwrap()),
        parts(&state)
    );
    drop(store);
    assert_eq!(
        parts(&RedbLogStore::open_async(&path, held_back()).await.unwrap().read_state().await.unwrap()),
        parts(&state)
    );
}
