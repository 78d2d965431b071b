//! PKCS#11 backend (HSMs, secure elements, tpm2-pkcs11; tested with SoftHSM2).
//!
//! - Root wrapping key: a token AES-256 secret key, sensitive, never extractable, usable only for
//!   `CKA_WRAP`/`CKA_UNWRAP` (no encrypt/decrypt/sign/derive), found by label; its `CKA_ID` is
//!   the root [`KeyId`]. Data keys are wrapped with `CKM_AES_KEY_WRAP` (RFC 3394).
//! - Signing keys: token ECDSA P-256 key pairs, private half sensitive and non-extractable, found
//!   by label; signing uses `CKM_ECDSA` over a SHA-256 digest computed on the host.
//! - Sealing: the wrap key is the policy (a data key generated, wrapped, and used on the host).
//!
//! The module is initialised once per process and shared (PKCS#11 allows one `C_Initialize`);
//! sessions are pooled, one per concurrently running operation.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use cryptoki::context::{CInitializeArgs, Pkcs11};
use cryptoki::error::RvError;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroize;

use crate::datakey::{DataKey, DATA_KEY_LEN};
use crate::envelope::{seal_with_wrap_key, unseal_with_wrap_key};
use crate::{
    ecdsa_p256_fixed_to_der, p256_spki_der_from_point, validate_label, Error, KeyId, KeyStore,
    PublicKeySpki, Result, SealPolicy, SealedSecret, Secret, WrapScheme, WrappedKey,
};

const BACKEND: &str = "pkcs11";
/// DER of the prime256v1 OID, the `CKA_EC_PARAMS` of a P-256 key.
const P256_EC_PARAMS: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const DEFAULT_WRAP_KEY_LABEL: &str = "pop-root-wrap";
/// Prefix of signing key labels on the token, so they cannot collide with the wrap key.
const SIGNING_LABEL_PREFIX: &str = "pop-sign-";

/// PKCS#11 module and token, as the board descriptor names them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Label of the token to use.
    pub token_label: String,
    /// File holding the user PIN (one line).
    pub pin_file: PathBuf,
    /// Label of the root wrap key on the token (default `pop-root-wrap`).
    #[serde(default)]
    pub wrap_key_label: Option<String>,
}

/// Key store on a PKCS#11 token.
pub struct Pkcs11KeyStore {
    // Sessions must go before the context so they close before a possible C_Finalize.
    sessions: Mutex<Vec<Session>>,
    context: Arc<Pkcs11>,
    slot: Slot,
    pin: AuthPin,
    wrap_key_label: String,
    root: Mutex<Option<(KeyId, ObjectHandle)>>,
    signers: Mutex<HashMap<String, ObjectHandle>>,
}

impl std::fmt::Debug for Pkcs11KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11KeyStore")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

fn p11(operation: &'static str) -> impl FnOnce(cryptoki::error::Error) -> Error {
    move |source| Error::Pkcs11 { operation, source }
}

/// One initialised context per module path and process, shared by all stores using it.
fn context_for(module: &Path) -> Result<Arc<Pkcs11>> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Weak<Pkcs11>>>> = OnceLock::new();
    let mut map = CONTEXTS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(ctx) = map.get(module).and_then(Weak::upgrade) {
        return Ok(ctx);
    }
    let ctx = Pkcs11::new(module).map_err(|source| Error::Backend {
        backend: BACKEND,
        detail: format!(
            "cannot load PKCS#11 module {}: {source}; check the board's keystore module path",
            module.display()
        ),
    })?;
    match ctx.initialize(CInitializeArgs::OsThreads) {
        Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(p11("C_Initialize")(e)),
    }
    let ctx = Arc::new(ctx);
    map.insert(module.to_owned(), Arc::downgrade(&ctx));
    Ok(ctx)
}

impl Pkcs11KeyStore {
    /// Opens the configured token, reading the PIN from `pin_file`.
    pub fn open(config: &Pkcs11Config) -> Result<Self> {
        let mut pin = std::fs::read_to_string(&config.pin_file)
            .map_err(|e| Error::io("read PIN file", &config.pin_file, e))?;
        let trimmed = pin.trim_end_matches(['\n', '\r']).to_owned();
        pin.zeroize();
        let wrap_label = config
            .wrap_key_label
            .as_deref()
            .unwrap_or(DEFAULT_WRAP_KEY_LABEL);
        Self::open_with_pin(
            &config.module,
            &config.token_label,
            AuthPin::new(trimmed),
            wrap_label,
        )
    }

    /// Opens the token labelled `token_label` in `module` and logs in with `pin`.
    pub fn open_with_pin(
        module: &Path,
        token_label: &str,
        pin: AuthPin,
        wrap_key_label: &str,
    ) -> Result<Self> {
        validate_label(wrap_key_label)?;
        let context = context_for(module)?;
        let mut found = None;
        for slot in context
            .get_slots_with_token()
            .map_err(p11("C_GetSlotList"))?
        {
            let info = context
                .get_token_info(slot)
                .map_err(p11("C_GetTokenInfo"))?;
            if info.label().trim_end() == token_label {
                found = Some(slot);
                break;
            }
        }
        let slot = found.ok_or_else(|| Error::Backend {
            backend: BACKEND,
            detail: format!(
                "no token labelled {token_label:?} in {}; initialise it or fix token_label",
                module.display()
            ),
        })?;
        let store = Pkcs11KeyStore {
            sessions: Mutex::new(Vec::new()),
            context,
            slot,
            pin,
            wrap_key_label: wrap_key_label.to_owned(),
            root: Mutex::new(None),
            signers: Mutex::new(HashMap::new()),
        };
        // Log in now so a wrong PIN is reported at startup, not at the first operation.
        let session = store.checkout()?;
        store.checkin(session);
        Ok(store)
    }

    fn checkout(&self) -> Result<Session> {
        if let Some(s) = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop()
        {
            return Ok(s);
        }
        let session = self
            .context
            .open_rw_session(self.slot)
            .map_err(p11("C_OpenSession"))?;
        // Login state is per application: the first session's login covers later ones.
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(cryptoki::error::Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
                Ok(session)
            }
            Err(e) => Err(p11("C_Login (check the PIN)")(e)),
        }
    }

    fn checkin(&self, session: Session) {
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(session);
    }

    /// Runs `f` on a pooled session. A session whose operation failed is still returned: PKCS#11
    /// errors leave the session usable.
    fn with_session<R>(&self, f: impl FnOnce(&Session) -> Result<R>) -> Result<R> {
        let session = self.checkout()?;
        let res = f(&session);
        self.checkin(session);
        res
    }

    fn root(&self) -> Result<(KeyId, ObjectHandle)> {
        let mut root = self
            .root
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(r) = *root {
            return Ok(r);
        }
        let r = self.with_session(|s| self.find_or_create_wrap_key(s))?;
        *root = Some(r);
        Ok(r)
    }

    fn find_or_create_wrap_key(&self, s: &Session) -> Result<(KeyId, ObjectHandle)> {
        let template = [
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::Label(self.wrap_key_label.as_bytes().to_vec()),
        ];
        let mut handles = s
            .find_objects(&template)
            .map_err(p11("C_FindObjects (wrap key)"))?;
        if handles.len() > 1 {
            return Err(Error::Backend {
                backend: BACKEND,
                detail: format!(
                    "{} keys labelled {:?} on the token; remove all but one",
                    handles.len(),
                    self.wrap_key_label
                ),
            });
        }
        if let Some(h) = handles.pop() {
            return Ok((self.check_wrap_key(s, h)?, h));
        }
        let mut id = [0u8; KeyId::LEN];
        s.generate_random_slice(&mut id)
            .map_err(p11("C_GenerateRandom"))?;
        let template = [
            Attribute::Token(true),
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Wrap(true),
            Attribute::Unwrap(true),
            Attribute::Encrypt(false),
            Attribute::Decrypt(false),
            Attribute::Sign(false),
            Attribute::Verify(false),
            Attribute::Derive(false),
            Attribute::ValueLen(32.into()),
            Attribute::Label(self.wrap_key_label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let h = s
            .generate_key(&Mechanism::AesKeyGen, &template)
            .map_err(p11("C_GenerateKey (root wrap key)"))?;
        tracing::info!(root_key = %KeyId(id), "pkcs11 key store: created root wrap key");
        Ok((KeyId(id), h))
    }

    /// Refuses a wrap key whose attributes would let its value out.
    fn check_wrap_key(&self, s: &Session, h: ObjectHandle) -> Result<KeyId> {
        let attrs = s
            .get_attributes(
                h,
                &[
                    AttributeType::Id,
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                ],
            )
            .map_err(p11("C_GetAttributeValue (wrap key)"))?;
        let mut id = None;
        let (mut sensitive, mut extractable) = (false, true);
        for a in attrs {
            match a {
                Attribute::Id(v) => id = <[u8; KeyId::LEN]>::try_from(v.as_slice()).ok(),
                Attribute::Sensitive(v) => sensitive = v,
                Attribute::Extractable(v) => extractable = v,
                _ => {}
            }
        }
        if !sensitive || extractable {
            return Err(Error::Backend {
                backend: BACKEND,
                detail: format!(
                    "wrap key {:?} is extractable or not sensitive; refusing to use it",
                    self.wrap_key_label
                ),
            });
        }
        id.map(KeyId).ok_or_else(|| Error::Backend {
            backend: BACKEND,
            detail: format!("wrap key {:?} has no 16-byte CKA_ID", self.wrap_key_label),
        })
    }

    fn signer(&self, label: &str) -> Result<ObjectHandle> {
        validate_label(label)?;
        if let Some(h) = self
            .signers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(label)
        {
            return Ok(*h);
        }
        // Serialise creation per store so two threads do not create two keys with one label.
        let mut signers = self
            .signers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = signers.get(label) {
            return Ok(*h);
        }
        let token_label = format!("{SIGNING_LABEL_PREFIX}{label}").into_bytes();
        let h = self.with_session(|s| {
            let find = [
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(token_label.clone()),
            ];
            let found = s
                .find_objects(&find)
                .map_err(p11("C_FindObjects (signing key)"))?;
            if let Some(h) = found.first() {
                return Ok(*h);
            }
            let mut id = [0u8; KeyId::LEN];
            s.generate_random_slice(&mut id)
                .map_err(p11("C_GenerateRandom"))?;
            let public = [
                Attribute::Token(true),
                Attribute::Verify(true),
                Attribute::EcParams(P256_EC_PARAMS.to_vec()),
                Attribute::Label(token_label.clone()),
                Attribute::Id(id.to_vec()),
            ];
            let private = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Derive(false),
                Attribute::Label(token_label.clone()),
                Attribute::Id(id.to_vec()),
            ];
            let (_, private) = s
                .generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private)
                .map_err(p11("C_GenerateKeyPair (ECDSA P-256)"))?;
            Ok(private)
        })?;
        signers.insert(label.to_owned(), h);
        Ok(h)
    }
}

impl KeyStore for Pkcs11KeyStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn ensure_root_key(&self) -> Result<KeyId> {
        Ok(self.root()?.0)
    }

    fn wrap_data_key(&self, key: &DataKey) -> Result<WrappedKey> {
        let (root_id, root) = self.root()?;
        self.with_session(|s| {
            let mut value = key.with_bytes(|b| b.to_vec());
            // A session object only for the wrap call: extractable so it can be wrapped, never
            // stored on the token.
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(true),
                Attribute::Extractable(true),
                Attribute::Value(std::mem::take(&mut value)),
            ];
            let created = s.create_object(&template);
            for a in template {
                if let Attribute::Value(mut v) = a {
                    v.zeroize();
                }
            }
            let obj = created.map_err(p11("C_CreateObject (data key)"))?;
            let wrapped = s.wrap_key(&Mechanism::AesKeyWrap, root, obj);
            let _ = s.destroy_object(obj);
            let blob = wrapped.map_err(p11("C_WrapKey"))?;
            Ok(WrappedKey {
                root_key_id: root_id,
                scheme: WrapScheme::Pkcs11AesKeyWrap,
                blob,
            })
        })
    }

    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        let (root_id, root) = self.root()?;
        if wrapped.scheme != WrapScheme::Pkcs11AesKeyWrap {
            return Err(Error::Backend {
                backend: BACKEND,
                detail: format!(
                    "cannot unwrap a key wrapped with {:?}; it belongs to another backend",
                    wrapped.scheme
                ),
            });
        }
        wrapped.check_root(root_id)?;
        if wrapped.blob.len() != DATA_KEY_LEN + 8 {
            return Err(Error::malformed(
                "wrapped key",
                "PKCS#11 AES key wrap blob must be 40 bytes",
            ));
        }
        self.with_session(|s| {
            let template = [
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ];
            let obj = s
                .unwrap_key(&Mechanism::AesKeyWrap, root, &wrapped.blob, &template)
                .map_err(|e| match e {
                    // RFC 3394's integrity check failing is how a tampered blob shows up.
                    cryptoki::error::Error::Pkcs11(
                        RvError::WrappedKeyInvalid
                        | RvError::EncryptedDataInvalid
                        | RvError::UnwrappingKeyHandleInvalid,
                        _,
                    ) => Error::IntegrityCheckFailed {
                        what: "wrapped key",
                    },
                    other => p11("C_UnwrapKey")(other),
                })?;
            let attrs = s.get_attributes(obj, &[AttributeType::Value]);
            let _ = s.destroy_object(obj);
            let mut value = None;
            for a in attrs.map_err(p11("C_GetAttributeValue (data key)"))? {
                if let Attribute::Value(v) = a {
                    value = Some(zeroize::Zeroizing::new(v));
                }
            }
            let value = value.ok_or_else(|| Error::Backend {
                backend: BACKEND,
                detail: "unwrapped key has no value".into(),
            })?;
            DataKey::from_fill(|k| {
                if value.len() != DATA_KEY_LEN {
                    return Err(Error::malformed(
                        "wrapped key",
                        "unwrapped key is not 32 bytes",
                    ));
                }
                k.copy_from_slice(&value);
                Ok(())
            })
        })
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
        let private = self.signer(label)?;
        self.with_session(|s| {
            let id = s
                .get_attributes(private, &[AttributeType::Id])
                .map_err(p11("C_GetAttributeValue (key id)"))?
                .into_iter()
                .find_map(|a| {
                    if let Attribute::Id(v) = a {
                        Some(v)
                    } else {
                        None
                    }
                })
                .unwrap_or_default();
            let find = [Attribute::Class(ObjectClass::PUBLIC_KEY), Attribute::Id(id)];
            let public = s
                .find_objects(&find)
                .map_err(p11("C_FindObjects (public key)"))?;
            let public = public.first().ok_or_else(|| Error::Backend {
                backend: BACKEND,
                detail: format!("signing key {label:?} has no public key object on the token"),
            })?;
            let point = s
                .get_attributes(*public, &[AttributeType::EcPoint])
                .map_err(p11("C_GetAttributeValue (EC point)"))?
                .into_iter()
                .find_map(|a| {
                    if let Attribute::EcPoint(v) = a {
                        Some(v)
                    } else {
                        None
                    }
                })
                .unwrap_or_default();
            // CKA_EC_POINT is a DER OCTET STRING (04 41 || point) by the standard; some tokens
            // return the bare point.
            let bare = match point.as_slice() {
                [0x04, 0x41, rest @ ..] if rest.len() == 65 => rest,
                other => other,
            };
            p256_spki_der_from_point(bare)
        })
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>> {
        let private = self.signer(label)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let fixed = self.with_session(|s| {
            s.sign(&Mechanism::Ecdsa, private, digest.as_ref())
                .map_err(p11("C_Sign"))
        })?;
        ecdsa_p256_fixed_to_der(&fixed)
    }

    fn random(&self, out: &mut [u8]) -> Result<()> {
        self.with_session(|s| {
            s.generate_random_slice(out)
                .map_err(p11("C_GenerateRandom"))
        })
    }
}
