//! The relay under test as a child process: started pinned to its core, probed with NG `ping`
//! (the floor reference: its ready line) until ready, sampled through `/proc`, and stopped by
//! PID (SIGTERM, then SIGKILL) when dropped — on success and on every error path.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::error::{LoadgenError, Result};
use crate::host::pin_current_thread;
use crate::ng_client::NgClient;
use crate::procstat::{self, ProcSample};

/// How long a relay may take to answer its first `ping`.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a relay gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Which relay implementation and, for ours, which data-plane backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RelayKind {
    /// rtpengine in userspace mode (`--table=-1`).
    Rtpengine,
    /// `popd relay --io-backend uring`.
    PopdUring,
    /// `popd relay --io-backend mmsg`.
    PopdMmsg,
    /// `relay-floor`: the minimal UDP forwarder, a CPU reference with no NG (sessions are
    /// computed port pairs, see [`crate::floor::session_routes`]).
    Floor,
}

impl RelayKind {
    /// Short label used in tables and JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Rtpengine => "rtpengine",
            Self::PopdUring => "popd-uring",
            Self::PopdMmsg => "popd-mmsg",
            Self::Floor => "floor",
        }
    }

    /// Whether the relay is driven over NG (the floor reference is not).
    pub fn has_ng(self) -> bool {
        self != Self::Floor
    }
}

/// How to start one relay under test.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    /// Implementation.
    pub kind: RelayKind,
    /// Binary to run (`/usr/bin/rtpengine`, the `popd` build or `relay-floor`).
    pub binary: PathBuf,
    /// First media port the relay may use.
    pub port_min: u16,
    /// Last media port the relay may use.
    pub port_max: u16,
    /// CPU the relay is pinned to.
    pub cpu: usize,
    /// CPU the load generator returns to after spawning.
    pub loadgen_cpu: usize,
    /// Worker threads (`--num-threads` for rtpengine, `--workers` for popd).
    pub threads: u32,
    /// Directory for the relay's captured output.
    pub log_dir: PathBuf,
    /// Extra arguments appended verbatim.
    pub extra_args: Vec<String>,
}

/// A running relay; stopped when dropped.
#[derive(Debug)]
pub struct RelayProcess {
    child: Child,
    name: String,
    log: PathBuf,
    /// None for the floor reference, which has no NG socket.
    ng: Option<SocketAddr>,
}

fn free_udp_port() -> Result<u16> {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| LoadgenError::sys("probe a free NG port", e))?;
    s.local_addr()
        .map(|a| a.port())
        .map_err(|e| LoadgenError::sys("probe a free NG port", e))
}

impl RelaySpec {
    fn args(&self, ng: SocketAddr, pidfile: &Path, floor_pairs: usize) -> Vec<String> {
        let mut a: Vec<String> = match self.kind {
            RelayKind::Rtpengine => vec![
                // Debian's /etc/rtpengine/rtpengine.conf would otherwise add kernel tables,
                // interfaces and ports of its own.
                "--config-file=none".into(),
                "--foreground".into(),
                "--table=-1".into(),
                "--interface=127.0.0.1".into(),
                format!("--listen-ng={ng}"),
                format!("--port-min={}", self.port_min),
                format!("--port-max={}", self.port_max),
                "--log-stderr".into(),
                "--log-level=4".into(),
                format!("--pidfile={}", pidfile.display()),
                format!("--num-threads={}", self.threads),
                // Deleted calls would otherwise hold their ports for 30 s and a benchmark phase
                // that re-creates sessions would run out.
                "--delete-delay=0".into(),
                // Idle sessions of a paused phase must not be reaped mid-run.
                "--timeout=3600".into(),
            ],
            RelayKind::PopdUring | RelayKind::PopdMmsg => vec![
                "relay".into(),
                "--ng-listen".into(),
                ng.to_string(),
                "--media-address".into(),
                "127.0.0.1".into(),
                "--port-min".into(),
                self.port_min.to_string(),
                "--port-max".into(),
                self.port_max.to_string(),
                "--workers".into(),
                self.threads.to_string(),
                "--io-backend".into(),
                if self.kind == RelayKind::PopdUring {
                    "uring"
                } else {
                    "mmsg"
                }
                .into(),
            ],
            RelayKind::Floor => vec![
                "--address".into(),
                "127.0.0.1".into(),
                "--port-base".into(),
                self.port_min.to_string(),
                "--pairs".into(),
                floor_pairs.to_string(),
            ],
        };
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Starts the relay pinned to `self.cpu` and waits until it answers `ping`. The floor
    /// reference gets as many pairs as its port range holds; [`Self::start_for`] binds only
    /// what a run needs.
    pub fn start(&self, instance: &str) -> Result<RelayProcess> {
        let ports = usize::from(self.port_max.saturating_sub(self.port_min)) + 1;
        self.start_for(instance, ports / 2)
    }

    /// Like [`Self::start`]; the floor reference binds `sessions` port pairs (one per
    /// session), so it holds no more sockets than the run uses. NG relays ignore `sessions`.
    pub fn start_for(&self, instance: &str, sessions: usize) -> Result<RelayProcess> {
        let ng = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()?));
        std::fs::create_dir_all(&self.log_dir)
            .map_err(|e| LoadgenError::sys("create log directory", e))?;
        let name = format!("{}-{instance}", self.kind.label());
        let log = self.log_dir.join(format!("{name}.log"));
        let pidfile = self.log_dir.join(format!("{name}.pid"));
        let out = File::create(&log).map_err(|e| LoadgenError::sys("create relay log", e))?;
        let err = out
            .try_clone()
            .map_err(|e| LoadgenError::sys("create relay log", e))?;
        // The child inherits the spawning thread's CPU mask: pin ourselves to the relay's CPU for
        // the spawn so every thread the relay creates starts there, then move back.
        pin_current_thread(self.cpu)?;
        let spawned = Command::new(&self.binary)
            .args(self.args(ng, &pidfile, sessions))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn();
        pin_current_thread(self.loadgen_cpu)?;
        let child = spawned.map_err(|source| LoadgenError::Spawn {
            binary: self.binary.display().to_string(),
            source,
        })?;
        let mut relay = RelayProcess {
            child,
            name,
            log,
            ng: self.kind.has_ng().then_some(ng),
        };
        relay.wait_ready()?;
        Ok(relay)
    }
}

impl RelayProcess {
    fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        let Some(ng_addr) = self.ng else {
            return self.wait_ready_line(started);
        };
        let mut ng = NgClient::connect(ng_addr)?;
        while started.elapsed() < READY_TIMEOUT {
            self.check_alive()?;
            if ng.ping_once(Duration::from_millis(100)) {
                return Ok(());
            }
        }
        Err(LoadgenError::NotReady {
            name: self.name.clone(),
            check: format!("no NG pong on {ng_addr}"),
            waited_ms: started.elapsed().as_millis() as u64,
            log: self.log.clone(),
        })
    }

    /// The floor reference prints a ready line once every socket is bound and registered.
    fn wait_ready_line(&mut self, started: Instant) -> Result<()> {
        while started.elapsed() < READY_TIMEOUT {
            self.check_alive()?;
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().any(|l| l.starts_with(crate::floor::READY_LINE)) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LoadgenError::NotReady {
            name: self.name.clone(),
            check: format!("no `{}` line", crate::floor::READY_LINE),
            waited_ms: started.elapsed().as_millis() as u64,
            log: self.log.clone(),
        })
    }

    /// Errors if the relay has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(LoadgenError::RelayExited {
                name: self.name.clone(),
                status: status.to_string(),
                log: self.log.clone(),
            }),
            Err(e) => Err(LoadgenError::sys("wait for relay", e)),
        }
    }

    /// The relay's NG address; an error for the floor reference, which has none.
    pub fn ng(&self) -> Result<SocketAddr> {
        self.ng.ok_or_else(|| LoadgenError::Config {
            field: "relays",
            reason: format!("relay `{}` has no NG socket", self.name),
        })
    }

    /// The relay's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Path of the relay's captured output.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// A `/proc` sample of the relay.
    pub fn sample(&mut self) -> Result<ProcSample> {
        self.check_alive()?;
        procstat::sample(self.pid())
    }
}

impl Drop for RelayProcess {
    fn drop(&mut self) {
        let Ok(raw) = i32::try_from(self.child.id()) else {
            return;
        };
        let pid = Pid::from_raw(raw);
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = kill(pid, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}
