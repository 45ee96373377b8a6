//! §5.3 and Figure 7: a new leader brings every follower's log into
//! agreement with its own, whatever the follower holds.

use super::*;

/// Lets `leader` and `follower` exchange messages directly until neither
/// has anything to say. Messages to anyone else are lost. Neither may ever
/// see the other break the protocol.
fn exchange(leader: &mut Engine, follower: &mut Engine) {
    for _ in 0..MAX_ROUNDS {
        let leader_spoke = pass_messages(leader, follower);
        let follower_spoke = pass_messages(follower, leader);
        if !leader_spoke && !follower_spoke {
            return;
        }
    }
    panic!("the leader and the follower kept talking");
}

/// Hands `from`'s pending messages for `to` over; returns whether there were any.
fn pass_messages(from: &mut Engine, to: &mut Engine) -> bool {
    let mut moved = false;
    for message in flush(from) {
        if message.to == to.id() {
            moved = true;
            let result = to.step(message);
            assert!(!matches!(result, Err(StepError::ProtocolViolation { .. })), "{result:?}");
            to.check_invariants().unwrap();
        }
    }
    moved
}

/// Figure 7, §5.3: "the leader handles inconsistencies by forcing the
/// followers' logs to duplicate its own": it finds the latest entry where
/// the logs agree, the follower deletes everything after it, and the leader
/// sends everything after it. The leader of term 8 has
/// `[1, 1, 1, 4, 4, 5, 5, 6, 6, 6]` (plus its blank entry of term 8); the
/// followers are Figure 7's (a)–(f): missing entries (a, b), extra
/// uncommitted entries (c, d), both (e, f), including entries of terms
/// the leader never saw (d, f). A third voter lets the leader win and then
/// stays silent; with the follower's acknowledgement the leader commits its
/// whole log, and the follower learns that too.
#[test]
fn a_leader_brings_every_kind_of_follower_log_into_agreement() {
    let leader_log: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];
    let followers: [(&str, &[u64]); 6] = [
        ("(a) missing one entry", &[1, 1, 1, 4, 4, 5, 5, 6, 6]),
        ("(b) missing many entries", &[1, 1, 1, 4]),
        ("(c) one extra entry of the leader's last term", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6]),
        ("(d) extra entries of a term the leader never saw", &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7]),
        ("(e) missing entries and extra ones of term 4", &[1, 1, 1, 4, 4, 4, 4]),
        ("(f) a long tail of terms 2 and 3", &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3]),
    ];
    for (name, follower_log) in followers {
        let leader_stored =
            Stored { voter_ids: &[1, 2, 3], log_terms: leader_log, term: 7, vote: 0, commit: 1 };
        let mut leader = leader_stored.restore(paper_config(NodeId(1)));
        let follower_term = *follower_log.last().unwrap();
        let follower_stored = Stored {
            voter_ids: &[1, 2, 3],
            log_terms: follower_log,
            term: follower_term,
            vote: 0,
            commit: 1,
        };
        let mut follower = follower_stored.restore(paper_config(NodeId(2)));

        leader.campaign_now();
        flush(&mut leader);
        step_ok(&mut leader, vote_response(3, 1, 8, true));
        assert_eq!((leader.role(), leader.term()), (Role::Leader, Term(8)), "{name}");

        exchange(&mut leader, &mut follower);
        let mut expected_terms = leader_log.to_vec();
        expected_terms.push(8);
        assert_eq!(log_terms(&leader), expected_terms, "{name}: the leader's log never changes");
        assert_eq!(log_terms(&follower), expected_terms, "{name}");
        assert_eq!(
            follower.entries(LogIndex(1), follower.last_index()),
            leader.entries(LogIndex(1), leader.last_index()),
            "{name}: entry for entry"
        );
        assert_eq!(leader.commit_index(), LogIndex(11), "{name}");
        // The follower learns the commit index from the leader's next
        // heartbeat ("future AppendEntries RPCs (including heartbeats)", §5.3).
        leader.tick();
        exchange(&mut leader, &mut follower);
        assert_eq!(follower.commit_index(), LogIndex(11), "{name}");
        assert_eq!((follower.term(), follower.leader()), (Term(8), NodeId(1)), "{name}");
    }
}
