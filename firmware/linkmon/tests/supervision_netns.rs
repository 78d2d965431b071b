//! `popd linkmon` proves its loop's progress: `READY=1` once running, `WATCHDOG=1` at half of
//! `WATCHDOG_USEC`, heartbeats to `popd watchdog` — and keeps doing so with every uplink down
//! (uplink loss must never look like a hang). Own test binary: it sets process environment.
#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{status, wait_for, Netns, Running};
use pop_linkmon::LinkmonConfig;
use pop_watchdog::Heartbeat;

#[test]
fn notifies_systemd_and_heartbeats_while_all_uplinks_are_down() {
    let ns = Netns::new("sup");
    let carrier = Netns::new("supc");
    carrier.shift_ifindexes();
    ns.veth_to("up0", "192.0.2.2/24", &carrier, "gw0", "192.0.2.1/24");
    // The only uplink is down from the start.
    carrier.ip(&["link", "set", "gw0", "down"]);

    let dir = tempfile::tempdir().unwrap();
    let notify = UnixDatagram::bind(dir.path().join("notify")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let wd = UnixDatagram::bind(dir.path().join("wd.sock")).unwrap();
    wd.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    // Edition 2021: set_var is safe; this binary holds a single test, so nothing races on env.
    std::env::set_var("NOTIFY_SOCKET", dir.path().join("notify"));
    std::env::set_var("WATCHDOG_USEC", "200000");
    std::env::set_var("WATCHDOG_PID", std::process::id().to_string());

    let sock = dir.path().join("linkmon.sock");
    let text = format!(
        r#"
socket = "{}"
watchdog_socket = "{}"
[selector]
startup_grace_ms = 300
[[uplink]]
name = "primary"
interface = "up0"
address = "192.0.2.2"
gateway = "192.0.2.1"
"#,
        sock.display(),
        dir.path().join("wd.sock").display()
    );
    let running = Running::start(
        &ns,
        LinkmonConfig::from_toml(&text, Path::new("t")).unwrap(),
    );

    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).ok();
    let first = n.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned());
    let first = match first {
        Some(f) => f,
        None => {
            // Give start-up a little longer before failing.
            let n = (0..30)
                .find_map(|_| notify.recv(&mut buf).ok())
                .expect("no notification at all");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        }
    };
    assert!(
        first.starts_with("READY=1\n"),
        "first notification: {first:?}"
    );

    wait_for("all uplinks down", Duration::from_secs(3), || {
        status(&sock)["all_down"] == true
    });

    // Over 1.5 s with every uplink down: WATCHDOG=1 every ~100 ms, heartbeats every ~1 s.
    let t0 = Instant::now();
    let mut pings = 0;
    let mut beats = Vec::new();
    while t0.elapsed() < Duration::from_millis(1500) {
        if let Ok(n) = notify.recv(&mut buf) {
            if &buf[..n] == b"WATCHDOG=1\n" {
                pings += 1;
            }
        }
        while let Ok(n) = {
            wd.set_nonblocking(true).unwrap();
            wd.recv(&mut buf)
        } {
            let hb = Heartbeat::parse(&buf[..n]).expect("well-formed heartbeat");
            assert_eq!(hb.service, "linkmon");
            beats.push(hb.detail.map(str::to_owned));
        }
    }
    assert!(
        pings >= 10,
        "only {pings} WATCHDOG=1 in 1.5 s at WATCHDOG_USEC=200ms"
    );
    assert!(!beats.is_empty(), "no heartbeat to popd watchdog");
    assert!(
        beats
            .iter()
            .all(|d| d.as_deref() == Some("all uplinks down")),
        "{beats:?}"
    );

    running.finish();
    let mut tail = Vec::new();
    while let Ok(n) = notify.recv(&mut buf) {
        tail.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(tail.iter().any(|m| m == "STOPPING=1\n"), "{tail:?}");
}
