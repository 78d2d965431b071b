//! RTCP (RFC 3550 §6) compound packets as checked views, plus SR/RR builders.
//!
//! [`RtcpCompound::new_checked`] validates the version, length and padding of every packet in
//! the datagram and the internal layout of SR, RR, SDES and BYE bodies; after that iterating
//! yields typed [`RtcpPacket`]s without further error handling. Packet types the relay does not
//! interpret (APP, feedback, XR) come out as [`RtcpPacket::Other`] with their bytes, so they can
//! be forwarded untouched.

use std::fmt;

use thiserror::Error;

use crate::rtp::Ssrc;

/// Sender report packet type.
pub const PT_SR: u8 = 200;
/// Receiver report packet type.
pub const PT_RR: u8 = 201;
/// Source description packet type.
pub const PT_SDES: u8 = 202;
/// Goodbye packet type.
pub const PT_BYE: u8 = 203;
/// Application-defined packet type.
pub const PT_APP: u8 = 204;

/// SDES item type of the canonical name.
pub const SDES_CNAME: u8 = 1;

const HEADER_LEN: usize = 4;
const SENDER_INFO_LEN: usize = 20;
/// Size of one report block.
pub const REPORT_BLOCK_LEN: usize = 24;
/// Most report blocks one SR or RR can carry (the 5-bit count field).
pub const MAX_REPORT_BLOCKS: usize = 31;

/// Why a datagram is not valid RTCP, or why a packet cannot be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtcpError {
    /// The datagram holds no packet at all.
    #[error("RTCP datagram is empty")]
    Empty,
    /// A packet header, or the length it declares, runs past the end of the datagram.
    #[error("RTCP packet at byte {offset} is truncated")]
    Truncated {
        /// Offset of the packet in the datagram.
        offset: usize,
    },
    /// A packet's version field is not 2.
    #[error("RTCP packet at byte {offset} has a version other than 2")]
    BadVersion {
        /// Offset of the packet in the datagram.
        offset: usize,
    },
    /// The padding count is zero or larger than the packet body.
    #[error("RTCP packet at byte {offset} has an invalid padding length")]
    BadPadding {
        /// Offset of the packet in the datagram.
        offset: usize,
    },
    /// An SR, RR, SDES or BYE body does not hold what its count field declares.
    #[error("RTCP packet at byte {offset} (type {packet_type}) has a body inconsistent with its count field")]
    BadBody {
        /// Offset of the packet in the datagram.
        offset: usize,
        /// Its packet type.
        packet_type: u8,
    },
    /// More than 31 report blocks were given to a builder.
    #[error("an SR or RR carries at most 31 report blocks, {0} were given")]
    TooManyReportBlocks(usize),
    /// The output buffer given to a builder is too small.
    #[error("output buffer of {have} bytes is too small for an RTCP packet of {need} bytes")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

/// Sender information of an SR (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// NTP timestamp: seconds since 1900 in the high 32 bits, fraction in the low 32.
    pub ntp_timestamp: u64,
    /// RTP timestamp corresponding to the NTP timestamp.
    pub rtp_timestamp: u32,
    /// Packets sent since the start of transmission.
    pub packet_count: u32,
    /// Payload octets sent since the start of transmission.
    pub octet_count: u32,
}

impl SenderInfo {
    fn parse(b: &[u8]) -> Option<Self> {
        Some(Self {
            ntp_timestamp: (u64::from(be32(b, 0)?) << 32) | u64::from(be32(b, 4)?),
            rtp_timestamp: be32(b, 8)?,
            packet_count: be32(b, 12)?,
            octet_count: be32(b, 16)?,
        })
    }
}

/// One reception report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportBlock {
    /// Source this block reports on.
    pub ssrc: Ssrc,
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; negative with duplicates).
    pub cumulative_lost: i32,
    /// Extended highest sequence number received.
    pub extended_highest_seq: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from the source.
    pub lsr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub dlsr: u32,
}

const CUMULATIVE_LOST_MAX: i32 = 0x7f_ffff;
const CUMULATIVE_LOST_MIN: i32 = -0x80_0000;

impl ReportBlock {
    fn parse(b: &[u8]) -> Option<Self> {
        let word1 = be32(b, 4)?;
        // Shift the 24-bit field to the top and back to sign-extend it.
        let cumulative_lost = ((word1 << 8) as i32) >> 8;
        Some(Self {
            ssrc: Ssrc(be32(b, 0)?),
            fraction_lost: (word1 >> 24) as u8,
            cumulative_lost,
            extended_highest_seq: be32(b, 8)?,
            jitter: be32(b, 12)?,
            lsr: be32(b, 16)?,
            dlsr: be32(b, 20)?,
        })
    }

    /// Writes the block into `out[..24]`; `cumulative_lost` saturates to the 24-bit range.
    fn emit(&self, out: &mut [u8; REPORT_BLOCK_LEN]) {
        let lost = self
            .cumulative_lost
            .clamp(CUMULATIVE_LOST_MIN, CUMULATIVE_LOST_MAX) as u32
            & 0x00ff_ffff;
        let word1 = (u32::from(self.fraction_lost) << 24) | lost;
        let words = [
            self.ssrc.0,
            word1,
            self.extended_highest_seq,
            self.jitter,
            self.lsr,
            self.dlsr,
        ];
        for (dst, w) in out.chunks_exact_mut(4).zip(words) {
            dst.copy_from_slice(&w.to_be_bytes());
        }
    }
}

/// The report blocks of an SR or RR, validated to be whole.
#[derive(Debug, Clone)]
pub struct ReportBlocks<'a> {
    rest: &'a [u8],
}

impl Iterator for ReportBlocks<'_> {
    type Item = ReportBlock;

    fn next(&mut self) -> Option<ReportBlock> {
        let (block, rest) = self.rest.split_at_checked(REPORT_BLOCK_LEN)?;
        self.rest = rest;
        ReportBlock::parse(block)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.rest.len() / REPORT_BLOCK_LEN;
        (n, Some(n))
    }
}

impl ExactSizeIterator for ReportBlocks<'_> {}

/// A sender report.
#[derive(Debug, Clone)]
pub struct SenderReport<'a> {
    /// Sender's SSRC.
    pub ssrc: Ssrc,
    /// What the sender has sent.
    pub info: SenderInfo,
    /// Reception reports about other sources.
    pub report_blocks: ReportBlocks<'a>,
}

/// A receiver report.
#[derive(Debug, Clone)]
pub struct ReceiverReport<'a> {
    /// Reporter's SSRC.
    pub ssrc: Ssrc,
    /// Reception reports about other sources.
    pub report_blocks: ReportBlocks<'a>,
}

/// One SDES item. `Debug` shows the type and length only: NAME, EMAIL and PHONE items are
/// personal data.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SdesItem<'a> {
    /// Item type (1 = CNAME, 2 = NAME, ...).
    pub kind: u8,
    /// Item text, as sent.
    pub value: &'a [u8],
}

impl fmt::Debug for SdesItem<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SdesItem {{ kind: {}, value: <{} bytes> }}",
            self.kind,
            self.value.len()
        )
    }
}

/// The items of one SDES chunk, validated to be whole.
#[derive(Clone)]
pub struct SdesItems<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for SdesItems<'a> {
    type Item = SdesItem<'a>;

    fn next(&mut self) -> Option<SdesItem<'a>> {
        let (&kind, rest) = self.rest.split_first()?;
        let (&len, rest) = rest.split_first()?;
        let (value, rest) = rest.split_at_checked(usize::from(len))?;
        self.rest = rest;
        Some(SdesItem { kind, value })
    }
}

impl fmt::Debug for SdesItems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// One SDES chunk: a source and its items.
#[derive(Debug, Clone)]
pub struct SdesChunk<'a> {
    /// Source described.
    pub ssrc: Ssrc,
    /// Its items.
    pub items: SdesItems<'a>,
}

impl<'a> SdesChunk<'a> {
    /// The CNAME item's text, if the chunk has one.
    pub fn cname(&self) -> Option<&'a [u8]> {
        self.items
            .clone()
            .find(|i| i.kind == SDES_CNAME)
            .map(|i| i.value)
    }

    /// Parses a chunk at the start of `b` (which starts 32-bit aligned); returns it and the
    /// bytes it takes including the null terminator and alignment padding.
    fn parse(b: &'a [u8]) -> Option<(Self, usize)> {
        let ssrc = Ssrc(be32(b, 0)?);
        let mut pos = 4;
        loop {
            match *b.get(pos)? {
                0 => break,
                _ => {
                    let len = usize::from(*b.get(pos + 1)?);
                    pos += 2 + len;
                }
            }
        }
        let items = b.get(4..pos)?;
        // The terminating null plus padding to the next 32-bit boundary.
        let used = (pos + 1).next_multiple_of(4);
        if used > b.len() {
            return None;
        }
        Some((
            Self {
                ssrc,
                items: SdesItems { rest: items },
            },
            used,
        ))
    }
}

/// The chunks of an SDES packet, validated to be whole.
#[derive(Clone)]
pub struct SdesChunks<'a> {
    rest: &'a [u8],
    remaining: u8,
}

impl<'a> Iterator for SdesChunks<'a> {
    type Item = SdesChunk<'a>;

    fn next(&mut self) -> Option<SdesChunk<'a>> {
        self.remaining = self.remaining.checked_sub(1)?;
        let (chunk, used) = SdesChunk::parse(self.rest)?;
        self.rest = self.rest.get(used..)?;
        Some(chunk)
    }
}

impl fmt::Debug for SdesChunks<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

/// A source description packet.
#[derive(Debug, Clone)]
pub struct Sdes<'a> {
    /// Its chunks.
    pub chunks: SdesChunks<'a>,
}

/// The SSRCs of a BYE.
#[derive(Debug, Clone)]
pub struct SsrcList<'a> {
    rest: &'a [u8],
}

impl Iterator for SsrcList<'_> {
    type Item = Ssrc;

    fn next(&mut self) -> Option<Ssrc> {
        let (word, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(Ssrc(u32::from_be_bytes(*word)))
    }
}

/// A goodbye packet. `Debug` shows the reason's length, not its free text.
#[derive(Clone)]
pub struct Bye<'a> {
    /// Sources leaving.
    pub ssrcs: SsrcList<'a>,
    /// Reason for leaving, if given.
    pub reason: Option<&'a [u8]>,
}

impl fmt::Debug for Bye<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bye")
            .field("ssrcs", &self.ssrcs)
            .field(
                "reason",
                &self.reason.map(|r| format!("<{} bytes>", r.len())),
            )
            .finish()
    }
}

/// One packet of a compound RTCP datagram. `Debug` shows the length of
/// [`RtcpPacket::Other`] packets, not their application-defined contents.
#[derive(Clone)]
pub enum RtcpPacket<'a> {
    /// SR (200).
    SenderReport(SenderReport<'a>),
    /// RR (201).
    ReceiverReport(ReceiverReport<'a>),
    /// SDES (202).
    Sdes(Sdes<'a>),
    /// BYE (203).
    Bye(Bye<'a>),
    /// APP (204) and every type not interpreted here.
    Other {
        /// The packet type byte.
        packet_type: u8,
        /// The whole packet, header and padding included.
        bytes: &'a [u8],
    },
}

impl fmt::Debug for RtcpPacket<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::SenderReport(p) => p.fmt(f),
            Self::ReceiverReport(p) => p.fmt(f),
            Self::Sdes(p) => p.fmt(f),
            Self::Bye(p) => p.fmt(f),
            Self::Other { packet_type, bytes } => write!(
                f,
                "Other {{ packet_type: {packet_type}, bytes: <{} bytes> }}",
                bytes.len()
            ),
        }
    }
}

/// One packet split off the front of a datagram.
struct Framed<'a> {
    /// The whole packet.
    packet: &'a [u8],
    /// After the 4-byte header, padding removed.
    body: &'a [u8],
    /// The datagram after this packet.
    remainder: &'a [u8],
}

/// Splits one packet off the front of `rest`; `offset` is where `rest` starts in the datagram.
fn split_packet(rest: &[u8], offset: usize) -> Result<Framed<'_>, RtcpError> {
    let (header, _) = rest
        .split_first_chunk::<HEADER_LEN>()
        .ok_or(RtcpError::Truncated { offset })?;
    if header[0] >> 6 != 2 {
        return Err(RtcpError::BadVersion { offset });
    }
    let len = (usize::from(u16::from_be_bytes([header[2], header[3]])) + 1) * 4;
    let (packet, remainder) = rest
        .split_at_checked(len)
        .ok_or(RtcpError::Truncated { offset })?;
    let mut body = packet.get(HEADER_LEN..).unwrap_or_default();
    if header[0] & 0x20 != 0 {
        let pad = usize::from(packet.last().copied().unwrap_or_default());
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::BadPadding { offset });
        }
        body = body.get(..body.len() - pad).unwrap_or_default();
    }
    Ok(Framed {
        packet,
        body,
        remainder,
    })
}

/// Interprets one packet whose framing `split_packet` has checked.
fn parse_packet<'a>(packet: &'a [u8], body: &'a [u8]) -> Option<RtcpPacket<'a>> {
    let first = *packet.first()?;
    let packet_type = *packet.get(1)?;
    let count = usize::from(first & 0x1f);
    let parsed = match packet_type {
        PT_SR => {
            let blocks_at = 4 + SENDER_INFO_LEN;
            let blocks = body.get(blocks_at..blocks_at + count * REPORT_BLOCK_LEN)?;
            RtcpPacket::SenderReport(SenderReport {
                ssrc: Ssrc(be32(body, 0)?),
                info: SenderInfo::parse(body.get(4..blocks_at)?)?,
                report_blocks: ReportBlocks { rest: blocks },
            })
        }
        PT_RR => RtcpPacket::ReceiverReport(ReceiverReport {
            ssrc: Ssrc(be32(body, 0)?),
            report_blocks: ReportBlocks {
                rest: body.get(4..4 + count * REPORT_BLOCK_LEN)?,
            },
        }),
        PT_SDES => {
            // Walk the chunks once so that iteration later cannot come up short.
            let mut rest = body;
            for _ in 0..count {
                let (_, used) = SdesChunk::parse(rest)?;
                rest = rest.get(used..)?;
            }
            RtcpPacket::Sdes(Sdes {
                chunks: SdesChunks {
                    rest: body,
                    remaining: first & 0x1f,
                },
            })
        }
        PT_BYE => {
            let (ssrcs, tail) = body.split_at_checked(count * 4)?;
            let reason = match tail.split_first() {
                None => None,
                Some((&len, text)) => Some(text.get(..usize::from(len))?),
            };
            RtcpPacket::Bye(Bye {
                ssrcs: SsrcList { rest: ssrcs },
                reason,
            })
        }
        _ => RtcpPacket::Other {
            packet_type,
            bytes: packet,
        },
    };
    Some(parsed)
}

/// A validated compound RTCP datagram. `Debug` lists the packets (see [`RtcpPacket`]).
#[derive(Clone, Copy)]
pub struct RtcpCompound<'a> {
    buf: &'a [u8],
}

impl<'a> RtcpCompound<'a> {
    /// Validates every packet of `buf`: version 2, length within the datagram, padding, and
    /// the layout of SR, RR, SDES and BYE bodies.
    pub fn new_checked(buf: &'a [u8]) -> Result<Self, RtcpError> {
        if buf.is_empty() {
            return Err(RtcpError::Empty);
        }
        let mut rest = buf;
        let mut offset = 0;
        while !rest.is_empty() {
            let Framed {
                packet,
                body,
                remainder,
            } = split_packet(rest, offset)?;
            if parse_packet(packet, body).is_none() {
                return Err(RtcpError::BadBody {
                    offset,
                    packet_type: packet.get(1).copied().unwrap_or_default(),
                });
            }
            offset += packet.len();
            rest = remainder;
        }
        Ok(Self { buf })
    }

    /// The packets, in order.
    pub fn packets(&self) -> RtcpPackets<'a> {
        RtcpPackets { rest: self.buf }
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

impl fmt::Debug for RtcpCompound<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.packets()).finish()
    }
}

impl<'a> IntoIterator for RtcpCompound<'a> {
    type Item = RtcpPacket<'a>;
    type IntoIter = RtcpPackets<'a>;

    fn into_iter(self) -> RtcpPackets<'a> {
        self.packets()
    }
}

/// Iterator over the packets of a validated compound datagram.
#[derive(Debug, Clone)]
pub struct RtcpPackets<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for RtcpPackets<'a> {
    type Item = RtcpPacket<'a>;

    fn next(&mut self) -> Option<RtcpPacket<'a>> {
        // Validated in `new_checked`, so the error arms cannot be taken; end the walk if they
        // were rather than yield garbage.
        let Framed {
            packet,
            body,
            remainder,
        } = split_packet(self.rest, 0).ok()?;
        self.rest = remainder;
        parse_packet(packet, body)
    }
}

fn emit_report(
    out: &mut [u8],
    packet_type: u8,
    ssrc: Ssrc,
    info: Option<&SenderInfo>,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    if blocks.len() > MAX_REPORT_BLOCKS {
        return Err(RtcpError::TooManyReportBlocks(blocks.len()));
    }
    let info_len = if info.is_some() { SENDER_INFO_LEN } else { 0 };
    let need = HEADER_LEN + 4 + info_len + blocks.len() * REPORT_BLOCK_LEN;
    let have = out.len();
    let dst = out
        .get_mut(..need)
        .ok_or(RtcpError::BufferTooSmall { need, have })?;
    let words = (need / 4 - 1) as u16;
    dst[0] = 0x80 | blocks.len() as u8;
    dst[1] = packet_type;
    dst[2..4].copy_from_slice(&words.to_be_bytes());
    dst[4..8].copy_from_slice(&ssrc.0.to_be_bytes());
    let mut at = 8;
    if let Some(i) = info {
        let fields = [
            (i.ntp_timestamp >> 32) as u32,
            i.ntp_timestamp as u32,
            i.rtp_timestamp,
            i.packet_count,
            i.octet_count,
        ];
        for w in fields {
            dst[at..at + 4].copy_from_slice(&w.to_be_bytes());
            at += 4;
        }
    }
    for (block, chunk) in blocks
        .iter()
        .zip(dst[at..].chunks_exact_mut(REPORT_BLOCK_LEN))
    {
        if let Ok(chunk) = <&mut [u8; REPORT_BLOCK_LEN]>::try_from(chunk) {
            block.emit(chunk);
        }
    }
    Ok(need)
}

/// Writes a sender report into the start of `out`; returns its length.
pub fn emit_sender_report(
    out: &mut [u8],
    ssrc: Ssrc,
    info: &SenderInfo,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    emit_report(out, PT_SR, ssrc, Some(info), blocks)
}

/// Writes a receiver report into the start of `out`; returns its length.
pub fn emit_receiver_report(
    out: &mut [u8],
    ssrc: Ssrc,
    blocks: &[ReportBlock],
) -> Result<usize, RtcpError> {
    emit_report(out, PT_RR, ssrc, None, blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(0x1000 + n),
            fraction_lost: n as u8,
            cumulative_lost: lost,
            extended_highest_seq: 70_000 + n,
            jitter: 12 + n,
            lsr: 0xabcd_0000 + n,
            dlsr: 65_536 * n,
        }
    }

    /// SDES with one chunk holding CNAME "host1" and NAME "Alice".
    fn sdes() -> Vec<u8> {
        let mut p = vec![0x81, PT_SDES, 0, 0, 0, 0, 0x12, 0x34];
        p.extend_from_slice(&[SDES_CNAME, 5]);
        p.extend_from_slice(b"host1");
        p.extend_from_slice(&[2, 5]);
        p.extend_from_slice(b"Alice");
        p.push(0);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    fn bye(reason: &[u8]) -> Vec<u8> {
        let mut p = vec![0x82, PT_BYE, 0, 0, 0, 0, 0, 1, 0, 0, 0, 2];
        p.push(reason.len() as u8);
        p.extend_from_slice(reason);
        while p.len() % 4 != 0 {
            p.push(0);
        }
        let words = (p.len() / 4 - 1) as u16;
        p[2..4].copy_from_slice(&words.to_be_bytes());
        p
    }

    #[test]
    fn sender_report_round_trips() {
        let info = SenderInfo {
            ntp_timestamp: 0xe1e2_e3e4_0102_0304,
            rtp_timestamp: 160_000,
            packet_count: 1000,
            octet_count: 160_000,
        };
        let blocks = [block(1, -5), block(2, 0x7f_ffff)];
        let mut buf = [0u8; 256];
        let n = emit_sender_report(&mut buf, Ssrc(42), &info, &blocks).unwrap();
        assert_eq!(n, 28 + 48);
        let c = RtcpCompound::new_checked(&buf[..n]).unwrap();
        let mut packets = c.packets();
        match packets.next() {
            Some(RtcpPacket::SenderReport(sr)) => {
                assert_eq!(sr.ssrc, Ssrc(42));
                assert_eq!(sr.info, info);
                assert_eq!(sr.report_blocks.collect::<Vec<_>>(), blocks);
            }
            other => panic!("expected SR, got {other:?}"),
        }
        assert!(packets.next().is_none());
    }

    #[test]
    fn cumulative_lost_is_sign_extended_and_saturated() {
        let mut buf = [0u8; 64];
        let n = emit_receiver_report(&mut buf, Ssrc(7), &[block(3, -1_000_000_000)]).unwrap();
        let Some(RtcpPacket::ReceiverReport(rr)) = RtcpCompound::new_checked(&buf[..n])
            .unwrap()
            .packets()
            .next()
        else {
            panic!("expected RR");
        };
        let b = rr.report_blocks.clone().next().unwrap();
        assert_eq!(b.cumulative_lost, -0x80_0000);
        assert_eq!(b.fraction_lost, 3);
        assert_eq!(rr.ssrc, Ssrc(7));
        // Wire bytes of -1 in 24 bits.
        buf[13..16].copy_from_slice(&[0xff, 0xff, 0xff]);
        let Some(RtcpPacket::ReceiverReport(mut rr)) = RtcpCompound::new_checked(&buf[..n])
            .unwrap()
            .packets()
            .next()
        else {
            panic!("expected RR");
        };
        assert_eq!(rr.report_blocks.next().unwrap().cumulative_lost, -1);
    }

    #[test]
    fn compound_rr_sdes_bye_app() {
        let mut buf = vec![0u8; 64];
        let n = emit_receiver_report(&mut buf, Ssrc(9), &[]).unwrap();
        buf.truncate(n);
        buf.extend_from_slice(&sdes());
        buf.extend_from_slice(&bye(b"teardown"));
        let app = [0x80, PT_APP, 0, 2, 0, 0, 0, 9, b'n', b'a', b'm', b'e'];
        buf.extend_from_slice(&app);
        let packets: Vec<_> = RtcpCompound::new_checked(&buf).unwrap().packets().collect();
        assert_eq!(packets.len(), 4);
        match &packets[0] {
            RtcpPacket::ReceiverReport(rr) => assert_eq!(rr.report_blocks.len(), 0),
            other => panic!("{other:?}"),
        }
        match &packets[1] {
            RtcpPacket::Sdes(s) => {
                let chunks: Vec<_> = s.chunks.clone().collect();
                assert_eq!(chunks.len(), 1);
                assert_eq!(chunks[0].ssrc, Ssrc(0x1234));
                assert_eq!(chunks[0].cname(), Some(&b"host1"[..]));
                assert_eq!(chunks[0].items.clone().count(), 2);
            }
            other => panic!("{other:?}"),
        }
        match &packets[2] {
            RtcpPacket::Bye(b) => {
                assert_eq!(b.ssrcs.clone().collect::<Vec<_>>(), [Ssrc(1), Ssrc(2)]);
                assert_eq!(b.reason, Some(&b"teardown"[..]));
            }
            other => panic!("{other:?}"),
        }
        match &packets[3] {
            RtcpPacket::Other { packet_type, bytes } => {
                assert_eq!(*packet_type, PT_APP);
                assert_eq!(*bytes, &app[..]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn debug_hides_sdes_and_bye_text() {
        let mut buf = sdes();
        buf.extend_from_slice(&bye(b"user 555-1234 hung up"));
        buf.extend_from_slice(&[0x80, PT_APP, 0, 2, 0, 0, 0, 9, b'n', b'a', b'm', b'e']);
        let shown = format!("{:?}", RtcpCompound::new_checked(&buf).unwrap());
        assert!(
            !shown.contains("Alice") && !shown.contains("555"),
            "{shown}"
        );
        // Nor as raw numbers: 'A', 'l' and 'n', 'a' (from APP).
        assert!(
            !shown.contains("65, 108") && !shown.contains("110, 97"),
            "{shown}"
        );
        assert!(
            shown.contains("Other { packet_type: 204, bytes: <12 bytes> }"),
            "{shown}"
        );
        assert!(shown.contains("<5 bytes>"), "{shown}");
    }

    #[test]
    fn rejects_bad_framing() {
        assert_eq!(
            RtcpCompound::new_checked(&[]).unwrap_err(),
            RtcpError::Empty
        );
        let mut buf = [0u8; 64];
        let n = emit_receiver_report(&mut buf, Ssrc(1), &[block(1, 0)]).unwrap();
        let rr = buf[..n].to_vec();
        assert_eq!(
            RtcpCompound::new_checked(&rr[..n - 4]).unwrap_err(),
            RtcpError::Truncated { offset: 0 }
        );
        let mut two = [rr.clone(), rr.clone()].concat();
        two[n] = 0x40 | 1;
        assert_eq!(
            RtcpCompound::new_checked(&two).unwrap_err(),
            RtcpError::BadVersion { offset: n }
        );
        let mut trailing = rr.clone();
        trailing.extend_from_slice(&[0x80, PT_RR]);
        assert_eq!(
            RtcpCompound::new_checked(&trailing).unwrap_err(),
            RtcpError::Truncated { offset: n }
        );
        // RC says 2 blocks, the length holds one.
        let mut short = rr.clone();
        short[0] = 0x82;
        assert_eq!(
            RtcpCompound::new_checked(&short).unwrap_err(),
            RtcpError::BadBody {
                offset: 0,
                packet_type: PT_RR
            }
        );
    }

    #[test]
    fn padding_is_checked_and_removed() {
        // RR without blocks, 4 bytes of padding.
        let mut p = vec![0xa0, PT_RR, 0, 2, 0, 0, 0, 5, 0, 0, 0, 4];
        assert!(RtcpCompound::new_checked(&p).is_ok());
        p[11] = 9;
        assert_eq!(
            RtcpCompound::new_checked(&p).unwrap_err(),
            RtcpError::BadPadding { offset: 0 }
        );
        p[11] = 0;
        assert!(RtcpCompound::new_checked(&p).is_err());
        // Padding that eats into the SSRC makes the body too short.
        p[11] = 8;
        assert!(matches!(
            RtcpCompound::new_checked(&p).unwrap_err(),
            RtcpError::BadBody { .. }
        ));
    }

    #[test]
    fn rejects_malformed_sdes_and_bye() {
        let mut s = sdes();
        s[9] = 200; // CNAME length past the chunk
        assert!(matches!(
            RtcpCompound::new_checked(&s).unwrap_err(),
            RtcpError::BadBody {
                packet_type: PT_SDES,
                ..
            }
        ));
        let mut s = sdes();
        s[0] = 0x82; // two chunks announced, one present
        assert!(RtcpCompound::new_checked(&s).is_err());
        let mut b = bye(b"x");
        b[12] = 9; // reason longer than the packet
        assert!(matches!(
            RtcpCompound::new_checked(&b).unwrap_err(),
            RtcpError::BadBody {
                packet_type: PT_BYE,
                ..
            }
        ));
    }

    #[test]
    fn builders_check_their_inputs() {
        let blocks = vec![block(0, 0); 32];
        assert_eq!(
            emit_receiver_report(&mut [0u8; 2048], Ssrc(1), &blocks).unwrap_err(),
            RtcpError::TooManyReportBlocks(32)
        );
        assert_eq!(
            emit_sender_report(&mut [0u8; 27], Ssrc(1), &SenderInfo::default(), &[]).unwrap_err(),
            RtcpError::BufferTooSmall { need: 28, have: 27 }
        );
    }
}
