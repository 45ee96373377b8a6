//! Wrappers that time the node's storage and state machine for metrics,
//! at the edge, so raft-core stays free of any metrics dependency.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use raft_core::protocol::RestoredState;
use raft_core::state_machine::{SnapshotSource, StateMachine, StateMachineError};
use raft_core::storage::{LogStore, LogWrite, SnapshotReader, StorageError};
use raft_core::types::{Entry, LogIndex, SnapshotMeta};
use raft_metrics::NodeMetrics;

/// A [`LogStore`] that records each durable write's latency and size.
pub struct TimedLogStore {
    inner: Arc<dyn LogStore>,
    metrics: Arc<NodeMetrics>,
}

impl TimedLogStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn LogStore>, metrics: Arc<NodeMetrics>) -> Self {
        TimedLogStore { inner, metrics }
    }
}

#[async_trait]
impl LogStore for TimedLogStore {
    async fn read_state(&self) -> Result<RestoredState, StorageError> {
        self.inner.read_state().await
    }

    async fn write(&self, write: LogWrite) -> Result<(), StorageError> {
        let entries = write.entries.len();
        let sync = write.sync;
        let started = Instant::now();
        let result = self.inner.write(write).await;
        if sync && result.is_ok() {
            self.metrics.observe_storage_append(entries, started.elapsed());
        }
        result
    }

    async fn set_snapshot(&self, meta: SnapshotMeta) -> Result<(), StorageError> {
        self.inner.set_snapshot(meta).await
    }

    async fn compact(&self, up_to: LogIndex) -> Result<(), StorageError> {
        self.inner.compact(up_to).await
    }

    async fn entries(&self, from: LogIndex, to: LogIndex) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(from, to).await
    }
}

/// A [`StateMachine`] that records apply latency, snapshot creation (size
/// and duration, measured over the whole snapshot stream) and installs.
pub struct TimedStateMachine<M> {
    inner: M,
    metrics: Arc<NodeMetrics>,
}

impl<M> TimedStateMachine<M> {
    /// Wraps `inner`.
    pub fn new(inner: M, metrics: Arc<NodeMetrics>) -> Self {
        TimedStateMachine { inner, metrics }
    }
}

#[async_trait]
impl<M: StateMachine> StateMachine for TimedStateMachine<M> {
    async fn apply(&mut self, entries: &[Entry]) -> Result<Vec<Bytes>, StateMachineError> {
        let started = Instant::now();
        let result = self.inner.apply(entries).await;
        self.metrics.observe_apply(started.elapsed());
        result
    }

    async fn query(&mut self, query: Bytes) -> Result<Bytes, StateMachineError> {
        self.inner.query(query).await
    }

    async fn begin_snapshot(&mut self) -> Result<Box<dyn SnapshotSource>, StateMachineError> {
        let started = Instant::now();
        let inner = self.inner.begin_snapshot().await?;
        Ok(Box::new(TimedSnapshotSource { inner, metrics: Arc::clone(&self.metrics), started, bytes: 0 }))
    }

    async fn restore(&mut self, snapshot: &mut dyn SnapshotReader) -> Result<(), StateMachineError> {
        let started = Instant::now();
        let mut counting = CountingReader { inner: snapshot, bytes: 0 };
        self.inner.restore(&mut counting).await?;
        self.metrics.observe_snapshot_installed(counting.bytes, started.elapsed());
        Ok(())
    }

    /// Forwarded as is: the default would call `restore` above, rolling the
    /// whole state back (and counting the rollback as a snapshot install).
    async fn restore_checkpoint(
        &mut self,
        checkpoint: &mut dyn SnapshotReader,
    ) -> Result<(), StateMachineError> {
        self.inner.restore_checkpoint(checkpoint).await
    }
}

struct TimedSnapshotSource {
    inner: Box<dyn SnapshotSource>,
    metrics: Arc<NodeMetrics>,
    started: Instant,
    bytes: u64,
}

#[async_trait]
impl SnapshotSource for TimedSnapshotSource {
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, StateMachineError> {
        let chunk = self.inner.next_chunk().await?;
        match &chunk {
            Some(bytes) => self.bytes += bytes.len() as u64,
            None => self.metrics.observe_snapshot_created(self.bytes, self.started.elapsed()),
        }
        Ok(chunk)
    }
}

struct CountingReader<'a> {
    inner: &'a mut dyn SnapshotReader,
    bytes: u64,
}

#[async_trait]
impl SnapshotReader for CountingReader<'_> {
    fn meta(&self) -> &SnapshotMeta {
        self.inner.meta()
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let (bytes, end) = self.inner.read_at(offset, max_bytes).await?;
        self.bytes = self.bytes.max(offset + bytes.len() as u64);
        Ok((bytes, end))
    }
}
