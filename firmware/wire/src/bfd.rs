//! BFD control packets (RFC 5880 §4.1) as a checked view and a typed representation.
//!
//! [`BfdPacket::new_checked`] applies the reception rules of RFC 5880 §6.8.6 that concern the
//! packet alone (version, lengths, detect multiplier, multipoint bit, discriminators); the rules
//! that need session state (your discriminator matching, TTL 255 of RFC 5881, authentication in
//! use) belong to the session in `pop-linkmon-core`.
//!
//! Authentication: the optional authentication section is validated for length and exposed as
//! opaque bytes. Single-hop sessions are not authenticated yet, so the session discards packets
//! with the A bit (RFC 5880 §6.8.6: "A bit set and no authentication in use") and
//! [`BfdControl::emit`] refuses to write one.

use core::fmt;
use core::time::Duration;

use thiserror::Error;

/// Length of the mandatory section of a control packet.
pub const BFD_CONTROL_LEN: usize = 24;
/// The only protocol version defined (RFC 5880).
pub const BFD_VERSION: u8 = 1;
/// UDP destination port of single-hop control packets (RFC 5881 §4).
pub const BFD_CONTROL_PORT: u16 = 3784;
/// TTL / hop limit a single-hop packet must be sent and received with (RFC 5881 §5).
pub const BFD_SINGLE_HOP_TTL: u8 = 255;

/// Why a datagram is not a valid BFD control packet; each variant names the rule it breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BfdError {
    /// Fewer bytes than the 24-byte mandatory section.
    #[error("BFD packet truncated: {len} bytes, the mandatory section needs 24")]
    Truncated {
        /// Datagram length.
        len: usize,
    },
    /// RFC 5880 §6.8.6: the version must be 1.
    #[error("BFD version {0} is not 1")]
    BadVersion(u8),
    /// RFC 5880 §6.8.6: Length below 24 (A bit clear) or 26 (A bit set).
    #[error("BFD length field {length} below the minimum {minimum}")]
    LengthTooShort {
        /// The Length field.
        length: u8,
        /// The minimum for this packet's A bit.
        minimum: u8,
    },
    /// RFC 5880 §6.8.6: Length larger than the datagram carrying it.
    #[error("BFD length field {length} exceeds the {datagram}-byte datagram")]
    LengthExceedsDatagram {
        /// The Length field.
        length: u8,
        /// Datagram length.
        datagram: usize,
    },
    /// RFC 5880 §6.8.6: detect multiplier zero.
    #[error("BFD detect multiplier is zero")]
    ZeroDetectMult,
    /// RFC 5880 §6.8.6: multipoint bit set.
    #[error("BFD multipoint bit set")]
    Multipoint,
    /// RFC 5880 §6.8.6: My Discriminator zero.
    #[error("BFD My Discriminator is zero")]
    ZeroMyDiscriminator,
    /// RFC 5880 §6.8.6: Your Discriminator zero while the state is Init or Up.
    #[error("BFD Your Discriminator is zero in state {0}")]
    ZeroYourDiscriminator(BfdState),
    /// RFC 5880 §4.1: a packet must not carry both Poll and Final.
    #[error("BFD packet has both Poll and Final set")]
    PollAndFinal,
    /// The authentication section's own length is below 2 or runs past the Length field.
    #[error("BFD authentication length {auth_len} does not fit the {available} bytes after the mandatory section")]
    BadAuthLength {
        /// Auth Len field.
        auth_len: u8,
        /// Bytes between the mandatory section and the end given by Length.
        available: usize,
    },
    /// [`BfdControl::emit`]: the output buffer is shorter than 24 bytes.
    #[error("buffer of {0} bytes too short for a BFD control packet")]
    BufferTooShort(usize),
    /// [`BfdControl::emit`]: writing an authentication section is not supported.
    #[error("BFD authentication is not supported for transmission")]
    AuthNotSupported,
}

/// Session state as carried in the Sta field (RFC 5880 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BfdState {
    /// Administratively down.
    AdminDown,
    /// Down.
    Down,
    /// Init: the remote was seen Down, waiting for it to see us.
    Init,
    /// Up.
    Up,
}

impl BfdState {
    /// From the 2-bit field value.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0x03 {
            0 => Self::AdminDown,
            1 => Self::Down,
            2 => Self::Init,
            _ => Self::Up,
        }
    }

    /// The 2-bit field value.
    pub fn bits(self) -> u8 {
        match self {
            Self::AdminDown => 0,
            Self::Down => 1,
            Self::Init => 2,
            Self::Up => 3,
        }
    }
}

impl fmt::Display for BfdState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::AdminDown => "AdminDown",
            Self::Down => "Down",
            Self::Init => "Init",
            Self::Up => "Up",
        })
    }
}

/// Diagnostic code (RFC 5880 §4.1): why the sender's session last left Up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BfdDiag {
    /// 0: no diagnostic.
    None,
    /// 1: control detection time expired.
    ControlDetectionTimeExpired,
    /// 2: echo function failed.
    EchoFunctionFailed,
    /// 3: neighbour signalled session down.
    NeighborSignaledDown,
    /// 4: forwarding plane reset.
    ForwardingPlaneReset,
    /// 5: path down.
    PathDown,
    /// 6: concatenated path down.
    ConcatenatedPathDown,
    /// 7: administratively down.
    AdministrativelyDown,
    /// 8: reverse concatenated path down.
    ReverseConcatenatedPathDown,
    /// 9–31: reserved values, kept so that a packet re-emits unchanged.
    Reserved(u8),
}

impl BfdDiag {
    /// From the 5-bit field value.
    pub fn from_bits(bits: u8) -> Self {
        match bits & 0x1f {
            0 => Self::None,
            1 => Self::ControlDetectionTimeExpired,
            2 => Self::EchoFunctionFailed,
            3 => Self::NeighborSignaledDown,
            4 => Self::ForwardingPlaneReset,
            5 => Self::PathDown,
            6 => Self::ConcatenatedPathDown,
            7 => Self::AdministrativelyDown,
            8 => Self::ReverseConcatenatedPathDown,
            other => Self::Reserved(other),
        }
    }

    /// The 5-bit field value.
    pub fn bits(self) -> u8 {
        match self {
            Self::None => 0,
            Self::ControlDetectionTimeExpired => 1,
            Self::EchoFunctionFailed => 2,
            Self::NeighborSignaledDown => 3,
            Self::ForwardingPlaneReset => 4,
            Self::PathDown => 5,
            Self::ConcatenatedPathDown => 6,
            Self::AdministrativelyDown => 7,
            Self::ReverseConcatenatedPathDown => 8,
            Self::Reserved(v) => v & 0x1f,
        }
    }
}

const FLAG_POLL: u8 = 0x20;
const FLAG_FINAL: u8 = 0x10;
const FLAG_CPI: u8 = 0x08;
const FLAG_AUTH: u8 = 0x04;
const FLAG_DEMAND: u8 = 0x02;
const FLAG_MULTIPOINT: u8 = 0x01;

/// A validated view of a BFD control packet. Construction applies the packet-level rules of
/// RFC 5880 §6.8.6, so the accessors below never panic.
#[derive(Debug, Clone, Copy)]
pub struct BfdPacket<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> BfdPacket<T> {
    /// Validates `buf` (one UDP payload) as a BFD control packet.
    pub fn new_checked(buf: T) -> Result<Self, BfdError> {
        let b = buf.as_ref();
        let Some(head) = b.first_chunk::<BFD_CONTROL_LEN>() else {
            return Err(BfdError::Truncated { len: b.len() });
        };
        let version = head[0] >> 5;
        if version != BFD_VERSION {
            return Err(BfdError::BadVersion(version));
        }
        let flags = head[1];
        let length = head[3];
        let auth = flags & FLAG_AUTH != 0;
        let minimum: u8 = if auth { 26 } else { 24 };
        if length < minimum {
            return Err(BfdError::LengthTooShort { length, minimum });
        }
        if usize::from(length) > b.len() {
            return Err(BfdError::LengthExceedsDatagram {
                length,
                datagram: b.len(),
            });
        }
        if head[2] == 0 {
            return Err(BfdError::ZeroDetectMult);
        }
        if flags & FLAG_MULTIPOINT != 0 {
            return Err(BfdError::Multipoint);
        }
        if be32(head, 4) == 0 {
            return Err(BfdError::ZeroMyDiscriminator);
        }
        let state = BfdState::from_bits(flags >> 6);
        if be32(head, 8) == 0 && matches!(state, BfdState::Init | BfdState::Up) {
            return Err(BfdError::ZeroYourDiscriminator(state));
        }
        if flags & FLAG_POLL != 0 && flags & FLAG_FINAL != 0 {
            return Err(BfdError::PollAndFinal);
        }
        if auth {
            // Length ≥ 26 and ≤ datagram were checked above, so bytes 24 and 25 exist.
            let available = usize::from(length) - BFD_CONTROL_LEN;
            let auth_len = b.get(BFD_CONTROL_LEN + 1).copied().unwrap_or(0);
            if auth_len < 2 || usize::from(auth_len) > available {
                return Err(BfdError::BadAuthLength {
                    auth_len,
                    available,
                });
            }
        }
        Ok(Self { buf })
    }

    fn head(&self) -> &[u8; BFD_CONTROL_LEN] {
        // `new_checked` guarantees at least 24 bytes; the fallback is never taken.
        self.buf
            .as_ref()
            .first_chunk::<BFD_CONTROL_LEN>()
            .unwrap_or(&[0; BFD_CONTROL_LEN])
    }

    /// Diagnostic code.
    pub fn diag(&self) -> BfdDiag {
        BfdDiag::from_bits(self.head()[0])
    }

    /// Sender's session state.
    pub fn state(&self) -> BfdState {
        BfdState::from_bits(self.head()[1] >> 6)
    }

    /// Poll bit: the sender asks for a Final.
    pub fn poll(&self) -> bool {
        self.head()[1] & FLAG_POLL != 0
    }

    /// Final bit: answer to a Poll.
    pub fn final_(&self) -> bool {
        self.head()[1] & FLAG_FINAL != 0
    }

    /// Control Plane Independent bit.
    pub fn control_plane_independent(&self) -> bool {
        self.head()[1] & FLAG_CPI != 0
    }

    /// Authentication Present bit.
    pub fn auth_present(&self) -> bool {
        self.head()[1] & FLAG_AUTH != 0
    }

    /// Demand bit.
    pub fn demand(&self) -> bool {
        self.head()[1] & FLAG_DEMAND != 0
    }

    /// Detect multiplier (never zero).
    pub fn detect_mult(&self) -> u8 {
        self.head()[2]
    }

    /// Length field: bytes of the packet, at most the datagram's length.
    pub fn length(&self) -> u8 {
        self.head()[3]
    }

    /// My Discriminator (never zero).
    pub fn my_discriminator(&self) -> u32 {
        be32(self.head(), 4)
    }

    /// Your Discriminator (zero only in Down or AdminDown).
    pub fn your_discriminator(&self) -> u32 {
        be32(self.head(), 8)
    }

    /// Desired Min TX Interval, microseconds.
    pub fn desired_min_tx_us(&self) -> u32 {
        be32(self.head(), 12)
    }

    /// Required Min RX Interval, microseconds.
    pub fn required_min_rx_us(&self) -> u32 {
        be32(self.head(), 16)
    }

    /// Required Min Echo RX Interval, microseconds.
    pub fn required_min_echo_rx_us(&self) -> u32 {
        be32(self.head(), 20)
    }

    /// Auth Type of the authentication section, if the A bit is set.
    pub fn auth_type(&self) -> Option<u8> {
        self.auth_section().and_then(|s| s.first().copied())
    }

    /// The whole authentication section (type, length, data) as opaque bytes, if present.
    pub fn auth_section(&self) -> Option<&[u8]> {
        if !self.auth_present() {
            return None;
        }
        let b = self.buf.as_ref();
        let auth_len = usize::from(*b.get(BFD_CONTROL_LEN + 1)?);
        b.get(BFD_CONTROL_LEN..BFD_CONTROL_LEN + auth_len)
    }

    /// The packet bytes (the first `length()` bytes of the datagram).
    pub fn as_bytes(&self) -> &[u8] {
        let b = self.buf.as_ref();
        b.get(..usize::from(self.length())).unwrap_or(b)
    }
}

fn be32(b: &[u8; BFD_CONTROL_LEN], at: usize) -> u32 {
    let mut w = [0u8; 4];
    if let Some(src) = b.get(at..at + 4) {
        w.copy_from_slice(src);
    }
    u32::from_be_bytes(w)
}

/// A BFD control packet as typed fields. Version is always 1 and multipoint always clear, so
/// neither is a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdControl {
    /// Diagnostic code.
    pub diag: BfdDiag,
    /// Sender's session state.
    pub state: BfdState,
    /// Poll bit.
    pub poll: bool,
    /// Final bit.
    pub final_: bool,
    /// Control Plane Independent bit.
    pub control_plane_independent: bool,
    /// Demand bit.
    pub demand: bool,
    /// Auth Type when the received packet carried an authentication section. Emitting one is
    /// not supported: [`BfdControl::emit`] refuses `Some`.
    pub auth_type: Option<u8>,
    /// Detect multiplier.
    pub detect_mult: u8,
    /// My Discriminator.
    pub my_discriminator: u32,
    /// Your Discriminator.
    pub your_discriminator: u32,
    /// Desired Min TX Interval, microseconds.
    pub desired_min_tx_us: u32,
    /// Required Min RX Interval, microseconds.
    pub required_min_rx_us: u32,
    /// Required Min Echo RX Interval, microseconds (zero: the sender does not want echo).
    pub required_min_echo_rx_us: u32,
}

impl BfdControl {
    /// Validates and parses one UDP payload.
    pub fn parse(datagram: &[u8]) -> Result<Self, BfdError> {
        BfdPacket::new_checked(datagram).map(|p| Self::from_packet(&p))
    }

    /// The typed fields of a validated view.
    pub fn from_packet<T: AsRef<[u8]>>(p: &BfdPacket<T>) -> Self {
        Self {
            diag: p.diag(),
            state: p.state(),
            poll: p.poll(),
            final_: p.final_(),
            control_plane_independent: p.control_plane_independent(),
            demand: p.demand(),
            auth_type: p.auth_type(),
            detect_mult: p.detect_mult(),
            my_discriminator: p.my_discriminator(),
            your_discriminator: p.your_discriminator(),
            desired_min_tx_us: p.desired_min_tx_us(),
            required_min_rx_us: p.required_min_rx_us(),
            required_min_echo_rx_us: p.required_min_echo_rx_us(),
        }
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        BFD_CONTROL_LEN
    }

    /// Desired Min TX Interval as a duration.
    pub fn desired_min_tx(&self) -> Duration {
        Duration::from_micros(u64::from(self.desired_min_tx_us))
    }

    /// Required Min RX Interval as a duration.
    pub fn required_min_rx(&self) -> Duration {
        Duration::from_micros(u64::from(self.required_min_rx_us))
    }

    /// Writes the packet into `out[..24]` and returns 24. The caller is responsible for the
    /// field rules [`BfdPacket::new_checked`] enforces on the receiving side; the property tests
    /// check that whatever passes them round-trips.
    pub fn emit(&self, out: &mut [u8]) -> Result<usize, BfdError> {
        if self.auth_type.is_some() {
            return Err(BfdError::AuthNotSupported);
        }
        let out_len = out.len();
        let Some(h) = out.first_chunk_mut::<BFD_CONTROL_LEN>() else {
            return Err(BfdError::BufferTooShort(out_len));
        };
        let [b0, b1, b2, b3, rest @ ..] = h;
        *b0 = (BFD_VERSION << 5) | self.diag.bits();
        *b1 = (self.state.bits() << 6)
            | if self.poll { FLAG_POLL } else { 0 }
            | if self.final_ { FLAG_FINAL } else { 0 }
            | if self.control_plane_independent {
                FLAG_CPI
            } else {
                0
            }
            | if self.demand { FLAG_DEMAND } else { 0 };
        *b2 = self.detect_mult;
        *b3 = BFD_CONTROL_LEN as u8;
        let words = [
            self.my_discriminator,
            self.your_discriminator,
            self.desired_min_tx_us,
            self.required_min_rx_us,
            self.required_min_echo_rx_us,
        ];
        for (chunk, word) in rest.chunks_exact_mut(4).zip(words) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        Ok(BFD_CONTROL_LEN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BfdControl {
        BfdControl {
            diag: BfdDiag::None,
            state: BfdState::Up,
            poll: true,
            final_: false,
            control_plane_independent: false,
            demand: false,
            auth_type: None,
            detect_mult: 3,
            my_discriminator: 0x0102_0304,
            your_discriminator: 0x0a0b_0c0d,
            desired_min_tx_us: 50_000,
            required_min_rx_us: 50_000,
            required_min_echo_rx_us: 0,
        }
    }

    fn emitted(c: &BfdControl) -> [u8; 24] {
        let mut buf = [0u8; 24];
        assert_eq!(c.emit(&mut buf).unwrap(), 24);
        buf
    }

    #[test]
    fn emits_rfc_5880_layout() {
        let b = emitted(&sample());
        assert_eq!(b[0], 0x20, "version 1, diag 0");
        assert_eq!(b[1], 0xe0, "Up + Poll");
        assert_eq!(b[2], 3);
        assert_eq!(b[3], 24);
        assert_eq!(&b[4..8], &[1, 2, 3, 4]);
        assert_eq!(&b[12..16], &50_000u32.to_be_bytes());
        assert_eq!(BfdControl::parse(&b).unwrap(), sample());
    }

    #[test]
    fn each_packet_rule_is_named() {
        let good = emitted(&sample());
        let with = |f: &dyn Fn(&mut [u8; 24])| {
            let mut b = good;
            f(&mut b);
            BfdControl::parse(&b).unwrap_err()
        };
        assert_eq!(
            BfdControl::parse(&good[..23]).unwrap_err(),
            BfdError::Truncated { len: 23 }
        );
        assert_eq!(with(&|b| b[0] = 0x40), BfdError::BadVersion(2));
        assert_eq!(
            with(&|b| b[3] = 23),
            BfdError::LengthTooShort {
                length: 23,
                minimum: 24
            }
        );
        assert_eq!(
            with(&|b| b[3] = 25),
            BfdError::LengthExceedsDatagram {
                length: 25,
                datagram: 24
            }
        );
        assert_eq!(with(&|b| b[2] = 0), BfdError::ZeroDetectMult);
        assert_eq!(with(&|b| b[1] |= 0x01), BfdError::Multipoint);
        assert_eq!(with(&|b| b[4..8].fill(0)), BfdError::ZeroMyDiscriminator);
        assert_eq!(
            with(&|b| b[8..12].fill(0)),
            BfdError::ZeroYourDiscriminator(BfdState::Up)
        );
        assert_eq!(with(&|b| b[1] |= 0x10), BfdError::PollAndFinal);
        assert_eq!(
            with(&|b| b[1] |= 0x04),
            BfdError::LengthTooShort {
                length: 24,
                minimum: 26
            }
        );
    }

    #[test]
    fn zero_your_discriminator_is_fine_while_down() {
        let mut c = sample();
        c.state = BfdState::Down;
        c.your_discriminator = 0;
        assert_eq!(BfdControl::parse(&emitted(&c)).unwrap(), c);
        c.state = BfdState::AdminDown;
        assert_eq!(BfdControl::parse(&emitted(&c)).unwrap(), c);
    }

    #[test]
    fn auth_section_is_exposed_opaque_and_checked() {
        let mut b = [0u8; 32];
        sample().emit(&mut b).unwrap();
        b[1] |= FLAG_AUTH;
        b[3] = 32;
        // Simple password (type 1), length 8: type, len, key id, 5 password bytes.
        b[24..32].copy_from_slice(&[1, 8, 7, b's', b'e', b'c', b'r', b't']);
        let p = BfdPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.auth_type(), Some(1));
        assert_eq!(p.auth_section().map(<[u8]>::len), Some(8));
        assert_eq!(BfdControl::from_packet(&p).auth_type, Some(1));
        b[25] = 9;
        assert_eq!(
            BfdPacket::new_checked(&b[..]).unwrap_err(),
            BfdError::BadAuthLength {
                auth_len: 9,
                available: 8
            }
        );
        let mut c = sample();
        c.auth_type = Some(1);
        assert_eq!(c.emit(&mut b).unwrap_err(), BfdError::AuthNotSupported);
    }

    #[test]
    fn trailing_bytes_past_length_are_not_part_of_the_packet() {
        let mut b = [0u8; 40];
        sample().emit(&mut b).unwrap();
        let p = BfdPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.as_bytes().len(), 24);
    }

    #[test]
    fn emit_into_short_buffer_is_an_error() {
        let mut b = [0u8; 10];
        assert_eq!(
            sample().emit(&mut b).unwrap_err(),
            BfdError::BufferTooShort(10)
        );
    }
}
