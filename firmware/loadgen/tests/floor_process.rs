//! The floor reference as the benchmark runs it: a real `relay-floor` process started through
//! `RelaySpec`, ready by its ready line, driven by the media engine on loopback, stopped by PID.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::time::Duration;

use pop_loadgen::bench::{measure_run, BenchSettings, RunShape};
use pop_loadgen::relay_process::{RelayKind, RelaySpec};
use pop_loadgen::sdp_text::SdpOptions;

fn spec(port_min: u16) -> RelaySpec {
    RelaySpec {
        kind: RelayKind::Floor,
        binary: PathBuf::from(env!("CARGO_BIN_EXE_relay-floor")),
        port_min,
        port_max: port_min + 99,
        cpu: 0,
        loadgen_cpu: 0,
        threads: 1,
        log_dir: std::env::temp_dir().join(format!("relay-floor-test-{}", std::process::id())),
        extra_args: Vec::new(),
    }
}

#[test]
fn floor_process_is_ready_has_no_ng_and_stops_on_drop() {
    // Another process may hold a range: try a few.
    let (relay, _spec) = (0..20)
        .find_map(|k| {
            let s = spec(47_000 + 100 * k);
            s.start_for("ready", 4).ok().map(|r| (r, s))
        })
        .expect("no free 8-port range in 47000..49000");
    assert!(relay.ng().is_err(), "the floor has no NG socket");
    let pid = relay.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let log = std::fs::read_to_string(relay.log()).unwrap();
    assert!(log.contains("relay-floor ready: 4 pairs"), "{log}");
    drop(relay);
    // Drop waited for the child, so its /proc entry is gone.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn measured_run_through_the_floor_delivers_everything() {
    let settings = BenchSettings {
        setup_window: 8,
        loadgen_sockets: 2,
        loadgen_first_port: 49_200,
        sdp: SdpOptions { rtcp_mux: false },
    };
    let shape = RunShape {
        sessions: 3,
        warmup: Duration::from_millis(200),
        measure: Duration::from_millis(500),
        interval: Duration::from_millis(20),
    };
    let mut last_err = None;
    for k in 0..10u16 {
        match measure_run(&spec(45_000 + 100 * k), &settings, shape, "test") {
            Ok(f) => {
                // 3 sessions × 2 streams × 50 pkt/s × 0.5 s = 150, ±1 per stream at the edges.
                assert!((144..=156).contains(&f.traffic.sent), "{f:?}");
                assert_eq!(f.traffic.received, f.traffic.sent, "{f:?}");
                assert_eq!(f.traffic.foreign_packets, 0);
                assert_eq!(f.setup_pairs_per_s, None, "no NG, no setup rate");
                assert!(f.relay_cpu_us_per_packet.is_finite() && f.relay_cpu_us_per_packet >= 0.0);
                assert!((0.0..=1.0).contains(&f.relay_cpu_sys_share), "{f:?}");
                // One pair per session: 6 media sockets, plus stdio and epoll.
                assert!((7..=12).contains(&f.relay_after.fds), "{f:?}");
                return;
            }
            Err(e) => last_err = Some(e),
        }
    }
    panic!("no run succeeded: {last_err:?}");
}
