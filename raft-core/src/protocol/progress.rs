//! The leader's view of one follower: how far it has replicated and how the
//! leader sends to it (probing, pipelining, or streaming a snapshot).

use std::collections::VecDeque;

use crate::types::{LogIndex, SnapshotMeta};

/// How the leader sends entries to one follower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ProgressState {
    /// The leader does not know where the follower's log matches: it sends
    /// one AppendEntries and waits for the answer (or the next heartbeat).
    Probe {
        /// Set after a probe was sent; cleared by an answer or a heartbeat.
        paused: bool,
    },
    /// The follower's log matches: the leader pipelines AppendEntries
    /// optimistically, bounded by the in-flight window.
    Replicate,
    /// The follower needs entries the leader compacted: the leader streams a
    /// snapshot to it, a bounded window of chunks at a time.
    Snapshot(SnapshotSend),
}

/// An ongoing snapshot transfer to one follower.
///
/// The leader keeps up to `snapshot_chunks_in_flight` chunks on the wire: it
/// asks the caller for one chunk at a time, sends it, and asks for the next
/// while the window has room. The follower accepts chunks only in order and
/// answers each with the offset it expects next, so a lost chunk shows up as
/// an answer that does not move `acked_offset`; the leader then rewinds to
/// that offset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SnapshotSend {
    /// The snapshot being sent.
    pub(crate) snapshot: SnapshotMeta,
    /// The offset the follower confirmed it has durably.
    pub(crate) acked_offset: u64,
    /// The offset of the next chunk to read and send.
    pub(crate) next_offset: u64,
    /// The offset of the chunk read the caller was asked for and has not
    /// answered. At most one read is outstanding per follower.
    pub(crate) reading: Option<u64>,
    /// The end offsets of chunks sent and not yet acknowledged, in order.
    /// Never longer than `snapshot_chunks_in_flight`.
    pub(crate) in_flight: VecDeque<u64>,
    /// Whether the last chunk (`done`) has been sent.
    pub(crate) last_chunk_sent: bool,
    /// The offset the leader last rewound to after the follower reported a
    /// gap. The chunks that were already on the wire behind the lost one
    /// draw the same answer; those answers must not rewind again.
    pub(crate) rewound_to: Option<u64>,
    /// Ticks since the follower last answered; a silent transfer is restarted.
    pub(crate) idle_ticks: u64,
}

impl SnapshotSend {
    fn new(snapshot: SnapshotMeta) -> Self {
        SnapshotSend {
            snapshot,
            acked_offset: 0,
            next_offset: 0,
            reading: None,
            in_flight: VecDeque::new(),
            last_chunk_sent: false,
            rewound_to: None,
            idle_ticks: 0,
        }
    }

    /// Forgets everything past `offset` and sends again from there.
    pub(crate) fn rewind(&mut self, offset: u64) {
        self.acked_offset = offset;
        self.next_offset = offset;
        self.in_flight.clear();
        self.last_chunk_sent = false;
        // A read in progress is for an offset past the rewind (or the same
        // one); its answer is dropped and the read asked again.
        self.reading = None;
    }

    /// The offset to ask the caller to read next, if the window has room
    /// and no read is outstanding; records the read as outstanding.
    pub(crate) fn next_read(&mut self, window: usize) -> Option<u64> {
        if self.reading.is_some() || self.last_chunk_sent || self.in_flight.len() >= window {
            return None;
        }
        self.reading = Some(self.next_offset);
        Some(self.next_offset)
    }

    /// Records that the chunk read at `offset` (of `length` bytes) was sent.
    pub(crate) fn chunk_sent(&mut self, offset: u64, length: u64, done: bool) {
        debug_assert_eq!(self.reading, Some(offset));
        self.reading = None;
        self.next_offset = offset + length;
        self.in_flight.push_back(self.next_offset);
        self.last_chunk_sent = done;
    }

    /// Records the follower's durable offset. Returns whether it moved.
    pub(crate) fn acknowledge(&mut self, offset: u64) -> bool {
        if offset <= self.acked_offset {
            return false;
        }
        self.acked_offset = offset;
        while self.in_flight.front().is_some_and(|&end| end <= offset) {
            self.in_flight.pop_front();
        }
        if self.rewound_to.is_some_and(|rewound| rewound < offset) {
            self.rewound_to = None;
        }
        true
    }
}

/// AppendEntries messages in flight to one follower, oldest first, with the
/// last index each carried and its payload bytes. Bounded by
/// `max_inflight_messages` and `max_inflight_bytes`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Inflights {
    messages: VecDeque<(LogIndex, u64)>,
    bytes: u64,
}

impl Inflights {
    pub(crate) fn add(&mut self, last_index: LogIndex, bytes: u64) {
        self.messages.push_back((last_index, bytes));
        self.bytes += bytes;
    }

    /// Frees every message whose entries the follower acknowledged.
    pub(crate) fn free_up_to(&mut self, index: LogIndex) {
        while let Some(&(last, bytes)) = self.messages.front() {
            if last > index {
                break;
            }
            self.messages.pop_front();
            self.bytes -= bytes;
        }
    }

    pub(crate) fn clear(&mut self) {
        self.messages.clear();
        self.bytes = 0;
    }

    pub(crate) fn is_full(&self, max_messages: usize, max_bytes: u64) -> bool {
        self.messages.len() >= max_messages || self.bytes >= max_bytes
    }

    pub(crate) fn count(&self) -> usize {
        self.messages.len()
    }

    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The leader's record of one follower (voter or learner).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The highest index known to match the leader's log (durable there).
    pub(crate) match_index: LogIndex,
    /// The next index to send.
    pub(crate) next_index: LogIndex,
    pub(crate) state: ProgressState,
    pub(crate) inflights: Inflights,
    /// Whether the follower answered since the last CheckQuorum round.
    pub(crate) recent_active: bool,
    /// The highest read round the follower confirmed.
    pub(crate) acked_read_round: u64,
    /// The tick at which the newest confirmed heartbeat was sent: the start
    /// of the follower's promise not to vote for another leader (lease).
    pub(crate) lease_tick: Option<u64>,
    /// The commit index last sent, so commit changes reach followers.
    pub(crate) sent_commit: LogIndex,
    /// The follower's last log index as it last reported it.
    pub(crate) reported_last_index: LogIndex,
    /// Ticks the in-flight window has gone without an acknowledgement. A
    /// window that stalls (messages lost) sends the follower back to probing.
    pub(crate) stalled_ticks: u64,
}

impl Progress {
    pub(crate) fn new(next_index: LogIndex) -> Self {
        Progress {
            match_index: LogIndex(0),
            next_index,
            state: ProgressState::Probe { paused: false },
            inflights: Inflights::default(),
            recent_active: false,
            acked_read_round: 0,
            lease_tick: None,
            sent_commit: LogIndex(0),
            reported_last_index: LogIndex(0),
            stalled_ticks: 0,
        }
    }

    pub(crate) fn become_probe(&mut self) {
        self.stalled_ticks = 0;
        self.state = ProgressState::Probe { paused: false };
        self.next_index = self.match_index.next();
        self.inflights.clear();
    }

    pub(crate) fn become_replicate(&mut self) {
        self.state = ProgressState::Replicate;
        self.next_index = self.match_index.next();
        self.inflights.clear();
    }

    pub(crate) fn become_snapshot(&mut self, snapshot: SnapshotMeta) {
        self.inflights.clear();
        self.state = ProgressState::Snapshot(SnapshotSend::new(snapshot));
    }

    /// Records a successful append up to `index`. Returns whether anything changed.
    pub(crate) fn acknowledge(&mut self, index: LogIndex) -> bool {
        let updated = index > self.match_index;
        if updated {
            self.match_index = index;
            self.stalled_ticks = 0;
        }
        if self.next_index <= index {
            self.next_index = index.next();
        }
        self.inflights.free_up_to(index);
        updated
    }

    /// Counts a tick; returns whether the in-flight window has stalled for
    /// `stall_ticks` and the follower should be probed again.
    pub(crate) fn tick_stalled(&mut self, stall_ticks: u64) -> bool {
        if self.state != ProgressState::Replicate || self.inflights.count() == 0 {
            self.stalled_ticks = 0;
            return false;
        }
        self.stalled_ticks += 1;
        self.stalled_ticks >= stall_ticks
    }

    /// Whether the leader may send entries now.
    pub(crate) fn can_send(&self, max_messages: usize, max_bytes: u64) -> bool {
        match &self.state {
            ProgressState::Probe { paused } => !paused,
            ProgressState::Replicate => !self.inflights.is_full(max_messages, max_bytes),
            ProgressState::Snapshot(_) => false,
        }
    }

    pub(crate) fn state_name(&self) -> &'static str {
        match self.state {
            ProgressState::Probe { .. } => "probe",
            ProgressState::Replicate => "replicate",
            ProgressState::Snapshot(_) => "snapshot",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflights_free_in_order_and_bound() {
        let mut inflights = Inflights::default();
        inflights.add(LogIndex(3), 10);
        inflights.add(LogIndex(6), 10);
        assert!(inflights.is_full(2, 100));
        assert!(inflights.is_full(10, 20));
        inflights.free_up_to(LogIndex(4));
        assert_eq!(inflights.count(), 1);
        assert_eq!(inflights.bytes(), 10);
        inflights.free_up_to(LogIndex(6));
        assert_eq!(inflights.count(), 0);
    }

    #[test]
    fn acknowledgement_moves_match_and_next_forward_only() {
        let mut progress = Progress::new(LogIndex(5));
        assert!(progress.acknowledge(LogIndex(7)));
        assert_eq!(progress.next_index, LogIndex(8));
        assert!(!progress.acknowledge(LogIndex(6)));
        assert_eq!(progress.match_index, LogIndex(7));
    }
}
