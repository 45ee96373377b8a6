//! The liveness phase: with every fault healed and every node restarted, the
//! cluster must elect a leader, commit a fresh write, and bring every member
//! to the same state, which holds every write a client was told succeeded.

use super::history::{ClientOp, OpOutcome};
use super::kv::Command;
use super::node::Lifecycle;
use super::world::World;
use super::{Property, Violation};
use crate::types::LogIndex;

/// The key of the fresh write (the clients use keys `0..keys`).
const LIVENESS_KEY: u64 = u64::MAX;

impl World {
    /// Heals everything and runs until the cluster has provably recovered,
    /// or fails with a liveness violation.
    pub(super) fn run_liveness_phase(&mut self) -> Result<(), Violation> {
        self.heal_everything();
        self.clients_stopped = true;
        let liveness_position = self.clients.len() - 1;
        let budget_steps = self.options.liveness_steps.max(2 * self.scenario.op_timeout_steps);
        let mut acknowledged_before = self.acknowledged.len();
        let mut fresh_write_started = false;
        for _ in 0..budget_steps {
            self.step(false)?;
            if !fresh_write_started && self.current_leader().is_some() {
                let value = self.now;
                self.begin_write(liveness_position, Command::Put { key: LIVENESS_KEY, value });
                acknowledged_before = self.acknowledged.len();
                fresh_write_started = true;
            }
            if fresh_write_started && self.clients[liveness_position].is_idle() {
                let liveness_client = self.clients[liveness_position].id;
                let fresh = self.acknowledged[acknowledged_before..]
                    .iter()
                    .find(|ack| ack.request.client == liveness_client)
                    .map(|ack| ack.index);
                match fresh {
                    Some(index) if self.cluster_settled(index) => return self.check_final_state(),
                    Some(_) => {}
                    // The fresh write timed out: try again.
                    None => fresh_write_started = false,
                }
            }
        }
        Err(Violation {
            step: self.now,
            property: Property::Liveness,
            details: format!(
                "no recovery within {budget_steps} steps of healing: {}",
                self.describe_cluster()
            ),
        })
    }

    /// Whether every client is idle and every member applied everything the
    /// leader committed, at least up to `index`.
    fn cluster_settled(&self, index: LogIndex) -> bool {
        if !self.clients.iter().all(|c| c.is_idle()) {
            return false;
        }
        let Some(leader) = self.current_leader().and_then(|id| self.engine(id)) else {
            return false;
        };
        let commit = leader.commit_index();
        let membership = leader.membership();
        self.nodes
            .values()
            .filter(|n| membership.contains(n.id))
            .all(|n| n.is_running() && n.kv.applied_index() >= index && n.kv.applied_index() == commit)
    }

    /// Every member holds every acknowledged write and the same state; then
    /// reads every key from the leader into the history.
    fn check_final_state(&mut self) -> Result<(), Violation> {
        let Some(leader) = self.current_leader() else {
            return Ok(());
        };
        let Some(membership) = self.engine(leader).map(|e| e.membership().clone()) else {
            return Ok(());
        };
        let fail = |details: String| Violation { step: self.now, property: Property::Liveness, details };
        let leader_digest = self.nodes.get(&leader).map(|n| n.kv.digest());
        for node in self.nodes.values().filter(|n| membership.contains(n.id)) {
            for ack in &self.acknowledged {
                let record = node.kv.dedup_record(ack.request.client);
                if record.is_none_or(|r| r.sequence < ack.request.sequence)
                    || node.kv.applied_index() < ack.index
                {
                    return Err(fail(format!(
                        "node {} lacks acknowledged write {:?} at {}",
                        node.id, ack.request, ack.index
                    )));
                }
            }
            if Some(node.kv.digest()) != leader_digest {
                return Err(fail(format!("node {} and leader {leader} hold different states", node.id)));
            }
        }
        if let Some(kv) = self.nodes.get(&leader).map(|n| n.kv.clone()) {
            for key in 0..self.scenario.keys {
                let record = self.history.invoke(0, key, ClientOp::Read, self.now);
                self.history.complete(record, OpOutcome::Read(kv.get(key)), self.now);
            }
        }
        Ok(())
    }

    /// A one-line summary of every node, for liveness failures.
    pub(super) fn describe_cluster(&self) -> String {
        let mut parts = Vec::new();
        for node in self.nodes.values().filter(|n| n.lifecycle != Lifecycle::Retired) {
            let text = match node.engine.as_ref() {
                Some(engine) => {
                    let status = engine.status();
                    format!(
                        "{}:{} t{} lead {} commit {} last {} applied {} {}",
                        node.id,
                        status.role,
                        status.term,
                        status.leader,
                        status.commit_index,
                        status.last_index,
                        node.kv.applied_index(),
                        status.membership
                    )
                }
                None => format!("{}: down", node.id),
            };
            parts.push(text);
        }
        let cut = self.network.cut_links().len();
        format!("[{}] cut links {cut}, in flight {}", parts.join("; "), self.network.in_flight())
    }
}
