//! The agent's own settings (`/etc/popd/agent.toml`): where the control plane is, which CA to
//! pin, where state lives, which services to talk to. Distinct from the appliance configuration
//! the control plane pushes (`pop-config`), which the agent applies to the services.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::AgentError;

/// `agent.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSettings {
    /// This appliance's id (the certificate's common name), e.g. `pop-ams-01`.
    pub device_id: String,
    /// Board name reported in the Hello.
    #[serde(default = "default_board")]
    pub board: String,
    /// Control plane address.
    pub control_plane: SocketAddr,
    /// The name its certificate carries (checked by TLS).
    pub server_name: String,
    /// The control plane's CA certificate (PEM), installed with the image or by the technician:
    /// the only CA the agent trusts (pinned).
    pub ca_file: PathBuf,
    /// Certificates, the CRL, the config store and the spool live here.
    pub state_dir: PathBuf,
    /// Key storage backend (the device key and the spool's keys).
    pub keystore: pop_keystore::BackendConfig,
    /// `production` refuses the software keystore.
    #[serde(default = "default_profile")]
    pub profile: pop_keystore::Profile,
    /// `popd relay`'s control socket (status, call records, limits).
    pub relay_socket: Option<PathBuf>,
    /// `popd linkmon`'s status socket (uplink states).
    pub linkmon_socket: Option<PathBuf>,
    /// Apply the pushed firewall with nftables (off only where the agent must not touch the
    /// host's firewall, e.g. a development machine).
    #[serde(default = "yes")]
    pub apply_firewall: bool,
    /// Network namespace to apply the firewall in (tests; unset on the appliance).
    pub firewall_netns: Option<String>,
    /// Timers.
    #[serde(default)]
    pub timers: Timers,
    /// Spool sizing.
    #[serde(default)]
    pub spool: SpoolSettings,
}

/// `[timers]`, in milliseconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timers {
    /// Telemetry period.
    pub telemetry_ms: u64,
    /// How long a new configuration must stay healthy before it is committed.
    pub health_window_ms: u64,
    /// First reconnect delay ceiling.
    pub backoff_base_ms: u64,
    /// Largest reconnect delay ceiling.
    pub backoff_cap_ms: u64,
    /// How often call records are collected from the relay.
    pub cdr_poll_ms: u64,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            telemetry_ms: 10_000,
            health_window_ms: 10_000,
            backoff_base_ms: 1_000,
            backoff_cap_ms: 120_000,
            cdr_poll_ms: 1_000,
        }
    }
}

/// `[spool]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolSettings {
    /// Byte cap.
    pub max_bytes: u64,
    /// Segment size.
    pub segment_bytes: u64,
}

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
        }
    }
}

fn default_board() -> String {
    "generic".into()
}
fn default_profile() -> pop_keystore::Profile {
    pop_keystore::Profile::Production
}
fn yes() -> bool {
    true
}

impl AgentSettings {
    /// Reads, parses and validates the file.
    pub fn from_file(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| AgentError::io(path, e))?;
        let s: AgentSettings = toml::from_str(&text).map_err(|e| AgentError::Settings {
            field: "agent.toml".into(),
            reason: e.to_string(),
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Checks values; the error names the field.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |field: &str, reason: &str| {
            Err(AgentError::Settings {
                field: field.into(),
                reason: reason.into(),
            })
        };
        let id = &self.device_id;
        if id.is_empty()
            || id.len() > 64
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return bad("device_id", "1-64 characters of A-Z a-z 0-9 - _ .");
        }
        if self.server_name.is_empty() {
            return bad("server_name", "must name the control plane's certificate");
        }
        let t = &self.timers;
        if t.telemetry_ms < 100 {
            return bad("timers.telemetry_ms", "at least 100");
        }
        if t.health_window_ms < 2500 {
            return bad(
                "timers.health_window_ms",
                "at least 2500: two failed checks of up to 1 s each must fit",
            );
        }
        if t.backoff_base_ms == 0 || t.backoff_cap_ms < t.backoff_base_ms {
            return bad("timers.backoff_cap_ms", "base > 0 and cap >= base");
        }
        if t.cdr_poll_ms < 50 {
            return bad("timers.cdr_poll_ms", "at least 50");
        }
        Ok(())
    }

    /// A duration from milliseconds.
    pub fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// File holding the device certificate chain (PEM, leaf first).
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("device.pem")
    }
    /// The control plane's CRL (DER) as last received.
    pub fn crl_path(&self) -> PathBuf {
        self.state_dir.join("crl.der")
    }
    /// Which keystore label holds the device key now (rotation moves to a new label).
    pub fn key_label_path(&self) -> PathBuf {
        self.state_dir.join("device-key.label")
    }
}
