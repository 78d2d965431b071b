//! The crate's error type: configuration refused at the boundary, with the field and the reason.

use thiserror::Error;

/// Errors of the link-monitor core. Network input never produces one of these: bad packets are
/// counted and dropped (see [`crate::BfdDrop`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LinkmonError {
    /// A configuration value is out of range; the message names the field and the limit.
    #[error("invalid link monitor config: {field} {reason}")]
    InvalidConfig {
        /// Config field name, as in the TOML file.
        field: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// An input named an uplink the selector was not configured with.
    #[error("uplink {0} is not configured (valid ids are 0..count-1, in preference order)")]
    UnknownUplink(u8),
    /// A probe result named a target index the uplink was not configured with.
    #[error("probe target {target} of uplink {uplink} is not configured")]
    UnknownProbeTarget {
        /// Uplink id.
        uplink: u8,
        /// Probe target index.
        target: u8,
    },
}

pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> LinkmonError {
    LinkmonError::InvalidConfig {
        field,
        reason: reason.into(),
    }
}
