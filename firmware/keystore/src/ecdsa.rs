//! Encodings shared by backends whose hardware returns raw ECDSA values: TPMs and PKCS#11 tokens
//! give `r || s` and an EC point, TLS and X.509 want DER.

use crate::{Error, PublicKeySpki, Result};

/// DER prefix of a P-256 `SubjectPublicKeyInfo` (id-ecPublicKey, prime256v1) up to the BIT
/// STRING contents, which are the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Builds the SPKI DER of a P-256 public key from its uncompressed point (`04 || X || Y`, 65
/// bytes) or from the point's coordinates given as `X || Y` (64 bytes, as a TPM returns them).
pub fn p256_spki_der_from_point(point: &[u8]) -> Result<PublicKeySpki> {
    let mut out = Vec::with_capacity(P256_SPKI_PREFIX.len() + 65);
    out.extend_from_slice(&P256_SPKI_PREFIX);
    match point {
        [0x04, rest @ ..] if rest.len() == 64 => out.extend_from_slice(point),
        _ if point.len() == 64 => {
            out.push(0x04);
            out.extend_from_slice(point);
        }
        _ => {
            return Err(Error::malformed(
                "P-256 public point",
                "not 65 bytes 04||X||Y nor 64 bytes X||Y",
            ))
        }
    }
    Ok(PublicKeySpki(out))
}

/// Converts a fixed-size ECDSA P-256 signature `r || s` (two 32-byte big-endian integers) into
/// the ASN.1 DER `SEQUENCE { r INTEGER, s INTEGER }` that TLS carries.
pub fn ecdsa_p256_fixed_to_der(fixed: &[u8]) -> Result<Vec<u8>> {
    if fixed.len() != 64 {
        return Err(Error::malformed(
            "ECDSA P-256 signature",
            "r||s must be 64 bytes",
        ));
    }
    let (r, s) = fixed.split_at(32);
    let r = der_integer(r);
    let s = der_integer(s);
    let mut out = Vec::with_capacity(2 + r.len() + s.len());
    out.push(0x30);
    // At most 2 * (2 + 33) = 70 bytes, so the short length form always applies.
    out.push((r.len() + s.len()) as u8);
    out.extend_from_slice(&r);
    out.extend_from_slice(&s);
    Ok(out)
}

fn der_integer(unsigned_be: &[u8]) -> Vec<u8> {
    let first_nonzero = unsigned_be
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(unsigned_be.len().saturating_sub(1));
    let digits = unsigned_be.get(first_nonzero..).unwrap_or_default();
    let digits = if digits.is_empty() {
        &[0u8][..]
    } else {
        digits
    };
    let pad = digits.first().is_some_and(|b| b & 0x80 != 0);
    let mut out = Vec::with_capacity(digits.len() + 3);
    out.push(0x02);
    out.push((digits.len() + usize::from(pad)) as u8);
    if pad {
        out.push(0);
    }
    out.extend_from_slice(digits);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
        ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P256_SHA256_FIXED_SIGNING,
    };

    #[test]
    fn fixed_signatures_convert_to_der_that_ring_verifies() {
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref(), &rng).unwrap();
        let pk = UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, kp.public_key().as_ref().to_vec());
        for i in 0..200u32 {
            let msg = i.to_be_bytes();
            let sig = kp.sign(&rng, &msg).unwrap();
            let der = ecdsa_p256_fixed_to_der(sig.as_ref()).unwrap();
            pk.verify(&msg, &der).unwrap();
        }
        assert!(ecdsa_p256_fixed_to_der(&[0; 63]).is_err());
    }

    #[test]
    fn spki_from_point_matches_ring_key_and_rejects_bad_lengths() {
        let rng = ring::rand::SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, doc.as_ref(), &rng).unwrap();
        let point = kp.public_key().as_ref();
        let a = p256_spki_der_from_point(point).unwrap();
        let b = p256_spki_der_from_point(&point[1..]).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.0.len(), 91);
        assert!(p256_spki_der_from_point(&point[2..]).is_err());
    }
}
