//! The relay's configuration: a TOML file, overridden by command-line flags, validated once at
//! the boundary so that the rest of the service only ever sees values that make sense.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use pop_dataplane::{Backend, DataplaneConfig};
use pop_relay_core::CoreConfig;
use serde::Deserialize;

/// Why a configuration was refused. Every variant names the field and the reason, so that an
/// operator (or the control plane) can fix exactly what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// Path given.
        path: String,
        /// OS error.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this schema (unknown keys are refused too).
    #[error("config file {path}: {message}")]
    Parse {
        /// Path given.
        path: String,
        /// Parser message, with line and column.
        message: String,
    },
    /// A value is out of range or inconsistent with another.
    #[error("invalid config: `{field}`: {reason}")]
    Invalid {
        /// Dotted path of the field, as in the file (`media.port_min`).
        field: &'static str,
        /// What is wrong and what would be accepted.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// `[ng]`: where the NG control protocol listens.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NgConfig {
    /// UDP address (Kamailio's and OpenSIPS's `rtpengine` modules use UDP).
    pub listen_udp: SocketAddr,
    /// Optional TCP address (same framing: cookie, space, bencoded dictionary).
    pub listen_tcp: Option<SocketAddr>,
}

impl Default for NgConfig {
    fn default() -> Self {
        Self {
            listen_udp: SocketAddr::from(([127, 0, 0, 1], 2223)),
            listen_tcp: None,
        }
    }
}

/// `[media]`: the address media is bound to and advertised in SDP, and the port range.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Bound and written into SDP (`c=`, `a=rtcp`). The appliance's service address.
    pub address: IpAddr,
    /// Lowest RTP port (inclusive).
    pub port_min: u16,
    /// Highest port (inclusive; RTCP of the highest pair must fit).
    pub port_max: u16,
    /// Seconds a released port rests before reuse, so late packets of an old call never reach
    /// a new one.
    pub port_quarantine_secs: u64,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            address: IpAddr::from([127, 0, 0, 1]),
            port_min: 30000,
            port_max: 39999,
            port_quarantine_secs: 30,
        }
    }
}

/// `[dataplane]`: how packets are moved.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneSection {
    /// `uring` (default) or `mmsg` (recvmmsg/sendmmsg, for hosts where io_uring loses).
    pub backend: String,
    /// Worker threads; each owns its ring and a share of the streams.
    pub workers: usize,
    /// CPUs to pin workers to, in order (empty: no pinning).
    pub pin_cpus: Vec<usize>,
    /// io_uring: once media flows, a worker sleeps until 32 completions are ready or this many
    /// microseconds have passed (0: wake per completion). Trades at most this much added
    /// latency for far fewer wake-ups per packet.
    pub batch_wait_usec: u32,
}

impl Default for DataplaneSection {
    fn default() -> Self {
        Self {
            backend: "uring".into(),
            workers: 1,
            pin_cpus: Vec::new(),
            batch_wait_usec: 0,
        }
    }
}

/// `[limits]`: what the relay accepts before it answers `load limit`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Concurrent calls; further offers are answered `load limit`.
    pub max_sessions: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_sessions: 4000 }
    }
}

/// `[timeouts]`, in seconds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// A call with no media in either direction for this long is closed.
    pub no_media_secs: u64,
    /// A call older than this is closed (0: no limit).
    pub max_duration_secs: u64,
    /// An offer never answered is closed after this long.
    pub unanswered_offer_secs: u64,
    /// A deleted call stays queryable this long (rtpengine's `--delete-delay`).
    pub delete_delay_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            no_media_secs: 60,
            max_duration_secs: 0,
            unanswered_offer_secs: 60,
            delete_delay_secs: 0,
        }
    }
}

/// `[supervision]`: who vouches for the relay's progress.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SupervisionConfig {
    /// `popd watchdog`'s heartbeat socket; the relay beats there once a second while its
    /// control loop runs and every data-plane worker is alive. Unset: no heartbeats.
    pub watchdog_socket: Option<std::path::PathBuf>,
}

/// `[control]`: the local control socket (`popd agent` reads status and call records there and
/// applies configuration pushes).
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Unix socket path (e.g. `/run/popd/relay.sock`). Unset: no control socket.
    pub socket: Option<std::path::PathBuf>,
}

/// The whole relay configuration.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// NG control listener.
    pub ng: NgConfig,
    /// Media address and ports.
    pub media: MediaConfig,
    /// Data plane.
    pub dataplane: DataplaneSection,
    /// Admission limits.
    pub limits: LimitsConfig,
    /// Session timeouts.
    pub timeouts: TimeoutsConfig,
    /// Heartbeats to the hardware-watchdog service.
    pub supervision: SupervisionConfig,
    /// Local control socket.
    pub control: ControlConfig,
}

impl RelayConfig {
    /// Reads and parses a TOML file (not yet validated: flags may still override it).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: "<text>".into(),
            message: e.to_string(),
        })
    }

    /// Checks every value and cross-field rule; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let m = &self.media;
        if m.address.is_unspecified() || m.address.is_multicast() {
            return Err(invalid(
                "media.address",
                format!(
                    "{} cannot be written into SDP; give the unicast address peers send media to",
                    m.address
                ),
            ));
        }
        if m.port_min < 1024 {
            return Err(invalid(
                "media.port_min",
                format!("{} is a privileged port; use 1024 or above", m.port_min),
            ));
        }
        if m.port_max < m.port_min.saturating_add(3) {
            return Err(invalid(
                "media.port_max",
                format!(
                    "range {}..={} holds less than two RTP/RTCP pairs",
                    m.port_min, m.port_max
                ),
            ));
        }
        let d = &self.dataplane;
        if d.backend.parse::<Backend>().is_err() {
            return Err(invalid(
                "dataplane.backend",
                format!("`{}` is not a backend; use `uring` or `mmsg`", d.backend),
            ));
        }
        if d.workers == 0 || d.workers > 64 {
            return Err(invalid(
                "dataplane.workers",
                format!("{} workers; use 1 to 64", d.workers),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(bad) = d.pin_cpus.iter().find(|&&c| c >= cpus) {
            return Err(invalid(
                "dataplane.pin_cpus",
                format!(
                    "CPU {bad} does not exist; this host has CPUs 0..{}",
                    cpus - 1
                ),
            ));
        }
        if d.batch_wait_usec > 10_000 {
            return Err(invalid(
                "dataplane.batch_wait_usec",
                format!(
                    "{} µs would be added to media latency; use 0 to 10000",
                    d.batch_wait_usec
                ),
            ));
        }
        if self.limits.max_sessions == 0 {
            return Err(invalid(
                "limits.max_sessions",
                "0 would refuse every call; use at least 1",
            ));
        }
        let t = &self.timeouts;
        if t.no_media_secs == 0 {
            return Err(invalid(
                "timeouts.no_media_secs",
                "0 would close every call at once; use at least 1",
            ));
        }
        if t.unanswered_offer_secs == 0 {
            return Err(invalid(
                "timeouts.unanswered_offer_secs",
                "0 would close every offer at once; use at least 1",
            ));
        }
        Ok(())
    }

    /// The sans-I/O core's view of this configuration.
    pub fn core_config(&self) -> CoreConfig {
        let t = &self.timeouts;
        CoreConfig {
            media_address: self.media.address,
            port_min: self.media.port_min,
            port_max: self.media.port_max,
            port_quarantine: Duration::from_secs(self.media.port_quarantine_secs),
            max_sessions: self.limits.max_sessions,
            no_media_timeout: Duration::from_secs(t.no_media_secs),
            max_duration: (t.max_duration_secs > 0)
                .then(|| Duration::from_secs(t.max_duration_secs)),
            unanswered_offer_timeout: Duration::from_secs(t.unanswered_offer_secs),
            delete_delay: Duration::from_secs(t.delete_delay_secs),
            ..CoreConfig::default()
        }
    }

    /// The data plane's view of this configuration. Call after [`Self::validate`].
    pub fn dataplane_config(&self) -> Result<DataplaneConfig, ConfigError> {
        let backend = self.dataplane.backend.parse::<Backend>().map_err(|_| {
            invalid(
                "dataplane.backend",
                format!(
                    "`{}` is not a backend; use `uring` or `mmsg`",
                    self.dataplane.backend
                ),
            )
        })?;
        // Every media port is at most one socket, and streams are spread over workers by id
        // (not perfectly evenly), so each worker's table holds the whole range: the core's
        // port allocator, not the data plane, is what runs out first and says so.
        let ports_in_range = u32::from(self.media.port_max) - u32::from(self.media.port_min) + 1;
        Ok(DataplaneConfig {
            backend,
            workers: self.dataplane.workers,
            pin_cpus: self.dataplane.pin_cpus.clone(),
            max_sockets_per_worker: ports_in_range,
            batch_wait_usec: self.dataplane.batch_wait_usec,
            ..DataplaneConfig::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_field(text: &str) -> &'static str {
        let cfg = RelayConfig::from_toml(text).expect("parses");
        match cfg.validate() {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default()
            .validate()
            .expect("defaults validate");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let err = RelayConfig::from_toml("[media]\nport_mni = 4000\n").unwrap_err();
        assert!(err.to_string().contains("port_mni"), "{err}");
    }

    #[test]
    fn bad_values_name_their_field() {
        assert_eq!(
            refused_field("[media]\naddress = \"0.0.0.0\"\n"),
            "media.address"
        );
        assert_eq!(refused_field("[media]\nport_min = 80\n"), "media.port_min");
        assert_eq!(
            refused_field("[media]\nport_min = 40000\nport_max = 40001\n"),
            "media.port_max"
        );
        assert_eq!(
            refused_field("[dataplane]\nbackend = \"dpdk\"\n"),
            "dataplane.backend"
        );
        assert_eq!(
            refused_field("[dataplane]\nworkers = 0\n"),
            "dataplane.workers"
        );
        assert_eq!(
            refused_field("[dataplane]\npin_cpus = [4096]\n"),
            "dataplane.pin_cpus"
        );
        assert_eq!(
            refused_field("[limits]\nmax_sessions = 0\n"),
            "limits.max_sessions"
        );
        assert_eq!(
            refused_field("[timeouts]\nno_media_secs = 0\n"),
            "timeouts.no_media_secs"
        );
    }

    #[test]
    fn file_values_reach_the_core_and_data_plane() {
        let cfg = RelayConfig::from_toml(
            "[media]\naddress = \"::1\"\nport_min = 20000\nport_max = 20099\n\
             [dataplane]\nbackend = \"mmsg\"\nworkers = 2\n\
             [timeouts]\nmax_duration_secs = 7200\n",
        )
        .expect("parses");
        cfg.validate().expect("valid");
        let core = cfg.core_config();
        assert_eq!(core.media_address, "::1".parse::<IpAddr>().unwrap());
        assert_eq!((core.port_min, core.port_max), (20000, 20099));
        assert_eq!(core.max_duration, Some(Duration::from_secs(7200)));
        let dp = cfg.dataplane_config().expect("backend parses");
        assert!(matches!(dp.backend, Backend::Mmsg));
        assert_eq!(dp.workers, 2);
        assert_eq!(
            dp.max_sockets_per_worker, 100,
            "one slot per port of the range"
        );
    }
}
