//! The simulated world: nodes, network, clients and checker, and the loop
//! that advances them one step at a time.
//!
//! One step: fault schedule and membership driver act (fault phase only),
//! crashed nodes whose time has come restart, due messages are delivered,
//! node clocks tick, clients act, every node carries out its `Ready`, some
//! disks sync (acknowledging their writes), clients learn outcomes, and the
//! checker checks the whole cluster.

use std::collections::BTreeMap;

use super::checker::SafetyChecker;
use super::client::{AcknowledgedWrite, Client};
use super::history::History;
use super::network::Network;
use super::node::{Lifecycle, NodeContext, NodeEvent, SimNode};
use super::rng::SimRng;
use super::scenario::Scenario;
use super::trace::Trace;
use super::{Property, SimOptions, SimReport, Violation};
use crate::protocol::{Engine, StepError};
use crate::types::{Membership, NodeId, Role};

/// How often the direct pairwise Log Matching check runs, in steps (the
/// incremental check runs on every write).
const LOG_MATCHING_INTERVAL_STEPS: u64 = 32;

/// Counters of what the fault schedule and drivers did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Node crashes.
    pub crashes: u64,
    /// Node restarts.
    pub restarts: u64,
    /// Network phases (partitions, loss) started.
    pub network_phases: u64,
    /// Membership changes the leader accepted.
    pub membership_changes: u64,
    /// Leadership transfers the leader accepted.
    pub transfers: u64,
    /// Nodes started to join the cluster.
    pub nodes_added: u64,
    /// Nodes shut down after leaving the cluster.
    pub nodes_retired: u64,
    /// Snapshots the nodes built.
    pub snapshots_taken: u64,
    /// Snapshots installed from a leader (streamed in chunks).
    pub snapshots_installed: u64,
    /// Reads served by a node that was not the leader.
    pub follower_reads: u64,
}

/// The whole simulated world of one seed.
pub struct World {
    pub(super) options: SimOptions,
    pub(super) scenario: Scenario,
    pub(super) now: u64,
    pub(super) nodes: BTreeMap<NodeId, SimNode>,
    pub(super) network: Network,
    pub(super) checker: SafetyChecker,
    pub(super) clients: Vec<Client>,
    pub(super) history: History,
    pub(super) acknowledged: Vec<AcknowledgedWrite>,
    pub(super) events: Vec<NodeEvent>,
    pub(super) trace: Trace,
    pub(super) clients_stopped: bool,
    pub(super) next_read_id: u64,
    pub(super) next_node_id: u64,
    pub(super) next_phase_at: u64,
    pub(super) next_membership_change_at: u64,
    /// The newest committed configuration seen, with its index.
    pub(super) committed_membership: (crate::types::LogIndex, Membership),
    /// The newest (term, leader) the fault schedule has seen.
    pub(super) last_leader: Option<(crate::types::Term, NodeId)>,
    /// When to crash or cut off the current leader (leader churn).
    pub(super) churn: Option<super::faults::ChurnTrigger>,
    pub(super) network_rng: SimRng,
    pub(super) client_rng: SimRng,
    pub(super) fault_rng: SimRng,
    pub(super) disk_rng: SimRng,
    pub(super) stats: RunStats,
}

impl World {
    /// Builds the world of `options.seed`: a bootstrapped cluster and idle clients.
    pub fn new(options: SimOptions) -> Result<World, Violation> {
        let mut rng = SimRng::new(options.seed);
        let scenario = Scenario::generate(&mut rng.fork());
        let mut world = World {
            now: 0,
            nodes: BTreeMap::new(),
            network: Network::new(),
            checker: SafetyChecker::new(options.per_step_checks),
            clients: Vec::new(),
            history: History::default(),
            acknowledged: Vec::new(),
            events: Vec::new(),
            trace: Trace::new(options.verbosity),
            clients_stopped: false,
            next_read_id: 1,
            next_node_id: scenario.initial_voters + 1,
            next_phase_at: 0,
            next_membership_change_at: scenario.membership_interval_steps,
            committed_membership: Default::default(),
            last_leader: None,
            churn: None,
            network_rng: rng.fork(),
            client_rng: rng.fork(),
            fault_rng: rng.fork(),
            disk_rng: rng.fork(),
            stats: RunStats::default(),
            options,
            scenario,
        };
        world.bootstrap()?;
        for id in 1..=world.scenario.clients {
            world.clients.push(Client::new(id, world.scenario.keys, true));
        }
        // The liveness client writes only in the liveness phase.
        world.clients.push(Client::new(world.scenario.clients + 1, world.scenario.keys, false));
        Ok(world)
    }

    fn bootstrap(&mut self) -> Result<(), Violation> {
        let voters = Membership::with_voters((1..=self.scenario.initial_voters).map(NodeId));
        // Every initial member starts with this configuration: it is
        // committed by construction.
        self.committed_membership = (crate::types::LogIndex(1), voters.clone());
        self.trace.event(0, || format!("scenario: {:?}", self.scenario));
        for id in 1..=self.scenario.initial_voters {
            let config = self.scenario.engine_config(NodeId(id), self.options.seed, 0);
            let engine = Engine::bootstrap(config, voters.clone()).map_err(|e| Violation {
                step: 0,
                property: Property::Restore,
                details: format!("bootstrap of node {id} failed: {e}"),
            })?;
            self.add_node(engine, Lifecycle::Member);
        }
        Ok(())
    }

    /// Adds a node running `engine`.
    pub(super) fn add_node(&mut self, engine: Engine, lifecycle: Lifecycle) {
        let phase = self.fault_rng.below(self.scenario.steps_per_tick);
        let every = self.scenario.snapshot_every_entries;
        let mut node = SimNode::new(engine, lifecycle, self.now, phase, every, self.options.kv_bugs);
        node.inject_bugs(self.options.bugs);
        if let Some(engine) = node.engine.as_ref() {
            self.checker.node_started(engine);
        }
        self.nodes.insert(node.id, node);
    }

    /// Runs the whole seed: the fault phase, the liveness phase, and the
    /// linearizability check of the client history.
    pub fn run(&mut self) -> Result<SimReport, Violation> {
        for _ in 0..self.options.fault_steps {
            self.step(true)?;
        }
        let fault_steps = self.now;
        let recovered = self.run_liveness_phase();
        if self.options.check_linearizability {
            // Checked even when the cluster did not recover: a safety
            // violation explains more than the liveness failure it causes.
            super::linearizable::check_history(&self.history, self.now)?;
        }
        recovered?;
        Ok(self.report(fault_steps))
    }

    /// The client history recorded so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    fn report(&self, fault_steps: u64) -> SimReport {
        let network = self.network.stats();
        let mut stats = self.stats;
        for node in self.nodes.values() {
            stats.snapshots_taken += node.snapshots_taken;
            stats.snapshots_installed += node.snapshots_installed;
            stats.follower_reads += node.follower_reads;
        }
        SimReport {
            seed: self.options.seed,
            fault_steps,
            total_steps: self.now,
            trace_hash: self.trace.hash(),
            operations: self.history.records().len(),
            definite_operations: self.history.definite_count(),
            checkpoint_operations: self.history.checkpoint_counts().0,
            rollbacks: self.history.checkpoint_counts().1,
            terms_with_leader: self.checker.terms_with_leader(),
            messages_sent: network.sent,
            messages_lost: network.dropped + network.blocked,
            stats,
            initial_voters: self.scenario.initial_voters,
            final_voters: self
                .current_leader()
                .map_or(0, |id| self.engine(id).map_or(0, |e| e.membership().voters.len())),
        }
    }

    /// One step of the world. Faults act only when `faults` is set.
    pub(super) fn step(&mut self, faults: bool) -> Result<(), Violation> {
        self.now += 1;
        self.checker.set_step(self.now);
        self.maintain_lifecycles();
        if faults {
            self.drive_faults()?;
            self.drive_membership();
            self.maybe_transfer_leadership();
        }
        self.restart_due_nodes()?;
        self.deliver_messages()?;
        self.tick_nodes();
        self.drive_clients();
        self.process_ready_everywhere()?;
        self.sync_disks()?;
        self.dispatch_events()?;
        self.check_cluster()?;
        self.mix_trace();
        Ok(())
    }

    fn deliver_messages(&mut self) -> Result<(), Violation> {
        for message in self.network.take_due(self.now) {
            let Some(engine) = self.nodes.get_mut(&message.to).and_then(|n| n.engine.as_mut()) else {
                continue;
            };
            self.network.count_delivered();
            if self.trace.shows_messages() {
                let text = format!(
                    "deliver {} -> {} t{} {}",
                    message.from,
                    message.to,
                    message.term,
                    message.kind()
                );
                self.trace.message(self.now, || text);
            }
            let result = engine.step(message);
            if let (Err(StepError::ProtocolViolation { from, reason }), true) =
                (result, self.options.per_step_checks)
            {
                return Err(Violation {
                    step: self.now,
                    property: Property::ProtocolViolation,
                    details: format!("node {} rejected a message from {from}: {reason}", engine.id()),
                });
            }
        }
        Ok(())
    }

    fn tick_nodes(&mut self) {
        let period = self.scenario.steps_per_tick;
        for node in self.nodes.values_mut() {
            let Some(engine) = node.engine.as_mut() else {
                continue;
            };
            if (self.now + node.tick_phase) % period != 0 {
                continue;
            }
            let mut ticks = 1;
            if self.fault_rng.chance(self.scenario.clock_glitch_per_mille) {
                ticks = if self.fault_rng.chance(500) { 0 } else { 2 };
            }
            for _ in 0..ticks {
                engine.tick();
            }
        }
    }

    fn process_ready_everywhere(&mut self) -> Result<(), Violation> {
        for node in self.nodes.values_mut() {
            let mut context = NodeContext {
                now: self.now,
                checker: &mut self.checker,
                network: &mut self.network,
                rng: &mut self.network_rng,
                events: &mut self.events,
                trace: &mut self.trace,
            };
            node.process_ready(&mut context)?;
        }
        Ok(())
    }

    fn sync_disks(&mut self) -> Result<(), Violation> {
        for node in self.nodes.values_mut() {
            if !node.is_running() || node.disk.pending_writes() == 0 {
                continue;
            }
            if !self.disk_rng.chance(self.scenario.sync_per_mille) {
                continue;
            }
            let mut context = NodeContext {
                now: self.now,
                checker: &mut self.checker,
                network: &mut self.network,
                rng: &mut self.network_rng,
                events: &mut self.events,
                trace: &mut self.trace,
            };
            node.sync(&mut context)?;
        }
        Ok(())
    }

    fn check_cluster(&mut self) -> Result<(), Violation> {
        for node in self.nodes.values() {
            if let Some(engine) = node.engine.as_ref() {
                self.checker.check_engine(engine)?;
            }
        }
        let running: Vec<&Engine> = self.nodes.values().filter_map(|n| n.engine.as_ref()).collect();
        let leaders: Vec<&Engine> = running.iter().copied().filter(|e| e.role() == Role::Leader).collect();
        self.checker.check_leaders_against_fresh_commits(&leaders)?;
        if self.now % LOG_MATCHING_INTERVAL_STEPS == 0 {
            self.checker.check_log_matching(&running)?;
        }
        Ok(())
    }

    fn mix_trace(&mut self) {
        self.trace.mix(&[self.now, self.network.stats().sent]);
        for node in self.nodes.values() {
            match node.engine.as_ref() {
                Some(engine) => self.trace.mix(&[
                    node.id.0,
                    engine.term().0,
                    engine.role() as u64,
                    engine.commit_index().0,
                    engine.last_index().0,
                    node.kv.applied_index().0,
                ]),
                None => self.trace.mix(&[node.id.0]),
            }
        }
    }

    /// The engine of a running node.
    pub(super) fn engine(&self, id: NodeId) -> Option<&Engine> {
        self.nodes.get(&id).and_then(|n| n.engine.as_ref())
    }

    /// The running leader with the highest term, if any.
    pub(super) fn current_leader(&self) -> Option<NodeId> {
        self.nodes
            .values()
            .filter_map(|n| n.engine.as_ref())
            .filter(|e| e.role() == Role::Leader)
            .max_by_key(|e| e.term())
            .map(|e| e.id())
    }

    /// Ids of running nodes.
    pub(super) fn running_nodes(&self) -> Vec<NodeId> {
        self.nodes.values().filter(|n| n.is_running()).map(|n| n.id).collect()
    }
}
