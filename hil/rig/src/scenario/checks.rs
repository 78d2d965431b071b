//! The checks besides the timed trials: no failover under random loss, and both uplinks down
//! then back without a crash, a switching loop or lost media afterwards.

use std::time::{Duration, Instant};

use pop_rig::{Fault, Uplink};
use serde::Serialize;

use super::error::Result;
use super::media::{Direction, StreamTotals};
use super::services::{ms, wait_until};
use super::trial::Trials;

/// `Fault::Loss` on the primary for a while.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LossCheck {
    /// Drop probability each way, percent.
    pub percent: u8,
    /// How long, seconds.
    pub seconds: u64,
    /// linkmon failovers during the loss (must be 0).
    pub failovers: usize,
    /// Core route changes during the loss (the rig's upstream, FRR 50 ms × 3).
    pub core_route_changes: usize,
    /// Media over the loss period, per direction.
    pub app_to_core: StreamTotals,
    /// Media over the loss period, per direction.
    pub core_to_app: StreamTotals,
    /// `failovers == 0`.
    pub pass: bool,
}

/// Both uplinks down, then back.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BothDownCheck {
    /// How long both were down, seconds.
    pub down_seconds: f64,
    /// linkmon switches while both were down (at most 1: to the backup before it too was seen
    /// down; more is a loop).
    pub switches_while_down: usize,
    /// linkmon switches from the recovery until stable on the primary (1 failback, or 0).
    pub switches_after: usize,
    /// Recovery in effect → first packet after the outage, the later direction, ms.
    pub media_resumed_ms: Option<f64>,
    /// Relay and linkmon still running afterwards.
    pub services_alive: bool,
    /// All of the above as required.
    pub pass: bool,
}

fn totals_diff(a: StreamTotals, b: StreamTotals) -> StreamTotals {
    StreamTotals {
        sent: b.sent.saturating_sub(a.sent),
        received: b.received.saturating_sub(a.received),
        duplicates: b.duplicates.saturating_sub(a.duplicates),
        foreign: b.foreign.saturating_sub(a.foreign),
        send_errors: b.send_errors.saturating_sub(a.send_errors),
    }
}

/// `percent` % random loss each way on the primary for `seconds`: counts linkmon's failovers.
pub fn loss_check(t: &mut Trials<'_>, percent: u8, seconds: u64) -> Result<LossCheck> {
    t.wait_stable(Duration::from_secs(30))?;
    let app_before = t.app_switches()?.len();
    let core_before = t.core_switches().len();
    let media_before = Direction::ALL.map(|d| t.media.totals(d));
    let fault = Fault::Loss {
        uplink: Uplink::One,
        percent,
    };
    t.rig.inject(fault)?;
    let t0 = Instant::now();
    let limit = Duration::from_secs(seconds);
    while t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(500).min(limit.saturating_sub(t0.elapsed())));
        t.services.check_alive()?;
    }
    let app = t.app_switches()?;
    let failovers = app.iter().skip(app_before).filter(|s| s.failover).count();
    let core_route_changes = t.core_switches().len().saturating_sub(core_before);
    let media_after = Direction::ALL.map(|d| t.media.totals(d));
    t.rig.recover(fault)?;
    let [a2c_before, c2a_before] = media_before;
    let [a2c_after, c2a_after] = media_after;
    Ok(LossCheck {
        percent,
        seconds,
        failovers,
        core_route_changes,
        app_to_core: totals_diff(a2c_before, a2c_after),
        core_to_app: totals_diff(c2a_before, c2a_after),
        pass: failovers == 0,
    })
}

/// Both uplinks down for `down`, then back.
pub fn both_down_check(t: &mut Trials<'_>, down: Duration) -> Result<BothDownCheck> {
    t.wait_stable(Duration::from_secs(30))?;
    let before = t.app_switches()?.len();
    let inj = t.rig.inject(Fault::BothUplinksDown)?;
    let t0 = Instant::now();
    while t0.elapsed() < down {
        std::thread::sleep(Duration::from_millis(100));
        t.services.check_alive()?;
    }
    let during = t.app_switches()?.len().saturating_sub(before);
    let rec = t.rig.recover(Fault::BothUplinksDown)?;
    let flowing = wait_until(t.hold_down + Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(20));
        t.stable_on_primary()
    });
    // When media came back: the first arrival after each direction's outage.
    let now = pop_rig::MonoTime::now();
    let resumed = if flowing {
        Direction::ALL
            .into_iter()
            .map(|d| {
                t.media
                    .gap(d, inj.effective, now)
                    .resumed_at
                    .map(|at| ms(rec.effective, at))
            })
            .try_fold(f64::MIN, |acc, r| r.map(|r| acc.max(r)))
    } else {
        None
    };
    let after = t
        .app_switches()?
        .len()
        .saturating_sub(before)
        .saturating_sub(during);
    let services_alive = t.services.check_alive().is_ok();
    Ok(BothDownCheck {
        down_seconds: down.as_secs_f64(),
        switches_while_down: during,
        switches_after: after,
        media_resumed_ms: resumed,
        services_alive,
        pass: services_alive && during <= 1 && after <= 1 && resumed.is_some(),
    })
}
