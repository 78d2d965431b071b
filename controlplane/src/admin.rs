//! The admin interface: JSON lines over TCP on loopback. One request object per line, one
//! reply object per line; an error is `{"error": "..."}`. [`AdminClient`] is a blocking
//! client for tests and tools.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use pop_agent_proto::{Command, Record};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::pki::IssuedCert;
use crate::store::{AuditEntry, StoredCommandResult, StoredConfigResult};

/// Longest request line accepted (a config document is at most one frame, 1 MiB, and JSON
/// escaping can double it).
pub const MAX_REQUEST_LINE: usize = 4 << 20;

/// An admin request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum AdminRequest {
    /// Known devices and their state.
    Devices,
    /// Push a config (queued while the device is offline).
    PushConfig {
        /// Device id.
        device: String,
        /// Version (monotonic).
        version: u64,
        /// TOML document.
        document: String,
    },
    /// Run a command on a device (queued while offline).
    Command {
        /// Device id.
        device: String,
        /// The command.
        command: Command,
    },
    /// Stored records of a device.
    Records {
        /// Device id.
        device: String,
    },
    /// Stored config results of a device.
    ConfigResults {
        /// Device id.
        device: String,
    },
    /// Stored command results of a device.
    CommandResults {
        /// Device id.
        device: String,
    },
    /// Revoke every certificate of a device and drop its connection.
    Revoke {
        /// Device id.
        device: String,
    },
    /// Wait until a device has a session (or the timeout passes).
    WaitConnected {
        /// Device id.
        device: String,
        /// How long to wait, ms (capped at 10 minutes).
        timeout_ms: u64,
    },
    /// Server counters.
    Stats,
    /// Reload the CRL from disk now.
    Reload,
    /// The audit log.
    Audit,
    /// Certificates issued so far.
    Certificates,
}

/// One device in [`DevicesReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceStatus {
    /// Device id.
    pub device: String,
    /// Has a session now.
    pub connected: bool,
    /// Peer address of the session.
    pub peer: Option<String>,
    /// Last Hello, ms since the Unix epoch (0: never).
    pub last_hello_unix_ms: u64,
    /// Firmware version from the last Hello.
    pub firmware_version: Option<String>,
    /// Board from the last Hello.
    pub board: Option<String>,
    /// Serial of the certificate of the current or last session.
    pub cert_serial: Option<String>,
    /// Config version last reported.
    pub config_version: u64,
    /// Highest record id stored.
    pub acked_up_to: u64,
    /// Pending config version, if any.
    pub pending_config_version: Option<u64>,
    /// Pending command ids.
    pub pending_commands: Vec<u64>,
}

/// Reply to `devices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevicesReply {
    /// Devices, by id.
    pub devices: Vec<DeviceStatus>,
}

/// Reply to `push-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushReply {
    /// Sent now (the device has a session) rather than only queued.
    pub sent: bool,
}

/// Reply to `command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandReply {
    /// The command id (matches the result's).
    pub id: u64,
    /// Sent now rather than only queued.
    pub sent: bool,
}

/// Reply to `records`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordsReply {
    /// Stored records in arrival order.
    pub records: Vec<Record>,
    /// Duplicates received (and dropped) since the server started.
    pub duplicates: u64,
}

/// Reply to `config-results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigResultsReply {
    /// Results in arrival order.
    pub results: Vec<StoredConfigResult>,
}

/// Reply to `command-results`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResultsReply {
    /// Results in arrival order.
    pub results: Vec<StoredCommandResult>,
}

/// Reply to `revoke`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevokeReply {
    /// Serials newly revoked.
    pub revoked: Vec<String>,
    /// A session of the device was dropped.
    pub disconnected: bool,
}

/// Reply to `wait-connected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitReply {
    /// The device has a session.
    pub connected: bool,
}

/// Reply to `stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Sessions now.
    pub sessions: u64,
    /// TCP connections accepted since start.
    pub connections_total: u64,
    /// TLS handshakes that failed or timed out.
    pub handshake_failures: u64,
    /// Enrollments that issued a certificate.
    pub enrollments_ok: u64,
    /// Enrollments refused.
    pub enrollments_refused: u64,
    /// Records received (duplicates included).
    pub records_received: u64,
    /// Duplicates among them.
    pub records_duplicate: u64,
    /// Records received per second over the last 10 s.
    pub records_per_s: f64,
    /// Seconds since start.
    pub uptime_s: u64,
}

/// Reply to `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Revoked serials in the CRL now.
    pub revoked: usize,
}

/// Reply to `audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditReply {
    /// Entries, oldest first.
    pub entries: Vec<AuditEntry>,
}

/// Reply to `certificates`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertificatesReply {
    /// Issued certificates, oldest first.
    pub certificates: Vec<IssuedCert>,
}

/// Admin client errors.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Socket trouble.
    #[error("admin connection: {0}")]
    Io(#[from] std::io::Error),
    /// The reply does not parse.
    #[error("admin reply does not parse: {0}")]
    Decode(String),
    /// The server answered `{"error": ...}`.
    #[error("control plane refused: {0}")]
    Server(String),
}

/// A blocking client of the admin interface.
#[derive(Debug)]
pub struct AdminClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

#[derive(Deserialize)]
struct ErrorReply {
    error: String,
}

impl AdminClient {
    /// Connects to the admin address.
    pub fn connect(addr: SocketAddr) -> Result<Self, AdminError> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends any request and decodes the reply as `T`.
    pub fn request<T: DeserializeOwned>(&mut self, req: &AdminRequest) -> Result<T, AdminError> {
        let mut line = serde_json::to_vec(req).map_err(|e| AdminError::Decode(e.to_string()))?;
        line.push(b'\n');
        self.writer.write_all(&line)?;
        let mut reply = String::new();
        let n = self.reader.read_line(&mut reply)?;
        if n == 0 {
            return Err(AdminError::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the control plane closed the admin connection",
            )));
        }
        if let Ok(e) = serde_json::from_str::<ErrorReply>(&reply) {
            return Err(AdminError::Server(e.error));
        }
        serde_json::from_str(&reply).map_err(|e| AdminError::Decode(format!("{e}: {reply}")))
    }

    /// `devices`.
    pub fn devices(&mut self) -> Result<DevicesReply, AdminError> {
        self.request(&AdminRequest::Devices)
    }

    /// `push-config`.
    pub fn push_config(
        &mut self,
        device: &str,
        version: u64,
        document: &str,
    ) -> Result<PushReply, AdminError> {
        self.request(&AdminRequest::PushConfig {
            device: device.into(),
            version,
            document: document.into(),
        })
    }

    /// `command`; returns the command id.
    pub fn command(&mut self, device: &str, command: Command) -> Result<CommandReply, AdminError> {
        self.request(&AdminRequest::Command {
            device: device.into(),
            command,
        })
    }

    /// `records`.
    pub fn records(&mut self, device: &str) -> Result<RecordsReply, AdminError> {
        self.request(&AdminRequest::Records {
            device: device.into(),
        })
    }

    /// `config-results`.
    pub fn config_results(&mut self, device: &str) -> Result<ConfigResultsReply, AdminError> {
        self.request(&AdminRequest::ConfigResults {
            device: device.into(),
        })
    }

    /// `command-results`.
    pub fn command_results(&mut self, device: &str) -> Result<CommandResultsReply, AdminError> {
        self.request(&AdminRequest::CommandResults {
            device: device.into(),
        })
    }

    /// `revoke`.
    pub fn revoke(&mut self, device: &str) -> Result<RevokeReply, AdminError> {
        self.request(&AdminRequest::Revoke {
            device: device.into(),
        })
    }

    /// `wait-connected`; the socket read timeout is raised to cover the wait.
    pub fn wait_connected(&mut self, device: &str, timeout: Duration) -> Result<bool, AdminError> {
        self.writer
            .set_read_timeout(Some(timeout + Duration::from_secs(30)))?;
        let r: Result<WaitReply, _> = self.request(&AdminRequest::WaitConnected {
            device: device.into(),
            timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
        });
        self.writer
            .set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(r?.connected)
    }

    /// `stats`.
    pub fn stats(&mut self) -> Result<StatsReply, AdminError> {
        self.request(&AdminRequest::Stats)
    }

    /// `reload`.
    pub fn reload(&mut self) -> Result<ReloadReply, AdminError> {
        self.request(&AdminRequest::Reload)
    }

    /// `audit`.
    pub fn audit(&mut self) -> Result<AuditReply, AdminError> {
        self.request(&AdminRequest::Audit)
    }

    /// `certificates`.
    pub fn certificates(&mut self) -> Result<CertificatesReply, AdminError> {
        self.request(&AdminRequest::Certificates)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_use_the_documented_json_shape() {
        let r: AdminRequest = serde_json::from_str(
            r#"{"op":"push-config","device":"d","version":3,"document":"a = 1"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            AdminRequest::PushConfig {
                device: "d".into(),
                version: 3,
                document: "a = 1".into()
            }
        );
        let r: AdminRequest = serde_json::from_str(
            r#"{"op":"command","device":"d","command":{"EraseSubject":{"number":"+4912"}}}"#,
        )
        .unwrap();
        assert!(matches!(r, AdminRequest::Command { .. }));
        let r: AdminRequest =
            serde_json::from_str(r#"{"op":"wait-connected","device":"d","timeout_ms":5}"#).unwrap();
        assert!(matches!(
            r,
            AdminRequest::WaitConnected { timeout_ms: 5, .. }
        ));
        assert!(serde_json::from_str::<AdminRequest>(r#"{"op":"nope"}"#).is_err());
    }
}
