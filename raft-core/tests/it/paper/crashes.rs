//! §5.5: follower and candidate crashes. RPCs to a crashed node fail and
//! are retried; when it restarts it gets what it missed; RPCs are
//! idempotent, so a repeated one does no harm.

use super::*;

/// A three-node cluster (paper configuration) with node 1 elected.
fn cluster_led_by_node_1(observer: &mut SafetyObserver) -> Cluster {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], paper_config);
    cluster.engine_mut(1).campaign_now();
    run_rounds(&mut cluster, observer, lose_nothing);
    assert_eq!(leaders(&cluster), vec![1]);
    cluster
}

/// Ticks the cluster until `done` holds, at most `limit` ticks; returns the
/// ticks taken.
fn tick_until(
    cluster: &mut Cluster,
    observer: &mut SafetyObserver,
    limit: u64,
    done: impl Fn(&Cluster) -> bool,
) -> u64 {
    for ticks in 1..=limit {
        tick_and_settle(cluster, observer);
        if done(cluster) {
            return ticks;
        }
    }
    panic!("not done after {limit} ticks");
}

/// The commands node `id` applied, as text.
fn applied_commands(cluster: &Cluster, id: u64) -> Vec<String> {
    let commands = &cluster.nodes[&NodeId(id)].state_machine.commands;
    commands.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect()
}

/// §5.5: "if a follower or candidate crashes, then future RequestVote and
/// AppendEntries RPCs sent to it will fail. Raft handles these failures by
/// retrying indefinitely; if the crashed server restarts, then the RPC will
/// complete successfully." Node 3 is down while three commands are
/// committed by nodes 1 and 2; once restarted it receives and applies them
/// within an election timeout, without any election.
#[test]
fn a_leader_retries_a_crashed_follower_until_it_returns() {
    let mut observer = SafetyObserver::default();
    let mut cluster = cluster_led_by_node_1(&mut observer);
    cluster.crash(3);
    for command in ["a", "b", "c"] {
        cluster.engine_mut(1).propose(Bytes::from_static(command.as_bytes()), None).unwrap();
        run_rounds(&mut cluster, &mut observer, lose_nothing);
    }
    assert_eq!(cluster.engine(1).commit_index(), cluster.engine(1).last_index());
    for _ in 0..2 * election_timeout_ticks() {
        tick_and_settle(&mut cluster, &mut observer);
    }

    cluster.restart(3);
    let term = cluster.engine(1).term();
    tick_until(&mut cluster, &mut observer, election_timeout_ticks(), |c| applied_commands(c, 3).len() == 3);
    assert_eq!(applied_commands(&cluster, 3), vec!["a", "b", "c"]);
    assert_eq!((leaders(&cluster), cluster.engine(1).term()), (vec![1], term), "no election was needed");
    observer.assert_safe();
}

/// §5.5, Figure 2 (persistent state): a follower acknowledges entries only
/// once they are durable, so a follower that crashes after receiving an
/// AppendEntries but before writing it has acknowledged nothing and simply
/// loses the entries; the leader's retry delivers them again after the
/// restart.
#[test]
fn a_follower_that_crashes_before_writing_gets_the_entries_again() {
    let mut observer = SafetyObserver::default();
    let mut cluster = cluster_led_by_node_1(&mut observer);
    let (_, index) = cluster.engine_mut(1).propose(Bytes::from_static(b"x"), None).unwrap();
    cluster.process_ready(NodeId(1));
    cluster.deliver(Some(NodeId(3)));
    assert_eq!(cluster.engine(3).last_index(), index, "node 3 holds the entry in memory");
    cluster.crash(3);
    run_rounds(&mut cluster, &mut observer, lose_nothing);
    assert_eq!(cluster.engine(1).commit_index(), index, "committed by nodes 1 and 2");

    cluster.restart(3);
    assert!(cluster.engine(3).last_index() < index, "the unwritten entry is gone after the restart");
    tick_until(&mut cluster, &mut observer, election_timeout_ticks(), |c| applied_commands(c, 3) == ["x"]);
    assert_eq!(cluster.engine(3).last_index(), index);
    observer.assert_safe();
}

/// §5.5: a candidate that crashes once its term and its vote for itself
/// are durable restarts with them, so it cannot vote for another candidate
/// in that term. (One that crashes before its write is durable never
/// counted that vote; `testdata/candidate-write.txt` follows it.)
#[test]
fn a_candidate_that_crashes_mid_election_keeps_its_term_and_vote() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], paper_config);
    cluster.stabilize();
    cluster.engine_mut(1).campaign_now();
    while cluster.process_ready(NodeId(1)) {}
    assert_eq!(cluster.in_flight.len(), 2, "its vote requests are out");
    cluster.crash(1);
    cluster.restart(1);
    let engine = cluster.engine_mut(1);
    assert_eq!((engine.role(), engine.term(), engine.status().vote), (Role::Follower, Term(1), NodeId(1)));
    step_ok(engine, request_vote(2, 1, 1, 9, 1));
    let sent = flush(engine);
    assert_eq!(vote_answer(only(&sent)), Some((VoteKind::Vote, false)));
}

/// §5.5: "Raft RPCs are idempotent, so this causes no harm". Every message
/// is delivered twice — once at once, and again one round later, after
/// newer messages — while ten commands are proposed: every node still
/// applies each command exactly once, in order.
#[test]
fn duplicated_and_delayed_messages_do_no_harm() {
    let mut observer = SafetyObserver::default();
    let mut cluster = cluster_led_by_node_1(&mut observer);
    let mut delayed_copies: Vec<Message> = Vec::new();
    let mut expected = Vec::new();
    for round in 0..200 {
        if round % 5 == 0 && expected.len() < 10 {
            let command = format!("command {}", expected.len());
            cluster.engine_mut(1).propose(Bytes::from(command.clone()), None).unwrap();
            expected.push(command);
        }
        if round % 7 == 0 {
            cluster.tick_all();
        }
        let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
        for id in ids {
            cluster.process_ready(id);
        }
        let copies = cluster.in_flight.clone();
        cluster.in_flight.append(&mut delayed_copies);
        cluster.deliver(None);
        delayed_copies = copies;
        cluster.check_invariants().unwrap();
        observer.observe(&cluster);
    }
    run_rounds(&mut cluster, &mut observer, lose_nothing);
    for id in 1..=3 {
        assert_eq!(applied_commands(&cluster, id), expected, "node {id}");
    }
    assert_eq!(leaders(&cluster), vec![1]);
    observer.assert_safe();
}
