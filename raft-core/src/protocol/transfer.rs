//! Leadership transfer (Raft dissertation §3.10): the leader stops taking
//! proposals, brings the target up to date, then tells it to campaign at
//! once with TimeoutNow. The transfer is abandoned after an election timeout.

use super::{Engine, Transfer, TransferError};
use crate::message::{MessageBody, VoteKind};
use crate::types::{NodeId, Role};

impl Engine {
    /// Asks the leader to hand leadership to `target`, a voter.
    pub fn transfer_leadership(&mut self, target: NodeId) -> Result<(), TransferError> {
        if self.role != Role::Leader {
            return Err(TransferError::NotLeader { leader: self.leader });
        }
        if target == self.config.id {
            return Err(TransferError::AlreadyLeader(target));
        }
        if !self.membership.is_voter(target) {
            return Err(TransferError::NotVoter(target));
        }
        let Some(state) = self.leader_state.as_deref_mut() else {
            return Err(TransferError::NotLeader { leader: self.leader });
        };
        if let Some(transfer) = state.transfer {
            if transfer.target == target {
                return Ok(());
            }
            return Err(TransferError::InProgress(transfer.target));
        }
        state.transfer = Some(Transfer { target, elapsed_ticks: 0, timeout_now_sent: false });
        self.maybe_send_timeout_now(target);
        Ok(())
    }

    /// Sends TimeoutNow to the transfer target once its log matches ours.
    pub(super) fn maybe_send_timeout_now(&mut self, peer: NodeId) {
        let last = self.log.last_index();
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        let Some(transfer) = state.transfer.as_mut() else {
            return;
        };
        let caught_up = state.progress.get(&peer).is_some_and(|p| p.match_index >= last);
        if transfer.target == peer && !transfer.timeout_now_sent && caught_up {
            transfer.timeout_now_sent = true;
            self.send(peer, MessageBody::TimeoutNow);
        }
    }

    pub(super) fn tick_transfer(&mut self) {
        let timeout = self.config.election_timeout_ticks;
        if let Some(state) = self.leader_state.as_deref_mut() {
            if let Some(transfer) = state.transfer.as_mut() {
                transfer.elapsed_ticks += 1;
                if transfer.elapsed_ticks >= timeout {
                    state.transfer = None;
                }
            }
        }
    }

    /// A leader that removed itself asks its most up-to-date voter to take
    /// over, so the cluster need not wait for an election timeout.
    pub(super) fn hand_over_before_leaving(&mut self) {
        let last = self.log.last_index();
        let Some(state) = self.leader_state.as_deref() else {
            return;
        };
        let successor = state
            .progress
            .iter()
            .filter(|(id, p)| self.membership.is_voter(**id) && p.match_index >= last)
            .map(|(id, _)| *id)
            .next();
        if let Some(successor) = successor {
            self.send(successor, MessageBody::TimeoutNow);
        }
    }

    pub(super) fn handle_timeout_now(&mut self, from: NodeId) {
        if from != self.leader || !self.promotable() {
            self.stats.dropped_irrelevant += 1;
            return;
        }
        // Skip pre-vote: the leader asked for this election.
        self.campaign(VoteKind::Vote, true);
    }
}
