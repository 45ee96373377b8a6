//! An in-process transport: runtimes in one process hand messages to each
//! other directly, without serialization. Faults can be injected: cut links,
//! random drops and a fixed delay. For tests, benchmarks and examples.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::message::Message;
use crate::transport::{Inbox, Transport};
use crate::types::NodeId;

#[derive(Debug, Default)]
struct NetworkState {
    inboxes: BTreeMap<NodeId, Inbox>,
    /// Directed links that drop everything: (from, to).
    cut_links: BTreeSet<(NodeId, NodeId)>,
    /// Probability of dropping a message, in millionths.
    drop_per_million: u32,
    delay: Option<Duration>,
    random_state: u64,
    dropped: u64,
    delivered: u64,
}

impl NetworkState {
    fn should_drop(&mut self, from: NodeId, to: NodeId) -> bool {
        if self.cut_links.contains(&(from, to)) {
            return true;
        }
        if self.drop_per_million == 0 {
            return false;
        }
        // SplitMix64 step: cheap and deterministic for a given seed.
        self.random_state = self.random_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) % 1_000_000) < u64::from(self.drop_per_million)
    }
}

/// Connects the runtimes of one process.
#[derive(Debug, Clone, Default)]
pub struct LocalNetwork {
    state: Arc<Mutex<NetworkState>>,
}

impl LocalNetwork {
    /// A network with no faults.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, NetworkState> {
        // A poisoned lock only means a test thread panicked while holding it;
        // the state itself is still consistent.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers node `id`: returns its transport and the receiving end of
    /// its inbox (bounded by `inbox_capacity`).
    pub fn register(&self, id: NodeId, inbox_capacity: usize) -> (LocalTransport, mpsc::Receiver<Message>) {
        let (inbox, receiver) = Inbox::bounded(inbox_capacity);
        self.lock().inboxes.insert(id, inbox);
        (LocalTransport { network: self.clone() }, receiver)
    }

    /// Cuts the link from `from` to `to` (one way).
    pub fn cut(&self, from: NodeId, to: NodeId) {
        self.lock().cut_links.insert((from, to));
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: NodeId) {
        let mut state = self.lock();
        let others: Vec<NodeId> = state.inboxes.keys().copied().filter(|n| *n != id).collect();
        for other in others {
            state.cut_links.insert((id, other));
            state.cut_links.insert((other, id));
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().cut_links.clear();
    }

    /// Drops each message with this probability (0.0 to 1.0), using a
    /// generator seeded with `seed`.
    pub fn set_drop_probability(&self, probability: f64, seed: u64) {
        let mut state = self.lock();
        state.drop_per_million = (probability.clamp(0.0, 1.0) * 1_000_000.0) as u32;
        state.random_state = seed;
    }

    /// Delays every message by `delay` (`None`: deliver at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.lock().delay = delay;
    }

    /// Messages dropped and delivered so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.dropped, state.delivered)
    }
}

/// One node's side of a [`LocalNetwork`].
#[derive(Debug, Clone)]
pub struct LocalTransport {
    network: LocalNetwork,
}

impl Transport for LocalTransport {
    fn send(&self, messages: Vec<Message>) {
        let mut state = self.network.lock();
        let delay = state.delay;
        for message in messages {
            if state.should_drop(message.from, message.to) {
                state.dropped += 1;
                continue;
            }
            match delay {
                None => {
                    // Delivered under the lock, without cloning the inbox's
                    // sender: `deliver` never waits, and the clone and drop
                    // cost four atomic operations per message.
                    let delivered =
                        state.inboxes.get(&message.to).is_some_and(|inbox| inbox.deliver(message).is_ok());
                    if delivered {
                        state.delivered += 1;
                    } else {
                        state.dropped += 1;
                    }
                }
                Some(delay) => {
                    let Some(inbox) = state.inboxes.get(&message.to).cloned() else {
                        state.dropped += 1;
                        continue;
                    };
                    state.delivered += 1;
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        let _ = inbox.deliver(message);
                    });
                }
            }
        }
    }
}
