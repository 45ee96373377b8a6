//! The engine's own invariants, checked after every step in tests and in the
//! simulator.

use super::Engine;
use crate::types::{EntryPayload, NodeId, Role};

/// An engine invariant that does not hold: always a bug.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("node {node}: {reason}")]
pub struct InvariantViolation {
    /// The node whose state is wrong.
    pub node: NodeId,
    /// What is wrong.
    pub reason: String,
}

impl Engine {
    /// Checks the engine's internal invariants: compaction point ≤ snapshot
    /// ≤ commit ≤ last index; applied ≤ handed out ≤ commit; the log is
    /// consecutive with non-decreasing terms no newer than the current term;
    /// a candidate's own vote is either counted or waiting for its write,
    /// never both; a leader voted for itself and tracks exactly the other
    /// members; the configuration in force is the newest one in the log.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let fail = |reason: String| Err(InvariantViolation { node: self.config.id, reason });
        let start = self.log.start_index();
        let last = self.log.last_index();
        if !(start <= self.snapshot.last_index || self.snapshot.last_index.0 == 0) {
            return fail(format!("compaction point {start} past snapshot {}", self.snapshot.last_index));
        }
        if self.snapshot.last_index > self.commit {
            return fail(format!("snapshot {} past commit {}", self.snapshot.last_index, self.commit));
        }
        if self.commit > last {
            return fail(format!("commit {} past last index {last}", self.commit));
        }
        let apply_order =
            self.applied <= self.handed_out && self.handed_out <= self.commit.max(self.snapshot.last_index);
        if !apply_order && !self.bug(|b| b.apply_before_commit) {
            return fail(format!(
                "applied {} / handed out {} / commit {} out of order",
                self.applied, self.handed_out, self.commit
            ));
        }
        if self.persisted_index > last {
            return fail(format!("persisted {} past last index {last}", self.persisted_index));
        }
        if let Err(reason) = self.log.check() {
            return fail(reason);
        }
        if self.log.last_term() > self.term {
            return fail(format!(
                "last entry term {} above current term {}",
                self.log.last_term(),
                self.term
            ));
        }
        let newest_config =
            self.log.iter_range(self.log.first_index(), last).rev().find_map(|e| match &e.payload {
                EntryPayload::Membership(m) => Some((e.index, m)),
                _ => None,
            });
        let expected =
            newest_config.map_or((self.base_membership.0, &self.base_membership.1), |(i, m)| (i, m));
        if self.membership_index != expected.0 || &self.membership != expected.1 {
            return fail(format!(
                "configuration in force ({} at {}) is not the newest in the log ({} at {})",
                self.membership, self.membership_index, expected.1, expected.0
            ));
        }
        // The injected bug counts the vote at once on purpose, to show that
        // the simulator's own checks catch it.
        if self.role == Role::Candidate && !self.bug(|b| b.count_self_vote_early) {
            let counted = self.votes.get(&self.config.id) == Some(&true);
            let waiting = self.own_vote_pending();
            if counted == waiting {
                return fail(format!(
                    "a candidate's own vote must be counted or wait for its write, not {}",
                    if counted { "both" } else { "neither" }
                ));
            }
        }
        if self.role == Role::Leader && self.own_vote_pending() && !self.bug(|b| b.lead_before_own_write) {
            return fail("a leader took office before its own term and vote were durable".into());
        }
        match (self.role, self.leader_state.as_deref()) {
            (Role::Leader, Some(state)) => {
                if self.vote != self.config.id || self.leader != self.config.id {
                    return fail("a leader must have voted for itself and know itself as leader".into());
                }
                let mut members = self.membership.members();
                members.remove(&self.config.id);
                if !state.progress.keys().copied().eq(members.iter().copied()) {
                    return fail("the leader's progress map does not match the configuration".into());
                }
                for (id, progress) in &state.progress {
                    if progress.match_index > last || progress.next_index > last.next() {
                        return fail(format!("progress of {id} past the log"));
                    }
                    if progress.next_index <= progress.match_index {
                        return fail(format!(
                            "progress of {id}: next {} not after match {}",
                            progress.next_index, progress.match_index
                        ));
                    }
                }
            }
            (Role::Leader, None) => return fail("leader without leader state".into()),
            (_, Some(_)) => return fail("leader state on a non-leader".into()),
            (_, None) => {}
        }
        Ok(())
    }
}
