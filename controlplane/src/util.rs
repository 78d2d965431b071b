//! Small helpers shared by the modules: durable file writes, advisory locks, clocks, hex,
//! and the device-id rule.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Longest accepted device id. Ids become file names and certificate common names, so they
/// are kept short and to a portable character set.
pub const MAX_DEVICE_ID_LEN: usize = 64;

/// Checks a device id: 1 to [`MAX_DEVICE_ID_LEN`] characters from `[A-Za-z0-9._-]`, not
/// starting with `.` or `-`. Ids come from the network (Hello, Enroll) and name directories
/// in the store, so this is what keeps a hostile id from escaping the store directory.
pub fn validate_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("device id is empty".into());
    }
    if id.len() > MAX_DEVICE_ID_LEN {
        return Err(format!(
            "device id is {} bytes long, at most {MAX_DEVICE_ID_LEN} allowed",
            id.len()
        ));
    }
    if id.starts_with('.') || id.starts_with('-') {
        return Err(format!("device id {id:?} must not start with '.' or '-'"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "device id {id:?} contains {c:?}; only letters, digits, '.', '_' and '-' are allowed"
        ));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970, which only a broken
/// RTC produces; timestamps are informational, never used for ordering records).
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_unix_s() -> u64 {
    now_unix_ms() / 1000
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Parses hex (either case, optional `:` separators as openssl prints serials).
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s.bytes().filter(|b| *b != b':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return Err(format!("{s:?} is not an even-length hex string"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            let text = std::str::from_utf8(pair).map_err(|_| format!("{s:?} is not hex"))?;
            u8::from_str_radix(text, 16).map_err(|_| format!("{s:?} is not hex"))
        })
        .collect()
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// fsync of the directory. After a crash (kill -9, power loss) the file holds either the old
/// or the new content, never a mix. `mode` applies to a newly created file (0o600 for keys).
pub fn atomic_write(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    fsync_dir(dir)
}

/// fsyncs a directory so that a rename or a file creation in it is durable.
pub fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// An exclusive advisory lock (`flock`) on a lock file, released on drop. The CLI
/// (`pop-cp token`, `pop-cp revoke`) and a running server both read-modify-write the token
/// and revocation files; the lock serialises them across processes.
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Blocks until the lock on `path` (created if missing) is held.
    pub fn acquire(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        loop {
            // SAFETY: flock on a file descriptor we own for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(Self { file });
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: unlocking a descriptor we own; closing it would release the lock anyway.
        unsafe {
            libc::flock(self.file.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn device_ids_that_could_escape_the_store_are_refused() {
        assert!(validate_device_id("pop-ams-01").is_ok());
        assert!(validate_device_id("a.b_c-9").is_ok());
        for bad in [
            "",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "-x",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(validate_device_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn hex_round_trips_and_accepts_colons() {
        assert_eq!(hex(&[0x01, 0xab, 0xff]), "01abff");
        assert_eq!(unhex("01:AB:ff").unwrap(), vec![0x01, 0xab, 0xff]);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
        assert!(unhex("").is_err());
    }

    #[test]
    fn atomic_write_replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.json");
        atomic_write(&p, b"one", 0o600).unwrap();
        atomic_write(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
