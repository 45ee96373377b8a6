//! Shared test support: certificates, bound transports, raw QUIC clients
//! for rejection tests, and a cluster of raft-core runtimes over QUIC with a
//! string-map state machine that can carry a large synthetic state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use raft_core::memory::{MemoryLogStore, MemorySnapshotStore};
use raft_core::message::{Heartbeat, Message, MessageBody};
use raft_core::runtime::{NodeStatus, Parts, RaftNode, RuntimeConfig, SnapshotPolicy, StartMode};
use raft_core::testing::map_state_machine::MapStateMachine;
use raft_core::transport::Inbox;
use raft_core::types::{LogIndex, Membership, NodeId, Role, Term};
use raft_transport_quic::certs::ClusterCa;
use raft_transport_quic::{ClusterId, NodeIdentity, QuicTransport, TransportConfig};
use tokio::sync::mpsc;

pub const WAIT: Duration = Duration::from_secs(30);

/// Messages queued for an unreachable peer expire after this.
pub const QUEUE_MAX_AGE: Duration = Duration::from_millis(500);

/// A CA and its cluster id, with certificates issued on demand.
pub struct Pki {
    pub cluster: ClusterId,
    pub ca: ClusterCa,
}

impl Pki {
    pub fn new(cluster: &str) -> Pki {
        let cluster = ClusterId::new(cluster).unwrap();
        let ca = ClusterCa::generate(&cluster).unwrap();
        Pki { cluster, ca }
    }

    pub fn identity(&self, node: u64) -> NodeIdentity {
        self.ca.issue_node(NodeId(node), &["127.0.0.1".into()]).unwrap().identity().unwrap()
    }

    pub fn config(&self, node: u64, address: SocketAddr) -> TransportConfig {
        let mut config =
            TransportConfig::new(self.cluster.clone(), NodeId(node), address, self.identity(node));
        // Tests restart peers: redial quickly.
        config.backoff.max = Duration::from_millis(200);
        config.queue_limits.max_age = QUEUE_MAX_AGE;
        config
    }
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A transport and the receiving end of its inbox.
pub fn bind(pki: &Pki, node: u64) -> (QuicTransport, mpsc::Receiver<Message>) {
    let (inbox, receiver) = Inbox::bounded(65_536);
    (QuicTransport::bind(pki.config(node, loopback()), inbox).unwrap(), receiver)
}

/// Lists each transport as a peer of every other.
pub fn connect_all(transports: &[&QuicTransport]) {
    for a in transports {
        for b in transports {
            if a.node_id() != b.node_id() {
                a.set_peer(b.node_id(), b.local_address().unwrap());
            }
        }
    }
}

pub fn heartbeat(from: u64, to: u64, round: u64) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(to),
        term: Term(1),
        body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(0), read_round: round }),
    }
}

pub fn round_of(message: &Message) -> Option<u64> {
    match &message.body {
        MessageBody::Heartbeat(h) => Some(h.read_round),
        _ => None,
    }
}

pub async fn receive(receiver: &mut mpsc::Receiver<Message>) -> Message {
    tokio::time::timeout(WAIT, receiver.recv()).await.expect("a message in time").expect("inbox open")
}

/// Polls `condition` until it holds or the wait runs out.
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// A raw QUIC client, for tests that misbehave on purpose.

/// A client endpoint presenting `identity` (its CA is the root it trusts).
pub fn raw_client(identity: &NodeIdentity) -> quinn::Endpoint {
    let tls = raft_transport_quic::identity::client_tls_config(identity).unwrap();
    raw_client_with(tls)
}

pub fn raw_client_with(tls: rustls::ClientConfig) -> quinn::Endpoint {
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client(loopback()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

/// Waits for the connection to close and returns the application close
/// code and reason the server sent.
pub async fn close_of(connection: &quinn::Connection) -> (quinn::VarInt, String) {
    match tokio::time::timeout(WAIT, connection.closed()).await.expect("closed in time") {
        quinn::ConnectionError::ApplicationClosed(close) => {
            (close.error_code, String::from_utf8_lossy(&close.reason).into_owned())
        }
        other => panic!("expected an application close, got {other}"),
    }
}

// ---------------------------------------------------------------------------
// A cluster of runtimes over QUIC.

/// Arrival times of heartbeats at one node, recorded between the transport
/// and the runtime.
#[derive(Clone, Default)]
pub struct HeartbeatLog(Arc<Mutex<Vec<Instant>>>);

impl HeartbeatLog {
    /// The longest gap between consecutive heartbeats that arrived after `since`.
    pub fn longest_gap_after(&self, since: Instant) -> Duration {
        let times = self.0.lock().unwrap();
        let recent: Vec<Instant> = times.iter().copied().filter(|t| *t >= since).collect();
        recent.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default()
    }

    pub fn count_after(&self, since: Instant) -> usize {
        self.0.lock().unwrap().iter().filter(|t| **t >= since).count()
    }
}

#[derive(Clone, Default)]
struct Disk {
    log: MemoryLogStore,
    snapshots: MemorySnapshotStore,
    checkpoints: raft_core::memory::MemoryCheckpointStore,
}

pub struct Node {
    pub raft: RaftNode,
    pub transport: QuicTransport,
    pub heartbeats: HeartbeatLog,
}

pub struct QuicCluster {
    pub pki: Pki,
    pub addresses: BTreeMap<u64, SocketAddr>,
    pub nodes: BTreeMap<u64, Node>,
    disks: BTreeMap<u64, Disk>,
    ballast_bytes: u64,
    /// Applied to every node's runtime configuration after the defaults.
    adjust: Arc<dyn Fn(&mut RuntimeConfig) + Send + Sync>,
}

/// Engine ticks of 20 ms and a 25-tick election timeout (0.5–1 s): debug
/// builds of QUIC under a snapshot's load keep heartbeats well within it.
pub const TICK: Duration = Duration::from_millis(20);
pub const ELECTION_TIMEOUT_TICKS: u64 = 25;

impl QuicCluster {
    pub async fn bootstrap(voters: &[u64], ballast_bytes: u64) -> QuicCluster {
        Self::bootstrap_with(voters, ballast_bytes, |_| {}).await
    }

    /// Like [`QuicCluster::bootstrap`], with `adjust` applied to every
    /// node's runtime configuration.
    pub async fn bootstrap_with(
        voters: &[u64],
        ballast_bytes: u64,
        adjust: impl Fn(&mut RuntimeConfig) + Send + Sync + 'static,
    ) -> QuicCluster {
        let mut cluster = QuicCluster {
            pki: Pki::new("itest"),
            addresses: BTreeMap::new(),
            nodes: BTreeMap::new(),
            disks: BTreeMap::new(),
            ballast_bytes,
            adjust: Arc::new(adjust),
        };
        let membership = Membership::with_voters(voters.iter().map(|id| NodeId(*id)));
        for id in voters {
            cluster.start(*id, StartMode::Bootstrap(membership.clone())).await;
        }
        cluster
    }

    fn runtime_config(&self, id: u64) -> RuntimeConfig {
        let mut config = RuntimeConfig::new(NodeId(id));
        config.tick_interval = TICK;
        config.engine.election_timeout_ticks = ELECTION_TIMEOUT_TICKS;
        config.engine.snapshot_trailing_entries = 5;
        config.snapshot_policy = SnapshotPolicy { max_log_entries: 1_000_000 };
        config.request_timeout = Duration::from_secs(20);
        (self.adjust)(&mut config);
        config
    }

    /// Binds the node's transport (on its old address after a restart),
    /// wires it to every other node and starts its runtime.
    pub async fn start(&mut self, id: u64, mode: StartMode) {
        let (transport_inbox, mut transport_receiver) = Inbox::bounded(65_536);
        let (runtime_inbox, runtime_receiver) = Inbox::bounded(65_536);
        let heartbeats = HeartbeatLog::default();
        let log = heartbeats.clone();
        tokio::spawn(async move {
            while let Some(message) = transport_receiver.recv().await {
                if matches!(message.body, MessageBody::Heartbeat(_)) {
                    log.0.lock().unwrap().push(Instant::now());
                }
                let _ = runtime_inbox.deliver(message);
            }
        });
        let transport = self.bind_retrying(id, transport_inbox).await;
        self.addresses.insert(id, transport.local_address().unwrap());
        for (other, address) in &self.addresses {
            transport.set_peer(NodeId(*other), *address);
        }
        for (other, node) in &self.nodes {
            if *other != id {
                node.transport.set_peer(NodeId(id), self.addresses[&id]);
            }
        }
        let disk = self.disks.entry(id).or_default().clone();
        let parts = Parts {
            log_store: Arc::new(disk.log),
            snapshot_store: Arc::new(disk.snapshots),
            checkpoint_store: Arc::new(disk.checkpoints),
            state_machine: Box::new(MapStateMachine::with_ballast(self.ballast_bytes)),
            transport: Arc::new(transport.clone()),
            inbox: runtime_receiver,
        };
        let raft = RaftNode::start(self.runtime_config(id), mode, parts).await.expect("node starts");
        self.nodes.insert(id, Node { raft, transport, heartbeats });
    }

    /// A restarted node takes its old port back; the old socket may take a
    /// moment to close.
    async fn bind_retrying(&self, id: u64, inbox: Inbox) -> QuicTransport {
        let address = self.addresses.get(&id).copied().unwrap_or_else(loopback);
        let deadline = Instant::now() + WAIT;
        loop {
            match QuicTransport::bind(self.pki.config(id, address), inbox.clone()) {
                Ok(transport) => return transport,
                Err(error) if Instant::now() < deadline => {
                    let _ = error;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(error) => panic!("binding node {id} at {address}: {error}"),
            }
        }
    }

    pub async fn stop(&mut self, id: u64) {
        if let Some(node) = self.nodes.remove(&id) {
            node.raft.shutdown().await;
            node.transport.shutdown().await;
        }
    }

    pub fn status(&self, id: u64) -> NodeStatus {
        self.nodes[&id].raft.status().borrow().clone()
    }

    pub async fn wait_for(&self, id: u64, what: &str, predicate: impl Fn(&NodeStatus) -> bool) -> NodeStatus {
        let mut status = self.nodes[&id].raft.status();
        let outcome = tokio::time::timeout(WAIT, status.wait_for(|s| predicate(s))).await;
        match outcome {
            Ok(Ok(found)) => found.clone(),
            _ => panic!("node {id}: timed out waiting for {what}; status: {:?}", self.status(id)),
        }
    }

    /// Waits until a running node leads with `among[0]` following it.
    pub async fn wait_for_leader(&self, among: &[u64]) -> u64 {
        let status = self
            .wait_for(among[0], "a leader", |s| s.leader != NodeId::NONE && among.contains(&s.leader.get()))
            .await;
        let leader = status.leader.get();
        self.wait_for(leader, "leadership", |s| s.role == Some(Role::Leader)).await;
        leader
    }

    pub async fn put(&self, leader: u64, key: &str, value: &str) {
        let data = Bytes::from(format!("{key}={value}"));
        self.nodes[&leader].raft.propose(data, None).await.expect("the write commits");
    }

    pub async fn shutdown(mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in ids {
            self.stop(id).await;
        }
    }
}
