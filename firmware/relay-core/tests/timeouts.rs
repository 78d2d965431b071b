//! Timeout requirements: no media, maximum duration, unanswered offer. Each closes the call,
//! removes its streams and puts its ports into quarantine; the sweep polls statistics rarely.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod common;

use std::time::Duration;

use common::*;
use pop_relay_core::{CoreConfig, RelayCore};

fn established(core: &mut RelayCore, media: &mut FakeMedia, clock: &Clock, call: &str) {
    let o = core.handle_request(
        clock.now(),
        media,
        &offer_req(call, "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    assert_eq!(result(&o), "ok");
    let a = core.handle_request(
        clock.now(),
        media,
        &answer_req(call, "alice", "bob", &sdp("192.0.2.20", 5000, 1, "")),
    );
    assert_eq!(result(&a), "ok");
}

fn assert_closed_and_released(core: &RelayCore, media: &FakeMedia) {
    assert_eq!(core.session_count(), 0);
    assert!(media.streams.is_empty(), "streams left in the data plane");
    assert!(media.bound.is_empty(), "ports left bound");
    assert_eq!(core.counters().ports_in_use, 0);
    assert!(
        core.counters().ports_quarantined > 0,
        "released ports go to quarantine"
    );
}

#[test]
fn no_media_timeout_closes_a_call_that_never_received_a_packet() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        no_media_timeout: Duration::from_secs(60),
        ..config()
    });
    established(&mut core, &mut media, &clock, "c1");
    let next = core.poll_timeouts(clock.now(), &mut media);
    assert_eq!(next, Some(clock.now() + Duration::from_secs(60)));
    core.poll_timeouts(clock.advance(Duration::from_secs(59)), &mut media);
    assert_eq!(core.session_count(), 1);
    let next = core.poll_timeouts(clock.advance(Duration::from_secs(1)), &mut media);
    assert_closed_and_released(&core, &media);
    assert_eq!(core.counters().sessions_timed_out_no_media, 1);
    assert_eq!(next, None, "no timers left");
}

#[test]
fn media_flowing_keeps_the_call_and_statistics_are_polled_rarely() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        no_media_timeout: Duration::from_secs(60),
        ..config()
    });
    established(&mut core, &mut media, &clock, "c1");
    media.set_idle(Some(20));
    // An hour of a driver polling every 10 ms would be 360,000 polls; simulate 10 minutes at
    // 100 ms and count how often the core asked the data plane.
    for _ in 0..6000 {
        core.poll_timeouts(clock.advance(Duration::from_millis(100)), &mut media);
    }
    assert_eq!(core.session_count(), 1);
    assert!(
        media.stats_calls <= 12,
        "{} stats polls in 10 minutes",
        media.stats_calls
    );
    // Media stops: the call ends one timeout after the last packet.
    media.set_idle(Some(60_000));
    let next = core
        .poll_timeouts(clock.now(), &mut media)
        .expect("a timer is set");
    core.poll_timeouts(next, &mut media);
    assert_closed_and_released(&core, &media);
}

#[test]
fn one_direction_of_media_is_enough_to_keep_a_call() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    established(&mut core, &mut media, &clock, "c1");
    let id = media.only_stream().id;
    media.stats.entry(id).or_default().from_b.idle_ms = Some(5);
    core.poll_timeouts(clock.advance(Duration::from_secs(61)), &mut media);
    assert_eq!(core.session_count(), 1);
}

#[test]
fn unanswered_offer_timeout_closes_and_releases() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let t = Duration::from_secs(120);
    let mut core = core_with(CoreConfig {
        unanswered_offer_timeout: t,
        ..config()
    });
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    // Ringing without early media longer than the no-media timeout is fine.
    core.poll_timeouts(clock.advance(Duration::from_secs(90)), &mut media);
    assert_eq!(core.session_count(), 1);
    core.poll_timeouts(clock.advance(Duration::from_secs(30)), &mut media);
    assert_closed_and_released(&core, &media);
    assert_eq!(core.counters().sessions_timed_out_unanswered, 1);
}

#[test]
fn max_duration_closes_even_with_media_flowing() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let max = Duration::from_secs(3600);
    let mut core = core_with(CoreConfig {
        max_duration: Some(max),
        ..config()
    });
    established(&mut core, &mut media, &clock, "c1");
    media.set_idle(Some(10));
    let start = clock.now();
    let mut polls = 0;
    while core.session_count() > 0 && polls < 1000 {
        let Some(next) = core.poll_timeouts(clock.now(), &mut media) else {
            break;
        };
        clock.advance(next - clock.now());
        polls += 1;
    }
    assert_eq!(
        clock.now() - start,
        max,
        "closed exactly at the maximum duration"
    );
    assert_closed_and_released(&core, &media);
    assert_eq!(core.counters().sessions_timed_out_max_duration, 1);
    assert!(
        polls <= 70,
        "jumping from deadline to deadline took {polls} polls"
    );
}

#[test]
fn reinvite_counts_as_activity_for_the_no_media_timeout() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    established(&mut core, &mut media, &clock, "c1");
    clock.advance(Duration::from_secs(50));
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req(
            "c1",
            "alice",
            &sdp("198.51.100.10", 4000, 2, "a=sendonly\r\n"),
        ),
    );
    core.poll_timeouts(clock.advance(Duration::from_secs(20)), &mut media);
    assert_eq!(
        core.session_count(),
        1,
        "closed 70 s after setup despite a re-INVITE at 50 s"
    );
    core.poll_timeouts(clock.advance(Duration::from_secs(40)), &mut media);
    assert_eq!(core.session_count(), 0);
}

#[test]
fn many_due_timers_are_handled_in_bounded_batches() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        port_min: 20000,
        port_max: 29999,
        unanswered_offer_timeout: Duration::from_secs(10),
        ..config()
    });
    for i in 0..1000 {
        core.handle_request(
            clock.now(),
            &mut media,
            &offer_req(&format!("c{i}"), "a", &sdp("198.51.100.10", 4000, 1, "")),
        );
    }
    clock.advance(Duration::from_secs(10));
    let next = core.poll_timeouts(clock.now(), &mut media);
    assert!(
        core.session_count() > 0,
        "all 1000 closed in one poll: not bounded"
    );
    assert_eq!(
        next,
        Some(clock.now()),
        "more work due: poll again immediately"
    );
    for _ in 0..10 {
        core.poll_timeouts(clock.now(), &mut media);
    }
    assert_eq!(core.session_count(), 0);
    assert!(media.bound.is_empty());
}
