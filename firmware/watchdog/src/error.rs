//! The crate's one error type.

use std::path::PathBuf;

/// Everything `popd watchdog` and its helpers can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WatchdogError {
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
        field: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// The watchdog device could not be opened.
    #[error("cannot open watchdog device {path}: {source} (is the driver loaded? `modprobe softdog` in a VM)")]
    DeviceOpen {
        /// Device path from the config.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// An ioctl or write on the watchdog device failed.
    #[error("watchdog device {op} failed: {source}")]
    Device {
        /// Operation name (`WDIOC_SETTIMEOUT`, `keepalive`, `magic close`, ...).
        op: &'static str,
        /// OS error.
        source: std::io::Error,
    },
    /// A local Unix socket could not be set up or used.
    #[error(
        "socket {path}: {source} (check that the directory exists and is writable by the service)"
    )]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// A systemd notification could not be sent.
    #[error("sd_notify to {socket}: {source}")]
    Notify {
        /// Value of `NOTIFY_SOCKET`.
        socket: String,
        /// OS error.
        source: std::io::Error,
    },
    /// `NOTIFY_SOCKET` holds something that is not a usable socket address.
    #[error("NOTIFY_SOCKET={0:?} is not an absolute path or an abstract (@) socket name")]
    NotifySocketInvalid(String),
    /// Signal handling could not be set up.
    #[error("signal setup: {0}")]
    Signals(nix::Error),
}
