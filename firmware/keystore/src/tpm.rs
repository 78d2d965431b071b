//! TPM 2.0 backend (tss-esapi 7.x over any TCTI: `device:/dev/tpmrm0` on boards,
//! `swtpm:host=127.0.0.1,port=N` in tests).
//!
//! Key hierarchy, all under the owner hierarchy:
//! - **Primary**: an ECC P-256 storage key from a fixed template, so the TPM re-derives the same
//!   key from its owner seed at every start; nothing about it is stored. Clearing the TPM (a new
//!   owner seed) makes every blob below unloadable, which is the intended "wipe".
//! - **Root wrap key**: an AES-256 symmetric key generated inside the TPM as a child of the
//!   primary; its public area and TPM-encrypted private area live in `state_dir/root.key` with
//!   the random root [`KeyId`]. Data keys are wrapped with `TPM2_EncryptDecrypt2` (AES-256-CFB,
//!   random IV) over `key || check`, where `check` is 16 bytes of SHA-256 over a domain label,
//!   the root key id, the IV and the key. CFB alone is malleable; the check makes any change to
//!   IV or ciphertext fail unwrap ([`Error::IntegrityCheckFailed`]), and only the TPM can make a
//!   wrapped key that passes.
//!   Why this and not a sealed-data object per data key: the wrap key stays loaded, so an unwrap
//!   is one TPM command (EncryptDecrypt2), where a sealed object costs Load + Unseal + Flush and
//!   the Load (an integrity check and decryption of the private area) dominates.
//! - **Signing keys**: ECDSA P-256 keys generated inside the TPM under the primary, one file per
//!   label (`state_dir/sign-<label>.key`), loaded on demand; the most recently used one stays
//!   loaded.
//! - **PCR sealing**: a sealed-data object under the primary whose only authorisation is a
//!   PolicyPCR digest over the configured SHA-256 PCRs (no `userWithAuth`). Sealing to
//!   [`SealPolicy::WrapKey`] uses the host-side helper over the wrap key, as the other backends do.
//!
//! Transport security: commands carrying secrets (EncryptDecrypt2, Create with sealed data,
//! Unseal, GetRandom) run in a session salted with the primary and with parameter encryption, so
//! data keys and secrets never cross the TPM bus in clear. This costs host CPU in tss2-esys (see
//! [`TpmConfig::parameter_encryption`]): keep an unwrapped [`DataKey`] for the life of a
//! segment or stream rather than unwrapping per use.
//!
//! Handles: a TPM guarantees only 3 transient object slots (`TPM2_PT_HR_TRANSIENT_MIN`) and 3
//! loaded sessions. The store keeps at most primary + wrap key + one signing key loaded, and
//! flushes the signing key before loading a sealed object; every session and temporary object is
//! flushed on success and on error, and everything is flushed when the store is dropped.
//! [`TpmKeyStore::loaded_handles`] reports what is loaded, for leak checks.
//!
//! Concurrency: one TPM connection per store behind a mutex (a TPM executes one command at a
//! time anyway); the host-side AES-GCM work on unwrapped data keys runs outside it.

mod blob;
mod templates;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::response_code::Tss2ResponseCodeKind;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::constants::{CapabilityType, SessionType};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, SymmetricMode};
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    CapabilityData, Digest, HashScheme, HashcheckTicket, InitialValue, MaxBuffer, PcrSelectionList,
    PcrSelectionListBuilder, PcrSlot, Public, SensitiveData, Signature, SignatureScheme,
    SymmetricDefinition,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use self::blob::{CfbWrapped, ObjectBlobs, PcrSealed, RootKeyFile, SigningKeyFile};
use crate::datakey::{DataKey, DATA_KEY_LEN};
use crate::envelope::{seal_with_wrap_key, unseal_with_wrap_key};
use crate::{
    ecdsa_p256_fixed_to_der, fsutil, p256_spki_der_from_point, validate_label, Error, KeyId,
    KeyStore, PcrSelection, PublicKeySpki, Result, SealPolicy, SealedSecret, Secret, WrapScheme,
    WrappedKey, MAX_SEALED_SECRET,
};

const BACKEND: &str = "tpm";
const ROOT_KEY_FILE: &str = "root.key";
const WRAP_CHECK_DOMAIN: &[u8] = b"pop-keystore/tpm-wrap/v1";
const WRAP_PLAIN_LEN: usize = DATA_KEY_LEN + blob::WRAP_CHECK_LEN;
/// Bytes per TPM2_GetRandom: every TPM returns at least a SHA-256 digest's worth.
const RANDOM_CHUNK: usize = 32;

/// TPM connection and state location, as the board descriptor gives them.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TCTI string, e.g. `device:/dev/tpmrm0` (use the kernel resource manager on boards) or
    /// `swtpm:host=127.0.0.1,port=2321`.
    pub tcti: String,
    /// Directory for the TPM-encrypted key blobs (root wrap key, signing keys). Useless without
    /// this TPM; created with mode 0700 if missing.
    pub state_dir: PathBuf,
    /// Encrypt secrets on the TPM bus (salted sessions with parameter encryption). Default on.
    /// Costs about 3 ms of host CPU per EncryptDecrypt2/GetRandom/Create/Unseal in tss2-esys
    /// 3.2 with OpenSSL 3; turn off only where the TPM is on-die (firmware TPM) and the bus
    /// cannot be probed.
    #[serde(default = "default_true")]
    pub parameter_encryption: bool,
}

fn default_true() -> bool {
    true
}

/// What a TPM has loaded right now, as `TPM2_GetCapability(TPM_CAP_HANDLES)` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedHandles {
    /// Transient objects (keys, sealed objects) in the TPM.
    pub transient_objects: usize,
    /// Loaded HMAC and policy sessions.
    pub sessions: usize,
}

/// Key store on a TPM 2.0.
pub struct TpmKeyStore {
    inner: Mutex<Inner>,
    state_dir: PathBuf,
}

impl std::fmt::Debug for TpmKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKeyStore")
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The TPM connection and what this store holds loaded in it.
struct Inner {
    ctx: Context,
    primary: Option<KeyHandle>,
    /// Salted HMAC session used for parameter encryption; kept for the store's lifetime.
    session: Option<AuthSession>,
    parameter_encryption: bool,
    root: Option<(KeyId, KeyHandle)>,
    /// The most recently used signing key, kept loaded.
    signer: Option<(String, KeyHandle)>,
    /// Signing key blobs and public keys read so far, by label.
    signing_keys: HashMap<String, (ObjectBlobs, PublicKeySpki)>,
}

fn tpm_err(operation: &'static str) -> impl FnOnce(tss_esapi::Error) -> Error {
    move |source| Error::Tpm { operation, source }
}

fn kind_of(e: &tss_esapi::Error) -> Option<Tss2ResponseCodeKind> {
    match e {
        tss_esapi::Error::Tss2Error(rc) => rc.kind(),
        tss_esapi::Error::WrapperError(_) => None,
    }
}

fn missing_session() -> Error {
    Error::Backend {
        backend: BACKEND,
        detail: "the TPM did not return a session handle; check the TPM with tpm2_selftest".into(),
    }
}

impl TpmKeyStore {
    /// Connects to the TPM named by `config.tcti`, creates the primary storage key and a salted
    /// session. The root wrap key is created or loaded on first use ([`KeyStore::ensure_root_key`]).
    pub fn open(config: &TpmConfig) -> Result<Self> {
        let tcti = TctiNameConf::from_str(&config.tcti).map_err(|e| Error::Config {
            field: "tcti",
            reason: format!(
                "{e}; expected e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=2321"
            ),
        })?;
        fsutil::ensure_private_dir(&config.state_dir)?;
        let ctx = Context::new(tcti).map_err(|source| Error::Backend {
            backend: BACKEND,
            detail: format!(
                "cannot connect to the TPM at {:?} ({source}); check the device or simulator is \
                 running and accessible",
                config.tcti
            ),
        })?;
        let mut inner = Inner {
            ctx,
            primary: None,
            session: None,
            parameter_encryption: config.parameter_encryption,
            root: None,
            signer: None,
            signing_keys: HashMap::new(),
        };
        // On error, dropping `inner` flushes whatever was created so far.
        inner.start()?;
        Ok(TpmKeyStore {
            inner: Mutex::new(inner),
            state_dir: config.state_dir.clone(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves handles the store still tracks and flushes on
        // drop; the connection itself stays consistent, so continue with it.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the TPM has loaded now (all clients of the TPM, unless a resource manager such as
    /// `/dev/tpmrm0` isolates them). For leak checks and diagnostics.
    pub fn loaded_handles(&self) -> Result<LoadedHandles> {
        self.lock().loaded_handles()
    }

    fn root_key_path(&self) -> PathBuf {
        self.state_dir.join(ROOT_KEY_FILE)
    }

    fn signing_key_path(&self, label: &str) -> PathBuf {
        self.state_dir.join(format!("sign-{label}.key"))
    }

    fn root(&self, inner: &mut Inner) -> Result<(KeyId, KeyHandle)> {
        if let Some(root) = inner.root {
            return Ok(root);
        }
        let path = self.root_key_path();
        let file = match fsutil::read_optional(&path)? {
            Some(bytes) => RootKeyFile::from_bytes(&bytes)?,
            None => {
                let created = inner.create_root_key()?;
                if fsutil::create_new_atomic(&path, &created.to_bytes()?)? {
                    tracing::info!(root_key = %created.id, "created TPM root wrap key");
                    created
                } else {
                    // Another process created it first: use theirs, so all agree on one key.
                    let bytes = fsutil::read_optional(&path)?.ok_or_else(|| Error::Backend {
                        backend: BACKEND,
                        detail: format!("{} vanished while being created", path.display()),
                    })?;
                    RootKeyFile::from_bytes(&bytes)?
                }
            }
        };
        let handle = inner.load(file.key, &path)?;
        inner.root = Some((file.id, handle));
        Ok((file.id, handle))
    }

    fn signing_key_locked(&self, inner: &mut Inner, label: &str) -> Result<PublicKeySpki> {
        validate_label(label)?;
        if let Some((_, spki)) = inner.signing_keys.get(label) {
            return Ok(spki.clone());
        }
        let path = self.signing_key_path(label);
        let bytes = match fsutil::read_optional(&path)? {
            Some(bytes) => bytes,
            None => {
                let created = SigningKeyFile(inner.create_signing_key()?).to_bytes()?;
                if !fsutil::create_new_atomic(&path, &created)? {
                    tracing::debug!(label, "signing key created concurrently; using the other");
                }
                fsutil::read_optional(&path)?.ok_or_else(|| Error::Backend {
                    backend: BACKEND,
                    detail: format!("{} vanished while being created", path.display()),
                })?
            }
        };
        let key = SigningKeyFile::from_bytes(&bytes)?.0;
        let spki = spki_of(&key.public)?;
        inner
            .signing_keys
            .insert(label.to_owned(), (key, spki.clone()));
        Ok(spki)
    }
}

fn spki_of(public: &Public) -> Result<PublicKeySpki> {
    match public {
        Public::Ecc { unique, .. } => {
            let mut point = Vec::with_capacity(64);
            point.extend_from_slice(&left_pad32(unique.x().value())?);
            point.extend_from_slice(&left_pad32(unique.y().value())?);
            p256_spki_der_from_point(&point)
        }
        _ => Err(Error::malformed(
            "TPM signing key file",
            "public area is not an ECC key",
        )),
    }
}

/// TPMs strip leading zero bytes from ECC values; P-256 coordinates and signature halves are 32.
fn left_pad32(value: &[u8]) -> Result<[u8; 32]> {
    let mut out = [0u8; 32];
    let start = 32usize
        .checked_sub(value.len())
        .ok_or(Error::malformed("TPM ECC value", "longer than 32 bytes"))?;
    out.get_mut(start..)
        .ok_or(Error::malformed("TPM ECC value", "longer than 32 bytes"))?
        .copy_from_slice(value);
    Ok(out)
}

fn wrap_check(root: KeyId, iv: &[u8], key: &[u8]) -> [u8; blob::WRAP_CHECK_LEN] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(WRAP_CHECK_DOMAIN);
    ctx.update(&root.0);
    ctx.update(iv);
    ctx.update(key);
    let digest = ctx.finish();
    let mut out = [0u8; blob::WRAP_CHECK_LEN];
    for (o, d) in out.iter_mut().zip(digest.as_ref()) {
        *o = *d;
    }
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn pcr_selection_list(sel: PcrSelection) -> Result<PcrSelectionList> {
    let slots = sel
        .indices()
        .map(|i| PcrSlot::try_from(1u32 << i))
        .collect::<tss_esapi::Result<Vec<_>>>()
        .map_err(tpm_err("select PCRs"))?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(tpm_err("select PCRs"))
}

impl Inner {
    fn start(&mut self) -> Result<()> {
        self.ctx
            .set_sessions((Some(AuthSession::Password), None, None));
        let primary = self
            .ctx
            .create_primary(
                Hierarchy::Owner,
                templates::primary()?,
                None,
                None,
                None,
                None,
            )
            .map_err(|source| match kind_of(&source) {
                Some(Tss2ResponseCodeKind::BadAuth | Tss2ResponseCodeKind::AuthFail) => {
                    Error::Backend {
                        backend: BACKEND,
                        detail: format!(
                            "the TPM owner hierarchy has an authorisation value ({source}); \
                             this backend expects an empty owner auth"
                        ),
                    }
                }
                _ => Error::Tpm {
                    operation: "create primary key",
                    source,
                },
            })?
            .key_handle;
        self.primary = Some(primary);
        if !self.parameter_encryption {
            return Ok(());
        }
        let session = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.start_auth_session(
                    Some(primary),
                    None,
                    None,
                    SessionType::Hmac,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
            })
            .map_err(tpm_err("start salted session"))?
            .ok_or_else(missing_session)?;
        self.session = Some(session);
        Ok(())
    }

    fn primary(&self) -> Result<KeyHandle> {
        self.primary.ok_or_else(|| Error::Backend {
            backend: BACKEND,
            detail: "primary key is not loaded".into(),
        })
    }

    /// Runs `f` with the salted session as session 1, encrypting the first command parameter
    /// (`decrypt`) and/or the first response parameter (`encrypt`).
    fn with_param_encryption<T>(
        &mut self,
        decrypt: bool,
        encrypt: bool,
        f: impl FnOnce(&mut Context) -> tss_esapi::Result<T>,
    ) -> tss_esapi::Result<T> {
        if !self.parameter_encryption {
            // Commands without an authorised handle (GetRandom) take no password session.
            return if decrypt {
                self.ctx
                    .execute_with_session(Some(AuthSession::Password), f)
            } else {
                self.ctx.execute_without_session(f)
            };
        }
        let session = self.session.ok_or(tss_esapi::Error::WrapperError(
            tss_esapi::WrapperErrorKind::WrongValueFromTpm,
        ))?;
        let (attrs, mask) = SessionAttributesBuilder::new()
            .with_continue_session(true)
            .with_decrypt(decrypt)
            .with_encrypt(encrypt)
            .build();
        self.ctx.tr_sess_set_attributes(session, attrs, mask)?;
        self.ctx.execute_with_session(Some(session), f)
    }

    fn random(&mut self, out: &mut [u8]) -> Result<()> {
        for chunk in out.chunks_mut(RANDOM_CHUNK) {
            let bytes = self
                .with_param_encryption(false, true, |ctx| ctx.get_random(chunk.len()))
                .map_err(tpm_err("get random"))?;
            if bytes.value().len() != chunk.len() {
                return Err(Error::Crypto("TPM returned fewer random bytes than asked"));
            }
            chunk.copy_from_slice(bytes.value());
        }
        Ok(())
    }

    fn create_root_key(&mut self) -> Result<RootKeyFile> {
        let primary = self.primary()?;
        let template = templates::wrap_key()?;
        let created = self
            .ctx
            .create(primary, template, None, None, None, None)
            .map_err(tpm_err("create root wrap key"))?;
        let mut id = [0u8; KeyId::LEN];
        self.random(&mut id)?;
        Ok(RootKeyFile {
            id: KeyId(id),
            key: ObjectBlobs {
                public: created.out_public,
                private: created.out_private,
            },
        })
    }

    fn create_signing_key(&mut self) -> Result<ObjectBlobs> {
        let primary = self.primary()?;
        let created = self
            .ctx
            .create(primary, templates::signing_key()?, None, None, None, None)
            .map_err(tpm_err("create signing key"))?;
        Ok(ObjectBlobs {
            public: created.out_public,
            private: created.out_private,
        })
    }

    /// Loads a child of the primary, first making room by flushing the cached signing key.
    fn load(&mut self, blobs: ObjectBlobs, source: &Path) -> Result<KeyHandle> {
        self.flush_signer();
        let primary = self.primary()?;
        self.ctx
            .load(primary, blobs.private, blobs.public)
            .map_err(|e| match kind_of(&e) {
                Some(Tss2ResponseCodeKind::Integrity) => Error::Backend {
                    backend: BACKEND,
                    detail: format!(
                        "{} does not load under this TPM's primary key ({e}): the TPM was \
                         cleared or the file comes from another device",
                        source.display()
                    ),
                },
                _ => Error::Tpm {
                    operation: "load key",
                    source: e,
                },
            })
    }

    fn flush(&mut self, handle: ObjectHandle, what: &'static str) {
        if let Err(e) = self.ctx.flush_context(handle) {
            tracing::warn!(error = %e, what, "could not flush TPM handle");
        }
    }

    fn flush_signer(&mut self) {
        if let Some((_, handle)) = self.signer.take() {
            self.flush(handle.into(), "signing key");
        }
    }

    fn encrypt_decrypt(
        &mut self,
        key: KeyHandle,
        decrypt: bool,
        iv: &[u8],
        data: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>> {
        let iv = InitialValue::try_from(iv.to_vec()).map_err(tpm_err("AES IV"))?;
        let data = MaxBuffer::try_from(data.to_vec()).map_err(tpm_err("AES input"))?;
        let (out, _) = self
            .with_param_encryption(true, true, |ctx| {
                ctx.encrypt_decrypt_2(key, decrypt, SymmetricMode::Cfb, data, iv)
            })
            .map_err(tpm_err(if decrypt {
                "EncryptDecrypt2 (unwrap)"
            } else {
                "EncryptDecrypt2 (wrap)"
            }))?;
        Ok(Zeroizing::new(out.value().to_vec()))
    }

    fn sign_digest(&mut self, key: KeyHandle, digest: &[u8]) -> Result<Vec<u8>> {
        let digest = Digest::try_from(digest.to_vec()).map_err(tpm_err("sign"))?;
        let ticket = HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
            tag: TPM2_ST_HASHCHECK,
            hierarchy: TPM2_RH_NULL,
            digest: Default::default(),
        })
        .map_err(tpm_err("sign"))?;
        let scheme = SignatureScheme::EcDsa {
            hash_scheme: HashScheme::new(HashingAlgorithm::Sha256),
        };
        let signature = self
            .ctx
            .execute_with_session(Some(AuthSession::Password), |ctx| {
                ctx.sign(key, digest, scheme, ticket)
            })
            .map_err(tpm_err("sign"))?;
        let Signature::EcDsa(sig) = signature else {
            return Err(Error::Backend {
                backend: BACKEND,
                detail: "the TPM returned a non-ECDSA signature for an ECDSA key".into(),
            });
        };
        let mut fixed = [0u8; 64];
        let (r, s) = fixed.split_at_mut(32);
        r.copy_from_slice(&left_pad32(sig.signature_r().value())?);
        s.copy_from_slice(&left_pad32(sig.signature_s().value())?);
        ecdsa_p256_fixed_to_der(&fixed)
    }

    /// Starts a policy (or trial) session, salted with the primary so an Unseal in it can
    /// encrypt its response, and runs PolicyPCR over the current PCR values.
    fn pcr_policy_session(
        &mut self,
        kind: SessionType,
        pcrs: &PcrSelectionList,
    ) -> Result<AuthSession> {
        let salt = if self.parameter_encryption {
            Some(self.primary()?)
        } else {
            None
        };
        let session = self
            .ctx
            .execute_without_session(|ctx| {
                ctx.start_auth_session(
                    salt,
                    None,
                    None,
                    kind,
                    SymmetricDefinition::AES_128_CFB,
                    HashingAlgorithm::Sha256,
                )
            })
            .map_err(tpm_err("start policy session"))?
            .ok_or_else(missing_session)?;
        let policy = PolicySession::try_from(session).map_err(tpm_err("start policy session"));
        let res = policy.and_then(|policy| {
            self.ctx
                .execute_without_session(|ctx| {
                    ctx.policy_pcr(policy, Digest::default(), pcrs.clone())
                })
                .map_err(tpm_err("PolicyPCR"))
        });
        match res {
            Ok(()) => Ok(session),
            Err(e) => {
                self.flush(SessionHandle::from(session).into(), "policy session");
                Err(e)
            }
        }
    }

    fn seal_pcrs(&mut self, sel: PcrSelection, secret: &[u8]) -> Result<PcrSealed> {
        let pcrs = pcr_selection_list(sel)?;
        let trial = self.pcr_policy_session(SessionType::Trial, &pcrs)?;
        let digest = PolicySession::try_from(trial)
            .and_then(|p| {
                self.ctx
                    .execute_without_session(|ctx| ctx.policy_get_digest(p))
            })
            .map_err(tpm_err("PolicyGetDigest"));
        self.flush(SessionHandle::from(trial).into(), "trial session");
        let template = templates::sealed_object(digest?)?;
        let data = SensitiveData::try_from(secret.to_vec()).map_err(tpm_err("seal"))?;
        let primary = self.primary()?;
        let created = self
            .with_param_encryption(true, false, |ctx| {
                ctx.create(primary, template, None, Some(data), None, None)
            })
            .map_err(tpm_err("create sealed object"))?;
        Ok(PcrSealed(ObjectBlobs {
            public: created.out_public,
            private: created.out_private,
        }))
    }

    fn unseal_pcrs(&mut self, sel: PcrSelection, sealed: PcrSealed) -> Result<Secret> {
        let pcrs = pcr_selection_list(sel)?;
        self.flush_signer();
        let primary = self.primary()?;
        let object = self
            .ctx
            .load(primary, sealed.0.private, sealed.0.public)
            .map_err(|e| match kind_of(&e) {
                Some(_) => Error::IntegrityCheckFailed {
                    what: "TPM sealed secret",
                },
                None => Error::Tpm {
                    operation: "load sealed object",
                    source: e,
                },
            })?;
        let res = self
            .pcr_policy_session(SessionType::Policy, &pcrs)
            .and_then(|session| {
                let (attrs, mask) = SessionAttributesBuilder::new()
                    .with_continue_session(true)
                    .with_encrypt(self.parameter_encryption)
                    .build();
                let out = self
                    .ctx
                    .tr_sess_set_attributes(session, attrs, mask)
                    .and_then(|()| {
                        self.ctx
                            .execute_with_session(Some(session), |ctx| ctx.unseal(object.into()))
                    });
                self.flush(SessionHandle::from(session).into(), "policy session");
                out.map_err(|e| match kind_of(&e) {
                    Some(Tss2ResponseCodeKind::PolicyFail) => Error::PolicyNotSatisfied {
                        detail: format!(
                            "PCRs {} changed since sealing: {e}",
                            SealPolicy::Pcrs(sel)
                        ),
                    },
                    _ => Error::Tpm {
                        operation: "unseal",
                        source: e,
                    },
                })
            });
        self.flush(object.into(), "sealed object");
        Ok(Secret::new(res?.value().to_vec()))
    }

    fn loaded_handles(&mut self) -> Result<LoadedHandles> {
        let count = |ctx: &mut Context, first: u32, high_byte: u32| -> Result<usize> {
            let (data, _more) = ctx
                .execute_without_session(|ctx| {
                    ctx.get_capability(CapabilityType::Handles, first, 128)
                })
                .map_err(tpm_err("get handle capability"))?;
            let CapabilityData::Handles(list) = data else {
                return Err(Error::Backend {
                    backend: BACKEND,
                    detail: "TPM answered a handle query with other data".into(),
                });
            };
            Ok(list
                .iter()
                .filter(|h| u32::from(**h) >> 24 == high_byte)
                .count())
        };
        use tss_esapi::constants::tss::{
            TPM2_HMAC_SESSION_FIRST, TPM2_POLICY_SESSION_FIRST, TPM2_TRANSIENT_FIRST,
        };
        Ok(LoadedHandles {
            transient_objects: count(&mut self.ctx, TPM2_TRANSIENT_FIRST, 0x80)?,
            sessions: count(&mut self.ctx, TPM2_HMAC_SESSION_FIRST, 0x02)?
                + count(&mut self.ctx, TPM2_POLICY_SESSION_FIRST, 0x03)?,
        })
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.flush_signer();
        if let Some((_, handle)) = self.root.take() {
            self.flush(handle.into(), "root wrap key");
        }
        if let Some(session) = self.session.take() {
            self.flush(SessionHandle::from(session).into(), "salted session");
        }
        if let Some(primary) = self.primary.take() {
            self.flush(primary.into(), "primary key");
        }
    }
}

impl KeyStore for TpmKeyStore {
    fn backend_name(&self) -> &'static str {
        BACKEND
    }

    fn ensure_root_key(&self) -> Result<KeyId> {
        let mut inner = self.lock();
        Ok(self.root(&mut inner)?.0)
    }

    fn wrap_data_key(&self, key: &DataKey) -> Result<WrappedKey> {
        let mut inner = self.lock();
        let (root_id, handle) = self.root(&mut inner)?;
        let mut iv = [0u8; blob::WRAP_IV_LEN];
        inner.random(&mut iv)?;
        let mut plain = Zeroizing::new([0u8; WRAP_PLAIN_LEN]);
        let (k, check) = plain.split_at_mut(DATA_KEY_LEN);
        key.with_bytes(|bytes| {
            k.copy_from_slice(bytes);
            check.copy_from_slice(&wrap_check(root_id, &iv, bytes));
        });
        let ciphertext = inner.encrypt_decrypt(handle, false, &iv, &plain[..])?;
        Ok(WrappedKey {
            root_key_id: root_id,
            scheme: WrapScheme::Tpm,
            blob: CfbWrapped::encode(&iv, &ciphertext),
        })
    }

    fn unwrap_data_key(&self, wrapped: &WrappedKey) -> Result<DataKey> {
        if wrapped.scheme != WrapScheme::Tpm {
            return Err(Error::Backend {
                backend: BACKEND,
                detail: format!(
                    "the key was wrapped with {:?}, not by a TPM; open it with that backend",
                    wrapped.scheme
                ),
            });
        }
        let parsed = CfbWrapped::decode(&wrapped.blob, WRAP_PLAIN_LEN)?;
        let plain = {
            let mut inner = self.lock();
            let (root_id, handle) = self.root(&mut inner)?;
            wrapped.check_root(root_id)?;
            inner.encrypt_decrypt(handle, true, parsed.iv, parsed.ciphertext)?
        };
        let (key, check) = plain
            .split_at_checked(DATA_KEY_LEN)
            .ok_or(Error::malformed(
                "TPM wrapped key",
                "decrypted to a short buffer",
            ))?;
        if !constant_time_eq(check, &wrap_check(wrapped.root_key_id, parsed.iv, key)) {
            return Err(Error::IntegrityCheckFailed {
                what: "TPM wrapped key",
            });
        }
        DataKey::from_fill(|out| {
            out.copy_from_slice(key);
            Ok(())
        })
    }

    fn seal(&self, policy: &SealPolicy, secret: &[u8]) -> Result<SealedSecret> {
        if secret.len() > MAX_SEALED_SECRET {
            return Err(Error::Config {
                field: "secret",
                reason: format!(
                    "{} bytes is more than the {MAX_SEALED_SECRET} a TPM sealed object holds",
                    secret.len()
                ),
            });
        }
        match policy {
            SealPolicy::WrapKey => seal_with_wrap_key(self, secret),
            SealPolicy::Pcrs(sel) => {
                let mut inner = self.lock();
                let (root_id, _) = self.root(&mut inner)?;
                let sealed = inner.seal_pcrs(*sel, secret)?;
                Ok(SealedSecret {
                    root_key_id: root_id,
                    policy: policy.clone(),
                    blob: sealed.to_bytes()?,
                })
            }
        }
    }

    fn unseal(&self, sealed: &SealedSecret) -> Result<Secret> {
        match &sealed.policy {
            SealPolicy::WrapKey => unseal_with_wrap_key(self, sealed),
            SealPolicy::Pcrs(sel) => {
                let parsed = PcrSealed::from_bytes(&sealed.blob)?;
                let mut inner = self.lock();
                let (root_id, _) = self.root(&mut inner)?;
                if sealed.root_key_id != root_id {
                    return Err(Error::WrongRootKey {
                        what: "sealed secret",
                        expected: root_id,
                        found: sealed.root_key_id,
                    });
                }
                inner.unseal_pcrs(*sel, parsed)
            }
        }
    }

    fn signing_key(&self, label: &str) -> Result<PublicKeySpki> {
        let mut inner = self.lock();
        self.signing_key_locked(&mut inner, label)
    }

    fn sign(&self, label: &str, message: &[u8]) -> Result<Vec<u8>> {
        validate_label(label)?;
        let digest = ring::digest::digest(&ring::digest::SHA256, message);
        let mut inner = self.lock();
        let handle = match &inner.signer {
            Some((l, handle)) if l == label => *handle,
            _ => {
                // Reads the key file if this store has not seen the label yet.
                self.signing_key_locked(&mut inner, label)?;
                let blobs = inner
                    .signing_keys
                    .get(label)
                    .map(|(b, _)| ObjectBlobs {
                        public: b.public.clone(),
                        private: b.private.clone(),
                    })
                    .ok_or_else(|| Error::Backend {
                        backend: BACKEND,
                        detail: format!("signing key {label:?} is not available"),
                    })?;
                let path = self.signing_key_path(label);
                let handle = inner.load(blobs, &path)?;
                inner.signer = Some((label.to_owned(), handle));
                handle
            }
        };
        inner.sign_digest(handle, digest.as_ref())
    }

    fn random(&self, out: &mut [u8]) -> Result<()> {
        self.lock().random(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn left_pad_restores_stripped_zeros_and_refuses_long_values() {
        assert_eq!(left_pad32(&[1, 2]).unwrap()[30..], [1, 2]);
        assert_eq!(left_pad32(&[0xAB; 32]).unwrap(), [0xAB; 32]);
        assert!(left_pad32(&[0; 33]).is_err());
    }

    #[test]
    fn wrap_check_binds_root_iv_and_key() {
        let base = wrap_check(KeyId([1; 16]), &[2; 16], &[3; 32]);
        assert_ne!(base, wrap_check(KeyId([9; 16]), &[2; 16], &[3; 32]));
        assert_ne!(base, wrap_check(KeyId([1; 16]), &[9; 16], &[3; 32]));
        assert_ne!(base, wrap_check(KeyId([1; 16]), &[2; 16], &[9; 32]));
        assert!(constant_time_eq(&base, &base));
        assert!(!constant_time_eq(&base, &base[..15]));
    }

    #[test]
    fn config_refuses_unknown_fields() {
        let ok: TpmConfig =
            toml::from_str("tcti = \"device:/dev/tpmrm0\"\nstate_dir = \"/var/lib/pop/tpm\"")
                .unwrap();
        assert_eq!(ok.tcti, "device:/dev/tpmrm0");
        assert!(ok.parameter_encryption, "bus encryption must default to on");
        assert!(
            toml::from_str::<TpmConfig>("tcti = \"x\"\nstate_dir = \"/\"\npath = \"/\"").is_err()
        );
    }
}
