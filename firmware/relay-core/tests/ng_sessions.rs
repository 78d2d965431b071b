//! Offer/answer/re-offer requirements: ports per leg, streams in the data plane, SDP rewritten
//! with the relay's address, o= version bumped only on change.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

mod common;

use common::*;
use pop_relay_core::media::MediaPolicy;
use pop_wire::bencode::Value;

#[test]
fn offer_allocates_both_legs_and_creates_the_stream_with_the_callers_address() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let reply = core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    assert_eq!(result(&reply), "ok", "{}", error_reason(&reply));
    let out = reply_sdp(&reply);
    let spec = media.only_stream().clone();
    assert_eq!(spec.a.peer_rtp, Some("198.51.100.10:4000".parse().unwrap()));
    assert_eq!(
        spec.a.peer_rtcp,
        Some("198.51.100.10:4001".parse().unwrap())
    );
    assert_eq!(spec.b.peer_rtp, None, "callee unknown before the answer");
    assert_eq!(
        spec.policy,
        MediaPolicy {
            latch: true,
            strict_source: false,
            media_handover: false
        }
    );
    // The offer goes to the callee, who must send to leg B.
    assert_eq!(media_ports(&out), vec![media.port_of(spec.b.local)]);
    assert!(out.contains("c=IN IP4 203.0.113.1"), "{out}");
    assert!(
        !out.contains("198.51.100.10 "),
        "caller's address leaked into media lines: {out}"
    );
    assert_eq!(media.bound.len(), 2);
    assert_eq!(core.session_count(), 1);
    assert_eq!(core.counters().sessions_created, 1);
    assert_eq!(core.counters().ports_in_use, 2);
}

#[test]
fn answer_updates_the_callee_leg_and_returns_the_callers_leg_port() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    let reply = core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("c1", "alice", "bob", &sdp("192.0.2.20", 5000, 7, "")),
    );
    assert_eq!(result(&reply), "ok", "{}", error_reason(&reply));
    let spec = media.only_stream().clone();
    assert_eq!(spec.b.peer_rtp, Some("192.0.2.20:5000".parse().unwrap()));
    assert_eq!(spec.a.peer_rtp, Some("198.51.100.10:4000".parse().unwrap()));
    assert_eq!(
        media_ports(&reply_sdp(&reply)),
        vec![media.port_of(spec.a.local)]
    );
    assert_eq!((media.creates, media.updates), (1, 1));
}

#[test]
fn reinvite_reuses_ports_and_streams_and_bumps_version_only_on_change() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let o1 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    ));
    let a1 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("c1", "alice", "bob", &sdp("192.0.2.20", 5000, 7, "")),
    ));
    let bound_before = media.bound_rtp_ports();
    let spec_before = media.only_stream().clone();

    // Same offer again (session refresh): same ports, same SDP, same version.
    let o2 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    ));
    assert_eq!(
        o2, o1,
        "an unchanged re-offer must produce the identical SDP"
    );
    let a2 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("c1", "alice", "bob", &sdp("192.0.2.20", 5000, 7, "")),
    ));
    assert_eq!(a2, a1);

    // Hold: the caller's SDP changes, so what the callee receives changes: version + 1.
    let hold = sdp("198.51.100.10", 4000, 2, "a=sendonly\r\n");
    let o3 =
        reply_sdp(&core.handle_request(clock.now(), &mut media, &offer_req("c1", "alice", &hold)));
    assert_ne!(o3, o1);
    assert_eq!(origin_version(&o3), origin_version(&o1) + 1);
    assert!(o3.contains("a=sendonly"), "{o3}");
    // The callee's answer did not change: the caller sees the same version as before.
    let a3 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &answer_req(
            "c1",
            "alice",
            "bob",
            &sdp("192.0.2.20", 5000, 7, "a=recvonly\r\n"),
        ),
    ));
    assert_eq!(
        origin_version(&a3),
        origin_version(&a1) + 1,
        "answer changed (recvonly)"
    );

    assert_eq!(
        media.bound_rtp_ports(),
        bound_before,
        "re-INVITE must not move ports"
    );
    assert_eq!(media.only_stream().id, spec_before.id);
    assert_eq!(media.creates, 1);
    assert_eq!(core.counters().sessions_created, 1);
    assert_eq!(media_ports(&o3), media_ports(&o1));
}

#[test]
fn reinvite_from_the_callee_is_answered_with_the_caller_leg_ports() {
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
        &answer_req("c1", "alice", "bob", &sdp("192.0.2.20", 5000, 7, "")),
    );
    let spec = media.only_stream().clone();
    // In-dialog request from the callee: From carries bob's tag, To alice's.
    let mut reoffer = offer_req("c1", "bob", &sdp("192.0.2.21", 5002, 8, ""));
    reoffer.dict_insert("to-tag", "alice".into());
    let out = reply_sdp(&core.handle_request(clock.now(), &mut media, &reoffer));
    assert_eq!(
        media_ports(&out),
        vec![media.port_of(spec.a.local)],
        "goes to alice, via leg A"
    );
    assert_eq!(
        media.only_stream().b.peer_rtp,
        Some("192.0.2.21:5002".parse().unwrap())
    );
    let back = answer_req("c1", "bob", "alice", &sdp("198.51.100.11", 4002, 2, ""));
    let out = reply_sdp(&core.handle_request(clock.now(), &mut media, &back));
    assert_eq!(media_ports(&out), vec![media.port_of(spec.b.local)]);
    assert_eq!(
        media.only_stream().a.peer_rtp,
        Some("198.51.100.11:4002".parse().unwrap())
    );
}

#[test]
fn each_media_line_gets_its_own_stream_and_rejected_lines_keep_port_zero() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let two = format!(
        "{}m=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\nm=video 0 RTP/AVP 97\r\n",
        sdp("198.51.100.10", 4000, 1, "")
    );
    let out =
        reply_sdp(&core.handle_request(clock.now(), &mut media, &offer_req("c1", "alice", &two)));
    let ports = media_ports(&out);
    assert_eq!(ports.len(), 3);
    assert_eq!(ports[2], 0, "a rejected stream stays rejected");
    assert_eq!(media.streams.len(), 2);
    assert_eq!(media.bound.len(), 4);
}

#[test]
fn flags_set_the_media_policy_and_sip_source_address_uses_received_from() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let r = with(
        with(
            offer_req("c1", "alice", &sdp("10.0.0.5", 4000, 1, "")),
            "flags",
            strings(&[
                "strict-source",
                "media handover",
                "SIP-source-address",
                "port-latching",
            ]),
        ),
        "received-from",
        strings(&["IP4", "198.51.100.99"]),
    );
    let reply = core.handle_request(clock.now(), &mut media, &r);
    assert_eq!(result(&reply), "ok", "{}", error_reason(&reply));
    let spec = media.only_stream();
    assert!(spec.policy.strict_source && spec.policy.media_handover && spec.policy.latch);
    assert_eq!(spec.a.peer_rtp, Some("198.51.100.99:4000".parse().unwrap()));

    let r = with(
        offer_req("c2", "carol", &sdp("10.0.0.5", 4000, 1, "")),
        "flags",
        strings(&["asymmetric", "trust address"]),
    );
    core.handle_request(clock.now(), &mut media, &r);
    let c2 = media
        .streams
        .values()
        .find(|s| !s.policy.latch)
        .expect("asymmetric stream");
    assert_eq!(c2.a.peer_rtp, Some("10.0.0.5:4000".parse().unwrap()));
}

#[test]
fn zero_address_hold_leaves_the_peer_to_latching() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("0.0.0.0", 4000, 1, "")),
    );
    assert_eq!(media.only_stream().a.peer_rtp, None);
}

#[test]
fn rtcp_mux_offered_is_passed_on_and_demux_is_honoured() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let mux = sdp("198.51.100.10", 4000, 1, "a=rtcp-mux\r\n");
    let out =
        reply_sdp(&core.handle_request(clock.now(), &mut media, &offer_req("c1", "alice", &mux)));
    assert!(out.contains("a=rtcp-mux"), "{out}");
    let spec = media.only_stream().clone();
    assert!(spec.a.rtcp_mux);
    assert_eq!(
        spec.a.peer_rtcp, spec.a.peer_rtp,
        "muxed RTCP goes to the RTP address"
    );

    let r = with(
        offer_req("c2", "carol", &mux),
        "rtcp-mux",
        strings(&["demux"]),
    );
    let out = reply_sdp(&core.handle_request(clock.now(), &mut media, &r));
    assert!(
        !out.contains("a=rtcp-mux"),
        "demux must not offer mux on: {out}"
    );
    let answer = answer_req("c2", "carol", "dave", &sdp("192.0.2.20", 5000, 1, ""));
    let back = reply_sdp(&core.handle_request(clock.now(), &mut media, &answer));
    assert!(
        back.contains("a=rtcp-mux"),
        "demux accepts mux back to the offerer: {back}"
    );
}

#[test]
fn ice_remove_and_replace_flags_reach_the_rewritten_sdp() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let ice = sdp("198.51.100.10", 4000, 1, "a=ice-ufrag:abcd\r\na=ice-pwd:0123456789abcdefghijkl\r\na=candidate:1 1 UDP 2130706431 198.51.100.10 4000 typ host\r\n");
    let r = with(
        with(offer_req("c1", "alice", &ice), "ICE", "remove".into()),
        "replace",
        strings(&["origin", "session-connection"]),
    );
    let out = reply_sdp(&core.handle_request(clock.now(), &mut media, &r));
    assert!(
        !out.contains("a=candidate") && !out.contains("ice-ufrag"),
        "{out}"
    );
    assert!(
        out.contains("o=- 1000 1 IN IP4 203.0.113.1"),
        "origin replaced: {out}"
    );
}

#[test]
fn answer_with_more_media_than_the_offer_is_refused() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    let two = format!(
        "{}m=video 5002 RTP/AVP 96\r\n",
        sdp("192.0.2.20", 5000, 1, "")
    );
    let reply = core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("c1", "alice", "bob", &two),
    );
    assert_eq!(result(&reply), "error");
    assert!(
        error_reason(&reply).contains("more m= lines"),
        "{}",
        error_reason(&reply)
    );
    assert_eq!(core.session_count(), 1, "the call survives a bad answer");
}

#[test]
fn query_reports_per_tag_counters_from_the_data_plane() {
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
    let id = media.only_stream().id;
    let st = media.stats.entry(id).or_default();
    st.from_a.packets = 100;
    st.from_a.rtcp_packets = 2;
    st.from_a.bytes = 17200 + 120;
    st.from_a.rtcp_bytes = 120;
    st.from_b.packets = 50;
    st.from_b.spoofed_dropped = 3;
    let q = req(vec![("command", "query".into()), ("call-id", "c1".into())]);
    let reply = core.handle_request(clock.now(), &mut media, &q);
    assert_eq!(result(&reply), "ok");
    let alice = reply
        .dict_get("tags")
        .and_then(|t| t.dict_get("alice"))
        .expect("alice tag");
    assert_eq!(
        alice.dict_get("in dialogue with").and_then(Value::as_str),
        Some("bob")
    );
    let stream = &alice.dict_get("medias").unwrap().as_list().unwrap()[0]
        .dict_get("streams")
        .unwrap()
        .as_list()
        .unwrap()[0];
    let stats = stream.dict_get("stats").unwrap();
    assert_eq!(stats.dict_get("packets").and_then(Value::as_int), Some(98));
    // RTP and RTCP bytes are reported apart.
    assert_eq!(stats.dict_get("bytes").and_then(Value::as_int), Some(17200));
    assert_eq!(
        stream.dict_get("rtcp bytes").and_then(Value::as_int),
        Some(120)
    );
    let totals = reply.dict_get("totals").unwrap();
    assert_eq!(
        totals
            .dict_get("RTP")
            .unwrap()
            .dict_get("packets")
            .and_then(Value::as_int),
        Some(148)
    );
    assert_eq!(
        totals
            .dict_get("RTP")
            .unwrap()
            .dict_get("errors")
            .and_then(Value::as_int),
        Some(3)
    );
    assert_eq!(
        totals
            .dict_get("RTCP")
            .unwrap()
            .dict_get("packets")
            .and_then(Value::as_int),
        Some(2)
    );
    assert_eq!(
        totals
            .dict_get("RTCP")
            .unwrap()
            .dict_get("bytes")
            .and_then(Value::as_int),
        Some(120)
    );
}

#[test]
fn each_leg_carries_the_payload_types_of_its_own_sdp() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    // Caller: PCMU + telephone-event 101 (from `sdp`). Callee answers with opus and event 100.
    core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    );
    let answer = "v=0\r\no=- 2 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\n\
m=audio 5000 RTP/AVP 111 100\r\na=rtpmap:111 opus/48000/2\r\n\
a=rtpmap:100 telephone-event/48000\r\n";
    core.handle_request(
        clock.now(),
        &mut media,
        &answer_req("c1", "alice", "bob", answer),
    );
    let spec = media.only_stream();
    assert_eq!(spec.a.codecs.clock_rate(0), Some(8000));
    assert!(spec.a.codecs.is_telephone_event(101));
    assert_eq!(spec.a.codecs.get(111), None);
    assert_eq!(spec.b.codecs.clock_rate(111), Some(48_000));
    assert!(spec.b.codecs.is_telephone_event(100));
    assert!(!spec.b.codecs.is_telephone_event(101));
    // A re-offer from the callee that changes its codecs reaches the data plane.
    let updates = media.updates;
    let reoffer = answer.replace("o=- 2 1", "o=- 2 2").replace(
        "m=audio 5000 RTP/AVP 111 100\r\na=rtpmap:111 opus/48000/2\r\n",
        "m=audio 5000 RTP/AVP 9 100\r\n",
    );
    core.handle_request(clock.now(), &mut media, &offer_req("c1", "bob", &reoffer));
    let spec = media.only_stream();
    assert!(media.updates > updates);
    assert_eq!(spec.b.codecs.clock_rate(9), Some(8000));
    assert_eq!(spec.b.codecs.get(111), None);
    assert_eq!(spec.a.codecs.clock_rate(0), Some(8000));
}

#[test]
fn sender_version_bump_without_change_is_passed_through_never_lowered() {
    // rtpengine passes the sender's o= version through; a peer comparing versions must never
    // see ours go backwards relative to what the sender wrote.
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let o1 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 1, "")),
    ));
    assert_eq!(origin_version(&o1), 1);
    // Same media, sender's version 5: content unchanged for the callee, version follows it.
    let o2 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &offer_req("c1", "alice", &sdp("198.51.100.10", 4000, 5, "")),
    ));
    assert_eq!(origin_version(&o2), 5);
    // The sender falls back to version 2 with a change: ours moves on from 5, not back to 2.
    let o3 = reply_sdp(&core.handle_request(
        clock.now(),
        &mut media,
        &offer_req(
            "c1",
            "alice",
            &sdp("198.51.100.10", 4000, 2, "a=sendonly\r\n"),
        ),
    ));
    assert_eq!(origin_version(&o3), 6);
}

#[test]
fn mux_offer_keeps_the_separate_rtcp_port_until_the_answer_accepts_mux() {
    let clock = Clock::new();
    let mut media = FakeMedia::new();
    let mut core = core_with(config());
    let mux = sdp("198.51.100.10", 4000, 1, "a=rtcp-mux\r\n");
    let r = with(
        offer_req("c1", "alice", &mux),
        "rtcp-mux",
        strings(&["accept"]),
    );
    let out = reply_sdp(&core.handle_request(clock.now(), &mut media, &r));
    let port = media_ports(&out)[0];
    // The callee may refuse mux, so it is told where separate RTCP goes as well.
    assert!(out.contains(&format!("a=rtcp:{}\r\n", port + 1)), "{out}");
    assert!(out.contains("a=rtcp-mux"), "{out}");
    let answer = answer_req(
        "c1",
        "alice",
        "bob",
        &sdp("192.0.2.20", 5000, 1, "a=rtcp-mux\r\n"),
    );
    let back = reply_sdp(&core.handle_request(clock.now(), &mut media, &answer));
    let back_port = media_ports(&back)[0];
    // Both sides mux: RTCP shares the RTP port towards the caller.
    assert!(back.contains(&format!("a=rtcp:{back_port}\r\n")), "{back}");
    assert!(back.contains("a=rtcp-mux"), "{back}");
}
