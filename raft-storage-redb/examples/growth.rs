//! File growth of the redb log store over long append → snapshot → compact
//! cycles (the BoltDB risk named in the design, §4).
//!
//! ```sh
//! cargo run --release -p raft-storage-redb --example growth
//! cargo run --release -p raft-storage-redb --example growth -- --cycles 3 --entries 100000 --no-file-compaction
//! ```
//!
//! Each cycle appends `--entries` entries of `--entry-bytes` bytes in
//! durable writes of `--batch` entries, records a snapshot at the last
//! index and compacts everything, then prints the file size. It ends with
//! the ratio of the last cycle's size to the first's (the target is ≤ 2);
//! sizes count the database and the write-ahead log's segment files.
//! Before the last cycle's compaction it reopens the store with the full
//! log in it and prints how long opening (with and without verifying every
//! page) and `read_state` take: the restart time with a long log.

use std::time::Instant;

use bytes::Bytes;
use raft_core::storage::{LogStore, LogWrite};
use raft_core::types::{Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta, Term};
use raft_storage_redb::{LogStoreOptions, RedbLogStore};

struct Settings {
    cycles: u64,
    entries: u64,
    batch: u64,
    entry_bytes: usize,
    file_compaction: bool,
    directory: Option<std::path::PathBuf>,
}

fn parse_settings() -> Result<Settings, String> {
    let mut settings = Settings {
        cycles: 10,
        entries: 1_000_000,
        batch: 256,
        entry_bytes: 256,
        file_compaction: true,
        directory: None,
    };
    let mut arguments = std::env::args().skip(1);
    while let Some(flag) = arguments.next() {
        let mut value = || arguments.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--cycles" => settings.cycles = value()?.parse().map_err(|e| format!("--cycles: {e}"))?,
            "--entries" => settings.entries = value()?.parse().map_err(|e| format!("--entries: {e}"))?,
            "--batch" => settings.batch = value()?.parse().map_err(|e| format!("--batch: {e}"))?,
            "--entry-bytes" => {
                settings.entry_bytes = value()?.parse().map_err(|e| format!("--entry-bytes: {e}"))?
            }
            "--directory" => settings.directory = Some(value()?.into()),
            "--no-file-compaction" => settings.file_compaction = false,
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if settings.batch == 0 || settings.entries == 0 || settings.cycles == 0 {
        return Err("--cycles, --entries and --batch must be positive".into());
    }
    Ok(settings)
}

fn batch(first: u64, count: u64, data: &Bytes) -> Vec<Entry> {
    (first..first + count)
        .map(|index| Entry {
            term: Term(1),
            index: LogIndex(index),
            payload: EntryPayload::Command { client: None, data: data.clone() },
        })
        .collect()
}

async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let scratch = tempfile::tempdir_in(settings.directory.clone().unwrap_or_else(std::env::temp_dir))?;
    let mut options = LogStoreOptions::default();
    if !settings.file_compaction {
        options.file_compaction_free_fraction = None;
    }
    let path = scratch.path().join("log.redb");
    let mut store = RedbLogStore::open_async(&path, options.clone()).await?;
    let data = Bytes::from(vec![0x5a; settings.entry_bytes]);
    let mut next = 1u64;
    let mut first_size = None;
    let mut first_peak = None;
    let mut last_peak = 0;
    println!("cycle  peak_file_bytes  peak_allocated_bytes  peak_wal_bytes  file_bytes/entry  after_compact_bytes  after_compact_wal_bytes  append_s  entries/s  compact_s");
    for cycle in 1..=settings.cycles {
        let started = Instant::now();
        let end = next + settings.entries;
        while next < end {
            let count = settings.batch.min(end - next);
            let hard_state = HardState { term: Term(1), vote: NodeId(1), commit: LogIndex(next + count - 1) };
            let write = LogWrite {
                install_snapshot: None,
                entries: batch(next, count, &data),
                hard_state: Some(hard_state),
                sync: true,
            };
            store.write(write).await?;
            next += count;
        }
        let append_seconds = started.elapsed().as_secs_f64();
        let peak = store.space_usage().await?;
        let peak_wal = wal_bytes(&store);
        first_peak.get_or_insert(peak.file_bytes + peak_wal);
        last_peak = peak.file_bytes + peak_wal;
        if cycle == settings.cycles {
            store = measure_restart(store, &path, &options).await?;
        }
        let last = LogIndex(next - 1);
        let compacting = Instant::now();
        let membership = Membership::with_voters([NodeId(1)]);
        store.set_snapshot(SnapshotMeta { last_index: last, last_term: Term(1), membership }).await?;
        store.compact(last).await?;
        let compact_seconds = compacting.elapsed().as_secs_f64();
        let size = store.file_size_bytes()?;
        let wal = wal_bytes(&store);
        first_size.get_or_insert(size + wal);
        println!(
            "{cycle:>5}  {:>15}  {:>20}  {peak_wal:>14}  {:>16.1}  {size:>19}  {wal:>23}  {append_seconds:>8.2}  {:>9.0}  {compact_seconds:>9.2}",
            peak.file_bytes,
            peak.allocated_bytes,
            (peak.file_bytes + peak_wal) as f64 / settings.entries as f64,
            settings.entries as f64 / append_seconds,
        );
    }
    let last_size = store.file_size_bytes()? + wal_bytes(&store);
    if let Some(first) = first_size {
        println!(
            "database + WAL after the last cycle / after the first: {:.2}",
            last_size as f64 / first as f64
        );
    }
    if let Some(first) = first_peak {
        println!(
            "database + WAL at the last cycle's peak / the first's: {:.2}",
            last_peak as f64 / first as f64
        );
    }
    Ok(())
}

/// Bytes of the store's WAL segment files.
fn wal_bytes(store: &RedbLogStore) -> u64 {
    std::fs::read_dir(store.wal_directory())
        .map(|items| items.filter_map(|item| item.ok()?.metadata().ok()).map(|meta| meta.len()).sum())
        .unwrap_or(0)
}

/// Closes the store and times reopening it, with and without verifying
/// every page, and reading the state back.
async fn measure_restart(
    store: RedbLogStore,
    path: &std::path::Path,
    options: &LogStoreOptions,
) -> Result<RedbLogStore, Box<dyn std::error::Error>> {
    drop(store);
    let mut unverified = options.clone();
    unverified.verify_on_open = false;
    let started = Instant::now();
    drop(RedbLogStore::open_async(path, unverified).await?);
    let open_unverified = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let store = RedbLogStore::open_async(path, options.clone()).await?;
    let open_verified = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let state = store.read_state().await?;
    let read_seconds = started.elapsed().as_secs_f64();
    println!(
        "restart with {} entries ({} bytes): open {open_unverified:.2} s, open verifying every page {open_verified:.2} s, read_state {read_seconds:.2} s",
        state.entries.len(),
        store.file_size_bytes()?
    );
    Ok(store)
}

fn main() {
    let settings = match parse_settings() {
        Ok(settings) => settings,
        Err(message) => {
            eprintln!("growth: {message}");
            std::process::exit(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("a tokio runtime");
    if let Err(error) = runtime.block_on(run(settings)) {
        eprintln!("growth: {error}");
        std::process::exit(1);
    }
}
