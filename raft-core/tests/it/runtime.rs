//! The tokio runtime with in-memory stores over the in-process network:
//! elections, replication, reads of each consistency, restarts, snapshots
//! sent to a lagging node, membership changes and leadership transfer.
//!
//! Tests wait on the nodes' status watches, never on sleeps.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::local::LocalNetwork;
use raft_core::memory::{MemoryLogStore, MemorySnapshotStore};
use raft_core::protocol::MembershipChange;
use raft_core::runtime::{
    ClientError, NodeStatus, Parts, RaftNode, ReadConsistency, RuntimeConfig, SnapshotPolicy, StartMode,
};
use raft_core::testing::client::read_retrying;
use raft_core::testing::map_state_machine::MapStateMachine;
use raft_core::types::{Membership, NodeId, Role};

/// The stores of one node, kept across restarts.
#[derive(Clone, Default)]
struct Disk {
    log: MemoryLogStore,
    snapshots: MemorySnapshotStore,
}

struct TestCluster {
    network: LocalNetwork,
    disks: BTreeMap<u64, Disk>,
    nodes: BTreeMap<u64, RaftNode>,
    snapshot_after_entries: u64,
}

const WAIT: Duration = Duration::from_secs(20);

impl TestCluster {
    async fn bootstrap(voters: &[u64]) -> Self {
        Self::bootstrap_with(voters, 50_000).await
    }

    async fn bootstrap_with(voters: &[u64], snapshot_after_entries: u64) -> Self {
        let mut cluster = TestCluster {
            network: LocalNetwork::new(),
            disks: BTreeMap::new(),
            nodes: BTreeMap::new(),
            snapshot_after_entries,
        };
        let membership = Membership::with_voters(voters.iter().map(|id| NodeId(*id)));
        for id in voters {
            cluster.start(*id, StartMode::Bootstrap(membership.clone())).await;
        }
        cluster
    }

    fn config(&self, id: u64) -> RuntimeConfig {
        let mut config = RuntimeConfig::new(NodeId(id));
        config.tick_interval = Duration::from_millis(10);
        config.engine.snapshot_trailing_entries = 5;
        config.engine.snapshot_chunk_bytes = 64;
        config.engine.lease_reads = true;
        config.engine.promotion_max_lag_entries = 10;
        config.snapshot_policy = SnapshotPolicy { max_log_entries: self.snapshot_after_entries };
        config.request_timeout = Duration::from_secs(10);
        config
    }

    async fn start(&mut self, id: u64, mode: StartMode) {
        let disk = self.disks.entry(id).or_default().clone();
        let (transport, inbox) = self.network.register(NodeId(id), 4096);
        let parts = Parts {
            log_store: Arc::new(disk.log),
            snapshot_store: Arc::new(disk.snapshots),
            state_machine: Box::new(MapStateMachine::default()),
            transport: Arc::new(transport),
            inbox,
        };
        let node = RaftNode::start(self.config(id), mode, parts).await.expect("node starts");
        self.nodes.insert(id, node);
    }

    async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.shutdown().await;
        }
    }

    /// Waits until `id`'s status satisfies `predicate`.
    async fn wait_for(&self, id: u64, what: &str, predicate: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let mut status = self.nodes[&id].status();
        let outcome = tokio::time::timeout(WAIT, status.wait_for(|s| predicate(s)))
            .await
            .map(|result| result.map(|found| found.clone()));
        match outcome {
            Ok(Ok(found)) => found,
            _ => panic!(
                "node {id}: timed out waiting for {what}; status: {:?}",
                self.nodes[&id].status().borrow()
            ),
        }
    }

    /// Waits until some running node leads with every given node following it.
    async fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let first = among[0];
        let status = self
            .wait_for(first, "a leader", |s| s.leader != NodeId::NONE && among.contains(&s.leader.get()))
            .await;
        let leader = status.leader.get();
        self.wait_for(leader, "leadership", |s| s.role == Some(Role::Leader)).await;
        leader
    }

    async fn put(&self, leader: u64, key: &str, value: &str) {
        let data = Bytes::from(format!("{key}={value}"));
        self.nodes[&leader].propose(data, None).await.expect("the write commits");
    }

    /// Reads like a patient client (see `read_retrying`).
    async fn read(&self, id: u64, key: &str, consistency: ReadConsistency) -> Result<String, ClientError> {
        let bytes = read_retrying(&self.nodes[&id], Bytes::from(key.to_string()), consistency, WAIT).await?;
        Ok(String::from_utf8_lossy(&bytes).to_string())
    }

    async fn wait_applied_everywhere(&self, ids: &[u64], index: raft_core::LogIndex) {
        for id in ids {
            self.wait_for(*id, "applying", |s| s.applied_index >= index).await;
        }
    }

    async fn shutdown(self) {
        for node in self.nodes.values() {
            node.shutdown().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_runtimes_elect_replicate_and_read() {
    let cluster = TestCluster::bootstrap(&[1, 2, 3]).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    for i in 0..50 {
        cluster.put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    let applied = cluster.nodes[&leader].status().borrow().applied_index;
    cluster.wait_applied_everywhere(&[1, 2, 3], applied).await;
    for id in [1, 2, 3] {
        assert_eq!(cluster.read(id, "k49", ReadConsistency::Linearizable).await.unwrap(), "v49", "node {id}");
        assert_eq!(cluster.read(id, "k7", ReadConsistency::Stale).await.unwrap(), "v7", "node {id}");
    }
    assert_eq!(cluster.read(leader, "k3", ReadConsistency::Lease).await.unwrap(), "v3");
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let refused = cluster.nodes[&follower].propose(Bytes::from_static(b"x=y"), None).await.unwrap_err();
    assert_eq!(refused.leader_hint(), Some(NodeId(leader)));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_isolated_leader_is_replaced_and_writes_go_on() {
    let cluster = TestCluster::bootstrap(&[1, 2, 3]).await;
    let old = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(old, "a", "1").await;
    cluster.network.isolate(NodeId(old));
    let others: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != old).collect();
    let new = cluster
        .wait_for(others[0], "a new leader", |s| s.leader != NodeId::NONE && s.leader != NodeId(old))
        .await
        .leader
        .get();
    cluster.wait_for(new, "leadership", |s| s.role == Some(Role::Leader)).await;
    cluster.put(new, "a", "2").await;
    // CheckQuorum: the old leader steps down without a quorum.
    cluster.wait_for(old, "stepping down", |s| s.role != Some(Role::Leader)).await;
    cluster.network.heal();
    cluster.wait_for(old, "following the new leader", |s| s.leader == NodeId(new)).await;
    assert_eq!(cluster.read(old, "a", ReadConsistency::Linearizable).await.unwrap(), "2");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_keep_their_data() {
    let mut cluster = TestCluster::bootstrap(&[1, 2, 3]).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    for i in 0..20 {
        cluster.put(leader, &format!("k{i}"), "before").await;
    }
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.start(id, StartMode::Restart).await;
    }
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(leader, "after", "yes").await;
    for id in [1, 2, 3] {
        assert_eq!(cluster.read(id, "k19", ReadConsistency::Linearizable).await.unwrap(), "before");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_from_a_snapshot() {
    let cluster = TestCluster::bootstrap_with(&[1, 2, 3], 20).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let lagging = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    cluster.network.isolate(NodeId(lagging));
    for i in 0..100 {
        cluster.put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    cluster.wait_for(leader, "a snapshot", |s| s.snapshot_index.get() > 50).await;
    cluster.network.heal();
    let applied = cluster.nodes[&leader].status().borrow().applied_index;
    cluster.wait_applied_everywhere(&[lagging], applied).await;
    let status = cluster.nodes[&lagging].status().borrow().clone();
    assert!(status.snapshot_index.get() > 0, "the lagging node installed a snapshot: {status:?}");
    assert_eq!(cluster.read(lagging, "k99", ReadConsistency::Stale).await.unwrap(), "v99");
    assert_eq!(cluster.read(lagging, "k0", ReadConsistency::Stale).await.unwrap(), "v0");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_and_leadership_transfer() {
    let mut cluster = TestCluster::bootstrap(&[1, 2, 3]).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(leader, "x", "1").await;
    // A new, empty node joins as a learner, catches up, and is promoted.
    cluster.start(4, StartMode::Restart).await;
    cluster.nodes[&leader].change_membership(MembershipChange::AddLearner(NodeId(4))).await.unwrap();
    let applied = cluster.nodes[&leader].status().borrow().applied_index;
    cluster.wait_applied_everywhere(&[4], applied).await;
    cluster.nodes[&leader].change_membership(MembershipChange::PromoteLearner(NodeId(4))).await.unwrap();
    cluster.wait_for(4, "being a voter", |s| s.membership.voters.contains(&NodeId(4))).await;
    // Hand leadership to node 4, then remove the old leader.
    cluster.nodes[&leader].transfer_leadership(NodeId(4)).await.unwrap();
    cluster.wait_for(4, "leading", |s| s.role == Some(Role::Leader)).await;
    cluster.nodes[&4].change_membership(MembershipChange::Remove(NodeId(leader))).await.unwrap();
    cluster.put(4, "x", "2").await;
    let remaining: Vec<u64> = [1, 2, 3, 4].into_iter().filter(|id| *id != leader).collect();
    for id in &remaining {
        let status =
            cluster.wait_for(*id, "the new configuration", |s| !s.membership.contains(NodeId(leader))).await;
        assert_eq!(status.membership.voters.len(), 3);
        assert_eq!(cluster.read(*id, "x", ReadConsistency::Linearizable).await.unwrap(), "2");
    }
    cluster.stop(leader).await;
    cluster.shutdown().await;
}
