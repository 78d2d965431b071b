//! Spool configuration and its validation.

use std::path::PathBuf;

use crate::SpoolError;

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Directory of the segment and state files (created with mode 0700 if missing).
    pub dir: PathBuf,
    /// Cap on the total size of the segment files, in bytes (at least 4 × `segment_bytes`).
    pub max_bytes: u64,
    /// Size at which a segment is closed and a new one started (4 KiB to 1 GiB). A record
    /// (plus the segment header) must fit in one segment.
    pub segment_bytes: u64,
    /// `alarm` is raised while the spool is at least this percentage of `max_bytes` full and
    /// holds CDR or audit records (1–99).
    pub alarm_percent: u8,
}

/// Smallest allowed `segment_bytes`.
pub const MIN_SEGMENT_BYTES: u64 = 4096;
/// Largest allowed `segment_bytes`: offsets inside a segment are kept as `u32`.
pub const MAX_SEGMENT_BYTES: u64 = 1 << 30;

impl SpoolConfig {
    /// A configuration with the appliance defaults: 64 MiB cap, 1 MiB segments, alarm at 80 %.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SpoolConfig {
            dir: dir.into(),
            max_bytes: 64 << 20,
            segment_bytes: 1 << 20,
            alarm_percent: 80,
        }
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<(), SpoolError> {
        let bad = |field: &'static str, reason: String| Err(SpoolError::Config { field, reason });
        if self.dir.as_os_str().is_empty() {
            return bad("dir", "must not be empty".into());
        }
        if self.segment_bytes < MIN_SEGMENT_BYTES {
            return bad(
                "segment_bytes",
                format!(
                    "{} is below the minimum of {MIN_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            );
        }
        if self.segment_bytes > MAX_SEGMENT_BYTES {
            return bad(
                "segment_bytes",
                format!(
                    "{} is above the maximum of {MAX_SEGMENT_BYTES}",
                    self.segment_bytes
                ),
            );
        }
        // Four segments at least, so dropping the oldest telemetry segment frees a useful
        // fraction of the cap instead of most of it.
        if self.max_bytes / 4 < self.segment_bytes {
            return bad(
                "max_bytes",
                format!(
                    "{} is below 4 × segment_bytes ({})",
                    self.max_bytes,
                    self.segment_bytes.saturating_mul(4)
                ),
            );
        }
        if !(1..=99).contains(&self.alarm_percent) {
            return bad(
                "alarm_percent",
                format!("{} is outside 1..=99", self.alarm_percent),
            );
        }
        Ok(())
    }
}
