//! Figure 2, "Rules for Servers — Candidates", and §5.2: how an election
//! starts, is won, is lost to another leader, and is retried.

use super::*;

/// Node 1 of voters {1, ..., 5}: a follower restarted from a log
/// `[1, 1, 2]` in term 4.
fn follower_of_five() -> Engine {
    Stored { voter_ids: &[1, 2, 3, 4, 5], log_terms: &[1, 1, 2], term: 4, vote: 0, commit: 1 }
        .restore(paper_config(NodeId(1)))
}

/// Figure 2 (Candidates), §5.2: "on conversion to candidate: increment the
/// current term, vote for self, reset the election timer, send RequestVote
/// to all other servers". The requests leave in the same batch as the write
/// of the new term and vote, without waiting for it: a request promises
/// nothing. What must wait is the counting of the candidate's own vote (see
/// the next test).
#[test]
fn on_conversion_a_candidate_votes_for_itself_in_a_new_term_and_asks_everyone_else() {
    let timeout = election_timeout_ticks();
    let mut engine = follower_of_five();
    assert!(ticks_until_campaign(&mut engine, 2 * timeout).is_some());
    assert_eq!(engine.role(), Role::Candidate);

    let ready = engine.ready();
    let hard_state = ready.hard_state.expect("the new term and vote are written");
    assert_eq!((hard_state.term, hard_state.vote), (Term(5), NodeId(1)));
    let persist_id = ready.persist_id.expect("the vote must be made durable");
    let requests = ready.messages;
    assert_eq!(
        receivers_and_kinds(&requests),
        vec![(2, "RequestVote"), (3, "RequestVote"), (4, "RequestVote"), (5, "RequestVote")]
    );
    for request in &requests {
        assert_eq!(request.term, Term(5));
        let MessageBody::RequestVote(body) = &request.body else { unreachable!() };
        assert_eq!((body.last_log_index, body.last_log_term), (LogIndex(3), Term(2)));
    }
    engine.persisted(persist_id);
    assert!(engine.ready().messages.is_empty(), "the requests went out once");
    engine.check_invariants().unwrap();

    // The election timer restarted on conversion: a full randomized timeout
    // passes before the next election, which is in the next term.
    let ticks = ticks_until_campaign_again(&mut engine, 2 * timeout);
    assert!((timeout..2 * timeout).contains(&ticks), "next election after {ticks} ticks");
    assert_eq!((engine.role(), engine.term()), (Role::Candidate, Term(6)));
}

/// Ticks a candidate until it starts another election (its term moves).
fn ticks_until_campaign_again(engine: &mut Engine, limit: u64) -> u64 {
    let term = engine.term();
    (1..=limit)
        .find(|_| {
            engine.tick();
            engine.term() != term
        })
        .expect("a new election")
}

/// §5.2 with §5.6's durability: a vote counts toward a majority only once
/// it is durable, the candidate's own included. A node that crashed before
/// its own vote was on disk could restart without it and vote for another
/// candidate of the same term; had its first vote counted, two candidates
/// could win that term. So with five voters, two grants and an undurable
/// vote for itself are not enough; once its write is acknowledged they
/// are. Three grants from others are a majority without it, but the
/// candidate takes office only once its own term is durable: a leader that
/// crashed before that write would restart in the previous term and could
/// be elected in this one again, by the same voters, with another log.
#[test]
fn a_candidate_counts_its_own_vote_only_once_it_is_durable() {
    let mut engine = follower_of_five();
    engine.campaign_now();
    let ready = engine.ready();
    let persist_id = ready.persist_id.expect("the vote must be made durable");
    let term = engine.term().get();
    step_ok(&mut engine, vote_response(2, 1, term, true));
    step_ok(&mut engine, vote_response(3, 1, term, true));
    assert_eq!(engine.role(), Role::Candidate, "two grants and a vote for itself not yet durable");
    engine.check_invariants().unwrap();
    engine.persisted(persist_id);
    assert_eq!(engine.role(), Role::Leader, "two grants and a durable vote for itself");
    flush(&mut engine);

    let mut engine = follower_of_five();
    engine.campaign_now();
    let persist_id = engine.ready().persist_id.expect("the vote must be made durable");
    let term = engine.term().get();
    for voter in [2, 3, 4] {
        step_ok(&mut engine, vote_response(voter, 1, term, true));
    }
    assert_eq!(engine.role(), Role::Candidate, "a majority of grants, but its own term is not durable yet");
    engine.check_invariants().unwrap();
    engine.persisted(persist_id);
    assert_eq!(engine.role(), Role::Leader, "three grants and its own durable term");
    engine.check_invariants().unwrap();
}

/// Figure 2 (Candidates), §5.2: "if votes are received from a majority of
/// servers, become leader". With five voters the candidate needs two votes
/// besides its own; a repeated grant from the same voter counts once, and
/// a refusal does not count.
#[test]
fn a_candidate_becomes_leader_with_votes_from_a_majority() {
    let mut engine = follower_of_five();
    engine.campaign_now();
    flush(&mut engine);
    let term = engine.term().get();

    step_ok(&mut engine, vote_response(2, 1, term, true));
    step_ok(&mut engine, vote_response(2, 1, term, true));
    step_ok(&mut engine, vote_response(3, 1, term, false));
    assert_eq!(engine.role(), Role::Candidate, "two of five votes");
    step_ok(&mut engine, vote_response(4, 1, term, true));
    assert_eq!(engine.role(), Role::Leader, "three of five votes");
    assert_eq!((engine.term(), engine.leader()), (Term(term), NodeId(1)));
    flush(&mut engine);
}

/// §5.2: "the third possible outcome is that a candidate neither wins nor
/// loses": with refusals from a majority it cannot win this term. The
/// engine then stops campaigning and waits as a follower (still having
/// voted for itself in this term) rather than holding out as a candidate.
/// It also restarts its election timer, backing off from the moment it
/// learned it lost (as etcd does; Figure 2's candidate would campaign again
/// when its first timeout elapses): the back-off delays only the loser.
#[test]
fn a_candidate_refused_by_a_majority_gives_up_the_term() {
    let mut engine = follower_of_five();
    engine.campaign_now();
    flush(&mut engine);
    engine.tick();
    assert_eq!(engine.election_timer().elapsed_ticks, 1);
    let term = engine.term().get();
    for voter in [2, 3] {
        step_ok(&mut engine, vote_response(voter, 1, term, false));
    }
    assert_eq!(engine.role(), Role::Candidate, "two refusals of five");
    step_ok(&mut engine, vote_response(4, 1, term, false));
    assert_eq!(engine.role(), Role::Follower);
    assert_eq!((engine.term(), engine.status().vote), (Term(term), NodeId(1)));
    assert_eq!(engine.election_timer().elapsed_ticks, 0);
}

/// Figure 2 (Candidates), §5.2: "if AppendEntries is received from a new
/// leader, convert to follower" — when the leader's term is at least the
/// candidate's. The message is then handled as a follower would. A leader of
/// an older term is refused and the candidate keeps campaigning.
#[test]
fn a_candidate_hearing_from_a_leader_of_its_term_becomes_its_follower() {
    for message_kind in ["AppendEntries", "Heartbeat"] {
        let mut engine = follower_of_five();
        engine.campaign_now();
        flush(&mut engine);
        let term = engine.term().get();

        assert!(is_stale_term(&engine.step(heartbeat(3, 1, term - 1, 1))));
        assert_eq!(engine.role(), Role::Candidate, "an older leader does not count");
        assert_eq!(
            receivers_and_kinds(&flush(&mut engine)),
            vec![(3, "HeartbeatResponse")],
            "it is told the term"
        );

        let from_leader = match message_kind {
            "AppendEntries" => append_entries(3, 1, term, (3, 2), vec![command_entry(4, term)], 1),
            _ => heartbeat(3, 1, term, 1),
        };
        step_ok(&mut engine, from_leader);
        assert_eq!(engine.role(), Role::Follower, "{message_kind}");
        assert_eq!((engine.term(), engine.leader()), (Term(term), NodeId(3)));
        let answer = only(&flush(&mut engine)).clone();
        assert_eq!(answer.to, NodeId(3));
        if let Some(response) = append_answer(&answer) {
            assert!(response.success);
            assert_eq!(response.index, LogIndex(4));
            assert_eq!(log_terms(&engine), vec![1, 1, 2, term]);
        }
    }
}

/// Figure 2 (Candidates), §5.2: "if the election timeout elapses, start a
/// new election" — the way out of a split vote. Four voters, two candidates
/// in term 1 with two votes each: nobody wins. The randomized timers fire
/// at different times; the first node to time out starts term 2 and wins
/// it.
#[test]
fn a_split_vote_is_resolved_by_a_new_election_when_a_timeout_fires() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3, 4], paper_config);
    cluster.stabilize();
    cluster.engine_mut(1).campaign_now();
    cluster.engine_mut(2).campaign_now();
    // Each candidate's requests leave with its first batch; its own vote
    // counts once that batch is durable.
    for id in [1, 2] {
        while cluster.process_ready(NodeId(id)) {}
    }
    // Node 3 hears from candidate 1 first, node 4 from candidate 2 first.
    deliver_between(&mut cluster, 1, 3);
    deliver_between(&mut cluster, 2, 4);
    let mut observer = SafetyObserver::default();
    run_rounds(&mut cluster, &mut observer, lose_nothing);
    for id in [1, 2] {
        assert_eq!((cluster.engine(id).role(), cluster.engine(id).term()), (Role::Candidate, Term(1)));
    }
    assert_eq!(cluster.engine(3).status().vote, NodeId(1));
    assert_eq!(cluster.engine(4).status().vote, NodeId(2));

    let timeout = election_timeout_ticks();
    let mut ticks = 0;
    while leaders(&cluster).is_empty() {
        ticks += 1;
        assert!(ticks <= 2 * timeout, "no leader after {ticks} ticks");
        tick_and_settle(&mut cluster, &mut observer);
    }
    let leader = leaders(&cluster)[0];
    assert_eq!(leaders(&cluster), vec![leader]);
    assert_eq!(cluster.engine(leader).term(), Term(2), "won by the first new election");
    for id in 1..=4 {
        assert_eq!((cluster.engine(id).term(), cluster.engine(id).leader()), (Term(2), NodeId(leader)));
    }
    observer.assert_safe();
}
