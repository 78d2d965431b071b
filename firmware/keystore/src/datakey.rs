//! AES-256 data keys in locked memory.
//!
//! A [`DataKey`] occupies one slot of a process-wide pool of locked, non-dumpable regions
//! (see `sys`). The slot holds both the raw key (needed only to wrap it) and ring's expanded
//! AES-GCM key, so the key schedule used on the hot path lives in locked memory too. On drop the
//! slot is wiped with volatile writes and returned to the pool; regions are kept for reuse, so
//! locked memory grows to the peak number of live keys and stays there.
//!
//! Known residue: ring builds the expanded key on the stack before it is moved into the slot,
//! and that stack copy is not wiped (safe Rust cannot reach it).

use std::fmt;
use std::mem::{align_of, size_of};
use std::ptr::{addr_of_mut, NonNull};
use std::sync::Mutex;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

use crate::sys::{page_size, LockedRegion};
use crate::{Error, Result};

/// Length of a data key in bytes (AES-256).
pub const DATA_KEY_LEN: usize = 32;
/// Length of an AES-GCM nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag.
pub const TAG_LEN: usize = 16;

struct KeyMaterial {
    aead: LessSafeKey,
    raw: [u8; DATA_KEY_LEN],
}

/// Slots per region: a few pages at a time keeps mlock calls rare without locking much.
const SLOTS_PER_REGION: usize = 16;

struct SlotPtr(NonNull<KeyMaterial>);
// SAFETY: a free slot is plain memory owned by the pool; it is handed to exactly one `DataKey`.
unsafe impl Send for SlotPtr {}

struct Pool {
    regions: Vec<LockedRegion>,
    free: Vec<SlotPtr>,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    regions: Vec::new(),
    free: Vec::new(),
});

fn slot_size() -> usize {
    // size_of is a multiple of align_of, so consecutive slots stay aligned.
    size_of::<KeyMaterial>()
}

fn take_slot() -> Result<NonNull<KeyMaterial>> {
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(slot) = pool.free.pop() {
        return Ok(slot.0);
    }
    let page = page_size();
    let bytes = (slot_size() * SLOTS_PER_REGION).div_ceil(page) * page;
    let region = LockedRegion::new(bytes).map_err(|source| Error::MemoryLock { bytes, source })?;
    let base = region.as_ptr();
    debug_assert_eq!(base as usize % align_of::<KeyMaterial>(), 0);
    let count = region.len() / slot_size();
    for i in 1..count {
        // SAFETY: `i * slot_size() + slot_size() <= region.len()`, so the pointer stays inside the
        // mapping; mmap returns page-aligned memory and slot_size keeps KeyMaterial alignment.
        let p = unsafe { base.add(i * slot_size()) }.cast::<KeyMaterial>();
        if let Some(p) = NonNull::new(p) {
            pool.free.push(SlotPtr(p));
        }
    }
    let first = NonNull::new(base.cast::<KeyMaterial>())
        .ok_or(Error::Crypto("locked region at address 0"))?;
    pool.regions.push(region);
    Ok(first)
}

fn wipe_and_return(slot: NonNull<KeyMaterial>) {
    let bytes = slot.as_ptr().cast::<u8>();
    for i in 0..slot_size() {
        // SAFETY: the slot is `slot_size()` bytes inside a live region (regions are never freed
        // while the pool exists) and no value lives in it any more.
        unsafe { std::ptr::write_volatile(bytes.add(i), 0) };
    }
    std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    let mut pool = POOL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    pool.free.push(SlotPtr(slot));
}

/// An AES-256-GCM data key held in locked, non-dumpable memory and wiped on drop.
///
/// `Debug` shows nothing of the key. Nonce management is the caller's: use a fresh key per
/// object, or a [`PacketSealer`] for many messages under one key.
pub struct DataKey {
    slot: NonNull<KeyMaterial>,
}

// SAFETY: the slot is owned exclusively by this `DataKey`; ring's `LessSafeKey` is Send + Sync.
unsafe impl Send for DataKey {}
// SAFETY: shared access only reads the slot (`LessSafeKey` seal/open take `&self`).
unsafe impl Sync for DataKey {}

impl DataKey {
    /// Creates a key whose 32 bytes are written by `fill` directly into locked memory, so they
    /// never pass through unlocked buffers. Backends use it to unwrap or generate keys.
    pub fn from_fill(fill: impl FnOnce(&mut [u8; DATA_KEY_LEN]) -> Result<()>) -> Result<DataKey> {
        let slot = take_slot()?;
        let p = slot.as_ptr();
        // SAFETY: `p` points at an unused, aligned, zero-filled slot; `raw` is a byte array so
        // any bit pattern is valid and taking `&mut` to it is sound.
        let raw: &mut [u8; DATA_KEY_LEN] = unsafe { &mut *addr_of_mut!((*p).raw) };
        if let Err(e) = fill(raw) {
            wipe_and_return(slot);
            return Err(e);
        }
        let aead = match UnboundKey::new(&AES_256_GCM, raw) {
            Ok(k) => LessSafeKey::new(k),
            Err(_) => {
                wipe_and_return(slot);
                return Err(Error::Crypto("AES-256-GCM refused a 32-byte key"));
            }
        };
        // SAFETY: `aead` field of our slot is uninitialised memory of the right type and
        // alignment; writing it completes the `KeyMaterial`.
        unsafe { std::ptr::write(addr_of_mut!((*p).aead), aead) };
        Ok(DataKey { slot })
    }

    /// Calls `f` with the raw key bytes, for backends that must wrap them. Do not copy them
    /// anywhere that outlives the call.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8; DATA_KEY_LEN]) -> R) -> R {
        f(&self.material().raw)
    }

    fn material(&self) -> &KeyMaterial {
        // SAFETY: the slot was fully initialised in `from_fill` and lives until `drop`.
        unsafe { self.slot.as_ref() }
    }

    /// Encrypts `in_out` in place and appends the 16-byte tag.
    pub fn seal_in_place_append_tag(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut Vec<u8>,
    ) -> Result<()> {
        self.material()
            .aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| Error::Crypto("AES-GCM seal (message too long)"))
    }

    /// Encrypts `in_out` in place and returns the tag, for callers with fixed buffers.
    pub fn seal_in_place_separate_tag(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &mut [u8],
    ) -> Result<[u8; TAG_LEN]> {
        let tag = self
            .material()
            .aead
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| Error::Crypto("AES-GCM seal (message too long)"))?;
        let mut out = [0u8; TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        Ok(out)
    }

    /// Decrypts `ciphertext || tag` in place and returns the plaintext part. `what` names the
    /// item in the error when authentication fails.
    pub fn open_in_place<'a>(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        in_out: &'a mut [u8],
        what: &'static str,
    ) -> Result<&'a mut [u8]> {
        self.material()
            .aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), in_out)
            .map_err(|_| Error::IntegrityCheckFailed { what })
    }
}

impl Drop for DataKey {
    fn drop(&mut self) {
        // SAFETY: the slot holds an initialised `KeyMaterial` owned by us; after dropping it in
        // place the bytes are wiped and the slot returned, and `self` is never used again.
        unsafe { std::ptr::drop_in_place(self.slot.as_ptr()) };
        wipe_and_return(self.slot);
    }
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(AES-256, redacted)")
    }
}

/// Seals a sequence of messages (packets, spool records) under one data key with a counter
/// nonce, so no nonce repeats for the key as long as the key is fresh for this sealer (the
/// counter is not persisted: give each segment its own key).
#[derive(Debug)]
pub struct PacketSealer {
    key: DataKey,
    next: u64,
}

impl PacketSealer {
    /// Starts a sealer on a key that has never sealed anything before.
    pub fn new(fresh_key: DataKey) -> Self {
        PacketSealer {
            key: fresh_key,
            next: 0,
        }
    }

    /// The nonce used for message number `counter`.
    pub fn nonce(counter: u64) -> [u8; NONCE_LEN] {
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(&counter.to_be_bytes());
        n
    }

    /// Encrypts `in_out` in place, returning the message's counter (needed to open it) and tag.
    pub fn seal(&mut self, aad: &[u8], in_out: &mut [u8]) -> Result<(u64, [u8; TAG_LEN])> {
        let counter = self.next;
        self.next = counter.checked_add(1).ok_or(Error::NonceExhausted)?;
        let tag = self
            .key
            .seal_in_place_separate_tag(Self::nonce(counter), aad, in_out)?;
        Ok((counter, tag))
    }

    /// The key, e.g. to open what was sealed.
    pub fn key(&self) -> &DataKey {
        &self.key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_slots_are_reused_wiped() {
        let k = DataKey::from_fill(|b| {
            b.fill(7);
            Ok(())
        })
        .unwrap();
        let mut msg = b"hello".to_vec();
        k.seal_in_place_append_tag([1; 12], b"aad", &mut msg)
            .unwrap();
        let plain = k.open_in_place([1; 12], b"aad", &mut msg, "test").unwrap();
        assert_eq!(plain, b"hello");
        assert!(k
            .open_in_place([1; 12], b"other", &mut msg.clone(), "test")
            .is_err());
        let slot = k.slot;
        drop(k);
        // Another test thread may have reused the slot meanwhile; only check when it is still
        // free, under the pool lock so nobody can take it while we look.
        let pool = POOL.lock().unwrap();
        if pool.free.iter().any(|s| s.0 == slot) {
            // SAFETY: the slot is free and the pool is locked, so nothing writes it; it lies in
            // a live locked region.
            let bytes =
                unsafe { std::slice::from_raw_parts(slot.as_ptr().cast::<u8>(), slot_size()) };
            assert!(bytes.iter().all(|b| *b == 0), "dropped key slot not wiped");
        }
    }

    #[test]
    fn failed_fill_returns_error_and_debug_is_redacted() {
        assert!(DataKey::from_fill(|_| Err(Error::Crypto("rng"))).is_err());
        let k = DataKey::from_fill(|b| {
            b.fill(0xAB);
            Ok(())
        })
        .unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("ab") && !dbg.contains("171"), "{dbg}");
    }

    #[test]
    fn packet_sealer_counts_nonces() {
        let k = DataKey::from_fill(|b| {
            b.fill(3);
            Ok(())
        })
        .unwrap();
        let mut s = PacketSealer::new(k);
        let mut p = [0u8; 160];
        let (c0, _) = s.seal(b"x", &mut p).unwrap();
        let (c1, t1) = s.seal(b"x", &mut p).unwrap();
        assert_eq!((c0, c1), (0, 1));
        let mut buf = p.to_vec();
        buf.extend_from_slice(&t1);
        // The second seal encrypted the first ciphertext, so opening once yields ciphertext 0.
        assert!(s
            .key()
            .open_in_place(PacketSealer::nonce(1), b"x", &mut buf, "t")
            .is_ok());
    }
}
