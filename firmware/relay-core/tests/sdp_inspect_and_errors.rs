//! `sdp_rewrite::inspect` on real-world shapes, and a malformed-SDP corpus that must yield
//! errors from both `inspect` and `rewrite`, never a panic.

use std::net::SocketAddr;

use pop_relay_core::sdp_rewrite::{
    inspect, rewrite, Direction, MediaPlan, RewritePlan, SdpRewriteError,
};
use proptest::prelude::*;

const OFFER: &str =
    "v=0\r\no=alice 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 30000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\na=ptime:20\r\n\
m=video 30002 RTP/AVP 96\r\nc=IN IP4 192.0.2.11\r\na=rtcp:30009 IN IP4 192.0.2.12\r\n\
a=rtcp-mux\r\na=recvonly\r\na=rtpmap:96 H264/90000\r\n\
m=video 0 RTP/AVP 97\r\n";

fn addr(s: &str) -> Option<SocketAddr> {
    Some(s.parse().expect("test address"))
}

#[test]
fn inspect_reads_endpoints_rtcp_and_direction() {
    let media = inspect(OFFER.as_bytes()).expect("valid offer");
    assert_eq!(media.len(), 3);
    let audio = &media[0];
    assert_eq!(
        (audio.index, audio.media_type.as_str(), audio.proto.as_str()),
        (0, "audio", "RTP/AVP")
    );
    assert_eq!(audio.rtp, addr("192.0.2.10:30000"));
    assert_eq!(audio.rtcp, addr("192.0.2.10:30001"));
    assert!(!audio.rtcp_mux && !audio.port_zero && !audio.zero_address && !audio.ice);
    assert_eq!(audio.direction, Direction::SendRecv);
    assert_eq!(audio.payload_types, [0, 8, 101]);
    let video = &media[1];
    assert_eq!(video.rtp, addr("192.0.2.11:30002"));
    assert_eq!(video.rtcp, addr("192.0.2.12:30009"));
    assert!(video.rtcp_mux);
    assert_eq!(video.direction, Direction::RecvOnly);
    let rejected = &media[2];
    assert!(rejected.port_zero);
    assert_eq!((rejected.rtp, rejected.rtcp), (None, None));
}

#[test]
fn inspect_reports_hold_address_session_direction_ipv6_and_ice() {
    let hold =
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\na=sendonly\r\n\
m=audio 30000 RTP/AVP 0\r\na=ice-ufrag:abcd\r\n";
    let media = inspect(hold.as_bytes()).expect("valid");
    assert_eq!(media[0].rtp, None);
    assert!(media[0].zero_address && !media[0].port_zero && media[0].ice);
    assert_eq!(media[0].direction, Direction::SendOnly);
    let v6 = "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nc=IN IP6 2001:db8::1\r\nt=0 0\r\n\
m=audio 65535 RTP/AVP 0\r\n";
    let media = inspect(v6.as_bytes()).expect("valid");
    assert_eq!(media[0].rtp, addr("[2001:db8::1]:65535"));
    assert_eq!(media[0].rtcp, None, "no RTCP port above 65535");
}

fn plan(n: usize) -> RewritePlan {
    RewritePlan {
        media_address: "203.0.113.5".parse().expect("address"),
        media: vec![
            MediaPlan {
                rtp_port: 40000,
                rtcp_port: Some(40001),
                rtcp_mux: false,
                direction: None,
            };
            n
        ],
        replace_origin: false,
        replace_session_connection: false,
        ice_remove: true,
        origin_version: None,
    }
}

#[test]
fn rewrite_refuses_a_plan_that_does_not_cover_every_stream() {
    assert_eq!(
        rewrite(OFFER.as_bytes(), &plan(2)),
        Err(SdpRewriteError::MediaCountMismatch {
            found: 3,
            planned: 2
        })
    );
}

#[test]
fn plan_direction_override_and_origin_version_are_written() {
    let mut p = plan(3);
    p.media[0].direction = Some(Direction::Inactive);
    p.origin_version = Some(42);
    p.replace_origin = true;
    let out = String::from_utf8(rewrite(OFFER.as_bytes(), &p).expect("rewrite")).expect("UTF-8");
    assert!(out.contains("o=alice 1 42 IN IP4 203.0.113.5\r\n"), "{out}");
    assert!(
        out.contains("a=inactive\r\na=rtcp:40001\r\na=ptime:20\r\n"),
        "{out}"
    );
    assert!(out.ends_with("m=video 0 RTP/AVP 97\r\n"), "{out}");
}

/// Bodies that are not SDP a relay can act on; each must be refused with an error.
const MALFORMED: &[&[u8]] = &[
    b"",
    b"\r\n",
    b"hello",
    b"o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n",
    b"v=1\r\n",
    b"v=0\r\no=only three fields\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1.5\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP6 192.0.2.1\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 65536 RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1/x RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio  1 RTP/AVP 0\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nc=IN IP4 1.2.3.4/ttl\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:notaport\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:70000\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\na=rtcp\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:9 IN IP4 nothing here\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\n=novalue\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nm=audio 1 RTP/AVP 0\r\nab=c\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\xc3\x28=bad\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=\x00\r\n",
    b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n\r\nt=0 0\r\n",
];

#[test]
fn malformed_corpus_yields_errors_never_panics() {
    for (i, body) in MALFORMED.iter().enumerate() {
        let inspected = inspect(body);
        assert!(
            inspected.is_err(),
            "case {i}: inspect accepted {:?}",
            String::from_utf8_lossy(body)
        );
        let message = inspected.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            message.starts_with("the SDP in the command is invalid"),
            "case {i}: {message}"
        );
        assert!(
            rewrite(body, &plan(1)).is_err(),
            "case {i}: rewrite accepted it"
        );
    }
}

#[test]
fn oversized_bodies_are_refused() {
    let mut body = b"v=0\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'a', 70_000));
    assert!(inspect(&body).is_err());
    let many_media = format!("v=0\r\n{}", "m=audio 1 RTP/AVP 0\r\n".repeat(100));
    assert!(inspect(many_media.as_bytes()).is_err());
}

proptest! {
    #[test]
    fn any_bytes_give_ok_or_error(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = inspect(&bytes);
        let _ = rewrite(&bytes, &plan(1));
    }

    #[test]
    fn corrupted_offers_give_ok_or_error(at in 0usize..400, byte in any::<u8>(), cut in 0usize..400) {
        let mut bytes = OFFER.as_bytes().to_vec();
        let len = bytes.len();
        if let Some(b) = bytes.get_mut(at % len) {
            *b = byte;
        }
        bytes.truncate(cut.max(1) * len / 400 + 1);
        if let Ok(media) = inspect(&bytes) {
            let out = rewrite(&bytes, &plan(media.len())).expect("inspectable SDP must rewrite");
            prop_assert!(inspect(&out).is_ok(), "rewrite output must parse again");
        }
    }
}

#[test]
fn inspect_reports_clock_rates_and_telephone_events() {
    let sdp = "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 30000 RTP/SAVPF 111 0 9 101 100 98\r\na=rtpmap:111 opus/48000/2\r\n\
a=rtpmap:101 telephone-event/48000\r\na=rtpmap:100 TELEPHONE-EVENT/8000\r\n\
m=video 30002 RTP/AVP 96 34\r\na=rtpmap:96 VP8/90000\r\n";
    let media = inspect(sdp.as_bytes()).expect("valid SDP");
    let audio = &media[0].codecs;
    assert_eq!(audio.clock_rate(111), Some(48_000));
    // Static types without a=rtpmap come from RFC 3551 (G.722 keeps its 8 kHz RTP clock).
    assert_eq!(audio.clock_rate(0), Some(8000));
    assert_eq!(audio.clock_rate(9), Some(8000));
    assert!(audio.is_telephone_event(101) && audio.is_telephone_event(100));
    assert!(!audio.is_telephone_event(111) && !audio.is_telephone_event(0));
    assert_eq!(audio.clock_rate(101), Some(48_000));
    // A dynamic type without a=rtpmap is unknown, not guessed.
    assert_eq!(audio.get(98), None);
    assert!(audio.encrypted_rtcp, "RTP/SAVPF carries SRTCP");
    let video = &media[1].codecs;
    assert_eq!(video.clock_rate(96), Some(90_000));
    assert_eq!(video.clock_rate(34), Some(90_000));
    assert!(!video.encrypted_rtcp);
}

#[test]
fn codec_hints_keep_a_bounded_number_of_types() {
    let pts: Vec<String> = (0..40).map(|i| (96 + i).to_string()).collect();
    let maps: String = (0..40)
        .map(|i| format!("a=rtpmap:{} L16/16000\r\n", 96 + i))
        .collect();
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
         m=audio 30000 RTP/AVP {}\r\n{maps}",
        pts.join(" ")
    );
    let media = inspect(sdp.as_bytes()).expect("valid SDP");
    let hints = &media[0].codecs;
    assert_eq!(hints.iter().count(), pop_relay_core::media::MAX_CODEC_HINTS);
    assert_eq!(hints.clock_rate(96), Some(16_000));
    assert_eq!(hints.get(135), None);
}
