//! Applying a pushed configuration: validate, persist as a candidate, hand each service its
//! part, watch health for a window, then commit — or restore what ran before and say why.
//!
//! The order makes every crash safe: the candidate is on disk before any service sees it, and
//! a candidate found on disk at start-up (the agent died during the window) is discarded and
//! the running configuration re-applied ([`reassert_running`]). Health is judged against the
//! problems that existed before the push, so a push is not blamed for a fault it did not cause
//! (and may be the fix for).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pop_agent_proto::{ConfigOutcome, ConfigResult};
use pop_config::{ApplianceConfig, ConfigStore, StoreError};

use crate::services::Services;

/// How often health is checked during the window.
pub const HEALTH_CHECK_EVERY: Duration = Duration::from_millis(250);
/// Consecutive failed checks that condemn a configuration (one lost probe is not a fault).
pub const FAILED_CHECKS_TO_ROLL_BACK: u32 = 2;

/// What happened to a push, for the result message, the event and the audit record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyReport {
    /// The outcome message for the control plane.
    pub result: ConfigResult,
    /// The version running before the push.
    pub previous_version: u64,
}

/// Validates and applies `document` as `version`; blocks for the health window.
pub fn apply_push(
    store: &mut ConfigStore,
    services: &mut dyn Services,
    version: u64,
    document: &str,
    window: Duration,
) -> ApplyReport {
    let previous_version = store.running_version();
    let refused = |field: String, reason: String| ApplyReport {
        result: ConfigResult {
            version,
            outcome: ConfigOutcome::Refused { field, reason },
            running_version: previous_version,
        },
        previous_version,
    };
    let cfg = match pop_config::parse(document) {
        Ok(c) => c,
        Err(e) => return refused(e.field, e.reason),
    };
    if cfg.version != version {
        return refused(
            "version".into(),
            format!(
                "the document says version {} but was pushed as {version}",
                cfg.version
            ),
        );
    }
    // Pushes are delivered at least once (the control plane re-sends until it has a result):
    // the version already running, with the same content, is acknowledged, not refused.
    if version == previous_version && store.running() == Some(&cfg) {
        return ApplyReport {
            result: ConfigResult {
                version,
                outcome: ConfigOutcome::Applied,
                running_version: version,
            },
            previous_version,
        };
    }
    let before: BTreeSet<String> = services.problems().into_iter().collect();
    let snapshot = services.snapshot();
    if let Err(e) = store.stage(cfg.clone()) {
        return match e {
            StoreError::Invalid(ce) => refused(ce.field, ce.reason),
            StoreError::Replay { .. } | StoreError::Downgrade { .. } => {
                refused("version".into(), e.to_string())
            }
            other => refused("store".into(), other.to_string()),
        };
    }
    let failure = match services.apply(&cfg) {
        Err(part) => Some(format!("{} refused: {}", part.field, part.reason)),
        Ok(()) => watch(services, &before, window),
    };
    let Some(reason) = failure else {
        return match store.commit() {
            Ok(()) => ApplyReport {
                result: ConfigResult {
                    version,
                    outcome: ConfigOutcome::Applied,
                    running_version: version,
                },
                previous_version,
            },
            Err(e) => {
                roll_back(store, services, &snapshot);
                rolled_back(version, previous_version, format!("cannot commit: {e}"))
            }
        };
    };
    roll_back(store, services, &snapshot);
    rolled_back(version, previous_version, reason)
}

fn rolled_back(version: u64, previous_version: u64, reason: String) -> ApplyReport {
    ApplyReport {
        result: ConfigResult {
            version,
            outcome: ConfigOutcome::RolledBack { reason },
            running_version: previous_version,
        },
        previous_version,
    }
}

/// Watches health for `window`; returns why it failed, if it did.
fn watch(
    services: &mut dyn Services,
    before: &BTreeSet<String>,
    window: Duration,
) -> Option<String> {
    let end = Instant::now() + window;
    let mut failed_in_a_row = 0;
    loop {
        let new: Vec<String> = services
            .problems()
            .into_iter()
            .filter(|p| !before.contains(p))
            .collect();
        if new.is_empty() {
            failed_in_a_row = 0;
        } else {
            failed_in_a_row += 1;
            if failed_in_a_row >= FAILED_CHECKS_TO_ROLL_BACK {
                return Some(format!("health dropped: {}", new.join("; ")));
            }
        }
        // A failure streak still open at the end of the window is decided by the next check,
        // not by the clock: a probe can take longer than the window has left (bounded: a
        // pass ends the streak, a second failure ends the watch).
        if Instant::now() >= end && failed_in_a_row == 0 {
            return None;
        }
        let left = end.saturating_duration_since(Instant::now());
        std::thread::sleep(if left.is_zero() {
            HEALTH_CHECK_EVERY
        } else {
            HEALTH_CHECK_EVERY.min(left)
        });
    }
}

/// Puts back what ran before: the running configuration if there is one, else the snapshot.
fn roll_back(
    store: &mut ConfigStore,
    services: &mut dyn Services,
    snapshot: &crate::services::Snapshot,
) {
    if let Err(e) = store.discard_candidate() {
        tracing::error!(error = %e, "cannot discard the failed candidate configuration");
    }
    let restored = match store.running() {
        Some(running) => services
            .apply(running)
            .map_err(|p| format!("{}: {}", p.field, p.reason)),
        None => services
            .restore(snapshot)
            .map_err(|p| format!("{}: {}", p.field, p.reason)),
    };
    if let Err(e) = restored {
        tracing::error!(error = %e, "restoring the previous configuration failed");
    }
}

/// At start-up: hands the running configuration to the services again (they may have
/// restarted with their file defaults, or a trial was interrupted by a crash).
pub fn reassert_running(store: &ConfigStore, services: &mut dyn Services) -> Option<String> {
    let running: &ApplianceConfig = store.running()?;
    services
        .apply(running)
        .err()
        .map(|p| format!("{}: {}", p.field, p.reason))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::services::{PartError, Snapshot};

    /// Services whose health breaks when a config with `max_sessions == 13` is applied.
    #[derive(Default)]
    struct Fake {
        applied: Vec<u64>,
        restored: usize,
        broken: bool,
    }

    impl Services for Fake {
        fn snapshot(&mut self) -> Snapshot {
            Snapshot::default()
        }
        fn apply(&mut self, cfg: &ApplianceConfig) -> Result<(), PartError> {
            self.applied.push(cfg.version);
            self.broken = cfg.relay.max_sessions == 13;
            Ok(())
        }
        fn restore(&mut self, _: &Snapshot) -> Result<(), PartError> {
            self.restored += 1;
            self.broken = false;
            Ok(())
        }
        fn problems(&mut self) -> Vec<String> {
            if self.broken {
                vec!["relay: broken".into()]
            } else {
                Vec::new()
            }
        }
    }

    fn doc(version: u64, max_sessions: u32) -> String {
        let mut cfg = pop_config::parse(&format!(
            "version = {version}\n[firewall]\ncontrol_plane = [\"192.0.2.1:7443\"]\n\
             management_networks = [\"192.0.2.0/24\"]\n"
        ))
        .unwrap();
        cfg.relay.max_sessions = max_sessions;
        cfg.to_toml()
    }

    #[test]
    fn healthy_push_commits_and_a_replay_or_downgrade_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = ConfigStore::open(dir.path()).unwrap();
        let mut svc = Fake::default();
        let w = Duration::from_millis(300);
        let r = apply_push(&mut store, &mut svc, 2, &doc(2, 100), w);
        assert_eq!(r.result.outcome, ConfigOutcome::Applied);
        assert_eq!(store.running_version(), 2);
        let again = apply_push(&mut store, &mut svc, 2, &doc(2, 100), w);
        assert_eq!(
            again.result.outcome,
            ConfigOutcome::Applied,
            "a re-delivered push is acknowledged"
        );
        for (v, sessions) in [(2, 101), (1, 100)] {
            let r = apply_push(&mut store, &mut svc, v, &doc(v, sessions), w);
            assert!(
                matches!(&r.result.outcome, ConfigOutcome::Refused { field, .. } if field == "version"),
                "{r:?}"
            );
        }
        assert_eq!(svc.applied, vec![2], "refusals touch no service");
    }

    #[test]
    fn invalid_document_is_refused_with_the_field_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = ConfigStore::open(dir.path()).unwrap();
        let mut svc = Fake::default();
        let r = apply_push(
            &mut store,
            &mut svc,
            3,
            &doc(3, 0),
            Duration::from_millis(300),
        );
        match r.result.outcome {
            ConfigOutcome::Refused { field, .. } => assert_eq!(field, "relay.max_sessions"),
            other => panic!("{other:?}"),
        }
        assert_eq!(store.running_version(), 0);
        assert!(svc.applied.is_empty());
    }

    #[test]
    fn a_push_that_breaks_health_is_rolled_back_to_the_running_config() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = ConfigStore::open(dir.path()).unwrap();
        let mut svc = Fake::default();
        let w = Duration::from_millis(600);
        apply_push(&mut store, &mut svc, 4, &doc(4, 100), w);
        let r = apply_push(&mut store, &mut svc, 5, &doc(5, 13), w);
        assert!(
            matches!(&r.result.outcome, ConfigOutcome::RolledBack { reason } if reason.contains("relay: broken")),
            "{r:?}"
        );
        assert_eq!(r.result.running_version, 4);
        assert_eq!(store.running_version(), 4);
        assert_eq!(
            svc.applied,
            vec![4, 5, 4],
            "the running config was re-applied"
        );
        assert!(!svc.broken);
    }

    /// Health that fails once, slowly, right at the end of a short window: the streak must be
    /// decided by another check, not by the clock.
    struct SlowFailure {
        checks: u32,
    }

    impl Services for SlowFailure {
        fn snapshot(&mut self) -> Snapshot {
            Snapshot::default()
        }
        fn apply(&mut self, _: &ApplianceConfig) -> Result<(), PartError> {
            Ok(())
        }
        fn restore(&mut self, _: &Snapshot) -> Result<(), PartError> {
            Ok(())
        }
        fn problems(&mut self) -> Vec<String> {
            self.checks += 1;
            if self.checks == 1 {
                return Vec::new(); // the baseline before the push
            }
            std::thread::sleep(Duration::from_millis(400)); // a probe timing out
            vec!["control plane unreachable".into()]
        }
    }

    #[test]
    fn a_failure_streak_open_when_the_window_ends_still_rolls_back() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = ConfigStore::open(dir.path()).unwrap();
        let mut svc = SlowFailure { checks: 0 };
        let r = apply_push(
            &mut store,
            &mut svc,
            1,
            &doc(1, 100),
            Duration::from_millis(300),
        );
        assert!(
            matches!(r.result.outcome, ConfigOutcome::RolledBack { .. }),
            "{r:?}"
        );
        assert_eq!(store.running_version(), 0);
    }

    #[test]
    fn the_first_push_breaking_health_restores_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = ConfigStore::open(dir.path()).unwrap();
        let mut svc = Fake::default();
        let r = apply_push(
            &mut store,
            &mut svc,
            1,
            &doc(1, 13),
            Duration::from_millis(600),
        );
        assert!(matches!(r.result.outcome, ConfigOutcome::RolledBack { .. }));
        assert_eq!(svc.restored, 1);
        assert_eq!(store.running_version(), 0);
    }
}
