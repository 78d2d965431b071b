//! FRR bfdd in the rig: carriers come up with their peer config, sessions come up against an
//! appliance-side bfdd, and the core's route to the service address follows a failure.
//! Needs root and FRR (scripts/setup installs it).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pop_rig::{BfdTimers, Fault, MonoTime, PathId, Rig, RigOptions, Role, Uplink, Upstream};

fn build(appliance_frr: bool) -> Rig {
    assert!(
        Path::new("/usr/lib/frr/bfdd").exists() && Path::new("/usr/bin/vtysh").exists(),
        "FRR is not installed: run scripts/setup as root"
    );
    Rig::build(RigOptions {
        upstream: Upstream::FrrBfd(BfdTimers::FAST_50X3),
        appliance_frr: appliance_frr.then_some(BfdTimers::FAST_50X3),
        ..RigOptions::default()
    })
    .unwrap_or_else(|e| panic!("building the rig with FRR: {e}"))
}

fn vtysh(dir: &Path, command: &str) -> String {
    let out = Command::new("vtysh")
        .arg("--vty_socket")
        .arg(dir)
        .args(["-c", command])
        .output()
        .unwrap_or_else(|e| panic!("vtysh: {e}"));
    assert!(
        out.status.success(),
        "vtysh -c '{command}': {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn carrier_bfdd_runs_with_its_peer_config() {
    let rig = build(false);
    let p = *rig.plan();
    for uplink in Uplink::ALL {
        let bfdd = rig.frr(uplink.carrier()).expect("bfdd in carrier");
        let a = p.uplink(uplink);
        let config = vtysh(bfdd.dir(), "show running-config");
        assert!(
            config.contains(&format!("peer {} local-address {}", a.app, a.gateway)),
            "{config}"
        );
        let peers = bfdd.peer_status().expect("peers");
        let toward_app = peers
            .iter()
            .find(|s| s.peer == a.app)
            .expect("appliance peer");
        // No BFD speaker in the appliance: the session exists but is not up.
        assert!(!toward_app.is_up());
        assert_eq!(toward_app.transmit_interval, 50);
        // The carrier–core session has bfdd at both ends, so it comes up.
        bfdd.wait_up(a.core_side, Duration::from_secs(10))
            .expect("carrier-core BFD up");
    }
    // bfdd runs inside the carrier namespace, not the root one.
    let pid = rig.frr(Role::Car1).expect("bfdd").pid();
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/net")).expect("ns link");
    assert_ne!(ns_of(pid), ns_of(std::process::id()));
}

#[test]
fn core_route_follows_a_silent_blackhole_and_comes_back() {
    let rig = build(true);
    let p = *rig.plan();
    let start = Instant::now();
    for role in [Role::App, Role::Car1, Role::Car2, Role::Core] {
        let bfdd = rig.frr(role).expect("bfdd");
        for peer in bfdd.peers() {
            bfdd.wait_up(peer.peer, Duration::from_secs(15))
                .expect("BFD up");
        }
    }
    println!("all BFD sessions up after {:?}", start.elapsed());
    let inj = rig.inject(Fault::Blackhole(Uplink::One)).expect("inject");
    let deadline = Instant::now() + Duration::from_secs(2);
    let event = loop {
        if let Some(e) = rig.core_route_events().into_iter().find(|e| e.to == "car2") {
            break e;
        }
        assert!(Instant::now() < deadline, "core route never moved to car2");
        std::thread::sleep(Duration::from_millis(5));
    };
    let reaction = event.switched.saturating_since(inj.effective);
    println!("core route reaction to a blackhole at 50 ms x 3: {reaction:?}");
    // Detection at 50 ms x 3 is at most 150 ms after the last packet; allow for polling and load.
    assert!(reaction < Duration::from_millis(500), "{reaction:?}");
    let route = rig
        .ip(Role::Core, &["route", "get", &p.service.to_string()])
        .expect("route get");
    assert!(route.contains("dev car2"), "{route}");
    // The appliance's reference monitor moved too, so the service works both ways over up2.
    let until = Instant::now() + Duration::from_secs(2);
    while rig.app_route_events().iter().all(|e| e.to != "up2") {
        assert!(Instant::now() < until, "appliance route never moved to up2");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(PathId::ServiceToCore.probe(&rig, 20).expect("probe").all());
    assert!(PathId::CoreToService.probe(&rig, 20).expect("probe").all());

    let recovered = MonoTime::now();
    rig.recover(Fault::Blackhole(Uplink::One)).expect("recover");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if rig
            .core_route_events()
            .iter()
            .any(|e| e.to == "car1" && e.seen >= recovered)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "core route never returned to car1"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        rig.follower_errors().is_empty(),
        "{:?}",
        rig.follower_errors()
    );
}
