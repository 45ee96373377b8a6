//! [`QuicTransport`]: the endpoint, the peer directory, and the
//! [`Transport`] implementation the runtime calls.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, VarInt};
use raft_core::message::Message;
use raft_core::transport::{Inbox, Transport};
use raft_core::types::NodeId;
use tokio::sync::watch;

use crate::backoff::random_u64;
use crate::config::TransportConfig;
use crate::identity::{client_tls_config, server_tls_config, IdentityError};
use crate::peer::Peer;
use crate::stats::{close_code, Counter, RejectionCounters, TransportStats};

/// Decides whether a node may connect: a current member or a learner being
/// added. See [`QuicTransport::set_authorizer`].
pub type Authorizer = Arc<dyn Fn(NodeId) -> bool + Send + Sync>;

/// Why a transport could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BindError {
    /// The TLS material was refused.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// quinn refused the TLS configuration (no TLS 1.3 initial cipher suite).
    #[error("QUIC refused the TLS configuration: {0}")]
    Quic(String),
    /// The UDP socket could not be bound.
    #[error("binding {address}: {source}")]
    Bind {
        /// The address asked for.
        address: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid setting: {0}")]
    Config(String),
}

/// State shared by the transport handle and its tasks.
pub(crate) struct Inner {
    pub(crate) config: TransportConfig,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) client_config: quinn::ClientConfig,
    /// Picked at start: peers tell a restart from a redial by it.
    pub(crate) incarnation: u64,
    pub(crate) inbox: Inbox,
    peers: RwLock<BTreeMap<NodeId, Arc<Peer>>>,
    authorizer: RwLock<Option<Authorizer>>,
    pub(crate) rejections: RejectionCounters,
    unknown_destination_drops: Counter,
    next_session_id: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Inner {
    pub(crate) fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    /// The peer's entry, created without an address if the authorizer let
    /// in a node the directory does not list (it dialed us).
    pub(crate) fn peer_or_insert(self: &Arc<Self>, id: NodeId) -> Arc<Peer> {
        if let Some(peer) = self.peer(id) {
            return peer;
        }
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let peer = peers.entry(id).or_insert_with(|| Arc::new(Peer::new(id, None, self.config.queue_limits)));
        let peer = Arc::clone(peer);
        drop(peers);
        crate::dialer::spawn(Arc::clone(self), Arc::clone(&peer));
        peer
    }

    /// Whether `id` may connect: the authorizer's answer if one is set,
    /// otherwise whether the directory lists it.
    pub(crate) fn is_authorized(&self, id: NodeId) -> bool {
        if id == self.config.node_id || id == NodeId::NONE {
            return false;
        }
        let authorizer = self.authorizer.read().unwrap_or_else(|p| p.into_inner()).clone();
        match authorizer {
            Some(authorizer) => authorizer(id),
            None => self.peer(id).is_some_and(|peer| !peer.is_removed()),
        }
    }

    pub(crate) fn next_session_id(&self) -> u64 {
        self.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A Raft transport over QUIC with mutual TLS. Cheap to clone; every clone
/// is the same transport. Dropping the last clone shuts it down.
///
/// The node must keep the peer directory in step with the membership:
/// [`QuicTransport::set_peer`] for every member and for a learner before it
/// is added, [`QuicTransport::remove_peer`] once a node left (or
/// [`QuicTransport::set_peers`] with the whole list each time the
/// configuration changes). Only listed nodes may connect, unless an
/// [`Authorizer`] is set.
#[derive(Clone)]
pub struct QuicTransport {
    inner: Arc<Inner>,
    _guard: Arc<ShutdownOnDrop>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("cluster_id", &self.inner.config.cluster_id)
            .field("node_id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

/// Closes the endpoint when the last handle is dropped (tasks hold the
/// inner state, not this guard, so they cannot keep it alive).
struct ShutdownOnDrop(Arc<Inner>);

impl Drop for ShutdownOnDrop {
    fn drop(&mut self) {
        begin_shutdown(&self.0);
    }
}

fn begin_shutdown(inner: &Inner) {
    inner.shutdown.send_replace(true);
    inner.endpoint.close(close_code::SHUTDOWN, b"node shutting down");
}

fn quinn_transport_config(config: &TransportConfig) -> Result<quinn::TransportConfig, BindError> {
    let idle = IdleTimeout::try_from(config.idle_timeout).map_err(|e| BindError::Config(e.to_string()))?;
    let mut transport = quinn::TransportConfig::default();
    // One bidirectional stream (Hello, then messages) from the dialer; one
    // unidirectional snapshot stream each way, with room for one
    // replacement.
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(2))
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(config.keep_alive_interval))
        .stream_receive_window(VarInt::from_u32(config.stream_receive_window_bytes))
        .receive_window(VarInt::from_u32(config.connection_receive_window_bytes))
        .send_window(config.send_window_bytes)
        // Peers sit on a LAN or loopback: start from a realistic RTT rather
        // than the 333 ms the spec prescribes for the open internet.
        .initial_rtt(Duration::from_millis(10));
    let mut mtu = MtuDiscoveryConfig::default();
    mtu.upper_bound(config.max_udp_payload_bytes.max(1200));
    transport.mtu_discovery_config(Some(mtu));
    Ok(transport)
}

impl QuicTransport {
    /// Binds the UDP socket, starts accepting peers, and delivers incoming
    /// messages to `inbox`. Must run inside a tokio runtime.
    pub fn bind(config: TransportConfig, inbox: Inbox) -> Result<QuicTransport, BindError> {
        if config.max_frame_bytes < 1024 {
            return Err(BindError::Config("max_frame_bytes must be at least 1024".into()));
        }
        let transport = Arc::new(quinn_transport_config(&config)?);
        let server_crypto = QuicServerConfig::try_from(server_tls_config(&config.identity)?)
            .map_err(|e| BindError::Quic(e.to_string()))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
        server_config.transport_config(Arc::clone(&transport));
        let client_crypto = QuicClientConfig::try_from(client_tls_config(&config.identity)?)
            .map_err(|e| BindError::Quic(e.to_string()))?;
        let mut client_config = quinn::ClientConfig::new(Arc::new(client_crypto));
        client_config.transport_config(transport);
        let mut endpoint_config = quinn::EndpointConfig::default();
        endpoint_config
            .max_udp_payload_size(config.max_udp_payload_bytes.max(1200))
            .map_err(|e| BindError::Config(e.to_string()))?;
        let bind_error = |source| BindError::Bind { address: config.listen_address, source };
        let socket = std::net::UdpSocket::bind(config.listen_address).map_err(bind_error)?;
        let runtime = Arc::new(quinn::TokioRuntime);
        let endpoint = quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
            .map_err(bind_error)?;
        let (shutdown, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            config,
            endpoint,
            client_config,
            incarnation: random_u64(),
            inbox,
            peers: RwLock::new(BTreeMap::new()),
            authorizer: RwLock::new(None),
            rejections: RejectionCounters::default(),
            unknown_destination_drops: Counter::default(),
            next_session_id: AtomicU64::new(1),
            shutdown,
        });
        tokio::spawn(crate::handshake::accept_loop(Arc::clone(&inner)));
        Ok(QuicTransport { _guard: Arc::new(ShutdownOnDrop(Arc::clone(&inner))), inner })
    }

    /// The address the endpoint listens on (with the port picked for port 0).
    pub fn local_address(&self) -> std::io::Result<SocketAddr> {
        self.inner.endpoint.local_addr()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.config.node_id
    }

    /// Lists `id` as a peer at `address` (or updates its address). A listed
    /// peer may connect and is dialed when messages are queued for it.
    pub fn set_peer(&self, id: NodeId, address: SocketAddr) {
        if id == self.inner.config.node_id || id == NodeId::NONE {
            return;
        }
        if let Some(peer) = self.inner.peer(id).filter(|peer| !peer.is_removed()) {
            if peer.address() != Some(address) {
                peer.set_address(Some(address));
            }
            return;
        }
        let peer = Arc::new(Peer::new(id, Some(address), self.inner.config.queue_limits));
        self.inner.peers.write().unwrap_or_else(|p| p.into_inner()).insert(id, Arc::clone(&peer));
        crate::dialer::spawn(Arc::clone(&self.inner), peer);
    }

    /// Removes `id`: closes its connection, drops its queued messages, and
    /// (without an authorizer) refuses its future connections.
    pub fn remove_peer(&self, id: NodeId) {
        let removed = self.inner.peers.write().unwrap_or_else(|p| p.into_inner()).remove(&id);
        if let Some(session) = removed.and_then(|peer| peer.remove()) {
            session.connection.close(close_code::PEER_REMOVED, b"peer removed from the directory");
        }
    }

    /// Makes the directory exactly `peers` (this node is skipped): call it
    /// with every member's address whenever the configuration changes.
    pub fn set_peers(&self, peers: &BTreeMap<NodeId, SocketAddr>) {
        let listed: Vec<NodeId> =
            self.inner.peers.read().unwrap_or_else(|p| p.into_inner()).keys().copied().collect();
        for id in listed.into_iter().filter(|id| !peers.contains_key(id)) {
            self.remove_peer(id);
        }
        for (id, address) in peers {
            self.set_peer(*id, *address);
        }
    }

    /// Replaces the default authorization ("listed in the directory") with
    /// `authorizer`, or restores it with `None`. The authorizer runs on
    /// every inbound Hello, after the certificate check, and must be quick.
    pub fn set_authorizer(&self, authorizer: Option<Authorizer>) {
        *self.inner.authorizer.write().unwrap_or_else(|p| p.into_inner()) = authorizer;
    }

    /// The figures for metrics.
    pub fn stats(&self) -> TransportStats {
        let peers = self.inner.peers.read().unwrap_or_else(|p| p.into_inner()).clone();
        TransportStats {
            peers: peers.iter().map(|(id, peer)| (*id, peer.stats())).collect(),
            rejections: self.inner.rejections.snapshot(),
            unknown_destination_drops: self.inner.unknown_destination_drops.get(),
            open_connections: self.inner.endpoint.open_connections(),
        }
    }

    /// Closes every connection and the endpoint; waits (up to a second) for
    /// the peers to learn of it.
    pub async fn shutdown(&self) {
        begin_shutdown(&self.inner);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.inner.endpoint.wait_idle()).await;
    }
}

impl Transport for QuicTransport {
    fn send(&self, messages: Vec<Message>) {
        if self.inner.is_shutting_down() {
            return;
        }
        // Group by destination so each peer's lock is taken once per call.
        let mut by_peer: BTreeMap<NodeId, Vec<Message>> = BTreeMap::new();
        for message in messages {
            by_peer.entry(message.to).or_default().push(message);
        }
        for (to, messages) in by_peer {
            match self.inner.peer(to) {
                Some(peer) => peer.enqueue(messages, self.inner.config.max_frame_bytes),
                None => self.inner.unknown_destination_drops.add(messages.len() as u64),
            }
        }
    }
}
