//! The spool itself: recovery at open, appends, reads, acknowledgements, erasure and the cap.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::{Flock, FlockArg};
use pop_agent_proto::RecordClass;
use pop_keystore::{DataKey, KeyStore, WrappedKey};

use crate::format::{self, class_index, FrameMeta, State, FRAME_OVERHEAD, MAX_BODY};
use crate::fsio::{self, TMP_SUFFIX};
use crate::{SpoolConfig, SpoolError};

const STATE_FILE: &str = "state";
const LOCK_FILE: &str = "lock";
const CORRUPT_SUFFIX: &str = ".corrupt";
/// Unwrapped segment keys kept for reads. Unwrapping is a key store operation (a TPM round
/// trip), and reads walk segments in order, so a handful covers the working set while bounding
/// locked memory.
const KEY_CACHE: usize = 8;
const TELEMETRY: usize = 0;
const CDR: usize = 2;
const AUDIT: usize = 3;

/// A record as read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The id the spool gave it.
    pub id: u64,
    /// Its class.
    pub class: RecordClass,
    /// Creation time, ms since the Unix epoch, as given to `append`.
    pub created_unix_ms: u64,
    /// The body, decrypted and authenticated.
    pub body: Vec<u8>,
}

/// A record to append with [`Spool::append_batch`].
#[derive(Debug, Clone, Copy)]
pub struct NewRecord<'a> {
    /// Its class.
    pub class: RecordClass,
    /// Creation time, ms since the Unix epoch.
    pub created_unix_ms: u64,
    /// The body (at most [`crate::MAX_BODY`] bytes, and it must fit a segment).
    pub body: &'a [u8],
}

/// Occupancy and counters, for telemetry and the Hello.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Total size of the segment files.
    pub bytes: u64,
    /// Records not yet acknowledged.
    pub pending_records: u64,
    /// Telemetry records dropped because the spool was full (cumulative, persisted with the
    /// state file).
    pub telemetry_dropped: u64,
    /// At least `alarm_percent` full while CDR or audit records are pending, or the last
    /// non-telemetry append was refused for space and nothing has been appended or
    /// acknowledged since.
    pub alarm: bool,
    /// Highest id handed out (or acknowledged); the next record gets a higher one.
    pub last_id: u64,
    /// Every id ≤ this is acknowledged.
    pub acked_up_to: u64,
    /// Damaged records found since open (at open or by reads); they are skipped.
    pub corrupt_records: u64,
}

/// What [`Spool::open`] found and repaired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Segment files in use after recovery.
    pub segments: usize,
    /// Unacknowledged records found.
    pub records: u64,
    /// Bytes cut from the end of the last segment: a record whose write was interrupted
    /// (never reported durable).
    pub truncated_tail_bytes: u64,
    /// Damaged records skipped (each damaged region counts once).
    pub corrupt_records: u64,
    /// Segments whose header is unreadable, renamed to `*.corrupt` and left for inspection.
    pub quarantined_segments: usize,
}

/// Where an unacknowledged record is.
#[derive(Debug, Clone, Copy)]
struct Entry {
    id: u64,
    offset: u32,
    len: u32,
    class: RecordClass,
}

/// One segment file and the index of its unacknowledged records.
#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    header_len: u32,
    /// File length.
    len: u64,
    wrapped: WrappedKey,
    /// Unacknowledged, undamaged-at-open records, ascending id.
    entries: Vec<Entry>,
    /// `entries` per class (index: `format::class_index`).
    counts: [u64; 4],
}

impl Segment {
    fn recount(&mut self) {
        self.counts = [0; 4];
        for e in &self.entries {
            self.counts[class_index(e.class)] += 1;
        }
    }

    /// Bytes still needed: header and unacknowledged records. The rest (acknowledged or
    /// damaged records) can be reclaimed by rewriting the segment.
    fn live_bytes(&self) -> u64 {
        u64::from(self.header_len) + self.entries.iter().map(|e| u64::from(e.len)).sum::<u64>()
    }
}

/// The segment appends go to.
struct Active {
    seg_id: u64,
    file: File,
    key: Arc<DataKey>,
}

/// A data key generated ahead of the next segment, so the header length is known when
/// planning how much space an append needs.
struct Prepared {
    key: DataKey,
    wrapped: Vec<u8>,
}

/// The store-and-forward spool. See the crate documentation for the design.
pub struct Spool {
    cfg: SpoolConfig,
    keystore: Arc<dyn KeyStore>,
    segments: BTreeMap<u64, Segment>,
    active: Option<Active>,
    prepared: Option<Prepared>,
    keys: Mutex<Vec<(u64, Arc<DataKey>)>>,
    /// `(segment id, offset)` of records that failed CRC or authentication on read.
    bad: Mutex<HashSet<(u64, u32)>>,
    last_id: u64,
    acked_up_to: u64,
    telemetry_dropped: u64,
    corrupt_found: u64,
    refused: bool,
    bytes: u64,
    persisted: State,
    _lock: Flock<File>,
}

impl fmt::Debug for Spool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Spool")
            .field("dir", &self.cfg.dir)
            .field("keystore", &self.keystore.backend_name())
            .field("segments", &self.segments.len())
            .field("bytes", &self.bytes)
            .field("last_id", &self.last_id)
            .field("acked_up_to", &self.acked_up_to)
            .finish_non_exhaustive()
    }
}

fn seg_name(id: u64) -> String {
    format!("seg-{id:020}.log")
}

fn parse_seg_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".log")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn lock_dir(dir: &Path) -> Result<Flock<File>, SpoolError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| SpoolError::io("open", &path, e))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
        if errno == nix::errno::Errno::EWOULDBLOCK {
            SpoolError::Locked { path: path.clone() }
        } else {
            SpoolError::io("lock", &path, std::io::Error::from(errno))
        }
    })
}

/// Removes temporary files a crash left behind (an interrupted segment creation, rewrite or
/// state update: the rename never happened, so the old file is still the valid one).
fn list_segments(dir: &Path) -> Result<Vec<u64>, SpoolError> {
    let mut ids = Vec::new();
    let mut removed = false;
    let rd = fs::read_dir(dir).map_err(|e| SpoolError::io("list", dir, e))?;
    for entry in rd {
        let entry = entry.map_err(|e| SpoolError::io("list", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TMP_SUFFIX) {
            let p = entry.path();
            fs::remove_file(&p).map_err(|e| SpoolError::io("remove stale", &p, e))?;
            removed = true;
        } else if let Some(id) = parse_seg_name(name) {
            ids.push(id);
        }
    }
    if removed {
        fsio::sync_dir(dir)?;
    }
    ids.sort_unstable();
    Ok(ids)
}

fn quarantine(dir: &Path, path: &Path, reason: &str) -> Result<(), SpoolError> {
    let mut to = path.as_os_str().to_owned();
    to.push(CORRUPT_SUFFIX);
    tracing::error!(segment = %path.display(), reason, "spool segment header unreadable; its records are lost, file kept as *.corrupt");
    fs::rename(path, &to).map_err(|e| SpoolError::io("quarantine", path, e))?;
    fsio::sync_dir(dir)
}

fn truncate(path: &Path, len: usize) -> Result<(), SpoolError> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len as u64)?;
            f.sync_all()
        })
        .map_err(|e| SpoolError::io("truncate torn tail of", path, e))
}

impl Spool {
    /// Opens (creating if needed) the spool in `cfg.dir`, recovering from whatever a crash
    /// left: stale temporary files are removed, a torn record at the end of the last segment
    /// is cut off, damaged records elsewhere are skipped and counted, and segments whose
    /// header is unreadable are quarantined. Fails when another instance holds the directory,
    /// when the state file is damaged, or when a segment was written under another key store
    /// (its data key's root key id does not match).
    pub fn open(
        cfg: SpoolConfig,
        keystore: Arc<dyn KeyStore>,
    ) -> Result<(Spool, RecoveryReport), SpoolError> {
        cfg.validate()?;
        let dir = cfg.dir.clone();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| SpoolError::io("create directory", &dir, e))?;
        let lock = lock_dir(&dir)?;
        let state_path = dir.join(STATE_FILE);
        let state = match fsio::read_optional(&state_path)? {
            None => State::default(),
            Some(b) => State::decode(&b).map_err(|reason| SpoolError::Corrupt {
                path: state_path.clone(),
                reason,
            })?,
        };
        let ids = list_segments(&dir)?;
        let root = if ids.is_empty() {
            None
        } else {
            Some(
                keystore
                    .ensure_root_key()
                    .map_err(|e| SpoolError::crypto("load the key store's root key", e))?,
            )
        };

        let mut report = RecoveryReport::default();
        let mut segments = BTreeMap::new();
        let mut last_id = state.id_floor.max(state.acked_up_to);
        let mut prev_id: Option<u64> = None;
        for (i, &seg_id) in ids.iter().enumerate() {
            let is_last = i + 1 == ids.len();
            let path = dir.join(seg_name(seg_id));
            // The segment id is consumed even if the segment turns out empty or unreadable.
            last_id = last_id.max(seg_id);
            let buf = fs::read(&path).map_err(|e| SpoolError::io("read", &path, e))?;
            let header = format::decode_header(&buf)
                .and_then(|h| {
                    if h.seg_id == seg_id {
                        Ok(h)
                    } else {
                        Err(format!(
                            "header names segment {}, file name {seg_id}",
                            h.seg_id
                        ))
                    }
                })
                .and_then(|h| {
                    let w = WrappedKey::from_bytes(&h.wrapped)
                        .map_err(|e| format!("wrapped data key: {e}"))?;
                    Ok((h, w))
                });
            let (header, wrapped) = match header {
                Ok(hw) => hw,
                Err(reason) => {
                    quarantine(&dir, &path, &reason)?;
                    report.quarantined_segments += 1;
                    continue;
                }
            };
            if let Some(root) = root {
                wrapped
                    .check_root(root)
                    .map_err(|e| SpoolError::crypto(format!("segment {}", path.display()), e))?;
            }
            let scan = format::scan(&buf, header.len);
            let mut file_len = buf.len();
            if let Some(from) = scan.tail_from {
                if is_last {
                    // Only the last segment is ever appended to, so only it can end in a
                    // write that a crash interrupted before its fdatasync returned.
                    truncate(&path, from)?;
                    report.truncated_tail_bytes += (buf.len() - from) as u64;
                    file_len = from;
                } else {
                    tracing::warn!(segment = %path.display(), offset = from, "damaged bytes at the end of a closed spool segment");
                    report.corrupt_records += 1;
                }
            }
            for &(start, end) in &scan.corrupt {
                tracing::warn!(segment = %path.display(), start, end, "damaged spool record skipped");
            }
            report.corrupt_records += scan.corrupt.len() as u64;
            let mut entries = Vec::with_capacity(scan.frames.len());
            for f in &scan.frames {
                // Ids only grow, across segments too; a frame breaking that is not ours.
                if f.id < seg_id || prev_id.is_some_and(|p| f.id <= p) {
                    tracing::warn!(segment = %path.display(), id = f.id, "spool record out of id order skipped");
                    report.corrupt_records += 1;
                    continue;
                }
                prev_id = Some(f.id);
                last_id = last_id.max(f.id);
                if f.id <= state.acked_up_to {
                    continue;
                }
                entries.push(entry_of(f)?);
            }
            let mut seg = Segment {
                id: seg_id,
                path,
                header_len: u32::try_from(header.len).unwrap_or(u32::MAX),
                len: file_len as u64,
                wrapped,
                entries,
                counts: [0; 4],
            };
            seg.recount();
            segments.insert(seg_id, seg);
        }

        let bytes = segments.values().map(|s| s.len).sum();
        let mut spool = Spool {
            cfg,
            keystore,
            segments,
            // Appends after a restart always go to a new segment with a fresh key: the torn
            // record cut from the last segment may reach the disk again under a reused id, and
            // its nonce must never meet the same key with another body.
            active: None,
            prepared: None,
            keys: Mutex::new(Vec::new()),
            bad: Mutex::new(HashSet::new()),
            last_id,
            acked_up_to: state.acked_up_to,
            telemetry_dropped: state.telemetry_dropped,
            corrupt_found: report.corrupt_records,
            refused: false,
            bytes,
            persisted: state,
            _lock: lock,
        };
        spool.persist_state()?;
        spool.gc()?;
        report.segments = spool.segments.len();
        report.records = spool.pending();
        tracing::info!(?report, last_id = spool.last_id, "spool opened");
        Ok((spool, report))
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &SpoolConfig {
        &self.cfg
    }

    /// Appends one record and returns its id once it is durable (written and fdatasynced).
    ///
    /// When the spool is full, acknowledged leftovers and then the oldest telemetry are
    /// dropped to make room. If it still does not fit, the record is not stored and
    /// [`SpoolError::Full`] is returned; for a telemetry record this means it was dropped and
    /// counted in `telemetry_dropped` (callers may treat that as routine), for any other class
    /// it raises the alarm and the caller must keep the record.
    pub fn append(
        &mut self,
        class: RecordClass,
        created_unix_ms: u64,
        body: &[u8],
    ) -> Result<u64, SpoolError> {
        let ids = self.append_batch(&[NewRecord {
            class,
            created_unix_ms,
            body,
        }])?;
        ids.first().copied().ok_or_else(|| SpoolError::Corrupt {
            path: self.cfg.dir.clone(),
            reason: "internal: an append of one record returned no id".into(),
        })
    }

    /// Appends several records with one fdatasync (per segment touched) and returns their
    /// ids, in order, once all are durable.
    ///
    /// Space is all-or-nothing: if the batch does not fit after dropping old telemetry,
    /// nothing is written and [`SpoolError::Full`] names the first non-telemetry class (a
    /// batch of only telemetry is then dropped and counted). On an I/O error, records of the
    /// batch written to an earlier segment may be stored anyway (they will be delivered; the
    /// control plane drops duplicates by id).
    pub fn append_batch(&mut self, records: &[NewRecord<'_>]) -> Result<Vec<u64>, SpoolError> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let header_len = self.next_header_len()?;
        let room = self.cfg.segment_bytes.saturating_sub(header_len);
        let max_body = usize::try_from(room)
            .unwrap_or(usize::MAX)
            .saturating_sub(FRAME_OVERHEAD)
            .min(MAX_BODY);
        let mut frame_lens = Vec::with_capacity(records.len());
        for r in records {
            if r.body.len() > max_body {
                return Err(SpoolError::TooLarge {
                    len: r.body.len(),
                    max: max_body,
                });
            }
            frame_lens.push((FRAME_OVERHEAD + r.body.len()) as u64);
        }
        loop {
            let need = self.plan_bytes(&frame_lens, header_len);
            if self.bytes.saturating_add(need) <= self.cfg.max_bytes {
                break;
            }
            if !self.reclaim_one()? {
                return Err(self.refuse(records));
            }
        }
        self.write_batch(records)
    }

    fn refuse(&mut self, records: &[NewRecord<'_>]) -> SpoolError {
        let precious = records.iter().find(|r| r.class != RecordClass::Telemetry);
        let class = match precious {
            Some(r) => {
                self.refused = true;
                tracing::error!(class = ?r.class, bytes = self.bytes, max = self.cfg.max_bytes, "spool full: record refused");
                r.class
            }
            None => {
                self.telemetry_dropped += records.len() as u64;
                RecordClass::Telemetry
            }
        };
        SpoolError::Full {
            class,
            bytes: self.bytes,
            max_bytes: self.cfg.max_bytes,
        }
    }

    /// Header length of the next segment (generating its key now if needed).
    fn next_header_len(&mut self) -> Result<u64, SpoolError> {
        let prepared = match self.prepared.take() {
            Some(p) => p,
            None => self.generate()?,
        };
        let len = format::header_len(prepared.wrapped.len()) as u64;
        self.prepared = Some(prepared);
        Ok(len)
    }

    fn generate(&self) -> Result<Prepared, SpoolError> {
        let ctx = "generate a segment data key";
        let (key, wrapped) = self
            .keystore
            .generate_data_key()
            .map_err(|e| SpoolError::crypto(ctx, e))?;
        let wrapped = wrapped.to_bytes().map_err(|e| SpoolError::crypto(ctx, e))?;
        Ok(Prepared { key, wrapped })
    }

    /// Bytes the frames will add, counting the headers of the segments they roll into.
    fn plan_bytes(&self, frame_lens: &[u64], header_len: u64) -> u64 {
        let mut cur = self
            .active
            .as_ref()
            .and_then(|a| self.segments.get(&a.seg_id))
            .map(|s| s.len);
        let mut need = 0u64;
        for &f in frame_lens {
            cur = match cur {
                Some(c) if c + f <= self.cfg.segment_bytes => Some(c + f),
                _ => {
                    need += header_len;
                    Some(header_len + f)
                }
            };
            need += f;
        }
        need
    }

    /// Frees some space: first by rewriting a segment without its acknowledged or damaged
    /// leftovers, then by rewriting the oldest segment holding telemetry without it. Returns
    /// `false` when nothing more can be freed.
    fn reclaim_one(&mut self) -> Result<bool, SpoolError> {
        let garbage = self
            .segments
            .values()
            .find(|s| s.len > s.live_bytes())
            .map(|s| s.id);
        if let Some(id) = garbage {
            self.rewrite(id, &|_| true)?;
            return Ok(true);
        }
        let telemetry = self
            .segments
            .values()
            .find(|s| s.counts[TELEMETRY] > 0)
            .map(|s| s.id);
        if let Some(id) = telemetry {
            let removed = self.rewrite(id, &|e| e.class != RecordClass::Telemetry)?;
            self.telemetry_dropped += removed as u64;
            tracing::warn!(
                segment = id,
                dropped = removed,
                "spool full: oldest telemetry dropped"
            );
            return Ok(true);
        }
        Ok(false)
    }

    fn write_batch(&mut self, records: &[NewRecord<'_>]) -> Result<Vec<u64>, SpoolError> {
        let mut ids = Vec::with_capacity(records.len());
        let mut buf = Vec::new();
        let mut new_entries = Vec::new();
        for r in records {
            let id = self
                .last_id
                .checked_add(1)
                .ok_or_else(|| SpoolError::Corrupt {
                    path: self.cfg.dir.clone(),
                    reason: "record ids exhausted".into(),
                })?;
            let frame_len = (FRAME_OVERHEAD + r.body.len()) as u64;
            let fits = self
                .active
                .as_ref()
                .and_then(|a| self.segments.get(&a.seg_id))
                .is_some_and(|s| s.len + buf.len() as u64 + frame_len <= self.cfg.segment_bytes);
            if !fits {
                if self.active.is_some() {
                    self.flush(&mut buf, &mut new_entries)?;
                }
                self.roll(id)?;
            }
            // Consumed from here on, even if the write fails: an id is never handed out twice
            // in one process, so a nonce never meets the active key with another body.
            self.last_id = id;
            let active = self
                .active
                .as_ref()
                .ok_or_else(|| internal(&self.cfg.dir))?;
            let seg_len = self.segments.get(&active.seg_id).map_or(0, |s| s.len);
            let offset = seg_len + buf.len() as u64;
            format::encode_frame(
                &mut buf,
                &active.key,
                active.seg_id,
                id,
                r.class,
                r.created_unix_ms,
                r.body,
            )
            .map_err(|e| SpoolError::crypto(format!("seal record {id}"), e))?;
            new_entries.push(Entry {
                id,
                offset: u32::try_from(offset).map_err(|_| internal(&self.cfg.dir))?,
                len: frame_len as u32,
                class: r.class,
            });
            ids.push(id);
        }
        self.flush(&mut buf, &mut new_entries)?;
        self.refused = false;
        Ok(ids)
    }

    /// Writes `buf` to the active segment and fdatasyncs it; only then are the records
    /// indexed (and so readable and counted).
    fn flush(&mut self, buf: &mut Vec<u8>, new_entries: &mut Vec<Entry>) -> Result<(), SpoolError> {
        if buf.is_empty() {
            return Ok(());
        }
        let active = self
            .active
            .as_mut()
            .ok_or_else(|| internal(&self.cfg.dir))?;
        let seg = self
            .segments
            .get_mut(&active.seg_id)
            .ok_or_else(|| internal(&self.cfg.dir))?;
        let written = active
            .file
            .write_all(buf)
            .and_then(|()| active.file.sync_data());
        if let Err(e) = written {
            // After a failed write or fdatasync the file's contents are uncertain: cut back
            // what we may have added (best effort) and never append to this segment again.
            let _ = active.file.set_len(seg.len);
            let _ = active.file.sync_data();
            let path = seg.path.clone();
            self.active = None;
            buf.clear();
            new_entries.clear();
            return Err(SpoolError::io("append to", path, e));
        }
        seg.len += buf.len() as u64;
        self.bytes += buf.len() as u64;
        for e in new_entries.drain(..) {
            seg.counts[class_index(e.class)] += 1;
            seg.entries.push(e);
        }
        buf.clear();
        Ok(())
    }

    /// Starts segment `seg_id` (whose first record will be `seg_id`) and makes it active.
    fn roll(&mut self, seg_id: u64) -> Result<(), SpoolError> {
        let prepared = match self.prepared.take() {
            Some(p) => p,
            None => self.generate()?,
        };
        let header = format::encode_header(seg_id, &prepared.wrapped).ok_or_else(|| {
            SpoolError::crypto(
                "segment header",
                pop_keystore::Error::Crypto("wrapped data key longer than 65535 bytes"),
            )
        })?;
        let wrapped = WrappedKey::from_bytes(&prepared.wrapped)
            .map_err(|e| SpoolError::crypto("re-read a wrapped data key", e))?;
        let path = self.cfg.dir.join(seg_name(seg_id));
        // Created complete (header written and synced under a temporary name, then renamed),
        // so a segment file always has a whole header.
        fsio::write_atomic(&self.cfg.dir, &path, &header)?;
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(|e| SpoolError::io("open for append", &path, e))?;
        let key = Arc::new(prepared.key);
        self.cache_key(seg_id, Arc::clone(&key));
        self.segments.insert(
            seg_id,
            Segment {
                id: seg_id,
                path,
                header_len: header.len() as u32,
                len: header.len() as u64,
                wrapped,
                entries: Vec::new(),
                counts: [0; 4],
            },
        );
        self.bytes += header.len() as u64;
        let previous = self.active.replace(Active { seg_id, file, key });
        if previous.is_some() {
            // The closed segment may be fully acknowledged already; it can go now.
            if let Err(e) = self.gc() {
                tracing::warn!(error = %e, "spool: removing acknowledged segments failed; will retry");
            }
        }
        Ok(())
    }

    /// Writes the state file if what it would hold changed.
    fn persist_state(&mut self) -> Result<(), SpoolError> {
        let s = State {
            acked_up_to: self.acked_up_to,
            id_floor: self.last_id,
            telemetry_dropped: self.telemetry_dropped,
        };
        if s == self.persisted {
            return Ok(());
        }
        let path = self.cfg.dir.join(STATE_FILE);
        fsio::write_atomic(&self.cfg.dir, &path, &s.encode())?;
        self.persisted = s;
        Ok(())
    }

    /// Deletes closed segments with no unacknowledged record. The id floor is persisted first,
    /// so ids in deleted segments are never handed out again.
    fn gc(&mut self) -> Result<(), SpoolError> {
        let active = self.active.as_ref().map(|a| a.seg_id);
        let dead: Vec<u64> = self
            .segments
            .values()
            .filter(|s| s.entries.is_empty() && Some(s.id) != active)
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return Ok(());
        }
        self.persist_state()?;
        for id in dead {
            self.remove_segment(id)?;
        }
        fsio::sync_dir(&self.cfg.dir)
    }

    fn remove_segment(&mut self, id: u64) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.get(&id) else {
            return Ok(());
        };
        match fs::remove_file(&seg.path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(SpoolError::io("remove", &seg.path, e)),
        }
        self.bytes = self.bytes.saturating_sub(seg.len);
        self.segments.remove(&id);
        self.keys
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(k, _)| *k != id);
        Ok(())
    }

    /// Rewrites a segment keeping only the entries `keep` accepts (frames copied verbatim:
    /// nothing is re-encrypted, so no nonce is reused), crash-safely: new file under a
    /// temporary name, fsync, rename over the old one, fsync the directory. A segment left
    /// empty is deleted. Returns how many entries were removed.
    fn rewrite(&mut self, seg_id: u64, keep: &dyn Fn(&Entry) -> bool) -> Result<usize, SpoolError> {
        if self.active.as_ref().is_some_and(|a| a.seg_id == seg_id) {
            // Its file is about to be replaced; later appends start a new segment.
            self.active = None;
        }
        let Some(seg) = self.segments.get(&seg_id) else {
            return Ok(0);
        };
        let buf = fs::read(&seg.path).map_err(|e| SpoolError::io("read", &seg.path, e))?;
        let header = buf
            .get(..seg.header_len as usize)
            .ok_or_else(|| SpoolError::Corrupt {
                path: seg.path.clone(),
                reason: "shorter than its header".into(),
            })?;
        let mut out = header.to_vec();
        let mut kept = Vec::with_capacity(seg.entries.len());
        let mut removed = 0usize;
        let mut damaged = 0u64;
        for e in &seg.entries {
            if !keep(e) {
                removed += 1;
                continue;
            }
            let at = e.offset as usize;
            match format::parse_frame_at(&buf, at) {
                Ok(m) if m.id == e.id && m.len == e.len as usize => {
                    let offset = u32::try_from(out.len()).map_err(|_| internal(&self.cfg.dir))?;
                    out.extend_from_slice(&buf[at..at + m.len]);
                    kept.push(Entry { offset, ..*e });
                }
                _ => damaged += 1,
            }
        }
        let path = seg.path.clone();
        // The newest record may be among those going: persist the id floor first.
        self.persist_state()?;
        if kept.is_empty() {
            self.remove_segment(seg_id)?;
            fsio::sync_dir(&self.cfg.dir)?;
        } else {
            fsio::write_atomic(&self.cfg.dir, &path, &out)?;
            if let Some(seg) = self.segments.get_mut(&seg_id) {
                self.bytes = self.bytes - seg.len + out.len() as u64;
                seg.len = out.len() as u64;
                seg.entries = kept;
                seg.recount();
            }
        }
        if damaged > 0 {
            tracing::warn!(segment = %path.display(), damaged, "spool records damaged since open dropped in a rewrite");
            self.corrupt_found += damaged;
        }
        Ok(removed)
    }

    fn cache_key(&self, seg_id: u64, key: Arc<DataKey>) {
        let mut cache = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        cache.retain(|(k, _)| *k != seg_id);
        cache.push((seg_id, key));
        if cache.len() > KEY_CACHE {
            cache.remove(0);
        }
    }

    fn key_for(&self, seg: &Segment) -> Result<Arc<DataKey>, SpoolError> {
        {
            let mut cache = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(pos) = cache.iter().position(|(k, _)| *k == seg.id) {
                // Move to the most-recently-used end.
                let hit = cache.remove(pos);
                let key = Arc::clone(&hit.1);
                cache.push(hit);
                return Ok(key);
            }
        }
        let key = self.keystore.unwrap_data_key(&seg.wrapped).map_err(|e| {
            SpoolError::crypto(
                format!("unwrap the data key of segment {}", seg.path.display()),
                e,
            )
        })?;
        let key = Arc::new(key);
        self.cache_key(seg.id, Arc::clone(&key));
        Ok(key)
    }

    fn mark_bad(&self, seg: &Segment, e: &Entry, why: &str) {
        let fresh = self
            .bad
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert((seg.id, e.offset));
        if fresh {
            tracing::warn!(segment = %seg.path.display(), id = e.id, why, "damaged spool record skipped");
        }
    }

    /// Reads, checks and decrypts one record; `None` if it is damaged (counted, skipped).
    fn read_entry(
        &self,
        seg: &Segment,
        file: &File,
        key: &DataKey,
        e: &Entry,
    ) -> Result<Option<StoredRecord>, SpoolError> {
        if self
            .bad
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(seg.id, e.offset))
        {
            return Ok(None);
        }
        let mut buf = vec![0u8; e.len as usize];
        match file.read_exact_at(&mut buf, u64::from(e.offset)) {
            Ok(()) => {}
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.mark_bad(seg, e, "segment shorter than its index");
                return Ok(None);
            }
            Err(err) => return Err(SpoolError::io("read", &seg.path, err)),
        }
        let meta: FrameMeta = match format::parse_frame_at(&buf, 0) {
            Ok(m) if m.id == e.id && m.len == buf.len() => m,
            _ => {
                self.mark_bad(seg, e, "CRC or framing no longer valid");
                return Ok(None);
            }
        };
        match format::open_frame(key, seg.id, &meta, &mut buf) {
            Ok(body) => Ok(Some(StoredRecord {
                id: meta.id,
                class: meta.class,
                created_unix_ms: meta.created,
                body,
            })),
            Err(pop_keystore::Error::IntegrityCheckFailed { .. }) => {
                self.mark_bad(seg, e, "authentication failed");
                Ok(None)
            }
            Err(err) => Err(SpoolError::crypto(
                format!("open record {} of segment {}", e.id, seg.path.display()),
                err,
            )),
        }
    }

    /// Unacknowledged records with an id above `after_id`, ascending, at most `max`. Damaged
    /// records are skipped (and counted in `corrupt_records`); a key store failure is an error.
    pub fn pending_after(
        &self,
        after_id: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, SpoolError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        for seg in self.segments.values() {
            let start = seg.entries.partition_point(|e| e.id <= after_id);
            let Some(todo) = seg.entries.get(start..).filter(|t| !t.is_empty()) else {
                continue;
            };
            let file = File::open(&seg.path).map_err(|e| SpoolError::io("open", &seg.path, e))?;
            let key = self.key_for(seg)?;
            for e in todo {
                if let Some(r) = self.read_entry(seg, &file, &key, e)? {
                    out.push(r);
                    if out.len() >= max {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records that the control plane stored every id ≤ `up_to`: the watermark is written
    /// durably (state file replaced atomically) and closed segments left with no pending
    /// record are deleted. A lower or equal watermark than the current one is ignored. A
    /// watermark above the last id handed out raises the id floor, so new records are never
    /// given ids the control plane already holds (e.g. after the spool was wiped).
    pub fn ack_up_to(&mut self, up_to: u64) -> Result<(), SpoolError> {
        if up_to <= self.acked_up_to {
            return Ok(());
        }
        let (old_acked, old_last) = (self.acked_up_to, self.last_id);
        self.acked_up_to = up_to;
        self.last_id = self.last_id.max(up_to);
        if let Err(e) = self.persist_state() {
            self.acked_up_to = old_acked;
            self.last_id = old_last;
            return Err(e);
        }
        for seg in self.segments.values_mut() {
            let n = seg.entries.partition_point(|e| e.id <= up_to);
            if n > 0 {
                seg.entries.drain(..n);
                seg.recount();
            }
        }
        self.refused = false;
        self.gc()
    }

    /// Removes every unacknowledged record for which `pred` is true and returns how many.
    /// Each affected segment is rewritten crash-safely (acknowledged leftovers go too, so no
    /// copy of an erased record stays on disk); a crash leaves a segment either whole or
    /// rewritten. Records that cannot be decrypted (damaged) cannot be judged and stay.
    pub fn erase_where(
        &mut self,
        pred: &mut dyn FnMut(&StoredRecord) -> bool,
    ) -> Result<usize, SpoolError> {
        let ids: Vec<u64> = self.segments.keys().copied().collect();
        let mut total = 0;
        for seg_id in ids {
            let Some(seg) = self.segments.get(&seg_id) else {
                continue;
            };
            let mut doomed = HashSet::new();
            if !seg.entries.is_empty() {
                let file =
                    File::open(&seg.path).map_err(|e| SpoolError::io("open", &seg.path, e))?;
                let key = self.key_for(seg)?;
                for e in &seg.entries {
                    if let Some(r) = self.read_entry(seg, &file, &key, e)? {
                        if pred(&r) {
                            doomed.insert(e.id);
                        }
                    }
                }
            }
            let leftovers = seg.len > seg.live_bytes();
            if !doomed.is_empty() || leftovers {
                total += self.rewrite(seg_id, &|e| !doomed.contains(&e.id))?;
            }
        }
        Ok(total)
    }

    fn pending(&self) -> u64 {
        self.segments
            .values()
            .map(|s| s.counts.iter().sum::<u64>())
            .sum()
    }

    /// Current occupancy and counters.
    pub fn stats(&self) -> SpoolStats {
        let precious: u64 = self
            .segments
            .values()
            .map(|s| s.counts[CDR] + s.counts[AUDIT])
            .sum();
        let full = u128::from(self.bytes) * 100
            >= u128::from(self.cfg.alarm_percent) * u128::from(self.cfg.max_bytes);
        let bad = self
            .bad
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len() as u64;
        SpoolStats {
            bytes: self.bytes,
            pending_records: self.pending(),
            telemetry_dropped: self.telemetry_dropped,
            alarm: (full && precious > 0) || self.refused,
            last_id: self.last_id,
            acked_up_to: self.acked_up_to,
            corrupt_records: self.corrupt_found + bad,
        }
    }
}

fn entry_of(f: &FrameMeta) -> Result<Entry, SpoolError> {
    let bad = || SpoolError::Config {
        field: "segment_bytes",
        reason: "a segment file is larger than 4 GiB".into(),
    };
    Ok(Entry {
        id: f.id,
        offset: u32::try_from(f.offset).map_err(|_| bad())?,
        len: u32::try_from(f.len).map_err(|_| bad())?,
        class: f.class,
    })
}

fn internal(dir: &Path) -> SpoolError {
    SpoolError::Corrupt {
        path: dir.to_owned(),
        reason: "internal: spool index inconsistent".into(),
    }
}
