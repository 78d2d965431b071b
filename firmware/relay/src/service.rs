//! The relay service: NG listeners (UDP, optional TCP) feeding one control loop that owns the
//! sans-I/O core and the data plane handle.
//!
//! Control traffic is light (a few thousand requests per second at most), so one thread runs it
//! all on a current-thread tokio runtime; the data plane workers never wait on it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use pop_dataplane::{Dataplane, DataplaneError};
use pop_relay_core::{CoreError, RelayCore};
use pop_watchdog::sd_notify::{Notifier, NotifyState, SystemdWatchdog};
use pop_watchdog::HeartbeatSender;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tracing::{info, warn};

use crate::config::{ConfigError, RelayConfig};
use crate::control::{self, CallJournal, ControlRequest, LimitsJson, PendingRequest, WallClock};
use crate::media_ops::DataplaneMedia;

/// Why the relay could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The configuration was refused.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data plane could not start (io_uring missing an opcode, thread spawn...).
    #[error("data plane: {0}")]
    Dataplane(#[from] DataplaneError),
    /// The core refused its configuration.
    #[error("relay core: {0}")]
    Core(#[from] CoreError),
    /// A listener could not be opened.
    #[error("cannot listen for NG on {proto} {addr}: {source}")]
    Listen {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// Address from the configuration.
        addr: SocketAddr,
        /// OS error.
        source: std::io::Error,
    },
    /// systemd notification or watchdog heartbeat set-up failed.
    #[error("supervision: {0}")]
    Supervision(#[from] pop_watchdog::WatchdogError),
    /// The control socket could not be opened.
    #[error("cannot open the control socket {}: {source}", path.display())]
    ControlSocket {
        /// Configured path.
        path: std::path::PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The async runtime could not be built.
    #[error("cannot start the control runtime: {0}")]
    Runtime(std::io::Error),
}

/// Largest NG message accepted (a large SDP with many candidates is ~10 KiB; a TCP peer that
/// sends more without completing a message is cut off).
const MAX_NG_MESSAGE: usize = 256 * 1024;

/// How often timeouts are swept at the latest, even if the core names no earlier deadline.
const MAX_SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// How often the relay vouches for itself at the latest (heartbeat to `popd watchdog`).
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// systemd readiness/watchdog and `popd watchdog` heartbeats. Both are sent from the control
/// loop itself, and only while every data-plane worker is alive: a hung loop or a dead worker
/// stops them, and the relay is restarted (systemd) or the board reset (hardware watchdog)
/// rather than left running without forwarding.
struct Supervision {
    notifier: Option<Notifier>,
    heartbeat: Option<HeartbeatSender>,
    interval: Duration,
    /// Heartbeat failures are logged when they start and when they end, not every second.
    heartbeat_failing: bool,
}

impl Supervision {
    fn new(cfg: &RelayConfig) -> Result<Self, ServiceError> {
        let notifier = Notifier::from_env()?;
        let systemd = SystemdWatchdog::from_env().filter(|_| notifier.is_some());
        let heartbeat = match &cfg.supervision.watchdog_socket {
            Some(path) => Some(HeartbeatSender::new(path, "relay")?),
            None => None,
        };
        let interval = systemd.map_or(HEARTBEAT_INTERVAL, |w| w.interval().min(HEARTBEAT_INTERVAL));
        Ok(Self {
            notifier,
            heartbeat,
            interval,
            heartbeat_failing: false,
        })
    }

    fn notify(&self, states: &[NotifyState<'_>]) {
        if let Some(n) = &self.notifier {
            if let Err(e) = n.notify(states) {
                warn!(error = %e, "systemd notification failed");
            }
        }
    }

    /// Called from the control loop: it progressed to here.
    fn vouch(&mut self, media: &DataplaneMedia, sessions: usize) {
        if !media.workers_alive() {
            warn!("a data-plane worker has stopped: withholding watchdog notifications");
            return;
        }
        self.notify(&[NotifyState::Watchdog]);
        if let Some(h) = &self.heartbeat {
            let detail = format!("sessions={sessions}");
            match h.beat(Some(&detail)) {
                Err(e) if !self.heartbeat_failing => {
                    warn!(error = %e, "watchdog heartbeat failed (is popd watchdog running?)");
                    self.heartbeat_failing = true;
                }
                Ok(()) if self.heartbeat_failing => {
                    info!("watchdog heartbeats delivered again");
                    self.heartbeat_failing = false;
                }
                _ => {}
            }
        }
    }
}

/// A request that arrived over TCP, forwarded to the control loop.
struct TcpRequest {
    message: Vec<u8>,
    reply: oneshot::Sender<Option<Vec<u8>>>,
}

/// Runs the relay until SIGINT or SIGTERM. Logs `relay ready` once every listener is open.
pub fn run(cfg: RelayConfig) -> Result<(), ServiceError> {
    cfg.validate()?;
    let dataplane = Dataplane::start(cfg.dataplane_config()?)?;
    let core = RelayCore::new(cfg.core_config(), rand::random())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ServiceError::Runtime)?;
    let media = DataplaneMedia::new(dataplane);
    let media = runtime.block_on(control_loop(&cfg, core, media))?;
    let totals = media.totals();
    info!(?totals, "relay stopped");
    media.shutdown();
    Ok(())
}

async fn control_loop(
    cfg: &RelayConfig,
    mut core: RelayCore,
    mut media: DataplaneMedia,
) -> Result<DataplaneMedia, ServiceError> {
    let udp = UdpSocket::bind(cfg.ng.listen_udp)
        .await
        .map_err(|source| ServiceError::Listen {
            proto: "udp",
            addr: cfg.ng.listen_udp,
            source,
        })?;
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpRequest>(1024);
    if let Some(addr) = cfg.ng.listen_tcp {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServiceError::Listen {
                proto: "tcp",
                addr,
                source,
            })?;
        tokio::spawn(accept_tcp(listener, tcp_tx));
    } else {
        drop(tcp_tx);
    }
    let (control_tx, mut control_rx) = mpsc::channel::<PendingRequest>(64);
    if let Some(path) = &cfg.control.socket {
        control::start(path, control_tx).map_err(|source| ServiceError::ControlSocket {
            path: path.clone(),
            source,
        })?;
    } else {
        drop(control_tx);
    }
    let epoch: u64 = rand::random::<u64>() >> 11; // exact in a JSON number (f64)
    let mut journal = CallJournal::new(WallClock::now());
    let mut supervision = Supervision::new(cfg)?;
    let mut vouch_tick = tokio::time::interval(supervision.interval);
    vouch_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServiceError::Runtime)?;
    info!(
        ng_udp = %cfg.ng.listen_udp,
        ng_tcp = ?cfg.ng.listen_tcp,
        media_address = %cfg.media.address,
        ports = %format!("{}-{}", cfg.media.port_min, cfg.media.port_max),
        backend = %cfg.dataplane.backend,
        workers = cfg.dataplane.workers,
        "relay ready"
    );
    supervision.notify(&[NotifyState::Ready, NotifyState::Status("relay ready")]);

    let mut buf = vec![0u8; 65536];
    let mut next_sweep = Instant::now() + MAX_SWEEP_INTERVAL;
    loop {
        tokio::select! {
            received = udp.recv_from(&mut buf) => {
                match received {
                    Ok((len, from)) => {
                        let now = Instant::now();
                        let request = buf.get(..len).unwrap_or_default();
                        if let Some(reply) = core.handle_datagram(now, &mut media, request) {
                            if let Err(e) = udp.send_to(&reply, from).await {
                                warn!(%from, error = %e, "cannot send NG reply");
                            }
                        }
                    }
                    Err(e) => warn!(error = %e, "NG receive failed"),
                }
            }
            Some(request) = tcp_rx.recv() => {
                let reply = core.handle_datagram(Instant::now(), &mut media, &request.message);
                // The connection may have gone; nothing to do then.
                let _ = request.reply.send(reply);
            }
            () = tokio::time::sleep_until(next_sweep.into()) => {
                let now = Instant::now();
                let next = core.poll_timeouts(now, &mut media);
                let latest = now + MAX_SWEEP_INTERVAL;
                next_sweep = next.map_or(latest, |n| n.clamp(now + Duration::from_millis(10), latest));
            }
            _ = vouch_tick.tick() => supervision.vouch(&media, core.session_count()),
            Some(pending) = control_rx.recv() => {
                journal.extend(core.take_ended_calls());
                let reply = answer_control(pending.request, epoch, &mut core, &media, &mut journal);
                // The client may have gone; nothing to do then.
                let _ = pending.reply.send(reply);
            }
            _ = tokio::signal::ctrl_c() => { info!("SIGINT: stopping"); break; }
            _ = sigterm.recv() => { info!("SIGTERM: stopping"); break; }
        }
        journal.extend(core.take_ended_calls());
    }
    supervision.notify(&[NotifyState::Stopping]);
    Ok(media)
}

/// Answers a control-socket request from the control loop (which owns the core).
fn answer_control(
    request: ControlRequest,
    epoch: u64,
    core: &mut RelayCore,
    media: &DataplaneMedia,
    journal: &mut CallJournal,
) -> serde_json::Value {
    use serde_json::json;
    match request {
        ControlRequest::Status => {
            let c = core.counters();
            let t = media.totals();
            json!({
                "ok": true,
                "epoch": epoch,
                "sessions": core.session_count(),
                "workers_alive": media.workers_alive(),
                "limits": LimitsJson::from_live(&core.limits()),
                "counters": {
                    "sessions_created": c.sessions_created,
                    "sessions_deleted": c.sessions_deleted,
                    "sessions_timed_out_no_media": c.sessions_timed_out_no_media,
                    "sessions_rejected_load_limit": c.sessions_rejected_load_limit,
                    "errors": c.errors_total(),
                    "ports_in_use": c.ports_in_use,
                    "ports_free": c.ports_free,
                    "records_dropped": c.call_records_dropped + journal.dropped,
                },
                "totals": {
                    "forwarded_packets": t.forwarded_packets,
                    "forwarded_bytes": t.forwarded_bytes,
                    "dropped_malformed": t.dropped_malformed,
                    "dropped_spoofed": t.dropped_spoofed,
                    "dropped_no_destination": t.dropped_no_destination,
                },
                "last_record_seq": journal.last_seq(),
            })
        }
        ControlRequest::Apply { limits } => match core.set_limits(&limits.to_live()) {
            Ok(()) => {
                info!(?limits, "relay limits applied from the control socket");
                json!({"ok": true})
            }
            Err(CoreError::InvalidConfig { field, reason }) => {
                json!({"ok": false, "field": field, "reason": reason})
            }
            Err(e) => json!({"ok": false, "reason": e.to_string()}),
        },
        ControlRequest::Records { after } => json!({
            "ok": true,
            "epoch": epoch,
            "records": journal.acknowledge_and_read(after),
        }),
    }
}

async fn accept_tcp(listener: TcpListener, requests: mpsc::Sender<TcpRequest>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_tcp(stream, peer, requests.clone()));
            }
            Err(e) => {
                warn!(error = %e, "NG TCP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Splits `cookie SP bencode-value` messages out of a TCP byte stream. Returns the length of
/// the first complete message, `Ok(None)` if more bytes are needed, or an error for garbage.
pub fn ng_message_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let Some(space) = buf.iter().position(|&b| b == b' ') else {
        return if buf.len() > 256 {
            Err("no cookie delimiter in the first 256 bytes".into())
        } else {
            Ok(None)
        };
    };
    let body = buf.get(space + 1..).unwrap_or_default();
    if body.is_empty() {
        return Ok(None);
    }
    match pop_wire::bencode::decode_prefix(body) {
        Ok((_, used)) => Ok(Some(space + 1 + used)),
        Err(e) if e.is_incomplete() => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

async fn serve_tcp(mut stream: TcpStream, peer: SocketAddr, requests: mpsc::Sender<TcpRequest>) {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        // Answer every complete message already buffered, in order.
        loop {
            let len = match ng_message_len(&buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(reason) => {
                    warn!(%peer, %reason, "NG TCP stream is not NG; closing");
                    return;
                }
            };
            let message: Vec<u8> = buf.drain(..len).collect();
            let (reply_tx, reply_rx) = oneshot::channel();
            if requests
                .send(TcpRequest {
                    message,
                    reply: reply_tx,
                })
                .await
                .is_err()
            {
                return;
            }
            if let Ok(Some(reply)) = reply_rx.await {
                if stream.write_all(&reply).await.is_err() {
                    return;
                }
            }
        }
        if buf.len() > MAX_NG_MESSAGE {
            warn!(%peer, "NG TCP message too large; closing");
            return;
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ng_message_len;

    #[test]
    fn tcp_framing_finds_message_boundaries() {
        let two = b"abc d7:command4:pinge\x78yz d7:command4:pinge";
        let first = ng_message_len(two).unwrap().unwrap();
        assert_eq!(&two[..first], b"abc d7:command4:pinge");
        assert_eq!(ng_message_len(b"abc d7:comma").unwrap(), None);
        assert_eq!(ng_message_len(b"abc").unwrap(), None);
        assert!(ng_message_len(b"abc x").is_err());
        assert!(ng_message_len(&[b'a'; 300]).is_err());
    }
}
