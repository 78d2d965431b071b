//! The crate's one error type. Messages name what failed and what an operator can do about it;
//! none carries key material, secrets or object contents.

use std::path::PathBuf;

use crate::KeyId;

/// Everything a key store, envelope or object store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The software (`dev`) backend was selected on a production board.
    #[error(
        "the dev key store keeps keys in a plain file and is refused on a production board; \
         configure the board's tpm or pkcs11 backend instead"
    )]
    DevBackendInProduction,

    /// A file or directory of the key store or object store could not be used.
    #[error("{operation} {path}: {source}")]
    Io {
        /// What was being done ("read", "create", "fsync", ...).
        operation: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// Bytes that should be an envelope, wrapped key, sealed secret or key record are not one
    /// (truncated, wrong magic, inconsistent lengths).
    #[error("malformed {what}: {reason}; the data is damaged or is not a pop-keystore {what}")]
    Malformed {
        /// Which format ("object envelope", "wrapped key", ...).
        what: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A format version this build does not read (written by newer firmware).
    #[error("{what} has format version {version}, this firmware reads only version {supported}; update the firmware")]
    UnsupportedVersion {
        /// Which format.
        what: &'static str,
        /// The version found.
        version: u8,
        /// The version this build reads.
        supported: u8,
    },

    /// An algorithm identifier this build does not know.
    #[error("{what} names algorithm {id}, which this firmware does not support")]
    UnsupportedAlgorithm {
        /// Which format.
        what: &'static str,
        /// The identifier found.
        id: u8,
    },

    /// Authenticated decryption failed: the ciphertext, its header or its key was altered, or
    /// the wrong key was used.
    #[error("integrity check failed for {what}: it was tampered with or belongs to another key")]
    IntegrityCheckFailed {
        /// What failed to decrypt.
        what: &'static str,
    },

    /// A wrapped key or sealed secret was made by a different root wrapping key than this store's.
    #[error(
        "{what} was wrapped by root key {found}, but this key store's root key is {expected}; \
         it comes from another device or a rotated-away root key"
    )]
    WrongRootKey {
        /// Which item.
        what: &'static str,
        /// This store's root key.
        expected: KeyId,
        /// The root key recorded in the item.
        found: KeyId,
    },

    /// An envelope's data key id does not match the key record it is paired with.
    #[error("object {object} names data key {found} but its key record holds data key {expected}")]
    WrongDataKey {
        /// The object id.
        object: String,
        /// The key record's data key id.
        expected: KeyId,
        /// The id recorded in the envelope.
        found: KeyId,
    },

    /// An object was read for a different purpose than it was written for.
    #[error("object {object} was written for purpose {found}, not {expected}")]
    PurposeMismatch {
        /// The object id.
        object: String,
        /// The purpose asked for.
        expected: crate::Purpose,
        /// The purpose recorded in the object.
        found: crate::Purpose,
    },

    /// An object file holds a different object id than its name (renamed or swapped files).
    #[error("object file for {expected} holds object {found}; files were renamed or swapped")]
    ObjectIdMismatch {
        /// The id asked for.
        expected: String,
        /// The id recorded in the envelope.
        found: String,
    },

    /// No object with this id exists.
    #[error("object {object} does not exist")]
    ObjectNotFound {
        /// The object id.
        object: String,
    },

    /// The object's data key was destroyed (crypto-shredded); its data can never be read again.
    #[error("the data key of object {object} was destroyed; the object is unreadable by design")]
    KeyDestroyed {
        /// The object id.
        object: String,
    },

    /// An object id, key label or other name is not acceptable.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// What kind of name.
        what: &'static str,
        /// The name (object ids and labels are not personal data).
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },

    /// The backend cannot enforce this seal policy.
    #[error(
        "the {backend} backend cannot seal to {policy}; use SealPolicy::WrapKey or the tpm backend"
    )]
    UnsupportedPolicy {
        /// The backend's name.
        backend: &'static str,
        /// The policy asked for.
        policy: String,
    },

    /// The seal policy is not satisfied now (for a TPM: the PCR values differ from when the
    /// secret was sealed), so the secret is not released.
    #[error(
        "unseal refused: the seal policy is not satisfied ({detail}); the measured boot state \
         differs from when the secret was sealed — reseal after an intended update"
    )]
    PolicyNotSatisfied {
        /// What the backend reported.
        detail: String,
    },

    /// Locked memory for a data key could not be obtained.
    #[error(
        "cannot lock {bytes} bytes of memory for data keys ({source}); raise the service's \
         LimitMEMLOCK (RLIMIT_MEMLOCK)"
    )]
    MemoryLock {
        /// The size asked for.
        bytes: usize,
        /// The OS error.
        source: std::io::Error,
    },

    /// A cryptographic primitive failed where it should not (bad key length, RNG failure).
    #[error("cryptographic operation failed: {0}")]
    Crypto(&'static str),

    /// A nonce counter ran out; the key must be replaced.
    #[error("nonce counter exhausted for this data key; start a new segment with a fresh key")]
    NonceExhausted,

    /// The PKCS#11 module or token reported an error.
    #[error("PKCS#11 {operation} failed: {source}")]
    Pkcs11 {
        /// The operation ("C_UnwrapKey", "login", ...).
        operation: &'static str,
        /// The error from the module.
        source: cryptoki::error::Error,
    },

    /// The TPM or its TSS stack reported an error.
    #[error("TPM {operation} failed: {source}")]
    Tpm {
        /// The operation.
        operation: &'static str,
        /// The error from the TSS.
        source: tss_esapi::Error,
    },

    /// The backend is reachable but not in a usable state (no token with that label, key of the
    /// wrong type under the configured label, ...).
    #[error("{backend} backend: {detail}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// What is wrong and what to check.
        detail: String,
    },

    /// A configuration value is refused.
    #[error("keystore config field {field}: {reason}")]
    Config {
        /// The field.
        field: &'static str,
        /// Why it is refused.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        Error::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: &'static str, reason: &'static str) -> Self {
        Error::Malformed { what, reason }
    }
}
