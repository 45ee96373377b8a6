//! Wiring: stores, transport, runtime, metrics and the client API of one
//! node, and its graceful shutdown.
//!
//! How nodes find each other: the cluster keeps a replicated **directory**
//! of node addresses in the key-value state machine (`SetNode` /
//! `RemoveNode` commands). The directory in force on a node is that
//! replicated one, completed by a locally known *seed* for members the
//! replicated directory does not name yet (the initial members at
//! bootstrap, the members learned from `--join`), and is written to
//! `<data-dir>/directory.json` whenever it changes, so that a restarted node
//! can reach its peers before it has re-applied its log.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use raft_core::runtime::{NodeStatus, Parts, RaftNode, RuntimeConfig, SnapshotPolicy, StartMode};
use raft_core::transport::{Inbox, Transport};
use raft_core::types::{Membership, NodeId, Role};
use raft_metrics::{NodeMetrics, PeerTransportFigures, TransportFigures};
use raft_transport_quic::certs::{CaFiles, ClusterCa, NodeFiles};
use raft_transport_quic::{ClusterId, NodeIdentity, QuicTransport, TransportConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::api::ClusterStatus;
use crate::config::{NodeConfig, StartPlan, TlsFiles};
use crate::fault::{FaultInjector, FaultyTransport};
use crate::http::{self, AppState};
use crate::instrument::{TimedLogStore, TimedStateMachine};
use crate::kv::{Directory, KvCommand, KvLimits, KvStateMachine, NodeAddresses};

/// The most messages queued from the transport for the runtime; past it,
/// messages are dropped (Raft retransmits).
const INBOX_CAPACITY: usize = 65_536;

/// The directory file inside the data directory.
const DIRECTORY_FILE: &str = "directory.json";

/// Why the node could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// The data directory, certificates or plan are not usable.
    #[error("{0}")]
    Setup(String),
    /// The stores could not be opened.
    #[error("opening the stores in {path} failed: {source}")]
    Storage {
        /// The data directory.
        path: PathBuf,
        /// Why.
        source: raft_core::storage::StorageError,
    },
    /// The Raft runtime refused to start.
    #[error("starting Raft failed: {0}")]
    Start(#[from] raft_core::runtime::StartError),
    /// The peer transport could not bind.
    #[error("starting the peer transport failed: {0}")]
    Transport(#[from] raft_transport_quic::BindError),
    /// The client API could not bind.
    #[error(transparent)]
    Http(#[from] http::ServeError),
    /// Joining through a member failed.
    #[error("joining through {url} failed: {message}")]
    Join {
        /// The member's URL.
        url: String,
        /// Why.
        message: String,
    },
}

fn setup(message: impl Into<String>) -> NodeError {
    NodeError::Setup(message.into())
}

/// A running node.
pub struct RunningNode {
    /// The Raft runtime.
    pub raft: RaftNode,
    /// The peer transport.
    pub transport: QuicTransport,
    /// The address the client API listens on.
    pub client_address: SocketAddr,
    /// The settings it runs with.
    pub config: Arc<NodeConfig>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Runs the node until SIGTERM or Ctrl-C, then shuts it down gracefully.
pub async fn run(config: NodeConfig) -> Result<(), NodeError> {
    let prometheus = match raft_metrics::install_prometheus() {
        Ok(handle) => {
            if let Err(error) = raft_metrics::spawn_upkeep(handle.clone(), Duration::from_secs(5)) {
                tracing::warn!(%error, "metrics upkeep could not start; histograms are pruned on scrape only");
            }
            Some(handle)
        }
        Err(error) => {
            tracing::warn!(%error, "metrics are not exported");
            None
        }
    };
    let dev = config.plan == StartPlan::Dev;
    // Watch for SIGTERM before starting, so one that arrives while the node
    // starts still ends in a clean shutdown.
    let stop_signal = tokio::spawn(wait_for_stop_signal());
    let node = start(config, prometheus).await?;
    if dev {
        print_dev_banner(&node);
    } else {
        tracing::info!(
            node = node.config.id,
            client = %node.config.advertise_client,
            peer = %node.config.advertise_peer,
            "node running"
        );
    }
    let _ = stop_signal.await;
    tracing::info!("stopping: handing leadership over if leader, then shutting down");
    node.shutdown().await;
    Ok(())
}

async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = terminate.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "SIGTERM cannot be watched; stopping on Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn print_dev_banner(node: &RunningNode) {
    let url = &node.config.advertise_client;
    println!(
        "\nraft-node: a single-node development cluster is running.\n\
         \n  data:        {data}\n  client API:  {url}\n  peers:       {peer} (QUIC, mutual TLS; dev certificates in {data}/certs)\n\
         \nTry it:\n  curl -X PUT --data-binary hello {url}/v1/kv/greeting\n  curl {url}/v1/kv/greeting\n  curl {url}/v1/cluster\n  curl {url}/metrics\n\
         \nOr with the CLI: raft-node put greeting hello; raft-node get greeting; raft-node status\n\
         Stop with Ctrl-C. A 3-node cluster on this machine: cargo xtask cluster\n",
        data = node.config.data_dir.display(),
        peer = node.config.advertise_peer,
    );
}

/// Starts every part of a node and returns once it serves clients.
pub async fn start(
    config: NodeConfig,
    prometheus: Option<PrometheusHandle>,
) -> Result<RunningNode, NodeError> {
    let mut config = config;
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| setup(format!("cannot create the data directory {}: {e}", config.data_dir.display())))?;
    let tls = match config.tls.clone() {
        Some(files) => files,
        None => dev_certificates(&config)?,
    };
    config.tls = Some(tls.clone());
    let identity = NodeIdentity::from_pem_files(&tls.ca, &tls.cert, &tls.key)
        .map_err(|e| setup(format!("loading the peer TLS files failed: {e}")))?;
    let cluster_id = ClusterId::new(config.cluster_id.clone())
        .map_err(|e| setup(format!("cluster id {:?}: {e}", config.cluster_id)))?;
    let id = NodeId(config.id);
    let forwarder = http_client(&config, &identity)?;
    let server_tls = if config.client_tls { Some(Arc::new(https_config(&config, &identity)?)) } else { None };

    let log_path = config.data_dir.join(raft_storage_redb::LOG_FILE_NAME);
    let has_log = log_path.exists();
    let own_addresses =
        NodeAddresses { peer: config.advertise_peer, client: config.advertise_client.clone() };
    let (mode, seed) = match &config.plan {
        StartPlan::Dev if !has_log => (
            StartMode::Bootstrap(Membership::with_voters([id])),
            Directory::from([(id, own_addresses.clone())]),
        ),
        StartPlan::Dev | StartPlan::Restart => {
            if !has_log {
                return Err(setup(format!(
                    "{} holds no log: start a new cluster with --bootstrap, or join one with --join <url>",
                    config.data_dir.display()
                )));
            }
            (StartMode::Restart, read_directory_file(&config.data_dir)?)
        }
        StartPlan::Bootstrap(members) => {
            if has_log {
                return Err(setup(format!(
                    "{} already holds a log: this node was initialized before; restart it without --bootstrap",
                    config.data_dir.display()
                )));
            }
            let seed: Directory = members
                .iter()
                .map(|(member, m)| {
                    (
                        NodeId(*member),
                        NodeAddresses { peer: m.peer_address, client: m.client_address.clone() },
                    )
                })
                .collect();
            let membership = Membership::with_voters(members.keys().map(|m| NodeId(*m)));
            match &config.restore_from {
                None => (StartMode::Bootstrap(membership), seed),
                Some(file) => {
                    // A node restored from a snapshot at the checkpoint's
                    // index with the initial membership is a bootstrapped
                    // node whose log starts after that index.
                    let restored = crate::checkpoint_file::restore_into(
                        &config.data_dir,
                        file,
                        membership,
                        seed.clone(),
                    )
                    .await
                    .map_err(|e| setup(e.to_string()))?;
                    tracing::info!(
                        file = %file.display(),
                        checkpoint = %restored.header.name,
                        index = restored.header.index,
                        keys = restored.keys,
                        "restored the new cluster's state from a checkpoint file"
                    );
                    (StartMode::Restart, seed)
                }
            }
        }
        StartPlan::Join { url, .. } => {
            if has_log {
                return Err(setup(format!(
                    "{} already holds a log: this node joined before; restart it without --join",
                    config.data_dir.display()
                )));
            }
            let mut seed = fetch_directory(&forwarder, url).await?;
            seed.insert(id, own_addresses.clone());
            (StartMode::Restart, seed)
        }
    };
    write_directory_file(&config.data_dir, &seed)?;

    let metrics = Arc::new(NodeMetrics::new(id));
    // Under fault injection the log store also records where its flushed
    // log ends, so a test harness can cut it back as a power failure would.
    let mut log_options = raft_storage_redb::LogStoreOptions::default();
    log_options.record_synced_position = config.dangerous_fault_injection;
    let (log_store, snapshot_store) = raft_storage_redb::open_stores_with(&config.data_dir, log_options)
        .await
        .map_err(|source| NodeError::Storage { path: config.data_dir.clone(), source })?;
    let checkpoint_directory = config.data_dir.join(raft_storage_redb::CHECKPOINT_DIRECTORY_NAME);
    let checkpoint_store = raft_storage_redb::RedbCheckpointStore::open_async(&checkpoint_directory)
        .await
        .map_err(|source| NodeError::Storage { path: checkpoint_directory, source })?;
    let (state_machine, kv_view) = KvStateMachine::new(KvLimits::default());

    let (inbox, inbox_receiver) = Inbox::bounded(INBOX_CAPACITY);
    let mut transport_config = TransportConfig::new(cluster_id, id, config.listen_peer, identity);
    // An entry carries one value; a frame must hold the largest entry.
    transport_config.max_frame_bytes =
        transport_config.max_frame_bytes.max(config.max_value_bytes as u32 * 2);
    let transport = QuicTransport::bind(transport_config, inbox)?;
    transport.set_peers(&peer_addresses(&seed, id));

    // The test-only fault injector sits between the runtime and the real
    // transport, so that it sees every outgoing message (see `fault.rs`).
    let faults =
        config.dangerous_fault_injection.then(|| Arc::new(FaultInjector::new(random_seed(config.id))));
    let peer_transport: Arc<dyn Transport> = match &faults {
        Some(injector) => {
            tracing::warn!(
                "--dangerous-fault-injection: peer messages can be delayed and dropped over the API"
            );
            let faulty = FaultyTransport::new(transport.clone(), Arc::clone(injector))
                .ok_or_else(|| setup("the fault injector needs a tokio runtime".to_string()))?;
            Arc::new(faulty)
        }
        None => Arc::new(transport.clone()),
    };

    let mut runtime = RuntimeConfig::new(id);
    runtime.engine.election_timeout_ticks = u64::from(config.election_timeout_ticks);
    runtime.engine.heartbeat_interval_ticks = u64::from(config.heartbeat_interval_ticks);
    runtime.engine.lease_reads = true;
    runtime.engine.random_seed = random_seed(config.id);
    runtime.tick_interval = config.tick_interval;
    runtime.request_timeout = config.request_timeout;
    runtime.snapshot_policy = SnapshotPolicy { max_log_entries: config.snapshot_log_entries };
    // A snapshot compacts the log down to the engine's trailing entries
    // (1,024 by default). With a threshold below that, the log would never
    // shrink under the threshold and every applied batch would start a new
    // snapshot: keep at most half the threshold instead.
    runtime.engine.snapshot_trailing_entries =
        runtime.engine.snapshot_trailing_entries.min(config.snapshot_log_entries / 2);
    let parts = Parts {
        log_store: Arc::new(TimedLogStore::new(Arc::new(log_store), Arc::clone(&metrics))),
        snapshot_store: Arc::new(snapshot_store),
        checkpoint_store: Arc::new(checkpoint_store),
        state_machine: Box::new(TimedStateMachine::new(state_machine, Arc::clone(&metrics))),
        transport: peer_transport,
        inbox: inbox_receiver,
    };
    let raft = RaftNode::start(runtime, mode, parts).await?;

    let config = Arc::new(config);
    let (stop, stop_receiver) = watch::channel(false);
    let (directory_sender, directory) = watch::channel(seed.clone());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(keep_directory(
        Arc::clone(&config),
        raft.clone(),
        transport.clone(),
        kv_view.directory(),
        seed,
        directory_sender,
        stop_receiver.clone(),
    )));
    tasks.push(tokio::spawn(record_metrics(
        raft.clone(),
        transport.clone(),
        Arc::clone(&metrics),
        stop_receiver.clone(),
    )));

    let listener = http::Listener::bind(config.listen_client).await?;
    let client_address = listener.local_address().map_err(|e| setup(format!("client API address: {e}")))?;
    let state = AppState::new(http::Shared {
        raft: raft.clone(),
        config: Arc::clone(&config),
        directory,
        metrics,
        prometheus,
        forwarder: forwarder.clone(),
        limiter: Arc::new(Semaphore::new(config.max_concurrent_requests)),
        faults,
    });
    tasks.push(tokio::spawn(listener.serve(http::router(state), server_tls, stop_receiver)));

    if let StartPlan::Join { url, role: Some(role) } = &config.plan {
        let request = crate::api::AddMemberRequest {
            id: config.id,
            peer_address: config.advertise_peer.to_string(),
            client_address: config.advertise_client.clone(),
            voter: *role == crate::config::JoinRole::Voter,
        };
        ask_to_join(&forwarder, &config, url, &request).await?;
    }
    Ok(RunningNode { raft, transport, client_address, config, stop, tasks })
}

impl RunningNode {
    /// Stops the node: a leader first hands leadership to the most
    /// up-to-date voter (so clients see no election timeout), then the
    /// client API stops taking requests, Raft stops, and the transport
    /// closes.
    pub async fn shutdown(self) {
        let status = self.raft.status().borrow().clone();
        if status.role == Some(Role::Leader) {
            if let Some(target) = http::most_caught_up_voter(&status) {
                match self.raft.transfer_leadership(target).await {
                    Ok(()) => {
                        let mut watch = self.raft.status();
                        let moved = tokio::time::timeout(
                            Duration::from_secs(2),
                            watch.wait_for(|s| s.leader != NodeId::NONE && s.leader != status.id),
                        )
                        .await;
                        if moved.is_err() {
                            tracing::warn!(%target, "leadership did not move within 2 s; stopping anyway");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%target, %error, "handing leadership over failed; stopping anyway")
                    }
                }
            }
        }
        self.stop.send_replace(true);
        self.raft.shutdown().await;
        self.transport.shutdown().await;
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A seed for the engine's randomness that differs between nodes and runs.
fn random_seed(id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ id.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(std::process::id())
}

/// Every peer's address, this node left out.
fn peer_addresses(directory: &Directory, me: NodeId) -> BTreeMap<NodeId, SocketAddr> {
    directory.iter().filter(|(id, _)| **id != me).map(|(id, a)| (*id, a.peer)).collect()
}

/// The directory in force: the replicated one, plus seed entries for nodes
/// it does not name yet that matter now (members of the configuration, or
/// everything while this node knows no configuration, as when joining).
fn effective_directory(replicated: &Directory, seed: &Directory, membership: &Membership) -> Directory {
    let mut directory = replicated.clone();
    let knows_configuration = membership.node_count() > 0;
    for (id, addresses) in seed {
        if !directory.contains_key(id) && (!knows_configuration || membership.contains(*id)) {
            directory.insert(*id, addresses.clone());
        }
    }
    directory
}

/// Keeps the transport's peer list, the local directory file and the
/// client API's view in step with the replicated directory and the
/// configuration; on the leader, registers members that the replicated
/// directory lacks (the initial members after a bootstrap) and drops the
/// entries of nodes that left the configuration (a leader that removed
/// itself could not).
async fn keep_directory(
    config: Arc<NodeConfig>,
    raft: RaftNode,
    transport: QuicTransport,
    mut replicated: watch::Receiver<Directory>,
    seed: Directory,
    publish: watch::Sender<Directory>,
    mut stop: watch::Receiver<bool>,
) {
    let me = NodeId(config.id);
    let mut status = raft.status();
    let mut seed = seed;
    let mut registering: Option<JoinHandle<()>> = None;
    // Nodes seen in a configuration and then not: their directory entries
    // go once a leader can remove them (a leader that removed itself cannot).
    let mut members_seen = std::collections::BTreeSet::new();
    let mut departed = std::collections::BTreeSet::new();
    loop {
        let current = status.borrow_and_update().clone();
        let members: std::collections::BTreeSet<NodeId> = current
            .membership
            .voters
            .iter()
            .chain(&current.membership.outgoing_voters)
            .chain(&current.membership.learners)
            .copied()
            .collect();
        if !members.is_empty() {
            departed.extend(members_seen.difference(&members).copied());
            departed.retain(|id| !members.contains(id));
            members_seen = members;
        }
        let directory = effective_directory(&replicated.borrow_and_update(), &seed, &current.membership);
        if *publish.borrow() != directory {
            transport.set_peers(&peer_addresses(&directory, me));
            if let Err(error) = write_directory_file(&config.data_dir, &directory) {
                tracing::warn!(%error, "the directory file could not be written");
            }
            publish.send_replace(directory.clone());
            // What is in force now is the best seed for later gaps.
            seed = directory.clone();
        }
        if current.role == Some(Role::Leader) && registering.as_ref().is_none_or(|task| task.is_finished()) {
            let missing: Vec<(NodeId, NodeAddresses)> = current
                .membership
                .voters
                .iter()
                .chain(&current.membership.learners)
                .filter(|id| !replicated.borrow().contains_key(id))
                .filter_map(|id| directory.get(id).map(|a| (*id, a.clone())))
                .collect();
            let leftover: Vec<NodeId> =
                departed.iter().filter(|id| replicated.borrow().contains_key(id)).copied().collect();
            if !missing.is_empty() || !leftover.is_empty() {
                // Each departure is cleaned up once, right after it: a node
                // re-added later registers afresh and must keep its entry.
                departed.retain(|id| !leftover.contains(id));
                let raft = raft.clone();
                let commands = missing
                    .into_iter()
                    .map(|(id, addresses)| (id, KvCommand::SetNode { id, addresses }))
                    .chain(leftover.into_iter().map(|id| (id, KvCommand::RemoveNode { id })));
                let commands: Vec<(NodeId, KvCommand)> = commands.collect();
                registering = Some(tokio::spawn(async move {
                    for (id, command) in commands {
                        if let Err(error) = raft.propose(command.encode(), None).await {
                            tracing::debug!(node = %id, %error, "updating the directory failed; retrying later");
                            return;
                        }
                    }
                }));
            }
        }
        tokio::select! {
            changed = status.changed() => if changed.is_err() { return },
            changed = replicated.changed() => if changed.is_err() { return },
            () = stopped(&mut stop) => return,
        }
    }
}

/// Records the node's status on every change (at most every 100 ms), and the
/// transport's, the process's and the checkpoints' figures every second.
async fn record_metrics(
    raft: RaftNode,
    transport: QuicTransport,
    metrics: Arc<NodeMetrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut status = raft.status();
    let mut transport_tick = tokio::time::interval(Duration::from_secs(1));
    transport_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            changed = status.changed() => {
                if changed.is_err() { return }
                let current: NodeStatus = status.borrow_and_update().clone();
                metrics.record_status(&current);
                metrics.record_engine_stats(&current.stats);
                // Coalesce bursts of status changes under load.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            _ = transport_tick.tick() => {
                metrics.record_transport(&transport_figures(&transport));
                metrics.record_process();
                metrics.record_checkpoints(&raft.list_checkpoints(), raft.last_rollback_index());
            }
            () = stopped(&mut stop) => return,
        }
    }
}

fn transport_figures(transport: &QuicTransport) -> TransportFigures {
    let stats = transport.stats();
    TransportFigures {
        peers: stats
            .peers
            .iter()
            .map(|(id, peer)| PeerTransportFigures {
                peer: *id,
                connected: peer.connected,
                round_trip_time: peer.rtt,
                messages_sent: peer.messages_sent,
                messages_received: peer.messages_received,
                bytes_sent: peer.bytes_sent,
                bytes_received: peer.bytes_received,
                connections_established: peer.connections_established,
                queued_messages: peer.queued_messages,
                errors: vec![
                    ("dial_failure", peer.errors.dial_failures),
                    ("handshake_failure", peer.errors.handshake_failures),
                    ("rejected_by_peer", peer.errors.rejected_by_peer),
                    ("connection_lost", peer.errors.connections_lost),
                    ("frame_error", peer.errors.frame_errors),
                    ("queue_full_drop", peer.errors.queue_full_drops),
                    ("inbox_full_drop", peer.errors.inbox_full_drops),
                    ("expired_drop", peer.errors.expired_drops),
                    ("oversized_drop", peer.errors.oversized_drops),
                    ("misaddressed_drop", peer.errors.misaddressed_drops),
                ],
            })
            .collect(),
        rejections: stats.rejections.iter().map(|(reason, count)| (reason.name(), count)).collect(),
        open_connections: stats.open_connections as u64,
    }
}

/// The directory file's contents.
#[derive(Serialize, Deserialize)]
struct DirectoryFile {
    nodes: BTreeMap<u64, NodeAddresses>,
}

fn read_directory_file(data_dir: &Path) -> Result<Directory, NodeError> {
    let path = data_dir.join(DIRECTORY_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        // Without the file the node still restarts; it learns its peers
        // when it applies the log (and peers that dial it are admitted).
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Directory::new()),
        Err(error) => return Err(setup(format!("reading {}: {error}", path.display()))),
    };
    let file: DirectoryFile = serde_json::from_str(&text)
        .map_err(|e| setup(format!("{} is malformed ({e}); fix or delete it", path.display())))?;
    Ok(file.nodes.into_iter().map(|(id, addresses)| (NodeId(id), addresses)).collect())
}

/// Writes the directory file atomically (a temporary file, synced, renamed).
fn write_directory_file(data_dir: &Path, directory: &Directory) -> Result<(), NodeError> {
    use std::io::Write;
    let file = DirectoryFile { nodes: directory.iter().map(|(id, a)| (id.get(), a.clone())).collect() };
    let text = serde_json::to_string_pretty(&file).map_err(|e| setup(e.to_string()))?;
    let path = data_dir.join(DIRECTORY_FILE);
    let temporary = data_dir.join(format!("{DIRECTORY_FILE}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut out = std::fs::File::create(&temporary)?;
        out.write_all(text.as_bytes())?;
        out.sync_all()?;
        std::fs::rename(&temporary, &path)
    };
    write().map_err(|e| setup(format!("writing {}: {e}", path.display())))
}

/// Development certificates under `<data-dir>/certs`, made on first start.
fn dev_certificates(config: &NodeConfig) -> Result<TlsFiles, NodeError> {
    let directory = config.data_dir.join("certs");
    let cluster_id = ClusterId::new(config.cluster_id.clone())
        .map_err(|e| setup(format!("cluster id {:?}: {e}", config.cluster_id)))?;
    let ca_files = CaFiles::in_directory(&directory);
    let node_files = NodeFiles::in_directory(&directory, NodeId(config.id));
    let failed = |e: raft_transport_quic::certs::CertificateError| setup(format!("dev certificates: {e}"));
    if !node_files.certificate.exists() {
        let ca = if ca_files.certificate.exists() {
            ClusterCa::read_pem_files(&cluster_id, &directory).map_err(failed)?
        } else {
            let ca = ClusterCa::generate(&cluster_id).map_err(failed)?;
            ca.write_pem_files(&directory).map_err(failed)?;
            ca
        };
        let names = vec![config.advertise_peer.ip().to_string(), "localhost".to_string()];
        ca.issue_node(NodeId(config.id), &names)
            .map_err(failed)?
            .write_pem_files(&directory)
            .map_err(failed)?;
    }
    Ok(TlsFiles { ca: ca_files.certificate, cert: node_files.certificate, key: node_files.key })
}

/// The HTTP client used for forwarding and joining: trusts the cluster CA
/// and presents this node's certificate (for clusters whose client API
/// requires client certificates from the cluster CA).
fn http_client(config: &NodeConfig, identity: &NodeIdentity) -> Result<reqwest::Client, NodeError> {
    let mut tls = raft_transport_quic::identity::client_tls_config(identity)
        .map_err(|e| setup(format!("client TLS configuration: {e}")))?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .timeout(config.request_timeout + Duration::from_secs(1))
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true);
    // Under fault injection, nodes usually share one host on distinct
    // loopback addresses and partitions are firewall rules between those
    // addresses: forwarded requests must then leave from this node's own
    // address, or they would cross a partition looking like a client's.
    let builder = match config.listen_client.ip() {
        ip if config.dangerous_fault_injection && !ip.is_unspecified() => builder.local_address(ip),
        _ => builder,
    };
    builder.build().map_err(|e| setup(format!("HTTP client: {e}")))
}

/// The client API's TLS: the node's certificate, and client certificates
/// required (verified against `--client-ca`) when configured.
fn https_config(config: &NodeConfig, identity: &NodeIdentity) -> Result<rustls::ServerConfig, NodeError> {
    let provider = raft_transport_quic::identity::crypto_provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| setup(format!("client API TLS: {e}")))?;
    let builder = match &config.client_ca {
        Some(path) => {
            let pem = std::fs::read(path).map_err(|e| setup(format!("reading {}: {e}", path.display())))?;
            let mut roots = rustls::RootCertStore::empty();
            use rustls::pki_types::pem::PemObject;
            for certificate in rustls::pki_types::CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate.map_err(|e| setup(format!("{}: {e}", path.display())))?;
                roots.add(certificate).map_err(|e| setup(format!("{}: {e}", path.display())))?;
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .map_err(|e| setup(format!("client CA {}: {e}", path.display())))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder
        .with_single_cert(identity.certificate_chain.clone(), identity.private_key.clone_key())
        .map_err(|e| setup(format!("client API certificate: {e}")))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(server)
}

/// Learns the members' addresses from a member's `GET /v1/cluster`.
async fn fetch_directory(client: &reqwest::Client, url: &str) -> Result<Directory, NodeError> {
    let failed = |message: String| NodeError::Join { url: url.to_string(), message };
    let response = client
        .get(format!("{url}/v1/cluster"))
        .send()
        .await
        .map_err(|e| failed(format!("{e} (is a member serving there?)")))?;
    if !response.status().is_success() {
        return Err(failed(format!("it answered {}", response.status())));
    }
    let status: ClusterStatus =
        response.json().await.map_err(|e| failed(format!("unexpected answer: {e}")))?;
    let mut directory = Directory::new();
    for (id, info) in status.nodes {
        let peer = info
            .peer_address
            .parse()
            .map_err(|_| failed(format!("node {id} has an invalid peer address {:?}", info.peer_address)))?;
        directory.insert(NodeId(id), NodeAddresses { peer, client: info.client_address });
    }
    if directory.is_empty() {
        return Err(failed("it knows no members' addresses yet; retry once it has a leader".into()));
    }
    Ok(directory)
}

/// Asks the cluster to add this node (`--join-as`), with the node's own
/// HTTP client (the one that forwards requests).
async fn ask_to_join(
    client: &reqwest::Client,
    config: &NodeConfig,
    url: &str,
    request: &crate::api::AddMemberRequest,
) -> Result<(), NodeError> {
    let failed = |message: String| NodeError::Join { url: url.to_string(), message };
    let mut attempt = client.post(format!("{url}/v1/cluster/members")).json(request);
    if let Some(token) = &config.admin_token {
        attempt = attempt.bearer_auth(token);
    }
    let response = attempt.send().await.map_err(|e| failed(e.to_string()))?;
    let status = response.status();
    if status.is_success() {
        tracing::info!(node = config.id, "added to the cluster");
        return Ok(());
    }
    let body = response.text().await.unwrap_or_default();
    Err(failed(format!("adding this node was refused ({status}): {body}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addresses(port: u16) -> NodeAddresses {
        NodeAddresses {
            peer: SocketAddr::from(([127, 0, 0, 1], port)),
            client: format!("http://127.0.0.1:{port}"),
        }
    }

    #[test]
    fn the_seed_fills_only_gaps_that_matter() {
        let seed = Directory::from([
            (NodeId(1), addresses(1)),
            (NodeId(2), addresses(2)),
            (NodeId(3), addresses(3)),
        ]);
        let replicated = Directory::from([(NodeId(1), addresses(11))]);
        // Joining: no configuration known yet, the whole seed is used.
        let joining = effective_directory(&replicated, &seed, &Membership::default());
        assert_eq!(joining.len(), 3);
        assert_eq!(joining[&NodeId(1)], addresses(11), "the replicated entry wins");
        // A configuration without node 3 (removed): its seed entry is dropped.
        let members = Membership::with_voters([NodeId(1), NodeId(2)]);
        let known = effective_directory(&replicated, &seed, &members);
        assert_eq!(known.keys().copied().collect::<Vec<_>>(), vec![NodeId(1), NodeId(2)]);
    }

    #[test]
    fn the_directory_file_round_trips() {
        let directory = tempfile::tempdir().unwrap();
        let nodes = Directory::from([(NodeId(1), addresses(1)), (NodeId(7), addresses(7))]);
        write_directory_file(directory.path(), &nodes).unwrap();
        assert_eq!(read_directory_file(directory.path()).unwrap(), nodes);
        std::fs::write(directory.path().join(DIRECTORY_FILE), "{not json").unwrap();
        let error = read_directory_file(directory.path()).unwrap_err().to_string();
        assert!(error.contains("malformed"), "{error}");
    }
}
