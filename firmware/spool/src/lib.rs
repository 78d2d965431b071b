//! The agent's store-and-forward spool.
//!
//! Telemetry, events, CDRs and audit records are appended here, sent to the control plane, and
//! deleted only once it acknowledges them ([`Spool::ack_up_to`]). The spool survives `kill -9`
//! and power loss at any point: a record is durable when [`Spool::append`] returns its id, and
//! no durable, unacknowledged record is lost or altered afterwards. Duplicates are possible (a
//! record written just before a crash may be sent again) and harmless: records carry ids.
//!
//! # Files
//!
//! One directory (mode 0700), owned by one process at a time (an exclusive `flock` on
//! `lock`):
//!
//! - `seg-<first id, 20 digits>.log`: append-only segments. Each starts with a header holding
//!   the segment's own AES-256 data key, wrapped by the key store
//!   ([`pop_keystore::KeyStore::generate_data_key`]); records follow, each framed with a
//!   length and a CRC-32 and its body encrypted with AES-256-GCM. The exact layouts are in the
//!   `format` module: nonce = the record id (unique under a per-segment key), associated data
//!   = segment id + record id + class + creation time, so records cannot be moved between
//!   segments or relabelled without failing authentication.
//! - `state`: the acknowledgement watermark, the id floor and the telemetry-dropped counter,
//!   replaced atomically (temporary file, fsync, rename, fsync the directory).
//!
//! # Ids
//!
//! Ids start at 1 and strictly increase, across restarts too. The high-water mark lives in the
//! segments themselves (the file name is the first id, the records carry theirs); before a
//! segment that may hold the newest id is deleted or rewritten, the id floor is written to
//! `state`, so an emptied spool never hands out an old id again. An acknowledgement above the
//! last id (the control plane knows more than a wiped spool) raises the floor too.
//!
//! # Writing
//!
//! [`Spool::append`] / [`Spool::append_batch`] encrypt, write and `fdatasync` before returning
//! (one `fdatasync` per batch). A segment is closed when the next record would take it past
//! `segment_bytes`; new segments are created complete (header written under a temporary name,
//! synced, renamed, directory synced). After a restart, or an I/O error, appends always start a
//! new segment with a fresh key: a torn record cut off at recovery may have reached the disk,
//! and its id (hence nonce) must never be used again under the same key with another body.
//!
//! # Recovery
//!
//! [`Spool::open`] removes stale temporary files, then scans every segment checking each
//! frame's length and CRC. Damage is stepped over by searching for the next valid frame, so a
//! bad record in the middle is counted as corrupt and skipped without losing the others; bytes
//! at the end of the *last* segment that hold no valid frame are a write interrupted by the
//! crash (never reported durable) and are truncated ([`RecoveryReport::truncated_tail_bytes`]).
//! A segment with an unreadable header is renamed `*.corrupt` and reported. Every segment's
//! wrapped key must name the key store's root key, so opening a spool with the wrong key store
//! fails at once with an error naming the segment. Reads verify the CRC and the GCM tag again;
//! a record failing them is skipped and counted, never returned.
//!
//! # Keys in memory
//!
//! The active segment's [`pop_keystore::DataKey`] stays in (locked) memory; keys of older
//! segments are unwrapped on first read and kept in a small cache, since unwrapping is a key
//! store operation (a TPM round trip). The next segment's key is generated ahead of time so the
//! space an append needs, header included, is known exactly.
//!
//! # The cap
//!
//! `bytes` is the total size of the segment files. When an append would take it over
//! `max_bytes`, the spool first rewrites segments without their acknowledged leftovers, then
//! rewrites the oldest segment holding unacknowledged telemetry without it (counted in
//! `telemetry_dropped`), until the record fits. If it still does not, nothing is written and
//! [`SpoolError::Full`] is returned: for telemetry that means dropped and counted, for events,
//! CDRs and audit records the caller keeps the record and `alarm` is raised. `alarm` is also
//! raised while the spool is at least `alarm_percent` full with CDR or audit records pending.
//!
//! # Memory
//!
//! The index holds 24 bytes per unacknowledged record (id, offset, length, class) and one
//! small struct per segment; record bodies are read from disk when asked for.
#![deny(unsafe_code)]

mod config;
mod error;
mod format;
mod fsio;
mod spool;

pub use config::{SpoolConfig, MAX_SEGMENT_BYTES, MIN_SEGMENT_BYTES};
pub use error::SpoolError;
pub use format::{FRAME_OVERHEAD, MAX_BODY};
pub use pop_agent_proto::RecordClass;
pub use spool::{NewRecord, RecoveryReport, Spool, SpoolStats, StoredRecord};
