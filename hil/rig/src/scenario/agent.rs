//! The control-plane side of the demo, as real processes over real mTLS: `pop-cp` (the
//! reference control plane) serving in the core namespace, `popctl enroll` and `popd agent` in
//! the appliance. The agent reaches the control-plane host over whichever uplink linkmon has
//! made active, exactly as on the appliance.
//!
//! The pure parts (the files written, the admin line parsed, the records picked out) are free
//! functions with tests; [`ControlPlaneSide`] does the I/O and owns the processes, which are
//! killed by PID when it drops (also on an error path).

use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pop_agent_proto::{Cdr, EventKind, Record, RecordBody};
use pop_controlplane::admin::{AdminClient, DeviceStatus};
use pop_rig::{in_namespace, AddressPlan, NsProcess, Rig, Role};

use super::error::{BenchError, Result};

/// The appliance's device id (its certificate's common name).
pub const DEVICE_ID: &str = "pop-rig-01";
/// The name in the control plane's server certificate, which the agent checks.
pub const SERVER_NAME: &str = "cp.pop.test";
/// The control plane's agent port on the core's control-plane host.
pub const CP_PORT: u16 = 7443;
/// How long `pop-cp serve` may take to print its admin address.
const SERVE_READY_LIMIT: Duration = Duration::from_secs(10);

/// The control plane's agent listener: the core's control-plane host, port [`CP_PORT`].
pub fn control_plane_addr(plan: &AddressPlan) -> SocketAddrV4 {
    SocketAddrV4::new(plan.core_control, CP_PORT)
}

/// Where the agent's files and the sockets it talks to are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPaths {
    /// `agent.toml`.
    pub settings: PathBuf,
    /// The control plane's CA certificate (PEM), the only CA the agent trusts.
    pub ca_file: PathBuf,
    /// The agent's state directory (certificate, spool, config store).
    pub state_dir: PathBuf,
    /// The software keystore's directory.
    pub keys: PathBuf,
    /// `popd relay`'s control socket.
    pub relay_socket: PathBuf,
    /// `popd linkmon`'s status socket.
    pub linkmon_socket: PathBuf,
}

/// The agent's `agent.toml` for the rig (format: `firmware/agent/src/settings.rs`). Timers are
/// short so the demo shows records within a second or two: telemetry every second, a 3 s health
/// window for pushed configs, call records and link events collected every 500 ms.
pub fn agent_settings(plan: &AddressPlan, p: &AgentPaths) -> String {
    format!(
        "device_id = \"{DEVICE_ID}\"\n\
         board = \"virtual-rig\"\n\
         control_plane = \"{cp}\"\n\
         server_name = \"{SERVER_NAME}\"\n\
         ca_file = \"{ca}\"\n\
         state_dir = \"{state}\"\n\
         profile = \"development\"\n\
         relay_socket = \"{relay}\"\n\
         linkmon_socket = \"{linkmon}\"\n\
         # Off: the rig's carriers run BFD to the appliance and linkmon probes the core's echo\n\
         # port past each gateway; the pushed firewall schema cannot describe those probes yet,\n\
         # so applying it would cut the very traffic that decides failovers.\n\
         apply_firewall = false\n\
         \n\
         [keystore]\n\
         backend = \"dev\"\n\
         dir = \"{keys}\"\n\
         \n\
         [timers]\n\
         telemetry_ms = 1000\n\
         health_window_ms = 3000\n\
         backoff_base_ms = 1000\n\
         backoff_cap_ms = 120000\n\
         cdr_poll_ms = 500\n",
        cp = control_plane_addr(plan),
        ca = p.ca_file.display(),
        state = p.state_dir.display(),
        relay = p.relay_socket.display(),
        linkmon = p.linkmon_socket.display(),
        keys = p.keys.display(),
    )
}

/// The appliance configuration the demo pushes (schema: `firmware/config/src/schema.rs`).
/// `no_media_secs` repeats what the relay was started with, so the push changes only the
/// session limit the demo shows.
pub fn config_document(version: u64, max_sessions: u32, control_plane: SocketAddrV4) -> String {
    format!(
        "version = {version}\n\n[relay]\nmax_sessions = {max_sessions}\nno_media_secs = 3600\n\n\
         [firewall]\ncontrol_plane = [\"{control_plane}\"]\n\
         management_networks = [\"192.0.2.128/25\"]\n"
    )
}

/// The address in `pop-cp serve`'s `admin <addr>` line, if the output holds one yet.
pub fn parse_admin_line(output: &str) -> Option<SocketAddr> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("admin "))
        .and_then(|a| a.trim().parse().ok())
}

/// Stored records by kind.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Kinds {
    /// Telemetry.
    pub telemetry: usize,
    /// Events.
    pub events: usize,
    /// Call detail records.
    pub cdrs: usize,
    /// Audit records.
    pub audit: usize,
}

/// Counts `records` by kind.
pub fn kinds(records: &[Record]) -> Kinds {
    let mut k = Kinds::default();
    for r in records {
        match r.body {
            RecordBody::Telemetry(_) => k.telemetry += 1,
            RecordBody::Event(_) => k.events += 1,
            RecordBody::Cdr(_) => k.cdrs += 1,
            RecordBody::Audit(_) => k.audit += 1,
        }
    }
    k
}

/// The first failover (`failover`) or failback event among `records` with an id above `after`.
pub fn switch_event(records: &[Record], failover: bool, after: u64) -> Option<&EventKind> {
    records
        .iter()
        .filter(|r| r.id > after)
        .find_map(|r| match &r.body {
            RecordBody::Event(e) => match (&e.kind, failover) {
                (k @ EventKind::Failover { .. }, true)
                | (k @ EventKind::Failback { .. }, false) => Some(k),
                _ => None,
            },
            _ => None,
        })
}

/// The first call record among `records` with an id above `after`.
pub fn first_cdr(records: &[Record], after: u64) -> Option<&Cdr> {
    records
        .iter()
        .filter(|r| r.id > after)
        .find_map(|r| match &r.body {
            RecordBody::Cdr(c) => Some(c),
            _ => None,
        })
}

/// The highest record id in `records` (0 if none).
pub fn last_id(records: &[Record]) -> u64 {
    records.iter().map(|r| r.id).max().unwrap_or(0)
}

/// One line for a failover or failback event.
pub fn describe_switch(kind: &EventKind) -> String {
    match kind {
        EventKind::Failover {
            from,
            to,
            reason,
            switch_us,
        } => format!("Failover {from} → {to} ({reason}), fault seen → switched {switch_us} µs"),
        EventKind::Failback { from, to } => format!("Failback {from} → {to}"),
        other => format!("{other:?}"),
    }
}

/// The first bytes of a pseudonym, in hex, for display.
pub fn short_hex(bytes: &[u8; 16]) -> String {
    bytes.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// Whether `needle` occurs anywhere in the JSON form of `cdr` (as the control plane stores it).
pub fn cdr_mentions(cdr: &Cdr, needle: &str) -> bool {
    serde_json::to_string(cdr).map_or(true, |s| s.contains(needle))
}

/// The control plane and the agent, running. Dropping it stops both by PID.
#[derive(Debug)]
pub struct ControlPlaneSide {
    // Declared first so it drops first: the agent goes before the server it talks to.
    agent: Option<NsProcess>,
    cp: NsProcess,
    core_ns: String,
    admin_addr: SocketAddr,
    admin: Option<AdminClient>,
    pop_cp: PathBuf,
    popctl: PathBuf,
    popd: PathBuf,
    cp_dir: PathBuf,
    /// The agent's files.
    pub paths: AgentPaths,
}

/// `name` next to `popd`, or an error saying how to build it.
fn sibling(popd: &Path, name: &str, package: &str) -> Result<PathBuf> {
    let p = popd.with_file_name(name);
    if p.is_file() {
        Ok(p)
    } else {
        Err(BenchError::Usage(format!(
            "{} not found (it must sit next to {}): build it with `cargo build --release -p {package}`",
            p.display(),
            popd.display()
        )))
    }
}

/// Fails, saying how to build them, unless `pop-cp` and `popctl` sit next to `popd`: checked
/// before the rig is built so a missing binary costs nothing.
pub fn require_binaries(popd: &Path) -> Result<()> {
    sibling(popd, "pop-cp", "pop-controlplane")?;
    sibling(popd, "popctl", "popctl")?;
    Ok(())
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

impl ControlPlaneSide {
    /// Creates the control plane's CA and server identity (`pop-cp init`, the server
    /// certificate naming [`SERVER_NAME`] and the core's control-plane address) and starts
    /// `pop-cp serve` in the core, listening on [`control_plane_addr`]. Returns once it has
    /// printed its admin address.
    pub fn start(
        rig: &Rig,
        popd: &Path,
        relay_socket: &Path,
        linkmon_socket: &Path,
    ) -> Result<Self> {
        let pop_cp = sibling(popd, "pop-cp", "pop-controlplane")?;
        let popctl = sibling(popd, "popctl", "popctl")?;
        let plan = *rig.plan();
        let run = rig.run_dir();
        let cp_dir = run.join("cp");
        let paths = AgentPaths {
            settings: run.join("agent.toml"),
            ca_file: cp_dir.join("ca.pem"),
            state_dir: run.join("agent"),
            keys: run.join("keys"),
            relay_socket: relay_socket.to_owned(),
            linkmon_socket: linkmon_socket.to_owned(),
        };
        let pop_cp_s = path_str(&pop_cp);
        let cp_dir_s = path_str(&cp_dir);
        let ip = plan.core_control.to_string();
        rig.exec(
            Role::Core,
            &pop_cp_s,
            &[
                "init",
                "--dir",
                &cp_dir_s,
                "--server-name",
                SERVER_NAME,
                "--server-ip",
                &ip,
            ],
        )?;
        let listen = control_plane_addr(&plan).to_string();
        let mut cp = rig.spawn(
            Role::Core,
            &pop_cp_s,
            &[
                "serve",
                "--dir",
                &cp_dir_s,
                "--listen",
                &listen,
                "--admin",
                "127.0.0.1:0",
                "--heartbeat-ms",
                "1000",
            ],
            "pop-cp",
        )?;
        let admin_addr = wait_admin_line(&mut cp)?;
        Ok(ControlPlaneSide {
            agent: None,
            cp,
            core_ns: rig.ns(Role::Core).to_owned(),
            admin_addr,
            admin: None,
            pop_cp,
            popctl,
            popd: popd.to_owned(),
            cp_dir,
            paths,
        })
    }

    /// Writes `agent.toml`, gets a one-time token (`pop-cp token`), enrols the appliance with
    /// it (`popctl enroll` in the appliance: a CSR for a key held in the keystore, answered
    /// with a client certificate over TLS) and starts `popd agent` in the appliance. Returns
    /// the enrollment tool's own report line.
    pub fn enroll_and_start_agent(&mut self, rig: &Rig) -> Result<String> {
        let plan = *rig.plan();
        let settings = agent_settings(&plan, &self.paths);
        std::fs::write(&self.paths.settings, settings)
            .map_err(|e| BenchError::io(format!("writing {}", self.paths.settings.display()), e))?;
        let token = rig
            .exec(
                Role::Core,
                &path_str(&self.pop_cp),
                &[
                    "token",
                    "--dir",
                    &path_str(&self.cp_dir),
                    "--device-id",
                    DEVICE_ID,
                ],
            )?
            .trim()
            .to_owned();
        if token.is_empty() {
            return Err(BenchError::Protocol {
                service: "pop-cp token",
                detail: "printed no token".into(),
            });
        }
        let settings_s = path_str(&self.paths.settings);
        let enrolled = rig.exec(
            Role::App,
            &path_str(&self.popctl),
            &["enroll", "--config", &settings_s, "--token", &token],
        )?;
        // Through `env` to set the log level: `ip netns exec` execs env, which execs popd, so
        // the recorded pid stays the agent's own.
        let popd_s = path_str(&self.popd);
        self.agent = Some(rig.spawn(
            Role::App,
            "/usr/bin/env",
            &["POPD_LOG=info", &popd_s, "agent", "--config", &settings_s],
            "agent",
        )?);
        Ok(enrolled.trim().to_owned())
    }

    /// Runs `f` with an admin client (connected from inside the core namespace, where the admin
    /// listener is on loopback). A failed request drops the connection; the next call makes a
    /// new one.
    fn with_admin<T>(
        &mut self,
        f: impl FnOnce(&mut AdminClient) -> std::result::Result<T, pop_controlplane::admin::AdminError>,
    ) -> Result<T> {
        if self.admin.is_none() {
            let addr = self.admin_addr;
            let client = in_namespace(&self.core_ns, move || AdminClient::connect(addr))?
                .map_err(|e| admin_error(&e))?;
            self.admin = Some(client);
        }
        let Some(client) = self.admin.as_mut() else {
            return Err(BenchError::Usage("admin client missing".into()));
        };
        let r = f(client);
        if r.is_err() {
            self.admin = None;
        }
        r.map_err(|e| admin_error(&e))
    }

    /// The device's state as the control plane sees it.
    pub fn device(&mut self) -> Result<Option<DeviceStatus>> {
        Ok(self
            .with_admin(|a| a.devices())?
            .devices
            .into_iter()
            .find(|d| d.device == DEVICE_ID))
    }

    /// Pushes `document` as `version`; `true` if it went out at once (the device has a session).
    pub fn push_config(&mut self, version: u64, document: &str) -> Result<bool> {
        Ok(self
            .with_admin(|a| a.push_config(DEVICE_ID, version, document))?
            .sent)
    }

    /// The device's result for config `version`, once it has reported one.
    pub fn config_result(&mut self, version: u64) -> Result<Option<pop_agent_proto::ConfigResult>> {
        Ok(self
            .with_admin(|a| a.config_results(DEVICE_ID))?
            .results
            .into_iter()
            .map(|r| r.result)
            .find(|r| r.version == version))
    }

    /// Every record the control plane has stored for the device, in arrival order.
    pub fn records(&mut self) -> Result<Vec<Record>> {
        Ok(self.with_admin(|a| a.records(DEVICE_ID))?.records)
    }

    /// Fails if `pop-cp serve` or `popd agent` has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        let mut procs: Vec<(&'static str, &mut NsProcess)> = vec![("pop-cp serve", &mut self.cp)];
        if let Some(a) = self.agent.as_mut() {
            procs.push(("popd agent", a));
        }
        for (service, p) in procs {
            if let Some(status) = p.try_wait()? {
                return Err(BenchError::Exited {
                    service,
                    status: status.to_string(),
                    log: p.log_path().display().to_string(),
                });
            }
        }
        Ok(())
    }
}

fn admin_error(e: &pop_controlplane::admin::AdminError) -> BenchError {
    BenchError::Protocol {
        service: "pop-cp admin",
        detail: e.to_string(),
    }
}

/// Waits (bounded) for `admin <addr>` in the server's log, failing early if it exits.
fn wait_admin_line(cp: &mut NsProcess) -> Result<SocketAddr> {
    let t0 = Instant::now();
    loop {
        let log = std::fs::read_to_string(cp.log_path()).unwrap_or_default();
        if let Some(addr) = parse_admin_line(&log) {
            return Ok(addr);
        }
        if let Some(status) = cp.try_wait()? {
            return Err(BenchError::Exited {
                service: "pop-cp serve",
                status: status.to_string(),
                log: cp.log_path().display().to_string(),
            });
        }
        if t0.elapsed() >= SERVE_READY_LIMIT {
            return Err(BenchError::Timeout {
                what: "`pop-cp serve` to print its admin address".into(),
                limit_ms: u64::try_from(SERVE_READY_LIMIT.as_millis()).unwrap_or(u64::MAX),
                logs: cp.log_path().display().to_string(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pop_agent_proto::{Audit, Event, SpoolCounters, Telemetry};

    fn paths() -> AgentPaths {
        let d = PathBuf::from("/run/rig");
        AgentPaths {
            settings: d.join("agent.toml"),
            ca_file: d.join("cp/ca.pem"),
            state_dir: d.join("agent"),
            keys: d.join("keys"),
            relay_socket: d.join("relay.sock"),
            linkmon_socket: d.join("linkmon.sock"),
        }
    }

    #[test]
    fn agent_settings_parse_with_the_agents_own_parser() {
        let plan = AddressPlan::STANDARD;
        let file = std::env::temp_dir().join(format!("pop-rig-agent-{}.toml", std::process::id()));
        std::fs::write(&file, agent_settings(&plan, &paths())).unwrap();
        let s = pop_agent::AgentSettings::from_file(&file);
        let _ = std::fs::remove_file(&file);
        let s = s.unwrap();
        assert_eq!(s.device_id, DEVICE_ID);
        assert_eq!(s.server_name, SERVER_NAME);
        assert_eq!(
            s.control_plane,
            SocketAddr::V4(SocketAddrV4::new(plan.core_control, CP_PORT))
        );
        assert_eq!(s.ca_file, PathBuf::from("/run/rig/cp/ca.pem"));
        assert_eq!(
            s.linkmon_socket.as_deref(),
            Some(Path::new("/run/rig/linkmon.sock"))
        );
        assert_eq!(
            s.relay_socket.as_deref(),
            Some(Path::new("/run/rig/relay.sock"))
        );
        assert!(!s.apply_firewall);
        assert_eq!(format!("{:?}", s.profile), "Development");
        assert_eq!(s.timers.telemetry_ms, 1000);
        assert_eq!(s.timers.health_window_ms, 3000);
        assert_eq!(s.timers.backoff_base_ms, 1000);
        assert_eq!(s.timers.backoff_cap_ms, 120_000);
        assert_eq!(s.timers.cdr_poll_ms, 500);
    }

    #[test]
    fn pushed_document_is_a_valid_config_with_the_demo_limit() {
        let cp = control_plane_addr(&AddressPlan::STANDARD);
        let cfg = pop_config::parse(&config_document(1, 500, cp)).unwrap();
        assert_eq!(cfg.version, 1);
        assert_eq!(cfg.relay.max_sessions, 500);
        assert_eq!(cfg.relay.no_media_secs, 3600);
        assert_eq!(cfg.firewall.control_plane, vec![cp.to_string()]);
        assert!(pop_config::parse(
            &config_document(2, 500, cp).replace("version = 2", "version = 0")
        )
        .is_err());
    }

    #[test]
    fn admin_line_is_found_among_log_lines() {
        let log = "listening 198.51.100.11:7443\n2026-01-01T00:00:00Z INFO ready\nadmin 127.0.0.1:40123\n";
        assert_eq!(
            parse_admin_line(log),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(parse_admin_line("listening 198.51.100.11:7443\n"), None);
        assert_eq!(parse_admin_line("admin not-an-address\n"), None);
    }

    fn rec(id: u64, body: RecordBody) -> Record {
        Record {
            id,
            created_unix_ms: 1,
            body,
        }
    }

    fn event(kind: EventKind) -> RecordBody {
        RecordBody::Event(Event {
            at_unix_ms: 1,
            kind,
        })
    }

    fn cdr(packets: u64) -> Cdr {
        Cdr {
            call: [1; 16],
            caller: Some([0xab; 16]),
            callee: Some([0xcd; 16]),
            started_unix_ms: 1,
            ended_unix_ms: 2,
            packets,
            end_reason: "deleted".into(),
        }
    }

    #[test]
    fn records_are_counted_and_picked_by_kind_and_id() {
        let failover = EventKind::Failover {
            from: "primary".into(),
            to: "backup".into(),
            reason: "carrier_down".into(),
            switch_us: 250,
        };
        let failback = EventKind::Failback {
            from: "backup".into(),
            to: "primary".into(),
        };
        let records = vec![
            rec(
                1,
                RecordBody::Telemetry(Telemetry {
                    config_version: 0,
                    uptime_s: 1,
                    services: Vec::new(),
                    uplinks: Vec::new(),
                    relay: None,
                    spool: SpoolCounters {
                        bytes: 0,
                        pending_records: 0,
                        telemetry_dropped: 0,
                        alarm: false,
                    },
                }),
            ),
            rec(2, event(EventKind::ConfigApplied { version: 1 })),
            rec(3, event(failover.clone())),
            rec(
                4,
                RecordBody::Audit(Audit {
                    at_unix_ms: 1,
                    actor: "control-plane".into(),
                    action: "config.apply".into(),
                    detail: String::new(),
                    outcome: "ok".into(),
                }),
            ),
            rec(5, event(failback.clone())),
            rec(6, RecordBody::Cdr(cdr(7))),
            rec(7, RecordBody::Cdr(cdr(9))),
        ];
        assert_eq!(
            kinds(&records),
            Kinds {
                telemetry: 1,
                events: 3,
                cdrs: 2,
                audit: 1
            }
        );
        assert_eq!(switch_event(&records, true, 0), Some(&failover));
        assert_eq!(switch_event(&records, true, 3), None);
        assert_eq!(switch_event(&records, false, 3), Some(&failback));
        assert_eq!(first_cdr(&records, 0).map(|c| c.packets), Some(7));
        assert_eq!(first_cdr(&records, 6).map(|c| c.packets), Some(9));
        assert_eq!(first_cdr(&records, 7), None);
        assert_eq!(last_id(&records), 7);
        assert_eq!(last_id(&[]), 0);
        assert_eq!(
            describe_switch(&failover),
            "Failover primary → backup (carrier_down), fault seen → switched 250 µs"
        );
        assert_eq!(describe_switch(&failback), "Failback backup → primary");
    }

    #[test]
    fn cdr_mentions_finds_text_in_the_stored_form_only() {
        let c = cdr(3);
        assert!(cdr_mentions(&c, "deleted"));
        assert!(!cdr_mentions(&c, "+15551230001"));
        assert_eq!(short_hex(&[0xab; 16]), "abababab");
    }
}
