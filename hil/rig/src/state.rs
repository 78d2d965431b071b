//! Run-state files: what a rig created (namespaces, processes), so a rig whose owner was killed
//! can still be removed by `pop-rig cleanup` or by the next `Rig::build`.
//!
//! Layout: `<state root>/<run id>/state.json`, next to the run's FRR configs, sockets and logs.
//! Cleanup only ever touches what a state file lists, and only when the run's owner is gone
//! (its pid no longer exists or now belongs to a process that started at another time).

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::cmd::{self, IP};
use crate::error::{Result, RigError};

/// Prefix of every namespace and run id the rig creates: unique to this project.
pub const RUN_PREFIX: &str = "poprig";
/// Default directory holding run-state directories.
pub const DEFAULT_STATE_ROOT: &str = "/run/pop-rig";
/// Environment variable overriding [`DEFAULT_STATE_ROOT`].
pub const STATE_ROOT_ENV: &str = "POP_RIG_STATE_DIR";

const STATE_FILE: &str = "state.json";
const STATE_VERSION: u32 = 1;

/// The state root in effect: `$POP_RIG_STATE_DIR` or `/run/pop-rig`.
pub fn state_root() -> PathBuf {
    std::env::var_os(STATE_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_ROOT))
}

/// A process the rig started, identified by pid and start time (so a recycled pid is never
/// signalled).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcRecord {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_ticks: u64,
    /// What it is, for people reading the file.
    pub what: String,
}

/// Contents of a run's state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunState {
    /// Format version.
    pub version: u32,
    /// `poprig-<pid>-<random>`.
    pub run_id: String,
    /// The process that built the rig.
    pub owner: ProcRecord,
    /// Namespaces, recorded before they are created.
    pub namespaces: Vec<String>,
    /// Processes started inside the namespaces.
    pub processes: Vec<ProcRecord>,
}

/// Start time of `pid` in clock ticks since boot, or `None` if it does not exist.
pub fn process_start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields resume after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    // Field 3 (state) is the first after the name; start time is field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process recorded in `rec` still runs (same pid and same start time, and not a
/// zombie: a zombie is dead, only not yet reaped by its parent).
pub fn is_alive(rec: &ProcRecord) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", rec.pid)) else {
        return false;
    };
    let zombie = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 1..))
        .and_then(|rest| rest.split_whitespace().next())
        == Some("Z");
    !zombie && process_start_ticks(rec.pid) == Some(rec.start_ticks)
}

/// Record for an existing process; `None` if it is already gone.
pub fn record_of(pid: u32, what: &str) -> Option<ProcRecord> {
    Some(ProcRecord {
        pid,
        start_ticks: process_start_ticks(pid)?,
        what: what.to_owned(),
    })
}

/// The live state file of this process's rig, rewritten atomically on every change.
#[derive(Debug)]
pub(crate) struct RunStateFile {
    dir: PathBuf,
    state: Mutex<RunState>,
}

impl RunStateFile {
    /// Creates `<root>/<run_id>/state.json` owned by the current process.
    pub(crate) fn create(root: &Path, run_id: &str) -> Result<Self> {
        let dir = root.join(run_id);
        fs::create_dir_all(&dir).map_err(|e| {
            RigError::io(format!("creating rig state directory {}", dir.display()), e)
        })?;
        let me = std::process::id();
        let owner = record_of(me, "rig owner").ok_or_else(|| RigError::State {
            path: dir.clone(),
            reason: "cannot read this process's own /proc entry".to_owned(),
        })?;
        let file = RunStateFile {
            dir,
            state: Mutex::new(RunState {
                version: STATE_VERSION,
                run_id: run_id.to_owned(),
                owner,
                namespaces: Vec::new(),
                processes: Vec::new(),
            }),
        };
        file.update(|_| ())?;
        Ok(file)
    }

    /// The run directory (FRR files live here too).
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Applies `change` and writes the file (write to a temporary name, then rename).
    pub(crate) fn update(&self, change: impl FnOnce(&mut RunState)) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
        let json = serde_json::to_vec_pretty(&*state).map_err(|e| RigError::State {
            path: self.dir.clone(),
            reason: e.to_string(),
        })?;
        let tmp = self.dir.join(".state.json.tmp");
        let path = self.dir.join(STATE_FILE);
        fs::write(&tmp, json)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| RigError::io(format!("writing {}", path.display()), e))
    }

    /// A copy of the current state.
    pub(crate) fn snapshot(&self) -> RunState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Sends SIGTERM, waits up to `grace` for the process to go, then SIGKILL. Only signals the
/// process if pid and start time still match the record.
pub(crate) fn terminate(rec: &ProcRecord, grace: Duration) {
    if !is_alive(rec) {
        return;
    }
    let Ok(raw) = i32::try_from(rec.pid) else {
        return;
    };
    let pid = Pid::from_raw(raw);
    let _ = kill(pid, Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_alive(rec) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if is_alive(rec) {
        let _ = kill(pid, Signal::SIGKILL);
    }
}

/// Namespaces that currently exist (`ip netns list`).
pub fn existing_namespaces() -> Result<Vec<String>> {
    let out = cmd::run(IP, &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Kills every process still inside `ns` (by the pids the kernel lists for it) and deletes it.
/// A namespace that no longer exists is not an error.
pub(crate) fn remove_namespace(ns: &str) -> Result<()> {
    if !existing_namespaces()?.iter().any(|n| n == ns) {
        return Ok(());
    }
    // Processes left inside keep the namespace (and its veths) alive after `ip netns del`.
    if let Ok(pids) = cmd::run(IP, &["netns", "pids", ns]) {
        let records: Vec<ProcRecord> = pids
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter_map(|pid| record_of(pid, "left in namespace"))
            .collect();
        for rec in &records {
            terminate(rec, Duration::from_millis(500));
        }
    }
    cmd::run(IP, &["netns", "del", ns]).map(drop)
}

/// Tears down everything `state` lists: processes (by pid and start time), then namespaces.
/// Returns the errors met; keeps going after each.
pub(crate) fn teardown(state: &RunState) -> Vec<RigError> {
    let mut errors = Vec::new();
    for rec in &state.processes {
        terminate(rec, Duration::from_secs(1));
    }
    for ns in &state.namespaces {
        if let Err(e) = remove_namespace(ns) {
            errors.push(e);
        }
    }
    errors
}

/// What a cleanup pass removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CleanupReport {
    /// Runs whose state directory was processed and removed.
    pub runs: Vec<String>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
    /// Runs skipped because their owner still runs.
    pub live_runs: Vec<String>,
    /// Problems met (cleanup continues past each).
    pub errors: Vec<String>,
}

/// Parses the owner pid out of a rig namespace name `poprig-<pid>-<hex>-<role>`.
fn owner_pid_of_namespace(ns: &str) -> Option<u32> {
    let rest = ns.strip_prefix(RUN_PREFIX)?.strip_prefix('-')?;
    rest.split('-').next()?.parse().ok()
}

/// Removes stale runs: every state directory under `root` whose owner is gone, then any
/// namespace named `poprig-<pid>-…` whose pid no longer exists (a run killed between creating a
/// namespace and syncing its state file, or one whose state root was wiped). Never touches a
/// live run.
pub fn cleanup_stale(root: &Path) -> CleanupReport {
    let mut report = CleanupReport::default();
    let entries = match fs::read_dir(root) {
        Ok(entries) => entries.filter_map(|e| e.ok()).collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            report
                .errors
                .push(format!("reading {}: {e}", root.display()));
            Vec::new()
        }
    };
    for entry in entries {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with(RUN_PREFIX) {
            continue;
        }
        let path = dir.join(STATE_FILE);
        let state: RunState = match fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(state) => state,
            Err(reason) => {
                // A directory without a readable state file: judge by the pid in its name.
                let owner_gone = owner_pid_of_namespace(&name)
                    .is_some_and(|pid| process_start_ticks(pid).is_none());
                if owner_gone {
                    let _ = fs::remove_dir_all(&dir);
                    report.runs.push(name);
                } else {
                    report.errors.push(format!("{}: {reason}", path.display()));
                }
                continue;
            }
        };
        if is_alive(&state.owner) {
            report.live_runs.push(state.run_id);
            continue;
        }
        for e in teardown(&state) {
            report.errors.push(e.to_string());
        }
        report.namespaces.extend(state.namespaces.iter().cloned());
        if let Err(e) = fs::remove_dir_all(&dir) {
            report
                .errors
                .push(format!("removing {}: {e}", dir.display()));
        }
        report.runs.push(state.run_id);
    }
    match existing_namespaces() {
        Ok(all) => {
            for ns in all {
                let Some(pid) = owner_pid_of_namespace(&ns) else {
                    continue;
                };
                if process_start_ticks(pid).is_some() {
                    continue;
                }
                match remove_namespace(&ns) {
                    Ok(()) => report.namespaces.push(ns),
                    Err(e) => report.errors.push(e.to_string()),
                }
            }
        }
        Err(e) => report.errors.push(e.to_string()),
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_start_time_is_readable_and_stable() {
        let me = std::process::id();
        let a = process_start_ticks(me);
        assert!(a.is_some());
        assert_eq!(a, process_start_ticks(me));
    }

    #[test]
    fn owner_pid_parses_only_rig_names() {
        assert_eq!(owner_pid_of_namespace("poprig-1234-abcd-app"), Some(1234));
        assert_eq!(owner_pid_of_namespace("poprigx-1234-abcd-app"), None);
        assert_eq!(owner_pid_of_namespace("other-1234"), None);
        assert_eq!(owner_pid_of_namespace("poprig-app"), None);
    }

    #[test]
    fn a_record_with_another_start_time_is_not_alive() {
        let me = std::process::id();
        let mut rec = record_of(me, "me").expect("own record");
        assert!(is_alive(&rec));
        rec.start_ticks += 1;
        assert!(!is_alive(&rec));
    }
}
