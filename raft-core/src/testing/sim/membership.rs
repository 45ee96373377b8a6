//! The membership driver: grows and shrinks the cluster between 3 and 7
//! voters while faults go on. New nodes start empty and join as learners;
//! learners are promoted one at a time or two at once (joint consensus), a
//! voter may be swapped for a learner (joint consensus), voters and learners
//! are removed (the leader too). A node is shut down once a committed
//! configuration no longer has it; node ids are never reused.

use std::collections::BTreeSet;

use super::node::{Lifecycle, NodeEvent};
use super::world::World;
use crate::protocol::{Engine, MembershipChange};
use crate::types::{Membership, NodeId};

/// How often node lifecycles are compared with the leader's configuration.
const LIFECYCLE_INTERVAL_STEPS: u64 = 8;

/// The fewest voters the driver leaves.
const MIN_VOTERS: usize = 3;

/// The most voters the driver creates.
const MAX_VOTERS: usize = 7;

impl World {
    /// Shuts down nodes the committed configuration no longer holds, in
    /// every phase: a removal that commits after the faults stop must take
    /// effect too (operators shut removed servers down; with neither
    /// pre-vote nor CheckQuorum, a removed server left running disrupts the
    /// cluster, as in classic Raft).
    pub(super) fn maintain_lifecycles(&mut self) {
        if self.now % LIFECYCLE_INTERVAL_STEPS == 0 {
            self.update_lifecycles();
        }
    }

    /// Proposes a membership change now and then.
    pub(super) fn drive_membership(&mut self) {
        if self.now < self.next_membership_change_at {
            return;
        }
        let interval = self.scenario.membership_interval_steps;
        self.next_membership_change_at = self.now + self.fault_rng.between(interval / 2, interval * 3 / 2);
        let Some(leader) = self.current_leader() else {
            return;
        };
        let Some(membership) = self.engine(leader).map(|e| e.membership().clone()) else {
            return;
        };
        let Some(change) = self.choose_change(&membership) else {
            return;
        };
        let Some(engine) = self.nodes.get_mut(&leader).and_then(|n| n.engine.as_mut()) else {
            return;
        };
        let result = engine.change_membership(change.clone());
        if result.is_ok() {
            self.stats.membership_changes += 1;
        }
        self.trace.event(self.now, || {
            format!("membership: leader {leader} {change:?}: {result:?} (was {membership})")
        });
    }

    fn choose_change(&mut self, membership: &Membership) -> Option<MembershipChange> {
        let joiners: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.lifecycle == Lifecycle::Joining && n.is_running() && !membership.contains(n.id))
            .map(|n| n.id)
            .collect();
        if let Some(joiner) = self.fault_rng.pick(&joiners) {
            return Some(MembershipChange::AddLearner(joiner));
        }
        let voters: Vec<NodeId> = membership.voters.iter().copied().collect();
        let learners: Vec<NodeId> = membership.learners.iter().copied().collect();
        let members = membership.members().len() + joiners.len();
        let mut options = Vec::new();
        if members < self.scenario.max_members {
            options.extend([0, 0]);
        }
        if !learners.is_empty() && voters.len() < MAX_VOTERS {
            options.extend([1, 1]);
        }
        if learners.len() >= 2 && voters.len() + 2 <= MAX_VOTERS {
            options.push(2);
        }
        if voters.len() > MIN_VOTERS {
            options.extend([3, 3]);
        }
        if !learners.is_empty() {
            options.extend([4, 5]);
        }
        if voters.len() >= MIN_VOTERS + 2 {
            options.push(6);
        }
        let rng = &mut self.fault_rng;
        let change = match rng.pick(&options)? {
            0 => MembershipChange::AddLearner(self.start_joining_node()),
            1 => MembershipChange::PromoteLearner(rng.pick(&learners)?),
            2 => {
                let mut new_voters: BTreeSet<NodeId> = membership.voters.clone();
                new_voters.extend(learners.iter().take(2));
                let rest = learners.iter().skip(2).copied().collect();
                MembershipChange::Replace { voters: new_voters, learners: rest }
            }
            3 => MembershipChange::Remove(rng.pick(&voters)?),
            4 => {
                // Swap a voter for a learner: two voters change, so joint consensus.
                let out = rng.pick(&voters)?;
                let incoming = rng.pick(&learners)?;
                let mut new_voters = membership.voters.clone();
                new_voters.remove(&out);
                new_voters.insert(incoming);
                let rest = learners.iter().copied().filter(|l| *l != incoming).collect();
                MembershipChange::Replace { voters: new_voters, learners: rest }
            }
            5 => MembershipChange::Remove(rng.pick(&learners)?),
            _ => {
                let mut new_voters = membership.voters.clone();
                for _ in 0..2 {
                    let out = rng.pick(&new_voters.iter().copied().collect::<Vec<_>>())?;
                    new_voters.remove(&out);
                }
                MembershipChange::Replace { voters: new_voters, learners: membership.learners.clone() }
            }
        };
        Some(change)
    }

    /// Starts an empty node with a fresh id, to join as a learner.
    fn start_joining_node(&mut self) -> NodeId {
        let id = NodeId(self.next_node_id);
        self.next_node_id += 1;
        let config = self.scenario.engine_config(id, self.options.seed, 0);
        match Engine::new(config) {
            Ok(engine) => {
                self.add_node(engine, Lifecycle::Joining);
                self.stats.nodes_added += 1;
                self.trace.event(self.now, || format!("start node {id} to join"));
            }
            Err(error) => self.trace.event(self.now, || format!("cannot start node {id}: {error}")),
        }
        id
    }

    /// Marks nodes that a committed configuration holds as members, and shuts
    /// down members that a later committed configuration no longer has.
    ///
    /// Only committed configurations count: an uncommitted one can still be
    /// overwritten or, later, committed by another leader. Once a committed
    /// configuration held a node and a later one does not, no configuration
    /// will hold it again (the driver never re-adds a member).
    pub(super) fn update_lifecycles(&mut self) {
        // The newest committed configuration any node knows (a stale leader
        // may still show an older one).
        for engine in self.nodes.values().filter_map(|n| n.engine.as_ref()) {
            let status = engine.status();
            let newer = status.membership_index > self.committed_membership.0;
            if newer && status.membership_index <= status.commit_index {
                self.committed_membership = (status.membership_index, status.membership);
            }
        }
        let membership = &self.committed_membership.1;
        let mut retired = Vec::new();
        for node in self.nodes.values_mut() {
            let member = membership.contains(node.id);
            match node.lifecycle {
                Lifecycle::Joining if member => node.lifecycle = Lifecycle::Member,
                Lifecycle::Member if !member => {
                    let reads = node.retire(&mut self.checker);
                    self.events.extend(reads.into_iter().map(|read| NodeEvent::ReadFailed { read }));
                    retired.push(node.id);
                }
                _ => {}
            }
        }
        for id in retired {
            self.stats.nodes_retired += 1;
            self.trace.event(self.now, || format!("node {id} left the cluster and shuts down"));
        }
    }
}
