//! A test bed for the agent: the reference control plane (`pop-cp`), a relay with its control
//! socket, the agent's settings, `popctl enroll`, and `popd agent` — real processes over real
//! TLS on loopback (or inside namespaces the test made).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use pop_agent_proto::{Record, RecordBody};
use pop_controlplane::admin::AdminClient;

use crate::{binaries, ports, ChildGuard, TestDir};

/// The TLS name the test control plane's certificate carries.
pub const SERVER_NAME: &str = "cp.pop.test";

/// Runs `pop-cp init` in `<test>/<name>`.
pub fn init_control_plane(test: &TestDir, name: &str, extra: &[&str]) -> Result<PathBuf> {
    let dir = test.file(name);
    let out = Command::new(binaries::pop_cp()?)
        .args([
            "init",
            "--server-name",
            SERVER_NAME,
            "--server-ip",
            "127.0.0.1",
            "--dir",
        ])
        .arg(&dir)
        .args(extra)
        .output()
        .context("running pop-cp init")?;
    if !out.status.success() {
        bail!(
            "pop-cp init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(dir)
}

/// A running `pop-cp serve`.
#[derive(Debug)]
pub struct ControlPlane {
    /// State directory.
    pub dir: PathBuf,
    /// Agent listener.
    pub listen: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    /// The process.
    pub child: ChildGuard,
}

impl ControlPlane {
    /// Starts the server on `listen` (port 0 for any) with a fast heartbeat.
    pub fn start(test: &TestDir, dir: &Path, listen: SocketAddr, log_name: &str) -> Result<Self> {
        let mut cmd = Command::new(binaries::pop_cp()?);
        cmd.args([
            "serve",
            "--admin",
            "127.0.0.1:0",
            "--heartbeat-ms",
            "500",
            "--dir",
        ])
        .arg(dir)
        .arg("--listen")
        .arg(listen.to_string());
        let mut child = ChildGuard::spawn(log_name, &mut cmd, test)?;
        let line = child.wait_for_line("listening ", Duration::from_secs(15))?;
        let listen = parse_addr(&line, "listening ")?;
        let line = child.wait_for_line("admin ", Duration::from_secs(5))?;
        let admin = parse_addr(&line, "admin ")?;
        Ok(ControlPlane {
            dir: dir.to_owned(),
            listen,
            admin,
            child,
        })
    }

    /// A fresh one-time token for `device` (`--expired` when `expired`).
    pub fn token(&self, device: &str, expired: bool) -> Result<String> {
        let mut cmd = Command::new(binaries::pop_cp()?);
        cmd.args(["token", "--device-id", device, "--dir"])
            .arg(&self.dir);
        if expired {
            cmd.arg("--expired");
        }
        let out = cmd.output().context("running pop-cp token")?;
        if !out.status.success() {
            bail!(
                "pop-cp token failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// An admin client.
    pub fn admin(&self) -> Result<AdminClient> {
        AdminClient::connect(self.admin).context("connecting to the admin interface")
    }

    /// The records stored for `device`.
    pub fn records(&self, device: &str) -> Result<Vec<Record>> {
        Ok(self
            .admin()?
            .records(device)
            .context("admin records")?
            .records)
    }

    /// Waits until `pred` holds for the stored records (bounded by `timeout`).
    pub fn wait_records(
        &self,
        device: &str,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&[Record]) -> bool,
    ) -> Result<Vec<Record>> {
        let deadline = Instant::now() + timeout;
        loop {
            let records = self.records(device)?;
            if pred(&records) {
                return Ok(records);
            }
            if Instant::now() > deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; {} records stored",
                    records.len()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn parse_addr(line: &str, prefix: &str) -> Result<SocketAddr> {
    let at = line.find(prefix).context("prefix")?;
    line[at + prefix.len()..]
        .trim()
        .parse()
        .with_context(|| format!("address in {line:?}"))
}

/// The appliance side on loopback: a relay with its control socket and the agent's settings.
#[derive(Debug)]
pub struct Appliance {
    /// Device id.
    pub device: String,
    /// Agent settings file.
    pub settings: PathBuf,
    /// Agent state directory.
    pub state_dir: PathBuf,
    /// Relay control socket.
    pub relay_socket: PathBuf,
    /// Relay NG address.
    pub ng: SocketAddr,
    /// The relay.
    pub relay: ChildGuard,
}

/// Settings the tests vary.
#[derive(Debug, Clone)]
pub struct ApplianceOptions {
    /// CA file the agent pins.
    pub ca_file: PathBuf,
    /// Control plane address.
    pub control_plane: SocketAddr,
    /// Health window.
    pub health_window_ms: u64,
    /// Apply pushed firewalls with nft (only where the agent runs in a namespace the test
    /// made: never on the host).
    pub apply_firewall: bool,
}

impl Appliance {
    /// Starts the relay and writes the agent's settings.
    pub fn start(test: &TestDir, device: &str, opts: &ApplianceOptions) -> Result<Self> {
        let localhost = std::net::IpAddr::from([127, 0, 0, 1]);
        let ng_port = ports::free_udp_port(localhost)?;
        let range = ports::free_udp_port_range(&[localhost], 256)?;
        let relay_socket = test.file("relay.sock");
        let mut cmd = Command::new(binaries::popd()?);
        cmd.args(["relay", "--ng-listen", &format!("127.0.0.1:{ng_port}")])
            .args(["--port-min", &range.start().to_string()])
            .args(["--port-max", &range.end().to_string()])
            // Many short calls in a row: released ports come back after a second.
            .args(["--port-quarantine-secs", "1"])
            .arg("--control-socket")
            .arg(&relay_socket);
        let mut relay = ChildGuard::spawn("relay", &mut cmd, test)?;
        relay.wait_for_line("relay ready", Duration::from_secs(10))?;
        let state_dir = test.file("agent-state");
        let settings = test.file("agent.toml");
        write_settings(
            &settings,
            device,
            opts,
            &state_dir,
            &test.file("keys"),
            Some(&relay_socket),
        )?;
        Ok(Appliance {
            device: device.to_owned(),
            settings,
            state_dir,
            relay_socket,
            ng: SocketAddr::new(localhost, ng_port),
            relay,
        })
    }

    /// Runs `popctl enroll --token`.
    pub fn enroll(&self, token: &str) -> Result<Output> {
        Command::new(binaries::popctl()?)
            .args(["enroll", "--token", token, "--config"])
            .arg(&self.settings)
            .env("POPD_LOG", "warn")
            .output()
            .context("running popctl enroll")
    }

    /// Starts `popd agent`.
    pub fn start_agent(&self, test: &TestDir, log_name: &str) -> Result<ChildGuard> {
        let mut cmd = Command::new(binaries::popd()?);
        cmd.args(["agent", "--config"])
            .arg(&self.settings)
            .env("POPD_LOG", "info");
        ChildGuard::spawn(log_name, &mut cmd, test)
    }

    /// Makes one call through the relay (offer with party metadata, then delete): one CDR.
    pub fn call(&self, call_id: &str, from: &str, to: &str) -> Result<()> {
        use pop_wire::bencode::Value;
        let ng = crate::NgClient::new(self.ng)?;
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                   m=audio 40000 RTP/AVP 0\r\n";
        let mut offer = Value::dict(vec![]);
        offer.dict_insert("command", Value::str("offer"));
        offer.dict_insert("call-id", Value::str(call_id));
        offer.dict_insert("from-tag", Value::str("ft"));
        offer.dict_insert("sdp", Value::str(sdp));
        offer.dict_insert("metadata", Value::str(&format!("from:{from}|to:{to}")));
        let reply = ng.request(&offer)?;
        if reply.dict_get("result").and_then(Value::as_str) != Some("ok") {
            bail!(
                "offer refused: {}",
                crate::ng_client::describe_error(&reply)
            );
        }
        let mut del = Value::dict(vec![]);
        del.dict_insert("command", Value::str("delete"));
        del.dict_insert("call-id", Value::str(call_id));
        del.dict_insert("from-tag", Value::str("ft"));
        ng.request(&del)?;
        Ok(())
    }
}

/// Writes an `agent.toml` (development keystore, short timers for tests).
pub fn write_settings(
    path: &Path,
    device: &str,
    opts: &ApplianceOptions,
    state_dir: &Path,
    keys: &Path,
    relay_socket: Option<&Path>,
) -> Result<()> {
    let relay = relay_socket.map_or(String::new(), |p| {
        format!("relay_socket = \"{}\"\n", p.display())
    });
    let text = format!(
        "device_id = \"{device}\"\nboard = \"test-bed\"\ncontrol_plane = \"{}\"\n\
         server_name = \"{SERVER_NAME}\"\nca_file = \"{}\"\nstate_dir = \"{}\"\n\
         profile = \"development\"\napply_firewall = {}\n{relay}\
         [keystore]\nbackend = \"dev\"\ndir = \"{}\"\n\
         [timers]\ntelemetry_ms = 500\nhealth_window_ms = {}\nbackoff_base_ms = 200\n\
         backoff_cap_ms = 1000\ncdr_poll_ms = 200\n",
        opts.control_plane,
        opts.ca_file.display(),
        state_dir.display(),
        opts.apply_firewall,
        keys.display(),
        opts.health_window_ms,
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Counts stored records by kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kinds {
    /// Telemetry.
    pub telemetry: usize,
    /// Events.
    pub events: usize,
    /// CDRs.
    pub cdrs: usize,
    /// Audit records.
    pub audits: usize,
}

/// Counts `records` by kind.
pub fn kinds(records: &[Record]) -> Kinds {
    let mut k = Kinds::default();
    for r in records {
        match r.body {
            RecordBody::Telemetry(_) => k.telemetry += 1,
            RecordBody::Event(_) => k.events += 1,
            RecordBody::Cdr(_) => k.cdrs += 1,
            RecordBody::Audit(_) => k.audits += 1,
        }
    }
    k
}

/// A minimal valid appliance configuration document.
pub fn config_document(version: u64, max_sessions: u32, control_plane: SocketAddr) -> String {
    format!(
        "version = {version}\n[relay]\nmax_sessions = {max_sessions}\n\
         [firewall]\ncontrol_plane = [\"{control_plane}\"]\nmanagement_networks = [\"10.99.0.0/24\"]\n\
         sip_peers = [\"10.99.1.0/24\"]\nng_proxies = [\"10.99.1.0/24\"]\n"
    )
}

/// The usual loopback bed: a control plane on any port, a relay, the agent's settings (no
/// firewall), and — with [`LoopbackBed::enrolled`] — the device enrolled with a fresh token.
#[derive(Debug)]
pub struct LoopbackBed {
    /// Scratch directory (logs).
    pub test: TestDir,
    /// The control plane.
    pub cp: ControlPlane,
    /// The appliance side.
    pub app: Appliance,
}

impl LoopbackBed {
    /// Starts the control plane and the relay, writes the settings.
    pub fn new(name: &str, device: &str) -> Result<Self> {
        let test = TestDir::new(name)?;
        let cp_dir = init_control_plane(&test, "cp", &[])?;
        let cp = ControlPlane::start(&test, &cp_dir, "127.0.0.1:0".parse()?, "cp")?;
        let opts = ApplianceOptions {
            ca_file: cp_dir.join("ca.pem"),
            control_plane: cp.listen,
            health_window_ms: 2500,
            apply_firewall: false,
        };
        let app = Appliance::start(&test, device, &opts)?;
        Ok(LoopbackBed { test, cp, app })
    }

    /// [`Self::new`], then `popctl enroll` with a fresh token (an error if it fails).
    pub fn enrolled(name: &str, device: &str) -> Result<Self> {
        let bed = Self::new(name, device)?;
        let token = bed.cp.token(device, false)?;
        let out = bed.app.enroll(&token)?;
        if !out.status.success() {
            bail!(
                "popctl enroll failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(bed)
    }
}
