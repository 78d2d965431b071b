//! Byte formats the TPM backend keeps outside the TPM: the root wrap key file, signing key files,
//! wrapped data keys and PCR-sealed secrets. Each starts with a magic (files) or a kind byte
//! (blobs inside K1's envelopes), and every decoder checks lengths before reading, returning
//! [`Error::Malformed`] instead of panicking.

use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::{Error, KeyId, Result};

/// A TPM object outside the TPM: its public area and its private area encrypted by the parent.
pub(crate) struct ObjectBlobs {
    pub(crate) public: Public,
    pub(crate) private: Private,
}

impl ObjectBlobs {
    fn put(&self, out: &mut Vec<u8>, what: &'static str) -> Result<()> {
        let public = self.public.marshall().map_err(|source| Error::Tpm {
            operation: "marshal public area",
            source,
        })?;
        put16(out, &public, what)?;
        put16(out, self.private.value(), what)
    }

    fn take(r: &mut Reader<'_>) -> Result<Self> {
        let what = r.what;
        let public = Public::unmarshall(r.take16()?)
            .map_err(|_| Error::malformed(what, "public area does not parse"))?;
        let private = Private::try_from(r.take16()?.to_vec())
            .map_err(|_| Error::malformed(what, "private area too large"))?;
        Ok(ObjectBlobs { public, private })
    }
}

const VERSION: u8 = 1;

/// `"PTR" 01 | root key id [16] | public (u16 len) | private (u16 len)`: the AES-256 wrap key,
/// a child of the owner-hierarchy primary.
pub(crate) struct RootKeyFile {
    pub(crate) id: KeyId,
    pub(crate) key: ObjectBlobs,
}

impl RootKeyFile {
    const MAGIC: &'static [u8; 3] = b"PTR";
    const WHAT: &'static str = "TPM root key file";

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(Self::MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.id.0);
        self.key.put(&mut out, Self::WHAT)?;
        Ok(out)
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, Self::WHAT);
        r.magic_and_version(Self::MAGIC)?;
        let id = KeyId(r.array()?);
        let key = ObjectBlobs::take(&mut r)?;
        r.finish()?;
        Ok(RootKeyFile { id, key })
    }
}

/// `"PTS" 01 | public (u16 len) | private (u16 len)`: an ECDSA P-256 signing key.
pub(crate) struct SigningKeyFile(pub(crate) ObjectBlobs);

impl SigningKeyFile {
    const MAGIC: &'static [u8; 3] = b"PTS";
    const WHAT: &'static str = "TPM signing key file";

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(Self::MAGIC);
        out.push(VERSION);
        self.0.put(&mut out, Self::WHAT)?;
        Ok(out)
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, Self::WHAT);
        r.magic_and_version(Self::MAGIC)?;
        let key = ObjectBlobs::take(&mut r)?;
        r.finish()?;
        Ok(SigningKeyFile(key))
    }
}

/// Length of the AES-CFB initial value in a wrapped data key.
pub(crate) const WRAP_IV_LEN: usize = 16;
/// Length of the check value encrypted along with the data key.
pub(crate) const WRAP_CHECK_LEN: usize = 16;
const WRAP_KIND_AES_CFB: u8 = 1;

/// `01 | IV [16] | AES-256-CFB(data key [32] || check [16])`, encrypted by the TPM's wrap key.
pub(crate) struct CfbWrapped<'a> {
    pub(crate) iv: &'a [u8],
    pub(crate) ciphertext: &'a [u8],
}

impl<'a> CfbWrapped<'a> {
    const WHAT: &'static str = "TPM wrapped key";

    pub(crate) fn encode(iv: &[u8], ciphertext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(1 + iv.len() + ciphertext.len());
        out.push(WRAP_KIND_AES_CFB);
        out.extend_from_slice(iv);
        out.extend_from_slice(ciphertext);
        out
    }

    pub(crate) fn decode(blob: &'a [u8], ciphertext_len: usize) -> Result<Self> {
        let mut r = Reader::new(blob, Self::WHAT);
        let kind = r.u8()?;
        if kind != WRAP_KIND_AES_CFB {
            return Err(Error::UnsupportedAlgorithm {
                what: Self::WHAT,
                id: kind,
            });
        }
        let iv = r.take(WRAP_IV_LEN)?;
        let ciphertext = r.take(ciphertext_len)?;
        r.finish()?;
        Ok(CfbWrapped { iv, ciphertext })
    }
}

const SEAL_KIND_PCR_OBJECT: u8 = 1;

/// `01 | public (u16 len) | private (u16 len)`: a TPM sealed-data object under PolicyPCR.
pub(crate) struct PcrSealed(pub(crate) ObjectBlobs);

impl PcrSealed {
    const WHAT: &'static str = "TPM sealed secret";

    pub(crate) fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(512);
        out.push(SEAL_KIND_PCR_OBJECT);
        self.0.put(&mut out, Self::WHAT)?;
        Ok(out)
    }

    pub(crate) fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, Self::WHAT);
        let kind = r.u8()?;
        if kind != SEAL_KIND_PCR_OBJECT {
            return Err(Error::UnsupportedAlgorithm {
                what: Self::WHAT,
                id: kind,
            });
        }
        let obj = ObjectBlobs::take(&mut r)?;
        r.finish()?;
        Ok(PcrSealed(obj))
    }
}

fn put16(out: &mut Vec<u8>, bytes: &[u8], what: &'static str) -> Result<()> {
    let len =
        u16::try_from(bytes.len()).map_err(|_| Error::malformed(what, "field over 64 KiB"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
    Ok(())
}

struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader { rest: bytes, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(Error::malformed(self.what, "truncated"));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8> {
        let [b] = self.array::<1>()?;
        Ok(b)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn take16(&mut self) -> Result<&'a [u8]> {
        let len = u16::from_be_bytes(self.array()?);
        self.take(usize::from(len))
    }

    fn magic_and_version(&mut self, magic: &[u8; 3]) -> Result<()> {
        if self.take(3)? != magic {
            return Err(Error::malformed(self.what, "wrong magic"));
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

    fn finish(&self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::malformed(self.what, "trailing bytes"))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_key_decoder_refuses_bad_kind_and_lengths() {
        let blob = CfbWrapped::encode(&[1; 16], &[2; 48]);
        let ok = CfbWrapped::decode(&blob, 48).unwrap();
        assert_eq!(ok.iv, &[1; 16]);
        assert_eq!(ok.ciphertext, &[2; 48]);
        for n in 0..blob.len() {
            assert!(CfbWrapped::decode(&blob[..n], 48).is_err());
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(CfbWrapped::decode(&longer, 48).is_err());
        let mut kind = blob;
        kind[0] = 9;
        assert!(matches!(
            CfbWrapped::decode(&kind, 48),
            Err(Error::UnsupportedAlgorithm { id: 9, .. })
        ));
    }

    #[test]
    fn file_decoders_refuse_garbage_without_panicking() {
        for bytes in [
            &b""[..],
            b"PTR",
            b"PTR\x02",
            b"PTS\x01\x00\x05abc",
            b"XXX\x01",
        ] {
            assert!(RootKeyFile::from_bytes(bytes).is_err());
            assert!(SigningKeyFile::from_bytes(bytes).is_err());
            assert!(PcrSealed::from_bytes(bytes).is_err());
        }
        assert!(matches!(
            RootKeyFile::from_bytes(b"PTR\x02"),
            Err(Error::UnsupportedVersion { version: 2, .. })
        ));
    }
}
