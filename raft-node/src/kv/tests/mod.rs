//! Tests of the key-value state machine: the rules of applying
//! (`semantics.rs`), snapshots (`snapshots.rs`), properties over random
//! inputs (`properties.rs`) and three runtimes replicating it
//! (`runtime.rs`).

mod properties;
mod runtime;
mod semantics;
mod snapshots;

use async_trait::async_trait;
use bytes::{BufMut, Bytes, BytesMut};
use raft_core::state_machine::{StateMachine, StateMachineError};
use raft_core::storage::{SnapshotReader, StorageError};
use raft_core::types::{ClientRequestId, Entry, EntryPayload, LogIndex, SnapshotMeta, Term};

use super::{KvAnswer, KvCommand, KvLimits, KvOutcome, KvQuery, KvResponse, KvStateMachine, KvView};

fn machine() -> (KvStateMachine, KvView) {
    KvStateMachine::new(KvLimits::default())
}

fn entry(index: u64, payload: EntryPayload) -> Entry {
    Entry { term: Term(1), index: LogIndex(index), payload }
}

/// An entry carrying `command`, with an idempotency key `(client, sequence)`
/// if given.
fn command_entry(index: u64, request: Option<(u64, u64)>, command: &KvCommand) -> Entry {
    entry(
        index,
        EntryPayload::Command {
            client: request.map(|(client, sequence)| ClientRequestId { client, sequence }),
            data: command.encode(),
        },
    )
}

/// Applies one command as the next entry and returns its outcome.
async fn run(machine: &mut KvStateMachine, request: Option<(u64, u64)>, command: &KvCommand) -> KvOutcome {
    let index = machine.applied_index() + 1;
    apply_one(machine, command_entry(index, request, command)).await
}

async fn apply_one(machine: &mut KvStateMachine, entry: Entry) -> KvOutcome {
    let responses = machine.apply(&[entry]).await.expect("apply succeeds");
    assert_eq!(responses.len(), 1);
    KvResponse::decode(&responses[0]).expect("the response decodes").outcome
}

async fn ask(machine: &mut KvStateMachine, query: KvQuery) -> KvAnswer {
    let answer = machine.query(query.encode()).await.expect("the query is answered");
    KvAnswer::decode(&answer).expect("the answer decodes")
}

async fn digest(machine: &mut KvStateMachine) -> KvAnswer {
    ask(machine, KvQuery::Digest).await
}

/// The snapshot of `machine` as its chunks.
async fn snapshot_chunks(machine: &mut KvStateMachine) -> Vec<Bytes> {
    let mut source = machine.begin_snapshot().await.expect("a snapshot begins");
    let mut chunks = Vec::new();
    while let Some(chunk) = source.next_chunk().await.expect("the snapshot streams") {
        chunks.push(chunk);
    }
    chunks
}

/// The snapshot of `machine` in one buffer (tests only).
async fn snapshot_bytes(machine: &mut KvStateMachine) -> Bytes {
    let mut all = BytesMut::new();
    for chunk in snapshot_chunks(machine).await {
        all.put_slice(&chunk);
    }
    all.freeze()
}

/// A snapshot reader over bytes in memory that returns at most
/// `max_read_bytes` per read, so restoring must reassemble pieces.
struct TestReader {
    meta: SnapshotMeta,
    data: Bytes,
    max_read_bytes: u64,
}

impl TestReader {
    fn new(index: u64, data: Bytes) -> Self {
        TestReader::trickle(index, data, u64::MAX)
    }

    fn trickle(index: u64, data: Bytes, max_read_bytes: u64) -> Self {
        let meta = SnapshotMeta { last_index: LogIndex(index), ..SnapshotMeta::default() };
        TestReader { meta, data, max_read_bytes }
    }
}

#[async_trait]
impl SnapshotReader for TestReader {
    fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        let length = self.data.len() as u64;
        let start = offset.min(length);
        let end = start.saturating_add(max_bytes.min(self.max_read_bytes)).min(length);
        Ok((self.data.slice(start as usize..end as usize), end == length))
    }
}

async fn restore_from(
    machine: &mut KvStateMachine,
    index: u64,
    data: Bytes,
) -> Result<(), StateMachineError> {
    machine.restore(&mut TestReader::new(index, data)).await
}
