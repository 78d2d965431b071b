//! A blocking device-side client of the agent protocol with a software key: for tests,
//! demos and integrators who need a fake device. The real agent keeps its key in the
//! keystore; this one holds an rcgen [`KeyPair`] in memory.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_agent_proto::{
    decode_body, encode_frame, Downlink, EnrollRequest, FrameReader, Hello, Uplink,
    PROTOCOL_VERSION,
};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

/// Device client errors.
#[derive(Debug, thiserror::Error)]
pub enum DevClientError {
    /// Socket or TLS trouble (a refused certificate shows up here as a TLS alert).
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// TLS configuration.
    #[error("TLS: {0}")]
    Tls(String),
    /// Frame trouble.
    #[error("frame: {0}")]
    Frame(#[from] pop_agent_proto::FrameError),
    /// The server closed the connection.
    #[error("connection closed by the control plane")]
    Closed,
    /// Nothing arrived in time.
    #[error("no frame within {0:?}")]
    Timeout(Duration),
    /// Key or CSR generation.
    #[error("key: {0}")]
    Key(String),
}

/// A software device identity: a key and, once enrolled, its certificate chain.
#[derive(Debug)]
pub struct SoftDevice {
    /// Device id.
    pub device_id: String,
    /// The private key.
    pub key: KeyPair,
    /// Leaf first (empty until enrolled).
    pub chain: Vec<Vec<u8>>,
}

impl SoftDevice {
    /// A new device with a fresh ECDSA P-256 key.
    pub fn new(device_id: &str) -> Result<Self, DevClientError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| DevClientError::Key(e.to_string()))?;
        Ok(Self {
            device_id: device_id.to_string(),
            key,
            chain: Vec::new(),
        })
    }

    /// A PKCS#10 request for this key with `CN=cn`.
    pub fn csr(&self, cn: &str) -> Result<Vec<u8>, DevClientError> {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        let csr = p
            .serialize_request(&self.key)
            .map_err(|e| DevClientError::Key(e.to_string()))?;
        Ok(csr.der().to_vec())
    }

    /// The enrollment request for `token` (CSR with the device id as CN).
    pub fn enroll_request(&self, token: &str) -> Result<Uplink, DevClientError> {
        Ok(Uplink::Enroll(EnrollRequest {
            protocol_version: PROTOCOL_VERSION,
            token: token.to_string(),
            device_id: self.device_id.clone(),
            csr_der: self.csr(&self.device_id)?,
        }))
    }

    /// A Hello for this device.
    pub fn hello(&self) -> Uplink {
        Uplink::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: self.device_id.clone(),
            firmware_version: "devclient".into(),
            board: "software".into(),
            capabilities: vec![],
            config_version: 0,
            last_record_id: 0,
        })
    }

    /// The private key as rustls wants it.
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()))
    }
}

/// One TLS connection to the control plane.
#[derive(Debug)]
pub struct DeviceConn {
    stream: StreamOwned<ClientConnection, TcpStream>,
    reader: FrameReader,
}

impl DeviceConn {
    /// Connects (TLS 1.3, server verified against `ca_der` for `server_name`), presenting
    /// `client` (chain + key) when given. The handshake is completed here; note that in
    /// TLS 1.3 a refused client certificate is only reported on the first read.
    pub fn connect(
        addr: SocketAddr,
        server_name: &str,
        ca_der: &[u8],
        client: Option<(Vec<Vec<u8>>, PrivateKeyDer<'static>)>,
    ) -> Result<Self, DevClientError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(ca_der.to_vec()))
            .map_err(|e| DevClientError::Tls(e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| DevClientError::Tls(e.to_string()))?
            .with_root_certificates(roots);
        let cfg = match client {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.into_iter().map(CertificateDer::from).collect(), key)
                .map_err(|e| DevClientError::Tls(e.to_string()))?,
            None => builder.with_no_client_auth(),
        };
        let name = ServerName::try_from(server_name.to_string())
            .map_err(|e| DevClientError::Tls(format!("server name {server_name:?}: {e}")))?;
        let conn = ClientConnection::new(Arc::new(cfg), name)
            .map_err(|e| DevClientError::Tls(e.to_string()))?;
        let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_write_timeout(Some(Duration::from_secs(10)))?;
        tcp.set_nodelay(true)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(Self {
            stream,
            reader: FrameReader::new(),
        })
    }

    /// Sends one frame.
    pub fn send(&mut self, msg: &Uplink) -> Result<(), DevClientError> {
        let frame = encode_frame(msg)?;
        self.stream.write_all(&frame)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Sends raw bytes (tests of malformed input).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), DevClientError> {
        self.stream.write_all(bytes)?;
        self.stream.flush()?;
        Ok(())
    }

    /// Receives one frame within `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Downlink, DevClientError> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(body) = self.reader.next_frame()? {
                return Ok(decode_body(&body)?);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DevClientError::Timeout(timeout));
            }
            self.stream.sock.set_read_timeout(Some(left))?;
            match self.stream.read(&mut buf) {
                Ok(0) => return Err(DevClientError::Closed),
                Ok(n) => self.reader.push(&buf[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Err(DevClientError::Timeout(timeout))
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Receives frames until one matches `pred`, answering server heartbeats on the way;
    /// frames skipped are returned too (in order) for inspection.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&Downlink) -> bool,
    ) -> Result<(Downlink, Vec<Downlink>), DevClientError> {
        let deadline = Instant::now() + timeout;
        let mut skipped = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.recv(left.max(Duration::from_millis(1)))?;
            if pred(&m) {
                return Ok((m, skipped));
            }
            if let Downlink::Heartbeat { seq } = m {
                self.send(&Uplink::HeartbeatAck { seq })?;
            }
            skipped.push(m);
        }
    }
}

/// Enrolls `dev` with `token` on an anonymous connection; on success stores the chain in
/// `dev` and returns the `Certificate` and `Crl` frames, else the `Refused` reason as `Err(Ok)`.
pub fn enroll(
    addr: SocketAddr,
    server_name: &str,
    ca_der: &[u8],
    dev: &mut SoftDevice,
    token: &str,
) -> Result<Result<(Downlink, Downlink), String>, DevClientError> {
    let mut c = DeviceConn::connect(addr, server_name, ca_der, None)?;
    c.send(&dev.enroll_request(token)?)?;
    match c.recv(Duration::from_secs(10))? {
        Downlink::Refused { reason } => Ok(Err(reason)),
        cert @ Downlink::Certificate { .. } => {
            if let Downlink::Certificate { chain_der, .. } = &cert {
                dev.chain = chain_der.clone();
            }
            let crl = c.recv(Duration::from_secs(10))?;
            Ok(Ok((cert, crl)))
        }
        other => Ok(Err(format!("unexpected answer {other:?}"))),
    }
}
