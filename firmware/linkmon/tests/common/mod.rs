//! Network-namespace fixtures for linkmon's real-kernel tests. Everything happens inside
//! namespaces these fixtures create (unique names) and delete on drop, also after a panic.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_linkmon::status_server::query;
use pop_linkmon::LinkmonConfig;

/// Fails loudly when the test cannot run here (these tests need root and iproute2).
pub fn require_root_and_ip() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (network namespaces); run it as root"
    );
    let ok = Command::new("ip")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok, "this test needs iproute2 (`ip`), which is missing");
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        require_root_and_ip();
        let name = format!(
            "popd-lm-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
                % 100_000
        );
        let ns = Self { name };
        run(&["ip", "netns", "add", &ns.name]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n NAME args...`, panicking with the command's stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full);
    }

    /// `ip -n NAME args...` output.
    pub fn ip_output(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("ip runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that has entered this namespace (only that thread moves).
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let fd = std::fs::File::open(&path).expect("namespace file");
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .expect("namespace thread panicked")
        })
    }

    /// A veth pair from this namespace (`a`) to `peer` (`b`), with addresses (CIDR), both up.
    pub fn veth_to(&self, a: &str, a_addr: &str, peer: &Netns, b: &str, b_addr: &str) {
        run(&[
            "ip", "link", "add", a, "netns", &self.name, "type", "veth", "peer", "name", b,
            "netns", &peer.name,
        ]);
        self.ip(&["addr", "add", a_addr, "dev", a]);
        peer.ip(&["addr", "add", b_addr, "dev", b]);
        self.ip(&["link", "set", a, "up"]);
        peer.ip(&["link", "set", b, "up"]);
    }

    /// Uses up interface indexes with an unused veth pair. A veth whose peer (in another
    /// namespace) has the same ifindex is not treated as "urgent" by the kernel's linkwatch,
    /// so its carrier events are delayed up to 1 s; real NICs do not have that artefact and
    /// carrier tests should not measure it.
    pub fn shift_ifindexes(&self) {
        self.ip(&[
            "link", "add", "pad0", "type", "veth", "peer", "name", "pad1",
        ]);
    }

    /// A veth pair inside the namespace, with addresses (CIDR) on each end, both up.
    pub fn veth(&self, a: &str, a_addr: &str, b: &str, b_addr: &str) {
        self.ip(&["link", "add", a, "type", "veth", "peer", "name", b]);
        self.ip(&["addr", "add", a_addr, "dev", a]);
        self.ip(&["addr", "add", b_addr, "dev", b]);
        self.ip(&["link", "set", a, "up"]);
        self.ip(&["link", "set", b, "up"]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `popd linkmon`'s loop on a thread inside a namespace; stopped and joined on drop.
pub struct Running {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    pub fn start(ns: &Netns, cfg: LinkmonConfig) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/run/netns/{}", ns.name);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let fd = std::fs::File::open(&path).map_err(|e| e.to_string())?;
                nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string())?;
                pop_linkmon::run_until(cfg, &mut || stop.load(Ordering::Relaxed))
                    .map_err(|e| e.to_string())
            })
        };
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop and asserts it ended without an error.
    pub fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join()
                .expect("linkmon thread")
                .expect("linkmon ran cleanly");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The `status` object from the service's socket (`null` when it does not answer).
pub fn status(sock: &Path) -> serde_json::Value {
    query(sock, "status")
        .ok()
        .and_then(|mut v| v.pop())
        .unwrap_or(serde_json::Value::Null)
}

/// Polls `cond` every millisecond up to `limit`; panics naming `what` on timeout.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if cond() {
            return t0.elapsed();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("{what}: not within {limit:?}");
}
