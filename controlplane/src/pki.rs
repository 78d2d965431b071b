//! The control plane's certificate authority: creation (`pop-cp init`), issuing device
//! certificates from CSRs (enrollment, renewal) or with a software key (tests), the registry
//! of issued certificates, revocations and the signed CRL.
//!
//! Files under the state directory:
//! - `ca.pem`, `ca.key` (0600): the CA, ECDSA P-256, 10 years.
//! - `server.pem` (leaf then CA), `server.key` (0600): the TLS server identity, 1 year.
//! - `crl.der`: the current CRL, re-signed on every revocation and when older than
//!   [`CRL_REFRESH_S`] (it is valid for [`CRL_VALIDITY_S`]).
//! - `certs.jsonl`: one line per issued device certificate (serial → device), append-only.
//! - `revoked.json`: revoked serials and the CRL number, written atomically.
//! - `pki.lock`: serialises revocations between the CLI and a running server.

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams,
    CertificateSigningRequestParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::util::{self, atomic_write, hex, now_unix_s, validate_device_id, FileLock};

/// CA certificate validity (10 years).
pub const CA_VALIDITY_S: i64 = 10 * 365 * 86_400;
/// Default server certificate validity (1 year).
pub const SERVER_VALIDITY_S: i64 = 365 * 86_400;
/// A CRL's `nextUpdate` is this long after its `thisUpdate` (7 days).
pub const CRL_VALIDITY_S: i64 = 7 * 86_400;
/// A running server re-signs the CRL once it is this old (1 day), well before it lapses.
pub const CRL_REFRESH_S: u64 = 86_400;
/// Leaf certificates start this long before issuance, so a device whose clock is a little
/// behind does not see a certificate from the future.
pub const BACKDATE_S: i64 = 300;

/// CA errors.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `init` found an existing CA.
    #[error("{0} already exists; refusing to overwrite an existing CA")]
    AlreadyInitialised(PathBuf),
    /// Certificate generation or parsing failed.
    #[error("{what}: {reason}")]
    Cert {
        /// What was being done.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A CSR was refused.
    #[error("certificate request refused: {0}")]
    BadCsr(String),
    /// A bad argument (device id, serial, time).
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn cert_err(what: &str) -> impl FnOnce(rcgen::Error) -> PkiError + '_ {
    move |e| PkiError::Cert {
        what: what.to_string(),
        reason: e.to_string(),
    }
}

fn datetime(unix_s: i64, field: &str) -> Result<OffsetDateTime, PkiError> {
    OffsetDateTime::from_unix_timestamp(unix_s)
        .map_err(|e| PkiError::Invalid(format!("{field}: {unix_s} is not a valid time: {e}")))
}

fn now_i64() -> i64 {
    i64::try_from(now_unix_s()).unwrap_or(i64::MAX)
}

/// A fresh positive 128-bit serial number (first byte 0x01..=0x7f: no sign bit, no leading
/// zero, so its hex is canonical).
fn random_serial() -> Vec<u8> {
    let mut s = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut s);
    s[0] = (s[0] & 0x7f).max(1);
    s.to_vec()
}

/// Canonical hex of a serial number: big-endian without leading zero bytes.
pub fn serial_hex(raw: &[u8]) -> String {
    let start = raw
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(raw.len().saturating_sub(1));
    hex(&raw[start..])
}

/// Paths of the files in a state directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The state directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
        }
    }
    /// `ca.pem`.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// `ca.key`.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// `server.pem`.
    pub fn server_pem(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// `server.key`.
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// `crl.der`.
    pub fn crl(&self) -> PathBuf {
        self.dir.join("crl.der")
    }
    /// `certs.jsonl`.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs.jsonl")
    }
    /// `revoked.json`.
    pub fn revoked(&self) -> PathBuf {
        self.dir.join("revoked.json")
    }
    /// `pki.lock`.
    pub fn lock(&self) -> PathBuf {
        self.dir.join("pki.lock")
    }
    /// `store/`: tokens, records, results.
    pub fn store(&self) -> PathBuf {
        self.dir.join("store")
    }
}

/// Options of `pop-cp init`.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// DNS name of the server (SAN and CN).
    pub server_name: String,
    /// IP SANs.
    pub server_ips: Vec<IpAddr>,
    /// Server certificate `notBefore` (default: now − 1 h).
    pub server_not_before_unix: Option<i64>,
    /// Server certificate `notAfter` (default: now + 1 year).
    pub server_not_after_unix: Option<i64>,
}

/// Creates the CA, the server identity, an empty CRL and the store directory under `dir`.
/// Refuses when `ca.key` or `ca.pem` exists: overwriting a CA would orphan every device.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<(), PkiError> {
    let l = Layout::new(dir);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    for p in [l.ca_key(), l.ca_pem()] {
        if p.exists() {
            return Err(PkiError::AlreadyInitialised(p));
        }
    }
    let now = now_i64();
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(cert_err("generating the CA key"))?;
    let mut ca_params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "PoP control plane CA");
    dn.push(DnType::OrganizationName, "pop");
    ca_params.distinguished_name = dn;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = datetime(now - 3600, "ca not_before")?;
    ca_params.not_after = datetime(now + CA_VALIDITY_S, "ca not_after")?;
    ca_params.serial_number = Some(SerialNumber::from(random_serial()));
    ca_params.key_identifier_method = KeyIdMethod::Sha256;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(cert_err("self-signing the CA"))?;

    // Server identity.
    let server_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(cert_err("generating the server key"))?;
    let mut sp = CertificateParams::default();
    let mut sdn = DistinguishedName::new();
    sdn.push(DnType::CommonName, opts.server_name.as_str());
    sp.distinguished_name = sdn;
    let dns = opts
        .server_name
        .clone()
        .try_into()
        .map_err(|e: rcgen::Error| {
            PkiError::Invalid(format!("server name {:?}: {e}", opts.server_name))
        })?;
    sp.subject_alt_names = vec![SanType::DnsName(dns)];
    sp.subject_alt_names
        .extend(opts.server_ips.iter().map(|ip| SanType::IpAddress(*ip)));
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    sp.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    sp.not_before = datetime(
        opts.server_not_before_unix.unwrap_or(now - 3600),
        "server not_before",
    )?;
    sp.not_after = datetime(
        opts.server_not_after_unix
            .unwrap_or(now + SERVER_VALIDITY_S),
        "server not_after",
    )?;
    sp.serial_number = Some(SerialNumber::from(random_serial()));
    sp.use_authority_key_identifier_extension = true;
    let server_cert = sp
        .signed_by(&server_key, &ca_cert, &ca_key)
        .map_err(cert_err("signing the server certificate"))?;

    // Write the CA key last-but-one and the CA cert last: a crash half-way leaves no ca.pem,
    // so a retry is not refused as "already initialised" with a useless partial state.
    atomic_write(
        &l.server_key(),
        server_key.serialize_pem().as_bytes(),
        0o600,
    )
    .map_err(io_err(&l.server_key()))?;
    let chain = format!("{}{}", server_cert.pem(), ca_cert.pem());
    atomic_write(&l.server_pem(), chain.as_bytes(), 0o644).map_err(io_err(&l.server_pem()))?;
    std::fs::create_dir_all(l.store()).map_err(io_err(&l.store()))?;
    atomic_write(&l.ca_key(), ca_key.serialize_pem().as_bytes(), 0o600)
        .map_err(io_err(&l.ca_key()))?;
    atomic_write(&l.ca_pem(), ca_cert.pem().as_bytes(), 0o644).map_err(io_err(&l.ca_pem()))?;

    let ca = Ca::load(dir)?;
    let state = RevocationState::default();
    ca.write_crl(&l, state)?;
    Ok(())
}

/// A certificate the CA issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedCert {
    /// Canonical hex serial.
    pub serial: String,
    /// Device id (the common name).
    pub device_id: String,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after_unix_s: u64,
    /// When it was issued.
    pub issued_unix_s: u64,
    /// The certificate, DER (not serialised into the registry).
    #[serde(skip)]
    pub der: Vec<u8>,
}

/// A revoked certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokedEntry {
    /// Canonical hex serial.
    pub serial: String,
    /// Device it belonged to, when known.
    pub device_id: Option<String>,
    /// When it was revoked.
    pub revoked_unix_s: u64,
}

/// Contents of `revoked.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationState {
    /// Number of the CRL last written (incremented on every signature).
    pub crl_number: u64,
    /// `thisUpdate` of the CRL last written.
    pub crl_signed_unix_s: u64,
    /// Revoked serials.
    pub revoked: Vec<RevokedEntry>,
}

/// What to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeTarget {
    /// One serial (hex).
    Serial(String),
    /// Every certificate issued to a device.
    Device(String),
}

/// The loaded CA: its key and what rcgen needs to sign with it.
pub struct Ca {
    key: KeyPair,
    signer: rcgen::Certificate,
    der: CertificateDer<'static>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("Ca")
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// Reads the first PEM certificate of `path` as DER.
pub fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?
        .collect();
    let certs = certs.map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(PkiError::Invalid(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

impl Ca {
    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self, PkiError> {
        let l = Layout::new(dir);
        let key_pem = std::fs::read_to_string(l.ca_key()).map_err(io_err(&l.ca_key()))?;
        let key = KeyPair::from_pem(&key_pem).map_err(cert_err("ca.key"))?;
        let der = read_pem_certs(&l.ca_pem())?
            .into_iter()
            .next()
            .ok_or_else(|| PkiError::Invalid("ca.pem: empty".into()))?;
        // rcgen signs with an issuer `Certificate`; rebuilding one from the stored CA keeps the
        // issuer name and key identifier of the real CA (the rebuilt DER itself is not used).
        let params = CertificateParams::from_ca_cert_der(&der).map_err(cert_err("ca.pem"))?;
        let signer = params
            .self_signed(&key)
            .map_err(cert_err("loading the CA for signing"))?;
        Ok(Self { key, signer, der })
    }

    /// The CA certificate, DER, as stored in `ca.pem`.
    pub fn der(&self) -> &CertificateDer<'static> {
        &self.der
    }

    fn leaf_params(
        device_id: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<(CertificateParams, Vec<u8>), PkiError> {
        validate_device_id(device_id).map_err(PkiError::Invalid)?;
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, device_id);
        p.distinguished_name = dn;
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = datetime(not_before, "not_before")?;
        p.not_after = datetime(not_after, "not_after")?;
        let serial = random_serial();
        p.serial_number = Some(SerialNumber::from(serial.clone()));
        p.use_authority_key_identifier_extension = true;
        Ok((p, serial))
    }

    /// Issues a device certificate for the key in `csr_der`, valid `validity_s` from now.
    /// The CSR's signature must verify; its subject is replaced by `CN=device_id` whatever it
    /// says (the caller checks the CSR's own CN where the protocol requires it).
    pub fn issue_from_csr(
        &self,
        csr_der: &[u8],
        device_id: &str,
        validity_s: i64,
    ) -> Result<IssuedCert, PkiError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| match e {
                    rcgen::Error::RingUnspecified => {
                        PkiError::BadCsr("the CSR signature does not verify".into())
                    }
                    other => PkiError::BadCsr(format!("the CSR does not parse: {other}")),
                })?;
        let now = now_i64();
        let (params, serial) =
            Self::leaf_params(device_id, now - BACKDATE_S, now.saturating_add(validity_s))?;
        let not_after = params.not_after.unix_timestamp();
        let cert = params
            .signed_by(&csr.public_key, &self.signer, &self.key)
            .map_err(cert_err("signing the device certificate"))?;
        Ok(IssuedCert {
            serial: serial_hex(&serial),
            device_id: device_id.to_string(),
            not_after_unix_s: u64::try_from(not_after).unwrap_or(0),
            issued_unix_s: now_unix_s(),
            der: cert.der().to_vec(),
        })
    }

    /// Issues a device certificate with a fresh software key (tests of refusal paths, e.g.
    /// an expired certificate). Returns the certificate and the key's PKCS#8 PEM.
    pub fn issue_software(
        &self,
        device_id: &str,
        not_before_unix: i64,
        not_after_unix: i64,
    ) -> Result<(IssuedCert, String), PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(cert_err("generating a device key"))?;
        let (params, serial) = Self::leaf_params(device_id, not_before_unix, not_after_unix)?;
        let cert = params
            .signed_by(&key, &self.signer, &self.key)
            .map_err(cert_err("signing the device certificate"))?;
        Ok((
            IssuedCert {
                serial: serial_hex(&serial),
                device_id: device_id.to_string(),
                not_after_unix_s: u64::try_from(not_after_unix).unwrap_or(0),
                issued_unix_s: now_unix_s(),
                der: cert.der().to_vec(),
            },
            key.serialize_pem(),
        ))
    }

    /// Signs a CRL listing `state.revoked` with number `state.crl_number`.
    pub fn sign_crl(&self, state: &RevocationState) -> Result<Vec<u8>, PkiError> {
        let this_update = datetime(
            i64::try_from(state.crl_signed_unix_s).unwrap_or(0),
            "crl this_update",
        )?;
        let next_update = datetime(
            i64::try_from(state.crl_signed_unix_s).unwrap_or(0) + CRL_VALIDITY_S,
            "crl next_update",
        )?;
        let mut revoked_certs = Vec::with_capacity(state.revoked.len());
        for r in &state.revoked {
            let raw = util::unhex(&r.serial)
                .map_err(|e| PkiError::Invalid(format!("revoked.json serial: {e}")))?;
            revoked_certs.push(RevokedCertParams {
                serial_number: SerialNumber::from(raw),
                revocation_time: datetime(
                    i64::try_from(r.revoked_unix_s).unwrap_or(0),
                    "revocation time",
                )?,
                reason_code: None,
                invalidity_date: None,
            });
        }
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: SerialNumber::from(state.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.signer, &self.key)
            .map_err(cert_err("signing the CRL"))?;
        Ok(crl.der().to_vec())
    }

    /// Signs a new CRL from `state` (number incremented, `thisUpdate` now) and writes
    /// `revoked.json` then `crl.der`, both atomically. A crash between the two leaves a stale
    /// `crl.der`, which the next `serve` re-signs from `revoked.json` at start.
    fn write_crl(&self, l: &Layout, mut state: RevocationState) -> Result<Vec<u8>, PkiError> {
        state.crl_number += 1;
        state.crl_signed_unix_s = now_unix_s();
        let der = self.sign_crl(&state)?;
        let json =
            serde_json::to_vec_pretty(&state).map_err(|e| PkiError::Invalid(e.to_string()))?;
        atomic_write(&l.revoked(), &json, 0o644).map_err(io_err(&l.revoked()))?;
        atomic_write(&l.crl(), &der, 0o644).map_err(io_err(&l.crl()))?;
        Ok(der)
    }

    /// Re-signs the CRL from `revoked.json` (at server start, and when it gets old).
    pub fn refresh_crl(&self, dir: &Path) -> Result<Vec<u8>, PkiError> {
        let l = Layout::new(dir);
        let _lock = FileLock::acquire(&l.lock()).map_err(io_err(&l.lock()))?;
        let state = load_revocations(dir)?;
        self.write_crl(&l, state)
    }

    /// Revokes `target`, re-signs and writes the CRL. Returns the serials newly revoked (a
    /// serial already revoked is not listed again; a device with no certificate is an error).
    pub fn revoke(&self, dir: &Path, target: &RevokeTarget) -> Result<Vec<String>, PkiError> {
        let l = Layout::new(dir);
        let _lock = FileLock::acquire(&l.lock()).map_err(io_err(&l.lock()))?;
        let mut state = load_revocations(dir)?;
        let issued = load_issued(dir)?;
        let wanted: Vec<(String, Option<String>)> = match target {
            RevokeTarget::Serial(s) => {
                let raw =
                    util::unhex(s).map_err(|e| PkiError::Invalid(format!("--serial: {e}")))?;
                let serial = serial_hex(&raw);
                let device = issued
                    .iter()
                    .find(|c| c.serial == serial)
                    .map(|c| c.device_id.clone());
                vec![(serial, device)]
            }
            RevokeTarget::Device(d) => {
                let v: Vec<_> = issued
                    .iter()
                    .filter(|c| &c.device_id == d)
                    .map(|c| (c.serial.clone(), Some(d.clone())))
                    .collect();
                if v.is_empty() {
                    return Err(PkiError::Invalid(format!(
                        "device {d:?}: no certificate was issued to it"
                    )));
                }
                v
            }
        };
        let now = now_unix_s();
        let mut added = Vec::new();
        for (serial, device_id) in wanted {
            if state.revoked.iter().any(|r| r.serial == serial) {
                continue;
            }
            added.push(serial.clone());
            state.revoked.push(RevokedEntry {
                serial,
                device_id,
                revoked_unix_s: now,
            });
        }
        self.write_crl(&l, state)?;
        Ok(added)
    }
}

/// Appends `cert` to `certs.jsonl` (fsynced before returning: a certificate handed out must
/// stay revocable by device id after a crash).
pub fn record_issued(dir: &Path, cert: &IssuedCert) -> Result<(), PkiError> {
    let path = Layout::new(dir).certs();
    let mut line = serde_json::to_vec(cert).map_err(|e| PkiError::Invalid(e.to_string()))?;
    line.push(b'\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // One write(2) of a whole line with O_APPEND: lines from two processes do not interleave.
    f.write_all(&line).map_err(io_err(&path))?;
    f.sync_data().map_err(io_err(&path))?;
    Ok(())
}

/// Every certificate in `certs.jsonl` (a torn last line after a crash is skipped).
pub fn load_issued(dir: &Path) -> Result<Vec<IssuedCert>, PkiError> {
    let path = Layout::new(dir).certs();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(&path)(e)),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// `revoked.json` (empty state when missing).
pub fn load_revocations(dir: &Path) -> Result<RevocationState, PkiError> {
    let path = Layout::new(dir).revoked();
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| PkiError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevocationState::default()),
        Err(e) => Err(io_err(&path)(e)),
    }
}

/// What the server needs from a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// Subject common name.
    pub common_name: String,
    /// Canonical hex serial.
    pub serial: String,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after_unix_s: i64,
}

/// Parses a certificate's CN, serial and expiry.
pub fn leaf_info(der: &[u8]) -> Result<LeafInfo, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| PkiError::Cert {
        what: "parsing a certificate".into(),
        reason: e.to_string(),
    })?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| PkiError::Invalid("certificate has no UTF-8 common name".into()))?
        .to_string();
    Ok(LeafInfo {
        common_name,
        serial: serial_hex(cert.raw_serial()),
        not_after_unix_s: cert.validity().not_after.timestamp(),
    })
}

/// The subject common name of a PKCS#10 request, if any.
pub fn csr_common_name(csr_der: &[u8]) -> Result<Option<String>, PkiError> {
    use x509_parser::prelude::FromDer;
    let (_, csr) = x509_parser::certification_request::X509CertificationRequest::from_der(csr_der)
        .map_err(|e| PkiError::BadCsr(format!("the CSR does not parse: {e}")))?;
    let cn = csr
        .certification_request_info
        .subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(cn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn opts() -> InitOptions {
        InitOptions {
            server_name: "localhost".into(),
            server_ips: vec!["127.0.0.1".parse().unwrap()],
            server_not_before_unix: None,
            server_not_after_unix: None,
        }
    }

    #[test]
    fn init_refuses_to_overwrite_a_ca() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), &opts()).unwrap();
        let before = std::fs::read(d.path().join("ca.key")).unwrap();
        assert!(matches!(
            init(d.path(), &opts()),
            Err(PkiError::AlreadyInitialised(_))
        ));
        assert_eq!(std::fs::read(d.path().join("ca.key")).unwrap(), before);
    }

    #[test]
    fn csr_issuance_overrides_subject_and_revocation_lands_in_the_crl() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), &opts()).unwrap();
        let ca = Ca::load(d.path()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "somebody-else");
        let csr = p.serialize_request(&key).unwrap();
        let cert = ca.issue_from_csr(csr.der(), "pop-1", 86_400).unwrap();
        let info = leaf_info(&cert.der).unwrap();
        assert_eq!(info.common_name, "pop-1");
        assert_eq!(info.serial, cert.serial);
        record_issued(d.path(), &cert).unwrap();

        let added = ca
            .revoke(d.path(), &RevokeTarget::Device("pop-1".into()))
            .unwrap();
        assert_eq!(added, vec![cert.serial.clone()]);
        let crl = std::fs::read(d.path().join("crl.der")).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, parsed) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).unwrap();
        let serials: Vec<String> = parsed
            .iter_revoked_certificates()
            .map(|r| serial_hex(r.raw_serial()))
            .collect();
        assert_eq!(serials, vec![cert.serial]);
        assert_eq!(load_revocations(d.path()).unwrap().crl_number, 2);
    }

    #[test]
    fn a_csr_with_a_broken_signature_is_refused() {
        let d = tempfile::tempdir().unwrap();
        init(d.path(), &opts()).unwrap();
        let ca = Ca::load(d.path()).unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, "pop-1");
        let mut der = p.serialize_request(&key).unwrap().der().to_vec();
        let last = der.len() - 1;
        der[last] ^= 0x55;
        assert!(matches!(
            ca.issue_from_csr(&der, "pop-1", 60),
            Err(PkiError::BadCsr(_))
        ));
        assert!(matches!(
            ca.issue_from_csr(b"garbage", "pop-1", 60),
            Err(PkiError::BadCsr(_))
        ));
    }
}
