//! RTP fixed header (RFC 3550 §5.1) as a checked view over a byte buffer.

use thiserror::Error;

/// Why a buffer is not an RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum RtpError {
    /// The buffer is shorter than the 12-byte fixed header plus CSRCs and extension it declares.
    #[error("RTP packet truncated")]
    Truncated,
    /// The version field is not 2.
    #[error("RTP version is not 2")]
    BadVersion,
    /// The padding count is zero or larger than the payload.
    #[error("RTP padding length invalid")]
    BadPadding,
}

/// Synchronisation source identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ssrc(pub u32);

/// A validated view of an RTP packet. Construction checks every length the header declares,
/// so the accessors below never panic.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<T: AsRef<[u8]>> {
    buf: T,
    payload_start: usize,
    payload_end: usize,
}

/// Size of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

impl<T: AsRef<[u8]>> RtpPacket<T> {
    /// Validates `buf` as an RTP packet.
    pub fn new_checked(buf: T) -> Result<Self, RtpError> {
        let b = buf.as_ref();
        if b.len() < RTP_HEADER_LEN {
            return Err(RtpError::Truncated);
        }
        if b[0] >> 6 != 2 {
            return Err(RtpError::BadVersion);
        }
        let csrc_count = usize::from(b[0] & 0x0f);
        let mut start = RTP_HEADER_LEN + 4 * csrc_count;
        if b.len() < start {
            return Err(RtpError::Truncated);
        }
        if b[0] & 0x10 != 0 {
            // Header extension: 16-bit profile, 16-bit length in 32-bit words.
            if b.len() < start + 4 {
                return Err(RtpError::Truncated);
            }
            let words = usize::from(u16::from_be_bytes([b[start + 2], b[start + 3]]));
            start += 4 + 4 * words;
            if b.len() < start {
                return Err(RtpError::Truncated);
            }
        }
        let mut end = b.len();
        if b[0] & 0x20 != 0 {
            let pad = usize::from(b[end - 1]);
            if pad == 0 || pad > end - start {
                return Err(RtpError::BadPadding);
            }
            end -= pad;
        }
        Ok(Self {
            buf,
            payload_start: start,
            payload_end: end,
        })
    }

    fn b(&self) -> &[u8] {
        self.buf.as_ref()
    }

    /// Marker bit.
    pub fn marker(&self) -> bool {
        self.b()[1] & 0x80 != 0
    }

    /// Payload type (7 bits).
    pub fn payload_type(&self) -> u8 {
        self.b()[1] & 0x7f
    }

    /// Sequence number.
    pub fn sequence_number(&self) -> u16 {
        u16::from_be_bytes([self.b()[2], self.b()[3]])
    }

    /// Media timestamp.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.b()[4], self.b()[5], self.b()[6], self.b()[7]])
    }

    /// Synchronisation source.
    pub fn ssrc(&self) -> Ssrc {
        Ssrc(u32::from_be_bytes([
            self.b()[8],
            self.b()[9],
            self.b()[10],
            self.b()[11],
        ]))
    }

    /// Payload without header, CSRCs, extension and padding.
    pub fn payload(&self) -> &[u8] {
        &self.b()[self.payload_start..self.payload_end]
    }

    /// The whole packet.
    pub fn as_bytes(&self) -> &[u8] {
        self.b()
    }
}

/// Whether a datagram on a multiplexed RTP/RTCP port is RTCP (RFC 5761 §4: payload types
/// 64–95 in the second byte's low 7 bits collide with RTCP packet types 192–223).
pub fn is_rtcp_on_muxed_port(datagram: &[u8]) -> bool {
    datagram.len() >= 2 && (192..=223).contains(&datagram[1])
}

/// Writes a minimal RTP header into `out[..12]`; used by load generators and tests.
/// Returns `None` if `out` is shorter than the header.
pub fn emit_header(
    out: &mut [u8],
    payload_type: u8,
    marker: bool,
    seq: u16,
    timestamp: u32,
    ssrc: Ssrc,
) -> Option<()> {
    let h = out.get_mut(..RTP_HEADER_LEN)?;
    h[0] = 0x80;
    h[1] = (payload_type & 0x7f) | if marker { 0x80 } else { 0 };
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&timestamp.to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.0.to_be_bytes());
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_header() {
        let mut buf = [0u8; 172];
        emit_header(&mut buf, 0, true, 513, 160_000, Ssrc(0xdead_beef)).unwrap();
        let p = RtpPacket::new_checked(&buf[..]).unwrap();
        assert!(p.marker());
        assert_eq!(p.payload_type(), 0);
        assert_eq!(p.sequence_number(), 513);
        assert_eq!(p.timestamp(), 160_000);
        assert_eq!(p.ssrc(), Ssrc(0xdead_beef));
        assert_eq!(p.payload().len(), 160);
    }

    #[test]
    fn rejects_truncated_csrc_and_extension() {
        let mut buf = [0u8; 16];
        emit_header(&mut buf, 8, false, 1, 1, Ssrc(1)).unwrap();
        buf[0] |= 0x02; // two CSRCs need 20 bytes
        assert_eq!(
            RtpPacket::new_checked(&buf[..]).unwrap_err(),
            RtpError::Truncated
        );
        buf[0] = 0x90; // extension header needs 16 bytes, then 4*len more
        buf[14] = 0;
        buf[15] = 1;
        assert_eq!(
            RtpPacket::new_checked(&buf[..]).unwrap_err(),
            RtpError::Truncated
        );
    }

    #[test]
    fn rejects_bad_version_and_padding() {
        let mut buf = [0u8; 20];
        emit_header(&mut buf, 8, false, 1, 1, Ssrc(1)).unwrap();
        buf[0] = 0x40;
        assert_eq!(
            RtpPacket::new_checked(&buf[..]).unwrap_err(),
            RtpError::BadVersion
        );
        buf[0] = 0xa0;
        buf[19] = 0;
        assert_eq!(
            RtpPacket::new_checked(&buf[..]).unwrap_err(),
            RtpError::BadPadding
        );
        buf[19] = 9;
        assert_eq!(
            RtpPacket::new_checked(&buf[..]).unwrap_err(),
            RtpError::BadPadding
        );
        buf[19] = 8;
        assert_eq!(RtpPacket::new_checked(&buf[..]).unwrap().payload().len(), 0);
    }

    #[test]
    fn rtcp_demux_rule() {
        assert!(is_rtcp_on_muxed_port(&[0x80, 200]));
        assert!(!is_rtcp_on_muxed_port(&[0x80, 0]));
        assert!(!is_rtcp_on_muxed_port(&[0x80, 96]));
    }
}
