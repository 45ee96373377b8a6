//! The driver task: owns the engine, batches inputs, dispatches each batch.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;

use super::apply::{ApplyEvent, ApplyJob, ApplyTask, Waiter};
use super::checkpoints::{restore_snapshot, Catalog, Checkpoints};
use super::proposals::Proposals;
use super::storage::{StorageEvent, StorageJob, StorageTask};
use super::{
    ClientError, CoarseClock, Command, Deadline, NodeStatus, Parts, ReadConsistency, RuntimeConfig,
    StartError, StartMode,
};
use crate::message::Message;
use crate::protocol::{Engine, MembershipChange, MembershipError, PersistId, ReadMode, Ready, SnapshotRead};
use crate::storage::{LogWrite, SnapshotStore, StorageError};
use crate::transport::Transport;
use crate::types::{LogIndex, NodeId, ReadId, Role, SnapshotMeta};

/// Completions reported to the driver by its helper tasks.
#[derive(Debug)]
pub(super) enum Event {
    Storage(StorageEvent),
    Apply(ApplyEvent),
    SnapshotChunk { to: NodeId, index: LogIndex, offset: u64, result: Result<(Bytes, bool), StorageError> },
}

type ReadReply = oneshot::Sender<Result<Bytes, ClientError>>;
type SnapshotReply = oneshot::Sender<Result<SnapshotMeta, ClientError>>;
type TransferReply = oneshot::Sender<Result<(), ClientError>>;

pub(super) struct Driver {
    engine: Engine,
    config: RuntimeConfig,
    transport: Arc<dyn Transport>,
    snapshot_store: Arc<dyn SnapshotStore>,
    commands: mpsc::Receiver<Command>,
    inbox: mpsc::Receiver<Message>,
    events: mpsc::UnboundedReceiver<Event>,
    events_sender: mpsc::UnboundedSender<Event>,
    storage_jobs: mpsc::UnboundedSender<StorageJob>,
    apply_jobs: mpsc::UnboundedSender<ApplyJob>,
    status: watch::Sender<NodeStatus>,
    /// Proposals waiting for their entry to be applied.
    proposals: Proposals,
    /// Reads waiting for the engine's confirmation, by read id (which is
    /// also arrival order), with their deadline.
    reads: BTreeMap<ReadId, (Bytes, ReadReply, Deadline)>,
    /// Confirmed reads waiting for their index to be handed to the apply task.
    confirmed_reads: VecDeque<(LogIndex, Bytes, ReadReply, Deadline)>,
    next_read_id: u64,
    /// The last index handed to the apply task.
    handed_out: LogIndex,
    /// Received snapshots to restore once their write is durable.
    installs: BTreeMap<PersistId, SnapshotMeta>,
    snapshot_in_progress: bool,
    snapshot_waiters: Vec<(SnapshotReply, Deadline)>,
    transfer_waiters: Vec<(TransferReply, Deadline)>,
    /// Membership changes that reached a leader before it committed an entry
    /// of its term; retried after every batch until their deadline.
    parked_changes: Vec<(MembershipChange, Waiter, Deadline)>,
    stopped: Option<String>,
    shutting_down: bool,
    /// The storage and apply tasks: shutdown waits for them, so the stores
    /// are released (and may be reopened) when it returns.
    helper_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Entries the last batch handed to storage (a sign of load).
    last_batch_entries: usize,
    /// The clock request deadlines are set on; refreshed every tick.
    clock: Arc<CoarseClock>,
}

impl Driver {
    pub(super) async fn start(
        config: RuntimeConfig,
        mode: StartMode,
        parts: Parts,
        commands: mpsc::Receiver<Command>,
        status: watch::Sender<NodeStatus>,
        clock: Arc<CoarseClock>,
        catalog: Catalog,
    ) -> Result<Driver, StartError> {
        let Parts { log_store, snapshot_store, checkpoint_store, mut state_machine, transport, inbox } =
            parts;
        let engine = super::restore_engine(&config, &mode, log_store.as_ref()).await?;
        let snapshot = engine.snapshot().clone();
        let checkpoints = Checkpoints { store: checkpoint_store, catalog };
        if snapshot.last_index > LogIndex(0) {
            restore_snapshot(state_machine.as_mut(), snapshot_store.as_ref(), &checkpoints, &snapshot)
                .await?;
        }
        let (events_sender, events) = mpsc::unbounded_channel();
        let (storage_jobs, storage_receiver) = mpsc::unbounded_channel();
        let (apply_jobs, apply_receiver) = mpsc::unbounded_channel();
        let storage_task = tokio::spawn(
            StorageTask {
                log_store,
                snapshot_store: Arc::clone(&snapshot_store),
                jobs: storage_receiver,
                events: events_sender.clone(),
            }
            .run(),
        );
        let apply_task = tokio::spawn(
            ApplyTask {
                state_machine,
                snapshot_store: Arc::clone(&snapshot_store),
                jobs: apply_receiver,
                events: events_sender.clone(),
                applied: (snapshot.last_index, snapshot.last_term),
                membership: snapshot.membership.clone(),
                checkpoints,
                max_checkpoints: config.checkpoint_limits.max_count,
            }
            .run(),
        );
        Ok(Driver {
            handed_out: snapshot.last_index,
            engine,
            config,
            transport,
            snapshot_store,
            commands,
            inbox,
            events,
            events_sender,
            storage_jobs,
            apply_jobs,
            status,
            proposals: Proposals::default(),
            reads: BTreeMap::new(),
            confirmed_reads: VecDeque::new(),
            next_read_id: 1,
            installs: BTreeMap::new(),
            snapshot_in_progress: false,
            snapshot_waiters: Vec::new(),
            transfer_waiters: Vec::new(),
            parked_changes: Vec::new(),
            stopped: None,
            shutting_down: false,
            helper_tasks: vec![storage_task, apply_task],
            last_batch_entries: 0,
            clock,
        })
    }

    pub(super) async fn run(mut self) {
        let mut ticker = tokio::time::interval(self.config.tick_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        while !self.shutting_down && self.stopped.is_none() {
            tokio::select! {
                biased;
                Some(event) = self.events.recv() => self.handle_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.handle_command(command),
                    None => self.shutting_down = true,
                },
                Some(message) = self.inbox.recv() => { let _ = self.engine.step(message); }
                _ = ticker.tick() => self.handle_tick(),
            }
            if self.expects_more_input() {
                // Tokio runs a task woken by another right after the waker's
                // poll (its "LIFO slot"). Clients answered together by the
                // apply task each send their next proposal in turn, so the
                // driver would otherwise run once per proposal of the burst
                // (measured: 1.7 entries per batch with 64 clients). Yielding
                // once lets the burst finish queueing first. A node that is
                // not busy does not yield: that would add a scheduler round
                // trip to every wake-up.
                tokio::task::yield_now().await;
            }
            self.drain_queued_inputs();
            if self.engine.has_ready() {
                let ready = self.engine.ready();
                self.dispatch(ready);
            }
            self.release_confirmed_reads();
            self.retry_parked_changes();
        }
        self.stop();
        // Closing the job queues ends the helper tasks once they finished
        // what was queued (queued writes complete); wait for them.
        let helper_tasks = std::mem::take(&mut self.helper_tasks);
        drop(self);
        for task in helper_tasks {
            let _ = task.await;
        }
    }

    /// Whether more inputs are probably on their way: several clients wait
    /// for proposals (their next ones follow the answers), or the last batch
    /// persisted more than one entry (this node is busy replicating).
    fn expects_more_input(&self) -> bool {
        self.proposals.waiting() > 1 || self.last_batch_entries > 1
    }

    /// Takes every input already queued, up to the batch bound, so that one
    /// `ready()` covers them all. Each queue is emptied in turn (completions,
    /// then messages, then client commands) rather than one input from each
    /// in rotation, which cost two failed polls per client command.
    fn drain_queued_inputs(&mut self) {
        let mut budget = self.config.max_inputs_per_batch;
        loop {
            let before = budget;
            while budget > 0 {
                let Ok(event) = self.events.try_recv() else { break };
                self.handle_event(event);
                budget -= 1;
            }
            while budget > 0 {
                let Ok(message) = self.inbox.try_recv() else { break };
                let _ = self.engine.step(message);
                budget -= 1;
            }
            while budget > 0 {
                let Ok(command) = self.commands.try_recv() else { break };
                self.handle_command(command);
                budget -= 1;
            }
            if budget == 0 || budget == before {
                return;
            }
        }
    }

    fn handle_tick(&mut self) {
        self.engine.tick();
        if !self.transfer_waiters.is_empty()
            && self.engine.role() == Role::Leader
            && self.engine.status().transfer_target.is_none()
        {
            for (waiter, _) in self.transfer_waiters.drain(..) {
                let _ = waiter.send(Err(ClientError::Timeout));
            }
        }
        let now = self.clock.refresh();
        self.expire_requests(now);
        self.publish_status();
    }

    /// Answers [`ClientError::Timeout`] to every request whose deadline has
    /// passed and forgets those whose client stopped waiting. Proposals and
    /// reads arrive in deadline order, so only their expired front is
    /// visited; the other lists are short.
    fn expire_requests(&mut self, now: Deadline) {
        self.proposals.expire(now);
        while let Some(entry) = self.reads.first_entry() {
            let (_, reply, deadline) = entry.get();
            if *deadline > now && !reply.is_closed() {
                break;
            }
            let (_, reply, _) = entry.remove();
            let _ = reply.send(Err(ClientError::Timeout));
        }
        let expired = |reply: &ReadReply, deadline: Deadline| deadline <= now || reply.is_closed();
        if self.confirmed_reads.iter().any(|(_, _, reply, deadline)| expired(reply, *deadline)) {
            let mut kept = VecDeque::with_capacity(self.confirmed_reads.len());
            for (index, query, reply, deadline) in self.confirmed_reads.drain(..) {
                if expired(&reply, deadline) {
                    let _ = reply.send(Err(ClientError::Timeout));
                } else {
                    kept.push_back((index, query, reply, deadline));
                }
            }
            self.confirmed_reads = kept;
        }
        for (change, reply, deadline) in std::mem::take(&mut self.parked_changes) {
            if deadline <= now || reply.is_closed() {
                let _ = reply.send(Err(ClientError::Timeout));
            } else {
                self.parked_changes.push((change, reply, deadline));
            }
        }
        expire_waiters(&mut self.snapshot_waiters, now);
        expire_waiters(&mut self.transfer_waiters, now);
    }

    fn handle_command(&mut self, command: Command) {
        match command {
            Command::Propose { data, client, reply, deadline } => match self.engine.propose(data, client) {
                Ok((term, index)) => self.proposals.insert(term, index, reply, deadline),
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                }
            },
            Command::Read { query, consistency, reply, deadline } => {
                self.start_read(query, consistency, reply, deadline)
            }
            Command::ChangeMembership { change, reply, deadline } => {
                self.change_membership(change, reply, deadline)
            }
            Command::TransferLeadership { target, reply, deadline } => {
                match self.engine.transfer_leadership(target) {
                    Ok(()) => self.transfer_waiters.push((reply, deadline)),
                    Err(error) => {
                        let _ = reply.send(Err(error.into()));
                    }
                }
            }
            Command::TriggerSnapshot { reply, deadline } => {
                self.snapshot_waiters.push((reply, deadline));
                self.start_snapshot();
            }
            Command::Checkpoint { op, reply, deadline } => match self.engine.propose_checkpoint(op) {
                Ok((term, index)) => self.proposals.insert(term, index, reply, deadline),
                Err(error) => {
                    let _ = reply.send(Err(error.into()));
                }
            },
            Command::Campaign => self.engine.campaign_now(),
            Command::Shutdown => self.shutting_down = true,
        }
    }

    fn change_membership(&mut self, change: MembershipChange, reply: Waiter, deadline: Deadline) {
        match self.engine.change_membership(change.clone()) {
            Ok((term, index)) => self.proposals.insert(term, index, reply, deadline),
            Err(MembershipError::NotReady) if !reply.is_closed() => {
                self.parked_changes.push((change, reply, deadline))
            }
            Err(error) => {
                let _ = reply.send(Err(error.into()));
            }
        }
    }

    fn retry_parked_changes(&mut self) {
        if self.parked_changes.is_empty()
            || self.engine.role() == Role::Leader && !self.engine.committed_in_term()
        {
            return;
        }
        for (change, reply, deadline) in std::mem::take(&mut self.parked_changes) {
            self.change_membership(change, reply, deadline);
        }
    }

    fn start_read(
        &mut self,
        query: Bytes,
        consistency: ReadConsistency,
        reply: ReadReply,
        deadline: Deadline,
    ) {
        let mode = match consistency {
            ReadConsistency::Stale => {
                let _ = self.apply_jobs.send(ApplyJob::Read { query, reply });
                return;
            }
            ReadConsistency::Linearizable => ReadMode::ReadIndex,
            ReadConsistency::Lease => ReadMode::Lease,
        };
        let id = ReadId(self.next_read_id);
        self.next_read_id += 1;
        match self.engine.read_index(id, mode) {
            Ok(()) => {
                self.reads.insert(id, (query, reply, deadline));
            }
            Err(error) => {
                let _ = reply.send(Err(error.into()));
            }
        }
    }

    fn start_snapshot(&mut self) {
        if !self.snapshot_in_progress {
            self.snapshot_in_progress = true;
            let _ = self.apply_jobs.send(ApplyJob::Snapshot);
        }
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Storage(StorageEvent::Persisted(id)) => {
                self.engine.persisted(id);
                let done: Vec<PersistId> = self.installs.range(..=id).map(|(k, _)| *k).collect();
                for key in done {
                    if let Some(meta) = self.installs.remove(&key) {
                        self.handed_out = self.handed_out.max(meta.last_index);
                        let _ = self.apply_jobs.send(ApplyJob::Restore(meta));
                    }
                }
            }
            Event::Storage(StorageEvent::Failed(error)) => self.fail(format!("storage failed: {error}")),
            Event::Apply(ApplyEvent::Applied(index)) => {
                self.engine.applied(index);
                if self.engine.log_len() as u64 > self.config.snapshot_policy.max_log_entries {
                    self.start_snapshot();
                }
            }
            Event::Apply(ApplyEvent::SnapshotBuilt(meta)) => self.snapshot_built(meta),
            Event::Apply(ApplyEvent::SnapshotFailed(reason)) => {
                self.snapshot_in_progress = false;
                tracing::warn!(node = %self.engine.id(), %reason, "building a snapshot failed");
                for (waiter, _) in self.snapshot_waiters.drain(..) {
                    let _ = waiter.send(Err(ClientError::StateMachine(reason.clone())));
                }
            }
            Event::Apply(ApplyEvent::Failed(error)) => self.fail(format!("state machine failed: {error}")),
            Event::SnapshotChunk { to, index, offset, result } => match result {
                Ok((data, done)) => self.engine.snapshot_chunk_read(to, index, offset, data, done),
                Err(_) => self.engine.snapshot_read_failed(to),
            },
        }
    }

    fn snapshot_built(&mut self, meta: SnapshotMeta) {
        self.snapshot_in_progress = false;
        let result = match self.engine.snapshot_created(meta.clone()) {
            Ok(()) => {
                let _ = self.storage_jobs.send(StorageJob::SetSnapshot(meta.clone()));
                Ok(meta)
            }
            // A newer snapshot (received from the leader) is already current.
            Err(_) => Ok(self.engine.snapshot().clone()),
        };
        for (waiter, _) in self.snapshot_waiters.drain(..) {
            let _ = waiter.send(result.clone());
        }
    }

    /// Hands one batch of the engine's work to whoever must do it.
    fn dispatch(&mut self, ready: Ready) {
        self.last_batch_entries = ready.entries.len();
        if !ready.messages.is_empty() {
            self.transport.send(ready.messages);
        }
        if let (Some(meta), Some(id)) = (&ready.install_snapshot, ready.persist_id) {
            self.installs.insert(id, meta.clone());
        }
        let write = LogWrite {
            install_snapshot: ready.install_snapshot,
            entries: ready.entries,
            hard_state: ready.hard_state,
            sync: ready.persist_id.is_some(),
        };
        if !write.is_empty() || !ready.snapshot_chunks.is_empty() || ready.persist_id.is_some() {
            let _ = self.storage_jobs.send(StorageJob::Write {
                persist_id: ready.persist_id,
                chunks: ready.snapshot_chunks,
                write,
            });
        }
        if let Some(last) = ready.committed_entries.last() {
            let last_index = last.index;
            let mut waiters = Vec::new();
            self.proposals.take_committed(&ready.committed_entries, &mut waiters);
            self.handed_out = last_index;
            let _ = self.apply_jobs.send(ApplyJob::Entries { entries: ready.committed_entries, waiters });
        }
        for read in ready.reads {
            if let Some((query, reply, deadline)) = self.reads.remove(&read.id) {
                self.confirmed_reads.push_back((read.index, query, reply, deadline));
            }
        }
        for failed in ready.failed_reads {
            if let Some((_, reply, _)) = self.reads.remove(&failed.id) {
                let _ = reply.send(Err(failed.error.into()));
            }
        }
        for read in ready.snapshot_reads {
            self.read_snapshot_chunk(read);
        }
        if let Some(index) = ready.compact_to {
            let _ = self.storage_jobs.send(StorageJob::Compact(index));
        }
        if let Some(soft) = ready.soft_state {
            if soft.role != Role::Leader {
                for (waiter, _) in self.transfer_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
            }
            self.publish_status();
        }
    }

    /// Sends confirmed reads to the apply task once the entries they must
    /// see are on their way there (the apply task handles jobs in order).
    fn release_confirmed_reads(&mut self) {
        while self.confirmed_reads.front().is_some_and(|(index, ..)| *index <= self.handed_out) {
            if let Some((_, query, reply, _)) = self.confirmed_reads.pop_front() {
                let _ = self.apply_jobs.send(ApplyJob::Read { query, reply });
            }
        }
    }

    fn read_snapshot_chunk(&self, read: SnapshotRead) {
        let store = Arc::clone(&self.snapshot_store);
        let events = self.events_sender.clone();
        tokio::spawn(async move {
            let index = read.snapshot.last_index;
            let result = match store.open(index).await {
                Ok(mut reader) => reader.read_at(read.offset, read.max_bytes).await,
                Err(error) => Err(error),
            };
            let _ = events.send(Event::SnapshotChunk { to: read.to, index, offset: read.offset, result });
        });
    }

    fn publish_status(&self) {
        let status = self.engine.status();
        let peers = status.peers.iter().map(|p| (p.id, p.match_index)).collect();
        self.status.send_replace(NodeStatus {
            id: status.id,
            role: Some(status.role),
            term: status.term,
            leader: status.leader,
            commit_index: status.commit_index,
            applied_index: status.applied_index,
            last_index: status.last_index,
            snapshot_index: status.snapshot_index,
            membership: status.membership,
            peers,
            stats: self.engine.stats(),
            stopped: self.stopped.clone(),
        });
    }

    fn fail(&mut self, reason: String) {
        tracing::error!(node = %self.engine.id(), %reason, "stopping the node");
        self.stopped = Some(reason);
    }

    /// Fails everything still waiting and publishes the final status.
    fn stop(&mut self) {
        let error = match &self.stopped {
            Some(reason) => ClientError::Storage(reason.clone()),
            None => ClientError::Shutdown,
        };
        self.proposals.fail_all(&error);
        for (_, (_, reply, _)) in std::mem::take(&mut self.reads) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, reply, _) in self.parked_changes.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        for (_, _, reply, _) in self.confirmed_reads.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
        if self.stopped.is_none() {
            self.stopped = Some("shut down".into());
        }
        self.publish_status();
    }
}

/// Answers [`ClientError::Timeout`] to the waiters in `list` whose deadline
/// passed or whose client stopped waiting; keeps the others in order.
fn expire_waiters<T>(list: &mut Vec<(oneshot::Sender<Result<T, ClientError>>, Deadline)>, now: Deadline) {
    for (reply, deadline) in std::mem::take(list) {
        if deadline <= now || reply.is_closed() {
            let _ = reply.send(Err(ClientError::Timeout));
        } else {
            list.push((reply, deadline));
        }
    }
}
