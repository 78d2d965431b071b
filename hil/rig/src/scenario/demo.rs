//! The watchable failover: one call, a live line per second, carrier loss on the primary, the
//! failover event with its timestamps and the media gap, recovery, the failback after the
//! hold-down. Under a minute; `scripts/demo-failover` runs it.

use std::path::Path;
use std::time::{Duration, Instant};

use pop_rig::{BfdTimers, Fault, MonoTime, Rig, RigOptions, Uplink, Upstream};

use super::error::{BenchError, Result};
use super::media::{Direction, MediaRun, StreamTotals};
use super::services::{create_call, ms, wait_until, LinkmonTuning, Services};
use super::trial::{Monitor, Trials};

struct Ticker {
    start: Instant,
    last: Instant,
    prev: [StreamTotals; 2],
}

impl Ticker {
    /// Prints the live line when a second has passed since the last one.
    fn tick(&mut self, t: &Trials<'_>) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let now = Direction::ALL.map(|d| t.media.totals(d));
        let rate = |i: usize| {
            now.get(i)
                .zip(self.prev.get(i))
                .map_or(0, |(n, p)| n.received.saturating_sub(p.received))
        };
        let active = t
            .services
            .linkmon_status()
            .ok()
            .and_then(|s| s["active"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        let core = t
            .core_switches()
            .last()
            .map_or("car1".to_owned(), |s| s.to.clone());
        println!(
            "  t={:5.1}s  app→core {:3} pkt/s  core→app {:3} pkt/s  appliance on {:<8} core via {}",
            self.start.elapsed().as_secs_f64(),
            rate(0),
            rate(1),
            active,
            core
        );
        self.prev = now;
    }

    /// Prints live lines for `d`.
    fn run_for(&mut self, t: &Trials<'_>, d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            self.tick(t);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Runs the demo; `Ok(true)` if media resumed both ways after the failover and the failback.
pub fn run_demo(popd: &Path) -> Result<bool> {
    let t_build = Instant::now();
    let rig = Rig::build(RigOptions {
        upstream: Upstream::FrrBfd(BfdTimers::FAST_50X3),
        // popd linkmon installs its own per-uplink source routing.
        uplink_policy_tables: false,
        ..RigOptions::default()
    })?;
    println!(
        "rig {} built in {} ms: appliance with uplinks up1 (primary) and up2 (backup), two carriers \
         running FRR bfdd at 50 ms × 3, core",
        rig.run_id(),
        t_build.elapsed().as_millis()
    );
    let tuning = LinkmonTuning::BENCH;
    let mut services = Services::start(&rig, popd, Some(tuning))?;
    let call = create_call(&rig)?;
    println!(
        "call up over NG: core peer → relay {} ; local endpoint → relay {}; 50 packets/s each way",
        call.core_sends_to, call.local_sends_to
    );
    let media = MediaRun::start(call)?;
    let hold_down = Duration::from_millis(tuning.hold_down_ms);
    let t = Trials {
        rig: &rig,
        services: &mut services,
        media: &media,
        monitor: Monitor::Linkmon,
        hold_down,
    };
    let mut ticker = Ticker {
        start: Instant::now(),
        last: Instant::now(),
        prev: Default::default(),
    };
    println!("waiting for BFD up on both uplinks and media both ways ...");
    let stable = wait_until(Duration::from_secs(30), || {
        ticker.tick(&t);
        std::thread::sleep(Duration::from_millis(20));
        t.stable_on_primary()
    });
    if !stable {
        return Err(BenchError::Timeout {
            what: "BFD up on both uplinks, media flowing".into(),
            limit_ms: 30_000,
            logs: rig.run_dir().display().to_string(),
        });
    }
    // Three seconds on the primary: the kernel reports a carrier change late right after other
    // link changes (building the rig), which is not what the demo is about.
    ticker.run_for(&t, Duration::from_secs(3));

    let fault = Fault::CarrierLoss(Uplink::One);
    let before = t.app_switches()?.len();
    let core_before = t.core_switches().len();
    let inj = rig.inject(fault)?;
    println!(">>> carrier loss on up1 (the carrier's port goes down)");
    let mut failover = None;
    let mut core = None;
    wait_until(Duration::from_secs(3), || {
        ticker.tick(&t);
        std::thread::sleep(Duration::from_millis(10));
        if failover.is_none() {
            failover = t
                .app_switches()
                .ok()
                .and_then(|s| s.into_iter().skip(before).find(|s| s.failover));
        }
        if core.is_none() {
            core = t.core_switches().into_iter().nth(core_before);
        }
        failover.is_some() && core.is_some()
    });
    // Times are from the moment the injecting command returned; an event the kernel delivered
    // before that shows as negative.
    match &failover {
        Some(s) => println!(
            ">>> failover primary → {} ({}): fault seen {}, decided {:+.1} ms, route switched \
             {:+.1} ms after the fault took effect",
            s.to,
            s.reason,
            s.fault_seen
                .map_or("-".into(), |f| format!("{:+.1} ms", ms(inj.effective, f))),
            ms(inj.effective, s.decided),
            ms(inj.effective, s.switched),
        ),
        None => println!(">>> NO failover within 3 s"),
    }
    match &core {
        Some(c) => println!(
            ">>> upstream: core's route to the service address moved to {} {:+.1} ms after the fault \
             (FRR bfdd 50 ms × 3 in the carriers)",
            c.to,
            ms(inj.effective, c.switched)
        ),
        None => println!(">>> upstream: core's route did not move within 3 s"),
    }
    ticker.run_for(&t, Duration::from_secs(2));
    let end = MonoTime::from_nanos(MonoTime::now().as_nanos().saturating_sub(150_000_000));
    let start = MonoTime::from_nanos(inj.effective.as_nanos().saturating_sub(200_000_000));
    let mut resumed = true;
    for d in Direction::ALL {
        let g = t.media.gap(d, start, end);
        resumed &= g.resumed_at.is_some() || g.lost == 0;
        println!(
            ">>> media gap {}: {:.0} ms ({} packets lost, {})",
            d.label(),
            g.gap_ms,
            g.lost,
            match (g.lost, g.resumed_at) {
                (0, _) => "nothing lost".to_owned(),
                (_, Some(r)) => format!(
                    "flowing again {:+.0} ms after the fault",
                    ms(inj.effective, r)
                ),
                (_, None) => "DID NOT RESUME".to_owned(),
            }
        );
    }

    let rec = rig.recover(fault)?;
    println!(
        ">>> up1 carrier restored; linkmon waits for the {} ms hold-down before failing back",
        tuning.hold_down_ms
    );
    let mut failback = None;
    wait_until(hold_down + Duration::from_secs(15), || {
        ticker.tick(&t);
        std::thread::sleep(Duration::from_millis(10));
        failback = t
            .app_switches()
            .ok()
            .and_then(|s| s.into_iter().skip(before).find(|s| !s.failover));
        failback.is_some()
    });
    match &failback {
        Some(s) => println!(
            ">>> failback → {} {:.0} ms after the recovery (hold-down {} ms)",
            s.to,
            ms(rec.effective, s.switched),
            tuning.hold_down_ms
        ),
        None => println!(">>> NO failback"),
    }
    ticker.run_for(&t, Duration::from_secs(2));
    let flowing = Direction::ALL
        .into_iter()
        .all(|d| t.media.flowing(d, 5, Duration::from_millis(100)));
    t.services.check_alive()?;
    drop(media);
    drop(services);
    let t_down = Instant::now();
    rig.teardown()?;
    println!("rig torn down in {} ms", t_down.elapsed().as_millis());
    let ok = failover.is_some() && resumed && failback.is_some() && flowing;
    println!(
        "{}",
        if ok {
            "demo OK: media resumed after the failover and after the failback"
        } else {
            "demo FAILED: see above"
        }
    );
    Ok(ok)
}
