//! Encrypted object store: named objects encrypted with a fresh data key per write, written
//! atomically, destroyed by destroying their key.
//!
//! Layout under the store directory (0700, files 0600):
//! - `objects/<object id>`: the object envelope ([`crate::envelope`])
//! - `keys/<data key id hex>`: the key record (the data key wrapped by the backend's root key)
//!
//! A fresh key per write means a nonce never repeats for a key without any persisted counter.
//! Keeping the wrapped key apart from the ciphertext is what makes crypto-shredding work: once
//! the key record is gone, every copy of the ciphertext (backups, old disk blocks) is noise.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::envelope::{open_object, seal_object, KeyRecord, ObjectHeader};
use crate::{fsutil, validate_name, Error, KeyId, KeyStore, Purpose, Result, Secret};

/// Longest object id, in bytes.
pub const MAX_OBJECT_ID: usize = 200;
/// Writers to the same object are serialised through one of this many locks (by id hash).
const LOCK_STRIPES: usize = 64;

/// The encrypted object store. Cheap to share (`&self` methods; `Send + Sync`).
pub struct ObjectStore {
    keystore: Arc<dyn KeyStore>,
    objects: PathBuf,
    keys: PathBuf,
    stripes: [Mutex<()>; LOCK_STRIPES],
}

impl std::fmt::Debug for ObjectStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectStore")
            .field("backend", &self.keystore.backend_name())
            .field("objects", &self.objects)
            .finish_non_exhaustive()
    }
}

impl ObjectStore {
    /// Opens (creating if needed) a store in `dir`, with keys wrapped by `keystore`.
    pub fn open(keystore: Arc<dyn KeyStore>, dir: &Path) -> Result<Self> {
        let objects = dir.join("objects");
        let keys = dir.join("keys");
        fsutil::ensure_private_dir(&objects)?;
        fsutil::ensure_private_dir(&keys)?;
        keystore.ensure_root_key()?;
        Ok(ObjectStore {
            keystore,
            objects,
            keys,
            stripes: std::array::from_fn(|_| Mutex::new(())),
        })
    }

    /// The key store wrapping this store's data keys.
    pub fn keystore(&self) -> &Arc<dyn KeyStore> {
        &self.keystore
    }

    fn stripe(&self, object_id: &str) -> std::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        object_id.hash(&mut h);
        // The modulo keeps the index inside the fixed-size array.
        let i = (h.finish() % LOCK_STRIPES as u64) as usize;
        self.stripes[i]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn object_path(&self, object_id: &str) -> Result<PathBuf> {
        validate_name("object id", object_id, MAX_OBJECT_ID)?;
        Ok(self.objects.join(object_id))
    }

    fn key_path(&self, id: KeyId) -> PathBuf {
        self.keys.join(id.to_string())
    }

    /// Encrypts and stores `plaintext` as `object_id` for `purpose`, replacing any previous
    /// version atomically; the previous version's key is shredded afterwards.
    pub fn write(&self, purpose: Purpose, object_id: &str, plaintext: &[u8]) -> Result<()> {
        let path = self.object_path(object_id)?;
        let _guard = self.stripe(object_id);
        let old_key = fsutil::read_optional(&path)?
            .and_then(|b| ObjectHeader::decode(&b).ok())
            .map(|(h, _)| h.data_key_id);

        let (key, wrapped) = self.keystore.generate_data_key()?;
        let mut id = [0u8; KeyId::LEN];
        self.keystore.random(&mut id)?;
        let data_key_id = KeyId(id);
        let record = KeyRecord {
            data_key_id,
            wrapped,
        };
        // Key first: an object whose key record is missing would be unreadable.
        if !fsutil::create_new_atomic(&self.key_path(data_key_id), &record.to_bytes()?)? {
            return Err(Error::Crypto(
                "random data key id collided with an existing one",
            ));
        }
        // A fresh key has never been used, so a zero nonce is unique for it.
        let header = ObjectHeader {
            data_key_id,
            purpose,
            object_id: object_id.to_owned(),
            nonce: [0; 12],
        };
        let envelope = seal_object(&header, &key, plaintext)?;
        if let Err(e) = fsutil::write_atomic(&path, &envelope) {
            let _ = fsutil::shred(&self.key_path(data_key_id));
            return Err(e);
        }
        if let Some(old) = old_key.filter(|old| *old != data_key_id) {
            fsutil::shred(&self.key_path(old))?;
        }
        Ok(())
    }

    /// Reads and decrypts `object_id`, which must have been written for `purpose`.
    pub fn read(&self, purpose: Purpose, object_id: &str) -> Result<Secret> {
        let path = self.object_path(object_id)?;
        let envelope = fsutil::read_optional(&path)?.ok_or_else(|| Error::ObjectNotFound {
            object: object_id.to_owned(),
        })?;
        let (header, header_len) = ObjectHeader::decode(&envelope)?;
        if header.object_id != object_id {
            return Err(Error::ObjectIdMismatch {
                expected: object_id.to_owned(),
                found: header.object_id,
            });
        }
        if header.purpose != purpose {
            return Err(Error::PurposeMismatch {
                object: object_id.to_owned(),
                expected: purpose,
                found: header.purpose,
            });
        }
        let record_bytes =
            fsutil::read_optional(&self.key_path(header.data_key_id))?.ok_or_else(|| {
                Error::KeyDestroyed {
                    object: object_id.to_owned(),
                }
            })?;
        let record = KeyRecord::from_bytes(&record_bytes)?;
        if record.data_key_id != header.data_key_id {
            return Err(Error::WrongDataKey {
                object: object_id.to_owned(),
                expected: record.data_key_id,
                found: header.data_key_id,
            });
        }
        let key = self.keystore.unwrap_data_key(&record.wrapped)?;
        open_object(envelope, header_len, &key)
    }

    /// Destroys `object_id` by shredding its data key, then removing its envelope. After the key
    /// is gone the object can never be decrypted, even from a copy; a crash between the two
    /// steps leaves an envelope that reads as [`Error::KeyDestroyed`]. Returns `false` if the
    /// object did not exist.
    pub fn destroy(&self, object_id: &str) -> Result<bool> {
        let path = self.object_path(object_id)?;
        let _guard = self.stripe(object_id);
        let Some(envelope) = fsutil::read_optional(&path)? else {
            return Ok(false);
        };
        if let Ok((header, _)) = ObjectHeader::decode(&envelope) {
            fsutil::shred(&self.key_path(header.data_key_id))?;
        }
        fsutil::remove(&path)
    }
}
