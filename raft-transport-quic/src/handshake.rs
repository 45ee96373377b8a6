//! Establishing connections: accepting (TLS, then the dialer's Hello,
//! checked) and dialing (TLS with the peer's node name as server name,
//! then the Hello exchange), and installing the result as the peer's
//! connection.
//!
//! The checks on an inbound Hello, in order, each with its own
//! [`RejectReason`]: protocol version, cluster id, destination node id,
//! the certificate naming the claimed node id, the authorizer.

use std::sync::Arc;

use quinn::{ConnectionError, SendStream};
use raft_core::types::NodeId;
use rustls::pki_types::CertificateDer;

use crate::frame::{encode_hello, Frame, Hello, MAX_HELLO_BYTES, PROTOCOL_VERSION};
use crate::identity::certificate_names_node;
use crate::peer::{Installed, Peer, Session};
use crate::session::{self, reject, FrameReader, StreamReadError};
use crate::stats::{close_code, RejectReason};
use crate::transport::Inner;

/// How long a superseded connection is still read before it is closed.
const SUPERSEDED_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Why a dial did not produce a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The peer has no known address.
    #[error("no address is known for the peer")]
    NoAddress,
    /// quinn could not start the connection.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC/TLS handshake or the Hello exchange took too long.
    #[error("the handshake timed out")]
    Timeout,
    /// The connection failed during the handshake (unreachable, TLS refused
    /// by us: the peer's certificate is not valid for its node name).
    #[error("connection failed: {0}")]
    Connection(ConnectionError),
    /// The peer closed the connection with one of our rejection codes.
    #[error("the peer rejected us ({reason}): {detail}")]
    Rejected {
        /// The peer's reason, if it used one of this crate's codes.
        reason: String,
        /// The peer's text.
        detail: String,
    },
    /// The connection failed before the peer's Hello arrived. In TLS 1.3 the
    /// client finishes its handshake before the server checks the client's
    /// certificate, so this is how a refused certificate shows.
    #[error("the connection failed before the peer's Hello (possibly our certificate was refused): {0}")]
    ProbablyAuthentication(String),
    /// The peer's Hello did not check out; we closed the connection.
    #[error("the peer's Hello was refused ({}): {detail}", reason.name())]
    BadHello {
        /// Why.
        reason: RejectReason,
        /// What was wrong.
        detail: String,
    },
}

impl DialError {
    /// Whether the handshake got far enough to count as a handshake failure
    /// (rather than a failure to reach the peer at all).
    pub(crate) fn is_handshake_failure(&self) -> bool {
        matches!(
            self,
            DialError::Rejected { .. } | DialError::ProbablyAuthentication(_) | DialError::BadHello { .. }
        )
    }
}

fn hello_for(inner: &Inner, to: NodeId) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        cluster_id: inner.config.cluster_id.as_str().to_string(),
        from: inner.config.node_id,
        to,
        incarnation: inner.incarnation,
    }
}

/// The checks both sides apply to the other's Hello.
fn check_hello(
    inner: &Inner,
    hello: &Hello,
    expected_from: Option<NodeId>,
) -> Result<(), (RejectReason, String)> {
    let config = &inner.config;
    if hello.cluster_id != config.cluster_id.as_str() {
        let detail =
            format!("cluster {:?}, this node is in {:?}", hello.cluster_id, config.cluster_id.as_str());
        return Err((RejectReason::ClusterMismatch, detail));
    }
    if hello.to != config.node_id {
        let detail = format!("meant for node {}, this is node {}", hello.to, config.node_id);
        return Err((RejectReason::WrongDestination, detail));
    }
    if let Some(expected) = expected_from.filter(|expected| *expected != hello.from) {
        let detail = format!("dialed node {expected}, answered by node {}", hello.from);
        return Err((RejectReason::IdentityMismatch, detail));
    }
    if hello.from == config.node_id || hello.from == NodeId::NONE {
        return Err((RejectReason::IdentityMismatch, format!("claims to be node {}", hello.from)));
    }
    Ok(())
}

/// Reads the peer's Hello, mapping every failure to a rejection reason
/// (`Ok(Err(..))`) or to a connection failure (`Err(..)`).
async fn read_hello(
    inner: &Inner,
    reader: &mut FrameReader,
) -> Result<Result<Hello, (RejectReason, String)>, quinn::ReadError> {
    match tokio::time::timeout(inner.config.hello_timeout, reader.next()).await {
        Err(_) => Ok(Err((RejectReason::HelloTimeout, "no Hello in time".into()))),
        Ok(Ok(Some((Frame::Hello(hello), _)))) => Ok(Ok(hello)),
        Ok(Ok(Some((frame, _)))) => {
            Ok(Err((RejectReason::UnexpectedFrame, format!("a {:?} frame before the Hello", frame.kind()))))
        }
        Ok(Ok(None)) => Ok(Err((RejectReason::TruncatedFrame, "the stream ended before the Hello".into()))),
        Ok(Err(StreamReadError::Frame(error))) => Ok(Err((RejectReason::from(&error), error.to_string()))),
        Ok(Err(StreamReadError::Stream(error))) => Err(error),
    }
}

/// Accepts connections until the endpoint closes.
pub(crate) async fn accept_loop(inner: Arc<Inner>) {
    while let Some(incoming) = inner.endpoint.accept().await {
        tokio::spawn(accept_one(Arc::clone(&inner), incoming));
    }
}

async fn accept_one(inner: Arc<Inner>, incoming: quinn::Incoming) {
    let remote = incoming.remote_address();
    let connection = match incoming.await {
        Ok(connection) => connection,
        Err(error) => {
            if !inner.is_shutting_down() {
                inner.rejections.add(RejectReason::TlsHandshake);
                let node = inner.config.node_id;
                tracing::warn!(%node, %remote, reason = "tls_handshake", %error, "refused a connection");
            }
            return;
        }
    };
    let streams = tokio::time::timeout(inner.config.hello_timeout, connection.accept_bi()).await;
    let (mut send, recv) = match streams {
        Err(_) => return reject(&inner, &connection, RejectReason::HelloTimeout, "no stream opened in time"),
        Ok(Err(_)) => return,
        Ok(Ok(streams)) => streams,
    };
    let mut reader = FrameReader::new(recv, MAX_HELLO_BYTES);
    let hello = match read_hello(&inner, &mut reader).await {
        Err(_) => return,
        Ok(Err((reason, detail))) => return reject(&inner, &connection, reason, &detail),
        Ok(Ok(hello)) => hello,
    };
    if let Err((reason, detail)) =
        check_hello(&inner, &hello, None).and_then(|()| check_certificate(&inner, &connection, &hello))
    {
        return reject(&inner, &connection, reason, &detail);
    }
    if !inner.is_authorized(hello.from) {
        let detail = format!("node {} is not a member of this node's configuration", hello.from);
        return reject(&inner, &connection, RejectReason::NotAuthorized, &detail);
    }
    let Ok(reply) = encode_hello(&hello_for(&inner, hello.from)) else {
        return;
    };
    if send.write_all(&reply).await.is_err() {
        return;
    }
    let peer = inner.peer_or_insert(hello.from);
    establish(&inner, &peer, connection, send, reader, hello.from, hello.incarnation);
}

/// The certificate chain rustls verified must name the node id the Hello claims.
fn check_certificate(
    inner: &Inner,
    connection: &quinn::Connection,
    hello: &Hello,
) -> Result<(), (RejectReason, String)> {
    let chain = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or((RejectReason::IdentityMismatch, "no peer certificate".to_string()))?;
    let leaf =
        chain.first().ok_or((RejectReason::IdentityMismatch, "empty certificate chain".to_string()))?;
    certificate_names_node(leaf, &inner.config.cluster_id, hello.from).map_err(|detail| {
        (RejectReason::IdentityMismatch, format!("claims node {}, but {detail}", hello.from))
    })
}

/// Dials the peer, exchanges Hellos, and installs the connection.
pub(crate) async fn dial(inner: &Arc<Inner>, peer: &Arc<Peer>) -> Result<(), DialError> {
    let address = peer.address().ok_or(DialError::NoAddress)?;
    let server_name = inner.config.cluster_id.node_dns_name(peer.id);
    let connecting = inner.endpoint.connect_with(inner.client_config.clone(), address, &server_name)?;
    let connection = tokio::time::timeout(inner.config.connect_timeout, connecting)
        .await
        .map_err(|_| DialError::Timeout)?
        .map_err(DialError::Connection)?;
    let (mut send, recv) = connection.open_bi().await.map_err(DialError::Connection)?;
    let hello = encode_hello(&hello_for(inner, peer.id))
        .map_err(|e| DialError::BadHello { reason: RejectReason::MalformedFrame, detail: e.to_string() })?;
    if let Err(error) = send.write_all(&hello).await {
        return Err(failure_before_hello(&connection, error.to_string()));
    }
    let mut reader = FrameReader::new(recv, MAX_HELLO_BYTES);
    let reply = match read_hello(inner, &mut reader).await {
        Err(error) => return Err(failure_before_hello(&connection, error.to_string())),
        Ok(Err((reason, detail))) => {
            reject(inner, &connection, reason, &detail);
            return Err(DialError::BadHello { reason, detail });
        }
        Ok(Ok(reply)) => reply,
    };
    if let Err((reason, detail)) = check_hello(inner, &reply, Some(peer.id)) {
        reject(inner, &connection, reason, &detail);
        return Err(DialError::BadHello { reason, detail });
    }
    establish(inner, peer, connection, send, reader, inner.config.node_id, reply.incarnation);
    Ok(())
}

/// Explains a connection that failed before the peer's Hello: the peer's
/// own rejection code if it sent one, otherwise the TLS 1.3 trap.
fn failure_before_hello(connection: &quinn::Connection, fallback: String) -> DialError {
    match connection.close_reason() {
        Some(ConnectionError::ApplicationClosed(close)) => DialError::Rejected {
            reason: RejectReason::from_close_code(close.error_code)
                .map_or_else(|| format!("code {}", close.error_code), |r| r.name().to_string()),
            detail: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        Some(error) => DialError::ProbablyAuthentication(error.to_string()),
        None => DialError::ProbablyAuthentication(fallback),
    }
}

/// Offers the connection to the peer's slot and starts its tasks. The loser
/// of a tie-break (or the connection a newer one replaced) is not closed at
/// once: the other side may have written messages on it before it learned
/// of the winner, so it keeps being read for a grace period while nothing
/// new is written to it.
fn establish(
    inner: &Arc<Inner>,
    peer: &Arc<Peer>,
    connection: quinn::Connection,
    send: SendStream,
    reader: FrameReader,
    dialed_by: NodeId,
    peer_incarnation: u64,
) {
    let session =
        Arc::new(Session::new(inner.next_session_id(), connection, send, dialed_by, peer_incarnation));
    let loser = match peer.install(&session, inner.config.node_id) {
        Installed::No => Some(Arc::clone(&session)),
        Installed::Yes { replaced } => replaced,
    };
    session::spawn(Arc::clone(inner), Arc::clone(peer), session, reader);
    if let Some(loser) = loser {
        tokio::spawn(async move {
            tokio::time::sleep(SUPERSEDED_GRACE).await;
            loser.connection.close(close_code::SUPERSEDED, b"another connection with this peer is in use");
        });
    }
}
