//! The crate's error type.

use std::net::SocketAddr;
use std::path::PathBuf;

use thiserror::Error;

/// Why a benchmark or soak run could not be carried out.
#[derive(Debug, Error)]
pub enum LoadgenError {
    /// A system call the load generator depends on failed.
    #[error("{what} failed: {source}")]
    Sys {
        /// What was being attempted.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The relay binary could not be started.
    #[error("cannot start relay `{binary}`: {source} (is it installed and executable?)")]
    Spawn {
        /// Binary that failed to start.
        binary: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The relay did not answer an NG `ping` (or print its ready line) in time after start.
    #[error("relay `{name}` not ready after {waited_ms} ms ({check}); see its log {log}")]
    NotReady {
        /// Relay label.
        name: String,
        /// Which readiness check went unanswered.
        check: String,
        /// How long we waited.
        waited_ms: u64,
        /// Path of the relay's captured stderr.
        log: PathBuf,
    },
    /// The relay exited while it was being measured.
    #[error("relay `{name}` exited unexpectedly ({status}); see its log {log}")]
    RelayExited {
        /// Relay label.
        name: String,
        /// Exit status as text.
        status: String,
        /// Path of the relay's captured stderr.
        log: PathBuf,
    },
    /// An NG request got no reply after all retransmissions.
    #[error("NG `{command}` to {ng} timed out after {attempts} attempts")]
    NgTimeout {
        /// NG command.
        command: &'static str,
        /// Relay NG address.
        ng: SocketAddr,
        /// Transmissions made.
        attempts: u32,
    },
    /// The relay answered an NG request with an error or an unusable reply.
    #[error("NG `{command}` refused by relay: {reason}")]
    NgRefused {
        /// NG command.
        command: &'static str,
        /// `error-reason` or what was wrong with the reply.
        reason: String,
    },
    /// A command-line or plan parameter is out of range.
    #[error("invalid setting {field}: {reason}")]
    Config {
        /// The option or field.
        field: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// A `/proc` file of the relay could not be read or parsed.
    #[error("cannot read {path}: {reason}")]
    Proc {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// Writing the report failed.
    #[error("cannot write report {path}: {source}")]
    Report {
        /// Report path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl LoadgenError {
    /// Wraps an OS error with what was being attempted.
    pub fn sys(what: &'static str, source: impl Into<std::io::Error>) -> Self {
        Self::Sys {
            what,
            source: source.into(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, LoadgenError>;
