//! Hardware-backed key storage for the appliance.
//!
//! One [`KeyStore`] trait of *operations* — root wrapping key, data key wrap/unwrap, seal/unseal,
//! ECDSA P-256 signing, random bytes — with three backends: `tpm` (TPM 2.0 through tss-esapi),
//! `pkcs11` (HSMs, secure elements, tpm2-pkcs11) and `dev` (software, refused on production
//! boards). Root keys never leave their backend; data keys are AES-256 keys unwrapped into
//! locked, zeroised, non-dumpable memory ([`DataKey`]) and used with `ring` on the hot path.
//!
//! On top: a versioned [`envelope`] format and an encrypted object [`store`] with atomic writes
//! and crypto-shredding; a rustls signing adapter ([`tls`]) so the mTLS client key stays in the
//! backend.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod datakey;
pub mod dev;
mod ecdsa;
pub mod envelope;
mod error;
mod fsutil;
pub mod pkcs11;
pub mod store;
#[allow(unsafe_code)]
mod sys;
pub mod tls;
pub mod tpm;

use std::fmt;

pub use datakey::{DataKey, PacketSealer, DATA_KEY_LEN};
pub use ecdsa::{ecdsa_p256_fixed_to_der, p256_spki_der_from_point};
pub use envelope::{SealedSecret, WrapScheme, WrappedKey};
pub use error::{Error, Result};
pub use store::ObjectStore;

/// Which kind of board the firmware runs on; decides whether software keys are acceptable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// A deployed appliance: keys must live in hardware.
    Production,
    /// A laptop, CI runner or lab board: the software backend is allowed.
    Development,
}

/// Identifies a key: a root wrapping key (recorded in every [`WrappedKey`]) or a data key
/// (recorded in every object envelope). Random, not derived from key material.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 16]);

impl KeyId {
    /// Length of a key id in bytes.
    pub const LEN: usize = 16;
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// What an encrypted object is for; bound into each ciphertext's associated data so an object
/// cannot be passed off as another kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Purpose {
    /// Small configuration secrets (credentials, tokens).
    ConfigSecret,
    /// Store-and-forward spool segments (telemetry, CDRs).
    SpoolSegment,
    /// Call recordings.
    Recording,
}

impl Purpose {
    pub(crate) fn code(self) -> u8 {
        match self {
            Purpose::ConfigSecret => 1,
            Purpose::SpoolSegment => 2,
            Purpose::Recording => 3,
        }
    }

    pub(crate) fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Purpose::ConfigSecret),
            2 => Some(Purpose::SpoolSegment),
            3 => Some(Purpose::Recording),
            _ => None,
        }
    }
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::ConfigSecret => "config-secret",
            Purpose::SpoolSegment => "spool-segment",
            Purpose::Recording => "recording",
        })
    }
}

/// A set of PCRs in the SHA-256 bank, as a bit mask (bit n = PCR n, PCRs 0..=23).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct PcrSelection(pub u32);

impl PcrSelection {
    /// A selection of the given PCR indices; refuses indices above 23.
    pub fn new(pcrs: &[u8]) -> Result<Self> {
        let mut mask = 0u32;
        for &p in pcrs {
            if p > 23 {
                return Err(Error::Config {
                    field: "pcrs",
                    reason: format!("PCR {p} does not exist (0..=23)"),
                });
            }
            mask |= 1 << p;
        }
        if mask == 0 {
            return Err(Error::Config {
                field: "pcrs",
                reason: "an empty PCR selection binds to nothing".into(),
            });
        }
        Ok(PcrSelection(mask))
    }

    /// The selected PCR indices, ascending.
    pub fn indices(self) -> impl Iterator<Item = u8> {
        (0u8..24).filter(move |i| self.0 & (1 << i) != 0)
    }
}

/// What an unseal must satisfy.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SealPolicy {
    /// Only possession of the store's root wrapping key (every backend).
    WrapKey,
    /// The TPM's SHA-256 PCRs in the selection must hold the values they held at sealing time
    /// (TPM backend only; others refuse with [`Error::UnsupportedPolicy`]).
    Pcrs(PcrSelection),
}

impl fmt::Display for SealPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealPolicy::WrapKey => f.write_str("the wrap key"),
            SealPolicy::Pcrs(sel) => {
                f.write_str("PCRs sha256:")?;
                for (n, i) in sel.indices().enumerate() {
                    if n > 0 {
                        f.write_str(",")?;
                    }
                    write!(f, "{i}")?;
                }
                Ok(())
            }
        }
    }
}

/// A released secret: zeroised on drop, never shown by `Debug`.
pub struct Secret(zeroize::Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of the bytes; they are zeroised when the `Secret` is dropped.
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(zeroize::Zeroizing::new(bytes))
    }

    /// The secret bytes. Do not log or copy them into unmanaged memory.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

/// A public key as DER `SubjectPublicKeyInfo` (ECDSA P-256, uncompressed point).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKeySpki(pub Vec<u8>);

/// Hardware-backed key operations. Root keys and signing keys never leave the backend;
/// only data keys come out, and only as [`DataKey`]s in locked memory.
///
/// Implementations are `Send + Sync`: one instance is shared by all threads of a process.
pub trait KeyStore: Send + Sync {
    /// Short backend name for logs and errors ("tpm", "pkcs11", "dev").
    fn backend_name(&self) -> &'static str;

    /// Creates the non-extractable root wrapping key if the backend has none yet, or loads the
    /// existing one; returns its id. Idempotent; other operations call it as needed.
    fn ensure_root_key(&self) -> Result<KeyId>;

    /// Wraps a data key under the root wrapping key.
    fn wrap_data_key(&self, key: &DataKey) -> Result<WrappedKey>;

    /// Unwraps a data key into locked memory. Fails with [`Error::WrongRootKey`] when the key was
    /// wrapped by another root key, and [`Error::IntegrityCheckFailed`] when the blob was altered.
    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey>;

    /// Seals a small secret (at most [`MAX_SEALED_SECRET`] bytes) to a policy.
    fn seal(&self, policy: &SealPolicy, secret: &[u8]) -> Result<SealedSecret>;

    /// Releases a sealed secret if its policy is satisfied now.
    fn unseal(&self, sealed: &SealedSecret) -> Result<Secret>;

    /// Creates the ECDSA P-256 signing key with this label if there is none, or loads it;
    /// returns its public key. Labels: 1–64 of `[A-Za-z0-9._-]`.
    fn signing_key(&self, label: &str) -> Result<PublicKeySpki>;

    /// Signs `message` with the labelled key: ECDSA P-256 over SHA-256(`message`), signature
    /// ASN.1 DER encoded (as TLS and X.509 carry it). The hash is computed on the host.
    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>>;

    /// Fills `out` with random bytes from the backend's generator.
    fn random(&self, out: &mut [u8]) -> Result<()>;

    /// Generates a fresh AES-256 data key (from the backend's generator) and wraps it.
    fn generate_data_key(&self) -> Result<(DataKey, WrappedKey)> {
        let key = DataKey::from_fill(|bytes| self.random(bytes))?;
        let wrapped = self.wrap_data_key(&key)?;
        Ok((key, wrapped))
    }
}

/// Largest secret [`KeyStore::seal`] accepts (a TPM sealed-data object holds 128 bytes).
pub const MAX_SEALED_SECRET: usize = 128;

/// Checks a signing key label: 1–64 characters of `[A-Za-z0-9._-]`, not starting with `.`.
/// Backends use it so a label is always safe as a file name or PKCS#11 `CKA_LABEL`.
pub fn validate_label(label: &str) -> Result<()> {
    validate_name("key label", label, 64)
}

pub(crate) fn validate_name(what: &'static str, name: &str, max: usize) -> Result<()> {
    let refuse = |reason| {
        Err(Error::InvalidName {
            what,
            name: name.chars().take(80).collect(),
            reason,
        })
    };
    if name.is_empty() || name.len() > max {
        return refuse("length must be 1 to the limit for this kind of name");
    }
    if name.starts_with('.') {
        return refuse("must not start with '.'");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return refuse("only A-Z a-z 0-9 . _ - are allowed");
    }
    Ok(())
}

/// Which backend to use and where it is, as the board descriptor states it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase", deny_unknown_fields)]
pub enum BackendConfig {
    /// A TPM 2.0.
    Tpm(tpm::TpmConfig),
    /// A PKCS#11 module and token.
    Pkcs11(pkcs11::Pkcs11Config),
    /// The software backend (development profile only).
    Dev(dev::DevConfig),
}

/// Opens the configured backend, refusing the software one on a production board.
pub fn open(config: &BackendConfig, profile: Profile) -> Result<std::sync::Arc<dyn KeyStore>> {
    Ok(match config {
        BackendConfig::Tpm(c) => std::sync::Arc::new(tpm::TpmKeyStore::open(c)?),
        BackendConfig::Pkcs11(c) => std::sync::Arc::new(pkcs11::Pkcs11KeyStore::open(c)?),
        BackendConfig::Dev(c) => std::sync::Arc::new(dev::DevKeyStore::open(&c.dir, profile)?),
    })
}
