//! File helpers with the durability the spool needs: atomic replacement (temp file, fsync,
//! rename, fsync the directory) and directory fsyncs after creating or removing files.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::SpoolError;

/// Suffix of temporary files; any left over from a crash are removed at open.
pub(crate) const TMP_SUFFIX: &str = ".tmp";

/// The temporary name used while replacing `target`.
pub(crate) fn tmp_path(target: &Path) -> PathBuf {
    let mut s = target.as_os_str().to_owned();
    s.push(TMP_SUFFIX);
    PathBuf::from(s)
}

/// Fsyncs a directory so a create, rename or unlink in it survives a power cut.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| SpoolError::io("fsync directory", dir, e))
}

/// Writes `bytes` to `target` atomically: a reader (or a reboot) sees the old file or the new
/// one, never a mix. The directory is fsynced, so the replacement is durable on return.
pub(crate) fn write_atomic(dir: &Path, target: &Path, bytes: &[u8]) -> Result<(), SpoolError> {
    let tmp = tmp_path(target);
    let written = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::io("write", tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, target) {
        let _ = fs::remove_file(&tmp);
        return Err(SpoolError::io("rename into", target, e));
    }
    sync_dir(dir)
}

/// Reads a whole file, `None` if it does not exist.
pub(crate) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, SpoolError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(SpoolError::io("read", path, e)),
    }
}
