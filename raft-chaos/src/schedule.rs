//! The fault schedule: which fault starts when and for how long, drawn
//! from the run's seed before the run starts.
//!
//! Two streams overlap. The *disruptive* stream takes one fault at a time
//! (kill, pause, partition, delay, drop, torn tail, lost unflushed writes), each after a quiet gap,
//! in rounds that visit every enabled kind once in a shuffled order, so a
//! short run still sees every kind. The *administrative* stream (membership
//! changes and leader transfers) fires at its own random times, so those
//! operations often run while a disruptive fault is in force, which is
//! where they are most likely to go wrong.
//!
//! Targets are not node ids but choices ([`Target`]) resolved when the
//! fault starts, because which node leads, and even which nodes are
//! members, is only known then. The schedule is a pure function of its
//! inputs: the same seed gives the same plan, bit for bit.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

/// A kind of fault the runner can inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    /// `kill -9` a node, later restart it from its data.
    Kill,
    /// `SIGSTOP` a node, later `SIGCONT` it.
    Pause,
    /// Firewall rules between node addresses: majority/minority, isolated
    /// leader, or a bridge.
    Partition,
    /// In-process random delay (and so reordering) of peer messages.
    Delay,
    /// In-process random loss of peer messages.
    Drop,
    /// `kill -9`, then a torn record written past the end of the node's
    /// newest write-ahead log segment before the restart.
    Torn,
    /// `kill -9`, then every write-ahead log write the node had not yet
    /// flushed is thrown away before the restart, as a power failure would
    /// (the node records where its flushed log ends under
    /// `--dangerous-fault-injection`).
    Unsynced,
    /// Add a learner, promote it, remove a voter (a replacement over three
    /// steps), one step per event.
    Membership,
    /// Hand leadership to another voter.
    Transfer,
}

impl FaultKind {
    /// Every kind, in a fixed order.
    pub const ALL: [FaultKind; 9] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Delay,
        FaultKind::Drop,
        FaultKind::Torn,
        FaultKind::Unsynced,
        FaultKind::Membership,
        FaultKind::Transfer,
    ];

    /// The kind's name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Delay => "delay",
            FaultKind::Drop => "drop",
            FaultKind::Torn => "torn",
            FaultKind::Unsynced => "unsynced",
            FaultKind::Membership => "membership",
            FaultKind::Transfer => "transfer",
        }
    }

    /// Whether the kind belongs to the administrative stream.
    pub fn is_administrative(self) -> bool {
        matches!(self, FaultKind::Membership | FaultKind::Transfer)
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a list of fault kinds could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FaultListError {
    /// A name that is no fault kind.
    #[error("unknown fault kind {0:?}; known: all, none, kill, pause, partition, delay, drop, torn, unsynced, membership, transfer")]
    Unknown(String),
}

/// A set of fault kinds, parsed from `all`, `none` or a comma-separated list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultList(pub Vec<FaultKind>);

impl FromStr for FaultList {
    type Err = FaultListError;

    fn from_str(text: &str) -> Result<FaultList, FaultListError> {
        let mut kinds = Vec::new();
        for name in text.split(',').map(str::trim).filter(|name| !name.is_empty()) {
            match name {
                "all" => kinds.extend(FaultKind::ALL),
                "none" => {}
                _ => kinds.push(
                    FaultKind::ALL
                        .into_iter()
                        .find(|kind| kind.name() == name)
                        .ok_or_else(|| FaultListError::Unknown(name.to_string()))?,
                ),
            }
        }
        kinds.sort_unstable();
        kinds.dedup();
        Ok(FaultList(kinds))
    }
}

/// Which node a fault hits, resolved when it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The leader at that moment (or any node when there is none).
    Leader,
    /// The `pick mod n`-th of the `n` candidate nodes, in id order.
    Any(u64),
}

/// The shape of a partition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionShape {
    /// A random minority cut off from the majority; `pick` seeds the split.
    MajorityMinority {
        /// Seeds which nodes form the minority.
        pick: u64,
    },
    /// The leader alone on one side.
    IsolatedLeader,
    /// Two halves that cannot talk, and one node that talks to both (the
    /// bridge); `pick` seeds the split.
    Bridge {
        /// Seeds which node bridges and how the rest splits.
        pick: u64,
    },
}

/// What a scheduled fault does.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "action")]
pub enum Action {
    /// `kill -9`; restart when the fault ends.
    Kill {
        /// Who.
        target: Target,
    },
    /// `SIGSTOP`; `SIGCONT` when the fault ends.
    Pause {
        /// Who.
        target: Target,
    },
    /// Firewall rules; removed when the fault ends.
    Partition {
        /// How the nodes are split.
        shape: PartitionShape,
    },
    /// Every node delays its outgoing peer messages.
    Delay {
        /// The shortest delay.
        min_ms: u64,
        /// The longest delay.
        max_ms: u64,
    },
    /// Every node drops some of its outgoing peer messages.
    Drop {
        /// The chance of each message being dropped, in percent.
        percent: u64,
    },
    /// `kill -9`, tear the write-ahead log's tail, restart when the fault
    /// ends.
    Torn {
        /// Who.
        target: Target,
        /// Seeds the garbage's length and bytes.
        pick: u64,
    },
    /// `kill -9`, drop the unflushed write-ahead log writes, restart when
    /// the fault ends.
    Unsynced {
        /// Who.
        target: Target,
    },
    /// The next step of a replacement (add learner, promote, remove a
    /// voter), chosen by the membership at that moment.
    Membership {
        /// Seeds which voter to remove when the step is a removal.
        pick: u64,
    },
    /// Hand leadership over.
    Transfer {
        /// Seeds the new leader among the other voters.
        pick: u64,
    },
}

impl Action {
    /// The kind of fault the action belongs to.
    pub fn kind(&self) -> FaultKind {
        match self {
            Action::Kill { .. } => FaultKind::Kill,
            Action::Pause { .. } => FaultKind::Pause,
            Action::Partition { .. } => FaultKind::Partition,
            Action::Delay { .. } => FaultKind::Delay,
            Action::Drop { .. } => FaultKind::Drop,
            Action::Torn { .. } => FaultKind::Torn,
            Action::Unsynced { .. } => FaultKind::Unsynced,
            Action::Membership { .. } => FaultKind::Membership,
            Action::Transfer { .. } => FaultKind::Transfer,
        }
    }
}

/// One fault of the plan.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlannedFault {
    /// When it starts, from the start of the workload.
    pub start_ms: u64,
    /// How long it is held (0 for administrative actions, which last as
    /// long as they take).
    pub hold_ms: u64,
    /// What it does.
    pub action: Action,
}

/// Timing of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The shortest quiet gap before a disruptive fault.
    pub gap_min_ms: u64,
    /// The longest quiet gap before a disruptive fault.
    pub gap_max_ms: u64,
    /// The shortest time a disruptive fault is held.
    pub hold_min_ms: u64,
    /// The longest time a disruptive fault is held.
    pub hold_max_ms: u64,
    /// The shortest time between two administrative actions.
    pub admin_gap_min_ms: u64,
    /// The longest time between two administrative actions.
    pub admin_gap_max_ms: u64,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            gap_min_ms: 1_000,
            gap_max_ms: 4_000,
            hold_min_ms: 2_000,
            hold_max_ms: 8_000,
            admin_gap_min_ms: 3_000,
            admin_gap_max_ms: 10_000,
        }
    }
}

/// Draws the plan of a run of `duration` with the given fault kinds. Every
/// fault ends (its hold included) before `duration`.
pub fn plan(seed: u64, duration: Duration, kinds: &[FaultKind], timing: Timing) -> Vec<PlannedFault> {
    let mut rng = Rng::new(seed ^ 0x5343_4845_4455_4C45);
    let end_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
    let mut faults = Vec::new();

    let disruptive: Vec<FaultKind> = kinds.iter().copied().filter(|kind| !kind.is_administrative()).collect();
    let mut round: Vec<FaultKind> = Vec::new();
    let mut now_ms = 0u64;
    while !disruptive.is_empty() {
        if round.is_empty() {
            round = disruptive.clone();
            rng.shuffle(&mut round);
        }
        let kind = round.pop().expect("the round was refilled");
        let start_ms = now_ms + rng.between(timing.gap_min_ms, timing.gap_max_ms);
        let hold_ms = rng.between(timing.hold_min_ms, timing.hold_max_ms);
        if start_ms + hold_ms >= end_ms {
            break;
        }
        faults.push(PlannedFault { start_ms, hold_ms, action: disruptive_action(kind, &mut rng) });
        now_ms = start_ms + hold_ms;
    }

    let administrative: Vec<FaultKind> =
        kinds.iter().copied().filter(|kind| kind.is_administrative()).collect();
    let mut now_ms = 0u64;
    let mut turn = rng.below(2) as usize;
    while !administrative.is_empty() {
        let start_ms = now_ms + rng.between(timing.admin_gap_min_ms, timing.admin_gap_max_ms);
        if start_ms >= end_ms {
            break;
        }
        let kind = administrative[turn % administrative.len()];
        turn += 1;
        let pick = rng.next_u64();
        let action = match kind {
            FaultKind::Membership => Action::Membership { pick },
            _ => Action::Transfer { pick },
        };
        faults.push(PlannedFault { start_ms, hold_ms: 0, action });
        now_ms = start_ms;
    }
    faults.sort_by_key(|fault| fault.start_ms);
    faults
}

fn target(rng: &mut Rng) -> Target {
    // The leader is the most interesting victim; a third of the time.
    if rng.below(3) == 0 {
        Target::Leader
    } else {
        Target::Any(rng.next_u64())
    }
}

fn disruptive_action(kind: FaultKind, rng: &mut Rng) -> Action {
    match kind {
        FaultKind::Kill => Action::Kill { target: target(rng) },
        FaultKind::Pause => Action::Pause { target: target(rng) },
        FaultKind::Partition => Action::Partition {
            shape: match rng.below(3) {
                0 => PartitionShape::MajorityMinority { pick: rng.next_u64() },
                1 => PartitionShape::IsolatedLeader,
                _ => PartitionShape::Bridge { pick: rng.next_u64() },
            },
        },
        FaultKind::Delay => {
            let max_ms = rng.between(20, 300);
            Action::Delay { min_ms: rng.below(max_ms / 2), max_ms }
        }
        FaultKind::Drop => Action::Drop { percent: rng.between(5, 40) },
        FaultKind::Torn => Action::Torn { target: target(rng), pick: rng.next_u64() },
        FaultKind::Unsynced => Action::Unsynced { target: target(rng) },
        FaultKind::Membership => Action::Membership { pick: rng.next_u64() },
        FaultKind::Transfer => Action::Transfer { pick: rng.next_u64() },
    }
}

/// The nodes on each side of a partition: every pair `(a, b)` it cuts,
/// with `a < b`. `nodes` are the members in id order; `leader` the leader
/// if known.
pub fn cut_pairs(shape: PartitionShape, nodes: &[u64], leader: Option<u64>) -> Vec<(u64, u64)> {
    let mut sides: Vec<(u64, u8)> = Vec::new();
    match shape {
        PartitionShape::MajorityMinority { pick } => {
            let mut order = nodes.to_vec();
            Rng::new(pick).shuffle(&mut order);
            let minority = (nodes.len().saturating_sub(1)) / 2;
            let minority = minority.max(1);
            for (position, node) in order.into_iter().enumerate() {
                sides.push((node, u8::from(position < minority)));
            }
        }
        PartitionShape::IsolatedLeader => {
            let alone = leader.or_else(|| nodes.first().copied());
            for node in nodes {
                sides.push((*node, u8::from(Some(*node) == alone)));
            }
        }
        PartitionShape::Bridge { pick } => {
            let mut order = nodes.to_vec();
            Rng::new(pick).shuffle(&mut order);
            // The first node bridges (side 2 talks to both); the others
            // alternate between the halves.
            for (position, node) in order.into_iter().enumerate() {
                let side = if position == 0 { 2 } else { (position % 2) as u8 };
                sides.push((node, side));
            }
        }
    }
    let mut pairs = Vec::new();
    for (i, (a, side_a)) in sides.iter().enumerate() {
        for (b, side_b) in &sides[i + 1..] {
            let cut = *side_a != 2 && *side_b != 2 && side_a != side_b;
            if cut {
                pairs.push(((*a).min(*b), (*a).max(*b)));
            }
        }
    }
    pairs.sort_unstable();
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_parse() {
        assert_eq!("all".parse::<FaultList>().unwrap().0, FaultKind::ALL.to_vec());
        assert_eq!("none".parse::<FaultList>().unwrap().0, vec![]);
        assert_eq!(
            "pause, kill,kill".parse::<FaultList>().unwrap().0,
            vec![FaultKind::Kill, FaultKind::Pause]
        );
        assert!(
            matches!("kill,explode".parse::<FaultList>(), Err(FaultListError::Unknown(name)) if name == "explode")
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let duration = Duration::from_secs(300);
        let a = plan(7, duration, &FaultKind::ALL, Timing::default());
        let b = plan(7, duration, &FaultKind::ALL, Timing::default());
        assert_eq!(a, b);
        assert_ne!(a, plan(8, duration, &FaultKind::ALL, Timing::default()));
    }

    #[test]
    fn a_short_run_sees_every_kind_and_nothing_outlives_it() {
        for seed in 0..50 {
            let duration = Duration::from_secs(150);
            let faults = plan(seed, duration, &FaultKind::ALL, Timing::default());
            for kind in FaultKind::ALL {
                assert!(faults.iter().any(|fault| fault.action.kind() == kind), "seed {seed}: no {kind}");
            }
            for fault in &faults {
                assert!(fault.start_ms + fault.hold_ms < 150_000, "seed {seed}: {fault:?}");
            }
            assert!(faults.windows(2).all(|pair| pair[0].start_ms <= pair[1].start_ms));
        }
    }

    #[test]
    fn disruptive_faults_never_overlap() {
        let faults = plan(3, Duration::from_secs(600), &FaultKind::ALL, Timing::default());
        let disruptive: Vec<_> = faults.iter().filter(|f| !f.action.kind().is_administrative()).collect();
        for pair in disruptive.windows(2) {
            assert!(pair[0].start_ms + pair[0].hold_ms < pair[1].start_ms, "{pair:?}");
        }
    }

    #[test]
    fn only_the_chosen_kinds_are_planned() {
        let faults = plan(1, Duration::from_secs(120), &[FaultKind::Pause], Timing::default());
        assert!(!faults.is_empty());
        assert!(faults.iter().all(|fault| fault.action.kind() == FaultKind::Pause));
        assert!(plan(1, Duration::from_secs(120), &[], Timing::default()).is_empty());
    }

    #[test]
    fn majority_minority_cuts_the_minority_off() {
        let nodes = [1, 2, 3, 4, 5];
        for pick in 0..20 {
            let pairs = cut_pairs(PartitionShape::MajorityMinority { pick }, &nodes, None);
            // Two nodes against three: six pairs cross.
            assert_eq!(pairs.len(), 6, "{pairs:?}");
        }
        let pairs = cut_pairs(PartitionShape::MajorityMinority { pick: 1 }, &[1, 2, 3], None);
        assert_eq!(pairs.len(), 2, "one node against two: {pairs:?}");
    }

    #[test]
    fn isolated_leader_is_cut_from_everyone() {
        let pairs = cut_pairs(PartitionShape::IsolatedLeader, &[1, 2, 3, 4, 5], Some(3));
        assert_eq!(pairs, vec![(1, 3), (2, 3), (3, 4), (3, 5)]);
    }

    #[test]
    fn a_bridge_talks_to_both_halves() {
        for pick in 0..20 {
            let nodes = [1, 2, 3, 4, 5];
            let pairs = cut_pairs(PartitionShape::Bridge { pick }, &nodes, None);
            // Halves of two and two: four pairs cross; the bridge is in none.
            assert_eq!(pairs.len(), 4, "{pairs:?}");
            let bridges: Vec<u64> =
                nodes.iter().copied().filter(|n| pairs.iter().all(|(a, b)| a != n && b != n)).collect();
            assert_eq!(bridges.len(), 1, "{pairs:?}");
        }
        let pairs = cut_pairs(PartitionShape::Bridge { pick: 9 }, &[1, 2, 3], None);
        assert_eq!(pairs.len(), 1, "the two ends of a three-node chain: {pairs:?}");
    }
}
