//! Long-lived processes inside a rig namespace, killed by PID when their guard drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cmd::IP;
use crate::error::{Result, RigError};
use crate::state::{record_of, ProcRecord, RunStateFile};

/// A process running in a rig namespace. Dropping it sends SIGTERM, waits up to 2 s, then
/// SIGKILL, and reaps it; the process is listed in the run's state file while it lives, so a
/// killed test still gets it removed by `pop-rig cleanup`.
#[derive(Debug)]
pub struct NsProcess {
    child: Option<Child>,
    record: ProcRecord,
    log: PathBuf,
    state: Arc<RunStateFile>,
}

impl NsProcess {
    /// Starts `program args` in namespace `ns` (via `ip netns exec`, which execs the program, so
    /// the pid is the program's own). Output goes to `log`.
    pub(crate) fn spawn(
        state: Arc<RunStateFile>,
        ns: &str,
        program: &str,
        args: &[&str],
        what: &str,
        log: &Path,
    ) -> Result<Self> {
        let command_line = format!("ip netns exec {ns} {program} {}", args.join(" "));
        let out = std::fs::File::create(log)
            .map_err(|e| RigError::io(format!("creating log {}", log.display()), e))?;
        let err = out
            .try_clone()
            .map_err(|e| RigError::io(format!("opening log {}", log.display()), e))?;
        let mut child = Command::new(IP)
            .args(["netns", "exec", ns, program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|source| RigError::Spawn {
                command: command_line.clone(),
                source,
            })?;
        let pid = child.id();
        let Some(record) = record_of(pid, what) else {
            // Exited at once: report its status and log rather than a bare "not found".
            let status = child.wait().map(|s| s.to_string()).unwrap_or_default();
            return Err(RigError::Command {
                command: command_line,
                status,
                stderr: std::fs::read_to_string(log).unwrap_or_default(),
            });
        };
        let recorded = record.clone();
        if let Err(e) = state.update(|s| s.processes.push(recorded)) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        Ok(NsProcess {
            child: Some(child),
            record,
            log: log.to_owned(),
            state,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.record.pid
    }

    /// Where its stdout and stderr go.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Whether it has exited (reaping it if so), with its status.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child
                .try_wait()
                .map_err(|e| RigError::io(format!("checking pid {}", self.record.pid), e)),
            None => Ok(None),
        }
    }

    /// Stops it now (SIGTERM, then SIGKILL after 2 s) and returns how it ended.
    pub fn stop(mut self) -> Result<ExitStatus> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err(RigError::Usage(format!(
                "pid {} was already stopped",
                self.record.pid
            )));
        };
        let pid = self.record.pid;
        let result = (|| {
            if let Some(status) = child
                .try_wait()
                .map_err(|e| RigError::io(format!("checking pid {pid}"), e))?
            {
                return Ok(status);
            }
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Some(status) = child
                    .try_wait()
                    .map_err(|e| RigError::io(format!("waiting for pid {pid}"), e))?
                {
                    return Ok(status);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            let _ = child.kill();
            child
                .wait()
                .map_err(|e| RigError::io(format!("reaping pid {pid}"), e))
        })();
        let rec = self.record.clone();
        let _ = self.state.update(|s| s.processes.retain(|p| *p != rec));
        result
    }
}

impl Drop for NsProcess {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.stop_inner();
        }
    }
}
