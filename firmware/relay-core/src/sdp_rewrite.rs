//! SDP inspection and rewriting, matching what rtpengine 10.5 writes line for line.
//!
//! [`inspect`] reads the peer's media endpoints out of an offer or answer; [`rewrite`] produces
//! the SDP to forward, with the relay's address and ports, following a [`RewritePlan`] that the
//! NG command logic builds (it decides ports, rtcp-mux, ICE removal, `replace` flags and when
//! to bump the `o=` version).
//!
//! The layout of each rewritten media section is rtpengine's, checked against its real output
//! (golden tests under `tests/fixtures/sdp/`):
//!
//! 1. `m=` with the relay's RTP port (a rejected stream keeps port 0);
//! 2. the section's non-attribute lines (`i=`, `c=`, `b=`, `k=`) in their order, `c=` pointing
//!    at the relay unless it was `0.0.0.0`/`::` (hold), which is kept;
//! 3. attributes the relay does not manage, in their order;
//! 4. `a=mid`;
//! 5. per payload type in `m=` order: `a=rtpmap` (added from the RFC 3551 table for static
//!    payload types that had none), its `a=fmtp`, its `a=rtcp-fb`; codec attributes for payload
//!    types not on the `m=` line are dropped;
//! 6. a direction attribute, always: the offered one, else the session-level one, else
//!    `sendrecv`; a stream whose address is `0.0.0.0` becomes `sendonly` (or `inactive` if it
//!    said `recvonly`);
//! 7. `a=rtcp:<port>` (the RTP port when RTCP is muxed), then `a=rtcp-mux` when planned;
//! 8. `a=ptime`; then `a=end-of-candidates` if the input had it (rtpengine keeps it even when
//!    removing ICE).
//!
//! At session level, `c=` is rewritten when a media section relies on it or when
//! `replace_session_connection` is set (to `0.0.0.0` if the first stream is on hold),
//! `a=group:BUNDLE` and direction attributes are removed (the direction moves into each media
//! section), and `o=` changes only as the plan says.
//!
//! Known, deliberate differences from rtpengine: output always uses CRLF (rtpengine echoes LF
//! for lines it copies from LF input), and a dynamic payload type without `a=rtpmap` gets none
//! (rtpengine writes the invalid `a=rtpmap:<pt> /0`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use pop_wire::sdp::Direction;
use pop_wire::sdp::{
    attribute_payload_type, is_ice_attribute, Connection, Line, Lines, MediaSection, Sdp, SdpError,
};
use thiserror::Error;

use crate::media::{CodecHints, PayloadTypeHint};
use crate::stats::static_clock_rate;

/// Why an SDP could not be inspected or rewritten.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpRewriteError {
    /// The SDP does not parse; answer the NG command with an error.
    #[error("the SDP in the command is invalid: {0}")]
    Parse(#[from] SdpError),
    /// The plan does not cover exactly the media sections of the SDP (a bug in the caller).
    #[error("the SDP has {found} media sections but the rewrite plan has {planned}")]
    MediaCountMismatch {
        /// Media sections in the SDP.
        found: usize,
        /// Entries in [`RewritePlan::media`].
        planned: usize,
    },
}

/// What one media section of a peer's SDP says about its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInfo {
    /// Position of the section (0-based), the key for [`RewritePlan::media`].
    pub index: usize,
    /// Media type: `audio`, `video`, `image`, ...
    pub media_type: String,
    /// Transport protocol: `RTP/AVP`, `RTP/SAVP`, `udptl`, ...
    pub proto: String,
    /// Where the peer receives RTP; `None` when the port is 0, the address is `0.0.0.0`/`::`
    /// (hold) or a host name, or there is no `c=`.
    pub rtp: Option<SocketAddr>,
    /// Where the peer receives RTCP: `a=rtcp` if given, else RTP port + 1; `None` when `rtp`
    /// is. Still the separate port when `rtcp_mux` is set, in case mux is not accepted.
    pub rtcp: Option<SocketAddr>,
    /// Whether the section carries `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// The declared direction: the section's attribute, else the session's, else `sendrecv`
    /// (not adjusted for a `0.0.0.0` address; see `zero_address`).
    pub direction: Direction,
    /// Port 0: the stream is rejected or disabled.
    pub port_zero: bool,
    /// The connection address is `0.0.0.0` or `::` (RFC 2543 hold).
    pub zero_address: bool,
    /// The section or session carries ICE attributes.
    pub ice: bool,
    /// RTP payload types on the `m=` line, in order.
    pub payload_types: Vec<u8>,
    /// Clock rate and telephone-event flag of the `m=` line's payload types: from `a=rtpmap`,
    /// else RFC 3551's table for static types; dynamic types without `a=rtpmap` are left out.
    pub codecs: CodecHints,
}

/// Reads the media endpoints of an SDP body.
pub fn inspect(sdp: &[u8]) -> Result<Vec<MediaInfo>, SdpRewriteError> {
    let parsed = Sdp::parse(sdp)?;
    let session_ice = parsed.session.has_ice();
    let mut infos = Vec::with_capacity(parsed.media.len());
    for (index, section) in parsed.media.iter().enumerate() {
        let connection = parsed.effective_connection(index)?;
        let zero_address = connection.as_ref().is_some_and(Connection::is_unspecified);
        let port = section.description.port();
        let ip = connection
            .as_ref()
            .and_then(|c| c.address.ip())
            .filter(|ip| !ip.is_unspecified());
        let rtp = ip.filter(|_| port != 0).map(|ip| SocketAddr::new(ip, port));
        let rtcp = match (rtp, section.rtcp()?) {
            (None, _) => None,
            (Some(rtp), Some(attr)) => {
                let ip = attr
                    .connection
                    .and_then(|c| c.address.ip())
                    .unwrap_or(rtp.ip());
                Some(SocketAddr::new(ip, attr.port))
            }
            (Some(rtp), None) => rtp
                .port()
                .checked_add(1)
                .map(|p| SocketAddr::new(rtp.ip(), p)),
        };
        infos.push(MediaInfo {
            index,
            media_type: section.description.media().to_owned(),
            proto: section.description.proto().to_owned(),
            rtp,
            rtcp,
            rtcp_mux: section.rtcp_mux(),
            direction: parsed.effective_direction(index),
            port_zero: port == 0,
            zero_address,
            ice: session_ice || section.lines.has_ice(),
            payload_types: section.description.payload_types().collect(),
            codecs: codec_hints(section),
        });
    }
    Ok(infos)
}

/// What the section's `a=rtpmap` lines (or RFC 3551, for static types) say about the payload
/// types on its `m=` line. Types beyond [`crate::media::MAX_CODEC_HINTS`] are left out.
fn codec_hints(section: &MediaSection) -> CodecHints {
    let mut hints = CodecHints::new();
    hints.encrypted_rtcp = is_srtp_proto(section.description.proto());
    for pt in section.description.payload_types() {
        let hint = match section.rtpmap(pt) {
            Some(map) => PayloadTypeHint {
                payload_type: pt,
                clock_rate: map.clock_rate,
                telephone_event: map.encoding.eq_ignore_ascii_case("telephone-event"),
            },
            None => match static_clock_rate(pt) {
                Some(clock_rate) => PayloadTypeHint {
                    payload_type: pt,
                    clock_rate,
                    telephone_event: false,
                },
                None => continue,
            },
        };
        if !hints.insert(hint) {
            break;
        }
    }
    hints
}

/// SRTP profiles (RFC 3711, RFC 5124, RFC 5764): their RTCP bodies are encrypted.
fn is_srtp_proto(proto: &str) -> bool {
    proto
        .rsplit('/')
        .next()
        .is_some_and(|p| p.eq_ignore_ascii_case("SAVP") || p.eq_ignore_ascii_case("SAVPF"))
}

/// How to rewrite one SDP body for the other side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RewritePlan {
    /// The relay's address that the other side must send media to.
    pub media_address: IpAddr,
    /// One entry per media section, in order.
    pub media: Vec<MediaPlan>,
    /// NG `replace: origin`: put the relay's address into `o=`.
    pub replace_origin: bool,
    /// NG `replace: session-connection`: rewrite the session-level `c=` even when every media
    /// section has its own.
    pub replace_session_connection: bool,
    /// NG `ICE: remove`: strip ICE credentials, options and candidates.
    pub ice_remove: bool,
    /// If set, the `o=` session version to write; `None` keeps the peer's (rtpengine's default;
    /// with `replace: sdp-version` it keeps its own counter, bumped only when the SDP it
    /// produces for that side changes).
    pub origin_version: Option<u64>,
}

/// How to rewrite one media section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaPlan {
    /// The relay's RTP port for this stream (ignored for a rejected stream, which keeps 0).
    pub rtp_port: u16,
    /// The relay's RTCP port; `None` when RTCP is muxed (then `a=rtcp` carries the RTP port)
    /// or, without mux, to write no `a=rtcp` at all.
    pub rtcp_port: Option<u16>,
    /// Write `a=rtcp-mux`.
    pub rtcp_mux: bool,
    /// Direction to write instead of the one derived from the input (rtpengine's behaviour,
    /// `None`, is almost always what is wanted).
    pub direction: Option<Direction>,
}

/// Rewrites `sdp` according to `plan`; see the module documentation for the exact layout.
pub fn rewrite(sdp: &[u8], plan: &RewritePlan) -> Result<Vec<u8>, SdpRewriteError> {
    let input = Sdp::parse(sdp)?;
    if input.media.len() != plan.media.len() {
        return Err(SdpRewriteError::MediaCountMismatch {
            found: input.media.len(),
            planned: plan.media.len(),
        });
    }
    let relay = Connection::unicast(plan.media_address);
    let on_hold = |index: usize| -> Result<bool, SdpError> {
        Ok(input
            .effective_connection(index)?
            .is_some_and(|c| c.is_unspecified()))
    };

    let mut output = Sdp {
        session: rewrite_session(&input, plan, &relay, on_hold(0)?)?,
        media: Vec::with_capacity(input.media.len()),
    };
    for (index, (section, media_plan)) in input.media.iter().zip(&plan.media).enumerate() {
        // Refuse exactly what `inspect` refuses, although the peer's a=rtcp is not copied.
        section.rtcp()?;
        let hold = on_hold(index)?;
        let direction = media_plan.direction.unwrap_or_else(|| {
            let declared = input.effective_direction(index);
            if hold {
                without_receiving(declared)
            } else {
                declared
            }
        });
        output.media.push(rewrite_media(
            section,
            media_plan,
            plan.ice_remove,
            &relay,
            direction,
        )?);
    }
    Ok(output.emit())
}

fn rewrite_session(
    input: &Sdp,
    plan: &RewritePlan,
    relay: &Connection,
    first_stream_on_hold: bool,
) -> Result<Lines, SdpError> {
    let mut session = input.session.clone();
    if let Some(mut origin) = input.origin() {
        if plan.replace_origin {
            origin.set_address(plan.media_address);
        }
        if let Some(version) = plan.origin_version {
            origin.set_version(version);
        }
        session.set_origin(&origin)?;
    }
    let media_uses_session_c = input
        .media
        .iter()
        .any(|m| m.lines.iter().all(|l| l.kind() != 'c'));
    if plan.replace_session_connection || media_uses_session_c {
        // rtpengine writes the session c= from the first stream, hold address included.
        let connection = if first_stream_on_hold {
            Connection::unicast(unspecified_like(plan.media_address))
        } else {
            relay.clone()
        };
        session.set_connection(&connection);
    }
    session.retain(|line| {
        line.as_attribute().is_none_or(|a| {
            let bundle_group =
                a.name == "group" && a.value.is_some_and(|v| v.starts_with("BUNDLE"));
            let direction = a.value.is_none() && a.name.parse::<Direction>().is_ok();
            let ice = plan.ice_remove && is_ice_attribute(a.name);
            !(bundle_group || direction || ice)
        })
    });
    Ok(session)
}

/// Attributes the rewrite places itself (or drops), rather than copying in place.
fn is_managed_attribute(line: &Line, ice_remove: bool) -> bool {
    let Some(attr) = line.as_attribute() else {
        return false;
    };
    if attribute_payload_type(&attr).is_some() {
        return true;
    }
    let is_direction = attr.value.is_none() && attr.name.parse::<Direction>().is_ok();
    is_direction
        || matches!(
            attr.name,
            "rtcp" | "rtcp-mux" | "ptime" | "mid" | "end-of-candidates"
        )
        || (ice_remove && is_ice_attribute(attr.name))
}

fn rewrite_media(
    section: &MediaSection,
    plan: &MediaPlan,
    ice_remove: bool,
    relay: &Connection,
    direction: Direction,
) -> Result<MediaSection, SdpError> {
    let mut description = section.description.clone();
    let rejected = section.is_rejected();
    if !rejected {
        description.set_port(plan.rtp_port);
    }
    let mut out = MediaSection::new(description);

    for line in section.lines.iter().filter(|l| l.kind() != 'a') {
        let keep_hold = line.kind() == 'c'
            && line
                .value()
                .parse::<Connection>()
                .is_ok_and(|c| c.is_unspecified());
        if line.kind() == 'c' && !keep_hold {
            out.lines.push(Line::new('c', relay.to_string())?);
        } else {
            out.lines.push(line.clone());
        }
    }
    for line in section.lines.iter() {
        if line.kind() == 'a' && !is_managed_attribute(line, ice_remove) {
            out.lines.push(line.clone());
        }
    }
    copy_first_attribute(section, &mut out, "mid");
    if rejected {
        // rtpengine writes nothing of its own into a rejected section.
        return Ok(out);
    }

    let mut seen = Vec::new();
    for pt in section.description.payload_types() {
        if seen.contains(&pt) {
            continue;
        }
        seen.push(pt);
        write_codec_attributes(section, &mut out, pt)?;
    }

    out.lines.push(Line::attribute(direction.as_str(), None)?);
    let rtcp_port = match (plan.rtcp_port, plan.rtcp_mux) {
        (Some(port), _) => Some(port),
        (None, true) => Some(plan.rtp_port),
        (None, false) => None,
    };
    if let Some(port) = rtcp_port {
        out.lines
            .push(Line::attribute("rtcp", Some(&port.to_string()))?);
    }
    if plan.rtcp_mux {
        out.lines.push(Line::attribute("rtcp-mux", None)?);
    }
    copy_first_attribute(section, &mut out, "ptime");
    copy_first_attribute(section, &mut out, "end-of-candidates");
    Ok(out)
}

fn write_codec_attributes(
    section: &MediaSection,
    out: &mut MediaSection,
    pt: u8,
) -> Result<(), SdpError> {
    let for_pt = |name: &'static str| {
        section.lines.iter().filter(move |line| {
            line.as_attribute()
                .is_some_and(|a| a.name == name && attribute_payload_type(&a) == Some(pt))
        })
    };
    match for_pt("rtpmap").next() {
        Some(line) => out.lines.push(line.clone()),
        None => {
            if let Some(encoding) = static_payload_encoding(pt) {
                out.lines.push(Line::attribute(
                    "rtpmap",
                    Some(&format!("{pt} {encoding}")),
                )?);
            }
        }
    }
    for line in for_pt("fmtp").chain(for_pt("rtcp-fb")) {
        out.lines.push(line.clone());
    }
    Ok(())
}

fn copy_first_attribute(section: &MediaSection, out: &mut MediaSection, name: &str) {
    if let Some((index, _)) = section.lines.find_attribute(name) {
        if let Some(line) = section.lines.as_slice().get(index) {
            out.lines.push(line.clone());
        }
    }
}

/// What a stream sent to `0.0.0.0` can still do: send, but not receive.
fn without_receiving(direction: Direction) -> Direction {
    match direction {
        Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
        Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
    }
}

fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Encoding names of the static RTP payload types (RFC 3551 tables 4 and 5), as rtpengine
/// writes them: note its channel counts for L16 (10 mono, 11 stereo) are the reverse of
/// RFC 3551's; matching rtpengine is the point here.
fn static_payload_encoding(pt: u8) -> Option<&'static str> {
    Some(match pt {
        0 => "PCMU/8000",
        3 => "GSM/8000",
        4 => "G723/8000",
        5 => "DVI4/8000",
        6 => "DVI4/16000",
        7 => "LPC/8000",
        8 => "PCMA/8000",
        9 => "G722/8000",
        10 => "L16/44100",
        11 => "L16/44100/2",
        12 => "QCELP/8000",
        13 => "CN/8000",
        14 => "MPA/90000",
        15 => "G728/8000",
        16 => "DVI4/11025",
        17 => "DVI4/22050",
        18 => "G729/8000",
        25 => "CelB/90000",
        26 => "JPEG/90000",
        28 => "nv/90000",
        31 => "H261/90000",
        32 => "MPV/90000",
        33 => "MP2T/90000",
        34 => "H263/90000",
        _ => return None,
    })
}
