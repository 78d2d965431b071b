//! Store tests: versions, refusals, interrupted trials, and a simulated crash after every step
//! of `stage` and `commit`.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::Path;

use crate::tests::minimal;
use crate::*;

fn cfg(version: u64) -> ApplianceConfig {
    parse(&minimal(version)).unwrap()
}

/// A config distinguishable from `cfg(version)` by more than its version.
fn cfg_sessions(version: u64, max_sessions: u32) -> ApplianceConfig {
    let mut c = cfg(version);
    c.relay.max_sessions = max_sessions;
    c
}

fn open(dir: &Path) -> (ConfigStore, Option<InterruptedTrial>) {
    ConfigStore::open(dir).unwrap()
}

/// Running v2 (max_sessions 2), previous v1 (max_sessions 1).
fn store_at_v2(dir: &Path) -> ConfigStore {
    let (mut s, _) = open(dir);
    s.stage(cfg_sessions(1, 1)).unwrap();
    s.commit().unwrap();
    s.stage(cfg_sessions(2, 2)).unwrap();
    s.commit().unwrap();
    s
}

/// (running version, running max_sessions, previous version, candidate present)
fn snapshot(s: &ConfigStore) -> (u64, Option<u32>, Option<u64>, bool) {
    (
        s.running_version(),
        s.running().map(|c| c.relay.max_sessions),
        s.previous().map(|c| c.version),
        s.candidate().is_some(),
    )
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn fresh_store_is_empty_then_commits_and_keeps_the_previous() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("cfg");
    let (mut s, interrupted) = open(&dir);
    assert_eq!(interrupted, None);
    assert_eq!(snapshot(&s), (0, None, None, false));
    assert!(matches!(s.commit(), Err(StoreError::NoCandidate)));
    assert!(matches!(
        s.discard_candidate(),
        Err(StoreError::NoCandidate)
    ));

    s.stage(cfg_sessions(1, 1)).unwrap();
    assert_eq!(snapshot(&s), (0, None, None, true));
    s.commit().unwrap();
    assert_eq!(snapshot(&s), (1, Some(1), None, false));
    s.stage(cfg_sessions(5, 5)).unwrap();
    s.commit().unwrap();
    assert_eq!(snapshot(&s), (5, Some(5), Some(1), false));
    assert_eq!(files(&dir), ["previous.toml", "running.toml", "state"]);

    drop(s);
    let (s, interrupted) = open(&dir);
    assert_eq!(interrupted, None);
    assert_eq!(snapshot(&s), (5, Some(5), Some(1), false));
    assert_eq!(s.running(), Some(&cfg_sessions(5, 5)));
}

#[test]
fn replay_downgrade_and_invalid_are_refused_and_running_is_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = store_at_v2(tmp.path());
    let before = fs::read(tmp.path().join("running.toml")).unwrap();

    match s.stage(cfg_sessions(2, 99)) {
        Err(StoreError::Replay {
            version: 2,
            running: 2,
        }) => {}
        other => panic!("expected Replay, got {other:?}"),
    }
    match s.stage(cfg(1)) {
        Err(StoreError::Downgrade {
            version: 1,
            running: 2,
        }) => {}
        other => panic!("expected Downgrade, got {other:?}"),
    }
    let mut bad = cfg(3);
    bad.firewall.sip_peers = vec!["192.0.2.0/24".into(), "192.0.2.300".into()];
    match s.stage(bad) {
        Err(StoreError::Invalid(e)) => assert_eq!(e.field, "firewall.sip_peers[1]"),
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert_eq!(snapshot(&s), (2, Some(2), Some(1), false));
    assert_eq!(fs::read(tmp.path().join("running.toml")).unwrap(), before);
    assert!(!tmp.path().join("candidate.toml").exists());

    // A second candidate while one is under trial is refused too.
    s.stage(cfg(3)).unwrap();
    assert!(matches!(
        s.stage(cfg(4)),
        Err(StoreError::CandidatePending { version: 3 })
    ));
    s.discard_candidate().unwrap();
    assert_eq!(snapshot(&s), (2, Some(2), Some(1), false));
    assert!(!tmp.path().join("candidate.toml").exists());
}

#[test]
fn interrupted_trial_is_discarded_and_reported_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = store_at_v2(tmp.path());
    s.stage(cfg_sessions(3, 3)).unwrap();
    drop(s); // the agent dies during the health window

    let (s, interrupted) = open(tmp.path());
    assert_eq!(interrupted, Some(InterruptedTrial { version: 3 }));
    assert_eq!(snapshot(&s), (2, Some(2), Some(1), false));
    assert!(!tmp.path().join("candidate.toml").exists());
    drop(s);
    let (_, again) = open(tmp.path());
    assert_eq!(again, None, "reported once");
}

#[test]
fn crash_after_every_step_of_commit_reopens_to_old_or_new_exactly() {
    let old = (2, Some(2), Some(1), false);
    let new = (3, Some(3), Some(2), false);
    let (mut saw_old, mut saw_new) = (false, false);
    for n in 1..=20 {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store_at_v2(tmp.path());
        s.stage(cfg_sessions(3, 3)).unwrap();
        s.crash_after(n);
        let result = s.commit();
        drop(s);
        let (s, interrupted) = open(tmp.path());
        let got = snapshot(&s);
        if got == old {
            assert_eq!(
                interrupted,
                Some(InterruptedTrial { version: 3 }),
                "step {n}"
            );
            saw_old = true;
        } else {
            assert_eq!(got, new, "step {n}: neither old nor new");
            assert_eq!(interrupted, None, "step {n}");
            saw_new = true;
        }
        // The documents themselves match the state, not just the versions.
        assert_eq!(s.running().unwrap().relay.max_sessions as u64, got.0);
        assert_eq!(
            files(tmp.path()),
            ["previous.toml", "running.toml", "state"]
        );
        // And the reopened store is fully usable.
        drop(s);
        let (mut s, _) = open(tmp.path());
        s.stage(cfg(10)).unwrap();
        s.commit().unwrap();
        assert_eq!(s.previous().unwrap().version, got.0);
        if result.is_ok() {
            // The hook's step count was past the last step: every crash point was covered.
            assert!(n > 4, "commit has more than 4 steps");
            break;
        }
        assert!(n < 20, "commit never completed");
    }
    assert!(saw_old && saw_new, "both outcomes exercised");
}

#[test]
fn crash_during_the_first_commit_is_safe_too() {
    for n in 1..=20 {
        let tmp = tempfile::tempdir().unwrap();
        let (mut s, _) = open(tmp.path());
        s.stage(cfg(1)).unwrap();
        s.crash_after(n);
        let done = s.commit().is_ok();
        drop(s);
        let (s, interrupted) = open(tmp.path());
        match snapshot(&s) {
            (0, None, None, false) => {
                assert_eq!(interrupted, Some(InterruptedTrial { version: 1 }))
            }
            (1, Some(4000), None, false) => assert_eq!(interrupted, None),
            other => panic!("step {n}: {other:?}"),
        }
        if done {
            break;
        }
    }
}

#[test]
fn crash_after_every_step_of_stage_keeps_running() {
    for n in 1..=10 {
        let tmp = tempfile::tempdir().unwrap();
        let mut s = store_at_v2(tmp.path());
        s.crash_after(n);
        let done = s.stage(cfg(3)).is_ok();
        drop(s);
        let (s, interrupted) = open(tmp.path());
        assert_eq!(snapshot(&s), (2, Some(2), Some(1), false), "step {n}");
        // Only a candidate that reached its final name counts as a trial.
        let renamed = n >= 3;
        assert_eq!(interrupted.is_some(), renamed || done, "step {n}");
        assert!(!files(tmp.path()).iter().any(|f| f.ends_with(".tmp")));
        if done {
            break;
        }
    }
}

#[test]
fn foreign_combinations_are_refused_as_corrupt() {
    let tmp = tempfile::tempdir().unwrap();
    drop(store_at_v2(tmp.path()));
    fs::write(tmp.path().join("running.toml"), minimal(7)).unwrap();
    match ConfigStore::open(tmp.path()) {
        Err(StoreError::Corrupt { reason, .. }) => {
            assert!(reason.contains("running version 2"), "{reason}")
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    fs::write(tmp.path().join("running.toml"), "version = ").unwrap();
    assert!(matches!(
        ConfigStore::open(tmp.path()),
        Err(StoreError::Corrupt { .. })
    ));
    fs::write(tmp.path().join("state"), "running = \"x\"").unwrap();
    assert!(matches!(
        ConfigStore::open(tmp.path()),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn provisioned_running_toml_without_state_is_adopted() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("running.toml"), minimal(4)).unwrap();
    fs::write(tmp.path().join("previous.toml"), minimal(3)).unwrap();
    let (mut s, _) = open(tmp.path());
    assert_eq!(
        snapshot(&s),
        (4, Some(4000), None, false),
        "stray previous ignored"
    );
    assert!(matches!(s.stage(cfg(4)), Err(StoreError::Replay { .. })));
    s.stage(cfg(5)).unwrap();
    s.commit().unwrap();
    drop(s);
    let (s, _) = open(tmp.path());
    assert_eq!(
        (s.running_version(), s.previous().map(|p| p.version)),
        (5, Some(4))
    );
}
