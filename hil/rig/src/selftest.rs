//! `pop-rig selftest`: build, check every path, inject each fault and check it breaks exactly
//! what it should and that recovery restores it, with timings.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::checks::{mismatches, PathId};
use crate::clock::MonoTime;
use crate::error::{Result, RigError};
use crate::follow::RouteEvent;
use crate::frr::BfdTimers;
use crate::inject::Fault;
use crate::plan::{Role, Uplink};
use crate::rig::{Rig, RigOptions, Upstream};

/// The faults the self-test exercises, in order.
pub const SELFTEST_FAULTS: [Fault; 5] = [
    Fault::CarrierLoss(Uplink::One),
    Fault::Blackhole(Uplink::One),
    Fault::PastGateway(Uplink::One),
    Fault::Loss {
        uplink: Uplink::One,
        percent: 50,
    },
    Fault::BothUplinksDown,
];

/// Outcome of a self-test.
#[derive(Debug, Default)]
pub struct SelftestReport {
    /// Human-readable failures; empty when everything passed.
    pub failures: Vec<String>,
}

fn probes_for(fault: Fault) -> u32 {
    // Enough datagrams that 50 % random loss shows as neither 0 nor all (p ≈ 2^-100).
    if matches!(fault, Fault::Loss { .. }) {
        100
    } else {
        20
    }
}

/// Waits until every configured FRR session is up; returns the time taken.
fn wait_all_bfd_up(rig: &Rig, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    for role in Role::ALL {
        if let Some(bfdd) = rig.frr(role) {
            for peer in bfdd.peers() {
                let left = limit.saturating_sub(start.elapsed());
                bfdd.wait_up(peer.peer, left)?;
            }
        }
    }
    Ok(start.elapsed())
}

/// Waits until the uplink paths are all healthy again; returns the time taken.
fn wait_healthy(rig: &Rig, limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if mismatches(rig, None, 5)?.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            return Err(RigError::Timeout {
                what: "every uplink path to work again".to_owned(),
                waited: limit,
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for a follower event to `label` after `since`; returns it.
fn wait_event(
    events: impl Fn() -> Vec<RouteEvent>,
    label: &str,
    since: MonoTime,
    limit: Duration,
) -> Option<RouteEvent> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(e) = events()
            .into_iter()
            .find(|e| e.to == label && e.seen >= since)
        {
            return Some(e);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Runs the self-test, printing progress and timings to `out`. With `frr`, carriers, core and
/// (as the reference monitor) the appliance run FRR bfdd at 50 ms × 3 and route followers.
pub fn run_selftest(out: &mut dyn Write, frr: bool) -> Result<SelftestReport> {
    let mut report = SelftestReport::default();
    let options = RigOptions {
        upstream: if frr {
            Upstream::FrrBfd(BfdTimers::FAST_50X3)
        } else {
            Upstream::Manual
        },
        appliance_frr: frr.then_some(BfdTimers::FAST_50X3),
        ..RigOptions::default()
    };
    let rig = Rig::build(options)?;
    let t = rig.timings();
    let _ = writeln!(
        out,
        "rig {} built: topology {}, FRR start {}",
        rig.run_id(),
        ms(t.topology),
        ms(t.frr_start)
    );
    if frr {
        let up = wait_all_bfd_up(&rig, Duration::from_secs(15))?;
        let _ = writeln!(out, "all BFD sessions up {} after FRR start", ms(up));
    }
    let bad = mismatches(&rig, None, 20)?;
    for (path, expect, r) in &bad {
        report.failures.push(format!(
            "healthy rig: {path} expected {expect:?}, got {}/{}",
            r.received, r.sent
        ));
    }
    for path in [PathId::ServiceToCore, PathId::CoreToService] {
        let r = path.probe(&rig, 20)?;
        if !r.all() {
            report
                .failures
                .push(format!("healthy rig: {path} got {}/{}", r.received, r.sent));
        }
    }
    let _ = writeln!(
        out,
        "healthy: every path works ({} problems)",
        report.failures.len()
    );

    for fault in SELFTEST_FAULTS {
        let inj = rig.inject(fault)?;
        let bad = mismatches(&rig, Some(fault), probes_for(fault))?;
        let mut line = format!(
            "{fault}: injected in {}, {}",
            ms(inj.effective.saturating_since(inj.started)),
            if bad.is_empty() {
                "paths as expected".to_owned()
            } else {
                format!("{} paths wrong", bad.len())
            }
        );
        for (path, expect, r) in &bad {
            report.failures.push(format!(
                "{fault}: {path} expected {expect:?}, got {}/{}",
                r.received, r.sent
            ));
        }
        if frr
            && matches!(
                fault,
                Fault::CarrierLoss(Uplink::One) | Fault::Blackhole(Uplink::One)
            )
        {
            let limit = Duration::from_secs(2);
            match wait_event(|| rig.core_route_events(), "car2", inj.started, limit) {
                Some(e) => {
                    line += &format!(
                        ", core route to car2 after {}",
                        ms(e.switched.saturating_since(inj.effective))
                    )
                }
                None => report.failures.push(format!(
                    "{fault}: core route did not move to car2 within {limit:?}"
                )),
            }
            match wait_event(|| rig.app_route_events(), "up2", inj.started, limit) {
                Some(e) => {
                    line += &format!(
                        ", appliance (FRR reference) to up2 after {}",
                        ms(e.switched.saturating_since(inj.effective))
                    )
                }
                None => report.failures.push(format!(
                    "{fault}: appliance route did not move to up2 within {limit:?}"
                )),
            }
        }
        let rec = rig.recover(fault)?;
        match wait_healthy(&rig, Duration::from_secs(5)) {
            Ok(d) => {
                line += &format!(
                    "; recovered, paths back {} after recovery",
                    ms(d + rec.effective.saturating_since(rec.started))
                )
            }
            Err(e) => report
                .failures
                .push(format!("{fault}: after recovery: {e}")),
        }
        if frr {
            match wait_all_bfd_up(&rig, Duration::from_secs(15)) {
                Ok(d) => line += &format!(", BFD up again after {}", ms(d)),
                Err(e) => report
                    .failures
                    .push(format!("{fault}: after recovery: {e}")),
            }
            // Let the followers move back to the primaries before the next fault.
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = writeln!(out, "{line}");
    }
    rig.recover_all()?;
    for e in rig.follower_errors() {
        report.failures.push(format!("route follower: {e}"));
    }
    let start = Instant::now();
    rig.teardown()?;
    let _ = writeln!(out, "torn down in {}", ms(start.elapsed()));
    Ok(report)
}
