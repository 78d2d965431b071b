//! Monotonic timestamps comparable across processes.
//!
//! `std::time::Instant` is opaque, but the link monitor under test reports its event times from
//! another process; both sides therefore speak raw `CLOCK_MONOTONIC`.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// A reading of `CLOCK_MONOTONIC` (the clock `Instant` uses on Linux), as time since boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MonoTime(Duration);

impl MonoTime {
    /// Reads `CLOCK_MONOTONIC` now.
    pub fn now() -> Self {
        // CLOCK_MONOTONIC cannot fail on Linux; fall back to zero rather than panic.
        let ts = clock_gettime(ClockId::CLOCK_MONOTONIC).map(Duration::from);
        MonoTime(ts.unwrap_or_default())
    }

    /// Builds a timestamp from nanoseconds of `CLOCK_MONOTONIC` (as another process reports it).
    pub fn from_nanos(nanos: u64) -> Self {
        MonoTime(Duration::from_nanos(nanos))
    }

    /// Nanoseconds of `CLOCK_MONOTONIC`.
    pub fn as_nanos(self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: MonoTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}
