//! Simulated clients. Each has one operation in flight: a read, a write, a
//! compare-and-set or a delete on one of a few shared keys, sent to a random
//! node or to the leader it last heard of.
//!
//! A write is proposed with a [`ClientRequestId`] and retried with the same
//! id until its outcome is known: the state machine's dedup table makes a
//! retry return the first result, so retries are safe. One attempt's outcome
//! is known when the node that accepted it applies the entry at the index it
//! returned: the same term means the entry is ours, another term means it was
//! lost. An operation that runs out of time is *failed* if no attempt can
//! still commit and *indeterminate* otherwise. Reads go through `read_index`
//! (ReadIndex, or a lease when enabled) on the leader or on a follower, and
//! are served once that node has applied the read's index.

use super::history::{ClientOp, OpOutcome, RecordId};
use super::kv::{Command, CommandResult};
use super::node::NodeEvent;
use super::world::World;
use super::{Property, Violation};
use crate::protocol::ProposeError;
use crate::types::{ClientRequestId, LogIndex, NodeId, ReadId, ReadMode, Term};

/// One attempt of a write, accepted by a node at (term, index).
#[derive(Clone, Copy, Debug)]
struct WriteAttempt {
    node: NodeId,
    incarnation: u64,
    term: Term,
    index: LogIndex,
    started: u64,
}

#[derive(Clone, Copy, Debug)]
struct WriteOp {
    record: RecordId,
    command: Command,
    request: ClientRequestId,
    attempt: Option<WriteAttempt>,
    /// Accepted attempts that might still commit.
    unresolved_attempts: u32,
    next_try_at: u64,
    deadline: u64,
}

#[derive(Clone, Copy, Debug)]
struct ReadAttempt {
    read: ReadId,
    node: NodeId,
    incarnation: u64,
    started: u64,
}

#[derive(Clone, Copy, Debug)]
struct ReadOp {
    record: RecordId,
    key: u64,
    attempt: Option<ReadAttempt>,
    next_try_at: u64,
    deadline: u64,
}

#[derive(Clone, Copy, Debug)]
enum ClientState {
    Idle { next_op_at: u64 },
    Writing(WriteOp),
    Reading(ReadOp),
}

/// One client.
#[derive(Clone, Debug)]
pub struct Client {
    /// The client's id (also its dedup id).
    pub id: u64,
    /// Whether the client starts operations by itself (the liveness client
    /// does not).
    pub autonomous: bool,
    state: ClientState,
    next_sequence: u64,
    leader_hint: NodeId,
    /// The value this client last saw for each key, for compare-and-set.
    last_seen: Vec<Option<u64>>,
}

impl Client {
    /// A new idle client.
    pub fn new(id: u64, keys: u64, autonomous: bool) -> Self {
        Client {
            id,
            autonomous,
            state: ClientState::Idle { next_op_at: 0 },
            next_sequence: 1,
            leader_hint: NodeId::NONE,
            last_seen: vec![None; keys as usize],
        }
    }

    /// Whether the client has no operation in flight.
    pub fn is_idle(&self) -> bool {
        matches!(self.state, ClientState::Idle { .. })
    }

    /// The id of a fresh, unique value.
    fn fresh_value(&mut self) -> u64 {
        (self.id << 32) | self.next_sequence
    }
}

/// A write whose result a client learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AcknowledgedWrite {
    /// The request.
    pub request: ClientRequestId,
    /// Where it was applied.
    pub index: LogIndex,
}

impl World {
    /// Lets every client act: start an operation, retry, or give up.
    pub(super) fn drive_clients(&mut self) {
        for position in 0..self.clients.len() {
            let state = self.clients[position].state;
            let next = match state {
                ClientState::Idle { next_op_at } => {
                    if self.clients_stopped || !self.clients[position].autonomous || self.now < next_op_at {
                        continue;
                    }
                    self.start_operation(position)
                }
                ClientState::Writing(op) => self.drive_write(position, op),
                ClientState::Reading(op) => self.drive_read(position, op),
            };
            self.clients[position].state = next;
        }
    }

    fn start_operation(&mut self, position: usize) -> ClientState {
        let keys = self.scenario.keys;
        let key = self.client_rng.below(keys);
        let roll = self.client_rng.below(100);
        let client = &mut self.clients[position];
        let value = client.fresh_value();
        let command = match roll {
            0..=39 => return self.start_read(position, key),
            40..=69 => Command::Put { key, value },
            70..=89 => {
                let seen = client.last_seen.get(key as usize).copied().flatten();
                let expected = if self.client_rng.chance(700) { seen } else { None };
                let new = if self.client_rng.chance(900) { Some(value) } else { None };
                Command::Cas { key, expected, new }
            }
            _ => Command::Delete { key },
        };
        self.start_write(position, command)
    }

    fn start_read(&mut self, position: usize, key: u64) -> ClientState {
        let client = self.clients[position].id;
        let record = self.history.invoke(client, key, ClientOp::Read, self.now);
        self.trace.event(self.now, || format!("client {client}: read key {key}"));
        let op = ReadOp {
            record,
            key,
            attempt: None,
            next_try_at: self.now,
            deadline: self.now + self.scenario.op_timeout_steps,
        };
        self.drive_read(position, op)
    }

    /// Makes client `position` start a write now (the liveness phase's
    /// fresh write).
    pub(super) fn begin_write(&mut self, position: usize, command: Command) {
        let state = self.start_write(position, command);
        self.clients[position].state = state;
    }

    fn start_write(&mut self, position: usize, command: Command) -> ClientState {
        let client = &mut self.clients[position];
        let request = ClientRequestId { client: client.id, sequence: client.next_sequence };
        client.next_sequence += 1;
        let op = match command {
            Command::Put { value, .. } => ClientOp::Write(value),
            Command::Delete { .. } => ClientOp::Delete,
            Command::Cas { expected, new, .. } => ClientOp::Cas { expected, new },
        };
        let record = self.history.invoke(request.client, command.key(), op, self.now);
        self.trace.event(self.now, || {
            format!("client {}: {command:?} as request {}", request.client, request.sequence)
        });
        let deadline = self.now + self.scenario.op_timeout_steps;
        let write = WriteOp {
            record,
            command,
            request,
            attempt: None,
            unresolved_attempts: 0,
            next_try_at: self.now,
            deadline,
        };
        self.drive_write(position, write)
    }

    /// Whether the node that accepted an attempt still runs the same incarnation.
    fn attempt_alive(&self, node: NodeId, incarnation: u64) -> bool {
        self.nodes.get(&node).is_some_and(|n| n.is_running() && n.incarnation == incarnation)
    }

    fn drive_write(&mut self, position: usize, mut op: WriteOp) -> ClientState {
        if let Some(attempt) = op.attempt {
            let timed_out = self.now >= attempt.started + self.scenario.attempt_timeout_steps;
            if timed_out || !self.attempt_alive(attempt.node, attempt.incarnation) {
                // Abandoned, not resolved: it may still commit.
                op.attempt = None;
                op.next_try_at = self.now;
                self.clients[position].leader_hint = NodeId::NONE;
            }
        }
        if self.now >= op.deadline {
            let outcome =
                if op.unresolved_attempts > 0 { OpOutcome::Indeterminate } else { OpOutcome::Failed };
            return self.finish(position, op.record, outcome);
        }
        if op.attempt.is_none() && self.now >= op.next_try_at {
            self.propose_attempt(position, &mut op);
        }
        ClientState::Writing(op)
    }

    fn propose_attempt(&mut self, position: usize, op: &mut WriteOp) {
        let target = self.pick_node(position, true);
        let Some(node) = self.nodes.get_mut(&target) else {
            op.next_try_at = self.now + 5;
            return;
        };
        let incarnation = node.incarnation;
        let Some(engine) = node.engine.as_mut() else {
            op.next_try_at = self.now + 5;
            return;
        };
        match engine.propose(op.command.encode(), Some(op.request)) {
            Ok((term, index)) => {
                op.unresolved_attempts += 1;
                op.attempt = Some(WriteAttempt { node: target, incarnation, term, index, started: self.now });
                self.clients[position].leader_hint = target;
            }
            Err(ProposeError::NotLeader { leader }) => {
                self.clients[position].leader_hint = leader;
                op.next_try_at =
                    self.now + if leader == NodeId::NONE { self.client_rng.between(3, 10) } else { 1 };
            }
            Err(_) => op.next_try_at = self.now + self.client_rng.between(3, 10),
        }
    }

    /// A running node for the client: its leader hint, or a random one.
    fn pick_node(&mut self, position: usize, prefer_leader: bool) -> NodeId {
        let hint = self.clients[position].leader_hint;
        if prefer_leader && self.nodes.get(&hint).is_some_and(|n| n.is_running()) {
            return hint;
        }
        let running: Vec<NodeId> = self.nodes.values().filter(|n| n.is_running()).map(|n| n.id).collect();
        self.client_rng.pick(&running).unwrap_or(NodeId::NONE)
    }

    fn drive_read(&mut self, position: usize, mut op: ReadOp) -> ClientState {
        if let Some(attempt) = op.attempt {
            let timed_out = self.now >= attempt.started + self.scenario.attempt_timeout_steps;
            if timed_out || !self.attempt_alive(attempt.node, attempt.incarnation) {
                op.attempt = None;
                op.next_try_at = self.now;
            }
        }
        if self.now >= op.deadline {
            return self.finish(position, op.record, OpOutcome::Failed);
        }
        if op.attempt.is_none() && self.now >= op.next_try_at {
            let prefer_leader = self.client_rng.chance(500);
            let target = self.pick_node(position, prefer_leader);
            let mode = if self.client_rng.chance(self.scenario.lease_read_per_mille) {
                ReadMode::Lease
            } else {
                ReadMode::ReadIndex
            };
            let read = ReadId(self.next_read_id);
            self.next_read_id += 1;
            let started = self
                .nodes
                .get_mut(&target)
                .and_then(|node| node.read_index(read, op.key, mode).then_some(node.incarnation));
            match started {
                Some(incarnation) => {
                    op.attempt = Some(ReadAttempt { read, node: target, incarnation, started: self.now })
                }
                None => op.next_try_at = self.now + self.client_rng.between(2, 8),
            }
        }
        ClientState::Reading(op)
    }

    fn finish(&mut self, position: usize, record: RecordId, outcome: OpOutcome) -> ClientState {
        self.history.complete(record, outcome, self.now);
        let client = self.clients[position].id;
        self.trace.event(self.now, || format!("client {client}: done {outcome:?}"));
        self.trace.mix(&[client, record.0 as u64, self.now]);
        let (low, high) = self.scenario.think_steps;
        ClientState::Idle { next_op_at: self.now + self.client_rng.between(low, high) }
    }

    /// Hands the nodes' events of this step to the clients.
    pub(super) fn dispatch_events(&mut self) -> Result<(), Violation> {
        let events = std::mem::take(&mut self.events);
        for event in events {
            match event {
                NodeEvent::Applied { node, incarnation, index, term, request, result } => {
                    self.on_applied(node, incarnation, index, term, request, result)?;
                }
                NodeEvent::ReadServed { read, value } => self.on_read_served(read, value),
                NodeEvent::ReadFailed { read } => self.on_read_failed(read),
            }
        }
        Ok(())
    }

    fn on_applied(
        &mut self,
        node: NodeId,
        incarnation: u64,
        index: LogIndex,
        term: Term,
        request: Option<ClientRequestId>,
        result: CommandResult,
    ) -> Result<(), Violation> {
        for position in 0..self.clients.len() {
            let ClientState::Writing(mut op) = self.clients[position].state else {
                continue;
            };
            let Some(attempt) = op.attempt else {
                continue;
            };
            if (attempt.node, attempt.incarnation, attempt.index) != (node, incarnation, index) {
                continue;
            }
            if attempt.term != term {
                // Another leader's entry won this index: our attempt is lost.
                op.attempt = None;
                op.unresolved_attempts = op.unresolved_attempts.saturating_sub(1);
                op.next_try_at = self.now;
                self.clients[position].state = ClientState::Writing(op);
                continue;
            }
            let outcome = match (request == Some(op.request), result) {
                (true, CommandResult::Written) => OpOutcome::Written,
                (true, CommandResult::Deleted) => OpOutcome::Deleted,
                (true, CommandResult::Cas(matched)) => OpOutcome::Cas(matched),
                _ => {
                    return Err(Violation {
                        step: self.now,
                        property: Property::StateMachineSafety,
                        details: format!(
                            "entry {index} of term {term} on node {node} should carry request {:?} but carries {request:?} with result {result:?}",
                            op.request
                        ),
                    });
                }
            };
            self.remember_write(position, op.command, outcome);
            self.acknowledged.push(AcknowledgedWrite { request: op.request, index });
            self.clients[position].state = self.finish(position, op.record, outcome);
        }
        Ok(())
    }

    fn remember_write(&mut self, position: usize, command: Command, outcome: OpOutcome) {
        let client = &mut self.clients[position];
        let seen = match (command, outcome) {
            (Command::Put { value, .. }, _) => Some(value),
            (Command::Delete { .. }, _) => None,
            (Command::Cas { new, .. }, OpOutcome::Cas(true)) => new,
            // A failed compare-and-set says only what the value was not.
            (Command::Cas { .. }, _) => return,
        };
        if let Some(slot) = client.last_seen.get_mut(command.key() as usize) {
            *slot = seen;
        }
    }

    fn on_read_served(&mut self, read: ReadId, value: Option<u64>) {
        for position in 0..self.clients.len() {
            let ClientState::Reading(op) = self.clients[position].state else {
                continue;
            };
            if op.attempt.is_some_and(|a| a.read == read) {
                if let Some(slot) = self.clients[position].last_seen.get_mut(op.key as usize) {
                    *slot = value;
                }
                self.clients[position].state = self.finish(position, op.record, OpOutcome::Read(value));
                return;
            }
        }
    }

    fn on_read_failed(&mut self, read: ReadId) {
        for client in &mut self.clients {
            if let ClientState::Reading(op) = &mut client.state {
                if op.attempt.is_some_and(|a| a.read == read) {
                    op.attempt = None;
                    op.next_try_at = self.now + 2;
                    return;
                }
            }
        }
    }
}
