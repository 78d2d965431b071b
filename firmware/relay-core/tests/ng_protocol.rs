//! NG protocol requirements: cookies and the reply cache, error replies, load limit,
//! exhaustion, delete, list, statistics, leniency.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod common;

use std::time::Duration;

use common::*;
use pop_relay_core::media::MediaTotals;
use pop_relay_core::{CoreConfig, CoreError, RelayCore};
use pop_wire::bencode::Value;

#[test]
fn ping_is_answered_pong_with_the_same_cookie() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let reply = core
        .handle_datagram(clock.now(), &mut media, b"5323_1 d7:command4:pinge")
        .expect("answered");
    assert_eq!(reply, b"5323_1 d6:result4:ponge");
}

#[test]
fn retransmitted_offer_gets_the_identical_reply_and_creates_nothing() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let d = datagram(
        "7781_3",
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    let first = core.handle_datagram(clock.now(), &mut media, &d).unwrap();
    assert_eq!(result(&parse_datagram(&first).1), "ok");
    let (binds, creates) = (media.bound.len(), media.creates);
    let offers = core.counters().offers;
    clock.advance(Duration::from_millis(500));
    let second = core.handle_datagram(clock.now(), &mut media, &d).unwrap();
    assert_eq!(
        second, first,
        "retransmission must get the byte-identical reply"
    );
    assert_eq!(
        (media.bound.len(), media.creates),
        (binds, creates),
        "nothing new created"
    );
    assert_eq!(core.counters().offers, offers, "not executed again");
    assert_eq!(core.counters().reply_cache_hits, 1);
    assert_eq!(core.session_count(), 1);
}

#[test]
fn cached_replies_expire_after_the_ttl() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        reply_cache_ttl: Duration::from_secs(5),
        ..config()
    });
    let d = datagram("c-1", &req(vec![("command", "list".into())]));
    core.handle_datagram(clock.now(), &mut media, &d).unwrap();
    clock.advance(Duration::from_secs(5));
    core.handle_datagram(clock.now(), &mut media, &d).unwrap();
    assert_eq!(core.counters().lists, 2, "executed again after the TTL");
    assert_eq!(core.counters().reply_cache_hits, 0);
}

#[test]
fn a_reused_cookie_with_a_different_request_is_executed() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_datagram(
        clock.now(),
        &mut media,
        &datagram(
            "x",
            &offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
        ),
    );
    let r = core
        .handle_datagram(
            clock.now(),
            &mut media,
            &datagram(
                "x",
                &offer_req("c2", "b", &sdp("198.51.100.10", 4000, 1, "")),
            ),
        )
        .unwrap();
    assert_eq!(result(&parse_datagram(&r).1), "ok");
    assert_eq!(core.session_count(), 2);
    assert_eq!(core.counters().reply_cache_cookie_reused, 1);
}

#[test]
fn unknown_call_id_is_answered_for_answer_query_and_fatal_delete() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let answer = core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("nope", "a", "b", &sdp("192.0.2.1", 5000, 1, "")),
    );
    assert_eq!(
        (result(&answer), error_reason(&answer)),
        ("error", "Unknown call-id")
    );
    let query = core.handle_request(
        clock.now(),
        &mut media,
        &req(vec![
            ("command", "query".into()),
            ("call-id", "nope".into()),
        ]),
    );
    assert_eq!(
        (result(&query), error_reason(&query)),
        ("error", "Unknown call-id")
    );
    let fatal = with(delete_req("nope", "a"), "flags", strings(&["fatal"]));
    let delete = core.handle_request(clock.now(), &mut media, &fatal);
    assert_eq!(
        (result(&delete), error_reason(&delete)),
        ("error", "Unknown call-id")
    );
    // Without `fatal`, rtpengine answers ok with a warning (Kamailio deletes on every BYE).
    let lenient = core.handle_request(clock.now(), &mut media, &delete_req("nope", "a"));
    assert_eq!(result(&lenient), "ok");
    assert!(lenient.dict_get("warning").is_some());
    assert_eq!(
        core.counters().errors_by_reason.get("unknown_call_id"),
        Some(&3)
    );
}

#[test]
fn malformed_requests_are_answered_with_an_error() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"1 not bencode".to_vec(), "Could not decode dictionary"),
        (b"2 i42e".to_vec(), "Could not decode dictionary"),
        (b"3 d4:spam4:eggse".to_vec(), "No command in message"),
        (b"4 d7:command5:dancee".to_vec(), "Unrecognized command"),
        (
            datagram(
                "5",
                &req(vec![
                    ("command", "offer".into()),
                    ("from-tag", "a".into()),
                    ("sdp", "v=0".into()),
                ]),
            ),
            "No call-id in message",
        ),
        (
            datagram(
                "6",
                &req(vec![
                    ("command", "offer".into()),
                    ("call-id", "c".into()),
                    ("sdp", "v=0".into()),
                ]),
            ),
            "No from-tag in message",
        ),
        (
            datagram(
                "7",
                &req(vec![
                    ("command", "offer".into()),
                    ("call-id", "c".into()),
                    ("from-tag", "a".into()),
                ]),
            ),
            "No sdp in message",
        ),
        (
            datagram("8", &offer_req("c", "a", "this is not sdp")),
            "Failed to parse SDP",
        ),
    ];
    for (d, reason) in cases {
        let reply = core
            .handle_datagram(clock.now(), &mut media, &d)
            .expect("answered");
        let (_, v) = parse_datagram(&reply);
        assert_eq!(result(&v), "error", "{}", String::from_utf8_lossy(&d));
        assert!(
            error_reason(&v).starts_with(reason),
            "{:?} for {}",
            error_reason(&v),
            String::from_utf8_lossy(&d)
        );
    }
    assert_eq!(core.session_count(), 0);
    assert!(media.bound.is_empty(), "a failed offer must not keep ports");
}

#[test]
fn datagram_without_cookie_is_dropped_and_counted() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    assert_eq!(
        core.handle_datagram(clock.now(), &mut media, b"d7:command4:pinge"),
        None
    );
    assert_eq!(
        core.handle_datagram(clock.now(), &mut media, b" d7:command4:pinge"),
        None
    );
    assert_eq!(core.handle_datagram(clock.now(), &mut media, b""), None);
    assert_eq!(core.counters().datagrams_without_cookie, 3);
}

#[test]
fn record_call_is_refused_cleanly() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    for r in [
        with(
            offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
            "flags",
            strings(&["record-call"]),
        ),
        with(
            offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
            "record call",
            "yes".into(),
        ),
    ] {
        let reply = core.handle_request(clock.now(), &mut media, &r);
        assert_eq!(result(&reply), "error");
        assert_eq!(
            error_reason(&reply),
            CoreError::RecordingNotSupported.to_string()
        );
    }
    assert_eq!(core.session_count(), 0);
}

#[test]
fn unknown_keys_and_flags_are_accepted_and_counted() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let r = with(
        with(
            offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
            "transport protocol",
            "RTP/AVP".into(),
        ),
        "flags",
        strings(&["loop-protect", "symmetric"]),
    );
    let reply = core.handle_request(clock.now(), &mut media, &r);
    assert_eq!(result(&reply), "ok");
    assert_eq!(core.counters().unknown_keys_ignored, 2);
}

#[test]
fn exhaustion_is_answered_ran_out_of_ports_and_recovers_after_quarantine() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let q = Duration::from_secs(30);
    // Three pairs: one call takes two (one per leg).
    let cfg = CoreConfig {
        port_min: 30000,
        port_max: 30005,
        port_quarantine: q,
        ..config()
    };
    let mut core = core_with(cfg);
    let o = |n: &str| offer_req(n, "a", &sdp("198.51.100.10", 4000, 1, ""));
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &o("c1"))),
        "ok"
    );
    let refused = core.handle_request(clock.now(), &mut media, &o("c2"));
    assert_eq!(
        (result(&refused), error_reason(&refused)),
        ("error", "Ran out of ports")
    );
    assert_eq!(core.session_count(), 1, "the refused call is not kept");
    assert_eq!(
        core.counters().ports_in_use,
        2,
        "its one bound pair was given back"
    );
    assert_eq!(media.bound.len(), 2);

    core.handle_request(clock.now(), &mut media, &delete_req("c1", "a"));
    let still = core.handle_request(clock.now(), &mut media, &o("c3"));
    assert_eq!(
        error_reason(&still),
        "Ran out of ports",
        "quarantine must hold"
    );
    clock.advance(q);
    let ok = core.handle_request(clock.now(), &mut media, &o("c4"));
    assert_eq!(result(&ok), "ok", "{}", error_reason(&ok));
    assert_eq!(media.double_binds, 0);
}

#[test]
fn ports_held_by_other_processes_are_skipped() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    // 40 of 50 pairs taken by someone else.
    media.foreign_ports = (30000..30080).step_by(2).collect();
    let mut core = core_with(config());
    for i in 0..5 {
        let r = core.handle_request(
            clock.now(),
            &mut media,
            &offer_req(&format!("c{i}"), "a", &sdp("198.51.100.10", 4000, 1, "")),
        );
        assert_eq!(result(&r), "ok", "{}", error_reason(&r));
    }
    assert!(media.bound_rtp_ports().iter().all(|p| *p >= 30080));
    assert!(core.counters().ports_bind_in_use > 0);
}

#[test]
fn a_fatal_bind_error_is_answered_and_leaks_nothing() {
    let clock = Clock::new();
    let mut media = FakeMedia {
        fatal_bind: true,
        ..FakeMedia::new()
    };
    let mut core = core_with(config());
    let r = core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
    );
    assert_eq!(result(&r), "error");
    assert!(
        error_reason(&r).contains("address not available"),
        "{}",
        error_reason(&r)
    );
    assert_eq!((core.session_count(), core.counters().ports_in_use), (0, 0));
}

#[test]
fn load_limit_refuses_new_calls_but_not_reoffers() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        max_sessions: 2,
        ..config()
    });
    let o = |n: &str| offer_req(n, "a", &sdp("198.51.100.10", 4000, 1, ""));
    for n in ["c1", "c2"] {
        assert_eq!(
            result(&core.handle_request(clock.now(), &mut media, &o(n))),
            "ok"
        );
    }
    let supports = with(o("c3"), "supports", strings(&["load limit"]));
    let limited = core.handle_request(clock.now(), &mut media, &supports);
    assert_eq!(result(&limited), "load limit");
    // Clients that did not announce support get rtpengine's error instead.
    let plain = core.handle_request(clock.now(), &mut media, &o("c3"));
    assert_eq!(
        (result(&plain), error_reason(&plain)),
        ("error", "Parallel session limit reached")
    );
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &o("c1"))),
        "ok",
        "re-offer"
    );
    assert_eq!(core.session_count(), 2);
    assert_eq!(core.counters().sessions_rejected_load_limit, 2);
    assert_eq!(media.bound.len(), 4);
}

#[test]
fn offer_rate_limit_answers_load_limit_within_the_second() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        max_offer_rate: Some(3),
        ..config()
    });
    let o = |n: String| {
        with(
            offer_req(&n, "a", &sdp("198.51.100.10", 4000, 1, "")),
            "supports",
            strings(&["load limit"]),
        )
    };
    let results: Vec<String> = (0..5)
        .map(|i| {
            result(&core.handle_request(clock.now(), &mut media, &o(format!("c{i}")))).to_owned()
        })
        .collect();
    assert_eq!(results, ["ok", "ok", "ok", "load limit", "load limit"]);
    clock.advance(Duration::from_secs(1));
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &o("c9".into()))),
        "ok"
    );
}

#[test]
fn delete_removes_streams_and_releases_ports() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("c1", "alice", "bob", &sdp("192.0.2.20", 5000, 1, "")),
    );
    let reply = core.handle_request(clock.now(), &mut media, &delete_req("c1", "alice"));
    assert_eq!(result(&reply), "ok");
    assert!(
        reply.dict_get("totals").is_some(),
        "delete reports final stats like query"
    );
    assert!(media.streams.is_empty() && media.bound.is_empty());
    assert_eq!((media.removes, media.releases), (1, 2));
    assert_eq!(core.session_count(), 0);
    assert_eq!(core.counters().ports_in_use, 0);
    assert_eq!(core.counters().ports_quarantined, 2);
    assert_eq!(core.counters().sessions_deleted, 1);
}

#[test]
fn delete_with_a_foreign_tag_does_not_end_the_call() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    let reply = core.handle_request(clock.now(), &mut media, &delete_req("c1", "mallory"));
    assert!(reply.dict_get("warning").is_some());
    assert_eq!(core.session_count(), 1);
}

#[test]
fn delete_delay_keeps_the_call_until_it_expires() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        delete_delay: Duration::from_secs(30),
        ..config()
    });
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    core.handle_request(clock.now(), &mut media, &delete_req("c1", "alice"));
    assert_eq!(core.session_count(), 1);
    assert_eq!(media.streams.len(), 1, "still forwarding during the delay");
    let next = core.poll_timeouts(clock.advance(Duration::from_secs(29)), &mut media);
    assert_eq!(next, Some(clock.now() + Duration::from_secs(1)));
    core.poll_timeouts(clock.advance(Duration::from_secs(1)), &mut media);
    assert_eq!(core.session_count(), 0);
    assert!(media.bound.is_empty());

    // `delete delay: 0` in the request overrides the configured delay.
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c2", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    core.handle_request(
        clock.now(),
        &mut media,
        &with(delete_req("c2", "alice"), "delete delay", Value::int(0)),
    );
    assert_eq!(core.session_count(), 0);
    assert_eq!(core.counters().sessions_deleted, 2);
}

#[test]
fn list_returns_call_ids_up_to_the_limit() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    for i in 0..5 {
        core.handle_request(
            clock.now(),
            &mut media,
            &offer_req(
                &format!("call-{i}"),
                "a",
                &sdp("198.51.100.10", 4000, 1, ""),
            ),
        );
    }
    let all = core.handle_request(
        clock.now(),
        &mut media,
        &req(vec![("command", "list".into())]),
    );
    assert_eq!(
        all.dict_get("calls")
            .and_then(Value::as_list)
            .map(<[Value]>::len),
        Some(5)
    );
    let some = core.handle_request(
        clock.now(),
        &mut media,
        &req(vec![("command", "list".into()), ("limit", Value::int(2))]),
    );
    assert_eq!(
        some.dict_get("calls")
            .and_then(Value::as_list)
            .map(<[Value]>::len),
        Some(2)
    );
    let bad = core.handle_request(
        clock.now(),
        &mut media,
        &req(vec![("command", "list".into()), ("limit", Value::int(0))]),
    );
    assert_eq!(result(&bad), "error");
}

#[test]
fn statistics_reports_aggregate_counters() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
    );
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c2", "a", &sdp("198.51.100.10", 4000, 1, "")),
    );
    core.handle_request(clock.now(), &mut media, &delete_req("c1", "a"));
    media.totals = MediaTotals {
        forwarded_packets: 1000,
        forwarded_bytes: 172_000,
        dropped_malformed: 3,
        dropped_spoofed: 30_000,
        dropped_no_destination: 4,
        send_errors: 5,
        buffer_ring_empty: 6,
    };
    let r = core.handle_request(
        clock.now(),
        &mut media,
        &req(vec![("command", "statistics".into())]),
    );
    let s = r.dict_get("statistics").expect("statistics");
    let get = |section: &str, key: &str| {
        s.dict_get(section)
            .and_then(|d| d.dict_get(key))
            .and_then(Value::as_int)
    };
    assert_eq!(get("currentstatistics", "sessionsown"), Some(1));
    assert_eq!(get("totalstatistics", "managedsessions"), Some(2));
    assert_eq!(get("totalstatistics", "regularterminatedsessions"), Some(1));
    assert_eq!(get("controlstatistics", "totaloffercount"), Some(2));
    assert_eq!(get("pop", "portsinuse"), Some(2));
    assert_eq!(get("pop", "portsquarantined"), Some(2));
    let media_total = |key: &str| {
        s.dict_get("pop")
            .and_then(|d| d.dict_get("media"))
            .and_then(|d| d.dict_get(key))
            .and_then(Value::as_int)
    };
    assert_eq!(media_total("forwardedpackets"), Some(1000));
    assert_eq!(media_total("forwardedbytes"), Some(172_000));
    assert_eq!(media_total("droppedmalformed"), Some(3));
    assert_eq!(media_total("droppedspoofed"), Some(30_000));
    assert_eq!(media_total("droppednodestination"), Some(4));
    assert_eq!(media_total("senderrors"), Some(5));
    assert_eq!(media_total("bufferringempty"), Some(6));
}

#[test]
fn invalid_config_is_refused_with_the_field_named() {
    let bad = [
        (
            CoreConfig {
                port_min: 30000,
                port_max: 30000,
                ..config()
            },
            "port_max",
        ),
        (
            CoreConfig {
                port_min: 30001,
                port_max: 30002,
                ..config()
            },
            "port_max",
        ),
        (
            CoreConfig {
                max_sessions: 0,
                ..config()
            },
            "max_sessions",
        ),
        (
            CoreConfig {
                media_address: "0.0.0.0".parse().unwrap(),
                ..config()
            },
            "media_address",
        ),
        (
            CoreConfig {
                reply_cache_ttl: Duration::ZERO,
                ..config()
            },
            "reply_cache_ttl",
        ),
        (
            CoreConfig {
                no_media_timeout: Duration::ZERO,
                ..config()
            },
            "no_media_timeout",
        ),
    ];
    for (cfg, field) in bad {
        match RelayCore::new(cfg, 1) {
            Err(CoreError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected {field} refused, got {other:?}"),
        }
    }
    assert!(RelayCore::new(CoreConfig::default(), 1).is_ok());
}

#[test]
fn a_huge_requested_delete_delay_is_capped_not_a_panic() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "a", &sdp("198.51.100.10", 4000, 1, "")),
    );
    let d = with(delete_req("c1", "a"), "delete-delay", Value::int(i64::MAX));
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &d)),
        "ok"
    );
    assert_eq!(core.session_count(), 1);
    core.poll_timeouts(clock.advance(Duration::from_secs(3600)), &mut media);
    assert_eq!(core.session_count(), 0, "capped at one hour");
    let neg = with(delete_req("c2", "a"), "delete-delay", Value::int(-5));
    assert_eq!(
        result(&core.handle_request(clock.now(), &mut media, &neg)),
        "error"
    );
}

#[test]
fn timers_beyond_a_year_are_refused_at_configuration() {
    let cfg = CoreConfig {
        max_duration: Some(Duration::from_secs(u64::MAX)),
        ..config()
    };
    assert!(matches!(
        RelayCore::new(cfg, 1),
        Err(CoreError::InvalidConfig {
            field: "max_duration",
            ..
        })
    ));
}

#[test]
fn debug_output_does_not_show_call_ids_tags_or_sdp() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let d = datagram(
        "k1",
        &offer_req(
            "sip-4915551234567",
            "tag-4915551234567",
            &sdp("198.51.100.10", 4000, 1, ""),
        ),
    );
    core.handle_datagram(clock.now(), &mut media, &d);
    let shown = format!("{core:?}");
    assert!(!shown.contains("4915551234567"), "{shown}");
    assert!(!shown.contains("198.51.100.10"), "{shown}");
    assert!(shown.contains("sessions: 1"), "{shown}");
}
