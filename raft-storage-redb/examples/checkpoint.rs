//! Checkpoint and rollback of a large state on the durable stores, with
//! writes flowing meanwhile. Build in release:
//!
//! ```sh
//! cargo run --release -p raft-storage-redb --example checkpoint -- [STATE_MIB] [SECONDS]
//! ```
//!
//! Three runtimes in one process over the in-process network, each on its
//! own redb log, snapshot directory and checkpoint directory in a temporary
//! directory (on the same disk). The state machine is raft-core's string
//! map with a ballast of `STATE_MIB` (default 1,024) that its snapshots
//! stream and its restore checks byte by byte. Eight clients write 64-byte
//! values one at a time:
//!
//! 1. for `SECONDS` (default 5) with nothing else going on: the baseline;
//! 2. while the leader creates a checkpoint (which every replica writes to
//!    its checkpoint store in the background): the checkpoint's duration
//!    and the write latency meanwhile;
//! 3. then a rollback to it: the rollback's duration (every replica reads
//!    and checks the whole state).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::local::LocalNetwork;
use raft_core::runtime::{Parts, RaftNode, RuntimeConfig, SnapshotPolicy, StartMode};
use raft_core::testing::map_state_machine::MapStateMachine;
use raft_core::types::{Membership, NodeId, Role};
use raft_storage_redb::{open_stores, RedbCheckpointStore, CHECKPOINT_DIRECTORY_NAME};

const CLIENTS: usize = 8;

struct Latencies(Vec<Duration>);

impl Latencies {
    fn line(mut self, what: &str, elapsed: Duration) -> String {
        self.0.sort();
        let at =
            |q: f64| self.0.get(((self.0.len() as f64 * q) as usize).min(self.0.len().saturating_sub(1)));
        let ms = |d: Option<&Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        format!(
            "| {what} | {} | {:.0} | {:.2} | {:.2} | {:.2} |",
            self.0.len(),
            self.0.len() as f64 / elapsed.as_secs_f64(),
            ms(at(0.5)),
            ms(at(0.99)),
            ms(self.0.last()),
        )
    }
}

/// Writes from `CLIENTS` clients until `stop` is set; returns every latency.
async fn write_until(leader: RaftNode, stop: Arc<AtomicBool>) -> Latencies {
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let leader = leader.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut sequence = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = Bytes::from(format!("client-{client}={sequence:058}"));
                let started = Instant::now();
                if leader.propose(data, None).await.is_ok() {
                    latencies.push(started.elapsed());
                }
                sequence += 1;
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("a client task"));
    }
    Latencies(all)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arguments: Vec<u64> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let state_mib = arguments.first().copied().unwrap_or(1024);
    let seconds = arguments.get(1).copied().unwrap_or(5);
    let root =
        tempfile::tempdir_in(std::env::current_dir().expect("a working directory")).expect("a directory");
    let network = LocalNetwork::new();
    let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let mut nodes = Vec::new();
    for id in 1..=3u64 {
        let directory = root.path().join(format!("node-{id}"));
        let (log, snapshots) = open_stores(&directory).await.expect("the stores open");
        let checkpoints =
            RedbCheckpointStore::open_async(directory.join(CHECKPOINT_DIRECTORY_NAME)).await.expect("opens");
        let (transport, inbox) = network.register(NodeId(id), 65_536);
        let mut config = RuntimeConfig::new(NodeId(id));
        config.snapshot_policy = SnapshotPolicy { max_log_entries: u64::MAX };
        config.request_timeout = Duration::from_secs(60);
        let parts = Parts {
            log_store: Arc::new(log),
            snapshot_store: Arc::new(snapshots),
            checkpoint_store: Arc::new(checkpoints),
            state_machine: Box::new(MapStateMachine::with_ballast(state_mib << 20)),
            transport: Arc::new(transport),
            inbox,
        };
        let node =
            RaftNode::start(config, StartMode::Bootstrap(membership.clone()), parts).await.expect("starts");
        nodes.push(node);
    }
    let leader = loop {
        if let Some(node) = nodes.iter().find(|n| n.status().borrow().role == Some(Role::Leader)) {
            break node.clone();
        }
        let mut status = nodes[0].status();
        let _ = tokio::time::timeout(Duration::from_millis(100), status.changed()).await;
    };
    println!(
        "# Checkpoint of a {state_mib} MiB state, {CLIENTS} writers, redb stores, 3 nodes in one process\n"
    );
    println!("| phase | writes | writes/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|");

    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(write_until(leader.clone(), Arc::clone(&stop)));
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    println!("{}", writers.await.expect("writers").line("no checkpoint", Duration::from_secs(seconds)));

    let stop = Arc::new(AtomicBool::new(false));
    let writers = tokio::spawn(write_until(leader.clone(), Arc::clone(&stop)));
    let started = Instant::now();
    let info = leader.checkpoint("big").await.expect("the checkpoint is taken");
    let checkpoint_elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    println!("{}", writers.await.expect("writers").line("during the checkpoint", checkpoint_elapsed));

    // The followers write theirs in the background too; wait for them.
    for node in &nodes {
        while !node.list_checkpoints().iter().any(|c| c.meta.name == "big") {
            let mut status = node.status();
            let _ = tokio::time::timeout(Duration::from_millis(50), status.changed()).await;
        }
    }
    let all_durable = started.elapsed();
    let started = Instant::now();
    let rollback = leader.rollback("big").await.expect("the rollback commits");
    let rollback_elapsed = started.elapsed();
    for node in &nodes {
        while node.status().borrow().applied_index < rollback.index {
            let mut status = node.status();
            let _ = tokio::time::timeout(Duration::from_millis(50), status.changed()).await;
        }
    }
    let rollback_everywhere = started.elapsed();
    println!();
    println!("| measure | seconds |");
    println!("|---|---|");
    println!(
        "| checkpoint of {} MiB durable on the leader | {:.2} |",
        info.size_bytes >> 20,
        checkpoint_elapsed.as_secs_f64()
    );
    println!("| ... durable on all three nodes | {:.2} |", all_durable.as_secs_f64());
    println!("| rollback applied on the leader | {:.2} |", rollback_elapsed.as_secs_f64());
    println!("| ... applied on all three nodes | {:.2} |", rollback_everywhere.as_secs_f64());
    for node in &nodes {
        node.shutdown().await;
    }
}
