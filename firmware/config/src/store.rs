//! [`ConfigStore`]: the running, previous and candidate documents on disk, updated so that a
//! crash or power loss at any instant leaves either the old or the new state, never a mix.
//!
//! # Layout
//!
//! One directory holding:
//!
//! - `running.toml`: the configuration in force;
//! - `previous.toml`: the one it replaced (what a rollback after commit goes back to);
//! - `candidate.toml`: a pushed configuration under trial (staged, not yet committed);
//! - `state`: two numbers, `running = N` and `previous = M` (0: none). It is the single record
//!   of which version is running; the `.toml` files are the documents.
//!
//! Every file is written atomically: `<name>.tmp` is written and fsynced, renamed over
//! `<name>`, and the directory fsynced. A crash leaves at worst a stray `.tmp`, removed by
//! [`ConfigStore::open`].
//!
//! # Why every crash point is safe
//!
//! `stage` writes only `candidate.toml`. Until its rename, nothing changed; after it, the
//! candidate exists and the state still names the old version, which `open` recognises as an
//! interrupted trial: it deletes the candidate and reports it, so the caller re-applies the
//! running configuration (the trial may have been half applied when the agent died).
//!
//! `commit` runs, with a directory fsync after each step so no later step can reach the disk
//! before an earlier one:
//!
//! 1. write `state` = {running: candidate, previous: old running} atomically;
//! 2. rename `running.toml` -> `previous.toml` (skipped when nothing ran yet);
//! 3. rename `candidate.toml` -> `running.toml`.
//!
//! The rename in step 1 is the commit point. Before it, `state` names the old version and the
//! files are untouched: `open` sees the old state plus a candidate, i.e. an interrupted trial,
//! and discards the candidate (old state, exactly). After it, `state` names the new version;
//! `open` compares the versions inside the files with `state` and finishes steps 2 and 3 that
//! had not reached the disk (they are renames of documents that are complete and durable, so
//! redoing them is always possible), giving the new state exactly. Any other combination of
//! files means something outside this module changed the directory, and `open` refuses it as
//! [`StoreError::Corrupt`] rather than guess.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{parse_unvalidated, ApplianceConfig, ConfigError};

const RUNNING: &str = "running.toml";
const PREVIOUS: &str = "previous.toml";
const CANDIDATE: &str = "candidate.toml";
const STATE: &str = "state";
const TMP_SUFFIX: &str = ".tmp";

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed. After an `Io` error from [`ConfigStore::commit`], reopen the
    /// store: the disk holds the old or the new state and only `open` can tell which.
    #[error("config store: {path}: {source}")]
    Io {
        /// File or directory concerned.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// The version pushed is the one already running.
    #[error("`version`: {version} is already running")]
    Replay {
        /// Version pushed.
        version: u64,
        /// Version running.
        running: u64,
    },
    /// The version pushed is older than the one running.
    #[error("`version`: {version} is older than the running version {running}")]
    Downgrade {
        /// Version pushed.
        version: u64,
        /// Version running.
        running: u64,
    },
    /// The document failed validation; nothing was written.
    #[error("invalid configuration: {0}")]
    Invalid(#[from] ConfigError),
    /// `commit` or `discard_candidate` without a staged candidate.
    #[error("no candidate configuration is staged")]
    NoCandidate,
    /// `stage` while another candidate is under trial.
    #[error("candidate version {version} is already staged; commit or discard it first")]
    CandidatePending {
        /// The staged version.
        version: u64,
    },
    /// The directory holds a combination of files no sequence of store operations produces.
    #[error("config store {path}: {reason}")]
    Corrupt {
        /// File or directory concerned.
        path: PathBuf,
        /// What does not fit.
        reason: String,
    },
}

/// A candidate found staged by [`ConfigStore::open`]: the agent died during its trial. It has
/// been discarded; the caller must re-apply the running configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterruptedTrial {
    /// The discarded candidate's version.
    pub version: u64,
}

/// The `state` file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    running: u64,
    previous: u64,
}

/// The configuration documents of one appliance, on disk (see the module documentation for the
/// layout and the crash-safety argument).
#[derive(Debug)]
pub struct ConfigStore {
    dir: PathBuf,
    state: State,
    running: Option<ApplianceConfig>,
    previous: Option<ApplianceConfig>,
    candidate: Option<ApplianceConfig>,
    hook: CrashHook,
}

impl ConfigStore {
    /// Opens (creating) the directory. If a candidate was staged but neither committed nor
    /// discarded (the agent died during the health window), it is discarded here and reported,
    /// so the caller re-applies [`Self::running`]. A commit cut short after its commit point is
    /// finished here.
    pub fn open(dir: &Path) -> Result<(ConfigStore, Option<InterruptedTrial>), StoreError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        remove_stray_temporaries(dir)?;
        let state_path = dir.join(STATE);
        let state_file = match fs::read_to_string(&state_path) {
            Ok(text) => Some(
                toml::from_str::<State>(&text).map_err(|e| StoreError::Corrupt {
                    path: state_path.clone(),
                    reason: format!("unreadable: {}", e.message()),
                })?,
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        let mut running = load(&dir.join(RUNNING))?;
        let mut candidate = load(&dir.join(CANDIDATE))?;
        let r_ver = running.as_ref().map(|c| c.version);
        let c_ver = candidate.as_ref().map(|c| c.version);
        // No state file: a fresh directory, or one provisioned with a bare `running.toml`
        // (factory image); adopt what is there.
        let state = state_file.unwrap_or(State {
            running: r_ver.unwrap_or(0),
            previous: 0,
        });
        let mut interrupted = None;
        let steady = r_ver == Some(state.running) || (state.running == 0 && r_ver.is_none());
        if steady {
            if let Some(version) = c_ver {
                remove_file(&dir.join(CANDIDATE))?;
                sync_dir(dir)?;
                candidate = None;
                if version > state.running {
                    tracing::warn!(version, "discarded a candidate whose trial was interrupted");
                    interrupted = Some(InterruptedTrial { version });
                } else {
                    tracing::warn!(version, "discarded a stale candidate");
                }
            }
        } else if c_ver == Some(state.running) && (r_ver.is_none() || r_ver == Some(state.previous))
        {
            // The commit point was passed: finish steps 2 and 3.
            tracing::warn!(version = state.running, "finishing an interrupted commit");
            if r_ver.is_some() {
                rename(&dir.join(RUNNING), &dir.join(PREVIOUS))?;
                sync_dir(dir)?;
            }
            rename(&dir.join(CANDIDATE), &dir.join(RUNNING))?;
            sync_dir(dir)?;
            running = candidate.take();
        } else {
            return Err(StoreError::Corrupt {
                path: dir.to_owned(),
                reason: format!(
                    "state names running version {} (previous {}), but {RUNNING} holds {} and \
                     {CANDIDATE} {}",
                    state.running,
                    state.previous,
                    describe(r_ver),
                    describe(c_ver)
                ),
            });
        }
        let previous = load(&dir.join(PREVIOUS))?.filter(|p| {
            // A previous.toml that does not match the state is left over from a provisioning
            // step, not a version this store replaced; offering it as a rollback target would
            // be wrong.
            let matches = state.previous != 0 && p.version == state.previous;
            if !matches {
                tracing::warn!(
                    found = p.version,
                    expected = state.previous,
                    "ignoring {PREVIOUS}"
                );
            }
            matches
        });
        let store = ConfigStore {
            dir: dir.to_owned(),
            state,
            running,
            previous,
            candidate,
            hook: CrashHook::default(),
        };
        Ok((store, interrupted))
    }

    /// The configuration in force, if any was ever committed.
    pub fn running(&self) -> Option<&ApplianceConfig> {
        self.running.as_ref()
    }

    /// The running version, 0 if none.
    pub fn running_version(&self) -> u64 {
        self.state.running
    }

    /// The configuration the running one replaced.
    pub fn previous(&self) -> Option<&ApplianceConfig> {
        self.previous.as_ref()
    }

    /// The candidate under trial.
    pub fn candidate(&self) -> Option<&ApplianceConfig> {
        self.candidate.as_ref()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Validates and writes the candidate atomically (tmp, fsync, rename, fsync dir). Refuses a
    /// version not above the running one ([`StoreError::Replay`] if equal,
    /// [`StoreError::Downgrade`] if below), an invalid document, and a second candidate while
    /// one is under trial; on refusal nothing on disk changes.
    pub fn stage(&mut self, cfg: ApplianceConfig) -> Result<(), StoreError> {
        if let Some(c) = &self.candidate {
            return Err(StoreError::CandidatePending { version: c.version });
        }
        let running = self.state.running;
        if cfg.version == running {
            return Err(StoreError::Replay {
                version: cfg.version,
                running,
            });
        }
        if cfg.version < running {
            return Err(StoreError::Downgrade {
                version: cfg.version,
                running,
            });
        }
        cfg.validate()?;
        let text = cfg.try_to_toml()?;
        // What is stored must read back as what was validated; a serializer quirk must be
        // caught now, not when the box restarts.
        if parse_unvalidated(&text).as_ref() != Ok(&cfg) {
            return Err(ConfigError::new("document", "does not read back identically").into());
        }
        write_atomic(&self.dir, CANDIDATE, text.as_bytes(), &mut self.hook)?;
        self.candidate = Some(cfg);
        Ok(())
    }

    /// Candidate -> running, old running -> previous. Atomic: a crash leaves either the old or
    /// the new state (see the module documentation).
    pub fn commit(&mut self) -> Result<(), StoreError> {
        let Some(version) = self.candidate.as_ref().map(|c| c.version) else {
            return Err(StoreError::NoCandidate);
        };
        let new_state = State {
            running: version,
            previous: self.state.running,
        };
        let state_text = format!(
            "# Which configuration version is running (0: none). Written atomically; it is the\n\
             # commit point of pop-config's store, do not edit.\n{}",
            toml::to_string(&new_state).map_err(|e| StoreError::Corrupt {
                path: self.dir.join(STATE),
                reason: e.to_string(),
            })?
        );
        write_atomic(&self.dir, STATE, state_text.as_bytes(), &mut self.hook)?;
        if self.running.is_some() {
            rename(&self.dir.join(RUNNING), &self.dir.join(PREVIOUS))?;
            self.hook.step("rename running -> previous")?;
            sync_dir(&self.dir)?;
            self.hook.step("fsync dir")?;
        }
        rename(&self.dir.join(CANDIDATE), &self.dir.join(RUNNING))?;
        self.hook.step("rename candidate -> running")?;
        sync_dir(&self.dir)?;
        self.hook.step("fsync dir")?;
        self.state = new_state;
        self.previous = self.running.take();
        self.running = self.candidate.take();
        Ok(())
    }

    /// Deletes the candidate; the running configuration stays.
    pub fn discard_candidate(&mut self) -> Result<(), StoreError> {
        if self.candidate.is_none() {
            return Err(StoreError::NoCandidate);
        }
        remove_file(&self.dir.join(CANDIDATE))?;
        sync_dir(&self.dir)?;
        self.candidate = None;
        Ok(())
    }
}

fn describe(v: Option<u64>) -> String {
    v.map_or_else(|| "nothing".to_owned(), |v| format!("version {v}"))
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Reads and parses one document (schema only: a document stored by an older firmware is not
/// refused because today's validation is stricter; the agent decides what to do with it).
fn load(path: &Path) -> Result<Option<ApplianceConfig>, StoreError> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(path)(e)),
    };
    parse_unvalidated(&text)
        .map(Some)
        .map_err(|e| StoreError::Corrupt {
            path: path.to_owned(),
            reason: e.to_string(),
        })
}

fn remove_stray_temporaries(dir: &Path) -> Result<(), StoreError> {
    let mut removed = false;
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name.to_string_lossy().ends_with(TMP_SUFFIX) {
            remove_file(&entry.path())?;
            removed = true;
        }
    }
    if removed {
        sync_dir(dir)?;
    }
    Ok(())
}

fn remove_file(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), StoreError> {
    fs::rename(from, to).map_err(io_err(from))
}

/// Makes renames and removals in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// tmp, fsync, rename, fsync dir.
fn write_atomic(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    hook: &mut CrashHook,
) -> Result<(), StoreError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let mut f = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(bytes).map_err(io_err(&tmp))?;
    hook.step("write tmp")?;
    f.sync_all().map_err(io_err(&tmp))?;
    drop(f);
    hook.step("fsync tmp")?;
    let dest = dir.join(name);
    rename(&tmp, &dest)?;
    hook.step("rename tmp")?;
    sync_dir(dir)?;
    hook.step("fsync dir")?;
    Ok(())
}

/// Test hook: stops an operation after its N-th step with an I/O error, leaving the directory
/// exactly as a crash at that point would (minus the page cache, which the fsyncs cover).
#[derive(Debug, Default)]
struct CrashHook {
    #[cfg(test)]
    stop_after: Option<usize>,
    #[cfg(test)]
    done: usize,
}

impl CrashHook {
    #[cfg(not(test))]
    #[inline(always)]
    fn step(&mut self, _what: &str) -> Result<(), StoreError> {
        Ok(())
    }

    #[cfg(test)]
    fn step(&mut self, what: &str) -> Result<(), StoreError> {
        self.done += 1;
        if self.stop_after == Some(self.done) {
            return Err(StoreError::Io {
                path: PathBuf::from("<crash hook>"),
                source: io::Error::other(format!(
                    "simulated crash after step {} ({what})",
                    self.done
                )),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
impl ConfigStore {
    /// Makes the next operations stop with an error after `n` steps in total (1-based).
    pub(crate) fn crash_after(&mut self, n: usize) {
        self.hook = CrashHook {
            stop_after: Some(n),
            done: 0,
        };
    }
}
