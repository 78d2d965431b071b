//! The rig is removed when its owner panics (Drop during unwinding) and, when its owner is
//! killed outright, by the stale-run cleanup (what `pop-rig cleanup` and every later
//! `Rig::build` run). Each case runs the rig in a child test process: this binary re-executed
//! with `POP_RIG_TEARDOWN_CHILD` set, running only the `child_process_body` test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pop_rig::{cleanup_stale, existing_namespaces, state_root, Rig, RigOptions, Role};

const CHILD_ENV: &str = "POP_RIG_TEARDOWN_CHILD";
const OUT_ENV: &str = "POP_RIG_TEARDOWN_OUT";

/// Runs only inside the child process (see the module comment); in the parent it does nothing
/// and says so, because it is the child's body rather than a test of its own.
#[test]
fn child_process_body() {
    let Ok(mode) = std::env::var(CHILD_ENV) else {
        println!("child body: only runs when re-executed by the teardown tests");
        return;
    };
    let out = PathBuf::from(std::env::var(OUT_ENV).expect("output file"));
    let rig = Rig::build(RigOptions::default()).expect("build");
    let sleeper = rig
        .spawn(Role::Core, "/bin/sleep", &["120"], "sleeper")
        .expect("spawn");
    let names: Vec<String> = Role::ALL.iter().map(|r| rig.ns(*r).to_owned()).collect();
    let report = format!(
        "{}\n{}\n{}\n",
        rig.run_dir().display(),
        sleeper.pid(),
        names.join(" ")
    );
    std::fs::write(&out, report).expect("write report");
    match mode.as_str() {
        "panic" => panic!("child panics with the rig up (expected)"),
        _ => std::thread::sleep(Duration::from_secs(120)),
    }
}

struct ChildReport {
    run_dir: PathBuf,
    sleeper: u32,
    namespaces: Vec<String>,
}

fn read_report(path: &Path) -> Option<ChildReport> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut lines = text.lines();
    Some(ChildReport {
        run_dir: PathBuf::from(lines.next()?),
        sleeper: lines.next()?.parse().ok()?,
        namespaces: lines
            .next()?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
    })
}

fn spawn_child(mode: &str, out: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "--exact",
            "child_process_body",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, mode)
        .env(OUT_ENV, out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child test process")
}

fn out_file(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "pop-rig-{tag}-{}-{}",
        std::process::id(),
        rand_suffix()
    ))
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
}

fn assert_all_gone(report: &ChildReport) {
    let existing = existing_namespaces().expect("ip netns list");
    for n in &report.namespaces {
        assert!(!existing.contains(n), "namespace {n} left behind");
    }
    assert!(
        !report.run_dir.exists(),
        "{} left behind",
        report.run_dir.display()
    );
    let stat =
        std::fs::read_to_string(format!("/proc/{}/stat", report.sleeper)).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "sleeper {} still runs",
        report.sleeper
    );
}

#[test]
fn a_panicking_owner_still_tears_the_rig_down() {
    let out = out_file("panic");
    let mut child = spawn_child("panic", &out);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let report = read_report(&out).expect("child wrote no report: did the rig build?");
    let _ = std::fs::remove_file(&out);
    assert!(!status.success(), "child should have failed by panicking");
    assert_all_gone(&report);
}

#[test]
fn a_killed_owner_is_cleaned_up_from_its_state_file() {
    let out = out_file("kill");
    let mut child = spawn_child("sleep", &out);
    let start = Instant::now();
    let report = loop {
        if let Some(r) = read_report(&out) {
            break r;
        }
        if start.elapsed() > Duration::from_secs(60) || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child never reported its rig");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = std::fs::remove_file(&out);
    child.kill().expect("SIGKILL the child");
    child.wait().expect("reap the child");
    // SIGKILL runs no destructor: everything is still there...
    let existing = existing_namespaces().expect("ip netns list");
    for n in &report.namespaces {
        assert!(existing.contains(n), "{n} vanished without cleanup?");
    }
    assert!(report.run_dir.exists());
    // ...until the stale-run cleanup reads the state file.
    let cleaned = cleanup_stale(&state_root());
    assert!(
        cleaned.errors.is_empty(),
        "cleanup errors: {:?}",
        cleaned.errors
    );
    for n in &report.namespaces {
        assert!(
            cleaned.namespaces.contains(n),
            "cleanup did not report {n}: {cleaned:?}"
        );
    }
    assert_all_gone(&report);
}
