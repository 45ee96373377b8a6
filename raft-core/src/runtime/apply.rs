//! The apply task: applies committed entries to the state machine, answers
//! reads after the entries they must see, and builds snapshots.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::driver::Event;
use super::{ClientError, Committed};
use crate::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use crate::storage::SnapshotStore;
use crate::types::{Entry, EntryPayload, LogIndex, Membership, SnapshotMeta, Term};

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

    async fn apply(
        &mut self,
        entries: Vec<Entry>,
        waiters: Vec<(LogIndex, Waiter)>,
    ) -> Result<(), StateMachineError> {
        let Some(last) = entries.last() else {
            return Ok(());
        };
        let (last_index, last_term) = (last.index, last.term);
        let responses = self.state_machine.apply(&entries).await?;
        for entry in &entries {
            if let EntryPayload::Membership(membership) = &entry.payload {
                self.membership = membership.clone();
            }
        }
        let first_index = entries[0].index;
        for (index, waiter) in waiters {
            let position = (index.get() - first_index.get()) as usize;
            let response = responses.get(position).cloned().unwrap_or_default();
            let term = entries.get(position).map_or(Term(0), |e| e.term);
            let _ = waiter.send(Ok(Committed { term, index, response }));
        }
        self.applied = (last_index, last_term);
        let _ = self.events.send(Event::Apply(ApplyEvent::Applied(last_index)));
        Ok(())
    }

    async fn restore(&mut self, meta: SnapshotMeta) -> Result<(), StateMachineError> {
        let mut reader = self.snapshot_store.open(meta.last_index).await?;
        self.state_machine.restore(reader.as_mut()).await?;
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
        tokio::spawn(async move {
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
