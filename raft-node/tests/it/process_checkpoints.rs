//! Checkpoints on real `raft-node` processes: a rollback on a new leader
//! after kill -9 of the old one, and a new cluster started from an
//! exported checkpoint, through the CLI.

use std::process::Command;

use raft_node::api::CheckpointSummary;

use crate::process::{Cluster, Options};

const NODE_BINARY: &str = env!("CARGO_BIN_EXE_raft-node");

/// Waits until every node of `nodes` lists the checkpoint `name`.
async fn listed_everywhere(cluster: &Cluster, nodes: &[u64], name: &str) {
    cluster
        .until(&format!("nodes {nodes:?} list checkpoint {name}"), async || {
            for id in nodes {
                let listing =
                    cluster.client(*id).checkpoints().await.map_err(|e| format!("node {id}: {e}"))?;
                if !listing.checkpoints.iter().any(|c| c.name == name) {
                    return Err(format!("node {id} lists {:?}", listing.checkpoints));
                }
            }
            Ok(())
        })
        .await;
}

/// Runs the `raft-node` CLI against `endpoint`; returns its exit code and
/// standard output.
fn cli(endpoint: &str, args: &[&str]) -> (i32, String) {
    let output = Command::new(NODE_BINARY).args(args).arg("--endpoint").arg(endpoint).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().unwrap_or(-1);
    assert!(code == 0 || !stderr.is_empty(), "exit code {code} without a message");
    (code, String::from_utf8_lossy(&output.stdout).into_owned() + &stderr)
}

#[tokio::test]
async fn a_rollback_on_a_new_leader_after_kill_9_restores_every_replica() {
    let cluster = Cluster::start(Options::nodes(3)).await;
    cluster.put_many("before", 10).await;
    let leader = cluster.leader().await;
    let created: CheckpointSummary = cluster.client(leader).create_checkpoint("steady").await.unwrap();
    let at_checkpoint = cluster.converged_digest().await;
    listed_everywhere(&cluster, &[1, 2, 3], "steady").await;

    // Writes after the checkpoint, then the leader dies.
    cluster.put_via(leader, "before-0", "overwritten").await;
    for n in 0..5 {
        cluster.put_via(leader, &format!("after-{n}"), "lost by the rollback").await;
    }
    cluster.kill(leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);

    let rolled_back = cluster
        .until("the new leader rolls back", async || {
            cluster.client(new_leader).rollback("steady").await.map_err(|e| e.to_string())
        })
        .await;
    assert!(rolled_back.index > created.index);
    let survivors = cluster.running();
    let restored = cluster.converged_digest_of(&survivors).await;
    assert_eq!((restored.keys, &restored.hash), (at_checkpoint.keys, &at_checkpoint.hash));

    // A write after the rollback applies on top; the killed node comes
    // back, replays the rollback and agrees.
    let later = cluster.put_via(new_leader, "later", "after the rollback").await;
    assert!(later.index > rolled_back.index);
    cluster.restart(leader).await;
    let digest = cluster.converged_digest().await;
    assert_eq!(digest.keys, at_checkpoint.keys + 1);
    for id in 1..=3 {
        cluster
            .until(&format!("node {id} applied the later write"), async || {
                let read = cluster.client(id).get("later", raft_node::api::Consistency::Stale).await;
                match read.map_err(|e| e.to_string())? {
                    Some((value, _)) if value == "after the rollback" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            })
            .await;
        assert_eq!(cluster.get_via(id, "before-0").await.as_deref(), Some("value-0"), "node {id}");
        assert_eq!(cluster.get_via(id, "after-0").await, None, "node {id}");
    }
}

#[tokio::test]
async fn an_exported_checkpoint_starts_a_new_cluster_with_identical_state() {
    let source = Cluster::start(Options::nodes(3)).await;
    source.put_many("key", 20).await;
    let leader = source.leader().await;
    let url = source.url(leader);
    let (code, output) = cli(&url, &["checkpoint", "create", "golden"]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("checkpoint golden created at index"), "{output}");
    let at_checkpoint = source.converged_digest().await;
    source.put_via(leader, "key-0", "changed after the checkpoint").await;
    listed_everywhere(&source, &[1, 2, 3], "golden").await;
    let listing = source.client(leader).checkpoints().await.unwrap();
    let checkpoint_index = listing.checkpoints[0].index;

    let (code, output) = cli(&url, &["checkpoint", "list"]);
    assert_eq!(code, 0, "{output}");
    assert!(output.starts_with("golden\tindex "), "{output}");
    let (code, output) = cli(&url, &["checkpoint", "rollback", "missing"]);
    assert_eq!(code, 4, "{output}");

    // Export from a follower, through the CLI.
    let files = tempfile::tempdir().unwrap();
    let file = files.path().join("golden.checkpoint");
    let follower = source.other_than(leader);
    let (code, output) =
        cli(&source.url(follower), &["checkpoint", "export", "golden", "-o", file.to_str().unwrap()]);
    assert_eq!(code, 0, "{output}");
    drop(source);

    let restored = Cluster::start(Options { restore_from: Some(file.clone()), ..Options::nodes(3) }).await;
    let digest = restored.converged_digest().await;
    assert_eq!((digest.keys, &digest.hash), (at_checkpoint.keys, &at_checkpoint.hash));
    let leader = restored.leader().await;
    assert_eq!(restored.get_via(leader, "key-0").await.as_deref(), Some("value-0"));
    let written = restored.put_via(leader, "new", "in the new cluster").await;
    // The new cluster's log starts after the checkpoint's index, so the
    // versions it restored stay below every new one.
    assert!(written.index > checkpoint_index, "{written:?} after checkpoint index {checkpoint_index}");
    assert_eq!(restored.converged_digest().await.keys, at_checkpoint.keys + 1);
}
