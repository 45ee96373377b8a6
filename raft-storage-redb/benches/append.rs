//! Durable appends to the redb log store beside a raw `write + fdatasync`
//! loop on a plain file in the same directory, measured in the same run so
//! that the ratios mean something on a noisy machine.
//!
//! ```sh
//! cargo bench -p raft-storage-redb --bench append
//! RAFT_BENCH_DIR=/some/disk cargo bench -p raft-storage-redb --bench append -- --quick
//! ```
//!
//! First a latency report: for batches of 1, 16 and 256 entries of 256
//! bytes, each round does one durable append to the store and then one
//! append of as many raw bytes plus `fdatasync` to a plain file, so both see
//! the same disk weather; it prints p50 and p99 of each, their ratio and the
//! entries per second. Then the on-disk size per entry. Then criterion's
//! throughput groups for the same operations.

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
use raft_storage_redb::RedbLogStore;
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

/// The raw baseline: appends to a plain file and `fdatasync`s it.
struct RawFile {
    file: File,
    buffer: Vec<u8>,
}

impl RawFile {
    fn new(directory: &TempDir) -> Self {
        let path = directory.path().join("raw.log");
        let file = OpenOptions::new().create(true).append(true).open(path).expect("open the raw file");
        RawFile { file, buffer: Vec::new() }
    }

    fn append(&mut self, bytes: usize) {
        self.buffer.resize(bytes, 0xa5);
        self.file.write_all(&self.buffer).expect("raw write");
        self.file.sync_data().expect("raw fdatasync");
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
        "batch {size:>3} {:<6}  redb p50 {:>7.0} µs p99 {:>7.0} µs  {:>8.0} entries/s | raw write+fdatasync of {raw_bytes:>6} B p50 {:>7.0} µs p99 {:>7.0} µs | p50 ratio {:.2}",
        if through_tokio { "tokio" } else { "inline" },
        micros(store_p50),
        micros(percentile(&store_times, 0.99)),
        size as f64 / store_mean.as_secs_f64(),
        micros(raw_p50),
        micros(percentile(&raw_times, 0.99)),
        store_p50.as_secs_f64() / raw_p50.as_secs_f64(),
    );
}

/// File bytes per stored entry after appending a long log in 256-entry
/// durable batches.
fn bytes_per_entry(runtime: &tokio::runtime::Runtime, entries: u64) {
    let directory = bench_directory();
    let mut appender = Appender::new(&directory);
    let empty = appender.store.file_size_bytes().expect("file size");
    while appender.next <= entries {
        let write = appender.next_write(256, true);
        runtime.block_on(appender.store.write(write)).expect("append");
    }
    let size = appender.store.file_size_bytes().expect("file size");
    println!(
        "on disk: {entries} entries of {ENTRY_BYTES} B -> file {size} B ({:.1} B/entry; empty store {empty} B)",
        (size - empty) as f64 / entries as f64
    );
}

fn criterion_groups(criterion: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let mut group = criterion.benchmark_group("durable_append");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for size in BATCH_SIZES {
        group.throughput(Throughput::Elements(size));
        let directory = bench_directory();
        let mut appender = Appender::new(&directory);
        group.bench_with_input(BenchmarkId::new("redb", size), &size, |bencher, &size| {
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
    let mut criterion = Criterion::default().configure_from_args();
    criterion_groups(&mut criterion, &runtime);
    criterion.final_summary();
}
