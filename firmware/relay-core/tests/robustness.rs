//! Robustness requirements: hostile datagrams never panic and are answered when a cookie is
//! there; long runs of calls leave nothing behind; random command sequences keep the port and
//! stream bookkeeping consistent with the data plane.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod common;

use std::time::Duration;

use common::*;
use pop_relay_core::CoreConfig;
use pop_wire::bencode::Value;
use proptest::prelude::*;

#[test]
fn ten_thousand_offer_answer_delete_cycles_leave_zero_ports_and_sessions_in_use() {
    let mut clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(CoreConfig {
        port_min: 30000,
        port_max: 30999,
        port_quarantine: Duration::from_secs(2),
        ..config()
    });
    for i in 0..10_000u32 {
        let call = format!("cycle-{i}");
        let o = core.handle_request(
            clock.now(),
            &mut media,
            &offer_req(&call, "a", &sdp("198.51.100.10", 4000, 1, "")),
        );
        assert_eq!(result(&o), "ok", "cycle {i}: {}", error_reason(&o));
        let a = core.handle_request(
            clock.now(),
            &mut media,
            &answer_req(&call, "a", "b", &sdp("192.0.2.20", 5000, 1, "")),
        );
        assert_eq!(result(&a), "ok", "cycle {i}: {}", error_reason(&a));
        let d = core.handle_request(clock.now(), &mut media, &delete_req(&call, "a"));
        assert_eq!(result(&d), "ok");
        core.poll_timeouts(clock.advance(Duration::from_millis(10)), &mut media);
    }
    core.poll_timeouts(clock.advance(Duration::from_secs(3)), &mut media);
    let c = core.counters();
    assert_eq!(core.session_count(), 0);
    assert_eq!(c.ports_in_use, 0);
    assert_eq!(c.ports_quarantined, 0, "quarantine drained after it ended");
    assert_eq!(c.ports_free, 500);
    assert_eq!((c.sessions_created, c.sessions_deleted), (10_000, 10_000));
    assert!(media.bound.is_empty() && media.streams.is_empty());
    assert_eq!(media.double_binds, 0);
    assert_eq!(
        core.poll_timeouts(clock.now(), &mut media),
        None,
        "no timers left"
    );
}

fn arb_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(Value::Int),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(Value::Bytes),
        prop::sample::select(vec![
            "offer",
            "answer",
            "delete",
            "query",
            "list",
            "ping",
            "statistics",
            "c1",
            "a",
            "b",
            "v=0",
            "IP4",
            "198.51.100.1",
            "fatal",
            "record-call",
            "load limit",
            "demux",
        ])
        .prop_map(Value::str),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::List),
            prop::collection::vec(
                (
                    prop::sample::select(vec![
                        "command",
                        "call-id",
                        "from-tag",
                        "to-tag",
                        "sdp",
                        "flags",
                        "replace",
                        "rtcp-mux",
                        "received-from",
                        "ICE",
                        "limit",
                        "delete delay",
                        "record call",
                        "supports",
                        "media address",
                        "junk",
                    ]),
                    inner
                ),
                0..8
            )
            .prop_map(Value::dict),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn garbage_datagrams_never_panic_and_are_answered_when_they_carry_a_cookie(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        let clock = Clock::new();
        let mut media = FakeMedia::new();
        let mut core = core_with(config());
        let reply = core.handle_datagram(clock.now(), &mut media, &bytes);
        let has_cookie = bytes.iter().position(|&b| b == b' ').is_some_and(|i| i > 0);
        prop_assert_eq!(reply.is_some(), has_cookie);
        if let Some(r) = reply {
            let (cookie, v) = parse_datagram(&r);
            prop_assert!(bytes.starts_with(&cookie));
            prop_assert_eq!(bytes.get(cookie.len()), Some(&b' '));
            prop_assert!(v.dict_get("result").is_some());
        }
    }

    #[test]
    fn structured_garbage_requests_never_panic_or_leak(
        reqs in prop::collection::vec(arb_value(), 1..8),
        sdp_offer in any::<bool>(),
    ) {
        let mut clock = Clock::new();
        let mut media = FakeMedia::new();
        let mut core = core_with(config());
        for (i, mut r) in reqs.into_iter().enumerate() {
            if sdp_offer {
                r.dict_insert("sdp", Value::str(&sdp("198.51.100.10", 4000, 1, "")));
            }
            let reply = core.handle_datagram(clock.now(), &mut media, &datagram(&format!("k{i}"), &r)).unwrap();
            let (_, v) = parse_datagram(&reply);
            prop_assert!(v.dict_get("result").is_some());
            core.poll_timeouts(clock.advance(Duration::from_secs(1)), &mut media);
        }
        prop_assert_eq!(core.counters().ports_in_use as usize, media.bound.len());
        prop_assert_eq!(media.double_binds, 0);
    }

    #[test]
    fn random_call_flows_keep_ports_streams_and_sessions_consistent(
        ops in prop::collection::vec((0u8..6, 0u8..6, 0u64..40_000), 1..120)
    ) {
        let mut clock = Clock::new();
        let mut media = FakeMedia::new();
        let mut core = core_with(CoreConfig {
            port_min: 30000,
            port_max: 30039, // 20 pairs: exhaustion happens often
            max_sessions: 8,
            no_media_timeout: Duration::from_secs(20),
            unanswered_offer_timeout: Duration::from_secs(30),
            port_quarantine: Duration::from_secs(5),
            ..config()
        });
        for (op, call, ms) in ops {
            let id = format!("c{call}");
            let now = clock.advance(Duration::from_millis(ms));
            let r = match op {
                0 => core.handle_request(now, &mut media, &offer_req(&id, "a", &sdp("198.51.100.10", 4000, 1, ""))),
                1 => core.handle_request(now, &mut media, &answer_req(&id, "a", "b", &sdp("192.0.2.20", 5000, 1, ""))),
                2 => core.handle_request(now, &mut media, &delete_req(&id, "a")),
                3 => core.handle_request(now, &mut media, &offer_req(&id, "b", &format!("{}m=video 4002 RTP/AVP 96\r\n", sdp("192.0.2.20", 5000, 2, "a=sendonly\r\n")))),
                4 => { media.set_idle(Some(ms)); Value::dict([("result", Value::str("ok"))]) }
                _ => { core.poll_timeouts(now, &mut media); Value::dict([("result", Value::str("ok"))]) }
            };
            prop_assert!(matches!(result(&r), "ok" | "error" | "load limit"));
            prop_assert_eq!(core.counters().ports_in_use as usize, media.bound.len());
            prop_assert_eq!(media.double_binds, 0);
            prop_assert!(core.session_count() <= 8);
            let c = core.counters();
            prop_assert_eq!((c.ports_in_use + c.ports_quarantined + c.ports_free) as usize, 20);
        }
        // Once media stops, everything ends eventually.
        media.stats.clear();
        for _ in 0..100 {
            match core.poll_timeouts(clock.now(), &mut media) {
                Some(t) => { clock.advance(t - clock.now() + Duration::from_millis(1)); }
                None => break,
            }
        }
        prop_assert_eq!(core.session_count(), 0);
        prop_assert!(media.bound.is_empty() && media.streams.is_empty());
    }
}
