//! A Raft peer transport over QUIC (quinn + rustls), with mutual TLS always.
//!
//! [`QuicTransport`] implements raft-core's [`Transport`](raft_core::transport::Transport):
//! `send` queues messages per peer (bounded, never waiting) and incoming
//! messages go to the runtime's [`Inbox`](raft_core::transport::Inbox).
//!
//! # How it works
//!
//! - **One connection per peer pair.** Either side dials when it has
//!   messages for a peer it is not connected to. If both dial at once, both
//!   keep the connection dialed by the lower node id; a peer that restarted
//!   (a new incarnation in its Hello) replaces its old connection at once.
//! - **Authentication.** TLS 1.3 only, mutual: each node presents a
//!   certificate from the cluster CA naming it `node-<id>.<cluster-id>`
//!   ([`identity`]). The dialer checks the server's certificate against the
//!   node it meant to reach; the acceptor checks that the dialer's
//!   certificate names the node its Hello claims, and that an
//!   [`Authorizer`] (by default: the peer directory) admits that node.
//! - **The Hello**, the first frame each way, carries the protocol version,
//!   cluster id, sender and destination. Any mismatch closes the connection
//!   with a [`RejectReason`]'s code and a readable reason, logged and counted
//!   in [`TransportStats::rejections`].
//! - **Streams.** The dialer's bidirectional stream carries the Hellos, then
//!   every message but snapshot chunks, both ways; each side sends
//!   InstallSnapshot chunks on its own unidirectional stream at a lower
//!   priority, so heartbeats and appends never wait behind a snapshot.
//! - **Framing** ([`frame`]): a 4-byte length, a kind byte, a postcard body;
//!   the length is checked against a limit before allocating; malformed
//!   input closes the connection with a typed error and never panics.
//! - **Back-pressure.** Each peer has bounded queues (messages and snapshot
//!   chunks, [`QueueLimits`]); when full, the oldest message is dropped and
//!   counted. QUIC flow control bounds what is in flight.
//! - **Reconnects** use exponential backoff with jitter ([`BackoffConfig`]).
//!
//! # Example
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use raft_core::transport::Inbox;
//! use raft_core::types::NodeId;
//! use raft_transport_quic::{certs::ClusterCa, ClusterId, QuicTransport, TransportConfig};
//!
//! let cluster = ClusterId::new("demo")?;
//! let ca = ClusterCa::generate(&cluster)?;
//! let identity = ca.issue_node(NodeId(1), &["127.0.0.1".into()])?.identity()?;
//! let (inbox, receiver) = Inbox::bounded(4096);
//! let config = TransportConfig::new(cluster, NodeId(1), "127.0.0.1:7080".parse()?, identity);
//! let transport = QuicTransport::bind(config, inbox)?;
//! transport.set_peer(NodeId(2), "127.0.0.1:7081".parse()?);
//! // Hand `transport` and `receiver` to `RaftNode::start` in `Parts`.
//! # drop((transport, receiver)); Ok(()) }
//! ```
#![deny(missing_docs)]

mod backoff;
pub mod certs;
mod config;
mod dialer;
pub mod frame;
mod handshake;
pub mod identity;
mod peer;
mod queue;
mod session;
mod stats;
mod transport;

pub use backoff::Backoff;
pub use config::{BackoffConfig, QueueLimits, TransportConfig};
pub use handshake::DialError;
pub use identity::{ClusterId, NodeIdentity};
pub use stats::{close_code, PeerErrors, PeerStats, RejectReason, Rejections, TransportStats};
pub use transport::{Authorizer, BindError, QuicTransport};
