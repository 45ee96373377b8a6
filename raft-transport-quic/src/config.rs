//! Settings of one transport, each bound with its reason.

use std::net::SocketAddr;
use std::time::Duration;

use raft_core::types::NodeId;

use crate::identity::{ClusterId, NodeIdentity};

/// Settings of a [`crate::QuicTransport`].
#[derive(Clone, Debug)]
pub struct TransportConfig {
    /// The cluster this node belongs to; peers of other clusters are refused.
    pub cluster_id: ClusterId,
    /// This node's id; its certificate must name it.
    pub node_id: NodeId,
    /// The UDP address to listen on (port 0 picks a free port).
    pub listen_address: SocketAddr,
    /// The TLS material: cluster CA, certificate chain, key.
    pub identity: NodeIdentity,
    /// The largest frame body read or written. A message that does not fit
    /// is dropped and counted; it must exceed the engine's
    /// `snapshot_chunk_bytes` and `max_bytes_per_message` (plus encoding
    /// overhead), and the largest entry the application accepts.
    pub max_frame_bytes: u32,
    /// Bounds of each peer's outgoing queues.
    pub queue_limits: QueueLimits,
    /// Reconnection delays.
    pub backoff: BackoffConfig,
    /// How long a dial may take to complete the QUIC/TLS handshake.
    pub connect_timeout: Duration,
    /// How long either side waits for the other's Hello.
    pub hello_timeout: Duration,
    /// A connection with no traffic for this long is closed. Keep-alives
    /// keep healthy idle connections open.
    pub idle_timeout: Duration,
    /// How often an idle connection is pinged (must be well below
    /// `idle_timeout`). It also keeps the RTT estimate fresh.
    pub keep_alive_interval: Duration,
    /// QUIC flow-control window of one stream, in bytes: how much a peer may
    /// send on one stream before this node reads it.
    pub stream_receive_window_bytes: u32,
    /// QUIC flow-control window of a whole connection, in bytes. Kept larger
    /// than the stream window so a full snapshot stream never starves the
    /// message stream.
    pub connection_receive_window_bytes: u32,
    /// The most bytes buffered for sending on one connection.
    pub send_window_bytes: u64,
    /// The largest UDP payload this node accepts and path-MTU discovery
    /// may try. 1472 suits Ethernet paths; loopback and jumbo-frame networks
    /// can go higher (fewer packets to encrypt per snapshot byte), at the
    /// cost of quinn's receive buffer, which grows linearly with it (about
    /// 2,000 times this value on Linux with GRO).
    pub max_udp_payload_bytes: u16,
}

impl TransportConfig {
    /// Defaults for node `node_id` of `cluster_id`, listening on `listen_address`.
    pub fn new(
        cluster_id: ClusterId,
        node_id: NodeId,
        listen_address: SocketAddr,
        identity: NodeIdentity,
    ) -> TransportConfig {
        TransportConfig {
            cluster_id,
            node_id,
            listen_address,
            identity,
            max_frame_bytes: 16 << 20,
            queue_limits: QueueLimits::default(),
            backoff: BackoffConfig::default(),
            connect_timeout: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Duration::from_secs(1),
            stream_receive_window_bytes: 8 << 20,
            connection_receive_window_bytes: 32 << 20,
            send_window_bytes: 16 << 20,
            max_udp_payload_bytes: 1472,
        }
    }
}

/// Bounds of one peer's outgoing queues. When a queue is full the **oldest**
/// message is dropped (and counted): for a slow or dead peer the newest
/// heartbeat and append are worth more than older ones, and Raft
/// retransmits whatever was lost. Messages that waited longer than
/// `max_age` are dropped too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueLimits {
    /// The most messages (all kinds but snapshot chunks) queued for a peer.
    pub max_messages: usize,
    /// The most estimated bytes of those messages.
    pub max_message_bytes: u64,
    /// The most snapshot chunks queued for a peer. raft-core's engine keeps
    /// at most `snapshot_chunks_in_flight` chunks (default 4) in flight per
    /// follower, so with the defaults this is not reached.
    pub max_snapshot_chunks: usize,
    /// The most bytes of queued snapshot chunks.
    pub max_snapshot_bytes: u64,
    /// Messages older than this when their turn comes are dropped (and
    /// counted): after an outage, a peer gets fresh heartbeats and appends
    /// rather than a backlog of stale ones (Raft retransmits what matters).
    pub max_age: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        QueueLimits {
            max_messages: 8_192,
            max_message_bytes: 64 << 20,
            max_snapshot_chunks: 8,
            max_snapshot_bytes: 64 << 20,
            max_age: Duration::from_secs(2),
        }
    }
}

/// Exponential backoff between dials of an unreachable peer: the delay
/// doubles from `initial` up to `max`, and each actual wait is drawn
/// uniformly from the upper half of the current delay ("equal jitter"), so
/// peers that lost each other at once do not redial in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { initial: Duration::from_millis(25), max: Duration::from_secs(2) }
    }
}
