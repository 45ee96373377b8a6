//! First end-to-end checks of the engine through the in-memory cluster.

use bytes::Bytes;

use crate::protocol::Config;
use crate::testing::cluster::Cluster;
use crate::types::{LogIndex, NodeId, Role};

fn config(id: NodeId) -> Config {
    Config::new(id)
}

#[test]
fn single_node_elects_itself_and_commits() {
    let mut cluster = Cluster::bootstrap(&[1], config);
    assert!(cluster.elect(1));
    let (_, index) = cluster.engine_mut(1).propose(Bytes::from_static(b"x"), None).unwrap();
    cluster.stabilize();
    assert_eq!(cluster.engine(1).commit_index(), index);
    assert_eq!(cluster.nodes[&NodeId(1)].state_machine.commands, vec![Bytes::from_static(b"x")]);
    cluster.check_invariants().unwrap();
}

#[test]
fn three_nodes_elect_replicate_and_apply_everywhere() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], config);
    assert!(cluster.elect(1));
    for i in 0..100u32 {
        cluster.engine_mut(1).propose(Bytes::from(i.to_le_bytes().to_vec()), None).unwrap();
    }
    cluster.stabilize();
    for _ in 0..3 {
        cluster.tick_all();
        cluster.stabilize();
    }
    let last = cluster.engine(1).last_index();
    for id in 1..=3 {
        assert_eq!(cluster.engine(id).commit_index(), last, "node {id}");
        assert_eq!(cluster.nodes[&NodeId(id)].state_machine.commands.len(), 100);
        assert_eq!(cluster.engine(id).role(), if id == 1 { Role::Leader } else { Role::Follower });
    }
    cluster.check_invariants().unwrap();
}

#[test]
fn elections_happen_by_ticking() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], config);
    for _ in 0..40 {
        cluster.tick_all();
        cluster.stabilize();
        cluster.check_invariants().unwrap();
    }
    let leaders = cluster.nodes.values().filter(|n| n.engine.role() == Role::Leader).count();
    assert_eq!(leaders, 1);
}

#[test]
fn a_lagging_follower_catches_up_by_snapshot() {
    let mut cluster = Cluster::bootstrap(&[1, 2, 3], |id| {
        let mut c = Config::new(id);
        c.snapshot_trailing_entries = 0;
        c
    });
    assert!(cluster.elect(1));
    cluster.isolate(3);
    for i in 0..50u32 {
        cluster.engine_mut(1).propose(Bytes::from(i.to_le_bytes().to_vec()), None).unwrap();
        cluster.stabilize();
    }
    cluster.take_snapshot(1).unwrap();
    assert!(cluster.engine(1).snapshot().last_index > LogIndex(50));
    cluster.heal();
    for _ in 0..5 {
        cluster.tick_all();
        cluster.stabilize();
    }
    assert_eq!(cluster.nodes[&NodeId(3)].state_machine.commands.len(), 50);
    assert_eq!(cluster.engine(3).commit_index(), cluster.engine(1).commit_index());
    cluster.check_invariants().unwrap();
}

/// Ticks a fresh follower of a three-voter cluster until it campaigns.
fn ticks_until_campaign(config: Config) -> u64 {
    let membership = crate::types::Membership::with_voters([NodeId(1), NodeId(2), NodeId(3)]);
    let mut engine = crate::protocol::Engine::bootstrap(config, membership).unwrap();
    for tick in 1..=1_000 {
        engine.tick();
        if engine.role() != Role::Follower {
            return tick;
        }
    }
    panic!("the follower never campaigned");
}

#[test]
fn election_timeout_is_drawn_from_the_configured_range() {
    let mut seen = std::collections::BTreeSet::new();
    for seed in 0..200 {
        let mut config = Config::new(NodeId(2));
        config.random_seed = seed;
        config.election_timeout_ticks = 20;
        seen.insert(ticks_until_campaign(config.clone()));
        config.election_timeout_random_ticks = Some(0);
        assert_eq!(ticks_until_campaign(config.clone()), 20, "no randomisation: exactly the minimum");
        config.election_timeout_random_ticks = Some(3);
        let ticks = ticks_until_campaign(config);
        assert!((20..23).contains(&ticks), "seed {seed}: {ticks} ticks");
    }
    // The default range is [T, 2T): every value of it shows up in 200 draws.
    assert_eq!(seen, (20..40).collect());
}
