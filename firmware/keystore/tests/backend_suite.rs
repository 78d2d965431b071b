//! The same assertions against every backend: dev (files), pkcs11 (SoftHSM2, a token per test)
//! and tpm (swtpm; fixture from tests/tpm_support). Each test starts its backend on private
//! state and tears it down; missing packages fail the test loudly.
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod support;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use pop_keystore::envelope::ObjectHeader;
use pop_keystore::{
    Error, KeyId, ObjectStore, PcrSelection, Purpose, SealPolicy, SealedSecret, WrappedKey,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use support::Fixture;

fn object_store(fx: &dyn Fixture) -> ObjectStore {
    ObjectStore::open(fx.open(), &fx.dir().join("objects")).expect("open object store")
}

fn object_file(fx: &dyn Fixture, id: &str) -> std::path::PathBuf {
    fx.dir().join("objects").join("objects").join(id)
}

fn verify(spki: &[u8], message: &[u8], sig: &[u8]) -> bool {
    // The SPKI of a P-256 key ends with the 65-byte uncompressed point.
    let point = &spki[spki.len() - 65..];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, sig)
        .is_ok()
}

pub fn data_keys_round_trip_and_tampering_fails(fx: &dyn Fixture) {
    let ks = fx.open();
    let root = ks.ensure_root_key().unwrap();
    assert_eq!(
        ks.ensure_root_key().unwrap(),
        root,
        "root key id must be stable"
    );
    let (key, wrapped) = ks.generate_data_key().unwrap();
    assert_eq!(wrapped.root_key_id, root);
    let again = ks.unwrap_data_key(&wrapped).unwrap();
    let mut msg = b"sixteen byte msg".to_vec();
    key.seal_in_place_append_tag([7; 12], b"aad", &mut msg)
        .unwrap();
    assert_eq!(
        again
            .open_in_place([7; 12], b"aad", &mut msg, "test")
            .unwrap(),
        b"sixteen byte msg"
    );
    assert!(!format!("{again:?}").is_empty());

    // Every single-bit change of the wrapped blob is refused, cleanly.
    for i in 0..wrapped.blob.len() {
        let mut bad = wrapped.clone();
        bad.blob[i] ^= 0x40;
        assert!(
            ks.unwrap_data_key(&bad).is_err(),
            "tampered byte {i} of wrapped key accepted"
        );
    }
    let mut short = wrapped.clone();
    short.blob.truncate(short.blob.len() - 1);
    assert!(ks.unwrap_data_key(&short).is_err());

    // Wrong root key id: refused by id before any decryption.
    let mut foreign = wrapped.clone();
    foreign.root_key_id = KeyId([0xEE; 16]);
    assert!(matches!(
        ks.unwrap_data_key(&foreign),
        Err(Error::WrongRootKey { .. })
    ));

    // The serialised form truncated anywhere is malformed, not a panic.
    let bytes = wrapped.to_bytes().unwrap();
    for n in 0..bytes.len() {
        assert!(WrappedKey::from_bytes(&bytes[..n]).is_err());
    }
}

pub fn store_rejects_tamper_wrong_key_purpose_truncation(fx: &dyn Fixture) {
    let store = object_store(fx);
    store
        .write(Purpose::ConfigSecret, "sip-password", b"hunter2-but-longer")
        .unwrap();
    store
        .write(Purpose::ConfigSecret, "other", b"another secret")
        .unwrap();
    assert_eq!(
        store
            .read(Purpose::ConfigSecret, "sip-password")
            .unwrap()
            .expose(),
        b"hunter2-but-longer"
    );

    let path = object_file(fx, "sip-password");
    let good = std::fs::read(&path).unwrap();
    let (header, header_len) = ObjectHeader::decode(&good).unwrap();

    // Tampered ciphertext.
    let mut bad = good.clone();
    bad[header_len + 2] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    assert!(matches!(
        store.read(Purpose::ConfigSecret, "sip-password"),
        Err(Error::IntegrityCheckFailed { .. })
    ));

    // Wrong key id: another object's (existing) data key, and a key id that never existed.
    let other = std::fs::read(object_file(fx, "other")).unwrap();
    let other_key = ObjectHeader::decode(&other).unwrap().0.data_key_id;
    let key_id_at = 7; // after magic+version, aead, purpose, id_len
    let mut swapped = good.clone();
    swapped[key_id_at..key_id_at + 16].copy_from_slice(&other_key.0);
    std::fs::write(&path, &swapped).unwrap();
    assert!(matches!(
        store.read(Purpose::ConfigSecret, "sip-password"),
        Err(Error::IntegrityCheckFailed { .. })
    ));
    let mut unknown = good.clone();
    unknown[key_id_at..key_id_at + 16].copy_from_slice(&[0x11; 16]);
    std::fs::write(&path, &unknown).unwrap();
    assert!(matches!(
        store.read(Purpose::ConfigSecret, "sip-password"),
        Err(Error::KeyDestroyed { .. })
    ));

    // Wrong purpose: asked for as a recording; and the purpose byte rewritten in the file.
    std::fs::write(&path, &good).unwrap();
    assert!(matches!(
        store.read(Purpose::Recording, "sip-password"),
        Err(Error::PurposeMismatch { .. })
    ));
    let mut repurposed = good.clone();
    repurposed[5] = 3; // Recording
    std::fs::write(&path, &repurposed).unwrap();
    assert!(matches!(
        store.read(Purpose::Recording, "sip-password"),
        Err(Error::IntegrityCheckFailed { .. })
    ));

    // Object files swapped: the envelope says which object it is.
    std::fs::write(&path, &other).unwrap();
    assert!(matches!(
        store.read(Purpose::ConfigSecret, "sip-password"),
        Err(Error::ObjectIdMismatch { .. })
    ));

    // Truncated anywhere.
    for n in 0..good.len() {
        std::fs::write(&path, &good[..n]).unwrap();
        assert!(
            store.read(Purpose::ConfigSecret, "sip-password").is_err(),
            "truncation to {n} bytes accepted"
        );
    }
    std::fs::write(&path, &good).unwrap();
    assert_eq!(
        store
            .read(Purpose::ConfigSecret, "sip-password")
            .unwrap()
            .expose(),
        b"hunter2-but-longer"
    );
    assert_eq!(header.purpose, Purpose::ConfigSecret);

    // Names that could escape the directory are refused.
    assert!(matches!(
        store.write(Purpose::ConfigSecret, "../x", b""),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(
        store.read(Purpose::ConfigSecret, "missing"),
        Err(Error::ObjectNotFound { .. })
    ));
}

pub fn destroy_crypto_shreds_even_a_saved_copy(fx: &dyn Fixture) {
    let store = object_store(fx);
    store
        .write(Purpose::Recording, "call-1", &vec![0x5A; 10_000])
        .unwrap();
    let copy = std::fs::read(object_file(fx, "call-1")).unwrap();
    // Rewriting replaces the key: the old key record is shredded.
    store
        .write(Purpose::Recording, "call-1", b"second take")
        .unwrap();
    let keys = fx.dir().join("objects").join("keys");
    assert_eq!(
        std::fs::read_dir(&keys).unwrap().count(),
        1,
        "old data key not shredded on rewrite"
    );
    assert!(store.destroy("call-1").unwrap());
    assert!(!store.destroy("call-1").unwrap());
    assert_eq!(std::fs::read_dir(&keys).unwrap().count(), 0);
    // Restore the ciphertext from a "backup": it stays unreadable.
    std::fs::write(object_file(fx, "call-1"), &copy).unwrap();
    assert!(matches!(
        store.read(Purpose::Recording, "call-1"),
        Err(Error::KeyDestroyed { .. })
    ));
}

pub fn seal_unseal_and_policy_limits(fx: &dyn Fixture, supports_pcrs: bool) {
    let ks = fx.open();
    let sealed = ks
        .seal(&SealPolicy::WrapKey, b"bootstrap-token-123")
        .unwrap();
    let bytes = sealed.to_bytes().unwrap();
    let back = SealedSecret::from_bytes(&bytes).unwrap();
    assert_eq!(ks.unseal(&back).unwrap().expose(), b"bootstrap-token-123");
    assert!(format!("{:?}", ks.unseal(&back).unwrap()).contains("redacted"));
    for i in 0..sealed.blob.len() {
        let mut bad = sealed.clone();
        bad.blob[i] ^= 0x02;
        assert!(
            ks.unseal(&bad).is_err(),
            "tampered sealed byte {i} accepted"
        );
    }
    for n in 0..bytes.len() {
        assert!(SealedSecret::from_bytes(&bytes[..n]).is_err());
    }
    assert!(
        ks.seal(&SealPolicy::WrapKey, &[0; 129]).is_err(),
        "oversized secret accepted"
    );
    let pcrs = SealPolicy::Pcrs(PcrSelection::new(&[7]).unwrap());
    if !supports_pcrs {
        assert!(matches!(
            ks.seal(&pcrs, b"x"),
            Err(Error::UnsupportedPolicy { .. })
        ));
    }
}

pub fn signing_keys_are_stable_and_verify(fx: &dyn Fixture) {
    let ks = fx.open();
    let a = ks.signing_key("device-mtls").unwrap();
    assert_eq!(
        ks.signing_key("device-mtls").unwrap(),
        a,
        "same label must give the same key"
    );
    let b = ks.signing_key("other").unwrap();
    assert_ne!(a, b);
    assert_eq!(a.0.len(), 91);
    let sig = ks.sign("device-mtls", b"transcript").unwrap();
    assert!(verify(&a.0, b"transcript", &sig));
    assert!(!verify(&a.0, b"transcript!", &sig));
    assert!(!verify(&b.0, b"transcript", &sig));
    assert!(matches!(
        ks.signing_key("bad/label"),
        Err(Error::InvalidName { .. })
    ));
    assert!(matches!(ks.sign("", b"x"), Err(Error::InvalidName { .. })));
}

pub fn random_bytes_differ(fx: &dyn Fixture) {
    let ks = fx.open();
    let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
    ks.random(&mut a).unwrap();
    ks.random(&mut b).unwrap();
    assert_ne!(a, b);
    assert_ne!(a, [0; 32]);
}

pub fn sixteen_threads_share_one_store(fx: &dyn Fixture) {
    let store = Arc::new(object_store(fx));
    let ks = Arc::clone(store.keystore());
    let (_, shared_wrapped) = ks.generate_data_key().unwrap();
    let shared_wrapped = Arc::new(shared_wrapped);
    let label_pub = ks.signing_key("shared").unwrap();
    store
        .write(Purpose::SpoolSegment, "common", b"read by everyone")
        .unwrap();
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let store = Arc::clone(&store);
            let wrapped = Arc::clone(&shared_wrapped);
            let spki = label_pub.clone();
            std::thread::spawn(move || {
                let ks = Arc::clone(store.keystore());
                for i in 0..12 {
                    let id = format!("t{t}-o{i}");
                    let body = format!("thread {t} object {i}").repeat(i + 1);
                    store
                        .write(Purpose::SpoolSegment, &id, body.as_bytes())
                        .unwrap();
                    assert_eq!(
                        store.read(Purpose::SpoolSegment, &id).unwrap().expose(),
                        body.as_bytes()
                    );
                    assert_eq!(
                        store
                            .read(Purpose::SpoolSegment, "common")
                            .unwrap()
                            .expose(),
                        b"read by everyone"
                    );
                    ks.unwrap_data_key(&wrapped).unwrap();
                    let msg = id.as_bytes();
                    assert!(verify(&spki.0, msg, &ks.sign("shared", msg).unwrap()));
                    if i % 3 == 0 {
                        assert!(store.destroy(&id).unwrap());
                    }
                }
                // Concurrent rewrites of one object: whoever wins, the result is one of them.
                store
                    .write(
                        Purpose::SpoolSegment,
                        "contended",
                        format!("from {t}").as_bytes(),
                    )
                    .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker thread panicked");
    }
    let winner = store.read(Purpose::SpoolSegment, "contended").unwrap();
    assert!(std::str::from_utf8(winner.expose())
        .unwrap()
        .starts_with("from "));
    // 16 threads x 8 surviving objects + common + contended, each with exactly one key record.
    let keys = std::fs::read_dir(fx.dir().join("objects").join("keys"))
        .unwrap()
        .count();
    assert_eq!(keys, 16 * 8 + 2, "key records leaked or lost");
}

/// First process: writes an object, seals a secret and creates a key, then runs this same test
/// in a child process that must read all of it through a fresh key store on the same state.
pub fn second_process_reads_what_the_first_wrote(fx: &dyn Fixture, test_name: &str) {
    if let Ok(desc) = std::env::var(support::CHILD_ENV) {
        let fx = support::from_description(&desc);
        let store = object_store(fx.as_ref());
        assert_eq!(
            store
                .read(Purpose::ConfigSecret, "persisted")
                .unwrap()
                .expose(),
            b"written by the parent"
        );
        let sealed =
            SealedSecret::from_bytes(&std::fs::read(fx.dir().join("sealed")).unwrap()).unwrap();
        assert_eq!(
            store.keystore().unseal(&sealed).unwrap().expose(),
            b"sealed by the parent"
        );
        let spki = std::fs::read(fx.dir().join("spki")).unwrap();
        assert_eq!(store.keystore().signing_key("restart").unwrap().0, spki);
        return;
    }
    let store = object_store(fx);
    store
        .write(Purpose::ConfigSecret, "persisted", b"written by the parent")
        .unwrap();
    let sealed = store
        .keystore()
        .seal(&SealPolicy::WrapKey, b"sealed by the parent")
        .unwrap();
    std::fs::write(fx.dir().join("sealed"), sealed.to_bytes().unwrap()).unwrap();
    std::fs::write(
        fx.dir().join("spki"),
        store.keystore().signing_key("restart").unwrap().0,
    )
    .unwrap();
    drop(store);
    let status = run_child(test_name, &fx.describe(), Duration::from_secs(60));
    assert!(
        status,
        "second process could not read what the first wrote (see its output above)"
    );
}

fn run_child(test_name: &str, desc: &str, limit: Duration) -> bool {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(support::CHILD_ENV, desc)
        .spawn()
        .expect("spawn second process");
    let start = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status.success();
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("second process did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn tls13_client_auth_with_backend_key(fx: &dyn Fixture) {
    support::tls::handshake_with_backend_key(fx.open());
}

macro_rules! backend_suite {
    ($backend:ident, $fixture:expr, supports_pcrs = $pcrs:expr) => {
        mod $backend {
            use super::*;

            #[test]
            fn data_keys_round_trip_and_tampering_fails() {
                super::data_keys_round_trip_and_tampering_fails(&$fixture);
            }
            #[test]
            fn store_rejects_tamper_wrong_key_purpose_truncation() {
                super::store_rejects_tamper_wrong_key_purpose_truncation(&$fixture);
            }
            #[test]
            fn destroy_crypto_shreds_even_a_saved_copy() {
                super::destroy_crypto_shreds_even_a_saved_copy(&$fixture);
            }
            #[test]
            fn seal_unseal_and_policy_limits() {
                super::seal_unseal_and_policy_limits(&$fixture, $pcrs);
            }
            #[test]
            fn signing_keys_are_stable_and_verify() {
                super::signing_keys_are_stable_and_verify(&$fixture);
            }
            #[test]
            fn random_bytes_differ() {
                super::random_bytes_differ(&$fixture);
            }
            #[test]
            fn sixteen_threads_share_one_store() {
                super::sixteen_threads_share_one_store(&$fixture);
            }
            #[test]
            fn second_process_reads_what_the_first_wrote() {
                let name = concat!(
                    stringify!($backend),
                    "::second_process_reads_what_the_first_wrote"
                );
                if std::env::var(support::CHILD_ENV).is_ok() {
                    // The fixture is rebuilt from the parent's description inside.
                    super::second_process_reads_what_the_first_wrote(
                        &support::DevFixture::new(),
                        name,
                    );
                } else {
                    super::second_process_reads_what_the_first_wrote(&$fixture, name);
                }
            }
            #[test]
            fn tls13_client_auth_with_backend_key() {
                super::tls13_client_auth_with_backend_key(&$fixture);
            }
        }
    };
}

backend_suite!(dev, support::DevFixture::new(), supports_pcrs = false);
backend_suite!(
    pkcs11,
    support::SoftHsmFixture::new(),
    supports_pcrs = false
);
backend_suite!(tpm, support::TpmFixture::new(), supports_pcrs = true);

#[test]
fn dev_backend_refused_on_production_board() {
    let dir = tempfile::tempdir().unwrap();
    let err = pop_keystore::dev::DevKeyStore::open(dir.path(), pop_keystore::Profile::Production)
        .unwrap_err();
    assert!(err.to_string().contains("production"), "{err}");
    let cfg: pop_keystore::BackendConfig = toml::from_str(&format!(
        "backend = \"dev\"\ndir = \"{}\"",
        dir.path().display()
    ))
    .expect("parse config");
    assert!(matches!(
        pop_keystore::open(&cfg, pop_keystore::Profile::Production),
        Err(Error::DevBackendInProduction)
    ));
    assert!(pop_keystore::open(&cfg, pop_keystore::Profile::Development).is_ok());
}
