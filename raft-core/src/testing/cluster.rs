//! A cluster of engines driven by hand, in one thread, with an in-memory
//! network and in-memory "durable" storage. Tests, scenario files and
//! benchmarks use it to drive engines step by step; it has no timing and no
//! randomness of its own.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;

use crate::message::Message;
use crate::protocol::{Config, Engine, FailedRead, ReadState, Ready, RestoredState};
use crate::runtime::checkpoints::{decide, Decision};
use crate::types::{
    CheckpointOp, Entry, EntryPayload, HardState, LogIndex, Membership, NodeId, SnapshotMeta,
};

/// What one node has made durable: its hard state, its log after the
/// snapshot, its snapshot, and a snapshot being received.
#[derive(Clone, Debug, Default)]
pub struct MemoryDisk {
    /// The persisted hard state.
    pub hard_state: HardState,
    /// Entries after the compaction point, consecutive.
    pub entries: Vec<Entry>,
    /// The current snapshot and its bytes.
    pub snapshot: Option<(SnapshotMeta, Bytes)>,
    /// A snapshot being received: its metadata and the bytes so far.
    pub receiving: Option<(SnapshotMeta, Vec<u8>)>,
}

impl MemoryDisk {
    /// Writes the durable part of a batch, in the order `Ready` documents.
    pub fn write(&mut self, ready: &Ready) {
        for chunk in &ready.snapshot_chunks {
            if chunk.offset == 0 {
                self.receiving = Some((chunk.snapshot.clone(), Vec::new()));
            }
            if let Some((_, bytes)) = self.receiving.as_mut() {
                bytes.extend_from_slice(&chunk.data);
            }
        }
        if let Some(meta) = &ready.install_snapshot {
            let data = match self.receiving.take() {
                Some((received, bytes)) if &received == meta => Bytes::from(bytes),
                _ => Bytes::new(),
            };
            self.snapshot = Some((meta.clone(), data));
            self.entries.clear();
        }
        if let Some(first) = ready.entries.first() {
            self.entries.retain(|e| e.index < first.index);
            self.entries.extend(ready.entries.iter().cloned());
        }
        if let Some(hard_state) = ready.hard_state {
            self.hard_state = hard_state;
        }
        if let Some(compact_to) = ready.compact_to {
            self.entries.retain(|e| e.index > compact_to);
        }
    }

    /// The state a restarted engine reads back.
    pub fn restored_state(&self) -> RestoredState {
        RestoredState {
            hard_state: self.hard_state,
            snapshot: self.snapshot.as_ref().map(|(meta, _)| meta.clone()),
            entries: self.entries.clone(),
        }
    }
}

/// A state machine that records applied commands in order; its snapshot is
/// the list of commands, length-prefixed.
///
/// It also carries out checkpoint entries with the runtime's rules
/// ([`decide`], at most [`RECORDING_MAX_CHECKPOINTS`] retained): a create
/// keeps the list of commands at its index, a rollback puts that list back,
/// a delete forgets it. Retained checkpoints follow the commands in the
/// snapshot, after a marker no command length can take, so a snapshot
/// without checkpoints is exactly the list of commands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecordingStateMachine {
    /// Applied commands.
    pub commands: Vec<Bytes>,
    /// The last applied index.
    pub applied_index: LogIndex,
    /// The retained checkpoints: the index of each and the commands then.
    pub checkpoints: BTreeMap<String, (LogIndex, Vec<Bytes>)>,
    /// Each checkpoint operation applied since the state machine was
    /// created or restored, with its outcome (`5 create "before": ok`).
    pub checkpoint_log: Vec<String>,
}

/// The most checkpoints a [`RecordingStateMachine`] retains.
pub const RECORDING_MAX_CHECKPOINTS: usize = 2;

/// The length prefix that marks the start of the checkpoints in a
/// [`RecordingStateMachine`] snapshot.
const CHECKPOINTS_MARKER: u32 = u32::MAX;

impl RecordingStateMachine {
    /// Applies one entry.
    pub fn apply(&mut self, entry: &Entry) {
        match &entry.payload {
            EntryPayload::Command { data, .. } => self.commands.push(data.clone()),
            EntryPayload::Checkpoint(op) => self.apply_checkpoint(op, entry.index),
            EntryPayload::Blank | EntryPayload::Membership(_) => {}
        }
        self.applied_index = entry.index;
    }

    fn apply_checkpoint(&mut self, op: &CheckpointOp, index: LogIndex) {
        let name = op.name();
        let created_at = self.checkpoints.get(name).map(|(at, _)| *at);
        let decision = decide(op, index, created_at, self.checkpoints.len(), RECORDING_MAX_CHECKPOINTS);
        let outcome = match decision {
            Ok(Decision::Create) => {
                self.checkpoints.insert(name.to_string(), (index, self.commands.clone()));
                "ok".to_string()
            }
            Ok(Decision::Rollback) => {
                if let Some((_, commands)) = self.checkpoints.get(name) {
                    self.commands = commands.clone();
                }
                "ok".to_string()
            }
            Ok(Decision::Delete) => {
                self.checkpoints.remove(name);
                "ok".to_string()
            }
            Ok(Decision::AlreadyCreated) => "ok (applied again)".to_string(),
            Err(error) => error.to_string(),
        };
        let kind = match op {
            CheckpointOp::Create { .. } => "create",
            CheckpointOp::Rollback { .. } => "rollback",
            CheckpointOp::Delete { .. } => "delete",
        };
        self.checkpoint_log.push(format!("{index} {kind} {name:?}: {outcome}"));
    }

    /// Encodes the state.
    pub fn snapshot(&self) -> Bytes {
        fn put_commands(out: &mut Vec<u8>, commands: &[Bytes]) {
            for command in commands {
                out.extend_from_slice(&(command.len() as u32).to_le_bytes());
                out.extend_from_slice(command);
            }
        }
        let mut out = Vec::new();
        put_commands(&mut out, &self.commands);
        if !self.checkpoints.is_empty() {
            out.extend_from_slice(&CHECKPOINTS_MARKER.to_le_bytes());
            out.extend_from_slice(&(self.checkpoints.len() as u32).to_le_bytes());
            for (name, (index, commands)) in &self.checkpoints {
                out.extend_from_slice(&(name.len() as u32).to_le_bytes());
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(&index.0.to_le_bytes());
                out.extend_from_slice(&(commands.len() as u32).to_le_bytes());
                put_commands(&mut out, commands);
            }
        }
        Bytes::from(out)
    }

    /// Decodes a state written by [`RecordingStateMachine::snapshot`]
    /// (leniently: it is test support, and damaged bytes give a shorter
    /// state rather than a panic).
    pub fn restore(data: &[u8], applied_index: LogIndex) -> Self {
        let mut rest = data;
        let mut machine = RecordingStateMachine { applied_index, ..RecordingStateMachine::default() };
        while let Some(length) = take_u32(&mut rest) {
            if length == CHECKPOINTS_MARKER {
                machine.checkpoints = restore_checkpoints(&mut rest);
                break;
            }
            machine.commands.push(take_bytes(&mut rest, length as usize));
        }
        machine
    }
}

fn take_u32(rest: &mut &[u8]) -> Option<u32> {
    let (head, tail) = rest.split_at_checked(4)?;
    *rest = tail;
    Some(u32::from_le_bytes([head[0], head[1], head[2], head[3]]))
}

fn take_u64(rest: &mut &[u8]) -> Option<u64> {
    let (head, tail) = rest.split_at_checked(8)?;
    *rest = tail;
    Some(u64::from_le_bytes(head.try_into().ok()?))
}

fn take_bytes(rest: &mut &[u8], length: usize) -> Bytes {
    let (head, tail) = rest.split_at(length.min(rest.len()));
    *rest = tail;
    Bytes::copy_from_slice(head)
}

fn restore_checkpoints(rest: &mut &[u8]) -> BTreeMap<String, (LogIndex, Vec<Bytes>)> {
    let mut checkpoints = BTreeMap::new();
    let count = take_u32(rest).unwrap_or(0);
    for _ in 0..count {
        let Some(name_length) = take_u32(rest) else { break };
        let name = String::from_utf8_lossy(&take_bytes(rest, name_length as usize)).into_owned();
        let (Some(index), Some(commands)) = (take_u64(rest), take_u32(rest)) else { break };
        let mut kept = Vec::new();
        for _ in 0..commands {
            let Some(length) = take_u32(rest) else { break };
            kept.push(take_bytes(rest, length as usize));
        }
        checkpoints.insert(name, (LogIndex(index), kept));
    }
    checkpoints
}

/// One node of a [`Cluster`].
#[derive(Debug)]
pub struct ClusterNode {
    /// The engine.
    pub engine: Engine,
    /// Its durable state.
    pub disk: MemoryDisk,
    /// Its state machine.
    pub state_machine: RecordingStateMachine,
    /// Reads confirmed and served (the applied index had reached them).
    pub reads: Vec<ReadState>,
    /// Reads that failed.
    pub failed_reads: Vec<FailedRead>,
    /// Confirmed reads still waiting for the state machine to catch up.
    pub waiting_reads: Vec<ReadState>,
    /// Whether the node is down (crashed and not restarted).
    pub down: bool,
}

/// Engines connected by an in-memory network.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes by id.
    pub nodes: BTreeMap<NodeId, ClusterNode>,
    /// Messages sent and not yet delivered, in send order.
    pub in_flight: Vec<Message>,
    /// Directed links that drop every message: (from, to).
    pub cut_links: BTreeSet<(NodeId, NodeId)>,
    /// How each node's engine is configured.
    make_config: fn(NodeId) -> Config,
}

impl Cluster {
    /// A new cluster of `voters` that all bootstrap with the same membership.
    pub fn bootstrap(voters: &[u64], make_config: fn(NodeId) -> Config) -> Self {
        let membership = Membership::with_voters(voters.iter().map(|id| NodeId(*id)));
        let mut cluster = Cluster::empty(make_config);
        for id in voters {
            let engine = Engine::bootstrap(make_config(NodeId(*id)), membership.clone())
                .expect("a valid bootstrap configuration");
            cluster.insert(NodeId(*id), engine);
        }
        cluster
    }

    /// A cluster with no nodes yet.
    pub fn empty(make_config: fn(NodeId) -> Config) -> Self {
        Cluster { nodes: BTreeMap::new(), in_flight: Vec::new(), cut_links: BTreeSet::new(), make_config }
    }

    /// Adds a node that has no state (it will join through a membership change).
    pub fn add_empty_node(&mut self, id: NodeId) {
        let engine = Engine::new((self.make_config)(id)).expect("a valid configuration");
        self.insert(id, engine);
    }

    fn insert(&mut self, id: NodeId, engine: Engine) {
        self.nodes.insert(
            id,
            ClusterNode {
                engine,
                disk: MemoryDisk::default(),
                state_machine: RecordingStateMachine::default(),
                reads: Vec::new(),
                failed_reads: Vec::new(),
                waiting_reads: Vec::new(),
                down: false,
            },
        );
    }

    /// The engine of node `id`.
    pub fn engine(&self, id: u64) -> &Engine {
        &self.nodes[&NodeId(id)].engine
    }

    /// The engine of node `id`, mutably.
    pub fn engine_mut(&mut self, id: u64) -> &mut Engine {
        &mut self.nodes.get_mut(&NodeId(id)).expect("a known node").engine
    }

    /// Handles one node's pending work: persists synchronously, acknowledges,
    /// applies, serves snapshot reads and queues its messages. Returns whether
    /// there was any work.
    pub fn process_ready(&mut self, id: NodeId) -> bool {
        let Some(node) = self.nodes.get_mut(&id) else {
            return false;
        };
        if node.down || !node.engine.has_ready() {
            return false;
        }
        let ready = node.engine.ready();
        self.in_flight.extend(ready.messages.iter().cloned());
        node.disk.write(&ready);
        if let Some(meta) = &ready.install_snapshot {
            let data = node.disk.snapshot.as_ref().map(|(_, d)| d.clone()).unwrap_or_default();
            node.state_machine = RecordingStateMachine::restore(&data, meta.last_index);
        }
        if let Some(persist_id) = ready.persist_id {
            node.engine.persisted(persist_id);
        }
        if ready.install_snapshot.is_some() {
            node.engine.applied(node.state_machine.applied_index);
        }
        for entry in &ready.committed_entries {
            node.state_machine.apply(entry);
        }
        if let Some(last) = ready.committed_entries.last() {
            node.engine.applied(last.index);
        }
        node.waiting_reads.extend(ready.reads.iter().copied());
        let applied = node.state_machine.applied_index;
        let (served, waiting): (Vec<_>, Vec<_>) =
            node.waiting_reads.drain(..).partition(|r| r.index <= applied);
        node.reads.extend(served);
        node.waiting_reads = waiting;
        node.failed_reads.extend(ready.failed_reads.iter().cloned());
        for read in &ready.snapshot_reads {
            let Some((meta, data)) = node.disk.snapshot.clone() else {
                node.engine.snapshot_read_failed(read.to);
                continue;
            };
            if meta.last_index != read.snapshot.last_index {
                node.engine.snapshot_read_failed(read.to);
                continue;
            }
            let start = (read.offset as usize).min(data.len());
            let end = (start + read.max_bytes as usize).min(data.len());
            node.engine.snapshot_chunk_read(
                read.to,
                meta.last_index,
                read.offset,
                data.slice(start..end),
                end == data.len(),
            );
        }
        true
    }

    /// Delivers every in-flight message addressed to `to` (or to everyone if
    /// `to` is `None`). Messages over cut links or to down nodes are dropped.
    pub fn deliver(&mut self, to: Option<NodeId>) -> usize {
        let (now, later): (Vec<_>, Vec<_>) =
            self.in_flight.drain(..).partition(|m| to.is_none_or(|t| m.to == t));
        self.in_flight = later;
        let mut delivered = 0;
        for message in now {
            if self.cut_links.contains(&(message.from, message.to)) {
                continue;
            }
            let Some(node) = self.nodes.get_mut(&message.to) else {
                continue;
            };
            if node.down {
                continue;
            }
            let _ = node.engine.step(message);
            delivered += 1;
        }
        delivered
    }

    /// Processes work and delivers messages until nothing moves.
    pub fn stabilize(&mut self) {
        for _ in 0..10_000 {
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            let mut busy = false;
            for id in ids {
                busy |= self.process_ready(id);
            }
            busy |= self.deliver(None) > 0;
            if !busy {
                return;
            }
        }
        panic!("the cluster did not stabilize in 10000 rounds");
    }

    /// Ticks every live node once.
    pub fn tick_all(&mut self) {
        for node in self.nodes.values_mut().filter(|n| !n.down) {
            node.engine.tick();
        }
    }

    /// Makes node `id` campaign and runs the cluster until quiet; returns
    /// whether it became leader.
    pub fn elect(&mut self, id: u64) -> bool {
        self.engine_mut(id).campaign_now();
        self.stabilize();
        self.engine(id).role() == crate::types::Role::Leader
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: u64) {
        let others: Vec<NodeId> = self.nodes.keys().copied().filter(|n| n.0 != id).collect();
        for other in others {
            self.cut_links.insert((NodeId(id), other));
            self.cut_links.insert((other, NodeId(id)));
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut_links.clear();
    }

    /// Crashes node `id`: it loses its volatile state and in-flight messages
    /// to it are lost. Its disk survives.
    pub fn crash(&mut self, id: u64) {
        if let Some(node) = self.nodes.get_mut(&NodeId(id)) {
            node.down = true;
        }
        self.in_flight.retain(|m| m.to != NodeId(id));
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(&mut self, id: u64) {
        let config = (self.make_config)(NodeId(id));
        let Some(node) = self.nodes.get_mut(&NodeId(id)) else {
            return;
        };
        node.engine =
            Engine::restore(config, node.disk.restored_state()).expect("the disk holds a valid state");
        node.state_machine = match &node.disk.snapshot {
            Some((meta, data)) => RecordingStateMachine::restore(data, meta.last_index),
            None => RecordingStateMachine::default(),
        };
        node.waiting_reads.clear();
        node.down = false;
    }

    /// Takes a snapshot of node `id`'s state machine at its applied index.
    pub fn take_snapshot(&mut self, id: u64) -> Result<SnapshotMeta, crate::protocol::SnapshotError> {
        let node = self.nodes.get_mut(&NodeId(id)).expect("a known node");
        let index = node.state_machine.applied_index;
        let Some(meta) = node.engine.snapshot_meta_at(index) else {
            return Err(crate::protocol::SnapshotError::NotApplied { index, applied: index });
        };
        node.engine.snapshot_created(meta.clone())?;
        node.disk.snapshot = Some((meta.clone(), node.state_machine.snapshot()));
        Ok(meta)
    }

    /// Checks every live engine's invariants.
    pub fn check_invariants(&self) -> Result<(), crate::protocol::InvariantViolation> {
        for node in self.nodes.values().filter(|n| !n.down) {
            node.engine.check_invariants()?;
        }
        Ok(())
    }

    /// Adds a node running `engine` (bootstrapped, restored or empty), with
    /// an empty disk. For tests that configure each node themselves.
    pub fn add_node(&mut self, id: NodeId, engine: Engine) {
        self.insert(id, engine);
    }

    /// Restarts a crashed node from its disk with `config` instead of the
    /// cluster's configuration function.
    pub fn restart_with_config(
        &mut self,
        id: NodeId,
        config: Config,
    ) -> Result<(), crate::protocol::RestoreError> {
        let Some(node) = self.nodes.get_mut(&id) else {
            return Ok(());
        };
        node.engine = Engine::restore(config, node.disk.restored_state())?;
        node.state_machine = match &node.disk.snapshot {
            Some((meta, data)) => RecordingStateMachine::restore(data, meta.last_index),
            None => RecordingStateMachine::default(),
        };
        node.waiting_reads.clear();
        node.down = false;
        Ok(())
    }
}
