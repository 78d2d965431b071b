//! The appliance's one typed configuration, pushed by the control plane as a TOML document
//! (`Downlink::ConfigPush` in `pop-agent-proto`), and the store that keeps it on the box.
//!
//! - [`parse`] turns a document into an [`ApplianceConfig`] and validates it; every refusal is a
//!   [`ConfigError`] naming the field by its dotted path (`firewall.sip_peers[2]`) and the
//!   reason, which the agent reports back verbatim.
//! - [`ConfigStore`] keeps the running, previous and candidate documents in a directory with
//!   crash-safe updates, so a config push can be tried, watched, and committed or rolled back
//!   even across a crash or power loss in the middle.
//!
//! Example (every section but `[firewall]` and `version` may be left out):
//!
//! ```
//! let cfg = pop_config::parse(r#"
//!     version = 7
//!     [relay]
//!     max_sessions = 4000
//!     [firewall]
//!     sip_peers = ["192.0.2.0/24", "2001:db8::10"]
//!     ng_proxies = ["10.0.0.5"]
//!     management_networks = ["10.10.0.0/16"]
//!     control_plane = ["198.51.100.7:443"]
//!     bfd_peers = ["192.0.2.1"]
//! "#)?;
//! assert_eq!(cfg.firewall.sip_ports, [5060]);
//!
//! let err = pop_config::parse("version = 8\n[firewall]\nmanagement_networks = []\n")
//!     .unwrap_err();
//! assert_eq!(err.field, "firewall.management_networks");
//! # Ok::<(), pop_config::ConfigError>(())
//! ```

mod error;
mod net;
mod schema;
mod store;
mod validate;

pub use error::ConfigError;
pub use net::Cidr;
pub use schema::{
    ApplianceConfig, DampingSection, FirewallSection, LinkmonSection, LogLevel, LoggingSection,
    PrivacySection, RateLimits, RelaySection,
};
pub use store::{ConfigStore, InterruptedTrial, StoreError};
pub use validate::BFD_PORTS;

/// Largest document accepted, in bytes: the agent protocol's frame limit is 1 MiB and a real
/// document is a few kilobytes, so anything near the limit is a mistake, not a configuration.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Parses and validates a document. Syntax errors, unknown keys and wrong types are reported
/// with the best field path that can be told and the parser's message (with line and column);
/// semantic errors by [`ApplianceConfig::validate`].
pub fn parse(text: &str) -> Result<ApplianceConfig, ConfigError> {
    let cfg = parse_unvalidated(text)?;
    cfg.validate()?;
    Ok(cfg)
}

/// Parses without the semantic checks (for tools that show a document before fixing it).
pub fn parse_unvalidated(text: &str) -> Result<ApplianceConfig, ConfigError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ConfigError::new(
            "document",
            format!(
                "{} bytes; at most {MAX_DOCUMENT_BYTES} are accepted",
                text.len()
            ),
        ));
    }
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|e| ConfigError::from_toml(text, &e))
}

impl ApplianceConfig {
    /// Checks every value and cross-field rule (ranges, address syntax, ports that would clash,
    /// lists whose emptiness would lock the box out); the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::validate(self)
    }

    /// The document as TOML; [`parse`] of the result gives back an equal configuration.
    ///
    /// Never panics: a configuration that cannot be written (only possible for one that fails
    /// [`Self::validate`], e.g. a version above `i64::MAX`) yields a TOML comment saying why,
    /// which [`parse`] then refuses. Use [`Self::try_to_toml`] to get the error instead.
    pub fn to_toml(&self) -> String {
        self.try_to_toml()
            .unwrap_or_else(|e| format!("# configuration not representable: {e}\n"))
    }

    /// The document as TOML, or why it cannot be written.
    pub fn try_to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::new("document", e.to_string()))
    }
}

#[cfg(test)]
mod store_tests;
#[cfg(test)]
mod tests;
