//! The software backend: a root key in a file, for laptops and CI. It gives the same behaviour
//! as the hardware backends (so the same tests run against it) but none of their protection, and
//! is refused outright on a production board.
//!
//! Layout of its directory (mode 0700, files 0600):
//! - `root.key`: `"PKR" 01 | key id [16] | AES-256 key [32]`
//! - `sign-<label>.key`: the PKCS#8 ECDSA key, AES-256-GCM encrypted under the root key.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::{Zeroize, Zeroizing};

use crate::datakey::{DataKey, DATA_KEY_LEN, NONCE_LEN, TAG_LEN};
use crate::envelope::{seal_with_wrap_key, unseal_with_wrap_key};
use crate::{
    fsutil, p256_spki_der_from_point, validate_label, Error, KeyId, KeyStore, Profile,
    PublicKeySpki, Result, SealPolicy, SealedSecret, Secret, WrapScheme, WrappedKey,
};

const ROOT_FILE: &str = "root.key";
const ROOT_MAGIC: &[u8; 4] = b"PKR\x01";
const ROOT_FILE_LEN: usize = 4 + KeyId::LEN + DATA_KEY_LEN;
const WRAP_AAD: &[u8; 24] = b"pop-keystore dev wrap v1";
const BACKEND: &str = "dev";

/// Where the dev backend keeps its files.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevConfig {
    /// Directory for the root key and signing keys.
    pub dir: PathBuf,
}

struct RootKey {
    id: KeyId,
    key: DataKey,
}

/// Software key store. See the module docs.
pub struct DevKeyStore {
    dir: PathBuf,
    root: RwLock<Option<Arc<RootKey>>>,
    signers: RwLock<HashMap<String, Arc<EcdsaKeyPair>>>,
    rng: SystemRandom,
}

impl std::fmt::Debug for DevKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevKeyStore {
    /// Opens (creating if needed) the store in `dir`. Refused with
    /// [`Error::DevBackendInProduction`] when `profile` is production.
    pub fn open(dir: &Path, profile: Profile) -> Result<Self> {
        if profile == Profile::Production {
            return Err(Error::DevBackendInProduction);
        }
        fsutil::ensure_private_dir(dir)?;
        Ok(DevKeyStore {
            dir: dir.to_owned(),
            root: RwLock::new(None),
            signers: RwLock::new(HashMap::new()),
            rng: SystemRandom::new(),
        })
    }

    fn root(&self) -> Result<Arc<RootKey>> {
        if let Some(r) = self
            .root
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            return Ok(Arc::clone(r));
        }
        let mut slot = self
            .root
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = slot.as_ref() {
            return Ok(Arc::clone(r));
        }
        let root = Arc::new(self.load_or_create_root()?);
        *slot = Some(Arc::clone(&root));
        Ok(root)
    }

    fn load_or_create_root(&self) -> Result<RootKey> {
        let path = self.dir.join(ROOT_FILE);
        // Two tries: if another process creates the file between our read and our create, the
        // second read sees it.
        for _ in 0..2 {
            if let Some(bytes) = fsutil::read_optional(&path)? {
                return parse_root(Zeroizing::new(bytes), &path);
            }
            let mut id = [0u8; KeyId::LEN];
            self.random(&mut id)?;
            let key = DataKey::from_fill(|b| self.random(b))?;
            let mut file = Zeroizing::new(Vec::with_capacity(ROOT_FILE_LEN));
            file.extend_from_slice(ROOT_MAGIC);
            file.extend_from_slice(&id);
            key.with_bytes(|b| file.extend_from_slice(b));
            if fsutil::create_new_atomic(&path, &file)? {
                tracing::info!(root_key = %KeyId(id), dir = %self.dir.display(), "dev key store: created root key");
                return Ok(RootKey { id: KeyId(id), key });
            }
        }
        Err(Error::Backend {
            backend: BACKEND,
            detail: format!("{} keeps appearing and disappearing", path.display()),
        })
    }

    fn signer(&self, label: &str) -> Result<Arc<EcdsaKeyPair>> {
        validate_label(label)?;
        if let Some(s) = self
            .signers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(label)
        {
            return Ok(Arc::clone(s));
        }
        let root = self.root()?;
        let path = self.dir.join(format!("sign-{label}.key"));
        let aad = signing_aad(label);
        let mut pkcs8 = None;
        for _ in 0..2 {
            if let Some(file) = fsutil::read_optional(&path)? {
                pkcs8 = Some(decrypt_file(&root.key, &aad, file)?);
                break;
            }
            let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &self.rng)
                .map_err(|_| Error::Crypto("ECDSA P-256 key generation"))?;
            let mut nonce = [0u8; NONCE_LEN];
            self.random(&mut nonce)?;
            let mut file = doc.as_ref().to_vec();
            root.key.seal_in_place_append_tag(nonce, &aad, &mut file)?;
            file.splice(0..0, nonce);
            if fsutil::create_new_atomic(&path, &file)? {
                pkcs8 = Some(Zeroizing::new(doc.as_ref().to_vec()));
                break;
            }
        }
        let pkcs8 = pkcs8.ok_or_else(|| Error::Backend {
            backend: BACKEND,
            detail: format!("{} keeps appearing and disappearing", path.display()),
        })?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &self.rng)
            .map_err(|_| Error::malformed("dev signing key", "not a P-256 PKCS#8 document"))?;
        let pair = Arc::new(pair);
        let mut map = self
            .signers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(Arc::clone(map.entry(label.to_owned()).or_insert(pair)))
    }
}

fn parse_root(bytes: Zeroizing<Vec<u8>>, path: &Path) -> Result<RootKey> {
    if bytes.len() != ROOT_FILE_LEN || !bytes.starts_with(ROOT_MAGIC) {
        return Err(Error::Backend {
            backend: BACKEND,
            detail: format!(
                "{} is not a dev root key file; restore it or move it away to start afresh",
                path.display()
            ),
        });
    }
    let mut id = [0u8; KeyId::LEN];
    id.copy_from_slice(bytes.get(4..4 + KeyId::LEN).unwrap_or(&[0; KeyId::LEN]));
    let key = DataKey::from_fill(|b| {
        let src = bytes
            .get(4 + KeyId::LEN..)
            .ok_or(Error::malformed("dev root key", "truncated"))?;
        b.copy_from_slice(src);
        Ok(())
    })?;
    Ok(RootKey { id: KeyId(id), key })
}

fn signing_aad(label: &str) -> Vec<u8> {
    let mut aad = b"pop-keystore dev signing key v1 ".to_vec();
    aad.extend_from_slice(label.as_bytes());
    aad
}

fn decrypt_file(key: &DataKey, aad: &[u8], mut file: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
    if file.len() < NONCE_LEN + TAG_LEN {
        return Err(Error::malformed("dev signing key file", "truncated"));
    }
    let mut nonce = [0u8; NONCE_LEN];
    nonce.copy_from_slice(file.get(..NONCE_LEN).unwrap_or(&[0; NONCE_LEN]));
    let mut body = Zeroizing::new(file.split_off(NONCE_LEN));
    let len = key
        .open_in_place(nonce, aad, &mut body, "dev signing key file")?
        .len();
    body.truncate(len);
    Ok(body)
}

impl KeyStore for DevKeyStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn ensure_root_key(&self) -> Result<KeyId> {
        Ok(self.root()?.id)
    }

    fn wrap_data_key(&self, key: &DataKey) -> Result<WrappedKey> {
        let root = self.root()?;
        let mut nonce = [0u8; NONCE_LEN];
        self.random(&mut nonce)?;
        let mut body = [0u8; DATA_KEY_LEN];
        key.with_bytes(|b| body.copy_from_slice(b));
        let tag = root
            .key
            .seal_in_place_separate_tag(nonce, &wrap_aad(root.id), &mut body)?;
        let mut blob = Vec::with_capacity(NONCE_LEN + DATA_KEY_LEN + TAG_LEN);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&body);
        blob.extend_from_slice(&tag);
        Ok(WrappedKey {
            root_key_id: root.id,
            scheme: WrapScheme::DevAesGcm,
            blob,
        })
    }

    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        let root = self.root()?;
        if wrapped.scheme != WrapScheme::DevAesGcm {
            return Err(Error::Backend {
                backend: BACKEND,
                detail: format!(
                    "cannot unwrap a key wrapped with {:?}; it belongs to another backend",
                    wrapped.scheme
                ),
            });
        }
        wrapped.check_root(root.id)?;
        if wrapped.blob.len() != NONCE_LEN + DATA_KEY_LEN + TAG_LEN {
            return Err(Error::malformed("wrapped key", "dev blob must be 60 bytes"));
        }
        let (nonce_bytes, body) = wrapped.blob.split_at(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(nonce_bytes);
        let mut buf = [0u8; DATA_KEY_LEN + TAG_LEN];
        buf.copy_from_slice(body);
        let res = root
            .key
            .open_in_place(nonce, &wrap_aad(root.id), &mut buf, "wrapped key")
            .and_then(|plain| {
                DataKey::from_fill(|k| {
                    k.copy_from_slice(plain);
                    Ok(())
                })
            });
        buf.zeroize();
        res
    }

    fn seal(&self, policy: &SealPolicy, secret: &[u8]) -> Result<SealedSecret> {
        match policy {
            SealPolicy::WrapKey => seal_with_wrap_key(self, secret),
            other => Err(Error::UnsupportedPolicy {
                backend: BACKEND,
                policy: other.to_string(),
            }),
        }
    }

    fn unseal(&self, sealed: &SealedSecret) -> Result<Secret> {
        unseal_with_wrap_key(self, sealed)
    }

    fn signing_key(&self, label: &str) -> Result<PublicKeySpki> {
        p256_spki_der_from_point(self.signer(label)?.public_key().as_ref())
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>> {
        let sig = self
            .signer(label)?
            .sign(&self.rng, message)
            .map_err(|_| Error::Crypto("ECDSA P-256 signing"))?;
        Ok(sig.as_ref().to_vec())
    }

    fn random(&self, out: &mut [u8]) -> Result<()> {
        self.rng
            .fill(out)
            .map_err(|_| Error::Crypto("system random generator failed"))
    }
}

fn wrap_aad(root: KeyId) -> [u8; 40] {
    let mut aad = [0u8; 40];
    aad[..24].copy_from_slice(WRAP_AAD);
    aad[24..].copy_from_slice(&root.0);
    aad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn production_profile_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = DevKeyStore::open(dir.path(), Profile::Production).unwrap_err();
        assert!(matches!(err, Error::DevBackendInProduction));
        assert!(
            err.to_string().contains("refused on a production board"),
            "{err}"
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().next().is_none(),
            "refusal must not create files"
        );
    }

    #[test]
    fn root_key_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let ks = DevKeyStore::open(&dir.path().join("ks"), Profile::Development).unwrap();
        ks.ensure_root_key().unwrap();
        let mode = std::fs::metadata(dir.path().join("ks").join(ROOT_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "root key readable by others: {mode:o}");
    }
}
