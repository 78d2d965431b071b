//! Flap damping for uplinks, after BGP route-flap damping (RFC 2439): each failure adds a
//! penalty that decays exponentially; above `suppress` the uplink is not a fail-back target until
//! the penalty decays below `reuse`.

use core::time::Duration;
use std::time::Instant;

use crate::error::{invalid, LinkmonError};

/// Damping parameters (dimensionless penalty units).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DampingConfig {
    /// Added per failure of the uplink.
    pub penalty_per_failure: f64,
    /// Suppress when the penalty rises above this.
    pub suppress_above: f64,
    /// Reuse when the penalty decays below this (must be below `suppress_above`).
    pub reuse_below: f64,
    /// Penalty half-life.
    pub half_life: Duration,
    /// Ceiling, so that a long flapping episode is forgotten within a bounded time.
    pub max_penalty: f64,
}

impl Default for DampingConfig {
    /// Three failures within a few seconds suppress; reuse after about a minute and a half.
    fn default() -> Self {
        Self {
            penalty_per_failure: 1000.0,
            suppress_above: 2500.0,
            reuse_below: 800.0,
            half_life: Duration::from_secs(60),
            max_penalty: 8000.0,
        }
    }
}

impl DampingConfig {
    /// Checks the parameters; the error names the field.
    pub fn validate(&self) -> Result<(), LinkmonError> {
        let finite_pos = |v: f64| v.is_finite() && v > 0.0;
        if !finite_pos(self.penalty_per_failure) {
            return Err(invalid(
                "damping.penalty_per_failure",
                "must be a positive number",
            ));
        }
        if !finite_pos(self.reuse_below) {
            return Err(invalid("damping.reuse_below", "must be a positive number"));
        }
        if !(self.suppress_above.is_finite() && self.suppress_above > self.reuse_below) {
            return Err(invalid(
                "damping.suppress_above",
                "must be a number above damping.reuse_below",
            ));
        }
        if !(self.max_penalty.is_finite() && self.max_penalty > self.suppress_above) {
            return Err(invalid(
                "damping.max_penalty",
                "must be a number above damping.suppress_above",
            ));
        }
        if self.half_life < Duration::from_millis(100) {
            return Err(invalid("damping.half_life", "must be at least 100 ms"));
        }
        Ok(())
    }
}

/// The damping state of one uplink.
#[derive(Debug, Clone)]
pub struct FlapDamper {
    cfg: DampingConfig,
    penalty: f64,
    updated: Instant,
    suppressed: bool,
}

impl FlapDamper {
    /// No penalty, not suppressed.
    pub fn new(cfg: DampingConfig, now: Instant) -> Self {
        Self {
            cfg,
            penalty: 0.0,
            updated: now,
            suppressed: false,
        }
    }

    /// Changes the parameters, keeping the penalty earned so far (decayed to `now` under the
    /// old half-life) and re-judging suppression under the new thresholds at the next
    /// `update`/`record_failure`.
    pub fn set_config(&mut self, cfg: DampingConfig, now: Instant) {
        self.penalty = self.penalty(now).min(cfg.max_penalty);
        self.updated = now;
        self.cfg = cfg;
    }

    /// Penalty decayed to `now`.
    pub fn penalty(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.penalty * (-elapsed / self.cfg.half_life.as_secs_f64()).exp2()
    }

    /// Whether the uplink is suppressed (as of the last `record_failure`/`update`).
    pub fn is_suppressed(&self) -> bool {
        self.suppressed
    }

    /// Adds a failure's penalty; returns `true` if this made the uplink suppressed.
    pub fn record_failure(&mut self, now: Instant) -> bool {
        self.penalty = (self.penalty(now) + self.cfg.penalty_per_failure).min(self.cfg.max_penalty);
        self.updated = now;
        if !self.suppressed && self.penalty > self.cfg.suppress_above {
            self.suppressed = true;
            return true;
        }
        false
    }

    /// Re-evaluates decay; returns `true` if the uplink just became usable again.
    pub fn update(&mut self, now: Instant) -> bool {
        if self.suppressed && self.penalty(now) < self.cfg.reuse_below {
            self.suppressed = false;
            return true;
        }
        false
    }

    /// When the penalty will have decayed below `reuse_below`, if suppressed.
    pub fn reuse_at(&self) -> Option<Instant> {
        if !self.suppressed {
            return None;
        }
        // penalty × 2^(-t/h) = reuse  ⇔  t = h × log2(penalty / reuse)
        let halvings = (self.penalty / self.cfg.reuse_below).log2().max(0.0);
        let secs = self.cfg.half_life.as_secs_f64() * halvings;
        // A millisecond of slack so that `update` at this instant sees the penalty below reuse.
        let wait = Duration::try_from_secs_f64(secs).unwrap_or(Duration::from_secs(86_400));
        self.updated
            .checked_add(wait + Duration::from_millis(1))
            .or(Some(self.updated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn penalty_halves_each_half_life() {
        let t0 = Instant::now();
        let mut d = FlapDamper::new(DampingConfig::default(), t0);
        d.record_failure(t0);
        let p = d.penalty(t0 + Duration::from_secs(60));
        assert!((p - 500.0).abs() < 1e-6, "{p}");
    }

    #[test]
    fn suppress_then_reuse_with_hysteresis() {
        let t0 = Instant::now();
        let mut d = FlapDamper::new(DampingConfig::default(), t0);
        assert!(!d.record_failure(t0));
        assert!(!d.record_failure(t0 + Duration::from_secs(1)));
        assert!(d.record_failure(t0 + Duration::from_secs(2)));
        assert!(d.is_suppressed());
        let reuse = d.reuse_at().unwrap();
        assert!(!d.update(reuse - Duration::from_millis(10)));
        assert!(d.update(reuse));
        assert!(!d.is_suppressed());
    }
}
