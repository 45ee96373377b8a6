//! Membership changes: learners, promotion once caught up, single-server
//! changes, and joint consensus for everything else.
//!
//! A configuration takes effect on each node as soon as its entry is in that
//! node's log (Raft dissertation §4.1). One change runs at a time: a new one
//! is refused while the previous entry is uncommitted or while the cluster is
//! in joint consensus. A change of more than one voter goes through a joint
//! configuration `C_old,new`; once that commits, the leader appends `C_new`
//! by itself.

use std::collections::BTreeSet;

use super::{Engine, MembershipError};
use crate::protocol::progress::Progress;
use crate::types::{EntryPayload, LogIndex, Membership, NodeId, Role, Term};

/// A requested change of the cluster's configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum MembershipChange {
    /// Add a non-voting member that receives the log.
    AddLearner(NodeId),
    /// Make a learner a voter, once it has caught up with the leader.
    PromoteLearner(NodeId),
    /// Remove a voter or a learner (the leader may remove itself).
    Remove(NodeId),
    /// Move to an arbitrary configuration; new voters must be caught-up
    /// learners. Uses joint consensus when more than one voter changes.
    Replace {
        /// The voters of the new configuration.
        voters: BTreeSet<NodeId>,
        /// The learners of the new configuration.
        learners: BTreeSet<NodeId>,
    },
}

impl Engine {
    /// Proposes a membership change. On success returns where its entry was
    /// appended; the change is done once that entry (and, for a joint change,
    /// the follow-up entry) is committed.
    pub fn change_membership(
        &mut self,
        change: MembershipChange,
    ) -> Result<(Term, LogIndex), MembershipError> {
        self.check_can_propose(&EntryPayload::Blank)?;
        let committed_in_term = self.leader_state.as_deref().is_some_and(|s| s.committed_in_term);
        if !committed_in_term {
            return Err(MembershipError::NotReady);
        }
        if self.membership_index > self.commit || self.membership.is_joint() {
            return Err(MembershipError::ChangePending { index: self.membership_index });
        }
        let (voters, learners) = self.target_configuration(change)?;
        let old_voters = &self.membership.voters;
        let changed_voters = old_voters.symmetric_difference(&voters).count();
        let next = if changed_voters <= 1 {
            Membership { voters, outgoing_voters: BTreeSet::new(), learners }
        } else {
            Membership { voters, outgoing_voters: old_voters.clone(), learners }
        };
        Ok(self.append_as_leader(EntryPayload::Membership(next)))
    }

    fn target_configuration(
        &self,
        change: MembershipChange,
    ) -> Result<(BTreeSet<NodeId>, BTreeSet<NodeId>), MembershipError> {
        let mut voters = self.membership.voters.clone();
        let mut learners = self.membership.learners.clone();
        match change {
            MembershipChange::AddLearner(id) => {
                if id == NodeId::NONE {
                    return Err(MembershipError::ZeroId);
                }
                if self.membership.contains(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                learners.insert(id);
            }
            MembershipChange::PromoteLearner(id) => {
                if self.membership.is_voter(id) {
                    return Err(MembershipError::AlreadyMember(id));
                }
                self.check_promotable(id)?;
                learners.remove(&id);
                voters.insert(id);
            }
            MembershipChange::Remove(id) => {
                if !self.membership.contains(id) {
                    return Err(MembershipError::UnknownNode(id));
                }
                voters.remove(&id);
                learners.remove(&id);
            }
            MembershipChange::Replace { voters: new_voters, learners: new_learners } => {
                if new_voters.contains(&NodeId::NONE) || new_learners.contains(&NodeId::NONE) {
                    return Err(MembershipError::ZeroId);
                }
                for id in new_voters.difference(&self.membership.voters) {
                    self.check_promotable(*id)?;
                }
                learners = new_learners.difference(&new_voters).copied().collect();
                voters = new_voters;
            }
        }
        if voters.is_empty() {
            return Err(MembershipError::NoVoters);
        }
        Ok((voters, learners))
    }

    /// A learner may become a voter only once it is within
    /// `promotion_max_lag_entries` of the leader's log, so that promoting it
    /// does not stall commits while it catches up.
    fn check_promotable(&self, id: NodeId) -> Result<(), MembershipError> {
        if !self.membership.is_learner(id) {
            return Err(MembershipError::NotLearner(id));
        }
        let matched = self
            .leader_state
            .as_deref()
            .and_then(|s| s.progress.get(&id))
            .map_or(LogIndex(0), |p| p.match_index);
        let lag_entries = self.log.last_index().0.saturating_sub(matched.0);
        if lag_entries > self.config.promotion_max_lag_entries {
            return Err(MembershipError::NotCaughtUp {
                id,
                lag_entries,
                max_lag_entries: self.config.promotion_max_lag_entries,
            });
        }
        Ok(())
    }

    /// Keeps the leader's progress map in step with the configuration.
    pub(super) fn on_membership_changed(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let me = self.config.id;
        let members = self.membership.members();
        let next = self.log.last_index().next();
        let Some(state) = self.leader_state.as_deref_mut() else {
            return;
        };
        state.progress.retain(|id, _| members.contains(id));
        for id in members {
            if id != me {
                state.progress.entry(id).or_insert_with(|| {
                    let mut progress = Progress::new(next);
                    progress.recent_active = true;
                    progress
                });
            }
        }
        if let Some(transfer) = state.transfer {
            if !self.membership.is_voter(transfer.target) {
                state.transfer = None;
            }
        }
    }
}
