//! Child processes that cannot outlive their test.

use std::fs::{self, File};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::TestDir;

/// How long a child gets to exit after SIGTERM before it is sent SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(3);
const POLL: Duration = Duration::from_millis(20);

/// A running child in its own process group, with stdout and stderr in `<dir>/<name>.log`.
///
/// Dropping the guard signals the whole group by its id (never by process name): SIGTERM, then
/// SIGKILL after a grace period. This also runs while a failing test unwinds.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `cmd` with its output going to `<dir>/<name>.log`.
    pub fn spawn(name: &str, cmd: &mut Command, dir: &TestDir) -> Result<Self> {
        let log_path = dir.file(&format!("{name}.log"));
        let log =
            File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let log_err = log.try_clone().context("duplicating the log file handle")?;
        fs::write(dir.file(&format!("{name}.cmdline")), format!("{cmd:?}\n"))
            .context("writing the command line file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log_path,
            exited: None,
        })
    }

    /// The child's PID, which is also its process group id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The name given at spawn.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the child wrote so far.
    pub fn log(&self) -> String {
        fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the child has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.exited.is_none() {
            self.exited = self
                .child
                .try_wait()
                .with_context(|| format!("polling {}", self.name))?;
        }
        Ok(self.exited)
    }

    /// Waits until a line of the child's output contains `needle`; returns that line.
    ///
    /// Fails if the child exits first or `timeout` passes, quoting the output's tail.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return Ok(line.to_owned());
            }
            if let Some(status) = self.exit_status()? {
                bail!(
                    "{} exited ({status}) before printing {needle:?}; output:\n{}",
                    self.name,
                    tail(&log, 40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} did not print {needle:?} within {timeout:?}; output:\n{}",
                    self.name,
                    tail(&log, 40)
                );
            }
            sleep(POLL);
        }
    }

    /// Fails if the child has exited (used after a scenario to catch crashes).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.exit_status()? {
            bail!(
                "{} exited unexpectedly ({status}); output:\n{}",
                self.name,
                tail(&self.log(), 40)
            );
        }
        Ok(())
    }

    /// SIGKILL to the group at once (a crash or power cut, as far as the child can tell);
    /// waits for it to be reaped.
    pub fn kill(mut self) -> Result<ExitStatus> {
        signal_group(self.child.id(), Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.exited = Some(status);
        Ok(status)
    }

    /// SIGTERM to the group, SIGKILL after the grace period; returns how the child ended.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit_status()? {
            // The leader is gone, but helpers it forked may remain in the group.
            signal_group(self.child.id(), Signal::SIGKILL);
            return Ok(status);
        }
        signal_group(self.child.id(), Signal::SIGTERM);
        let deadline = Instant::now() + TERM_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exit_status()? {
                signal_group(self.child.id(), Signal::SIGKILL);
                return Ok(status);
            }
            sleep(POLL);
        }
        signal_group(self.child.id(), Signal::SIGKILL);
        let status = self
            .child
            .wait()
            .with_context(|| format!("reaping {}", self.name))?;
        self.exited = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.terminate() {
            eprintln!("stopping {} (pid {}): {e:#}", self.name, self.child.id());
        }
    }
}

fn signal_group(pid: u32, signal: Signal) {
    let Ok(pid) = i32::try_from(pid) else {
        return;
    };
    // ESRCH (group already empty) is the expected outcome once everything has exited.
    let _ = killpg(Pid::from_raw(pid), signal);
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines.get(start..).unwrap_or_default().join("\n")
}
