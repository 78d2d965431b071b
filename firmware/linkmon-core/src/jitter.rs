//! Seeded pseudo-random numbers for BFD transmit jitter (RFC 5880 §6.8.7).
//!
//! Jitter only has to decorrelate peers, not resist prediction, so a SplitMix64 generator seeded
//! by the driver is enough and keeps tests deterministic.

use core::time::Duration;

/// SplitMix64: tiny, fast, every seed gives a full-period sequence.
#[derive(Debug, Clone)]
pub(crate) struct JitterRng {
    state: u64,
}

impl JitterRng {
    pub(crate) fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, bound)`; `0` when `bound` is zero.
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            return 0;
        }
        // Multiply-shift keeps the bias below 2^-32 for the bounds used here (microseconds).
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// RFC 5880 §6.8.7: the interval reduced by a random 0–25 %, or 10–25 % when the detect
    /// multiplier is 1 (so that one late packet cannot take the session down).
    pub(crate) fn jittered(&mut self, interval: Duration, detect_mult: u8) -> Duration {
        let us = u64::try_from(interval.as_micros()).unwrap_or(u64::MAX);
        let (min_pct, max_pct) = if detect_mult == 1 {
            (75, 90)
        } else {
            (75, 100)
        };
        let low = us / 100 * min_pct;
        let high = us / 100 * max_pct;
        Duration::from_micros(low + self.below(high.saturating_sub(low) + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_rfc_bounds() {
        let mut rng = JitterRng::new(7);
        let base = Duration::from_millis(50);
        for _ in 0..10_000 {
            let j = rng.jittered(base, 3);
            assert!(j >= Duration::from_micros(37_500) && j <= base, "{j:?}");
            let j1 = rng.jittered(base, 1);
            assert!(
                j1 >= Duration::from_micros(37_500) && j1 <= Duration::from_micros(45_000),
                "{j1:?}"
            );
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let (mut a, mut b) = (JitterRng::new(42), JitterRng::new(42));
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
    }
}
