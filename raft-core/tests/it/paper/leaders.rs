//! Figure 2, "Rules for Servers — Leaders", and §5.3: what a new leader
//! sends, how it replicates proposals, how it tracks each follower, how it
//! backs off after a refusal, and when it commits.

use super::*;

/// Figure 2 (Leaders), §5.2, §5.4.2, §8: "upon election, send initial
/// empty AppendEntries to each server". Our leader first appends a blank
/// entry of its own term (so that it can commit entries of earlier terms
/// and learn its commit index), and its first AppendEntries to each peer
/// carries that entry after the leader's previous last entry. Heartbeats
/// then go out every heartbeat interval.
#[test]
fn a_new_leader_sends_its_blank_entry_to_every_peer_then_heartbeats() {
    let stored = Stored { voter_ids: &[1, 2, 3, 4, 5], log_terms: &[1, 1, 2], term: 4, vote: 0, commit: 1 };
    let mut engine = stored.restore(paper_config(NodeId(1)));
    let sent = win_election(&mut engine, &[2, 3]);

    assert_eq!(log_terms(&engine), vec![1, 1, 2, 5]);
    let blank = Entry { term: Term(5), index: LogIndex(4), payload: EntryPayload::Blank };
    assert_eq!(engine.entries(LogIndex(4), LogIndex(4)), vec![blank.clone()]);
    assert_eq!(
        receivers_and_kinds(&sent),
        vec![(2, "AppendEntries"), (3, "AppendEntries"), (4, "AppendEntries"), (5, "AppendEntries")]
    );
    for message in &sent {
        let append = append_request(message).unwrap();
        assert_eq!(message.term, Term(5));
        assert_eq!((append.prev_log_index, append.prev_log_term), (LogIndex(3), Term(2)));
        assert_eq!(append.entries, vec![blank.clone()]);
        assert_eq!(append.leader_commit, LogIndex(1));
    }

    for _ in 0..engine.config().heartbeat_interval_ticks {
        engine.tick();
    }
    let sent = flush(&mut engine);
    let heartbeats: Vec<u64> = sent.iter().filter(|m| m.kind() == "Heartbeat").map(|m| m.to.get()).collect();
    assert_eq!(heartbeats, vec![2, 3, 4, 5]);
}

/// Node 1, leader of voters {1, 2, 3} in term 5 (log `[1, 1, 2]` then its
/// blank entry at index 4), with both followers known to match it.
fn leader_of_three_in_step() -> Engine {
    let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2], term: 4, vote: 0, commit: 1 };
    let mut engine = stored.restore(paper_config(NodeId(1)));
    win_election(&mut engine, &[2]);
    for follower in [2, 3] {
        step_ok(&mut engine, append_accepted(follower, 1, 5, 4));
    }
    flush(&mut engine);
    assert_eq!(engine.commit_index(), LogIndex(4));
    engine
}

/// Figure 2 (Leaders), §5.3: "if a command is received from a client,
/// append the entry to the local log" and replicate it. The proposal is
/// appended in the leader's term right after its last entry; the batch that
/// asks for it to be persisted also carries the AppendEntries to every
/// follower (the leader's disk write and the replication run in parallel).
#[test]
fn a_leader_appends_proposals_to_its_log_and_replicates_them() {
    let mut engine = leader_of_three_in_step();
    let data = Bytes::from_static(b"x");
    assert_eq!(engine.propose(data.clone(), None), Ok((Term(5), LogIndex(5))));
    let proposed =
        Entry { term: Term(5), index: LogIndex(5), payload: EntryPayload::Command { client: None, data } };
    assert_eq!(engine.entries(LogIndex(5), LogIndex(5)), vec![proposed.clone()]);

    let ready = engine.ready();
    assert_eq!(ready.entries, vec![proposed.clone()]);
    assert!(ready.persist_id.is_some());
    assert_eq!(receivers_and_kinds(&ready.messages), vec![(2, "AppendEntries"), (3, "AppendEntries")]);
    for message in &ready.messages {
        let append = append_request(message).unwrap();
        assert_eq!((append.prev_log_index, append.prev_log_term), (LogIndex(4), Term(5)));
        assert_eq!(append.entries, vec![proposed.clone()]);
        assert_eq!(append.leader_commit, LogIndex(4));
    }
    engine.persisted(ready.persist_id.unwrap());
    engine.check_invariants().unwrap();
}

/// Figure 2 (Leaders, nextIndex and matchIndex): "if successful, update
/// nextIndex and matchIndex for the follower". A new leader starts every
/// follower at match 0, next = its last index + 1 (before its blank entry),
/// probing. An acknowledgement moves match to the acknowledged index and
/// next past it; entries sent ahead of acknowledgement move next only; a
/// late or repeated acknowledgement never moves match backwards.
#[test]
fn a_successful_answer_moves_match_and_next_forward() {
    let peer = |engine: &Engine| {
        let status = engine.status().peers.into_iter().find(|p| p.id == NodeId(2)).unwrap();
        (status.match_index.get(), status.next_index.get(), status.state)
    };
    let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &[1, 1, 2], term: 4, vote: 0, commit: 1 };
    let mut engine = stored.restore(paper_config(NodeId(1)));
    win_election(&mut engine, &[2]);
    assert_eq!(peer(&engine), (0, 4, "probe"));

    step_ok(&mut engine, append_accepted(2, 1, 5, 4));
    assert_eq!(peer(&engine), (4, 5, "replicate"));

    engine.propose(Bytes::from_static(b"a"), None).unwrap();
    engine.propose(Bytes::from_static(b"b"), None).unwrap();
    let sent = flush(&mut engine);
    let to_peer = addressed_to(&sent, 2);
    assert_eq!(append_request(to_peer[0]).unwrap().entries.len(), 2);
    assert_eq!(peer(&engine), (4, 7, "replicate"), "sent ahead, not yet acknowledged");

    step_ok(&mut engine, append_accepted(2, 1, 5, 6));
    assert_eq!(peer(&engine), (6, 7, "replicate"));
    step_ok(&mut engine, append_accepted(2, 1, 5, 5));
    assert_eq!(peer(&engine), (6, 7, "replicate"), "a late acknowledgement changes nothing");
}

/// Figure 2 (Leaders), §5.3: "if AppendEntries fails because of log
/// inconsistency, decrement nextIndex and retry". With the follower's hint
/// (end of §5.3) the leader skips a whole conflicting term at once: to the
/// follower's last index + 1 when its log is too short, past the leader's
/// own last entry of the conflicting term when it has that term, or to the
/// first index of that term in the follower's log when it does not. The
/// leader is Figure 7's: `[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]`, in term 8.
#[test]
fn a_refused_append_makes_the_leader_back_off_with_the_hint_and_retry() {
    /// A follower's refusal and where the leader's retry must start.
    struct Case {
        situation: &'static str,
        /// The follower's hint: conflict index and term.
        hint: (u64, Option<u64>),
        /// The index after which the retry continues (its prevLogIndex).
        retry_after: u64,
    }
    let cases = [
        Case { situation: "its log ends at index 4", hint: (5, None), retry_after: 4 },
        Case {
            situation: "term 3 at index 10, which began at index 7; the leader has no term 3",
            hint: (7, Some(3)),
            retry_after: 6,
        },
        Case {
            situation: "term 4 at index 10, which began at index 4; the leader's term 4 ends at 5",
            hint: (4, Some(4)),
            retry_after: 5,
        },
    ];
    let leader_log = [1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    for Case { situation, hint, retry_after } in cases {
        let stored = Stored { voter_ids: &[1, 2, 3], log_terms: &leader_log, term: 7, vote: 0, commit: 1 };
        let mut engine = stored.restore(paper_config(NodeId(1)));
        let first = win_election(&mut engine, &[3]);
        let probe = append_request(addressed_to(&first, 2)[0]).unwrap();
        assert_eq!((probe.prev_log_index, probe.prev_log_term), (LogIndex(10), Term(6)));

        step_ok(&mut engine, append_rejected(2, 1, 8, 10, hint, 10));
        let sent = flush(&mut engine);
        let retries = addressed_to(&sent, 2);
        assert_eq!(retries.len(), 1, "{situation}: one retry");
        let retry = append_request(retries[0]).unwrap();
        let expected_prev_term = Term(leader_log[retry_after as usize - 1]);
        assert_eq!(
            (retry.prev_log_index, retry.prev_log_term),
            (LogIndex(retry_after), expected_prev_term),
            "{situation}"
        );
        let first_sent = retry.entries.first().map(|e| e.index);
        assert_eq!(
            first_sent,
            Some(LogIndex(retry_after + 1)),
            "{situation}: the retry carries the rest of the log"
        );

        // A refusal of an AppendEntries that is no longer outstanding is stale.
        step_ok(&mut engine, append_rejected(2, 1, 8, 10, hint, 10));
        assert!(
            addressed_to(&flush(&mut engine), 2).is_empty(),
            "{situation}: a repeated refusal is ignored"
        );
    }
}

/// Figure 2 (Leaders), §5.3–§5.4.2: "if there exists an N such that
/// N > commitIndex, a majority of matchIndex[i] ≥ N, and log[N].term ==
/// currentTerm: set commitIndex = N". Five voters; the leader (term 3, log
/// `[1, 1]` plus its blank entry at 3 and two commands at 4 and 5, all
/// durable) hears the acknowledgements in each row and must commit exactly
/// the row's index: the highest index held by three of five, and only if
/// that entry is of term 3.
#[test]
fn a_leader_commits_the_highest_entry_of_its_term_that_a_majority_holds() {
    // (acknowledged index of followers 2, 3, 4, 5 — 0 for none; expected commit)
    let cases: [([u64; 4], u64); 8] = [
        ([0, 0, 0, 0], 1),
        ([5, 0, 0, 0], 1),
        ([2, 2, 2, 2], 1),
        ([3, 2, 2, 0], 1),
        ([4, 3, 0, 0], 3),
        ([5, 5, 0, 0], 5),
        ([4, 4, 2, 2], 4),
        ([5, 4, 3, 2], 4),
    ];
    for (acknowledged, expected_commit) in cases {
        let stored = Stored { voter_ids: &[1, 2, 3, 4, 5], log_terms: &[1, 1], term: 2, vote: 0, commit: 1 };
        let mut engine = stored.restore(paper_config(NodeId(1)));
        win_election(&mut engine, &[2, 3]);
        engine.propose(Bytes::from_static(b"four"), None).unwrap();
        engine.propose(Bytes::from_static(b"five"), None).unwrap();
        flush(&mut engine);
        assert_eq!(log_terms(&engine), vec![1, 1, 3, 3, 3]);
        assert_eq!(engine.commit_index(), LogIndex(1));

        for (follower, index) in (2..=5).zip(acknowledged) {
            if index > 0 {
                step_ok(&mut engine, append_accepted(follower, 1, 3, index));
            }
        }
        assert_eq!(engine.commit_index(), LogIndex(expected_commit), "acknowledged {acknowledged:?}");
        flush(&mut engine);
    }
}
