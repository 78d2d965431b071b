//! The crate's error type. Messages are written for two readers: an operator reading a log or a
//! refused configuration, and the SIP proxy reading an NG `error-reason` (where rtpengine has an
//! established wording, we use it, so existing Kamailio scripts that match on it keep working).

use crate::media::{BindError, MediaError};

/// Everything that can go wrong in the relay core.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// A configuration field has a value the core cannot work with.
    #[error("invalid relay configuration: `{field}` {reason}")]
    InvalidConfig {
        /// Name of the offending [`crate::CoreConfig`] field.
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
    /// Every port pair of the configured range is in use or quarantined.
    #[error("Ran out of ports")]
    OutOfPorts,
    /// Binding a local port failed for a reason retrying another port will not fix.
    #[error("cannot bind media port: {0}")]
    Bind(BindError),
    /// The data plane refused a stream operation.
    #[error("media data plane error: {0}")]
    Media(MediaError),
    /// The request is not a bencoded dictionary.
    #[error("Could not decode dictionary")]
    BadRequest,
    /// A mandatory key is missing from the request (or has the wrong type).
    #[error("No {0} in message")]
    MissingKey(&'static str),
    /// A key is present but its value cannot be used.
    #[error("Invalid value for `{key}`: {reason}")]
    InvalidValue {
        /// The request key.
        key: &'static str,
        /// What was wrong with it.
        reason: &'static str,
    },
    /// The command is not one this relay implements.
    #[error("Unrecognized command")]
    UnknownCommand,
    /// The call-id names no call known to the relay.
    #[error("Unknown call-id")]
    UnknownCallId,
    /// The SDP body could not be parsed or rewritten.
    #[error("Failed to parse SDP: {0}")]
    BadSdp(String),
    /// Call recording was requested; this relay cannot record yet.
    #[error("Call recording is not supported by this relay")]
    RecordingNotSupported,
    /// The configured session limit is reached; new calls are refused until calls end.
    #[error("Parallel session limit reached")]
    SessionLimit,
    /// The configured offer rate limit is exceeded.
    #[error("Offer rate limit reached")]
    OfferRateLimit,
}

impl CoreError {
    /// Short stable name used as a counter label (`errors_by_reason`).
    pub fn reason_label(&self) -> &'static str {
        match self {
            CoreError::InvalidConfig { .. } => "invalid_config",
            CoreError::OutOfPorts => "out_of_ports",
            CoreError::Bind(_) => "bind_failed",
            CoreError::Media(_) => "media_error",
            CoreError::BadRequest => "bad_request",
            CoreError::MissingKey(_) => "missing_key",
            CoreError::InvalidValue { .. } => "invalid_value",
            CoreError::UnknownCommand => "unknown_command",
            CoreError::UnknownCallId => "unknown_call_id",
            CoreError::BadSdp(_) => "bad_sdp",
            CoreError::RecordingNotSupported => "recording_not_supported",
            CoreError::SessionLimit => "session_limit",
            CoreError::OfferRateLimit => "offer_rate_limit",
        }
    }
}
