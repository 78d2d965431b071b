//! Per-uplink UDP sockets: BFD (RFC 5881 single hop) and UDP echo probes. Every socket is bound
//! to the uplink's address and device, so its packets leave through that uplink whatever the
//! routing table says (the default route points at only one uplink at a time).

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

use nix::sys::socket::{setsockopt, sockopt};
use rand::Rng;

use crate::sys::{self, Received};
use crate::LinkmonError;

/// RFC 5881 §4: source ports of single-hop control packets.
const BFD_SRC_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

fn sock_err(uplink: &str, what: String) -> impl FnOnce(std::io::Error) -> LinkmonError + '_ {
    move |source| LinkmonError::Socket {
        uplink: uplink.to_owned(),
        what,
        source,
    }
}

fn bind_to_device(sock: &UdpSocket, uplink: &str, device: &str) -> Result<(), LinkmonError> {
    setsockopt(sock, sockopt::BindToDevice, &OsString::from(device))
        .map_err(|e| sock_err(uplink, format!("SO_BINDTODEVICE {device}"))(e.into()))
}

/// The two sockets of one BFD session: receive on 3784, send from an ephemeral port.
#[derive(Debug)]
pub struct BfdSockets {
    rx: UdpSocket,
    tx: UdpSocket,
    peer: SocketAddrV4,
    /// Datagrams from an address other than the configured peer (dropped before the core).
    pub foreign_source: u64,
    /// Datagrams without a TTL control message (dropped: TTL cannot be checked).
    pub missing_ttl: u64,
}

impl BfdSockets {
    /// Opens both sockets on `local`, through `device`, toward `peer`.
    pub fn open(
        uplink: &str,
        device: &str,
        local: Ipv4Addr,
        peer: Ipv4Addr,
        port: u16,
    ) -> Result<Self, LinkmonError> {
        let rx_addr = SocketAddrV4::new(local, port);
        let rx =
            UdpSocket::bind(rx_addr).map_err(sock_err(uplink, format!("bind BFD {rx_addr}")))?;
        bind_to_device(&rx, uplink, device)?;
        sys::enable_recv_ttl(&rx).map_err(sock_err(uplink, "IP_RECVTTL".into()))?;
        rx.set_nonblocking(true)
            .map_err(sock_err(uplink, "non-blocking".into()))?;

        let mut rng = rand::thread_rng();
        let mut last_err = None;
        let mut tx = None;
        // A few random tries: the range is large, a collision is rare.
        for _ in 0..32 {
            let src = SocketAddrV4::new(local, rng.gen_range(BFD_SRC_PORTS));
            match UdpSocket::bind(src) {
                Ok(s) => {
                    tx = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tx = tx.ok_or_else(|| LinkmonError::Socket {
            uplink: uplink.to_owned(),
            what: "bind BFD source port in 49152-65535".into(),
            source: last_err.unwrap_or_else(|| std::io::Error::other("no port")),
        })?;
        bind_to_device(&tx, uplink, device)?;
        // RFC 5881 §5: TTL 255, so the peer can tell the packet was not routed.
        tx.set_ttl(255)
            .map_err(sock_err(uplink, "IP_TTL 255".into()))?;
        tx.set_nonblocking(true)
            .map_err(sock_err(uplink, "non-blocking".into()))?;
        Ok(Self {
            rx,
            tx,
            peer: SocketAddrV4::new(peer, port),
            foreign_source: 0,
            missing_ttl: 0,
        })
    }

    /// Sends one control packet to the peer. A full socket buffer drops the packet (BFD
    /// tolerates loss by design; blocking the loop would not).
    pub fn send(&self, packet: &[u8]) -> std::io::Result<()> {
        match self.tx.send_to(packet, self.peer) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The next datagram from the peer with its TTL, or `None` when nothing is queued.
    /// Datagrams from other sources or without a TTL are counted and skipped.
    pub fn recv(&mut self, buf: &mut [u8]) -> std::io::Result<Option<(usize, u8)>> {
        // Bounded: at most this many foreign datagrams are skipped per call.
        for _ in 0..64 {
            let Some(Received { len, from, ttl, .. }) = sys::recv_with_ttl(&self.rx, buf)? else {
                return Ok(None);
            };
            if *from.ip() != *self.peer.ip() {
                self.foreign_source += 1;
                continue;
            }
            match ttl {
                Some(ttl) => return Ok(Some((len, ttl))),
                None => self.missing_ttl += 1,
            }
        }
        Ok(None)
    }

    /// The receive socket, for polling.
    pub fn rx_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.rx)
    }

    /// The source port chosen for transmission.
    pub fn tx_port(&self) -> Option<u16> {
        self.tx.local_addr().ok().map(|a| a.port())
    }
}

/// A UDP echo probe toward one target past the gateway, sent out of one uplink.
#[derive(Debug)]
pub struct ProbeSocket {
    sock: UdpSocket,
    target: SocketAddr,
    token: u64,
}

/// Probe payload: tag, per-socket random token, sequence number.
const PROBE_TAG: &[u8; 8] = b"POPDPRB1";
const PROBE_LEN: usize = 20;

impl ProbeSocket {
    /// Opens a probe socket on `local` through `device`.
    pub fn open(
        uplink: &str,
        device: &str,
        local: Ipv4Addr,
        target: SocketAddr,
    ) -> Result<Self, LinkmonError> {
        let sock = UdpSocket::bind(SocketAddrV4::new(local, 0))
            .map_err(sock_err(uplink, format!("bind probe socket on {local}")))?;
        bind_to_device(&sock, uplink, device)?;
        sock.set_nonblocking(true)
            .map_err(sock_err(uplink, "non-blocking".into()))?;
        Ok(Self {
            sock,
            target,
            token: rand::thread_rng().gen(),
        })
    }

    /// Sends probe number `seq`.
    pub fn send(&self, seq: u32) -> std::io::Result<()> {
        let mut pkt = [0u8; PROBE_LEN];
        pkt[..8].copy_from_slice(PROBE_TAG);
        pkt[8..16].copy_from_slice(&self.token.to_be_bytes());
        pkt[16..20].copy_from_slice(&seq.to_be_bytes());
        match self.sock.send_to(&pkt, self.target) {
            Ok(_) => Ok(()),
            // An unreachable target shows up as a miss, which is what the core is told.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::ConnectionRefused
                        | std::io::ErrorKind::HostUnreachable
                        | std::io::ErrorKind::NetworkUnreachable
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The socket, for polling.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.sock)
    }

    /// Sequence numbers of echoes received since the last call (foreign datagrams ignored).
    pub fn drain_replies(&self, out: &mut Vec<u32>) {
        let mut buf = [0u8; 64];
        for _ in 0..64 {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from != self.target || n != PROBE_LEN {
                        continue;
                    }
                    let (Some(tag), Some(token), Some(seq)) =
                        (buf.get(..8), buf.get(8..16), buf.get(16..20))
                    else {
                        continue;
                    };
                    if tag != PROBE_TAG || token != self.token.to_be_bytes() {
                        continue;
                    }
                    if let Ok(seq) = <[u8; 4]>::try_from(seq) {
                        out.push(u32::from_be_bytes(seq));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // ICMP errors surface here as ECONNREFUSED etc.: a miss, nothing to do.
                Err(_) => {}
            }
        }
    }
}
