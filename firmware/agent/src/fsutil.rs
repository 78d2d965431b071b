//! Crash-safe small-file writes.

use std::io::Write;
use std::path::Path;

use crate::error::AgentError;

/// Writes `bytes` to `path` so that a crash or power loss leaves either the old or the new
/// content: temporary file, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), AgentError> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| AgentError::io(dir, e))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| AgentError::io(&tmp, e))?;
    f.write_all(bytes).map_err(|e| AgentError::io(&tmp, e))?;
    f.sync_all().map_err(|e| AgentError::io(&tmp, e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| AgentError::io(path, e))?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| AgentError::io(dir, e))
}
