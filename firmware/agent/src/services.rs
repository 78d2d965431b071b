//! The services the agent configures and watches: the relay (control socket), the link
//! monitor (status socket) and the firewall (nftables), plus the control plane's reachability.
//!
//! [`Services`] is what the apply procedure needs; [`SystemServices`] is the real thing. Tests
//! of the procedure's logic use a fake beneath the real-process tests of the same behaviour.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pop_config::ApplianceConfig;
use serde_json::{json, Value};

/// How long a local socket query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the reachability probe of the control plane may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A part of the configuration a service refused (or could not be handed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartError {
    /// Dotted field or section (`relay`, `firewall`).
    pub field: String,
    /// Why.
    pub reason: String,
}

/// What was running before a configuration was applied, to restore it when there is no
/// previous appliance configuration to re-apply (the first push).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The relay's limits as its status reported them.
    pub relay_limits: Option<Value>,
    /// Whether our nftables table existed.
    pub firewall_present: bool,
    /// The link monitor's selector tuning as its status reported it.
    pub linkmon_tuning: Option<Value>,
}

/// Configuration hand-off and health.
pub trait Services: Send {
    /// Records what runs now.
    fn snapshot(&mut self) -> Snapshot;
    /// Hands each service its part; stops at the first refusal.
    fn apply(&mut self, cfg: &ApplianceConfig) -> Result<(), PartError>;
    /// Restores a snapshot (when there is no previous configuration to re-apply).
    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), PartError>;
    /// Current problems, each a short sentence; empty means healthy.
    fn problems(&mut self) -> Vec<String>;
}

/// The real services.
#[derive(Debug, Clone)]
pub struct SystemServices {
    /// `popd relay`'s control socket.
    pub relay_socket: Option<PathBuf>,
    /// `popd linkmon`'s status socket.
    pub linkmon_socket: Option<PathBuf>,
    /// nftables target (None: the firewall is not managed here).
    pub firewall: Option<pop_firewall::Nft>,
    /// The control plane, probed with a fresh TCP connection: a configuration that cuts the
    /// appliance off its control plane (a firewall mistake) must be rolled back.
    pub control_plane: SocketAddr,
}

impl Services for SystemServices {
    fn snapshot(&mut self) -> Snapshot {
        let relay_limits = self
            .relay_socket
            .as_deref()
            .and_then(|p| relay_query(p, &json!({"op": "status"})).ok())
            .and_then(|s| s.get("limits").cloned());
        let firewall_present = self
            .firewall
            .as_ref()
            .is_some_and(|nft| matches!(nft.current(), Ok(Some(_))));
        let linkmon_tuning = self
            .linkmon_socket
            .as_deref()
            .and_then(|p| linkmon_status(p).ok())
            .and_then(|s| s.get("tuning").cloned());
        Snapshot {
            relay_limits,
            firewall_present,
            linkmon_tuning,
        }
    }

    fn apply(&mut self, cfg: &ApplianceConfig) -> Result<(), PartError> {
        if let Some(path) = &self.relay_socket {
            let r = &cfg.relay;
            let limits = json!({
                "max_sessions": r.max_sessions,
                "no_media_secs": r.no_media_secs,
                "max_duration_secs": r.max_duration_secs,
                "unanswered_offer_secs": r.unanswered_offer_secs,
            });
            relay_apply(path, limits)?;
        }
        if let Some(path) = &self.linkmon_socket {
            let tuning = serde_json::to_value(&cfg.linkmon).map_err(|e| PartError {
                field: "linkmon".into(),
                reason: e.to_string(),
            })?;
            linkmon_apply(path, &tuning)?;
        }
        if let Some(nft) = &self.firewall {
            let script = pop_firewall::render(&cfg.firewall);
            nft.apply(&script).map_err(|e| PartError {
                field: "firewall".into(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }

    fn restore(&mut self, snapshot: &Snapshot) -> Result<(), PartError> {
        if let (Some(path), Some(limits)) = (&self.relay_socket, &snapshot.relay_limits) {
            relay_apply(path, limits.clone())?;
        }
        if let (Some(path), Some(tuning)) = (&self.linkmon_socket, &snapshot.linkmon_tuning) {
            linkmon_apply(path, tuning)?;
        }
        if let Some(nft) = &self.firewall {
            if !snapshot.firewall_present {
                nft.remove().map_err(|e| PartError {
                    field: "firewall".into(),
                    reason: e.to_string(),
                })?;
            }
        }
        Ok(())
    }

    fn problems(&mut self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(path) = &self.relay_socket {
            match relay_query(path, &json!({"op": "status"})) {
                Ok(s) if s["workers_alive"] == true => {}
                Ok(_) => problems.push("relay: a data-plane worker stopped".into()),
                Err(e) => problems.push(format!("relay: control socket: {e}")),
            }
        }
        if let Some(path) = &self.linkmon_socket {
            match linkmon_status(path) {
                Ok(s) if s["all_down"] != true && !s["active"].is_null() => {}
                Ok(_) => problems.push("linkmon: no usable uplink".into()),
                Err(e) => problems.push(format!("linkmon: status socket: {e}")),
            }
        }
        if let Err(e) = TcpStream::connect_timeout(&self.control_plane, PROBE_TIMEOUT) {
            problems.push(format!(
                "control plane {} unreachable: {e}",
                self.control_plane
            ));
        }
        problems
    }
}

fn relay_apply(path: &Path, limits: Value) -> Result<(), PartError> {
    let reply =
        relay_query(path, &json!({"op": "apply", "limits": limits})).map_err(|e| PartError {
            field: "relay".into(),
            reason: format!("control socket: {e}"),
        })?;
    if reply["ok"] == true {
        return Ok(());
    }
    let field = reply["field"].as_str().unwrap_or("").to_owned();
    Err(PartError {
        field: if field.is_empty() {
            "relay".into()
        } else {
            format!("relay.{field}")
        },
        reason: reply["reason"].as_str().unwrap_or("refused").to_owned(),
    })
}

/// `apply <json>` on the link monitor's status socket.
fn linkmon_apply(path: &Path, tuning: &Value) -> Result<(), PartError> {
    let refused = |reason: String| PartError {
        field: "linkmon".into(),
        reason,
    };
    let mut stream =
        UnixStream::connect(path).map_err(|e| refused(format!("status socket: {e}")))?;
    let _ = stream.set_read_timeout(Some(QUERY_TIMEOUT));
    stream
        .write_all(format!("apply {tuning}\n").as_bytes())
        .map_err(|e| refused(format!("status socket: {e}")))?;
    let mut reply = String::new();
    BufReader::new(stream)
        .take(1 << 16)
        .read_line(&mut reply)
        .map_err(|e| refused(format!("status socket: {e}")))?;
    let v: Value = serde_json::from_str(&reply).map_err(|e| refused(format!("bad reply: {e}")))?;
    if v["ok"] == true {
        Ok(())
    } else {
        Err(refused(
            v["reason"].as_str().unwrap_or("refused").to_owned(),
        ))
    }
}

/// One request on the relay's control socket.
pub fn relay_query(path: &Path, request: &Value) -> std::io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(QUERY_TIMEOUT))?;
    stream.set_write_timeout(Some(QUERY_TIMEOUT))?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reply = String::new();
    BufReader::new(stream)
        .take(16 << 20)
        .read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// `status` on the link monitor's socket (one JSON object).
pub fn linkmon_status(path: &Path) -> std::io::Result<Value> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(QUERY_TIMEOUT))?;
    stream.write_all(b"status\n")?;
    let mut reply = String::new();
    BufReader::new(stream).take(1 << 20).read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// `events` on the link monitor's socket: one JSON object per line, oldest first.
pub fn linkmon_events(path: &Path) -> std::io::Result<Vec<Value>> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(QUERY_TIMEOUT))?;
    stream.write_all(b"events\n")?;
    let mut out = Vec::new();
    for line in BufReader::new(stream).take(16 << 20).lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        out.push(
            serde_json::from_str(&line)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?,
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    /// The linkmon part travels as JSON into linkmon's `[selector]` schema (which refuses
    /// unknown fields): the names must match exactly.
    #[test]
    fn linkmon_part_uses_the_selector_field_names() {
        let cfg = pop_config::parse(
            "version = 1\n[firewall]\ncontrol_plane = [\"192.0.2.1:7443\"]\n\
             management_networks = [\"192.0.2.0/24\"]\n",
        )
        .expect("valid");
        let v = serde_json::to_value(&cfg.linkmon).expect("json");
        let mut keys: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "damping",
                "hold_down_ms",
                "probe_miss_threshold",
                "probe_recover_threshold"
            ]
        );
        let mut damping: Vec<&str> = v["damping"]
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        damping.sort_unstable();
        assert_eq!(
            damping,
            [
                "half_life_ms",
                "max_penalty",
                "penalty_per_failure",
                "reuse_below",
                "suppress_above"
            ]
        );
    }
}
