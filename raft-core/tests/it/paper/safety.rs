//! §5.4: safety. The election restriction (§5.4.1), committing entries from
//! previous terms (§5.4.2, Figure 8), and Leader Completeness (§5.4.3).

use super::*;

/// Asserts the log (as terms) of each listed node.
fn assert_logs(cluster: &Cluster, expected: &[(u64, &[u64])], stage: &str) {
    for (id, terms) in expected {
        assert_eq!(log_terms(cluster.engine(*id)), terms.to_vec(), "{stage}: log of node {id}");
    }
}

/// Makes node `id` campaign and runs the cluster until it settles.
fn campaign(cluster: &mut Cluster, observer: &mut SafetyObserver, id: u64) {
    cluster.engine_mut(id).campaign_now();
    run_rounds(cluster, observer, lose_nothing);
}

/// Proposes `command` on leader `id` and runs the cluster until it settles.
fn propose(cluster: &mut Cluster, observer: &mut SafetyObserver, id: u64, command: &'static str) {
    cluster.engine_mut(id).propose(Bytes::from_static(command.as_bytes()), None).expect("a leader");
    run_rounds(cluster, observer, lose_nothing);
}

/// §5.4.1 (election restriction): "a candidate must contact a majority of
/// the cluster in order to be elected, which means every committed entry
/// must be present in at least one of those servers" — and those voters
/// refuse a candidate whose log is behind theirs. Three voters: an entry is
/// committed by nodes 1 and 2 while node 3 is cut off; node 1 crashes; node
/// 3, behind, campaigns again and again and never wins; node 2 wins. With
/// an injected bug that skips the log comparison, node 3 wins and its
/// leadership lacks the committed entry, which the safety observer reports.
#[test]
fn a_candidate_whose_log_is_behind_cannot_win() {
    for vote_without_log_check in [false, true] {
        let bugs = InjectedBugs { vote_without_log_check, ..InjectedBugs::default() };
        let mut cluster = Cluster::bootstrap(&[1, 2, 3], paper_config);
        for id in 1..=3 {
            cluster.engine_mut(id).inject_bugs(bugs);
        }
        let mut observer = SafetyObserver::default();
        campaign(&mut cluster, &mut observer, 1);
        cluster.isolate(3);
        propose(&mut cluster, &mut observer, 1, "x");
        assert_eq!(cluster.engine(1).commit_index(), LogIndex(3));
        assert_eq!(log_terms(cluster.engine(3)), vec![0, 1], "node 3 missed the entry");

        cluster.crash(1);
        cluster.heal();
        for _ in 0..3 {
            campaign(&mut cluster, &mut observer, 3);
            if cluster.engine(3).role() == Role::Leader {
                break;
            }
        }
        if vote_without_log_check {
            assert_eq!(cluster.engine(3).role(), Role::Leader, "the bug lets the stale candidate win");
            assert!(
                observer.violations.iter().any(|v| v.starts_with("Leader Completeness")),
                "the observer must notice: {:?}",
                observer.violations
            );
            continue;
        }
        assert_ne!(cluster.engine(3).role(), Role::Leader, "node 3 never wins");
        campaign(&mut cluster, &mut observer, 2);
        assert_eq!(leaders(&cluster), vec![2]);
        assert_eq!(cluster.engine(2).term_at(LogIndex(3)), Some(Term(1)), "the new leader holds the entry");
        assert_eq!(log_terms(cluster.engine(3)), log_terms(cluster.engine(2)), "and gives it to node 3");
        observer.assert_safe();
    }
}

// -------------------------------------------------------------------------
// Figure 8.

/// Figure 8's nodes. The scenario needs one entry per AppendEntries, so a
/// leader can hand a follower an old entry without its newest one (as S1
/// does in (c)).
fn figure_8_config(id: NodeId) -> Config {
    let mut config = paper_config(id);
    config.max_entries_per_message = 1;
    config
}

/// Whether `message` is an AppendEntries that would put an entry of term 4
/// into its receiver's log (the receiver holds the entry before it; an
/// append the receiver must refuse changes nothing, so it may pass).
fn would_store_entry_of_term_4(cluster: &Cluster, message: &Message) -> bool {
    let Some(append) = append_request(message) else {
        return false;
    };
    let receiver = cluster.engine(message.to.get());
    append.entries.iter().any(|e| e.term == Term(4))
        && receiver.term_at(append.prev_log_index) == Some(append.prev_log_term)
}

/// Runs Figure 8 (a) to (c) and returns the cluster with S1 leading term 4.
/// Logs are written as terms; index 1 holds the configuration, in term 1.
/// The leaders' entries are the blank entries they append when elected.
fn figure_8_through_c(bugs: InjectedBugs, observer: &mut SafetyObserver) -> Cluster {
    let voter_ids = [1, 2, 3, 4, 5];
    let stored: Vec<Stored> = voter_ids
        .iter()
        .map(|_| Stored { voter_ids: &voter_ids, log_terms: &[1], term: 1, vote: 0, commit: 1 })
        .collect();
    let mut cluster = cluster_from_storage(&voter_ids, &stored, figure_8_config);
    for id in voter_ids {
        cluster.engine_mut(id).inject_bugs(bugs);
    }

    // (a) S1 is elected in term 2; its entry at index 2 reaches S2 only.
    cluster.engine_mut(1).campaign_now();
    run_rounds(&mut cluster, observer, |_, m| {
        m.from == NodeId(1) && m.kind() == "AppendEntries" && m.to != NodeId(2)
    });
    assert_eq!((cluster.engine(1).role(), cluster.engine(1).term()), (Role::Leader, Term(2)), "(a)");
    assert_logs(&cluster, &[(1, &[1, 2]), (2, &[1, 2]), (3, &[1]), (4, &[1]), (5, &[1])], "(a)");
    assert_eq!(cluster.engine(1).commit_index(), LogIndex(1), "(a) two copies of five commit nothing");

    // (b) S1 crashes; S5 is elected in term 3 with votes from S3, S4 and
    // itself (S2's log is ahead of S5's, so S2 refuses); its entry at index
    // 2 reaches nobody.
    cluster.crash(1);
    cluster.engine_mut(5).campaign_now();
    run_rounds(&mut cluster, observer, |_, m| m.from == NodeId(5) && m.kind() == "AppendEntries");
    assert_eq!((cluster.engine(5).role(), cluster.engine(5).term()), (Role::Leader, Term(3)), "(b)");
    let votes: Vec<NodeId> = (2..=4).map(|id| cluster.engine(id).status().vote).collect();
    assert_eq!(votes, vec![NodeId::NONE, NodeId(5), NodeId(5)], "(b) votes of S2, S3, S4");
    assert_logs(&cluster, &[(5, &[1, 3])], "(b)");

    // (c) S5 crashes; S1 restarts and campaigns. Term 3 fails (S3 and S4
    // already voted for S5 in it); S1 wins term 4. It replicates its term-2
    // entry at index 2 to S3 — and to S4, so that the leader itself has seen
    // a majority hold it (S2's copy dates from term 2; the new leader has
    // not heard from S2). Its own term-4 entry at index 3 reaches nobody.
    cluster.crash(5);
    restart(&mut cluster, 1, bugs);
    cluster.engine_mut(1).campaign_now();
    run_rounds(&mut cluster, observer, lose_nothing);
    assert_eq!((cluster.engine(1).role(), cluster.engine(1).term()), (Role::Candidate, Term(3)), "(c)");
    cluster.engine_mut(1).campaign_now();
    run_rounds(&mut cluster, observer, would_store_entry_of_term_4);
    assert_eq!((cluster.engine(1).role(), cluster.engine(1).term()), (Role::Leader, Term(4)), "(c)");
    assert_logs(&cluster, &[(1, &[1, 2, 4]), (2, &[1, 2]), (3, &[1, 2]), (4, &[1, 2])], "(c)");
    let acknowledged: Vec<(NodeId, LogIndex)> =
        cluster.engine(1).status().peers.iter().map(|p| (p.id, p.match_index)).collect();
    assert_eq!(
        acknowledged,
        vec![
            (NodeId(2), LogIndex(0)),
            (NodeId(3), LogIndex(2)),
            (NodeId(4), LogIndex(2)),
            (NodeId(5), LogIndex(0))
        ],
        "(c) S1 knows that S1, S3 and S4 — a majority — hold index 2"
    );
    cluster
}

/// Figure 8 (d): S1 crashes; S5 restarts and wins term 5 with votes from
/// S2, S3 and S4 (its log ends in term 3, theirs in term 2) after a failed
/// attempt in term 4 (in which they voted for S1). S5 then overwrites index
/// 2 with its own term-3 entry on every live node.
fn figure_8_d(cluster: &mut Cluster, observer: &mut SafetyObserver, bugs: InjectedBugs) {
    cluster.crash(1);
    restart(cluster, 5, bugs);
    cluster.engine_mut(5).campaign_now();
    run_rounds(cluster, observer, lose_nothing);
    assert_ne!(cluster.engine(5).role(), Role::Leader, "(d) S2, S3 and S4 voted for S1 in term 4");
    cluster.engine_mut(5).campaign_now();
    run_rounds(cluster, observer, lose_nothing);
    assert_eq!((cluster.engine(5).role(), cluster.engine(5).term()), (Role::Leader, Term(5)), "(d)");
    assert_logs(cluster, &[(2, &[1, 3, 5]), (3, &[1, 3, 5]), (4, &[1, 3, 5]), (5, &[1, 3, 5])], "(d)");
    assert_eq!(cluster.engine(5).commit_index(), LogIndex(3), "(d)");
}

/// §5.4.2, Figure 8 (a)–(d): "Raft never commits log entries from previous
/// terms by counting replicas". In (c) the term-2 entry at index 2 is held
/// by a majority, and the leader of term 4 knows it, yet it is not
/// committed — rightly, because in (d) S5 is elected and replaces it.
/// Nothing committed was lost.
#[test]
fn figure_8_an_entry_of_an_earlier_term_is_not_committed_by_counting_replicas() {
    let mut observer = SafetyObserver::default();
    let mut cluster = figure_8_through_c(InjectedBugs::default(), &mut observer);
    assert_eq!(cluster.engine(1).commit_index(), LogIndex(1), "(c) index 2 must not be committed");
    assert!(cluster.nodes[&NodeId(1)].state_machine.applied_index < LogIndex(2));

    figure_8_d(&mut cluster, &mut observer, InjectedBugs::default());
    assert_eq!(observer.committed_term(2), Some(3), "index 2 ends up committed with S5's entry");
    observer.assert_safe();
}

/// §5.4.2, Figure 8 (e): "once an entry from the current term has been
/// committed, all prior entries are committed indirectly". If S1 instead
/// keeps leading after (c), its commit index stays at 1 until its term-4
/// entry at index 3 is held by a majority, then jumps to 3, committing the
/// term-2 entry with it. S5 can then never be elected: every majority
/// includes a node whose log ends in term 4.
#[test]
fn figure_8_an_earlier_entry_is_committed_once_an_entry_of_the_leaders_term_reaches_a_majority() {
    let mut observer = SafetyObserver::default();
    let mut cluster = figure_8_through_c(InjectedBugs::default(), &mut observer);

    let term_4_copies = |cluster: &Cluster| {
        (1..=4).filter(|id| cluster.engine(*id).term_at(LogIndex(3)) == Some(Term(4))).count()
    };
    let mut committed = false;
    for _ in 0..3 * election_timeout_ticks() {
        cluster.engine_mut(1).tick();
        while run_round(&mut cluster, &mut observer, &lose_nothing) {
            let commit = cluster.engine(1).commit_index();
            assert!(commit == LogIndex(1) || commit == LogIndex(3), "(e) commit {commit}");
            if commit == LogIndex(3) {
                assert!(
                    term_4_copies(&cluster) >= 3,
                    "(e) committed before a majority held the term-4 entry"
                );
                committed = true;
            }
        }
        if committed {
            break;
        }
    }
    assert!(committed, "(e) S1 commits once its term-4 entry is replicated");

    cluster.crash(1);
    restart(&mut cluster, 5, InjectedBugs::default());
    for _ in 0..3 {
        campaign(&mut cluster, &mut observer, 5);
        assert_ne!(cluster.engine(5).role(), Role::Leader, "(e) S5 cannot be elected");
    }
    assert_eq!(observer.committed_term(2), Some(2));
    assert_eq!(observer.committed_term(3), Some(4));
    observer.assert_safe();
}

/// The same scenario with an engine that commits entries of earlier terms by
/// counting replicas (an injected bug): in (c) S1 commits and applies the
/// term-2 entry at index 2, and in (d) S5 overwrites it on every node and
/// commits its own entry there — two different entries committed at one
/// index, the State Machine Safety violation Figure 8 warns about. This
/// proves the rule (and the previous test) matters.
#[test]
fn figure_8_committing_by_counting_replicas_would_lose_a_committed_entry() {
    let bugs = InjectedBugs { commit_previous_terms: true, ..InjectedBugs::default() };
    let mut observer = SafetyObserver::default();
    let mut cluster = figure_8_through_c(bugs, &mut observer);
    assert_eq!(cluster.engine(1).commit_index(), LogIndex(2), "(c) the buggy leader commits index 2");
    assert_eq!(cluster.nodes[&NodeId(1)].state_machine.applied_index, LogIndex(2), "(c) and applies it");
    assert_eq!(observer.committed_term(2), Some(2));

    figure_8_d(&mut cluster, &mut observer, bugs);
    assert!(
        observer.violations.iter().any(|v| v.starts_with("State Machine Safety: index 2")),
        "violations: {:#?}",
        observer.violations
    );
}

// -------------------------------------------------------------------------
// Leader Completeness.

/// §5.4.3 (Leader Completeness): "if a log entry is committed in a given
/// term, that entry will be present in the logs of the leaders for all
/// higher-numbered terms". A scripted run of five voters through partitions
/// and crashes; after every round, the safety observer checks every leader
/// against every entry ever committed. At each leader change, nodes that
/// lack a committed entry campaign first and must fail.
#[test]
fn every_later_leader_holds_every_committed_entry() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3, 4, 5], paper_config);
    let mut observer = SafetyObserver::default();
    campaign(&mut cluster, &mut observer, 1);
    propose(&mut cluster, &mut observer, 1, "a");

    // "b" is committed by S1, S2 and S3 while S4 and S5 are cut off.
    cluster.isolate(4);
    cluster.isolate(5);
    propose(&mut cluster, &mut observer, 1, "b");
    let b_index = cluster.engine(1).last_index();
    assert_eq!(cluster.engine(1).commit_index(), b_index);

    // S1 crashes. S4 and S5 lack "b": they cannot win. S2 can.
    cluster.crash(1);
    cluster.heal();
    for id in [4, 5] {
        campaign(&mut cluster, &mut observer, id);
        assert!(leaders(&cluster).is_empty(), "S{id} lacks a committed entry and must not win");
    }
    campaign(&mut cluster, &mut observer, 2);
    assert_eq!(leaders(&cluster), vec![2]);

    // "c" is committed by S2, S4 and S5 while S3 is cut off; S2 crashes and
    // S1 returns. S1 and S3 lack "c": they cannot win. S4 can.
    cluster.isolate(3);
    propose(&mut cluster, &mut observer, 2, "c");
    let c_index = cluster.engine(2).last_index();
    assert_eq!(cluster.engine(2).commit_index(), c_index);
    cluster.crash(2);
    cluster.restart(1);
    cluster.heal();
    for id in [1, 3] {
        campaign(&mut cluster, &mut observer, id);
        assert!(leaders(&cluster).is_empty(), "S{id} lacks a committed entry and must not win");
    }
    campaign(&mut cluster, &mut observer, 4);
    assert_eq!(leaders(&cluster), vec![4]);

    for index in [b_index, c_index] {
        let expected = observer.committed_term(index.get()).map(Term);
        assert_eq!(cluster.engine(4).term_at(index), expected, "the last leader holds entry {index}");
    }
    for id in [1, 3, 5] {
        assert_eq!(log_terms(cluster.engine(id)), log_terms(cluster.engine(4)), "S{id} caught up");
    }
    let commands = &cluster.nodes[&NodeId(4)].state_machine.commands;
    assert_eq!(commands, &vec![Bytes::from_static(b"a"), Bytes::from_static(b"b"), Bytes::from_static(b"c")]);
    observer.assert_safe();
}
