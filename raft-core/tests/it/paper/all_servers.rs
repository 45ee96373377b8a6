//! Figure 2, "Rules for Servers — All Servers", and §5.1: terms act as a
//! logical clock. A node that sees a newer term adopts it and follows; a
//! message from an older term is refused.

use raft_core::Ready;

use super::*;

/// Node 1 of voters {1, 2, 3}, in `role`, restarted from a log `[1, 1, 2]`
/// in term 4. A follower and a pre-candidate stay in term 4; a candidate
/// and a leader are in term 5.
fn engine_in_role(role: Role) -> Engine {
    let mut config = paper_config(NodeId(1));
    config.pre_vote = role == Role::PreCandidate;
    let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2], term: 4, vote: 0, commit: 1 };
    let mut engine = stored.restore(config);
    match role {
        Role::Follower => {}
        Role::PreCandidate | Role::Candidate => {
            engine.campaign_now();
            flush(&mut engine);
        }
        Role::Leader => {
            win_election(&mut engine, &[2]);
        }
    }
    assert_eq!(engine.role(), role);
    engine
}

const ROLES: [Role; 4] = [Role::Follower, Role::PreCandidate, Role::Candidate, Role::Leader];

/// §5.1, Figure 2 (All Servers): "if a request or response carries a term
/// newer than the current one, adopt that term and become a follower". We
/// check it for every role and for every kind of message, and check that the
/// new term is handed to storage (it must be durable) with no vote in it —
/// unless the message itself was a vote request the node granted.
///
/// The election timer restarts only where Figure 2 says so: on hearing from
/// the new term's leader and on granting a vote; and on a leader, whose
/// timer was not running. A follower or (pre-)candidate that adopts the term
/// from any other message keeps its elapsed ticks and its timeout.
#[test]
fn a_newer_term_in_any_message_makes_every_role_adopt_it_and_follow() {
    for role in ROLES {
        // (message kind, whether it comes from the new term's leader)
        type MakeMessage = fn(u64, u64) -> Message;
        let cases: [(&str, MakeMessage, bool); 6] = [
            ("AppendEntries", |term, last| append_entries(2, 1, term, (last, 2), vec![], 0), true),
            ("Heartbeat", |term, _| heartbeat(2, 1, term, 0), true),
            ("RequestVote", |term, last| request_vote(2, 1, term, last + 5, term - 1), false),
            ("RequestVoteResponse", |term, _| vote_response(2, 1, term, false), false),
            ("AppendEntriesResponse", |term, _| append_rejected(2, 1, term, 3, (1, None), 0), false),
            ("HeartbeatResponse", |term, _| heartbeat_response(2, 1, term), false),
        ];
        for (kind, make_message, from_leader) in cases {
            let mut engine = engine_in_role(role);
            engine.tick();
            engine.tick();
            flush(&mut engine);
            let timer = engine.election_timer();
            let newer = engine.term().get() + 3;
            let last = engine.last_index().get();
            let _ = engine.step(make_message(newer, last));
            engine.check_invariants().unwrap();
            let context = format!("a {role} receiving a {kind} of a newer term");
            if from_leader || kind == "RequestVote" || role == Role::Leader {
                assert_eq!(engine.election_timer().elapsed_ticks, 0, "{context}: timer restarted");
            } else {
                assert_eq!(engine.election_timer(), timer, "{context}: timer kept");
            }
            assert_eq!(engine.term(), Term(newer), "{context}: term");
            assert_eq!(engine.role(), Role::Follower, "{context}: role");
            let expected_leader = if from_leader { NodeId(2) } else { NodeId::NONE };
            assert_eq!(engine.leader(), expected_leader, "{context}: leader");
            let expected_vote = if kind == "RequestVote" { NodeId(2) } else { NodeId::NONE };
            let ready = engine.ready();
            let hard_state = ready.hard_state.expect("the new term is persisted");
            assert_eq!(
                (hard_state.term, hard_state.vote),
                (Term(newer), expected_vote),
                "{context}: hard state"
            );
            assert!(ready.persist_id.is_some(), "{context}: the new term must be made durable");
        }
    }
}

/// §5.1: "if a server receives a request with a stale term number, it
/// rejects the request". Every role refuses every kind of message from an
/// older term, with no change to its state. A stale leader is told the
/// newer term (in a heartbeat answer, which it can always read) so that it
/// steps down; a stale pre-candidate gets a refusal. A stale real vote
/// request gets no answer at all (the paper says "reply false"; the
/// candidate learns nothing from either, and times out).
#[test]
fn every_role_refuses_messages_of_an_older_term() {
    for role in ROLES {
        type MakeMessage = fn(u64) -> Message;
        // (message kind, the message in an older term, the kind of the reply if any)
        let cases: [(&str, MakeMessage, Option<&str>); 7] = [
            (
                "AppendEntries",
                |term| append_entries(2, 1, term, (3, 2), vec![command_entry(4, term)], 3),
                Some("HeartbeatResponse"),
            ),
            ("Heartbeat", |term| heartbeat(2, 1, term, 3), Some("HeartbeatResponse")),
            ("RequestVote", |term| request_vote(2, 1, term, 9, term), None),
            ("RequestPreVote", |term| request_pre_vote(2, 1, term, 9, term), Some("RequestPreVoteResponse")),
            ("RequestVoteResponse", |term| vote_response(2, 1, term, true), None),
            ("AppendEntriesResponse", |term| append_accepted(2, 1, term, 3), None),
            ("HeartbeatResponse", |term| heartbeat_response(2, 1, term), None),
        ];
        for (kind, make_message, reply) in cases {
            let mut engine = engine_in_role(role);
            let before = engine.status();
            let log_before = log_terms(&engine);
            let older = engine.term().get() - 1;
            let result = engine.step(make_message(older));
            let context = format!("a {role} in term {} receiving a {kind} of term {older}", before.term);
            assert!(is_stale_term(&result), "{context}: {result:?}");
            engine.check_invariants().unwrap();
            let after = engine.status();
            assert_eq!(
                (after.term, after.vote, after.role, after.leader, after.commit_index),
                (before.term, before.vote, before.role, before.leader, before.commit_index),
                "{context}: nothing changes"
            );
            assert_eq!(log_terms(&engine), log_before, "{context}: the log is untouched");
            let ready = engine.ready();
            let replies: Vec<_> = ready.messages.iter().filter(|m| m.to == NodeId(2)).collect();
            match reply {
                None => assert!(replies.is_empty(), "{context}: no reply expected, got {replies:?}"),
                Some(reply_kind) => {
                    assert_eq!(replies.len(), 1, "{context}: one reply");
                    assert_eq!(replies[0].kind(), reply_kind, "{context}");
                    assert_eq!(replies[0].term, before.term, "{context}: the reply carries the newer term");
                    if let Some((_, granted)) = vote_answer(replies[0]) {
                        assert!(!granted, "{context}: a stale pre-vote is refused");
                    }
                }
            }
            assert!(ready.hard_state.is_none(), "{context}: nothing to persist");
        }
    }
}

/// §5.1: a leader cut off while the others moved to a newer term learns that
/// term from the reply to its next heartbeat, and steps down — "if a
/// candidate or leader discovers that its term is out of date, it
/// immediately reverts to follower state".
#[test]
fn a_stale_leader_learns_the_newer_term_from_a_reply_and_steps_down() {
    let mut old_leader = engine_in_role(Role::Leader);
    let old_term = old_leader.term().get();
    let newer =
        Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2], term: old_term + 2, vote: 3, commit: 1 };
    let mut follower = newer.restore(paper_config(NodeId(2)));

    old_leader.tick();
    let sent = flush(&mut old_leader);
    let to_follower = addressed_to(&sent, 2);
    assert!(to_follower.iter().any(|m| m.kind() == "Heartbeat"), "{to_follower:?}");
    for message in to_follower {
        assert!(is_stale_term(&follower.step(message.clone())));
    }

    let replies = flush(&mut follower);
    assert!(!replies.is_empty());
    for reply in &replies {
        assert_eq!(
            (reply.to, reply.kind(), reply.term),
            (NodeId(1), "HeartbeatResponse", Term(old_term + 2))
        );
    }
    let reply = replies[0].clone();
    let _ = old_leader.step(reply);
    old_leader.check_invariants().unwrap();
    assert_eq!(old_leader.role(), Role::Follower);
    assert_eq!(old_leader.term(), Term(old_term + 2));
    assert!(old_leader.propose(Bytes::from_static(b"late"), None).is_err());
    follower.check_invariants().unwrap();
}

/// Figure 2 (All Servers): "if commitIndex > lastApplied: increment
/// lastApplied, apply log[lastApplied] to the state machine". Committed
/// entries come out of `ready()` for applying in index order, each once,
/// never beyond the commit index — and never before they are durable on
/// this node (it applies from its own log). A restarted node applies again
/// from the start (index 1 here): its state machine is rebuilt. An injected
/// bug that hands out uncommitted entries fails the same assertions.
#[test]
fn committed_entries_are_handed_out_for_applying_in_order_and_once() {
    let handed_out =
        |ready: &Ready| ready.committed_entries.iter().map(|e| e.index.get()).collect::<Vec<_>>();
    for apply_before_commit in [false, true] {
        let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1], term: 2, vote: 0, commit: 1 };
        let mut engine = stored.restore(paper_config(NodeId(1)));
        engine.inject_bugs(InjectedBugs { apply_before_commit, ..InjectedBugs::default() });
        let entries = (2..=5).map(|index| command_entry(index, 2)).collect();
        step_ok(&mut engine, append_entries(2, 1, 2, (1, 1), entries, 3));
        let write = engine.ready();
        assert_eq!(handed_out(&write), vec![1], "only what is durable and committed");
        engine.applied(LogIndex(1));
        engine.persisted(write.persist_id.unwrap());

        let ready = engine.ready();
        if apply_before_commit {
            assert_eq!(handed_out(&ready), vec![2, 3, 4, 5], "the bug hands out uncommitted entries");
            continue;
        }
        assert_eq!(handed_out(&ready), vec![2, 3]);
        engine.applied(LogIndex(3));
        step_ok(&mut engine, heartbeat(2, 1, 2, 5));
        assert_eq!(handed_out(&engine.ready()), vec![4, 5]);
        engine.applied(LogIndex(5));
        step_ok(&mut engine, heartbeat(2, 1, 2, 5));
        assert!(engine.ready().committed_entries.is_empty(), "each entry once");
        engine.check_invariants().unwrap();
    }
}
