//! Event records and the status snapshot served on the local socket, with monotonic instants
//! turned into wall-clock milliseconds so operators can line them up with other logs.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Converts monotonic instants to Unix milliseconds against one anchor taken at start.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    mono: Instant,
    unix_ms: f64,
}

impl WallClock {
    /// Anchors now.
    pub fn new() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        Self {
            mono: Instant::now(),
            unix_ms,
        }
    }

    /// `t` as Unix milliseconds (sub-millisecond precision kept).
    pub fn unix_ms(&self, t: Instant) -> f64 {
        match t.checked_duration_since(self.mono) {
            Some(d) => self.unix_ms + d.as_secs_f64() * 1000.0,
            None => self.unix_ms - self.mono.duration_since(t).as_secs_f64() * 1000.0,
        }
    }
}

impl Default for WallClock {
    fn default() -> Self {
        Self::new()
    }
}

/// Milliseconds between two instants, `None` if either is missing.
pub fn ms_between(a: Option<Instant>, b: Instant) -> Option<f64> {
    a.map(|a| b.saturating_duration_since(a).as_secs_f64() * 1000.0)
}

/// One entry of the event history (also logged).
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LinkEvent {
    /// Traffic moved to another uplink (or was placed at start-up).
    Switch {
        /// `startup`, `failover` or `failback`.
        kind: &'static str,
        /// Uplink left (name).
        from: Option<String>,
        /// Uplink now carrying traffic (name).
        to: String,
        /// Why, e.g. `carrier_down`, `bfd_down`, `probes_missed`.
        reason: String,
        /// When the fault was first seen (Unix ms), for failovers.
        fault_seen_ms: Option<f64>,
        /// When the core decided (Unix ms).
        decided_ms: f64,
        /// When the kernel acknowledged the route replace (Unix ms).
        switched_ms: f64,
        /// decided − fault seen.
        detect_ms: Option<f64>,
        /// switched − decided.
        switch_ms: f64,
        /// Set when a route replace failed (traffic may not have moved).
        error: Option<String>,
    },
    /// An uplink was judged failed.
    UplinkFailed {
        /// Uplink.
        uplink: String,
        /// Why.
        reason: String,
        /// First evidence (Unix ms).
        fault_seen_ms: f64,
        /// Verdict (Unix ms).
        at_ms: f64,
    },
    /// An uplink became healthy.
    UplinkHealthy {
        /// Uplink.
        uplink: String,
        /// Unix ms.
        at_ms: f64,
    },
    /// Flap damping suppressed an uplink.
    Suppressed {
        /// Uplink.
        uplink: String,
        /// Unix ms.
        at_ms: f64,
    },
    /// A suppressed uplink may be used again.
    Reused {
        /// Uplink.
        uplink: String,
        /// Unix ms.
        at_ms: f64,
    },
    /// Every uplink failed; traffic stays on `keep`.
    AllDown {
        /// Uplink kept.
        keep: String,
        /// Unix ms.
        at_ms: f64,
    },
    /// An uplink recovered after `all_down`.
    AllDownCleared {
        /// Unix ms.
        at_ms: f64,
    },
    /// Carrier change seen over netlink.
    Carrier {
        /// Uplink.
        uplink: String,
        /// Carrier present.
        up: bool,
        /// Unix ms.
        at_ms: f64,
    },
    /// BFD session state change.
    Bfd {
        /// Uplink.
        uplink: String,
        /// Session Up.
        up: bool,
        /// Diagnostic on Down.
        diag: Option<String>,
        /// Unix ms.
        at_ms: f64,
    },
}

/// A bounded history; the oldest entries go first.
#[derive(Debug)]
pub struct History {
    cap: usize,
    entries: VecDeque<LinkEvent>,
}

impl History {
    /// Keeps at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            entries: VecDeque::new(),
        }
    }

    /// Appends, dropping the oldest when full.
    pub fn push(&mut self, e: LinkEvent) {
        if self.entries.len() == self.cap {
            self.entries.pop_front();
        }
        self.entries.push_back(e);
    }

    /// Entries, oldest first.
    pub fn entries(&self) -> impl Iterator<Item = &LinkEvent> {
        self.entries.iter()
    }
}

/// BFD counters of one session as reported.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BfdStatus {
    /// Local state (`Up`, `Down`, `Init`, `AdminDown`).
    pub state: String,
    /// Negotiated transmit interval (µs).
    pub tx_interval_us: u64,
    /// Detection time in force (µs), when known.
    pub detect_time_us: Option<u64>,
    /// Packets accepted.
    pub rx_accepted: u64,
    /// Packets sent.
    pub tx: u64,
    /// Dropped: malformed.
    pub drop_malformed: u64,
    /// Dropped: TTL ≠ 255.
    pub drop_wrong_ttl: u64,
    /// Dropped: unknown discriminator.
    pub drop_wrong_discriminator: u64,
    /// Dropped: authentication requested.
    pub drop_auth: u64,
    /// Dropped before the session: source is not the peer.
    pub drop_foreign_source: u64,
    /// Up transitions.
    pub up_transitions: u64,
    /// Down transitions.
    pub down_transitions: u64,
}

/// One uplink in the status.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct UplinkReport {
    /// Name.
    pub name: String,
    /// Interface.
    pub interface: String,
    /// Gateway.
    pub gateway: String,
    /// Carrying traffic.
    pub active: bool,
    /// `unknown`, `healthy` or `failed:<reason>`.
    pub verdict: String,
    /// Suppressed by flap damping.
    pub suppressed: bool,
    /// Last carrier seen.
    pub carrier: Option<bool>,
    /// BFD, when configured.
    pub bfd: Option<BfdStatus>,
    /// Probes sent / replies / misses.
    pub probes_sent: u64,
    /// Replies.
    pub probe_replies: u64,
    /// Misses.
    pub probe_misses: u64,
}

/// The whole status.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct StatusReport {
    /// Active uplink name, once chosen.
    pub active: Option<String>,
    /// Every uplink failed (traffic kept on `active`).
    pub all_down: bool,
    /// Route switches performed.
    pub switches: u64,
    /// Last route replace acknowledgement time (µs).
    pub last_switch_ack_us: Option<u64>,
    /// Failed route replaces.
    pub switch_errors: u64,
    /// Main-loop iterations (progress indicator).
    pub loop_iterations: u64,
    /// Link events lost to socket overruns (each triggers a resync).
    pub link_event_overruns: u64,
    /// Per uplink.
    pub uplinks: Vec<UplinkReport>,
    /// Decision parameters in force (they change with `apply`).
    pub tuning: TuningReport,
}

/// The selector's live-tunable parameters, as reported: the same shape `apply` takes, so a
/// snapshot can be handed back verbatim.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct TuningReport {
    /// Consecutive probe misses that fail an uplink.
    pub probe_miss_threshold: u32,
    /// Consecutive replies that clear a probe failure.
    pub probe_recover_threshold: u32,
    /// Failback hold-down, ms.
    pub hold_down_ms: u64,
    /// Flap damping.
    pub damping: DampingReport,
}

/// Flap damping parameters, as reported.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DampingReport {
    /// Penalty added per failure.
    pub penalty_per_failure: f64,
    /// Suppressed above this penalty.
    pub suppress_above: f64,
    /// Reused below this penalty.
    pub reuse_below: f64,
    /// Penalty half-life, ms.
    pub half_life_ms: u64,
    /// Penalty ceiling.
    pub max_penalty: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let mut h = History::new(2);
        for i in 0..5 {
            h.push(LinkEvent::AllDownCleared {
                at_ms: f64::from(i),
            });
        }
        let kept: Vec<_> = h.entries().cloned().collect();
        assert_eq!(
            kept,
            vec![
                LinkEvent::AllDownCleared { at_ms: 3.0 },
                LinkEvent::AllDownCleared { at_ms: 4.0 }
            ]
        );
    }

    #[test]
    fn events_serialise_as_tagged_json() {
        let e = LinkEvent::Carrier {
            uplink: "primary".into(),
            up: false,
            at_ms: 1.5,
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"event":"carrier","uplink":"primary","up":false,"at_ms":1.5}"#
        );
    }

    #[test]
    fn wall_clock_keeps_intervals() {
        let w = WallClock::new();
        let t = Instant::now();
        let d = w.unix_ms(t + Duration::from_millis(250)) - w.unix_ms(t);
        assert!((d - 250.0).abs() < 0.001, "{d}");
    }
}
