//! The fault schedule: network phases (loss, duplication, delay spikes,
//! symmetric and one-way partitions, an isolated, deaf or mute leader),
//! node crashes and restarts, and leadership transfers. Everything is drawn
//! from the fault generator, so the schedule is part of the seed.

use std::collections::BTreeSet;

use super::network::NetworkConditions;
use super::node::{Lifecycle, NodeEvent};
use super::world::World;
use super::Violation;
use crate::types::NodeId;

/// When leader churn strikes the current leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChurnTrigger {
    /// At this step.
    AtStep(u64),
    /// Once its commit index passes the one it had when elected.
    AfterCommitPast(crate::types::LogIndex),
}

/// The shape of one network phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PartitionKind {
    None,
    /// A random group is cut off from the rest, both ways.
    Symmetric,
    /// The leader is cut off, both ways.
    IsolatedLeader,
    /// Random directed links are cut.
    OneWay,
    /// The leader hears nobody (it still sends).
    DeafLeader,
    /// Nobody hears the leader (it still receives).
    MuteLeader,
}

impl World {
    /// Starts a new network phase when the current one is over, and crashes
    /// a node now and then.
    pub(super) fn drive_faults(&mut self) -> Result<(), Violation> {
        if self.now >= self.next_phase_at {
            self.start_network_phase();
        }
        if self.fault_rng.chance(self.scenario.crash_per_mille) {
            self.crash_some_node(None)?;
        }
        self.drive_leader_churn()
    }

    /// Leader churn: now and then a new leader is crashed or cut off, either
    /// a few steps after its election (before its blank entry spreads) or
    /// right after its commit index first moves in its term (the moment when
    /// it has told some, but not all, followers about its first commit).
    fn drive_leader_churn(&mut self) -> Result<(), Violation> {
        let leader =
            self.current_leader().and_then(|id| self.engine(id).map(|e| (e.term(), id, e.commit_index())));
        let Some((term, id, commit)) = leader else {
            return Ok(());
        };
        if self.last_leader != Some((term, id)) {
            self.last_leader = Some((term, id));
            self.churn = None;
            if self.fault_rng.chance(self.scenario.leader_churn_per_mille) {
                self.churn = Some(if self.fault_rng.chance(300) {
                    ChurnTrigger::AtStep(self.now + self.fault_rng.below(self.scenario.steps_per_tick * 3))
                } else {
                    ChurnTrigger::AfterCommitPast(commit)
                });
            }
        }
        let due = match self.churn {
            Some(ChurnTrigger::AtStep(at)) => self.now >= at,
            Some(ChurnTrigger::AfterCommitPast(at_election)) => commit > at_election,
            None => false,
        };
        if !due {
            return Ok(());
        }
        self.churn = None;
        if self.fault_rng.chance(300) {
            return self.crash_some_node(Some(id));
        }
        let nodes: Vec<NodeId> = self.nodes.keys().copied().collect();
        self.network.partition(&BTreeSet::from([id]), &nodes);
        self.trace.event(self.now, || format!("churn: cut off leader {id} of term {term} (commit {commit})"));
        Ok(())
    }

    fn start_network_phase(&mut self) {
        let (low, high) = self.scenario.phase_steps;
        self.next_phase_at = self.now + self.fault_rng.between(low, high);
        self.stats.network_phases += 1;
        self.network.heal();
        let conditions = self.random_conditions();
        self.network.set_conditions(conditions);
        let kinds = [
            PartitionKind::None,
            PartitionKind::None,
            PartitionKind::Symmetric,
            PartitionKind::IsolatedLeader,
            PartitionKind::OneWay,
            PartitionKind::DeafLeader,
            PartitionKind::MuteLeader,
        ];
        let kind = self.fault_rng.pick(&kinds).unwrap_or(PartitionKind::None);
        let nodes: Vec<NodeId> =
            self.nodes.values().filter(|n| n.lifecycle != Lifecycle::Retired).map(|n| n.id).collect();
        let leader = self.current_leader();
        match (kind, leader) {
            (PartitionKind::Symmetric, _) => {
                let group: BTreeSet<NodeId> =
                    nodes.iter().copied().filter(|_| self.fault_rng.chance(400)).collect();
                self.network.partition(&group, &nodes);
            }
            (PartitionKind::IsolatedLeader, Some(leader)) => {
                self.network.partition(&BTreeSet::from([leader]), &nodes);
            }
            (PartitionKind::OneWay, _) => {
                for &from in &nodes {
                    for &to in &nodes {
                        if from != to && self.fault_rng.chance(250) {
                            self.network.cut(from, to);
                        }
                    }
                }
            }
            (PartitionKind::DeafLeader | PartitionKind::MuteLeader, Some(leader)) => {
                for &other in nodes.iter().filter(|n| **n != leader) {
                    if kind == PartitionKind::DeafLeader {
                        self.network.cut(other, leader);
                    } else {
                        self.network.cut(leader, other);
                    }
                }
            }
            _ => {}
        }
        let cut = self.network.cut_links().clone();
        self.trace.event(self.now, || format!("network: {kind:?} {conditions:?} cut {cut:?}"));
    }

    fn random_conditions(&mut self) -> NetworkConditions {
        let rng = &mut self.fault_rng;
        let election_timeout_steps =
            self.scenario.engine.election_timeout_ticks * self.scenario.steps_per_tick;
        if rng.chance(400) {
            return NetworkConditions {
                delay_min_steps: 1,
                delay_max_steps: rng.between(1, 4),
                ..NetworkConditions::calm()
            };
        }
        NetworkConditions {
            drop_per_mille: rng.between(0, 300),
            duplicate_per_mille: rng.between(0, 100),
            delay_min_steps: 1,
            delay_max_steps: rng.between(1, 10),
            spike_per_mille: rng.between(0, 40),
            spike_max_steps: election_timeout_steps * 3,
        }
    }

    /// Crashes `victim`, or a random node (often the leader), unless too
    /// many nodes are down already.
    fn crash_some_node(&mut self, victim: Option<NodeId>) -> Result<(), Violation> {
        let down = self.nodes.values().filter(|n| n.restart_at.is_some()).count();
        if down >= self.scenario.max_down {
            return Ok(());
        }
        let running = self.running_nodes();
        let victim = match (victim, self.current_leader()) {
            (Some(victim), _) => victim,
            (None, Some(leader)) if self.fault_rng.chance(400) => leader,
            _ => match self.fault_rng.pick(&running) {
                Some(id) => id,
                None => return Ok(()),
            },
        };
        let (low, high) = self.scenario.down_steps;
        let restart_at = self.now + self.fault_rng.between(low, high);
        let Some(node) = self.nodes.get_mut(&victim) else {
            return Ok(());
        };
        let failed_reads = node.crash(&mut self.fault_rng, self.now, &mut self.checker)?;
        node.restart_at = Some(restart_at);
        self.events.extend(failed_reads.into_iter().map(|read| NodeEvent::ReadFailed { read }));
        self.stats.crashes += 1;
        self.trace.event(self.now, || format!("crash node {victim} until step {restart_at}"));
        Ok(())
    }

    /// Restarts crashed nodes whose time has come.
    pub(super) fn restart_due_nodes(&mut self) -> Result<(), Violation> {
        let due: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|n| n.restart_at.is_some_and(|at| at <= self.now) && n.lifecycle != Lifecycle::Retired)
            .map(|n| n.id)
            .collect();
        for id in due {
            let Some(node) = self.nodes.get_mut(&id) else {
                continue;
            };
            let config = self.scenario.engine_config(id, self.options.seed, node.incarnation + 1);
            node.restart(config, self.options.bugs, self.now, &mut self.checker)?;
            self.stats.restarts += 1;
            let term = node.engine.as_ref().map(|e| e.term());
            self.trace.event(self.now, || format!("restart node {id} (term {term:?})"));
        }
        Ok(())
    }

    /// Asks the leader, now and then, to hand leadership to another voter.
    pub(super) fn maybe_transfer_leadership(&mut self) {
        if !self.fault_rng.chance(self.scenario.transfer_per_mille) {
            return;
        }
        let Some(leader) = self.current_leader() else {
            return;
        };
        let voters: Vec<NodeId> = match self.engine(leader) {
            Some(engine) => engine.membership().voters.iter().copied().filter(|v| *v != leader).collect(),
            None => return,
        };
        let Some(target) = self.fault_rng.pick(&voters) else {
            return;
        };
        let Some(engine) = self.nodes.get_mut(&leader).and_then(|n| n.engine.as_mut()) else {
            return;
        };
        let result = engine.transfer_leadership(target);
        if result.is_ok() {
            self.stats.transfers += 1;
        }
        self.trace.event(self.now, || format!("transfer leadership {leader} -> {target}: {result:?}"));
    }

    /// Heals the network and schedules every crashed node to restart now.
    pub(super) fn heal_everything(&mut self) {
        self.network.heal();
        self.network.set_conditions(NetworkConditions::calm());
        for node in self.nodes.values_mut() {
            if node.restart_at.is_some() {
                node.restart_at = Some(self.now);
            }
        }
        self.trace.event(self.now, || "heal: network calm, every node restarts".to_string());
    }
}
