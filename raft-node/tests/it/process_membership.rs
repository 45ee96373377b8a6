//! Membership changes on real `raft-node` processes: a removed node is no
//! longer contacted, and a newcomer joins as a learner, catches up by
//! snapshot and is promoted.

use std::time::{Duration, Instant};

use crate::process::{Cluster, Options};

#[tokio::test]
async fn a_removed_node_is_no_longer_contacted() {
    let cluster = Cluster::start(Options::nodes(3)).await;
    // Node 3 is a follower when it is removed, so that it has counted the
    // leader's messages before the removal (the check below needs a
    // settled, non-zero count). A leader removing itself is left to the
    // next leader's directory upkeep, which drops its entry.
    if cluster.leader().await == 3 {
        cluster.client(1).transfer_leader(Some(1)).await.unwrap();
        assert_ne!(cluster.leader().await, 3);
    }
    cluster.put_many("before", 10).await;

    // Through node 3 itself: it forwards the request to the leader.
    let removed = cluster.client(3).remove_member(3).await.unwrap();
    assert_eq!(removed.members.voters, vec![1, 2]);
    for id in [1, 2] {
        cluster
            .until(&format!("node {id} no longer lists node 3"), async || {
                let status = cluster.client(id).cluster().await.map_err(|e| e.to_string())?;
                let members = &status.members;
                let forgotten = members.voters == [1, 2]
                    && members.learners.is_empty()
                    && members.outgoing_voters.is_empty()
                    && status.nodes.keys().eq([1, 2].iter());
                if forgotten {
                    Ok(())
                } else {
                    Err(format!("{status:?}"))
                }
            })
            .await;
    }

    // Nodes 1 and 2 have dropped node 3 from their directories, so nothing
    // new is sent to it. One reading of node 3's count of received messages
    // is not enough: node 3 refreshes its /metrics from its transport once a
    // second, so a reading may be a second old and still rise with messages
    // sent just before the removal. So: wait until the count has stayed the
    // same for longer than two refreshes; write 50 keys and see them
    // committed on nodes 1 and 2; then watch the count for as long again,
    // failing on any change. A slow machine only delays the first phase
    // (polled within a deadline) or lets the window see fewer refreshes; it
    // cannot fail the test while node 3 receives nothing.
    let received = received_messages_when_settled(&cluster, 3).await;
    assert!(received > 0.0, "node 3 counted no messages while it was a member");
    for n in 0..50 {
        cluster.put_via(1 + n % 2, &format!("after-{n}"), "value").await;
    }
    let digest = cluster.converged_digest_of(&[1, 2]).await;
    assert_eq!(digest.keys, 60);
    let window = Instant::now() + SETTLE_WINDOW;
    while Instant::now() < window {
        let now = cluster.metric_sum(3, "raft_transport_received_messages_total").await;
        assert_eq!(now, received, "node 3 received Raft messages after its removal");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_learner_catches_up_by_snapshot_and_is_promoted() {
    let options = Options { snapshot_log_entries: Some(64), ..Options::nodes(3) };
    let mut cluster = Cluster::start(options).await;
    cluster.put_many("key", 300).await;
    // A snapshot at index i compacts the log to i - 32 (half the
    // threshold), so once one is past 32 the leader no longer has the start
    // of the log to send a newcomer.
    let leader = cluster.leader().await;
    cluster
        .until("the leader has compacted its log", async || {
            let status = cluster.client(leader).cluster().await.map_err(|e| e.to_string())?;
            if status.snapshot_index > 32 {
                Ok(())
            } else {
                Err(format!("{status:?}"))
            }
        })
        .await;

    // Through a follower, which forwards the request to add node 4.
    cluster.join(4, cluster.other_than(leader), "learner").await;
    let members = cluster.status(cluster.leader().await).await.members;
    assert_eq!((members.voters, members.learners), (vec![1, 2, 3], vec![4]));
    let digest = cluster.converged_digest().await;
    assert_eq!(digest.keys, 300);
    cluster
        .until("node 4 counts an installed snapshot", async || {
            let installed = cluster.metric_sum(4, "raft_snapshots_installed_total").await;
            if installed > 0.0 {
                Ok(())
            } else {
                Err(format!("{installed} installed"))
            }
        })
        .await;

    let promoted = cluster.client(4).promote(4).await.unwrap();
    assert_eq!(promoted.members.voters, vec![1, 2, 3, 4]);
    for id in 1..=4 {
        cluster
            .until(&format!("node {id} knows node 4 as a voter"), async || {
                let members = cluster.client(id).cluster().await.map_err(|e| e.to_string())?.members;
                if members.voters == [1, 2, 3, 4] && members.learners.is_empty() {
                    Ok(())
                } else {
                    Err(format!("{members:?}"))
                }
            })
            .await;
    }

    // The four voters go on taking writes, through the newcomer too.
    cluster.put_via(4, "after-promotion", "value").await;
    assert_eq!(cluster.get_via(1, "after-promotion").await.as_deref(), Some("value"));
    assert_eq!(cluster.converged_digest().await.keys, 301);
}

/// Longer than two refreshes of a node's transport metrics (once a second).
const SETTLE_WINDOW: Duration = Duration::from_millis(2_500);

/// Node `id`'s count of received Raft messages once it has not changed for
/// [`SETTLE_WINDOW`].
async fn received_messages_when_settled(cluster: &Cluster, id: u64) -> f64 {
    let mut last = cluster.metric_sum(id, "raft_transport_received_messages_total").await;
    let mut since = Instant::now();
    cluster
        .until(&format!("node {id}'s received message count settles"), async || {
            let now = cluster.metric_sum(id, "raft_transport_received_messages_total").await;
            if now != last {
                (last, since) = (now, Instant::now());
            }
            if since.elapsed() >= SETTLE_WINDOW {
                Ok(now)
            } else {
                Err(format!("{now} messages so far"))
            }
        })
        .await
}
