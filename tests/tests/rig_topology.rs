//! The virtual rig's topology: reachability, routing, kernel settings, and that it leaves
//! nothing behind — in the root namespace or anywhere else. Run as root (scripts/setup).

use std::path::Path;
use std::process::Command;

use pop_rig::{existing_namespaces, mismatches, PathId, Rig, RigOptions, Role, Uplink};

fn build() -> Rig {
    Rig::build(RigOptions::default())
        .unwrap_or_else(|e| panic!("building the rig (run as root after scripts/setup): {e}"))
}

fn root_snapshot() -> String {
    let mut all = String::new();
    for args in [
        &["-br", "link"][..],
        &["-br", "addr"],
        &["route", "show", "table", "all"],
        &["-6", "route", "show", "table", "all"],
        &["rule"],
    ] {
        let out = Command::new("ip")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip {args:?}: {e} (install iproute2: scripts/setup)"));
        assert!(out.status.success(), "ip {args:?} failed");
        all += &String::from_utf8_lossy(&out.stdout);
    }
    all
}

#[test]
fn appliance_reaches_core_via_car1_both_ways() {
    let rig = build();
    let p = *rig.plan();
    let out = PathId::ServiceToCore.probe(&rig, 20).expect("probe");
    assert!(out.all(), "service -> core: {out:?}");
    let back = PathId::CoreToService.probe(&rig, 20).expect("probe");
    assert!(back.all(), "core -> service: {back:?}");
    let app_route = rig
        .ip(
            Role::App,
            &[
                "route",
                "get",
                &p.core_media.to_string(),
                "from",
                &p.service.to_string(),
            ],
        )
        .expect("route get");
    assert!(
        app_route.contains("dev up1"),
        "appliance route: {app_route}"
    );
    let core_route = rig
        .ip(Role::Core, &["route", "get", &p.service.to_string()])
        .expect("route get");
    assert!(core_route.contains("dev car1"), "core route: {core_route}");
}

#[test]
fn every_uplink_path_works_on_a_healthy_rig() {
    let rig = build();
    let bad = mismatches(&rig, None, 20).expect("probes");
    assert!(bad.is_empty(), "paths not working: {bad:?}");
}

#[test]
fn kernel_settings_are_the_designed_ones() {
    let rig = build();
    let get = |role, key: &str| {
        rig.exec(role, "sysctl", &["-n", key])
            .unwrap_or_else(|e| panic!("sysctl {key} in {role}: {e}"))
            .trim()
            .to_owned()
    };
    assert_eq!(get(Role::App, "net.ipv4.conf.up1.arp_announce"), "2");
    assert_eq!(
        get(Role::App, "net.ipv4.conf.all.ignore_routes_with_linkdown"),
        "1"
    );
    assert_eq!(get(Role::App, "net.ipv4.conf.up2.rp_filter"), "2");
    assert_eq!(get(Role::App, "net.ipv4.ip_forward"), "0");
    for car in [Role::Car1, Role::Car2] {
        assert_eq!(get(car, "net.ipv4.ip_forward"), "1");
        assert_eq!(get(car, "net.ipv4.conf.app.rp_filter"), "1");
        assert_eq!(get(car, "net.ipv4.conf.all.rp_filter"), "0");
    }
    assert_eq!(get(Role::Core, "net.ipv4.conf.car2.rp_filter"), "2");
}

#[test]
fn strict_carrier_rp_filter_drops_an_address_of_the_other_uplink() {
    // The appliance's uplink-2 address sent out uplink 1 must not get through: the carriers
    // behave like real ones, which is what makes source-address mistakes visible in tests.
    let rig = build();
    let p = *rig.plan();
    rig.ip(
        Role::App,
        &[
            "rule",
            "add",
            "priority",
            "50",
            "from",
            &p.uplink2.app.to_string(),
            "lookup",
            "101",
        ],
    )
    .expect("rule");
    let r = rig
        .probe((Role::App, p.uplink2.app), (Role::Core, p.core_media), 10)
        .expect("probe");
    assert_eq!(r.received, 0, "spoofed source passed car1: {r:?}");
}

#[test]
fn root_namespace_gets_no_links_addresses_routes_or_rules() {
    let before = root_snapshot();
    let rig = build();
    assert_eq!(
        root_snapshot(),
        before,
        "root namespace changed while the rig is up"
    );
    rig.inject(pop_rig::Fault::CarrierLoss(Uplink::One))
        .expect("inject");
    rig.recover_all().expect("recover");
    rig.teardown().expect("teardown");
    assert_eq!(
        root_snapshot(),
        before,
        "root namespace changed by the rig's lifetime"
    );
}

#[test]
fn drop_removes_namespaces_processes_and_state() {
    let rig = build();
    let names: Vec<String> = Role::ALL.iter().map(|r| rig.ns(*r).to_owned()).collect();
    let dir = rig.run_dir().to_owned();
    let sleeper = rig
        .spawn(Role::Core, "/bin/sleep", &["60"], "sleeper")
        .expect("spawn");
    let pid = sleeper.pid();
    // Forget the guard: the rig's own teardown must still find and kill it.
    std::mem::forget(sleeper);
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    let existing = existing_namespaces().expect("ip netns list");
    for n in &names {
        assert!(existing.contains(n), "{n} missing while the rig is up");
    }
    drop(rig);
    let existing = existing_namespaces().expect("ip netns list");
    for n in &names {
        assert!(!existing.contains(n), "{n} left behind");
    }
    assert!(
        !dir.exists(),
        "state directory {} left behind",
        dir.display()
    );
    // Killed by the rig (its zombie is reaped by nobody until this process exits: check state).
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "sleeper still running: {stat}"
    );
}
