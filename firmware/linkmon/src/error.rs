//! The crate's one error type.

use std::path::PathBuf;

/// Everything `popd linkmon`'s I/O side can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LinkmonError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ConfigRead {
        /// Path given.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML for this schema (unknown keys are refused).
    #[error("config file {path}: {message}")]
    ConfigParse {
        /// Path given.
        path: PathBuf,
        /// Parser message with line, column and the offending key.
        message: String,
    },
    /// A configuration value is out of range or inconsistent.
    #[error("invalid config: `{field}`: {reason}")]
    ConfigInvalid {
        /// Dotted field name as written in the file.
        field: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The core refused the configuration derived from the file.
    #[error("link monitor core: {0}")]
    Core(#[from] pop_linkmon_core::LinkmonError),
    /// A configured interface does not exist.
    #[error("interface {name:?} (uplink {uplink:?}) does not exist: {source}")]
    NoSuchInterface {
        /// Interface name from the config.
        name: String,
        /// Uplink name.
        uplink: String,
        /// OS error.
        source: std::io::Error,
    },
    /// An rtnetlink operation failed.
    #[error("rtnetlink {op}: {source} (linkmon needs CAP_NET_ADMIN)")]
    Netlink {
        /// Operation.
        op: &'static str,
        /// OS error, from the kernel's reply where there was one.
        source: std::io::Error,
    },
    /// A BFD or probe socket could not be opened.
    #[error("uplink {uplink:?}: {what}: {source}")]
    Socket {
        /// Uplink name.
        uplink: String,
        /// What was being done (`bind BFD 192.0.2.2:3784`, ...).
        what: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The status socket could not be set up.
    #[error("status socket {path}: {source} (does the directory exist and is it writable?)")]
    StatusSocket {
        /// Path from the config.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Systemd notification or signal setup failed.
    #[error(transparent)]
    Supervision(#[from] pop_watchdog::WatchdogError),
}

impl LinkmonError {
    pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::ConfigInvalid {
            field: field.into(),
            reason: reason.into(),
        }
    }
}
