//! The storage task: executes the engine's writes in order, merging the
//! writes already queued into one durable write (group commit).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::protocol::{PersistId, SnapshotChunkWrite};
use crate::storage::{LogStore, LogWrite, SnapshotStore, SnapshotWriter, StorageError};
use crate::types::{LogIndex, SnapshotMeta};

/// The most queued jobs merged into one write.
const MAX_JOBS_PER_WRITE: usize = 1024;

/// Work for the storage task, executed in the order received.
#[derive(Debug)]
pub(super) enum StorageJob {
    /// The durable part of one `Ready`.
    Write { persist_id: Option<PersistId>, chunks: Vec<SnapshotChunkWrite>, write: LogWrite },
    /// A locally built snapshot is finished in the snapshot store: make it
    /// the log store's current snapshot.
    SetSnapshot(SnapshotMeta),
    /// Remove log entries up to and including this index.
    Compact(LogIndex),
}

/// What the storage task reports to the driver.
#[derive(Debug)]
pub(super) enum StorageEvent {
    /// Every write up to this id is durable.
    Persisted(PersistId),
    /// Storage failed; the node must stop.
    Failed(StorageError),
}

/// A snapshot being received from the leader.
struct Receiving {
    meta: SnapshotMeta,
    writer: Box<dyn SnapshotWriter>,
}

pub(super) struct StorageTask {
    pub(super) log_store: Arc<dyn LogStore>,
    pub(super) snapshot_store: Arc<dyn SnapshotStore>,
    pub(super) jobs: mpsc::UnboundedReceiver<StorageJob>,
    pub(super) events: mpsc::UnboundedSender<super::driver::Event>,
}

impl StorageTask {
    pub(super) async fn run(mut self) {
        let mut receiving: Option<Receiving> = None;
        while let Some(first) = self.jobs.recv().await {
            if matches!(&first, StorageJob::Write { write, .. } if write.entries.len() > 1) {
                // A write of several entries means the node is busy: let the
                // driver queue its next write first, so they merge into one
                // (the driver's batch wakes this task at once otherwise). An
                // idle node's lone entry is written without the detour.
                tokio::task::yield_now().await;
            }
            let mut jobs = vec![first];
            while jobs.len() < MAX_JOBS_PER_WRITE {
                match self.jobs.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            if let Err(error) = self.execute(jobs, &mut receiving).await {
                let _ = self.events.send(super::driver::Event::Storage(StorageEvent::Failed(error)));
                return;
            }
        }
    }

    /// Executes a run of jobs, merging consecutive plain writes.
    async fn execute(
        &self,
        jobs: Vec<StorageJob>,
        receiving: &mut Option<Receiving>,
    ) -> Result<(), StorageError> {
        let mut merged: Option<(LogWrite, Option<PersistId>)> = None;
        for job in jobs {
            match job {
                StorageJob::Write { persist_id, chunks, write }
                    if chunks.is_empty() && write.install_snapshot.is_none() =>
                {
                    let (into, id) = merged.get_or_insert_with(|| (LogWrite::default(), None));
                    merge_write(into, write);
                    *id = persist_id.or(*id);
                }
                other => {
                    self.flush(merged.take()).await?;
                    self.execute_one(other, receiving).await?;
                }
            }
        }
        self.flush(merged).await
    }

    async fn flush(&self, merged: Option<(LogWrite, Option<PersistId>)>) -> Result<(), StorageError> {
        let Some((write, persist_id)) = merged else {
            return Ok(());
        };
        if !write.is_empty() {
            self.log_store.write(write).await?;
        }
        if let Some(id) = persist_id {
            let _ = self.events.send(super::driver::Event::Storage(StorageEvent::Persisted(id)));
        }
        Ok(())
    }

    async fn execute_one(
        &self,
        job: StorageJob,
        receiving: &mut Option<Receiving>,
    ) -> Result<(), StorageError> {
        match job {
            StorageJob::Write { persist_id, chunks, write } => {
                for chunk in chunks {
                    self.write_chunk(chunk, receiving).await?;
                }
                let installed = write.install_snapshot.as_ref().map(|meta| meta.last_index);
                if !write.is_empty() {
                    self.log_store.write(write).await?;
                }
                if let Some(index) = installed {
                    // The installed snapshot replaces every older one.
                    self.snapshot_store.retain(index).await?;
                }
                if let Some(id) = persist_id {
                    let _ = self.events.send(super::driver::Event::Storage(StorageEvent::Persisted(id)));
                }
            }
            StorageJob::SetSnapshot(meta) => {
                self.log_store.set_snapshot(meta.clone()).await?;
                self.snapshot_store.retain(meta.last_index).await?;
            }
            StorageJob::Compact(index) => self.log_store.compact(index).await?,
        }
        Ok(())
    }

    async fn write_chunk(
        &self,
        chunk: SnapshotChunkWrite,
        receiving: &mut Option<Receiving>,
    ) -> Result<(), StorageError> {
        if chunk.offset == 0 {
            // A new transfer replaces any partial one.
            let writer = self.snapshot_store.create(chunk.snapshot.clone()).await?;
            *receiving = Some(Receiving { meta: chunk.snapshot.clone(), writer });
        }
        let Some(current) = receiving.as_mut() else {
            return Err(StorageError::ChunkOutOfOrder { offset: chunk.offset, expected: 0 });
        };
        if current.meta != chunk.snapshot {
            return Err(StorageError::Backend("snapshot chunk for a snapshot not being received".into()));
        }
        current.writer.write(chunk.data).await?;
        if chunk.done {
            if let Some(done) = receiving.take() {
                done.writer.finish().await?;
            }
        }
        Ok(())
    }
}

/// Folds a later write into an earlier one: later entries overwrite from
/// their first index on; the later hard state wins.
fn merge_write(into: &mut LogWrite, mut later: LogWrite) {
    if into.entries.is_empty() {
        // The common case of a lone write: take its entries without copying.
        std::mem::swap(&mut into.entries, &mut later.entries);
    } else if let Some(first) = later.entries.first() {
        let first_index = first.index;
        into.entries.retain(|e| e.index < first_index);
        into.entries.extend(later.entries);
    }
    if later.hard_state.is_some() {
        into.hard_state = later.hard_state;
    }
    into.sync |= later.sync;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Entry, EntryPayload, HardState, Term};

    fn entry(index: u64, term: u64) -> Entry {
        Entry { term: Term(term), index: LogIndex(index), payload: EntryPayload::Blank }
    }

    #[test]
    fn merging_keeps_later_entries_and_hard_state() {
        let mut write =
            LogWrite { entries: vec![entry(1, 1), entry(2, 1), entry(3, 1)], ..LogWrite::default() };
        merge_write(
            &mut write,
            LogWrite {
                entries: vec![entry(2, 2)],
                hard_state: Some(HardState { term: Term(2), ..HardState::default() }),
                sync: true,
                ..LogWrite::default()
            },
        );
        let indexes: Vec<_> = write.entries.iter().map(|e| (e.index.get(), e.term.get())).collect();
        assert_eq!(indexes, vec![(1, 1), (2, 2)]);
        assert_eq!(write.hard_state.map(|h| h.term), Some(Term(2)));
        assert!(write.sync);
    }
}
