//! Transport benchmarks on loopback, printed as a table. Build in release:
//!
//! ```sh
//! cargo run --release -p raft-transport-quic --example bench -- [quick] [rtt] [pipeline] [snapshot] [engine-snapshot]
//! ```
//!
//! 1. Round-trip latency of one small message over the QUIC transport (a
//!    message out, the echo back, each through `send` and the inbox) next
//!    to a plain TCP echo of frames of the same size, in the same run.
//! 2. Pipelined small appends one way: messages per second through `send`
//!    and the receiver's inbox, with a bounded window of messages in flight.
//! 3. Snapshot transfer: 1 GiB in 1 MiB InstallSnapshot chunks, with a
//!    heartbeat every 10 ms on the same connection, reporting MB/s and the
//!    heartbeats' delivery latency; with 8, 4 and 1 chunks in flight.
//! 4. The same through raft-core (`engine-snapshot`): three runtimes over
//!    QUIC with in-memory stores; a follower restarts after the leader
//!    compacted its log and receives a 1 GiB state by InstallSnapshot,
//!    with the engine's own chunk window. The runtime cluster is the one
//!    the integration tests use (`tests/it/support.rs`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::message::{Heartbeat, InstallSnapshot, Message, MessageBody};
use raft_core::testing::messages::one_entry_append;
use raft_core::transport::{Inbox, Transport};
use raft_core::types::{LogIndex, NodeId, SnapshotMeta, Term};
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::{ClusterId, QuicTransport, TransportConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

#[allow(dead_code)]
#[path = "../tests/it/support.rs"]
mod support;

struct Pair {
    one: QuicTransport,
    two: QuicTransport,
    one_inbox: mpsc::Receiver<Message>,
    two_inbox: mpsc::Receiver<Message>,
}

fn pair(max_udp_payload_bytes: u16) -> Pair {
    let cluster = ClusterId::new("bench").unwrap();
    let ca = ClusterCa::generate(&cluster).unwrap();
    let make = |id: u64| {
        let identity = ca.issue_node(NodeId(id), &[]).unwrap().identity().unwrap();
        let mut config =
            TransportConfig::new(cluster.clone(), NodeId(id), "127.0.0.1:0".parse().unwrap(), identity);
        config.max_udp_payload_bytes = max_udp_payload_bytes;
        config.queue_limits.max_messages = 1 << 20;
        config.queue_limits.max_message_bytes = 1 << 30;
        let (inbox, receiver) = Inbox::bounded(1 << 20);
        (QuicTransport::bind(config, inbox).unwrap(), receiver)
    };
    let (one, one_inbox) = make(1);
    let (two, two_inbox) = make(2);
    one.set_peer(NodeId(2), two.local_address().unwrap());
    two.set_peer(NodeId(1), one.local_address().unwrap());
    Pair { one, two, one_inbox, two_inbox }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * fraction) as usize]
}

/// A TCP echo of frames of `frame_bytes`: the server task echoes each back.
async fn tcp_echo(frame_bytes: usize) -> tokio::net::TcpStream {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut buffer = vec![0u8; frame_bytes];
        while stream.read_exact(&mut buffer).await.is_ok() {
            if stream.write_all(&buffer).await.is_err() {
                break;
            }
        }
    });
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Round trips over the QUIC transport (node 2 echoes every message back
/// through its own transport) and over a TCP echo of frames of the same
/// size, alternating one of each so both see the same machine load.
async fn round_trips(payload_bytes: usize, rounds: usize) -> (Vec<Duration>, Vec<Duration>, usize) {
    let mut pair = pair(1472);
    let frame_bytes =
        raft_transport_quic::frame::encode_messages(&[one_entry_append(1, 2, 0, payload_bytes)], 1 << 20)
            .unwrap()
            .len();
    let two = pair.two.clone();
    let mut two_inbox = std::mem::replace(&mut pair.two_inbox, mpsc::channel(1).1);
    let echo = tokio::spawn(async move {
        while let Some(mut reply) = two_inbox.recv().await {
            reply.to = reply.from;
            reply.from = NodeId(2);
            two.send(vec![reply]);
        }
    });
    let mut tcp = tcp_echo(frame_bytes).await;
    let mut buffer = vec![7u8; frame_bytes];
    let (mut quic_samples, mut tcp_samples) = (Vec::with_capacity(rounds), Vec::with_capacity(rounds));
    for round in 0..rounds + rounds / 10 {
        let started = Instant::now();
        pair.one.send(vec![one_entry_append(1, 2, round as u64, payload_bytes)]);
        pair.one_inbox.recv().await.expect("echo");
        let quic = started.elapsed();
        let started = Instant::now();
        tcp.write_all(&buffer).await.unwrap();
        tcp.read_exact(&mut buffer).await.unwrap();
        if round >= rounds / 10 {
            quic_samples.push(quic);
            tcp_samples.push(started.elapsed());
        }
    }
    echo.abort();
    pair.one.shutdown().await;
    pair.two.shutdown().await;
    quic_samples.sort();
    tcp_samples.sort();
    (quic_samples, tcp_samples, frame_bytes)
}

async fn latency_table(rounds: usize) {
    println!("\n## Round trip of one message (p50 / p99, microseconds)\n");
    println!("| payload | frame bytes | QUIC transport | plain TCP echo | ratio p50 |");
    println!("|---|---|---|---|---|");
    for payload_bytes in [0usize, 64, 256, 1024, 4096] {
        let (quic, tcp, frame_bytes) = round_trips(payload_bytes, rounds).await;
        let micros = |d: Duration| d.as_secs_f64() * 1e6;
        println!(
            "| {payload_bytes} B | {frame_bytes} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2}x |",
            micros(percentile(&quic, 0.5)),
            micros(percentile(&quic, 0.99)),
            micros(percentile(&tcp, 0.5)),
            micros(percentile(&tcp, 0.99)),
            micros(percentile(&quic, 0.5)) / micros(percentile(&tcp, 0.5)),
        );
    }
}

/// Sends `total` small appends in batches, keeping at most `window` in
/// flight (as the engine's in-flight bound does); returns messages/s.
async fn pipelined(total: u64, payload_bytes: usize, batch: u64, window: u64) -> (f64, u64) {
    let mut pair = pair(1472);
    let received = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&received);
    let mut inbox = std::mem::replace(&mut pair.two_inbox, mpsc::channel(1).1);
    tokio::spawn(async move {
        while inbox.recv().await.is_some() {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Warm the connection up.
    pair.one.send(vec![one_entry_append(1, 2, 0, payload_bytes)]);
    while received.load(Ordering::Relaxed) < 1 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        while sent - (received.load(Ordering::Relaxed) - 1) >= window {
            tokio::task::yield_now().await;
        }
        pair.one.send((sent..sent + batch).map(|i| one_entry_append(1, 2, i, payload_bytes)).collect());
        sent += batch;
    }
    while received.load(Ordering::Relaxed) - 1 < total {
        tokio::task::yield_now().await;
    }
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let drops = pair.one.stats().peers[&NodeId(2)].errors.queue_full_drops;
    pair.one.shutdown().await;
    pair.two.shutdown().await;
    (rate, drops)
}

fn chunk(offset: u64, data: &Bytes) -> Message {
    Message {
        from: NodeId(1),
        to: NodeId(2),
        term: Term(1),
        body: MessageBody::InstallSnapshot(InstallSnapshot {
            snapshot: SnapshotMeta::default(),
            offset,
            data: data.clone(),
            done: false,
        }),
    }
}

struct SnapshotFigures {
    megabytes_per_second: f64,
    heartbeats: usize,
    heartbeat_p50: Duration,
    heartbeat_p99: Duration,
    heartbeat_max: Duration,
}

/// Streams `total_bytes` in 1 MiB chunks with `window` chunks in flight,
/// and a heartbeat every 10 ms; measures each heartbeat's delivery time.
async fn snapshot_transfer(total_bytes: u64, window: u64, max_udp_payload_bytes: u16) -> SnapshotFigures {
    const CHUNK_BYTES: u64 = 1 << 20;
    let mut pair = pair(max_udp_payload_bytes);
    let data = Bytes::from(vec![0x5a; CHUNK_BYTES as usize]);
    let chunks = total_bytes / CHUNK_BYTES;
    let (mut next, mut received, mut round) = (0u64, 0u64, 0u64);
    let mut sent_at: BTreeMap<u64, Instant> = BTreeMap::new();
    let mut latencies = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    let started = Instant::now();
    while received < chunks {
        while next < chunks && next < received + window {
            pair.one.send(vec![chunk(next * CHUNK_BYTES, &data)]);
            next += 1;
        }
        tokio::select! {
            _ = ticker.tick() => {
                sent_at.insert(round, Instant::now());
                let body = MessageBody::Heartbeat(Heartbeat { commit: LogIndex(0), read_round: round });
                pair.one.send(vec![Message { from: NodeId(1), to: NodeId(2), term: Term(1), body }]);
                round += 1;
            }
            message = pair.two_inbox.recv() => match message.expect("inbox").body {
                MessageBody::InstallSnapshot(_) => received += 1,
                MessageBody::Heartbeat(heartbeat) => {
                    if let Some(at) = sent_at.remove(&heartbeat.read_round) {
                        latencies.push(at.elapsed());
                    }
                }
                _ => {}
            },
        }
    }
    let elapsed = started.elapsed();
    latencies.sort();
    pair.one.shutdown().await;
    pair.two.shutdown().await;
    SnapshotFigures {
        megabytes_per_second: total_bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        heartbeats: latencies.len(),
        heartbeat_p50: percentile(&latencies, 0.5),
        heartbeat_p99: percentile(&latencies, 0.99),
        heartbeat_max: latencies.last().copied().unwrap_or_default(),
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let quick = arguments.iter().any(|a| a == "quick");
    let only = |part: &str| arguments.iter().all(|a| a == "quick") || arguments.iter().any(|a| a == part);
    let (rounds, messages, snapshot_bytes) =
        if quick { (2_000, 200_000, 256 << 20) } else { (10_000, 2_000_000, 1 << 30) };
    println!("# raft-transport-quic benchmarks (loopback, release, 2 tokio workers)");
    if only("rtt") {
        latency_table(rounds).await;
    }
    if only("pipeline") {
        println!("\n## Pipelined appends one way (one 64-byte entry each)\n");
        println!("| batch per send | window | messages/s | queue drops |");
        println!("|---|---|---|---|");
        for (batch, window) in [(1, 4_096), (64, 16_384), (256, 65_536)] {
            let (rate, drops) = pipelined(messages, 64, batch, window).await;
            println!("| {batch} | {window} | {rate:.0} | {drops} |");
        }
    }
    if only("snapshot") {
        println!(
            "\n## Snapshot transfer of {} MiB in 1 MiB chunks, heartbeat every 10 ms\n",
            snapshot_bytes >> 20
        );
        println!(
            "| chunks in flight | max UDP payload | MB/s | heartbeats | heartbeat delivery p50 / p99 / max |"
        );
        println!("|---|---|---|---|---|");
        for (window, payload) in [(8, 1472), (4, 1472), (1, 1472)] {
            let figures = snapshot_transfer(snapshot_bytes, window, payload).await;
            println!(
                "| {window} | {payload} | {:.0} | {} | {:.2} / {:.2} / {:.2} ms |",
                figures.megabytes_per_second,
                figures.heartbeats,
                figures.heartbeat_p50.as_secs_f64() * 1e3,
                figures.heartbeat_p99.as_secs_f64() * 1e3,
                figures.heartbeat_max.as_secs_f64() * 1e3,
            );
        }
    }
    if only("engine-snapshot") {
        engine_snapshot(snapshot_bytes).await;
    }
}

/// A follower of a three-node runtime cluster over QUIC restarts after the
/// leader compacted its log, and receives `ballast_bytes` of state by
/// InstallSnapshot. Prints the transfer's MB/s per chunk window.
async fn engine_snapshot(ballast_bytes: u64) {
    use raft_core::runtime::StartMode;
    use support::{QuicCluster, QUEUE_MAX_AGE};

    println!(
        "\n## Snapshot of {} MiB through raft-core's runtime (1 MiB chunks, heartbeat every 20 ms)\n",
        ballast_bytes >> 20
    );
    println!(
        "| chunks in flight | installed after | MB/s | restored after | longest heartbeat gap | chunks sent | rewinds |"
    );
    println!("|---|---|---|---|---|---|---|");
    // Alternating windows, so that both see the same machine load;
    // BENCH_WINDOWS=8,2 picks others.
    let windows: Vec<usize> = std::env::var("BENCH_WINDOWS")
        .ok()
        .map(|list| list.split(',').filter_map(|w| w.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![4, 1, 4, 1]);
    for window in windows {
        let mut cluster = QuicCluster::bootstrap_with(&[1, 2, 3], ballast_bytes, move |config| {
            config.engine.snapshot_chunks_in_flight = window;
        })
        .await;
        let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
        let follower = if leader == 1 { 2 } else { 1 };
        cluster.stop(follower).await;
        for i in 0..20 {
            cluster.put(leader, &format!("k{i}"), &format!("v{i}")).await;
        }
        let snapshot = cluster.nodes[&leader].raft.trigger_snapshot().await.expect("the leader snapshots");
        tokio::time::sleep(QUEUE_MAX_AGE * 2).await;
        let started = Instant::now();
        cluster.start(follower, StartMode::Restart).await;
        cluster.wait_for(follower, "the snapshot", |s| s.snapshot_index >= snapshot.last_index).await;
        let installed = started.elapsed();
        cluster.wait_for(follower, "the restore", |s| s.applied_index >= snapshot.last_index).await;
        let restored = started.elapsed();
        let gap = cluster.nodes[&follower].heartbeats.longest_gap_after(started);
        let stats = cluster.status(leader).stats;
        println!(
            "| {window} | {:.2} s | {:.0} | {:.2} s | {:.0} ms | {} | {} |",
            installed.as_secs_f64(),
            ballast_bytes as f64 / 1e6 / installed.as_secs_f64(),
            restored.as_secs_f64(),
            gap.as_secs_f64() * 1e3,
            stats.snapshot_chunks_sent,
            stats.snapshot_rewinds,
        );
        cluster.shutdown().await;
    }
}
