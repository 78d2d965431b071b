//! Uplink decision requirements (issue 3), on a fake clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::Lcg;
use pop_linkmon_core::{
    Decision, FailureReason, HealthInput, ProbeOutcome, SelectorConfig, SelectorEvent,
    SwitchReason, UplinkId, UplinkSelector, Verdict,
};

const MS: Duration = Duration::from_millis(1);
const PRIMARY: UplinkId = UplinkId(0);
const BACKUP: UplinkId = UplinkId(1);

fn carrier(up: bool) -> HealthInput {
    HealthInput::Carrier { up }
}
fn bfd(up: bool) -> HealthInput {
    HealthInput::Bfd { up }
}
fn probe(ok: bool) -> HealthInput {
    HealthInput::Probe {
        target: 0,
        outcome: if ok {
            ProbeOutcome::Reply
        } else {
            ProbeOutcome::Miss
        },
    }
}

fn cfg() -> SelectorConfig {
    SelectorConfig {
        hold_down: Duration::from_secs(10),
        ..SelectorConfig::default()
    }
}

/// Feeds carrier up, BFD up and a probe reply for `id`.
fn healthy(s: &mut UplinkSelector, now: Instant, id: UplinkId) {
    for i in [carrier(true), bfd(true), probe(true)] {
        s.handle_input(now, id, i).unwrap();
    }
}

fn decisions(s: &mut UplinkSelector) -> Vec<Decision> {
    std::iter::from_fn(|| s.poll_decision()).collect()
}

fn events(s: &mut UplinkSelector) -> Vec<SelectorEvent> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

fn switch(d: &Decision) -> (Option<UplinkId>, UplinkId, SwitchReason) {
    match d {
        Decision::Switch {
            from, to, reason, ..
        } => (*from, *to, *reason),
        _ => unreachable!("unexpected decision {d:?}"),
    }
}

/// Both healthy at start: primary chosen.
fn started(t0: Instant) -> UplinkSelector {
    let mut s = UplinkSelector::new(cfg(), t0).unwrap();
    healthy(&mut s, t0, BACKUP);
    assert!(decisions(&mut s).is_empty(), "must wait for the primary");
    healthy(&mut s, t0 + MS, PRIMARY);
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(switch(&d[0]), (None, PRIMARY, SwitchReason::Startup));
    events(&mut s);
    s
}

#[test]
fn fails_over_after_n_consecutive_probe_misses() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let first_miss = t0 + Duration::from_secs(1);
    s.handle_input(first_miss, PRIMARY, probe(false)).unwrap();
    s.handle_input(first_miss + 100 * MS, PRIMARY, probe(false))
        .unwrap();
    assert!(
        decisions(&mut s).is_empty(),
        "2 misses of 3 must not switch"
    );
    let third = first_miss + 200 * MS;
    s.handle_input(third, PRIMARY, probe(false)).unwrap();
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0],
        Decision::Switch {
            from: Some(PRIMARY),
            to: BACKUP,
            reason: SwitchReason::Failover(FailureReason::ProbesMissed),
            fault_seen_at: Some(first_miss),
            decided_at: third,
        }
    );
    assert_eq!(s.active(), Some(BACKUP));
}

#[test]
fn a_reply_between_misses_resets_the_count() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let mut t = t0 + Duration::from_secs(1);
    for ok in [false, false, true, false, false, true, false, false] {
        s.handle_input(t, PRIMARY, probe(ok)).unwrap();
        t += 100 * MS;
    }
    assert!(decisions(&mut s).is_empty());
    assert_eq!(s.active(), Some(PRIMARY));
}

#[test]
fn carrier_loss_and_bfd_down_fail_over_at_once() {
    for (input, reason) in [
        (carrier(false), FailureReason::CarrierDown),
        (bfd(false), FailureReason::BfdDown),
    ] {
        let t0 = Instant::now();
        let mut s = started(t0);
        let t = t0 + Duration::from_secs(2);
        s.handle_input(t, PRIMARY, input).unwrap();
        let d = decisions(&mut s);
        assert_eq!(d.len(), 1);
        assert_eq!(
            switch(&d[0]),
            (Some(PRIMARY), BACKUP, SwitchReason::Failover(reason))
        );
        assert!(
            matches!(d[0], Decision::Switch { fault_seen_at: Some(f), decided_at, .. } if f == t && decided_at == t)
        );
    }
}

#[test]
fn no_failover_under_2_percent_random_loss_with_3_probes() {
    // The deployed shape: two probe targets per uplink, one probe to each every 100 ms, fail
    // after 3 consecutive misses on both. 2 % loss each way (≈ 4 % per round trip), 60 simulated
    // seconds, 20 seeds. One target alone would fail over in ≈ 4 % of such minutes
    // (600 × 0.04³), which is why the verdict needs every target to miss.
    let mut c = cfg();
    for u in &mut c.uplinks {
        u.probe_targets = 2;
    }
    for seed in 0..20 {
        let t0 = Instant::now();
        let mut s = UplinkSelector::new(c.clone(), t0).unwrap();
        for id in [PRIMARY, BACKUP] {
            s.handle_input(t0, id, carrier(true)).unwrap();
            s.handle_input(t0, id, bfd(true)).unwrap();
            for target in 0..2 {
                let outcome = ProbeOutcome::Reply;
                s.handle_input(t0, id, HealthInput::Probe { target, outcome })
                    .unwrap();
            }
        }
        assert_eq!(switch(&decisions(&mut s)[0]).1, PRIMARY);
        let mut rng = Lcg(seed);
        let mut t = t0;
        let mut misses = 0;
        for _ in 0..600 {
            t += 100 * MS;
            for id in [PRIMARY, BACKUP] {
                for target in 0..2 {
                    let lost = rng.next_f64() < 0.02 || rng.next_f64() < 0.02;
                    misses += usize::from(lost);
                    let outcome = if lost {
                        ProbeOutcome::Miss
                    } else {
                        ProbeOutcome::Reply
                    };
                    s.handle_input(t, id, HealthInput::Probe { target, outcome })
                        .unwrap();
                }
            }
            s.handle_timeout(t);
        }
        assert!(
            misses > 50,
            "seed {seed}: the loss model must actually lose ({misses})"
        );
        assert!(
            decisions(&mut s).is_empty(),
            "seed {seed}: switched under 2 % loss"
        );
        assert_eq!(s.active(), Some(PRIMARY));
    }
}

#[test]
fn fails_back_only_after_hold_down() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let t1 = t0 + Duration::from_secs(1);
    s.handle_input(t1, PRIMARY, carrier(false)).unwrap();
    assert_eq!(decisions(&mut s).len(), 1);
    let t2 = t1 + Duration::from_secs(1);
    s.handle_input(t2, PRIMARY, carrier(true)).unwrap();
    // Carrier back is not enough while BFD is still down.
    s.handle_input(t2, PRIMARY, bfd(false)).unwrap();
    s.handle_input(t2 + 500 * MS, PRIMARY, bfd(true)).unwrap();
    let healthy_at = t2 + 500 * MS;
    assert_eq!(s.poll_timeout(), Some(healthy_at + Duration::from_secs(10)));
    s.handle_timeout(healthy_at + Duration::from_secs(10) - MS);
    assert!(
        decisions(&mut s).is_empty(),
        "failed back before the hold-down"
    );
    assert_eq!(s.active(), Some(BACKUP));
    s.handle_timeout(healthy_at + Duration::from_secs(10));
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(
        switch(&d[0]),
        (Some(BACKUP), PRIMARY, SwitchReason::Failback)
    );
}

#[test]
fn a_new_fault_during_hold_down_restarts_it() {
    let t0 = Instant::now();
    let mut s = started(t0);
    s.handle_input(t0 + Duration::from_secs(1), PRIMARY, carrier(false))
        .unwrap();
    s.handle_input(t0 + Duration::from_secs(2), PRIMARY, carrier(true))
        .unwrap();
    s.handle_input(t0 + Duration::from_secs(8), PRIMARY, carrier(false))
        .unwrap();
    s.handle_input(t0 + Duration::from_secs(9), PRIMARY, carrier(true))
        .unwrap();
    s.handle_timeout(t0 + Duration::from_secs(12));
    assert_eq!(decisions(&mut s).len(), 1, "only the failover");
    s.handle_timeout(t0 + Duration::from_secs(19));
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(switch(&d[0]).2, SwitchReason::Failback);
}

#[test]
fn damping_suppresses_a_flapping_uplink() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let mut t = t0 + Duration::from_secs(1);
    // Three failures in a few seconds exceed the suppress threshold (default 2500 for 1000 each).
    for _ in 0..3 {
        s.handle_input(t, PRIMARY, carrier(false)).unwrap();
        t += Duration::from_secs(1);
        s.handle_input(t, PRIMARY, carrier(true)).unwrap();
        t += Duration::from_secs(1);
    }
    let ev = events(&mut s);
    assert!(ev
        .iter()
        .any(|e| matches!(e, SelectorEvent::Suppressed { uplink, .. } if *uplink == PRIMARY)));
    assert!(s.status(PRIMARY).unwrap().suppressed);
    assert_eq!(s.status(PRIMARY).unwrap().verdict, Verdict::Healthy);
    decisions(&mut s);
    // Healthy for far longer than the hold-down, but suppressed: no fail-back.
    s.handle_timeout(t + Duration::from_secs(30));
    assert!(decisions(&mut s).is_empty());
    assert_eq!(s.active(), Some(BACKUP));
    // Once the penalty decays below reuse, the fail-back happens.
    let mut steps = 0;
    while s.active() != Some(PRIMARY) {
        let next = s.poll_timeout().expect("a reuse timer must be pending");
        s.handle_timeout(next);
        steps += 1;
        assert!(steps < 10, "no fail-back after reuse");
    }
    let ev = events(&mut s);
    let reused_at = ev
        .iter()
        .find_map(|e| match e {
            SelectorEvent::Reused { uplink, at } if *uplink == PRIMARY => Some(*at),
            _ => None,
        })
        .unwrap();
    // 3000-ish penalty decays below 800 after about two half-lives (60 s each).
    assert!(
        reused_at - t > Duration::from_secs(90),
        "{:?}",
        reused_at - t
    );
    assert_eq!(switch(&decisions(&mut s)[0]).2, SwitchReason::Failback);
}

#[test]
fn both_down_keeps_last_good_without_switching_and_recovers() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let t1 = t0 + Duration::from_secs(1);
    s.handle_input(t1, PRIMARY, bfd(false)).unwrap();
    assert_eq!(decisions(&mut s).len(), 1);
    events(&mut s);
    s.handle_input(t1 + MS, BACKUP, bfd(false)).unwrap();
    assert!(decisions(&mut s).is_empty(), "no switch to a dead uplink");
    assert!(s.all_down());
    assert_eq!(s.active(), Some(BACKUP));
    assert!(events(&mut s)
        .iter()
        .any(|e| matches!(e, SelectorEvent::AllDown { keep, .. } if *keep == BACKUP)));
    // More bad news and time do not make it loop.
    for k in 0..100u32 {
        let t = t1 + Duration::from_millis(10 * u64::from(k) + 2);
        s.handle_input(t, PRIMARY, carrier(k % 2 == 0)).unwrap();
        s.handle_input(t, BACKUP, probe(false)).unwrap();
        s.handle_timeout(t);
    }
    assert!(decisions(&mut s).is_empty());
    assert!(
        events(&mut s)
            .iter()
            .all(|e| !matches!(e, SelectorEvent::AllDown { .. })),
        "AllDown reported once"
    );
    // The primary recovers first: traffic moves at once (the active one is dead).
    let t2 = t1 + Duration::from_secs(5);
    healthy(&mut s, t2, PRIMARY);
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(switch(&d[0]).1, PRIMARY);
    assert!(!s.all_down());
    assert!(events(&mut s)
        .iter()
        .any(|e| matches!(e, SelectorEvent::AllDownCleared { .. })));
}

#[test]
fn both_down_then_last_good_recovers_stays_put() {
    let t0 = Instant::now();
    let mut s = started(t0);
    s.handle_input(t0 + MS * 10, PRIMARY, carrier(false))
        .unwrap();
    s.handle_input(t0 + MS * 20, BACKUP, carrier(false))
        .unwrap();
    decisions(&mut s);
    assert!(s.all_down());
    s.handle_input(t0 + MS * 30, BACKUP, carrier(true)).unwrap();
    assert!(!s.all_down());
    assert!(decisions(&mut s).is_empty());
    assert_eq!(s.active(), Some(BACKUP));
}

#[test]
fn primary_down_at_start_chooses_backup_then_fails_back_after_hold_down() {
    let t0 = Instant::now();
    let mut s = UplinkSelector::new(cfg(), t0).unwrap();
    s.handle_input(t0, PRIMARY, carrier(false)).unwrap();
    assert!(decisions(&mut s).is_empty());
    healthy(&mut s, t0 + 5 * MS, BACKUP);
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1);
    assert_eq!(switch(&d[0]), (None, BACKUP, SwitchReason::Startup));
    let up = t0 + Duration::from_secs(3);
    s.handle_input(up, PRIMARY, carrier(true)).unwrap();
    healthy(&mut s, up, PRIMARY);
    s.handle_timeout(up + Duration::from_secs(5));
    assert!(decisions(&mut s).is_empty());
    s.handle_timeout(up + Duration::from_secs(10));
    assert_eq!(switch(&decisions(&mut s)[0]).2, SwitchReason::Failback);
}

#[test]
fn start_waits_for_the_primary_only_for_the_grace() {
    let t0 = Instant::now();
    let mut s = UplinkSelector::new(cfg(), t0).unwrap();
    healthy(&mut s, t0, BACKUP);
    // Primary has carrier but its BFD is not Up yet: wait.
    s.handle_input(t0, PRIMARY, carrier(true)).unwrap();
    s.handle_input(t0, PRIMARY, bfd(false)).unwrap();
    s.handle_timeout(t0 + Duration::from_secs(4));
    assert!(decisions(&mut s).is_empty());
    assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    s.handle_timeout(t0 + Duration::from_secs(5));
    let d = decisions(&mut s);
    assert_eq!(switch(&d[0]), (None, BACKUP, SwitchReason::Startup));
}

#[test]
fn everything_down_at_start_keeps_primary_and_says_so() {
    let t0 = Instant::now();
    let mut s = UplinkSelector::new(cfg(), t0).unwrap();
    s.handle_input(t0, PRIMARY, carrier(false)).unwrap();
    s.handle_input(t0, BACKUP, carrier(false)).unwrap();
    let d = decisions(&mut s);
    assert_eq!(switch(&d[0]), (None, PRIMARY, SwitchReason::Startup));
    assert!(s.all_down());
    healthy(&mut s, t0 + Duration::from_secs(1), BACKUP);
    assert_eq!(switch(&decisions(&mut s)[0]).1, BACKUP);
}

#[test]
fn media_silence_hint_fails_over_at_once_when_enabled() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let t = t0 + Duration::from_secs(1);
    s.handle_input(t, PRIMARY, HealthInput::MediaSilence)
        .unwrap();
    assert_eq!(
        switch(&decisions(&mut s)[0]).2,
        SwitchReason::Failover(FailureReason::MediaSilence)
    );

    let mut c = cfg();
    c.act_on_media_silence = false;
    let mut s = UplinkSelector::new(c, t0).unwrap();
    healthy(&mut s, t0, PRIMARY);
    healthy(&mut s, t0, BACKUP);
    decisions(&mut s);
    s.handle_input(t, PRIMARY, HealthInput::MediaSilence)
        .unwrap();
    assert!(decisions(&mut s).is_empty());
}

#[test]
fn bad_config_and_unknown_ids_are_refused() {
    let t0 = Instant::now();
    let mut c = cfg();
    c.probe_miss_threshold = 0;
    let e = UplinkSelector::new(c, t0).unwrap_err().to_string();
    assert!(e.contains("probe_miss_threshold"), "{e}");
    let mut c = cfg();
    c.uplinks.clear();
    assert!(UplinkSelector::new(c, t0)
        .unwrap_err()
        .to_string()
        .contains("uplinks"));
    let mut c = cfg();
    c.damping.reuse_below = c.damping.suppress_above + 1.0;
    assert!(UplinkSelector::new(c, t0)
        .unwrap_err()
        .to_string()
        .contains("damping"));
    let mut s = UplinkSelector::new(cfg(), t0).unwrap();
    assert!(s.handle_input(t0, UplinkId(7), carrier(true)).is_err());
    assert!(s
        .handle_input(
            t0,
            PRIMARY,
            HealthInput::Probe {
                target: 3,
                outcome: ProbeOutcome::Miss
            }
        )
        .is_err());
}

#[test]
fn tuning_changes_while_running_keep_the_state_and_apply_from_the_next_input() {
    let t0 = Instant::now();
    let mut s = started(t0);
    let before = s.tuning();
    let mut bad = before;
    bad.probe_miss_threshold = 0;
    assert!(
        s.set_tuning(&bad, t0).is_err(),
        "validated like a whole config"
    );
    assert_eq!(s.tuning(), before, "nothing changed after a refusal");

    // One miss is enough now, and the hold-down shrinks to 2 s.
    let mut fast = before;
    fast.probe_miss_threshold = 1;
    fast.hold_down = Duration::from_secs(2);
    let t1 = t0 + Duration::from_secs(1);
    s.set_tuning(&fast, t1).unwrap();
    assert_eq!(s.active(), Some(PRIMARY), "the choice is kept");
    s.handle_input(t1, PRIMARY, probe(false)).unwrap();
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1, "one miss fails over under the new threshold");
    let t2 = t1 + Duration::from_secs(1);
    s.handle_input(t2, PRIMARY, probe(true)).unwrap();
    s.handle_input(t2, PRIMARY, probe(true)).unwrap();
    s.handle_input(t2, PRIMARY, probe(true)).unwrap();
    s.handle_timeout(t2 + Duration::from_secs(2));
    let d = decisions(&mut s);
    assert_eq!(d.len(), 1, "failback after the new 2 s hold-down: {d:?}");
    assert_eq!(
        switch(&d[0]),
        (Some(BACKUP), PRIMARY, SwitchReason::Failback)
    );
}
