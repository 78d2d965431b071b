//! Agent errors.

use std::path::Path;

/// Why the agent (or one of its steps) failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A file or socket operation failed.
    #[error("{path}: {source}")]
    Io {
        /// What was touched.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// `agent.toml` is invalid.
    #[error("agent settings: `{field}`: {reason}")]
    Settings {
        /// Field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The keystore refused an operation.
    #[error("keystore: {0}")]
    Keystore(#[from] pop_keystore::Error),
    /// TLS set-up or handshake failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// A certificate could not be built, parsed or stored.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The control plane refused us.
    #[error("control plane refused: {0}")]
    Refused(String),
    /// The peer broke the protocol.
    #[error("protocol: {0}")]
    Protocol(String),
    /// The device is not enrolled yet.
    #[error("not enrolled: no device certificate at {0} (run `popctl enroll --token ...`)")]
    NotEnrolled(String),
    /// The spool failed.
    #[error("spool: {0}")]
    Spool(#[from] pop_spool::SpoolError),
    /// Timed out.
    #[error("timed out: {0}")]
    Timeout(&'static str),
}

impl AgentError {
    /// An I/O error on `path`.
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        AgentError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
