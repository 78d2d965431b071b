//! Test support: network namespaces owned by one test (unique names, deleted on drop even when
//! the test fails), threads running inside a namespace (setns(2) on that thread only), and
//! small TCP/UDP servers and probes. Needs root, `ip` and `nft`: a missing one fails the test
//! with a message saying what to install, never skips it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{
    bind, connect, getsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn,
};
use pop_firewall::Nft;

/// Fails loudly unless we are root and `ip` and `nft` run.
pub fn require_root_and_tools() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "FAIL: these tests need root (network namespaces, nftables)"
    );
    for (prog, arg, pkg) in [("nft", "--version", "nftables"), ("ip", "-V", "iproute2")] {
        let ok = Command::new(prog)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        assert!(ok, "FAIL: `{prog}` is required: apt-get install {pkg}");
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A network namespace created for one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// `popfw-<pid>-<n>-<tag>`, unique per process run and call.
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("popfw-{}-{n}-{tag}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// nft inside this namespace.
    pub fn nft(&self) -> Nft {
        Nft::in_netns(self.name.clone())
    }

    /// Runs `f` on a new thread that has entered this namespace; sockets it creates live here.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let file = File::open(format!("/run/netns/{}", self.name)).expect("open netns");
        thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        match self.spawn(f).join() {
            Ok(v) => v,
            // Re-raise with the original message and location.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Two namespaces joined by a veth pair: `a` gets `a_addr/24`, `b` gets every `b_addrs/24`.
pub fn veth_pair(a: &Netns, a_addr: Ipv4Addr, b: &Netns, b_addrs: &[Ipv4Addr]) {
    a.ip(&[
        "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", &b.name,
    ]);
    a.ip(&["addr", "add", &format!("{a_addr}/24"), "dev", "veth-a"]);
    a.ip(&["link", "set", "veth-a", "up"]);
    for addr in b_addrs {
        b.ip(&["addr", "add", &format!("{addr}/24"), "dev", "veth-b"]);
    }
    b.ip(&["link", "set", "veth-b", "up"]);
}

/// TCP listeners that accept and close, and UDP sockets that echo, all in one polling thread
/// that stops when dropped (or after a minute at most).
pub struct Servers {
    stop: Arc<AtomicBool>,
    echoed: Arc<AtomicUsize>,
    handle: Option<JoinHandle<()>>,
}

impl Servers {
    pub fn start(ns: &Netns, bind: Ipv4Addr, tcp: &[u16], udp: &[u16]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let echoed = Arc::new(AtomicUsize::new(0));
        let (tcp, udp) = (tcp.to_vec(), udp.to_vec());
        let (stop2, echoed2) = (stop.clone(), echoed.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = ns.spawn(move || {
            let listeners: Vec<TcpListener> = tcp
                .iter()
                .map(|&p| {
                    let l = TcpListener::bind((bind, p)).expect("tcp bind");
                    l.set_nonblocking(true).unwrap();
                    l
                })
                .collect();
            let sockets: Vec<UdpSocket> = udp
                .iter()
                .map(|&p| {
                    let s = UdpSocket::bind((bind, p)).expect("udp bind");
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect();
            ready_tx.send(()).unwrap();
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                let mut busy = false;
                for l in &listeners {
                    while let Ok((conn, _)) = l.accept() {
                        drop(conn);
                        busy = true;
                    }
                }
                for s in &sockets {
                    for _ in 0..1000 {
                        let Ok((n, from)) = s.recv_from(&mut buf) else {
                            break;
                        };
                        busy = true;
                        if s.send_to(&buf[..n], from).is_ok() {
                            echoed2.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if !busy {
                    thread::sleep(Duration::from_millis(1));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("servers ready");
        Servers {
            stop,
            echoed,
            handle: Some(handle),
        }
    }

    pub fn echoed(&self) -> usize {
        self.echoed.load(Ordering::Relaxed)
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Ports of `dst` that accept a TCP connection from `src` (call inside the source's netns).
/// Connections are attempted in parallel batches; a port whose SYN is dropped simply never
/// answers within `timeout`.
pub fn tcp_scan(src: Ipv4Addr, dst: Ipv4Addr, ports: &[u16], timeout: Duration) -> BTreeSet<u16> {
    let mut open = BTreeSet::new();
    for batch in ports.chunks(512) {
        let mut socks: Vec<(u16, OwnedFd)> = Vec::with_capacity(batch.len());
        for &port in batch {
            let fd = socket(
                AddressFamily::Inet,
                SockType::Stream,
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
                None,
            )
            .expect("socket");
            bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0))).expect("bind src");
            match connect(
                fd.as_raw_fd(),
                &SockaddrIn::from(SocketAddrV4::new(dst, port)),
            ) {
                Ok(()) | Err(Errno::EINPROGRESS) => socks.push((port, fd)),
                Err(e) => panic!("connect {dst}:{port}: {e}"),
            }
        }
        let deadline = Instant::now() + timeout;
        let mut pending: Vec<(u16, OwnedFd)> = socks;
        while !pending.is_empty() && Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = u16::try_from(left.as_millis().min(1000)).unwrap_or(1000);
            let revents: Vec<PollFlags> = {
                let mut fds: Vec<PollFd> = pending
                    .iter()
                    .map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLOUT))
                    .collect();
                poll(&mut fds, PollTimeout::from(ms)).expect("poll");
                fds.iter()
                    .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                    .collect()
            };
            let mut still = Vec::new();
            for ((port, fd), ev) in pending.into_iter().zip(revents) {
                if ev.is_empty() {
                    still.push((port, fd));
                    continue;
                }
                if getsockopt(&fd, sockopt::SocketError).unwrap_or(-1) == 0 {
                    open.insert(port);
                }
            }
            pending = still;
        }
    }
    open
}

/// Whether a UDP datagram from `src` (any port) to `dst` is echoed back within `timeout`.
pub fn udp_echoes(src: Ipv4Addr, dst: SocketAddr, timeout: Duration) -> bool {
    udp_echoes_from(SocketAddr::from((src, 0)), dst, timeout)
}

/// Whether a UDP datagram from `src` to `dst` is echoed back within `timeout`.
pub fn udp_echoes_from(src: SocketAddr, dst: SocketAddr, timeout: Duration) -> bool {
    let s = UdpSocket::bind(src).expect("udp bind");
    s.set_read_timeout(Some(timeout)).unwrap();
    // A datagram dropped by the local output chain fails the send itself (EPERM).
    if s.send_to(b"probe", dst).is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(s.recv_from(&mut buf), Ok((5, from)) if from == dst)
}
