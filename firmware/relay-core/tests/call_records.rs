//! Call records of ended calls and limits changed while calls run (configuration pushes).

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod common;

use std::time::Duration;

use common::*;
use pop_relay_core::{CloseReason, CoreConfig, LiveLimits};

#[test]
fn an_ended_call_leaves_one_record_with_times_tags_metadata_and_reason() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let created = clock.now();
    let offer = with(
        offer_req("rec-1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
        "metadata",
        "from:+15551230001|to:+15551230002".into(),
    );
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &offer)),
        "ok"
    );
    let answered = clock.advance(Duration::from_secs(3));
    let answer = answer_req("rec-1", "alice", "bob", &sdp("192.0.2.20", 5000, 1, ""));
    assert_eq!(
        result(&core.handle_request(answered, &mut media, &answer)),
        "ok"
    );
    assert!(core.take_ended_calls().is_empty(), "nothing ended yet");
    let ended = clock.advance(Duration::from_secs(42));
    let del = delete_req("rec-1", "alice");
    assert_eq!(result(&core.handle_request(ended, &mut media, &del)), "ok");

    let records = core.take_ended_calls();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(r.call_id, b"rec-1");
    assert_eq!(r.from_tag.as_deref(), Some(&b"alice"[..]));
    assert_eq!(r.to_tag.as_deref(), Some(&b"bob"[..]));
    assert_eq!(
        r.metadata.as_deref(),
        Some(&b"from:+15551230001|to:+15551230002"[..])
    );
    assert_eq!(
        (r.created, r.answered, r.ended),
        (created, Some(answered), ended)
    );
    assert_eq!(r.reason, CloseReason::Deleted);
    assert!(core.take_ended_calls().is_empty(), "taken once");
    let shown = format!("{r:?}");
    assert!(
        !shown.contains("rec-1") && !shown.contains("+1555"),
        "{shown}"
    );
}

#[test]
fn an_unanswered_call_that_times_out_is_recorded_as_such() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        unanswered_offer_timeout: Duration::from_secs(10),
        ..config()
    });
    let offer = offer_req("rec-2", "alice", &sdp("198.51.100.10", 4000, 1, ""));
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &offer)),
        "ok"
    );
    core.poll_timeouts(clock.advance(Duration::from_secs(11)), &mut media);
    let records = core.take_ended_calls();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].reason, CloseReason::UnansweredOffer);
    assert_eq!(records[0].answered, None);
    assert_eq!(records[0].to_tag, None);
}

#[test]
fn limits_change_live_and_a_bad_change_leaves_them_as_they_were() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let before = core.limits();
    let bad = LiveLimits {
        max_sessions: 0,
        ..before
    };
    assert!(core.set_limits(&bad).is_err(), "zero sessions refused");
    assert_eq!(core.limits(), before, "unchanged after a refusal");

    let one = LiveLimits {
        max_sessions: 1,
        no_media_timeout: Duration::from_secs(5),
        ..before
    };
    core.set_limits(&one).unwrap();
    assert_eq!(core.limits(), one);
    let first = offer_req("lim-1", "alice", &sdp("198.51.100.10", 4000, 1, ""));
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &first)),
        "ok"
    );
    let second = with(
        offer_req("lim-2", "carol", &sdp("198.51.100.11", 4002, 1, "")),
        "supports",
        strings(&["load limit"]),
    );
    let reply = core.handle_request(clock.now(), &mut media, &second);
    assert_eq!(
        result(&reply),
        "load limit",
        "the new limit applies at once"
    );
}
