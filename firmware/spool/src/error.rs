//! The crate's one error type. Every variant names the file, field or record class concerned
//! and why; none carries record contents or key material.

use std::path::PathBuf;

use pop_agent_proto::RecordClass;

/// Everything a spool operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// A file or directory of the spool could not be used.
    #[error("spool: {operation} {path}: {source}")]
    Io {
        /// What was being done ("read", "fdatasync", "rename", ...).
        operation: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A key store operation failed: unwrapping a segment's data key (e.g. the spool was
    /// written under another key store's root key), generating one, or sealing a record.
    #[error("spool: {context}: {source}")]
    Crypto {
        /// What the spool was doing, naming the segment when there is one.
        context: String,
        /// The key store's error.
        source: pop_keystore::Error,
    },

    /// A [`crate::SpoolConfig`] field is out of range.
    #[error("spool configuration: {field}: {reason}")]
    Config {
        /// The field's name.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },

    /// The spool is at its cap and the record may not be dropped to make room, or is a
    /// telemetry record that was dropped (and counted in `telemetry_dropped`) because even
    /// after dropping older telemetry it did not fit.
    #[error(
        "spool full: a {class:?} record does not fit ({bytes} of {max_bytes} bytes used); \
         it was not stored"
    )]
    Full {
        /// The class of the refused record (the first non-telemetry one of a batch).
        class: RecordClass,
        /// Segment bytes on disk now.
        bytes: u64,
        /// The configured cap.
        max_bytes: u64,
    },

    /// A record body is larger than a record may be.
    #[error("spool: a record body of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// The body's length.
        len: usize,
        /// The limit for this configuration.
        max: usize,
    },

    /// A spool file is damaged in a way recovery cannot work around (the state file).
    #[error("spool: {path} is corrupt: {reason}; move it aside to recover (record ids then resume from the segments)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// Another process (or another `Spool` in this one) has the spool directory open.
    #[error("spool: {path} is locked by another spool instance")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
}

impl SpoolError {
    pub(crate) fn io(
        operation: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        SpoolError::Io {
            operation,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn crypto(context: impl Into<String>, source: pop_keystore::Error) -> Self {
        SpoolError::Crypto {
            context: context.into(),
            source,
        }
    }
}
