//! TPM 2.0 backend — PLACEHOLDER created by K1 so the crate compiles; K2 owns this file and
//! replaces it. lib.rs expects `TpmConfig` (serde Deserialize, deny_unknown_fields) and
//! `TpmKeyStore::open(&TpmConfig) -> Result<TpmKeyStore>` with `TpmKeyStore: KeyStore`.

/// TPM connection settings.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI string, e.g. `swtpm:host=127.0.0.1,port=2321` or `device:/dev/tpmrm0`.
    pub tcti: String,
}

/// TPM key store (placeholder).
#[derive(Debug)]
pub struct TpmKeyStore;

impl TpmKeyStore {
    /// Opens the TPM (placeholder: always fails).
    pub fn open(_config: &TpmConfig) -> crate::Result<Self> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder, not implemented yet".into(),
        })
    }
}

impl crate::KeyStore for TpmKeyStore {
    fn backend_name(&self) -> &'static str {
        "tpm"
    }
    fn ensure_root_key(&self) -> crate::Result<crate::KeyId> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn wrap_data_key(&self, _: &crate::DataKey) -> crate::Result<crate::WrappedKey> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn unwrap_data_key(&self, _: &crate::WrappedKey) -> crate::Result<crate::DataKey> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn seal(&self, _: &crate::SealPolicy, _: &[u8]) -> crate::Result<crate::SealedSecret> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn unseal(&self, _: &crate::SealedSecret) -> crate::Result<crate::Secret> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn signing_key(&self, _: &str) -> crate::Result<crate::PublicKeySpki> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn sign(&self, _: &str, _: &[u8]) -> crate::Result<Vec<u8>> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
    fn random(&self, _: &mut [u8]) -> crate::Result<()> {
        Err(crate::Error::Backend {
            backend: "tpm",
            detail: "placeholder".into(),
        })
    }
}
