//! Figure 2, "Rules for Servers — Followers", and §5.2: followers answer
//! candidates and leaders; a follower that hears nothing for an election
//! timeout campaigns; timeouts are randomized.

use super::*;

/// Node 1 of voters {1, 2, 3}: a follower restarted from a log `[1, 1, 2]`
/// in term 4, with no vote and no known leader.
fn follower(config: Config) -> Engine {
    Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2], term: 4, vote: 0, commit: 1 }.restore(config)
}

/// Figure 2 (Followers): "respond to RPCs from candidates and leaders". A
/// follower answers a vote request, an AppendEntries and a heartbeat, each
/// to its sender, in the sender's term.
#[test]
fn followers_answer_candidates_and_leaders() {
    let mut engine = follower(paper_config(NodeId(1)));

    step_ok(&mut engine, request_vote(3, 1, 5, 3, 2));
    let answer = only(&flush(&mut engine)).clone();
    assert_eq!(
        (answer.to, answer.term, vote_answer(&answer)),
        (NodeId(3), Term(5), Some((VoteKind::Vote, true)))
    );

    step_ok(&mut engine, append_entries(3, 1, 5, (3, 2), vec![command_entry(4, 5)], 3));
    let answer = only(&flush(&mut engine)).clone();
    let response = append_answer(&answer).expect("an AppendEntries answer");
    assert_eq!(
        (answer.to, answer.term, response.success, response.index),
        (NodeId(3), Term(5), true, LogIndex(4))
    );

    step_ok(&mut engine, heartbeat(3, 1, 5, 4));
    let answer = only(&flush(&mut engine)).clone();
    assert_eq!((answer.to, answer.term, answer.kind()), (NodeId(3), Term(5), "HeartbeatResponse"));
    assert_eq!(engine.commit_index(), LogIndex(4));
}

/// Figure 2 (Followers), §5.2: "if an election timeout passes without a
/// message from the current leader or a vote granted to a candidate, become
/// a candidate". Without pre-vote the follower starts a real election at
/// once: the next term, a vote for itself, vote requests to the others.
#[test]
fn a_silent_follower_starts_an_election_after_its_timeout() {
    let timeout = election_timeout_ticks();
    let mut engine = follower(paper_config(NodeId(1)));
    let ticks = ticks_until_campaign(&mut engine, 2 * timeout).expect("the follower campaigns");
    assert!((timeout..2 * timeout).contains(&ticks), "campaigned after {ticks} ticks");
    assert_eq!(engine.role(), Role::Candidate);
    assert_eq!((engine.term(), engine.status().vote), (Term(5), NodeId(1)));
    let requests = flush(&mut engine);
    assert_eq!(receivers_and_kinds(&requests), vec![(2, "RequestVote"), (3, "RequestVote")]);
}

/// Dissertation §9.6 (pre-vote), which refines the same rule: with pre-vote
/// on, a silent follower first asks whether it could win, in the term it
/// would campaign in, without changing its own term or vote and without
/// writing anything. Only a quorum of pre-votes makes it a real candidate in
/// the next term; a quorum of refusals sends it back to following, its term
/// still unchanged.
#[test]
fn with_pre_vote_a_silent_follower_asks_first_and_keeps_its_term_until_a_quorum_agrees() {
    let timeout = election_timeout_ticks();
    for quorum_agrees in [true, false] {
        let mut engine = follower(default_config(NodeId(1)));
        assert!(ticks_until_campaign(&mut engine, 2 * timeout).is_some());
        assert_eq!(engine.role(), Role::PreCandidate);
        assert_eq!((engine.term(), engine.status().vote), (Term(4), NodeId::NONE));

        let ready = engine.ready();
        assert!(ready.hard_state.is_none() && ready.persist_id.is_none(), "a pre-vote writes nothing");
        assert_eq!(receivers_and_kinds(&ready.messages), vec![(2, "RequestPreVote"), (3, "RequestPreVote")]);
        for request in &ready.messages {
            assert_eq!(request.term, Term(5), "asks for the term it would campaign in");
        }

        if quorum_agrees {
            step_ok(&mut engine, pre_vote_response(2, 1, 5, true));
            assert_eq!(engine.role(), Role::Candidate);
            assert_eq!((engine.term(), engine.status().vote), (Term(5), NodeId(1)));
            let requests = flush(&mut engine);
            assert_eq!(receivers_and_kinds(&requests), vec![(2, "RequestVote"), (3, "RequestVote")]);
        } else {
            step_ok(&mut engine, pre_vote_response(2, 1, 4, false));
            assert_eq!(engine.role(), Role::PreCandidate, "one refusal of three is not a quorum");
            step_ok(&mut engine, pre_vote_response(3, 1, 4, false));
            assert_eq!(engine.role(), Role::Follower);
            assert_eq!((engine.term(), engine.status().vote), (Term(4), NodeId::NONE));
            assert!(flush(&mut engine).is_empty());
        }
    }
}

/// §5.2: "election timeouts are chosen randomly from a fixed interval" so
/// that split votes are rare; the engine draws them from
/// [T, 2T) for a minimum timeout T. Over 1,000 seeds every value of the
/// interval occurs, none outside it, and none much more often than the
/// others (each within 40% of the 100 expected).
#[test]
fn election_timeouts_are_spread_over_one_to_two_minimum_timeouts() {
    let timeout = election_timeout_ticks();
    let seeds = 1_000u64;
    let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
    for seed in 0..seeds {
        let mut config = paper_config(NodeId(1));
        config.random_seed = seed;
        let mut engine = bootstrapped(config, &[1, 2, 3]);
        let ticks = ticks_until_campaign(&mut engine, 3 * timeout).expect("every follower campaigns");
        *histogram.entry(ticks).or_default() += 1;
    }
    let values: Vec<u64> = histogram.keys().copied().collect();
    assert_eq!(values, (timeout..2 * timeout).collect::<Vec<_>>(), "histogram {histogram:?}");
    let expected = seeds / timeout;
    for (ticks, count) in &histogram {
        assert!(
            count * 10 >= expected * 6 && count * 10 <= expected * 14,
            "{count} of {seeds} seeds picked {ticks} ticks; histogram {histogram:?}"
        );
    }
}

/// Figure 2 (Followers), §5.2: the election timer restarts whenever the
/// follower hears from the current leader (AppendEntries or heartbeat).
/// A message from a leader of an older term does not count. An identical
/// twin, fed no messages, tells us the randomized timeout `r`: the follower
/// that is fed a leader message every `r - 1` ticks never campaigns, and
/// campaigns exactly `r` ticks after the last valid one.
#[test]
fn messages_from_the_current_leader_reset_the_election_timer() {
    let make = || {
        let mut engine = follower(paper_config(NodeId(1)));
        step_ok(&mut engine, heartbeat(2, 1, 4, 1));
        flush(&mut engine);
        assert_eq!(engine.leader(), NodeId(2));
        engine
    };
    let mut twin = make();
    let timeout = ticks_until_campaign(&mut twin, 3 * election_timeout_ticks()).expect("the twin campaigns");

    let mut engine = make();
    let leader_messages = [
        heartbeat(2, 1, 4, 1),
        append_entries(2, 1, 4, (3, 2), vec![], 1),
        append_entries(2, 1, 4, (3, 2), vec![command_entry(4, 4)], 1),
        heartbeat(2, 1, 4, 1),
    ];
    for leader_message in leader_messages {
        assert_eq!(ticks_until_campaign(&mut engine, timeout - 1), None);
        step_ok(&mut engine, leader_message);
        flush(&mut engine);
    }
    assert_eq!(ticks_until_campaign(&mut engine, timeout - 1), None);
    assert!(is_stale_term(&engine.step(heartbeat(3, 1, 3, 1))), "a deposed leader's heartbeat");
    assert_eq!(ticks_until_campaign(&mut engine, 1), Some(1), "the stale heartbeat did not reset the timer");
}

/// Figure 2 (Followers), §5.2: granting a vote also restarts the election
/// timer (the node just helped a candidate; campaigning would undo that),
/// with a fresh random timeout. Refusing a vote does not, even when the
/// request carries a higher term that the follower adopts: a candidate
/// whose log is behind cannot win, and must not hold back the servers that
/// can. Identical twins receive, after `r - 1` ticks, a vote request in
/// their term or in the next: the ones that refuse (the candidate's log is
/// behind) campaign on the next tick, the ones that grant wait a whole new
/// timeout.
#[test]
fn granting_a_vote_resets_the_election_timer() {
    let make = || follower(paper_config(NodeId(1)));
    let timeout =
        ticks_until_campaign(&mut make(), 3 * election_timeout_ticks()).expect("a follower campaigns");

    for term in [4, 5] {
        let mut refusing = make();
        assert_eq!(ticks_until_campaign(&mut refusing, timeout - 1), None);
        step_ok(&mut refusing, request_vote(2, 1, term, 1, 1));
        assert_eq!(vote_answer(only(&flush(&mut refusing))), Some((VoteKind::Vote, false)));
        assert_eq!(refusing.term(), Term(term));
        assert_eq!(ticks_until_campaign(&mut refusing, 1), Some(1), "refused in term {term}");

        let mut granting = make();
        assert_eq!(ticks_until_campaign(&mut granting, timeout - 1), None);
        step_ok(&mut granting, request_vote(2, 1, term, 3, 2));
        assert_eq!(vote_answer(only(&flush(&mut granting))), Some((VoteKind::Vote, true)));
        let timer = granting.election_timer();
        assert_eq!(timer.elapsed_ticks, 0, "granted in term {term}");
        assert!(timer.timeout_ticks >= election_timeout_ticks());
        assert_eq!(ticks_until_campaign(&mut granting, timer.timeout_ticks - 1), None);
        assert_eq!(ticks_until_campaign(&mut granting, 1), Some(1));
    }
}
