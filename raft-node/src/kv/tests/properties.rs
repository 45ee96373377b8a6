//! Properties over random inputs: replicas that restore a snapshot midway
//! end where replicas that applied everything end, and no bytes, however
//! random or damaged, make decoding or restoring panic.

use bytes::Bytes;
use proptest::prelude::*;
use raft_core::state_machine::{StateMachine, StateMachineError};
use raft_core::types::{ClientRequestId, Entry, EntryPayload, NodeId};

use super::{digest, entry, restore_from, snapshot_bytes};
use crate::kv::snapshot::{FORMAT_VERSION, MAGIC};
use crate::kv::{
    KvAnswer, KvCommand, KvLimits, KvOutcome, KvQuery, KvStateMachine, NodeAddresses, Precondition,
};

/// Runs a future to completion on a fresh single-threaded runtime (the
/// state machine does no I/O, so nothing else is needed).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("a runtime").block_on(future)
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a".to_string()), Just("ab".to_string()), Just("b".to_string()), "[a-c]{0,3}"]
}

fn precondition() -> impl Strategy<Value = Precondition> {
    prop_oneof![
        2 => Just(Precondition::Always),
        1 => Just(Precondition::Absent),
        1 => (0u64..12).prop_map(Precondition::VersionIs),
    ]
}

fn command() -> impl Strategy<Value = KvCommand> {
    prop_oneof![
        4 => (key(), proptest::collection::vec(any::<u8>(), 0..6), precondition()).prop_map(
            |(key, value, precondition)| KvCommand::Put { key, value: Bytes::from(value), precondition }
        ),
        2 => (key(), precondition()).prop_map(|(key, precondition)| KvCommand::Delete { key, precondition }),
        1 => (0u64..4, 1u16..4).prop_map(|(id, port)| KvCommand::SetNode {
            id: NodeId(id),
            addresses: NodeAddresses {
                peer: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
                client: format!("http://n{port}"),
            },
        }),
        1 => (0u64..4).prop_map(|id| KvCommand::RemoveNode { id: NodeId(id) }),
    ]
}

/// One entry's payload: mostly commands (some with idempotency keys from a
/// few clients, so retries, old sequences and evictions all happen), some
/// garbage, some blank entries.
fn payload() -> impl Strategy<Value = EntryPayload> {
    let request = proptest::option::of((0u64..5, 0u64..6))
        .prop_map(|r| r.map(|(client, sequence)| ClientRequestId { client, sequence }));
    prop_oneof![
        8 => (request.clone(), command())
            .prop_map(|(client, command)| EntryPayload::Command { client, data: command.encode() }),
        1 => (request, proptest::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(client, data)| EntryPayload::Command { client, data: Bytes::from(data) }),
        1 => Just(EntryPayload::Blank),
    ]
}

/// Applies `entries` in batches of the given sizes (cycled); returns the
/// responses.
async fn apply_in_batches(
    machine: &mut KvStateMachine,
    entries: &[Entry],
    batch_sizes: &[usize],
) -> Vec<Bytes> {
    let mut responses = Vec::new();
    let mut rest = entries;
    let mut sizes = batch_sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        let (batch, after) = rest.split_at(size);
        responses.extend(machine.apply(batch).await.expect("apply succeeds"));
        rest = after;
    }
    responses
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn a_replica_restored_midway_ends_like_one_that_applied_everything(
        payloads in proptest::collection::vec(payload(), 1..80),
        cut in any::<prop::sample::Index>(),
        batch_sizes in proptest::collection::vec(1usize..6, 1..4),
        max_dedup_clients in 0usize..4,
    ) {
        block_on(async {
            let entries: Vec<Entry> =
                payloads.into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
            let cut = cut.index(entries.len() + 1);
            let limits = KvLimits { max_dedup_clients };

            let (mut whole, _view) = KvStateMachine::new(limits.clone());
            let all_responses = apply_in_batches(&mut whole, &entries, &batch_sizes).await;

            let (mut first_half, _view) = KvStateMachine::new(limits.clone());
            apply_in_batches(&mut first_half, &entries[..cut], &batch_sizes).await;
            let snapshot = snapshot_bytes(&mut first_half).await;
            let (mut restored, view) = KvStateMachine::new(limits);
            restore_from(&mut restored, cut as u64, snapshot).await.expect("the snapshot restores");
            prop_assert_eq!(&restored.state, &first_half.state);
            let second_responses = apply_in_batches(&mut restored, &entries[cut..], &batch_sizes).await;

            prop_assert_eq!(&second_responses[..], &all_responses[cut..]);
            prop_assert_eq!(digest(&mut restored).await, digest(&mut whole).await);
            prop_assert_eq!(&restored.state, &whole.state);
            let published = view.directory().borrow().clone();
            prop_assert_eq!(&published, &whole.state.directory);
            prop_assert_eq!(restored.stats(), whole.stats());
            let (keys, value_bytes) = whole.state.data.values().fold((0, 0), |(n, bytes), v| (n + 1, bytes + v.value.len() as u64));
            prop_assert_eq!((whole.stats().keys, whole.stats().value_bytes), (keys, value_bytes));
            prop_assert!(whole.stats().dedup_clients <= max_dedup_clients as u64);
            Ok(())
        })?;
    }

    #[test]
    fn decoding_random_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = KvCommand::decode(&bytes);
        let _ = KvOutcome::decode(&bytes);
        let _ = KvQuery::decode(&bytes);
        let _ = KvAnswer::decode(&bytes);
        block_on(async {
            let (mut machine, _view) = KvStateMachine::new(KvLimits::default());
            let _ = machine.query(Bytes::from(bytes.clone())).await;
            let responses = machine
                .apply(&[entry(1, EntryPayload::Command { client: None, data: Bytes::from(bytes.clone()) })])
                .await
                .expect("garbage is answered, never an error");
            prop_assert_eq!(responses.len(), 1);
            Ok(())
        })?;
    }

    #[test]
    fn restoring_random_bytes_never_panics_and_is_refused(
        tail in proptest::collection::vec(any::<u8>(), 0..256),
        with_header in any::<bool>(),
    ) {
        // With a valid magic and version in front, the random bytes reach
        // the counts and the records.
        let mut bytes = Vec::new();
        if with_header {
            bytes.extend_from_slice(&MAGIC);
            bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
            bytes.extend_from_slice(&0u64.to_le_bytes());
        }
        bytes.extend_from_slice(&tail);
        block_on(async {
            let (mut machine, _view) = KvStateMachine::new(KvLimits::default());
            let outcome = restore_from(&mut machine, 0, Bytes::from(bytes)).await;
            prop_assert!(matches!(outcome, Err(StateMachineError::MalformedSnapshot(_))), "{:?}", outcome);
            Ok(())
        })?;
    }

    #[test]
    fn a_damaged_snapshot_is_refused_and_the_state_is_kept(
        payloads in proptest::collection::vec(payload(), 1..30),
        position in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        truncate in any::<bool>(),
    ) {
        block_on(async {
            let entries: Vec<Entry> =
                payloads.into_iter().enumerate().map(|(i, p)| entry(i as u64 + 1, p)).collect();
            let (mut source, _view) = KvStateMachine::new(KvLimits::default());
            source.apply(&entries).await.expect("apply succeeds");
            let mut bytes = snapshot_bytes(&mut source).await.to_vec();
            let position = position.index(bytes.len());
            if truncate {
                bytes.truncate(position);
            } else {
                bytes[position] ^= flip;
            }
            let (mut target, _view) = KvStateMachine::new(KvLimits::default());
            target.apply(&entries[..entries.len() / 2]).await.expect("apply succeeds");
            let before = target.state.clone();
            let outcome = restore_from(&mut target, entries.len() as u64, Bytes::from(bytes)).await;
            prop_assert!(matches!(outcome, Err(StateMachineError::MalformedSnapshot(_))), "{:?}", outcome);
            prop_assert_eq!(&target.state, &before);
            Ok(())
        })?;
    }
}
