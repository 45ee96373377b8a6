//! A simulated network: every message is dropped, delayed (which reorders
//! it against others) or duplicated according to the current
//! [`NetworkConditions`], and directed links can be cut to build symmetric,
//! one-way and isolating partitions. A message is checked against the cut
//! links when it arrives, so a partition also swallows messages already on
//! their way.

use std::collections::{BTreeMap, BTreeSet};

use super::rng::SimRng;
use crate::message::Message;
use crate::types::NodeId;

/// How the network treats messages right now. Probabilities are per mille.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetworkConditions {
    /// Chance that a message is lost.
    pub drop_per_mille: u64,
    /// Chance that a message is delivered twice (with independent delays).
    pub duplicate_per_mille: u64,
    /// The shortest delay of a message, in steps.
    pub delay_min_steps: u64,
    /// The longest ordinary delay of a message, in steps.
    pub delay_max_steps: u64,
    /// Chance that a message is held up much longer (a latency spike).
    pub spike_per_mille: u64,
    /// The longest extra delay of a spike, in steps.
    pub spike_max_steps: u64,
}

impl NetworkConditions {
    /// A healthy network: nothing lost, short delays.
    pub fn calm() -> Self {
        NetworkConditions {
            drop_per_mille: 0,
            duplicate_per_mille: 0,
            delay_min_steps: 0,
            delay_max_steps: 2,
            spike_per_mille: 0,
            spike_max_steps: 0,
        }
    }
}

/// Counters of what the network did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkStats {
    /// Messages handed to the network.
    pub sent: u64,
    /// Messages delivered to a running node.
    pub delivered: u64,
    /// Messages lost at random.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Messages swallowed by a cut link.
    pub blocked: u64,
}

/// Messages on their way, ordered by arrival step and then by send order.
#[derive(Clone, Debug)]
pub struct Network {
    in_flight: BTreeMap<(u64, u64), Message>,
    next_sequence: u64,
    conditions: NetworkConditions,
    cut_links: BTreeSet<(NodeId, NodeId)>,
    stats: NetworkStats,
}

impl Network {
    /// An empty, calm network.
    pub fn new() -> Self {
        Network {
            in_flight: BTreeMap::new(),
            next_sequence: 0,
            conditions: NetworkConditions::calm(),
            cut_links: BTreeSet::new(),
            stats: NetworkStats::default(),
        }
    }

    /// The current conditions.
    pub fn conditions(&self) -> NetworkConditions {
        self.conditions
    }

    /// Changes the conditions for messages sent from now on.
    pub fn set_conditions(&mut self, conditions: NetworkConditions) {
        self.conditions = conditions;
    }

    /// The counters.
    pub fn stats(&self) -> NetworkStats {
        self.stats
    }

    /// Number of messages on their way.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends a message at step `now`; returns how many copies will travel.
    pub fn send(&mut self, message: Message, now: u64, rng: &mut SimRng) -> usize {
        self.stats.sent += 1;
        if rng.chance(self.conditions.drop_per_mille) {
            self.stats.dropped += 1;
            return 0;
        }
        let copies = if rng.chance(self.conditions.duplicate_per_mille) { 2 } else { 1 };
        self.stats.duplicated += copies as u64 - 1;
        for copy in 0..copies {
            let arrival = now + self.delay_steps(rng);
            let key = (arrival, self.next_sequence);
            self.next_sequence += 1;
            if copy + 1 == copies {
                self.in_flight.insert(key, message);
                break;
            }
            self.in_flight.insert(key, message.clone());
        }
        copies
    }

    fn delay_steps(&self, rng: &mut SimRng) -> u64 {
        let conditions = self.conditions;
        let mut delay = rng.between(conditions.delay_min_steps, conditions.delay_max_steps);
        if rng.chance(conditions.spike_per_mille) {
            delay += rng.between(1, conditions.spike_max_steps.max(1));
        }
        // At least one step: a message never arrives in the step it was sent.
        delay.max(1)
    }

    /// Takes every message due at step `now`, in arrival order, leaving out
    /// those swallowed by cut links.
    pub fn take_due(&mut self, now: u64) -> Vec<Message> {
        let later = self.in_flight.split_off(&(now + 1, 0));
        let due = std::mem::replace(&mut self.in_flight, later);
        let mut delivered = Vec::with_capacity(due.len());
        for message in due.into_values() {
            if self.is_cut(message.from, message.to) {
                self.stats.blocked += 1;
            } else {
                delivered.push(message);
            }
        }
        delivered
    }

    /// Counts a message that reached a running node.
    pub fn count_delivered(&mut self) {
        self.stats.delivered += 1;
    }

    /// Whether messages from `from` to `to` are swallowed.
    pub fn is_cut(&self, from: NodeId, to: NodeId) -> bool {
        self.cut_links.contains(&(from, to))
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut_links.insert((from, to));
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut_links.clear();
    }

    /// The cut links, for traces.
    pub fn cut_links(&self) -> &BTreeSet<(NodeId, NodeId)> {
        &self.cut_links
    }

    /// Splits `nodes` into `group` and the rest, cutting both directions.
    pub fn partition(&mut self, group: &BTreeSet<NodeId>, nodes: &[NodeId]) {
        for &a in group {
            for &b in nodes.iter().filter(|n| !group.contains(n)) {
                self.cut(a, b);
                self.cut(b, a);
            }
        }
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::MessageBody;
    use crate::types::Term;

    fn message(from: u64, to: u64) -> Message {
        Message { from: NodeId(from), to: NodeId(to), term: Term(1), body: MessageBody::TimeoutNow }
    }

    #[test]
    fn messages_arrive_after_their_delay_and_cut_links_swallow_them() {
        let mut rng = SimRng::new(1);
        let mut network = Network::new();
        network.send(message(1, 2), 0, &mut rng);
        network.send(message(2, 1), 0, &mut rng);
        network.cut(NodeId(2), NodeId(1));
        assert!(network.take_due(0).is_empty());
        let due = network.take_due(10);
        assert_eq!(due, vec![message(1, 2)]);
        assert_eq!(network.stats().blocked, 1);
        assert_eq!(network.in_flight(), 0);
    }

    #[test]
    fn losses_and_duplicates_follow_the_conditions() {
        let mut rng = SimRng::new(2);
        let mut network = Network::new();
        network.set_conditions(NetworkConditions { drop_per_mille: 1000, ..NetworkConditions::calm() });
        assert_eq!(network.send(message(1, 2), 0, &mut rng), 0);
        network.set_conditions(NetworkConditions { duplicate_per_mille: 1000, ..NetworkConditions::calm() });
        assert_eq!(network.send(message(1, 2), 0, &mut rng), 2);
        assert_eq!(network.take_due(100).len(), 2);
    }
}
