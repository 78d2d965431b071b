//! TPM-specific behaviour on a real (simulated) TPM: PCR-bound sealing that a PCR extend breaks
//! with a clear error, tampering of PCR-sealed blobs, restart, and no TPM handle leak across
//! thousands of operations. Each test starts its own swtpm and kills it (by PID) when done.
#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod tpm_support;

use std::time::{Duration, Instant};

use pop_keystore::tpm::{LoadedHandles, TpmConfig, TpmKeyStore};
use pop_keystore::{
    Error, KeyId, KeyStore, PcrSelection, SealPolicy, SealedSecret, WrapScheme, WrappedKey,
};
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use tpm_support::TpmFixture;

fn verify(spki: &[u8], message: &[u8], sig: &[u8]) -> bool {
    let point = &spki[spki.len() - 65..];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, point)
        .verify(message, sig)
        .is_ok()
}

#[test]
fn pcr_extend_makes_unseal_fail_with_a_clear_error() {
    let fx = TpmFixture::new();
    let pcr16 = SealPolicy::Pcrs(PcrSelection::new(&[16]).unwrap());
    let pcr23 = SealPolicy::Pcrs(PcrSelection::new(&[0, 23]).unwrap());
    let (sealed16, sealed23, root) = {
        let ks = fx.open_tpm();
        let a = ks.seal(&pcr16, b"disk-unlock-secret").unwrap();
        let b = ks.seal(&pcr23, b"other-secret").unwrap();
        assert_eq!(ks.unseal(&a).unwrap().expose(), b"disk-unlock-secret");
        assert_eq!(ks.unseal(&b).unwrap().expose(), b"other-secret");
        (
            a.to_bytes().unwrap(),
            b.to_bytes().unwrap(),
            ks.ensure_root_key().unwrap(),
        )
    };
    // Restart before the extend: a new store on the same state still unseals.
    {
        let ks = fx.open_tpm();
        assert_eq!(ks.ensure_root_key().unwrap(), root);
        let a = SealedSecret::from_bytes(&sealed16).unwrap();
        assert_eq!(ks.unseal(&a).unwrap().expose(), b"disk-unlock-secret");
    }
    fx.swtpm().unwrap().pcr_extend(16);
    let ks = fx.open_tpm();
    let a = SealedSecret::from_bytes(&sealed16).unwrap();
    let err = ks.unseal(&a).unwrap_err();
    assert!(
        matches!(err, Error::PolicyNotSatisfied { .. }),
        "unexpected error {err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("PCRs sha256:16") && msg.contains("reseal"),
        "message does not say what changed: {msg}"
    );
    // PCRs outside the extended one still release their secret.
    let b = SealedSecret::from_bytes(&sealed23).unwrap();
    assert_eq!(ks.unseal(&b).unwrap().expose(), b"other-secret");
    // Resealing to the new state works again.
    let again = ks.seal(&pcr16, b"resealed").unwrap();
    assert_eq!(ks.unseal(&again).unwrap().expose(), b"resealed");
    // Failed unseals leave nothing loaded behind: primary + root wrap key + 1 salted session.
    assert_eq!(
        ks.loaded_handles().unwrap(),
        LoadedHandles {
            transient_objects: 2,
            sessions: 1
        }
    );
}

#[test]
fn pcr_sealed_blobs_refuse_tampering_policy_swap_and_foreign_root() {
    let fx = TpmFixture::new();
    let ks = fx.open_tpm();
    let sel = PcrSelection::new(&[7]).unwrap();
    let sealed = ks.seal(&SealPolicy::Pcrs(sel), b"secret").unwrap();
    for i in 0..sealed.blob.len() {
        let mut bad = sealed.clone();
        bad.blob[i] ^= 0x04;
        assert!(
            ks.unseal(&bad).is_err(),
            "tampered sealed byte {i} accepted"
        );
    }
    for n in 0..sealed.blob.len() {
        let mut short = sealed.clone();
        short.blob.truncate(n);
        assert!(ks.unseal(&short).is_err(), "truncated to {n} accepted");
    }
    // Claiming another PCR set changes the policy the TPM checks: refused as a policy failure.
    let mut other = sealed.clone();
    other.policy = SealPolicy::Pcrs(PcrSelection::new(&[8]).unwrap());
    assert!(matches!(
        ks.unseal(&other),
        Err(Error::PolicyNotSatisfied { .. })
    ));
    let mut foreign = sealed.clone();
    foreign.root_key_id = KeyId([0x11; 16]);
    assert!(matches!(
        ks.unseal(&foreign),
        Err(Error::WrongRootKey { .. })
    ));
    assert!(ks.seal(&SealPolicy::Pcrs(sel), &[0; 129]).is_err());
    assert_eq!(ks.unseal(&sealed).unwrap().expose(), b"secret");
    // None of the failures above left a handle loaded.
    let h = ks.loaded_handles().unwrap();
    assert_eq!((h.transient_objects, h.sessions), (2, 1), "{h:?}");
}

#[test]
fn wrapped_keys_of_other_schemes_and_garbage_are_refused() {
    let fx = TpmFixture::new();
    let ks = fx.open_tpm();
    let (_, wrapped) = ks.generate_data_key().unwrap();
    assert_eq!(wrapped.scheme, WrapScheme::Tpm);
    let mut dev = wrapped.clone();
    dev.scheme = WrapScheme::DevAesGcm;
    let err = ks.unwrap_data_key(&dev).unwrap_err();
    assert!(err.to_string().contains("not by a TPM"), "{err}");
    let mut kind = wrapped.clone();
    kind.blob[0] = 7;
    assert!(matches!(
        ks.unwrap_data_key(&kind),
        Err(Error::UnsupportedAlgorithm { id: 7, .. })
    ));
    let mut flipped = wrapped.clone();
    *flipped.blob.last_mut().unwrap() ^= 1;
    assert!(matches!(
        ks.unwrap_data_key(&flipped),
        Err(Error::IntegrityCheckFailed { .. })
    ));
    let empty = WrappedKey {
        blob: Vec::new(),
        ..wrapped
    };
    assert!(matches!(
        ks.unwrap_data_key(&empty),
        Err(Error::Malformed { .. })
    ));
}

#[test]
fn unreachable_tpm_and_foreign_state_give_actionable_errors() {
    // A port nobody listens on (bound, then released, by us).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let err = TpmKeyStore::open(&TpmConfig {
        tcti: format!("swtpm:host=127.0.0.1,port={port}"),
        state_dir: dir.path().join("s"),
        parameter_encryption: true,
    })
    .unwrap_err();
    assert!(
        err.to_string().contains("cannot connect to the TPM"),
        "{err}"
    );
    let err = TpmKeyStore::open(&TpmConfig {
        tcti: "no-such-tcti:x".into(),
        state_dir: dir.path().join("s"),
        parameter_encryption: true,
    })
    .unwrap_err();
    assert!(
        matches!(err, Error::Config { field: "tcti", .. }) || err.to_string().contains("TPM"),
        "{err}"
    );

    // A root key file made by another TPM (another owner seed) does not load: the error names
    // the file and the likely cause.
    let a = TpmFixture::new();
    a.open_tpm().ensure_root_key().unwrap();
    let b = TpmFixture::new();
    std::fs::create_dir_all(b.config().state_dir).unwrap();
    std::fs::copy(
        a.config().state_dir.join("root.key"),
        b.config().state_dir.join("root.key"),
    )
    .unwrap();
    let err = b.open_tpm().ensure_root_key().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("root.key") && msg.contains("cleared"), "{msg}");
}

/// Thousands of operations, successful and failing, on one store: the TPM's transient objects
/// and sessions stay at the store's fixed set (primary, root wrap key, at most one cached signing
/// key; one salted session), and dropping the store flushes all of it.
#[test]
fn thousands_of_operations_leak_no_tpm_handles() {
    const OPS: usize = 2000;
    let fx = TpmFixture::new();
    let fresh = {
        let ks = fx.open_tpm();
        ks.loaded_handles().unwrap()
    };
    assert_eq!(
        fresh,
        LoadedHandles {
            transient_objects: 1,
            sessions: 1
        },
        "a new store holds only the primary and its salted session"
    );
    let ks = fx.open_tpm();
    // The previous store's drop flushed everything it had loaded.
    assert_eq!(ks.loaded_handles().unwrap(), fresh);
    let spki_a = ks.signing_key("leak-a").unwrap();
    let spki_b = ks.signing_key("leak-b").unwrap();
    let pcrs = SealPolicy::Pcrs(PcrSelection::new(&[16]).unwrap());
    let sealed_pcr = ks.seal(&pcrs, b"pcr secret").unwrap();
    let mut wrong_pcr = sealed_pcr.clone();
    wrong_pcr.policy = SealPolicy::Pcrs(PcrSelection::new(&[17]).unwrap());
    let sealed_wrap = ks.seal(&SealPolicy::WrapKey, b"wrap secret").unwrap();
    let start = Instant::now();
    let mut max_seen = LoadedHandles {
        transient_objects: 0,
        sessions: 0,
    };
    for i in 0..OPS {
        assert!(
            start.elapsed() < Duration::from_secs(600),
            "{i} operations took over 10 minutes"
        );
        let (key, wrapped) = ks.generate_data_key().unwrap();
        let back = ks.unwrap_data_key(&wrapped).unwrap();
        assert!(key.with_bytes(|a| back.with_bytes(|b| a == b)));
        match i % 10 {
            0 => {
                let mut bad = wrapped.clone();
                bad.blob[5] ^= 0x80;
                assert!(ks.unwrap_data_key(&bad).is_err());
            }
            1 => {
                let msg = i.to_be_bytes();
                let (label, spki) = if i % 20 == 1 {
                    ("leak-a", &spki_a)
                } else {
                    ("leak-b", &spki_b)
                };
                assert!(verify(&spki.0, &msg, &ks.sign(label, &msg).unwrap()));
            }
            2 if i % 50 == 2 => {
                assert_eq!(ks.unseal(&sealed_pcr).unwrap().expose(), b"pcr secret");
                assert!(matches!(
                    ks.unseal(&wrong_pcr),
                    Err(Error::PolicyNotSatisfied { .. })
                ));
                let s = ks.seal(&pcrs, b"x").unwrap();
                assert_eq!(ks.unseal(&s).unwrap().expose(), b"x");
            }
            3 => {
                assert_eq!(ks.unseal(&sealed_wrap).unwrap().expose(), b"wrap secret");
                let mut r = [0u8; 40];
                ks.random(&mut r).unwrap();
            }
            _ => {}
        }
        if i % 100 == 0 || i == OPS - 1 {
            let h = ks.loaded_handles().unwrap();
            max_seen.transient_objects = max_seen.transient_objects.max(h.transient_objects);
            max_seen.sessions = max_seen.sessions.max(h.sessions);
            assert!(
                h.transient_objects <= 3 && h.sessions == 1,
                "handles grew after {i} operations: {h:?}"
            );
        }
    }
    eprintln!(
        "{OPS} iterations in {:?}; most loaded at a check: {max_seen:?}",
        start.elapsed()
    );
    drop(ks);
    let ks = fx.open_tpm();
    assert_eq!(
        ks.loaded_handles().unwrap(),
        fresh,
        "dropping the store did not flush its handles"
    );
}

/// Without bus encryption (firmware TPMs) the same operations work, with no session held open,
/// and blobs stay compatible: they depend on the keys, not on how commands were protected.
#[test]
fn without_parameter_encryption_everything_works_and_blobs_interoperate() {
    let fx = TpmFixture::new();
    let (wrapped, sealed, spki) = {
        let ks = fx.open_tpm();
        let (_, wrapped) = ks.generate_data_key().unwrap();
        let sealed = ks
            .seal(&SealPolicy::Pcrs(PcrSelection::new(&[3]).unwrap()), b"s")
            .unwrap();
        (wrapped, sealed, ks.signing_key("plain").unwrap())
    };
    let ks = TpmKeyStore::open(&TpmConfig {
        parameter_encryption: false,
        ..fx.config()
    })
    .unwrap();
    let key = ks.unwrap_data_key(&wrapped).unwrap();
    let rewrapped = ks.wrap_data_key(&key).unwrap();
    assert!(ks
        .unwrap_data_key(&rewrapped)
        .unwrap()
        .with_bytes(|a| key.with_bytes(|b| a == b)));
    assert_eq!(ks.unseal(&sealed).unwrap().expose(), b"s");
    let mut bad = sealed.clone();
    bad.policy = SealPolicy::Pcrs(PcrSelection::new(&[4]).unwrap());
    assert!(matches!(
        ks.unseal(&bad),
        Err(Error::PolicyNotSatisfied { .. })
    ));
    assert!(verify(&spki.0, b"m", &ks.sign("plain", b"m").unwrap()));
    let mut r = [0u8; 70];
    ks.random(&mut r).unwrap();
    assert_ne!(r, [0u8; 70]);
    assert_eq!(
        ks.loaded_handles().unwrap(),
        LoadedHandles {
            transient_objects: 3,
            sessions: 0
        },
        "primary, root wrap key and the cached signing key; no session"
    );
}
