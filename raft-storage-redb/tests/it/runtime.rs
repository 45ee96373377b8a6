//! raft-core's tokio runtime on the redb stores: a three-node cluster that
//! takes snapshots, compacts its logs, sends a snapshot to a node that fell
//! behind, and restarts every node from disk.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::local::LocalNetwork;
use raft_core::runtime::{
    NodeStatus, Parts, RaftNode, ReadConsistency, RuntimeConfig, SnapshotPolicy, StartMode,
};
use raft_core::testing::client::read_retrying;
use raft_core::testing::map_state_machine::MapStateMachine;
use raft_core::types::{Membership, NodeId, Role};

const WAIT: Duration = Duration::from_secs(30);

/// Opens a node's stores. `RaftNode::shutdown` returns only once the
/// storage task released them, so a restart can reopen them at once (redb
/// allows one open handle per file).
async fn open_when_released(
    directory: &std::path::Path,
) -> (raft_storage_redb::RedbLogStore, raft_storage_redb::RedbSnapshotStore) {
    raft_storage_redb::open_stores(directory).await.expect("the stores reopen right after shutdown")
}

struct Cluster {
    network: LocalNetwork,
    directories: BTreeMap<u64, PathBuf>,
    nodes: BTreeMap<u64, RaftNode>,
    _root: tempfile::TempDir,
}

impl Cluster {
    fn new(ids: &[u64]) -> Self {
        let root = tempfile::tempdir().unwrap();
        let directories = ids.iter().map(|id| (*id, root.path().join(format!("node-{id}")))).collect();
        Cluster { network: LocalNetwork::new(), directories, nodes: BTreeMap::new(), _root: root }
    }

    async fn start(&mut self, id: u64, mode: StartMode) {
        let (log, snapshots) = open_when_released(&self.directories[&id]).await;
        let (transport, inbox) = self.network.register(NodeId(id), 4096);
        let mut config = RuntimeConfig::new(NodeId(id));
        config.tick_interval = Duration::from_millis(10);
        config.engine.snapshot_trailing_entries = 5;
        config.engine.snapshot_chunk_bytes = 100;
        config.snapshot_policy = SnapshotPolicy { max_log_entries: 30 };
        let checkpoints = raft_storage_redb::RedbCheckpointStore::open_async(
            self.directories[&id].join(raft_storage_redb::CHECKPOINT_DIRECTORY_NAME),
        )
        .await
        .expect("the checkpoint store opens");
        let parts = Parts {
            log_store: Arc::new(log),
            snapshot_store: Arc::new(snapshots),
            checkpoint_store: Arc::new(checkpoints),
            state_machine: Box::new(MapStateMachine::default()),
            transport: Arc::new(transport),
            inbox,
        };
        self.nodes.insert(id, RaftNode::start(config, mode, parts).await.expect("the node starts"));
    }

    async fn wait_for(&self, id: u64, what: &str, predicate: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let mut status = self.nodes[&id].status();
        let outcome = tokio::time::timeout(WAIT, status.wait_for(|status| predicate(status)))
            .await
            .map(|result| result.map(|found| found.clone()));
        match outcome {
            Ok(Ok(found)) => found,
            _ => panic!("node {id}: timed out waiting for {what}: {:?}", self.nodes[&id].status().borrow()),
        }
    }

    async fn leader(&self) -> u64 {
        let first = *self.nodes.keys().next().unwrap();
        let leader =
            self.wait_for(first, "a leader", |status| status.leader != NodeId::NONE).await.leader.get();
        self.wait_for(leader, "leadership", |status| status.role == Some(Role::Leader)).await;
        leader
    }

    async fn put_all(&self, range: std::ops::Range<u32>) {
        let leader = self.leader().await;
        for i in range {
            let data = Bytes::from(format!("k{i}=v{i}"));
            self.nodes[&leader].propose(data, None).await.expect("the write commits");
        }
    }

    async fn read(&self, id: u64, key: &str) -> String {
        let value = read_retrying(
            &self.nodes[&id],
            Bytes::from(key.to_string()),
            ReadConsistency::Linearizable,
            WAIT,
        )
        .await;
        String::from_utf8_lossy(&value.expect("the read succeeds")).to_string()
    }

    async fn stop_all(&mut self) {
        for (_, node) in std::mem::take(&mut self.nodes) {
            node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_redb_snapshots_catches_up_a_node_and_restarts_from_disk() {
    let mut cluster = Cluster::new(&[1, 2, 3]);
    let membership = Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    for id in [1, 2, 3] {
        cluster.start(id, StartMode::Bootstrap(membership.clone())).await;
    }
    let leader = cluster.leader().await;
    let behind = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.network.isolate(NodeId(behind));
    cluster.put_all(0..120).await;
    cluster.wait_for(leader, "a snapshot", |status| status.snapshot_index.get() >= 60).await;
    cluster.network.heal();
    let applied = cluster.nodes[&leader].status().borrow().applied_index;
    let caught_up =
        cluster.wait_for(behind, "catching up by snapshot", |status| status.applied_index >= applied).await;
    assert!(caught_up.snapshot_index.get() > 0, "the lagging node installed a snapshot: {caught_up:?}");
    assert_eq!(cluster.read(behind, "k10").await, "v10", "the snapshot reached the lagging node");

    cluster.stop_all().await;
    for id in [1, 2, 3] {
        cluster.start(id, StartMode::Restart).await;
    }
    cluster.put_all(120..130).await;
    for id in [1, 2, 3] {
        assert_eq!(cluster.read(id, "k5").await, "v5", "node {id} restored its snapshot from disk");
        assert_eq!(cluster.read(id, "k119").await, "v119", "node {id} kept its log");
        assert_eq!(cluster.read(id, "k129").await, "v129", "node {id} goes on after the restart");
    }
    cluster.stop_all().await;
}
