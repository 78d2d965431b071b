//! Starting the relays under test: rtpengine (the reference) and `popd relay`.

use std::env;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::{binaries, ports, ChildGuard, NgClient, TestDir};

/// How long a relay may take to say it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
/// Media ports given to each relay: plenty for a test's handful of calls.
const PORTS_PER_RELAY: u16 = 200;

/// Which implementation a test drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    /// Debian's rtpengine 10.5, userspace only.
    Rtpengine,
    /// Our `popd relay`.
    Popd,
}

impl RelayKind {
    /// A short name for logs and file names.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rtpengine => "rtpengine",
            Self::Popd => "popd",
        }
    }
}

/// A running relay with its NG address.
#[derive(Debug)]
pub struct RelayProcess {
    /// The process; dropped = killed.
    pub process: ChildGuard,
    /// Where it takes NG commands.
    pub ng_addr: SocketAddr,
    /// The addresses it was told to advertise in SDP.
    pub media_addrs: Vec<IpAddr>,
    /// Its media port range.
    pub ports: RangeInclusive<u16>,
}

impl RelayProcess {
    /// An NG client for it.
    pub fn ng(&self) -> Result<NgClient> {
        NgClient::new(self.ng_addr)
    }
}

/// Starts `kind` advertising `media_addrs`. popd takes one media address; give it exactly one.
pub fn start(
    kind: RelayKind,
    dir: &TestDir,
    name: &str,
    media_addrs: &[IpAddr],
) -> Result<RelayProcess> {
    match kind {
        RelayKind::Rtpengine => start_rtpengine(dir, name, media_addrs),
        RelayKind::Popd => match media_addrs {
            [one] => start_popd(dir, name, *one),
            _ => bail!("popd relay takes one --media-address, got {media_addrs:?}"),
        },
    }
}

/// Starts a private userspace rtpengine (no kernel table, no config file, deleted calls
/// forgotten at once so a test can see `delete` take effect).
pub fn start_rtpengine(dir: &TestDir, name: &str, media_addrs: &[IpAddr]) -> Result<RelayProcess> {
    let exe = binaries::rtpengine()?;
    let ng_port = ports::free_udp_port(Ipv4Addr::LOCALHOST.into())?;
    let range = ports::free_udp_port_range(media_addrs, PORTS_PER_RELAY)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--config-file=none")
        .arg("--foreground")
        .arg("--table=-1")
        .arg("--no-fallback")
        .arg(format!("--listen-ng=127.0.0.1:{ng_port}"))
        .arg(format!("--port-min={}", range.start()))
        .arg(format!("--port-max={}", range.end()))
        .arg("--log-stderr")
        .arg(format!(
            "--pidfile={}",
            dir.file(&format!("{name}.pid")).display()
        ))
        .arg("--delete-delay=0")
        // Logs each NG request and reply in full: test data only, and it makes failures readable.
        .arg("--log-level-control=7");
    for addr in media_addrs {
        cmd.arg(format!("--interface={addr}"));
    }
    let mut process = ChildGuard::spawn(name, &mut cmd, dir)?;
    process.wait_for_line("Startup complete", STARTUP_TIMEOUT)?;
    finish_start(process, ng_port, media_addrs, range)
}

/// Starts `popd relay` with one worker; `$POP_IO_BACKEND` picks `uring` (default) or `mmsg`.
pub fn start_popd(dir: &TestDir, name: &str, media_addr: IpAddr) -> Result<RelayProcess> {
    let exe = binaries::popd()?;
    let backend = env::var("POP_IO_BACKEND").unwrap_or_else(|_| "uring".to_owned());
    let ng_port = ports::free_udp_port(Ipv4Addr::LOCALHOST.into())?;
    let range = ports::free_udp_port_range(&[media_addr], PORTS_PER_RELAY)?;
    let mut cmd = Command::new(exe);
    cmd.arg("relay")
        .arg("--ng-listen")
        .arg(format!("127.0.0.1:{ng_port}"))
        .arg("--media-address")
        .arg(media_addr.to_string())
        .arg("--port-min")
        .arg(range.start().to_string())
        .arg("--port-max")
        .arg(range.end().to_string())
        .arg("--workers")
        .arg("1")
        .arg("--io-backend")
        .arg(&backend);
    let mut process = ChildGuard::spawn(name, &mut cmd, dir)?;
    process.wait_for_line("relay ready", STARTUP_TIMEOUT)?;
    finish_start(process, ng_port, &[media_addr], range)
}

fn finish_start(
    process: ChildGuard,
    ng_port: u16,
    media_addrs: &[IpAddr],
    ports: RangeInclusive<u16>,
) -> Result<RelayProcess> {
    let relay = RelayProcess {
        process,
        ng_addr: SocketAddr::new(Ipv4Addr::LOCALHOST.into(), ng_port),
        media_addrs: media_addrs.to_vec(),
        ports,
    };
    relay.ng()?.ping().with_context(|| {
        format!(
            "{} said it was ready but does not answer NG ping",
            relay.process.name()
        )
    })?;
    Ok(relay)
}
