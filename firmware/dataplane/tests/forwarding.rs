//! Real-socket forwarding tests on 127.0.0.1, run for both backends by the same code.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use pop_dataplane::{Backend, Dataplane, DataplaneConfig, LegPeers, LegSockets};
use pop_relay_core::media::{CodecHints, MediaPolicy, PayloadTypeHint, StreamId};
use pop_wire::rtcp::{emit_sender_report, ReportBlock, SenderInfo};
use pop_wire::rtp::{emit_header, Ssrc};

fn bind() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    s
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().unwrap()
}

fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
    let mut b = vec![0u8; 172];
    emit_header(&mut b, 0, false, seq, u32::from(seq) * 160, Ssrc(ssrc)).unwrap();
    b
}

fn rtcp_rr(ssrc: u32) -> Vec<u8> {
    let mut b = vec![0x80, 201, 0, 1];
    b.extend_from_slice(&ssrc.to_be_bytes());
    b
}

/// Receives one datagram or panics after the socket's read timeout.
fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("expected a forwarded packet");
    (buf[..n].to_vec(), from)
}

/// Asserts nothing arrives within 200 ms.
fn assert_silent(s: &UdpSocket) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 2048];
    let r = s.recv_from(&mut buf);
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    assert!(r.is_err(), "unexpected packet of {} bytes", r.unwrap().0);
}

fn start(backend: Backend, workers: usize) -> Dataplane {
    Dataplane::start(DataplaneConfig {
        backend,
        workers,
        max_sockets_per_worker: 256,
        ring_entries: 256,
        buffers_per_worker: 256,
        ..Default::default()
    })
    .unwrap()
}

/// The relay's local sockets of one leg, and their addresses (kept for asserting).
struct RelayLeg {
    rtp: SocketAddr,
    rtcp: Option<SocketAddr>,
}

fn leg(
    mux: bool,
    peer_rtp: Option<SocketAddr>,
    peer_rtcp: Option<SocketAddr>,
) -> (LegSockets, RelayLeg) {
    let rtp = UdpSocket::bind("127.0.0.1:0").unwrap();
    let rtcp = (!mux).then(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    let info = RelayLeg {
        rtp: addr(&rtp),
        rtcp: rtcp.as_ref().map(addr),
    };
    (
        LegSockets {
            rtp,
            rtcp,
            peer_rtp,
            peer_rtcp,
            rtcp_mux: mux,
            codecs: CodecHints::new(),
        },
        info,
    )
}

const LATCH: MediaPolicy = MediaPolicy {
    strict_source: false,
    latch: true,
    media_handover: false,
};

fn forwards_both_ways(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub) = (bind(), bind());
    let (la, ra) = leg(true, None, None);
    let (lb, rb) = leg(true, Some(addr(&ub)), None);
    dp.add_stream(StreamId(1), la, lb, LATCH).unwrap();
    for seq in 0..10 {
        ua.send_to(&rtp(seq, 0xa), ra.rtp).unwrap();
        let (data, from) = recv(&ub);
        assert_eq!(data, rtp(seq, 0xa));
        assert_eq!(from, rb.rtp, "must leave from leg B's socket");
    }
    for seq in 0..10 {
        ub.send_to(&rtp(seq, 0xb), rb.rtp).unwrap();
        let (data, from) = recv(&ua);
        assert_eq!(data, rtp(seq, 0xb));
        assert_eq!(from, ra.rtp);
    }
    let st = dp.stream_stats(StreamId(1)).unwrap();
    assert_eq!(st.from_a.packets, 10);
    assert_eq!(st.from_a.bytes, 1720);
    assert_eq!(st.from_b.packets, 10);
    assert_eq!(st.from_a.last_ssrc, Some(0xa));
    assert_eq!(st.from_b.last_payload_type, Some(0));
    assert_eq!(st.from_a.rtp_lost, 0);
    assert!(st.from_a.idle_ms.is_some());
    assert_eq!(st.peer_a, Some(addr(&ua)));
    let t = dp.totals();
    assert_eq!(t.forwarded_packets, 20);
    assert_eq!(t.forwarded_bytes, 3440);
    dp.shutdown();
}

fn rtcp_demux_between_mux_and_non_mux(backend: Backend) {
    let dp = start(backend, 1);
    let ua = bind();
    let (ub_rtp, ub_rtcp) = (bind(), bind());
    let (la, ra) = leg(true, Some(addr(&ua)), None);
    let (lb, rb) = leg(false, Some(addr(&ub_rtp)), Some(addr(&ub_rtcp)));
    dp.add_stream(StreamId(2), la, lb, LATCH).unwrap();
    // Muxed side: RTCP arrives on the RTP port and must leave B's RTCP socket.
    ua.send_to(&rtcp_rr(0xa), ra.rtp).unwrap();
    let (data, from) = recv(&ub_rtcp);
    assert_eq!(data, rtcp_rr(0xa));
    assert_eq!(Some(from), rb.rtcp);
    ua.send_to(&rtp(1, 0xa), ra.rtp).unwrap();
    assert_eq!(recv(&ub_rtp).1, rb.rtp);
    // Non-muxed side: its RTCP port's packets must reach A muxed on the RTP address.
    ub_rtcp.send_to(&rtcp_rr(0xb), rb.rtcp.unwrap()).unwrap();
    let (data, from) = recv(&ua);
    assert_eq!(data, rtcp_rr(0xb));
    assert_eq!(from, ra.rtp);
    let st = dp.stream_stats(StreamId(2)).unwrap();
    assert_eq!(st.from_a.rtcp_packets, 1);
    assert_eq!(st.from_a.packets, 2);
    assert_eq!(st.from_b.rtcp_packets, 1);
    dp.shutdown();
}

fn latching_learns_unknown_peer(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub) = (bind(), bind());
    let (la, ra) = leg(true, None, None);
    let (lb, rb) = leg(true, Some(addr(&ub)), None);
    dp.add_stream(StreamId(3), la, lb, LATCH).unwrap();
    // Before A spoke, B's media has nowhere to go.
    ub.send_to(&rtp(1, 0xb), rb.rtp).unwrap();
    assert_silent(&ua);
    assert_eq!(dp.stream_stats(StreamId(3)).unwrap().from_b.send_errors, 1);
    assert_eq!(dp.totals().dropped_no_destination, 1);
    ua.send_to(&rtp(1, 0xa), ra.rtp).unwrap();
    recv(&ub);
    ub.send_to(&rtp(2, 0xb), rb.rtp).unwrap();
    assert_eq!(recv(&ua).0, rtp(2, 0xb));
    assert_eq!(
        dp.stream_stats(StreamId(3)).unwrap().peer_a,
        Some(addr(&ua))
    );
    dp.shutdown();
}

fn strict_source_drops_spoofed(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub, spoofer) = (bind(), bind(), bind());
    let (la, ra) = leg(true, Some(addr(&ua)), None);
    let (lb, _rb) = leg(true, Some(addr(&ub)), None);
    let policy = MediaPolicy {
        strict_source: true,
        latch: false,
        media_handover: false,
    };
    dp.add_stream(StreamId(4), la, lb, policy).unwrap();
    spoofer.send_to(&rtp(1, 0xe), ra.rtp).unwrap();
    assert_silent(&ub);
    ua.send_to(&rtp(1, 0xa), ra.rtp).unwrap();
    assert_eq!(recv(&ub).0, rtp(1, 0xa));
    let st = dp.stream_stats(StreamId(4)).unwrap();
    assert_eq!(st.from_a.spoofed_dropped, 1);
    assert_eq!(st.from_a.packets, 1);
    assert_eq!(st.peer_a, Some(addr(&ua)));
    assert_eq!(dp.totals().dropped_spoofed, 1);
    dp.shutdown();
}

fn media_handover_relatches(backend: Backend) {
    let dp = start(backend, 1);
    let (ua1, ua2, ub) = (bind(), bind(), bind());
    let (la, ra) = leg(true, None, None);
    let (lb, rb) = leg(true, Some(addr(&ub)), None);
    let policy = MediaPolicy {
        strict_source: true,
        latch: true,
        media_handover: true,
    };
    dp.add_stream(StreamId(5), la, lb, policy).unwrap();
    ua1.send_to(&rtp(1, 0xa), ra.rtp).unwrap();
    recv(&ub);
    ua2.send_to(&rtp(2, 0xa), ra.rtp).unwrap();
    recv(&ub);
    ub.send_to(&rtp(1, 0xb), rb.rtp).unwrap();
    assert_eq!(recv(&ua2).0, rtp(1, 0xb));
    assert_silent(&ua1);
    let st = dp.stream_stats(StreamId(5)).unwrap();
    assert_eq!(st.peer_a, Some(addr(&ua2)));
    assert_eq!(st.from_a.spoofed_dropped, 0);
    dp.shutdown();
}

fn malformed_counted_and_dropped(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub) = (bind(), bind());
    let (la, ra) = leg(true, Some(addr(&ua)), None);
    let (lb, _rb) = leg(true, Some(addr(&ub)), None);
    dp.add_stream(StreamId(6), la, lb, LATCH).unwrap();
    ua.send_to(&[0u8; 20], ra.rtp).unwrap(); // version 0
    ua.send_to(&[0x80], ra.rtp).unwrap(); // truncated
    ua.send_to(&[0x80, 200, 0, 40, 0, 0, 0, 0], ra.rtp).unwrap(); // RTCP length lies
    assert_silent(&ub);
    let st = dp.stream_stats(StreamId(6)).unwrap();
    assert_eq!(st.from_a.malformed_dropped, 3);
    assert_eq!(st.from_a.packets, 0);
    assert_eq!(dp.totals().dropped_malformed, 3);
    dp.shutdown();
}

fn remove_closes_sockets_and_returns_stats(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub) = (bind(), bind());
    let (la, ra) = leg(false, Some(addr(&ua)), None);
    let (lb, _rb) = leg(true, Some(addr(&ub)), None);
    dp.add_stream(StreamId(7), la, lb, LATCH).unwrap();
    for seq in 0..3 {
        ua.send_to(&rtp(seq, 0xa), ra.rtp).unwrap();
        recv(&ub);
    }
    let st = dp.remove_stream(StreamId(7)).unwrap();
    assert_eq!(st.from_a.packets, 3);
    // The ports must be free the moment remove returns.
    UdpSocket::bind(ra.rtp).expect("RTP port still held after remove");
    UdpSocket::bind(ra.rtcp.unwrap()).expect("RTCP port still held after remove");
    assert!(dp.stream_stats(StreamId(7)).is_err());
    assert!(dp.remove_stream(StreamId(7)).is_err());
    dp.shutdown();
}

fn many_streams_over_several_workers(backend: Backend) {
    let dp = start(backend, 3);
    let mut calls = Vec::new();
    for id in 0..30u64 {
        let (ua, ub) = (bind(), bind());
        let (la, ra) = leg(true, Some(addr(&ua)), None);
        let (lb, _) = leg(true, Some(addr(&ub)), None);
        dp.add_stream(StreamId(id), la, lb, LATCH).unwrap();
        calls.push((ua, ub, ra));
    }
    for seq in 0..5 {
        for (id, (ua, _, ra)) in calls.iter().enumerate() {
            ua.send_to(&rtp(seq, id as u32), ra.rtp).unwrap();
        }
        for (id, (_, ub, _)) in calls.iter().enumerate() {
            assert_eq!(recv(ub).0, rtp(seq, id as u32));
        }
    }
    for id in 0..30u64 {
        let st = dp.remove_stream(StreamId(id)).unwrap();
        assert_eq!(st.from_a.packets, 5, "stream {id}");
    }
    assert_eq!(dp.totals().forwarded_packets, 150);
    dp.shutdown();
}

fn every_stream_forwards_after_buffer_overflow(backend: Backend) {
    let dp = Dataplane::start(DataplaneConfig {
        backend,
        workers: 1,
        max_sockets_per_worker: 64,
        ring_entries: 64,
        buffers_per_worker: 8,
        ..Default::default()
    })
    .unwrap();
    let mut calls = Vec::new();
    for id in 0..8u64 {
        let (ua, ub) = (bind(), bind());
        let (la, ra) = leg(true, Some(addr(&ua)), None);
        let (lb, _) = leg(true, Some(addr(&ub)), None);
        dp.add_stream(StreamId(id), la, lb, LATCH).unwrap();
        calls.push((ua, ub, ra));
    }
    // Burst: 8 streams × 300 packets as fast as the senders go, far beyond 8 buffers.
    for seq in 0..300 {
        for (ua, _, ra) in &calls {
            let _ = ua.send_to(&rtp(seq, 1), ra.rtp);
        }
    }
    // Drain whatever made it through, bounded.
    let deadline = Instant::now() + Duration::from_secs(5);
    for (_, ub, _) in &calls {
        ub.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline && ub.recv_from(&mut buf).is_ok() {}
        ub.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
    }
    if backend == Backend::Uring {
        assert!(
            dp.totals().buffer_ring_empty > 0,
            "the burst should have exhausted the buffer ring: {:?}",
            dp.totals()
        );
    }
    for (id, (ua, ub, ra)) in calls.iter().enumerate() {
        ua.send_to(&rtp(1000, 2), ra.rtp).unwrap();
        assert_eq!(
            recv(ub).0,
            rtp(1000, 2),
            "stream {id} silent after overload"
        );
    }
    dp.shutdown();
}

fn update_moves_destination(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub1, ub2) = (bind(), bind(), bind());
    let (la, ra) = leg(true, Some(addr(&ua)), None);
    let (lb, _) = leg(true, Some(addr(&ub1)), None);
    dp.add_stream(StreamId(8), la, lb, LATCH).unwrap();
    ua.send_to(&rtp(1, 0xa), ra.rtp).unwrap();
    recv(&ub1);
    let peers = |a: &UdpSocket| LegPeers {
        peer_rtp: Some(addr(a)),
        peer_rtcp: None,
        rtcp_mux: true,
        codecs: CodecHints::new(),
    };
    dp.update_stream(StreamId(8), peers(&ua), peers(&ub2), LATCH)
        .unwrap();
    ua.send_to(&rtp(2, 0xa), ra.rtp).unwrap();
    assert_eq!(recv(&ub2).0, rtp(2, 0xa));
    assert!(dp
        .update_stream(StreamId(99), peers(&ua), peers(&ub2), LATCH)
        .is_err());
    dp.shutdown();
}

fn hints(entries: &[(u8, u32, bool)], encrypted_rtcp: bool) -> CodecHints {
    let mut h = CodecHints::new();
    for &(payload_type, clock_rate, telephone_event) in entries {
        assert!(h.insert(PayloadTypeHint {
            payload_type,
            clock_rate,
            telephone_event,
        }));
    }
    h.encrypted_rtcp = encrypted_rtcp;
    h
}

/// A telephone-event packet (event code 5) of the event starting at `ts`.
fn dtmf(seq: u16, ts: u32, end: bool) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    emit_header(&mut b, 101, false, seq, ts, Ssrc(0xa)).unwrap();
    pop_wire::telephone_event::emit(&mut b[12..], 5, end, 10, 480).unwrap();
    b
}

/// Telephone-events counted per event from the sender's SDP, RTCP figures and bytes read,
/// and a re-offer's payload types taking effect.
fn statistics_follow_sdp_and_rtcp(backend: Backend) {
    let dp = start(backend, 1);
    let (ua, ub) = (bind(), bind());
    let (mut la, ra) = leg(true, Some(addr(&ua)), None);
    la.codecs = hints(&[(111, 48_000, false), (101, 48_000, true)], false);
    let (lb, _rb) = leg(true, Some(addr(&ub)), None);
    dp.add_stream(StreamId(9), la, lb, LATCH).unwrap();
    let mut seq = 0u16;
    let send = |p: Vec<u8>| {
        ua.send_to(&p, ra.rtp).unwrap();
        assert_eq!(recv(&ub).0, p);
    };
    for event_ts in [96_000u32, 192_000] {
        for end in [false, false, true, true, true] {
            send(dtmf(seq, event_ts, end));
            seq += 1;
        }
    }
    let mut sr = [0u8; 64];
    let info = SenderInfo {
        packet_count: 321,
        ..Default::default()
    };
    let block = ReportBlock {
        ssrc: Ssrc(0xb),
        fraction_lost: 12,
        cumulative_lost: 34,
        extended_highest_seq: 99,
        jitter: 56,
        lsr: 0,
        dlsr: 0,
    };
    let n = emit_sender_report(&mut sr, Ssrc(0xa), &info, &[block]).unwrap();
    send(sr[..n].to_vec());
    // Plain RTCP must be a valid compound throughout: a broken second packet is malformed.
    let mut broken = sr[..n].to_vec();
    broken.extend_from_slice(&[0x80, 202, 0, 9]);
    ua.send_to(&broken, ra.rtp).unwrap();
    assert_silent(&ub);
    let st = dp.stream_stats(StreamId(9)).unwrap().from_a;
    assert_eq!(st.dtmf_events, 2);
    assert_eq!(st.last_payload_type, Some(101));
    assert_eq!(st.last_sr_packets, Some(321));
    assert_eq!(st.last_rr_fraction_lost, Some(12));
    assert_eq!(st.last_rr_cumulative_lost, Some(34));
    assert_eq!(st.last_rr_jitter, Some(56));
    assert_eq!(st.rtcp_packets, 1);
    assert_eq!(st.rtcp_bytes, n as u64);
    assert_eq!(st.bytes, 10 * 16 + n as u64);
    assert_eq!(st.malformed_dropped, 1);
    // Re-offer: 101 is no longer telephone-event, and the leg now says SRTP, whose encrypted
    // RTCP tail cannot be checked.
    let peers = |a: &UdpSocket, codecs| LegPeers {
        peer_rtp: Some(addr(a)),
        peer_rtcp: None,
        rtcp_mux: true,
        codecs,
    };
    dp.update_stream(
        StreamId(9),
        peers(&ua, hints(&[(101, 8000, false)], true)),
        peers(&ub, CodecHints::new()),
        LATCH,
    )
    .unwrap();
    send(dtmf(seq, 300_000, false));
    send(broken);
    let st = dp.stream_stats(StreamId(9)).unwrap().from_a;
    assert_eq!(st.dtmf_events, 2);
    assert_eq!(st.rtcp_packets, 2);
    assert_eq!(st.malformed_dropped, 1);
    dp.shutdown();
}

macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(#[test] fn $name() { super::$name(pop_dataplane::Backend::Uring) })*
        }
        mod mmsg {
            $(#[test] fn $name() { super::$name(pop_dataplane::Backend::Mmsg) })*
        }
    };
}

both_backends!(
    forwards_both_ways,
    rtcp_demux_between_mux_and_non_mux,
    latching_learns_unknown_peer,
    strict_source_drops_spoofed,
    media_handover_relatches,
    malformed_counted_and_dropped,
    remove_closes_sockets_and_returns_stats,
    many_streams_over_several_workers,
    every_stream_forwards_after_buffer_overflow,
    update_moves_destination,
    statistics_follow_sdp_and_rtcp,
);
