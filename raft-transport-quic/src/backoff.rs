//! Reconnection delays: exponential, capped, with jitter.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use crate::config::BackoffConfig;

/// The delays before successive dials of one peer.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    /// Failures since the last success.
    attempt: u32,
    random_state: u64,
}

impl Backoff {
    /// A backoff whose jitter comes from a generator seeded with `seed`.
    pub fn new(config: BackoffConfig, seed: u64) -> Backoff {
        Backoff { config, attempt: 0, random_state: seed }
    }

    /// Forgets past failures: the next delay is the initial one again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The delay before the next attempt: in `[d/2, d]` where
    /// `d = min(max, initial * 2^failures)`.
    pub fn next_delay(&mut self) -> Duration {
        let shift = self.attempt.min(31);
        self.attempt = self.attempt.saturating_add(1);
        let ceiling = self.config.initial.saturating_mul(1 << shift).min(self.config.max);
        let half = ceiling / 2;
        let spread_nanos = u64::try_from((ceiling - half).as_nanos()).unwrap_or(u64::MAX);
        let jitter = if spread_nanos == 0 { 0 } else { self.next_random() % (spread_nanos + 1) };
        half + Duration::from_nanos(jitter)
    }

    /// SplitMix64: small, and good enough to spread redials.
    fn next_random(&mut self) -> u64 {
        self.random_state = self.random_state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.random_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A random number from the standard library's per-process hash keys: no
/// extra dependency, and different on every call and in every process.
pub(crate) fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new().build_hasher().finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_in_the_upper_half() {
        let config = BackoffConfig { initial: Duration::from_millis(10), max: Duration::from_millis(200) };
        let mut backoff = Backoff::new(config, 7);
        let ceilings = [10, 20, 40, 80, 160, 200, 200, 200];
        for ceiling in ceilings {
            let delay = backoff.next_delay();
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                delay >= ceiling / 2 && delay <= ceiling,
                "{delay:?} outside [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn two_peers_do_not_redial_in_lockstep() {
        let config = BackoffConfig::default();
        let mut first = Backoff::new(config, 1);
        let mut second = Backoff::new(config, 2);
        let same = (0..10).filter(|_| first.next_delay() == second.next_delay()).count();
        assert!(same < 3);
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut backoff = Backoff::new(BackoffConfig::default(), 3);
        for _ in 0..1_000 {
            assert!(backoff.next_delay() <= BackoffConfig::default().max);
        }
    }
}
