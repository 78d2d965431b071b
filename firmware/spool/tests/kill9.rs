//! SIGKILL the torture driver 100 times at random moments; after each kill the spool must hold
//! every record it reported durable and that was not acknowledged, byte for byte, with no
//! corrupt record, ids strictly increasing across runs, and appends must still work.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pop_keystore::dev::DevKeyStore;
use pop_keystore::{KeyStore, Profile};
use pop_spool::{RecordClass, Spool, SpoolConfig};
use rand::{Rng, SeedableRng};

const RUNS: usize = 100;
const BUDGET: Duration = Duration::from_secs(90);

// Copies of the driver's functions (src/bin/spool-torture.rs).
fn class_for(id: u64) -> RecordClass {
    match id % 4 {
        0 => RecordClass::Telemetry,
        1 => RecordClass::Event,
        2 => RecordClass::Cdr,
        _ => RecordClass::Audit,
    }
}

fn body_for(id: u64) -> Vec<u8> {
    let len = (id.wrapping_mul(37) % 700) as usize + 1;
    let x = id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|i| (x >> ((i % 8) * 8)) as u8 ^ i as u8)
        .collect()
}

/// Kills the child (by its own PID, through `Child::kill`) if the test fails midway.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn kill_9_never_loses_a_durable_record() {
    let exe = env!("CARGO_BIN_EXE_spool-torture");
    let tmp = tempfile::TempDir::new().unwrap();
    let spool_dir = tmp.path().join("spool");
    let ks_dir = tmp.path().join("ks");
    let ks: Arc<dyn KeyStore> = Arc::new(DevKeyStore::open(&ks_dir, Profile::Development).unwrap());
    let cfg = SpoolConfig {
        dir: spool_dir.clone(),
        max_bytes: 64 << 20,
        segment_bytes: 16 << 10,
        alarm_percent: 80,
    };
    let seed: u64 = std::env::var("SPOOL_KILL9_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("kill9: seed {seed} (set SPOOL_KILL9_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let started = Instant::now();

    // Every id ever reported durable (by the driver or by our own check append).
    let mut durable: BTreeMap<u64, ()> = BTreeMap::new();
    let mut acked_printed = 0u64;
    let (mut truncated_total, mut truncations, mut killed_before_first) = (0u64, 0usize, 0usize);
    let mut max_pending = 0u64;

    for run in 0..RUNS {
        assert!(
            started.elapsed() < BUDGET,
            "over the time budget at run {run}"
        );
        let child = Command::new(exe)
            .arg(&spool_dir)
            .arg(&ks_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut guard = ChildGuard(Some(child));
        let child = guard.0.as_mut().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).map(|_| s)
        });
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..=60)));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        guard.0 = None;
        assert_eq!(
            status.signal(),
            Some(9),
            "run {run}: the driver did not die by SIGKILL ({status:?}); stderr: {stderr}"
        );
        let out = reader.join().unwrap().unwrap();

        let mut run_ids = Vec::new();
        for line in out.lines() {
            match line.split_once(' ') {
                Some(("durable", id)) => run_ids.push(id.parse::<u64>().unwrap()),
                Some(("acked", id)) => acked_printed = acked_printed.max(id.parse().unwrap()),
                // The kill can cut the last line short; it was not a complete promise.
                _ => assert!(
                    !out.ends_with('\n') && out.ends_with(line),
                    "run {run}: bad line {line:?}"
                ),
            }
        }
        if run_ids.is_empty() {
            killed_before_first += 1;
        }
        let prev_max = durable.keys().next_back().copied().unwrap_or(0);
        for w in run_ids.windows(2) {
            assert!(w[0] < w[1], "run {run}: ids not increasing: {w:?}");
        }
        if let Some(first) = run_ids.first() {
            assert!(
                *first > prev_max,
                "run {run}: id {first} reused (previous max {prev_max})"
            );
        }
        durable.extend(run_ids.iter().map(|id| (*id, ())));

        // Recover and check.
        let (mut sp, rep) = Spool::open(cfg.clone(), Arc::clone(&ks)).unwrap();
        assert_eq!(rep.corrupt_records, 0, "run {run}: {rep:?}");
        assert_eq!(rep.quarantined_segments, 0, "run {run}: {rep:?}");
        if rep.truncated_tail_bytes > 0 {
            truncations += 1;
            truncated_total += rep.truncated_tail_bytes;
        }
        let st = sp.stats();
        assert!(
            st.acked_up_to >= acked_printed,
            "run {run}: ack went backwards"
        );
        let pending = sp.pending_after(0, usize::MAX).unwrap();
        assert_eq!(sp.stats().corrupt_records, 0, "run {run}");
        max_pending = max_pending.max(pending.len() as u64);
        for w in pending.windows(2) {
            assert!(w[0].id < w[1].id, "run {run}: pending not ascending");
        }
        let by_id: BTreeMap<u64, _> = pending.iter().map(|r| (r.id, r)).collect();
        for id in durable.range(st.acked_up_to + 1..).map(|(id, _)| *id) {
            let r = by_id
                .get(&id)
                .unwrap_or_else(|| panic!("run {run}: durable record {id} lost"));
            assert_eq!(r.body, body_for(id), "run {run}: body of {id}");
            assert_eq!(
                (r.class, r.created_unix_ms),
                (class_for(id), id),
                "run {run}: {id}"
            );
        }
        // Whatever else is pending was written just before a kill: still a valid record.
        for r in &pending {
            assert_eq!(
                r.body,
                body_for(r.id),
                "run {run}: body of undeclared {}",
                r.id
            );
        }
        // Appends still work, above everything seen.
        let next = st.last_id + 1;
        let id = sp.append(class_for(next), next, &body_for(next)).unwrap();
        assert_eq!(id, next);
        assert!(id > durable.keys().next_back().copied().unwrap_or(0));
        durable.insert(id, ());
    }
    println!(
        "kill9: {RUNS} runs in {:.1} s: {} records reported durable, {} runs killed before their \
         first append, {truncations} recoveries truncated a torn tail ({truncated_total} bytes), \
         at most {max_pending} records pending, acked up to {acked_printed}",
        started.elapsed().as_secs_f64(),
        durable.len(),
        killed_before_first,
    );
    assert!(
        durable.len() > RUNS,
        "the driver barely ran; the test proves nothing"
    );
}
