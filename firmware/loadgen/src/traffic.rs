//! The media engine: paced RTP out, measured RTP in, on one thread.
//!
//! Endpoints share a small set of UDP sockets (endpoint `i` uses socket `i % sockets`), so sends
//! batch into `sendmmsg` and receives into `recvmmsg`; a relay forwards by destination port and
//! does the same work whether peers share a source address or not. Each packet carries its send
//! time (CLOCK_MONOTONIC), its stream and a 64-bit sequence in the payload. Sends are spread
//! evenly over each 20 ms interval, released at most `send_slack` early so batches form without
//! bursting.

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags};
use nix::sys::socket::{
    recvmmsg, sendmmsg, setsockopt, sockopt, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn,
};
use pop_wire::rtp::{emit_header, RtpPacket, Ssrc, RTP_HEADER_LEN};
use serde::Serialize;

use crate::clock::{monotonic_ns, NS_PER_MS, NS_PER_S};
use crate::error::{LoadgenError, Result};
use crate::latency::LatencyHistogram;
use crate::procstat;
use crate::stream_stats::{RxVerdict, StreamRx};

/// Size of every packet: 12-byte RTP header + 160 bytes of PCMU (20 ms at 8 kHz).
pub const PACKET_LEN: usize = 172;
/// Payload type sent (PCMU).
const PT_PCMU: u8 = 0;
/// Marks our own payloads, so stray datagrams are counted and ignored.
const MAGIC: [u8; 4] = *b"PLG1";
/// Messages per `sendmmsg`/`recvmmsg`.
const BATCH: usize = 64;
/// Receive buffer per socket; forced past rmem_max when we may (root), so bursts at the
/// highest rates queue instead of being dropped on our side.
const SOCKET_RCVBUF: usize = 16 << 20;
/// `recvmmsg` rounds per ready socket per loop, so one busy socket cannot starve sending.
const RX_ROUNDS: usize = 4;

/// The load generator's media sockets.
#[derive(Debug)]
pub struct EndpointSockets {
    socks: Vec<UdpSocket>,
    addrs: Vec<SocketAddrV4>,
}

impl EndpointSockets {
    /// Binds `count` sockets on 127.0.0.1 at even ports from `first_port` up (skipping ports
    /// in use), nonblocking, with large receive buffers.
    pub fn bind(count: usize, first_port: u16) -> Result<Self> {
        if count == 0 {
            return Err(LoadgenError::Config {
                field: "loadgen-sockets",
                reason: "at least one socket is needed".into(),
            });
        }
        let mut socks = Vec::with_capacity(count);
        let mut addrs = Vec::with_capacity(count);
        let mut port = u32::from(first_port & !1);
        while socks.len() < count {
            let Ok(p) = u16::try_from(port) else {
                return Err(LoadgenError::Config {
                    field: "loadgen-first-port",
                    reason: format!("no {count} free even ports from {first_port} up"),
                });
            };
            port += 2;
            let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, p);
            let Ok(s) = UdpSocket::bind(addr) else {
                continue;
            };
            s.set_nonblocking(true)
                .map_err(|e| LoadgenError::sys("set socket nonblocking", e))?;
            if setsockopt(&s, sockopt::RcvBufForce, &SOCKET_RCVBUF).is_err() {
                setsockopt(&s, sockopt::RcvBuf, &SOCKET_RCVBUF)
                    .map_err(|e| LoadgenError::sys("set SO_RCVBUF", e))?;
            }
            socks.push(s);
            addrs.push(addr);
        }
        Ok(Self { socks, addrs })
    }

    /// Number of sockets.
    pub fn len(&self) -> usize {
        self.socks.len()
    }

    /// Always false: construction refuses zero sockets.
    pub fn is_empty(&self) -> bool {
        self.socks.is_empty()
    }

    /// Socket index serving `endpoint`.
    pub fn socket_of(&self, endpoint: usize) -> usize {
        endpoint % self.socks.len()
    }

    /// Media address of `endpoint`, as put into its SDP.
    pub fn endpoint_addr(&self, endpoint: usize) -> SocketAddrV4 {
        self.addrs
            .get(self.socket_of(endpoint))
            .copied()
            .unwrap_or(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
    }

    /// Local ports of the sockets.
    pub fn ports(&self) -> Vec<u16> {
        self.addrs.iter().map(SocketAddrV4::port).collect()
    }
}

/// One direction of one session: who sends and where the relay wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamRoute {
    /// Sending endpoint (its socket is `endpoint % sockets`).
    pub sender: usize,
    /// Relay address to send to.
    pub dest: SocketAddrV4,
}

/// What a phase of a run is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum PhaseRole {
    /// Traffic flows, nothing is measured (latching, caches, steady state).
    Warmup,
    /// The measured window: loss, latency, relay CPU.
    Measure,
    /// Overload: traffic far past saturation, not measured.
    Overload,
    /// After an overload: every stream must come back.
    Recovery,
}

/// A stretch of a run at one offered rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Phase {
    /// Purpose.
    pub role: PhaseRole,
    /// Length.
    pub duration: Duration,
    /// Packets each stream sends per 20 ms interval (1 = real PCMU; more = overload).
    pub packets_per_interval: u32,
}

/// Engine settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrafficConfig {
    /// Packet interval of each stream.
    pub interval: Duration,
    /// How early a due packet may be sent so that batches form.
    pub send_slack: Duration,
    /// Receive-only time after the last phase, for packets in flight.
    pub drain: Duration,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(20),
            send_slack: Duration::from_micros(200),
            drain: Duration::from_millis(300),
        }
    }
}

/// Recovery after an overload.
#[derive(Debug, Clone, Serialize)]
pub struct RecoveryReport {
    /// Streams with no packet of the recovery phase delivered at all.
    pub silent_streams: usize,
    /// Streams whose first recovery-phase packet arrived later than the limit.
    pub late_streams: usize,
    /// Slowest stream: ms from the start of the recovery phase to its first delivered packet.
    pub worst_first_packet_ms: f64,
    /// Limit applied.
    pub limit_ms: f64,
}

/// Figures of one run's measured window.
#[derive(Debug, Clone, Serialize)]
pub struct TrafficReport {
    /// Streams (2 per session).
    pub streams: usize,
    /// Length of the measured window, s.
    pub measured_s: f64,
    /// Packets sent in the measured window.
    pub sent: u64,
    /// Distinct packets of the measured window delivered.
    pub received: u64,
    /// Duplicate deliveries.
    pub duplicates: u64,
    /// sent − received.
    pub lost: u64,
    /// lost / sent.
    pub loss_ratio: f64,
    /// Offered rate actually achieved, packets/s.
    pub offered_pps: f64,
    /// One-way latency, µs.
    pub latency_p50_us: f64,
    /// One-way latency, µs.
    pub latency_p99_us: f64,
    /// One-way latency, µs.
    pub latency_max_us: f64,
    /// Sends the kernel refused (counted, not retried, so pacing holds).
    pub send_failures: u64,
    /// Sends skipped because the load generator fell behind its schedule (whole run).
    pub schedule_skips: u64,
    /// Datagrams that were not ours (wrong size or marker).
    pub foreign_packets: u64,
    /// Fraction of one core the load generator used in the measured window.
    pub loadgen_cpu: f64,
    /// Set when the run had a recovery phase.
    pub recovery: Option<RecoveryReport>,
}

/// Hook called at the measured window's edges, e.g. to sample the relay's CPU time.
pub trait WindowObserver {
    /// Called right before the first measured send.
    fn window_start(&mut self) -> Result<()>;
    /// Called right after the last measured send.
    fn window_end(&mut self) -> Result<()>;
}

/// Observer that does nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl WindowObserver for NoObserver {
    fn window_start(&mut self) -> Result<()> {
        Ok(())
    }
    fn window_end(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Limit on the first packet after an overload.
const RECOVERY_LIMIT_MS: f64 = 1_000.0;

struct Sender {
    headers: MultiHeaders<SockaddrIn>,
    bufs: Vec<[u8; PACKET_LEN]>,
    dests: Vec<Option<SockaddrIn>>,
    len: usize,
    socket: usize,
}

struct Receiver {
    headers: MultiHeaders<SockaddrIn>,
    bufs: Vec<[u8; 2048]>,
    lens: [usize; BATCH],
}

/// Per-run state of the media engine.
struct Run<'a> {
    sockets: &'a EndpointSockets,
    streams: &'a [StreamRoute],
    order: Vec<usize>,
    seq: Vec<u64>,
    rx: Vec<StreamRx>,
    hist: LatencyHistogram,
    measure_phase: Option<u8>,
    recovery_phase: Option<(u8, u64)>,
    sent_measured: u64,
    received_measured: u64,
    send_failures: u64,
    schedule_skips: u64,
    foreign: u64,
}

/// Runs `phases` over `streams` and returns the measured window's figures.
pub fn run(
    sockets: &EndpointSockets,
    streams: &[StreamRoute],
    phases: &[Phase],
    cfg: TrafficConfig,
    observer: &mut dyn WindowObserver,
) -> Result<TrafficReport> {
    if streams.is_empty() {
        return Err(LoadgenError::Config {
            field: "sessions",
            reason: "no streams to drive".into(),
        });
    }
    if phases.len() > usize::from(u8::MAX) {
        return Err(LoadgenError::Config {
            field: "phases",
            reason: "at most 255 phases".into(),
        });
    }
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
        .map_err(|e| LoadgenError::sys("epoll_create", e))?;
    for (i, s) in sockets.socks.iter().enumerate() {
        epoll
            .add(s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
            .map_err(|e| LoadgenError::sys("epoll_ctl", e))?;
    }
    // Send order grouped by socket, so consecutive sends share a socket and batch.
    let mut order: Vec<usize> = (0..streams.len()).collect();
    order.sort_by_key(|&s| streams.get(s).map_or(0, |r| sockets.socket_of(r.sender)));
    let mut run = Run {
        sockets,
        streams,
        order,
        seq: vec![0; streams.len()],
        rx: vec![StreamRx::default(); streams.len()],
        hist: LatencyHistogram::new(),
        measure_phase: None,
        recovery_phase: None,
        sent_measured: 0,
        received_measured: 0,
        send_failures: 0,
        schedule_skips: 0,
        foreign: 0,
    };
    let mut tx = Sender {
        headers: MultiHeaders::preallocate(BATCH, None),
        bufs: vec![[0u8; PACKET_LEN]; BATCH],
        dests: vec![None; BATCH],
        len: 0,
        socket: 0,
    };
    let mut rxb = Receiver {
        headers: MultiHeaders::preallocate(BATCH, None),
        bufs: vec![[0u8; 2048]; BATCH],
        lens: [0; BATCH],
    };
    let mut events = vec![EpollEvent::empty(); sockets.len().min(256)];
    let interval_ns = u128::from(u64::try_from(cfg.interval.as_nanos()).unwrap_or(20 * NS_PER_MS));
    let slack_ns = u64::try_from(cfg.send_slack.as_nanos()).unwrap_or(0);

    let mut measured_ns = 0u64;
    let mut cpu_at_start = 0.0;
    let mut loadgen_cpu = 0.0;
    for (index, phase) in phases.iter().enumerate() {
        let phase_id = index as u8;
        let per_interval = (streams.len() as u128) * u128::from(phase.packets_per_interval.max(1));
        if phase.role == PhaseRole::Measure {
            // Before the clock starts: sampling a relay with 16,000 sockets takes a while.
            observer.window_start()?;
            cpu_at_start = procstat::self_cpu_s();
        }
        let start = monotonic_ns();
        let end = start + u64::try_from(phase.duration.as_nanos()).unwrap_or(u64::MAX / 4);
        match phase.role {
            PhaseRole::Measure => run.measure_phase = Some(phase_id),
            PhaseRole::Recovery => run.recovery_phase = Some((phase_id, start)),
            PhaseRole::Warmup | PhaseRole::Overload => {}
        }
        let mut k: u128 = 0;
        loop {
            let now = monotonic_ns();
            if now >= end {
                break;
            }
            let elapsed = u128::from(now - start);
            // A load generator that fell more than one interval behind (overload phases, or a
            // busy host) skips ahead instead of bursting the backlog: the offered rate is what
            // was actually sent, which the report shows.
            if k * interval_ns / per_interval + interval_ns < elapsed {
                let target = elapsed * per_interval / interval_ns;
                run.schedule_skips += u64::try_from(target - k).unwrap_or(u64::MAX);
                k = target;
            }
            let horizon = elapsed + u128::from(slack_ns);
            // Due time of send k is k * interval / per_interval after the phase start; at most
            // a few batches per round so receiving is never starved.
            let mut queued = 0;
            while k * interval_ns / per_interval <= horizon && queued < 4 * BATCH {
                queued += 1;
                let slot = (k % per_interval) as usize % streams.len();
                let stream = run.order.get(slot).copied().unwrap_or(0);
                run.queue_send(&mut tx, stream, phase_id, phase.role == PhaseRole::Measure)?;
                k += 1;
            }
            run.flush(&mut tx, phase.role == PhaseRole::Measure)?;
            let next_due =
                start + u64::try_from(k * interval_ns / per_interval).unwrap_or(u64::MAX / 4);
            let now = monotonic_ns();
            let wait_ms = next_due.saturating_sub(now + slack_ns) / NS_PER_MS;
            run.poll_receive(&epoll, &mut events, &mut rxb, wait_ms.min(10) as u16)?;
        }
        if phase.role == PhaseRole::Measure {
            measured_ns = monotonic_ns() - start;
            loadgen_cpu =
                (procstat::self_cpu_s() - cpu_at_start) / (measured_ns as f64 / NS_PER_S as f64);
            observer.window_end()?;
        }
    }
    let drain_end = monotonic_ns() + u64::try_from(cfg.drain.as_nanos()).unwrap_or(0);
    while monotonic_ns() < drain_end {
        run.poll_receive(&epoll, &mut events, &mut rxb, 5)?;
    }
    Ok(run.report(measured_ns, loadgen_cpu))
}

impl Run<'_> {
    fn queue_send(
        &mut self,
        tx: &mut Sender,
        stream: usize,
        phase_id: u8,
        measured: bool,
    ) -> Result<()> {
        let Some(route) = self.streams.get(stream) else {
            return Ok(());
        };
        let socket = self.sockets.socket_of(route.sender);
        if tx.len > 0 && (tx.socket != socket || tx.len == BATCH) {
            self.flush(tx, measured)?;
        }
        tx.socket = socket;
        let seq = self.seq.get_mut(stream).map_or(0, |s| {
            *s += 1;
            *s
        });
        if let (Some(buf), Some(dest)) = (tx.bufs.get_mut(tx.len), tx.dests.get_mut(tx.len)) {
            let ssrc = Ssrc(0x5000_0000 | stream as u32);
            emit_header(
                buf,
                PT_PCMU,
                false,
                seq as u16,
                (seq as u32).wrapping_mul(160),
                ssrc,
            );
            if let Some(p) = buf.get_mut(RTP_HEADER_LEN..RTP_HEADER_LEN + 25) {
                // Send time is stamped at flush; stream, sequence, phase and marker now.
                p[8..12].copy_from_slice(&(stream as u32).to_be_bytes());
                p[12..20].copy_from_slice(&seq.to_be_bytes());
                p[20] = phase_id;
                p[21..25].copy_from_slice(&MAGIC);
            }
            *dest = Some(SockaddrIn::from(route.dest));
            tx.len += 1;
        }
        Ok(())
    }

    fn flush(&mut self, tx: &mut Sender, measured: bool) -> Result<()> {
        if tx.len == 0 {
            return Ok(());
        }
        let now = monotonic_ns().to_be_bytes();
        for b in tx.bufs.iter_mut().take(tx.len) {
            if let Some(t) = b.get_mut(RTP_HEADER_LEN..RTP_HEADER_LEN + 8) {
                t.copy_from_slice(&now);
            }
        }
        let Some(sock) = self.sockets.socks.get(tx.socket) else {
            tx.len = 0;
            return Ok(());
        };
        let iovs: Vec<[IoSlice<'_>; 1]> = tx
            .bufs
            .iter()
            .take(tx.len)
            .map(|b| [IoSlice::new(b)])
            .collect();
        let dests = tx.dests.get(..tx.len).unwrap_or(&[]);
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = match sendmmsg(
            sock.as_raw_fd(),
            &mut tx.headers,
            &iovs,
            dests,
            no_cmsgs,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => r.count(),
            Err(Errno::EAGAIN | Errno::ENOBUFS | Errno::ECONNREFUSED | Errno::EINTR) => 0,
            Err(e) => return Err(LoadgenError::sys("sendmmsg", e)),
        };
        // Unsent packets are not retried (pacing matters more) and not counted as offered.
        let unsent = tx.len - sent.min(tx.len);
        self.send_failures += unsent as u64;
        if measured {
            self.sent_measured += sent as u64;
        }
        tx.len = 0;
        Ok(())
    }

    fn poll_receive(
        &mut self,
        epoll: &Epoll,
        events: &mut [EpollEvent],
        rxb: &mut Receiver,
        wait_ms: u16,
    ) -> Result<()> {
        let n = match epoll.wait(events, wait_ms) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(LoadgenError::sys("epoll_wait", e)),
        };
        for ev in events.iter().take(n) {
            let Some(sock) = self.sockets.socks.get(ev.data() as usize) else {
                continue;
            };
            for _ in 0..RX_ROUNDS {
                let got = self.receive_batch(sock, rxb)?;
                if got < BATCH {
                    break;
                }
            }
        }
        Ok(())
    }

    fn receive_batch(&mut self, sock: &UdpSocket, rxb: &mut Receiver) -> Result<usize> {
        let count = {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                rxb.bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                sock.as_raw_fd(),
                &mut rxb.headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    let mut c = 0;
                    for (len, r) in rxb.lens.iter_mut().zip(results) {
                        *len = r.bytes;
                        c += 1;
                    }
                    c
                }
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => 0,
                Err(e) => return Err(LoadgenError::sys("recvmmsg", e)),
            }
        };
        let now = monotonic_ns();
        for (buf, &len) in rxb.bufs.iter().zip(rxb.lens.iter()).take(count) {
            self.on_datagram(buf.get(..len).unwrap_or(&[]), now);
        }
        Ok(count)
    }

    fn on_datagram(&mut self, d: &[u8], now: u64) {
        let Some((sent_ns, stream, seq, phase)) = parse_payload(d) else {
            self.foreign += 1;
            return;
        };
        let Some(rx) = self.rx.get_mut(stream) else {
            self.foreign += 1;
            return;
        };
        if rx.on_packet(seq) == RxVerdict::Duplicate {
            return;
        }
        if Some(phase) == self.measure_phase {
            rx.received_measured += 1;
            self.received_measured += 1;
            self.hist.record(now.saturating_sub(sent_ns));
        }
        if let Some((rec, _)) = self.recovery_phase {
            if phase == rec && rx.first_after_mark_ns.is_none() {
                rx.first_after_mark_ns = Some(now);
            }
        }
    }

    fn report(&self, measured_ns: u64, loadgen_cpu: f64) -> TrafficReport {
        let measured_s = measured_ns as f64 / NS_PER_S as f64;
        let lost = self.sent_measured.saturating_sub(self.received_measured);
        let recovery = self.recovery_phase.map(|(_, mark)| {
            let mut silent = 0;
            let mut late = 0;
            let mut worst = 0.0f64;
            for rx in &self.rx {
                match rx.first_after_mark_ns {
                    None => silent += 1,
                    Some(t) => {
                        let ms = t.saturating_sub(mark) as f64 / NS_PER_MS as f64;
                        worst = worst.max(ms);
                        if ms > RECOVERY_LIMIT_MS {
                            late += 1;
                        }
                    }
                }
            }
            RecoveryReport {
                silent_streams: silent,
                late_streams: late,
                worst_first_packet_ms: worst,
                limit_ms: RECOVERY_LIMIT_MS,
            }
        });
        TrafficReport {
            streams: self.streams.len(),
            measured_s,
            sent: self.sent_measured,
            received: self.received_measured,
            duplicates: self.rx.iter().map(|r| r.duplicates).sum(),
            lost,
            loss_ratio: if self.sent_measured == 0 {
                0.0
            } else {
                lost as f64 / self.sent_measured as f64
            },
            offered_pps: if measured_s > 0.0 {
                self.sent_measured as f64 / measured_s
            } else {
                0.0
            },
            latency_p50_us: self.hist.quantile(0.5) as f64 / 1e3,
            latency_p99_us: self.hist.quantile(0.99) as f64 / 1e3,
            latency_max_us: self.hist.max() as f64 / 1e3,
            send_failures: self.send_failures,
            schedule_skips: self.schedule_skips,
            foreign_packets: self.foreign,
            loadgen_cpu,
            recovery,
        }
    }
}

/// Send time, stream, sequence and phase of one of our packets.
fn parse_payload(d: &[u8]) -> Option<(u64, usize, u64, u8)> {
    if d.len() != PACKET_LEN {
        return None;
    }
    let p = RtpPacket::new_checked(d).ok()?;
    let pl = p.payload();
    if pl.get(21..25)? != MAGIC {
        return None;
    }
    let sent = u64::from_be_bytes(pl.get(0..8)?.try_into().ok()?);
    let stream = u32::from_be_bytes(pl.get(8..12)?.try_into().ok()?) as usize;
    let seq = u64::from_be_bytes(pl.get(12..20)?.try_into().ok()?);
    let phase = *pl.get(20)?;
    Some((sent, stream, seq, phase))
}

/// The two streams of each session: caller (endpoint 2i) → relay, callee (2i+1) → relay.
pub fn session_streams(
    routes: &[crate::ng_client::SessionRoute],
    first_endpoint: usize,
) -> Vec<StreamRoute> {
    routes
        .iter()
        .enumerate()
        .flat_map(|(i, r)| {
            let a = first_endpoint + 2 * i;
            [
                StreamRoute {
                    sender: a,
                    dest: r.caller_sends_to,
                },
                StreamRoute {
                    sender: a + 1,
                    dest: r.callee_sends_to,
                },
            ]
        })
        .collect()
}

/// Sum of the kernel's receive-queue drops over IPv4 UDP sockets whose local port satisfies
/// `port_filter` (`/proc/net/udp`, last column). Tells "the relay's socket overflowed" apart
/// from "our socket overflowed" when packets go missing.
pub fn udp_drops(port_filter: impl Fn(u16) -> bool) -> u64 {
    let Ok(table) = std::fs::read_to_string("/proc/net/udp") else {
        return 0;
    };
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_ascii_whitespace();
            let local = f.nth(1)?;
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let drops: u64 = f.last()?.parse().ok()?;
            port_filter(port).then_some(drops)
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in relay: forwards whatever arrives on port X to the peer endpoint's socket, so
    /// the engine's accounting can be checked end to end on loopback.
    #[test]
    fn loopback_reflector_delivers_everything_with_low_latency() {
        let sockets = EndpointSockets::bind(2, 41000).unwrap();
        // The "relay": one socket per direction, forwarding to the other endpoint's address.
        let relay_a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let relay_b = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to_b = sockets.endpoint_addr(1);
        let to_a = sockets.endpoint_addr(0);
        let addr_a = match relay_a.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let addr_b = match relay_b.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for (sock, to, dup) in [(relay_a, to_b, true), (relay_b, to_a, false)] {
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                sock.set_read_timeout(Some(Duration::from_millis(20)))
                    .unwrap();
                let mut buf = [0u8; 2048];
                let mut n_fwd = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if let Ok(n) = sock.recv(&mut buf) {
                        sock.send_to(&buf[..n], to).unwrap();
                        n_fwd += 1;
                        // Direction A duplicates every 10th packet: must be reported, not counted.
                        if dup && n_fwd.is_multiple_of(10) {
                            sock.send_to(&buf[..n], to).unwrap();
                        }
                    }
                }
            }));
        }
        let streams = [
            StreamRoute {
                sender: 0,
                dest: addr_a,
            },
            StreamRoute {
                sender: 1,
                dest: addr_b,
            },
        ];
        let phases = [
            Phase {
                role: PhaseRole::Warmup,
                duration: Duration::from_millis(100),
                packets_per_interval: 1,
            },
            Phase {
                role: PhaseRole::Measure,
                duration: Duration::from_millis(500),
                packets_per_interval: 1,
            },
        ];
        let r = run(
            &sockets,
            &streams,
            &phases,
            TrafficConfig::default(),
            &mut NoObserver,
        )
        .unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        // 2 streams × 50 pkt/s × 0.5 s = 50 packets, ±1 per stream for the window edges.
        assert!((48..=52).contains(&r.sent), "sent {}", r.sent);
        assert_eq!(r.received, r.sent, "{r:?}");
        assert_eq!(r.lost, 0);
        assert!(r.duplicates >= 1, "{r:?}");
        assert!(
            r.latency_p50_us > 0.0 && r.latency_p99_us < 20_000.0,
            "{r:?}"
        );
        assert_eq!(r.foreign_packets, 0);
    }

    #[test]
    fn recovery_reports_silent_streams() {
        let sockets = EndpointSockets::bind(1, 42000).unwrap();
        // Nobody listens on the destination: nothing comes back, the stream must be reported
        // silent (the check relay-soak relies on).
        let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
        let dest = match sink.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let phases = [Phase {
            role: PhaseRole::Recovery,
            duration: Duration::from_millis(100),
            packets_per_interval: 1,
        }];
        let cfg = TrafficConfig {
            drain: Duration::from_millis(50),
            ..TrafficConfig::default()
        };
        let r = run(
            &sockets,
            &[StreamRoute { sender: 0, dest }],
            &phases,
            cfg,
            &mut NoObserver,
        )
        .unwrap();
        assert_eq!(r.recovery.unwrap().silent_streams, 1);
    }

    #[test]
    fn foreign_payloads_rejected() {
        assert!(parse_payload(&[0u8; PACKET_LEN]).is_none());
        assert!(parse_payload(&[0x80u8; 20]).is_none());
        let mut b = [0u8; PACKET_LEN];
        emit_header(&mut b, 0, false, 1, 1, Ssrc(1)).unwrap();
        b[RTP_HEADER_LEN + 21..RTP_HEADER_LEN + 25].copy_from_slice(&MAGIC);
        b[RTP_HEADER_LEN + 11] = 3;
        assert_eq!(parse_payload(&b).map(|p| p.1), Some(3));
    }

    #[test]
    fn udp_drops_reads_proc() {
        // The table exists on Linux; a filter matching nothing sums to zero.
        assert_eq!(udp_drops(|_| false), 0);
    }
}
