//! Reconnect delays: exponential backoff with full jitter.
//!
//! After the n-th consecutive failure the agent waits a uniformly random time in
//! `[0, min(cap, base · 2^n)]` ("full jitter", as AWS's architecture note on backoff and the AWS
//! IoT device SDKs do): a fleet of appliances that lost the control plane at the same moment
//! does not come back in lock-step and hammer it. Base 1 s, cap 120 s by default. A connection
//! that stayed up for [`Backoff::STABLE_AFTER`] resets the sequence.

use std::time::Duration;

/// Backoff state for one control-plane connection.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u32,
}

impl Backoff {
    /// A session that lasted this long counts as healthy: the next failure starts from `base`.
    pub const STABLE_AFTER: Duration = Duration::from_secs(60);

    /// Backoff between `base` and `cap` (the 1 s to 120 s).
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap: cap.max(base),
            failures: 0,
        }
    }

    /// The ceiling of the next delay: `min(cap, base · 2^failures)`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// Records a failure and returns how long to wait, given a uniform sample in `[0, 1)`.
    pub fn next_delay(&mut self, uniform: f64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        ceiling.mul_f64(uniform.clamp(0.0, 1.0))
    }

    /// A session ended after lasting `lasted`: reset if it was stable.
    pub fn session_ended(&mut self, lasted: Duration) {
        if lasted >= Self::STABLE_AFTER {
            self.failures = 0;
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_from_one_second_up_to_the_cap() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        let mut ceilings = Vec::new();
        for _ in 0..10 {
            ceilings.push(b.ceiling().as_secs());
            b.next_delay(0.5);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 32, 64, 120, 120, 120]);
    }

    #[test]
    fn delays_are_full_jitter_between_zero_and_the_ceiling() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        for _ in 0..7 {
            b.next_delay(0.0);
        }
        assert_eq!(b.clone().next_delay(0.0), Duration::ZERO);
        assert_eq!(b.clone().next_delay(0.25), Duration::from_secs(30));
        assert_eq!(b.clone().next_delay(1.0), Duration::from_secs(120));
    }

    #[test]
    fn only_a_stable_session_resets_the_sequence() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.session_ended(Duration::from_secs(5));
        assert_eq!(
            b.ceiling(),
            Duration::from_secs(32),
            "a flapping link keeps backing off"
        );
        b.session_ended(Backoff::STABLE_AFTER);
        assert_eq!(b.ceiling(), Duration::from_secs(1));
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(120));
        for _ in 0..1000 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(120));
        }
    }
}
