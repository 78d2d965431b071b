//! The failover benchmark's one error type.

use std::path::PathBuf;

/// Why a benchmark or demo run could not go on.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The rig failed (build, injection, a command in a namespace).
    #[error(transparent)]
    Rig(#[from] pop_rig::RigError),
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A binary the benchmark runs is missing.
    #[error("{} not found: build it with `cargo build --release -p popd` or pass --popd", .0.display())]
    MissingBinary(PathBuf),
    /// Something did not happen within its time limit.
    #[error("timed out after {limit_ms} ms waiting for {what}; logs are in {logs}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The limit.
        limit_ms: u64,
        /// Where to look.
        logs: String,
    },
    /// A service under test exited.
    #[error("{service} exited ({status}); see {log}")]
    Exited {
        /// Which one.
        service: &'static str,
        /// Its exit status.
        status: String,
        /// Its log.
        log: String,
    },
    /// A service answered something the benchmark cannot use.
    #[error("unexpected answer from {service}: {detail}")]
    Protocol {
        /// Which one.
        service: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
}

impl BenchError {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BenchError::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with [`BenchError`].
pub type Result<T, E = BenchError> = std::result::Result<T, E>;
