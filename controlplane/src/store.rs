//! The durable store under `<dir>/store`: enrollment tokens, the audit log, and per device
//! the records (deduplicated by record id), config and command results, pending pushes and
//! what the device last said about itself.
//!
//! Durability rules: appends (records, results, audit) are one `write(2)` of a whole JSON line
//! followed by `fdatasync` before the caller acknowledges anything; small state files (tokens,
//! pending pushes, device info) are replaced atomically. After `kill -9` a torn last line of
//! an append-only file can only be one that was never acknowledged; it is cut off on load.

use std::collections::{BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use pop_agent_proto::{Command, CommandOutcome, ConfigResult, Hello, Record};
use rand::RngCore;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::util::{atomic_write, hex, now_unix_ms, now_unix_s, validate_device_id, FileLock};

/// Store errors.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A state file does not parse.
    #[error("{path}: corrupt: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Parser message.
        reason: String,
    },
    /// A bad argument (device id, ttl).
    #[error("{0}")]
    Invalid(String),
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Why an enrollment token was refused. The `Display` text is what the device is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No token with that value was ever issued.
    #[error("unknown token")]
    Unknown,
    /// The token was issued for another device id.
    #[error("token is not for device {0:?}")]
    WrongDevice(String),
    /// The token was used already.
    #[error("token already used")]
    AlreadyUsed,
    /// The token's lifetime is over.
    #[error("token expired")]
    Expired,
    /// The request itself was refused (bad CSR…) after the token checked out; the token
    /// stays unused.
    #[error("{0}")]
    Request(String),
    /// The store failed; the token stays unused.
    #[error("control plane storage error: {0}")]
    Store(String),
}

/// One enrollment token as stored: only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenEntry {
    /// SHA-256 of the token text, hex.
    pub sha256: String,
    /// The device it enrols.
    pub device_id: String,
    /// Expiry, seconds since the Unix epoch (valid while now < expiry).
    pub expires_unix_s: u64,
    /// When it was used (None: unused).
    pub used_unix_s: Option<u64>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

/// An audit log entry (enrollment attempts, revocations, pushes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When.
    pub at_unix_ms: u64,
    /// What (`enroll`, `revoke`, `push-config`, `command`, `renew`).
    pub action: String,
    /// Device concerned.
    pub device_id: String,
    /// Peer address or `admin`/`cli`.
    pub actor: String,
    /// `ok` or the refusal reason.
    pub outcome: String,
}

/// A stored record with its arrival time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredRecord {
    /// Arrival, ms since the Unix epoch.
    pub received_unix_ms: u64,
    /// The record as the device sent it.
    pub record: Record,
}

/// A stored config result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfigResult {
    /// Arrival, ms since the Unix epoch.
    pub received_unix_ms: u64,
    /// The result.
    pub result: ConfigResult,
}

/// A stored command result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCommandResult {
    /// Arrival, ms since the Unix epoch.
    pub received_unix_ms: u64,
    /// Command id.
    pub id: u64,
    /// Outcome.
    pub outcome: CommandOutcome,
}

/// A config push waiting for its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingConfig {
    /// Version.
    pub version: u64,
    /// TOML document.
    pub document: String,
}

/// A command waiting for its result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingCommand {
    /// Command id.
    pub id: u64,
    /// The command.
    pub command: Command,
}

/// What is to be (re)sent to a device at its next connection. Entries stay until the
/// device's result arrives, so a push lost with a dropped connection is sent again
/// (at-least-once; the agent refuses a config version it already runs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The newest config push (a newer push replaces an older unanswered one).
    pub config: Option<PendingConfig>,
    /// Commands in id order.
    pub commands: Vec<PendingCommand>,
}

/// What the device last said about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Last Hello, if any.
    pub hello: Option<Hello>,
    /// When it arrived.
    pub last_hello_unix_ms: u64,
    /// Serial of the certificate of the last session.
    pub cert_serial: Option<String>,
    /// Config version last reported (Hello, telemetry, config result).
    pub config_version: u64,
}

/// Result of storing a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordOutcome {
    /// False for a duplicate (already stored, not stored again).
    pub stored: bool,
    /// Highest record id stored for the device (the cumulative ack).
    pub up_to: u64,
}

#[derive(Debug)]
struct DeviceRecords {
    ids: BTreeSet<u64>,
    duplicates: u64,
    file: File,
}

#[derive(Debug, Default)]
struct Inner {
    records: HashMap<String, DeviceRecords>,
}

/// The store. Thread-safe; every method does blocking file I/O (call it from
/// `spawn_blocking` in async code).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    inner: Mutex<Inner>,
}

fn sha256_hex(data: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

fn read_json<T: DeserializeOwned + Default>(path: &Path) -> Result<T, StoreError> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| StoreError::Corrupt {
            path: path.to_path_buf(),
            reason: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> Result<(), StoreError> {
    let b = serde_json::to_vec_pretty(v).map_err(|e| StoreError::Invalid(e.to_string()))?;
    atomic_write(path, &b, 0o600).map_err(io_err(path))
}

fn append_line<T: Serialize>(file: &mut File, path: &Path, v: &T) -> Result<(), StoreError> {
    let mut line = serde_json::to_vec(v).map_err(|e| StoreError::Invalid(e.to_string()))?;
    line.push(b'\n');
    file.write_all(&line).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

fn open_append(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
        .map_err(io_err(path))
}

/// Reads a JSON-lines file, cutting off a torn last line (no trailing newline) left by a
/// crash mid-append, and skipping lines that do not parse (logged).
fn read_lines<T: DeserializeOwned>(path: &Path, repair: bool) -> Result<Vec<T>, StoreError> {
    let mut f = match OpenOptions::new().read(true).write(repair).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(io_err(path))?;
    let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    if complete < buf.len() {
        tracing::warn!(
            file = %path.display(),
            bytes = buf.len() - complete,
            "cutting off a torn last line (crash during an append)"
        );
        if repair {
            f.set_len(complete as u64).map_err(io_err(path))?;
            f.seek(SeekFrom::End(0)).map_err(io_err(path))?;
            f.sync_data().map_err(io_err(path))?;
        }
    }
    let mut out = Vec::new();
    for (n, line) in buf[..complete].split(|b| *b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(v) => out.push(v),
            Err(e) => {
                tracing::warn!(file = %path.display(), line = n + 1, error = %e, "skipping a line that does not parse")
            }
        }
    }
    Ok(out)
}

impl Store {
    /// Opens (creating) the store rooted at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root.join("devices")).map_err(io_err(root))?;
        Ok(Self {
            root: root.to_path_buf(),
            inner: Mutex::new(Inner::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps inconsistent with the files
        // (they are caches rebuilt from disk), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn device_dir(&self, device_id: &str) -> Result<PathBuf, StoreError> {
        validate_device_id(device_id).map_err(StoreError::Invalid)?;
        let d = self.root.join("devices").join(device_id);
        std::fs::create_dir_all(&d).map_err(io_err(&d))?;
        Ok(d)
    }

    fn tokens_path(&self) -> PathBuf {
        self.root.join("tokens.json")
    }

    /// Creates a one-time enrollment token for `device_id` valid `ttl_s` seconds (0: already
    /// expired, for tests). Returns the token text (256 random bits, hex); only its SHA-256
    /// is stored.
    pub fn create_token(&self, device_id: &str, ttl_s: u64) -> Result<String, StoreError> {
        validate_device_id(device_id).map_err(StoreError::Invalid)?;
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = hex(&raw);
        let _l = FileLock::acquire(&self.root.join("tokens.lock"))
            .map_err(io_err(&self.root.join("tokens.lock")))?;
        let path = self.tokens_path();
        let mut file: TokenFile = read_json(&path)?;
        file.tokens.push(TokenEntry {
            sha256: sha256_hex(token.as_bytes()),
            device_id: device_id.to_string(),
            expires_unix_s: now_unix_s().saturating_add(ttl_s),
            used_unix_s: None,
        });
        write_json(&path, &file)?;
        Ok(token)
    }

    /// Checks `token` for `device_id` and, if it is valid, runs `issue`; only when `issue`
    /// succeeds is the token marked used, durably, before returning (so the answer that
    /// follows can never be given twice for one token). A failed `issue` leaves the token
    /// unused: a device that sent a bad CSR can retry.
    pub fn consume_token<T>(
        &self,
        token: &str,
        device_id: &str,
        issue: impl FnOnce() -> Result<T, String>,
    ) -> Result<T, TokenRefusal> {
        let lock_path = self.root.join("tokens.lock");
        let _l = FileLock::acquire(&lock_path).map_err(|e| TokenRefusal::Store(e.to_string()))?;
        let path = self.tokens_path();
        let mut file: TokenFile =
            read_json(&path).map_err(|e| TokenRefusal::Store(e.to_string()))?;
        let digest = sha256_hex(token.as_bytes());
        let entry = file
            .tokens
            .iter_mut()
            .find(|t| t.sha256 == digest)
            .ok_or(TokenRefusal::Unknown)?;
        if entry.device_id != device_id {
            return Err(TokenRefusal::WrongDevice(device_id.to_string()));
        }
        if entry.used_unix_s.is_some() {
            return Err(TokenRefusal::AlreadyUsed);
        }
        let now = now_unix_s();
        if now >= entry.expires_unix_s {
            return Err(TokenRefusal::Expired);
        }
        let out = issue().map_err(TokenRefusal::Request)?;
        entry.used_unix_s = Some(now);
        write_json(&path, &file).map_err(|e| TokenRefusal::Store(e.to_string()))?;
        Ok(out)
    }

    /// Every token entry (hashes only).
    pub fn tokens(&self) -> Result<Vec<TokenEntry>, StoreError> {
        Ok(read_json::<TokenFile>(&self.tokens_path())?.tokens)
    }

    /// Appends an audit entry (durable).
    pub fn audit(&self, entry: &AuditEntry) -> Result<(), StoreError> {
        let path = self.root.join("audit.jsonl");
        let _g = self.lock();
        let mut f = open_append(&path)?;
        append_line(&mut f, &path, entry)
    }

    /// The audit log.
    pub fn audit_entries(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let _g = self.lock();
        read_lines(&self.root.join("audit.jsonl"), false)
    }

    fn device_records<'a>(
        &self,
        inner: &'a mut Inner,
        device_id: &str,
    ) -> Result<&'a mut DeviceRecords, StoreError> {
        if !inner.records.contains_key(device_id) {
            let path = self.device_dir(device_id)?.join("records.jsonl");
            let stored: Vec<StoredRecord> = read_lines(&path, true)?;
            let ids = stored.iter().map(|r| r.record.id).collect();
            let file = open_append(&path)?;
            inner.records.insert(
                device_id.to_string(),
                DeviceRecords {
                    ids,
                    duplicates: 0,
                    file,
                },
            );
        }
        inner
            .records
            .get_mut(device_id)
            .ok_or_else(|| StoreError::Invalid("device records vanished".into()))
    }

    /// Stores `record` for `device_id` unless a record with its id is stored already.
    /// Returns whether it was stored and the cumulative ack to send.
    pub fn append_record(
        &self,
        device_id: &str,
        record: &Record,
    ) -> Result<RecordOutcome, StoreError> {
        let mut g = self.lock();
        let path = self
            .root
            .join("devices")
            .join(device_id)
            .join("records.jsonl");
        let d = self.device_records(&mut g, device_id)?;
        let stored = if d.ids.contains(&record.id) {
            d.duplicates += 1;
            false
        } else {
            append_line(
                &mut d.file,
                &path,
                &StoredRecord {
                    received_unix_ms: now_unix_ms(),
                    record: record.clone(),
                },
            )?;
            d.ids.insert(record.id);
            true
        };
        Ok(RecordOutcome {
            stored,
            up_to: d.ids.last().copied().unwrap_or(0),
        })
    }

    /// Highest record id stored for `device_id` (0: none).
    pub fn acked_up_to(&self, device_id: &str) -> Result<u64, StoreError> {
        let mut g = self.lock();
        let d = self.device_records(&mut g, device_id)?;
        Ok(d.ids.last().copied().unwrap_or(0))
    }

    /// Every stored record of `device_id` in arrival order, and the number of duplicates
    /// received since the server started.
    pub fn records(&self, device_id: &str) -> Result<(Vec<StoredRecord>, u64), StoreError> {
        let mut g = self.lock();
        let dups = self.device_records(&mut g, device_id)?.duplicates;
        let path = self.device_dir(device_id)?.join("records.jsonl");
        Ok((read_lines(&path, false)?, dups))
    }

    /// Stores a config result and drops the matching pending push.
    pub fn append_config_result(
        &self,
        device_id: &str,
        result: &ConfigResult,
    ) -> Result<(), StoreError> {
        let dir = self.device_dir(device_id)?;
        let path = dir.join("config-results.jsonl");
        let _g = self.lock();
        let mut f = open_append(&path)?;
        append_line(
            &mut f,
            &path,
            &StoredConfigResult {
                received_unix_ms: now_unix_ms(),
                result: result.clone(),
            },
        )?;
        self.update_pending_locked(&dir, |p| {
            if p.config
                .as_ref()
                .is_some_and(|c| c.version <= result.version)
            {
                p.config = None;
            }
        })?;
        Ok(())
    }

    /// Stored config results of `device_id`.
    pub fn config_results(&self, device_id: &str) -> Result<Vec<StoredConfigResult>, StoreError> {
        let path = self.device_dir(device_id)?.join("config-results.jsonl");
        let _g = self.lock();
        read_lines(&path, false)
    }

    /// Stores a command result and drops the pending command.
    pub fn append_command_result(
        &self,
        device_id: &str,
        id: u64,
        outcome: &CommandOutcome,
    ) -> Result<(), StoreError> {
        let dir = self.device_dir(device_id)?;
        let path = dir.join("command-results.jsonl");
        let _g = self.lock();
        let mut f = open_append(&path)?;
        append_line(
            &mut f,
            &path,
            &StoredCommandResult {
                received_unix_ms: now_unix_ms(),
                id,
                outcome: outcome.clone(),
            },
        )?;
        self.update_pending_locked(&dir, |p| p.commands.retain(|c| c.id != id))?;
        Ok(())
    }

    /// Stored command results of `device_id`.
    pub fn command_results(&self, device_id: &str) -> Result<Vec<StoredCommandResult>, StoreError> {
        let path = self.device_dir(device_id)?.join("command-results.jsonl");
        let _g = self.lock();
        read_lines(&path, false)
    }

    fn update_pending_locked(
        &self,
        dir: &Path,
        f: impl FnOnce(&mut Pending),
    ) -> Result<Pending, StoreError> {
        let path = dir.join("pending.json");
        let mut p: Pending = read_json(&path)?;
        let before = p.clone();
        f(&mut p);
        if p != before {
            write_json(&path, &p)?;
        }
        Ok(p)
    }

    /// What is pending for `device_id`.
    pub fn pending(&self, device_id: &str) -> Result<Pending, StoreError> {
        let dir = self.device_dir(device_id)?;
        let _g = self.lock();
        read_json(&dir.join("pending.json"))
    }

    /// Queues a config push (replacing an older pending one). Refuses a version not above
    /// the pending one.
    pub fn queue_config(
        &self,
        device_id: &str,
        version: u64,
        document: &str,
    ) -> Result<(), StoreError> {
        let dir = self.device_dir(device_id)?;
        let _g = self.lock();
        let mut refused = None;
        self.update_pending_locked(&dir, |p| {
            if let Some(c) = &p.config {
                if c.version >= version {
                    refused = Some(c.version);
                    return;
                }
            }
            p.config = Some(PendingConfig {
                version,
                document: document.to_string(),
            });
        })?;
        match refused {
            Some(v) => Err(StoreError::Invalid(format!(
                "version {version} is not above the pending version {v}"
            ))),
            None => Ok(()),
        }
    }

    /// Drops a pending config push the device already runs (its Hello reports a version at
    /// or above it).
    pub fn drop_config_at_or_below(&self, device_id: &str, version: u64) -> Result<(), StoreError> {
        let dir = self.device_dir(device_id)?;
        let _g = self.lock();
        self.update_pending_locked(&dir, |p| {
            if p.config.as_ref().is_some_and(|c| c.version <= version) {
                p.config = None;
            }
        })?;
        Ok(())
    }

    /// Queues a command under a fresh id (unique across devices and restarts).
    pub fn queue_command(&self, device_id: &str, command: &Command) -> Result<u64, StoreError> {
        let dir = self.device_dir(device_id)?;
        let _g = self.lock();
        let seq_path = self.root.join("next-command-id.json");
        let next: u64 = read_json::<u64>(&seq_path)?.max(1);
        // Persist the counter before the command: a crash in between wastes an id but never
        // reuses one.
        write_json(&seq_path, &(next + 1))?;
        self.update_pending_locked(&dir, |p| {
            p.commands.push(PendingCommand {
                id: next,
                command: command.clone(),
            })
        })?;
        Ok(next)
    }

    /// What the device last said about itself.
    pub fn device_info(&self, device_id: &str) -> Result<DeviceInfo, StoreError> {
        let dir = self.device_dir(device_id)?;
        let _g = self.lock();
        read_json(&dir.join("info.json"))
    }

    /// Updates the device's info (atomic write).
    pub fn update_device_info(
        &self,
        device_id: &str,
        f: impl FnOnce(&mut DeviceInfo),
    ) -> Result<DeviceInfo, StoreError> {
        let dir = self.device_dir(device_id)?;
        let _g = self.lock();
        let path = dir.join("info.json");
        let mut info: DeviceInfo = read_json(&path)?;
        let before = info.clone();
        f(&mut info);
        if info != before {
            write_json(&path, &info)?;
        }
        Ok(info)
    }

    /// Device ids with a directory in the store (every device that ever talked to us or had
    /// something queued).
    pub fn known_devices(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.root.join("devices");
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let e = e.map_err(io_err(&dir))?;
            if let Some(name) = e.file_name().to_str() {
                if validate_device_id(name).is_ok() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use pop_agent_proto::{Audit, RecordBody};

    fn rec(id: u64) -> Record {
        Record {
            id,
            created_unix_ms: id * 10,
            body: RecordBody::Audit(Audit {
                at_unix_ms: 1,
                actor: "agent".into(),
                action: "test".into(),
                detail: String::new(),
                outcome: "ok".into(),
            }),
        }
    }

    #[test]
    fn tokens_are_one_time_and_checked_for_device_and_expiry() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let t = s.create_token("pop-1", 3600).unwrap();
        assert!(t.len() >= 32, "at least 128 bits");
        assert!(!std::fs::read_to_string(d.path().join("tokens.json"))
            .unwrap()
            .contains(&t));
        assert_eq!(
            s.consume_token("nope", "pop-1", || Ok(())),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(
            s.consume_token(&t, "pop-2", || Ok(())),
            Err(TokenRefusal::WrongDevice("pop-2".into()))
        );
        // A failed issuance leaves the token usable.
        assert_eq!(
            s.consume_token(&t, "pop-1", || Err::<(), _>("bad csr".into())),
            Err(TokenRefusal::Request("bad csr".into()))
        );
        s.consume_token(&t, "pop-1", || Ok(())).unwrap();
        // Durable: a fresh Store (a restarted server) sees it used.
        let s2 = Store::open(d.path()).unwrap();
        assert_eq!(
            s2.consume_token(&t, "pop-1", || Ok(())),
            Err(TokenRefusal::AlreadyUsed)
        );
        let e = s.create_token("pop-1", 0).unwrap();
        assert_eq!(
            s.consume_token(&e, "pop-1", || Ok(())),
            Err(TokenRefusal::Expired)
        );
    }

    #[test]
    fn records_are_deduplicated_and_survive_reopen_with_a_torn_tail() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        let mut acks = Vec::new();
        for id in [1, 2, 3, 2, 3, 4] {
            acks.push(s.append_record("pop-1", &rec(id)).unwrap());
        }
        let ups: Vec<u64> = acks.iter().map(|a| a.up_to).collect();
        assert_eq!(ups, vec![1, 2, 3, 3, 3, 4]);
        let stored: Vec<bool> = acks.iter().map(|a| a.stored).collect();
        assert_eq!(stored, vec![true, true, true, false, false, true]);
        let (recs, dups) = s.records("pop-1").unwrap();
        assert_eq!(
            recs.iter().map(|r| r.record.id).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert_eq!(dups, 2);
        drop(s);

        // Simulate a crash mid-append.
        let p = d.path().join("devices/pop-1/records.jsonl");
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"received_unix_ms\":1,\"rec").unwrap();
        drop(f);
        let s = Store::open(d.path()).unwrap();
        assert_eq!(s.acked_up_to("pop-1").unwrap(), 4);
        assert!(!s.append_record("pop-1", &rec(4)).unwrap().stored);
        assert!(s.append_record("pop-1", &rec(5)).unwrap().stored);
        let (recs, _) = s.records("pop-1").unwrap();
        assert_eq!(
            recs.iter().map(|r| r.record.id).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn pending_pushes_clear_on_results() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        s.queue_config("pop-1", 2, "a = 1").unwrap();
        assert!(s.queue_config("pop-1", 2, "a = 2").is_err());
        s.queue_config("pop-1", 3, "a = 3").unwrap();
        let id1 = s.queue_command("pop-1", &Command::Diagnostics).unwrap();
        let id2 = s
            .queue_command("pop-1", &Command::RotateCertificate)
            .unwrap();
        assert!(id2 > id1);
        let p = s.pending("pop-1").unwrap();
        assert_eq!(p.config.as_ref().unwrap().version, 3);
        assert_eq!(p.commands.len(), 2);
        s.append_command_result("pop-1", id1, &CommandOutcome::Failed { reason: "x".into() })
            .unwrap();
        s.append_config_result(
            "pop-1",
            &ConfigResult {
                version: 3,
                outcome: pop_agent_proto::ConfigOutcome::Applied,
                running_version: 3,
            },
        )
        .unwrap();
        let p = s.pending("pop-1").unwrap();
        assert!(p.config.is_none());
        assert_eq!(p.commands.iter().map(|c| c.id).collect::<Vec<_>>(), [id2]);
        assert_eq!(s.command_results("pop-1").unwrap().len(), 1);
        assert_eq!(s.config_results("pop-1").unwrap().len(), 1);
    }

    #[test]
    fn hostile_device_ids_never_reach_the_file_system() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path()).unwrap();
        assert!(s.append_record("../escape", &rec(1)).is_err());
        assert!(s.queue_command("a/b", &Command::Diagnostics).is_err());
        assert!(!d.path().parent().unwrap().join("escape").exists());
    }
}
