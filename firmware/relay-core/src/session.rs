//! The call table's records: a call, its two sides, and one stream per `m=` line.
//!
//! Side A faces the party that sent the initial offer (the caller, whose tag is the offer's
//! from-tag); side B faces the other party. Each stream holds one local port pair per side:
//! the caller sends to A's ports, the callee to B's, and the data plane forwards between them.

use std::net::SocketAddr;
use std::time::Instant;

use crate::media::{CodecHints, LegSpec, LocalPortsId, MediaPolicy, StreamId, StreamSpec};

/// One of the two parties of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    A,
    B,
}

impl Side {
    pub(crate) fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }
}

/// A local RTP/RTCP port pair bound through [`crate::media::MediaOps::bind_ports`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BoundPorts {
    pub id: LocalPortsId,
    pub rtp_port: u16,
}

/// One side of a stream: our local ports facing that party, and that party's addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Leg {
    pub ports: Option<BoundPorts>,
    pub peer_rtp: Option<SocketAddr>,
    pub peer_rtcp: Option<SocketAddr>,
    pub rtcp_mux: bool,
    /// Payload types from this party's latest SDP.
    pub codecs: CodecHints,
}

/// One `m=` line of a call.
#[derive(Debug, Clone)]
pub(crate) struct Stream {
    pub id: StreamId,
    pub media_type: String,
    pub proto: String,
    pub legs: [Leg; 2],
    /// The spec last given to the data plane; `None` until `create_stream` succeeded.
    pub pushed: Option<StreamSpec>,
    /// Accept rtcp-mux back to the offerer even if the answerer does not mux (`demux`/`accept`).
    pub mux_accept_to_offerer: bool,
}

impl Stream {
    pub(crate) fn new(id: StreamId) -> Self {
        Stream {
            id,
            media_type: String::new(),
            proto: String::new(),
            legs: [Leg::default(), Leg::default()],
            pushed: None,
            mux_accept_to_offerer: false,
        }
    }

    pub(crate) fn leg(&self, side: Side) -> &Leg {
        &self.legs[side.index()]
    }

    pub(crate) fn leg_mut(&mut self, side: Side) -> &mut Leg {
        &mut self.legs[side.index()]
    }

    /// The data-plane spec, once both sides have ports.
    pub(crate) fn spec(&self, policy: MediaPolicy) -> Option<StreamSpec> {
        let leg_spec = |leg: &Leg| {
            leg.ports.map(|p| LegSpec {
                local: p.id,
                peer_rtp: leg.peer_rtp,
                peer_rtcp: leg.peer_rtcp,
                rtcp_mux: leg.rtcp_mux,
                codecs: leg.codecs,
            })
        };
        Some(StreamSpec {
            id: self.id,
            a: leg_spec(self.leg(Side::A))?,
            b: leg_spec(self.leg(Side::B))?,
            policy,
        })
    }
}

/// What we last sent towards one party, to bump the `o=` version only when the SDP changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SentSdp {
    /// Digest of the SDP as produced with `version`.
    pub digest: u64,
    pub version: Option<u64>,
}

/// One call (one SIP Call-ID).
pub(crate) struct Call {
    pub call_id: Vec<u8>,
    /// SIP tags of side A and side B (B unknown until the answer, usually).
    pub tags: [Option<Vec<u8>>; 2],
    pub streams: Vec<Stream>,
    pub policy: MediaPolicy,
    pub created: Instant,
    pub last_signal: Instant,
    /// Time of the initial offer while it is unanswered; `None` once answered.
    pub unanswered_since: Option<Instant>,
    /// When the no-media timeout next needs stream statistics.
    pub next_media_check: Option<Instant>,
    /// Set by a delayed `delete`: the call ends then.
    pub delete_at: Option<Instant>,
    /// SDP last sent towards side A / side B.
    pub sent_sdp: [Option<SentSdp>; 2],
    /// The entry this call holds in the timer set.
    pub deadline: Option<Instant>,
    /// The latest `metadata` an offer or answer carried (bounded), for the call record.
    pub metadata: Option<Vec<u8>>,
    /// When the first answer arrived.
    pub answered_at: Option<Instant>,
}

/// Call-ids and tags are left out: some user agents build them from phone numbers.
impl std::fmt::Debug for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("call_id", &format_args!("<{} bytes>", self.call_id.len()))
            .field("streams", &self.streams)
            .field("policy", &self.policy)
            .field("created", &self.created)
            .field("last_signal", &self.last_signal)
            .field("unanswered_since", &self.unanswered_since)
            .field("next_media_check", &self.next_media_check)
            .field("delete_at", &self.delete_at)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl Call {
    pub(crate) fn new(call_id: &[u8], now: Instant) -> Self {
        Call {
            call_id: call_id.to_vec(),
            tags: [None, None],
            streams: Vec::new(),
            policy: MediaPolicy {
                latch: true,
                ..MediaPolicy::default()
            },
            created: now,
            last_signal: now,
            unanswered_since: Some(now),
            next_media_check: None,
            delete_at: None,
            sent_sdp: [None, None],
            deadline: None,
            metadata: None,
            answered_at: None,
        }
    }

    pub(crate) fn tag(&self, side: Side) -> Option<&[u8]> {
        self.tags[side.index()].as_deref()
    }

    pub(crate) fn side_of(&self, tag: &[u8]) -> Option<Side> {
        if self.tag(Side::A) == Some(tag) {
            Some(Side::A)
        } else if self.tag(Side::B) == Some(tag) {
            Some(Side::B)
        } else {
            None
        }
    }

    /// Which side sends this offer. A re-INVITE from the callee carries the callee's tag as
    /// from-tag; a from-tag we have never seen (a transfer without new tags, or a proxy that
    /// rewrote it) replaces the tag on the side the to-tag does not name.
    pub(crate) fn offerer(&mut self, from_tag: &[u8], to_tag: Option<&[u8]>) -> Side {
        if let Some(side) = self.side_of(from_tag) {
            return side;
        }
        let side = match to_tag.and_then(|t| self.side_of(t)) {
            Some(peer) => peer.other(),
            None => Side::A,
        };
        self.tags[side.index()] = Some(from_tag.to_vec());
        side
    }

    /// Which side sends this answer (the side that did not send the offer). Learns the
    /// answerer's tag from the to-tag if we did not know it.
    pub(crate) fn answerer(&mut self, from_tag: &[u8], to_tag: Option<&[u8]>) -> Side {
        let side = match (self.side_of(from_tag), to_tag.and_then(|t| self.side_of(t))) {
            (Some(offerer), _) => offerer.other(),
            (None, Some(answerer)) => answerer,
            (None, None) => Side::B,
        };
        if let Some(t) = to_tag {
            if self.tags[side.index()].is_none() {
                self.tags[side.index()] = Some(t.to_vec());
            }
        }
        side
    }

    /// All bound port pairs of the call.
    pub(crate) fn bound_ports(&self) -> impl Iterator<Item = BoundPorts> + '_ {
        self.streams
            .iter()
            .flat_map(|s| s.legs.iter().filter_map(|l| l.ports))
    }
}
