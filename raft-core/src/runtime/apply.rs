//! The apply task: applies committed entries to the state machine, carries
//! out checkpoint operations between them, answers reads after the entries
//! they must see, and builds snapshots.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::checkpoints::{self, Checkpoints, EnvelopedSource, OpOutcome};
use super::driver::Event;
use super::{ClientError, Committed};
use crate::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use crate::storage::{CheckpointMeta, SnapshotStore};
use crate::types::{CheckpointOp, Entry, EntryPayload, LogIndex, Membership, SnapshotMeta, Term};

/// A client waiting for its proposal's outcome.
pub(super) type Waiter = oneshot::Sender<Result<Committed, ClientError>>;

/// Work for the apply task, executed in order.
pub(super) enum ApplyJob {
    /// Committed entries, with the clients waiting on some of them.
    Entries { entries: Vec<Entry>, waiters: Vec<(LogIndex, Waiter)> },
    /// Replace the state with this (durable, received) snapshot.
    Restore(SnapshotMeta),
    /// Answer a query against the state as it is now.
    Read { query: Bytes, reply: oneshot::Sender<Result<Bytes, ClientError>> },
    /// Build a snapshot of the state as of the last applied entry.
    Snapshot,
}

/// What the apply task reports to the driver.
#[derive(Debug)]
pub(super) enum ApplyEvent {
    /// Everything up to this index is applied.
    Applied(LogIndex),
    /// A snapshot is durable in the snapshot store.
    SnapshotBuilt(SnapshotMeta),
    /// Building a snapshot failed (the node goes on; a later one may work).
    SnapshotFailed(String),
    /// The state machine failed; the node must stop.
    Failed(StateMachineError),
}

pub(super) struct ApplyTask {
    pub(super) state_machine: Box<dyn StateMachine>,
    pub(super) snapshot_store: Arc<dyn SnapshotStore>,
    pub(super) jobs: mpsc::UnboundedReceiver<ApplyJob>,
    pub(super) events: mpsc::UnboundedSender<Event>,
    /// The last applied entry and the configuration in force at it.
    pub(super) applied: (LogIndex, Term),
    pub(super) membership: Membership,
    pub(super) checkpoints: Checkpoints,
    /// The most checkpoints retained (a replicated decision, see
    /// [`super::checkpoints`]).
    pub(super) max_checkpoints: usize,
}

impl ApplyTask {
    pub(super) async fn run(mut self) {
        while let Some(job) = self.jobs.recv().await {
            let result = match job {
                ApplyJob::Entries { entries, waiters } => self.apply(entries, waiters).await,
                ApplyJob::Restore(meta) => self.restore(meta).await,
                ApplyJob::Read { query, reply } => {
                    let answer = self.state_machine.query(query).await;
                    let _ = reply.send(answer.map_err(|e| ClientError::StateMachine(e.to_string())));
                    Ok(())
                }
                ApplyJob::Snapshot => {
                    self.snapshot().await;
                    Ok(())
                }
            };
            if let Err(error) = result {
                let _ = self.events.send(Event::Apply(ApplyEvent::Failed(error)));
                return;
            }
        }
    }

    /// Applies a batch of committed entries. Runs of ordinary entries go to
    /// the state machine in one call; a checkpoint entry ends a run and is
    /// carried out in its place in the order (see [`super::checkpoints`]).
    async fn apply(
        &mut self,
        entries: Vec<Entry>,
        waiters: Vec<(LogIndex, Waiter)>,
    ) -> Result<(), StateMachineError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let (last_index, last_term) = (last.index, last.term);
        let mut waiters: BTreeMap<LogIndex, Waiter> = waiters.into_iter().collect();
        let mut run_start = 0;
        for (position, entry) in entries.iter().enumerate() {
            let EntryPayload::Checkpoint(op) = &entry.payload else {
                continue;
            };
            let waiter = waiters.remove(&entry.index);
            match op {
                CheckpointOp::Rollback { .. } => {
                    // The state is restored before the entry reaches the
                    // state machine, which then records it as applied.
                    self.apply_run(&entries[run_start..position], &mut waiters).await?;
                    let outcome =
                        self.checkpoints.rollback(self.state_machine.as_mut(), op, entry.index).await?;
                    self.apply_run(&entries[position..=position], &mut waiters).await?;
                    answer(waiter, entry, outcome);
                }
                CheckpointOp::Create { name, created_unix_ms } => {
                    self.apply_run(&entries[run_start..=position], &mut waiters).await?;
                    let meta = CheckpointMeta {
                        name: name.clone(),
                        snapshot: SnapshotMeta {
                            last_index: entry.index,
                            last_term: entry.term,
                            membership: self.membership.clone(),
                        },
                        created_unix_ms: *created_unix_ms,
                    };
                    let (outcome, writing) = self
                        .checkpoints
                        .create(self.state_machine.as_mut(), op, meta, self.max_checkpoints)
                        .await?;
                    match writing {
                        // The client hears back once the checkpoint is durable.
                        Some(mut done) => {
                            let entry = entry.clone();
                            let catalog = self.checkpoints.catalog.clone();
                            let name = name.clone();
                            tokio::spawn(async move {
                                let _ = done.wait_for(|ended| *ended).await;
                                let outcome = match catalog.ready_at(&name, entry.index) {
                                    Some(_) => Ok(()),
                                    None => Err(checkpoints::CheckpointError::Storage(format!(
                                        "checkpoint {name:?} could not be written on this node"
                                    ))),
                                };
                                answer(waiter, &entry, outcome);
                            });
                        }
                        None => answer(waiter, entry, outcome),
                    }
                }
                CheckpointOp::Delete { .. } => {
                    self.apply_run(&entries[run_start..=position], &mut waiters).await?;
                    let outcome = self.checkpoints.delete(op, entry.index).await?;
                    answer(waiter, entry, outcome);
                }
            }
            run_start = position + 1;
        }
        self.apply_run(&entries[run_start..], &mut waiters).await?;
        self.applied = (last_index, last_term);
        let _ = self.events.send(Event::Apply(ApplyEvent::Applied(last_index)));
        Ok(())
    }

    /// Passes consecutive entries to the state machine and answers their
    /// waiters (a checkpoint entry's waiter was taken out before).
    async fn apply_run(
        &mut self,
        entries: &[Entry],
        waiters: &mut BTreeMap<LogIndex, Waiter>,
    ) -> Result<(), StateMachineError> {
        if entries.is_empty() {
            return Ok(());
        }
        let responses = self.state_machine.apply(entries).await?;
        for (position, entry) in entries.iter().enumerate() {
            if let EntryPayload::Membership(membership) = &entry.payload {
                self.membership = membership.clone();
            }
            if let Some(waiter) = waiters.remove(&entry.index) {
                let response = responses.get(position).cloned().unwrap_or_default();
                let _ = waiter.send(Ok(Committed { term: entry.term, index: entry.index, response }));
            }
        }
        Ok(())
    }

    async fn restore(&mut self, meta: SnapshotMeta) -> Result<(), StateMachineError> {
        checkpoints::restore_snapshot(
            self.state_machine.as_mut(),
            self.snapshot_store.as_ref(),
            &self.checkpoints,
            &meta,
        )
        .await?;
        self.applied = (meta.last_index, meta.last_term);
        self.membership = meta.membership.clone();
        let _ = self.events.send(Event::Apply(ApplyEvent::Applied(meta.last_index)));
        Ok(())
    }

    /// Captures the state now and streams it to the snapshot store in the
    /// background, so applying goes on meanwhile.
    async fn snapshot(&mut self) {
        let meta = SnapshotMeta {
            last_index: self.applied.0,
            last_term: self.applied.1,
            membership: self.membership.clone(),
        };
        let source = match self.state_machine.begin_snapshot().await {
            Ok(source) => source,
            Err(error) => {
                let _ = self.events.send(Event::Apply(ApplyEvent::SnapshotFailed(error.to_string())));
                return;
            }
        };
        let store = Arc::clone(&self.snapshot_store);
        let events = self.events.clone();
        let checkpoint_store = Arc::clone(&self.checkpoints.store);
        // The catalog as of this index; writes still in progress are waited
        // for in the background.
        let retained = self.checkpoints.catalog_now();
        tokio::spawn(async move {
            let checkpoints = retained.settled().await;
            let source: Box<dyn SnapshotSource> =
                Box::new(EnvelopedSource::new(checkpoints, checkpoint_store, source));
            let event = match write_snapshot(store.as_ref(), meta.clone(), source).await {
                Ok(()) => ApplyEvent::SnapshotBuilt(meta),
                Err(error) => ApplyEvent::SnapshotFailed(error.to_string()),
            };
            let _ = events.send(Event::Apply(event));
        });
    }
}

/// Streams a state machine snapshot into the snapshot store.
pub(super) async fn write_snapshot(
    store: &dyn SnapshotStore,
    meta: SnapshotMeta,
    mut source: Box<dyn SnapshotSource>,
) -> Result<(), StateMachineError> {
    let mut writer = store.create(meta).await?;
    while let Some(chunk) = source.next_chunk().await? {
        writer.write(chunk).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Answers the client of a checkpoint operation.
fn answer(waiter: Option<Waiter>, entry: &Entry, outcome: OpOutcome) {
    if let Some(waiter) = waiter {
        let result = outcome
            .map(|()| Committed { term: entry.term, index: entry.index, response: Bytes::new() })
            .map_err(ClientError::Checkpoint);
        let _ = waiter.send(result);
    }
}
