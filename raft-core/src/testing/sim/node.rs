//! One simulated node: an engine, its disk and its key-value state machine,
//! and the loop that carries out a `Ready` the way a real runtime would
//! (send, buffer the writes, apply, serve reads, stream snapshot chunks).

use std::collections::BTreeMap;

use super::checker::{SafetyChecker, StateDigest};
use super::disk::{PendingWrite, SimDisk};
use super::kv::{CommandResult, KvBugs, KvStore};
use super::network::Network;
use super::rng::SimRng;
use super::trace::Trace;
use super::{Property, Violation};
use crate::protocol::{Config, Engine, InjectedBugs, ReadState, Ready, SnapshotRead};
use crate::types::{ClientRequestId, EntryPayload, LogIndex, NodeId, ReadId, Term};

/// Where a node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Started empty to join; no committed configuration has held it yet.
    Joining,
    /// A member of the cluster (a committed configuration held it).
    Member,
    /// Removed from the cluster and shut down for good.
    Retired,
}

/// Something a node did that clients care about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NodeEvent {
    /// The node applied a command or checkpoint entry.
    Applied {
        /// The node.
        node: NodeId,
        /// Its incarnation.
        incarnation: u64,
        /// The entry's index.
        index: LogIndex,
        /// The entry's term.
        term: Term,
        /// The request the entry carried (none for a checkpoint entry).
        request: Option<ClientRequestId>,
        /// What the state machine returned.
        result: CommandResult,
    },
    /// The node applied a blank or membership entry (which answers no
    /// client): an attempt at this index in another term is lost.
    AppliedOther {
        /// The entry's index.
        index: LogIndex,
        /// The entry's term.
        term: Term,
    },
    /// A read was served with this value.
    ReadServed {
        /// The read.
        read: ReadId,
        /// The value of the read's key.
        value: Option<u64>,
    },
    /// A read failed.
    ReadFailed {
        /// The read.
        read: ReadId,
    },
}

/// What a node's processing needs from the rest of the simulation.
pub struct NodeContext<'a> {
    /// The current step.
    pub now: u64,
    /// The safety checker.
    pub checker: &'a mut SafetyChecker,
    /// The network.
    pub network: &'a mut Network,
    /// Randomness for the network.
    pub rng: &'a mut SimRng,
    /// Events for the clients.
    pub events: &'a mut Vec<NodeEvent>,
    /// The trace.
    pub trace: &'a mut Trace,
}

/// One node of the simulated cluster.
#[derive(Debug)]
pub struct SimNode {
    /// The node's id.
    pub id: NodeId,
    /// Counts restarts; client attempts are tied to one incarnation.
    pub incarnation: u64,
    /// The running engine; `None` while down or retired.
    pub engine: Option<Engine>,
    /// The disk, which survives crashes.
    pub disk: SimDisk,
    /// The state machine (volatile: rebuilt on restart).
    pub kv: KvStore,
    /// Where the node is in its life.
    pub lifecycle: Lifecycle,
    /// When a crashed node restarts.
    pub restart_at: Option<u64>,
    /// The step at which the node last started (or was created).
    pub started_at: u64,
    /// Offset of this node's ticks within a tick period.
    pub tick_phase: u64,
    /// Snapshots this node built.
    pub snapshots_taken: u64,
    /// Snapshots this node installed from a leader.
    pub snapshots_installed: u64,
    /// Reads this node served while not leader (follower reads).
    pub follower_reads: u64,
    /// The mistakes its state machine is told to make (see [`KvBugs`]).
    kv_bugs: KvBugs,
    waiting_reads: Vec<ReadState>,
    read_keys: BTreeMap<ReadId, u64>,
    last_snapshot_index: LogIndex,
    snapshot_every_entries: u64,
}

fn inject(engine: &mut Engine, bugs: InjectedBugs) {
    #[cfg(feature = "testing")]
    engine.inject_bugs(bugs);
    #[cfg(not(feature = "testing"))]
    let _ = (engine, bugs);
}

impl SimNode {
    /// A node running `engine` with an empty disk.
    pub fn new(
        engine: Engine,
        lifecycle: Lifecycle,
        now: u64,
        tick_phase: u64,
        snapshot_every_entries: u64,
        kv_bugs: KvBugs,
    ) -> Self {
        SimNode {
            id: engine.id(),
            incarnation: 0,
            engine: Some(engine),
            disk: SimDisk::default(),
            kv: KvStore::new(kv_bugs),
            lifecycle,
            restart_at: None,
            started_at: now,
            tick_phase,
            snapshots_taken: 0,
            snapshots_installed: 0,
            follower_reads: 0,
            kv_bugs,
            waiting_reads: Vec::new(),
            read_keys: BTreeMap::new(),
            last_snapshot_index: LogIndex(0),
            snapshot_every_entries,
        }
    }

    /// Switches on injected bugs in the running engine.
    pub fn inject_bugs(&mut self, bugs: InjectedBugs) {
        if let Some(engine) = self.engine.as_mut() {
            inject(engine, bugs);
        }
    }

    /// Whether the node runs.
    pub fn is_running(&self) -> bool {
        self.engine.is_some()
    }

    /// Starts a read of `key` on this node.
    pub fn read_index(&mut self, read: ReadId, key: u64, mode: crate::types::ReadMode) -> bool {
        let Some(engine) = self.engine.as_mut() else {
            return false;
        };
        if engine.read_index(read, mode).is_err() {
            return false;
        }
        self.read_keys.insert(read, key);
        true
    }

    /// Carries out one `Ready`, if the engine has one.
    pub fn process_ready(&mut self, context: &mut NodeContext<'_>) -> Result<(), Violation> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        if !engine.has_ready() {
            return Ok(());
        }
        let ready = engine.ready();
        if let Some(soft) = ready.soft_state {
            let id = self.id;
            context.trace.event(context.now, || {
                format!("node {id}: {} in term {} (leader {})", soft.role, soft.term, soft.leader)
            });
        }
        self.send_messages(&ready, context)?;
        self.buffer_writes(&ready, context)?;
        self.apply_committed(&ready, context)?;
        for read in &ready.failed_reads {
            self.read_keys.remove(&read.id);
            context.events.push(NodeEvent::ReadFailed { read: read.id });
        }
        self.waiting_reads.extend(ready.reads.iter().copied());
        self.serve_reads(context);
        for read in &ready.snapshot_reads {
            self.serve_snapshot_chunk(read);
        }
        self.maybe_snapshot(context);
        Ok(())
    }

    fn send_messages(&mut self, ready: &Ready, context: &mut NodeContext<'_>) -> Result<(), Violation> {
        let Some(engine) = self.engine.as_ref() else {
            return Ok(());
        };
        for message in &ready.messages {
            context.checker.check_sent(engine, &self.disk, message)?;
            let copies = context.network.send(message.clone(), context.now, context.rng);
            if context.trace.shows_messages() {
                context.trace.message(context.now, || {
                    format!(
                        "{} -> {} t{} {} x{copies}: {:?}",
                        message.from,
                        message.to,
                        message.term,
                        message.kind(),
                        message.body
                    )
                });
            }
        }
        Ok(())
    }

    fn buffer_writes(&mut self, ready: &Ready, context: &mut NodeContext<'_>) -> Result<(), Violation> {
        let Some(engine) = self.engine.as_ref() else {
            return Ok(());
        };
        context.checker.check_written_entries(engine, &ready.entries)?;
        if let Some(hard_state) = ready.hard_state {
            context.checker.check_emitted_hard_state(self.id, hard_state)?;
        }
        if let Some(write) = PendingWrite::from_ready(ready) {
            self.disk.write(write);
        }
        Ok(())
    }

    fn apply_committed(&mut self, ready: &Ready, context: &mut NodeContext<'_>) -> Result<(), Violation> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        for entry in &ready.committed_entries {
            if entry.index != self.kv.applied_index().next() {
                return Err(Violation {
                    step: context.now,
                    property: Property::StateMachineSafety,
                    details: format!(
                        "node {} was handed entry {} to apply after applying {}",
                        self.id,
                        entry.index,
                        self.kv.applied_index()
                    ),
                });
            }
            let result = self.kv.apply(entry);
            context.checker.check_applied(self.id, entry, StateDigest::of(&self.kv))?;
            if let Some(result) = result {
                let request = match &entry.payload {
                    EntryPayload::Command { client, .. } => *client,
                    _ => None,
                };
                context.events.push(NodeEvent::Applied {
                    node: self.id,
                    incarnation: self.incarnation,
                    index: entry.index,
                    term: entry.term,
                    request,
                    result,
                });
            } else {
                context.events.push(NodeEvent::AppliedOther { index: entry.index, term: entry.term });
            }
        }
        if let Some(last) = ready.committed_entries.last() {
            engine.applied(last.index);
        }
        Ok(())
    }

    /// Serves every confirmed read whose index the state machine reached.
    fn serve_reads(&mut self, context: &mut NodeContext<'_>) {
        let applied = self.kv.applied_index();
        let kv = &self.kv;
        let read_keys = &mut self.read_keys;
        let leader = self.engine.as_ref().is_some_and(|e| e.role() == crate::types::Role::Leader);
        let mut served = 0;
        self.waiting_reads.retain(|read| {
            if read.index > applied {
                return true;
            }
            if let Some(key) = read_keys.remove(&read.id) {
                context.events.push(NodeEvent::ReadServed { read: read.id, value: kv.get(key) });
                served += 1;
            }
            false
        });
        if !leader {
            self.follower_reads += served;
        }
    }

    fn serve_snapshot_chunk(&mut self, read: &SnapshotRead) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let stored = self.disk.snapshot().filter(|(meta, _)| meta.last_index == read.snapshot.last_index);
        let Some((meta, data)) = stored else {
            engine.snapshot_read_failed(read.to);
            return;
        };
        let length = data.len() as u64;
        if read.offset > length {
            engine.snapshot_read_failed(read.to);
            return;
        }
        let end = read.offset.saturating_add(read.max_bytes).min(length);
        let chunk = data.slice(read.offset as usize..end as usize);
        engine.snapshot_chunk_read(read.to, meta.last_index, read.offset, chunk, end == length);
    }

    /// The snapshot policy: every `snapshot_every_entries` applied entries.
    fn maybe_snapshot(&mut self, context: &mut NodeContext<'_>) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let applied = self.kv.applied_index();
        if applied.0 < self.last_snapshot_index.0 + self.snapshot_every_entries {
            return;
        }
        let Some(meta) = engine.snapshot_meta_at(applied) else {
            return;
        };
        if engine.snapshot_created(meta.clone()).is_ok() {
            self.disk.store_snapshot(meta, self.kv.encode_snapshot());
            self.last_snapshot_index = applied;
            self.snapshots_taken += 1;
            let id = self.id;
            context.trace.event(context.now, || format!("node {id}: snapshot at {applied}"));
        }
    }

    /// Makes the buffered writes durable and acknowledges them.
    pub fn sync(&mut self, context: &mut NodeContext<'_>) -> Result<(), Violation> {
        let Some(engine) = self.engine.as_mut() else {
            return Ok(());
        };
        let storage_error =
            |details: String| Violation { step: context.now, property: Property::StorageContract, details };
        let outcome = self.disk.sync().map_err(|e| storage_error(format!("node {}: {e}", self.id)))?;
        context.checker.check_durable(self.id, &self.disk)?;
        if let Some(meta) = outcome.installed {
            let Some((stored, data)) = self.disk.snapshot() else {
                return Err(storage_error(format!("node {}: installed snapshot missing", self.id)));
            };
            if *stored != meta || self.kv.applied_index() >= meta.last_index {
                return Err(storage_error(format!(
                    "node {}: install of snapshot at {} with the state machine at {}",
                    self.id,
                    meta.last_index,
                    self.kv.applied_index()
                )));
            }
            self.kv = KvStore::decode_snapshot(data)
                .map_err(|e| storage_error(format!("node {}: {e}", self.id)))?
                .with_bugs(self.kv_bugs);
            context.checker.check_restored(self.id, meta.last_index, StateDigest::of(&self.kv))?;
            engine.applied(meta.last_index);
            self.last_snapshot_index = meta.last_index;
            self.snapshots_installed += 1;
        }
        if let Some(id) = outcome.persisted {
            engine.persisted(id);
        }
        self.serve_reads(context);
        Ok(())
    }

    /// Crashes the node: volatile state is lost, and a random prefix of the
    /// unsynced writes reaches the disk.
    pub fn crash(
        &mut self,
        rng: &mut SimRng,
        now: u64,
        checker: &mut SafetyChecker,
    ) -> Result<Vec<ReadId>, Violation> {
        let survivors = rng.below(self.disk.pending_writes() as u64 + 1) as usize;
        self.disk.crash(survivors).map_err(|details| Violation {
            step: now,
            property: Property::StorageContract,
            details: format!("node {}: {details}", self.id),
        })?;
        self.engine = None;
        self.kv = KvStore::new(self.kv_bugs);
        self.waiting_reads.clear();
        checker.node_stopped(self.id);
        checker.check_durable(self.id, &self.disk)?;
        Ok(std::mem::take(&mut self.read_keys).into_keys().collect())
    }

    /// Restarts a crashed node from its disk.
    pub fn restart(
        &mut self,
        config: Config,
        bugs: InjectedBugs,
        now: u64,
        checker: &mut SafetyChecker,
    ) -> Result<(), Violation> {
        let fail = |property, details: String| Violation { step: now, property, details };
        let mut engine = Engine::restore(config, self.disk.restored_state()).map_err(|e| {
            fail(Property::Restore, format!("node {} cannot restart from its disk: {e}", self.id))
        })?;
        inject(&mut engine, bugs);
        self.kv = match self.disk.snapshot() {
            Some((meta, data)) => {
                let kv = KvStore::decode_snapshot(data)
                    .map_err(|e| fail(Property::StorageContract, format!("node {}: {e}", self.id)))?
                    .with_bugs(self.kv_bugs);
                checker.check_restored(self.id, meta.last_index, StateDigest::of(&kv))?;
                kv
            }
            None => KvStore::new(self.kv_bugs),
        };
        self.last_snapshot_index = self.kv.applied_index();
        self.incarnation += 1;
        self.restart_at = None;
        self.started_at = now;
        checker.node_started(&engine);
        self.engine = Some(engine);
        Ok(())
    }

    /// Shuts the node down for good (it left the cluster).
    pub fn retire(&mut self, checker: &mut SafetyChecker) -> Vec<ReadId> {
        self.engine = None;
        self.lifecycle = Lifecycle::Retired;
        self.restart_at = None;
        self.waiting_reads.clear();
        checker.node_stopped(self.id);
        std::mem::take(&mut self.read_keys).into_keys().collect()
    }
}
