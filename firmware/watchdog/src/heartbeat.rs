//! Service heartbeats: the datagram a critical service sends to `popd watchdog` from inside its
//! main loop to prove the loop still turns.
//!
//! Format (ASCII, one datagram): `POPD-HEARTBEAT/1 <service>[ <detail>]`, where `<service>` is
//! 1–32 characters of `[a-z0-9_-]` and `<detail>` is up to 128 printable characters shown in
//! the watchdog's status. The detail is informational only: the watchdog never decides on it,
//! so "all uplinks down" reported by linkmon cannot stop the petting.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

use crate::WatchdogError;

const MAGIC: &str = "POPD-HEARTBEAT/1 ";
const MAX_SERVICE: usize = 32;
const MAX_DETAIL: usize = 128;

/// A parsed heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat<'a> {
    /// Service name, as configured in the watchdog's `[[service]]` list.
    pub service: &'a str,
    /// Free-form state for the status report (never used to decide).
    pub detail: Option<&'a str>,
}

/// Why a datagram is not a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatRejection {
    /// Does not start with the protocol tag.
    NotHeartbeat,
    /// Service name empty, too long or with characters outside `[a-z0-9_-]`.
    BadService,
    /// Detail too long or not printable ASCII.
    BadDetail,
}

/// Whether `name` is a valid service name for heartbeats and the watchdog config.
pub fn valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl<'a> Heartbeat<'a> {
    /// Parses one datagram.
    pub fn parse(datagram: &'a [u8]) -> Result<Self, HeartbeatRejection> {
        let text = std::str::from_utf8(datagram).map_err(|_| HeartbeatRejection::NotHeartbeat)?;
        let rest = text
            .strip_prefix(MAGIC)
            .ok_or(HeartbeatRejection::NotHeartbeat)?;
        let (service, detail) = match rest.split_once(' ') {
            Some((s, d)) => (s, Some(d)),
            None => (rest, None),
        };
        if !valid_service_name(service) {
            return Err(HeartbeatRejection::BadService);
        }
        if let Some(d) = detail {
            if d.len() > MAX_DETAIL || !d.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                return Err(HeartbeatRejection::BadDetail);
            }
        }
        Ok(Self { service, detail })
    }

    /// The datagram for this heartbeat.
    pub fn encode(&self) -> String {
        match self.detail {
            Some(d) => format!("{MAGIC}{} {d}", self.service),
            None => format!("{MAGIC}{}", self.service),
        }
    }
}

/// Sends heartbeats for one service. Failures are returned, not retried: the watchdog being
/// absent (not installed on a dev box, restarting) must never slow the service's loop.
#[derive(Debug)]
pub struct HeartbeatSender {
    socket: UnixDatagram,
    path: PathBuf,
    service: String,
}

impl HeartbeatSender {
    /// A sender for `service` to the watchdog socket at `path`.
    pub fn new(path: &Path, service: &str) -> Result<Self, WatchdogError> {
        if !valid_service_name(service) {
            return Err(WatchdogError::ConfigInvalid {
                field: "service",
                reason: format!("{service:?} must be 1-{MAX_SERVICE} characters of [a-z0-9_-]"),
            });
        }
        let socket = UnixDatagram::unbound().map_err(|source| WatchdogError::Socket {
            path: path.to_owned(),
            source,
        })?;
        socket
            .set_nonblocking(true)
            .map_err(|source| WatchdogError::Socket {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            socket,
            path: path.to_owned(),
            service: service.to_owned(),
        })
    }

    /// Sends one heartbeat; `detail` longer than allowed is cut, non-printable bytes replaced.
    pub fn beat(&self, detail: Option<&str>) -> Result<(), WatchdogError> {
        let cleaned: Option<String> = detail.map(|d| {
            d.chars()
                .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
                .take(MAX_DETAIL)
                .collect()
        });
        let msg = Heartbeat {
            service: &self.service,
            detail: cleaned.as_deref(),
        }
        .encode();
        self.socket
            .send_to(msg.as_bytes(), &self.path)
            .map(|_| ())
            .map_err(|source| WatchdogError::Socket {
                path: self.path.clone(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_and_without_detail() {
        let hb = Heartbeat {
            service: "linkmon",
            detail: Some("all uplinks down"),
        };
        let wire = hb.encode();
        assert_eq!(Heartbeat::parse(wire.as_bytes()), Ok(hb));
        assert_eq!(
            Heartbeat::parse(b"POPD-HEARTBEAT/1 relay"),
            Ok(Heartbeat {
                service: "relay",
                detail: None
            })
        );
    }

    #[test]
    fn malformed_heartbeats_are_rejected() {
        assert_eq!(
            Heartbeat::parse(b"WATCHDOG=1"),
            Err(HeartbeatRejection::NotHeartbeat)
        );
        assert_eq!(
            Heartbeat::parse(b"POPD-HEARTBEAT/1 "),
            Err(HeartbeatRejection::BadService)
        );
        assert_eq!(
            Heartbeat::parse(b"POPD-HEARTBEAT/1 Relay"),
            Err(HeartbeatRejection::BadService)
        );
        assert_eq!(
            Heartbeat::parse(b"POPD-HEARTBEAT/1 relay \x01"),
            Err(HeartbeatRejection::BadDetail)
        );
        assert_eq!(
            Heartbeat::parse(&[0xff, 0xfe]),
            Err(HeartbeatRejection::NotHeartbeat)
        );
    }

    #[test]
    fn sender_delivers_to_a_bound_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wd.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let sender = HeartbeatSender::new(&path, "linkmon").unwrap();
        sender.beat(Some("primary\nup")).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            Heartbeat::parse(&buf[..n]).unwrap(),
            Heartbeat {
                service: "linkmon",
                detail: Some("primary?up")
            }
        );
        assert!(HeartbeatSender::new(&path, "bad name").is_err());
    }
}
