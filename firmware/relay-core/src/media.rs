//! The boundary between the relay's control logic and whatever moves packets.
//!
//! The core decides *what* media streams exist (which local ports face which peer, with which
//! policy); an implementation of [`MediaOps`] makes it so. Production: `pop-relay` binds UDP
//! sockets and hands them to the `pop-dataplane` workers. Tests: a fake that records calls.

use std::net::{IpAddr, SocketAddr};

/// Identifies one forwarded media stream (one `m=` line of one call, both legs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// Identifies a bound local port pair held by a [`MediaOps`] implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LocalPortsId(pub u64);

/// How a stream treats packet sources. Mirrors rtpengine's flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaPolicy {
    /// After latching, packets from any other source are dropped and counted (`strict source`).
    pub strict_source: bool,
    /// Learn the peer address from the first packet received (symmetric latching). When false
    /// (`asymmetric`), media is sent only to the address from SDP.
    pub latch: bool,
    /// Allow a latched peer address to move to a new source (`media handover`): every packet
    /// from a new source re-latches.
    pub media_handover: bool,
}

/// One side of a stream as the data plane sees it: the local sockets the peer sends to, and
/// where to send to reach that peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegSpec {
    /// Local RTP port pair, from [`MediaOps::bind_ports`].
    pub local: LocalPortsId,
    /// Peer's RTP address as signalled in SDP, if known yet (`None` before the answer, or when
    /// SDP said 0.0.0.0/hold: then only latching can set it).
    pub peer_rtp: Option<SocketAddr>,
    /// Peer's RTCP address as signalled (a=rtcp or port+1); equal to `peer_rtp` with rtcp-mux.
    pub peer_rtcp: Option<SocketAddr>,
    /// This peer multiplexes RTCP on the RTP port (RFC 5761); its RTCP goes out the RTP socket.
    pub rtcp_mux: bool,
}

/// Everything the data plane needs to forward a stream between two legs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream id chosen by the core.
    pub id: StreamId,
    /// Leg facing the caller (from-tag side).
    pub a: LegSpec,
    /// Leg facing the callee (to-tag side).
    pub b: LegSpec,
    /// Source policy applied to both legs.
    pub policy: MediaPolicy,
}

/// Why binding a port pair failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// Some other process holds the port; the allocator should try another one.
    #[error("port {0} is in use")]
    InUse(u16),
    /// The address cannot be bound at all (not configured on this host, permission...).
    #[error("cannot bind {addr}: {reason}")]
    Fatal {
        /// Address that failed.
        addr: SocketAddr,
        /// OS reason.
        reason: String,
    },
}

/// Why a media operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The stream or ports are unknown to the data plane.
    #[error("unknown stream or ports")]
    Unknown,
    /// The data plane cannot accept more work (worker queue full, fd limit).
    #[error("data plane overloaded: {0}")]
    Overloaded(String),
}

/// Counters of one direction of a stream (packets received on one leg and sent out the other).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct DirectionStats {
    /// RTP+RTCP packets received on this leg and forwarded.
    pub packets: u64,
    /// Bytes of those packets (UDP payload).
    pub bytes: u64,
    /// RTCP packets among `packets`.
    pub rtcp_packets: u64,
    /// Packets dropped because they came from a source other than the latched one.
    pub spoofed_dropped: u64,
    /// Packets dropped as malformed (neither valid RTP nor RTCP).
    pub malformed_dropped: u64,
    /// Packets that could not be sent (send error, no destination yet).
    pub send_errors: u64,
    /// RFC 3550 A.3 cumulative packets lost (may be negative with duplicates).
    pub rtp_lost: i64,
    /// Duplicate RTP packets seen.
    pub rtp_duplicates: u64,
    /// Interarrival jitter (RFC 3550 A.8) in RTP timestamp units.
    pub jitter_ts: u32,
    /// Last SSRC seen.
    pub last_ssrc: Option<u32>,
    /// Last payload type seen.
    pub last_payload_type: Option<u8>,
    /// RFC 4733 telephone-events seen (event starts, not digits: digits are never recorded).
    pub dtmf_events: u64,
    /// Last RTCP sender report: packet count and octet count claimed by the sender.
    pub last_sr_packets: Option<u32>,
    /// Last RTCP receiver report block: fraction lost (0–255).
    pub last_rr_fraction_lost: Option<u8>,
    /// Last RTCP receiver report block: cumulative lost.
    pub last_rr_cumulative_lost: Option<i32>,
    /// Last RTCP receiver report block: jitter.
    pub last_rr_jitter: Option<u32>,
    /// Milliseconds between the last packet received and the moment these counters were read;
    /// `None` if nothing has been received yet. Drives the no-media timeout.
    pub idle_ms: Option<u64>,
}

/// Counters of both directions of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StreamStats {
    /// Received on leg A (from the caller), sent out leg B.
    pub from_a: DirectionStats,
    /// Received on leg B (from the callee), sent out leg A.
    pub from_b: DirectionStats,
    /// Current peer addresses (after latching), as the data plane knows them.
    pub peer_a: Option<SocketAddr>,
    /// See `peer_a`.
    pub peer_b: Option<SocketAddr>,
}

/// Media operations the core asks of the world. All calls are synchronous from the core's
/// point of view; implementations may queue work to other threads.
pub trait MediaOps {
    /// Binds an RTP port (and RTCP port `rtp_port + 1` unless `rtcp_mux_only`) on `ip`.
    fn bind_ports(
        &mut self,
        ip: IpAddr,
        rtp_port: u16,
        rtcp_mux_only: bool,
    ) -> Result<LocalPortsId, BindError>;
    /// Releases ports that are not (or no longer) part of a stream.
    fn release_ports(&mut self, ports: LocalPortsId);
    /// Starts forwarding a stream. Both legs' ports must have been bound.
    fn create_stream(&mut self, spec: StreamSpec) -> Result<(), MediaError>;
    /// Replaces a stream's peer addresses/policy (answer, re-INVITE, hold).
    fn update_stream(&mut self, spec: StreamSpec) -> Result<(), MediaError>;
    /// Stops forwarding and returns the final counters. Ports stay bound until released.
    fn remove_stream(&mut self, id: StreamId) -> Result<StreamStats, MediaError>;
    /// Current counters of a stream.
    fn stream_stats(&mut self, id: StreamId) -> Result<StreamStats, MediaError>;
}
