//! §5.2 and §5.6: a cluster that loses its leader elects another within a
//! bounded time. With the engine's defaults (pre-vote and CheckQuorum, Raft
//! dissertation §9.6 and §6.2), the cut-off leader also steps down, and on
//! its return it follows without forcing an election.

use super::*;

/// A brand-new cluster of `voter_ids` with the engine's defaults, each
/// node's election timer seeded from `seed`.
fn seeded_cluster(voter_ids: &[u64], seed: u64) -> Cluster {
    let mut cluster = Cluster::bootstrap(voter_ids, default_config);
    for id in voter_ids {
        let mut config = default_config(NodeId(*id));
        config.random_seed = seed * 1_000 + id;
        let engine = Engine::bootstrap(config, voters(voter_ids)).expect("a valid bootstrap");
        cluster.nodes.get_mut(&NodeId(*id)).expect("a node").engine = engine;
    }
    cluster
}

/// §5.2: "if a follower receives no communication over a period of time
/// called the election timeout, then it assumes there is no viable leader
/// and begins an election", and randomized timeouts make one candidate win
/// quickly. Five voters, 20 seeds: the leader is cut off from everyone;
///
/// - the others elect a new leader within one maximum election timeout
///   (2T): the first follower to time out wins in that same tick (two
///   timing out in the same tick could tie and need another timeout; these
///   seeds, replayed deterministically, do not);
/// - the old leader, hearing from no quorum, steps down within 2T
///   (CheckQuorum looks back one timeout, once every timeout), and its
///   pre-votes fail, so its term does not move;
/// - once the partition heals, the old leader follows the new one, whose
///   term stays the same (no disruption), and catches up.
#[test]
fn an_isolated_leader_is_replaced_steps_down_and_rejoins_without_disruption() {
    let timeout = election_timeout_ticks();
    for seed in 1..=20 {
        let mut cluster = seeded_cluster(&[1, 2, 3, 4, 5], seed);
        let mut observer = SafetyObserver::default();
        let mut ticks = 0;
        while leaders(&cluster).is_empty() {
            ticks += 1;
            assert!(ticks <= 4 * timeout, "seed {seed}: no first leader");
            tick_and_settle(&mut cluster, &mut observer);
        }
        let old = leaders(&cluster)[0];
        let old_term = cluster.engine(old).term();
        cluster.engine_mut(old).propose(Bytes::from_static(b"before"), None).unwrap();
        tick_and_settle(&mut cluster, &mut observer);

        cluster.isolate(old);
        let (mut replaced_after, mut stepped_down_after) = (None, None);
        for tick in 1..=4 * timeout {
            tick_and_settle(&mut cluster, &mut observer);
            let others_leader = leaders(&cluster).into_iter().find(|id| *id != old);
            if replaced_after.is_none() && others_leader.is_some() {
                replaced_after = Some(tick);
            }
            if stepped_down_after.is_none() && cluster.engine(old).role() != Role::Leader {
                stepped_down_after = Some(tick);
            }
        }
        let replaced_after =
            replaced_after.unwrap_or_else(|| panic!("seed {seed}: no new leader in {}", 4 * timeout));
        let stepped_down_after =
            stepped_down_after.unwrap_or_else(|| panic!("seed {seed}: the old leader never stepped down"));
        assert!(
            stepped_down_after <= 2 * timeout,
            "seed {seed}: stepped down after {stepped_down_after} ticks"
        );
        assert!(replaced_after <= 2 * timeout, "seed {seed}: replaced after {replaced_after} ticks");
        assert_eq!(
            cluster.engine(old).term(),
            old_term,
            "seed {seed}: an isolated node's term does not move"
        );

        let new = leaders(&cluster).into_iter().find(|id| *id != old).unwrap();
        let new_term = cluster.engine(new).term();
        assert!(new_term > old_term);
        cluster.heal();
        for _ in 0..3 * timeout {
            tick_and_settle(&mut cluster, &mut observer);
        }
        assert_eq!(leaders(&cluster), vec![new], "seed {seed}");
        assert_eq!(cluster.engine(new).term(), new_term, "seed {seed}: the returning node disrupted nothing");
        let rejoined = cluster.engine(old);
        assert_eq!(
            (rejoined.role(), rejoined.term(), rejoined.leader()),
            (Role::Follower, new_term, NodeId(new))
        );
        assert_eq!(log_terms(rejoined), log_terms(cluster.engine(new)), "seed {seed}: caught up");
        assert_eq!(rejoined.commit_index(), cluster.engine(new).commit_index());
        observer.assert_safe();
    }
}
