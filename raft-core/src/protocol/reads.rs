//! Linearizable reads: ReadIndex (leadership confirmed by a quorum of
//! heartbeat answers), leases (opt-in), and reads forwarded by followers.
//!
//! A read is served at the commit index the leader had when the read
//! arrived, once (a) an entry of the leader's term is committed, so that
//! commit index is current, and (b) a quorum confirmed that the leader was
//! still leader after the read arrived. Reads that arrive between two `ready()`
//! calls share one confirmation round.

use super::{Engine, FailedRead, ForwardedRead, PendingRead, ReadError, ReadMode, ReadState};
use crate::message::{MessageBody, ReadIndexRequest, ReadIndexResponse};
use crate::types::{LogIndex, NodeId, ReadId};

impl Engine {
    pub(super) fn leader_read(&mut self, id: ReadId, from: NodeId, mode: ReadMode) -> Result<(), ReadError> {
        let lease_ok = mode == ReadMode::Lease && self.config.lease_reads && self.lease_valid();
        let lone_voter = self.is_lone_voter();
        let commit = self.commit;
        let max_pending = self.config.max_pending_reads;
        let Some(state) = self.leader_state.as_deref_mut() else {
            return Err(ReadError::NoLeader);
        };
        if state.transfer.is_some() {
            return Err(ReadError::TransferInProgress);
        }
        if state.pending_read_count() >= max_pending {
            return Err(ReadError::Busy(max_pending));
        }
        if !state.committed_in_term {
            state.reads_awaiting_commit.push((id, from, mode));
            return Ok(());
        }
        if lone_voter || lease_ok {
            self.answer_read(id, from, Ok(commit));
            return Ok(());
        }
        state.reads_awaiting_round.push(PendingRead { id, from, index: commit, round: 0 });
        Ok(())
    }

    /// Whether this node is the only voter (it confirms reads by itself).
    fn is_lone_voter(&self) -> bool {
        let me = self.config.id;
        self.membership.is_quorum(|id| id == me)
    }

    /// Whether the leader's lease is valid now: a quorum answered heartbeats
    /// sent less than `election_timeout_ticks - lease_drift_margin_ticks`
    /// ago, and those followers promised not to vote for anyone else for an
    /// election timeout after receiving them.
    pub(super) fn lease_valid(&self) -> bool {
        let Some(state) = self.leader_state.as_deref() else {
            return false;
        };
        if state.transfer.is_some() || !self.config.check_quorum {
            return false;
        }
        let now = self.ticks;
        let me = self.config.id;
        // Values are tick + 1, so that 0 means "never confirmed".
        let start = self.membership.quorum_value(|id| {
            if id == me {
                now + 1
            } else {
                state.progress.get(&id).and_then(|p| p.lease_tick).map_or(0, |t| t + 1)
            }
        });
        let duration = self.config.election_timeout_ticks - self.config.lease_drift_margin_ticks;
        start > 0 && start - 1 + duration > now
    }

    /// Releases reads whose round a quorum has confirmed.
    pub(super) fn release_confirmed_reads(&mut self) {
        let me = self.config.id;
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        let confirmed = self.membership.quorum_value(|id| {
            if id == me {
                state.read_round
            } else {
                state.progress.get(&id).map_or(0, |p| p.acked_read_round)
            }
        });
        let mut released = Vec::new();
        while let Some(read) = state.pending_reads.front() {
            if read.round > confirmed {
                break;
            }
            released.extend(state.pending_reads.pop_front());
        }
        for read in released {
            self.answer_read(read.id, read.from, Ok(read.index));
        }
    }

    /// Delivers a read's outcome: locally, or to the follower that forwarded it.
    pub(super) fn answer_read(&mut self, id: ReadId, from: NodeId, result: Result<LogIndex, ReadError>) {
        if from == self.config.id {
            match result {
                Ok(index) => self.reads_out.push(ReadState { id, index }),
                Err(error) => self.failed_reads_out.push(FailedRead { id, error }),
            }
        } else {
            self.send(from, MessageBody::ReadIndexResponse(ReadIndexResponse { id, index: result.ok() }));
        }
    }

    /// A follower forwards the read to its leader.
    pub(super) fn forward_read(&mut self, id: ReadId, mode: ReadMode) -> Result<(), ReadError> {
        if self.leader == NodeId::NONE {
            return Err(ReadError::NoLeader);
        }
        if self.forwarded_reads.len() >= self.config.max_pending_reads {
            return Err(ReadError::Busy(self.config.max_pending_reads));
        }
        let leader = self.leader;
        self.forwarded_reads.push_back(ForwardedRead { id, leader, sent_tick: self.ticks });
        self.send(leader, MessageBody::ReadIndex(ReadIndexRequest { id, mode }));
        Ok(())
    }

    pub(super) fn handle_read_index_response(&mut self, from: NodeId, response: &ReadIndexResponse) {
        let Some(position) =
            self.forwarded_reads.iter().position(|r| r.id == response.id && r.leader == from)
        else {
            self.stats.dropped_irrelevant += 1;
            return;
        };
        let _ = self.forwarded_reads.remove(position);
        match response.index {
            Some(index) => self.reads_out.push(ReadState { id: response.id, index }),
            None => {
                self.failed_reads_out.push(FailedRead { id: response.id, error: ReadError::LeadershipLost })
            }
        }
    }

    /// Fails forwarded reads the leader did not answer within an election
    /// timeout (the request or the answer may have been lost).
    pub(super) fn expire_forwarded_reads(&mut self) {
        let timeout = self.config.election_timeout_ticks;
        while let Some(read) = self.forwarded_reads.front() {
            if self.ticks - read.sent_tick < timeout {
                break;
            }
            let id = read.id;
            self.forwarded_reads.pop_front();
            self.failed_reads_out.push(FailedRead { id, error: ReadError::Timeout });
        }
    }

    pub(super) fn fail_forwarded_reads(&mut self, error: ReadError) {
        for read in self.forwarded_reads.drain(..) {
            self.failed_reads_out.push(FailedRead { id: read.id, error: error.clone() });
        }
    }
}
