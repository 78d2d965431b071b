//! The document's types. Every table refuses unknown keys (a misspelt key must not silently
//! fall back to a default on a box in the field); defaults are the appliance's shipped values.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The whole appliance configuration, as pushed by the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Monotonic document version, at least 1; the agent refuses replays and downgrades.
    pub version: u64,
    /// `[relay]`: admission limits and session timeouts of `popd relay`.
    #[serde(default)]
    pub relay: RelaySection,
    /// `[linkmon]`: the live-tunable uplink selection parameters of `popd linkmon`.
    #[serde(default)]
    pub linkmon: LinkmonSection,
    /// `[firewall]`: who may reach the box. Required: its lists have no safe default.
    pub firewall: FirewallSection,
    /// `[logging]`.
    #[serde(default)]
    pub logging: LoggingSection,
    /// `[privacy]`.
    #[serde(default)]
    pub privacy: PrivacySection,
    /// `[sip]`: reserved for a future SIP edge function; only absent or empty is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sip: Option<toml::Table>,
    /// `[recording]`: reserved for call recording; only absent or empty is accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<toml::Table>,
}

/// `[relay]` (same meaning as `popd relay`'s `[limits]` and `[timeouts]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelaySection {
    /// Concurrent calls; further offers are answered `load limit`.
    pub max_sessions: u32,
    /// A call with no media in either direction for this long is closed.
    pub no_media_secs: u64,
    /// A call older than this is closed (0: no limit).
    pub max_duration_secs: u64,
    /// An offer never answered is closed after this long.
    pub unanswered_offer_secs: u64,
}

impl Default for RelaySection {
    fn default() -> Self {
        Self {
            max_sessions: 4000,
            no_media_secs: 60,
            max_duration_secs: 0,
            unanswered_offer_secs: 60,
        }
    }
}

/// `[linkmon]`: the fields of linkmon's `[selector]` that may change at run time (same names
/// and meaning; the agent hands them to `popd linkmon`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkmonSection {
    /// Consecutive probe misses on every target that fail an uplink.
    pub probe_miss_threshold: u32,
    /// Consecutive probe replies that clear a probe failure.
    pub probe_recover_threshold: u32,
    /// A more preferred uplink must stay healthy this long before traffic fails back.
    pub hold_down_ms: u64,
    /// `[linkmon.damping]`: flap damping.
    pub damping: DampingSection,
}

impl Default for LinkmonSection {
    fn default() -> Self {
        Self {
            probe_miss_threshold: 3,
            probe_recover_threshold: 3,
            hold_down_ms: 10_000,
            damping: DampingSection::default(),
        }
    }
}

/// `[linkmon.damping]`: an uplink that keeps failing is suppressed until its penalty decays.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DampingSection {
    /// Penalty added per failure.
    pub penalty_per_failure: f64,
    /// Suppressed above this penalty.
    pub suppress_above: f64,
    /// Reused below this penalty.
    pub reuse_below: f64,
    /// Penalty half-life in milliseconds.
    pub half_life_ms: u64,
    /// Penalty ceiling.
    pub max_penalty: f64,
}

impl Default for DampingSection {
    /// linkmon's defaults: three failures within a few seconds suppress; reuse after about a
    /// minute and a half.
    fn default() -> Self {
        Self {
            penalty_per_failure: 1000.0,
            suppress_above: 2500.0,
            reuse_below: 800.0,
            half_life_ms: 60_000,
            max_penalty: 8000.0,
        }
    }
}

/// `[firewall]`: the inputs of the appliance's nftables ruleset (`pop-firewall`).
///
/// Addresses are kept as strings so the document round-trips exactly as the operator wrote it;
/// validation parses every one (see [`crate::Cidr`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FirewallSection {
    /// SIP peers (carriers, proxies), IPv4/IPv6 addresses or CIDR networks.
    pub sip_peers: Vec<String>,
    /// SIP ports, UDP and TCP.
    pub sip_ports: Vec<u16>,
    /// Lowest RTP/RTCP port (inclusive); must match the relay's media range.
    pub rtp_port_min: u16,
    /// Highest RTP/RTCP port (inclusive).
    pub rtp_port_max: u16,
    /// rtpengine NG control port, UDP and TCP.
    pub ng_port: u16,
    /// Networks allowed to send NG commands (the SIP proxies driving the relay).
    pub ng_proxies: Vec<String>,
    /// Networks allowed to open SSH sessions.
    pub management_networks: Vec<String>,
    /// SSH port.
    pub ssh_port: u16,
    /// Control-plane endpoints the agent connects to, `IP:port` (`[v6]:port` for IPv6).
    pub control_plane: Vec<String>,
    /// BFD neighbours (the carrier routers), plain addresses.
    pub bfd_peers: Vec<String>,
    /// `[firewall.rate_limits]`: per-source limits.
    pub rate_limits: RateLimits,
}

impl Default for FirewallSection {
    /// Shipped ports and limits; every list empty (validation then refuses the empty
    /// `control_plane` and `management_networks`, which have no safe default).
    fn default() -> Self {
        Self {
            sip_peers: Vec::new(),
            sip_ports: vec![5060],
            rtp_port_min: 30000,
            rtp_port_max: 39999,
            ng_port: 2223,
            ng_proxies: Vec::new(),
            management_networks: Vec::new(),
            ssh_port: 22,
            control_plane: Vec::new(),
            bfd_peers: Vec::new(),
            rate_limits: RateLimits::default(),
        }
    }
}

/// `[firewall.rate_limits]`: what one source address may send before the rest is dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimits {
    /// SIP packets per second from one peer address.
    pub sip_per_source_pps: u32,
    /// NG packets per second from one proxy address.
    pub ng_per_source_pps: u32,
    /// New SSH connections per minute from one address.
    pub ssh_new_per_source_per_minute: u32,
}

impl Default for RateLimits {
    /// Generous for a busy trunk (a few hundred call attempts a second, several messages each),
    /// tight for SSH (guessing passwords needs many connections).
    fn default() -> Self {
        Self {
            sip_per_source_pps: 500,
            ng_per_source_pps: 2000,
            ssh_new_per_source_per_minute: 10,
        }
    }
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// Most verbose level written.
    pub level: LogLevel,
}

/// A log level, as `tracing` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warn,
    /// The default.
    #[default]
    Info,
    /// Verbose.
    Debug,
    /// Everything.
    Trace,
}

impl LogLevel {
    /// The level's name as written in the document (and accepted by `tracing`'s filters).
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[privacy]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacySection {
    /// Whether logs may contain personal data (phone numbers, call-ids, peer addresses of
    /// subscribers). Off unless the operator has a legal basis to turn it on.
    pub log_personal_data: bool,
}
