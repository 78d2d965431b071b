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
    /// What this peer's SDP says about the payload types it uses; statistics of packets
    /// received from this peer are computed with it.
    pub codecs: CodecHints,
}

/// Most payload types a [`CodecHints`] keeps; an `m=` line rarely lists more than a handful,
/// and types beyond this fall back to the RFC 3551 table or 8 kHz.
pub const MAX_CODEC_HINTS: usize = 16;

/// Payload-type facts from one side's SDP that per-packet statistics need: the RTP clock rate
/// of each payload type (jitter is in timestamp units) and which types are RFC 4733
/// telephone-events (counted as DTMF events, never decoded into digits).
///
/// Fixed capacity so that the data plane can copy it into its tables without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CodecHints {
    entries: [PayloadTypeHint; MAX_CODEC_HINTS],
    len: u8,
    /// The media is SRTP (`RTP/SAVP`, `RTP/SAVPF`, `UDP/TLS/RTP/SAVP[F]`): its RTCP is SRTCP,
    /// whose report bodies are encrypted, so only the first header can be checked.
    pub encrypted_rtcp: bool,
}

/// One payload type of a [`CodecHints`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PayloadTypeHint {
    /// RTP payload type (0–127).
    pub payload_type: u8,
    /// RTP clock rate in Hz (0: unknown).
    pub clock_rate: u32,
    /// The type is `telephone-event` (RFC 4733).
    pub telephone_event: bool,
}

impl CodecHints {
    /// No payload types known (statistics then use the RFC 3551 table, else 8 kHz).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the facts about one payload type. Returns `false` (and keeps the
    /// hints unchanged) when [`MAX_CODEC_HINTS`] types are already held.
    pub fn insert(&mut self, hint: PayloadTypeHint) -> bool {
        if let Some(e) = self
            .entries
            .iter_mut()
            .take(usize::from(self.len))
            .find(|e| e.payload_type == hint.payload_type)
        {
            *e = hint;
            return true;
        }
        match self.entries.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = hint;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The payload types held, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = &PayloadTypeHint> {
        self.entries.iter().take(usize::from(self.len))
    }

    /// The facts about `payload_type`, if the SDP gave any.
    #[inline]
    pub fn get(&self, payload_type: u8) -> Option<&PayloadTypeHint> {
        self.iter().find(|e| e.payload_type == payload_type)
    }

    /// Clock rate of `payload_type`, if known and non-zero.
    #[inline]
    pub fn clock_rate(&self, payload_type: u8) -> Option<u32> {
        self.get(payload_type)
            .map(|e| e.clock_rate)
            .filter(|&r| r != 0)
    }

    /// Whether `payload_type` is a telephone-event type.
    #[inline]
    pub fn is_telephone_event(&self, payload_type: u8) -> bool {
        self.get(payload_type).is_some_and(|e| e.telephone_event)
    }
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
    /// Bytes of those packets (UDP payload), RTCP included.
    pub bytes: u64,
    /// RTCP packets among `packets`.
    pub rtcp_packets: u64,
    /// Bytes of the RTCP packets among `bytes`.
    pub rtcp_bytes: u64,
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
    /// Last RTCP sender report received on this leg: the packet count the sender claims.
    pub last_sr_packets: Option<u32>,
    /// Last reception report block received on this leg (in an SR or RR), preferring the block
    /// about the SSRC the other direction carries: fraction lost (0–255 in 1/256).
    pub last_rr_fraction_lost: Option<u8>,
    /// Same block: cumulative packets lost.
    pub last_rr_cumulative_lost: Option<i32>,
    /// Same block: interarrival jitter, in the reporter's timestamp units.
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

/// Aggregate forwarding counters of the whole data plane since start, for NG `statistics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaTotals {
    /// Packets forwarded (RTP and RTCP).
    pub forwarded_packets: u64,
    /// Bytes (UDP payload) of those packets.
    pub forwarded_bytes: u64,
    /// Dropped: neither valid RTP nor valid RTCP.
    pub dropped_malformed: u64,
    /// Dropped by strict source: not from the latched peer.
    pub dropped_spoofed: u64,
    /// Dropped because the opposite peer's address was not known yet.
    pub dropped_no_destination: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Times receiving paused because the receive buffers ran out: the overload signal.
    pub buffer_ring_empty: u64,
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
    /// Aggregate counters of everything forwarded since start.
    fn totals(&mut self) -> MediaTotals;
}
