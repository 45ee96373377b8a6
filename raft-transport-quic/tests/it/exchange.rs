//! Two or three transports on loopback: delivery and order, one connection
//! per pair after simultaneous dials, reconnection after a restart, a dead
//! peer that never blocks a live one, frame limits, snapshot chunks beside
//! heartbeats, and the figures for metrics.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::message::{InstallSnapshot, Message, MessageBody};
use raft_core::testing::messages::one_entry_append;
use raft_core::transport::{Inbox, Transport};
use raft_core::types::{NodeId, SnapshotMeta, Term};
use raft_transport_quic::QuicTransport;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_arrive_in_order_both_ways_with_figures() {
    let pki = Pki::new("exchange");
    let (one, mut one_inbox) = bind(&pki, 1);
    let (two, mut two_inbox) = bind(&pki, 2);
    connect_all(&[&one, &two]);
    for batch in 0..10 {
        one.send((0..100).map(|i| heartbeat(1, 2, batch * 100 + i)).collect());
    }
    for expected in 0..1_000 {
        assert_eq!(round_of(&receive(&mut two_inbox).await), Some(expected));
    }
    two.send(vec![heartbeat(2, 1, 7)]);
    assert_eq!(round_of(&receive(&mut one_inbox).await), Some(7));
    eventually("the counters", || one.stats().peers[&NodeId(2)].messages_received == 1).await;
    let stats = one.stats().peers[&NodeId(2)].clone();
    assert!(stats.connected);
    assert_eq!(stats.messages_sent, 1_000);
    assert_eq!(stats.messages_received, 1);
    assert!(stats.bytes_sent > 1_000 && stats.bytes_received > 0);
    assert!(stats.rtt.is_some_and(|rtt| rtt < Duration::from_secs(1)));
    eventually("the receiver's counters", || two.stats().peers[&NodeId(1)].messages_received == 1_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    let pki = Pki::new("exchange");
    for round in 0..5 {
        let (one, mut one_inbox) = bind(&pki, 1);
        let (two, mut two_inbox) = bind(&pki, 2);
        connect_all(&[&one, &two]);
        one.send(vec![heartbeat(1, 2, round)]);
        two.send(vec![heartbeat(2, 1, round)]);
        receive(&mut one_inbox).await;
        receive(&mut two_inbox).await;
        eventually("one connection each", || {
            one.stats().open_connections == 1 && two.stats().open_connections == 1
        })
        .await;
        // The surviving connection still carries messages both ways.
        one.send(vec![heartbeat(1, 2, 100)]);
        two.send(vec![heartbeat(2, 1, 100)]);
        assert_eq!(round_of(&receive(&mut two_inbox).await), Some(100));
        assert_eq!(round_of(&receive(&mut one_inbox).await), Some(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reconnected() {
    let pki = Pki::new("exchange");
    let (one, mut one_inbox) = bind(&pki, 1);
    let (two, _two_inbox) = bind(&pki, 2);
    connect_all(&[&one, &two]);
    two.send(vec![heartbeat(2, 1, 1)]);
    receive(&mut one_inbox).await;
    let address = two.local_address().unwrap();
    two.shutdown().await;
    drop(two);
    // The same address, a new process as far as node 1 can tell.
    let (inbox, mut new_inbox) = Inbox::bounded(1024);
    let deadline = Instant::now() + WAIT;
    let two = loop {
        match QuicTransport::bind(pki.config(2, address), inbox.clone()) {
            Ok(transport) => break transport,
            Err(error) => {
                assert!(Instant::now() < deadline, "rebinding: {error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    two.set_peer(NodeId(1), one.local_address().unwrap());
    // Node 1 redials after backoff; messages queued meanwhile are delivered.
    one.send(vec![heartbeat(1, 2, 5)]);
    assert_eq!(round_of(&receive(&mut new_inbox).await), Some(5));
    two.send(vec![heartbeat(2, 1, 6)]);
    assert_eq!(round_of(&receive(&mut one_inbox).await), Some(6));
    assert!(one.stats().peers[&NodeId(2)].connections_established >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_peer_never_blocks_a_live_one() {
    let pki = Pki::new("exchange");
    let (inbox, _receiver) = Inbox::bounded(1024);
    let mut config = pki.config(1, loopback());
    config.queue_limits.max_messages = 100;
    let one = QuicTransport::bind(config, inbox).unwrap();
    let (two, mut two_inbox) = bind(&pki, 2);
    connect_all(&[&one, &two]);
    // Node 3 is listed but nothing answers at its address.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    one.set_peer(NodeId(3), silent.local_addr().unwrap());
    for round in 0..200 {
        let started = Instant::now();
        one.send((0..50).map(|i| heartbeat(1, 3, i)).chain([heartbeat(1, 2, round)]).collect());
        assert!(started.elapsed() < Duration::from_millis(500), "send waited");
        assert_eq!(round_of(&receive(&mut two_inbox).await), Some(round));
    }
    let dead = one.stats().peers[&NodeId(3)].clone();
    assert!(!dead.connected);
    assert!(dead.queued_messages <= 100);
    assert!(dead.errors.queue_full_drops >= 200 * 50 - 100, "{dead:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_a_frame_is_dropped_and_counted() {
    let pki = Pki::new("exchange");
    let (inbox, _receiver) = Inbox::bounded(1024);
    let mut config = pki.config(1, loopback());
    config.max_frame_bytes = 4096;
    let one = QuicTransport::bind(config, inbox).unwrap();
    let (two, mut two_inbox) = bind(&pki, 2);
    connect_all(&[&one, &two]);
    let big = one_entry_append(1, 2, 1, 10_000);
    one.send(vec![heartbeat(1, 2, 1), big, heartbeat(1, 2, 2)]);
    assert_eq!(round_of(&receive(&mut two_inbox).await), Some(1));
    assert_eq!(round_of(&receive(&mut two_inbox).await), Some(2));
    assert_eq!(one.stats().peers[&NodeId(2)].errors.oversized_drops, 1);
    // Many small messages are split over several frames under the limit.
    one.send((0..500).map(|i| one_entry_append(1, 2, i, 100)).collect());
    for _ in 0..500 {
        assert!(matches!(receive(&mut two_inbox).await.body, MessageBody::AppendEntries(_)));
    }
}

pub fn chunk(from: u64, to: u64, offset: u64, bytes: usize) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::InstallSnapshot(InstallSnapshot {
            snapshot: SnapshotMeta::default(),
            offset,
            data: Bytes::from(vec![(offset % 251) as u8; bytes]),
            done: false,
        }),
    }
}

/// 32 MiB of snapshot chunks while heartbeats flow: the chunks arrive in
/// order, and each heartbeat is delivered promptly rather than after the
/// chunks queued before it (4 MiB at a debug build's few MB/s would take
/// most of a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_do_not_wait_behind_snapshot_chunks() {
    let pki = Pki::new("exchange");
    let (one, _one_inbox) = bind(&pki, 1);
    let (two, mut two_inbox) = bind(&pki, 2);
    connect_all(&[&one, &two]);
    const CHUNK_BYTES: usize = 1 << 20;
    const CHUNKS: u64 = 32;
    let (mut next_chunk, mut chunks_received, mut round) = (0, 0, 0);
    let mut sent_at = std::collections::BTreeMap::new();
    let mut latencies = Vec::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(10));
    while chunks_received < CHUNKS {
        tokio::select! {
            _ = ticker.tick() => {
                // Keep a few chunks queued, as a streaming sender would.
                while next_chunk < CHUNKS && next_chunk < chunks_received + 4 {
                    one.send(vec![chunk(1, 2, next_chunk * CHUNK_BYTES as u64, CHUNK_BYTES)]);
                    next_chunk += 1;
                }
                sent_at.insert(round, Instant::now());
                one.send(vec![heartbeat(1, 2, round)]);
                round += 1;
            }
            message = two_inbox.recv() => match message.expect("inbox open").body {
                MessageBody::InstallSnapshot(chunk) => {
                    assert_eq!(chunk.offset, chunks_received * CHUNK_BYTES as u64, "chunks in order");
                    chunks_received += 1;
                }
                MessageBody::Heartbeat(heartbeat) => {
                    latencies.extend(sent_at.remove(&heartbeat.read_round).map(|at| at.elapsed()));
                }
                _ => {}
            },
        }
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let worst = latencies[latencies.len() - 1];
    assert!(median < Duration::from_millis(50) && worst < Duration::from_millis(400), "{latencies:?}");
    assert_eq!(one.stats().peers[&NodeId(2)].errors.queue_full_drops, 0);
}
