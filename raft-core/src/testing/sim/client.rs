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
//!
//! Now and then (the scenario's `checkpoint_per_mille`) a client creates,
//! rolls back to or deletes one of [`CHECKPOINT_NAMES`] checkpoints. A
//! checkpoint entry carries no request id, so nothing deduplicates it, and
//! the runtime's clients do not retry one either: a client proposes it again
//! only when it knows the earlier attempt lost its index to another entry.
//! Its attempt's (term, index) names the entry in every log (Log Matching),
//! so the client learns the outcome from whichever node applies that index
//! first, as a client that reconnects and asks about its entry would; an
//! attempt whose node crashed or went quiet is no longer waited on there,
//! but is not proposed again either. An operation still unresolved at its
//! deadline is indeterminate.

use super::history::{ClientOp, OpOutcome, RecordId};
use super::kv::{Command, CommandResult};
use super::node::NodeEvent;
use super::world::World;
use super::{Property, Violation};
use crate::protocol::ProposeError;
use crate::testing::linearizability::{CheckpointName, CheckpointOutcome};
use crate::types::{CheckpointOp, ClientRequestId, LogIndex, NodeId, ReadId, ReadMode, Term};

/// How many checkpoint names the clients use: one more than the state
/// machine retains, so that creates are also refused for a full catalog.
pub const CHECKPOINT_NAMES: u8 = 4;

/// How many operation timeouts a client waits for a checkpoint entry it got
/// accepted, during the fault phase: a checkpoint operation left
/// indeterminate is the costliest uncertainty for the linearizability
/// checker (see its documentation), and checkpoint operations are rare.
const CHECKPOINT_PATIENCE: u64 = 3;

/// The checkpoint name a history's [`CheckpointName`] stands for.
pub fn checkpoint_name(name: CheckpointName) -> String {
    format!("ck{}", name.0)
}

/// The replicated operation a client's checkpoint operation proposes;
/// `None` for an operation on keys.
fn checkpoint_op(op: ClientOp, now: u64) -> Option<CheckpointOp> {
    Some(match op {
        ClientOp::CreateCheckpoint(name) => {
            CheckpointOp::Create { name: checkpoint_name(name), created_unix_ms: now }
        }
        ClientOp::Rollback(name) => CheckpointOp::Rollback { name: checkpoint_name(name) },
        ClientOp::DeleteCheckpoint(name) => CheckpointOp::Delete { name: checkpoint_name(name) },
        _ => return None,
    })
}

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

/// A checkpoint operation in flight: at most one attempt, never retried
/// once a node accepted it unless that attempt is known lost.
#[derive(Clone, Copy, Debug)]
struct CheckpointOpState {
    record: RecordId,
    /// The history's form of the operation.
    op: ClientOp,
    attempt: Option<WriteAttempt>,
    /// The attempt's node crashed or it timed out: its entry may still
    /// commit, so the client only waits for any node to apply its index.
    abandoned: bool,
    next_try_at: u64,
    deadline: u64,
}

#[derive(Clone, Copy, Debug)]
enum ClientState {
    Idle { next_op_at: u64 },
    Writing(WriteOp),
    Reading(ReadOp),
    Checkpointing(CheckpointOpState),
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
    /// The checkpoint names this client last saw exist (bit per name),
    /// which most of its rollbacks and deletes aim at; often stale.
    seen_checkpoints: u8,
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
            seen_checkpoints: 0,
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
                ClientState::Checkpointing(op) => self.drive_checkpoint(position, op),
            };
            self.clients[position].state = next;
        }
    }

    fn start_operation(&mut self, position: usize) -> ClientState {
        if self.client_rng.chance(self.scenario.checkpoint_per_mille) {
            return self.start_checkpoint(position);
        }
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

    fn start_checkpoint(&mut self, position: usize) -> ClientState {
        let any = CheckpointName(self.client_rng.below(u64::from(CHECKPOINT_NAMES)) as u8);
        let seen = self.clients[position].seen_checkpoints;
        // Rollbacks and deletes mostly name a checkpoint the client saw.
        let target = if seen != 0 && self.client_rng.chance(700) {
            let names: Vec<u8> = (0..CHECKPOINT_NAMES).filter(|name| seen & (1 << name) != 0).collect();
            self.client_rng.pick(&names).map_or(any, CheckpointName)
        } else {
            any
        };
        // A client that saw no checkpoint yet mostly creates one.
        let creates = if seen == 0 { 6 } else { 4 };
        let roll = self.client_rng.below(10);
        let op = if roll < creates {
            ClientOp::CreateCheckpoint(any)
        } else if roll < 8 {
            ClientOp::Rollback(target)
        } else {
            ClientOp::DeleteCheckpoint(target)
        };
        let client = self.clients[position].id;
        // A checkpoint operation acts on every key; its record names key 0,
        // which every scenario has.
        let record = self.history.invoke(client, 0, op, self.now);
        self.trace.event(self.now, || format!("client {client}: {op}"));
        let state = CheckpointOpState {
            record,
            op,
            attempt: None,
            abandoned: false,
            next_try_at: self.now,
            deadline: self.now + self.scenario.op_timeout_steps,
        };
        self.drive_checkpoint(position, state)
    }

    fn drive_checkpoint(&mut self, position: usize, mut op: CheckpointOpState) -> ClientState {
        if let (Some(attempt), false) = (op.attempt, op.abandoned) {
            let timed_out = self.now >= attempt.started + self.scenario.attempt_timeout_steps;
            if timed_out || !self.attempt_alive(attempt.node, attempt.incarnation) {
                // It may still commit, and nothing would deduplicate a
                // retry: wait for its index to be applied anywhere.
                op.abandoned = true;
                self.clients[position].leader_hint = NodeId::NONE;
            }
        }
        // An operation whose entry may still commit is waited for longer
        // (an administrator checks before giving up), but only while the
        // faults go on, so the liveness phase still ends in time.
        let patience = match op.attempt {
            Some(attempt) if !self.clients_stopped => {
                op.deadline.max(attempt.started + CHECKPOINT_PATIENCE * self.scenario.op_timeout_steps)
            }
            _ => op.deadline,
        };
        if self.now >= patience {
            let outcome = if op.attempt.is_some() { OpOutcome::Indeterminate } else { OpOutcome::Failed };
            return self.finish(position, op.record, outcome);
        }
        if op.attempt.is_none() && self.now >= op.next_try_at {
            self.propose_checkpoint_attempt(position, &mut op);
        }
        ClientState::Checkpointing(op)
    }

    fn propose_checkpoint_attempt(&mut self, position: usize, op: &mut CheckpointOpState) {
        // A checkpoint operation state only ever holds a checkpoint op.
        let Some(proposal) = checkpoint_op(op.op, self.now) else {
            return;
        };
        match self.propose_through_leader(position, |engine| engine.propose_checkpoint(proposal)) {
            Ok(attempt) => op.attempt = Some(attempt),
            Err(retry_at) => op.next_try_at = retry_at,
        }
    }

    /// Proposes through the client's likely leader (or a random running
    /// node). Returns the accepted attempt, or the step to try again at,
    /// having updated the client's leader hint either way.
    fn propose_through_leader(
        &mut self,
        position: usize,
        propose: impl FnOnce(&mut crate::protocol::Engine) -> Result<(Term, LogIndex), ProposeError>,
    ) -> Result<WriteAttempt, u64> {
        let target = self.pick_node(position, true);
        let Some(node) = self.nodes.get_mut(&target) else {
            return Err(self.now + 5);
        };
        let incarnation = node.incarnation;
        let Some(engine) = node.engine.as_mut() else {
            return Err(self.now + 5);
        };
        match propose(engine) {
            Ok((term, index)) => {
                self.clients[position].leader_hint = target;
                Ok(WriteAttempt { node: target, incarnation, term, index, started: self.now })
            }
            Err(ProposeError::NotLeader { leader }) => {
                self.clients[position].leader_hint = leader;
                Err(self.now + if leader == NodeId::NONE { self.client_rng.between(3, 10) } else { 1 })
            }
            Err(_) => Err(self.now + self.client_rng.between(3, 10)),
        }
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
        let command = op.command.encode();
        let request = Some(op.request);
        match self.propose_through_leader(position, |engine| engine.propose(command, request)) {
            Ok(attempt) => {
                op.unresolved_attempts += 1;
                op.attempt = Some(attempt);
            }
            Err(retry_at) => op.next_try_at = retry_at,
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
                NodeEvent::AppliedOther { index, term } => self.on_other_applied(index, term),
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
            if let ClientState::Checkpointing(op) = self.clients[position].state {
                self.on_checkpoint_applied(position, op, (node, incarnation, index, term), result)?;
                continue;
            }
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

    /// A blank or membership entry took `index` in `term`: a checkpoint
    /// attempt at that index in another term is lost and may be proposed
    /// again. (Writes learn this only from their own node's command
    /// entries, and retry with their request id anyway.)
    fn on_other_applied(&mut self, index: LogIndex, term: Term) {
        for client in &mut self.clients {
            let ClientState::Checkpointing(op) = &mut client.state else {
                continue;
            };
            if op.attempt.is_some_and(|attempt| attempt.index == index && attempt.term != term) {
                op.attempt = None;
                op.abandoned = false;
                op.next_try_at = self.now;
            }
        }
    }

    /// The outcome of client `position`'s checkpoint operation, if the
    /// entry applied at `at` (node, incarnation, index, term) answers it.
    fn on_checkpoint_applied(
        &mut self,
        position: usize,
        mut op: CheckpointOpState,
        at: (NodeId, u64, LogIndex, Term),
        result: CommandResult,
    ) -> Result<(), Violation> {
        let (node, _incarnation, index, term) = at;
        let Some(attempt) = op.attempt else {
            return Ok(());
        };
        // Any node's applied entry at the attempt's index is the committed
        // one: the attempt's own entry if the terms match (Log Matching).
        if attempt.index != index {
            return Ok(());
        }
        if attempt.term != term {
            // Another leader's entry won this index: the attempt is lost for
            // good, so proposing again cannot apply the operation twice.
            op.attempt = None;
            op.abandoned = false;
            op.next_try_at = self.now;
            self.clients[position].state = ClientState::Checkpointing(op);
            return Ok(());
        }
        let CommandResult::Checkpoint(outcome) = result else {
            return Err(Violation {
                step: self.now,
                property: Property::StateMachineSafety,
                details: format!(
                    "entry {index} of term {term} on node {node} should be the checkpoint operation {} but \
                     answered {result:?}",
                    op.op
                ),
            });
        };
        let exists = match (op.op, outcome) {
            (ClientOp::DeleteCheckpoint(_), _) | (_, CheckpointOutcome::NotFound) => Some(false),
            (_, CheckpointOutcome::Done | CheckpointOutcome::AlreadyExists) => Some(true),
            _ => None,
        };
        if let (Some(exists), Some(name)) = (exists, op.op.checkpoint_name()) {
            let bit = 1 << name.0;
            let client = &mut self.clients[position];
            client.seen_checkpoints =
                if exists { client.seen_checkpoints | bit } else { client.seen_checkpoints & !bit };
        }
        self.clients[position].state = self.finish(position, op.record, OpOutcome::Checkpoint(outcome));
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
