//! The tasks of one established connection.
//!
//! - the **message writer** owns the send half of the bidirectional stream
//!   the dialer opened (after the Hellos) and writes batches of queued
//!   messages, as many as are queued at each wake-up, in one frame;
//! - the **snapshot writer** opens a unidirectional stream at the first
//!   InstallSnapshot chunk, at a lower priority, so chunks never delay
//!   heartbeats and appends (QUIC sends the higher-priority stream's
//!   buffered data first and flow-controls each stream on its own);
//! - a **reader** per incoming stream decodes frames and hands messages to
//!   the inbox without ever waiting (a full inbox drops and counts);
//! - the **supervisor** waits for the connection to close, clears the
//!   peer's slot and wakes the dialer.
//!
//! Ordering: messages of one kind travel on one stream, so they arrive in
//! the order queued; snapshot chunks are ordered among themselves.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use quinn::{ConnectionError, RecvStream, SendStream};
use raft_core::message::Message;
use raft_core::transport::DeliverError;

use crate::frame::{decode_body, Frame, FrameError, FrameHeader, MessageBatch, HEADER_BYTES};
use crate::peer::{Peer, Session};
use crate::stats::{close_code, RejectReason};
use crate::transport::Inner;

/// The most estimated message bytes a writer takes from the queue at once:
/// large enough to batch thousands of small messages into one write, small
/// enough not to hold a big buffer.
const WRITE_BATCH_BYTES: u64 = 1 << 20;

/// The most bytes asked of quinn per read.
const READ_CHUNK_BYTES: usize = 256 << 10;

/// Why reading the next frame failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StreamReadError {
    /// The bytes were not a valid frame: the connection must be closed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The stream or connection failed.
    #[error(transparent)]
    Stream(#[from] quinn::ReadError),
}

/// Reads frames from a stream through a buffer: one copy from quinn's
/// chunks, several small frames per read.
pub(crate) struct FrameReader {
    recv: RecvStream,
    buffer: BytesMut,
    limit_bytes: u32,
}

impl FrameReader {
    pub(crate) fn new(recv: RecvStream, limit_bytes: u32) -> FrameReader {
        FrameReader { recv, buffer: BytesMut::new(), limit_bytes }
    }

    pub(crate) fn set_limit(&mut self, limit_bytes: u32) {
        self.limit_bytes = limit_bytes;
    }

    /// The next frame and its size on the wire, or `None` when the peer
    /// finished the stream between frames.
    pub(crate) async fn next(&mut self) -> Result<Option<(Frame, usize)>, StreamReadError> {
        loop {
            if let Some(header) = self.buffer.first_chunk::<HEADER_BYTES>() {
                // Checked before any room is reserved for the body.
                let header = FrameHeader::parse(*header, self.limit_bytes)?;
                let total_bytes = HEADER_BYTES + header.body_bytes as usize;
                if self.buffer.len() >= total_bytes {
                    let frame_bytes = self.buffer.split_to(total_bytes);
                    let frame = decode_body(header.kind, &frame_bytes[HEADER_BYTES..])?;
                    return Ok(Some((frame, total_bytes)));
                }
                self.buffer.reserve(total_bytes - self.buffer.len());
            }
            match self.recv.read_chunk(READ_CHUNK_BYTES, true).await? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk.bytes),
                None if self.buffer.is_empty() => return Ok(None),
                None => return Err(FrameError::Truncated { needed_bytes: self.needed_bytes() }.into()),
            }
        }
    }

    fn needed_bytes(&self) -> usize {
        match self.buffer.first_chunk::<HEADER_BYTES>() {
            Some(header) => {
                let body = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
                (HEADER_BYTES + body).saturating_sub(self.buffer.len())
            }
            None => HEADER_BYTES - self.buffer.len(),
        }
    }
}

/// Closes a connection for a protocol violation: the reason's code and a
/// readable detail go to the peer, a counter and a log line stay here.
pub(crate) fn reject(inner: &Inner, connection: &quinn::Connection, reason: RejectReason, detail: &str) {
    inner.rejections.add(reason);
    tracing::warn!(
        node = %inner.config.node_id,
        remote = %connection.remote_address(),
        reason = reason.name(),
        %detail,
        "closing a peer connection"
    );
    // The reason must fit in one packet with the rest of the close frame.
    let text: String = format!("{}: {detail}", reason.name()).chars().take(200).collect();
    connection.close(reason.close_code(), text.as_bytes());
}

/// Starts the tasks of a session just installed as the peer's connection.
pub(crate) fn spawn(inner: Arc<Inner>, peer: Arc<Peer>, session: Arc<Session>, reader: FrameReader) {
    tracing::debug!(node = %inner.config.node_id, peer = %peer.id, session = session.id, "connection established");
    tokio::spawn(write_messages(Arc::clone(&inner), Arc::clone(&peer), Arc::clone(&session)));
    tokio::spawn(write_snapshots(Arc::clone(&inner), Arc::clone(&peer), Arc::clone(&session)));
    tokio::spawn(read_loop(Arc::clone(&inner), Arc::clone(&peer), Arc::clone(&session), reader));
    tokio::spawn(accept_streams(Arc::clone(&inner), Arc::clone(&peer), Arc::clone(&session)));
    // Whatever waited in the queues during the reconnect goes out now.
    session.messages_ready.notify_one();
    session.snapshots_ready.notify_one();
    tokio::spawn(supervise(inner, peer, session));
}

/// Writes queued messages on the message stream, as many as are queued at
/// each wake-up, batched into frames; first any bytes a direct write left.
async fn write_messages(inner: Arc<Inner>, peer: Arc<Peer>, session: Arc<Session>) {
    let mut batch = Vec::new();
    loop {
        session.messages_ready.notified().await;
        let mut stream = session.message_stream.lock().await;
        loop {
            if session.is_closed() {
                return;
            }
            let unwritten = session.unwritten.lock().map(|mut bytes| bytes.pop_front()).unwrap_or_default();
            if let Some(bytes) = unwritten {
                if stream.write_chunk(bytes).await.is_err() {
                    return;
                }
                continue;
            }
            peer.take(session.id, false, WRITE_BATCH_BYTES, &mut batch);
            if batch.is_empty() {
                break;
            }
            for (frame, count) in encode_frames(&mut batch, inner.config.max_frame_bytes, &peer) {
                let bytes = frame.len() as u64;
                if stream.write_chunk(frame).await.is_err() {
                    // The supervisor reports why the connection failed.
                    return;
                }
                peer.counters.bytes_sent.add(bytes);
                peer.counters.messages_sent.add(count);
            }
        }
    }
}

/// Writes snapshot chunks, one at a time, on a stream of its own opened at
/// the first chunk.
async fn write_snapshots(inner: Arc<Inner>, peer: Arc<Peer>, session: Arc<Session>) {
    let mut stream: Option<SendStream> = None;
    let mut batch = Vec::new();
    loop {
        session.snapshots_ready.notified().await;
        loop {
            if session.is_closed() {
                return;
            }
            // One chunk at a time (a take of one byte takes one message).
            peer.take(session.id, true, 1, &mut batch);
            if batch.is_empty() {
                break;
            }
            if stream.is_none() {
                stream = open_snapshot_stream(&session.connection).await;
            }
            let Some(send) = stream.as_mut() else {
                return;
            };
            for (frame, count) in encode_frames(&mut batch, inner.config.max_frame_bytes, &peer) {
                let bytes = frame.len() as u64;
                if send.write_chunk(frame).await.is_err() {
                    return;
                }
                peer.counters.bytes_sent.add(bytes);
                peer.counters.messages_sent.add(count);
            }
        }
    }
}

/// Writes messages from the caller of `send`, without waiting: the writer
/// task was idle (its lock was free) and nothing was queued, so order is
/// kept. Whatever quinn cannot take at once is left for the writer.
pub(crate) fn write_now(
    peer: &Peer,
    session: &Session,
    stream: &mut SendStream,
    mut messages: Vec<Message>,
    max_frame_bytes: u32,
) {
    let mut context = std::task::Context::from_waker(std::task::Waker::noop());
    let mut left_over = Vec::new();
    for (mut frame, count) in encode_frames(&mut messages, max_frame_bytes, peer) {
        let bytes = frame.len() as u64;
        if left_over.is_empty() {
            while !frame.is_empty() {
                match std::pin::Pin::new(&mut *stream).poll_write(&mut context, &frame) {
                    std::task::Poll::Ready(Ok(written)) => drop(frame.split_to(written)),
                    // A failed connection: the supervisor reports it.
                    std::task::Poll::Ready(Err(_)) => return,
                    std::task::Poll::Pending => break,
                }
            }
        }
        if !frame.is_empty() {
            left_over.push(frame);
        }
        peer.counters.bytes_sent.add(bytes);
        peer.counters.messages_sent.add(count);
    }
    if !left_over.is_empty() {
        if let Ok(mut unwritten) = session.unwritten.lock() {
            unwritten.extend(left_over);
        }
        session.messages_ready.notify_one();
    }
}

async fn open_snapshot_stream(connection: &quinn::Connection) -> Option<SendStream> {
    let stream = connection.open_uni().await.ok()?;
    // Below the message stream (priority 0): its buffered data goes first.
    stream.set_priority(-1).ok()?;
    Some(stream)
}

/// Encodes messages into frames of at most `limit_bytes` each; a message
/// that cannot fit in a frame alone is dropped and counted.
fn encode_frames(messages: &mut Vec<Message>, limit_bytes: u32, peer: &Peer) -> Vec<(Bytes, u64)> {
    let mut frames = Vec::new();
    let mut batch = MessageBatch::new();
    for message in messages.drain(..) {
        let (length, count) = batch.len();
        let pushed = batch.push(&message).is_ok();
        if pushed && batch.body_bytes() <= limit_bytes as usize {
            continue;
        }
        batch.truncate(length, count);
        if pushed && !batch.is_empty() {
            // The batch is full: send it, and start the next with this message.
            push_frame(&mut frames, std::mem::take(&mut batch), limit_bytes);
            if batch.push(&message).is_ok() && batch.body_bytes() <= limit_bytes as usize {
                continue;
            }
            batch = MessageBatch::new();
        }
        peer.counters.oversized_drops.add(1);
        tracing::warn!(peer = %peer.id, kind = message.kind(), "dropped a message larger than the frame limit");
    }
    if !batch.is_empty() {
        push_frame(&mut frames, batch, limit_bytes);
    }
    frames
}

fn push_frame(frames: &mut Vec<(Bytes, u64)>, batch: MessageBatch, limit_bytes: u32) {
    let (_, count) = batch.len();
    // The size was checked while building the batch, so this cannot fail.
    if let Ok(frame) = batch.finish(limit_bytes) {
        frames.push((Bytes::from(frame), count));
    }
}

async fn read_loop(inner: Arc<Inner>, peer: Arc<Peer>, session: Arc<Session>, mut reader: FrameReader) {
    reader.set_limit(inner.config.max_frame_bytes);
    loop {
        match reader.next().await {
            Ok(Some((Frame::Messages(messages), bytes))) => deliver(&inner, &peer, messages, bytes),
            Ok(Some((frame, _))) => {
                let detail = format!("a {:?} frame after the handshake", frame.kind());
                peer.counters.frame_errors.add(1);
                reject(&inner, &session.connection, RejectReason::UnexpectedFrame, &detail);
                return;
            }
            Ok(None) => return,
            Err(StreamReadError::Frame(error)) => {
                peer.counters.frame_errors.add(1);
                reject(&inner, &session.connection, RejectReason::from(&error), &error.to_string());
                return;
            }
            Err(StreamReadError::Stream(_)) => return,
        }
    }
}

/// Hands received messages to the runtime. Messages that do not come from
/// the authenticated peer or are not for this node are dropped.
fn deliver(inner: &Inner, peer: &Peer, messages: Vec<Message>, bytes: usize) {
    peer.counters.bytes_received.add(bytes as u64);
    let (mut received, mut inbox_full, mut misaddressed) = (0, 0, 0);
    for message in messages {
        if message.from != peer.id || message.to != inner.config.node_id {
            misaddressed += 1;
            continue;
        }
        match inner.inbox.deliver(message) {
            Ok(()) => received += 1,
            Err(DeliverError::Full | DeliverError::Closed) | Err(_) => inbox_full += 1,
        }
    }
    peer.counters.messages_received.add(received);
    peer.counters.inbox_full_drops.add(inbox_full);
    peer.counters.misaddressed_drops.add(misaddressed);
}

async fn accept_streams(inner: Arc<Inner>, peer: Arc<Peer>, session: Arc<Session>) {
    while let Ok(recv) = session.connection.accept_uni().await {
        let reader = FrameReader::new(recv, inner.config.max_frame_bytes);
        tokio::spawn(read_loop(Arc::clone(&inner), Arc::clone(&peer), Arc::clone(&session), reader));
    }
}

async fn supervise(inner: Arc<Inner>, peer: Arc<Peer>, session: Arc<Session>) {
    let error = session.connection.closed().await;
    session.mark_closed();
    let was_current = peer.clear_session(session.id);
    let node = inner.config.node_id;
    match &error {
        ConnectionError::LocallyClosed => {}
        ConnectionError::ApplicationClosed(close)
            if [close_code::SUPERSEDED, close_code::SHUTDOWN, close_code::PEER_REMOVED]
                .contains(&close.error_code) =>
        {
            tracing::debug!(%node, peer = %peer.id, reason = %close, "peer closed the connection");
        }
        ConnectionError::ApplicationClosed(close) => {
            peer.counters.rejected_by_peer.add(1);
            let reason = String::from_utf8_lossy(&close.reason);
            tracing::warn!(%node, peer = %peer.id, code = %close.error_code, %reason, "peer rejected the connection");
        }
        _ if was_current && !inner.is_shutting_down() => {
            peer.counters.connections_lost.add(1);
            tracing::info!(%node, peer = %peer.id, %error, "connection lost");
        }
        _ => {}
    }
}
