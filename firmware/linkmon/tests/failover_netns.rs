//! `popd linkmon`'s service loop on a real kernel: an appliance namespace with two uplinks to a
#![allow(clippy::unwrap_used)]
//! carrier namespace; carrier loss on the primary moves the default route to the backup, the
//! hold-down gates the fail-back, and both uplinks down keeps the loop (and the route) alive.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{status, wait_for, Netns, Running};
use pop_linkmon::netlink::RtnlSocket;
use pop_linkmon::status_server::query;
use pop_linkmon::LinkmonConfig;

fn config(socket: &Path) -> LinkmonConfig {
    let text = format!(
        r#"
socket = "{}"
neighbour_refresh_ms = 200
[selector]
hold_down_ms = 1500
startup_grace_ms = 1000

[[uplink]]
name = "primary"
interface = "up0"
address = "192.0.2.2"
gateway = "192.0.2.1"

[[uplink]]
name = "backup"
interface = "up1"
address = "198.51.100.2"
gateway = "198.51.100.1"
"#,
        socket.display()
    );
    LinkmonConfig::from_toml(&text, Path::new("test")).unwrap()
}

/// The default route's (gateway, interface name), read over netlink inside the namespace.
fn default_route(ns: &Netns) -> Option<(Ipv4Addr, String)> {
    ns.run_in(|| {
        let mut s = RtnlSocket::open().unwrap();
        let links = s.links().unwrap();
        let r = s
            .routes()
            .unwrap()
            .into_iter()
            .find(|r| r.prefix_len == 0 && r.table == 254)?;
        let name = links
            .iter()
            .find(|l| Some(l.ifindex) == r.oif)
            .and_then(|l| l.name.clone())?;
        Some((r.gateway?, name))
    })
}

#[test]
fn carrier_loss_fails_over_hold_down_gates_failback_and_all_down_is_survived() {
    let ns = Netns::new("fo");
    let carrier = Netns::new("foc");
    carrier.shift_ifindexes();
    ns.veth_to("up0", "192.0.2.2/24", &carrier, "gw0", "192.0.2.1/24");
    ns.veth_to("up1", "198.51.100.2/24", &carrier, "gw1", "198.51.100.1/24");
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("linkmon.sock");
    let running = Running::start(&ns, config(&sock));

    let primary = (Ipv4Addr::new(192, 0, 2, 1), "up0".to_owned());
    let backup = (Ipv4Addr::new(198, 51, 100, 1), "up1".to_owned());

    // Start-up: both carriers up → the primary.
    wait_for(
        "start-up route on the primary",
        Duration::from_secs(5),
        || default_route(&ns) == Some(primary.clone()),
    );
    assert_eq!(status(&sock)["active"], "primary");
    // Backup's gateway is kept resolved.
    wait_for("backup neighbour warm", Duration::from_secs(3), || {
        let n = ns.ip_output(&["neigh", "show", "198.51.100.1", "dev", "up1"]);
        n.contains("lladdr") && !n.contains("FAILED")
    });

    // Link-event batching (DESIGN §6) would delay a change within 1 s of the last one.
    std::thread::sleep(Duration::from_millis(1100));
    let t0 = Instant::now();
    carrier.ip(&["link", "set", "gw0", "down"]);
    let after_cmd = t0.elapsed();
    let moved = wait_for("failover to the backup", Duration::from_secs(3), || {
        default_route(&ns) == Some(backup.clone())
    });
    println!(
        "carrier loss → route on backup: {:?} after `ip link set down` returned ({after_cmd:?} for the command itself)",
        moved
    );

    let events = query(&sock, "events").unwrap();
    let failover = events
        .iter()
        .find(|e| e["event"] == "switch" && e["kind"] == "failover")
        .expect("failover event recorded");
    assert_eq!(failover["from"], "primary");
    assert_eq!(failover["to"], "backup");
    assert_eq!(failover["reason"], "carrier_down");
    let detect = failover["detect_ms"].as_f64().unwrap();
    let switch = failover["switch_ms"].as_f64().unwrap();
    assert!(failover["error"].is_null());
    assert!(
        failover["fault_seen_ms"].as_f64().unwrap() <= failover["decided_ms"].as_f64().unwrap()
    );
    println!(
        "failover event: fault seen → decided {detect:.3} ms, decided → switched {switch:.3} ms"
    );
    assert!(switch < 50.0, "route switch took {switch} ms");

    // Carrier back: no fail-back before the hold-down (1.5 s) ...
    carrier.ip(&["link", "set", "gw0", "up"]);
    let back_at = Instant::now();
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(
        default_route(&ns),
        Some(backup.clone()),
        "failed back before the hold-down"
    );
    // ... and after it (carrier-up can itself be batched up to 1 s).
    wait_for("failback to the primary", Duration::from_secs(5), || {
        default_route(&ns) == Some(primary.clone())
    });
    let failback_after = back_at.elapsed();
    assert!(
        failback_after >= Duration::from_millis(1500),
        "{failback_after:?}"
    );
    let events = query(&sock, "events").unwrap();
    assert!(events
        .iter()
        .any(|e| e["event"] == "switch" && e["kind"] == "failback" && e["to"] == "primary"));

    // Both down: the loop keeps running, traffic stays where it was, nothing crashes.
    std::thread::sleep(Duration::from_millis(1100));
    carrier.ip(&["link", "set", "gw0", "down"]);
    carrier.ip(&["link", "set", "gw1", "down"]);
    wait_for("all uplinks down reported", Duration::from_secs(4), || {
        status(&sock)["all_down"] == true
    });
    let it0 = status(&sock)["loop_iterations"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let st = status(&sock);
    assert!(
        st["loop_iterations"].as_u64().unwrap() > it0,
        "loop stalled while all down"
    );
    let route = default_route(&ns);
    assert!(
        route == Some(primary.clone()) || route == Some(backup.clone()),
        "route lost while all down: {route:?}"
    );
    // Recovery of the backup alone.
    carrier.ip(&["link", "set", "gw1", "up"]);
    wait_for("recovery onto the backup", Duration::from_secs(4), || {
        default_route(&ns) == Some(backup.clone()) && status(&sock)["all_down"] == false
    });
    running.finish();
    assert!(!sock.exists(), "status socket left behind");
}
