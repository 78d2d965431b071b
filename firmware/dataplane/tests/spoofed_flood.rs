//! Strict source under a spoofed flood, on 127.0.0.1, both backends by the same code.
//!
//! Two strict-source streams share one worker (and so its receive buffers). A flood of valid
//! looking RTP from other source ports hits stream 1's relay port while both streams carry
//! paced media. Proven: no spoofed packet reaches stream 1's peer, every spoofed packet the
//! kernel delivered is counted in `spoofed_dropped`, stream 2 loses nothing, stream 1's media
//! keeps flowing during the flood (loss only where the relay socket overflowed) and is whole
//! again after it.
#![allow(clippy::unwrap_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};
use pop_dataplane::{Backend, Dataplane, DataplaneConfig, LegSockets};
use pop_relay_core::media::{CodecHints, MediaPolicy, StreamId};
use pop_wire::rtp::{emit_header, RtpPacket, Ssrc};

const SPOOFED_PACKETS: u32 = 30_000;
const SPOOFERS: usize = 8;
/// Spoofed packets per burst; a short sleep follows each burst.
const FLOOD_BURST: u32 = 200;
const LEGIT_SSRC_1: u32 = 0x1111;
const LEGIT_SSRC_2: u32 = 0x2222;
const SPOOF_SSRC: u32 = 0xbad;
/// Media pacing during the flood (faster than real audio so the flood window holds many).
const MEDIA_INTERVAL: Duration = Duration::from_millis(2);
/// Packets sent per stream after the flood, all of which must arrive.
const RECOVERY_PACKETS: u16 = 50;
/// Hard bound on the whole test.
const TEST_DEADLINE: Duration = Duration::from_secs(60);
/// Large receive buffers so the kernel queue, not the test's reading speed, is what a flood
/// fills (the sysctl cap applies; the kernel doubles the value).
const RCVBUF: usize = 4 << 20;

const STRICT: MediaPolicy = MediaPolicy {
    strict_source: true,
    latch: true,
    media_handover: false,
};

fn bind() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    setsockopt(&s, sockopt::RcvBuf, &RCVBUF).unwrap();
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

/// Kernel receive-queue drops of the local UDP socket on `port` (the `drops` column of
/// `/proc/net/udp`): packets the relay never saw because its socket queue was full.
fn kernel_drops(port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/udp").expect("/proc/net/udp is required");
    let wanted = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(1) == Some(&wanted.as_str())).then(|| f.last().unwrap().parse::<u64>().unwrap())
        })
        .next()
        .unwrap_or_else(|| panic!("socket 127.0.0.1:{port} not in /proc/net/udp"))
}

/// What a peer received, by SSRC.
#[derive(Debug, Default, Clone)]
struct Received {
    legit: u64,
    /// Sequence numbers of the legitimate packets, in arrival order.
    legit_seqs: Vec<u16>,
    spoofed: u64,
    other: u64,
}

/// Counts what `sock` receives until `stop` is set and the socket stayed quiet for 300 ms
/// (or the test deadline passes).
fn receiver(
    sock: UdpSocket,
    legit_ssrc: u32,
    stop: Arc<AtomicBool>,
    deadline: Instant,
) -> thread::JoinHandle<Received> {
    thread::spawn(move || {
        sock.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut r = Received::default();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) => {
                    let p = RtpPacket::new_checked(&buf[..n])
                        .map(|p| (p.ssrc().0, p.sequence_number()));
                    match p {
                        Ok((s, seq)) if s == legit_ssrc => {
                            r.legit += 1;
                            r.legit_seqs.push(seq);
                        }
                        Ok((SPOOF_SSRC, _)) => r.spoofed += 1,
                        _ => r.other += 1,
                    }
                }
                Err(_) if stop.load(Ordering::Acquire) => break,
                Err(_) => {}
            }
        }
        r
    })
}

/// Sends paced media until `flood_done` is set (bounded by `max`); returns how many it sent.
fn paced_sender(
    sock: Arc<UdpSocket>,
    to: SocketAddr,
    ssrc: u32,
    first_seq: u16,
    flood_done: Arc<AtomicBool>,
    max: u16,
) -> thread::JoinHandle<u16> {
    thread::spawn(move || {
        let mut sent = 0u16;
        while sent < max && !flood_done.load(Ordering::Acquire) {
            sock.send_to(&rtp(first_seq + sent, ssrc), to).unwrap();
            sent += 1;
            thread::sleep(MEDIA_INTERVAL);
        }
        sent
    })
}

fn relay_leg(peer: SocketAddr) -> (LegSockets, SocketAddr) {
    let rtp = bind();
    let local = addr(&rtp);
    (
        LegSockets {
            rtp,
            rtcp: None,
            peer_rtp: Some(peer),
            peer_rtcp: None,
            rtcp_mux: true,
            codecs: CodecHints::new(),
        },
        local,
    )
}

/// How hard the flood pushes.
#[derive(Debug, Clone, Copy)]
struct Load {
    /// Receive buffers of the worker (io_uring's provided-buffer ring).
    buffers: u16,
    /// Pause after each burst of spoofed packets.
    burst_pause: Duration,
}

/// Enough buffers and a flood the relay keeps up with: nothing legitimate may be lost.
const SUSTAINED: Load = Load {
    buffers: 256,
    burst_pause: Duration::from_micros(500),
};

/// A tiny buffer ring and a flood without pauses: io_uring runs out of buffers.
const EXHAUSTING: Load = Load {
    buffers: 8,
    burst_pause: Duration::ZERO,
};

fn spoofed_flood(backend: Backend, load: Load) {
    let deadline = Instant::now() + TEST_DEADLINE;
    let dp = Dataplane::start(DataplaneConfig {
        backend,
        workers: 1,
        max_sockets_per_worker: 64,
        ring_entries: 256,
        buffers_per_worker: load.buffers,
        ..Default::default()
    })
    .unwrap();
    // Peers of stream 1 (a1 → b1) and stream 2 (a2 → b2).
    let (a1, b1, a2, b2) = (bind(), bind(), bind(), bind());
    let (l1a, r1a) = relay_leg(addr(&a1));
    let (l1b, r1b) = relay_leg(addr(&b1));
    let (l2a, r2a) = relay_leg(addr(&a2));
    let (l2b, r2b) = relay_leg(addr(&b2));
    dp.add_stream(StreamId(1), l1a, l1b, STRICT).unwrap();
    dp.add_stream(StreamId(2), l2a, l2b, STRICT).unwrap();

    // Latch both sides of both streams before the flood starts.
    let mut buf = [0u8; 2048];
    for (tx, to, rx, ssrc) in [
        (&a1, r1a, &b1, LEGIT_SSRC_1),
        (&b1, r1b, &a1, LEGIT_SSRC_1),
        (&a2, r2a, &b2, LEGIT_SSRC_2),
        (&b2, r2b, &a2, LEGIT_SSRC_2),
    ] {
        rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        tx.send_to(&rtp(0, ssrc), to).unwrap();
        rx.recv_from(&mut buf)
            .expect("latching packet not forwarded");
    }
    let st = dp.stream_stats(StreamId(1)).unwrap();
    assert_eq!((st.peer_a, st.peer_b), (Some(addr(&a1)), Some(addr(&b1))));
    let drops_before = kernel_drops(r1a.port());
    let before = dp.totals();

    let stop_rx = Arc::new(AtomicBool::new(false));
    let flood_done = Arc::new(AtomicBool::new(false));
    let rx1 = receiver(b1, LEGIT_SSRC_1, Arc::clone(&stop_rx), deadline);
    let rx2 = receiver(b2, LEGIT_SSRC_2, Arc::clone(&stop_rx), deadline);
    let a1 = Arc::new(a1);
    let a2 = Arc::new(a2);
    let tx1 = paced_sender(
        Arc::clone(&a1),
        r1a,
        LEGIT_SSRC_1,
        1,
        Arc::clone(&flood_done),
        5000,
    );
    let tx2 = paced_sender(
        Arc::clone(&a2),
        r2a,
        LEGIT_SSRC_2,
        1,
        Arc::clone(&flood_done),
        5000,
    );

    // The flood: valid RTP from other ports of the same host, as fast as bursts allow.
    let spoofers: Vec<UdpSocket> = (0..SPOOFERS).map(|_| bind()).collect();
    let flood_started = Instant::now();
    let mut spoofed_sent = 0u32;
    let spoof = rtp(7, SPOOF_SSRC);
    while spoofed_sent < SPOOFED_PACKETS && Instant::now() < deadline {
        for _ in 0..FLOOD_BURST {
            let s = &spoofers[spoofed_sent as usize % SPOOFERS];
            s.send_to(&spoof, r1a).unwrap();
            spoofed_sent += 1;
        }
        if !load.burst_pause.is_zero() {
            thread::sleep(load.burst_pause);
        }
    }
    let flood_time = flood_started.elapsed();
    flood_done.store(true, Ordering::Release);
    let legit1_during = tx1.join().unwrap();
    let legit2_during = tx2.join().unwrap();

    // Recovery: after the flood, stream 1 must be whole again.
    thread::sleep(Duration::from_millis(100));
    let recovery_first = legit1_during + 1;
    for i in 0..RECOVERY_PACKETS {
        a1.send_to(&rtp(recovery_first + i, LEGIT_SSRC_1), r1a)
            .unwrap();
        a2.send_to(&rtp(legit2_during + 1 + i, LEGIT_SSRC_2), r2a)
            .unwrap();
        thread::sleep(MEDIA_INTERVAL);
    }
    stop_rx.store(true, Ordering::Release);
    let got1 = rx1.join().unwrap();
    let got2 = rx2.join().unwrap();
    let drops = kernel_drops(r1a.port()) - drops_before;
    let st1 = dp.stream_stats(StreamId(1)).unwrap();
    let st2 = dp.stream_stats(StreamId(2)).unwrap();
    let t = dp.totals();
    let ring_empty = t.buffer_ring_empty - before.buffer_ring_empty;
    let legit1 = u64::from(legit1_during) + u64::from(RECOVERY_PACKETS);
    let legit2 = u64::from(legit2_during) + u64::from(RECOVERY_PACKETS);
    eprintln!(
        "{backend:?} {load:?}: {spoofed_sent} spoofed in {flood_time:?} ({:.0} pps); \
         stream 1 got {}/{legit1} legit ({} lost); stream 2 got {}/{legit2}; \
         kernel drops on stream 1's port {drops}; buffer ring empty {ring_empty}; \
         spoofed_dropped {}",
        f64::from(spoofed_sent) / flood_time.as_secs_f64(),
        got1.legit,
        legit1 - got1.legit,
        got2.legit,
        st1.from_a.spoofed_dropped,
    );

    // Nothing spoofed (or foreign) reached the peer: it got exactly what the relay forwarded,
    // all of it stream 1's own media (+1 for the latching packet).
    assert_eq!(got1.spoofed, 0, "spoofed packets reached stream 1's peer");
    assert_eq!(got1.other, 0);
    assert_eq!(got1.legit + 1, st1.from_a.packets);
    // Every packet that reached the relay socket is accounted for: each spoofed one was
    // counted as spoofed, each legitimate one forwarded.
    assert_eq!(
        st1.from_a.spoofed_dropped + got1.legit + drops,
        u64::from(spoofed_sent) + legit1,
        "spoofed/forwarded/kernel-dropped do not add up"
    );
    assert!(st1.from_a.spoofed_dropped >= u64::from(spoofed_sent) - drops);
    assert_eq!(
        t.dropped_spoofed - before.dropped_spoofed,
        st1.from_a.spoofed_dropped
    );
    if drops == 0 {
        assert_eq!(st1.from_a.spoofed_dropped, u64::from(spoofed_sent));
    }
    // Stream 2 shares the worker and its buffers, and loses nothing.
    assert_eq!(got2.legit, legit2, "stream 2 lost media during the flood");
    assert_eq!(got2.spoofed + got2.other, 0);
    assert_eq!(st2.from_a.spoofed_dropped, 0);
    if load.buffers == EXHAUSTING.buffers && backend == Backend::Uring {
        assert!(
            ring_empty > 0,
            "the flood should have exhausted the buffer ring"
        );
    }
    // Stream 1 kept flowing during the flood; what it lost, only the full socket queue lost.
    assert!(
        got1.legit > u64::from(RECOVERY_PACKETS),
        "no legitimate stream-1 media got through during the flood"
    );
    assert!(
        legit1 - got1.legit <= drops,
        "legitimate packets lost inside the relay: {} lost, {drops} dropped by the kernel",
        legit1 - got1.legit
    );
    // Recovered: every post-flood packet arrived, and the relay's loss count covers only the
    // flood window.
    for seq in recovery_first..recovery_first + RECOVERY_PACKETS {
        assert!(
            got1.legit_seqs.contains(&seq),
            "post-flood packet {seq} lost"
        );
        assert!(got2.legit_seqs.contains(
            &seq.wrapping_sub(recovery_first)
                .wrapping_add(legit2_during + 1)
        ));
    }
    let flood_loss = i64::try_from(legit1 - got1.legit).unwrap();
    assert_eq!(st1.from_a.rtp_lost, flood_loss);
    assert_eq!(st1.from_a.last_ssrc, Some(LEGIT_SSRC_1));
    dp.shutdown();
}

#[test]
fn uring_spoofed_flood() {
    spoofed_flood(Backend::Uring, SUSTAINED);
}

#[test]
fn mmsg_spoofed_flood() {
    spoofed_flood(Backend::Mmsg, SUSTAINED);
}

#[test]
fn uring_spoofed_flood_exhausting_the_buffer_ring() {
    spoofed_flood(Backend::Uring, EXHAUSTING);
}

#[test]
fn mmsg_spoofed_flood_without_pauses() {
    spoofed_flood(Backend::Mmsg, EXHAUSTING);
}
