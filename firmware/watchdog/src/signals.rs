//! Clean-stop requests (SIGTERM, SIGINT) read from a signalfd, so no handler code runs in
//! signal context and the loop checks for them at its own pace.

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::WatchdogError;

/// SIGTERM/SIGINT as a pollable flag. Create it before spawning threads: the signals are
/// blocked in the creating thread and every thread it starts afterwards.
#[derive(Debug)]
pub struct StopSignals {
    fd: SignalFd,
    seen: bool,
}

impl StopSignals {
    /// Blocks SIGTERM and SIGINT and opens a non-blocking signalfd for them.
    pub fn install() -> Result<Self, WatchdogError> {
        let mut set = SigSet::empty();
        set.add(Signal::SIGTERM);
        set.add(Signal::SIGINT);
        set.thread_block().map_err(WatchdogError::Signals)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(WatchdogError::Signals)?;
        Ok(Self { fd, seen: false })
    }

    /// Whether a stop was requested (sticky once seen).
    pub fn stop_requested(&mut self) -> bool {
        if !self.seen {
            if let Ok(Some(_)) = self.fd.read_signal() {
                self.seen = true;
            }
        }
        self.seen
    }
}
