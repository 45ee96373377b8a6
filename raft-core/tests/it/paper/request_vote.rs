//! Figure 2, "RequestVote RPC — Receiver implementation", §5.2 and §5.4.1:
//! when a node grants its vote.

use super::*;

/// Node 1 of voters {1, 2, 3}: restarted from a log `[1, 1, 2, 2]` in
/// term 4 with no vote.
fn voter(config: Config) -> Engine {
    Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2, 2], term: 4, vote: 0, commit: 1 }.restore(config)
}

/// Steps a vote request into `engine` and returns whether it granted it.
fn asks(engine: &mut Engine, request: Message) -> bool {
    let candidate = request.from;
    step_ok(engine, request);
    let sent = flush(engine);
    let answers: Vec<_> = sent.iter().filter(|m| m.to == candidate).collect();
    assert_eq!(answers.len(), 1, "one answer to the candidate");
    let (kind, granted) = vote_answer(answers[0]).expect("a vote answer");
    assert_eq!(kind, VoteKind::Vote);
    granted
}

/// Figure 2 (RequestVote, receiver rule 1): "reply false if term <
/// currentTerm". The engine drops a stale real vote request without an
/// answer (a stale candidate learns the newer term from any other message)
/// and answers a stale pre-vote request with a refusal. Neither changes the
/// vote.
#[test]
fn a_vote_request_of_an_older_term_is_refused() {
    let mut engine = voter(paper_config(NodeId(1)));
    assert!(is_stale_term(&engine.step(request_vote(2, 1, 3, 9, 3))));
    assert!(flush(&mut engine).is_empty());

    assert!(is_stale_term(&engine.step(request_pre_vote(2, 1, 3, 9, 3))));
    let answer = only(&flush(&mut engine)).clone();
    assert_eq!((answer.term, vote_answer(&answer)), (Term(4), Some((VoteKind::PreVote, false))));
    assert_eq!((engine.term(), engine.status().vote), (Term(4), NodeId::NONE));
}

/// Figure 2 (RequestVote, receiver rule 2) and §5.4.1: grant the vote only
/// if the candidate's log is at least as up-to-date as the voter's: "if the
/// logs have last entries with different terms, the log with the later term
/// is more up-to-date; if the logs end with the same term, the longer log is
/// more up-to-date". The voter's log is `[1, 1, 2, 2]` (last index 4, last
/// term 2).
#[test]
fn a_vote_goes_only_to_a_candidate_whose_log_is_at_least_as_up_to_date() {
    // (candidate's last log index, last log term, granted)
    let cases: [(u64, u64, bool); 9] = [
        (4, 2, true),  // the same log end
        (5, 2, true),  // same last term, longer
        (3, 2, false), // same last term, shorter
        (2, 3, true),  // later last term, even though shorter
        (9, 3, true),  // later last term and longer
        (9, 1, false), // earlier last term, even though longer
        (2, 1, false), // earlier last term and shorter
        (0, 0, false), // an empty log
        (4, 1, false), // the same length, earlier last term
    ];
    for (last_log_index, last_log_term, expected) in cases {
        let mut engine = voter(paper_config(NodeId(1)));
        let granted = asks(&mut engine, request_vote(2, 1, 5, last_log_index, last_log_term));
        let case = format!("candidate's log ends at index {last_log_index}, term {last_log_term}");
        assert_eq!(granted, expected, "{case}");
        let expected_vote = if expected { NodeId(2) } else { NodeId::NONE };
        assert_eq!((engine.term(), engine.status().vote), (Term(5), expected_vote), "{case}");
    }
}

/// The same rule with an injected bug that skips the log comparison: the
/// voter grants a vote to a candidate whose log is behind — the table above
/// would catch it.
#[test]
fn the_log_comparison_is_what_refuses_a_candidate_that_is_behind() {
    let mut engine = voter(paper_config(NodeId(1)));
    engine.inject_bugs(InjectedBugs { vote_without_log_check: true, ..InjectedBugs::default() });
    assert!(asks(&mut engine, request_vote(2, 1, 5, 2, 1)));
}

/// Figure 2 (RequestVote, receiver rule 2) and §5.2: "each server will vote
/// for at most one candidate in a given term, on a first-come-first-served
/// basis" — granted "if votedFor is null or candidateId". A second
/// candidate in the same term is refused; the first one asking again (its
/// request or our answer was lost) is granted again. A candidate, having
/// voted for itself, refuses the others of its term.
#[test]
fn a_node_votes_for_at_most_one_candidate_per_term() {
    let mut engine = voter(paper_config(NodeId(1)));
    assert!(asks(&mut engine, request_vote(2, 1, 5, 4, 2)));
    assert!(!asks(&mut engine, request_vote(3, 1, 5, 9, 2)), "a second candidate in term 5");
    assert!(asks(&mut engine, request_vote(2, 1, 5, 4, 2)), "the same candidate asking again");
    assert!(asks(&mut engine, request_vote(3, 1, 6, 4, 2)), "a new term frees the vote");

    let mut candidate = voter(paper_config(NodeId(1)));
    candidate.campaign_now();
    flush(&mut candidate);
    assert_eq!(candidate.term(), Term(5));
    assert!(!asks(&mut candidate, request_vote(2, 1, 5, 9, 2)), "a candidate voted for itself");
    assert_eq!(candidate.role(), Role::Candidate);
}

/// Figure 2 (Persistent state on all servers): votedFor is "updated on
/// stable storage before responding to RPCs", so one vote per term holds
/// across a crash. The voter grants candidate 2, its batch is written to a
/// disk and it restarts from that disk: it still refuses candidate 3 in the
/// same term. With an injected bug that never persists the vote, the
/// restarted node votes a second time in the term.
#[test]
fn the_vote_survives_a_restart() {
    for forget_vote in [false, true] {
        let config = paper_config(NodeId(1));
        let mut engine = voter(config.clone());
        engine.inject_bugs(InjectedBugs { forget_vote, ..InjectedBugs::default() });
        let mut disk = MemoryDisk::default();
        let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2, 2], term: 4, vote: 0, commit: 1 };
        disk.hard_state = stored.restored_state().hard_state;
        disk.entries = stored.restored_state().entries;

        step_ok(&mut engine, request_vote(2, 1, 5, 4, 2));
        let ready = engine.ready();
        assert!(ready.messages.is_empty(), "the grant waits for the vote to be durable");
        disk.write(&ready);
        engine.persisted(ready.persist_id.expect("the vote is persisted"));
        let grant = only(&engine.ready().messages).clone();
        assert_eq!(vote_answer(&grant), Some((VoteKind::Vote, true)));

        // Crash and restart from the disk.
        let mut restarted = Engine::restore(config, disk.restored_state()).unwrap();
        restarted.check_invariants().unwrap();
        assert_eq!(restarted.term(), Term(5));
        let second_vote = asks(&mut restarted, request_vote(3, 1, 5, 4, 2));
        assert_eq!(second_vote, forget_vote, "forget_vote = {forget_vote}");
        if !forget_vote {
            assert_eq!(restarted.status().vote, NodeId(2));
            assert!(asks(&mut restarted, request_vote(2, 1, 5, 4, 2)), "the remembered candidate again");
        }
    }
}
