//! The watchable failover: one call, a live line per second, carrier loss on the primary, the
//! failover event with its timestamps and the media gap, recovery, the failback after the
//! hold-down. Under a minute; `scripts/demo-failover` runs it.
//!
//! The control plane watches it all: `pop-cp` serves in the core, the appliance enrols with
//! `popctl enroll` and runs `popd agent`, which connects over mTLS through the active uplink.
//! The demo pushes a config and reads the new limit back from the relay, then shows the
//! failover and failback events the agent reported (and that its session survived them), and
//! at the end the call's record, with its parties pseudonymised, and the records stored by kind.

use std::path::Path;
use std::time::{Duration, Instant};

use pop_agent_proto::{ConfigOutcome, EventKind};
use pop_controlplane::admin::DeviceStatus;
use pop_rig::{BfdTimers, Fault, MonoTime, Rig, RigOptions, Uplink, Upstream};

use super::agent::{
    cdr_mentions, config_document, control_plane_addr, describe_switch, first_cdr, kinds, last_id,
    require_binaries, short_hex, switch_event, ControlPlaneSide, DEVICE_ID, SERVER_NAME,
};
use super::error::{BenchError, Result};
use super::media::{Direction, MediaRun, StreamTotals};
use super::services::{
    create_call, end_call_naming_parties, ms, wait_until, LinkmonTuning, Services,
};
use super::trial::{Monitor, Trials};

/// The relay session limit the demo's config push sets (the relay starts with its default).
const PUSHED_MAX_SESSIONS: u32 = 500;
/// The call's parties as the SIP proxy would name them in the NG `metadata`.
const CALLER: &str = "+15551230001";
/// See [`CALLER`].
const CALLEE: &str = "+15551230002";
/// How long the control plane may take to show something the agent reports.
const CP_LIMIT: Duration = Duration::from_secs(10);
/// How often the demo asks the control plane while waiting.
const CP_POLL_EVERY: Duration = Duration::from_millis(200);

/// Runs `each` every 20 ms and `poll` every [`CP_POLL_EVERY`] until `poll` returns a value or
/// `limit` passes.
fn poll_until<T>(
    limit: Duration,
    mut each: impl FnMut(),
    mut poll: impl FnMut() -> Option<T>,
) -> Option<T> {
    let t0 = Instant::now();
    let mut last_poll: Option<Instant> = None;
    loop {
        each();
        if last_poll.is_none_or(|p| p.elapsed() >= CP_POLL_EVERY) {
            last_poll = Some(Instant::now());
            if let Some(v) = poll() {
                return Some(v);
            }
        }
        if t0.elapsed() >= limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the agent's failover (`failover`) or failback event at the control plane and
/// prints it with whether the agent's session stayed up; `true` if both hold.
fn report_switch_event(
    cp: &mut ControlPlaneSide,
    failover: bool,
    after_id: u64,
    session: &DeviceStatus,
    mut each: impl FnMut(),
) -> bool {
    let what = if failover { "failover" } else { "failback" };
    let event: Option<EventKind> = poll_until(CP_LIMIT, &mut each, || {
        cp.records()
            .ok()
            .and_then(|r| switch_event(&r, failover, after_id).cloned())
    });
    let Some(event) = event else {
        println!(
            "control plane: NO {what} event from {DEVICE_ID} within {} s",
            CP_LIMIT.as_secs()
        );
        return false;
    };
    // Stayed up: still connected from the same peer address and port, with no new Hello since
    // the session started (a reconnect would also show `connected`, but from a new port and
    // with a new Hello). Connection counters would not do: the agent's health checks open TCP
    // connections to the control plane too.
    let now = cp.device().ok().flatten();
    let stayed = now.as_ref().is_some_and(|d| {
        d.connected && d.peer == session.peer && d.last_hello_unix_ms == session.last_hello_unix_ms
    });
    println!(
        "control plane: event from {DEVICE_ID}: {}; agent session {}",
        describe_switch(&event),
        if stayed {
            "stayed up (same mTLS connection)".to_owned()
        } else {
            format!(
                "DID NOT stay up (was {:?}, now {:?})",
                session.peer,
                now.map(|d| (d.connected, d.peer))
            )
        }
    );
    stayed
}

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
    require_binaries(popd)?;
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
    let plan = *rig.plan();
    let mut services = Services::start_with_control_socket(&rig, popd, Some(tuning))?;
    let relay_socket = services
        .relay_socket
        .clone()
        .ok_or_else(|| BenchError::Usage("the relay has no control socket".into()))?;
    let mut cp = ControlPlaneSide::start(&rig, popd, &relay_socket, &services.linkmon_socket)?;
    println!(
        "control plane: pop-cp serving agents on {} in the core (its own CA; server certificate \
         for {SERVER_NAME})",
        control_plane_addr(&plan)
    );
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
    let on_primary = Instant::now();

    // Enrolment needs the route to the core that linkmon installs: done once it is stable.
    let enrolled = cp.enroll_and_start_agent(&rig)?;
    let device = poll_until(
        Duration::from_secs(20),
        || ticker.tick(&t),
        || cp.device().ok().flatten().filter(|d| d.connected),
    );
    let Some(device) = device else {
        return Err(BenchError::Timeout {
            what: format!("{DEVICE_ID} connected to the control plane"),
            limit_ms: 20_000,
            logs: rig.run_dir().display().to_string(),
        });
    };
    // The server offers TLS 1.3 only and requires a client certificate from its CA
    // (controlplane/src/server.rs): a session at all means mTLS over TLS 1.3.
    println!(
        "control plane: {DEVICE_ID} enrolled and connected over mTLS (TLS 1.3) from {} — \
         certificate serial {} (popctl: {enrolled})",
        device.peer.as_deref().unwrap_or("?"),
        device.cert_serial.as_deref().unwrap_or("?"),
    );

    let document = config_document(1, PUSHED_MAX_SESSIONS, control_plane_addr(&plan));
    let sent = cp.push_config(1, &document)?;
    println!(
        "control plane: config v1 pushed{} (relay.max_sessions = {PUSHED_MAX_SESSIONS}); the agent \
         applies it and watches health for 3 s",
        if sent { "" } else { " (queued)" }
    );
    let result = poll_until(
        CP_LIMIT,
        || ticker.tick(&t),
        || cp.config_result(1).ok().flatten(),
    );
    let config_ok = match result {
        Some(r) if r.outcome == ConfigOutcome::Applied => {
            let status = t.services.relay_status()?;
            let limit = status["limits"]["max_sessions"].as_u64();
            if limit == Some(u64::from(PUSHED_MAX_SESSIONS)) {
                println!(
                    "control plane: config v1 applied; relay limit now {PUSHED_MAX_SESSIONS} \
                     (read back from the relay's control socket)"
                );
                true
            } else {
                println!(
                    "control plane: config v1 reported applied but the relay's limit is {limit:?}"
                );
                false
            }
        }
        Some(r) => {
            println!("control plane: config v1 NOT applied: {:?}", r.outcome);
            false
        }
        None => {
            println!(
                "control plane: NO result for config v1 within {} s",
                CP_LIMIT.as_secs()
            );
            false
        }
    };
    // Three seconds on the primary: the kernel reports a carrier change late right after other
    // link changes (building the rig), which is not what the demo is about.
    ticker.run_for(
        &t,
        Duration::from_secs(3).saturating_sub(on_primary.elapsed()),
    );

    let before_id = last_id(&cp.records()?);

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

    let failover_seen = report_switch_event(&mut cp, true, before_id, &device, || ticker.tick(&t));

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
    let failback_seen = report_switch_event(&mut cp, false, before_id, &device, || ticker.tick(&t));
    ticker.run_for(&t, Duration::from_secs(2));
    let flowing = Direction::ALL
        .into_iter()
        .all(|d| t.media.flowing(d, 5, Duration::from_millis(100)));
    t.services.check_alive()?;
    cp.check_alive()?;

    let before_cdr = last_id(&cp.records()?);
    end_call_naming_parties(&rig, CALLER, CALLEE)?;
    println!(
        "call deleted over NG (its two parties named in the NG metadata, as a SIP proxy does; \
         numbers are never printed)"
    );
    let cdr = poll_until(
        CP_LIMIT,
        || {},
        || {
            cp.records()
                .ok()
                .and_then(|r| first_cdr(&r, before_cdr).cloned())
        },
    );
    let cdr_ok = match cdr {
        Some(c) => {
            let hidden = [CALLER, CALLEE]
                .iter()
                .all(|n| !cdr_mentions(&c, n) && !cdr_mentions(&c, n.trim_start_matches('+')));
            let named = c.caller.is_some() && c.callee.is_some();
            println!(
                "control plane: CDR arrived: {} packets, ended {:?}, caller {}…, callee {}… — {}",
                c.packets,
                c.end_reason,
                c.caller.as_ref().map_or("none".into(), short_hex),
                c.callee.as_ref().map_or("none".into(), short_hex),
                if named && hidden {
                    "parties pseudonymised (keyed hashes; neither number appears in the record)"
                } else if named {
                    "A NUMBER APPEARS IN THE RECORD"
                } else {
                    "PARTIES MISSING"
                }
            );
            named && hidden && c.end_reason == "deleted"
        }
        None => {
            println!(
                "control plane: NO CDR within {} s of the delete",
                CP_LIMIT.as_secs()
            );
            false
        }
    };
    let k = kinds(&cp.records()?);
    println!(
        "control plane stored for {DEVICE_ID}: {} telemetry, {} events, {} CDRs, {} audit records",
        k.telemetry, k.events, k.cdrs, k.audit
    );
    drop(media);
    drop(services);
    drop(cp);
    let t_down = Instant::now();
    rig.teardown()?;
    println!("rig torn down in {} ms", t_down.elapsed().as_millis());
    let ok = failover.is_some()
        && resumed
        && failback.is_some()
        && flowing
        && config_ok
        && failover_seen
        && failback_seen
        && cdr_ok;
    println!(
        "{}",
        if ok {
            "demo OK: media resumed after the failover and after the failback; the control plane \
             applied the config and received both events and the CDR"
        } else {
            "demo FAILED: see above"
        }
    );
    Ok(ok)
}
