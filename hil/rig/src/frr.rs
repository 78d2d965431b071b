//! FRR `bfdd` instances inside rig namespaces, and a client for their vty socket.
//!
//! Each instance gets its own directory (config, pid file, vty and control sockets, log) under
//! the run directory, so it never touches the packaged daemon's /etc/frr or /run/frr. `bfdd`
//! runs without zebra: peers are configured by address only (`interface` would need zebra to
//! resolve it), which keeps single-hop sessions working with one process per namespace.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::{chown, Group, User};
use serde::Deserialize;

use crate::cmd::{require_tool, BFDD};
use crate::error::{Result, RigError};
use crate::process::NsProcess;
use crate::state::RunStateFile;

/// BFD timers configured on an FRR peer (milliseconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdTimers {
    /// Desired minimum transmit interval.
    pub tx_ms: u32,
    /// Required minimum receive interval: how fast this side lets its peer send.
    pub rx_ms: u32,
    /// Detection multiplier.
    pub multiplier: u8,
}

impl BfdTimers {
    /// 50 ms × 3, the timers of the issue's reference runs.
    pub const FAST_50X3: BfdTimers = BfdTimers {
        tx_ms: 50,
        rx_ms: 50,
        multiplier: 3,
    };
}

impl Default for BfdTimers {
    fn default() -> Self {
        BfdTimers::FAST_50X3
    }
}

/// One BFD peer of a `bfdd` instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdPeerConfig {
    /// The remote address.
    pub peer: Ipv4Addr,
    /// Our address on the shared link.
    pub local: Ipv4Addr,
    /// Timers.
    pub timers: BfdTimers,
    /// Wait for the remote to start (RFC 5880 passive role).
    pub passive: bool,
}

/// Renders a `bfdd` configuration file.
pub fn render_bfdd_config(hostname: &str, log: &Path, peers: &[BfdPeerConfig]) -> String {
    let mut c = String::new();
    let _ = writeln!(c, "frr defaults traditional");
    let _ = writeln!(c, "hostname {hostname}");
    let _ = writeln!(c, "log file {} informational", log.display());
    let _ = writeln!(c, "!");
    let _ = writeln!(c, "bfd");
    for p in peers {
        let _ = writeln!(c, " peer {} local-address {}", p.peer, p.local);
        let _ = writeln!(c, "  transmit-interval {}", p.timers.tx_ms);
        let _ = writeln!(c, "  receive-interval {}", p.timers.rx_ms);
        let _ = writeln!(c, "  detect-multiplier {}", p.timers.multiplier);
        if p.passive {
            let _ = writeln!(c, "  passive-mode");
        }
        let _ = writeln!(c, " !");
    }
    let _ = writeln!(c, "!");
    c
}

/// A running `bfdd` in one namespace.
#[derive(Debug)]
pub struct FrrBfdd {
    dir: PathBuf,
    peers: Vec<BfdPeerConfig>,
    process: NsProcess,
}

impl FrrBfdd {
    /// Writes the config into `dir` and starts `bfdd` in `ns`; returns once its vty answers.
    pub(crate) fn start(
        state: Arc<RunStateFile>,
        ns: &str,
        hostname: &str,
        dir: PathBuf,
        peers: Vec<BfdPeerConfig>,
    ) -> Result<Self> {
        require_tool(BFDD, "frr")?;
        std::fs::create_dir_all(&dir)
            .map_err(|e| RigError::io(format!("creating {}", dir.display()), e))?;
        // The packaged bfdd insists on its frr user being in the frrvty group; root is not, so
        // run as frr and give it the directory.
        let user = User::from_name("frr")
            .ok()
            .flatten()
            .ok_or(RigError::MissingTool {
                program: "user frr".to_owned(),
                package: "frr",
            })?;
        let group = Group::from_name("frr").ok().flatten().map(|g| g.gid);
        chown(&dir, Some(user.uid), group)
            .map_err(|e| RigError::io(format!("chown {} to frr", dir.display()), e.into()))?;
        let conf = dir.join("bfdd.conf");
        let daemon_log = dir.join("bfdd.log");
        std::fs::write(&conf, render_bfdd_config(hostname, &daemon_log, &peers))
            .map_err(|e| RigError::io(format!("writing {}", conf.display()), e))?;
        let path = |name: &str| dir.join(name).display().to_string();
        let (conf_s, pid_s, zsock_s, ctl_s, vty_s) = (
            path("bfdd.conf"),
            path("bfdd.pid"),
            path("zserv.api"),
            path("bfdd.sock"),
            dir.display().to_string(),
        );
        let log_s = format!("file:{}", daemon_log.display());
        let args = [
            "-f",
            &conf_s,
            "-i",
            &pid_s,
            "-z",
            &zsock_s,
            "--bfdctl",
            &ctl_s,
            "--vty_socket",
            &vty_s,
            "-P",
            "0",
            "-u",
            "frr",
            "-g",
            "frr",
            "--log",
            &log_s,
        ];
        let process = NsProcess::spawn(
            state,
            ns,
            BFDD,
            &args,
            &format!("bfdd in {hostname}"),
            &dir.join("bfdd.stdout"),
        )?;
        let bfdd = FrrBfdd {
            dir,
            peers,
            process,
        };
        bfdd.wait_vty(Duration::from_secs(5))?;
        Ok(bfdd)
    }

    /// The directory holding its config, sockets and log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The vty socket (`vtysh --vty_socket <dir>` talks to it too).
    pub fn vty_path(&self) -> PathBuf {
        self.dir.join("bfdd.vty")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The configured peers.
    pub fn peers(&self) -> &[BfdPeerConfig] {
        &self.peers
    }

    /// Opens a vty client.
    pub fn vty(&self) -> Result<VtyClient> {
        VtyClient::connect(&self.vty_path())
    }

    fn wait_vty(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Ok(mut vty) = self.vty() {
                if vty.command("show bfd peers json").is_ok() {
                    return Ok(());
                }
            }
            if start.elapsed() > limit {
                return Err(RigError::Timeout {
                    what: format!("bfdd's vty {}", self.vty_path().display()),
                    waited: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Current session states.
    pub fn peer_status(&self) -> Result<Vec<BfdPeerStatus>> {
        self.vty()?.peers()
    }

    /// Waits until the session with `peer` is up; returns how long that took.
    pub fn wait_up(&self, peer: Ipv4Addr, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        let mut vty = self.vty()?;
        loop {
            if vty.peers()?.iter().any(|p| p.peer == peer && p.is_up()) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                return Err(RigError::Timeout {
                    what: format!("BFD session with {peer} up in {}", self.dir.display()),
                    waited: limit,
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// One session as `show bfd peers json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BfdPeerStatus {
    /// Remote address.
    pub peer: Ipv4Addr,
    /// Local address.
    #[serde(default)]
    pub local: Option<Ipv4Addr>,
    /// `up`, `down`, `init`, `shutdown`.
    pub status: String,
    /// Negotiated/configured receive interval (ms).
    #[serde(rename = "receive-interval", default)]
    pub receive_interval: u32,
    /// Configured transmit interval (ms).
    #[serde(rename = "transmit-interval", default)]
    pub transmit_interval: u32,
    /// Remote's receive interval (ms).
    #[serde(rename = "remote-receive-interval", default)]
    pub remote_receive_interval: u32,
    /// Detect multiplier.
    #[serde(rename = "detect-multiplier", default)]
    pub detect_multiplier: u32,
}

impl BfdPeerStatus {
    /// Whether the session is up.
    pub fn is_up(&self) -> bool {
        self.status == "up"
    }
}

/// A connection to an FRR daemon's vty socket, speaking vtysh's framing: a command ends with a
/// NUL; the answer ends with three NULs and a status byte (0 = success).
#[derive(Debug)]
pub struct VtyClient {
    path: PathBuf,
    stream: UnixStream,
    buf: Vec<u8>,
}

/// Bound on one answer, so a confused daemon cannot make the rig allocate without end.
const MAX_ANSWER: usize = 4 << 20;

impl VtyClient {
    /// Connects and enters enable mode (where `show bfd …` lives for vtysh clients).
    pub fn connect(path: &Path) -> Result<Self> {
        let stream = UnixStream::connect(path).map_err(|e| RigError::Vty {
            path: path.to_owned(),
            reason: format!("connect: {e}"),
        })?;
        stream
            .set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| RigError::io("setting the vty read timeout", e))?;
        let mut client = VtyClient {
            path: path.to_owned(),
            stream,
            buf: Vec::with_capacity(4096),
        };
        client.command("enable")?;
        Ok(client)
    }

    /// Runs one command and returns its output; a non-zero status is an error with the output.
    pub fn command(&mut self, command: &str) -> Result<String> {
        let vty_err = |reason: String| RigError::Vty {
            path: self.path.clone(),
            reason,
        };
        let mut msg = command.as_bytes().to_vec();
        msg.push(0);
        self.stream
            .write_all(&msg)
            .map_err(|e| vty_err(format!("sending `{command}`: {e}")))?;
        self.buf.clear();
        let mut chunk = [0u8; 16384];
        loop {
            let n = self
                .stream
                .read(&mut chunk)
                .map_err(|e| vty_err(format!("reading the answer to `{command}`: {e}")))?;
            if n == 0 {
                return Err(vty_err(format!("closed while answering `{command}`")));
            }
            self.buf
                .extend_from_slice(chunk.get(..n).unwrap_or_default());
            if self.buf.len() > MAX_ANSWER {
                return Err(vty_err(format!(
                    "answer to `{command}` over {MAX_ANSWER} bytes"
                )));
            }
            let len = self.buf.len();
            if len >= 4 && self.buf.get(len - 4..len - 1) == Some(&[0, 0, 0][..]) {
                let status = self.buf.get(len - 1).copied().unwrap_or(0);
                let text = String::from_utf8_lossy(self.buf.get(..len - 4).unwrap_or_default())
                    .into_owned();
                return if status == 0 {
                    Ok(text)
                } else {
                    Err(vty_err(format!(
                        "`{command}` returned {status}: {}",
                        text.trim()
                    )))
                };
            }
        }
    }

    /// `show bfd peers json`, parsed.
    pub fn peers(&mut self) -> Result<Vec<BfdPeerStatus>> {
        let text = self.command("show bfd peers json")?;
        serde_json::from_str(&text).map_err(|e| RigError::Vty {
            path: self.path.clone(),
            reason: format!("unexpected `show bfd peers json` output: {e}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_each_peer_with_its_timers() {
        let conf = render_bfdd_config(
            "car1",
            Path::new("/tmp/x.log"),
            &[BfdPeerConfig {
                peer: Ipv4Addr::new(192, 0, 2, 1),
                local: Ipv4Addr::new(192, 0, 2, 2),
                timers: BfdTimers {
                    tx_ms: 20,
                    rx_ms: 10,
                    multiplier: 3,
                },
                passive: true,
            }],
        );
        assert!(conf.contains(" peer 192.0.2.1 local-address 192.0.2.2\n"));
        assert!(conf.contains("  transmit-interval 20\n"));
        assert!(conf.contains("  receive-interval 10\n"));
        assert!(conf.contains("  detect-multiplier 3\n"));
        assert!(conf.contains("  passive-mode\n"));
        assert!(!conf.contains("interface"), "bfdd runs without zebra");
    }

    #[test]
    fn peer_status_parses_frr_json() {
        let json = r#"[{"multihop":false,"peer":"192.0.2.2","local":"192.0.2.1","vrf":"default",
            "id":1,"remote-id":0,"status":"down","receive-interval":50,"transmit-interval":50,
            "remote-receive-interval":1000,"detect-multiplier":3}]"#;
        let peers: Vec<BfdPeerStatus> = serde_json::from_str(json).expect("parses");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].peer, Ipv4Addr::new(192, 0, 2, 2));
        assert!(!peers[0].is_up());
        assert_eq!(peers[0].remote_receive_interval, 1000);
    }
}
