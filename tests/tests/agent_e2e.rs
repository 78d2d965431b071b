//! The agent end to end, each part a real process over real TLS on loopback: `pop-cp` (the
//! reference control plane), `popd relay` with its control socket, `popctl enroll` and
//! `popd agent`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use pop_agent_proto::{Command, CommandOutcome, ConfigOutcome, EventKind, RecordBody};
use pop_system_tests::agent_bed::{config_document, kinds, Appliance, ControlPlane, LoopbackBed};
use serde_json::json;

fn relay_status(app: &Appliance) -> serde_json::Value {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(&app.relay_socket).expect("relay socket");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    writeln!(s, "{}", json!({"op": "status"})).expect("write");
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).expect("read");
    serde_json::from_str(&line).expect("json")
}

fn wait_config_result(cp: &ControlPlane, device: &str, version: u64) -> ConfigOutcome {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let results = cp
            .admin()
            .expect("admin")
            .config_results(device)
            .expect("results");
        if let Some(r) = results.results.iter().find(|r| r.result.version == version) {
            return r.result.outcome.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no result for config version {version}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) for the result of command `id` and returns its outcome.
fn wait_command_result(
    admin: &mut pop_controlplane::admin::AdminClient,
    device: &str,
    id: u64,
) -> CommandOutcome {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let results = admin.command_results(device).expect("results");
        if let Some(r) = results.results.iter().find(|r| r.id == id) {
            return r.outcome.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no result for command {id}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn bed(name: &str, device: &str) -> LoopbackBed {
    LoopbackBed::new(name, device).unwrap_or_else(|e| panic!("{e:#}"))
}

fn enrolled(name: &str, device: &str) -> LoopbackBed {
    LoopbackBed::enrolled(name, device).unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn enroll_connect_push_applies_to_the_relay_and_telemetry_and_events_arrive() {
    let b = bed("agent-e2e-push", "pop-e2e-01");
    let device = b.app.device.clone();

    // An expired token is refused, nothing is stored; then a good one enrolls.
    let expired = b.cp.token(&device, true).expect("token");
    let out = b.app.enroll(&expired).expect("popctl runs");
    assert!(!out.status.success(), "an expired token must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = b.cp.token(&device, false).expect("token");
    let out = b.app.enroll(&token).expect("popctl runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same token again is refused.
    let out = b.app.enroll(&token).expect("popctl runs");
    assert!(!out.status.success(), "a reused token must be refused");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already used"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut agent = b.app.start_agent(&b.test, "agent").expect("agent starts");
    let mut admin = b.cp.admin().expect("admin");
    assert!(
        admin
            .wait_connected(&device, Duration::from_secs(20))
            .expect("wait"),
        "agent never connected:\n{}",
        agent.log()
    );

    // Push: the relay's limits change, and the result, an event, telemetry with the new
    // version and audit records arrive.
    assert_eq!(relay_status(&b.app)["limits"]["max_sessions"], 4000);
    admin
        .push_config(&device, 1, &config_document(1, 7, b.cp.listen))
        .expect("push");
    assert_eq!(
        wait_config_result(&b.cp, &device, 1),
        ConfigOutcome::Applied
    );
    assert_eq!(
        relay_status(&b.app)["limits"]["max_sessions"],
        7,
        "the relay applied its part"
    );
    let records = b
        .cp
        .wait_records(&device, Duration::from_secs(20), "telemetry at version 1 and the events", |rs| {
            let telemetry = rs.iter().any(|r| matches!(&r.body, RecordBody::Telemetry(t) if t.config_version == 1 && t.relay.is_some()));
            let applied = rs.iter().any(|r| matches!(&r.body, RecordBody::Event(e) if e.kind == EventKind::ConfigApplied { version: 1 }));
            let audits = rs.iter().filter(|r| matches!(&r.body, RecordBody::Audit(a) if a.action == "config-push" || a.action == "enroll")).count();
            telemetry && applied && audits >= 2
        })
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    assert!(records.iter().any(|r| matches!(&r.body, RecordBody::Event(e) if matches!(e.kind, EventKind::AgentStarted { .. }))));

    // An invalid push is refused naming the field; the old config keeps running.
    admin
        .push_config(&device, 2, &config_document(2, 0, b.cp.listen))
        .expect("push");
    match wait_config_result(&b.cp, &device, 2) {
        ConfigOutcome::Refused { field, .. } => assert_eq!(field, "relay.max_sessions"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(
        relay_status(&b.app)["limits"]["max_sessions"],
        7,
        "old config still running"
    );

    // A replay of version 1 is refused as well.
    admin
        .push_config(&device, 3, &config_document(1, 9, b.cp.listen))
        .expect("push");
    assert!(
        matches!(wait_config_result(&b.cp, &device, 3), ConfigOutcome::Refused { field, .. } if field == "version")
    );

    // A call's CDR arrives with the parties pseudonymised; erasing the subject is confirmed.
    b.app
        .call("e2e-call-1", "+15550001111", "+15550002222")
        .expect("call");
    let records =
        b.cp.wait_records(&device, Duration::from_secs(20), "the CDR", |rs| {
            kinds(rs).cdrs == 1
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    let cdr = records
        .iter()
        .find_map(|r| match &r.body {
            RecordBody::Cdr(c) => Some(c.clone()),
            _ => None,
        })
        .expect("cdr");
    assert!(cdr.caller.is_some() && cdr.callee.is_some() && cdr.caller != cdr.callee);
    let shown = format!("{records:?}");
    assert!(
        !shown.contains("15550001111") && !shown.contains("e2e-call-1"),
        "no number or call-id leaves the box"
    );
    let reply = admin
        .command(
            &device,
            Command::EraseSubject {
                number: "+15550001111".into(),
            },
        )
        .expect("command");
    let outcome = wait_command_result(&mut admin, &device, reply.id);
    assert!(
        matches!(outcome, CommandOutcome::Erased { .. }),
        "{outcome:?}"
    );
    let log = std::fs::read_to_string(agent.log_path()).expect("agent log");
    assert!(
        !log.contains("15550001111"),
        "the number never reaches the log"
    );

    // Diagnostics are redacted.
    let reply = admin
        .command(&device, Command::Diagnostics)
        .expect("command");
    let bundle = match wait_command_result(&mut admin, &device, reply.id) {
        CommandOutcome::Diagnostics { bundle } => bundle,
        other => panic!("{other:?}"),
    };
    assert!(
        bundle.contains("max_sessions = 7") && bundle.contains("relay status"),
        "{bundle}"
    );
    agent.ensure_running().expect("agent alive");
}

#[test]
fn control_plane_down_then_back_every_record_arrives_exactly_once() {
    let b = enrolled("agent-e2e-outage", "pop-e2e-02");
    let device = b.app.device.clone();
    let agent = b.app.start_agent(&b.test, "agent").expect("agent starts");
    let mut admin = b.cp.admin().expect("admin");
    assert!(admin
        .wait_connected(&device, Duration::from_secs(20))
        .expect("wait"));
    b.app
        .call("outage-0", "+15550000000", "+15550009999")
        .expect("call");
    let LoopbackBed { test, cp, app } = b;
    let listen: SocketAddr = cp.listen;
    let cp_dir = cp.dir.clone();
    cp.child.kill().expect("control plane killed");

    // While it is away: calls end (CDRs), and the agent restarts (events, audit).
    for n in 1..=5 {
        app.call(
            &format!("outage-{n}"),
            "+15550000000",
            &format!("+1555000000{n}"),
        )
        .expect("call");
    }
    std::thread::sleep(Duration::from_millis(800));
    agent.kill().expect("agent killed");
    let _agent = app.start_agent(&test, "agent-2").expect("agent restarts");
    std::thread::sleep(Duration::from_secs(2));
    app.call("outage-6", "+15550000000", "+15550000006")
        .expect("call");

    let cp = ControlPlane::start(&test, &cp_dir, listen, "cp-2").expect("control plane back");
    let records = cp
        .wait_records(&device, Duration::from_secs(30), "all 7 CDRs", |rs| {
            kinds(rs).cdrs >= 7
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    std::thread::sleep(Duration::from_secs(2));
    let records = cp.records(&device).unwrap_or(records);
    let k = kinds(&records);
    assert_eq!(k.cdrs, 7, "exactly one CDR per call: {k:?}");
    let ids: HashSet<u64> = records.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), records.len(), "no record id stored twice");
    let calls: HashSet<[u8; 16]> = records
        .iter()
        .filter_map(|r| match &r.body {
            RecordBody::Cdr(c) => Some(c.call),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 7, "seven distinct calls");
    let started = records
        .iter()
        .filter(|r| matches!(&r.body, RecordBody::Event(e) if matches!(e.kind, EventKind::AgentStarted { .. })))
        .count();
    assert_eq!(started, 2, "both agent starts reported once each");
    let enroll_audits = records
        .iter()
        .filter(|r| matches!(&r.body, RecordBody::Audit(a) if a.action == "enroll"))
        .count();
    assert_eq!(enroll_audits, 1, "the enrollment audited exactly once");
}

#[test]
fn rotate_certificate_moves_to_a_new_key_and_reconnects_with_it() {
    let b = enrolled("agent-e2e-rotate", "pop-e2e-03");
    let device = b.app.device.clone();
    let agent = b.app.start_agent(&b.test, "agent").expect("agent starts");
    let mut admin = b.cp.admin().expect("admin");
    assert!(admin
        .wait_connected(&device, Duration::from_secs(20))
        .expect("wait"));
    let serial_of = |admin: &mut pop_controlplane::admin::AdminClient| {
        admin
            .devices()
            .expect("devices")
            .devices
            .into_iter()
            .find(|d| d.device == device && d.connected)
            .and_then(|d| d.cert_serial)
    };
    let before = serial_of(&mut admin).expect("serial of the enrolled certificate");
    let pem_before = std::fs::read(b.app.state_dir.join("device.pem")).expect("device.pem");

    let reply = admin
        .command(&device, Command::RotateCertificate)
        .expect("command");
    let outcome = wait_command_result(&mut admin, &device, reply.id);
    assert!(
        matches!(outcome, CommandOutcome::Rotated { .. }),
        "{outcome:?}"
    );
    // The agent reconnects at once, presenting the new certificate.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let after = loop {
        if let Some(s) = serial_of(&mut admin).filter(|s| *s != before) {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reconnected with a new certificate:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_ne!(after, before);
    assert_ne!(
        std::fs::read(b.app.state_dir.join("device.pem")).expect("pem"),
        pem_before
    );
    assert_eq!(
        std::fs::read_to_string(b.app.state_dir.join("device-key.label"))
            .expect("label")
            .trim(),
        "device-identity-2",
        "a new key in the keystore"
    );
    b.cp
        .wait_records(&device, Duration::from_secs(20), "the renewal event and audit", |rs| {
            rs.iter().any(|r| matches!(&r.body, RecordBody::Event(e) if matches!(e.kind, EventKind::CertificateRenewed { .. })))
                && rs.iter().any(|r| matches!(&r.body, RecordBody::Audit(a) if a.action == "certificate-renewed"))
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
}
