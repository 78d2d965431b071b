//! End-to-end failover smoke test: one carrier-loss trial of the failover benchmark
//! (`failover-bench`, hil/rig) on the virtual rig — `popd relay` and `popd linkmon` in the
//! appliance, FRR bfdd in the carriers, one call with 50 packets/s RTP both ways — asserting
//! linkmon switched and media flowed again both ways within 2 s (the promise).
//!
//! Needs root, iproute2, nftables and FRR (scripts/setup), and the binaries built first:
//! `cargo build -p popd && cargo build -p pop-rig --bin failover-bench`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use pop_system_tests::binaries;

/// `$FAILOVER_BENCH_BIN`, else the newest of target/{release,debug}/failover-bench.
fn failover_bench() -> PathBuf {
    if let Some(p) = std::env::var_os("FAILOVER_BENCH_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("failover-bench"))
        .filter_map(|p| Some((p.metadata().and_then(|m| m.modified()).ok()?, p)))
        .max_by_key(|(m, _)| *m)
        .map(|(_, p)| p)
        .unwrap_or_else(|| {
            panic!(
                "failover-bench is not built (looked in {}/{{release,debug}}): run \
                 `cargo build -p pop-rig --bin failover-bench` first, or set FAILOVER_BENCH_BIN",
                target.display()
            )
        })
}

#[test]
fn carrier_loss_fails_over_and_media_resumes_within_2_s() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test creates network namespaces: run it as root"
    );
    assert!(
        Path::new("/usr/lib/frr/bfdd").exists(),
        "FRR is not installed: run scripts/setup as root"
    );
    let popd = binaries::popd().unwrap_or_else(|e| panic!("{e}"));
    let bench = failover_bench();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("temp dir: {e}"));
    let json = dir.path().join("report.json");
    let t0 = Instant::now();
    // The child tears its rig down itself, also on error; it is bounded by its own limits
    // (every wait in the benchmark has one), so a plain wait suffices.
    let out = Command::new(&bench)
        .args([
            "--trials",
            "1",
            "--modes",
            "carrier-loss",
            "--no-frr",
            "--no-checks",
        ])
        .arg("--popd")
        .arg(&popd)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bench.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        t0.elapsed() < Duration::from_secs(120),
        "one trial took {:?}",
        t0.elapsed()
    );
    // 0: every target met, 1: a target missed (carrier loss ≤ 10 ms is strict), 2: run failed.
    assert_ne!(out.status.code(), Some(2), "the benchmark run failed");
    assert!(out.status.code().is_some(), "killed by a signal");
    let text = std::fs::read_to_string(&json).unwrap_or_else(|e| panic!("reading report: {e}"));
    let report: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("report is not JSON: {e}"));
    let trial = &report["trials"][0];
    assert_eq!(trial["mode"], "carrier-loss");
    assert_eq!(trial["monitor"], "linkmon");
    assert!(
        trial["error"].is_null(),
        "trial had problems: {}",
        trial["error"]
    );
    let reason = trial["reason"].as_str().unwrap_or_default();
    assert!(
        ["carrier_down", "bfd_down", "probes_missed"].contains(&reason),
        "linkmon did not fail over (reason {reason:?})"
    );
    for dir in ["app_to_core", "core_to_app"] {
        let d = &trial[dir];
        let gap = d["gap_ms"].as_f64().unwrap_or(f64::INFINITY);
        assert!(gap <= 2000.0, "{dir}: media gap {gap} ms");
        // Either nothing was lost, or the first packet after the gap arrived within 2 s.
        let lost = d["loss"]["lost"].as_u64().unwrap_or(u64::MAX);
        let resumed = d["resumed_ms"].as_f64();
        assert!(
            lost == 0 || resumed.is_some_and(|r| r <= 2000.0),
            "{dir}: media did not resume within 2 s (lost {lost}, resumed {resumed:?})"
        );
        assert!(
            d["loss"]["sent"].as_u64().unwrap_or(0) > 10,
            "{dir}: no media sent"
        );
    }
    assert!(
        trial["app_to_core"]["detect_ms"].as_f64().is_some(),
        "no linkmon switch event"
    );
    assert!(
        trial["failback_after_ms"]
            .as_f64()
            .is_some_and(|f| f >= 2500.0),
        "failback missing or before the 2.5 s hold-down: {}",
        trial["failback_after_ms"]
    );
}
