//! The systemd notification protocol (`sd_notify(3)`), without libsystemd: one datagram of
//! newline-separated `KEY=VALUE` assignments to the socket named by `NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

use crate::WatchdogError;

/// A connection to the service manager's notification socket.
#[derive(Debug)]
pub struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
    name: String,
}

impl Notifier {
    /// The notifier named by `NOTIFY_SOCKET`, or `None` when the process does not run under a
    /// service manager that asked for notifications (then every notification is a no-op for
    /// the caller to skip).
    pub fn from_env() -> Result<Option<Self>, WatchdogError> {
        match std::env::var("NOTIFY_SOCKET") {
            Ok(name) if !name.is_empty() => Self::new(&name).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for an explicit socket name: an absolute path, or `@name` for an abstract
    /// socket (as systemd passes it).
    pub fn new(name: &str) -> Result<Self, WatchdogError> {
        let addr = if let Some(abstract_name) = name.strip_prefix('@') {
            SocketAddr::from_abstract_name(abstract_name.as_bytes())
        } else if name.starts_with('/') {
            SocketAddr::from_pathname(name)
        } else {
            return Err(WatchdogError::NotifySocketInvalid(name.to_owned()));
        }
        .map_err(|_| WatchdogError::NotifySocketInvalid(name.to_owned()))?;
        let socket = UnixDatagram::unbound().map_err(|source| WatchdogError::Notify {
            socket: name.to_owned(),
            source,
        })?;
        Ok(Self {
            socket,
            addr,
            name: name.to_owned(),
        })
    }

    /// Sends one notification made of `states`, in order, as a single datagram.
    pub fn notify(&self, states: &[NotifyState<'_>]) -> Result<(), WatchdogError> {
        let msg = format_states(states);
        self.socket
            .send_to_addr(msg.as_bytes(), &self.addr)
            .map(|_| ())
            .map_err(|source| WatchdogError::Notify {
                socket: self.name.clone(),
                source,
            })
    }
}

/// One assignment of a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyState<'a> {
    /// `READY=1`: start-up is complete.
    Ready,
    /// `STOPPING=1`: a clean shutdown began.
    Stopping,
    /// `WATCHDOG=1`: the service's loop made progress since the last one.
    Watchdog,
    /// `STATUS=...`: a one-line human status (newlines are replaced by spaces).
    Status(&'a str),
    /// `MAINPID=...`.
    MainPid(u32),
}

/// The datagram payload for `states` (exposed for tests and for tools that relay it).
pub fn format_states(states: &[NotifyState<'_>]) -> String {
    let mut out = String::new();
    for state in states {
        match state {
            NotifyState::Ready => out.push_str("READY=1"),
            NotifyState::Stopping => out.push_str("STOPPING=1"),
            NotifyState::Watchdog => out.push_str("WATCHDOG=1"),
            NotifyState::Status(s) => {
                out.push_str("STATUS=");
                // A newline would start a new assignment the service did not mean to send.
                out.extend(s.chars().map(|c| if c == '\n' { ' ' } else { c }));
            }
            NotifyState::MainPid(pid) => {
                out.push_str("MAINPID=");
                out.push_str(&pid.to_string());
            }
        }
        out.push('\n');
    }
    out
}

/// The systemd watchdog the unit asked for (`WatchdogSec=`), read from the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SystemdWatchdog {
    /// `WATCHDOG_USEC`: how long systemd waits for a `WATCHDOG=1` before it kills the service.
    pub timeout: Duration,
}

impl SystemdWatchdog {
    /// The watchdog from `WATCHDOG_USEC`/`WATCHDOG_PID`, or `None` when it is off or meant for
    /// another process.
    pub fn from_env() -> Option<Self> {
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Self::from_values(usec.as_deref(), pid.as_deref(), std::process::id())
    }

    /// The same decision on explicit values (testable without touching the environment).
    pub fn from_values(usec: Option<&str>, pid: Option<&str>, own_pid: u32) -> Option<Self> {
        let usec: u64 = usec?.trim().parse().ok()?;
        if usec == 0 {
            return None;
        }
        if let Some(pid) = pid {
            // systemd sets WATCHDOG_PID so that children do not answer for the main process.
            if pid.trim().parse::<u32>().ok()? != own_pid {
                return None;
            }
        }
        Some(Self {
            timeout: Duration::from_micros(usec),
        })
    }

    /// How often to send `WATCHDOG=1`: half the timeout, as `sd_watchdog_enabled(3)` advises.
    pub fn interval(&self) -> Duration {
        self.timeout / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_reaches_a_real_datagram_socket_in_sd_notify_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let server = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier::new(path.to_str().unwrap()).unwrap();
        notifier
            .notify(&[
                NotifyState::Ready,
                NotifyState::Status("up\nnext"),
                NotifyState::MainPid(42),
            ])
            .unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(
            std::str::from_utf8(&buf[..n]).unwrap(),
            "READY=1\nSTATUS=up next\nMAINPID=42\n"
        );
        notifier.notify(&[NotifyState::Watchdog]).unwrap();
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1\n");
    }

    #[test]
    fn abstract_notify_socket_is_supported() {
        let name = format!("popd-test-notify-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let server = UnixDatagram::bind_addr(&addr).unwrap();
        let notifier = Notifier::new(&format!("@{name}")).unwrap();
        notifier.notify(&[NotifyState::Stopping]).unwrap();
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1\n");
    }

    #[test]
    fn relative_notify_socket_is_refused() {
        assert!(matches!(
            Notifier::new("run/notify"),
            Err(WatchdogError::NotifySocketInvalid(_))
        ));
    }

    #[test]
    fn watchdog_interval_is_half_the_timeout_and_pid_must_match() {
        let wd = SystemdWatchdog::from_values(Some("3000000"), Some("7"), 7).unwrap();
        assert_eq!(wd.timeout, Duration::from_secs(3));
        assert_eq!(wd.interval(), Duration::from_millis(1500));
        assert_eq!(
            SystemdWatchdog::from_values(Some("3000000"), Some("8"), 7),
            None
        );
        assert_eq!(SystemdWatchdog::from_values(Some("0"), None, 7), None);
        assert_eq!(SystemdWatchdog::from_values(None, None, 7), None);
        assert_eq!(SystemdWatchdog::from_values(Some("x"), None, 7), None);
        assert!(SystemdWatchdog::from_values(Some("1000"), None, 7).is_some());
    }
}
