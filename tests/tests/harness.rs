//! The harness's own guarantees: children die with their test, waits are bounded, port ranges
//! are really free.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pop_system_tests::{ports, ChildGuard, TestDir};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; the guard reaps, so "gone" means really gone.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn child_and_its_group_are_killed_when_a_test_panics() {
    let dir = TestDir::new("harness-kill").unwrap_or_else(|e| panic!("{e:#}"));
    let pid_file = dir.file("grandchild.pid");
    let pids = std::panic::catch_unwind(|| {
        // The shell forks a grandchild in the same process group and records its PID.
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "sleep 60 & echo $! > {}; echo started; wait",
            pid_file.display()
        ));
        let mut child =
            ChildGuard::spawn("sleeper", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));
        child
            .wait_for_line("started", Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let grandchild: u32 = std::fs::read_to_string(&pid_file)
            .unwrap_or_default()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("grandchild pid: {e}"));
        let pids = (child.pid(), grandchild);
        std::panic::panic_any(pids);
    });
    let payload = pids.expect_err("the closure panics");
    let (child, grandchild) = *payload
        .downcast::<(u32, u32)>()
        .unwrap_or_else(|_| panic!("setup failed before the deliberate panic"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(grandchild) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(child), "child {child} survived the panic");
    assert!(
        !alive(grandchild),
        "grandchild {grandchild} survived the panic"
    );
}

#[test]
fn wait_for_line_is_bounded_and_reports_output() {
    let dir = TestDir::new("harness-wait").unwrap_or_else(|e| panic!("{e:#}"));
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("echo something else; sleep 60");
    let mut child = ChildGuard::spawn("quiet", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let err = child
        .wait_for_line("never printed", Duration::from_millis(300))
        .expect_err("the line never comes");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(format!("{err:#}").contains("something else"), "{err:#}");

    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg("echo bye; exit 3");
    let mut exits = ChildGuard::spawn("exits", &mut cmd, &dir).unwrap_or_else(|e| panic!("{e:#}"));
    let err = exits
        .wait_for_line("ready", Duration::from_secs(5))
        .expect_err("the child exits first");
    assert!(format!("{err:#}").contains("exited"), "{err:#}");
}

#[test]
fn port_ranges_are_free_and_disjoint() {
    let a = ports::free_udp_port_range(&[LOOPBACK], 64).unwrap_or_else(|e| panic!("{e:#}"));
    let b = ports::free_udp_port_range(&[LOOPBACK], 64).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        a.end() < b.start() || b.end() < a.start(),
        "{a:?} overlaps {b:?}"
    );
    assert_eq!(a.start() % 2, 0, "ranges start on an even (RTP) port");
    for port in a.clone() {
        UdpSocket::bind(SocketAddr::new(LOOPBACK, port))
            .unwrap_or_else(|e| panic!("port {port} of {a:?} not bindable: {e}"));
    }
}
