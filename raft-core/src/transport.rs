//! The transport trait: how messages reach other nodes.

use tokio::sync::mpsc;

use crate::message::Message;

/// Sends messages to peers.
///
/// Contract:
/// - `send` never waits on a slow or dead peer: each peer has a bounded
///   queue, and a message that does not fit is dropped and counted (Raft
///   retransmits whatever matters).
/// - Messages to one peer arrive in the order sent, or not at all, except
///   that a transport may carry `InstallSnapshot` chunks on a separate
///   stream so that heartbeats and appends never wait behind a snapshot.
/// - Incoming messages are handed to the [`Inbox`] the runtime gave the
///   transport; a message whose claimed sender is not the authenticated peer
///   must be dropped by the transport.
pub trait Transport: Send + Sync + 'static {
    /// Queues messages for their destinations.
    fn send(&self, messages: Vec<Message>);
}

/// Where a transport delivers incoming messages: a bounded queue into the
/// runtime. When it is full, new messages are dropped (and the transport
/// should count them), so a flood from one peer cannot exhaust memory.
#[derive(Clone, Debug)]
pub struct Inbox {
    sender: mpsc::Sender<Message>,
}

/// Why a message could not be delivered to the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeliverError {
    /// The runtime's queue is full; the message was dropped.
    #[error("the node's inbox is full")]
    Full,
    /// The runtime has shut down.
    #[error("the node has shut down")]
    Closed,
}

impl Inbox {
    /// A bounded inbox holding at most `capacity` messages, and its receiving end.
    pub fn bounded(capacity: usize) -> (Inbox, mpsc::Receiver<Message>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        (Inbox { sender }, receiver)
    }

    /// Delivers a message without waiting.
    pub fn deliver(&self, message: Message) -> Result<(), DeliverError> {
        self.sender.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DeliverError::Full,
            mpsc::error::TrySendError::Closed(_) => DeliverError::Closed,
        })
    }
}
