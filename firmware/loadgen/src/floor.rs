//! The floor relay: the cheapest user-space UDP forwarder this host can run, as a measurement
//! reference for the benchmark — not a product.
//!
//! N port pairs (`base+2i` ↔ `base+2i+1`), one thread, level-triggered epoll, one `recvmmsg` of
//! up to 64 datagrams per readable socket and one `sendmmsg` of the same buffers out of the
//! partner socket to the partner's latched peer (the last source seen on the partner). No
//! parsing, no counters, no allocation after start. Whatever a real relay does on top of this
//! (sessions, NG, RTP checks, stats) costs more; the gap between this and the kernel's UDP path
//! is what no relay design can win back.

use std::io::{IoSlice, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrIn};

use crate::error::{LoadgenError, Result};
use crate::ng_client::SessionRoute;

/// Datagrams per `recvmmsg`/`sendmmsg`.
pub const FLOOR_BATCH: usize = 64;
/// Largest datagram forwarded whole; longer ones are truncated (RTP here is 172 bytes).
const MAX_DATAGRAM: usize = 2048;
/// Readiness events taken per `epoll_wait`.
const EVENTS: usize = 256;
/// Line the `relay-floor` binary prints once every socket is bound and registered; the
/// benchmark waits for it instead of an NG `ping`.
pub const READY_LINE: &str = "relay-floor ready";

/// The forwarder's state: sockets, latched peers and the one set of batch buffers.
#[derive(Debug)]
pub struct FloorRelay {
    socks: Vec<UdpSocket>,
    latched: Vec<Option<SockaddrIn>>,
    epoll: Epoll,
    events: Vec<EpollEvent>,
    bufs: Box<[[u8; MAX_DATAGRAM]; FLOOR_BATCH]>,
    lens: [usize; FLOOR_BATCH],
    rx_headers: MultiHeaders<SockaddrIn>,
    tx_headers: MultiHeaders<SockaddrIn>,
}

/// Port of socket `index` (`base + index`), if it fits.
fn port_of(port_base: u16, index: usize) -> Option<u16> {
    u16::try_from(index)
        .ok()
        .and_then(|i| port_base.checked_add(i))
}

/// Routes of `sessions` sessions on a floor relay bound at `addr:port_base`: session `i`'s
/// caller sends to `base+2i`, its callee to `base+2i+1` (one pair per session; the floor has no
/// RTCP ports).
pub fn session_routes(
    addr: Ipv4Addr,
    port_base: u16,
    sessions: usize,
) -> Result<Vec<SessionRoute>> {
    (0..sessions)
        .map(
            |i| match (port_of(port_base, 2 * i), port_of(port_base, 2 * i + 1)) {
                (Some(a), Some(b)) => Ok(SessionRoute {
                    caller_sends_to: SocketAddrV4::new(addr, a),
                    callee_sends_to: SocketAddrV4::new(addr, b),
                }),
                _ => Err(LoadgenError::Config {
                    field: "sessions",
                    reason: format!("{sessions} floor pairs from port {port_base} pass port 65535"),
                }),
            },
        )
        .collect()
}

impl FloorRelay {
    /// Binds `pairs` port pairs on `addr` from `port_base` up (nonblocking, default buffers,
    /// like the relays it is compared with) and registers them with epoll.
    pub fn bind(addr: Ipv4Addr, port_base: u16, pairs: usize) -> Result<Self> {
        let last = pairs.checked_mul(2).and_then(|n| n.checked_sub(1));
        if port_base == 0 || last.and_then(|l| port_of(port_base, l)).is_none() {
            return Err(LoadgenError::Config {
                field: "pairs",
                reason: format!(
                    "{pairs} pairs from port {port_base}: need at least one pair, a base port \
                     above 0 and every port ≤ 65535"
                ),
            });
        }
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| LoadgenError::sys("epoll_create", e))?;
        let mut socks = Vec::with_capacity(2 * pairs);
        for i in 0..2 * pairs {
            let port = port_of(port_base, i).unwrap_or(0);
            let s = UdpSocket::bind(SocketAddrV4::new(addr, port)).map_err(|source| {
                LoadgenError::Sys {
                    what: "bind a floor port (is the port range free?)",
                    source,
                }
            })?;
            s.set_nonblocking(true)
                .map_err(|e| LoadgenError::sys("set socket nonblocking", e))?;
            epoll
                .add(&s, EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                .map_err(|e| LoadgenError::sys("epoll_ctl", e))?;
            socks.push(s);
        }
        Ok(Self {
            latched: vec![None; socks.len()],
            socks,
            epoll,
            events: vec![EpollEvent::empty(); EVENTS],
            bufs: Box::new([[0u8; MAX_DATAGRAM]; FLOOR_BATCH]),
            lens: [0; FLOOR_BATCH],
            rx_headers: MultiHeaders::preallocate(FLOOR_BATCH, None),
            tx_headers: MultiHeaders::preallocate(FLOOR_BATCH, None),
        })
    }

    /// Local address of socket `index` (pair `index / 2`).
    pub fn local_addr(&self, index: usize) -> Option<SocketAddrV4> {
        match self.socks.get(index)?.local_addr().ok()? {
            std::net::SocketAddr::V4(a) => Some(a),
            std::net::SocketAddr::V6(_) => None,
        }
    }

    /// Forwards forever (until the process is signalled).
    pub fn run(&mut self) -> Result<std::convert::Infallible> {
        loop {
            self.poll_once(EpollTimeout::NONE)?;
        }
    }

    /// One `epoll_wait` (up to `timeout`) and one batch per readable socket. Returns the
    /// datagrams handed to the kernel for sending (for tests; the loop itself keeps no stats).
    pub fn poll_once(&mut self, timeout: impl Into<EpollTimeout>) -> Result<usize> {
        let n = match self.epoll.wait(&mut self.events, timeout) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(LoadgenError::sys("epoll_wait", e)),
        };
        let mut forwarded = 0;
        for i in 0..n {
            let Some(index) = self.events.get(i).map(|e| e.data() as usize) else {
                continue;
            };
            forwarded += self.forward_batch(index)?;
        }
        Ok(forwarded)
    }

    fn forward_batch(&mut self, index: usize) -> Result<usize> {
        let Some(sock) = self.socks.get(index) else {
            return Ok(0);
        };
        let mut last_source = None;
        let count = {
            let mut iovs = self.bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            match recvmmsg(
                sock.as_raw_fd(),
                &mut self.rx_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            ) {
                Ok(results) => {
                    let mut c = 0;
                    for (len, r) in self.lens.iter_mut().zip(results) {
                        *len = r.bytes;
                        last_source = r.address.or(last_source);
                        c += 1;
                    }
                    c
                }
                Err(Errno::EAGAIN | Errno::EINTR | Errno::ECONNREFUSED) => 0,
                Err(e) => return Err(LoadgenError::sys("recvmmsg", e)),
            }
        };
        if count == 0 {
            return Ok(0);
        }
        if let Some(slot) = self.latched.get_mut(index) {
            if last_source.is_some() {
                *slot = last_source;
            }
        }
        let partner = index ^ 1;
        let (Some(out), Some(Some(peer))) = (self.socks.get(partner), self.latched.get(partner))
        else {
            return Ok(0); // partner has not spoken yet: nowhere to send
        };
        let peer = *peer;
        let bufs = &self.bufs;
        let lens = &self.lens;
        let iovs: [[IoSlice<'_>; 1]; FLOOR_BATCH] = std::array::from_fn(|i| {
            let len = lens.get(i).copied().unwrap_or(0);
            [IoSlice::new(
                bufs.get(i).and_then(|b| b.get(..len)).unwrap_or(&[]),
            )]
        });
        let dests = [Some(peer); FLOOR_BATCH];
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        let sent = match sendmmsg(
            out.as_raw_fd(),
            &mut self.tx_headers,
            iovs.iter().take(count),
            dests,
            no_cmsgs,
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(r) => r.count(),
            // A full send queue or an unreachable peer drops the batch, as a relay would.
            Err(
                Errno::EAGAIN | Errno::ENOBUFS | Errno::ECONNREFUSED | Errno::EINTR | Errno::EPERM,
            ) => 0,
            Err(e) => return Err(LoadgenError::sys("sendmmsg", e)),
        };
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Polls the relay until `sock` has a datagram or `ms` pass.
    fn recv_within(
        relay: &mut FloorRelay,
        sock: &UdpSocket,
        ms: u64,
    ) -> Option<(Vec<u8>, SocketAddrV4)> {
        let deadline = Instant::now() + Duration::from_millis(ms);
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            relay.poll_once(10u16).unwrap();
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let std::net::SocketAddr::V4(from) = from else {
                    return None;
                };
                return Some((buf[..n].to_vec(), from));
            }
        }
        None
    }

    #[test]
    fn forwards_to_partners_latched_peer_both_ways() {
        // Another test or process may hold a base: try a few.
        let mut relay = (0..50)
            .find_map(|k| FloorRelay::bind(Ipv4Addr::LOCALHOST, 43_000 + 10 * k, 2).ok())
            .unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let (p2, p3) = (relay.local_addr(2).unwrap(), relay.local_addr(3).unwrap());
        assert_eq!(p3.port(), p2.port() + 1);

        // Nobody latched on the partner yet: the first packet has nowhere to go.
        a.send_to(b"early", p2).unwrap();
        assert!(recv_within(&mut relay, &b, 300).is_none());

        // b speaks on port 3 (latching it); port 2's latched peer is a.
        b.send_to(b"from-b", p3).unwrap();
        let (got, from) = recv_within(&mut relay, &a, 2_000).unwrap();
        assert_eq!(got, b"from-b");
        assert_eq!(from, p2, "leaves from the partner socket");

        a.send_to(b"from-a", p2).unwrap();
        let (got, from) = recv_within(&mut relay, &b, 2_000).unwrap();
        assert_eq!(got, b"from-a");
        assert_eq!(from, p3);

        // Pair 0 is independent: nothing latched there, nothing forwarded to a or b.
        a.send_to(b"other-pair", relay.local_addr(0).unwrap())
            .unwrap();
        assert!(recv_within(&mut relay, &b, 300).is_none());
        assert!(recv_within(&mut relay, &a, 300).is_none());
    }

    #[test]
    fn a_burst_is_forwarded_whole() {
        let mut relay = (0..50)
            .find_map(|k| FloorRelay::bind(Ipv4Addr::LOCALHOST, 44_000 + 10 * k, 1).ok())
            .unwrap();
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let (p0, p1) = (relay.local_addr(0).unwrap(), relay.local_addr(1).unwrap());
        b.send_to(b"latch", p1).unwrap();
        a.send_to(b"latch", p0).unwrap();
        // 150 datagrams: more than two batches.
        for i in 0..150u8 {
            a.send_to(&[i; 172], p0).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut forwarded = 0;
        while forwarded < 151 && Instant::now() < deadline {
            forwarded += relay.poll_once(10u16).unwrap();
        }
        let mut buf = [0u8; 2048];
        let mut got = Vec::new();
        while let Ok(n) = b.recv(&mut buf) {
            got.push(buf[..n].to_vec());
            if got.len() == 151 {
                break;
            }
        }
        // b's "latch" was dropped (p0 had no peer yet); a's latch and the burst reach b.
        assert_eq!(got.len(), 151, "latch + 150 burst packets reach b");
        assert_eq!(got[0], b"latch");
        for (i, d) in got[1..].iter().enumerate() {
            assert_eq!(d, &vec![i as u8; 172], "order and content kept");
        }
    }

    #[test]
    fn routes_map_sessions_to_pairs() {
        let r = session_routes(Ipv4Addr::LOCALHOST, 20_000, 2).unwrap();
        assert_eq!(r[1].caller_sends_to.port(), 20_002);
        assert_eq!(r[1].callee_sends_to.port(), 20_003);
        assert!(session_routes(Ipv4Addr::LOCALHOST, 65_534, 2).is_err());
        assert!(FloorRelay::bind(Ipv4Addr::LOCALHOST, 65_535, 1).is_err());
        assert!(FloorRelay::bind(Ipv4Addr::LOCALHOST, 0, 1).is_err());
        assert!(FloorRelay::bind(Ipv4Addr::LOCALHOST, 20_000, 0).is_err());
    }
}
