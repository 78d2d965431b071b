//! The agent applying the firewall for real, inside network namespaces: the appliance (`popd
//! relay`, `popctl enroll`, `popd agent`) in one, the reference control plane (`pop-cp`) in
//! another, joined by a veth pair. A pushed ruleset is checked by scanning the appliance from
//! outside, then a push that cuts the agent off its control plane must be rolled back by the
//! agent on its own (its health probe is a fresh TCP connection to the control plane).
//!
//! Needs root, `ip` and `nft`; fails loudly without them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use pop_agent_proto::{ConfigOutcome, EventKind, Record, RecordBody};
use pop_controlplane::admin::AdminClient;
use pop_system_tests::agent_bed::ApplianceOptions;
use pop_system_tests::netns_bed::{
    init_control_plane, require_root_and_tools, scan, veth_pair, Listeners, Netns, NsAppliance,
    NsControlPlane,
};
use pop_system_tests::TestDir;

const CP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const APP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
/// Nobody has this address: a control-plane entry naming it lets the agent reach nothing.
const WRONG_CP_ADDR: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 99);
const DEVICE: &str = "pop-netns-01";

/// Listeners inside the appliance: SSH, SIP, NG, one port inside the RTP range (30000-39999 by
/// default), and two the ruleset must keep closed.
const TCP_LISTEN: [u16; 4] = [22, 5060, 2223, 8080];
const UDP_LISTEN: [u16; 4] = [5060, 2223, 30_000, 9999];
const PROBE_TIMEOUT: Duration = Duration::from_millis(200);

/// A configuration for the namespace pair: the control plane host at `CP_ADDR` is also the
/// SIP peer, the NG proxy and inside the management network.
fn document(version: u64, control_plane: SocketAddr) -> String {
    format!(
        "version = {version}\n[relay]\nmax_sessions = 100\n\
         [firewall]\ncontrol_plane = [\"{control_plane}\"]\n\
         management_networks = [\"10.77.0.0/24\"]\nssh_port = 22\n\
         sip_peers = [\"{CP_ADDR}/32\"]\nng_proxies = [\"{CP_ADDR}/32\"]\n"
    )
}

fn set(ports: &[u16]) -> BTreeSet<u16> {
    ports.iter().copied().collect()
}

fn wait_config_result(
    admin: &mut AdminClient,
    version: u64,
    timeout: Duration,
    agent_log: impl Fn() -> String,
) -> ConfigOutcome {
    let deadline = Instant::now() + timeout;
    loop {
        let results = admin.config_results(DEVICE).expect("admin config-results");
        if let Some(r) = results.results.iter().find(|r| r.result.version == version) {
            return r.result.outcome.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no result for config version {version} within {timeout:?}; agent log:\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_records(
    admin: &mut AdminClient,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&[Record]) -> bool,
) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = admin.records(DEVICE).expect("admin records").records;
        if pred(&records) {
            return records;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; {} records stored: {records:?}",
            records.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn pushed_firewall_holds_from_outside_and_a_push_cutting_off_the_control_plane_rolls_back() {
    let started = Instant::now();
    require_root_and_tools().unwrap_or_else(|e| panic!("{e:#}"));
    // Declared first, dropped last: the namespaces outlive every process and socket in them.
    let app_ns = Netns::new("app").unwrap_or_else(|e| panic!("{e:#}"));
    let cp_ns = Netns::new("cp").unwrap_or_else(|e| panic!("{e:#}"));
    veth_pair(&cp_ns, CP_ADDR, &app_ns, APP_ADDR).unwrap_or_else(|e| panic!("{e:#}"));
    let test = TestDir::new("agent-netns").unwrap_or_else(|e| panic!("{e:#}"));

    // The control plane in its namespace.
    let cp_dir =
        init_control_plane(&test, &cp_ns, "cp", CP_ADDR).unwrap_or_else(|e| panic!("{e:#}"));
    let cp = NsControlPlane::start(&test, &cp_ns, &cp_dir, SocketAddr::from((CP_ADDR, 0)))
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut admin = cp.admin().unwrap_or_else(|e| panic!("{e:#}"));

    // The appliance in its namespace: relay, enrollment, agent.
    let opts = ApplianceOptions {
        ca_file: cp_dir.join("ca.pem"),
        control_plane: cp.listen,
        health_window_ms: 3000,
        apply_firewall: true,
    };
    let app = NsAppliance::start(&test, &app_ns, DEVICE, &opts).unwrap_or_else(|e| panic!("{e:#}"));
    let token = cp.token(DEVICE).unwrap_or_else(|e| panic!("{e:#}"));
    let out = app.enroll(&token).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        out.status.success(),
        "popctl enroll inside {}: {}{}",
        app_ns.name(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut agent = app
        .start_agent(&test, "agent")
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        admin
            .wait_connected(DEVICE, Duration::from_secs(20))
            .expect("admin wait-connected"),
        "the agent never connected across the veth:\n{}",
        agent.log()
    );
    assert_eq!(
        app_ns.nft_table().expect("nft list"),
        None,
        "no table before the first push"
    );

    // The scanner itself, before any ruleset: every listener answers, so what the scans below
    // miss is the ruleset's doing, not a broken probe.
    let _listeners =
        Listeners::start(&app_ns, &TCP_LISTEN, &UDP_LISTEN).unwrap_or_else(|e| panic!("{e:#}"));
    let (tcp, udp) = scan(&cp_ns, APP_ADDR, &TCP_LISTEN, &UDP_LISTEN, PROBE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tcp, set(&TCP_LISTEN), "TCP without a ruleset");
    assert_eq!(udp, set(&UDP_LISTEN), "UDP without a ruleset");

    // v1: allows the control plane; applied and committed after a healthy window.
    admin
        .push_config(DEVICE, 1, &document(1, cp.listen))
        .expect("push v1");
    assert_eq!(
        wait_config_result(&mut admin, 1, Duration::from_secs(20), || agent.log()),
        ConfigOutcome::Applied,
        "agent log:\n{}",
        agent.log()
    );
    let table = app_ns
        .nft_table()
        .expect("nft list")
        .expect("v1 left no table inet popd in the appliance namespace");
    let cp_element = format!("{} . {}", cp.listen.ip(), cp.listen.port());
    assert!(table.contains(&cp_element), "{cp_element} in:\n{table}");

    // From outside (10.77.0.1: SIP peer, NG proxy, management network), exactly the allowed
    // set answers: SSH, SIP, NG, RTP; not 8080/tcp nor 9999/udp.
    let want_tcp = set(&[22, 5060, 2223]);
    let want_udp = set(&[5060, 2223, 30_000]);
    let (tcp, udp) = scan(&cp_ns, APP_ADDR, &TCP_LISTEN, &UDP_LISTEN, PROBE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tcp, want_tcp, "TCP reachable from {CP_ADDR} under v1");
    assert_eq!(udp, want_udp, "UDP reachable from {CP_ADDR} under v1");

    // v2 names the wrong control plane: once nft loads it, new connections from the appliance
    // to the real one are dropped, the agent's health probe fails and it must roll back.
    let wrong = SocketAddr::from((WRONG_CP_ADDR, cp.listen.port()));
    admin
        .push_config(DEVICE, 2, &document(2, wrong))
        .expect("push v2");
    match wait_config_result(&mut admin, 2, Duration::from_secs(30), || agent.log()) {
        ConfigOutcome::RolledBack { reason } => assert!(
            reason.contains(&format!("control plane {} unreachable", cp.listen)),
            "rolled back for another reason: {reason}"
        ),
        other => panic!(
            "expected v2 to be rolled back, got {other:?}; agent log:\n{}",
            agent.log()
        ),
    }

    // v1's ruleset is back: the real control plane allowed, the wrong one gone, and the
    // appliance still filtered the same way from outside.
    let table = app_ns
        .nft_table()
        .expect("nft list")
        .expect("the rollback left no table inet popd");
    assert!(table.contains(&cp_element), "{cp_element} in:\n{table}");
    assert!(
        !table.contains(&WRONG_CP_ADDR.to_string()),
        "v2's control plane still in the ruleset:\n{table}"
    );
    let (tcp, udp) = scan(&cp_ns, APP_ADDR, &TCP_LISTEN, &UDP_LISTEN, PROBE_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(tcp, want_tcp, "TCP reachable after the rollback");
    assert_eq!(udp, want_udp, "UDP reachable after the rollback");

    // The rollback is reported as an event and audited.
    let records = wait_records(
        &mut admin,
        Duration::from_secs(20),
        "the rollback event and audit",
        |rs| {
            let event = rs.iter().any(|r| {
                matches!(&r.body, RecordBody::Event(e) if matches!(&e.kind,
                    EventKind::ConfigRolledBack { version: 2, restored: 1, .. }))
            });
            let audit = rs.iter().any(|r| {
                matches!(&r.body, RecordBody::Audit(a)
                    if a.action == "config-push"
                        && a.detail.starts_with("version 2 ")
                        && a.outcome.starts_with("rolled back"))
            });
            event && audit
        },
    );
    assert!(
        records.iter().any(|r| matches!(&r.body,
            RecordBody::Event(e) if e.kind == EventKind::ConfigApplied { version: 1 })),
        "v1's apply reported"
    );
    agent.ensure_running().unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!("agent_netns scenario took {:?}", started.elapsed());
}
