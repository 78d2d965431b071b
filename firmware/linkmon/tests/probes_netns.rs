//! Probes past the gateway on a three-namespace rig (appliance — carrier router — core with a
//! UDP echo responder): both uplinks' probes get answers while the main default route points
//! at the primary (per-uplink source routing), and breakage past the primary's gateway fails
//! over to the backup with reason `probes_missed`.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{status, wait_for, Netns, Running};
use pop_linkmon::status_server::query;
use pop_linkmon::LinkmonConfig;

/// A UDP echo responder on a thread inside `ns`; stopped on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    fn start(ns: &Netns, addr: &'static str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.name);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let fd = std::fs::File::open(&path).unwrap();
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                let s = UdpSocket::bind(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
                ready_tx.send(()).unwrap();
                let mut buf = [0u8; 1500];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        let _ = s.send_to(&buf[..n], from);
                    }
                }
            })
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("echo responder started");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn breakage_past_the_gateway_fails_over_on_probe_misses() {
    let ns = Netns::new("pr");
    let carrier = Netns::new("prc");
    let core = Netns::new("prk");
    carrier.shift_ifindexes();
    ns.veth_to("up0", "192.0.2.2/24", &carrier, "gw0", "192.0.2.1/24");
    ns.veth_to("up1", "198.51.100.2/24", &carrier, "gw1", "198.51.100.1/24");
    carrier.veth_to("cr0", "203.0.113.1/24", &core, "co0", "203.0.113.10/24");
    core.ip(&["route", "add", "default", "via", "203.0.113.1"]);
    let fwd = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &carrier.name,
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ])
        .status()
        .unwrap();
    assert!(
        fwd.success(),
        "enabling forwarding in the carrier namespace"
    );
    let _echo = Echo::start(&core, "203.0.113.10:7");

    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("linkmon.sock");
    let text = format!(
        r#"
socket = "{}"
[selector]
startup_grace_ms = 2000
probe_miss_threshold = 3
[[uplink]]
name = "primary"
interface = "up0"
address = "192.0.2.2"
gateway = "192.0.2.1"
[[uplink.probe]]
target = "203.0.113.10:7"
interval_ms = 50
timeout_ms = 150
[[uplink]]
name = "backup"
interface = "up1"
address = "198.51.100.2"
gateway = "198.51.100.1"
[[uplink.probe]]
target = "203.0.113.10:7"
interval_ms = 50
timeout_ms = 150
"#,
        sock.display()
    );
    let running = Running::start(
        &ns,
        LinkmonConfig::from_toml(&text, Path::new("t")).unwrap(),
    );

    wait_for("primary active", Duration::from_secs(5), || {
        status(&sock)["active"] == "primary"
    });
    // The backup's probes are answered although the main default route is the primary's.
    wait_for("backup probes answered", Duration::from_secs(3), || {
        let st = status(&sock);
        st["uplinks"][1]["probe_replies"].as_u64().unwrap_or(0) >= 5
            && st["uplinks"][0]["probe_replies"].as_u64().unwrap_or(0) >= 5
    });
    let rules = ns.ip_output(&["rule", "show"]);
    assert!(rules.contains("suppress_prefixlength 0"), "{rules}");
    assert!(rules.contains("from 198.51.100.2 lookup 1001"), "{rules}");

    // Breakage past the primary's gateway: the carrier stops forwarding what comes from gw0.
    let nft = dir.path().join("past-gw.nft");
    std::fs::write(
        &nft,
        "table inet popd_pastgw {\n chain past_gateway { type filter hook forward priority 0; iifname \"gw0\" drop; }\n}\n",
    )
    .unwrap();
    let ok = std::process::Command::new("ip")
        .args(["netns", "exec", &carrier.name, "nft", "-f"])
        .arg(&nft)
        .status()
        .unwrap()
        .success();
    assert!(ok, "nft failed (is the `nftables` package installed?)");
    let took = wait_for("failover on probe misses", Duration::from_secs(3), || {
        status(&sock)["active"] == "backup"
    });
    let events = query(&sock, "events").unwrap();
    let fo = events
        .iter()
        .find(|e| e["event"] == "switch" && e["kind"] == "failover")
        .expect("failover event");
    assert_eq!(fo["reason"], "probes_missed");
    println!(
        "breakage past the gateway → backup after {took:?} (probes every 50 ms, miss after 150 ms, 3 misses)"
    );
    // The carrier's route is fine: probes failing do not touch the carrier state.
    assert_eq!(status(&sock)["uplinks"][0]["carrier"], true);
    running.finish();
}
