//! A test-only fault injector for the peer transport, for chaos testing on
//! machines where `tc netem` is not available.
//!
//! With `--dangerous-fault-injection`, every message the runtime sends to a
//! peer passes through a [`FaultyTransport`] that can drop it or hold it
//! back for a random delay before handing it to the real transport. Delays
//! are drawn per message, so messages to one peer also get reordered. The
//! rules change at run time over the client API (`GET`, `POST` and `DELETE
//! /v1/dangerous/faults`, answered with 404 when the flag is off), so a
//! test harness can switch faults on and off without restarting the node.
//!
//! Nothing here may ever run in production: the flag is hidden from
//! `--help`, and the endpoint has `dangerous` in its path so that it stands
//! out in any access log.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use raft_core::message::Message;
use raft_core::transport::Transport;
use serde::{Deserialize, Serialize};

use crate::http::{ApiError, AppState};

/// The most messages held back for a delay at once. A message that would
/// exceed it is dropped (and counted in [`FaultFigures::overflow_dropped`]),
/// which Raft tolerates like any lost message; the bound keeps a long delay
/// under heavy load from holding unbounded memory.
pub const MAX_DELAYED_MESSAGES: usize = 10_000;

/// The longest delay a rule may ask for, in milliseconds. Longer than any
/// election timeout, so a delay can already stand in for a partition.
pub const MAX_DELAY_MS: u64 = 60_000;

/// The largest body `POST /v1/dangerous/faults` accepts.
const MAX_RULES_BODY_BYTES: usize = 16 * 1024;

/// What to do to outgoing peer messages. The default does nothing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultRules {
    /// The shortest extra delay of a message, in milliseconds.
    #[serde(default)]
    pub delay_min_ms: u64,
    /// The longest extra delay of a message, in milliseconds; each message
    /// waits a uniformly random time in `[delay_min_ms, delay_max_ms]`.
    #[serde(default)]
    pub delay_max_ms: u64,
    /// The chance, from 0 to 1, that a message is dropped.
    #[serde(default)]
    pub drop_probability: f64,
    /// The peers whose messages are affected; all peers when absent.
    #[serde(default)]
    pub peers: Option<Vec<u64>>,
}

/// Why a set of [`FaultRules`] was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RulesError {
    /// The delay range is empty or too long.
    #[error("the delay range must satisfy delay_min_ms <= delay_max_ms <= {MAX_DELAY_MS}; got {min_ms}..={max_ms}")]
    BadDelay {
        /// The lower bound given.
        min_ms: u64,
        /// The upper bound given.
        max_ms: u64,
    },
    /// The drop probability is not a number from 0 to 1.
    #[error("drop_probability must be a number from 0 to 1; got {0}")]
    BadDropProbability(f64),
}

impl FaultRules {
    /// Checks that the rules make sense.
    pub fn validate(&self) -> Result<(), RulesError> {
        if self.delay_min_ms > self.delay_max_ms || self.delay_max_ms > MAX_DELAY_MS {
            return Err(RulesError::BadDelay { min_ms: self.delay_min_ms, max_ms: self.delay_max_ms });
        }
        if !(0.0..=1.0).contains(&self.drop_probability) {
            return Err(RulesError::BadDropProbability(self.drop_probability));
        }
        Ok(())
    }

    /// Whether the rules leave every message alone.
    pub fn is_inert(&self) -> bool {
        self.delay_max_ms == 0 && self.drop_probability <= 0.0
    }

    fn applies_to(&self, peer: u64) -> bool {
        self.peers.as_ref().is_none_or(|peers| peers.contains(&peer))
    }
}

/// What the injector did so far, and the rules in force.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FaultFigures {
    /// The rules in force.
    pub rules: FaultRules,
    /// Messages dropped by the rules.
    pub dropped: u64,
    /// Messages delayed by the rules.
    pub delayed: u64,
    /// Messages dropped because [`MAX_DELAYED_MESSAGES`] were already held.
    pub overflow_dropped: u64,
    /// Messages held back right now.
    pub held: usize,
}

/// The shared state of the fault injector: rules, counters and a seeded
/// random generator.
#[derive(Debug, Default)]
pub struct FaultInjector {
    rules: Mutex<FaultRules>,
    /// SplitMix64 state: cheap, lock-free, and good enough to spread delays.
    random: AtomicU64,
    held: AtomicUsize,
    dropped: AtomicU64,
    delayed: AtomicU64,
    overflow_dropped: AtomicU64,
}

impl FaultInjector {
    /// An injector with no rules, seeded with `seed`.
    pub fn new(seed: u64) -> FaultInjector {
        FaultInjector { random: AtomicU64::new(seed), ..FaultInjector::default() }
    }

    /// Replaces the rules after checking them.
    pub fn set_rules(&self, rules: FaultRules) -> Result<(), RulesError> {
        rules.validate()?;
        *self.rules.lock().unwrap_or_else(PoisonError::into_inner) = rules;
        Ok(())
    }

    /// The rules in force.
    pub fn rules(&self) -> FaultRules {
        self.rules.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The rules in force and what they did.
    pub fn figures(&self) -> FaultFigures {
        FaultFigures {
            rules: self.rules(),
            dropped: self.dropped.load(Ordering::Relaxed),
            delayed: self.delayed.load(Ordering::Relaxed),
            overflow_dropped: self.overflow_dropped.load(Ordering::Relaxed),
            held: self.held.load(Ordering::Relaxed),
        }
    }

    /// A random number, uniform over `u64`.
    fn next_random(&self) -> u64 {
        let state = self.random.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let mut z = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// What to do with one message to `peer` under `rules`.
    fn decide(&self, rules: &FaultRules, peer: u64) -> Decision {
        if !rules.applies_to(peer) {
            return Decision::Pass;
        }
        if rules.drop_probability > 0.0 {
            // 53 random bits as a fraction in [0, 1).
            let fraction = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
            if fraction < rules.drop_probability {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return Decision::Drop;
            }
        }
        if rules.delay_max_ms == 0 {
            return Decision::Pass;
        }
        let span = rules.delay_max_ms - rules.delay_min_ms + 1;
        let delay_ms = rules.delay_min_ms + self.next_random() % span;
        if delay_ms == 0 {
            return Decision::Pass;
        }
        // Reserve a place among the held messages, or drop.
        let reserved = self
            .held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < MAX_DELAYED_MESSAGES).then_some(held + 1)
            })
            .is_ok();
        if !reserved {
            self.overflow_dropped.fetch_add(1, Ordering::Relaxed);
            return Decision::Drop;
        }
        self.delayed.fetch_add(1, Ordering::Relaxed);
        Decision::Delay(Duration::from_millis(delay_ms))
    }
}

enum Decision {
    Pass,
    Drop,
    Delay(Duration),
}

/// A [`Transport`] that applies the injector's rules before handing
/// messages to the real transport.
pub struct FaultyTransport<T> {
    inner: Arc<T>,
    injector: Arc<FaultInjector>,
    /// Where delayed messages wait: the node's runtime.
    runtime: tokio::runtime::Handle,
}

impl<T: Transport> FaultyTransport<T> {
    /// Wraps `inner`. Must be called on the tokio runtime that will run the
    /// delay timers; `None` outside one.
    pub fn new(inner: T, injector: Arc<FaultInjector>) -> Option<FaultyTransport<T>> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        Some(FaultyTransport { inner: Arc::new(inner), injector, runtime })
    }
}

impl<T: Transport> Transport for FaultyTransport<T> {
    fn send(&self, messages: Vec<Message>) {
        let rules = self.injector.rules();
        if rules.is_inert() {
            self.inner.send(messages);
            return;
        }
        let mut passed = Vec::with_capacity(messages.len());
        for message in messages {
            match self.injector.decide(&rules, message.to.get()) {
                Decision::Pass => passed.push(message),
                Decision::Drop => {}
                Decision::Delay(delay) => {
                    let inner = Arc::clone(&self.inner);
                    let injector = Arc::clone(&self.injector);
                    self.runtime.spawn(async move {
                        tokio::time::sleep(delay).await;
                        inner.send(vec![message]);
                        injector.held.fetch_sub(1, Ordering::AcqRel);
                    });
                }
            }
        }
        if !passed.is_empty() {
            self.inner.send(passed);
        }
    }
}

fn disabled() -> ApiError {
    ApiError::not_found(
        "fault_injection_disabled",
        "fault injection is off: it needs the node to run with --dangerous-fault-injection",
    )
}

/// `GET /v1/dangerous/faults`: the rules in force and what they did.
pub async fn show(State(state): State<AppState>) -> Result<Response, ApiError> {
    let injector = state.faults.as_ref().ok_or_else(disabled)?;
    Ok(Json(injector.figures()).into_response())
}

/// `POST /v1/dangerous/faults` with a [`FaultRules`] body: replaces the
/// rules.
pub async fn set(State(state): State<AppState>, body: axum::body::Body) -> Result<Response, ApiError> {
    let injector = state.faults.as_ref().ok_or_else(disabled)?;
    let body = axum::body::to_bytes(body, MAX_RULES_BODY_BYTES).await.map_err(|error| {
        ApiError::bad_request(
            "bad_body",
            format!("reading the fault rules (at most {MAX_RULES_BODY_BYTES} bytes) failed: {error}"),
        )
    })?;
    let rules: FaultRules = serde_json::from_slice(&body).map_err(|error| {
        ApiError::bad_request("bad_json", format!("the fault rules are invalid: {error}"))
    })?;
    injector.set_rules(rules).map_err(|error| ApiError::bad_request("bad_fault_rules", error.to_string()))?;
    tracing::warn!(rules = ?injector.rules(), "dangerous fault injection: new rules");
    Ok(Json(injector.figures()).into_response())
}

/// `DELETE /v1/dangerous/faults`: clears the rules (held messages are
/// still delivered when their delay ends).
pub async fn clear(State(state): State<AppState>) -> Result<Response, ApiError> {
    let injector = state.faults.as_ref().ok_or_else(disabled)?;
    injector.set_rules(FaultRules::default()).map_err(|error| ApiError::internal(error.to_string()))?;
    tracing::warn!("dangerous fault injection: rules cleared");
    Ok(Json(injector.figures()).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft_core::message::MessageBody;
    use raft_core::types::{NodeId, Term};

    /// Records what reaches the real transport.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Message>>);

    impl Transport for Recorder {
        fn send(&self, messages: Vec<Message>) {
            self.0.lock().unwrap().extend(messages);
        }
    }

    fn message(to: u64) -> Message {
        Message { from: NodeId(1), to: NodeId(to), term: Term(1), body: MessageBody::TimeoutNow }
    }

    fn received(transport: &FaultyTransport<Recorder>) -> Vec<u64> {
        transport.inner.0.lock().unwrap().iter().map(|m| m.to.get()).collect()
    }

    #[test]
    fn rules_are_validated() {
        let bad_delay = FaultRules { delay_min_ms: 5, delay_max_ms: 1, ..FaultRules::default() };
        assert!(matches!(bad_delay.validate(), Err(RulesError::BadDelay { .. })));
        let too_long = FaultRules { delay_max_ms: MAX_DELAY_MS + 1, ..FaultRules::default() };
        assert!(too_long.validate().is_err());
        for probability in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
            let rules = FaultRules { drop_probability: probability, ..FaultRules::default() };
            assert!(matches!(rules.validate(), Err(RulesError::BadDropProbability(_))), "{probability}");
        }
        let injector = FaultInjector::new(1);
        assert!(injector.set_rules(bad_delay).is_err());
        assert_eq!(injector.rules(), FaultRules::default(), "refused rules change nothing");
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(serde_json::from_str::<FaultRules>(r#"{"drop":1}"#).is_err());
        let rules: FaultRules = serde_json::from_str(r#"{"drop_probability":0.5,"peers":[2]}"#).unwrap();
        assert_eq!(rules.drop_probability, 0.5);
        assert_eq!(rules.peers, Some(vec![2]));
    }

    #[tokio::test]
    async fn drops_only_messages_to_the_named_peers() {
        let injector = Arc::new(FaultInjector::new(7));
        let transport = FaultyTransport::new(Recorder::default(), Arc::clone(&injector)).unwrap();
        let rules = FaultRules { drop_probability: 1.0, peers: Some(vec![2]), ..FaultRules::default() };
        injector.set_rules(rules).unwrap();
        transport.send(vec![message(2), message(3), message(2)]);
        assert_eq!(received(&transport), vec![3]);
        assert_eq!(injector.figures().dropped, 2);
        injector.set_rules(FaultRules::default()).unwrap();
        transport.send(vec![message(2)]);
        assert_eq!(received(&transport), vec![3, 2]);
    }

    /// Passes what reaches the real transport to a channel the test awaits.
    struct Forwarder(tokio::sync::mpsc::UnboundedSender<u64>);

    impl Transport for Forwarder {
        fn send(&self, messages: Vec<Message>) {
            for message in messages {
                let _ = self.0.send(message.to.get());
            }
        }
    }

    #[tokio::test]
    async fn delayed_messages_arrive_later() {
        let injector = Arc::new(FaultInjector::new(7));
        let (sender, mut arrived) = tokio::sync::mpsc::unbounded_channel();
        let transport = FaultyTransport::new(Forwarder(sender), Arc::clone(&injector)).unwrap();
        let rules = FaultRules { delay_min_ms: 1, delay_max_ms: 20, ..FaultRules::default() };
        injector.set_rules(rules).unwrap();
        transport.send(vec![message(2), message(3)]);
        assert!(arrived.try_recv().is_err(), "nothing passes before its delay");
        let mut peers = vec![arrived.recv().await.unwrap(), arrived.recv().await.unwrap()];
        peers.sort_unstable();
        assert_eq!(peers, vec![2, 3]);
        assert_eq!(injector.figures().delayed, 2);
    }

    #[tokio::test]
    async fn held_messages_are_bounded() {
        let injector = Arc::new(FaultInjector::new(7));
        let transport = FaultyTransport::new(Recorder::default(), Arc::clone(&injector)).unwrap();
        // Longer than the test: the held messages are still held when it
        // looks.
        let rules =
            FaultRules { delay_min_ms: MAX_DELAY_MS, delay_max_ms: MAX_DELAY_MS, ..FaultRules::default() };
        injector.set_rules(rules).unwrap();
        transport.send((0..MAX_DELAYED_MESSAGES + 5).map(|_| message(2)).collect());
        let figures = injector.figures();
        assert_eq!(figures.held, MAX_DELAYED_MESSAGES);
        assert_eq!(figures.overflow_dropped, 5);
    }
}
