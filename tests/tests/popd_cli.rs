//! The start-up interface a harness relies on: `popd relay` refuses bad arguments and bad
//! configuration with a non-zero exit and a reason naming the field, reads its config file,
//! lets flags override it, and logs `relay ready` only once it answers NG.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use pop_system_tests::{binaries, ports, ChildGuard, NgClient, TestDir};

fn popd(args: &[&str]) -> std::process::Output {
    let exe = binaries::popd().unwrap_or_else(|e| panic!("{e:#}"));
    Command::new(exe).args(args).output().expect("popd runs")
}

fn refused(args: &[&str], reason_contains: &str) {
    let out = popd(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "popd {args:?} should fail, got {:?}; stderr: {stderr}",
        out.status
    );
    assert!(
        stderr.contains(reason_contains),
        "popd {args:?}: stderr should name `{reason_contains}`: {stderr}"
    );
}

#[test]
fn bad_arguments_exit_non_zero_with_the_reason() {
    refused(&["relay", "--io-backend", "dpdk"], "dataplane.backend");
    refused(&["relay", "--port-min", "80"], "media.port_min");
    refused(
        &["relay", "--port-min", "40000", "--port-max", "40001"],
        "media.port_max",
    );
    refused(&["relay", "--media-address", "0.0.0.0"], "media.address");
    refused(&["relay", "--workers", "0"], "dataplane.workers");
    refused(&["relay", "--ng-listen", "not-an-address"], "--ng-listen");
    refused(&["relay", "--no-such-flag"], "--no-such-flag");
}

#[test]
fn config_file_is_validated_and_flags_override_it() {
    let dir = TestDir::new("popd-cli-config").unwrap_or_else(|e| panic!("{e:#}"));
    let bad = dir.file("bad.toml");
    std::fs::write(&bad, "[media]\nport_mni = 30000\n").expect("write");
    refused(
        &["relay", "--config", bad.to_str().expect("utf-8")],
        "port_mni",
    );

    let good = dir.file("good.toml");
    let mut f = std::fs::File::create(&good).expect("create");
    writeln!(
        f,
        "[media]\nport_min = 31000\nport_max = 31999\n[dataplane]\nbackend = \"mmsg\""
    )
    .expect("write");
    let out = popd(&[
        "relay",
        "--config",
        good.to_str().expect("utf-8"),
        "--port-max",
        "31500",
        "--check-config",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("port_min: 31000"),
        "file value kept: {stdout}"
    );
    assert!(
        stdout.contains("port_max: 31500"),
        "flag overrides file: {stdout}"
    );
    assert!(stdout.contains("\"mmsg\""), "file value kept: {stdout}");
}

#[test]
fn ready_line_means_ng_answers_and_sigterm_stops_cleanly() {
    let dir = TestDir::new("popd-cli-ready").unwrap_or_else(|e| panic!("{e:#}"));
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ng_port = ports::free_udp_port(localhost).unwrap_or_else(|e| panic!("{e:#}"));
    let range = ports::free_udp_port_range(&[localhost], 64).unwrap_or_else(|e| panic!("{e:#}"));
    let exe = binaries::popd().unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(exe);
    cmd.args(["relay", "--ng-listen", &format!("127.0.0.1:{ng_port}")])
        .args(["--port-min", &range.start().to_string()])
        .args(["--port-max", &range.end().to_string()]);
    let mut relay = ChildGuard::spawn("popd", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));
    relay
        .wait_for_line("relay ready", Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let ng = NgClient::new(SocketAddr::new(localhost, ng_port)).expect("client");
    ng.ping()
        .unwrap_or_else(|e| panic!("NG must answer once ready: {e:#}"));
    let status = relay.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "SIGTERM is a clean stop: {status:?}");
}

#[test]
fn relay_notifies_systemd_and_beats_for_the_hardware_watchdog() {
    use std::os::unix::net::UnixDatagram;

    let dir = TestDir::new("popd-cli-supervision").unwrap_or_else(|e| panic!("{e:#}"));
    let notify = UnixDatagram::bind(dir.file("notify.sock")).expect("bind NOTIFY_SOCKET");
    let watchdog = UnixDatagram::bind(dir.file("watchdog.sock")).expect("bind watchdog socket");
    for s in [&notify, &watchdog] {
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
    }
    let config = dir.file("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[supervision]\nwatchdog_socket = \"{}\"\n",
            dir.file("watchdog.sock").display()
        ),
    )
    .expect("write config");
    let localhost = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let ng_port = ports::free_udp_port(localhost).unwrap_or_else(|e| panic!("{e:#}"));
    let range = ports::free_udp_port_range(&[localhost], 64).unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new(binaries::popd().unwrap_or_else(|e| panic!("{e:#}")));
    cmd.args(["relay", "--config", config.to_str().expect("utf-8")])
        .args(["--ng-listen", &format!("127.0.0.1:{ng_port}")])
        .args(["--port-min", &range.start().to_string()])
        .args(["--port-max", &range.end().to_string()])
        .env("NOTIFY_SOCKET", dir.file("notify.sock"))
        // 400 ms watchdog: WATCHDOG=1 every 200 ms.
        .env("WATCHDOG_USEC", "400000");
    let relay = ChildGuard::spawn("popd", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));

    let mut buf = [0u8; 512];
    let mut recv = |s: &UnixDatagram| -> String {
        let n = s
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no datagram within 5 s: {e}"));
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let first = recv(&notify);
    assert!(
        first.contains("READY=1"),
        "first notification is readiness: {first:?}"
    );
    let started = std::time::Instant::now();
    let mut watchdogs = 0;
    while watchdogs < 3 {
        if recv(&notify).contains("WATCHDOG=1") {
            watchdogs += 1;
        }
    }
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "3 WATCHDOG=1 at 200 ms intervals took {:?}",
        started.elapsed()
    );
    let beat = recv(&watchdog);
    assert!(
        beat.starts_with("POPD-HEARTBEAT/1 relay"),
        "heartbeat for popd watchdog: {beat:?}"
    );
    let status = relay.stop().unwrap_or_else(|e| panic!("{e:#}"));
    assert!(status.success(), "{status:?}");
    let mut stopping = false;
    notify
        .set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    while let Ok(n) = notify.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "a clean stop says STOPPING=1");
}

#[test]
fn shipped_image_configurations_validate() {
    let image = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../image/etc/popd");
    for service in ["relay", "linkmon", "watchdog", "agent"] {
        let file = image.join(format!("{service}.toml"));
        let out = popd(&[
            service,
            "--config",
            file.to_str().expect("utf-8"),
            "--check-config",
        ]);
        assert!(
            out.status.success(),
            "image/etc/popd/{service}.toml is refused: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
