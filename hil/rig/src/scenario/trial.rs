//! Failover trials on one rig: wait until everything is on the primary, inject a fault, watch
//! the appliance's monitor and the upstream switch, measure the media gap each way, recover,
//! wait for the failback. Every wait is bounded; a trial that goes wrong is recorded as such
//! and the next one starts from a recovered rig.

use std::time::Duration;

use pop_rig::{Fault, Injection, MonoTime, Rig, Role, Uplink};
use serde::Serialize;

use super::error::{BenchError, Result};
use super::media::{Direction, GapReport, MediaRun};
use super::services::{follower_switches, ms, wait_until, Services, Switch};

/// The failure modes the benchmark injects on the primary uplink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The carrier's end goes down (the appliance sees NO-CARRIER).
    CarrierLoss,
    /// Everything on the uplink silently dropped, link up.
    Blackhole,
    /// The carrier's link toward the core drops everything; the gateway still answers.
    PastGateway,
}

impl Mode {
    /// Every mode, in table order.
    pub const ALL: [Mode; 3] = [Mode::CarrierLoss, Mode::Blackhole, Mode::PastGateway];

    /// The fault on the primary.
    pub fn fault(self) -> Fault {
        match self {
            Mode::CarrierLoss => Fault::CarrierLoss(Uplink::One),
            Mode::Blackhole => Fault::Blackhole(Uplink::One),
            Mode::PastGateway => Fault::PastGateway(Uplink::One),
        }
    }

    /// Name on the command line and in tables.
    pub fn name(self) -> &'static str {
        match self {
            Mode::CarrierLoss => "carrier-loss",
            Mode::Blackhole => "blackhole",
            Mode::PastGateway => "past-gateway",
        }
    }

    /// Parses [`Mode::name`].
    pub fn from_name(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Which monitor moves the appliance's default route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Monitor {
    /// `popd linkmon`.
    Linkmon,
    /// FRR `bfdd` (50 ms × 3) with the rig's route follower: the reference.
    FrrBfdd,
}

impl Monitor {
    /// Name in tables.
    pub fn name(self) -> &'static str {
        match self {
            Monitor::Linkmon => "popd linkmon",
            Monitor::FrrBfdd => "FRR bfdd",
        }
    }
}

/// One direction of one trial.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct DirectionResult {
    /// Fault in effect → the fault was first seen (linkmon failovers only), ms.
    pub fault_seen_ms: Option<f64>,
    /// Fault in effect → switch decided, ms. `None`: no switch within the trial's limit.
    pub detect_ms: Option<f64>,
    /// Decided → route replaced, ms.
    pub switch_ms: Option<f64>,
    /// Longest run of lost packets × 20 ms.
    pub gap_ms: f64,
    /// Loss over the trial's window.
    pub loss: GapReport,
    /// Fault in effect → first packet after the gap arrived, ms.
    pub resumed_ms: Option<f64>,
}

/// One trial.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrialResult {
    /// Failure mode.
    pub mode: Mode,
    /// Monitor under test.
    pub monitor: Monitor,
    /// 0-based index within the mode.
    pub index: u32,
    /// `effective − started` of the injection: the uncertainty of "fault in effect", ms.
    pub injection_uncertainty_ms: f64,
    /// The appliance's direction (its monitor moves the default route).
    pub app_to_core: DirectionResult,
    /// The core's direction (the rig's upstream moves the core's route).
    pub core_to_app: DirectionResult,
    /// Why the appliance switched (linkmon's reason).
    pub reason: Option<String>,
    /// Recovery in effect → failback route replaced, ms.
    pub failback_after_ms: Option<f64>,
    /// What went wrong, if anything.
    pub error: Option<String>,
}

impl TrialResult {
    /// The result for `dir`.
    pub fn direction(&self, dir: Direction) -> &DirectionResult {
        match dir {
            Direction::AppToCore => &self.app_to_core,
            Direction::CoreToApp => &self.core_to_app,
        }
    }
}

/// Longest wait for the switches and for media to flow again after an injection.
const SWITCH_LIMIT: Duration = Duration::from_secs(3);
/// Longest wait for everything to be back on the primary before a trial.
const STABLE_LIMIT: Duration = Duration::from_secs(30);
/// Packets that must all have arrived for media to count as flowing.
const FLOWING_PACKETS: usize = 5;
/// How old a packet must be before its absence counts as a loss.
const SETTLE: Duration = Duration::from_millis(100);

/// Drives trials on one rig.
#[derive(Debug)]
pub struct Trials<'a> {
    /// The rig.
    pub rig: &'a Rig,
    /// Relay, linkmon, echo responder.
    pub services: &'a mut Services,
    /// The call's media.
    pub media: &'a MediaRun,
    /// Who moves the appliance's route.
    pub monitor: Monitor,
    /// linkmon's hold-down (zero for the FRR follower, which has none).
    pub hold_down: Duration,
}

impl Trials<'_> {
    /// The appliance's switches so far.
    pub fn app_switches(&self) -> Result<Vec<Switch>> {
        match self.monitor {
            Monitor::Linkmon => self.services.linkmon_switches(),
            Monitor::FrrBfdd => Ok(follower_switches(
                &self.rig.app_route_events(),
                Uplink::One.app_dev(),
            )),
        }
    }

    /// The core's route changes so far.
    pub fn core_switches(&self) -> Vec<Switch> {
        follower_switches(&self.rig.core_route_events(), Role::Car1.name())
    }

    fn frr_all_up(&self, role: Role) -> bool {
        self.rig
            .frr(role)
            .and_then(|f| f.peer_status().ok())
            .is_some_and(|peers| !peers.is_empty() && peers.iter().all(|p| p.is_up()))
    }

    /// Everything on the primary with every BFD session up and media flowing both ways.
    pub fn stable_on_primary(&self) -> bool {
        let app_ok = match self.monitor {
            Monitor::Linkmon => self.services.linkmon_status().is_ok_and(|st| {
                st["active"] == "primary"
                    && !st["all_down"].as_bool().unwrap_or(true)
                    && (0..2).all(|i| {
                        let u = &st["uplinks"][i];
                        u["verdict"] == "healthy" && u["bfd"]["state"] == "Up"
                    })
            }),
            Monitor::FrrBfdd => {
                self.app_switches()
                    .ok()
                    .is_some_and(|s| s.last().is_none_or(|l| !l.failover))
                    && self.frr_all_up(Role::App)
            }
        };
        app_ok
            && self.core_switches().last().is_none_or(|l| !l.failover)
            && self.frr_all_up(Role::Car1)
            && self.frr_all_up(Role::Car2)
            && self.frr_all_up(Role::Core)
            && Direction::ALL
                .into_iter()
                .all(|d| self.media.flowing(d, FLOWING_PACKETS, SETTLE))
    }

    /// Waits until [`Trials::stable_on_primary`], at most `limit`.
    pub fn wait_stable(&mut self, limit: Duration) -> Result<()> {
        let ok = wait_until(limit, || {
            std::thread::sleep(Duration::from_millis(20));
            self.stable_on_primary()
        });
        self.services.check_alive()?;
        if ok {
            Ok(())
        } else {
            Err(BenchError::Timeout {
                what: format!(
                    "{}: everything on the primary, BFD up, media flowing both ways",
                    self.monitor.name()
                ),
                limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
                logs: self.rig.run_dir().display().to_string(),
            })
        }
    }

    /// Runs one trial of `mode`. Errors of the rig or services end the run; a trial whose
    /// switch or media never came is recorded with `error` set.
    pub fn run(&mut self, mode: Mode, index: u32) -> Result<TrialResult> {
        self.wait_stable(STABLE_LIMIT)?;
        // A random phase against the BFD and probe timers, as a real fault has.
        std::thread::sleep(Duration::from_millis(rand::random::<u64>() % 50));
        let app_before = self.app_switches()?.len();
        let core_before = self.core_switches().len();
        let fault = mode.fault();
        let inj = self.rig.inject(fault)?;
        let mut app_sw: Option<Switch> = None;
        let mut core_sw: Option<Switch> = None;
        let mut query_error = None;
        let flowing_both = |m: &MediaRun| {
            Direction::ALL
                .into_iter()
                .all(|d| m.flowing(d, FLOWING_PACKETS, SETTLE))
        };
        wait_until(SWITCH_LIMIT, || {
            std::thread::sleep(Duration::from_millis(10));
            if app_sw.is_none() {
                match self.app_switches() {
                    Ok(s) => app_sw = s.into_iter().skip(app_before).find(|s| s.failover),
                    Err(e) => query_error = Some(e.to_string()),
                }
            }
            if core_sw.is_none() {
                core_sw = self
                    .core_switches()
                    .into_iter()
                    .skip(core_before)
                    .find(|s| s.failover);
            }
            app_sw.is_some() && core_sw.is_some() && flowing_both(self.media)
        });
        let resumed = flowing_both(self.media);
        // Let the last packets before the recovery arrive or count as lost.
        std::thread::sleep(Duration::from_millis(300));
        let rec = self.rig.recover(fault)?;
        let window_end = MonoTime::from_nanos(
            rec.started
                .as_nanos()
                .saturating_sub(u64::try_from(SETTLE.as_nanos()).unwrap_or(0)),
        );
        let window_start =
            MonoTime::from_nanos(inj.effective.as_nanos().saturating_sub(200_000_000));
        let dir_result = |dir: Direction, sw: &Option<Switch>| {
            let loss = self.media.gap(dir, window_start, window_end);
            DirectionResult {
                fault_seen_ms: sw
                    .as_ref()
                    .and_then(|s| s.fault_seen)
                    .map(|t| ms(inj.effective, t)),
                detect_ms: sw.as_ref().map(|s| ms(inj.effective, s.decided)),
                switch_ms: sw.as_ref().map(|s| ms(s.decided, s.switched)),
                gap_ms: loss.gap_ms,
                loss,
                resumed_ms: loss.resumed_at.map(|t| ms(inj.effective, t)),
            }
        };
        let mut result = TrialResult {
            mode,
            monitor: self.monitor,
            index,
            injection_uncertainty_ms: ms(inj.started, inj.effective),
            app_to_core: dir_result(Direction::AppToCore, &app_sw),
            core_to_app: dir_result(Direction::CoreToApp, &core_sw),
            reason: app_sw.as_ref().map(|s| s.reason.clone()),
            failback_after_ms: None,
            error: None,
        };
        let mut problems = Vec::new();
        if let Some(e) = query_error {
            problems.push(format!("linkmon query failed: {e}"));
        }
        if app_sw.is_none() {
            problems.push(format!(
                "{} did not switch within {SWITCH_LIMIT:?}",
                self.monitor.name()
            ));
        }
        if core_sw.is_none() {
            problems.push(format!("the core did not switch within {SWITCH_LIMIT:?}"));
        }
        if !resumed {
            problems.push("media did not flow both ways again before the recovery".into());
        }
        result.failback_after_ms = self.wait_failback(app_before, &rec)?;
        if result.failback_after_ms.is_none() && app_sw.is_some() {
            problems.push("no failback to the primary".into());
        }
        if !problems.is_empty() {
            result.error = Some(problems.join("; "));
        }
        Ok(result)
    }

    /// Waits for the appliance's failback to the primary after `rec`; returns recovery in
    /// effect → route replaced, in ms.
    fn wait_failback(&mut self, app_before: usize, rec: &Injection) -> Result<Option<f64>> {
        let limit = self.hold_down + Duration::from_secs(15);
        let mut found = None;
        wait_until(limit, || {
            std::thread::sleep(Duration::from_millis(20));
            found = self.app_switches().ok().and_then(|s| {
                s.into_iter()
                    .skip(app_before)
                    .find(|s| !s.failover && s.switched >= rec.started)
            });
            // Nothing to fail back from when the monitor never left the primary.
            found.is_some() || self.app_switches().is_ok_and(|s| s.len() == app_before)
        });
        self.services.check_alive()?;
        Ok(found.map(|s| ms(rec.effective, s.switched)))
    }
}
