//! Runtime throughput in the shape of openraft's `benchmarks/minimal`: three
//! runtimes in one process, in-memory stores, the in-process transport (no
//! serialization), `clients` tasks each keeping one empty write in flight
//! and waiting until the leader has applied it.
//!
//! Run: `cargo bench -p raft-core --bench runtime` (prints a table: puts/s,
//! p50 and p99 latency per call, the process's resident memory after the
//! line). Options after `--`: `--clients 1,64,256,4096 --writes 200000
//! --batch 1,4 --workers 2`. The lines run in order in one process; RSS is
//! the process's resident set after each line.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local::LocalNetwork;
use raft_core::memory::{MemoryLogStore, MemorySnapshotStore};
use raft_core::runtime::{Parts, RaftNode, RuntimeConfig, StartMode};
use raft_core::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use raft_core::storage::SnapshotReader;
use raft_core::types::{Entry, Membership, NodeId, Role};

/// Counts applied entries; answers every entry with an empty response.
#[derive(Default)]
struct CountingStateMachine {
    applied: u64,
}

#[async_trait]
impl StateMachine for CountingStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.applied += entries.len() as u64;
        Ok(vec![Bytes::new(); entries.len()])
    }

    async fn query(&mut self, _query: Bytes) -> Result<Bytes, StateMachineError> {
        Ok(Bytes::from(self.applied.to_le_bytes().to_vec()))
    }

    async fn begin_snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        Ok(Box::new(Counter(Some(self.applied))))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), StateMachineError> {
        let (data, _) = snapshot.read_at(0, 8).await?;
        let bytes: [u8; 8] =
            data.as_ref().try_into().map_err(|_| StateMachineError::MalformedSnapshot("size".into()))?;
        self.applied = u64::from_le_bytes(bytes);
        Ok(())
    }
}

struct Counter(Option<u64>);

#[async_trait]
impl SnapshotSource for Counter {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        Ok(self.0.take().map(|n| Bytes::from(n.to_le_bytes().to_vec())))
    }
}

struct Options {
    clients: Vec<usize>,
    writes: u64,
    batches: Vec<usize>,
    workers: usize,
}

/// Reads `--clients 1,64,256,4096 --writes 200000 --batch 1,4 --workers 2`.
/// A short run for profiling: `--clients 256 --writes 20000 --batch 1`.
fn options() -> Options {
    let mut options =
        Options { clients: vec![1, 64, 256, 4096], writes: 200_000, batches: vec![1, 4], workers: 2 };
    let arguments: Vec<String> = std::env::args().collect();
    let list = |value: &str| -> Vec<usize> { value.split(',').filter_map(|v| v.parse().ok()).collect() };
    let mut position = 1;
    while position + 1 < arguments.len() {
        let value = &arguments[position + 1];
        match arguments[position].as_str() {
            "--clients" => options.clients = list(value),
            "--writes" => options.writes = value.parse().unwrap_or(options.writes),
            "--batch" => options.batches = list(value),
            "--workers" => options.workers = value.parse().unwrap_or(options.workers).max(1),
            _ => {}
        }
        position += 1;
    }
    options.batches.retain(|b| *b > 0);
    options
}

async fn start_cluster() -> (Vec<RaftNode>, RaftNode) {
    let network = LocalNetwork::new();
    let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        let mut config = RuntimeConfig::new(NodeId(id));
        config.tick_interval = Duration::from_millis(50);
        config.engine.max_uncommitted_bytes = 1 << 30;
        config.snapshot_policy.max_log_entries = 100_000;
        let (transport, inbox) = network.register(NodeId(id), 1 << 20);
        let parts = Parts {
            log_store: Arc::new(MemoryLogStore::new()),
            snapshot_store: Arc::new(MemorySnapshotStore::new()),
            checkpoint_store: Arc::new(raft_core::memory::MemoryCheckpointStore::new()),
            state_machine: Box::new(CountingStateMachine::default()),
            transport: Arc::new(transport),
            inbox,
        };
        nodes.push(
            RaftNode::start(config, StartMode::Bootstrap(membership.clone()), parts).await.expect("start"),
        );
    }
    nodes[0].campaign().await.expect("campaign");
    let mut status = nodes[0].status();
    status.wait_for(|s| s.role == Some(Role::Leader) && s.applied_index.get() >= 2).await.expect("leader");
    let leader = nodes[0].clone();
    (nodes, leader)
}

/// Runs `clients` tasks until `writes` writes are applied; returns the
/// elapsed time and every call's latency in microseconds. A call is `batch`
/// writes issued together and awaited together (a client that batches).
async fn run(leader: &RaftNode, clients: usize, writes: u64, batch: usize) -> (Duration, Vec<u32>) {
    let per_client = (writes / clients as u64).max(1);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let leader = leader.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity((per_client as usize).div_ceil(batch));
            let mut done = 0;
            while done < per_client {
                let start = Instant::now();
                if batch == 1 {
                    leader.propose(Bytes::new(), None).await.expect("the write commits");
                } else {
                    let calls = (0..batch).map(|_| Box::pin(leader.propose(Bytes::new(), None))).collect();
                    for result in join_all(calls).await {
                        result.expect("the write commits");
                    }
                }
                latencies.push(start.elapsed().as_micros() as u32);
                done += batch as u64;
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("client task"));
    }
    (started.elapsed(), latencies)
}

/// Polls every future until all are ready; their outputs in order. (The
/// benchmark depends on nothing but tokio, so no `futures::join_all`.)
async fn join_all<F: Future + Unpin>(mut futures: Vec<F>) -> Vec<F::Output> {
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|context| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match Pin::new(future).poll(context) {
                    Poll::Ready(value) => *output = Some(value),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

fn percentile(sorted: &[u32], fraction: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn resident_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// User plus system CPU time of the process so far, in microseconds, from
/// `/proc/self/stat` (clock ticks of 10 ms, the Linux default). CPU time per
/// write is less disturbed than throughput when other work shares the
/// machine, so the table shows both.
fn cpu_time_us() -> u64 {
    const MICROS_PER_TICK: u64 = 10_000;
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            // Fields after the command name (which may hold spaces): state is
            // the first, utime the 12th and stime the 13th.
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some((user + system) * MICROS_PER_TICK)
        })
        .unwrap_or(0)
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(options.workers)
        .enable_all()
        .build()
        .expect("tokio");
    runtime.block_on(async {
        let (nodes, leader) = start_cluster().await;
        println!("| clients | batch | writes | puts/s | p50 µs | p99 µs | RSS MiB | CPU µs/put |");
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
        for batch in &options.batches {
            for clients in &options.clients {
                let cpu_before = cpu_time_us();
                let (elapsed, mut latencies) = run(&leader, *clients, options.writes, *batch).await;
                let cpu = cpu_time_us().saturating_sub(cpu_before);
                latencies.sort_unstable();
                let writes = latencies.len() as u64 * *batch as u64;
                println!(
                    "| {clients} | {batch} | {writes} | {:.0} | {} | {} | {} | {:.2} |",
                    writes as f64 / elapsed.as_secs_f64(),
                    percentile(&latencies, 0.50),
                    percentile(&latencies, 0.99),
                    resident_memory_kib() / 1024,
                    cpu as f64 / writes.max(1) as f64,
                );
            }
        }
        for node in &nodes {
            node.shutdown().await;
        }
    });
}
