//! PKCS#11 backend (being written).

/// PKCS#11 module and token, as the board descriptor names them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`.so`).
    pub module: std::path::PathBuf,
}

/// PKCS#11 key store.
#[derive(Debug)]
pub struct Pkcs11KeyStore;

impl Pkcs11KeyStore {
    /// Opens the configured token.
    pub fn open(_c: &Pkcs11Config) -> crate::Result<Self> {
        Err(crate::Error::Backend {
            backend: "pkcs11",
            detail: "not yet".into(),
        })
    }
}

impl crate::KeyStore for Pkcs11KeyStore {
    fn backend_name(&self) -> &'static str {
        "pkcs11"
    }
    fn ensure_root_key(&self) -> crate::Result<crate::KeyId> {
        unimplemented!()
    }
    fn wrap_data_key(&self, _: &crate::DataKey) -> crate::Result<crate::WrappedKey> {
        unimplemented!()
    }
    fn unwrap_data_key(&self, _: &crate::WrappedKey) -> crate::Result<crate::DataKey> {
        unimplemented!()
    }
    fn seal(&self, _: &crate::SealPolicy, _: &[u8]) -> crate::Result<crate::SealedSecret> {
        unimplemented!()
    }
    fn unseal(&self, _: &crate::SealedSecret) -> crate::Result<crate::Secret> {
        unimplemented!()
    }
    fn signing_key(&self, _: &str) -> crate::Result<crate::PublicKeySpki> {
        unimplemented!()
    }
    fn sign(&self, _: &str, _: &[u8]) -> crate::Result<Vec<u8>> {
        unimplemented!()
    }
    fn random(&self, _: &mut [u8]) -> crate::Result<()> {
        unimplemented!()
    }
}
