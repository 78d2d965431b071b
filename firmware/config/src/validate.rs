//! Semantic checks of a parsed document. The first problem found is returned, named by its
//! dotted path; the order follows the document so an operator fixing errors one by one works
//! top to bottom.

use std::net::{IpAddr, SocketAddr};

use crate::{ApplianceConfig, Cidr, ConfigError, DampingSection, FirewallSection};

/// BFD ports the firewall opens (RFC 5881 single-hop control, RFC 5883 multihop, RFC 5881 echo).
pub const BFD_PORTS: [u16; 3] = [3784, 4784, 3785];

/// TOML integers are signed 64-bit: a larger `u64` could not be written back into a document.
const TOML_INT_MAX: u64 = i64::MAX as u64;
const DAY_SECS: u64 = 86_400;
const DAY_MS: u64 = DAY_SECS * 1000;

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::new(field, reason)
}

pub(crate) fn validate(cfg: &ApplianceConfig) -> Result<(), ConfigError> {
    if cfg.version == 0 || cfg.version > TOML_INT_MAX {
        return Err(err(
            "version",
            format!(
                "{} is not a document version; use 1..={TOML_INT_MAX}",
                cfg.version
            ),
        ));
    }
    relay(cfg)?;
    linkmon(cfg)?;
    firewall(&cfg.firewall)?;
    for (name, section) in [("sip", &cfg.sip), ("recording", &cfg.recording)] {
        if let Some(table) = section {
            if let Some(key) = table.keys().next() {
                return Err(err(
                    format!("{name}.{key}"),
                    format!("[{name}] is not supported yet; leave the section out or empty"),
                ));
            }
        }
    }
    Ok(())
}

fn relay(cfg: &ApplianceConfig) -> Result<(), ConfigError> {
    let r = &cfg.relay;
    if r.max_sessions == 0 {
        return Err(err(
            "relay.max_sessions",
            "0 would refuse every call; use at least 1",
        ));
    }
    for (field, v) in [
        ("relay.no_media_secs", r.no_media_secs),
        ("relay.unanswered_offer_secs", r.unanswered_offer_secs),
    ] {
        if v == 0 || v > DAY_SECS {
            return Err(err(
                field,
                format!("{v} s; use 1..={DAY_SECS} (0 would close every call at once)"),
            ));
        }
    }
    // Calls longer than a week are runaway sessions whatever the product; the bound also keeps
    // the value far from the TOML integer limit.
    let week = 7 * DAY_SECS;
    if r.max_duration_secs > week {
        return Err(err(
            "relay.max_duration_secs",
            format!("{} s; use 0 (no limit) to {week}", r.max_duration_secs),
        ));
    }
    Ok(())
}

fn linkmon(cfg: &ApplianceConfig) -> Result<(), ConfigError> {
    let l = &cfg.linkmon;
    for (field, v) in [
        ("linkmon.probe_miss_threshold", l.probe_miss_threshold),
        ("linkmon.probe_recover_threshold", l.probe_recover_threshold),
    ] {
        if !(1..=1000).contains(&v) {
            return Err(err(field, format!("{v}; use 1..=1000")));
        }
    }
    if l.hold_down_ms > DAY_MS {
        return Err(err(
            "linkmon.hold_down_ms",
            format!("{} ms; at most one day ({DAY_MS})", l.hold_down_ms),
        ));
    }
    damping(&l.damping)
}

/// The same rules as `pop_linkmon_core::DampingConfig::validate`, so a document accepted here is
/// never refused by linkmon when the agent hands it over.
fn damping(d: &DampingSection) -> Result<(), ConfigError> {
    let finite_pos = |v: f64| v.is_finite() && v > 0.0;
    if !finite_pos(d.penalty_per_failure) {
        return Err(err(
            "linkmon.damping.penalty_per_failure",
            format!("{}; must be a positive number", d.penalty_per_failure),
        ));
    }
    if !finite_pos(d.reuse_below) {
        return Err(err(
            "linkmon.damping.reuse_below",
            format!("{}; must be a positive number", d.reuse_below),
        ));
    }
    if !d.suppress_above.is_finite() {
        return Err(err(
            "linkmon.damping.suppress_above",
            format!("{}; must be a finite number", d.suppress_above),
        ));
    }
    if d.suppress_above <= d.reuse_below {
        return Err(err(
            "linkmon.damping.reuse_below",
            format!(
                "{} is not below suppress_above ({}); an uplink would never be reused",
                d.reuse_below, d.suppress_above
            ),
        ));
    }
    if !(d.max_penalty.is_finite() && d.max_penalty > d.suppress_above) {
        return Err(err(
            "linkmon.damping.max_penalty",
            format!(
                "{} must be above suppress_above ({}), or no uplink is ever suppressed",
                d.max_penalty, d.suppress_above
            ),
        ));
    }
    if !(100..=DAY_MS).contains(&d.half_life_ms) {
        return Err(err(
            "linkmon.damping.half_life_ms",
            format!("{} ms; use 100..={DAY_MS}", d.half_life_ms),
        ));
    }
    Ok(())
}

/// Parses every entry of a list of networks, naming the entry that fails.
fn cidrs(field: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    list.iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse::<Cidr>()
                .map_err(|reason| err(format!("{field}[{i}]"), reason))
        })
        .collect()
}

fn firewall(fw: &FirewallSection) -> Result<(), ConfigError> {
    // Ports first: the checks on lists below refer to them.
    if fw.rtp_port_min < 1024 {
        return Err(err(
            "firewall.rtp_port_min",
            format!(
                "{} is a privileged port; use 1024 or above",
                fw.rtp_port_min
            ),
        ));
    }
    if u32::from(fw.rtp_port_max) < u32::from(fw.rtp_port_min) + 3 {
        return Err(err(
            "firewall.rtp_port_max",
            format!(
                "range {}..={} holds less than two RTP/RTCP pairs",
                fw.rtp_port_min, fw.rtp_port_max
            ),
        ));
    }
    let rtp = fw.rtp_port_min..=fw.rtp_port_max;
    // Every service port must be outside the RTP range (the range is opened to everyone and
    // exempt from conntrack) and distinct from the others (one rule would shadow the other).
    let mut services: Vec<(String, u16)> = Vec::new();
    if fw.sip_ports.len() > 16 {
        return Err(err("firewall.sip_ports", "at most 16 ports"));
    }
    for (i, &p) in fw.sip_ports.iter().enumerate() {
        services.push((format!("firewall.sip_ports[{i}]"), p));
    }
    services.push(("firewall.ng_port".into(), fw.ng_port));
    services.push(("firewall.ssh_port".into(), fw.ssh_port));
    for (i, (field, port)) in services.iter().enumerate() {
        if *port == 0 {
            return Err(err(field.as_str(), "port 0 cannot be used"));
        }
        if rtp.contains(port) {
            return Err(err(
                field.as_str(),
                format!(
                    "port {port} is inside the RTP range {}..={}, which is open to everyone",
                    fw.rtp_port_min, fw.rtp_port_max
                ),
            ));
        }
        if BFD_PORTS.contains(port) {
            return Err(err(
                field.as_str(),
                format!("port {port} is reserved for BFD ({BFD_PORTS:?})"),
            ));
        }
        if let Some((other, _)) = services[..i].iter().find(|(_, p)| p == port) {
            return Err(err(
                field.as_str(),
                format!("port {port} is already used by {other}"),
            ));
        }
    }
    if !fw.sip_peers.is_empty() && fw.sip_ports.is_empty() {
        return Err(err(
            "firewall.sip_ports",
            "empty while sip_peers is not; list the SIP ports (usually 5060)",
        ));
    }
    if BFD_PORTS.iter().any(|p| rtp.contains(p)) {
        return Err(err(
            "firewall.rtp_port_min",
            format!("the RTP range must not include the BFD ports {BFD_PORTS:?}"),
        ));
    }

    cidrs("firewall.sip_peers", &fw.sip_peers)?;
    cidrs("firewall.ng_proxies", &fw.ng_proxies)?;
    if fw.management_networks.is_empty() {
        return Err(err(
            "firewall.management_networks",
            "empty: SSH would be closed to everyone and the box locked out of local management; \
             list at least one network",
        ));
    }
    cidrs("firewall.management_networks", &fw.management_networks)?;
    if fw.control_plane.is_empty() {
        return Err(err(
            "firewall.control_plane",
            "empty: the box would lock itself out of its control plane; list at least one \
             IP:port",
        ));
    }
    for (i, s) in fw.control_plane.iter().enumerate() {
        let field = format!("firewall.control_plane[{i}]");
        let addr: SocketAddr = s.parse().map_err(|_| {
            err(
                &field,
                format!("{s:?} is not IP:port (write IPv6 as [addr]:port; names are not resolved)"),
            )
        })?;
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_multicast() {
            return Err(err(
                &field,
                format!("{s} is not a reachable unicast endpoint"),
            ));
        }
    }
    for (i, s) in fw.bfd_peers.iter().enumerate() {
        let ip: IpAddr = s.parse().map_err(|_| {
            err(
                format!("firewall.bfd_peers[{i}]"),
                format!("{s:?} is not an IP address (BFD peers are single routers, not networks)"),
            )
        })?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(err(
                format!("firewall.bfd_peers[{i}]"),
                format!("{s} is not a unicast address"),
            ));
        }
    }
    let r = &fw.rate_limits;
    for (field, v) in [
        (
            "firewall.rate_limits.sip_per_source_pps",
            r.sip_per_source_pps,
        ),
        (
            "firewall.rate_limits.ng_per_source_pps",
            r.ng_per_source_pps,
        ),
        (
            "firewall.rate_limits.ssh_new_per_source_per_minute",
            r.ssh_new_per_source_per_minute,
        ),
    ] {
        // nftables' limit takes a 32-bit rate; 0 would drop everything from every source.
        if v == 0 || v > 1_000_000 {
            return Err(err(field, format!("{v}; use 1..=1000000")));
        }
    }
    Ok(())
}
