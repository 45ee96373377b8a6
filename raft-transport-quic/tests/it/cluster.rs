//! raft-core runtimes (memory stores) over QUIC on loopback: election,
//! replication, a 100 MiB snapshot sent to a restarted follower while
//! heartbeats keep flowing, and restarts of followers and leaders.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::runtime::{ReadConsistency, StartMode};
use raft_core::testing::client::read_retrying;
use raft_core::types::NodeId;

use crate::support::*;

const SNAPSHOT_BYTES: u64 = 100 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_replicate() {
    let cluster = QuicCluster::bootstrap(&[1, 2, 3], 0).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    for i in 0..100 {
        cluster.put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    for id in [1, 2, 3] {
        let read = read_retrying(
            &cluster.nodes[&id].raft,
            Bytes::from("k99"),
            ReadConsistency::Linearizable,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(read, Bytes::from("v99"), "node {id}");
    }
    let stats = cluster.nodes[&leader].transport.stats();
    for (peer, figures) in &stats.peers {
        assert!(
            figures.connected && figures.messages_sent > 100 && figures.rtt.is_some(),
            "{peer}: {figures:?}"
        );
    }
    assert_eq!(stats.rejections.total(), 0);
    cluster.shutdown().await;
}

/// A follower misses writes while down; the leader compacted its log, so
/// the follower gets the whole 100 MiB state as a snapshot. The term and
/// leader never change during the transfer, and the follower hears
/// heartbeats throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_follower_receives_a_100_mib_snapshot_while_heartbeats_flow() {
    let mut cluster = QuicCluster::bootstrap(&[1, 2, 3], SNAPSHOT_BYTES).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(leader, "before", "1").await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let other = [1, 2, 3].into_iter().find(|id| *id != leader && *id != follower).unwrap();
    cluster.stop(follower).await;
    for i in 0..20 {
        cluster.put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    let snapshot = cluster.nodes[&leader].raft.trigger_snapshot().await.unwrap();
    let term = cluster.status(leader).term;
    // Appends queued for the follower while it was down expire, so it needs
    // the snapshot rather than catching up from the leader's stale queue.
    tokio::time::sleep(QUEUE_MAX_AGE * 2).await;

    let started = Instant::now();
    cluster.start(follower, StartMode::Restart).await;
    let status = cluster
        .wait_for(follower, "installing the snapshot", |s| {
            s.snapshot_index >= snapshot.last_index && s.applied_index >= snapshot.last_index
        })
        .await;
    let elapsed = started.elapsed();
    assert!(status.stopped.is_none(), "the follower failed: {status:?}");

    for id in [leader, other, follower] {
        let status = cluster.status(id);
        assert_eq!(status.term, term, "node {id}'s term changed during the transfer: {status:?}");
        assert_eq!(status.leader, NodeId(leader), "node {id} changed leader: {status:?}");
    }
    let gap = cluster.nodes[&follower].heartbeats.longest_gap_after(started);
    let beats = cluster.nodes[&follower].heartbeats.count_after(started);
    let election_timeout = TICK * ELECTION_TIMEOUT_TICKS as u32;
    assert!(gap < election_timeout / 2, "longest heartbeat gap {gap:?} over {beats} heartbeats");
    let read = cluster.nodes[&follower].raft.read(Bytes::from("k19"), ReadConsistency::Stale).await.unwrap();
    assert_eq!(read, Bytes::from("v19"));
    eprintln!(
        "100 MiB snapshot installed in {elapsed:?} ({:.1} MB/s incl. restart), {beats} heartbeats, longest gap {gap:?}",
        SNAPSHOT_BYTES as f64 / 1e6 / elapsed.as_secs_f64()
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_survives_restarts_of_a_follower_and_the_leader() {
    let mut cluster = QuicCluster::bootstrap(&[1, 2, 3], 0).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(leader, "a", "1").await;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.stop(follower).await;
    cluster.put(leader, "a", "2").await;
    cluster.start(follower, StartMode::Restart).await;
    let applied = cluster.status(leader).applied_index;
    cluster.wait_for(follower, "catching up", |s| s.applied_index >= applied).await;

    // Now the leader goes away; the others elect a new one and go on.
    cluster.stop(leader).await;
    let rest: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = cluster.wait_for_leader(&rest).await;
    cluster.put(new_leader, "a", "3").await;
    cluster.start(leader, StartMode::Restart).await;
    cluster.wait_for(leader, "following the new leader", |s| s.leader == NodeId(new_leader)).await;
    for id in [1, 2, 3] {
        let read = read_retrying(
            &cluster.nodes[&id].raft,
            Bytes::from("a"),
            ReadConsistency::Linearizable,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        assert_eq!(read, Bytes::from("3"), "node {id}");
    }
    // Every restart ended with at most one connection per pair (followers
    // need no connection between themselves).
    tokio::time::sleep(Duration::from_secs(1)).await;
    for id in [1, 2, 3] {
        let stats = cluster.nodes[&id].transport.stats();
        let connected = stats.peers.values().filter(|peer| peer.connected).count();
        assert_eq!(stats.open_connections, connected, "node {id}: {stats:?}");
    }
    cluster.shutdown().await;
}
