//! Public-area templates of the objects the TPM backend creates. The primary's template is fixed
//! (no unique value, no outside info), so the TPM derives the same primary from the owner seed
//! every time: nothing about it needs to be stored, and it is re-created identically after a
//! restart until the owner hierarchy is cleared.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccPoint, EccScheme, HashScheme, KeyDerivationFunctionScheme, KeyedHashScheme, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters,
    SymmetricCipherParameters, SymmetricDefinitionObject,
};

use crate::{Error, Result};

fn built(what: &'static str, r: tss_esapi::Result<Public>) -> Result<Public> {
    r.map_err(|source| Error::Tpm {
        operation: what,
        source,
    })
}

/// The storage root: an ECC P-256 restricted decryption key (the TCG "SRK" shape), so creating
/// it takes milliseconds, unlike an RSA primary's prime search.
pub(crate) fn primary() -> Result<Public> {
    built(
        "build primary key template",
        (|| {
            let attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_no_da(true)
                .with_restricted(true)
                .with_decrypt(true)
                .build()?;
            PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                .with_object_attributes(attributes)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_restricted_decryption_key(
                        SymmetricDefinitionObject::AES_128_CFB,
                        EccCurve::NistP256,
                    )
                    .with_key_derivation_function_scheme(KeyDerivationFunctionScheme::Null)
                    .build()?,
                )
                .with_ecc_unique_identifier(EccPoint::default())
                .build()
        })(),
    )
}

/// The root wrap key: AES-256, generated inside the TPM, usable only for TPM2_EncryptDecrypt2
/// (an unrestricted symmetric key with sign = encrypt and decrypt), never duplicable.
pub(crate) fn wrap_key() -> Result<Public> {
    built(
        "build wrap key template",
        (|| {
            let attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_no_da(true)
                .with_decrypt(true)
                .with_sign_encrypt(true)
                .build()?;
            PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::SymCipher)
                .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                .with_object_attributes(attributes)
                .with_symmetric_cipher_parameters(SymmetricCipherParameters::new(
                    SymmetricDefinitionObject::AES_256_CFB,
                ))
                .with_symmetric_cipher_unique_identifier(Digest::default())
                .build()
        })(),
    )
}

/// An ECDSA P-256 / SHA-256 signing key generated inside the TPM, never duplicable.
pub(crate) fn signing_key() -> Result<Public> {
    built(
        "build signing key template",
        (|| {
            let attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_sensitive_data_origin(true)
                .with_user_with_auth(true)
                .with_no_da(true)
                .with_sign_encrypt(true)
                .build()?;
            PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::Ecc)
                .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                .with_object_attributes(attributes)
                .with_ecc_parameters(
                    PublicEccParametersBuilder::new_unrestricted_signing_key(
                        EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                        EccCurve::NistP256,
                    )
                    .build()?,
                )
                .with_ecc_unique_identifier(EccPoint::default())
                .build()
        })(),
    )
}

/// A sealed-data object released only through `policy` (a PolicyPCR digest): no
/// `userWithAuth`, so knowing the (empty) auth value is not enough.
pub(crate) fn sealed_object(policy: Digest) -> Result<Public> {
    built(
        "build sealed object template",
        (|| {
            let attributes = ObjectAttributesBuilder::new()
                .with_fixed_tpm(true)
                .with_fixed_parent(true)
                .with_no_da(true)
                .with_user_with_auth(false)
                .with_admin_with_policy(true)
                .build()?;
            PublicBuilder::new()
                .with_public_algorithm(PublicAlgorithm::KeyedHash)
                .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
                .with_object_attributes(attributes)
                .with_auth_policy(policy)
                .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
                .with_keyed_hash_unique_identifier(Digest::default())
                .build()
        })(),
    )
}
