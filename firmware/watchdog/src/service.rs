//! The `popd watchdog` loop: receive heartbeats, pet when the supervisor says so, answer
//! `STATUS` queries, notify systemd, and disarm on a clean stop.

use std::io::ErrorKind;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::WatchdogConfig;
use crate::device::{BootStatus, WatchdogDevice};
use crate::heartbeat::Heartbeat;
use crate::ioctl::LinuxWatchdog;
use crate::sd_notify::{Notifier, NotifyState, SystemdWatchdog};
use crate::signals::StopSignals;
use crate::supervisor::{Decision, ServiceStatus, Supervisor};
use crate::WatchdogError;

/// The datagram that asks for a status report (answered to the sender's bound address).
pub const STATUS_REQUEST: &[u8] = b"STATUS";

/// How long one receive waits, which bounds the reaction to a stop request and to a missed pet.
const RECV_SLICE: Duration = Duration::from_millis(50);

/// The status report, one JSON object.
#[derive(Debug, Serialize)]
pub struct WatchdogStatus {
    /// Raw boot status and its meaning.
    pub boot_status: BootStatus,
    /// Whether the last reset was a watchdog reset.
    pub last_reset_by_watchdog: bool,
    /// Timeout applied by the driver, in seconds.
    pub timeout_secs: u64,
    /// Whether the last decision was to pet.
    pub petting: bool,
    /// Pets performed.
    pub pets: u64,
    /// Datagrams dropped because they were malformed or from unknown services.
    pub rejected: u64,
    /// Per service.
    pub services: Vec<ServiceStatus>,
}

/// What a run did, for the caller's log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Pets performed.
    pub pets: u64,
    /// Whether the device was disarmed with the magic close.
    pub disarmed: bool,
}

/// Runs the service on the real device until SIGTERM/SIGINT.
pub fn run(cfg: WatchdogConfig) -> Result<RunSummary, WatchdogError> {
    let mut stop = StopSignals::install()?;
    let mut device = LinuxWatchdog::open(&cfg.device)?;
    run_with_device(&cfg, &mut device, &mut || stop.stop_requested())
}

/// Runs the loop on any device until `stop_requested` returns true.
pub fn run_with_device<D: WatchdogDevice>(
    cfg: &WatchdogConfig,
    device: &mut D,
    stop_requested: &mut dyn FnMut() -> bool,
) -> Result<RunSummary, WatchdogError> {
    // Neither failure may stop the petting: that would turn a driver quirk into a reboot loop.
    let boot_status = match device.boot_status() {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(error = %e, "boot status unavailable; reporting it as 0");
            BootStatus { flags: 0 }
        }
    };
    if boot_status.was_watchdog_reset() {
        tracing::warn!(
            flags = boot_status.flags,
            "last reset was a watchdog reset: a critical service hung before the previous boot"
        );
    } else {
        tracing::info!(
            flags = boot_status.flags,
            "last reset was not a watchdog reset"
        );
    }
    let wanted = Duration::from_secs(u64::from(cfg.timeout_secs));
    let applied = match device.set_timeout(wanted) {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "driver refused the timeout; its own default applies");
            wanted
        }
    };
    tracing::info!(timeout_secs = applied.as_secs(), device = %cfg.device.display(), "watchdog armed");

    let socket = bind_socket(cfg)?;
    let notifier = Notifier::from_env()?;
    let sd_watchdog = SystemdWatchdog::from_env();
    if let Some(n) = &notifier {
        n.notify(&[NotifyState::Ready, NotifyState::Status("supervising")])?;
    }

    let start = Instant::now();
    let mut supervisor = Supervisor::new(
        cfg.critical_services(),
        Duration::from_secs(cfg.startup_grace_secs),
        Duration::from_millis(cfg.pet_interval_ms),
        start,
    );
    let mut pets: u64 = 0;
    let mut rejected: u64 = 0;
    let mut petting = true;
    let mut last_sd_ping = start;
    let mut buf = [0u8; 512];

    while !stop_requested() {
        match socket.recv_from(&mut buf) {
            Ok((n, from)) => {
                let now = Instant::now();
                let datagram = buf.get(..n).unwrap_or_default();
                if datagram == STATUS_REQUEST {
                    let status = WatchdogStatus {
                        boot_status,
                        last_reset_by_watchdog: boot_status.was_watchdog_reset(),
                        timeout_secs: applied.as_secs(),
                        petting,
                        pets,
                        rejected,
                        services: supervisor.status(now),
                    };
                    let json = serde_json::to_string(&status).unwrap_or_default();
                    if let Err(e) = socket.send_to_addr(json.as_bytes(), &from) {
                        tracing::debug!(error = %e, "status reply not delivered (unbound sender?)");
                    }
                } else {
                    match Heartbeat::parse(datagram) {
                        Ok(hb) => {
                            if supervisor.on_heartbeat(&hb, now).is_err() {
                                rejected += 1;
                            }
                        }
                        Err(_) => rejected += 1,
                    }
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(WatchdogError::Socket {
                    path: cfg.socket.clone(),
                    source,
                })
            }
        }

        let now = Instant::now();
        match supervisor.poll(now) {
            Decision::Pet => {
                if !petting {
                    tracing::info!("all critical services healthy again: petting resumed");
                }
                petting = true;
                match device.keepalive() {
                    Ok(()) => pets += 1,
                    Err(e) => tracing::error!(error = %e, "keepalive failed"),
                }
            }
            Decision::Wait(_) => {}
            Decision::Withhold { stalled } => {
                if petting {
                    tracing::error!(
                        ?stalled,
                        timeout_secs = applied.as_secs(),
                        "critical service stopped making progress: watchdog no longer petted, board resets unless it recovers"
                    );
                }
                petting = false;
            }
        }

        // Our own loop turned: tell systemd (at half its timeout, as it asks).
        if let (Some(n), Some(wd)) = (&notifier, sd_watchdog) {
            if now.saturating_duration_since(last_sd_ping) >= wd.interval() {
                if let Err(e) = n.notify(&[NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "systemd watchdog notification failed");
                }
                last_sd_ping = now;
            }
        }
    }

    if let Some(n) = &notifier {
        // Best effort: systemd stops us either way.
        let _ = n.notify(&[NotifyState::Stopping]);
    }
    let _ = std::fs::remove_file(&cfg.socket);
    let disarmed = if cfg.nowayout {
        tracing::warn!("nowayout: leaving the watchdog armed; the board resets unless popd watchdog restarts in time");
        device.close_armed();
        false
    } else {
        device.magic_close()?;
        tracing::info!("clean stop: watchdog disarmed with the magic close");
        true
    };
    Ok(RunSummary { pets, disarmed })
}

fn bind_socket(cfg: &WatchdogConfig) -> Result<UnixDatagram, WatchdogError> {
    let err = |source| WatchdogError::Socket {
        path: cfg.socket.clone(),
        source,
    };
    // A stale socket file from a previous run would make bind fail with EADDRINUSE.
    match std::fs::remove_file(&cfg.socket) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let socket = UnixDatagram::bind(&cfg.socket).map_err(err)?;
    socket.set_read_timeout(Some(RECV_SLICE)).map_err(err)?;
    Ok(socket)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ServiceConfig;
    use crate::device::FakeWatchdog;
    use crate::heartbeat::HeartbeatSender;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    fn cfg(dir: &std::path::Path, nowayout: bool) -> WatchdogConfig {
        WatchdogConfig {
            device: "/nonexistent".into(),
            timeout_secs: 2,
            pet_interval_ms: 50,
            nowayout,
            socket: dir.join("wd.sock"),
            startup_grace_secs: 60,
            services: vec![ServiceConfig {
                name: "linkmon".into(),
                deadline_ms: 300,
            }],
        }
    }

    /// Runs the service in a thread with heartbeats for `beat_for`, then `silent_for` without,
    /// then asks for a status and stops it.
    fn scenario(
        nowayout: bool,
        boot_flags: u32,
    ) -> (RunSummary, FakeWatchdog, serde_json::Value, u64, u64) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path(), nowayout);
        let fake = FakeWatchdog::new(boot_flags);
        let stop = Arc::new(AtomicBool::new(false));
        let handle = {
            let (cfg, mut dev, stop) = (cfg.clone(), fake.clone(), stop.clone());
            std::thread::spawn(move || {
                run_with_device(&cfg, &mut dev, &mut || stop.load(Ordering::Relaxed))
            })
        };
        // Bounded wait for the socket.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cfg.socket.exists() {
            assert!(Instant::now() < deadline, "watchdog socket never appeared");
            std::thread::sleep(Duration::from_millis(5));
        }
        let sender = HeartbeatSender::new(&cfg.socket, "linkmon").unwrap();
        for _ in 0..20 {
            sender.beat(Some("all uplinks down")).unwrap();
            std::thread::sleep(Duration::from_millis(25));
        }
        let pets_while_healthy = fake.log().keepalives;
        // Stall: no heartbeat. Past the 300 ms deadline (with slack for a loaded host) ...
        std::thread::sleep(Duration::from_millis(600));
        let stalled_at = fake.log().keepalives;
        // ... not a single pet for the next 550 ms (11 pet intervals).
        std::thread::sleep(Duration::from_millis(550));
        let pets_while_stalled = fake.log().keepalives - stalled_at;

        let client_path = dir.path().join("client.sock");
        let client = UnixDatagram::bind(&client_path).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.send_to(STATUS_REQUEST, &cfg.socket).unwrap();
        let mut buf = [0u8; 4096];
        let n = client.recv(&mut buf).unwrap();
        let status: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();

        stop.store(true, Ordering::Relaxed);
        let summary = handle.join().unwrap().unwrap();
        (
            summary,
            fake,
            status,
            pets_while_healthy,
            pets_while_stalled,
        )
    }

    #[test]
    fn pets_while_healthy_withholds_on_stall_and_disarms_on_clean_stop() {
        let (summary, fake, status, healthy_pets, stalled_pets) = scenario(false, 0);
        // 500 ms of heartbeats at a 50 ms pet interval.
        assert!(healthy_pets >= 5, "only {healthy_pets} pets while healthy");
        assert_eq!(stalled_pets, 0, "petted while linkmon was silent");
        let log = fake.log();
        assert_eq!(log.timeout, Some(Duration::from_secs(2)));
        assert!(log.magic_closed && !log.closed_armed);
        assert!(summary.disarmed);
        assert_eq!(status["petting"], false);
        assert_eq!(status["last_reset_by_watchdog"], false);
        assert_eq!(status["services"][0]["healthy"], false);
        assert_eq!(status["services"][0]["detail"], "all uplinks down");
    }

    #[test]
    fn nowayout_leaves_the_device_armed_and_watchdog_reset_is_reported() {
        let (summary, fake, status, _, _) = scenario(true, BootStatus::CARD_RESET);
        let log = fake.log();
        assert!(!log.magic_closed && log.closed_armed);
        assert!(!summary.disarmed);
        assert_eq!(status["last_reset_by_watchdog"], true);
        assert_eq!(status["boot_status"]["flags"], BootStatus::CARD_RESET);
    }
}
