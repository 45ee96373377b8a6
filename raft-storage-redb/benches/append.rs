//! Durable appends to the log store (its write-ahead log in front of redb)
//! beside a raw `write + fdatasync` loop on a preallocated plain file in the
//! same directory, measured in the same run so that the ratios mean
//! something on a noisy machine.
//!
//! ```sh
//! cargo bench -p raft-storage-redb --bench append
//! RAFT_BENCH_DIR=/some/disk cargo bench -p raft-storage-redb --bench append -- --quick
//! ```
//!
//! First a latency report: for batches of 1, 16 and 256 entries of 256
//! bytes, each round does one durable append to the store and then one
//! `pwrite` of as many raw bytes plus `fdatasync` to a plain file that was
//! zero-filled and synced beforehand (the best a log on this disk can do),
//! so both see the same disk weather; it prints p50 and p99 of each, their
//! ratio and the entries per second (rounds are back to back, so
//! background checkpoints are included). Then the on-disk size per entry,
//! then the restart time with 1,000,000 entries
//! (`RAFT_BENCH_RESTART_ENTRIES` changes it), then criterion's throughput
//! groups (`RAFT_BENCH_NO_CRITERION=1` skips them).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput};
use raft_core::storage::{LogStore, LogWrite};
use raft_core::types::{Entry, EntryPayload, HardState, LogIndex, NodeId, Term};
use raft_storage_redb::{LogStoreOptions, RedbLogStore};
use tempfile::TempDir;

const ENTRY_BYTES: usize = 256;
const BATCH_SIZES: [u64; 3] = [1, 16, 256];

fn bench_directory() -> TempDir {
    let base = std::env::var_os("RAFT_BENCH_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    tempfile::tempdir_in(base).expect("a scratch directory for the benchmark")
}

/// Appends durable batches of `size` entries, continuing the log.
struct Appender {
    store: RedbLogStore,
    next: u64,
    data: Bytes,
}

impl Appender {
    fn new(directory: &TempDir) -> Self {
        let store = RedbLogStore::open(directory.path().join("log.redb")).expect("open the store");
        Appender { store, next: 1, data: Bytes::from(vec![0x5a; ENTRY_BYTES]) }
    }

    fn next_write(&mut self, size: u64, sync: bool) -> LogWrite {
        let entries: Vec<Entry> = (self.next..self.next + size)
            .map(|index| Entry {
                term: Term(1),
                index: LogIndex(index),
                payload: EntryPayload::Command { client: None, data: self.data.clone() },
            })
            .collect();
        self.next += size;
        let hard_state = HardState { term: Term(1), vote: NodeId(1), commit: LogIndex(self.next - 1) };
        LogWrite { install_snapshot: None, entries, hard_state: Some(hard_state), sync }
    }
}

/// The raw baseline: writes at increasing offsets of a preallocated,
/// zero-filled and synced file and `fdatasync`s it, wrapping around at the
/// end (no file growth, no metadata to journal).
struct RawFile {
    file: File,
    buffer: Vec<u8>,
    offset: u64,
}

/// The raw file's size: 256 MiB, more than any latency run writes.
const RAW_FILE_BYTES: u64 = 256 << 20;

impl RawFile {
    fn new(directory: &TempDir) -> Self {
        let path = directory.path().join("raw.log");
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)
            .expect("open the raw file");
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RAW_FILE_BYTES / zeros.len() as u64 {
            file.write_all(&zeros).expect("zero-fill the raw file");
        }
        file.sync_all().expect("sync the raw file");
        RawFile { file, buffer: Vec::new(), offset: 0 }
    }

    fn append(&mut self, bytes: usize) {
        use std::os::unix::fs::FileExt;
        self.buffer.resize(bytes, 0xa5);
        if self.offset + bytes as u64 > RAW_FILE_BYTES {
            self.offset = 0;
        }
        self.file.write_all_at(&self.buffer, self.offset).expect("raw write");
        self.file.sync_data().expect("raw fdatasync");
        self.offset += bytes as u64;
    }
}

/// Polls a future to completion outside any runtime: the store then does
/// its disk work inline, so this measures the store without tokio's
/// blocking-pool hand-off.
fn run_inline<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let mut context = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut context) {
            return output;
        }
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let position = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[position.min(sorted.len() - 1)]
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// One interleaved latency run; prints one line.
fn latency_report(runtime: &tokio::runtime::Runtime, size: u64, rounds: usize, through_tokio: bool) {
    let directory = bench_directory();
    let mut appender = Appender::new(&directory);
    let mut raw = RawFile::new(&directory);
    let raw_bytes = size as usize * (ENTRY_BYTES + 16);
    let (mut store_times, mut raw_times) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for _ in 0..rounds {
        let write = appender.next_write(size, true);
        let started = Instant::now();
        if through_tokio {
            runtime.block_on(appender.store.write(write)).expect("durable append");
        } else {
            run_inline(appender.store.write(write)).expect("durable append");
        }
        store_times.push(started.elapsed());
        let started = Instant::now();
        raw.append(raw_bytes);
        raw_times.push(started.elapsed());
    }
    store_times.sort();
    raw_times.sort();
    let (store_p50, raw_p50) = (percentile(&store_times, 0.5), percentile(&raw_times, 0.5));
    let store_mean = store_times.iter().sum::<Duration>() / rounds as u32;
    println!(
        "batch {size:>3} {:<6}  store p50 {:>7.0} µs p99 {:>7.0} µs  {:>8.0} entries/s | raw write+fdatasync of {raw_bytes:>6} B p50 {:>7.0} µs p99 {:>7.0} µs | p50 ratio {:.2}",
        if through_tokio { "tokio" } else { "inline" },
        micros(store_p50),
        micros(percentile(&store_times, 0.99)),
        size as f64 / store_mean.as_secs_f64(),
        micros(raw_p50),
        micros(percentile(&raw_times, 0.99)),
        store_p50.as_secs_f64() / raw_p50.as_secs_f64(),
    );
}

/// Bytes on disk per stored entry after appending a long log in 256-entry
/// durable batches: the database and the WAL while open, the database
/// alone after a clean close (which checkpoints everything).
fn bytes_per_entry(runtime: &tokio::runtime::Runtime, entries: u64) {
    let directory = bench_directory();
    let mut appender = Appender::new(&directory);
    let empty = appender.store.file_size_bytes().expect("file size");
    while appender.next <= entries {
        let write = appender.next_write(256, true);
        runtime.block_on(appender.store.write(write)).expect("append");
    }
    let database = appender.store.file_size_bytes().expect("file size");
    let wal = directory_bytes(appender.store.wal_directory());
    let path = appender.store.path().to_path_buf();
    drop(appender);
    let closed = std::fs::metadata(&path).expect("file size").len();
    println!(
        "on disk: {entries} entries of {ENTRY_BYTES} B -> open: database {database} B + WAL {wal} B; \
         closed: database {closed} B ({:.1} B/entry; empty store {empty} B)",
        (closed - empty) as f64 / entries as f64
    );
}

fn directory_bytes(directory: &std::path::Path) -> u64 {
    std::fs::read_dir(directory)
        .map(|items| items.filter_map(|item| item.ok()?.metadata().ok()).map(|meta| meta.len()).sum())
        .unwrap_or(0)
}

/// Appends `entries` entries, closes the store, and times opening it and
/// `read_state` (the restart of a node with a long log).
fn restart(runtime: &tokio::runtime::Runtime, entries: u64) {
    let directory = bench_directory();
    let mut appender = Appender::new(&directory);
    let started = Instant::now();
    while appender.next <= entries {
        let size = 256.min(entries + 1 - appender.next);
        let write = appender.next_write(size, true);
        runtime.block_on(appender.store.write(write)).expect("append");
    }
    let append_seconds = started.elapsed().as_secs_f64();
    let path = appender.store.path().to_path_buf();
    let started = Instant::now();
    drop(appender);
    let close_seconds = started.elapsed().as_secs_f64();
    for (label, verify) in [("verifying every page", true), ("without page verification", false)] {
        let mut options = LogStoreOptions::default();
        options.verify_on_open = verify;
        let started = Instant::now();
        let store = runtime.block_on(RedbLogStore::open_async(&path, options)).expect("reopen");
        let opened = started.elapsed().as_secs_f64();
        let state = runtime.block_on(store.read_state()).expect("read_state");
        let total = started.elapsed().as_secs_f64();
        assert_eq!(state.entries.len() as u64, entries);
        println!(
            "restart with {entries} entries ({label}): open {opened:.2} s + read_state {:.2} s = {total:.2} s \
             (appending took {append_seconds:.1} s, closing {close_seconds:.2} s)",
            total - opened
        );
    }
}

fn criterion_groups(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = criterion.benchmark_group("durable_append");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for size in BATCH_SIZES {
        group.throughput(Throughput::Elements(size));
        let directory = bench_directory();
        let mut appender = Appender::new(&directory);
        group.bench_with_input(BenchmarkId::new("store", size), &size, |bencher, &size| {
            bencher.iter_custom(|iterations| {
                let writes: Vec<LogWrite> =
                    (0..iterations).map(|_| appender.next_write(size, true)).collect();
                let started = Instant::now();
                for write in writes {
                    runtime.block_on(appender.store.write(write)).expect("durable append");
                }
                started.elapsed()
            })
        });
        let mut raw = RawFile::new(&directory);
        group.bench_with_input(BenchmarkId::new("raw_fdatasync", size), &size, |bencher, &size| {
            bencher.iter(|| raw.append(size as usize * (ENTRY_BYTES + 16)))
        });
    }
    group.finish();
}

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().expect("a tokio runtime");
    let quick = std::env::args().any(|argument| argument == "--quick");
    let rounds = if quick { 200 } else { 1_000 };
    println!("latency: {rounds} interleaved rounds per line, {ENTRY_BYTES}-byte entries");
    for size in BATCH_SIZES {
        latency_report(&runtime, size, rounds, true);
    }
    latency_report(&runtime, 1, rounds, false);
    bytes_per_entry(&runtime, if quick { 20_000 } else { 200_000 });
    let restart_entries = std::env::var("RAFT_BENCH_RESTART_ENTRIES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(if quick { 100_000 } else { 1_000_000 });
    restart(&runtime, restart_entries);
    if std::env::var_os("RAFT_BENCH_NO_CRITERION").is_some() {
        return;
    }
    let mut criterion = Criterion::default().configure_from_args();
    criterion_groups(&mut criterion, &runtime);
    criterion.final_summary();
}
