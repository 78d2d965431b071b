//! `popd watchdog` configuration (TOML, see image/etc/popd/watchdog.toml).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::heartbeat::valid_service_name;
use crate::supervisor::CriticalService;
use crate::WatchdogError;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WatchdogConfig {
    /// Watchdog device (`/dev/watchdog`; softdog provides one in VMs).
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// Hardware timeout in seconds: how long after the last pet the board resets.
    #[serde(default = "default_timeout_secs")]
    pub timeout_secs: u32,
    /// How often the device is petted while every service is healthy, in milliseconds.
    #[serde(default = "default_pet_interval_ms")]
    pub pet_interval_ms: u64,
    /// The kernel driver was built or loaded with nowayout: never attempt the magic close,
    /// a stop of this service then ends in a reset (which is what nowayout asks for).
    #[serde(default)]
    pub nowayout: bool,
    /// Unix datagram socket services send heartbeats to; also answers `STATUS`.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// Seconds each service gets after this service starts to send its first heartbeat.
    #[serde(default = "default_startup_grace_secs")]
    pub startup_grace_secs: u64,
    /// The critical services.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

/// One critical service.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// Name it sends in its heartbeats (`relay`, `linkmon`, ...).
    pub name: String,
    /// Longest silence, in milliseconds, before it counts as hung.
    pub deadline_ms: u64,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/watchdog")
}
fn default_timeout_secs() -> u32 {
    30
}
fn default_pet_interval_ms() -> u64 {
    1000
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/popd/watchdog.sock")
}
fn default_startup_grace_secs() -> u64 {
    120
}

fn invalid(field: &'static str, reason: impl Into<String>) -> WatchdogError {
    WatchdogError::ConfigInvalid {
        field,
        reason: reason.into(),
    }
}

impl WatchdogConfig {
    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, WatchdogError> {
        let text = std::fs::read_to_string(path).map_err(|source| WatchdogError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, WatchdogError> {
        let cfg: Self = toml::from_str(text).map_err(|e| WatchdogError::ConfigParse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks ranges and consistency.
    pub fn validate(&self) -> Result<(), WatchdogError> {
        if !(1..=3600).contains(&self.timeout_secs) {
            return Err(invalid("timeout_secs", "must be 1..=3600 seconds"));
        }
        let timeout_ms = u64::from(self.timeout_secs) * 1000;
        if self.pet_interval_ms < 10 || self.pet_interval_ms * 2 > timeout_ms {
            return Err(invalid(
                "pet_interval_ms",
                format!("must be at least 10 and at most half of timeout_secs ({timeout_ms} ms)"),
            ));
        }
        if !self.socket.is_absolute() {
            return Err(invalid("socket", "must be an absolute path"));
        }
        if self.services.is_empty() {
            return Err(invalid(
                "service",
                "list at least one [[service]]: with none the board would be petted unconditionally",
            ));
        }
        for (i, s) in self.services.iter().enumerate() {
            if !valid_service_name(&s.name) {
                return Err(invalid(
                    "service.name",
                    format!("{:?} must be 1-32 characters of [a-z0-9_-]", s.name),
                ));
            }
            if s.deadline_ms < 100 {
                return Err(invalid(
                    "service.deadline_ms",
                    format!("{}: must be at least 100 ms", s.name),
                ));
            }
            if self.services[..i].iter().any(|o| o.name == s.name) {
                return Err(invalid(
                    "service.name",
                    format!("{:?} is listed twice", s.name),
                ));
            }
        }
        Ok(())
    }

    /// The critical services as the supervisor wants them.
    pub fn critical_services(&self) -> Vec<CriticalService> {
        self.services
            .iter()
            .map(|s| CriticalService {
                name: s.name.clone(),
                deadline: Duration::from_millis(s.deadline_ms),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WatchdogConfig, WatchdogError> {
        WatchdogConfig::from_toml(text, Path::new("test.toml"))
    }

    #[test]
    fn shipped_defaults_parse() {
        let text = include_str!("../../../image/etc/popd/watchdog.toml");
        let cfg = parse(text).unwrap();
        assert_eq!(cfg.device, Path::new("/dev/watchdog"));
        assert!(cfg.services.iter().any(|s| s.name == "linkmon"));
    }

    #[test]
    fn unknown_field_is_named() {
        let err = parse("timeout = 3\n[[service]]\nname=\"a\"\ndeadline_ms=1000\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unknown field `timeout`"), "{msg}");
    }

    #[test]
    fn inconsistent_values_are_refused_with_the_field() {
        let svc = "[[service]]\nname=\"relay\"\ndeadline_ms=1000\n";
        for (text, field) in [
            (format!("timeout_secs = 0\n{svc}"), "timeout_secs"),
            (
                format!("timeout_secs = 2\npet_interval_ms = 1500\n{svc}"),
                "pet_interval_ms",
            ),
            (format!("socket = \"rel\"\n{svc}"), "socket"),
            (String::new(), "service"),
            (
                "[[service]]\nname=\"Relay\"\ndeadline_ms=1000\n".to_owned(),
                "service.name",
            ),
            (
                "[[service]]\nname=\"r\"\ndeadline_ms=10\n".to_owned(),
                "service.deadline_ms",
            ),
            (format!("{svc}{svc}"), "service.name"),
        ] {
            match parse(&text) {
                Err(WatchdogError::ConfigInvalid { field: f, .. }) => {
                    assert_eq!(f, field, "{text}")
                }
                other => panic!("{text}: expected {field} refused, got {other:?}"),
            }
        }
    }
}
