//! A writer for the kill -9 tests: opens the store in the given directory,
//! checks what it finds, then appends forever, printing `acked N` once the
//! write that ends at index N is durable. The test kills it at random
//! moments and checks that every acknowledged entry survived.
//!
//! With `--unsynced`, the store records its durable end
//! (`LogStoreOptions::record_synced_position`) and every acknowledged
//! write is followed by one that only moves the commit index without a
//! flush, as the runtime does, so a kill often leaves an unflushed record
//! for the test to discard as a power failure would.
//!
//! Usage: `raft-storage-redb-crash-writer DIRECTORY SEED [--unsynced]`

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use raft_core::storage::{LogStore, LogWrite};
use raft_core::types::{Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raft_storage_redb::{LogStoreOptions, RedbLogStore};

/// The payload of the entry at `index`: derived from the index, so a reader
/// can check every byte without knowing what was written.
fn payload(index: u64) -> Bytes {
    let mut data = format!("entry {index} ").into_bytes();
    let length = 64 + (index % 193) as usize;
    while data.len() < length {
        data.push(b'a' + (data.len() as u64 + index) as u8 % 26);
    }
    Bytes::from(data)
}

fn entry(index: u64) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Command { client: None, data: payload(index) },
    }
}

/// SplitMix64, enough to vary batch sizes.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn run(directory: PathBuf, mut random: u64, unsynced: bool) -> Result<(), String> {
    let mut options = LogStoreOptions::default();
    options.record_synced_position = unsynced;
    let log =
        RedbLogStore::open_with(directory.join("log.redb"), options).map_err(|e| format!("open: {e}"))?;
    let state = log.read_state().await.map_err(|e| format!("read_state: {e}"))?;
    let mut last = state.snapshot.as_ref().map_or(0, |s| s.last_index.get());
    for entry in &state.entries {
        let expected = EntryPayload::Command { client: None, data: payload(entry.index.get()) };
        if entry.index.get() != last + 1 || entry.payload != expected {
            return Err(format!("entry {} is not what was written", entry.index));
        }
        last = entry.index.get();
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "start {last}").map_err(|e| e.to_string())?;
    loop {
        let batch = 1 + next_random(&mut random) % 16;
        let entries: Vec<Entry> = (last + 1..=last + batch).map(entry).collect();
        let previous = last;
        last += batch;
        let commit = if unsynced { previous } else { last };
        let hard_state = HardState { term: Term(1), vote: NodeId(1), commit: LogIndex(commit) };
        log.write(LogWrite { install_snapshot: None, entries, hard_state: Some(hard_state), sync: true })
            .await
            .map_err(|e| format!("write: {e}"))?;
        writeln!(stdout, "acked {last}").map_err(|e| e.to_string())?;
        stdout.flush().map_err(|e| e.to_string())?;
        if unsynced {
            let hard_state = HardState { term: Term(1), vote: NodeId(1), commit: LogIndex(last) };
            log.write(LogWrite {
                install_snapshot: None,
                entries: Vec::new(),
                hard_state: Some(hard_state),
                sync: false,
            })
            .await
            .map_err(|e| format!("write: {e}"))?;
        }
        // Now and then take a snapshot and compact, so kills also land in
        // the middle of those.
        if next_random(&mut random).is_multiple_of(20) {
            let keep = last.saturating_sub(next_random(&mut random) % 64);
            let meta = SnapshotMeta {
                last_index: LogIndex(keep),
                last_term: Term(1),
                membership: Membership::with_voters([NodeId(1)]),
            };
            log.set_snapshot(meta).await.map_err(|e| format!("set_snapshot: {e}"))?;
            log.compact(LogIndex(keep)).await.map_err(|e| format!("compact: {e}"))?;
        }
    }
}

fn main() -> ExitCode {
    let mut arguments = std::env::args().skip(1);
    let (Some(directory), Some(seed)) = (arguments.next(), arguments.next()) else {
        eprintln!("usage: raft-storage-redb-crash-writer DIRECTORY SEED [--unsynced]");
        return ExitCode::from(2);
    };
    let unsynced = match arguments.next().as_deref() {
        None => false,
        Some("--unsynced") => true,
        Some(other) => {
            eprintln!("unknown argument {other:?}; usage: raft-storage-redb-crash-writer DIRECTORY SEED [--unsynced]");
            return ExitCode::from(2);
        }
    };
    let Ok(seed) = seed.parse::<u64>() else {
        eprintln!("the seed must be a number, got {seed}");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("cannot start tokio: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(PathBuf::from(directory), seed, unsynced)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("crash writer: {error}");
            ExitCode::FAILURE
        }
    }
}
