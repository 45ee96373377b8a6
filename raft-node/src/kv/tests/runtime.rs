//! Three raft-core runtimes replicating the key-value state machine over the
//! in-process network: a node cut off while the others write and compact
//! catches up from a snapshot, then every node answers the same digest and
//! publishes the same directory.
//!
//! The test waits on status and directory watch channels or polls with a
//! deadline; it never sleeps to synchronise.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raft_core::local::LocalNetwork;
use raft_core::memory::{MemoryLogStore, MemorySnapshotStore};
use raft_core::runtime::{
    NodeStatus, Parts, RaftNode, ReadConsistency, RuntimeConfig, SnapshotPolicy, StartMode,
};
use raft_core::testing::client::read_retrying;
use raft_core::types::{ClientRequestId, Membership, NodeId, Role};

use crate::kv::{
    KvAnswer, KvCommand, KvLimits, KvOutcome, KvQuery, KvResponse, KvStateMachine, KvView, NodeAddresses,
    Precondition,
};

const WAIT: Duration = Duration::from_secs(20);
const IDS: [u64; 3] = [1, 2, 3];

fn config(id: u64) -> RuntimeConfig {
    let mut config = RuntimeConfig::new(NodeId(id));
    config.tick_interval = Duration::from_millis(10);
    config.engine.snapshot_trailing_entries = 5;
    // Small chunks, so the transfer takes many rounds.
    config.engine.snapshot_chunk_bytes = 256;
    config.snapshot_policy = SnapshotPolicy { max_log_entries: 20 };
    config.request_timeout = Duration::from_secs(10);
    config
}

async fn wait_for(node: &RaftNode, what: &str, predicate: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
    let mut status = node.status();
    let outcome = tokio::time::timeout(WAIT, status.wait_for(|s| predicate(s))).await;
    match outcome {
        Ok(Ok(found)) => found.clone(),
        _ => panic!("node {}: timed out waiting for {what}; status: {:?}", node.id(), node.status().borrow()),
    }
}

async fn propose(node: &RaftNode, client: u64, sequence: u64, command: &KvCommand) -> KvOutcome {
    let request = Some(ClientRequestId { client, sequence });
    let committed = node.propose(command.encode(), request).await.expect("the write commits");
    KvResponse::decode(&committed.response).expect("the response decodes").outcome
}

async fn stale_digest(node: &RaftNode) -> KvAnswer {
    let answer = read_retrying(node, KvQuery::Digest.encode(), ReadConsistency::Stale, WAIT)
        .await
        .expect("the digest is answered");
    KvAnswer::decode(&answer).expect("the answer decodes")
}

fn addresses(id: u64) -> NodeAddresses {
    NodeAddresses {
        peer: std::net::SocketAddr::from(([127, 0, 0, id as u8], 7000)),
        client: format!("http://127.0.0.{id}:8080"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_catches_up_from_a_snapshot_and_all_agree_on_the_digest() {
    let network = LocalNetwork::new();
    let membership = Membership::with_voters(IDS.map(NodeId));
    let mut nodes: BTreeMap<u64, RaftNode> = BTreeMap::new();
    let mut views: BTreeMap<u64, KvView> = BTreeMap::new();
    for id in IDS {
        let (transport, inbox) = network.register(NodeId(id), 4096);
        let (state_machine, view) = KvStateMachine::new(KvLimits { max_dedup_clients: 8 });
        let parts = Parts {
            log_store: Arc::new(MemoryLogStore::new()),
            snapshot_store: Arc::new(MemorySnapshotStore::new()),
            checkpoint_store: Arc::new(raft_core::memory::MemoryCheckpointStore::new()),
            state_machine: Box::new(state_machine),
            transport: Arc::new(transport),
            inbox,
        };
        let node = RaftNode::start(config(id), StartMode::Bootstrap(membership.clone()), parts)
            .await
            .expect("the node starts");
        nodes.insert(id, node);
        views.insert(id, view);
    }

    let leader = wait_for(&nodes[&1], "a leader", |s| s.leader != NodeId::NONE).await.leader.get();
    wait_for(&nodes[&leader], "leadership", |s| s.role == Some(Role::Leader)).await;
    let lagging = IDS.into_iter().find(|id| *id != leader).expect("a follower");
    network.isolate(NodeId(lagging));

    // The directory, then many writes from a dozen clients (more than the
    // dedup table holds, so it evicts), with retries among them.
    for id in IDS {
        let set = KvCommand::SetNode { id: NodeId(id), addresses: addresses(id) };
        assert_eq!(propose(&nodes[&leader], 100, id, &set).await, KvOutcome::Done);
    }
    for i in 0..120u64 {
        let put = KvCommand::Put {
            key: format!("key/{}", i % 40),
            value: Bytes::from(format!("value {i}")),
            precondition: Precondition::Always,
        };
        let (client, sequence) = (i % 12, i / 12 + 1);
        let first = propose(&nodes[&leader], client, sequence, &put).await;
        assert!(matches!(first, KvOutcome::Written { .. }), "{first:?}");
        if i % 10 == 0 {
            assert_eq!(propose(&nodes[&leader], client, sequence, &put).await, first, "a retry");
        }
    }
    wait_for(&nodes[&leader], "a snapshot", |s| s.snapshot_index.get() > 60).await;

    network.heal();
    let applied = nodes[&leader].status().borrow().applied_index;
    let status = wait_for(&nodes[&lagging], "catching up", |s| s.applied_index >= applied).await;
    assert!(status.stats.snapshots_installed > 0, "the lagging node installed a snapshot: {status:?}");

    // The directory arrived with the snapshot and was published.
    let mut directory = views[&lagging].directory();
    let published = tokio::time::timeout(WAIT, directory.wait_for(|d| d.len() == 3))
        .await
        .expect("the directory is published in time")
        .expect("the state machine is alive")
        .clone();
    assert_eq!(published, IDS.into_iter().map(|id| (NodeId(id), addresses(id))).collect());

    // Every node answers the same digest once all have applied the same
    // entries (an election in between could add a blank entry: poll).
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut digests = Vec::new();
        for id in IDS {
            digests.push(stale_digest(&nodes[&id]).await);
        }
        if digests.iter().all(|d| *d == digests[0]) {
            let KvAnswer::Digest { keys, applied_index, .. } = &digests[0] else {
                panic!("a digest expected, got {:?}", digests[0]);
            };
            assert_eq!(*keys, 40);
            assert!(*applied_index >= applied.get());
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the digests never agreed: {digests:?}");
        let mut status = nodes[&lagging].status();
        let _ = tokio::time::timeout(Duration::from_millis(200), status.changed()).await;
    }

    for node in nodes.values() {
        node.shutdown().await;
    }
}
