//! Processes killed with SIGKILL at random moments: every write that was
//! acknowledged (returned with `sync`) must be there after the restart, and
//! the log must be valid.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use raft_core::storage::{LogStore, SnapshotStore};
use raft_core::types::{EntryPayload, LogIndex};
use raft_storage_redb::{RedbLogStore, RedbSnapshotStore};

use crate::support::meta;

const KILL_ROUNDS: u64 = 200;

/// The writer's payload for `index` (the same function as in the writer).
fn payload(index: u64) -> Vec<u8> {
    let mut data = format!("entry {index} ").into_bytes();
    let length = 64 + (index % 193) as usize;
    while data.len() < length {
        data.push(b'a' + (data.len() as u64 + index) as u8 % 26);
    }
    data
}

fn spawn_writer(directory: &Path, seed: u64, unsynced: bool) -> Child {
    Command::new(env!("CARGO_BIN_EXE_raft-storage-redb-crash-writer"))
        .arg(directory)
        .arg(seed.to_string())
        .args(unsynced.then_some("--unsynced"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the crash writer starts")
}

fn child_error(child: &mut Child) -> String {
    let _ = child.kill();
    let _ = child.wait();
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

/// Runs one writer until it acknowledged `acks` writes, then kills it with
/// SIGKILL (mid-write, most likely: it writes continuously). Returns the
/// index it started from and the highest index it acknowledged.
fn run_and_kill(directory: &Path, seed: u64, acks: u64, unsynced: bool) -> (u64, u64) {
    let mut child = spawn_writer(directory, seed, unsynced);
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let start = match lines.next() {
        Some(Ok(line)) if line.starts_with("start ") => line[6..].parse::<u64>().expect("a start index"),
        _ => panic!("round {seed}: the writer did not start: {}", child_error(&mut child)),
    };
    let mut acknowledged = start;
    for _ in 0..acks {
        match lines.next() {
            Some(Ok(line)) if line.starts_with("acked ") => {
                acknowledged = line[6..].parse().expect("an acknowledged index");
            }
            _ => panic!("round {seed}: the writer stopped: {}", child_error(&mut child)),
        }
    }
    child.kill().expect("SIGKILL");
    let _ = child.wait();
    (start, acknowledged)
}

#[test]
fn two_hundred_kills_lose_no_acknowledged_entry() {
    let directory = tempfile::tempdir().unwrap();
    let mut random = 0x5eed_u64;
    let mut highest_acknowledged = 0;
    for round in 0..KILL_ROUNDS {
        random = random.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let acks = 1 + (random >> 33) % 40;
        // The writer checks every entry it finds before it starts; it starts
        // from the last one, which must cover everything acknowledged.
        let (start, acknowledged) = run_and_kill(directory.path(), round, acks, false);
        assert!(
            start >= highest_acknowledged,
            "round {round}: the log ends at {start} but {highest_acknowledged} was acknowledged"
        );
        highest_acknowledged = acknowledged;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let log =
            RedbLogStore::open(directory.path().join("log.redb")).expect("the store opens after the kills");
        let state = log.read_state().await.expect("the log reads");
        let mut expected = state.snapshot.as_ref().map_or(0, |s| s.last_index.get()) + 1;
        for entry in &state.entries {
            assert_eq!(entry.index, LogIndex(expected), "the log is consecutive");
            let EntryPayload::Command { data, .. } = &entry.payload else { panic!("a command entry") };
            assert_eq!(data.as_ref(), payload(expected).as_slice(), "entry {expected} reads back exactly");
            expected += 1;
        }
        assert!(expected > highest_acknowledged, "every acknowledged entry survived the last kill");
        assert!(state.hard_state.commit.get() >= highest_acknowledged.min(expected - 1));
    });
}

/// After each kill, everything not flushed is thrown away, as a power
/// failure would (the store recorded where its flushed log ends): no
/// acknowledged write may depend on an unflushed one.
#[test]
fn fifty_power_failures_lose_only_unflushed_writes() {
    let directory = tempfile::tempdir().unwrap();
    let log_path = directory.path().join("log.redb");
    let mut highest_acknowledged = 0;
    let mut dropped_bytes = 0;
    for round in 0..50 {
        let (start, acknowledged) = run_and_kill(directory.path(), round, 1 + round % 7, true);
        assert!(
            start >= highest_acknowledged,
            "round {round}: the log ends at {start} but {highest_acknowledged} was acknowledged"
        );
        highest_acknowledged = acknowledged;
        dropped_bytes += raft_storage_redb::fault_injection::discard_unsynced_writes(&log_path)
            .unwrap_or_else(|error| panic!("round {round}: discarding the unflushed writes: {error}"));
    }
    // Every acknowledged write is followed by an unflushed one, so some
    // kills land before its flush: the test really dropped records.
    assert!(dropped_bytes > 0, "no kill left an unflushed record to drop");
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let log = RedbLogStore::open(&log_path).expect("the store opens after the power failures");
        let state = log.read_state().await.expect("the log reads");
        let last = state.entries.last().map_or(0, |entry| entry.index.get());
        assert!(last >= highest_acknowledged, "every acknowledged entry survived");
    });
}

#[test]
fn a_missing_synced_position_marker_is_a_clear_error() {
    let directory = tempfile::tempdir().unwrap();
    let log_path = directory.path().join("log.redb");
    drop(RedbLogStore::open(&log_path).unwrap());
    let error = raft_storage_redb::fault_injection::discard_unsynced_writes(&log_path)
        .expect_err("a store that did not record its synced position cannot be cut back");
    assert!(error.to_string().contains("record_synced_position"), "{error}");
}

#[test]
fn an_unfinished_snapshot_leaves_no_trace() {
    let directory = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    runtime.block_on(async {
        let path = directory.path().join("snapshots");
        let snapshots = RedbSnapshotStore::open(&path).unwrap();
        let mut unfinished = snapshots.create(meta(50, 5)).await.unwrap();
        unfinished.write(bytes::Bytes::from_static(b"never finished")).await.unwrap();
        // No destructor runs, as when the process dies: the temporary file stays.
        std::mem::forget(unfinished);
        drop(snapshots);
        assert!(std::fs::read_dir(&path).unwrap().count() > 0, "the crash left a temporary file");
        let snapshots = RedbSnapshotStore::open(&path).unwrap();
        assert_eq!(snapshots.latest().await.unwrap(), None, "the unfinished snapshot left no trace");
        assert_eq!(std::fs::read_dir(&path).unwrap().count(), 0, "its temporary file was removed");
    });
}
