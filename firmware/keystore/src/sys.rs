//! Locked, non-dumpable anonymous memory for key material (mmap + mlock + madvise).

use std::ptr::NonNull;

/// An anonymous private mapping that is locked in RAM (never swapped), excluded from core dumps
/// and wiped in a forked child. Zeroed and unmapped on drop.
pub(crate) struct LockedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain memory owned exclusively by this value; access to its contents is
// synchronised by the owner (the data key pool's mutex and the single `DataKey` holding a slot).
unsafe impl Send for LockedRegion {}
// SAFETY: `LockedRegion` itself hands out only a raw pointer; no shared mutation happens through
// `&LockedRegion`.
unsafe impl Sync for LockedRegion {}

impl LockedRegion {
    /// Maps, locks and marks `len` bytes (a multiple of the page size).
    pub(crate) fn new(len: usize) -> std::io::Result<Self> {
        // SAFETY: an anonymous private mapping with no address hint has no preconditions; the
        // result is checked against MAP_FAILED before use.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let Some(ptr) = NonNull::new(raw.cast::<u8>()) else {
            return Err(std::io::Error::other("mmap returned a null mapping"));
        };
        let region = LockedRegion { ptr, len };
        // SAFETY: `raw..raw+len` is the mapping created above, owned by `region`.
        if unsafe { libc::mlock(raw, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: as above; madvise only changes how the kernel treats our own mapping.
        if unsafe { libc::madvise(raw, len, libc::MADV_DONTDUMP) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // A forked child (e.g. a helper spawned by the service) must not inherit keys.
        // SAFETY: as above.
        if unsafe { libc::madvise(raw, len, libc::MADV_WIPEONFORK) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(region)
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for LockedRegion {
    fn drop(&mut self) {
        // SAFETY: the whole mapping is ours and no slot in it is in use any more (the pool only
        // drops a region when it owns all its slots); volatile writes keep the wipe from being
        // optimised away before the unmap.
        unsafe {
            for i in 0..self.len {
                std::ptr::write_volatile(self.ptr.as_ptr().add(i), 0);
            }
            libc::munlock(self.ptr.as_ptr().cast(), self.len);
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|s| *s > 0)
        .unwrap_or(4096)
}
