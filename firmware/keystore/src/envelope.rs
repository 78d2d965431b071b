//! Versioned binary formats: wrapped data keys, sealed secrets, key records and object
//! envelopes. Every format starts with a 3-byte magic and a version byte so old data stays
//! readable after the format or the keys change; every decoder checks lengths before reading and
//! returns [`Error::Malformed`] instead of panicking.
//!
//! Object envelope (version 1), all integers big-endian:
//!
//! ```text
//! "PKO" 01 | aead u8 (1 = AES-256-GCM) | purpose u8 | id_len u8 | data key id [16] | nonce [12]
//!   | object id [id_len] | ciphertext || tag [16]
//! ```
//!
//! The whole header is the AES-GCM associated data, so purpose, object id, key id and nonce are
//! all bound to the ciphertext. The data key itself is not in the envelope: it lives in a
//! separate key record (wrapped by the root key), which is what makes crypto-shredding possible.

use crate::datakey::{DataKey, NONCE_LEN, TAG_LEN};
use crate::{
    Error, KeyId, KeyStore, PcrSelection, Purpose, Result, SealPolicy, Secret, MAX_SEALED_SECRET,
};

const VERSION: u8 = 1;
const AEAD_AES_256_GCM: u8 = 1;

/// How a [`WrappedKey`]'s blob was produced, so the right backend operation unwraps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WrapScheme {
    /// Dev backend: AES-256-GCM under the software root key; blob = nonce || ciphertext || tag.
    DevAesGcm,
    /// PKCS#11 `CKM_AES_KEY_WRAP` (RFC 3394) under the token's wrap key.
    Pkcs11AesKeyWrap,
    /// TPM backend; the blob's layout is the TPM backend's own.
    Tpm,
}

impl WrapScheme {
    fn code(self) -> u8 {
        match self {
            WrapScheme::DevAesGcm => 1,
            WrapScheme::Pkcs11AesKeyWrap => 2,
            WrapScheme::Tpm => 3,
        }
    }

    fn from_code(code: u8) -> Result<Self> {
        match code {
            1 => Ok(WrapScheme::DevAesGcm),
            2 => Ok(WrapScheme::Pkcs11AesKeyWrap),
            3 => Ok(WrapScheme::Tpm),
            id => Err(Error::UnsupportedAlgorithm {
                what: "wrapped key",
                id,
            }),
        }
    }
}

/// A data key wrapped by a root key: which root key, how, and the opaque blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The root wrapping key that wrapped it.
    pub root_key_id: KeyId,
    /// The wrapping algorithm.
    pub scheme: WrapScheme,
    /// Backend-specific wrapped bytes (ciphertext only; safe to store).
    pub blob: Vec<u8>,
}

impl WrappedKey {
    const MAGIC: &'static [u8; 3] = b"PKW";
    const WHAT: &'static str = "wrapped key";

    /// Serialises: `"PKW" 01 | scheme u8 | root key id [16] | blob_len u16 | blob`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(23 + self.blob.len());
        out.extend_from_slice(Self::MAGIC);
        out.push(VERSION);
        out.push(self.scheme.code());
        out.extend_from_slice(&self.root_key_id.0);
        put_len16(&mut out, &self.blob, Self::WHAT)?;
        Ok(out)
    }

    /// Parses what [`WrappedKey::to_bytes`] wrote; the whole input must be consumed.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, Self::WHAT);
        let k = Self::read(&mut r)?;
        r.finish()?;
        Ok(k)
    }

    fn read(r: &mut Reader<'_>) -> Result<Self> {
        r.magic_and_version(Self::MAGIC)?;
        let scheme = WrapScheme::from_code(r.u8()?)?;
        let root_key_id = r.key_id()?;
        let len = r.u16()?;
        let blob = r.take(usize::from(len))?.to_vec();
        Ok(WrappedKey {
            root_key_id,
            scheme,
            blob,
        })
    }

    /// Fails with [`Error::WrongRootKey`] unless this key was wrapped by `root`.
    pub fn check_root(&self, root: KeyId) -> Result<()> {
        if self.root_key_id != root {
            return Err(Error::WrongRootKey {
                what: Self::WHAT,
                expected: root,
                found: self.root_key_id,
            });
        }
        Ok(())
    }
}

/// A sealed small secret: the policy it was sealed to and the backend's opaque blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedSecret {
    /// The root key of the store that sealed it.
    pub root_key_id: KeyId,
    /// The policy an unseal must satisfy.
    pub policy: SealPolicy,
    /// Backend-specific sealed bytes.
    pub blob: Vec<u8>,
}

impl SealedSecret {
    const MAGIC: &'static [u8; 3] = b"PKS";
    const WHAT: &'static str = "sealed secret";

    /// Serialises: `"PKS" 01 | policy u8 (0 wrap key, 1 PCRs) | pcr mask u32 | root key id [16]
    /// | blob_len u16 | blob`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(28 + self.blob.len());
        out.extend_from_slice(Self::MAGIC);
        out.push(VERSION);
        let (kind, mask) = match &self.policy {
            SealPolicy::WrapKey => (0u8, 0u32),
            SealPolicy::Pcrs(sel) => (1, sel.0),
        };
        out.push(kind);
        out.extend_from_slice(&mask.to_be_bytes());
        out.extend_from_slice(&self.root_key_id.0);
        put_len16(&mut out, &self.blob, Self::WHAT)?;
        Ok(out)
    }

    /// Parses what [`SealedSecret::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, Self::WHAT);
        r.magic_and_version(Self::MAGIC)?;
        let kind = r.u8()?;
        let mask = r.u32()?;
        let policy = match kind {
            0 => SealPolicy::WrapKey,
            1 => SealPolicy::Pcrs(PcrSelection(mask)),
            id => {
                return Err(Error::UnsupportedAlgorithm {
                    what: Self::WHAT,
                    id,
                })
            }
        };
        let root_key_id = r.key_id()?;
        let len = r.u16()?;
        let blob = r.take(usize::from(len))?.to_vec();
        r.finish()?;
        Ok(SealedSecret {
            root_key_id,
            policy,
            blob,
        })
    }
}

/// Seals `secret` under the root wrap key alone, on the host: a fresh data key is generated and
/// wrapped, and the secret AES-256-GCM encrypted under it. Backends whose policy is just the wrap
/// key (dev, PKCS#11) implement [`KeyStore::seal`] with it.
pub fn seal_with_wrap_key<S: KeyStore + ?Sized>(store: &S, secret: &[u8]) -> Result<SealedSecret> {
    if secret.len() > MAX_SEALED_SECRET {
        return Err(Error::Config {
            field: "secret",
            reason: format!(
                "{} bytes; seal at most {MAX_SEALED_SECRET} (use the object store for more)",
                secret.len()
            ),
        });
    }
    let root = store.ensure_root_key()?;
    let (key, wrapped) = store.generate_data_key()?;
    let mut nonce = [0u8; NONCE_LEN];
    store.random(&mut nonce)?;
    let mut ct = secret.to_vec();
    key.seal_in_place_append_tag(nonce, &seal_aad(root), &mut ct)?;
    let mut blob = Vec::with_capacity(100 + ct.len());
    put_len16(&mut blob, &wrapped.to_bytes()?, SealedSecret::WHAT)?;
    blob.extend_from_slice(&nonce);
    blob.extend_from_slice(&ct);
    Ok(SealedSecret {
        root_key_id: root,
        policy: SealPolicy::WrapKey,
        blob,
    })
}

/// Reverses [`seal_with_wrap_key`].
pub fn unseal_with_wrap_key<S: KeyStore + ?Sized>(
    store: &S,
    sealed: &SealedSecret,
) -> Result<Secret> {
    let root = store.ensure_root_key()?;
    if sealed.root_key_id != root {
        return Err(Error::WrongRootKey {
            what: SealedSecret::WHAT,
            expected: root,
            found: sealed.root_key_id,
        });
    }
    if sealed.policy != SealPolicy::WrapKey {
        return Err(Error::UnsupportedPolicy {
            backend: store.backend_name(),
            policy: sealed.policy.to_string(),
        });
    }
    let mut r = Reader::new(&sealed.blob, SealedSecret::WHAT);
    let len = r.u16()?;
    let wrapped = WrappedKey::from_bytes(r.take(usize::from(len))?)?;
    let nonce = r.nonce()?;
    let mut ct = r.rest().to_vec();
    if ct.len() < TAG_LEN {
        return Err(Error::malformed(
            SealedSecret::WHAT,
            "shorter than an AES-GCM tag",
        ));
    }
    let key = store.unwrap_data_key(&wrapped)?;
    let plain_len = key
        .open_in_place(nonce, &seal_aad(root), &mut ct, SealedSecret::WHAT)?
        .len();
    ct.truncate(plain_len);
    Ok(Secret::new(ct))
}

fn seal_aad(root: KeyId) -> [u8; 36] {
    let mut aad = [0u8; 36];
    aad[..20].copy_from_slice(b"pop-keystore seal v1");
    aad[20..].copy_from_slice(&root.0);
    aad
}

/// A stored object's data key: its id and the wrapped key (the file the object store deletes to
/// crypto-shred the object).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRecord {
    /// The data key's id, as object envelopes name it.
    pub data_key_id: KeyId,
    /// The data key wrapped by the root key.
    pub wrapped: WrappedKey,
}

impl KeyRecord {
    const MAGIC: &'static [u8; 3] = b"PKK";
    const WHAT: &'static str = "key record";

    /// Serialises: `"PKK" 01 | data key id [16] | wrapped key`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(Self::MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.data_key_id.0);
        out.extend_from_slice(&self.wrapped.to_bytes()?);
        Ok(out)
    }

    /// Parses what [`KeyRecord::to_bytes`] wrote.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, Self::WHAT);
        r.magic_and_version(Self::MAGIC)?;
        let data_key_id = r.key_id()?;
        let wrapped = WrappedKey::read(&mut r)?;
        r.finish()?;
        Ok(KeyRecord {
            data_key_id,
            wrapped,
        })
    }
}

/// The authenticated header of an object envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectHeader {
    /// The data key that encrypts this object.
    pub data_key_id: KeyId,
    /// What the object is for.
    pub purpose: Purpose,
    /// The object's id (a name, not personal data).
    pub object_id: String,
    /// The AES-GCM nonce.
    pub nonce: [u8; NONCE_LEN],
}

const OBJECT_MAGIC: &[u8; 3] = b"PKO";
const OBJECT_WHAT: &str = "object envelope";
const OBJECT_FIXED_HEADER: usize = 4 + 3 + 16 + NONCE_LEN;

impl ObjectHeader {
    fn encode(&self) -> Result<Vec<u8>> {
        let id = self.object_id.as_bytes();
        let id_len = u8::try_from(id.len())
            .map_err(|_| Error::malformed(OBJECT_WHAT, "object id longer than 255 bytes"))?;
        let mut out = Vec::with_capacity(OBJECT_FIXED_HEADER + id.len());
        out.extend_from_slice(OBJECT_MAGIC);
        out.push(VERSION);
        out.push(AEAD_AES_256_GCM);
        out.push(self.purpose.code());
        out.push(id_len);
        out.extend_from_slice(&self.data_key_id.0);
        out.extend_from_slice(&self.nonce);
        out.extend_from_slice(id);
        Ok(out)
    }

    /// Parses the header of an object envelope; returns it and the header's length (the AAD).
    pub fn decode(bytes: &[u8]) -> Result<(ObjectHeader, usize)> {
        let mut r = Reader::new(bytes, OBJECT_WHAT);
        r.magic_and_version(OBJECT_MAGIC)?;
        let aead = r.u8()?;
        if aead != AEAD_AES_256_GCM {
            return Err(Error::UnsupportedAlgorithm {
                what: OBJECT_WHAT,
                id: aead,
            });
        }
        let purpose_code = r.u8()?;
        let purpose = Purpose::from_code(purpose_code).ok_or(Error::UnsupportedAlgorithm {
            what: "object purpose",
            id: purpose_code,
        })?;
        let id_len = r.u8()?;
        let data_key_id = r.key_id()?;
        let nonce = r.nonce()?;
        let object_id = std::str::from_utf8(r.take(usize::from(id_len))?)
            .map_err(|_| Error::malformed(OBJECT_WHAT, "object id is not UTF-8"))?
            .to_owned();
        let header_len = r.pos;
        if r.rest().len() < TAG_LEN {
            return Err(Error::malformed(
                OBJECT_WHAT,
                "truncated: no room for the AES-GCM tag",
            ));
        }
        Ok((
            ObjectHeader {
                data_key_id,
                purpose,
                object_id,
                nonce,
            },
            header_len,
        ))
    }
}

/// Encrypts `plaintext` into an object envelope under `key` (which must be unique to this
/// header's nonce: the object store uses a fresh key per write).
pub fn seal_object(header: &ObjectHeader, key: &DataKey, plaintext: &[u8]) -> Result<Vec<u8>> {
    let mut out = header.encode()?;
    let header_len = out.len();
    out.reserve(plaintext.len() + TAG_LEN);
    out.extend_from_slice(plaintext);
    let tag = {
        let (aad, body) = out.split_at_mut(header_len);
        key.seal_in_place_separate_tag(header.nonce, aad, body)?
    };
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Decrypts an object envelope whose header was parsed by [`ObjectHeader::decode`].
pub fn open_object(mut envelope: Vec<u8>, header_len: usize, key: &DataKey) -> Result<Secret> {
    let nonce = ObjectHeader::decode(&envelope)?.0.nonce;
    if header_len > envelope.len() {
        return Err(Error::malformed(
            OBJECT_WHAT,
            "header longer than the envelope",
        ));
    }
    let plain_len = {
        let (aad, body) = envelope.split_at_mut(header_len);
        key.open_in_place(nonce, aad, body, OBJECT_WHAT)?.len()
    };
    // Move the plaintext to the front so the returned buffer holds only it; the tail (tag) is
    // not secret.
    envelope.copy_within(header_len..header_len + plain_len, 0);
    envelope.truncate(plain_len);
    Ok(Secret::new(envelope))
}

fn put_len16(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<()> {
    let len = u16::try_from(bytes.len())
        .map_err(|_| Error::malformed(what, "field longer than 65535 bytes"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

/// A bounds-checked cursor: every read returns `Malformed` on short input.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            what,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .ok_or(Error::malformed(self.what, "length overflow"))?;
        let s = self
            .bytes
            .get(self.pos..end)
            .ok_or(Error::malformed(self.what, "truncated"))?;
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn key_id(&mut self) -> Result<KeyId> {
        Ok(KeyId(self.array()?))
    }

    fn nonce(&mut self) -> Result<[u8; NONCE_LEN]> {
        self.array()
    }

    fn magic_and_version(&mut self, magic: &[u8; 3]) -> Result<()> {
        if self.take(3)? != magic {
            return Err(Error::malformed(self.what, "wrong magic bytes"));
        }
        let version = self.u8()?;
        if version != VERSION {
            return Err(Error::UnsupportedVersion {
                what: self.what,
                version,
                supported: VERSION,
            });
        }
        Ok(())
    }

    fn rest(&self) -> &'a [u8] {
        self.bytes.get(self.pos..).unwrap_or_default()
    }

    fn finish(&self) -> Result<()> {
        if self.pos != self.bytes.len() {
            return Err(Error::malformed(self.what, "trailing bytes"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> DataKey {
        DataKey::from_fill(|k| {
            k.fill(b);
            Ok(())
        })
        .unwrap()
    }

    fn header() -> ObjectHeader {
        ObjectHeader {
            data_key_id: KeyId([5; 16]),
            purpose: Purpose::Recording,
            object_id: "rec-1".into(),
            nonce: [9; 12],
        }
    }

    #[test]
    fn object_round_trips_and_every_byte_is_authenticated() {
        let k = key(1);
        let env = seal_object(&header(), &k, b"payload").unwrap();
        let (h, len) = ObjectHeader::decode(&env).unwrap();
        assert_eq!(h, header());
        assert_eq!(
            open_object(env.clone(), len, &k).unwrap().expose(),
            b"payload"
        );
        for i in 0..env.len() {
            let mut bad = env.clone();
            bad[i] ^= 0x01;
            let res = ObjectHeader::decode(&bad).and_then(|(_, l)| open_object(bad.clone(), l, &k));
            assert!(res.is_err(), "flipping byte {i} went unnoticed");
        }
        assert!(matches!(
            open_object(env, len, &key(2)),
            Err(Error::IntegrityCheckFailed { .. })
        ));
    }

    #[test]
    fn every_truncation_is_a_clean_error() {
        let env = seal_object(&header(), &key(1), b"payload").unwrap();
        for n in 0..env.len() {
            let res = ObjectHeader::decode(&env[..n])
                .and_then(|(_, l)| open_object(env[..n].to_vec(), l, &key(1)));
            assert!(res.is_err(), "truncation to {n} bytes accepted");
        }
        let w = WrappedKey {
            root_key_id: KeyId([1; 16]),
            scheme: WrapScheme::Tpm,
            blob: vec![7; 40],
        };
        let bytes = w.to_bytes().unwrap();
        assert_eq!(WrappedKey::from_bytes(&bytes).unwrap(), w);
        for n in 0..bytes.len() {
            assert!(matches!(
                WrappedKey::from_bytes(&bytes[..n]),
                Err(Error::Malformed { .. })
            ));
        }
        let rec = KeyRecord {
            data_key_id: KeyId([2; 16]),
            wrapped: w,
        };
        assert_eq!(
            KeyRecord::from_bytes(&rec.to_bytes().unwrap()).unwrap(),
            rec
        );
        let s = SealedSecret {
            root_key_id: KeyId([3; 16]),
            policy: SealPolicy::Pcrs(PcrSelection(0x80)),
            blob: vec![1, 2],
        };
        assert_eq!(SealedSecret::from_bytes(&s.to_bytes().unwrap()).unwrap(), s);
    }

    #[test]
    fn future_versions_are_refused_with_the_version() {
        let mut env = seal_object(&header(), &key(1), b"x").unwrap();
        env[3] = 2;
        assert!(matches!(
            ObjectHeader::decode(&env),
            Err(Error::UnsupportedVersion { version: 2, .. })
        ));
    }
}
