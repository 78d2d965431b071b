//! rustls adapter: a TLS client (or server) key that is a [`KeyStore`] signing key. rustls asks
//! for a signature over the handshake transcript; the backend computes it, so the private key
//! never leaves the TPM or token.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::{CertificateDer, SubjectPublicKeyInfoDer};
use rustls::sign::{CertifiedKey, Signer, SigningKey};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::{KeyStore, PublicKeySpki, Result};

/// A rustls [`SigningKey`] backed by the labelled ECDSA P-256 key of a [`KeyStore`]. Offers only
/// `ecdsa_secp256r1_sha256`, the one scheme the backends implement.
pub struct KeyStoreSigningKey {
    store: Arc<dyn KeyStore>,
    label: String,
    public: PublicKeySpki,
}

impl std::fmt::Debug for KeyStoreSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStoreSigningKey")
            .field("backend", &self.store.backend_name())
            .field("label", &self.label)
            .finish()
    }
}

impl KeyStoreSigningKey {
    /// Creates or loads the labelled key in `store`.
    pub fn new(store: Arc<dyn KeyStore>, label: &str) -> Result<Self> {
        let public = store.signing_key(label)?;
        Ok(KeyStoreSigningKey {
            store,
            label: label.to_owned(),
            public,
        })
    }

    /// The key's public key (SPKI DER), e.g. for a certificate request.
    pub fn public_key_spki(&self) -> &PublicKeySpki {
        &self.public
    }
}

impl SigningKey for KeyStoreSigningKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        if !offered.contains(&SignatureScheme::ECDSA_NISTP256_SHA256) {
            return None;
        }
        Some(Box::new(KeyStoreSigner {
            store: Arc::clone(&self.store),
            label: self.label.clone(),
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(self.public.0.as_slice()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

struct KeyStoreSigner {
    store: Arc<dyn KeyStore>,
    label: String,
}

impl std::fmt::Debug for KeyStoreSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStoreSigner")
            .field("label", &self.label)
            .finish()
    }
}

impl Signer for KeyStoreSigner {
    fn sign(&self, message: &[u8]) -> std::result::Result<Vec<u8>, rustls::Error> {
        self.store.sign(&self.label, message).map_err(|e| {
            tracing::warn!(label = %self.label, error = %e, "TLS handshake signature failed in the key store");
            rustls::Error::General(format!("key store signing failed: {e}"))
        })
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ECDSA_NISTP256_SHA256
    }
}

/// Always presents one certificate chain whose key is in the key store.
#[derive(Debug)]
pub struct KeyStoreClientCert {
    certified: Arc<CertifiedKey>,
}

impl KeyStoreClientCert {
    /// Pairs `chain` (leaf first) with the key store key it certifies.
    pub fn new(chain: Vec<CertificateDer<'static>>, key: KeyStoreSigningKey) -> Self {
        KeyStoreClientCert {
            certified: Arc::new(CertifiedKey::new(chain, Arc::new(key))),
        }
    }

    /// The certified key, e.g. for a server's cert resolver.
    pub fn certified_key(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.certified)
    }
}

impl ResolvesClientCert for KeyStoreClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        sigschemes
            .contains(&SignatureScheme::ECDSA_NISTP256_SHA256)
            .then(|| Arc::clone(&self.certified))
    }

    fn has_certs(&self) -> bool {
        true
    }
}
