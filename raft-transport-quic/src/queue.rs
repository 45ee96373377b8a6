//! A peer's outgoing queue: bounded in messages and bytes, dropping the
//! oldest message when full.

use std::collections::VecDeque;
use std::time::Instant;

use raft_core::message::Message;

/// Bytes counted for a message besides its payload (ids, term, indexes).
const MESSAGE_OVERHEAD_BYTES: u64 = 64;

/// The bytes a queued message is charged for.
pub(crate) fn estimated_bytes(message: &Message) -> u64 {
    message.payload_bytes() + MESSAGE_OVERHEAD_BYTES
}

/// Messages waiting for one stream of one peer.
#[derive(Debug)]
pub(crate) struct BoundedQueue {
    /// Each message with its charged bytes and when it was queued.
    items: VecDeque<(Message, u64, Instant)>,
    bytes: u64,
    max_items: usize,
    max_bytes: u64,
}

impl BoundedQueue {
    pub(crate) fn new(max_items: usize, max_bytes: u64) -> BoundedQueue {
        BoundedQueue { items: VecDeque::new(), bytes: 0, max_items: max_items.max(1), max_bytes }
    }

    /// Queues a message; returns how many older messages were dropped to
    /// make room. A message larger than the byte bound is still queued when
    /// it is alone (the frame limit decides whether it can be sent).
    pub(crate) fn push(&mut self, message: Message, now: Instant) -> u64 {
        let size = estimated_bytes(&message);
        let mut dropped = 0;
        while !self.items.is_empty()
            && (self.items.len() >= self.max_items || self.bytes.saturating_add(size) > self.max_bytes)
        {
            if let Some((_, old_size, _)) = self.items.pop_front() {
                self.bytes -= old_size;
                dropped += 1;
            }
        }
        self.items.push_back((message, size, now));
        self.bytes += size;
        dropped
    }

    /// Drops messages queued before `oldest_allowed` (they are at the
    /// front); returns how many.
    pub(crate) fn expire(&mut self, oldest_allowed: Instant) -> u64 {
        let mut expired = 0;
        while self.items.front().is_some_and(|(_, _, queued_at)| *queued_at < oldest_allowed) {
            if let Some((_, size, _)) = self.items.pop_front() {
                self.bytes -= size;
                expired += 1;
            }
        }
        expired
    }

    /// Takes messages from the front, at least one, until about `max_bytes`.
    pub(crate) fn take(&mut self, max_bytes: u64, into: &mut Vec<Message>) {
        let mut taken_bytes = 0;
        while let Some((_, size, _)) = self.items.front() {
            if !into.is_empty() && taken_bytes + size > max_bytes {
                break;
            }
            taken_bytes += size;
            if let Some((message, size, _)) = self.items.pop_front() {
                self.bytes -= size;
                into.push(message);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.items.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::message::{Heartbeat, MessageBody};
    use raft_core::types::{LogIndex, NodeId, Term};
    use std::time::Duration;

    fn heartbeat(round: u64) -> Message {
        Message {
            from: NodeId(1),
            to: NodeId(2),
            term: Term(1),
            body: MessageBody::Heartbeat(Heartbeat { commit: LogIndex(0), read_round: round }),
        }
    }

    fn round(message: &Message) -> u64 {
        match &message.body {
            MessageBody::Heartbeat(h) => h.read_round,
            _ => u64::MAX,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let mut queue = BoundedQueue::new(3, u64::MAX);
        let dropped: u64 = (0..5).map(|i| queue.push(heartbeat(i), Instant::now())).sum();
        assert_eq!(dropped, 2);
        let mut taken = Vec::new();
        queue.take(u64::MAX, &mut taken);
        assert_eq!(taken.iter().map(round).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(queue.is_empty());
    }

    #[test]
    fn the_byte_bound_drops_too_and_take_honours_its_budget() {
        let mut queue = BoundedQueue::new(100, 3 * MESSAGE_OVERHEAD_BYTES);
        for i in 0..4 {
            queue.push(heartbeat(i), Instant::now());
        }
        assert_eq!(queue.len(), 3);
        let mut taken = Vec::new();
        queue.take(MESSAGE_OVERHEAD_BYTES + 1, &mut taken);
        assert_eq!(taken.len(), 1);
        queue.clear();
        assert!(queue.is_empty());
    }

    #[test]
    fn messages_older_than_the_cutoff_expire() {
        let mut queue = BoundedQueue::new(100, u64::MAX);
        let start = Instant::now();
        queue.push(heartbeat(1), start);
        queue.push(heartbeat(2), start + Duration::from_secs(2));
        assert_eq!(queue.expire(start + Duration::from_secs(1)), 1);
        let mut taken = Vec::new();
        queue.take(u64::MAX, &mut taken);
        assert_eq!(taken.iter().map(round).collect::<Vec<_>>(), vec![2]);
    }
}
