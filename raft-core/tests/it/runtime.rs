//! The tokio runtime with in-memory stores over the in-process network:
//! elections, replication, reads of each consistency, restarts, snapshots
//! sent to a lagging node, membership changes, leadership transfer, and
//! checkpoints with rollback.
//!
//! Tests wait on the nodes' status watches, never on sleeps.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::local::LocalNetwork;
use raft_core::memory::{MemoryLogStore, MemorySnapshotStore};
use raft_core::protocol::MembershipChange;
use raft_core::runtime::{
    CheckpointError, CheckpointLimits, ClientError, NodeStatus, Parts, RaftNode, ReadConsistency,
    RuntimeConfig, SnapshotPolicy, StartMode,
};
use raft_core::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use raft_core::storage::SnapshotReader;
use raft_core::testing::client::read_retrying;
use raft_core::testing::map_state_machine::MapStateMachine;
use raft_core::types::{Entry, EntryPayload, LogIndex, Membership, NodeId, Role, Term};

/// How often the runtime called a node's state machine to replace its state.
#[derive(Debug, Default)]
struct RestoreCalls {
    /// `StateMachine::restore`: snapshot installs and restarts.
    restores: AtomicU64,
    /// `StateMachine::restore_checkpoint`: rollbacks.
    rollbacks: AtomicU64,
}

impl RestoreCalls {
    fn counts(&self) -> (u64, u64) {
        (self.restores.load(Ordering::SeqCst), self.rollbacks.load(Ordering::SeqCst))
    }
}

/// The key a rollback leaves alone, like raft-node's node directory: the
/// state machine below overrides `restore_checkpoint` to keep its current
/// value.
const PINNED_KEY: &str = "pinned";

/// A [`MapStateMachine`] that counts the runtime's calls to `restore` and
/// `restore_checkpoint`, and rolls back everything but [`PINNED_KEY`].
struct CountingStateMachine {
    inner: MapStateMachine,
    calls: Arc<RestoreCalls>,
}

#[async_trait]
impl StateMachine for CountingStateMachine {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        self.inner.apply(entries).await
    }

    async fn query(&mut self, query: Bytes) -> Result<Bytes, StateMachineError> {
        self.inner.query(query).await
    }

    async fn begin_snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        self.inner.begin_snapshot().await
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), StateMachineError> {
        self.calls.restores.fetch_add(1, Ordering::SeqCst);
        self.inner.restore(snapshot).await
    }

    async fn restore_checkpoint(
        &mut self,
        checkpoint: &mut dyn SnapshotReader,
    ) -> Result<(), StateMachineError> {
        self.calls.rollbacks.fetch_add(1, Ordering::SeqCst);
        let pinned = self.inner.value(PINNED_KEY).map(str::to_string);
        self.inner.restore(checkpoint).await?;
        // Put the pinned key back as it was before the rollback (or remove
        // it). The map applies commands whatever their index.
        let data = format!("{PINNED_KEY}={}", pinned.unwrap_or_default());
        let entry = Entry {
            term: Term(0),
            index: LogIndex(0),
            payload: EntryPayload::Command { client: None, data: Bytes::from(data) },
        };
        self.inner.apply(&[entry]).await?;
        Ok(())
    }
}

/// The stores of one node, kept across restarts.
#[derive(Clone, Default)]
struct Disk {
    log: MemoryLogStore,
    snapshots: MemorySnapshotStore,
    checkpoints: raft_core::memory::MemoryCheckpointStore,
}

struct TestCluster {
    network: LocalNetwork,
    disks: BTreeMap<u64, Disk>,
    nodes: BTreeMap<u64, RaftNode>,
    snapshot_after_entries: u64,
    /// Checkpoint bounds other than the defaults.
    limits: Option<CheckpointLimits>,
    /// Each node's calls to replace its state, across restarts.
    restore_calls: BTreeMap<u64, Arc<RestoreCalls>>,
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
            limits: None,
            restore_calls: BTreeMap::new(),
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
        if let Some(limits) = &self.limits {
            config.checkpoint_limits = limits.clone();
        }
        config
    }

    async fn start(&mut self, id: u64, mode: StartMode) {
        let disk = self.disks.entry(id).or_default().clone();
        let (transport, inbox) = self.network.register(NodeId(id), 4096);
        let calls = Arc::clone(self.restore_calls.entry(id).or_default());
        let parts = Parts {
            log_store: Arc::new(disk.log),
            snapshot_store: Arc::new(disk.snapshots),
            checkpoint_store: Arc::new(disk.checkpoints),
            state_machine: Box::new(CountingStateMachine { inner: MapStateMachine::default(), calls }),
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

/// The value of `key` on node `id` as it is now (no leader needed).
async fn stale(cluster: &TestCluster, id: u64, key: &str) -> String {
    cluster.read(id, key, ReadConsistency::Stale).await.unwrap()
}

/// Waits until every given node applied what the leader applied. The
/// leader's status is published on ticks, so it is first brought up to
/// date with a write.
async fn settle(cluster: &TestCluster, leader: u64, ids: &[u64]) {
    let marker = cluster.nodes[&leader].propose(Bytes::from_static(b"settle=1"), None).await.unwrap();
    cluster.wait_applied_everywhere(ids, marker.index).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_restores_every_replica_to_the_checkpoint_and_later_writes_apply_on_top() {
    let cluster = TestCluster::bootstrap(&[1, 2, 3]).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let raft = &cluster.nodes[&leader];
    cluster.put(leader, "a", "1").await;
    cluster.put(leader, "b", "1").await;
    let info = raft.checkpoint("good").await.expect("the checkpoint is taken");
    assert_eq!(info.meta.name, "good");
    assert!(info.size_bytes > 0);
    cluster.put(leader, "a", "2").await;
    cluster.put(leader, "c", "2").await;

    // Errors are decided the same way everywhere and say what is wrong.
    let duplicate = raft.checkpoint("good").await.unwrap_err();
    assert_eq!(duplicate, ClientError::Checkpoint(CheckpointError::AlreadyExists("good".into())));
    let unknown = raft.rollback("missing").await.unwrap_err();
    assert_eq!(unknown, ClientError::Checkpoint(CheckpointError::NotFound("missing".into())));
    assert!(matches!(
        raft.checkpoint("../etc").await,
        Err(ClientError::Checkpoint(CheckpointError::InvalidName { .. }))
    ));

    let rollback = raft.rollback("good").await.expect("the rollback commits");
    assert!(rollback.index > info.meta.snapshot.last_index);
    cluster.put(leader, "d", "3").await;
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        assert_eq!(stale(&cluster, id, "a").await, "1", "node {id}: a is back to its checkpointed value");
        assert_eq!(stale(&cluster, id, "b").await, "1", "node {id}");
        assert_eq!(stale(&cluster, id, "c").await, "", "node {id}: c did not exist at the checkpoint");
        assert_eq!(
            stale(&cluster, id, "d").await,
            "3",
            "node {id}: the write after the rollback applies on top"
        );
        let names: Vec<String> =
            cluster.nodes[&id].list_checkpoints().into_iter().map(|i| i.meta.name).collect();
        assert_eq!(names, ["good"], "node {id}");
        assert_eq!(
            cluster.nodes[&id].list_checkpoints()[0],
            info,
            "node {id}: same checkpoint, same checksum"
        );
        assert_eq!(cluster.nodes[&id].last_rollback_index(), Some(rollback.index), "node {id}");
    }

    let deleted = raft.delete_checkpoint("good").await.expect("the delete commits");
    cluster.wait_applied_everywhere(&[1, 2, 3], deleted.index).await;
    for id in [1, 2, 3] {
        assert!(cluster.nodes[&id].list_checkpoints().is_empty(), "node {id}");
    }
    let gone = raft.rollback("good").await.unwrap_err();
    assert_eq!(gone, ClientError::Checkpoint(CheckpointError::NotFound("good".into())));
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_count_is_bounded() {
    let mut cluster = TestCluster::bootstrap(&[1]).await;
    cluster.stop(1).await;
    cluster.limits = Some(CheckpointLimits { max_count: 2, ..CheckpointLimits::default() });
    cluster.start(1, StartMode::Restart).await;
    let leader = cluster.wait_for_leader(&[1]).await;
    let raft = &cluster.nodes[&leader];
    raft.checkpoint("one").await.unwrap();
    raft.checkpoint("two").await.unwrap();
    let refused = raft.checkpoint("three").await.unwrap_err();
    assert_eq!(refused, ClientError::Checkpoint(CheckpointError::TooMany { count: 2, max_count: 2 }));
    assert!(refused.to_string().contains("max_count 2"), "{refused}");
    raft.delete_checkpoint("one").await.unwrap();
    raft.checkpoint("three").await.expect("room again after a delete");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_node_catches_up_across_a_rollback_and_gets_the_checkpoint_by_snapshot() {
    let cluster = TestCluster::bootstrap_with(&[1, 2, 3], 20).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let lagging = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let raft = &cluster.nodes[&leader];
    cluster.put(leader, "k", "checkpointed").await;
    raft.checkpoint("base").await.unwrap();
    cluster.network.isolate(NodeId(lagging));
    for i in 0..60 {
        cluster.put(leader, "k", &format!("later-{i}")).await;
    }
    raft.rollback("base").await.unwrap();
    for i in 0..60 {
        cluster.put(leader, &format!("after-{i}"), "x").await;
    }
    let rollback_index = cluster.nodes[&leader].last_rollback_index().unwrap();
    cluster.wait_for(leader, "a snapshot after the rollback", |s| s.snapshot_index > rollback_index).await;
    cluster.network.heal();
    settle(&cluster, leader, &[1, 2, 3]).await;
    let status = cluster.nodes[&lagging].status().borrow().clone();
    assert!(status.snapshot_index > rollback_index, "the lagging node installed a snapshot: {status:?}");
    assert_eq!(stale(&cluster, lagging, "k").await, "checkpointed");
    assert_eq!(stale(&cluster, lagging, "after-59").await, "x");
    // The checkpoint came with the snapshot, so a later rollback works on
    // the lagging node like everywhere else.
    assert_eq!(cluster.nodes[&lagging].list_checkpoints(), raft.list_checkpoints());
    cluster.put(leader, "k", "changed-again").await;
    raft.rollback("base").await.unwrap();
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        assert_eq!(stale(&cluster, id, "k").await, "checkpointed", "node {id}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_nodes_keep_their_checkpoints() {
    let mut cluster = TestCluster::bootstrap_with(&[1, 2, 3], 20).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(leader, "k", "v1").await;
    let early = cluster.nodes[&leader].checkpoint("early").await.unwrap();
    for i in 0..40 {
        cluster.put(leader, &format!("filler-{i}"), "x").await;
    }
    // One checkpoint before the last snapshot, one after it.
    cluster.wait_for(leader, "a snapshot", |s| s.snapshot_index > early.meta.snapshot.last_index).await;
    cluster.put(leader, "k", "v2").await;
    let late = cluster.nodes[&leader].checkpoint("late").await.unwrap();
    cluster.put(leader, "k", "v3").await;
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.start(id, StartMode::Restart).await;
    }
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.put(leader, "after-restart", "y").await;
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        assert_eq!(cluster.nodes[&id].list_checkpoints(), vec![early.clone(), late.clone()], "node {id}");
    }
    cluster.nodes[&leader].rollback("late").await.unwrap();
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        assert_eq!(stale(&cluster, id, "k").await, "v2", "node {id}");
    }
    cluster.nodes[&leader].rollback("early").await.unwrap();
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        assert_eq!(stale(&cluster, id, "k").await, "v1", "node {id}");
        assert_eq!(stale(&cluster, id, "filler-0").await, "", "node {id}");
    }
    cluster.shutdown().await;
}

/// A rollback goes through `StateMachine::restore_checkpoint`, so a state
/// machine can keep part of its state (here the pinned key, in raft-node
/// the node directory); installing a snapshot goes through `restore` and
/// replaces everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_calls_restore_checkpoint_and_a_snapshot_install_calls_restore() {
    let cluster = TestCluster::bootstrap_with(&[1, 2, 3], 20).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let lagging = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap();
    let connected: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != lagging).collect();
    let raft = &cluster.nodes[&leader];
    cluster.put(leader, "data", "checkpointed").await;
    cluster.put(leader, PINNED_KEY, "before").await;
    raft.checkpoint("base").await.unwrap();
    cluster.network.isolate(NodeId(lagging));
    cluster.put(leader, "data", "later").await;
    cluster.put(leader, PINNED_KEY, "after").await;
    raft.rollback("base").await.unwrap();
    settle(&cluster, leader, &connected).await;
    for id in &connected {
        assert_eq!(cluster.restore_calls[id].counts(), (0, 1), "node {id}: (restores, rollbacks)");
        assert_eq!(stale(&cluster, *id, "data").await, "checkpointed", "node {id}: the data rolled back");
        assert_eq!(stale(&cluster, *id, PINNED_KEY).await, "after", "node {id}: the override kept this");
    }

    // The lagging node catches up by a snapshot taken after the rollback:
    // it installs the rolled-back state and never applies the rollback.
    let rollback_index = raft.last_rollback_index().unwrap();
    for i in 0..40 {
        cluster.put(leader, &format!("filler-{i}"), "x").await;
    }
    cluster.wait_for(leader, "a snapshot after the rollback", |s| s.snapshot_index > rollback_index).await;
    cluster.network.heal();
    settle(&cluster, leader, &[1, 2, 3]).await;
    let (restores, rollbacks) = cluster.restore_calls[&lagging].counts();
    assert!(
        restores >= 1 && rollbacks == 0,
        "lagging node {lagging}: {restores} restores, {rollbacks} rollbacks"
    );
    assert_eq!(stale(&cluster, lagging, "data").await, "checkpointed");
    assert_eq!(stale(&cluster, lagging, PINNED_KEY).await, "after");

    // A second rollback reaches every node through the hook, the one that
    // caught up by snapshot included.
    cluster.put(leader, "data", "again").await;
    cluster.put(leader, PINNED_KEY, "latest").await;
    raft.rollback("base").await.unwrap();
    settle(&cluster, leader, &[1, 2, 3]).await;
    for id in [1, 2, 3] {
        let rollbacks = cluster.restore_calls[&id].counts().1;
        let expected = if id == lagging { 1 } else { 2 };
        assert_eq!(rollbacks, expected, "node {id}");
        assert_eq!(stale(&cluster, id, "data").await, "checkpointed", "node {id}");
        assert_eq!(stale(&cluster, id, PINNED_KEY).await, "latest", "node {id}");
    }
    cluster.shutdown().await;
}
