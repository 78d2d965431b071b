//! The hardware watchdog as a set of operations, so the service and its tests do not care
//! whether a real `/dev/watchdog` or the [`FakeWatchdog`] is behind it.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Serialize;

use crate::WatchdogError;

/// Why the board last reset, from `WDIOC_GETBOOTSTATUS` (`WDIOF_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BootStatus {
    /// Raw flag word reported by the driver.
    pub flags: u32,
}

impl BootStatus {
    /// `WDIOF_CARDRESET`: the last reboot was caused by the watchdog.
    pub const CARD_RESET: u32 = 0x0020;

    /// Whether the last reset was a watchdog reset.
    pub fn was_watchdog_reset(&self) -> bool {
        self.flags & Self::CARD_RESET != 0
    }
}

/// The operations `popd watchdog` needs from a watchdog device.
pub trait WatchdogDevice: std::fmt::Debug {
    /// Sets the timeout; returns the timeout the driver actually applied (drivers round).
    fn set_timeout(&mut self, timeout: Duration) -> Result<Duration, WatchdogError>;
    /// Reads the boot status.
    fn boot_status(&mut self) -> Result<BootStatus, WatchdogError>;
    /// Pets the watchdog (`WDIOC_KEEPALIVE`).
    fn keepalive(&mut self) -> Result<(), WatchdogError>;
    /// Writes the magic character `V` and closes, which disarms drivers without nowayout.
    fn magic_close(&mut self) -> Result<(), WatchdogError>;
    /// Closes without the magic character: the timer keeps running and the board resets unless
    /// someone opens and pets the device again.
    fn close_armed(&mut self);
}

/// What the fake saw, shared with the test that holds a clone.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FakeWatchdogLog {
    /// Timeout last set.
    pub timeout: Option<Duration>,
    /// Number of keepalives.
    pub keepalives: u64,
    /// Whether the magic close was performed.
    pub magic_closed: bool,
    /// Whether the device was closed while still armed.
    pub closed_armed: bool,
}

/// An in-memory watchdog for tests and for running the service without hardware.
#[derive(Debug, Clone)]
pub struct FakeWatchdog {
    boot_flags: u32,
    log: Arc<Mutex<FakeWatchdogLog>>,
}

impl FakeWatchdog {
    /// A fake that reports `boot_flags` as its boot status.
    pub fn new(boot_flags: u32) -> Self {
        Self {
            boot_flags,
            log: Arc::default(),
        }
    }

    /// A snapshot of what happened to the device so far.
    pub fn log(&self) -> FakeWatchdogLog {
        self.log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn with_log(&self, f: impl FnOnce(&mut FakeWatchdogLog)) {
        f(&mut self.log.lock().unwrap_or_else(PoisonError::into_inner));
    }
}

impl WatchdogDevice for FakeWatchdog {
    fn set_timeout(&mut self, timeout: Duration) -> Result<Duration, WatchdogError> {
        // Like real drivers: whole seconds.
        let applied = Duration::from_secs(timeout.as_secs().max(1));
        self.with_log(|l| l.timeout = Some(applied));
        Ok(applied)
    }

    fn boot_status(&mut self) -> Result<BootStatus, WatchdogError> {
        Ok(BootStatus {
            flags: self.boot_flags,
        })
    }

    fn keepalive(&mut self) -> Result<(), WatchdogError> {
        self.with_log(|l| l.keepalives += 1);
        Ok(())
    }

    fn magic_close(&mut self) -> Result<(), WatchdogError> {
        self.with_log(|l| l.magic_closed = true);
        Ok(())
    }

    fn close_armed(&mut self) {
        self.with_log(|l| l.closed_armed = true);
    }
}
