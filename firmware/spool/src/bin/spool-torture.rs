//! Crash-test driver for `tests/kill9.rs`: opens the spool in the directory given on the
//! command line (dev key store in the second directory) and appends records forever, mixed
//! classes, single and batched, with some acknowledgements. It prints `durable <id>` (flushed)
//! right after each append returns, and `acked <id>` after each acknowledgement returns, so
//! whoever kills it with SIGKILL knows what the spool promised.
//!
//! A record's class, creation time and body are functions of its id (see [`class_for`] and
//! [`body_for`]; the test has copies), so the checker needs nothing but the id.
//!
//! Usage: `spool-torture <spool dir> <key store dir>`

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use pop_keystore::dev::DevKeyStore;
use pop_keystore::{KeyStore, Profile};
use pop_spool::{NewRecord, RecordClass, Spool, SpoolConfig};

/// The class of record `id`.
fn class_for(id: u64) -> RecordClass {
    match id % 4 {
        0 => RecordClass::Telemetry,
        1 => RecordClass::Event,
        2 => RecordClass::Cdr,
        _ => RecordClass::Audit,
    }
}

/// The body of record `id`: 1 to 700 bytes, every byte depending on the id.
fn body_for(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(37) % 700) as usize + 1;
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|i| (x >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect()
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(ks_dir)) = (args.next(), args.next()) else {
        return Err("usage: spool-torture <spool dir> <key store dir>".into());
    };
    let ks: Arc<dyn KeyStore> = Arc::new(DevKeyStore::open(
        &PathBuf::from(ks_dir),
        Profile::Development,
    )?);
    let cfg = SpoolConfig {
        dir: PathBuf::from(dir),
        max_bytes: 64 << 20,
        segment_bytes: 16 << 10,
        alarm_percent: 80,
    };
    let (mut spool, _) = Spool::open(cfg, ks)?;
    let mut out = std::io::stdout().lock();
    for n in 1u64.. {
        let next = spool.stats().last_id + 1;
        let ids = if n % 5 == 0 {
            let bodies: Vec<Vec<u8>> = (next..next + 3).map(body_for).collect();
            let recs: Vec<NewRecord<'_>> = (next..next + 3)
                .zip(&bodies)
                .map(|(id, body)| NewRecord {
                    class: class_for(id),
                    created_unix_ms: id,
                    body,
                })
                .collect();
            spool.append_batch(&recs)?
        } else {
            vec![spool.append(class_for(next), next, &body_for(next))?]
        };
        for (i, id) in ids.iter().enumerate() {
            if *id != next + i as u64 {
                return Err(format!("expected id {}, got {id}", next + i as u64).into());
            }
            writeln!(out, "durable {id}")?;
        }
        out.flush()?;
        if n % 16 == 0 && next > 40 {
            spool.ack_up_to(next - 40)?;
            writeln!(out, "acked {}", next - 40)?;
            out.flush()?;
        }
    }
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("spool-torture: {e}");
        std::process::exit(1);
    }
}
