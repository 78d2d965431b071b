//! Each failure injector of the virtual rig breaks exactly the intended paths, and its recovery
//! restores them. Manual upstream (no FRR), so only the injector acts. Run as root.

use std::time::{Duration, Instant};

use pop_rig::{mismatches, Fault, MonoTime, PathId, Rig, RigOptions, Uplink};

fn build() -> Rig {
    Rig::build(RigOptions::default())
        .unwrap_or_else(|e| panic!("building the rig (run as root after scripts/setup): {e}"))
}

fn wait_healthy(rig: &Rig) {
    let start = Instant::now();
    loop {
        let bad = mismatches(rig, None, 5).unwrap_or_else(|e| panic!("probing: {e}"));
        if bad.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "not healthy 5 s after recovery: {bad:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn breaks_then_recovers(fault: Fault, probes: u32) {
    let rig = build();
    assert!(
        mismatches(&rig, None, 10).expect("probe").is_empty(),
        "unhealthy before {fault}"
    );
    let before = MonoTime::now();
    let inj = rig.inject(fault).expect("inject");
    let after = MonoTime::now();
    assert!(before <= inj.started && inj.started <= inj.effective && inj.effective <= after);
    let bad = mismatches(&rig, Some(fault), probes).expect("probe");
    assert!(bad.is_empty(), "{fault}: paths not as expected: {bad:?}");
    rig.recover(fault).expect("recover");
    wait_healthy(&rig);
}

#[test]
fn carrier_loss_breaks_uplink1_only_and_recovers() {
    breaks_then_recovers(Fault::CarrierLoss(Uplink::One), 20);
}

#[test]
fn carrier_loss_shows_as_no_carrier_in_the_appliance() {
    let rig = build();
    rig.inject(Fault::CarrierLoss(Uplink::Two)).expect("inject");
    let link = rig
        .ip(pop_rig::Role::App, &["link", "show", "up2"])
        .expect("ip link");
    assert!(link.contains("NO-CARRIER"), "{link}");
    rig.recover(Fault::CarrierLoss(Uplink::Two))
        .expect("recover");
    wait_healthy(&rig);
}

#[test]
fn silent_blackhole_breaks_uplink2_only_and_recovers() {
    breaks_then_recovers(Fault::Blackhole(Uplink::Two), 20);
}

#[test]
fn breakage_past_the_gateway_keeps_the_gateway_and_recovers() {
    breaks_then_recovers(Fault::PastGateway(Uplink::One), 20);
}

#[test]
fn loss_burst_drops_some_but_not_all_and_recovers() {
    // 50 % over 100 datagrams: all-or-nothing has probability ~2^-99.
    breaks_then_recovers(
        Fault::Loss {
            uplink: Uplink::One,
            percent: 50,
        },
        100,
    );
}

#[test]
fn loss_rate_is_roughly_the_configured_one() {
    let rig = build();
    rig.inject(Fault::Loss {
        uplink: Uplink::One,
        percent: 20,
    })
    .expect("inject");
    let r = PathId::UplinkToCore(Uplink::One)
        .probe(&rig, 1000)
        .expect("probe");
    // Binomial(1000, 0.8): mean 800, sd ~12.6; ±60 is beyond 4.5 sd.
    assert!((740..=860).contains(&r.received), "{r:?}");
}

#[test]
fn both_uplinks_down_breaks_everything_and_recovers() {
    breaks_then_recovers(Fault::BothUplinksDown, 20);
}

#[test]
fn recover_all_clears_every_kind_of_fault() {
    let rig = build();
    rig.inject(Fault::Blackhole(Uplink::One)).expect("inject");
    rig.inject(Fault::PastGateway(Uplink::Two)).expect("inject");
    rig.inject(Fault::Loss {
        uplink: Uplink::Two,
        percent: 30,
    })
    .expect("inject");
    rig.inject(Fault::CarrierLoss(Uplink::Two)).expect("inject");
    rig.recover_all().expect("recover all");
    wait_healthy(&rig);
}

#[test]
fn injecting_twice_then_recovering_once_recovers() {
    let rig = build();
    let f = Fault::Blackhole(Uplink::One);
    rig.inject(f).expect("inject");
    rig.inject(f).expect("inject again");
    rig.recover(f).expect("recover");
    rig.recover(f)
        .expect("recovering a recovered fault is harmless");
    wait_healthy(&rig);
}

#[test]
fn out_of_range_loss_is_refused() {
    let rig = build();
    for percent in [0, 101] {
        let r = rig.inject(Fault::Loss {
            uplink: Uplink::One,
            percent,
        });
        assert!(r.is_err(), "{percent} % accepted");
    }
}

#[test]
fn manual_upstream_moves_both_directions_to_uplink2() {
    let rig = build();
    rig.inject(Fault::Blackhole(Uplink::One)).expect("inject");
    assert_eq!(
        PathId::ServiceToCore
            .probe(&rig, 5)
            .expect("probe")
            .received,
        0
    );
    assert_eq!(
        PathId::CoreToService
            .probe(&rig, 5)
            .expect("probe")
            .received,
        0
    );
    rig.route_app_via(Uplink::Two).expect("appliance route");
    rig.route_core_via(Uplink::Two).expect("core route");
    assert!(PathId::ServiceToCore.probe(&rig, 20).expect("probe").all());
    assert!(PathId::CoreToService.probe(&rig, 20).expect("probe").all());
}
