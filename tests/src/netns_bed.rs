//! A test bed for the agent across network namespaces: the appliance (`popd relay`, `popctl
//! enroll`, `popd agent` with the firewall applied for real) in one namespace, the reference
//! control plane (`pop-cp`) in another, joined by a veth pair, plus small listeners and probes
//! to see from the outside which ports the appliance's ruleset lets through.
//!
//! Everything runs in namespaces the test creates (names carry the PID, so parallel runs do not
//! collide), deleted when their guard drops, also while a failing test unwinds. Nothing is
//! added to the root namespace: the veth pair is created inside the appliance namespace with its
//! peer moved straight into the control plane's. Processes are started through
//! `ip netns exec`, which execs the program, so a [`ChildGuard`]'s PID is the program itself.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use pop_controlplane::admin::AdminClient;

use crate::agent_bed::{write_settings, ApplianceOptions, SERVER_NAME};
use crate::{binaries, ChildGuard, TestDir};

/// Longest a background listener thread lives, whatever happens to its owner: a leaked guard
/// must not keep a thread spinning after the test.
const LISTENER_LIFETIME: Duration = Duration::from_secs(120);

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Fails (with what to install) unless we are root and `ip` and `nft` run.
///
/// These tests create namespaces and load nftables rulesets: without root or the tools they
/// cannot test anything, and a silent skip would read as a pass.
pub fn require_root_and_tools() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("FAIL: this test needs root (network namespaces, veth, nftables)");
    }
    for (prog, arg, pkg) in [("nft", "--version", "nftables"), ("ip", "-V", "iproute2")] {
        let ok = Command::new(prog)
            .arg(arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            bail!("FAIL: `{prog}` is required: apt-get install {pkg} (or run scripts/setup)");
        }
    }
    Ok(())
}

/// Runs a command to completion; an error quotes the command line and its stderr.
fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace owned by one test, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `popnet-<pid>-<n>-<tag>` (unique per process and call) with `lo` up.
    pub fn new(tag: &str) -> Result<Self> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("popnet-{}-{n}-{tag}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // From here the guard owns it: any later failure still deletes the namespace.
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` knows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["-n", &self.name]).args(args)).map(drop)
    }

    /// A command running `program` inside the namespace (`ip netns exec <ns> program`).
    pub fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs `f` on a fresh thread that joined the namespace; sockets it creates live there
    /// (and stay there when used from other threads afterwards).
    pub fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        pop_rig::in_namespace(&self.name, f)
            .map_err(|e| anyhow!("running inside namespace {}: {e}", self.name))
    }

    /// Our nftables table as the namespace's kernel has it (`nft list table inet popd`), or
    /// `None` when it does not exist.
    pub fn nft_table(&self) -> Result<Option<String>> {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.name, "nft", "list", "table", "inet", "popd",
            ])
            .output()
            .context("running nft list table inet popd")?;
        if out.status.success() {
            return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        bail!(
            "nft list table inet popd in {}: {}",
            self.name,
            stderr.trim()
        )
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "deleting namespace {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("deleting namespace {}: {e}", self.name),
        }
    }
}

/// Joins `a` and `b` with a veth pair: `a_addr/24` on `a`'s end, `b_addr/24` on `b`'s.
///
/// The pair is created inside `a` with the peer placed directly in `b`, so it never exists in
/// the root namespace; deleting either namespace removes both ends.
pub fn veth_pair(a: &Netns, a_addr: Ipv4Addr, b: &Netns, b_addr: Ipv4Addr) -> Result<()> {
    a.ip(&[
        "link", "add", "veth-a", "type", "veth", "peer", "name", "veth-b", "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", &format!("{a_addr}/24"), "dev", "veth-a"])?;
    b.ip(&["addr", "add", &format!("{b_addr}/24"), "dev", "veth-b"])?;
    a.ip(&["link", "set", "veth-a", "up"])?;
    b.ip(&["link", "set", "veth-b", "up"])
}

/// `pop-cp init` run inside `ns` into `<test>/<name>`, its certificate for `server_ip`.
pub fn init_control_plane(
    test: &TestDir,
    ns: &Netns,
    name: &str,
    server_ip: Ipv4Addr,
) -> Result<PathBuf> {
    let dir = test.file(name);
    let mut cmd = ns.command(&binaries::pop_cp()?);
    cmd.args(["init", "--server-name", SERVER_NAME, "--server-ip"])
        .arg(server_ip.to_string())
        .arg("--dir")
        .arg(&dir);
    run(&mut cmd).context("pop-cp init")?;
    Ok(dir)
}

/// A `pop-cp serve` running inside a namespace.
#[derive(Debug)]
pub struct NsControlPlane {
    /// State directory.
    pub dir: PathBuf,
    /// Agent listener (an address inside the namespace).
    pub listen: SocketAddr,
    /// Admin listener, on the namespace's own loopback.
    pub admin: SocketAddr,
    /// The namespace's name, for admin connections.
    netns: String,
    /// The process.
    pub child: ChildGuard,
}

impl NsControlPlane {
    /// Starts `pop-cp serve --listen <listen>` in `ns` with a fast heartbeat.
    pub fn start(test: &TestDir, ns: &Netns, dir: &Path, listen: SocketAddr) -> Result<Self> {
        let mut cmd = ns.command(&binaries::pop_cp()?);
        cmd.args(["serve", "--admin", "127.0.0.1:0", "--heartbeat-ms", "500"])
            .arg("--listen")
            .arg(listen.to_string())
            .arg("--dir")
            .arg(dir);
        let mut child = ChildGuard::spawn("cp", &mut cmd, test)?;
        let line = child.wait_for_line("listening ", Duration::from_secs(15))?;
        let listen = parse_addr(&line, "listening ")?;
        let line = child.wait_for_line("admin ", Duration::from_secs(5))?;
        let admin = parse_addr(&line, "admin ")?;
        Ok(NsControlPlane {
            dir: dir.to_owned(),
            listen,
            admin,
            netns: ns.name.clone(),
            child,
        })
    }

    /// A one-time enrollment token for `device` (`pop-cp token` only touches the state files).
    pub fn token(&self, device: &str) -> Result<String> {
        let mut cmd = Command::new(binaries::pop_cp()?);
        cmd.args(["token", "--device-id", device, "--dir"])
            .arg(&self.dir);
        let out = run(&mut cmd).context("pop-cp token")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// An admin client: the connection is made from inside the namespace (the admin listener
    /// is on its loopback); the socket then works from any thread.
    pub fn admin(&self) -> Result<AdminClient> {
        let addr = self.admin;
        pop_rig::in_namespace(&self.netns, move || AdminClient::connect(addr))
            .map_err(|e| anyhow!("entering namespace {}: {e}", self.netns))?
            .with_context(|| format!("connecting to the admin interface {addr}"))
    }
}

fn parse_addr(line: &str, prefix: &str) -> Result<SocketAddr> {
    let at = line
        .find(prefix)
        .with_context(|| format!("{prefix:?} in {line:?}"))?;
    line.get(at + prefix.len()..)
        .unwrap_or_default()
        .trim()
        .parse()
        .with_context(|| format!("address in {line:?}"))
}

/// Settings of the appliance side the test chooses.
/// The appliance side inside a namespace: a relay with its control socket and the agent's
/// settings with the firewall applied for real (in the namespace the agent runs in).
#[derive(Debug)]
pub struct NsAppliance {
    /// Device id.
    pub device: String,
    /// Agent settings file.
    pub settings: PathBuf,
    /// Relay control socket (a file: reachable from any namespace).
    pub relay_socket: PathBuf,
    /// The namespace's name.
    netns: String,
    /// The relay.
    pub relay: ChildGuard,
}

/// The relay's NG port and media range inside the appliance namespace: fixed, because the
/// namespace is new and empty, and clear of the ports the tests probe (the firewall's default
/// RTP range 30000-39999, SIP, NG 2223, SSH).
const RELAY_NG_PORT: u16 = 20_200;
const RELAY_PORT_MIN: u16 = 20_000;
const RELAY_PORT_MAX: u16 = 20_063;

impl NsAppliance {
    /// Starts the relay in `ns` and writes the agent's settings.
    pub fn start(
        test: &TestDir,
        ns: &Netns,
        device: &str,
        opts: &ApplianceOptions,
    ) -> Result<Self> {
        let relay_socket = test.file("relay.sock");
        let mut cmd = ns.command(&binaries::popd()?);
        cmd.args([
            "relay",
            "--ng-listen",
            &format!("127.0.0.1:{RELAY_NG_PORT}"),
        ])
        .args(["--port-min", &RELAY_PORT_MIN.to_string()])
        .args(["--port-max", &RELAY_PORT_MAX.to_string()])
        .arg("--control-socket")
        .arg(&relay_socket);
        let mut relay = ChildGuard::spawn("relay", &mut cmd, test)?;
        relay.wait_for_line("relay ready", Duration::from_secs(10))?;
        let settings = test.file("agent.toml");
        write_settings(
            &settings,
            device,
            opts,
            &test.file("agent-state"),
            &test.file("keys"),
            Some(&relay_socket),
        )?;
        Ok(NsAppliance {
            device: device.to_owned(),
            settings,
            relay_socket,
            netns: ns.name.clone(),
            relay,
        })
    }

    fn command(&self, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Runs `popctl enroll --token` inside the namespace.
    pub fn enroll(&self, token: &str) -> Result<Output> {
        self.command(&binaries::popctl()?)
            .args(["enroll", "--token", token, "--config"])
            .arg(&self.settings)
            .env("POPD_LOG", "warn")
            .output()
            .context("running popctl enroll")
    }

    /// Starts `popd agent` inside the namespace.
    pub fn start_agent(&self, test: &TestDir, log_name: &str) -> Result<ChildGuard> {
        let mut cmd = self.command(&binaries::popd()?);
        cmd.args(["agent", "--config"])
            .arg(&self.settings)
            .env("POPD_LOG", "info");
        ChildGuard::spawn(log_name, &mut cmd, test)
    }
}

/// TCP listeners that accept and close, and UDP sockets that echo, on one polling thread inside
/// a namespace; stopped when dropped (or after [`LISTENER_LIFETIME`] at most).
#[derive(Debug)]
pub struct Listeners {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Listeners {
    /// Binds every port on `0.0.0.0` inside `ns`; fails if any bind fails.
    pub fn start(ns: &Netns, tcp: &[u16], udp: &[u16]) -> Result<Self> {
        let (tcp, udp) = (tcp.to_vec(), udp.to_vec());
        // Bind inside the namespace, then serve from an ordinary thread: the sockets belong
        // to the namespace they were created in.
        let (listeners, sockets) = ns.run(move || -> Result<_> {
            let mut listeners = Vec::new();
            for p in tcp {
                let l = TcpListener::bind((Ipv4Addr::UNSPECIFIED, p))
                    .with_context(|| format!("binding TCP port {p}"))?;
                l.set_nonblocking(true)?;
                listeners.push(l);
            }
            let mut sockets = Vec::new();
            for p in udp {
                let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, p))
                    .with_context(|| format!("binding UDP port {p}"))?;
                s.set_nonblocking(true)?;
                sockets.push(s);
            }
            Ok((listeners, sockets))
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = std::thread::Builder::new()
            .name("netns-listeners".into())
            .spawn(move || serve(&listeners, &sockets, &stop2))
            .context("spawning the listener thread")?;
        Ok(Listeners {
            stop,
            handle: Some(handle),
        })
    }
}

fn serve(listeners: &[TcpListener], sockets: &[UdpSocket], stop: &AtomicBool) {
    let deadline = Instant::now() + LISTENER_LIFETIME;
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut busy = false;
        for l in listeners {
            // Bounded per round so one port cannot starve the others.
            for _ in 0..64 {
                let Ok((conn, _)) = l.accept() else { break };
                drop(conn);
                busy = true;
            }
        }
        for s in sockets {
            for _ in 0..64 {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    break;
                };
                busy = true;
                let _ = s.send_to(buf.get(..n).unwrap_or_default(), from);
            }
        }
        if !busy {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Which of `ports` on `dst` accept a TCP connection and which UDP ports echo a datagram, probed
/// from inside `ns`, each waiting at most `timeout`.
///
/// A port whose packets the firewall drops never answers within `timeout`; a port that is
/// open but has no listener refuses at once. Either way it is not in the result.
pub fn scan(
    ns: &Netns,
    dst: Ipv4Addr,
    tcp: &[u16],
    udp: &[u16],
    timeout: Duration,
) -> Result<(BTreeSet<u16>, BTreeSet<u16>)> {
    let (tcp, udp) = (tcp.to_vec(), udp.to_vec());
    ns.run(move || -> Result<_> {
        let tcp_open = tcp
            .into_iter()
            .filter(|&p| {
                TcpStream::connect_timeout(&SocketAddr::V4(SocketAddrV4::new(dst, p)), timeout)
                    .is_ok()
            })
            .collect();
        let mut udp_open = BTreeSet::new();
        for p in udp {
            if udp_echoes(SocketAddr::V4(SocketAddrV4::new(dst, p)), timeout)? {
                udp_open.insert(p);
            }
        }
        Ok((tcp_open, udp_open))
    })?
}

/// Whether a datagram to `dst` comes back from `dst` within `timeout` (a connected socket, so a
/// refused port reports at once and stray datagrams from elsewhere are not counted).
fn udp_echoes(dst: SocketAddr, timeout: Duration) -> Result<bool> {
    let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a UDP probe socket")?;
    s.connect(dst)
        .with_context(|| format!("connecting the UDP probe to {dst}"))?;
    s.set_read_timeout(Some(timeout))?;
    let probe = b"popd-netns-probe";
    if s.send(probe).is_err() {
        return Ok(false);
    }
    let mut buf = [0u8; 64];
    match s.recv(&mut buf) {
        Ok(n) => Ok(buf.get(..n) == Some(&probe[..])),
        Err(e)
            if matches!(
                e.kind(),
                ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e).with_context(|| format!("receiving the UDP echo from {dst}")),
    }
}
