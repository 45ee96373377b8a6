//! Figure 2, "Persistent state on all servers (updated on stable storage
//! before responding to RPCs)", and §5.6's note that a leader may write its
//! log in parallel with replication (dissertation §10.2.1). These tests
//! drive the write/acknowledge sequence by hand, holding writes back.

use raft_core::Ready;

use super::*;

/// Figure 2 (persistent state): an acknowledgement of entries promises
/// they are durable, so it must not leave before the batch carrying them is
/// reported written. The engine holds it back: `ready()` hands out the
/// entries to write and no acknowledgement; calling `ready()` again changes
/// nothing; a heartbeat's answer (which acknowledges no entries) does leave
/// at once; a repeated AppendEntries is acknowledged only after the
/// earlier write, which its acknowledgement also relies on.
#[test]
fn append_acknowledgements_leave_only_after_the_entries_are_durable() {
    let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1], term: 2, vote: 0, commit: 1 };
    let mut engine = stored.restore(paper_config(NodeId(1)));
    let append = append_entries(2, 1, 2, (1, 1), vec![command_entry(2, 2), command_entry(3, 2)], 1);

    step_ok(&mut engine, append.clone());
    let write = engine.ready();
    assert_eq!(write.entries, vec![command_entry(2, 2), command_entry(3, 2)]);
    assert!(write.messages.is_empty(), "no acknowledgement before the write: {:?}", write.messages);
    let persist_id = write.persist_id.expect("the entries must be made durable");
    assert!(engine.ready().messages.is_empty());

    step_ok(&mut engine, heartbeat(2, 1, 2, 1));
    assert_eq!(receivers_and_kinds(&engine.ready().messages), vec![(2, "HeartbeatResponse")]);

    step_ok(&mut engine, append);
    let repeat = engine.ready();
    assert!(repeat.entries.is_empty() && repeat.persist_id.is_none());
    assert!(repeat.messages.is_empty(), "the repeat's acknowledgement also waits for the write");

    engine.persisted(persist_id);
    let acknowledgements = engine.ready().messages;
    assert_eq!(acknowledgements.len(), 2);
    for acknowledgement in &acknowledgements {
        let response = append_answer(acknowledgement).unwrap();
        assert_eq!((response.success, response.index), (true, LogIndex(3)));
    }
    engine.check_invariants().unwrap();
}

/// Figure 2 (persistent state): votedFor is durable before the vote is
/// granted. The grant comes out of `ready()` only after `persisted()` for
/// the batch carrying the vote; a pre-vote answer, which promises nothing
/// and changes no state, leaves at once.
#[test]
fn vote_grants_leave_only_after_the_vote_is_durable() {
    let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1], term: 2, vote: 0, commit: 1 };
    let mut engine = stored.restore(paper_config(NodeId(1)));

    step_ok(&mut engine, request_pre_vote(3, 1, 3, 2, 1));
    let ready = engine.ready();
    assert_eq!(vote_answer(only(&ready.messages)), Some((VoteKind::PreVote, true)));
    assert!(ready.persist_id.is_none());

    step_ok(&mut engine, request_vote(2, 1, 3, 2, 1));
    let write = engine.ready();
    let hard_state = write.hard_state.expect("the vote is written");
    assert_eq!((hard_state.term, hard_state.vote), (Term(3), NodeId(2)));
    assert!(write.messages.is_empty(), "no grant before the vote is durable");
    assert!(engine.ready().messages.is_empty());
    engine.persisted(write.persist_id.expect("the vote must be made durable"));
    let grant = only(&engine.ready().messages).clone();
    assert_eq!(
        (grant.to, grant.term, vote_answer(&grant)),
        (NodeId(2), Term(3), Some((VoteKind::Vote, true)))
    );
}

/// Takes node `id`'s batch by hand: its messages go out now; its write is
/// left for [`finish_writes`]. Nothing may be committed for applying yet.
fn take_batch_without_writing(cluster: &mut Cluster, id: u64) -> Ready {
    let ready = cluster.engine_mut(id).ready();
    assert!(ready.committed_entries.is_empty(), "nothing to apply before the write");
    cluster.in_flight.extend(ready.messages.iter().cloned());
    ready
}

/// Completes the writes of batches taken by hand, in order.
fn finish_writes(cluster: &mut Cluster, id: u64, batches: &[&Ready]) {
    let node = cluster.nodes.get_mut(&NodeId(id)).expect("a node");
    for batch in batches {
        node.disk.write(batch);
        if let Some(persist_id) = batch.persist_id {
            node.engine.persisted(persist_id);
        }
    }
}

/// Lets follower `id` receive its messages, write and acknowledge.
fn follower_writes_and_acknowledges(cluster: &mut Cluster, id: u64) {
    cluster.deliver(Some(NodeId(id)));
    while cluster.process_ready(NodeId(id)) {}
}

/// A three-node cluster (paper configuration) led by node 1, with a
/// proposal just made on it: returns the proposal's index and the leader's
/// batch carrying it, not yet written.
fn leader_with_unwritten_proposal(cluster: &mut Cluster, observer: &mut SafetyObserver) -> (LogIndex, Ready) {
    cluster.engine_mut(1).campaign_now();
    run_rounds(cluster, observer, lose_nothing);
    assert_eq!(leaders(cluster), vec![1]);
    let (_, index) = cluster.engine_mut(1).propose(Bytes::from_static(b"x"), None).unwrap();
    let batch = take_batch_without_writing(cluster, 1);
    assert_eq!(batch.entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![index]);
    assert!(batch.persist_id.is_some());
    (index, batch)
}

/// §5.3 with dissertation §10.2.1: the leader's AppendEntries for a
/// proposal leave in the same batch that asks for its own write, so
/// replication and the leader's write run in parallel; the leader counts
/// only durable copies toward a majority, its own included. With three
/// voters, two followers' durable copies are a majority: the entry commits
/// before the leader's own write is done. The leader still does not hand
/// the entry out for applying until its own copy is durable (it applies from
/// its own log).
#[test]
fn two_followers_commit_an_entry_before_the_leaders_own_write_is_durable() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], paper_config);
    let mut observer = SafetyObserver::default();
    let (index, batch) = leader_with_unwritten_proposal(&mut cluster, &mut observer);
    assert_eq!(receivers_and_kinds(&batch.messages), vec![(2, "AppendEntries"), (3, "AppendEntries")]);

    for follower in [2, 3] {
        follower_writes_and_acknowledges(&mut cluster, follower);
    }
    cluster.deliver(Some(NodeId(1)));
    assert_eq!(cluster.engine(1).commit_index(), index, "committed by the two followers' copies");
    assert!(cluster.engine(1).status().persisted_index < index, "the leader's own write is not done");
    let next = take_batch_without_writing(&mut cluster, 1);

    finish_writes(&mut cluster, 1, &[&batch, &next]);
    let ready = cluster.engine_mut(1).ready();
    assert_eq!(ready.committed_entries.iter().map(|e| e.index).collect::<Vec<_>>(), vec![index]);
    let node = cluster.nodes.get_mut(&NodeId(1)).unwrap();
    node.disk.write(&ready);
    cluster.in_flight.extend(ready.messages);
    for entry in &ready.committed_entries {
        node.state_machine.apply(entry);
        node.engine.applied(entry.index);
    }
    // The followers learn the commit index from the leader's next
    // heartbeat ("future AppendEntries RPCs (including heartbeats)", §5.3).
    tick_and_settle(&mut cluster, &mut observer);
    for id in 1..=3 {
        assert_eq!(
            cluster.nodes[&NodeId(id)].state_machine.commands,
            vec![Bytes::from_static(b"x")],
            "node {id}"
        );
    }
    observer.assert_safe();
}

/// The same arithmetic the other way: with one of three voters down, the
/// one follower's durable copy and the leader's in-memory one are not a
/// majority of durable copies. The entry commits only when the leader's own
/// write is reported durable.
#[test]
fn with_one_follower_down_commit_waits_for_the_leaders_own_write() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], paper_config);
    let mut observer = SafetyObserver::default();
    cluster.crash(3);
    let (index, batch) = leader_with_unwritten_proposal(&mut cluster, &mut observer);

    follower_writes_and_acknowledges(&mut cluster, 2);
    cluster.deliver(Some(NodeId(1)));
    let follower = cluster.engine(1).status().peers.into_iter().find(|p| p.id == NodeId(2)).unwrap();
    assert_eq!(follower.match_index, index, "the follower's copy is durable");
    assert!(cluster.engine(1).commit_index() < index, "one durable copy of three is not a majority");

    finish_writes(&mut cluster, 1, &[&batch]);
    assert_eq!(
        cluster.engine(1).commit_index(),
        index,
        "the leader's own durable copy completes the majority"
    );
    // The follower learns the commit index from the next heartbeat.
    tick_and_settle(&mut cluster, &mut observer);
    for id in [1, 2] {
        assert_eq!(
            cluster.nodes[&NodeId(id)].state_machine.commands,
            vec![Bytes::from_static(b"x")],
            "node {id}"
        );
    }
    observer.assert_safe();
}
