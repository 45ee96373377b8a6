//! One peer's shared state: its address, its outgoing queues, the
//! connection in use (a [`Session`]) and its counters. Queues belong to the
//! peer, not the connection, so messages wait across a reconnect (bounded).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bytes::Bytes;
use quinn::SendStream;
use raft_core::message::{Message, MessageBody};
use raft_core::types::NodeId;
use tokio::sync::Notify;

use crate::config::QueueLimits;
use crate::queue::BoundedQueue;
use crate::stats::{PeerCounters, PeerStats};

/// The least time between two direct writes on one connection, in nanoseconds.
const DIRECT_WRITE_SPACING_NANOS: u64 = 50_000;

/// One established, authenticated connection with a peer.
#[derive(Debug)]
pub(crate) struct Session {
    /// Unique within this transport.
    pub(crate) id: u64,
    pub(crate) connection: quinn::Connection,
    /// Which side dialed: the tie-break keeps the connection dialed by the
    /// lower node id.
    pub(crate) dialed_by: NodeId,
    /// The peer's incarnation from its Hello.
    pub(crate) peer_incarnation: u64,
    /// The send half of the message stream. The writer task holds the lock
    /// while it writes; `send` writes directly when it gets the lock at once
    /// and nothing is queued, saving a task hop on the latency path.
    pub(crate) message_stream: tokio::sync::Mutex<SendStream>,
    /// Bytes of a direct write that quinn could not take at once, for the
    /// writer to finish before anything else.
    pub(crate) unwritten: Mutex<VecDeque<Bytes>>,
    created_at: Instant,
    /// When the last direct write happened, in nanoseconds after `created_at`.
    last_direct_write_nanos: AtomicU64,
    /// Wakes the message writer.
    pub(crate) messages_ready: Notify,
    /// Wakes the snapshot writer.
    pub(crate) snapshots_ready: Notify,
    closed: AtomicBool,
}

impl Session {
    pub(crate) fn new(
        id: u64,
        connection: quinn::Connection,
        message_stream: SendStream,
        dialed_by: NodeId,
        peer_incarnation: u64,
    ) -> Session {
        Session {
            id,
            connection,
            message_stream: tokio::sync::Mutex::new(message_stream),
            unwritten: Mutex::new(VecDeque::new()),
            created_at: Instant::now(),
            last_direct_write_nanos: AtomicU64::new(0),
            dialed_by,
            peer_incarnation,
            messages_ready: Notify::new(),
            snapshots_ready: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    /// Whether `send` may write directly: only when the previous direct
    /// write is a while ago. Messages that follow each other closely go
    /// through the writer task instead, which batches them into one frame
    /// and one packet (a direct write per message would cost a packet
    /// each and halve the throughput of small messages).
    fn claim_direct_write(&self) -> bool {
        let now = u64::try_from(self.created_at.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let last = self.last_direct_write_nanos.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < DIRECT_WRITE_SPACING_NANOS {
            return false;
        }
        self.last_direct_write_nanos.store(now.max(1), Ordering::Relaxed);
        true
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.connection.close_reason().is_some()
    }

    /// Marks the session over and wakes its writers so they exit.
    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Release);
        self.messages_ready.notify_one();
        self.snapshots_ready.notify_one();
    }
}

/// What [`Peer::install`] decided.
#[derive(Debug)]
pub(crate) enum Installed {
    /// The new session is in use; the one it replaced (if any) must be closed.
    Yes { replaced: Option<Arc<Session>> },
    /// The session in use wins the tie-break; the new one must be closed.
    No,
}

#[derive(Debug)]
struct PeerState {
    address: Option<SocketAddr>,
    messages: BoundedQueue,
    snapshots: BoundedQueue,
    session: Option<Arc<Session>>,
    removed: bool,
}

/// A peer known to the transport.
#[derive(Debug)]
pub(crate) struct Peer {
    pub(crate) id: NodeId,
    state: Mutex<PeerState>,
    /// Wakes the dialer: messages queued without a session, a session
    /// ended, the address changed, or the peer was removed.
    pub(crate) dial_wanted: Notify,
    pub(crate) counters: PeerCounters,
    limits: QueueLimits,
}

impl Peer {
    pub(crate) fn new(id: NodeId, address: Option<SocketAddr>, limits: QueueLimits) -> Peer {
        Peer {
            id,
            state: Mutex::new(PeerState {
                address,
                messages: BoundedQueue::new(limits.max_messages, limits.max_message_bytes),
                snapshots: BoundedQueue::new(limits.max_snapshot_chunks, limits.max_snapshot_bytes),
                session: None,
                removed: false,
            }),
            dial_wanted: Notify::new(),
            counters: PeerCounters::default(),
            limits,
        }
    }

    fn lock(&self) -> MutexGuard<'_, PeerState> {
        // Nothing panics while holding the lock; if something did, the state
        // is still a valid queue and session slot.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn address(&self) -> Option<SocketAddr> {
        self.lock().address
    }

    pub(crate) fn set_address(&self, address: Option<SocketAddr>) {
        self.lock().address = address;
        self.dial_wanted.notify_one();
    }

    /// Sends messages: snapshot chunks to their own queue; other messages
    /// straight onto the stream when the writer is idle and nothing is
    /// queued, otherwise to the queue. Wakes whoever moves them on: the
    /// session's writers, or the dialer.
    pub(crate) fn enqueue(&self, mut messages: Vec<Message>, max_frame_bytes: u32) {
        if let Some(session) = self.live_session() {
            if let Ok(mut stream) = session.message_stream.try_lock() {
                let nothing_unwritten = session.unwritten.lock().is_ok_and(|bytes| bytes.is_empty());
                if nothing_unwritten && self.lock().messages.is_empty() && session.claim_direct_write() {
                    let (snapshots, direct): (Vec<Message>, Vec<Message>) =
                        messages.into_iter().partition(|m| matches!(m.body, MessageBody::InstallSnapshot(_)));
                    messages = snapshots;
                    crate::session::write_now(self, &session, &mut stream, direct, max_frame_bytes);
                }
            }
        }
        if messages.is_empty() {
            return;
        }
        let (mut any_messages, mut any_snapshots, mut dropped) = (false, false, 0);
        let session = {
            let mut state = self.lock();
            if state.removed {
                return;
            }
            let now = Instant::now();
            for message in messages {
                if matches!(message.body, MessageBody::InstallSnapshot(_)) {
                    dropped += state.snapshots.push(message, now);
                    any_snapshots = true;
                } else {
                    dropped += state.messages.push(message, now);
                    any_messages = true;
                }
            }
            state.session.clone()
        };
        self.counters.queue_full_drops.add(dropped);
        match session {
            Some(session) if !session.is_closed() => {
                if any_messages {
                    session.messages_ready.notify_one();
                }
                if any_snapshots {
                    session.snapshots_ready.notify_one();
                }
            }
            _ => self.dial_wanted.notify_one(),
        }
    }

    fn live_session(&self) -> Option<Arc<Session>> {
        let state = self.lock();
        state.session.as_ref().filter(|s| !state.removed && !s.is_closed()).cloned()
    }

    /// Takes queued messages for session `session_id`'s writer, if that
    /// session is still the one in use, after dropping those older than the
    /// age limit.
    pub(crate) fn take(&self, session_id: u64, snapshots: bool, max_bytes: u64, into: &mut Vec<Message>) {
        let expired = {
            let mut state = self.lock();
            if state.session.as_ref().is_none_or(|s| s.id != session_id) {
                return;
            }
            let max_age = self.limits.max_age;
            let queue = if snapshots { &mut state.snapshots } else { &mut state.messages };
            let expired = Instant::now().checked_sub(max_age).map_or(0, |oldest| queue.expire(oldest));
            queue.take(max_bytes, into);
            expired
        };
        self.counters.expired_drops.add(expired);
    }

    /// Whether the dialer should connect now.
    pub(crate) fn needs_dial(&self) -> bool {
        let state = self.lock();
        let live = state.session.as_ref().is_some_and(|s| !s.is_closed());
        let queued = !(state.messages.is_empty() && state.snapshots.is_empty());
        let reachable = !state.removed && state.address.is_some();
        reachable && !live && queued
    }

    pub(crate) fn is_removed(&self) -> bool {
        self.lock().removed
    }

    /// Marks the peer removed: drops its queues and returns its session to close.
    pub(crate) fn remove(&self) -> Option<Arc<Session>> {
        let session = {
            let mut state = self.lock();
            state.removed = true;
            state.messages.clear();
            state.snapshots.clear();
            state.session.take()
        };
        self.dial_wanted.notify_one();
        session
    }

    /// Offers a newly authenticated session. The rules, applied the same way
    /// on both sides so they keep the same connection:
    /// 1. no live session: take the new one;
    /// 2. the peer's incarnation changed: it restarted, take the new one;
    /// 3. both were dialed by the same side: that side redialed because it
    ///    gave up on the old one, take the new one;
    /// 4. otherwise (simultaneous dials): keep the one dialed by the lower id.
    pub(crate) fn install(&self, new: &Arc<Session>, local: NodeId) -> Installed {
        let mut state = self.lock();
        if state.removed {
            return Installed::No;
        }
        let take_new = match &state.session {
            None => true,
            Some(old) if old.is_closed() => true,
            Some(old) if old.peer_incarnation != new.peer_incarnation => true,
            Some(old) if old.dialed_by == new.dialed_by => true,
            Some(_) => new.dialed_by == local.min(self.id),
        };
        if !take_new {
            return Installed::No;
        }
        self.counters.connections_established.add(1);
        Installed::Yes { replaced: state.session.replace(Arc::clone(new)) }
    }

    /// Clears the slot if it still holds session `session_id`; returns
    /// whether it did (the session was the one in use).
    pub(crate) fn clear_session(&self, session_id: u64) -> bool {
        let cleared = {
            let mut state = self.lock();
            if state.session.as_ref().is_some_and(|s| s.id == session_id) {
                state.session = None;
                true
            } else {
                false
            }
        };
        self.dial_wanted.notify_one();
        cleared
    }

    pub(crate) fn stats(&self) -> PeerStats {
        let mut stats = self.counters.snapshot();
        let state = self.lock();
        if let Some(session) = state.session.as_ref().filter(|s| !s.is_closed()) {
            stats.connected = true;
            stats.rtt = Some(session.connection.rtt());
        }
        stats.queued_messages = (state.messages.len() + state.snapshots.len()) as u64;
        stats
    }
}
