//! The TLS server (tokio + rustls, TLS 1.3 only), the connection registry, CRL reloading and
//! the admin listener.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use pop_agent_proto::{
    decode_body, encode_frame, Downlink, EnrollRequest, FrameReader, Hello, RecordBody, Uplink,
};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::admin::{
    AdminRequest, AuditReply, CertificatesReply, CommandReply, CommandResultsReply,
    ConfigResultsReply, DeviceStatus, DevicesReply, PushReply, RecordsReply, ReloadReply,
    RevokeReply, StatsReply, WaitReply, MAX_REQUEST_LINE,
};
use crate::pki::{self, Ca, Layout, RevokeTarget};
use crate::session::{self, Action, Opening, Peer, Session};
use crate::store::{AuditEntry, Store, TokenRefusal};
use crate::util::{now_unix_ms, validate_device_id};

/// TLS handshake deadline; also the deadline for the first frame.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A write that does not complete in this time means the peer stopped reading: drop it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames queued for one connection before it is considered stuck and dropped.
const CONN_QUEUE: usize = 256;

/// Options of `pop-cp serve`.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// State directory (from `pop-cp init`).
    pub dir: PathBuf,
    /// Agent listener.
    pub listen: SocketAddr,
    /// Admin listener; must be a loopback address.
    pub admin: SocketAddr,
    /// Heartbeat interval announced in Welcome.
    pub heartbeat: Duration,
    /// Validity of issued device certificates, days.
    pub cert_days: u32,
}

/// Server start-up errors.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `--admin` is not loopback.
    #[error("--admin {0}: the admin interface has no authentication and must listen on a loopback address")]
    AdminNotLoopback(SocketAddr),
    /// Binding failed.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// CA, key or CRL trouble.
    #[error(transparent)]
    Pki(#[from] pki::PkiError),
    /// Store trouble.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// TLS configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
}

enum Ctl {
    Send(Downlink),
    Close(String),
}

#[derive(Debug)]
struct ConnEntry {
    conn_id: u64,
    serial: String,
    peer: SocketAddr,
    tx: mpsc::Sender<Ctl>,
}

impl std::fmt::Debug for Ctl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ctl::Send(_) => f.write_str("Send"),
            Ctl::Close(r) => write!(f, "Close({r})"),
        }
    }
}

#[derive(Debug, Default)]
struct Counters {
    connections_total: AtomicU64,
    handshake_failures: AtomicU64,
    enrollments_ok: AtomicU64,
    enrollments_refused: AtomicU64,
    records_received: AtomicU64,
    records_duplicate: AtomicU64,
}

/// Records per second over a sliding window of 10 one-second buckets.
#[derive(Debug)]
struct RateWindow {
    start: Instant,
    buckets: VecDeque<(u64, u64)>,
}

impl RateWindow {
    const SPAN_S: u64 = 10;
    fn add(&mut self, now: Instant) {
        let sec = now.duration_since(self.start).as_secs();
        match self.buckets.back_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.buckets.push_back((sec, 1)),
        }
        self.trim(sec);
    }
    fn trim(&mut self, sec: u64) {
        while self
            .buckets
            .front()
            .is_some_and(|(s, _)| *s + Self::SPAN_S <= sec)
        {
            self.buckets.pop_front();
        }
    }
    fn rate(&mut self, now: Instant) -> f64 {
        let sec = now.duration_since(self.start).as_secs();
        self.trim(sec);
        let total: u64 = self.buckets.iter().map(|(_, n)| n).sum();
        // Before 10 s of uptime, divide by the time actually covered.
        let span = (now.duration_since(self.start).as_secs_f64()).clamp(1.0, Self::SPAN_S as f64);
        total as f64 / span
    }
}

struct Shared {
    dir: PathBuf,
    opts: ServeOptions,
    ca: Ca,
    store: Store,
    tls: RwLock<Arc<ServerConfig>>,
    crl: RwLock<Vec<u8>>,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    hub: Mutex<HashMap<String, ConnEntry>>,
    hub_changed: Notify,
    next_conn_id: AtomicU64,
    counters: Counters,
    rate: Mutex<RateWindow>,
    started: Instant,
    /// Serialises CRL reloads (the watcher and admin `revoke`/`reload`).
    crl_reload: tokio::sync::Mutex<Option<SystemTime>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("dir", &self.dir).finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Poisoning only follows a panic elsewhere; the maps stay usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn build_tls(
    ca_der: &CertificateDer<'static>,
    crl_der: &[u8],
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, ServeError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(ca_der.clone())
        .map_err(|e| ServeError::Tls(format!("ca.pem as trust anchor: {e}")))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .with_crls(vec![CertificateRevocationListDer::from(crl_der.to_vec())])
        .allow_unauthenticated()
        .build()
        .map_err(|e| ServeError::Tls(format!("client verifier: {e}")))?;
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ServeError::Tls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.to_vec(), key.clone_key())
        .map_err(|e| ServeError::Tls(format!("server.pem/server.key: {e}")))?;
    Ok(Arc::new(cfg))
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    /// The agent listener's bound address.
    pub listen_addr: SocketAddr,
    /// The admin listener's bound address.
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ServerHandle {
    /// Stops accepting and drops every connection.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Loads the state directory, binds both listeners and starts serving. Returns once bound.
pub async fn serve(opts: ServeOptions) -> Result<ServerHandle, ServeError> {
    if !opts.admin.ip().is_loopback() {
        return Err(ServeError::AdminNotLoopback(opts.admin));
    }
    let l = Layout::new(&opts.dir);
    let ca = Ca::load(&opts.dir)?;
    // Re-sign at start: picks up a revocation whose CRL write was interrupted and renews
    // `nextUpdate`.
    let crl = ca.refresh_crl(&opts.dir)?;
    let chain: Vec<CertificateDer<'static>> = pki::read_pem_certs(&l.server_pem())?;
    let key = PrivateKeyDer::from_pem_file(l.server_key())
        .map_err(|e| ServeError::Tls(format!("{}: {e}", l.server_key().display())))?;
    let tls = build_tls(ca.der(), &crl, &chain, &key)?;
    let store = Store::open(&l.store())?;

    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.listen,
            source,
        })?;
    let admin = TcpListener::bind(opts.admin)
        .await
        .map_err(|source| ServeError::Bind {
            addr: opts.admin,
            source,
        })?;
    let listen_addr = listener.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| ServeError::Bind {
        addr: opts.admin,
        source,
    })?;
    let crl_mtime = std::fs::metadata(l.crl()).and_then(|m| m.modified()).ok();

    let shared = Arc::new(Shared {
        dir: opts.dir.clone(),
        opts,
        ca,
        store,
        tls: RwLock::new(tls),
        crl: RwLock::new(crl),
        server_chain: chain,
        server_key: key,
        hub: Mutex::new(HashMap::new()),
        hub_changed: Notify::new(),
        next_conn_id: AtomicU64::new(1),
        counters: Counters::default(),
        rate: Mutex::new(RateWindow {
            start: Instant::now(),
            buckets: VecDeque::new(),
        }),
        started: Instant::now(),
        crl_reload: tokio::sync::Mutex::new(crl_mtime),
    });
    let (shutdown, rx) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(accept_loop(shared.clone(), listener, rx.clone())),
        tokio::spawn(admin_loop(shared.clone(), admin, rx.clone())),
        tokio::spawn(crl_watch(shared, rx)),
    ];
    Ok(ServerHandle {
        listen_addr,
        admin_addr,
        shutdown,
        tasks,
    })
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    shared.counters.connections_total.fetch_add(1, Ordering::Relaxed);
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(connection(shared.clone(), tcp, peer, stop.clone()));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Runs blocking store/CA work off the async workers.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> T + Send + 'static,
) -> Result<T, String> {
    let s = shared.clone();
    tokio::task::spawn_blocking(move || f(&s))
        .await
        .map_err(|e| format!("worker task failed: {e}"))
}

struct Conn {
    tls: TlsStream<TcpStream>,
    reader: FrameReader,
    buf: Vec<u8>,
}

impl Conn {
    async fn send(&mut self, msg: &Downlink) -> Result<(), String> {
        let frame = encode_frame(msg).map_err(|e| format!("encoding: {e}"))?;
        match tokio::time::timeout(WRITE_TIMEOUT, async {
            self.tls.write_all(&frame).await?;
            self.tls.flush().await
        })
        .await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("write: {e}")),
            Err(_) => Err("write timed out (peer not reading)".into()),
        }
    }

    /// Next frame, or None at EOF. Cancel-safe: bytes read are kept in the FrameReader.
    async fn recv(&mut self) -> Result<Option<Uplink>, String> {
        loop {
            if let Some(body) = self.reader.next_frame().map_err(|e| e.to_string())? {
                return decode_body(&body).map(Some).map_err(|e| e.to_string());
            }
            let n = self
                .tls
                .read(&mut self.buf)
                .await
                .map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Ok(None);
            }
            self.reader.push(&self.buf[..n]);
        }
    }

    async fn refuse(&mut self, reason: &str) {
        let _ = self
            .send(&Downlink::Refused {
                reason: reason.to_string(),
            })
            .await;
        let _ = tokio::time::timeout(WRITE_TIMEOUT, self.tls.shutdown()).await;
    }
}

async fn connection(
    shared: Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    stop: watch::Receiver<bool>,
) {
    let cfg = lock_read(&shared.tls);
    let acceptor = TlsAcceptor::from(cfg);
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            shared
                .counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %addr, error = %e, "TLS handshake refused");
            return;
        }
        Err(_) => {
            shared
                .counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %addr, "TLS handshake timed out");
            return;
        }
    };
    let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        None => Peer::Anonymous,
        Some(leaf) => match pki::leaf_info(leaf) {
            Ok(info) => Peer::Device {
                common_name: info.common_name,
                serial: info.serial,
            },
            Err(e) => {
                tracing::warn!(peer = %addr, error = %e, "verified client certificate does not parse");
                return;
            }
        },
    };
    let mut conn = Conn {
        tls,
        reader: FrameReader::new(),
        buf: vec![0u8; 16 * 1024],
    };
    let first = match tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.recv()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            conn.refuse(&format!("bad first frame: {e}")).await;
            return;
        }
        Err(_) => {
            conn.refuse("no first frame within 10 s").await;
            return;
        }
    };
    match session::open(&peer, first) {
        Err(reason) => {
            tracing::info!(peer = %addr, ?peer, %reason, "refused");
            conn.refuse(&reason).await;
        }
        Ok(Opening::Enroll(req)) => enroll(&shared, conn, addr, req).await,
        Ok(Opening::Session(hello)) => {
            let serial = match &peer {
                Peer::Device { serial, .. } => serial.clone(),
                Peer::Anonymous => String::new(),
            };
            run_session(&shared, conn, addr, hello, serial, stop).await;
        }
    }
}

fn lock_read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

async fn enroll(shared: &Arc<Shared>, mut conn: Conn, addr: SocketAddr, req: EnrollRequest) {
    let device = req.device_id.clone();
    let days = i64::from(shared.opts.cert_days);
    let result = blocking(shared, move |s| -> Result<pki::IssuedCert, String> {
        validate_device_id(&req.device_id).map_err(|e| format!("device_id: {e}"))?;
        let issued = s.store.consume_token(&req.token, &req.device_id, || {
            match pki::csr_common_name(&req.csr_der).map_err(|e| e.to_string())? {
                Some(cn) if cn == req.device_id => {}
                Some(cn) => {
                    return Err(format!(
                        "the CSR's common name {cn:?} is not the device id {:?}",
                        req.device_id
                    ))
                }
                None => return Err("the CSR has no common name".into()),
            }
            let cert =
                s.ca.issue_from_csr(&req.csr_der, &req.device_id, days * 86_400)
                    .map_err(|e| e.to_string())?;
            // In the registry before the token is marked used and before the device sees
            // the certificate: every certificate out there is revocable by device id.
            pki::record_issued(&s.dir, &cert).map_err(|e| e.to_string())?;
            Ok(cert)
        });
        issued.map_err(|e: TokenRefusal| e.to_string())
    })
    .await
    .and_then(|r| r);
    let outcome = match &result {
        Ok(c) => format!("ok serial {}", c.serial),
        Err(e) => e.clone(),
    };
    let audit = AuditEntry {
        at_unix_ms: now_unix_ms(),
        action: "enroll".into(),
        device_id: device.clone(),
        actor: addr.to_string(),
        outcome,
    };
    let _ = blocking(shared, move |s| {
        if let Err(e) = s.store.audit(&audit) {
            tracing::error!(error = %e, "audit log write failed");
        }
    })
    .await;
    match result {
        Ok(cert) => {
            shared
                .counters
                .enrollments_ok
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %addr, device = %device, serial = %cert.serial, "enrolled");
            let chain = vec![cert.der.clone(), shared.ca.der().to_vec()];
            let crl = lock_read(&shared.crl);
            if conn
                .send(&Downlink::Certificate {
                    chain_der: chain,
                    not_after_unix_s: cert.not_after_unix_s,
                })
                .await
                .is_ok()
            {
                let _ = conn.send(&Downlink::Crl { der: crl }).await;
            }
            let _ = tokio::time::timeout(WRITE_TIMEOUT, conn.tls.shutdown()).await;
        }
        Err(reason) => {
            shared
                .counters
                .enrollments_refused
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(peer = %addr, device = %device, %reason, "enrollment refused");
            conn.refuse(&reason).await;
        }
    }
}

fn register(
    shared: &Shared,
    device: &str,
    serial: &str,
    peer: SocketAddr,
) -> (u64, mpsc::Receiver<Ctl>) {
    let (tx, rx) = mpsc::channel(CONN_QUEUE);
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    let old = lock(&shared.hub).insert(
        device.to_string(),
        ConnEntry {
            conn_id,
            serial: serial.to_string(),
            peer,
            tx,
        },
    );
    if let Some(old) = old {
        // A reconnect before we noticed the old connection died: the new one wins.
        let _ = old
            .tx
            .try_send(Ctl::Close("replaced by a newer connection".into()));
    }
    shared.hub_changed.notify_waiters();
    (conn_id, rx)
}

fn unregister(shared: &Shared, device: &str, conn_id: u64) {
    let mut hub = lock(&shared.hub);
    if hub.get(device).is_some_and(|e| e.conn_id == conn_id) {
        hub.remove(device);
    }
    drop(hub);
    shared.hub_changed.notify_waiters();
}

async fn run_session(
    shared: &Arc<Shared>,
    mut conn: Conn,
    addr: SocketAddr,
    hello: Hello,
    serial: String,
    mut stop: watch::Receiver<bool>,
) {
    let device = hello.device_id.clone();
    let (conn_id, mut rx) = register(shared, &device, &serial, addr);
    let reason = session_loop(shared, &mut conn, &mut rx, &mut stop, hello, &serial).await;
    unregister(shared, &device, conn_id);
    tracing::info!(peer = %addr, device = %device, %reason, "session ended");
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.tls.shutdown()).await;
}

async fn session_loop(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    rx: &mut mpsc::Receiver<Ctl>,
    stop: &mut watch::Receiver<bool>,
    hello: Hello,
    serial: &str,
) -> String {
    let device = hello.device_id.clone();
    let mut session = Session::new(&device, shared.opts.heartbeat, Instant::now());
    let serial_owned = serial.to_string();
    let hello_c = hello.clone();
    // Registered before reading the pending queue, so a push made meanwhile is not lost
    // (it may arrive twice; the agent refuses a version it already runs).
    let setup = blocking(shared, move |s| {
        let d = &hello_c.device_id;
        s.store.update_device_info(d, |i| {
            i.hello = Some(hello_c.clone());
            i.last_hello_unix_ms = now_unix_ms();
            i.cert_serial = Some(serial_owned.clone());
            i.config_version = hello_c.config_version;
        })?;
        s.store.drop_config_at_or_below(d, hello_c.config_version)?;
        let acked = s.store.acked_up_to(d)?;
        let pending = s.store.pending(d)?;
        Ok::<_, crate::store::StoreError>((acked, pending))
    })
    .await;
    let (acked, pending) = match setup {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            conn.refuse(&format!("control plane storage error: {e}"))
                .await;
            return format!("store: {e}");
        }
        Err(e) => return e,
    };
    let mut opening = vec![
        session.welcome(acked, now_unix_ms()),
        Downlink::Crl {
            der: lock_read(&shared.crl),
        },
    ];
    if let Some(c) = pending.config {
        opening.push(Downlink::ConfigPush {
            version: c.version,
            document: c.document,
        });
    }
    for c in pending.commands {
        opening.push(Downlink::Command {
            id: c.id,
            command: c.command,
        });
    }
    for m in &opening {
        if let Err(e) = conn.send(m).await {
            return e;
        }
    }
    tracing::info!(device = %device, acked_up_to = acked, "session open");

    loop {
        let deadline = tokio::time::Instant::from_std(session.next_deadline());
        let actions: Vec<Action> = tokio::select! {
            _ = stop.changed() => return "server shutting down".into(),
            r = conn.recv() => match r {
                Ok(Some(msg)) => session.on_uplink(Instant::now(), msg),
                Ok(None) => return "closed by the device".into(),
                Err(e) => return format!("protocol error: {e}"),
            },
            c = rx.recv() => match c {
                Some(Ctl::Send(m)) => vec![Action::Send(m)],
                Some(Ctl::Close(r)) => vec![Action::Close(r)],
                None => return "registry dropped the connection".into(),
            },
            _ = tokio::time::sleep_until(deadline) => {
                session.poll(Instant::now()).into_iter().collect()
            }
        };
        for a in actions {
            if let Err(reason) = perform(shared, conn, &device, a).await {
                return reason;
            }
        }
    }
}

/// Carries out one action; Err ends the session with that reason.
async fn perform(
    shared: &Arc<Shared>,
    conn: &mut Conn,
    device: &str,
    action: Action,
) -> Result<(), String> {
    match action {
        Action::Send(m) => conn.send(&m).await,
        Action::Close(r) => Err(r),
        Action::StoreRecord(rec) => {
            let d = device.to_string();
            let telemetry_version = match &rec.body {
                RecordBody::Telemetry(t) => Some(t.config_version),
                _ => None,
            };
            let out = blocking(shared, move |s| {
                let out = s.store.append_record(&d, &rec)?;
                if let Some(v) = telemetry_version {
                    s.store.update_device_info(&d, |i| i.config_version = v)?;
                }
                Ok::<_, crate::store::StoreError>(out)
            })
            .await?
            .map_err(|e| format!("storing a record failed (not acknowledged): {e}"))?;
            shared
                .counters
                .records_received
                .fetch_add(1, Ordering::Relaxed);
            if !out.stored {
                shared
                    .counters
                    .records_duplicate
                    .fetch_add(1, Ordering::Relaxed);
            }
            lock(&shared.rate).add(Instant::now());
            conn.send(&Downlink::Ack { up_to: out.up_to }).await
        }
        Action::StoreConfigResult(r) => {
            let d = device.to_string();
            blocking(shared, move |s| {
                s.store.append_config_result(&d, &r)?;
                s.store
                    .update_device_info(&d, |i| i.config_version = r.running_version)?;
                Ok::<_, crate::store::StoreError>(())
            })
            .await?
            .map_err(|e| format!("storing a config result failed: {e}"))
        }
        Action::StoreCommandResult { id, outcome } => {
            let d = device.to_string();
            blocking(shared, move |s| {
                s.store.append_command_result(&d, id, &outcome)
            })
            .await?
            .map_err(|e| format!("storing a command result failed: {e}"))
        }
        Action::Renew { csr_der } => {
            let d = device.to_string();
            let days = i64::from(shared.opts.cert_days);
            let r = blocking(shared, move |s| {
                // The CN comes from the authenticated session, never from the CSR.
                let cert =
                    s.ca.issue_from_csr(&csr_der, &d, days * 86_400)
                        .map_err(|e| e.to_string())?;
                pki::record_issued(&s.dir, &cert).map_err(|e| e.to_string())?;
                let _ = s.store.audit(&AuditEntry {
                    at_unix_ms: now_unix_ms(),
                    action: "renew".into(),
                    device_id: d.clone(),
                    actor: "session".into(),
                    outcome: format!("ok serial {}", cert.serial),
                });
                Ok::<_, String>(cert)
            })
            .await?;
            match r {
                Ok(cert) => {
                    conn.send(&Downlink::Certificate {
                        chain_der: vec![cert.der, shared.ca.der().to_vec()],
                        not_after_unix_s: cert.not_after_unix_s,
                    })
                    .await
                }
                // A bad renewal CSR does not end the session; the device keeps its cert.
                Err(reason) => conn.send(&Downlink::Refused { reason }).await,
            }
        }
    }
}

/// Re-reads `crl.der` and `revoked.json`, rebuilds the TLS config, pushes the CRL to every
/// session and drops sessions whose certificate is now revoked. Returns the revoked count.
async fn apply_crl(shared: &Arc<Shared>) -> Result<usize, String> {
    let mut last = shared.crl_reload.lock().await;
    let l = Layout::new(&shared.dir);
    let (der, state, mtime) = blocking(shared, move |_| {
        let der = std::fs::read(l.crl()).map_err(|e| format!("{}: {e}", l.crl().display()))?;
        let mtime = std::fs::metadata(l.crl()).and_then(|m| m.modified()).ok();
        let state = pki::load_revocations(&l.dir).map_err(|e| e.to_string())?;
        Ok::<_, String>((der, state, mtime))
    })
    .await??;
    let cfg = build_tls(
        shared.ca.der(),
        &der,
        &shared.server_chain,
        &shared.server_key,
    )
    .map_err(|e| e.to_string())?;
    *shared.tls.write().unwrap_or_else(|p| p.into_inner()) = cfg;
    *shared.crl.write().unwrap_or_else(|p| p.into_inner()) = der.clone();
    *last = mtime;
    let revoked: std::collections::HashSet<&str> =
        state.revoked.iter().map(|r| r.serial.as_str()).collect();
    let hub = lock(&shared.hub);
    for (device, e) in hub.iter() {
        let ctl = if revoked.contains(e.serial.as_str()) {
            tracing::info!(device = %device, serial = %e.serial, "dropping a revoked device");
            Ctl::Close(format!("certificate {} revoked", e.serial))
        } else {
            Ctl::Send(Downlink::Crl { der: der.clone() })
        };
        if e.tx.try_send(ctl).is_err() {
            tracing::warn!(device = %device, "connection queue full; it will be closed");
        }
    }
    Ok(state.revoked.len())
}

/// Watches `crl.der` (another process, `pop-cp revoke`, may rewrite it) and re-signs it
/// when it is getting old.
async fn crl_watch(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let l = Layout::new(&shared.dir);
        let mtime = std::fs::metadata(l.crl()).and_then(|m| m.modified()).ok();
        let changed = *shared.crl_reload.lock().await != mtime;
        let stale = pki::load_revocations(&shared.dir)
            .map(|s| {
                crate::util::now_unix_s().saturating_sub(s.crl_signed_unix_s) >= pki::CRL_REFRESH_S
            })
            .unwrap_or(false);
        if stale {
            let r = blocking(&shared, |s| s.ca.refresh_crl(&s.dir).map(|_| ())).await;
            if let Ok(Err(e)) | Err(e) = r.map(|r| r.map_err(|e| e.to_string())) {
                tracing::error!(error = %e, "re-signing the CRL failed");
            }
        }
        if changed || stale {
            match apply_crl(&shared).await {
                Ok(n) => tracing::info!(revoked = n, "CRL reloaded"),
                Err(e) => tracing::error!(error = %e, "CRL reload failed"),
            }
        }
    }
}

async fn admin_loop(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => { tokio::spawn(admin_conn(shared.clone(), s)); }
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

async fn admin_conn(shared: Arc<Shared>, stream: TcpStream) {
    let (r, mut w) = stream.into_split();
    let mut reader = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        line.clear();
        // Bounded read: a client cannot make us buffer an endless line.
        let n = match (&mut reader)
            .take(MAX_REQUEST_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let reply = if n > MAX_REQUEST_LINE {
            let v = serde_json::json!({"error": format!("request longer than {MAX_REQUEST_LINE} bytes")});
            let _ = w.write_all(format!("{v}\n").as_bytes()).await;
            return;
        } else {
            match serde_json::from_slice::<AdminRequest>(&line) {
                Ok(req) => match admin_op(&shared, req).await {
                    Ok(v) => v,
                    Err(e) => serde_json::json!({ "error": e }),
                },
                Err(e) => serde_json::json!({ "error": format!("bad request: {e}") }),
            }
        };
        if w.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, String> {
    serde_json::to_value(v).map_err(|e| e.to_string())
}

fn check_device(d: &str) -> Result<(), String> {
    validate_device_id(d).map_err(|e| format!("device: {e}"))
}

fn admin_audit(s: &Shared, action: &str, device: &str, outcome: String) {
    if let Err(e) = s.store.audit(&AuditEntry {
        at_unix_ms: now_unix_ms(),
        action: action.into(),
        device_id: device.into(),
        actor: "admin".into(),
        outcome,
    }) {
        tracing::error!(error = %e, "audit log write failed");
    }
}

fn send_to(shared: &Shared, device: &str, msg: Downlink) -> bool {
    lock(&shared.hub)
        .get(device)
        .is_some_and(|e| e.tx.try_send(Ctl::Send(msg)).is_ok())
}

async fn admin_op(shared: &Arc<Shared>, req: AdminRequest) -> Result<serde_json::Value, String> {
    match req {
        AdminRequest::Devices => {
            let connected: HashMap<String, (String, SocketAddr)> = lock(&shared.hub)
                .iter()
                .map(|(k, e)| (k.clone(), (e.serial.clone(), e.peer)))
                .collect();
            let devices = blocking(shared, move |s| {
                let mut ids = s.store.known_devices().map_err(|e| e.to_string())?;
                for k in connected.keys() {
                    if !ids.contains(k) {
                        ids.push(k.clone());
                    }
                }
                ids.sort();
                let mut out = Vec::new();
                for id in ids {
                    let info = s.store.device_info(&id).map_err(|e| e.to_string())?;
                    let pending = s.store.pending(&id).map_err(|e| e.to_string())?;
                    let acked = s.store.acked_up_to(&id).map_err(|e| e.to_string())?;
                    let conn = connected.get(&id);
                    out.push(DeviceStatus {
                        connected: conn.is_some(),
                        peer: conn.map(|c| c.1.to_string()),
                        last_hello_unix_ms: info.last_hello_unix_ms,
                        firmware_version: info.hello.as_ref().map(|h| h.firmware_version.clone()),
                        board: info.hello.as_ref().map(|h| h.board.clone()),
                        cert_serial: conn.map(|c| c.0.clone()).or(info.cert_serial),
                        config_version: info.config_version,
                        acked_up_to: acked,
                        pending_config_version: pending.config.map(|c| c.version),
                        pending_commands: pending.commands.iter().map(|c| c.id).collect(),
                        device: id,
                    });
                }
                Ok::<_, String>(out)
            })
            .await??;
            to_json(&DevicesReply { devices })
        }
        AdminRequest::PushConfig {
            device,
            version,
            document,
        } => {
            check_device(&device)?;
            let (d, doc) = (device.clone(), document.clone());
            blocking(shared, move |s| {
                let r = s
                    .store
                    .queue_config(&d, version, &doc)
                    .map_err(|e| e.to_string());
                let outcome = match &r {
                    Ok(()) => format!("queued version {version}"),
                    Err(e) => e.clone(),
                };
                admin_audit(s, "push-config", &d, outcome);
                r
            })
            .await??;
            let sent = send_to(shared, &device, Downlink::ConfigPush { version, document });
            to_json(&PushReply { sent })
        }
        AdminRequest::Command { device, command } => {
            check_device(&device)?;
            let (d, c) = (device.clone(), command.clone());
            let id = blocking(shared, move |s| {
                let r = s.store.queue_command(&d, &c).map_err(|e| e.to_string());
                admin_audit(s, "command", &d, format!("{c:?} -> {r:?}"));
                r
            })
            .await??;
            let sent = send_to(shared, &device, Downlink::Command { id, command });
            to_json(&CommandReply { id, sent })
        }
        AdminRequest::Records { device } => {
            check_device(&device)?;
            let (recs, duplicates) = blocking(shared, move |s| {
                s.store.records(&device).map_err(|e| e.to_string())
            })
            .await??;
            to_json(&RecordsReply {
                records: recs.into_iter().map(|r| r.record).collect(),
                duplicates,
            })
        }
        AdminRequest::ConfigResults { device } => {
            check_device(&device)?;
            let results = blocking(shared, move |s| {
                s.store.config_results(&device).map_err(|e| e.to_string())
            })
            .await??;
            to_json(&ConfigResultsReply { results })
        }
        AdminRequest::CommandResults { device } => {
            check_device(&device)?;
            let results = blocking(shared, move |s| {
                s.store.command_results(&device).map_err(|e| e.to_string())
            })
            .await??;
            to_json(&CommandResultsReply { results })
        }
        AdminRequest::Revoke { device } => {
            check_device(&device)?;
            let d = device.clone();
            let revoked = blocking(shared, move |s| {
                let r =
                    s.ca.revoke(&s.dir, &RevokeTarget::Device(d.clone()))
                        .map_err(|e| e.to_string());
                admin_audit(s, "revoke", &d, format!("{r:?}"));
                r
            })
            .await??;
            let disconnected = lock(&shared.hub).contains_key(&device);
            apply_crl(shared).await?;
            to_json(&RevokeReply {
                revoked,
                disconnected,
            })
        }
        AdminRequest::WaitConnected { device, timeout_ms } => {
            check_device(&device)?;
            let deadline =
                tokio::time::Instant::now() + Duration::from_millis(timeout_ms.min(600_000));
            loop {
                let notified = shared.hub_changed.notified();
                tokio::pin!(notified);
                // Register interest before checking, so a change in between is not missed.
                notified.as_mut().enable();
                if lock(&shared.hub).contains_key(&device) {
                    return to_json(&WaitReply { connected: true });
                }
                if tokio::time::timeout_at(deadline, notified).await.is_err() {
                    return to_json(&WaitReply { connected: false });
                }
            }
        }
        AdminRequest::Stats => {
            let c = &shared.counters;
            let rate = lock(&shared.rate).rate(Instant::now());
            to_json(&StatsReply {
                sessions: lock(&shared.hub).len() as u64,
                connections_total: c.connections_total.load(Ordering::Relaxed),
                handshake_failures: c.handshake_failures.load(Ordering::Relaxed),
                enrollments_ok: c.enrollments_ok.load(Ordering::Relaxed),
                enrollments_refused: c.enrollments_refused.load(Ordering::Relaxed),
                records_received: c.records_received.load(Ordering::Relaxed),
                records_duplicate: c.records_duplicate.load(Ordering::Relaxed),
                records_per_s: rate,
                uptime_s: shared.started.elapsed().as_secs(),
            })
        }
        AdminRequest::Reload => {
            let revoked = apply_crl(shared).await?;
            to_json(&ReloadReply { revoked })
        }
        AdminRequest::Audit => {
            let entries = blocking(shared, |s| {
                s.store.audit_entries().map_err(|e| e.to_string())
            })
            .await??;
            to_json(&AuditReply { entries })
        }
        AdminRequest::Certificates => {
            let certificates = blocking(shared, |s| {
                pki::load_issued(&s.dir).map_err(|e| e.to_string())
            })
            .await??;
            to_json(&CertificatesReply { certificates })
        }
    }
}

/// Whether `dir` looks initialised (for friendlier CLI errors).
pub fn is_initialised(dir: &Path) -> bool {
    Layout::new(dir).ca_pem().exists()
}
