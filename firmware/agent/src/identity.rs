//! The device identity: a P-256 key that never leaves the keystore, the certificate the control
//! plane issued for it, the pinned control-plane CA and its CRL; and the TLS configurations
//! built from them (TLS 1.3 only, `ring` provider).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pop_keystore::tls::{KeyStoreClientCert, KeyStoreSigningKey};
use pop_keystore::KeyStore;
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, ServerName};
use rustls::{ClientConfig, RootCertStore};

use crate::error::AgentError;
use crate::fsutil::write_atomic;
use crate::settings::AgentSettings;

/// Keystore label of the first device key; rotation moves to `device-identity-<n>`.
pub const FIRST_KEY_LABEL: &str = "device-identity";

/// Renew when this share of the certificate's lifetime has passed (the issue's ~90 %).
pub const RENEW_AT_FRACTION: f64 = 0.9;

/// Reads the pinned CA (PEM, one or more certificates).
pub fn load_ca(path: &Path) -> Result<Vec<CertificateDer<'static>>, AgentError> {
    let pem = std::fs::read(path).map_err(|e| AgentError::io(path, e))?;
    let certs =
        pem_certs(&pem).map_err(|e| AgentError::Certificate(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(AgentError::Certificate(format!(
            "{}: no certificate in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// Parses every `CERTIFICATE` block of a PEM text.
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| format!("bad PEM: {e}"))?;
        if item.label == "CERTIFICATE" {
            out.push(CertificateDer::from(item.contents));
        }
    }
    Ok(out)
}

/// PEM text of DER certificates.
pub fn certs_to_pem(chain: &[Vec<u8>]) -> String {
    chain
        .iter()
        .map(|der| pem::encode(&pem::Pem::new("CERTIFICATE", der.clone())))
        .collect()
}

/// The stored certificate chain, if enrolled.
pub fn load_chain(
    settings: &AgentSettings,
) -> Result<Option<Vec<CertificateDer<'static>>>, AgentError> {
    let path = settings.cert_path();
    match std::fs::read(&path) {
        Ok(pem) => {
            let chain = pem_certs(&pem)
                .map_err(|e| AgentError::Certificate(format!("{}: {e}", path.display())))?;
            Ok((!chain.is_empty()).then_some(chain))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(AgentError::io(&path, e)),
    }
}

/// Stores a new chain and the label of the key it certifies (chain first: a crash in between
/// leaves the old label, whose key still matches... the old chain — see [`store_identity`]).
pub fn store_identity(
    settings: &AgentSettings,
    chain_der: &[Vec<u8>],
    label: &str,
) -> Result<(), AgentError> {
    // The label is written first: if we crash before the chain, the next start finds a label
    // whose key has no certificate yet and the old chain → the handshake fails and the agent
    // re-enrolls or renews. Written the other way round, a new chain would be presented with
    // the old key, which fails the same way; either order is safe, neither corrupts.
    write_atomic(&settings.key_label_path(), label.as_bytes())?;
    write_atomic(&settings.cert_path(), certs_to_pem(chain_der).as_bytes())
}

/// The keystore label of the current device key.
pub fn current_label(settings: &AgentSettings) -> Result<String, AgentError> {
    let path = settings.key_label_path();
    match std::fs::read_to_string(&path) {
        Ok(s) => Ok(s.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FIRST_KEY_LABEL.to_owned()),
        Err(e) => Err(AgentError::io(&path, e)),
    }
}

/// The label the next rotation uses.
pub fn next_label(current: &str) -> String {
    let n = current
        .strip_prefix("device-identity-")
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(1);
    format!("device-identity-{}", n + 1)
}

/// Validity of a DER certificate, in seconds since the Unix epoch.
pub fn validity(der: &[u8]) -> Result<(u64, u64), AgentError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AgentError::Certificate(format!("unparsable certificate: {e}")))?;
    let v = cert.validity();
    let secs = |t: i64| u64::try_from(t).unwrap_or(0);
    Ok((
        secs(v.not_before.timestamp()),
        secs(v.not_after.timestamp()),
    ))
}

/// When to renew a certificate valid from `not_before` to `not_after` (Unix seconds).
pub fn renew_at(not_before: u64, not_after: u64) -> u64 {
    let life = not_after.saturating_sub(not_before) as f64;
    not_before + (life * RENEW_AT_FRACTION) as u64
}

/// Now, in Unix seconds.
pub fn unix_now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Now, in Unix milliseconds.
pub fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// A certificate request for `device_id`, signed inside the keystore by the labelled key.
pub fn csr(store: Arc<dyn KeyStore>, label: &str, device_id: &str) -> Result<Vec<u8>, AgentError> {
    let spki = store.signing_key(label)?;
    let remote = KeystoreKeyPair::new(store, label, &spki.0)?;
    let key = rcgen::KeyPair::from_remote(Box::new(remote))
        .map_err(|e| AgentError::Certificate(format!("key for the request: {e}")))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| AgentError::Certificate(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, device_id);
    let req = params
        .serialize_request(&key)
        .map_err(|e| AgentError::Certificate(format!("signing the request: {e}")))?;
    Ok(req.der().to_vec())
}

/// rcgen's view of a keystore key: the public point, and signatures computed by the backend.
struct KeystoreKeyPair {
    store: Arc<dyn KeyStore>,
    label: String,
    point: Vec<u8>,
}

impl KeystoreKeyPair {
    fn new(store: Arc<dyn KeyStore>, label: &str, spki_der: &[u8]) -> Result<Self, AgentError> {
        // A P-256 SubjectPublicKeyInfo ends with the 65-byte uncompressed point (0x04 || X || Y).
        let point = spki_der
            .len()
            .checked_sub(65)
            .and_then(|start| spki_der.get(start..))
            .filter(|p| p.first() == Some(&0x04))
            .ok_or_else(|| {
                AgentError::Certificate("the device key is not an uncompressed P-256 key".into())
            })?
            .to_vec();
        Ok(KeystoreKeyPair {
            store,
            label: label.to_owned(),
            point,
        })
    }
}

impl rcgen::RemoteKeyPair for KeystoreKeyPair {
    fn public_key(&self) -> &[u8] {
        &self.point
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.store
            .sign(&self.label, msg)
            .map_err(|_| rcgen::Error::RemoteKeyError)
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// The TLS client configuration: TLS 1.3 only, the pinned CA as the only root, the CRL checked
/// for the server's certificate, and (unless enrolling) the keystore-held client key.
pub fn client_config(
    ca: &[CertificateDer<'static>],
    crl: Option<Vec<u8>>,
    client: Option<KeyStoreClientCert>,
) -> Result<Arc<ClientConfig>, AgentError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for c in ca {
        roots
            .add(c.clone())
            .map_err(|e| AgentError::Tls(format!("pinned CA refused: {e}")))?;
    }
    let crls: Vec<CertificateRevocationListDer<'static>> = crl
        .into_iter()
        .map(CertificateRevocationListDer::from)
        .collect();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .only_check_end_entity_revocation()
        .build()
        .map_err(|e| AgentError::Tls(format!("server verifier: {e}")))?;
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| AgentError::Tls(e.to_string()))?
        .with_webpki_verifier(verifier);
    let config = match client {
        Some(resolver) => builder.with_client_cert_resolver(Arc::new(resolver)),
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The client certificate for the labelled keystore key.
pub fn client_cert(
    store: Arc<dyn KeyStore>,
    label: &str,
    chain: Vec<CertificateDer<'static>>,
) -> Result<KeyStoreClientCert, AgentError> {
    let key = KeyStoreSigningKey::new(store, label)?;
    Ok(KeyStoreClientCert::new(chain, key))
}

/// The server name for TLS.
pub fn server_name(name: &str) -> Result<ServerName<'static>, AgentError> {
    ServerName::try_from(name.to_owned())
        .map_err(|e| AgentError::Tls(format!("server name `{name}`: {e}")))
}

/// Time left until `unix_s`, zero if past.
pub fn until_unix(unix_s: u64) -> Duration {
    Duration::from_secs(unix_s.saturating_sub(unix_now_s()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_ninety_percent_of_the_lifetime() {
        assert_eq!(renew_at(1000, 2000), 1900);
        assert_eq!(renew_at(0, 30 * 86400), 27 * 86400);
        assert_eq!(renew_at(5, 5), 5, "a zero-length life renews at once");
    }

    #[test]
    fn rotation_labels_count_up() {
        assert_eq!(next_label(FIRST_KEY_LABEL), "device-identity-2");
        assert_eq!(next_label("device-identity-2"), "device-identity-3");
    }

    #[test]
    fn a_csr_signed_in_the_keystore_verifies_and_names_the_device() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn KeyStore> = Arc::new(
            pop_keystore::dev::DevKeyStore::open(dir.path(), pop_keystore::Profile::Development)
                .expect("dev keystore"),
        );
        let der = csr(store, FIRST_KEY_LABEL, "pop-test-01").expect("csr");
        use x509_parser::prelude::FromDer;
        let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
            .expect("parses");
        req.verify_signature().expect("self-signature verifies");
        let cn = req
            .certification_request_info
            .subject
            .iter_common_name()
            .next()
            .and_then(|c| c.as_str().ok());
        assert_eq!(cn, Some("pop-test-01"));
    }
}
