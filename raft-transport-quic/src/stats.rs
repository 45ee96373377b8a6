//! Figures for metrics: plain structs, copied out by
//! [`crate::QuicTransport::stats`], kept as atomics inside.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::VarInt;
use raft_core::types::NodeId;

use crate::frame::FrameError;

/// Why this node refused or closed a connection. Each has its own QUIC
/// application error code ([`RejectReason::close_code`]) sent to the peer
/// with a human-readable reason, and its own counter in [`Rejections`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum RejectReason {
    /// The TLS handshake failed: no client certificate, one from another
    /// CA, no common ALPN, or not QUIC/TLS at all past the first packet.
    TlsHandshake,
    /// The peer sent no Hello in time.
    HelloTimeout,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// The peer's Hello names another cluster.
    ClusterMismatch,
    /// The peer's Hello was meant for another node.
    WrongDestination,
    /// The peer's certificate does not name the node id it claims.
    IdentityMismatch,
    /// The authorizer refused the peer (not a member, nor a learner being added).
    NotAuthorized,
    /// A frame header announced more bytes than the limit.
    FrameTooLarge,
    /// A frame header named no known kind.
    UnknownFrameKind,
    /// A stream ended inside a frame.
    TruncatedFrame,
    /// A frame body did not decode.
    MalformedFrame,
    /// A valid frame where it is not allowed (a second Hello, messages
    /// before the Hello).
    UnexpectedFrame,
}

impl RejectReason {
    /// Every reason, in counter order.
    pub const ALL: [RejectReason; 12] = [
        RejectReason::TlsHandshake,
        RejectReason::HelloTimeout,
        RejectReason::UnsupportedVersion,
        RejectReason::ClusterMismatch,
        RejectReason::WrongDestination,
        RejectReason::IdentityMismatch,
        RejectReason::NotAuthorized,
        RejectReason::FrameTooLarge,
        RejectReason::UnknownFrameKind,
        RejectReason::TruncatedFrame,
        RejectReason::MalformedFrame,
        RejectReason::UnexpectedFrame,
    ];

    fn position(self) -> usize {
        Self::ALL.iter().position(|reason| *reason == self).unwrap_or(0)
    }

    /// The QUIC application error code sent when closing for this reason.
    pub fn close_code(self) -> VarInt {
        VarInt::from_u32(match self {
            // TLS failures are closed by the TLS stack with its own alert.
            RejectReason::TlsHandshake => 0x100,
            RejectReason::HelloTimeout => 0x101,
            RejectReason::UnsupportedVersion => 0x102,
            RejectReason::ClusterMismatch => 0x103,
            RejectReason::WrongDestination => 0x104,
            RejectReason::IdentityMismatch => 0x105,
            RejectReason::NotAuthorized => 0x106,
            RejectReason::FrameTooLarge => 0x107,
            RejectReason::UnknownFrameKind => 0x108,
            RejectReason::TruncatedFrame => 0x109,
            RejectReason::MalformedFrame => 0x10a,
            RejectReason::UnexpectedFrame => 0x10b,
        })
    }

    /// The reason for a close code, if it is one of ours.
    pub fn from_close_code(code: VarInt) -> Option<RejectReason> {
        Self::ALL.into_iter().find(|reason| reason.close_code() == code)
    }

    /// A short name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            RejectReason::TlsHandshake => "tls_handshake",
            RejectReason::HelloTimeout => "hello_timeout",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::ClusterMismatch => "cluster_mismatch",
            RejectReason::WrongDestination => "wrong_destination",
            RejectReason::IdentityMismatch => "identity_mismatch",
            RejectReason::NotAuthorized => "not_authorized",
            RejectReason::FrameTooLarge => "frame_too_large",
            RejectReason::UnknownFrameKind => "unknown_frame_kind",
            RejectReason::TruncatedFrame => "truncated_frame",
            RejectReason::MalformedFrame => "malformed_frame",
            RejectReason::UnexpectedFrame => "unexpected_frame",
        }
    }
}

impl From<&FrameError> for RejectReason {
    fn from(error: &FrameError) -> Self {
        match error {
            FrameError::TooLarge { .. } => RejectReason::FrameTooLarge,
            FrameError::UnknownKind(_) => RejectReason::UnknownFrameKind,
            FrameError::Truncated { .. } => RejectReason::TruncatedFrame,
            FrameError::UnsupportedVersion { .. } => RejectReason::UnsupportedVersion,
            _ => RejectReason::MalformedFrame,
        }
    }
}

/// Close codes that are not rejections.
pub mod close_code {
    use quinn::VarInt;

    /// The node is shutting down.
    pub const SHUTDOWN: VarInt = VarInt::from_u32(0);
    /// Another connection with the same peer won the tie-break (or the peer
    /// restarted and dialed again); this one is redundant.
    pub const SUPERSEDED: VarInt = VarInt::from_u32(1);
    /// The peer was removed from this node's directory.
    pub const PEER_REMOVED: VarInt = VarInt::from_u32(2);
}

/// Connections this node refused or closed, by reason.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections {
    counts: [u64; RejectReason::ALL.len()],
}

impl Rejections {
    /// How many connections were refused or closed for `reason`.
    pub fn get(&self, reason: RejectReason) -> u64 {
        self.counts[reason.position()]
    }

    /// The total over every reason.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Each reason with its count.
    pub fn iter(&self) -> impl Iterator<Item = (RejectReason, u64)> + '_ {
        RejectReason::ALL.into_iter().map(|reason| (reason, self.get(reason)))
    }
}

/// Errors on one peer's link, by kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerErrors {
    /// Dials that failed before a connection existed (unreachable, timeout).
    pub dial_failures: u64,
    /// Dials whose TLS handshake or Hello exchange failed (including the
    /// TLS 1.3 case where the server's rejection of our certificate only
    /// shows when reading its Hello).
    pub handshake_failures: u64,
    /// Connections the peer closed with one of our rejection codes.
    pub rejected_by_peer: u64,
    /// Established connections lost (timeout, reset, peer closed).
    pub connections_lost: u64,
    /// Frames from this peer that did not decode (the connection was closed).
    pub frame_errors: u64,
    /// Messages dropped because the peer's outgoing queue was full (the
    /// oldest is dropped).
    pub queue_full_drops: u64,
    /// Messages dropped because this node's inbox was full.
    pub inbox_full_drops: u64,
    /// Messages that waited longer than the queue's age limit (the peer
    /// was unreachable), dropped.
    pub expired_drops: u64,
    /// Messages too large for one frame, dropped.
    pub oversized_drops: u64,
    /// Messages from this peer claiming another sender or destination, dropped.
    pub misaddressed_drops: u64,
}

/// One peer's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Whether a connection is established now.
    pub connected: bool,
    /// The connection's smoothed round-trip time, when connected.
    pub rtt: Option<Duration>,
    /// Messages written to the peer.
    pub messages_sent: u64,
    /// Messages received from the peer and handed to the inbox.
    pub messages_received: u64,
    /// Frame bytes written to the peer (headers included).
    pub bytes_sent: u64,
    /// Frame bytes received from the peer (headers included).
    pub bytes_received: u64,
    /// Connections established with the peer (either side dialing).
    pub connections_established: u64,
    /// Messages waiting in the peer's queues now.
    pub queued_messages: u64,
    /// Errors by kind.
    pub errors: PeerErrors,
}

/// The transport's figures.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Per peer.
    pub peers: BTreeMap<NodeId, PeerStats>,
    /// Connections refused or closed by this node, by reason.
    pub rejections: Rejections,
    /// Messages for a node not in the directory, dropped.
    pub unknown_destination_drops: u64,
    /// QUIC connections open on the endpoint now, established or not
    /// (one per connected peer once handshakes and tie-breaks settle).
    pub open_connections: usize,
}

/// A counter that many tasks bump.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn add(&self, amount: u64) {
        self.0.fetch_add(amount, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The live counters behind [`Rejections`].
#[derive(Debug, Default)]
pub(crate) struct RejectionCounters {
    counts: [Counter; RejectReason::ALL.len()],
}

impl RejectionCounters {
    pub(crate) fn add(&self, reason: RejectReason) {
        self.counts[reason.position()].add(1);
    }

    pub(crate) fn snapshot(&self) -> Rejections {
        let mut rejections = Rejections::default();
        for (count, counter) in rejections.counts.iter_mut().zip(&self.counts) {
            *count = counter.get();
        }
        rejections
    }
}

/// The live counters behind [`PeerStats`].
#[derive(Debug, Default)]
pub(crate) struct PeerCounters {
    pub(crate) messages_sent: Counter,
    pub(crate) messages_received: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) bytes_received: Counter,
    pub(crate) connections_established: Counter,
    pub(crate) dial_failures: Counter,
    pub(crate) handshake_failures: Counter,
    pub(crate) rejected_by_peer: Counter,
    pub(crate) connections_lost: Counter,
    pub(crate) frame_errors: Counter,
    pub(crate) queue_full_drops: Counter,
    pub(crate) inbox_full_drops: Counter,
    pub(crate) expired_drops: Counter,
    pub(crate) oversized_drops: Counter,
    pub(crate) misaddressed_drops: Counter,
}

impl PeerCounters {
    pub(crate) fn snapshot(&self) -> PeerStats {
        PeerStats {
            connected: false,
            rtt: None,
            messages_sent: self.messages_sent.get(),
            messages_received: self.messages_received.get(),
            bytes_sent: self.bytes_sent.get(),
            bytes_received: self.bytes_received.get(),
            connections_established: self.connections_established.get(),
            queued_messages: 0,
            errors: PeerErrors {
                dial_failures: self.dial_failures.get(),
                handshake_failures: self.handshake_failures.get(),
                rejected_by_peer: self.rejected_by_peer.get(),
                connections_lost: self.connections_lost.get(),
                frame_errors: self.frame_errors.get(),
                queue_full_drops: self.queue_full_drops.get(),
                inbox_full_drops: self.inbox_full_drops.get(),
                expired_drops: self.expired_drops.get(),
                oversized_drops: self.oversized_drops.get(),
                misaddressed_drops: self.misaddressed_drops.get(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_are_distinct_and_map_back() {
        for reason in RejectReason::ALL {
            assert_eq!(RejectReason::from_close_code(reason.close_code()), Some(reason));
        }
        assert_eq!(RejectReason::from_close_code(close_code::SUPERSEDED), None);
    }
}
