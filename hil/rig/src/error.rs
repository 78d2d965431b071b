//! The rig's one error type.

use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while building, driving or tearing down a rig.
///
/// Messages name the command, file or namespace involved and, where there is one, the fix.
#[derive(Debug, thiserror::Error)]
pub enum RigError {
    /// The rig creates namespaces, veths and nftables tables: that needs root.
    #[error(
        "the rig needs root (network namespaces, veth, nftables): run the tests or pop-rig as root"
    )]
    NotRoot,
    /// A program the rig shells out to is not installed.
    #[error("`{program}` not found (Debian package {package}): run scripts/setup as root")]
    MissingTool {
        /// Absolute path or name of the program looked for.
        program: String,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A command ran but failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line, for the operator to re-run by hand.
        command: String,
        /// Exit status as printed by the OS.
        status: String,
        /// What the command wrote to stderr, trimmed.
        stderr: String,
    },
    /// A command could not be started at all.
    #[error("could not start `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why the OS refused.
        source: std::io::Error,
    },
    /// A file, socket or namespace operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What the rig was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A run-state file is unreadable or inconsistent.
    #[error("rig state file {path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Something the rig waits for did not happen in time.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the rig waited.
        waited: Duration,
    },
    /// Talking to an FRR daemon over its vty socket failed.
    #[error("FRR vty {path}: {reason} (see the daemon's log next to the socket)")]
    Vty {
        /// The vty socket.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The caller asked for something this rig was not built for.
    #[error("{0}")]
    Usage(String),
}

/// Result alias for the rig.
pub type Result<T, E = RigError> = std::result::Result<T, E>;

impl RigError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        RigError::Io {
            what: what.into(),
            source,
        }
    }
}
