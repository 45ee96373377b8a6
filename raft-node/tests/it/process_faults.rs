//! Real `raft-node` processes stopped and started: kill -9 of the leader,
//! SIGTERM of the leader, and a restart of the whole cluster.

use crate::process::{Cluster, Options};

#[tokio::test]
async fn writes_resume_after_the_leader_is_killed_and_it_catches_up_on_restart() {
    let cluster = Cluster::start(Options::nodes(3)).await;
    cluster.put_many("before", 10).await;
    let old_leader = cluster.leader().await;

    cluster.kill(old_leader);
    // Each write is retried through the surviving nodes, with its
    // idempotency key, until a new leader takes it.
    let mut written = Vec::new();
    for n in 0..10 {
        written.push(cluster.put_anywhere(&format!("after-{n}"), &format!("value-{n}")).await);
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);

    cluster.restart(old_leader).await;
    let digest = cluster.converged_digest().await;
    assert_eq!(digest.keys, 20);
    // The restarted node serves what it missed. Each key's version is the
    // index its write was acknowledged with: a retried write applied once.
    for (n, acknowledged) in written.iter().enumerate() {
        let read = cluster.read_via(old_leader, &format!("after-{n}")).await;
        assert_eq!(read, Some((format!("value-{n}"), acknowledged.index)), "after-{n} on node {old_leader}");
    }
}

#[tokio::test]
async fn sigterm_on_the_leader_hands_leadership_over_and_exits_cleanly() {
    let cluster = Cluster::start(Options::nodes(3)).await;
    cluster.put_many("before", 5).await;
    let old_leader = cluster.leader().await;

    cluster.send_sigterm(old_leader);
    let status = cluster.wait_exit(old_leader).await;
    assert!(status.success(), "node {old_leader} exited with {status}:\n{}", cluster.log_tail(old_leader));
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);

    for n in 0..5 {
        cluster.put_via(cluster.other_than(new_leader), &format!("after-{n}"), "value").await;
    }
    assert_eq!(cluster.converged_digest().await.keys, 10);
}

#[tokio::test]
async fn a_restart_of_every_node_keeps_every_write() {
    let cluster = Cluster::start(Options::nodes(3)).await;
    cluster.put_many("key", 30).await;
    let before = cluster.converged_digest().await;

    for id in 1..=3 {
        cluster.send_sigterm(id);
    }
    for id in 1..=3 {
        let status = cluster.wait_exit(id).await;
        assert!(status.success(), "node {id} exited with {status}:\n{}", cluster.log_tail(id));
    }

    // Without --bootstrap: each node restarts from its data directory.
    for id in 1..=3 {
        cluster.spawn_restart(id);
    }
    for id in 1..=3 {
        cluster.wait_ready(id).await;
    }
    let after = cluster.converged_digest().await;
    assert_eq!((after.keys, &after.hash), (before.keys, &before.hash));
    for n in 0..30 {
        let id = 1 + n as u64 % 3;
        assert_eq!(cluster.get_via(id, &format!("key-{n}")).await, Some(format!("value-{n}")), "node {id}");
    }
}
