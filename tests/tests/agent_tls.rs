//! Certificates refused in both directions, with the real agent and the real control plane:
//! the agent refuses a control plane whose certificate comes from another CA, has expired or
//! has been revoked; the control plane refuses a revoked device. (The control plane's refusal
//! of expired and foreign-CA client certificates is tested against `pop-cp` in
//! `controlplane/tests/cp.rs` with a software-key client, since the agent's key cannot be
//! given another CA's or an expired certificate without the control plane issuing it.)

use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pop_system_tests::agent_bed::{
    init_control_plane, Appliance, ApplianceOptions, ControlPlane, LoopbackBed,
};
use pop_system_tests::{binaries, TestDir};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn server_serial(cp_dir: &std::path::Path) -> String {
    let pem = std::fs::read(cp_dir.join("server.pem")).expect("server.pem");
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    let cert = p.parse_x509().expect("certificate");
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_agent_refuses_a_foreign_an_expired_and_a_revoked_server_certificate() {
    let test = TestDir::new("agent-tls-server").unwrap_or_else(|e| panic!("{e:#}"));
    let cp_dir = init_control_plane(&test, "cp", &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let other_dir = init_control_plane(&test, "other", &[]).unwrap_or_else(|e| panic!("{e:#}"));
    let cp = ControlPlane::start(&test, &cp_dir, "127.0.0.1:0".parse().expect("addr"), "cp")
        .unwrap_or_else(|e| panic!("{e:#}"));

    // Pinned CA of another control plane: the handshake fails, and the token is not spent.
    let mut opts = ApplianceOptions {
        ca_file: other_dir.join("ca.pem"),
        control_plane: cp.listen,
        health_window_ms: 2500,
        apply_firewall: false,
    };
    let app = Appliance::start(&test, "pop-tls-01", &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let token = cp.token(&app.device, false).expect("token");
    let out = app.enroll(&token).expect("popctl");
    assert!(!out.status.success(), "a foreign CA must be refused");
    assert!(
        stderr(&out).contains("invalid peer certificate"),
        "{}",
        stderr(&out)
    );

    // Expired server certificate (same CA as pinned): refused too.
    let expired_dir = init_control_plane(
        &test,
        "expired",
        &[
            "--server-not-before-unix",
            &(now() - 7200).to_string(),
            "--server-not-after-unix",
            &(now() - 3600).to_string(),
        ],
    )
    .expect("init");
    let expired = ControlPlane::start(
        &test,
        &expired_dir,
        "127.0.0.1:0".parse().expect("addr"),
        "cp-expired",
    )
    .expect("serve");
    opts.ca_file = expired_dir.join("ca.pem");
    opts.control_plane = expired.listen;
    pop_system_tests::agent_bed::write_settings(
        &app.settings,
        &app.device,
        &opts,
        &app.state_dir,
        &test.file("keys"),
        Some(&app.relay_socket),
    )
    .expect("settings");
    let t = expired.token(&app.device, false).expect("token");
    let out = app.enroll(&t).expect("popctl");
    assert!(
        !out.status.success(),
        "an expired server certificate must be refused"
    );
    assert!(stderr(&out).contains("xpired"), "{}", stderr(&out));

    // The right CA: the same first token still works (it was never presented).
    opts.ca_file = cp_dir.join("ca.pem");
    opts.control_plane = cp.listen;
    pop_system_tests::agent_bed::write_settings(
        &app.settings,
        &app.device,
        &opts,
        &app.state_dir,
        &test.file("keys"),
        Some(&app.relay_socket),
    )
    .expect("settings");
    let out = app.enroll(&token).expect("popctl");
    assert!(out.status.success(), "{}", stderr(&out));
    let agent = app.start_agent(&test, "agent").expect("agent");
    let mut admin = cp.admin().expect("admin");
    assert!(
        admin
            .wait_connected(&app.device, Duration::from_secs(20))
            .expect("wait"),
        "{}",
        agent.log()
    );

    // Revoke the server's own certificate: the agent holds the CRL the control plane pushed
    // and, once the connection drops, refuses the revoked server from then on.
    let serial = server_serial(&cp_dir);
    let out = Command::new(binaries::pop_cp().expect("pop-cp"))
        .args(["revoke", "--serial", &serial, "--dir"])
        .arg(&cp_dir)
        .output()
        .expect("pop-cp revoke");
    assert!(out.status.success(), "{}", stderr(&out));
    let crl_path = app.state_dir.join("crl.der");
    let before = std::fs::read(&crl_path).expect("crl stored at enrollment");
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::fs::read(&crl_path).expect("crl") == before {
        assert!(
            Instant::now() < deadline,
            "the new CRL never reached the agent:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let listen = cp.listen;
    cp.child.kill().expect("kill cp");
    let cp = ControlPlane::start(&test, &cp_dir, listen, "cp-2").expect("restart");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !agent.log().contains("invalid peer certificate: Revoked") {
        assert!(
            Instant::now() < deadline,
            "the agent did not refuse the revoked server:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let devices = cp.admin().expect("admin").devices().expect("devices");
    assert!(devices.devices.iter().all(|d| !d.connected), "{devices:?}");
}

#[test]
fn the_control_plane_refuses_a_revoked_device_and_drops_its_session() {
    let LoopbackBed { test, cp, app } =
        LoopbackBed::enrolled("agent-tls-client", "pop-tls-02").unwrap_or_else(|e| panic!("{e:#}"));
    let agent = app.start_agent(&test, "agent").expect("agent");
    let mut admin = cp.admin().expect("admin");
    assert!(admin
        .wait_connected(&app.device, Duration::from_secs(20))
        .expect("wait"));

    let revoked = admin.revoke(&app.device).expect("revoke");
    assert!(!revoked.revoked.is_empty());
    // Dropped now, and refused at every reconnect.
    std::thread::sleep(Duration::from_secs(4));
    let devices = admin.devices().expect("devices");
    assert!(
        devices.devices.iter().all(|d| !d.connected),
        "a revoked device must not stay connected: {devices:?}"
    );
    let log = agent.log();
    assert!(log.contains("reconnecting"), "{log}");
    assert!(
        log.contains("CertificateRevoked") || log.contains("revoked"),
        "{log}"
    );
}
