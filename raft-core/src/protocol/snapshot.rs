//! Snapshots: compaction after a local snapshot, and the chunked
//! InstallSnapshot transfer to followers that need compacted entries.
//!
//! The engine never holds snapshot bytes for long: on the leader it asks the
//! caller for one chunk at a time ([`super::SnapshotRead`]) and forwards it;
//! on the follower it hands each chunk to the caller to write
//! ([`super::SnapshotChunkWrite`]) and acknowledges it once durable. The
//! snapshot's size need not be known up front: the last chunk says `done`.
//! Up to `snapshot_chunks_in_flight` chunks per follower are on the wire, so
//! the link stays busy while the follower writes; one chunk read per
//! follower is outstanding at a time. A transfer resumes from the
//! follower's durable offset after a lost chunk.

use bytes::Bytes;

use super::{Engine, IncomingSnapshot, SnapshotChunkWrite, SnapshotError, SnapshotRead};
use crate::message::{InstallSnapshot, InstallSnapshotResponse, Message, MessageBody};
use crate::protocol::progress::{ProgressState, SnapshotSend};
use crate::types::{EntryPayload, LogIndex, Membership, NodeId, SnapshotMeta};

impl Engine {
    /// The metadata a snapshot of the state machine at `index` must carry:
    /// the entry's term and the configuration in force at it. `None` if the
    /// entry is not applied or no longer in the log.
    pub fn snapshot_meta_at(&self, index: LogIndex) -> Option<SnapshotMeta> {
        if index > self.applied {
            return None;
        }
        let term = self.log.term(index)?;
        Some(SnapshotMeta { last_index: index, last_term: term, membership: self.membership_at(index).1 })
    }

    /// The configuration in force at `index` (which must be at or after the
    /// log's compaction point), with the index of the entry that set it.
    fn membership_at(&self, index: LogIndex) -> (LogIndex, Membership) {
        self.log
            .iter_range(self.log.first_index(), index)
            .rev()
            .find_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m.clone())),
                _ => None,
            })
            .unwrap_or_else(|| self.base_membership.clone())
    }

    /// Reports that the caller durably stored a snapshot of the state machine
    /// (built at an applied index, with [`Engine::snapshot_meta_at`]). The
    /// engine then compacts its log, keeping `snapshot_trailing_entries`, and
    /// asks storage to do the same through `Ready::compact_to`.
    pub fn snapshot_created(&mut self, meta: SnapshotMeta) -> Result<(), SnapshotError> {
        let index = meta.last_index;
        if index <= self.snapshot.last_index {
            return Err(SnapshotError::Stale { index, current: self.snapshot.last_index });
        }
        if index > self.applied {
            return Err(SnapshotError::NotApplied { index, applied: self.applied });
        }
        if let Some(log_term) = self.log.term(index) {
            if log_term != meta.last_term {
                return Err(SnapshotError::TermMismatch { index, term: meta.last_term, log_term });
            }
        }
        self.snapshot = meta;
        let target = LogIndex(index.0.saturating_sub(self.config.snapshot_trailing_entries));
        if target > self.log.start_index() {
            self.base_membership = self.membership_at(target);
            self.log.compact_to(target);
            self.compact_to_out = Some(target);
        }
        Ok(())
    }

    /// Hands the engine a chunk of the local snapshot that a
    /// [`super::SnapshotRead`] asked for; the engine sends it to the follower
    /// and asks for the next chunk if the follower's window has room.
    ///
    /// A chunk nobody asked for (an answer to a read that a rewind or a
    /// restart of the transfer replaced) is dropped. So is an empty chunk
    /// that is not the last: it would make no progress, and the transfer is
    /// retried from the follower's durable offset after an election timeout.
    pub fn snapshot_chunk_read(
        &mut self,
        to: NodeId,
        snapshot_index: LogIndex,
        offset: u64,
        data: Bytes,
        done: bool,
    ) {
        let term = self.term;
        let me = self.config.id;
        let window = self.config.snapshot_chunks_in_flight;
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let Some(progress) = self.leader_state.as_deref_mut().and_then(|s| s.progress.get_mut(&to)) else {
            return;
        };
        let ProgressState::Snapshot(send) = &mut progress.state else {
            return;
        };
        if send.snapshot.last_index != snapshot_index || send.reading != Some(offset) {
            return;
        }
        if data.is_empty() && !done {
            return;
        }
        let snapshot = send.snapshot.clone();
        send.chunk_sent(offset, data.len() as u64, done);
        queue_snapshot_read(send, to, window, chunk_bytes, &mut self.snapshot_reads_out);
        self.stats.snapshot_chunks_sent += 1;
        self.messages.push(Message {
            from: me,
            to,
            term,
            body: MessageBody::InstallSnapshot(InstallSnapshot { snapshot, offset, data, done }),
        });
    }

    /// Reports that the snapshot a [`super::SnapshotRead`] named can no longer
    /// be read (for example a newer one replaced it). The transfer restarts
    /// with the current snapshot.
    pub fn snapshot_read_failed(&mut self, to: NodeId) {
        if let Some(progress) = self.leader_state.as_deref_mut().and_then(|s| s.progress.get_mut(&to)) {
            if matches!(progress.state, ProgressState::Snapshot(_)) {
                progress.become_probe();
            }
        }
    }

    /// Starts streaming the current snapshot to a follower that needs
    /// compacted entries.
    pub(super) fn start_snapshot_send(&mut self, to: NodeId) {
        let snapshot = self.snapshot.clone();
        let window = self.config.snapshot_chunks_in_flight;
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let Some(progress) = self.leader_state.as_deref_mut().and_then(|s| s.progress.get_mut(&to)) else {
            return;
        };
        progress.become_snapshot(snapshot);
        if let ProgressState::Snapshot(send) = &mut progress.state {
            queue_snapshot_read(send, to, window, chunk_bytes, &mut self.snapshot_reads_out);
        }
    }

    /// Restarts silent transfers from the follower's durable offset.
    pub(super) fn tick_snapshot_sends(&mut self) {
        let timeout = self.config.election_timeout_ticks;
        let window = self.config.snapshot_chunks_in_flight;
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        for (id, progress) in state.progress.iter_mut() {
            if let ProgressState::Snapshot(send) = &mut progress.state {
                send.idle_ticks += 1;
                if send.idle_ticks >= timeout {
                    send.idle_ticks = 0;
                    // Chunks still on the wire from before draw refusals
                    // naming the same offset; they must not rewind again.
                    let acked = send.acked_offset;
                    send.rewind(acked);
                    send.rewound_to = Some(acked);
                    queue_snapshot_read(send, *id, window, chunk_bytes, &mut self.snapshot_reads_out);
                }
            }
        }
    }

    pub(super) fn handle_snapshot_response(&mut self, from: NodeId, response: &InstallSnapshotResponse) {
        let window = self.config.snapshot_chunks_in_flight;
        let chunk_bytes = self.config.snapshot_chunk_bytes;
        let Some(progress) = self.leader_state.as_deref_mut().and_then(|s| s.progress.get_mut(&from)) else {
            return;
        };
        progress.recent_active = true;
        let ProgressState::Snapshot(send) = &mut progress.state else {
            self.stats.dropped_irrelevant += 1;
            return;
        };
        if send.snapshot.last_index != response.snapshot_index {
            self.stats.dropped_irrelevant += 1;
            return;
        }
        send.idle_ticks = 0;
        if response.done {
            // The follower holds everything up to the snapshot (installed, or
            // its commit index was already past it): resume from the log.
            let snapshot_index = send.snapshot.last_index;
            progress.reported_last_index = response.last_log_index;
            progress.acknowledge(snapshot_index);
            progress.become_probe();
            self.maybe_commit();
            return;
        }
        let expected = response.next_offset;
        if !send.acknowledge(expected) {
            // The follower expects an offset it has already confirmed (or an
            // earlier one, after it restarted): a chunk was lost, and the
            // chunks behind it were refused. Rewind once per gap; the other
            // refused chunks' answers name the same offset.
            let already_resending = send.rewound_to == Some(expected);
            let nothing_past_it = send.next_offset == expected && expected == send.acked_offset;
            if !already_resending && !nothing_past_it {
                send.rewind(expected);
                send.rewound_to = Some(expected);
                self.stats.snapshot_rewinds += 1;
            }
        }
        queue_snapshot_read(send, from, window, chunk_bytes, &mut self.snapshot_reads_out);
    }

    /// A follower receives one chunk of a snapshot.
    pub(super) fn handle_install_snapshot(&mut self, from: NodeId, chunk: InstallSnapshot) {
        let snapshot_index = chunk.snapshot.last_index;
        let respond = |engine: &mut Engine, next_offset: u64, done: bool| {
            let body = MessageBody::InstallSnapshotResponse(InstallSnapshotResponse {
                snapshot_index,
                next_offset,
                done,
                last_log_index: engine.log.last_index(),
            });
            engine.send_after_persist(from, engine.term, body);
        };
        if snapshot_index <= self.commit {
            // A snapshot older than what we have committed: we need none of it.
            self.incoming_snapshot = None;
            return respond(self, 0, true);
        }
        if self.pending_install.as_ref().is_some_and(|installing| *installing != chunk.snapshot) {
            // The next batch installs another snapshot. Storage writes a
            // batch's chunks before its install, so a chunk of this snapshot
            // in the same batch would replace the bytes being installed: ask
            // the leader to resend it after that batch.
            return respond(self, 0, false);
        }
        let expected = match &self.incoming_snapshot {
            Some(incoming) if incoming.snapshot == chunk.snapshot => incoming.next_offset,
            _ => 0,
        };
        if chunk.offset != expected {
            // A lost or repeated chunk: tell the leader where to resume.
            return respond(self, expected, false);
        }
        let next_offset = chunk.offset + chunk.data.len() as u64;
        self.incoming_snapshot = Some(IncomingSnapshot { snapshot: chunk.snapshot.clone(), next_offset });
        let done = chunk.done;
        let snapshot = chunk.snapshot.clone();
        self.pending_chunk_writes.push(SnapshotChunkWrite {
            snapshot: chunk.snapshot,
            offset: chunk.offset,
            data: chunk.data,
            done,
        });
        if done {
            self.install_received_snapshot(snapshot);
        }
        respond(self, next_offset, done);
    }

    /// Replaces the log's prefix with a completely received snapshot.
    fn install_received_snapshot(&mut self, snapshot: SnapshotMeta) {
        let index = snapshot.last_index;
        self.log.install_snapshot(index, snapshot.last_term);
        self.base_membership = (index, snapshot.membership.clone());
        self.commit = self.commit.max(index);
        self.handed_out = self.handed_out.max(index);
        self.persisted_index = self.persisted_index.min(index);
        for persist in self.inflight_persists.iter_mut() {
            persist.last_index = persist.last_index.min(index);
        }
        self.incoming_snapshot = None;
        self.pending_install = Some(snapshot.clone());
        self.snapshot = snapshot;
        self.stats.snapshots_installed += 1;
        self.recompute_membership();
    }
}

/// Asks the caller for the next chunk of a transfer if its window has room.
fn queue_snapshot_read(
    send: &mut SnapshotSend,
    to: NodeId,
    window: usize,
    chunk_bytes: u64,
    reads: &mut Vec<SnapshotRead>,
) {
    if let Some(offset) = send.next_read(window) {
        reads.push(SnapshotRead { to, snapshot: send.snapshot.clone(), offset, max_bytes: chunk_bytes });
    }
}
