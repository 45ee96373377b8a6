//! The rules of applying: versions, preconditions, deduplication, the
//! directory, rejected commands, queries and the codec.

use std::collections::BTreeMap;

use bytes::Bytes;
use raft_core::state_machine::{StateMachine, StateMachineError};
use raft_core::types::{ClientRequestId, EntryPayload, Membership, NodeId};

use super::{apply_one, ask, command_entry, digest, entry, machine, run};
use crate::kv::{
    KvAnswer, KvCodecError, KvCommand, KvLimits, KvOutcome, KvQuery, KvResponse, KvStateMachine, KvStats,
    NodeAddresses, Precondition, Versioned, MAX_KEY_BYTES,
};

fn put(key: &str, value: &str) -> KvCommand {
    put_if(key, value, Precondition::Always)
}

fn put_if(key: &str, value: &str, precondition: Precondition) -> KvCommand {
    KvCommand::Put { key: key.to_string(), value: Bytes::from(value.to_string()), precondition }
}

fn delete_if(key: &str, precondition: Precondition) -> KvCommand {
    KvCommand::Delete { key: key.to_string(), precondition }
}

fn addresses(port: u16) -> NodeAddresses {
    NodeAddresses {
        peer: format!("127.0.0.1:{port}").parse().expect("a socket address"),
        client: format!("http://127.0.0.1:{}", port + 1000),
    }
}

async fn get(machine: &mut KvStateMachine, key: &str) -> Option<Versioned> {
    match ask(machine, KvQuery::Get { key: key.to_string() }).await {
        KvAnswer::Value(value) => value,
        other => panic!("a Get answered {other:?}"),
    }
}

fn versioned(value: &str, version: u64) -> Option<Versioned> {
    Some(Versioned { value: Bytes::from(value.to_string()), version })
}

#[tokio::test]
async fn a_put_versions_the_key_with_its_entry_index() {
    let (mut machine, _view) = machine();
    assert_eq!(run(&mut machine, None, &put("a", "1")).await, KvOutcome::Written { version: 1 });
    assert_eq!(run(&mut machine, None, &put("b", "2")).await, KvOutcome::Written { version: 2 });
    // Overwriting, even with the same value, moves the version to the new entry.
    assert_eq!(run(&mut machine, None, &put("a", "1")).await, KvOutcome::Written { version: 3 });
    assert_eq!(get(&mut machine, "a").await, versioned("1", 3));
    assert_eq!(get(&mut machine, "b").await, versioned("2", 2));
    assert_eq!(get(&mut machine, "c").await, None);
}

#[tokio::test]
async fn a_delete_removes_the_key_and_a_later_put_creates_it_anew() {
    let (mut machine, _view) = machine();
    run(&mut machine, None, &put("a", "1")).await;
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::Always)).await,
        KvOutcome::Deleted { existed: true }
    );
    assert_eq!(get(&mut machine, "a").await, None);
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::Always)).await,
        KvOutcome::Deleted { existed: false }
    );
    assert_eq!(run(&mut machine, None, &put("a", "2")).await, KvOutcome::Written { version: 4 });
    assert_eq!(get(&mut machine, "a").await, versioned("2", 4));
}

#[tokio::test]
async fn put_preconditions_compare_the_version_or_require_absence() {
    let (mut machine, _view) = machine();
    let absent_mismatch = run(&mut machine, None, &put_if("a", "x", Precondition::VersionIs(1))).await;
    assert_eq!(absent_mismatch, KvOutcome::PreconditionFailed { current: None });
    assert_eq!(
        run(&mut machine, None, &put_if("a", "1", Precondition::Absent)).await,
        KvOutcome::Written { version: 2 }
    );
    assert_eq!(
        run(&mut machine, None, &put_if("a", "x", Precondition::Absent)).await,
        KvOutcome::PreconditionFailed { current: Some(2) }
    );
    assert_eq!(
        run(&mut machine, None, &put_if("a", "x", Precondition::VersionIs(1))).await,
        KvOutcome::PreconditionFailed { current: Some(2) }
    );
    assert_eq!(get(&mut machine, "a").await, versioned("1", 2), "failed preconditions change nothing");
    assert_eq!(
        run(&mut machine, None, &put_if("a", "2", Precondition::VersionIs(2))).await,
        KvOutcome::Written { version: 5 }
    );
    assert_eq!(get(&mut machine, "a").await, versioned("2", 5));
}

#[tokio::test]
async fn delete_preconditions_compare_the_version_or_require_absence() {
    let (mut machine, _view) = machine();
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::VersionIs(1))).await,
        KvOutcome::PreconditionFailed { current: None }
    );
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::Absent)).await,
        KvOutcome::Deleted { existed: false }
    );
    run(&mut machine, None, &put("a", "1")).await; // version 3
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::Absent)).await,
        KvOutcome::PreconditionFailed { current: Some(3) }
    );
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::VersionIs(2))).await,
        KvOutcome::PreconditionFailed { current: Some(3) }
    );
    assert_eq!(get(&mut machine, "a").await, versioned("1", 3));
    assert_eq!(
        run(&mut machine, None, &delete_if("a", Precondition::VersionIs(3))).await,
        KvOutcome::Deleted { existed: true }
    );
    assert_eq!(get(&mut machine, "a").await, None);
}

#[tokio::test]
async fn a_retry_of_the_same_sequence_returns_the_first_outcome_without_applying_again() {
    let (mut machine, _view) = machine();
    assert_eq!(run(&mut machine, Some((7, 1)), &put("a", "1")).await, KvOutcome::Written { version: 1 });
    run(&mut machine, None, &put("b", "x")).await;
    // The retry arrives as a new entry (index 3) after a failover, say.
    assert_eq!(run(&mut machine, Some((7, 1)), &put("a", "1")).await, KvOutcome::Written { version: 1 });
    assert_eq!(get(&mut machine, "a").await, versioned("1", 1), "the retry did not write again");
    assert_eq!(machine.applied_index(), 3);

    // A remembered failure is returned as remembered, even though the
    // precondition would hold now.
    let failed = run(&mut machine, Some((7, 2)), &put_if("c", "1", Precondition::VersionIs(9))).await;
    assert_eq!(failed, KvOutcome::PreconditionFailed { current: None });
    run(&mut machine, None, &put("c", "0")).await; // version 5
    let retried = run(&mut machine, Some((7, 2)), &put_if("c", "1", Precondition::VersionIs(5))).await;
    assert_eq!(retried, failed);
    assert_eq!(get(&mut machine, "c").await, versioned("0", 5));
}

#[tokio::test]
async fn an_older_sequence_is_rejected_and_changes_nothing() {
    let (mut machine, _view) = machine();
    run(&mut machine, Some((7, 5)), &put("a", "5")).await;
    let state_before = machine.state.clone();
    let outcome = run(&mut machine, Some((7, 4)), &put("a", "4")).await;
    let KvOutcome::Rejected { reason } = outcome else {
        panic!("an older sequence was answered {outcome:?}");
    };
    assert!(reason.contains("older"), "the reason says why: {reason}");
    assert_eq!(get(&mut machine, "a").await, versioned("5", 1));
    let mut state_after = machine.state.clone();
    state_after.applied_index = state_before.applied_index;
    assert_eq!(state_after, state_before, "only the applied index moved");
}

#[tokio::test]
async fn a_higher_sequence_applies_and_is_remembered() {
    let (mut machine, _view) = machine();
    run(&mut machine, Some((7, 1)), &put("a", "1")).await;
    assert_eq!(run(&mut machine, Some((7, 3)), &put("a", "3")).await, KvOutcome::Written { version: 2 });
    assert_eq!(get(&mut machine, "a").await, versioned("3", 2));
    let record = machine.state.dedup.get(7).expect("client 7 is remembered");
    assert_eq!((record.sequence, record.last_used_index), (3, 2));
    assert_eq!(record.outcome, KvOutcome::Written { version: 2 });
    // Clients are independent of each other.
    assert_eq!(run(&mut machine, Some((8, 1)), &put("b", "1")).await, KvOutcome::Written { version: 3 });
}

#[tokio::test]
async fn the_least_recently_used_client_is_evicted_first() {
    let (mut machine, _view) = KvStateMachine::new(KvLimits { max_dedup_clients: 2 });
    run(&mut machine, Some((1, 1)), &put("a", "1")).await; // index 1: client 1
    run(&mut machine, Some((2, 1)), &put("b", "1")).await; // index 2: client 2
    run(&mut machine, Some((1, 1)), &put("a", "1")).await; // index 3: a retry uses client 1 again
    run(&mut machine, Some((3, 1)), &put("c", "1")).await; // index 4: client 3 evicts client 2
    let clients: Vec<(u64, u64)> = machine
        .state
        .dedup
        .records()
        .iter()
        .map(|(client, record)| (*client, record.last_used_index))
        .collect();
    assert_eq!(clients, vec![(1, 3), (3, 4)]);
    assert_eq!(machine.stats().dedup_clients, 2);
    // Client 2 is forgotten, so its retry applies again (the documented cost
    // of the bound), and now client 1 is the oldest and goes.
    assert_eq!(run(&mut machine, Some((2, 1)), &put("b", "1")).await, KvOutcome::Written { version: 5 });
    let clients: Vec<u64> = machine.state.dedup.records().keys().copied().collect();
    assert_eq!(clients, vec![2, 3]);
}

#[tokio::test]
async fn a_zero_dedup_limit_remembers_nothing() {
    let (mut machine, _view) = KvStateMachine::new(KvLimits { max_dedup_clients: 0 });
    run(&mut machine, Some((1, 1)), &put("a", "1")).await;
    assert_eq!(machine.stats().dedup_clients, 0);
    assert_eq!(run(&mut machine, Some((1, 1)), &put("a", "1")).await, KvOutcome::Written { version: 2 });
}

#[tokio::test]
async fn a_command_that_does_not_decode_is_rejected_the_same_way_everywhere() {
    let garbage =
        entry(1, EntryPayload::Command { client: None, data: Bytes::from_static(&[0xff, 0xff, 7]) });
    let (mut first, _view) = machine();
    let (mut second, _view) = machine();
    let outcome = apply_one(&mut first, garbage.clone()).await;
    assert!(matches!(outcome, KvOutcome::Rejected { .. }), "{outcome:?}");
    assert_eq!(apply_one(&mut second, garbage).await, outcome, "deterministic");
    assert_eq!(first.applied_index(), 1, "the entry still counts as applied");
    assert_eq!(first.stats(), KvStats::default());

    // Trailing bytes after a valid command are garbage too.
    let mut data = put("a", "1").encode().to_vec();
    data.push(0);
    let trailing = entry(
        2,
        EntryPayload::Command { client: Some(ClientRequestId { client: 1, sequence: 1 }), data: data.into() },
    );
    let outcome = apply_one(&mut first, trailing).await;
    assert!(matches!(outcome, KvOutcome::Rejected { .. }), "{outcome:?}");
    assert_eq!(first.stats().dedup_clients, 0, "a rejected command is not remembered");
}

#[tokio::test]
async fn oversized_keys_and_reserved_node_ids_are_rejected() {
    let (mut machine, _view) = machine();
    let long_key = "k".repeat(MAX_KEY_BYTES + 1);
    let outcome = run(&mut machine, None, &put(&long_key, "1")).await;
    assert!(matches!(outcome, KvOutcome::Rejected { .. }), "{outcome:?}");
    let outcome =
        run(&mut machine, None, &KvCommand::SetNode { id: NodeId::NONE, addresses: addresses(1) }).await;
    assert!(matches!(outcome, KvOutcome::Rejected { .. }), "{outcome:?}");
    assert_eq!(machine.stats(), KvStats::default());
    assert!(machine.state.directory.is_empty());
}

#[tokio::test]
async fn blank_and_membership_entries_are_done() {
    let (mut machine, _view) = machine();
    let entries = [
        entry(1, EntryPayload::Membership(Membership::with_voters([NodeId(1)]))),
        entry(2, EntryPayload::Blank),
        command_entry(3, None, &put("a", "1")),
    ];
    let responses = machine.apply(&entries).await.unwrap();
    let outcomes: Vec<KvOutcome> = responses.iter().map(|r| KvResponse::decode(r).unwrap().outcome).collect();
    assert_eq!(outcomes, vec![KvOutcome::Done, KvOutcome::Done, KvOutcome::Written { version: 3 }]);
    assert_eq!(machine.applied_index(), 3);
}

#[tokio::test]
async fn entries_applied_twice_or_out_of_order_are_an_error() {
    let (mut machine, _view) = machine();
    machine.apply(&[entry(1, EntryPayload::Blank), entry(2, EntryPayload::Blank)]).await.unwrap();
    let again = machine.apply(&[entry(2, EntryPayload::Blank)]).await;
    assert!(matches!(again, Err(StateMachineError::Other(_))), "{again:?}");
    let backwards = machine.apply(&[entry(4, EntryPayload::Blank), entry(3, EntryPayload::Blank)]).await;
    assert!(matches!(backwards, Err(StateMachineError::Other(_))), "{backwards:?}");
    assert_eq!(machine.applied_index(), 2, "a refused batch applies nothing");
}

#[tokio::test]
async fn the_directory_is_published_after_batches_that_change_it() {
    let (mut machine, view) = machine();
    let mut directory = view.directory();
    assert!(directory.borrow().is_empty());
    let set_one = KvCommand::SetNode { id: NodeId(1), addresses: addresses(7001) };
    let set_two = KvCommand::SetNode { id: NodeId(2), addresses: addresses(7002) };
    machine.apply(&[command_entry(1, None, &set_one), command_entry(2, None, &set_two)]).await.unwrap();
    assert!(directory.has_changed().unwrap());
    let expected: BTreeMap<NodeId, NodeAddresses> =
        [(NodeId(1), addresses(7001)), (NodeId(2), addresses(7002))].into_iter().collect();
    assert_eq!(*directory.borrow_and_update(), expected);

    // Setting the same addresses again, or writing keys, publishes nothing.
    run(&mut machine, None, &set_one).await;
    run(&mut machine, None, &put("a", "1")).await;
    assert!(!directory.has_changed().unwrap());

    run(&mut machine, None, &KvCommand::RemoveNode { id: NodeId(1) }).await;
    assert!(directory.has_changed().unwrap());
    assert_eq!(directory.borrow_and_update().keys().copied().collect::<Vec<_>>(), vec![NodeId(2)]);
    // A receiver taken later starts at the current directory, seen.
    let later = view.directory();
    assert!(!later.has_changed().unwrap());
    assert_eq!(later.borrow().len(), 1);
    assert_eq!(
        ask(&mut machine, KvQuery::Directory).await,
        KvAnswer::Directory([(NodeId(2), addresses(7002))].into_iter().collect())
    );
}

#[tokio::test]
async fn list_returns_keys_with_the_prefix_in_byte_order_up_to_the_limit() {
    let (mut machine, _view) = machine();
    for key in ["b/2", "a", "b/1", "b/10", "c", "b/3", "b"] {
        run(&mut machine, None, &put(key, "v")).await;
    }
    let list = |prefix: &str, limit| KvQuery::List { prefix: prefix.to_string(), limit };
    let keys = |names: &[(&str, u64)], more| KvAnswer::Keys {
        keys: names.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        more,
    };
    assert_eq!(
        ask(&mut machine, list("b/", 10)).await,
        keys(&[("b/1", 3), ("b/10", 4), ("b/2", 1), ("b/3", 6)], false)
    );
    assert_eq!(ask(&mut machine, list("b/", 2)).await, keys(&[("b/1", 3), ("b/10", 4)], true));
    assert_eq!(ask(&mut machine, list("b/", 0)).await, keys(&[], true));
    assert_eq!(ask(&mut machine, list("z", 5)).await, keys(&[], false));
    assert_eq!(ask(&mut machine, list("", 3)).await, keys(&[("a", 2), ("b", 7), ("b/1", 3)], true));
}

#[tokio::test]
async fn list_caps_the_limit() {
    let (mut machine, _view) = machine();
    let entries: Vec<_> =
        (1..=10_005).map(|i| command_entry(i, None, &put(&format!("k{i:05}"), ""))).collect();
    machine.apply(&entries).await.unwrap();
    let answer = ask(&mut machine, KvQuery::List { prefix: "k".to_string(), limit: usize::MAX }).await;
    let KvAnswer::Keys { keys, more } = answer else { panic!("{answer:?}") };
    assert_eq!(keys.len(), 10_000);
    assert!(more);
}

#[tokio::test]
async fn a_query_that_does_not_decode_is_a_query_error() {
    let (mut machine, _view) = machine();
    let error = machine.query(Bytes::from_static(&[0xee, 1, 2])).await.unwrap_err();
    assert!(matches!(error, StateMachineError::Query(_)), "{error:?}");
}

#[tokio::test]
async fn the_digest_depends_on_keys_versions_and_values() {
    let (mut first, _view) = machine();
    let (mut second, _view) = machine();
    run(&mut first, None, &put("ab", "c")).await;
    run(&mut second, None, &put("a", "bc")).await;
    let (KvAnswer::Digest { hash: one, .. }, KvAnswer::Digest { hash: two, .. }) =
        (digest(&mut first).await, digest(&mut second).await)
    else {
        panic!("digests expected");
    };
    assert_ne!(one, two, "length prefixes keep the keys apart");
    let (mut third, _view) = machine();
    third.apply(&[entry(1, EntryPayload::Blank)]).await.unwrap();
    run(&mut third, None, &put("ab", "c")).await;
    let KvAnswer::Digest { hash: three, applied_index, keys } = digest(&mut third).await else {
        panic!("a digest expected");
    };
    assert_ne!(one, three, "the version is hashed");
    assert_eq!((applied_index, keys), (2, 1));
}

#[tokio::test]
async fn stats_follow_puts_overwrites_and_deletes() {
    let (mut machine, _view) = machine();
    run(&mut machine, Some((1, 1)), &put("a", "12345")).await;
    run(&mut machine, None, &put("b", "123")).await;
    run(&mut machine, Some((2, 1)), &put("a", "12")).await;
    assert_eq!(machine.stats(), KvStats { keys: 2, value_bytes: 5, dedup_clients: 2 });
    run(&mut machine, None, &delete_if("b", Precondition::Always)).await;
    assert_eq!(machine.stats(), KvStats { keys: 1, value_bytes: 2, dedup_clients: 2 });
}

#[test]
fn every_message_round_trips_and_trailing_bytes_are_refused() {
    let commands = [
        put_if("k", "v", Precondition::VersionIs(3)),
        delete_if("k", Precondition::Absent),
        KvCommand::SetNode { id: NodeId(4), addresses: addresses(9) },
        KvCommand::RemoveNode { id: NodeId(4) },
    ];
    for command in commands {
        assert_eq!(KvCommand::decode(&command.encode()).unwrap(), command);
    }
    let outcomes = [
        KvOutcome::Written { version: 1 },
        KvOutcome::Deleted { existed: true },
        KvOutcome::PreconditionFailed { current: None },
        KvOutcome::Rejected { reason: "why".to_string() },
        KvOutcome::Done,
    ];
    for outcome in outcomes {
        assert_eq!(KvOutcome::decode(&outcome.encode()).unwrap(), outcome);
    }
    let queries = [
        KvQuery::Get { key: "k".to_string() },
        KvQuery::List { prefix: "p".to_string(), limit: 9 },
        KvQuery::Directory,
        KvQuery::Digest,
    ];
    for query in queries {
        assert_eq!(KvQuery::decode(&query.encode()).unwrap(), query);
    }
    let answers = [
        KvAnswer::Value(versioned("v", 2)),
        KvAnswer::Keys { keys: vec![("k".to_string(), 2)], more: true },
        KvAnswer::Directory([(NodeId(1), addresses(1))].into_iter().collect()),
        KvAnswer::Digest { applied_index: 1, keys: 2, hash: 3 },
    ];
    for answer in answers {
        assert_eq!(KvAnswer::decode(&answer.encode()).unwrap(), answer);
    }
    let mut bytes = KvQuery::Digest.encode().to_vec();
    bytes.push(0);
    assert!(matches!(KvQuery::decode(&bytes), Err(KvCodecError::TrailingBytes { extra_bytes: 1, .. })));
    assert!(matches!(KvCommand::decode(&[]), Err(KvCodecError::Malformed { .. })));
}
