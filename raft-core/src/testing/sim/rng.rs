//! The simulator's own random number generator: xoshiro256** seeded through
//! SplitMix64.
//!
//! A local generator (not the `rand` crate) keeps a seed's run identical on
//! every platform and every release of every dependency, which is what makes
//! a failing seed replay bit for bit.

/// xoshiro256**: fast, small state, good statistical quality.
#[derive(Clone, Debug)]
pub struct SimRng {
    state: [u64; 4],
}

/// One SplitMix64 step: spreads a seed (even 0 or 1) over all 64 bits.
fn split_mix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SimRng {
    /// A generator whose whole sequence is determined by `seed`.
    pub fn new(seed: u64) -> Self {
        let mut mix = seed;
        let state = [split_mix(&mut mix), split_mix(&mut mix), split_mix(&mut mix), split_mix(&mut mix)];
        SimRng { state }
    }

    /// An independent generator for one part of the simulation, so that
    /// adding a random choice in one part does not shift every other part's
    /// sequence.
    pub fn fork(&mut self) -> SimRng {
        SimRng::new(self.next_u64())
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let result = self.state[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let shifted = self.state[1] << 17;
        self.state[2] ^= self.state[0];
        self.state[3] ^= self.state[1];
        self.state[1] ^= self.state[2];
        self.state[0] ^= self.state[3];
        self.state[2] ^= shifted;
        self.state[3] = self.state[3].rotate_left(45);
        result
    }

    /// A number in `0..bound` (0 when `bound` is 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// A number in `low..=high` (`low` when the range is empty).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        if high <= low {
            return low;
        }
        low + self.below(high - low + 1)
    }

    /// True with probability `per_mille / 1000`.
    pub fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    /// A uniformly chosen element, or `None` for an empty slice.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        if items.is_empty() {
            return None;
        }
        Some(items[self.below(items.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = SimRng::new(42);
        let mut b = SimRng::new(42);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
        assert_ne!(SimRng::new(0).next_u64(), SimRng::new(1).next_u64());
    }

    #[test]
    fn ranges_are_respected() {
        let mut rng = SimRng::new(7);
        for _ in 0..1000 {
            assert!(rng.below(5) < 5);
            let x = rng.between(3, 6);
            assert!((3..=6).contains(&x));
        }
        assert_eq!(rng.below(0), 0);
        assert_eq!(rng.between(4, 4), 4);
        assert_eq!(rng.pick::<u8>(&[]), None);
    }
}
