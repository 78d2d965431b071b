//! The Linux watchdog device (`Documentation/watchdog/watchdog-api.rst`). The only `unsafe` in
//! this crate: the `WDIOC_*` ioctls.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::device::{BootStatus, WatchdogDevice};
use crate::WatchdogError;

const WATCHDOG_IOCTL_BASE: u8 = b'W';

nix::ioctl_read!(wdioc_getbootstatus, WATCHDOG_IOCTL_BASE, 2, libc::c_int);
nix::ioctl_read!(wdioc_keepalive, WATCHDOG_IOCTL_BASE, 5, libc::c_int);
nix::ioctl_readwrite!(wdioc_settimeout, WATCHDOG_IOCTL_BASE, 6, libc::c_int);

/// An open `/dev/watchdog*`. Opening it arms the timer.
#[derive(Debug)]
pub struct LinuxWatchdog {
    file: Option<File>,
    path: PathBuf,
}

impl LinuxWatchdog {
    /// Opens (and thereby arms) the device.
    pub fn open(path: &Path) -> Result<Self, WatchdogError> {
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|source| WatchdogError::DeviceOpen {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            file: Some(file),
            path: path.to_owned(),
        })
    }

    fn fd(&self, op: &'static str) -> Result<i32, WatchdogError> {
        self.file
            .as_ref()
            .map(|f| f.as_raw_fd())
            .ok_or_else(|| WatchdogError::Device {
                op,
                source: std::io::Error::other(format!("{} already closed", self.path.display())),
            })
    }
}

fn device_err(op: &'static str) -> impl FnOnce(nix::Error) -> WatchdogError {
    move |e| WatchdogError::Device {
        op,
        source: std::io::Error::from(e),
    }
}

impl WatchdogDevice for LinuxWatchdog {
    fn set_timeout(&mut self, timeout: Duration) -> Result<Duration, WatchdogError> {
        let fd = self.fd("WDIOC_SETTIMEOUT")?;
        let mut secs: libc::c_int = timeout.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
        // SAFETY: `fd` is an open watchdog device owned by `self.file`; the kernel reads and
        // writes exactly one c_int through the pointer, which points to a live local.
        unsafe { wdioc_settimeout(fd, &mut secs) }.map_err(device_err("WDIOC_SETTIMEOUT"))?;
        Ok(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
    }

    fn boot_status(&mut self) -> Result<BootStatus, WatchdogError> {
        let fd = self.fd("WDIOC_GETBOOTSTATUS")?;
        let mut flags: libc::c_int = 0;
        // SAFETY: as above; the kernel writes one c_int into the live local.
        unsafe { wdioc_getbootstatus(fd, &mut flags) }
            .map_err(device_err("WDIOC_GETBOOTSTATUS"))?;
        Ok(BootStatus {
            flags: flags as u32,
        })
    }

    fn keepalive(&mut self) -> Result<(), WatchdogError> {
        let fd = self.fd("WDIOC_KEEPALIVE")?;
        let mut dummy: libc::c_int = 0;
        // SAFETY: as above; the kernel ignores the argument of KEEPALIVE but the pointer is
        // valid for one c_int anyway.
        unsafe { wdioc_keepalive(fd, &mut dummy) }.map_err(device_err("WDIOC_KEEPALIVE"))?;
        Ok(())
    }

    fn magic_close(&mut self) -> Result<(), WatchdogError> {
        let Some(mut file) = self.file.take() else {
            return Ok(());
        };
        file.write_all(b"V")
            .map_err(|source| WatchdogError::Device {
                op: "magic close",
                source,
            })?;
        drop(file);
        Ok(())
    }

    fn close_armed(&mut self) {
        self.file = None;
    }
}
