//! Figure 2, "AppendEntries RPC — Receiver implementation", and §5.3: how a
//! follower checks, repairs and extends its log, and advances its commit
//! index. Node 1 is the follower, node 2 the leader.

use super::*;

/// Node 1 of voters {1, 2, 3}, a follower restarted from a log with
/// `log_terms` in `term`, having committed index 1.
fn follower_with_log(log_terms: &[u64], term: u64) -> Engine {
    Stored { voter_ids: &[1, 2, 3], log_terms, term, vote: 0, commit: 1 }.restore(paper_config(NodeId(1)))
}

/// The follower's answer to one AppendEntries (it must send exactly one).
fn answer_to(engine: &mut Engine, append: Message) -> AppendEntriesResponse {
    step_ok(engine, append);
    let sent = flush(engine);
    let answer = only(&sent);
    assert_eq!(answer.to, NodeId(2));
    append_answer(answer).expect("an AppendEntries answer").clone()
}

/// Figure 2 (AppendEntries, receiver rule 1): "reply false if term <
/// currentTerm". The follower leaves its log alone and tells the stale
/// leader its newer term (in a heartbeat answer).
#[test]
fn an_append_of_an_older_term_is_refused() {
    let mut engine = follower_with_log(&[1, 1, 2], 5);
    let result = engine.step(append_entries(2, 1, 4, (3, 2), vec![command_entry(4, 4)], 3));
    assert!(is_stale_term(&result));
    assert_eq!(log_terms(&engine), vec![1, 1, 2]);
    assert_eq!(engine.commit_index(), LogIndex(1));
    let reply = only(&flush(&mut engine)).clone();
    assert_eq!((reply.to, reply.term, reply.kind()), (NodeId(2), Term(5), "HeartbeatResponse"));
}

/// Figure 2 (AppendEntries, receiver rule 2), §5.3 consistency check:
/// "reply false if the log does not contain an entry at prevLogIndex whose
/// term matches prevLogTerm". The refusal names the refused index and a
/// hint for the leader: the term found there and where that term begins,
/// or (when the log is too short) the follower's last index + 1. The log
/// is untouched by a refused append. Follower's log: `[1, 1, 2, 2]`.
#[test]
fn an_append_whose_previous_entry_does_not_match_is_refused() {
    // (prevLogIndex, prevLogTerm, expected hint: conflict index and term)
    let cases: [(u64, u64, (u64, Option<u64>)); 4] = [
        (4, 3, (3, Some(2))), // term 2 at index 4, where term 2 begins at index 3
        (2, 2, (1, Some(1))), // term 1 at index 2, where term 1 begins at index 1
        (5, 2, (5, None)),    // no entry at index 5
        (9, 3, (5, None)),    // far past the end
    ];
    for (prev_index, prev_term, (conflict_index, conflict_term)) in cases {
        let mut engine = follower_with_log(&[1, 1, 2, 2], 3);
        let append =
            append_entries(2, 1, 3, (prev_index, prev_term), vec![command_entry(prev_index + 1, 3)], 1);
        let response = answer_to(&mut engine, append);
        let case = format!("previous entry ({prev_index}, {prev_term})");
        assert!(!response.success, "{case}");
        assert_eq!(response.index, LogIndex(prev_index), "{case}");
        assert_eq!(
            (response.conflict_index, response.conflict_term),
            (LogIndex(conflict_index), conflict_term.map(Term)),
            "{case}"
        );
        assert_eq!(response.last_log_index, LogIndex(4), "{case}");
        assert_eq!(log_terms(&engine), vec![1, 1, 2, 2], "{case}: the log is untouched");
    }
    let mut engine = follower_with_log(&[1, 1, 2, 2], 3);
    assert!(
        answer_to(&mut engine, append_entries(2, 1, 3, (4, 2), vec![], 1)).success,
        "a matching previous entry"
    );
}

/// Figure 2 (AppendEntries, receiver rule 3), §5.3: "if an existing entry
/// conflicts with a new one (same index, different terms), delete the
/// existing entry and all that follow it". The follower's uncommitted
/// `[.., 2, 2, 2]` tail after index 2 gives way to the leader's term-3
/// entry; only the new entry is handed to storage (which discards the old
/// tail from that index on).
#[test]
fn a_conflicting_entry_and_all_that_follow_it_are_deleted() {
    let mut engine = follower_with_log(&[1, 1, 2, 2, 2], 3);
    step_ok(&mut engine, append_entries(2, 1, 3, (2, 1), vec![command_entry(3, 3)], 1));
    assert_eq!(log_terms(&engine), vec![1, 1, 3]);
    let ready = engine.ready();
    assert_eq!(ready.entries, vec![command_entry(3, 3)]);
    engine.persisted(ready.persist_id.unwrap());
    let response = append_answer(only(&engine.ready().messages)).unwrap().clone();
    assert_eq!((response.success, response.index, response.last_log_index), (true, LogIndex(3), LogIndex(3)));
    engine.check_invariants().unwrap();
}

/// Figure 2 (AppendEntries, receiver rule 4): "append any new entries not
/// already in the log". Entries the follower already holds are not written
/// again, and an append whose entries are all present — a delayed, shorter
/// copy — does not cut the longer log: nothing conflicts, so nothing is
/// deleted. The acknowledgement names the last entry the append covered.
#[test]
fn only_entries_not_already_in_the_log_are_appended() {
    let mut engine = follower_with_log(&[1, 1, 2], 2);
    let append = append_entries(
        2,
        1,
        2,
        (1, 1),
        vec![command_entry(2, 1), command_entry(3, 2), command_entry(4, 2)],
        1,
    );
    step_ok(&mut engine, append);
    assert_eq!(log_terms(&engine), vec![1, 1, 2, 2]);
    let ready = engine.ready();
    assert_eq!(ready.entries, vec![command_entry(4, 2)], "only the new entry is written");
    engine.persisted(ready.persist_id.unwrap());
    assert_eq!(append_answer(only(&engine.ready().messages)).unwrap().index, LogIndex(4));

    let response = answer_to(&mut engine, append_entries(2, 1, 2, (1, 1), vec![command_entry(2, 1)], 1));
    assert_eq!((response.success, response.index), (true, LogIndex(2)));
    assert_eq!(log_terms(&engine), vec![1, 1, 2, 2], "the longer log is kept");
}

/// Figure 2 (AppendEntries, receiver rule 5): "if leaderCommit >
/// commitIndex, set commitIndex = min(leaderCommit, index of last new
/// entry)" — the follower commits only what the leader has just shown to
/// match, never entries beyond the append that may still be stale, and its
/// commit index never moves backwards. Follower's log: `[1, 1, 2, 2, 2]`,
/// committed to index 1.
#[test]
fn the_follower_commits_up_to_the_leaders_commit_within_what_the_append_matched() {
    /// One AppendEntries and the commit index it must leave.
    struct Case {
        previous: (u64, u64),
        /// The terms of the entries it carries, from prevLogIndex + 1.
        entry_terms: &'static [u64],
        leader_commit: u64,
        expected_commit: u64,
    }
    let cases = [
        Case { previous: (2, 1), entry_terms: &[], leader_commit: 5, expected_commit: 2 },
        Case { previous: (2, 1), entry_terms: &[2], leader_commit: 5, expected_commit: 3 },
        Case { previous: (4, 2), entry_terms: &[2], leader_commit: 3, expected_commit: 3 },
        Case { previous: (5, 2), entry_terms: &[], leader_commit: 5, expected_commit: 5 },
        Case { previous: (5, 2), entry_terms: &[2, 2], leader_commit: 6, expected_commit: 6 },
        Case { previous: (1, 1), entry_terms: &[], leader_commit: 0, expected_commit: 1 },
    ];
    for Case { previous: (prev_index, prev_term), entry_terms: terms, leader_commit, expected_commit } in
        cases
    {
        let mut engine = follower_with_log(&[1, 1, 2, 2, 2], 2);
        let entries: Vec<Entry> = terms
            .iter()
            .enumerate()
            .map(|(offset, term)| command_entry(prev_index + 1 + offset as u64, *term))
            .collect();
        let response =
            answer_to(&mut engine, append_entries(2, 1, 2, (prev_index, prev_term), entries, leader_commit));
        let case = format!(
            "previous entry ({prev_index}, {prev_term}), {} entries, leaderCommit {leader_commit}",
            terms.len()
        );
        assert!(response.success, "{case}");
        assert_eq!(engine.commit_index(), LogIndex(expected_commit), "{case}");
    }
}

/// §5.3, §5.5: "Raft RPCs are idempotent": receiving the same AppendEntries
/// twice changes nothing the second time — no write, no state change — and
/// repeats the same acknowledgement. When the follower has meanwhile
/// committed past the append's previous entry, it skips the committed part
/// (everything up to there matches any leader) and still acknowledges the
/// whole message, which moves nothing on the leader either.
#[test]
fn a_repeated_append_changes_nothing() {
    for leader_commit in [1, 2] {
        let mut engine = follower_with_log(&[1, 1], 2);
        let append =
            append_entries(2, 1, 2, (1, 1), vec![command_entry(2, 1), command_entry(3, 2)], leader_commit);
        let first = answer_to(&mut engine, append.clone());
        assert_eq!((first.success, first.index), (true, LogIndex(3)));
        let status = engine.status();
        let log = engine.entries(LogIndex(1), engine.last_index());

        step_ok(&mut engine, append);
        let ready = engine.ready();
        assert!(
            ready.entries.is_empty() && ready.hard_state.is_none() && ready.persist_id.is_none(),
            "{ready:?}"
        );
        let repeat = append_answer(only(&ready.messages)).unwrap().clone();
        assert_eq!((repeat.success, repeat.index), (first.success, first.index), "the same acknowledgement");
        assert_eq!(engine.status(), status);
        assert_eq!(engine.entries(LogIndex(1), engine.last_index()), log);
        engine.check_invariants().unwrap();
    }
}
