//! Snapshots: round trips, capture at a point in time, chunk sizes, and the
//! refusal of every kind of damage with the current state left intact.

use async_trait::async_trait;
use bytes::{BufMut, Bytes};
use raft_core::state_machine::{StateMachine, StateMachineError};
use raft_core::storage::{SnapshotReader, StorageError};
use raft_core::types::{NodeId, SnapshotMeta};

use super::{digest, machine, restore_from, run, snapshot_bytes, snapshot_chunks, TestReader};
use crate::kv::snapshot::{CHUNK_BYTES, FORMAT_VERSION, MAGIC};
use crate::kv::{
    KvAnswer, KvCommand, KvLimits, KvOutcome, KvStateMachine, KvView, NodeAddresses, Precondition,
};

fn put(key: &str, value: Bytes) -> KvCommand {
    KvCommand::Put { key: key.to_string(), value, precondition: Precondition::Always }
}

fn set_node(id: u64) -> KvCommand {
    let addresses = NodeAddresses {
        peer: format!("[::1]:{}", 7000 + id).parse().expect("a socket address"),
        client: format!("https://node-{id}.example:8080"),
    };
    KvCommand::SetNode { id: NodeId(id), addresses }
}

/// A machine with keys (one of them large enough to travel as its own
/// chunk), remembered clients of each kind of outcome, and a directory.
async fn populated(limits: KvLimits) -> KvStateMachine {
    let (mut machine, _view) = KvStateMachine::new(limits);
    for i in 0..50u64 {
        let value = Bytes::from(format!("value {i}").repeat(i as usize % 7));
        run(&mut machine, Some((i % 5, i)), &put(&format!("key/{i:03}"), value)).await;
    }
    run(&mut machine, None, &put("large", Bytes::from(vec![7u8; 200_000]))).await;
    run(&mut machine, None, &put("empty", Bytes::new())).await;
    run(
        &mut machine,
        Some((10, 1)),
        &KvCommand::Delete { key: "key/001".into(), precondition: Precondition::Always },
    )
    .await;
    run(
        &mut machine,
        Some((11, 1)),
        &KvCommand::Delete { key: "x".into(), precondition: Precondition::VersionIs(3) },
    )
    .await;
    for id in 1..=3 {
        run(&mut machine, Some((12, id)), &set_node(id)).await;
    }
    machine
}

#[tokio::test]
async fn a_snapshot_round_trip_preserves_the_digest_the_dedup_table_and_the_directory() {
    let mut original = populated(KvLimits::default()).await;
    let bytes = snapshot_bytes(&mut original).await;
    let index = original.applied_index();

    for max_read_bytes in [u64::MAX, 4096, 7] {
        let (mut restored, view) = machine();
        let mut directory = view.directory();
        restored.restore(&mut TestReader::trickle(index, bytes.clone(), max_read_bytes)).await.unwrap();
        assert_eq!(digest(&mut restored).await, digest(&mut original).await);
        assert!(restored.state == original.state, "reads of {max_read_bytes} bytes: the states differ");
        assert_eq!(restored.stats(), original.stats());
        assert!(directory.has_changed().unwrap(), "the restored directory is published");
        assert_eq!(*directory.borrow_and_update(), original.state.directory);

        // The restored machine goes on exactly like the original: a retry
        // is answered from the restored table, and a put gets the same
        // version.
        let retry = KvCommand::Delete { key: "x".into(), precondition: Precondition::VersionIs(3) };
        let fresh = put("key/002", Bytes::from_static(b"after"));
        for (request, command) in [(Some((11, 1)), &retry), (Some((13, 1)), &fresh)] {
            let expected = run(&mut original, request, command).await;
            assert_eq!(run(&mut restored, request, command).await, expected);
        }
        assert_eq!(
            run(&mut restored, Some((11, 1)), &retry).await,
            KvOutcome::PreconditionFailed { current: None }
        );
        run(&mut original, Some((11, 1)), &retry).await;
        assert!(restored.state == original.state, "the replicas went on identically");
        // Undo the extra entries on the original for the next round.
        original = populated(KvLimits::default()).await;
    }
}

#[tokio::test]
async fn an_empty_machine_round_trips() {
    let (mut empty, _view) = machine();
    let bytes = snapshot_bytes(&mut empty).await;
    let (mut restored, _view) = machine();
    run(&mut restored, None, &put("a", Bytes::from_static(b"1"))).await;
    // Restoring an older (empty) snapshot replaces everything.
    restore_from(&mut restored, 0, bytes).await.unwrap();
    assert_eq!(restored.state, empty.state);
}

#[tokio::test]
async fn a_snapshot_captures_the_state_when_it_begins() {
    let mut machine = populated(KvLimits::default()).await;
    let before = digest(&mut machine).await;
    let state_before = machine.state.clone();
    let index = machine.applied_index();
    let mut source = machine.begin_snapshot().await.unwrap();
    // Applying goes on while the snapshot streams.
    run(&mut machine, None, &put("key/002", Bytes::from_static(b"changed"))).await;
    run(&mut machine, Some((12, 9)), &KvCommand::RemoveNode { id: NodeId(1) }).await;
    let mut bytes = Vec::new();
    while let Some(chunk) = source.next_chunk().await.unwrap() {
        bytes.extend_from_slice(&chunk);
    }
    let (mut restored, _view) = KvStateMachine::new(KvLimits::default());
    restore_from(&mut restored, index, bytes.into()).await.unwrap();
    assert_eq!(digest(&mut restored).await, before);
    assert!(restored.state == state_before, "the restored state is the one captured");
}

#[tokio::test]
async fn snapshot_chunks_stay_near_a_mebibyte() {
    let (mut machine, _view) = machine();
    // 3 MiB in 1 KiB values, and two values large enough to be chunks of
    // their own.
    let entries: Vec<_> = (1..=3072)
        .map(|i| super::command_entry(i, None, &put(&format!("k{i:05}"), Bytes::from(vec![1u8; 1024]))))
        .collect();
    machine.apply(&entries).await.unwrap();
    let big = Bytes::from(vec![2u8; 3 << 20]);
    run(&mut machine, None, &put("k01000x", big.clone())).await;
    run(&mut machine, None, &put("k02000x", Bytes::from(vec![3u8; 100_000]))).await;
    let chunks = snapshot_chunks(&mut machine).await;
    let largest_inline_record = 1 + 4 + 4 + 8 + 8 + 64 * 1024;
    for chunk in &chunks {
        assert!(
            chunk.len() <= CHUNK_BYTES + largest_inline_record || *chunk == big || chunk.len() == 100_000,
            "a chunk of {} bytes",
            chunk.len()
        );
        assert!(!chunk.is_empty());
    }
    assert!(chunks.len() >= 5, "{} chunks", chunks.len());
    let bytes: Vec<u8> = chunks.concat();
    let (mut restored, _view) = KvStateMachine::new(KvLimits::default());
    restore_from(&mut restored, machine.applied_index(), bytes.into()).await.unwrap();
    assert!(restored.state == machine.state, "the states differ");
}

/// A small machine with every kind of record, for exhaustive damage tests.
async fn small() -> KvStateMachine {
    let (mut machine, _view) = machine();
    run(&mut machine, Some((1, 1)), &put("a", Bytes::from_static(b"1"))).await;
    run(&mut machine, None, &put("bb", Bytes::from_static(b"22"))).await;
    run(&mut machine, Some((2, 5)), &set_node(1)).await;
    machine
}

/// Restoring `bytes` into a populated machine must fail as malformed and
/// leave it exactly as it was, with nothing published.
async fn assert_refused(bytes: Bytes, index: u64, what: &str) -> String {
    let mut target = populated(KvLimits::default()).await;
    let before = target.state.clone();
    let directory = target.directory.subscribe();
    let outcome = restore_from(&mut target, index, bytes).await;
    let Err(StateMachineError::MalformedSnapshot(message)) = outcome else {
        panic!("{what}: restoring was {outcome:?}, not a malformed snapshot");
    };
    assert!(target.state == before, "{what}: the state changed");
    assert!(!directory.has_changed().unwrap(), "{what}: nothing was published");
    message
}

#[tokio::test]
async fn every_truncation_and_every_bit_flip_is_refused() {
    let mut machine = small().await;
    let bytes = snapshot_bytes(&mut machine).await;
    let index = machine.applied_index();
    for length in 0..bytes.len() {
        assert_refused(bytes.slice(..length), index, &format!("truncated to {length} bytes")).await;
    }
    for position in 0..bytes.len() {
        for bit in 0..8 {
            let mut damaged = bytes.to_vec();
            damaged[position] ^= 1 << bit;
            assert_refused(damaged.into(), index, &format!("bit {bit} of byte {position} flipped")).await;
        }
    }
}

#[tokio::test]
async fn bytes_after_the_trailer_are_refused() {
    let mut machine = small().await;
    let mut bytes = snapshot_bytes(&mut machine).await.to_vec();
    bytes.push(0);
    let message = assert_refused(bytes.into(), machine.applied_index(), "a trailing byte").await;
    assert!(message.contains("follow the trailer"), "{message}");
}

#[tokio::test]
async fn a_snapshot_stored_under_another_index_is_refused() {
    let mut machine = small().await;
    let bytes = snapshot_bytes(&mut machine).await;
    let message = assert_refused(bytes, machine.applied_index() + 1, "another index").await;
    assert!(message.contains("stored as the snapshot at index"), "{message}");
}

/// Builds a snapshot by hand: a header, raw records `(kind, body)`, and a
/// correct checksum, so that the checks behind the checksum can be reached.
fn craft(version: u32, applied_index: u64, counts: [u64; 3], records: &[(u8, Vec<u8>)]) -> Bytes {
    let mut bytes = Vec::new();
    bytes.put_slice(&MAGIC);
    bytes.put_u32_le(version);
    bytes.put_u64_le(applied_index);
    for count in counts {
        bytes.put_u64_le(count);
    }
    for (kind, body) in records {
        bytes.put_u8(*kind);
        bytes.put_u32_le(body.len() as u32);
        bytes.put_slice(body);
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.put_u32_le(crc);
    bytes.into()
}

fn key_record(key: &[u8], version: u64, value: &[u8]) -> (u8, Vec<u8>) {
    let mut body = Vec::new();
    body.put_u32_le(key.len() as u32);
    body.put_slice(key);
    body.put_u64_le(version);
    body.put_slice(value);
    (1, body)
}

fn node_record(id: u64) -> (u8, Vec<u8>) {
    let KvCommand::SetNode { addresses, .. } = set_node(1) else { unreachable!() };
    let mut body = Vec::new();
    body.put_u64_le(id);
    body.put_slice(&postcard::to_allocvec(&addresses).unwrap());
    (3, body)
}

#[tokio::test]
async fn a_crafted_snapshot_restores_when_it_is_well_formed() {
    let bytes = craft(
        FORMAT_VERSION,
        5,
        [2, 0, 1],
        &[key_record(b"a", 1, b"x"), key_record(b"b", 5, b""), node_record(2)],
    );
    let (mut machine, _view) = machine();
    restore_from(&mut machine, 5, bytes).await.unwrap();
    assert_eq!(machine.stats().keys, 2);
    assert_eq!(machine.state.directory.keys().copied().collect::<Vec<_>>(), vec![NodeId(2)]);
}

#[tokio::test]
async fn a_newer_format_version_is_refused_with_a_clear_message() {
    let bytes = craft(FORMAT_VERSION + 1, 5, [0, 0, 0], &[]);
    let message = assert_refused(bytes, 5, "a newer version").await;
    assert!(message.contains("newer than this release"), "{message}");
    assert_refused(craft(0, 5, [0, 0, 0], &[]), 5, "version 0").await;
}

#[tokio::test]
async fn a_huge_record_length_is_refused_before_reading_it() {
    let mut bytes = craft(FORMAT_VERSION, 5, [1, 0, 0], &[]).to_vec();
    bytes.truncate(bytes.len() - 4);
    bytes.put_u8(1);
    bytes.put_u32_le(u32::MAX);
    let message = assert_refused(bytes.into(), 5, "a huge record").await;
    assert!(message.contains("over the bound"), "{message}");
}

#[tokio::test]
async fn records_that_break_the_rules_are_refused_even_with_a_good_checksum() {
    let cases: Vec<(&str, Bytes)> = vec![
        (
            "duplicate keys",
            craft(FORMAT_VERSION, 5, [2, 0, 0], &[key_record(b"a", 1, b""), key_record(b"a", 2, b"")]),
        ),
        (
            "keys out of order",
            craft(FORMAT_VERSION, 5, [2, 0, 0], &[key_record(b"b", 1, b""), key_record(b"a", 2, b"")]),
        ),
        (
            "a version after the applied index",
            craft(FORMAT_VERSION, 5, [1, 0, 0], &[key_record(b"a", 6, b"")]),
        ),
        ("version 0", craft(FORMAT_VERSION, 5, [1, 0, 0], &[key_record(b"a", 0, b"")])),
        (
            "a key that is not UTF-8",
            craft(FORMAT_VERSION, 5, [1, 0, 0], &[key_record(&[0xff, 0xfe], 1, b"")]),
        ),
        ("node id 0", craft(FORMAT_VERSION, 5, [0, 0, 1], &[node_record(0)])),
        ("duplicate nodes", craft(FORMAT_VERSION, 5, [0, 0, 2], &[node_record(3), node_record(3)])),
        ("a record of the wrong kind", craft(FORMAT_VERSION, 5, [0, 1, 0], &[key_record(b"a", 1, b"")])),
        (
            "more records than counted",
            craft(FORMAT_VERSION, 5, [1, 0, 0], &[key_record(b"a", 1, b""), key_record(b"b", 1, b"")]),
        ),
        ("fewer records than counted", craft(FORMAT_VERSION, 5, [3, 0, 0], &[key_record(b"a", 1, b"")])),
        ("a key length beyond the record", {
            let (kind, mut body) = key_record(b"a", 1, b"");
            body[0] = 200;
            craft(FORMAT_VERSION, 5, [1, 0, 0], &[(kind, body)])
        }),
        ("a client record with a bad outcome", {
            let mut body = Vec::new();
            body.put_u64_le(1);
            body.put_u64_le(1);
            body.put_u64_le(1);
            body.put_u8(0xff);
            craft(FORMAT_VERSION, 5, [0, 1, 0], &[(2, body)])
        }),
        ("a wrong magic", {
            let mut bytes = craft(FORMAT_VERSION, 5, [0, 0, 0], &[]).to_vec();
            bytes[0] = b'X';
            bytes.into()
        }),
    ];
    for (what, bytes) in cases {
        assert_refused(bytes, 5, what).await;
    }
}

#[tokio::test]
async fn a_smaller_dedup_limit_forgets_the_least_recently_used_clients_on_restore() {
    let mut original = populated(KvLimits::default()).await;
    let bytes = snapshot_bytes(&mut original).await;
    let (mut restored, _view) = KvStateMachine::new(KvLimits { max_dedup_clients: 2 });
    restore_from(&mut restored, original.applied_index(), bytes).await.unwrap();
    let mut by_last_use: Vec<(u64, u64)> = original
        .state
        .dedup
        .records()
        .iter()
        .map(|(client, record)| (record.last_used_index, *client))
        .collect();
    by_last_use.sort_unstable();
    let mut expected: Vec<u64> =
        by_last_use[by_last_use.len() - 2..].iter().map(|(_, client)| *client).collect();
    expected.sort_unstable();
    let kept: Vec<u64> = restored.state.dedup.records().keys().copied().collect();
    assert_eq!(kept, expected);
    assert_eq!(digest(&mut restored).await, digest(&mut original).await, "the keys are all there");
}

/// A reader whose storage fails after the first read.
struct FailingReader {
    inner: TestReader,
    reads: u32,
}

#[async_trait]
impl SnapshotReader for FailingReader {
    fn meta(&self) -> &SnapshotMeta {
        self.inner.meta()
    }

    async fn read_at(&mut self, offset: u64, max_bytes: u64) -> Result<(Bytes, bool), StorageError> {
        self.reads += 1;
        if self.reads > 1 {
            return Err(StorageError::Io(std::io::Error::other("the disk went away")));
        }
        self.inner.read_at(offset, max_bytes).await
    }
}

#[tokio::test]
async fn a_failing_reader_is_a_storage_error_and_leaves_the_state_intact() {
    let mut source = populated(KvLimits::default()).await;
    let bytes = snapshot_bytes(&mut source).await;
    let (mut target, _view) = machine();
    run(&mut target, None, &put("mine", Bytes::from_static(b"1"))).await;
    let before = target.state.clone();
    let mut reader =
        FailingReader { inner: TestReader::trickle(source.applied_index(), bytes, 100), reads: 0 };
    let outcome = target.restore(&mut reader).await;
    assert!(matches!(outcome, Err(StateMachineError::Storage(_))), "{outcome:?}");
    assert!(target.state == before, "the state changed");
}

/// A rollback puts back the checkpoint's keys and keeps the directory, the
/// deduplication table and the applied index of the current state; a
/// snapshot install of the same bytes replaces everything.
#[tokio::test]
async fn a_rollback_restores_the_keys_and_keeps_the_directory_and_the_dedup_table() {
    let (mut machine, view) = machine();
    run(&mut machine, Some((1, 1)), &put("kept", Bytes::from_static(b"checkpointed"))).await;
    run(&mut machine, None, &set_node(1)).await;
    run(&mut machine, None, &set_node(3)).await;
    let checkpoint_index = machine.applied_index();
    let checkpoint = snapshot_bytes(&mut machine).await;
    let at_checkpoint = digest(&mut machine).await;

    // After the checkpoint: keys change, node 4 joins, node 3 leaves, and
    // client 1's second request applies.
    run(&mut machine, None, &put("kept", Bytes::from_static(b"changed"))).await;
    let later_write = put("later", Bytes::from_static(b"x"));
    let first = run(&mut machine, Some((1, 2)), &later_write).await;
    run(&mut machine, None, &set_node(4)).await;
    run(&mut machine, None, &KvCommand::RemoveNode { id: NodeId(3) }).await;
    let before_rollback = machine.state.clone();
    let directory = view.directory();

    let mut reader = TestReader::new(checkpoint_index, checkpoint.clone());
    machine.restore_checkpoint(&mut reader).await.expect("the checkpoint restores");
    // The keys are the checkpoint's; the applied index stays where it was.
    let (
        KvAnswer::Digest { keys, hash, .. },
        KvAnswer::Digest { applied_index, keys: now_keys, hash: now_hash },
    ) = (at_checkpoint, digest(&mut machine).await)
    else {
        panic!("a digest query answered something else");
    };
    assert_eq!((now_keys, now_hash), (keys, hash));
    assert_eq!(applied_index, before_rollback.applied_index);
    assert_eq!(machine.state.directory, before_rollback.directory, "the directory is not rolled back");
    assert_eq!(machine.state.dedup, before_rollback.dedup, "the dedup table is not rolled back");
    assert!(!directory.has_changed().unwrap(), "nothing new to publish");
    // A retry of the request applied after the checkpoint gets its first
    // answer and is not applied again: the rollback undid it.
    let retried = run(&mut machine, Some((1, 2)), &later_write).await;
    assert_eq!(retried, first);
    assert!(!machine.state.data.contains_key(&b"later"[..]));

    // Installing the same bytes as a snapshot replaces the whole state.
    let (mut installed, _view) = machine_at_random_state().await;
    restore_from(&mut installed, checkpoint_index, checkpoint).await.expect("the snapshot restores");
    assert_eq!(installed.state.directory.keys().copied().collect::<Vec<_>>(), [NodeId(1), NodeId(3)]);
    assert_eq!(installed.state.applied_index, checkpoint_index);
}

/// A machine with some unrelated state, to be replaced by a restore.
async fn machine_at_random_state() -> (KvStateMachine, KvView) {
    let (mut machine, view) = machine();
    run(&mut machine, Some((9, 1)), &put("other", Bytes::from_static(b"y"))).await;
    run(&mut machine, None, &set_node(7)).await;
    (machine, view)
}
