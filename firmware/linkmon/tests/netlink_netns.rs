//! rtnetlink against a real kernel, inside a namespace each test creates.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::Netns;
use pop_linkmon::netlink::{LinkEvents, RouteSpec, RtnlSocket};

fn ifindex(sock: &mut RtnlSocket, name: &str) -> u32 {
    sock.links()
        .unwrap()
        .into_iter()
        .find(|l| l.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no link {name}"))
        .ifindex
}

/// An appliance namespace with two uplinks to one carrier namespace holding both gateways.
fn two_uplinks(tag: &str) -> (Netns, Netns) {
    let ns = Netns::new(tag);
    let carrier = Netns::new(&format!("{tag}c"));
    carrier.shift_ifindexes();
    ns.veth_to("up0", "192.0.2.2/24", &carrier, "gw0", "192.0.2.1/24");
    ns.veth_to("up1", "198.51.100.2/24", &carrier, "gw1", "198.51.100.1/24");
    (ns, carrier)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[test]
fn route_replace_switches_the_default_route_and_is_fast() {
    let (ns, _carrier) = two_uplinks("route");
    let latencies = ns.run_in(|| {
        let mut sock = RtnlSocket::open().unwrap();
        let up0 = ifindex(&mut sock, "up0");
        let up1 = ifindex(&mut sock, "up1");
        let spec = |gw: Ipv4Addr, oif: u32| RouteSpec {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: gw,
            oif,
            table: 254,
            metric: 0,
            prefsrc: None,
            protocol: 4,
        };
        let primary = spec(Ipv4Addr::new(192, 0, 2, 1), up0);
        let backup = spec(Ipv4Addr::new(198, 51, 100, 1), up1);
        let mut latencies = Vec::new();
        for i in 0..100 {
            let (want, oif) = if i % 2 == 0 {
                (primary, up0)
            } else {
                (backup, up1)
            };
            latencies.push(sock.replace_route(&want).unwrap());
            let defaults: Vec<_> = sock
                .routes()
                .unwrap()
                .into_iter()
                .filter(|r| r.prefix_len == 0 && r.table == 254)
                .collect();
            // Replace, not add: exactly one default route, the one just written.
            assert_eq!(defaults.len(), 1, "{defaults:?}");
            assert_eq!(defaults[0].gateway, Some(want.gateway));
            assert_eq!(defaults[0].oif, Some(oif));
        }
        latencies
    });
    // Also visible to the rest of the system.
    let shown = ns.ip_output(&["route", "show", "default"]);
    assert!(shown.contains("via 198.51.100.1 dev up1"), "{shown}");
    let mut sorted = latencies.clone();
    sorted.sort();
    let (p50, p99, max) = (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        *sorted.last().unwrap(),
    );
    println!("route replace ack latency over 100 switches: p50 {p50:?} p99 {p99:?} max {max:?}");
    assert!(p50 < Duration::from_millis(20), "route replace p50 {p50:?}");
}

#[test]
fn carrier_loss_on_the_peer_produces_a_link_event() {
    let (ns, carrier) = two_uplinks("carrier");
    let ns_name = carrier.name.clone();
    let (latency, seen_down, seen_up) = ns.run_in(move || {
        let mut sock = RtnlSocket::open().unwrap();
        let up0 = ifindex(&mut sock, "up0");
        let mut events = LinkEvents::subscribe().unwrap();
        let mut buf = Vec::new();
        // The kernel batches link events for a second after any link change (DESIGN §6);
        // the fixture just brought links up. Measure the steady-state case.
        std::thread::sleep(Duration::from_millis(1100));
        let t0 = Instant::now();
        // `ip` runs in the root namespace, addressing ours by name.
        let st = std::process::Command::new("ip")
            .args(["-n", &ns_name, "link", "set", "gw0", "down"])
            .status()
            .unwrap();
        assert!(st.success());
        let deadline = t0 + Duration::from_secs(3);
        let mut down_at = None;
        while Instant::now() < deadline && down_at.is_none() {
            buf.clear();
            events.drain(&mut buf).unwrap();
            if buf.iter().any(|l| l.ifindex == up0 && !l.carrier) {
                down_at = Some(t0.elapsed());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        let st = std::process::Command::new("ip")
            .args(["-n", &ns_name, "link", "set", "gw0", "up"])
            .status()
            .unwrap();
        assert!(st.success());
        let mut up = false;
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline && !up {
            buf.clear();
            events.drain(&mut buf).unwrap();
            up = buf.iter().any(|l| l.ifindex == up0 && l.carrier);
            std::thread::sleep(Duration::from_micros(200));
        }
        (down_at, down_at.is_some(), up)
    });
    assert!(seen_down, "no carrier-down event for up0 within 3 s");
    assert!(seen_up, "no carrier-up event for up0 within 3 s");
    println!(
        "carrier down → link event (including the `ip` command's own run time): {:?}",
        latency.unwrap()
    );
}

#[test]
fn neighbour_refresh_resolves_the_backup_gateway() {
    let (ns, _carrier) = two_uplinks("neigh");
    let before = ns.ip_output(&["neigh", "show", "198.51.100.1", "dev", "up1"]);
    assert!(!before.contains("lladdr"), "already resolved: {before}");
    ns.run_in(|| {
        let mut sock = RtnlSocket::open().unwrap();
        let up1 = ifindex(&mut sock, "up1");
        sock.refresh_neighbour(up1, Ipv4Addr::new(198, 51, 100, 1))
            .unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut shown = String::new();
    while Instant::now() < deadline {
        shown = ns.ip_output(&["neigh", "show", "198.51.100.1", "dev", "up1"]);
        if shown.contains("lladdr") && shown.contains("REACHABLE") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        shown.contains("lladdr") && shown.contains("REACHABLE"),
        "backup gateway not resolved: {shown:?}"
    );
}
