//! `popd agent`: the long-running agent. Opens the keystore, spool and config store, re-asserts
//! the running configuration, then keeps a connection to the control plane (reconnecting with
//! backoff) while reporters fill the spool.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pop_agent_proto::{
    Command, CommandOutcome, ConfigOutcome, ConfigResult, Downlink, EventKind, Hello, RecordBody,
    Uplink, PROTOCOL_VERSION,
};
use pop_config::ConfigStore;
use pop_keystore::KeyStore;
use pop_spool::{Spool, SpoolConfig};
use tokio::sync::mpsc;

use crate::apply::{apply_push, reassert_running};
use crate::backoff::Backoff;
use crate::connection::{connect_tls, variant_name, Connection};
use crate::error::AgentError;
use crate::fsutil::write_atomic;
use crate::identity::{self, unix_now_s};
use crate::pseudonym::Pseudonymiser;
use crate::records::{redact, Outbox};
use crate::reporters;
use crate::services::SystemServices;
use crate::settings::AgentSettings;

/// Firmware version reported in the Hello.
pub const FIRMWARE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Results waiting to be sent (they survive reconnects: the channel belongs to the agent).
#[derive(Debug)]
pub enum Outgoing {
    /// A push's outcome.
    Config(ConfigResult),
    /// A command's outcome.
    Command {
        /// Command id.
        id: u64,
        /// Outcome.
        outcome: CommandOutcome,
    },
}

/// Everything the agent's tasks share.
#[derive(Clone)]
pub struct Shared {
    /// Settings file contents.
    pub settings: Arc<AgentSettings>,
    /// Key storage.
    pub keystore: Arc<dyn KeyStore>,
    /// The spool.
    pub outbox: Outbox,
    /// Desired/reported configuration.
    pub store: Arc<Mutex<ConfigStore>>,
    /// Services to configure.
    pub services: Arc<Mutex<SystemServices>>,
    /// Keyed pseudonyms.
    pub pseudonyms: Arc<Pseudonymiser>,
    /// Results to send.
    pub results: mpsc::UnboundedSender<Outgoing>,
    /// The running configuration version, readable without waiting for an apply in progress
    /// (which holds the store for its whole health window).
    pub running_version: Arc<std::sync::atomic::AtomicU64>,
    /// The push being applied (one at a time) and the next one.
    pub applying: Arc<Mutex<Applying>>,
    /// Start time (uptime in telemetry).
    pub started: Instant,
}

impl Shared {
    /// The running configuration version.
    pub fn running_version(&self) -> u64 {
        self.running_version
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("device_id", &self.settings.device_id)
            .field("keystore", &self.keystore.backend_name())
            .finish_non_exhaustive()
    }
}

/// Opens the keystore the settings name.
pub fn open_keystore(settings: &AgentSettings) -> Result<Arc<dyn KeyStore>, AgentError> {
    Ok(pop_keystore::open(&settings.keystore, settings.profile)?)
}

/// The pseudonym key: 32 random bytes sealed by the keystore in the state directory, created
/// on first use.
pub fn pseudonym_key(
    settings: &AgentSettings,
    keystore: &Arc<dyn KeyStore>,
) -> Result<Pseudonymiser, AgentError> {
    let path = settings.state_dir.join("pseudonym.key");
    match std::fs::read(&path) {
        Ok(bytes) => {
            let sealed = pop_keystore::SealedSecret::from_bytes(&bytes)?;
            let secret = keystore.unseal(&sealed)?;
            Ok(Pseudonymiser::new(secret.expose()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut secret = zeroize::Zeroizing::new([0u8; 32]);
            keystore.random(secret.as_mut())?;
            let sealed = keystore.seal(&pop_keystore::SealPolicy::WrapKey, secret.as_ref())?;
            write_atomic(&path, &sealed.to_bytes()?)?;
            Ok(Pseudonymiser::new(secret.as_ref()))
        }
        Err(e) => Err(AgentError::io(&path, e)),
    }
}

/// Runs the agent until SIGTERM/SIGINT.
pub fn run(settings: AgentSettings) -> Result<(), AgentError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| AgentError::io(std::path::Path::new("tokio runtime"), e))?;
    runtime.block_on(run_async(settings))
}

async fn run_async(settings: AgentSettings) -> Result<(), AgentError> {
    std::fs::create_dir_all(&settings.state_dir)
        .map_err(|e| AgentError::io(&settings.state_dir, e))?;
    let keystore = open_keystore(&settings)?;
    let spool_cfg = SpoolConfig {
        max_bytes: settings.spool.max_bytes,
        segment_bytes: settings.spool.segment_bytes,
        ..SpoolConfig::new(settings.state_dir.join("spool"))
    };
    let (spool, recovery) = Spool::open(spool_cfg, keystore.clone())?;
    tracing::info!(?recovery, "spool opened");
    let outbox = Outbox::new(spool);
    let store_dir = settings.state_dir.join("config");
    let (store, interrupted) = ConfigStore::open(&store_dir).map_err(|e| AgentError::Settings {
        field: "state_dir/config".into(),
        reason: e.to_string(),
    })?;
    let services = SystemServices {
        relay_socket: settings.relay_socket.clone(),
        linkmon_socket: settings.linkmon_socket.clone(),
        firewall: settings
            .apply_firewall
            .then(|| match &settings.firewall_netns {
                Some(ns) => pop_firewall::Nft::in_netns(ns.clone()),
                None => pop_firewall::Nft::host(),
            }),
        control_plane: settings.control_plane,
    };
    let pseudonyms = Arc::new(pseudonym_key(&settings, &keystore)?);
    let running_version = Arc::new(std::sync::atomic::AtomicU64::new(store.running_version()));
    let (results_tx, mut results_rx) = mpsc::unbounded_channel();
    let shared = Shared {
        settings: Arc::new(settings),
        keystore,
        outbox,
        store: Arc::new(Mutex::new(store)),
        services: Arc::new(Mutex::new(services)),
        pseudonyms,
        results: results_tx,
        running_version,
        applying: Arc::new(Mutex::new(Applying::default())),
        started: Instant::now(),
    };
    startup_records(&shared, interrupted);
    reporters::spawn(shared.clone());

    let mut backoff = Backoff::new(
        AgentSettings::ms(shared.settings.timers.backoff_base_ms),
        AgentSettings::ms(shared.settings.timers.backoff_cap_ms),
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| AgentError::io(std::path::Path::new("SIGTERM handler"), e))?;
    loop {
        let began = Instant::now();
        let outcome = tokio::select! {
            r = session(&shared, &mut results_rx) => r,
            _ = sigterm.recv() => { tracing::info!("SIGTERM: agent stopping"); return Ok(()); }
            _ = tokio::signal::ctrl_c() => { tracing::info!("SIGINT: agent stopping"); return Ok(()); }
        };
        let lasted = began.elapsed();
        backoff.session_ended(lasted);
        let delay = backoff.next_delay(rand::random::<f64>());
        match outcome {
            Ok(()) => tracing::info!(?delay, "control plane session ended; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, ?delay, failures = backoff.failures(), "control plane session failed; reconnecting")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = sigterm.recv() => { tracing::info!("SIGTERM: agent stopping"); return Ok(()); }
        }
    }
}

/// Records made once at start: agent started, a pending enrollment audit, an interrupted trial.
fn startup_records(shared: &Shared, interrupted: Option<pop_config::InterruptedTrial>) {
    let watchdog_reset = std::fs::read_to_string("/sys/class/watchdog/watchdog0/bootstatus")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .map(|flags| flags & 0x20 != 0); // WDIOF_CARDRESET: the last reboot was the watchdog's
    shared.outbox.event(EventKind::AgentStarted {
        firmware_version: FIRMWARE_VERSION.into(),
        last_reset_watchdog: watchdog_reset,
    });
    // `popctl enroll` leaves its audit record here (it must not open the spool the agent owns).
    let pending = shared.settings.state_dir.join("enrollment-audit.json");
    if let Ok(text) = std::fs::read_to_string(&pending) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
            shared.outbox.audit(
                v["actor"].as_str().unwrap_or("technician"),
                "enroll",
                v["detail"].as_str().unwrap_or(""),
                v["outcome"].as_str().unwrap_or(""),
            );
        }
        let _ = std::fs::remove_file(&pending);
    }
    let store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
    let mut services = shared
        .services
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(t) = interrupted {
        shared.outbox.event(EventKind::ConfigRolledBack {
            version: t.version,
            restored: store.running_version(),
            reason: "the agent stopped during the health window".into(),
        });
        shared.outbox.audit(
            "agent",
            "config-rollback",
            &format!("version {} interrupted", t.version),
            "rolled back",
        );
    }
    if let Some(err) = reassert_running(&store, &mut *services) {
        tracing::warn!(error = %err, "re-applying the running configuration failed");
    }
}

/// One session: connect, greet, serve until the connection breaks.
async fn session(
    shared: &Shared,
    results: &mut mpsc::UnboundedReceiver<Outgoing>,
) -> Result<(), AgentError> {
    let settings = &shared.settings;
    let chain = identity::load_chain(settings)?
        .ok_or_else(|| AgentError::NotEnrolled(settings.cert_path().display().to_string()))?;
    let label = identity::current_label(settings)?;
    let (not_before, not_after) = chain
        .first()
        .map(|c| identity::validity(c))
        .transpose()?
        .unwrap_or((0, 0));
    let ca = identity::load_ca(&settings.ca_file)?;
    let crl = std::fs::read(settings.crl_path()).ok();
    let client = identity::client_cert(shared.keystore.clone(), &label, chain)?;
    let config = identity::client_config(&ca, crl, Some(client))?;
    let tls = connect_tls(
        settings.control_plane,
        identity::server_name(&settings.server_name)?,
        config,
    )
    .await?;
    let mut conn = Connection::new(tls);
    let (config_version, last_id) = {
        let v = shared.running_version();
        (v, shared.outbox.with(|s| s.stats().last_id))
    };
    let acked = conn
        .greet(Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: settings.device_id.clone(),
            firmware_version: FIRMWARE_VERSION.into(),
            board: settings.board.clone(),
            capabilities: vec![
                "relay".into(),
                "config".into(),
                "firewall".into(),
                "spool".into(),
            ],
            config_version,
            last_record_id: last_id,
        })
        .await?;
    conn.acknowledged(&shared.outbox, acked)?;
    tracing::info!(acked_up_to = acked, "connected to the control plane");

    let renew_at = identity::renew_at(not_before, not_after);
    let mut renewal: Option<Renewal> = None;
    let mut poll = tokio::time::interval(Duration::from_millis(200));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let appended = shared.outbox.appended.clone();
    loop {
        conn.send_pending(&shared.outbox).await?;
        if renewal.is_none() && unix_now_s() >= renew_at && not_after > 0 {
            renewal = Some(start_renewal(shared, &mut conn, None).await?);
        }
        tokio::select! {
            msg = conn.recv() => {
                match msg? {
                    Downlink::Heartbeat { seq } => conn.send(&Uplink::HeartbeatAck { seq }).await?,
                    Downlink::HeartbeatAck { .. } => {}
                    Downlink::Ack { up_to } => conn.acknowledged(&shared.outbox, up_to)?,
                    Downlink::ConfigPush { version, document } => start_apply(shared, version, document),
                    Downlink::Command { id, command } => {
                        if matches!(command, Command::RotateCertificate) {
                            shared.outbox.audit("control-plane", "rotate-certificate", &format!("command {id}"), "started");
                            renewal = Some(start_renewal(shared, &mut conn, Some(id)).await?);
                        } else {
                            start_command(shared, id, command);
                        }
                    }
                    Downlink::Certificate { chain_der, not_after_unix_s } => {
                        let Some(r) = renewal.take() else {
                            return Err(AgentError::Protocol("a certificate nobody asked for".into()));
                        };
                        finish_renewal(shared, &r, &chain_der, not_after_unix_s)?;
                        if let Some(id) = r.command_id {
                            conn.send(&Uplink::CommandResult { id, outcome: CommandOutcome::Rotated { not_after_unix_s } }).await?;
                        }
                        // Reconnect at once with the new identity: proves it works, and a
                        // rotation triggered by a suspected key compromise takes effect now.
                        conn.close().await;
                        return Ok(());
                    }
                    Downlink::Crl { der } => {
                        write_atomic(&settings.crl_path(), &der)?;
                    }
                    Downlink::Refused { reason } => return Err(AgentError::Refused(reason)),
                    other @ Downlink::Welcome { .. } => {
                        return Err(AgentError::Protocol(format!("unexpected {}", variant_name(&other))));
                    }
                }
            }
            Some(out) = results.recv() => {
                let msg = match out {
                    Outgoing::Config(r) => Uplink::ConfigResult(r),
                    Outgoing::Command { id, outcome } => Uplink::CommandResult { id, outcome },
                };
                conn.send(&msg).await?;
            }
            () = appended.notified() => {}
            _ = poll.tick() => {
                conn.flush_acks(&shared.outbox)?;
                conn.tick().await?;
            }
        }
    }
}

/// A renewal in flight: the new key's label, and the command that asked for it, if any.
#[derive(Debug)]
struct Renewal {
    label: String,
    command_id: Option<u64>,
}

async fn start_renewal<S>(
    shared: &Shared,
    conn: &mut Connection<S>,
    command_id: Option<u64>,
) -> Result<Renewal, AgentError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let current = identity::current_label(&shared.settings)?;
    let label = identity::next_label(&current);
    let csr = identity::csr(shared.keystore.clone(), &label, &shared.settings.device_id)?;
    conn.send(&Uplink::Renew { csr_der: csr }).await?;
    tracing::info!(%label, "certificate renewal requested");
    Ok(Renewal { label, command_id })
}

fn finish_renewal(
    shared: &Shared,
    r: &Renewal,
    chain: &[Vec<u8>],
    not_after: u64,
) -> Result<(), AgentError> {
    identity::store_identity(&shared.settings, chain, &r.label)?;
    shared.outbox.event(EventKind::CertificateRenewed {
        not_after_unix_s: not_after,
    });
    shared.outbox.audit(
        if r.command_id.is_some() {
            "control-plane"
        } else {
            "agent"
        },
        "certificate-renewed",
        &format!("key {} valid until {not_after}", r.label),
        "ok",
    );
    Ok(())
}

/// Starts applying a push, or queues it behind the one being applied (latest wins: desired
/// state, not a list of changes). The same version delivered again is ignored: its result is
/// on its way.
fn start_apply(shared: &Shared, version: u64, document: String) {
    let mut applying = shared
        .applying
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match applying.current {
        Some(v) if v == version => {}
        Some(_) => {
            if applying.queued.as_ref().is_none_or(|(q, _)| *q <= version) {
                applying.queued = Some((version, document));
            }
        }
        None => {
            applying.current = Some(version);
            drop(applying);
            spawn_apply(shared, version, document);
        }
    }
}

/// The push being applied and the one waiting for it.
#[derive(Debug, Default)]
pub struct Applying {
    current: Option<u64>,
    queued: Option<(u64, String)>,
}

fn spawn_apply(shared: &Shared, version: u64, document: String) {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let window = AgentSettings::ms(shared.settings.timers.health_window_ms);
        let report = {
            let mut store = shared.store.lock().unwrap_or_else(PoisonError::into_inner);
            let mut services = shared
                .services
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let report = apply_push(&mut store, &mut *services, version, &document, window);
            shared
                .running_version
                .store(store.running_version(), std::sync::atomic::Ordering::SeqCst);
            report
        };
        let r = &report.result;
        let (event, outcome) = match &r.outcome {
            ConfigOutcome::Applied => (EventKind::ConfigApplied { version }, "applied".to_owned()),
            ConfigOutcome::Refused { field, reason } => (
                EventKind::ConfigRefused {
                    version,
                    field: field.clone(),
                    reason: reason.clone(),
                },
                format!("refused: {field}: {reason}"),
            ),
            ConfigOutcome::RolledBack { reason } => (
                EventKind::ConfigRolledBack {
                    version,
                    restored: r.running_version,
                    reason: reason.clone(),
                },
                format!("rolled back: {reason}"),
            ),
        };
        tracing::info!(version, running = r.running_version, %outcome, "configuration push handled");
        shared.outbox.event(event);
        shared.outbox.audit(
            "control-plane",
            "config-push",
            &format!("version {version} (running {})", report.previous_version),
            &outcome,
        );
        let _ = shared.results.send(Outgoing::Config(report.result));
        let next = {
            let mut applying = shared
                .applying
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let next = applying.queued.take();
            applying.current = next.as_ref().map(|(v, _)| *v);
            next
        };
        if let Some((v, doc)) = next {
            spawn_apply(&shared, v, doc);
        }
    });
}

fn start_command(shared: &Shared, id: u64, command: Command) {
    let shared = shared.clone();
    tokio::task::spawn_blocking(move || {
        let (action, detail, outcome) = match command {
            Command::EraseSubject { number } => {
                let subject = shared.pseudonyms.party(&number);
                let erased = shared.outbox.with(|s| {
                    s.erase_where(&mut |r| {
                        if r.class != pop_agent_proto::RecordClass::Cdr {
                            return false;
                        }
                        match postcard::from_bytes::<RecordBody>(&r.body) {
                            Ok(RecordBody::Cdr(c)) => {
                                c.caller == Some(subject) || c.callee == Some(subject)
                            }
                            _ => false,
                        }
                    })
                });
                let short: String = subject.iter().take(4).map(|b| format!("{b:02x}")).collect();
                let outcome = match erased {
                    Ok(n) => CommandOutcome::Erased {
                        cdrs: n as u64,
                        other: 0,
                    },
                    Err(e) => CommandOutcome::Failed {
                        reason: e.to_string(),
                    },
                };
                (
                    "erase-subject",
                    format!("subject pseudonym {short}…"),
                    outcome,
                )
            }
            Command::Diagnostics => (
                "diagnostics",
                String::new(),
                CommandOutcome::Diagnostics {
                    bundle: diagnostics(&shared),
                },
            ),
            Command::RotateCertificate => (
                "rotate-certificate",
                String::new(),
                CommandOutcome::Failed {
                    reason: "rotation runs on the connection".into(),
                },
            ),
        };
        let summary = match &outcome {
            CommandOutcome::Erased { cdrs, other } => format!("erased {cdrs} CDRs, {other} other"),
            CommandOutcome::Diagnostics { bundle } => format!("{} bytes", bundle.len()),
            CommandOutcome::Rotated { .. } => "rotated".into(),
            CommandOutcome::Failed { reason } => format!("failed: {reason}"),
        };
        shared.outbox.audit(
            "control-plane",
            action,
            &format!("command {id} {detail}"),
            &summary,
        );
        let _ = shared.results.send(Outgoing::Command { id, outcome });
    });
}

/// A diagnostics bundle: versions, configuration, spool, service status; personal data
/// redacted (see [`redact`]).
fn diagnostics(shared: &Shared) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "popd agent {FIRMWARE_VERSION}\ndevice {}\n",
        shared.settings.device_id
    ));
    out.push_str(&format!(
        "uptime_s {}\n",
        shared.started.elapsed().as_secs()
    ));
    let stats = shared.outbox.with(|s| s.stats());
    out.push_str(&format!("spool {stats:?}\n"));
    match shared.store.try_lock() {
        Ok(store) => {
            if let Some(running) = store.running() {
                out.push_str("--- running configuration\n");
                out.push_str(&running.to_toml());
            }
        }
        Err(_) => out.push_str("--- running configuration: a push is being applied\n"),
    }
    if let Some(p) = &shared.settings.relay_socket {
        let status = crate::services::relay_query(p, &serde_json::json!({"op": "status"}))
            .map_or_else(|e| format!("unavailable: {e}"), |v| v.to_string());
        out.push_str(&format!("--- relay status\n{status}\n"));
    }
    if let Some(p) = &shared.settings.linkmon_socket {
        let status = crate::services::linkmon_status(p)
            .map_or_else(|e| format!("unavailable: {e}"), |v| v.to_string());
        out.push_str(&format!("--- linkmon status\n{status}\n"));
    }
    redact(&out)
}
