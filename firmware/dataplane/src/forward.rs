//! The forwarding decision and per-stream statistics, shared by both backends: given a datagram
//! received on a socket slot, decide whether and where it goes, and account for it. The
//! backends differ only in how bytes move.
//!
//! Per packet this touches two slab entries (socket, stream) found by index — no hashing, no
//! allocation. The id → slot map is used only by commands.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

use pop_relay_core::media::{CodecHints, MediaPolicy, StreamId, StreamStats};
use pop_wire::rtp::{is_rtcp_on_muxed_port, RtpPacket};

use crate::counters::{bump, WorkerCounters};
use crate::direction_stats::{classify_rtcp, DirectionState, RtcpKind};
use crate::{DataplaneError, LegPeers, LegSockets};

/// Which socket of a leg a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketRole {
    Rtp,
    Rtcp,
}

#[derive(Debug, Clone, Copy)]
struct Owner {
    stream: u32,
    leg: usize,
    role: SocketRole,
}

/// One socket of the worker, at the index of its fixed-file slot.
#[derive(Debug)]
pub(crate) struct SocketSlot {
    pub socket: UdpSocket,
    /// Distinguishes reuses of the same index in completion tags.
    pub generation: u32,
    /// `None` once its stream was removed and it waits to be closed.
    owner: Option<Owner>,
}

/// Where the peer of one leg is, as signalled and as learned.
#[derive(Debug)]
struct PeerAddr {
    /// From SDP (`None`: unknown or on hold).
    signalled: Option<SocketAddr>,
    /// Where media goes now.
    current: Option<SocketAddr>,
    /// Whether `current` was learned from a received packet.
    latched: bool,
}

impl PeerAddr {
    fn new(signalled: Option<SocketAddr>) -> Self {
        Self {
            signalled,
            current: signalled,
            latched: false,
        }
    }

    /// A new signalled address restarts latching; the same one keeps what was learned.
    fn resignal(&mut self, signalled: Option<SocketAddr>) {
        if signalled != self.signalled {
            *self = Self::new(signalled);
        }
    }

    /// Applies the source policy to a packet from `src`; `false` means drop it as spoofed.
    fn admit(&mut self, src: SocketAddr, policy: &MediaPolicy) -> bool {
        match self.current {
            Some(cur) if cur == src => {
                // A first packet from the signalled address confirms it: from now on strict
                // source holds it against everyone else (without this, the first spoofed
                // packet after it would still be taken for the real peer moving).
                self.latched = true;
                true
            }
            None => {
                self.current = Some(src);
                self.latched = true;
                true
            }
            Some(_) if !self.latched && policy.latch => {
                self.current = Some(src);
                self.latched = true;
                true
            }
            Some(_) if policy.media_handover => {
                self.current = Some(src);
                self.latched = true;
                true
            }
            Some(_) => !policy.strict_source,
        }
    }
}

#[derive(Debug)]
struct LegState {
    rtp_socket: u32,
    rtcp_socket: Option<u32>,
    rtp_peer: PeerAddr,
    rtcp_peer: PeerAddr,
    rtcp_mux: bool,
    /// Payload types this leg's peer declared, for statistics of what it sends.
    codecs: CodecHints,
}

impl LegState {
    /// Socket and destination for RTP (`rtcp == false`) or RTCP sent towards this leg's peer.
    fn destination(&self, rtcp: bool) -> (u32, Option<SocketAddr>) {
        if !rtcp || self.rtcp_mux {
            return (self.rtp_socket, self.rtp_peer.current);
        }
        let Some(sock) = self.rtcp_socket else {
            return (self.rtp_socket, self.rtp_peer.current);
        };
        // RFC 3550 §11: without a signalled RTCP address, RTCP goes to the RTP port + 1.
        let dest = self.rtcp_peer.current.or_else(|| {
            self.rtp_peer.current.and_then(|mut a| {
                a.set_port(a.port().checked_add(1)?);
                Some(a)
            })
        });
        (sock, dest)
    }
}

#[derive(Debug)]
struct StreamState {
    id: StreamId,
    generation: u32,
    policy: MediaPolicy,
    legs: [LegState; 2],
    /// `dirs[0]`: received on leg A; `dirs[1]`: received on leg B.
    dirs: [DirectionState; 2],
}

impl StreamState {
    fn snapshot(&self, now: Instant) -> StreamStats {
        StreamStats {
            from_a: self.dirs[0].snapshot(now),
            from_b: self.dirs[1].snapshot(now),
            peer_a: self.legs[0].rtp_peer.current,
            peer_b: self.legs[1].rtp_peer.current,
        }
    }
}

/// Where a forwarded packet goes, and whom to blame if sending fails.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SendTarget {
    pub out_socket: u32,
    pub dest: SocketAddr,
    pub origin: Origin,
}

/// Identifies the direction a packet was forwarded in, robust against stream removal.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Origin {
    stream: u32,
    generation: u32,
    dir: usize,
}

/// A stream being closed: its sockets (slot indices) still to be released.
#[derive(Debug)]
pub(crate) struct Detached {
    pub stats: StreamStats,
    pub sockets: Vec<u32>,
}

/// Socket and stream tables of one worker plus the per-packet decision.
#[derive(Debug)]
pub(crate) struct Forwarder {
    worker: usize,
    sockets: Vec<Option<SocketSlot>>,
    free_sockets: Vec<u32>,
    streams: Vec<Option<StreamState>>,
    free_streams: Vec<u32>,
    by_id: HashMap<StreamId, u32>,
    next_generation: u32,
    epoch: Instant,
    counters: Arc<WorkerCounters>,
}

impl Forwarder {
    pub(crate) fn new(worker: usize, capacity: u32, counters: Arc<WorkerCounters>) -> Self {
        let cap = capacity as usize;
        let mut sockets = Vec::with_capacity(cap);
        sockets.resize_with(cap, || None);
        Self {
            worker,
            sockets,
            // Lowest indices first, so a small table stays dense.
            free_sockets: (0..capacity).rev().collect(),
            streams: Vec::with_capacity(cap / 2 + 1),
            free_streams: Vec::new(),
            by_id: HashMap::with_capacity(cap / 2 + 1),
            next_generation: 1,
            epoch: Instant::now(),
            counters,
        }
    }

    pub(crate) fn counters(&self) -> &WorkerCounters {
        &self.counters
    }

    pub(crate) fn slot(&self, idx: u32) -> Option<&SocketSlot> {
        self.sockets.get(idx as usize).and_then(Option::as_ref)
    }

    /// Decides the fate of one datagram received on socket slot `sock` from `src`.
    pub(crate) fn on_datagram(
        &mut self,
        sock: u32,
        src: SocketAddr,
        data: &[u8],
        now: Instant,
    ) -> Option<SendTarget> {
        let owner = self
            .sockets
            .get(sock as usize)
            .and_then(Option::as_ref)
            .and_then(|s| s.owner);
        let Some(owner) = owner else {
            bump(&self.counters.dropped_stale, 1);
            return None;
        };
        let Some(stream) = self
            .streams
            .get_mut(owner.stream as usize)
            .and_then(Option::as_mut)
        else {
            bump(&self.counters.dropped_stale, 1);
            return None;
        };
        let dir = owner.leg;
        // What the opposite direction carries: the RTCP report block about it is the one to keep.
        let opposite_ssrc = stream.dirs.get(1 - dir).and_then(|d| d.counters.last_ssrc);
        let (Some(leg), Some(state)) = (stream.legs.get_mut(dir), stream.dirs.get_mut(dir)) else {
            return None;
        };
        let rtcp = owner.role == SocketRole::Rtcp || is_rtcp_on_muxed_port(data);
        let (rtp, rtcp_kind) = if rtcp {
            (None, classify_rtcp(data, leg.codecs.encrypted_rtcp))
        } else {
            (RtpPacket::new_checked(data).ok(), None)
        };
        if rtp.is_none() && rtcp_kind.is_none() {
            state.counters.malformed_dropped += 1;
            bump(&self.counters.dropped_malformed, 1);
            return None;
        }
        // Muxed RTCP comes from the RTP address, so the socket it arrived on decides.
        let peer = match owner.role {
            SocketRole::Rtp => &mut leg.rtp_peer,
            SocketRole::Rtcp => &mut leg.rtcp_peer,
        };
        if !peer.admit(src, &stream.policy) {
            state.counters.spoofed_dropped += 1;
            bump(&self.counters.dropped_spoofed, 1);
            return None;
        }
        state.last_rx = Some(now);
        let len = data.len() as u64;
        if let Some(p) = &rtp {
            state.on_rtp(p, &leg.codecs, now.saturating_duration_since(self.epoch));
        } else if let Some(RtcpKind::Plain(compound)) = &rtcp_kind {
            state.on_rtcp(compound, opposite_ssrc);
        }
        let out_leg = stream.legs.get(1 - dir)?;
        let (out_socket, dest) = out_leg.destination(rtcp);
        let Some(dest) = dest else {
            state.counters.send_errors += 1;
            bump(&self.counters.dropped_no_destination, 1);
            return None;
        };
        state.counters.packets += 1;
        state.counters.bytes += len;
        if rtp.is_none() {
            state.counters.rtcp_packets += 1;
            state.counters.rtcp_bytes += len;
        }
        bump(&self.counters.forwarded_packets, 1);
        bump(&self.counters.forwarded_bytes, len);
        Some(SendTarget {
            out_socket,
            dest,
            origin: Origin {
                stream: owner.stream,
                generation: stream.generation,
                dir,
            },
        })
    }

    /// Accounts a send the kernel refused.
    pub(crate) fn on_send_error(&mut self, origin: Origin) {
        bump(&self.counters.send_errors, 1);
        if let Some(stream) = self
            .streams
            .get_mut(origin.stream as usize)
            .and_then(Option::as_mut)
        {
            if stream.generation == origin.generation {
                if let Some(d) = stream.dirs.get_mut(origin.dir) {
                    d.counters.send_errors += 1;
                }
            }
        }
    }

    fn generation(&mut self) -> u32 {
        let g = self.next_generation;
        // 24 bits travel in completion tags.
        self.next_generation = (g + 1) & 0x00ff_ffff;
        g
    }

    /// Takes ownership of both legs' sockets; returns the slot indices now in use, for the
    /// backend to register.
    pub(crate) fn add_stream(
        &mut self,
        id: StreamId,
        a: LegSockets,
        b: LegSockets,
        policy: MediaPolicy,
    ) -> Result<Vec<u32>, DataplaneError> {
        if self.by_id.contains_key(&id) {
            return Err(DataplaneError::StreamExists(id));
        }
        let needed = 2 + usize::from(a.rtcp.is_some()) + usize::from(b.rtcp.is_some());
        if self.free_sockets.len() < needed {
            return Err(DataplaneError::SocketTableFull {
                worker: self.worker,
                capacity: self.sockets.len() as u32,
            });
        }
        let stream_idx = match self.free_streams.pop() {
            Some(i) => i,
            None => {
                self.streams.push(None);
                (self.streams.len() - 1) as u32
            }
        };
        let generation = self.generation();
        let mut used = Vec::with_capacity(needed);
        let mut legs = Vec::with_capacity(2);
        for (leg_idx, leg) in [a, b].into_iter().enumerate() {
            let rtp_socket =
                self.place(&mut used, leg.rtp, stream_idx, leg_idx, SocketRole::Rtp)?;
            let rtcp_socket = match leg.rtcp {
                Some(s) => Some(self.place(&mut used, s, stream_idx, leg_idx, SocketRole::Rtcp)?),
                None => None,
            };
            legs.push(LegState {
                rtp_socket,
                rtcp_socket,
                rtp_peer: PeerAddr::new(leg.peer_rtp),
                rtcp_peer: PeerAddr::new(if leg.rtcp_mux {
                    leg.peer_rtp
                } else {
                    leg.peer_rtcp
                }),
                rtcp_mux: leg.rtcp_mux,
                codecs: leg.codecs,
            });
        }
        let (Some(lb), Some(la)) = (legs.pop(), legs.pop()) else {
            return Err(DataplaneError::InvalidLeg("internal: two legs expected"));
        };
        if let Some(slot) = self.streams.get_mut(stream_idx as usize) {
            *slot = Some(StreamState {
                id,
                generation,
                policy,
                legs: [la, lb],
                dirs: Default::default(),
            });
        }
        self.by_id.insert(id, stream_idx);
        Ok(used)
    }

    fn place(
        &mut self,
        used: &mut Vec<u32>,
        socket: UdpSocket,
        stream: u32,
        leg: usize,
        role: SocketRole,
    ) -> Result<u32, DataplaneError> {
        socket
            .set_nonblocking(true)
            .map_err(|source| DataplaneError::Io {
                what: "setting a media socket non-blocking",
                source,
            })?;
        let idx = self
            .free_sockets
            .pop()
            .ok_or(DataplaneError::SocketTableFull {
                worker: self.worker,
                capacity: self.sockets.len() as u32,
            })?;
        let generation = self.generation();
        if let Some(slot) = self.sockets.get_mut(idx as usize) {
            *slot = Some(SocketSlot {
                socket,
                generation,
                owner: Some(Owner { stream, leg, role }),
            });
        }
        used.push(idx);
        Ok(idx)
    }

    /// Replaces signalled peers and policy (answer, re-INVITE, hold).
    pub(crate) fn update_stream(
        &mut self,
        id: StreamId,
        a: LegPeers,
        b: LegPeers,
        policy: MediaPolicy,
    ) -> Result<(), DataplaneError> {
        let stream = self
            .by_id
            .get(&id)
            .and_then(|&i| self.streams.get_mut(i as usize))
            .and_then(Option::as_mut)
            .ok_or(DataplaneError::UnknownStream(id))?;
        stream.policy = policy;
        for (leg, peers) in stream.legs.iter_mut().zip([a, b]) {
            leg.rtcp_mux = peers.rtcp_mux;
            leg.codecs = peers.codecs;
            leg.rtp_peer.resignal(peers.peer_rtp);
            leg.rtcp_peer.resignal(if peers.rtcp_mux {
                peers.peer_rtp
            } else {
                peers.peer_rtcp
            });
        }
        Ok(())
    }

    pub(crate) fn stream_stats(
        &self,
        id: StreamId,
        now: Instant,
    ) -> Result<StreamStats, DataplaneError> {
        self.by_id
            .get(&id)
            .and_then(|&i| self.streams.get(i as usize))
            .and_then(Option::as_ref)
            .map(|s| s.snapshot(now))
            .ok_or(DataplaneError::UnknownStream(id))
    }

    /// Stops forwarding a stream. Its sockets stay in their slots, owner-less, until the
    /// backend has stopped using them and calls [`Forwarder::release_socket`].
    pub(crate) fn detach_stream(
        &mut self,
        id: StreamId,
        now: Instant,
    ) -> Result<Detached, DataplaneError> {
        let idx = self
            .by_id
            .remove(&id)
            .ok_or(DataplaneError::UnknownStream(id))?;
        let stream = self
            .streams
            .get_mut(idx as usize)
            .and_then(Option::take)
            .ok_or(DataplaneError::UnknownStream(id))?;
        self.free_streams.push(idx);
        let mut sockets = Vec::with_capacity(4);
        for leg in &stream.legs {
            sockets.push(leg.rtp_socket);
            sockets.extend(leg.rtcp_socket);
        }
        for &s in &sockets {
            if let Some(slot) = self.sockets.get_mut(s as usize).and_then(Option::as_mut) {
                slot.owner = None;
            }
        }
        debug_assert_eq!(stream.id, id);
        Ok(Detached {
            stats: stream.snapshot(now),
            sockets,
        })
    }

    /// Frees a slot of a detached stream, handing back its socket to be closed.
    pub(crate) fn release_socket(&mut self, idx: u32) -> Option<UdpSocket> {
        let slot = self.sockets.get_mut(idx as usize)?.take()?;
        self.free_sockets.push(idx);
        Some(slot.socket)
    }

    /// Every live socket slot index (for shutdown).
    pub(crate) fn occupied_sockets(&self) -> Vec<u32> {
        (0..self.sockets.len() as u32)
            .filter(|&i| self.slot(i).is_some())
            .collect()
    }

    /// Every stream id (for shutdown).
    pub(crate) fn stream_ids(&self) -> Vec<StreamId> {
        self.by_id.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(strict: bool, latch: bool, handover: bool) -> MediaPolicy {
        MediaPolicy {
            strict_source: strict,
            latch,
            media_handover: handover,
        }
    }

    #[test]
    fn admission_policy_table() {
        let x: SocketAddr = "192.0.2.1:1000".parse().unwrap();
        let y: SocketAddr = "192.0.2.2:1000".parse().unwrap();
        // Unknown peer: first packet sets it.
        let mut p = PeerAddr::new(None);
        assert!(p.admit(x, &policy(true, false, false)));
        assert_eq!(p.current, Some(x));
        // Strict: others dropped, peer unchanged.
        assert!(!p.admit(y, &policy(true, false, false)));
        assert_eq!(p.current, Some(x));
        // Handover: others re-latch.
        assert!(p.admit(y, &policy(true, true, true)));
        assert_eq!(p.current, Some(y));
        // Signalled address, latch: first packet overrides it once.
        let mut p = PeerAddr::new(Some(x));
        assert!(p.admit(y, &policy(false, true, false)));
        assert_eq!(p.current, Some(y));
        assert!(p.admit(x, &policy(false, true, false)));
        assert_eq!(p.current, Some(y));
        // Signalled address, latch, strict: the first packet from the signalled address
        // latches it, so a later spoofer cannot take it over.
        let mut p = PeerAddr::new(Some(x));
        assert!(p.admit(x, &policy(true, true, false)));
        assert!(!p.admit(y, &policy(true, true, false)));
        assert_eq!(p.current, Some(x));
        // Asymmetric: forwarded but never moves.
        let mut p = PeerAddr::new(Some(x));
        assert!(p.admit(y, &policy(false, false, false)));
        assert_eq!(p.current, Some(x));
    }
}
