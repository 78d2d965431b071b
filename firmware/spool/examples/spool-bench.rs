//! Append throughput of the spool for 1 KiB records: one fdatasync per append, and
//! `append_batch` with one fdatasync per batch.
//!
//! Usage: `cargo run --release -p pop-spool --example spool-bench [dir] [records]`
//! (default: a fresh directory under the system temp dir, 2000 records). The figures depend on
//! the file system: on tmpfs fdatasync costs nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use pop_keystore::dev::DevKeyStore;
use pop_keystore::{KeyStore, Profile};
use pop_spool::{NewRecord, RecordClass, Spool, SpoolConfig};

const RECORD: usize = 1024;
const BATCH: usize = 64;

fn report(what: &str, unit: &str, n: usize, secs: f64) {
    let per_s = n as f64 / secs;
    println!(
        "{what:<32} {n:>7} records in {secs:>7.3} s: {per_s:>10.0} {unit}/s, {:>8.2} MB/s",
        per_s * RECORD as f64 / 1e6
    );
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(PathBuf::from).unwrap_or_else(|| {
        std::env::temp_dir().join(format!("spool-bench-{}", std::process::id()))
    });
    let n: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);
    let ks: Arc<dyn KeyStore> =
        Arc::new(DevKeyStore::open(&base.join("ks"), Profile::Development)?);
    let body = vec![0xA5u8; RECORD];
    println!(
        "spool-bench: {} ({n} records of {RECORD} bytes)",
        base.display()
    );

    for (name, batch) in [
        ("append (fdatasync each)", 1),
        ("append_batch (64, one fdatasync)", BATCH),
    ] {
        let dir = base.join(format!("spool-{batch}"));
        let cfg = SpoolConfig {
            dir: dir.clone(),
            max_bytes: 1 << 30,
            segment_bytes: 4 << 20,
            alarm_percent: 90,
        };
        let (mut spool, _) = Spool::open(cfg, Arc::clone(&ks))?;
        let recs: Vec<NewRecord<'_>> = (0..batch)
            .map(|_| NewRecord {
                class: RecordClass::Telemetry,
                created_unix_ms: 0,
                body: &body,
            })
            .collect();
        let start = Instant::now();
        let mut done = 0;
        while done < n {
            if batch == 1 {
                spool.append(RecordClass::Telemetry, 0, &body)?;
                done += 1;
            } else {
                let k = batch.min(n - done);
                done += spool.append_batch(&recs[..k])?.len();
            }
        }
        report(name, "appends", done, start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut after = 0;
        let mut read = 0;
        loop {
            let page = spool.pending_after(after, 256)?;
            let Some(last) = page.last() else { break };
            after = last.id;
            read += page.len();
        }
        report(
            "  read back (pending_after 256)",
            "reads",
            read,
            start.elapsed().as_secs_f64(),
        );
        drop(spool);
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::remove_dir_all(&base)?;
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("spool-bench: {e}");
        std::process::exit(1);
    }
}
