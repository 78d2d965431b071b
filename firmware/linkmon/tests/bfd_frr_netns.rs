//! Interop: `popd linkmon`'s BFD (this crate's sockets driving the core's session) against FRR
//! bfdd 8.4 in a carrier namespace at 50 ms × 3. The session comes Up and negotiates the fast
//! timers; malformed, wrong-TTL and wrong-discriminator packets are dropped and counted; a
//! silent blackhole on the carrier side is detected within the detection time and traffic
//! moves to the backup.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{status, wait_for, Netns, Running};
use pop_linkmon::status_server::query;
use pop_linkmon::LinkmonConfig;
use pop_linkmon_core::{BfdControl, BfdDiag, BfdState};

const BFDD: &str = "/usr/lib/frr/bfdd";

/// bfdd, killed by PID on drop (also when the test fails).
struct Bfdd(Child);

impl Drop for Bfdd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_bfdd(carrier: &Netns, dir: &Path) -> Bfdd {
    assert!(
        Path::new(BFDD).exists(),
        "{BFDD} is missing: install the Debian package `frr`"
    );
    let conf = dir.join("bfdd.conf");
    std::fs::write(
        &conf,
        "bfd\n peer 192.0.2.2 local-address 192.0.2.1\n  receive-interval 50\n  transmit-interval 50\n  detect-multiplier 3\n  no shutdown\n !\n!\n",
    )
    .unwrap();
    // bfdd drops to the `frr` user and writes its pid and sockets here.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&conf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let d = dir.display();
    let child = Command::new("ip")
        .args(["netns", "exec", &carrier.name, BFDD])
        .args(["-f", &conf.display().to_string()])
        .args(["-i", &format!("{d}/bfdd.pid")])
        .args(["--vty_socket", &d.to_string()])
        .args(["--bfdctl", &format!("{d}/bfdd.sock")])
        .args(["-z", &format!("{d}/zserv.api")])
        .args(["-u", "frr", "-g", "frr"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Bfdd(child)
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

fn packet(state: BfdState, your_discriminator: u32) -> Vec<u8> {
    let c = BfdControl {
        diag: BfdDiag::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        auth_type: None,
        detect_mult: 3,
        my_discriminator: 0x0bad_cafe,
        your_discriminator,
        desired_min_tx_us: 50_000,
        required_min_rx_us: 50_000,
        required_min_echo_rx_us: 0,
    };
    let mut buf = [0u8; 64];
    let n = c.emit(&mut buf).unwrap();
    buf[..n].to_vec()
}

#[test]
fn bfd_with_frr_comes_up_counts_bad_packets_and_detects_a_silent_blackhole() {
    let ns = Netns::new("bfd");
    let carrier = Netns::new("bfdc");
    carrier.shift_ifindexes();
    ns.veth_to("up0", "192.0.2.2/24", &carrier, "gw0", "192.0.2.1/24");
    ns.veth_to("up1", "198.51.100.2/24", &carrier, "gw1", "198.51.100.1/24");
    let dir = tempfile::tempdir().unwrap();
    let _bfdd = start_bfdd(&carrier, dir.path());
    let sock = dir.path().join("linkmon.sock");
    let text = format!(
        r#"
socket = "{}"
[selector]
startup_grace_ms = 5000
[[uplink]]
name = "primary"
interface = "up0"
address = "192.0.2.2"
gateway = "192.0.2.1"
[uplink.bfd]
desired_min_tx_us = 50000
required_min_rx_us = 50000
detect_mult = 3
[[uplink]]
name = "backup"
interface = "up1"
address = "198.51.100.2"
gateway = "198.51.100.1"
"#,
        sock.display()
    );
    let _running = Running::start(
        &ns,
        LinkmonConfig::from_toml(&text, Path::new("t")).unwrap(),
    );

    // FRR starts on 1 s timers, then moves to 50 ms with a Poll/Final exchange.
    wait_for("BFD Up at 50 ms with FRR", Duration::from_secs(15), || {
        let st = status(&sock);
        let b = &st["uplinks"][0]["bfd"];
        b["state"] == "Up" && b["tx_interval_us"] == 50_000 && b["detect_time_us"] == 150_000
    });
    assert_eq!(status(&sock)["active"], "primary");
    // Stays Up (a driver that mishandles the Final is dropped ~150 ms after Up, DESIGN §6).
    std::thread::sleep(Duration::from_millis(1000));
    let st = status(&sock);
    assert_eq!(st["uplinks"][0]["bfd"]["state"], "Up");
    assert_eq!(st["uplinks"][0]["bfd"]["down_transitions"], 0);
    let before = st["uplinks"][0]["bfd"].clone();

    // Bad packets from the peer's address: wrong TTL, wrong discriminator, malformed.
    carrier.run_in(|| {
        let s = UdpSocket::bind("192.0.2.1:0").unwrap();
        s.set_ttl(64).unwrap();
        // Otherwise valid (Down with Your Discriminator 0), so only the TTL is wrong.
        s.send_to(&packet(BfdState::Down, 0), "192.0.2.2:3784")
            .unwrap();
        s.set_ttl(255).unwrap();
        s.send_to(&packet(BfdState::Up, 0xdead_beef), "192.0.2.2:3784")
            .unwrap();
        s.send_to(b"\x20\xc0\x03", "192.0.2.2:3784").unwrap();
    });
    let field = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap();
    wait_for("bad packets counted", Duration::from_secs(2), || {
        let b = status(&sock)["uplinks"][0]["bfd"].clone();
        field(&b, "drop_wrong_ttl") > field(&before, "drop_wrong_ttl")
            && field(&b, "drop_wrong_discriminator") > field(&before, "drop_wrong_discriminator")
            && field(&b, "drop_malformed") > field(&before, "drop_malformed")
    });
    assert_eq!(status(&sock)["uplinks"][0]["bfd"]["state"], "Up");

    // Silent blackhole on the carrier side: carrier stays up, nothing gets through.
    let nft = dir.path().join("blackhole.nft");
    std::fs::write(
        &nft,
        "table inet popd_blackhole {\n chain pre { type filter hook prerouting priority -300; iifname \"gw0\" drop; }\n chain out { type filter hook output priority -300; oifname \"gw0\" drop; }\n}\n",
    )
    .unwrap();
    let t_before = unix_ms();
    let ok = Command::new("ip")
        .args(["netns", "exec", &carrier.name, "nft", "-f"])
        .arg(&nft)
        .status()
        .unwrap()
        .success();
    assert!(ok, "nft failed (is the `nftables` package installed?)");
    let t_after = unix_ms();
    wait_for("failover on BFD Down", Duration::from_secs(2), || {
        status(&sock)["active"] == "backup"
    });
    let events = query(&sock, "events").unwrap();
    let fo = events
        .iter()
        .find(|e| e["event"] == "switch" && e["kind"] == "failover")
        .expect("failover event");
    assert_eq!(fo["reason"], "bfd_down");
    let switched = fo["switched_ms"].as_f64().unwrap();
    let (lo, hi) = (switched - t_after, switched - t_before);
    println!("silent blackhole → route on backup: between {lo:.1} and {hi:.1} ms (negotiated detect time 150 ms)");
    // Detection time plus the jitter allowance of the last packet, plus scheduling slack.
    assert!(lo <= 250.0, "blackhole detected after {lo:.1} ms");
    assert!(
        hi >= 50.0,
        "failover before the fault could be seen ({hi:.1} ms)?"
    );
}
