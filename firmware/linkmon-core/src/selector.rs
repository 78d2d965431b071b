//! The uplink decision state machine: which uplink carries the service address's traffic.
//!
//! Inputs per uplink (carrier, BFD, probe results, a media-silence hint from the relay) give each
//! uplink a verdict; the selector switches away from a failed active uplink at once, fails back
//! to a more preferred one only after it stayed healthy for the hold-down, damps flapping, and
//! never switches in a loop when everything is down: it keeps the last good uplink and says so.

use core::time::Duration;
use std::collections::VecDeque;
use std::fmt;
use std::time::Instant;

use crate::damping::{DampingConfig, FlapDamper};
use crate::error::{invalid, LinkmonError};

/// An uplink, by its index in preference order (0 = primary, 1 = backup, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UplinkId(pub u8);

impl fmt::Display for UplinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "uplink {}", self.0)
    }
}

/// What the selector is told about one uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UplinkSpec {
    /// Operator-facing name (interface or role), used in `Debug` output only.
    pub name: String,
    /// Whether a BFD session runs on this uplink; if so, BFD Down fails it.
    pub bfd: bool,
    /// Number of probe targets past the gateway (0: no probes).
    pub probe_targets: u8,
}

/// Selector parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectorConfig {
    /// Uplinks in preference order, at least one, at most 16.
    pub uplinks: Vec<UplinkSpec>,
    /// Consecutive probe misses (on every target) that fail an uplink.
    pub probe_miss_threshold: u32,
    /// Consecutive probe replies (on any target) that clear a probe failure.
    pub probe_recover_threshold: u32,
    /// How long a more preferred uplink must stay healthy before traffic fails back to it.
    pub hold_down: Duration,
    /// Longest wait at start-up for inputs before choosing with what is known.
    pub startup_grace: Duration,
    /// Flap damping.
    pub damping: DampingConfig,
    /// Whether the relay's "media from this uplink stopped" hint fails the uplink at once.
    pub act_on_media_silence: bool,
    /// A media-silence verdict not cleared by other evidence lapses after this long.
    pub media_silence_expiry: Duration,
}

impl Default for SelectorConfig {
    /// Primary and backup, both with BFD and one probe target; 3 misses; 10 s hold-down.
    fn default() -> Self {
        let uplink = |name: &str| UplinkSpec {
            name: name.to_owned(),
            bfd: true,
            probe_targets: 1,
        };
        Self {
            uplinks: vec![uplink("primary"), uplink("backup")],
            probe_miss_threshold: 3,
            probe_recover_threshold: 3,
            hold_down: Duration::from_secs(10),
            startup_grace: Duration::from_secs(5),
            damping: DampingConfig::default(),
            act_on_media_silence: true,
            media_silence_expiry: Duration::from_secs(30),
        }
    }
}

/// Most uplinks a selector handles (ids are `u8`; real appliances have 2–4).
pub const MAX_UPLINKS: usize = 16;

impl SelectorConfig {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), LinkmonError> {
        if self.uplinks.is_empty() || self.uplinks.len() > MAX_UPLINKS {
            return Err(invalid(
                "uplinks",
                format!(
                    "has {} entries; allowed 1 to {MAX_UPLINKS}",
                    self.uplinks.len()
                ),
            ));
        }
        if self.probe_miss_threshold == 0 {
            return Err(invalid("probe_miss_threshold", "is 0; must be at least 1"));
        }
        if self.probe_recover_threshold == 0 {
            return Err(invalid(
                "probe_recover_threshold",
                "is 0; must be at least 1",
            ));
        }
        let day = Duration::from_secs(86_400);
        for (field, v) in [
            ("hold_down", self.hold_down),
            ("startup_grace", self.startup_grace),
            ("media_silence_expiry", self.media_silence_expiry),
        ] {
            if v > day {
                return Err(invalid(field, format!("is {v:?}; at most one day")));
            }
        }
        self.damping.validate()
    }
}

/// One health input for one uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthInput {
    /// Carrier (link) state from netlink.
    Carrier {
        /// Whether the link has carrier.
        up: bool,
    },
    /// BFD session state (from `BfdEvent::Up`/`Down`).
    Bfd {
        /// Whether the session is Up.
        up: bool,
    },
    /// Result of one probe to a target past the gateway.
    Probe {
        /// Target index, below `UplinkSpec::probe_targets`.
        target: u8,
        /// Reply or miss.
        outcome: ProbeOutcome,
    },
    /// The relay saw media arriving over this uplink stop.
    MediaSilence,
    /// The relay sees media arriving over this uplink.
    MediaFlowing,
}

/// Result of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// The target answered in time.
    Reply,
    /// No answer within the probe timeout.
    Miss,
}

/// Why an uplink is considered failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureReason {
    /// No carrier.
    CarrierDown,
    /// BFD session Down (or never Up by the end of the start-up grace).
    BfdDown,
    /// `probe_miss_threshold` consecutive misses on every probe target.
    ProbesMissed,
    /// Media from the uplink stopped (relay hint).
    MediaSilence,
    /// A required input (carrier state) never arrived within the start-up grace.
    NoReport,
}

/// Why traffic moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchReason {
    /// The first choice after start-up.
    Startup,
    /// The active uplink failed.
    Failover(FailureReason),
    /// A more preferred uplink stayed healthy for the hold-down.
    Failback,
}

/// What the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decision {
    /// Move the service traffic to `to` (one atomic route / nexthop-group replace).
    Switch {
        /// The uplink traffic leaves (`None` for the first choice).
        from: Option<UplinkId>,
        /// The uplink traffic moves to.
        to: UplinkId,
        /// Why.
        reason: SwitchReason,
        /// For a failover, the earliest input that showed the fault (for probes, when the last
        /// target began missing); `None` for start-up and fail-back.
        fault_seen_at: Option<Instant>,
        /// When the selector decided.
        decided_at: Instant,
    },
}

/// Every state change, for the event log and the local socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SelectorEvent {
    /// An uplink's verdict became failed.
    UplinkFailed {
        /// Which.
        uplink: UplinkId,
        /// Why.
        reason: FailureReason,
        /// Earliest input that showed the fault.
        fault_seen_at: Instant,
        /// When the verdict changed.
        at: Instant,
    },
    /// An uplink's verdict became healthy.
    UplinkHealthy {
        /// Which.
        uplink: UplinkId,
        /// When.
        at: Instant,
    },
    /// Flap damping suppressed an uplink: it is not a fail-back target until reused.
    Suppressed {
        /// Which.
        uplink: UplinkId,
        /// When.
        at: Instant,
    },
    /// A suppressed uplink's penalty decayed below the reuse threshold.
    Reused {
        /// Which.
        uplink: UplinkId,
        /// When.
        at: Instant,
    },
    /// Every uplink is failed; traffic stays on `keep` (the last good one) and nothing switches.
    AllDown {
        /// The uplink kept.
        keep: UplinkId,
        /// When.
        at: Instant,
    },
    /// An uplink is healthy again after `AllDown`.
    AllDownCleared {
        /// When.
        at: Instant,
    },
}

/// An uplink's current verdict, for status displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not enough input yet (only during the start-up grace).
    Unknown,
    /// Usable.
    Healthy,
    /// Not usable, and why.
    Failed(FailureReason),
}

/// Snapshot of one uplink for `popctl links`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkStatus {
    /// Current verdict.
    pub verdict: Verdict,
    /// Whether flap damping suppresses it.
    pub suppressed: bool,
    /// Last carrier report.
    pub carrier: Option<bool>,
    /// Last BFD report.
    pub bfd: Option<bool>,
    /// Healthy without interruption since.
    pub healthy_since: Option<Instant>,
}

const EVENT_QUEUE_CAP: usize = 256;

#[derive(Debug)]
struct ProbeTarget {
    misses: u32,
    replies: u32,
    first_miss_at: Option<Instant>,
}

#[derive(Debug)]
struct Uplink {
    spec: UplinkSpec,
    carrier: Option<bool>,
    bfd: Option<bool>,
    bfd_ever_up: bool,
    targets: Vec<ProbeTarget>,
    probe_known: bool,
    probe_failed_at: Option<Instant>,
    media_silent_since: Option<Instant>,
    /// When each input last turned bad, for `fault_seen_at`.
    carrier_down_at: Option<Instant>,
    bfd_down_at: Option<Instant>,
    verdict: Verdict,
    /// While failed: the earliest input that showed the fault.
    fault_seen_at: Option<Instant>,
    healthy_since: Option<Instant>,
    damper: FlapDamper,
}

impl Uplink {
    fn new(spec: UplinkSpec, damping: DampingConfig, now: Instant) -> Self {
        let targets = (0..spec.probe_targets)
            .map(|_| ProbeTarget {
                misses: 0,
                replies: 0,
                first_miss_at: None,
            })
            .collect();
        Self {
            spec,
            carrier: None,
            bfd: None,
            bfd_ever_up: false,
            targets,
            probe_known: false,
            probe_failed_at: None,
            media_silent_since: None,
            carrier_down_at: None,
            bfd_down_at: None,
            verdict: Verdict::Unknown,
            fault_seen_at: None,
            healthy_since: None,
            damper: FlapDamper::new(damping, now),
        }
    }

    /// The verdict and, if failed, the earliest input that showed the fault.
    fn assess(
        &self,
        cfg: &SelectorConfig,
        grace_over: bool,
        now: Instant,
    ) -> (Verdict, Option<Instant>) {
        if self.carrier == Some(false) {
            return (
                Verdict::Failed(FailureReason::CarrierDown),
                self.carrier_down_at,
            );
        }
        if self.spec.bfd {
            match self.bfd {
                Some(false) if self.bfd_ever_up || grace_over => {
                    return (Verdict::Failed(FailureReason::BfdDown), self.bfd_down_at)
                }
                None if grace_over => return (Verdict::Failed(FailureReason::BfdDown), Some(now)),
                _ => {}
            }
        }
        if let Some(at) = self.probe_failed_at {
            return (Verdict::Failed(FailureReason::ProbesMissed), Some(at));
        }
        if let Some(since) = self.media_silent_since {
            if cfg.act_on_media_silence {
                return (Verdict::Failed(FailureReason::MediaSilence), Some(since));
            }
        }
        let carrier_known = self.carrier.is_some();
        let bfd_known = !self.spec.bfd || self.bfd == Some(true);
        let probes_known = self.targets.is_empty() || self.probe_known;
        if carrier_known && bfd_known && probes_known {
            (Verdict::Healthy, None)
        } else if grace_over {
            if carrier_known {
                // Probes that never reported are not evidence of a fault.
                (Verdict::Healthy, None)
            } else {
                (Verdict::Failed(FailureReason::NoReport), Some(now))
            }
        } else {
            (Verdict::Unknown, None)
        }
    }

    /// Any fresh positive evidence ends a media-silence verdict.
    fn clear_media_silence(&mut self) {
        self.media_silent_since = None;
    }
}

/// The parameters of [`SelectorConfig`] that can change while the selector runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectorTuning {
    /// See [`SelectorConfig::probe_miss_threshold`].
    pub probe_miss_threshold: u32,
    /// See [`SelectorConfig::probe_recover_threshold`].
    pub probe_recover_threshold: u32,
    /// See [`SelectorConfig::hold_down`].
    pub hold_down: Duration,
    /// See [`SelectorConfig::damping`].
    pub damping: DampingConfig,
}

/// The uplink decision state machine. Feed inputs and time; drain decisions and events.
#[derive(Debug)]
pub struct UplinkSelector {
    cfg: SelectorConfig,
    uplinks: Vec<Uplink>,
    started_at: Instant,
    active: Option<UplinkId>,
    all_down: bool,
    decisions: VecDeque<Decision>,
    events: VecDeque<SelectorEvent>,
}

impl UplinkSelector {
    /// A selector with every uplink's state unknown; it chooses once the initial state is known
    /// or `startup_grace` after `now`, whichever comes first.
    pub fn new(cfg: SelectorConfig, now: Instant) -> Result<Self, LinkmonError> {
        cfg.validate()?;
        let uplinks = cfg
            .uplinks
            .iter()
            .map(|spec| Uplink::new(spec.clone(), cfg.damping, now))
            .collect();
        Ok(Self {
            cfg,
            uplinks,
            started_at: now,
            active: None,
            all_down: false,
            decisions: VecDeque::new(),
            events: VecDeque::new(),
        })
    }

    /// Changes the decision parameters while running (a configuration push): probe
    /// thresholds, hold-down and flap damping. Uplinks, their inputs and the active choice stay
    /// as they are; the new values apply from the next input or timeout. Validated like a whole
    /// configuration; on error nothing changes.
    pub fn set_tuning(
        &mut self,
        tuning: &SelectorTuning,
        now: Instant,
    ) -> Result<(), LinkmonError> {
        let mut candidate = self.cfg.clone();
        candidate.probe_miss_threshold = tuning.probe_miss_threshold;
        candidate.probe_recover_threshold = tuning.probe_recover_threshold;
        candidate.hold_down = tuning.hold_down;
        candidate.damping = tuning.damping;
        candidate.validate()?;
        for u in &mut self.uplinks {
            u.damper.set_config(tuning.damping, now);
        }
        self.cfg = candidate;
        Ok(())
    }

    /// The live-tunable parameters as they are now.
    pub fn tuning(&self) -> SelectorTuning {
        SelectorTuning {
            probe_miss_threshold: self.cfg.probe_miss_threshold,
            probe_recover_threshold: self.cfg.probe_recover_threshold,
            hold_down: self.cfg.hold_down,
            damping: self.cfg.damping,
        }
    }

    /// The uplink carrying traffic, once chosen.
    pub fn active(&self) -> Option<UplinkId> {
        self.active
    }

    /// Whether every uplink is failed (traffic stays on the active one).
    pub fn all_down(&self) -> bool {
        self.all_down
    }

    /// Number of configured uplinks.
    pub fn uplink_count(&self) -> usize {
        self.uplinks.len()
    }

    /// Snapshot of one uplink.
    pub fn status(&self, id: UplinkId) -> Option<UplinkStatus> {
        let u = self.uplinks.get(usize::from(id.0))?;
        Some(UplinkStatus {
            verdict: u.verdict,
            suppressed: u.damper.is_suppressed(),
            carrier: u.carrier,
            bfd: u.bfd,
            healthy_since: u.healthy_since,
        })
    }

    /// Feeds one input and re-decides.
    pub fn handle_input(
        &mut self,
        now: Instant,
        id: UplinkId,
        input: HealthInput,
    ) -> Result<(), LinkmonError> {
        let miss_threshold = self.cfg.probe_miss_threshold;
        let recover_threshold = self.cfg.probe_recover_threshold;
        let u = self
            .uplinks
            .get_mut(usize::from(id.0))
            .ok_or(LinkmonError::UnknownUplink(id.0))?;
        match input {
            HealthInput::Carrier { up } => {
                if up && u.carrier == Some(false) {
                    u.clear_media_silence();
                }
                if !up && u.carrier != Some(false) {
                    u.carrier_down_at = Some(now);
                }
                u.carrier = Some(up);
            }
            HealthInput::Bfd { up } => {
                if up {
                    u.bfd_ever_up = true;
                    if u.bfd != Some(true) {
                        u.clear_media_silence();
                    }
                } else if u.bfd != Some(false) {
                    u.bfd_down_at = Some(now);
                }
                u.bfd = Some(up);
            }
            HealthInput::Probe { target, outcome } => {
                let t = u.targets.get_mut(usize::from(target)).ok_or(
                    LinkmonError::UnknownProbeTarget {
                        uplink: id.0,
                        target,
                    },
                )?;
                u.probe_known = true;
                match outcome {
                    ProbeOutcome::Miss => {
                        t.replies = 0;
                        if t.misses == 0 {
                            t.first_miss_at = Some(now);
                        }
                        t.misses = t.misses.saturating_add(1);
                    }
                    ProbeOutcome::Reply => {
                        t.misses = 0;
                        t.first_miss_at = None;
                        t.replies = t.replies.saturating_add(1);
                    }
                }
                let recovered = u.targets.iter().any(|t| t.replies >= recover_threshold);
                if u.probe_failed_at.is_some() {
                    if recovered {
                        u.probe_failed_at = None;
                    }
                } else if u.targets.iter().all(|t| t.misses >= miss_threshold) {
                    // The fault was visible once every target had started missing.
                    u.probe_failed_at = u.targets.iter().filter_map(|t| t.first_miss_at).max();
                }
                if recovered && u.media_silent_since.is_some() {
                    u.clear_media_silence();
                }
            }
            HealthInput::MediaSilence => {
                if u.media_silent_since.is_none() {
                    u.media_silent_since = Some(now);
                    // Only replies after the silence may clear it.
                    for t in &mut u.targets {
                        t.replies = 0;
                    }
                }
            }
            HealthInput::MediaFlowing => u.clear_media_silence(),
        }
        self.evaluate(now);
        Ok(())
    }

    /// Applies timers (start-up grace, hold-down, damping reuse, media-silence expiry).
    pub fn handle_timeout(&mut self, now: Instant) {
        for (i, u) in self.uplinks.iter_mut().enumerate() {
            if u.damper.update(now) {
                push(
                    &mut self.events,
                    SelectorEvent::Reused {
                        uplink: id_of(i),
                        at: now,
                    },
                );
            }
            if u.media_silent_since
                .is_some_and(|s| now.saturating_duration_since(s) >= self.cfg.media_silence_expiry)
            {
                u.clear_media_silence();
            }
        }
        self.evaluate(now);
    }

    /// The next instant at which `handle_timeout` has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.active.is_none() {
            consider(self.started_at.checked_add(self.cfg.startup_grace));
        }
        let active_index = self.active.map_or(usize::MAX, |a| usize::from(a.0));
        for (i, u) in self.uplinks.iter().enumerate() {
            consider(u.damper.reuse_at());
            if i < active_index && !u.damper.is_suppressed() {
                consider(
                    u.healthy_since
                        .and_then(|s| s.checked_add(self.cfg.hold_down)),
                );
            }
            consider(
                u.media_silent_since
                    .and_then(|s| s.checked_add(self.cfg.media_silence_expiry)),
            );
        }
        next
    }

    /// The next decision, oldest first.
    pub fn poll_decision(&mut self) -> Option<Decision> {
        self.decisions.pop_front()
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<SelectorEvent> {
        self.events.pop_front()
    }

    fn evaluate(&mut self, now: Instant) {
        let grace_over = now.saturating_duration_since(self.started_at) >= self.cfg.startup_grace;
        for (i, u) in self.uplinks.iter_mut().enumerate() {
            let (verdict, fault_seen_at) = u.assess(&self.cfg, grace_over, now);
            if verdict == u.verdict {
                continue;
            }
            let was_healthy = u.verdict == Verdict::Healthy;
            u.verdict = verdict;
            u.fault_seen_at = fault_seen_at;
            match verdict {
                Verdict::Healthy => {
                    u.healthy_since = Some(now);
                    push(
                        &mut self.events,
                        SelectorEvent::UplinkHealthy {
                            uplink: id_of(i),
                            at: now,
                        },
                    );
                }
                Verdict::Failed(reason) => {
                    u.healthy_since = None;
                    push(
                        &mut self.events,
                        SelectorEvent::UplinkFailed {
                            uplink: id_of(i),
                            reason,
                            fault_seen_at: fault_seen_at.unwrap_or(now),
                            at: now,
                        },
                    );
                    // Only a real failure of a working uplink counts as a flap.
                    if was_healthy && u.damper.record_failure(now) {
                        push(
                            &mut self.events,
                            SelectorEvent::Suppressed {
                                uplink: id_of(i),
                                at: now,
                            },
                        );
                    }
                }
                Verdict::Unknown => u.healthy_since = None,
            }
        }
        match self.active {
            None => self.choose_initial(now),
            Some(active) => self.reconsider(now, active),
        }
    }

    fn choose_initial(&mut self, now: Instant) {
        // The most preferred healthy uplink, once every more preferred one is known failed.
        let mut chosen = None;
        for (i, u) in self.uplinks.iter().enumerate() {
            match u.verdict {
                Verdict::Unknown => return,
                Verdict::Healthy => {
                    chosen = Some(id_of(i));
                    break;
                }
                Verdict::Failed(_) => {}
            }
        }
        let to = chosen.unwrap_or(UplinkId(0));
        self.switch(now, None, to, SwitchReason::Startup, None);
        if chosen.is_none() {
            self.all_down = true;
            push(
                &mut self.events,
                SelectorEvent::AllDown { keep: to, at: now },
            );
        }
    }

    fn reconsider(&mut self, now: Instant, active: UplinkId) {
        let Some(current) = self.uplinks.get(usize::from(active.0)) else {
            return;
        };
        match current.verdict {
            Verdict::Failed(reason) => {
                let fault_seen_at = current.fault_seen_at.or(Some(now));
                let healthy = |u: &&Uplink| u.verdict == Verdict::Healthy;
                let candidates = || {
                    self.uplinks
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != usize::from(active.0))
                };
                // Suppressed uplinks are a last resort, better than a dead one.
                let target = candidates()
                    .find(|(_, u)| healthy(u) && !u.damper.is_suppressed())
                    .or_else(|| candidates().find(|(_, u)| healthy(u)))
                    .map(|(i, _)| id_of(i));
                match target {
                    Some(to) => {
                        self.clear_all_down(now);
                        self.switch(
                            now,
                            Some(active),
                            to,
                            SwitchReason::Failover(reason),
                            fault_seen_at,
                        );
                    }
                    None if !self.all_down => {
                        self.all_down = true;
                        push(
                            &mut self.events,
                            SelectorEvent::AllDown {
                                keep: active,
                                at: now,
                            },
                        );
                    }
                    None => {}
                }
            }
            Verdict::Healthy | Verdict::Unknown => {
                if current.verdict == Verdict::Healthy {
                    self.clear_all_down(now);
                }
                let hold_down = self.cfg.hold_down;
                let better = self
                    .uplinks
                    .iter()
                    .take(usize::from(active.0))
                    .position(|u| {
                        u.verdict == Verdict::Healthy
                            && !u.damper.is_suppressed()
                            && u.healthy_since
                                .is_some_and(|s| now.saturating_duration_since(s) >= hold_down)
                    });
                if let Some(i) = better {
                    self.switch(now, Some(active), id_of(i), SwitchReason::Failback, None);
                }
            }
        }
    }

    fn clear_all_down(&mut self, now: Instant) {
        if self.all_down {
            self.all_down = false;
            push(&mut self.events, SelectorEvent::AllDownCleared { at: now });
        }
    }

    fn switch(
        &mut self,
        now: Instant,
        from: Option<UplinkId>,
        to: UplinkId,
        reason: SwitchReason,
        fault_seen_at: Option<Instant>,
    ) {
        self.active = Some(to);
        let d = Decision::Switch {
            from,
            to,
            reason,
            fault_seen_at,
            decided_at: now,
        };
        if self.decisions.len() >= EVENT_QUEUE_CAP {
            self.decisions.pop_front();
        }
        self.decisions.push_back(d);
    }
}

fn id_of(index: usize) -> UplinkId {
    // Config validation caps uplinks at MAX_UPLINKS (16), so the index fits.
    UplinkId(u8::try_from(index).unwrap_or(u8::MAX))
}

fn push(q: &mut VecDeque<SelectorEvent>, e: SelectorEvent) {
    if q.len() >= EVENT_QUEUE_CAP {
        q.pop_front();
    }
    q.push_back(e);
}
