//! Key store benchmark: per backend, the latency of unwrap, seal, unseal and sign, and
//! AES-256-GCM cost through the store's data key path versus raw `ring` in the same run.
//!
//! Run in release: `cargo run --release -p pop-keystore --example keystore-bench [-- --quick]`.
//! Backends: dev (temp dir) and pkcs11 (a SoftHSM2 token in a temp dir, created here); the
//! SoftHSM2 package must be installed.

use std::hint::black_box;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_keystore::dev::DevKeyStore;
use pop_keystore::pkcs11::Pkcs11KeyStore;
use pop_keystore::{KeyStore, PacketSealer, Profile, SealPolicy};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

struct Latency {
    mean: Duration,
    p99: Duration,
}

fn latency(iters: usize, mut f: impl FnMut()) -> Latency {
    f(); // warm caches and lazily created keys
    let mut samples: Vec<Duration> = (0..iters)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    let total: Duration = samples.iter().sum();
    let p99 = samples[(samples.len() * 99 / 100).min(samples.len() - 1)];
    Latency {
        mean: total / iters as u32,
        p99,
    }
}

fn show(name: &str, l: &Latency) {
    println!(
        "  {name:<22} mean {:>10.1} us   p99 {:>10.1} us",
        l.mean.as_secs_f64() * 1e6,
        l.p99.as_secs_f64() * 1e6
    );
}

/// Runs `f` over `units` items repeatedly for about `budget`; returns seconds per item.
fn per_item(budget: Duration, units: u64, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut rounds = 0u64;
    while start.elapsed() < budget {
        f();
        rounds += 1;
    }
    start.elapsed().as_secs_f64() / (rounds * units) as f64
}

fn bench_backend(name: &str, ks: Arc<dyn KeyStore>, quick: bool) {
    let iters = if quick { 50 } else { 500 };
    let budget = Duration::from_millis(if quick { 200 } else { 400 });
    println!("backend {name}");
    ks.ensure_root_key().expect("root key");
    let (_, wrapped) = ks.generate_data_key().expect("generate data key");
    show(
        "unwrap data key",
        &latency(iters, || {
            drop(black_box(ks.unwrap_data_key(&wrapped).expect("unwrap")))
        }),
    );
    let secret = [0x42u8; 32];
    show(
        "seal 32 B",
        &latency(iters, || {
            drop(black_box(
                ks.seal(&SealPolicy::WrapKey, &secret).expect("seal"),
            ))
        }),
    );
    let sealed = ks.seal(&SealPolicy::WrapKey, &secret).expect("seal");
    show(
        "unseal 32 B",
        &latency(iters, || {
            drop(black_box(ks.unseal(&sealed).expect("unseal")))
        }),
    );
    ks.signing_key("bench").expect("signing key");
    show(
        "sign (ECDSA P-256)",
        &latency(iters, || {
            drop(black_box(
                ks.sign("bench", b"handshake transcript").expect("sign"),
            ))
        }),
    );

    // Same key bytes for both paths so only the code path differs.
    let key = ks.unwrap_data_key(&wrapped).expect("unwrap");
    let raw =
        key.with_bytes(|b| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, b).expect("ring key")));

    // Alternate the two paths over several rounds and keep each one's best, so noise from other
    // processes on the machine does not land on one side only.
    let (mut store_bulk, mut ring_bulk, mut store_pkt, mut ring_pkt) =
        (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    let mut big = vec![0u8; 64 * 1024];
    let mut n = 0u64;
    let mut sealer = PacketSealer::new(ks.unwrap_data_key(&wrapped).expect("unwrap"));
    let mut packet = [0u8; 160];
    let aad = [0u8; 12]; // e.g. an RTP header
    const BATCH: u64 = 1000;
    let mut counter = 0u64;
    for _round in 0..if quick { 1 } else { 5 } {
        store_bulk = store_bulk.min(per_item(budget, big.len() as u64, || {
            n += 1;
            let _ = black_box(
                key.seal_in_place_separate_tag(PacketSealer::nonce(n), b"bulk", &mut big)
                    .expect("seal"),
            );
        }));
        ring_bulk = ring_bulk.min(per_item(budget, big.len() as u64, || {
            n += 1;
            let nonce = Nonce::assume_unique_for_key(PacketSealer::nonce(n));
            let _ = black_box(
                raw.seal_in_place_separate_tag(nonce, Aad::from(b"bulk"), &mut big)
                    .expect("seal"),
            );
        }));
        store_pkt = store_pkt.min(per_item(budget, BATCH, || {
            for _ in 0..BATCH {
                let _ = black_box(sealer.seal(&aad, &mut packet).expect("seal"));
            }
        }));
        ring_pkt = ring_pkt.min(per_item(budget, BATCH, || {
            for _ in 0..BATCH {
                counter += 1;
                let nonce = Nonce::assume_unique_for_key(PacketSealer::nonce(counter));
                let _ = black_box(
                    raw.seal_in_place_separate_tag(nonce, Aad::from(&aad), &mut packet)
                        .expect("seal"),
                );
            }
        }));
    }
    println!(
        "  AES-256-GCM 64 KiB     store {:>8.0} MB/s   ring {:>8.0} MB/s   store/ring time {:.3}",
        1e-6 / store_bulk,
        1e-6 / ring_bulk,
        store_bulk / ring_bulk
    );
    println!(
        "  160 B packet seal      store {:>8.1} ns     ring {:>8.1} ns     store/ring time {:.3}",
        store_pkt * 1e9,
        ring_pkt * 1e9,
        store_pkt / ring_pkt
    );
}

fn softhsm_store(dir: &Path) -> Arc<dyn KeyStore> {
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "{SOFTHSM_MODULE} missing: install softhsm2 (scripts/setup)"
    );
    let tokens = dir.join("tokens");
    std::fs::create_dir_all(&tokens).expect("token dir");
    let conf = dir.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .expect("write conf");
    // Before the module is loaded, which happens below.
    std::env::set_var("SOFTHSM2_CONF", &conf);
    let out = Command::new("softhsm2-util")
        .args([
            "--init-token",
            "--free",
            "--label",
            "bench",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ])
        .output()
        .expect("run softhsm2-util (install softhsm2)");
    assert!(
        out.status.success(),
        "softhsm2-util: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pin = cryptoki::types::AuthPin::new("1234".into());
    Arc::new(
        Pkcs11KeyStore::open_with_pin(Path::new(SOFTHSM_MODULE), "bench", pin, "pop-root-wrap")
            .expect("open token"),
    )
}

// The swtpm fixture the TPM tests use: starts a private simulator on loopback, killed by PID.
#[path = "../tests/tpm_support/mod.rs"]
mod tpm_support;

fn tpm_store(
    swtpm: &tpm_support::Swtpm,
    dir: &Path,
    parameter_encryption: bool,
) -> Arc<dyn KeyStore> {
    let config = pop_keystore::tpm::TpmConfig {
        tcti: swtpm.tcti(),
        state_dir: dir.to_path_buf(),
        parameter_encryption,
    };
    Arc::new(pop_keystore::tpm::TpmKeyStore::open(&config).expect("open TPM store"))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    if cfg!(debug_assertions) {
        println!("warning: debug build; run with --release for meaningful figures");
    }
    let tmp = tempfile::tempdir().expect("temp dir");
    let dev = DevKeyStore::open(&tmp.path().join("dev"), Profile::Development).expect("dev store");
    bench_backend("dev", Arc::new(dev), quick);
    bench_backend(
        "pkcs11 (SoftHSM2)",
        softhsm_store(&tmp.path().join("softhsm")),
        quick,
    );
    // swtpm serves one connection at a time: each store is dropped before the next opens.
    let swtpm = tpm_support::Swtpm::start();
    bench_backend(
        "tpm (swtpm, bus encryption on)",
        tpm_store(&swtpm, &tmp.path().join("tpm"), true),
        quick,
    );
    bench_backend(
        "tpm (swtpm, bus encryption off)",
        tpm_store(&swtpm, &tmp.path().join("tpm"), false),
        quick,
    );
}
