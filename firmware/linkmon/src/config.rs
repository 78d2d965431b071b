//! `popd linkmon` configuration (TOML, see image/etc/popd/linkmon.toml). Parsed with
//! `deny_unknown_fields`, validated here for what the I/O side owns and by the core for the
//! decision parameters; every refusal names the field.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use pop_linkmon_core::{
    BfdConfig, DampingConfig, SelectorConfig, SelectorTuning, UplinkSpec, MAX_UPLINKS,
};
use serde::Deserialize;

use crate::LinkmonError;

/// The whole file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LinkmonConfig {
    /// Unix stream socket answering `status` and `events` with JSON lines.
    #[serde(default = "default_socket")]
    pub socket: PathBuf,
    /// `popd watchdog`'s heartbeat socket; heartbeats are skipped when absent.
    #[serde(default)]
    pub watchdog_socket: Option<PathBuf>,
    /// Events kept for the `events` query.
    #[serde(default = "default_history")]
    pub history: usize,
    /// How often every uplink's gateway neighbour entry is refreshed, in milliseconds.
    #[serde(default = "default_neighbour_refresh_ms")]
    pub neighbour_refresh_ms: u64,
    /// The routes moved between uplinks.
    #[serde(default)]
    pub routes: RoutesConfig,
    /// Decision parameters.
    #[serde(default)]
    pub selector: SelectorFile,
    /// Uplinks in preference order (first is the primary).
    #[serde(rename = "uplink")]
    pub uplinks: Vec<UplinkConfig>,
}

/// The routes installed toward the active uplink's gateway.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoutesConfig {
    /// Destinations (`a.b.c.d/len`); `0.0.0.0/0` is the default route.
    #[serde(default = "default_destinations")]
    pub destinations: Vec<String>,
    /// Routing table (254 is `main`).
    #[serde(default = "default_table")]
    pub table: u32,
    /// Route metric; part of the route's identity, so the replace hits the same route.
    #[serde(default)]
    pub metric: u32,
    /// `rtm_protocol` written on our routes (`ip route` shows `proto N`); 4 is `static`.
    #[serde(default = "default_protocol")]
    pub protocol: u8,
    /// Preferred source for locally originated traffic (the service address).
    #[serde(default)]
    pub prefsrc: Option<Ipv4Addr>,
    /// Source routing for the monitor's own packets: each uplink gets table
    /// `uplink_table_base + index` with a default route via its gateway and a rule
    /// `from <uplink address> lookup <that table>`, so probes past the gateway leave through
    /// their uplink even when the main default route points at another one. A rule
    /// `lookup main suppress_prefixlength 0` before them keeps connected routes winning.
    #[serde(default = "default_true")]
    pub source_routing: bool,
    /// First per-uplink table (at least 256, clear of the reserved 253–255).
    #[serde(default = "default_uplink_table_base")]
    pub uplink_table_base: u32,
    /// Priority of the first rule; the uplinks' rules follow it (main's rule is 32766).
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        Self {
            destinations: default_destinations(),
            table: default_table(),
            metric: 0,
            protocol: default_protocol(),
            prefsrc: None,
            source_routing: true,
            uplink_table_base: default_uplink_table_base(),
            rule_priority: default_rule_priority(),
        }
    }
}

/// Decision parameters (see `pop_linkmon_core::SelectorConfig`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SelectorFile {
    /// Consecutive probe misses on every target that fail an uplink.
    pub probe_miss_threshold: u32,
    /// Consecutive probe replies that clear a probe failure.
    pub probe_recover_threshold: u32,
    /// A more preferred uplink must stay healthy this long before traffic fails back.
    pub hold_down_ms: u64,
    /// Longest wait at start-up before choosing with what is known.
    pub startup_grace_ms: u64,
    /// Flap damping.
    pub damping: DampingFile,
}

impl Default for SelectorFile {
    fn default() -> Self {
        let core = SelectorConfig::default();
        Self {
            probe_miss_threshold: core.probe_miss_threshold,
            probe_recover_threshold: core.probe_recover_threshold,
            hold_down_ms: millis(core.hold_down),
            startup_grace_ms: millis(core.startup_grace),
            damping: DampingFile::default(),
        }
    }
}

impl SelectorFile {
    /// The part the running selector can take without a restart.
    pub fn tuning(&self) -> SelectorTuning {
        SelectorTuning {
            probe_miss_threshold: self.probe_miss_threshold,
            probe_recover_threshold: self.probe_recover_threshold,
            hold_down: Duration::from_millis(self.hold_down_ms),
            damping: DampingConfig {
                penalty_per_failure: self.damping.penalty_per_failure,
                suppress_above: self.damping.suppress_above,
                reuse_below: self.damping.reuse_below,
                half_life: Duration::from_millis(self.damping.half_life_ms),
                max_penalty: self.damping.max_penalty,
            },
        }
    }
}

/// Parses and validates the JSON of a status-socket `apply` request: the `[selector]` fields
/// (`probe_miss_threshold`, `probe_recover_threshold`, `hold_down_ms`, `damping`); a missing
/// field takes its default, an unknown one is refused. The error names the field.
pub fn parse_tuning(json: &str) -> Result<SelectorTuning, String> {
    let file: SelectorFile = serde_json::from_str(json).map_err(|e| format!("selector: {e}"))?;
    let tuning = file.tuning();
    let check = SelectorConfig {
        probe_miss_threshold: tuning.probe_miss_threshold,
        probe_recover_threshold: tuning.probe_recover_threshold,
        hold_down: tuning.hold_down,
        damping: tuning.damping,
        ..SelectorConfig::default()
    };
    check.validate().map_err(|e| e.to_string())?;
    Ok(tuning)
}

/// Flap damping parameters.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DampingFile {
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

impl Default for DampingFile {
    fn default() -> Self {
        let d = DampingConfig::default();
        Self {
            penalty_per_failure: d.penalty_per_failure,
            suppress_above: d.suppress_above,
            reuse_below: d.reuse_below,
            half_life_ms: millis(d.half_life),
            max_penalty: d.max_penalty,
        }
    }
}

/// One uplink.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    /// Name in logs and status (`primary`, `lte`, ...).
    pub name: String,
    /// Network interface.
    pub interface: String,
    /// This appliance's address on the uplink (BFD and probes are sent from it).
    pub address: Ipv4Addr,
    /// The carrier's gateway: next hop of the routes when this uplink is active.
    pub gateway: Ipv4Addr,
    /// BFD toward the gateway (or `peer`); off when absent.
    #[serde(default)]
    pub bfd: Option<BfdFile>,
    /// UDP echo probes to targets past the gateway.
    #[serde(default, rename = "probe")]
    pub probes: Vec<ProbeConfig>,
}

/// BFD session parameters.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BfdFile {
    /// Peer address; the gateway when absent.
    #[serde(default)]
    pub peer: Option<Ipv4Addr>,
    /// Desired Min TX Interval once Up, in microseconds.
    #[serde(default = "default_bfd_interval_us")]
    pub desired_min_tx_us: u32,
    /// Required Min RX Interval, in microseconds.
    #[serde(default = "default_bfd_interval_us")]
    pub required_min_rx_us: u32,
    /// Detect multiplier.
    #[serde(default = "default_detect_mult")]
    pub detect_mult: u8,
    /// UDP port (3784 per RFC 5881; other values only for tests).
    #[serde(default = "default_bfd_port")]
    pub port: u16,
}

/// One probe target.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// UDP echo target `ip:port` past the gateway.
    pub target: SocketAddr,
    /// Interval between probes, in milliseconds.
    #[serde(default = "default_probe_interval_ms")]
    pub interval_ms: u64,
    /// A probe unanswered this long is a miss, in milliseconds.
    #[serde(default = "default_probe_timeout_ms")]
    pub timeout_ms: u64,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
fn default_socket() -> PathBuf {
    PathBuf::from("/run/popd/linkmon.sock")
}
fn default_history() -> usize {
    256
}
fn default_neighbour_refresh_ms() -> u64 {
    1000
}
fn default_destinations() -> Vec<String> {
    vec!["0.0.0.0/0".to_owned()]
}
fn default_table() -> u32 {
    254
}
fn default_protocol() -> u8 {
    4
}
fn default_true() -> bool {
    true
}
fn default_uplink_table_base() -> u32 {
    1000
}
fn default_rule_priority() -> u32 {
    1000
}
fn default_bfd_interval_us() -> u32 {
    50_000
}
fn default_detect_mult() -> u8 {
    3
}
fn default_bfd_port() -> u16 {
    pop_wire::bfd::BFD_CONTROL_PORT
}
fn default_probe_interval_ms() -> u64 {
    100
}
fn default_probe_timeout_ms() -> u64 {
    300
}

/// A parsed destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length.
    pub prefix_len: u8,
}

/// Parses `a.b.c.d/len`, refusing host bits set (the kernel would refuse the route).
pub fn parse_destination(s: &str) -> Option<Destination> {
    let (addr, len) = s.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix_len: u8 = len.parse().ok()?;
    if prefix_len > 32 {
        return None;
    }
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - prefix_len)
    };
    if u32::from(addr) & !mask != 0 {
        return None;
    }
    Some(Destination { addr, prefix_len })
}

impl LinkmonConfig {
    /// Reads, parses and validates a file.
    pub fn from_file(path: &Path) -> Result<Self, LinkmonError> {
        let text = std::fs::read_to_string(path).map_err(|source| LinkmonError::ConfigRead {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, LinkmonError> {
        let cfg: Self = toml::from_str(text).map_err(|e| LinkmonError::ConfigParse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks everything, including what the core checks.
    pub fn validate(&self) -> Result<(), LinkmonError> {
        if !self.socket.is_absolute() {
            return Err(LinkmonError::invalid("socket", "must be an absolute path"));
        }
        if let Some(p) = &self.watchdog_socket {
            if !p.is_absolute() {
                return Err(LinkmonError::invalid(
                    "watchdog_socket",
                    "must be an absolute path",
                ));
            }
        }
        if !(1..=100_000).contains(&self.history) {
            return Err(LinkmonError::invalid("history", "must be 1..=100000"));
        }
        if !(100..=60_000).contains(&self.neighbour_refresh_ms) {
            return Err(LinkmonError::invalid(
                "neighbour_refresh_ms",
                "must be 100..=60000 (keep it below the kernel's reachable time, ~30 s)",
            ));
        }
        if self.routes.destinations.is_empty() {
            return Err(LinkmonError::invalid(
                "routes.destinations",
                "list at least one destination, e.g. \"0.0.0.0/0\"",
            ));
        }
        for d in &self.routes.destinations {
            if parse_destination(d).is_none() {
                return Err(LinkmonError::invalid(
                    "routes.destinations",
                    format!("{d:?} is not an IPv4 network a.b.c.d/len without host bits"),
                ));
            }
        }
        if self.routes.table == 0 || self.routes.table == 255 {
            return Err(LinkmonError::invalid(
                "routes.table",
                "0 (unspec) and 255 (local) are not usable; 254 is main",
            ));
        }
        let n = u32::try_from(self.uplinks.len()).unwrap_or(u32::MAX);
        if self.routes.uplink_table_base < 256
            || self.routes.uplink_table_base > u32::MAX - 256
            || (self.routes.uplink_table_base..self.routes.uplink_table_base.saturating_add(n))
                .contains(&self.routes.table)
        {
            return Err(LinkmonError::invalid(
                "routes.uplink_table_base",
                "must be 256..=4294967039 and its tables must not include routes.table",
            ));
        }
        if !(1..=32000).contains(&self.routes.rule_priority) {
            return Err(LinkmonError::invalid(
                "routes.rule_priority",
                "must be 1..=32000 (ahead of the main table's rule at 32766)",
            ));
        }
        if self.uplinks.is_empty() || self.uplinks.len() > MAX_UPLINKS {
            return Err(LinkmonError::invalid(
                "uplink",
                format!("list 1..={MAX_UPLINKS} [[uplink]] sections, primary first"),
            ));
        }
        for (i, u) in self.uplinks.iter().enumerate() {
            let field = |f: &str| format!("uplink[{i}].{f}");
            if u.name.is_empty() || u.name.len() > 32 || u.name.contains(char::is_whitespace) {
                return Err(LinkmonError::invalid(
                    field("name"),
                    "1-32 characters, no spaces",
                ));
            }
            if self.uplinks[..i].iter().any(|o| o.name == u.name) {
                return Err(LinkmonError::invalid(
                    field("name"),
                    format!("{:?} is used twice", u.name),
                ));
            }
            // IFNAMSIZ is 16 including the terminating NUL.
            if u.interface.is_empty() || u.interface.len() > 15 || u.interface.contains('/') {
                return Err(LinkmonError::invalid(
                    field("interface"),
                    "must be a Linux interface name of 1-15 characters",
                ));
            }
            if self.uplinks[..i].iter().any(|o| o.interface == u.interface) {
                return Err(LinkmonError::invalid(
                    field("interface"),
                    format!("{:?} is used by two uplinks", u.interface),
                ));
            }
            if u.address.is_unspecified() || u.gateway.is_unspecified() {
                return Err(LinkmonError::invalid(
                    field("address"),
                    "address and gateway must be concrete IPv4 addresses",
                ));
            }
            if u.probes.len() > usize::from(u8::MAX) {
                return Err(LinkmonError::invalid(field("probe"), "at most 255 targets"));
            }
            for (j, p) in u.probes.iter().enumerate() {
                if !p.target.is_ipv4() {
                    return Err(LinkmonError::invalid(
                        format!("uplink[{i}].probe[{j}].target"),
                        "must be an IPv4 address:port",
                    ));
                }
                if !(10..=60_000).contains(&p.interval_ms) {
                    return Err(LinkmonError::invalid(
                        format!("uplink[{i}].probe[{j}].interval_ms"),
                        "must be 10..=60000",
                    ));
                }
                if p.timeout_ms < 1 || p.timeout_ms > 10 * p.interval_ms {
                    return Err(LinkmonError::invalid(
                        format!("uplink[{i}].probe[{j}].timeout_ms"),
                        "must be 1..=10 × interval_ms",
                    ));
                }
            }
            if let Some(b) = &u.bfd {
                b.to_core()
                    .validate()
                    .map_err(|e| LinkmonError::invalid(field("bfd"), e.to_string()))?;
                if b.port == 0 {
                    return Err(LinkmonError::invalid(field("bfd.port"), "must not be 0"));
                }
            }
        }
        self.selector_config().validate()?;
        Ok(())
    }

    /// The core's selector configuration.
    pub fn selector_config(&self) -> SelectorConfig {
        let s = &self.selector;
        SelectorConfig {
            uplinks: self
                .uplinks
                .iter()
                .map(|u| UplinkSpec {
                    name: u.name.clone(),
                    bfd: u.bfd.is_some(),
                    probe_targets: u8::try_from(u.probes.len()).unwrap_or(u8::MAX),
                })
                .collect(),
            probe_miss_threshold: s.probe_miss_threshold,
            probe_recover_threshold: s.probe_recover_threshold,
            hold_down: Duration::from_millis(s.hold_down_ms),
            startup_grace: Duration::from_millis(s.startup_grace_ms),
            damping: DampingConfig {
                penalty_per_failure: s.damping.penalty_per_failure,
                suppress_above: s.damping.suppress_above,
                reuse_below: s.damping.reuse_below,
                half_life: Duration::from_millis(s.damping.half_life_ms),
                max_penalty: s.damping.max_penalty,
            },
            // No media-silence input is wired yet (the relay does not report it).
            act_on_media_silence: false,
            ..SelectorConfig::default()
        }
    }

    /// Parsed route destinations (valid after `validate`).
    pub fn destinations(&self) -> Vec<Destination> {
        self.routes
            .destinations
            .iter()
            .filter_map(|d| parse_destination(d))
            .collect()
    }
}

impl BfdFile {
    /// The core's session configuration.
    pub fn to_core(&self) -> BfdConfig {
        BfdConfig {
            desired_min_tx: Duration::from_micros(u64::from(self.desired_min_tx_us)),
            required_min_rx: Duration::from_micros(u64::from(self.required_min_rx_us)),
            detect_mult: self.detect_mult,
            ..BfdConfig::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<LinkmonConfig, LinkmonError> {
        LinkmonConfig::from_toml(text, Path::new("t.toml"))
    }

    const TWO: &str = r#"
[[uplink]]
name = "primary"
interface = "up0"
address = "192.0.2.2"
gateway = "192.0.2.1"
[uplink.bfd]
[[uplink.probe]]
target = "203.0.113.10:7"

[[uplink]]
name = "backup"
interface = "up1"
address = "198.51.100.2"
gateway = "198.51.100.1"
"#;

    #[test]
    fn shipped_defaults_parse() {
        let cfg = parse(include_str!("../../../image/etc/popd/linkmon.toml")).unwrap();
        assert!(cfg.uplinks.len() >= 2);
    }

    #[test]
    fn minimal_two_uplink_config_gets_defaults() {
        let cfg = parse(TWO).unwrap();
        assert_eq!(cfg.socket, Path::new("/run/popd/linkmon.sock"));
        let bfd = cfg.uplinks[0].bfd.as_ref().unwrap();
        assert_eq!(
            (bfd.desired_min_tx_us, bfd.detect_mult, bfd.port),
            (50_000, 3, 3784)
        );
        assert_eq!(cfg.uplinks[0].probes[0].interval_ms, 100);
        let sel = cfg.selector_config();
        assert!(sel.uplinks[0].bfd && !sel.uplinks[1].bfd);
        assert_eq!(sel.uplinks[0].probe_targets, 1);
        assert_eq!(
            cfg.destinations(),
            vec![Destination {
                addr: Ipv4Addr::UNSPECIFIED,
                prefix_len: 0
            }]
        );
    }

    #[test]
    fn unknown_keys_are_refused_and_named() {
        let text = TWO.replace("gateway = \"192.0.2.1\"", "gateway = \"192.0.2.1\"\ngw = 1");
        let msg = parse(&text).unwrap_err().to_string();
        assert!(msg.contains("unknown field `gw`"), "{msg}");
    }

    fn refused_field(text: &str) -> String {
        match parse(text) {
            Err(LinkmonError::ConfigInvalid { field, .. }) => field,
            Err(LinkmonError::Core(e)) => format!("core: {e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn bad_values_are_refused_with_their_field() {
        let cases = [
            (TWO.replace("\"up1\"", "\"up0\""), "uplink[1].interface"),
            (TWO.replace("\"backup\"", "\"primary\""), "uplink[1].name"),
            (
                TWO.replace("interface = \"up0\"", "interface = \"a-very-long-ifname0\""),
                "uplink[0].interface",
            ),
            (
                TWO.replace("[uplink.bfd]", "[uplink.bfd]\ndetect_mult = 0"),
                "uplink[0].bfd",
            ),
            (
                TWO.replace(
                    "target = \"203.0.113.10:7\"",
                    "target = \"203.0.113.10:7\"\ninterval_ms = 1",
                ),
                "uplink[0].probe[0].interval_ms",
            ),
            (
                format!("[routes]\ndestinations = [\"10.0.0.1/8\"]\n{TWO}"),
                "routes.destinations",
            ),
            (format!("[routes]\ntable = 255\n{TWO}"), "routes.table"),
            (
                format!("[routes]\nuplink_table_base = 254\n{TWO}"),
                "routes.uplink_table_base",
            ),
            (
                format!("[routes]\ntable = 1001\n{TWO}"),
                "routes.uplink_table_base",
            ),
            (
                format!("[routes]\nrule_priority = 0\n{TWO}"),
                "routes.rule_priority",
            ),
            (format!("socket = \"x.sock\"\n{TWO}"), "socket"),
            (
                format!("neighbour_refresh_ms = 5\n{TWO}"),
                "neighbour_refresh_ms",
            ),
        ];
        for (text, field) in cases {
            assert_eq!(refused_field(&text), field);
        }
        assert!(matches!(
            parse("history = 3\n"),
            Err(LinkmonError::ConfigParse { .. })
        ));
    }

    #[test]
    fn core_limits_are_enforced_at_load() {
        let text = format!("[selector]\nprobe_miss_threshold = 0\n{TWO}");
        assert!(
            refused_field(&text).starts_with("core:"),
            "{}",
            refused_field(&text)
        );
    }

    #[test]
    fn destinations_parse_strictly() {
        assert_eq!(
            parse_destination("203.0.113.0/24"),
            Some(Destination {
                addr: Ipv4Addr::new(203, 0, 113, 0),
                prefix_len: 24
            })
        );
        assert_eq!(parse_destination("203.0.113.1/24"), None);
        assert_eq!(parse_destination("203.0.113.0/33"), None);
        assert_eq!(parse_destination("203.0.113.0"), None);
    }
}
