//! RFC 4733 §2.3 telephone-event payload (DTMF and other named events) as a checked view.
//!
//! DTMF digits are personal data (PINs, card numbers): `Debug` never shows the event code, and
//! reading it takes the deliberately named [`TelephoneEvent::event_code_unredacted`].

use std::fmt;

use thiserror::Error;

/// Size of one telephone-event payload.
pub const TELEPHONE_EVENT_LEN: usize = 4;

/// Highest event code that is a DTMF digit (0–9, `*`, `#`, A–D are codes 0–15).
const LAST_DTMF_EVENT: u8 = 15;

/// Why an RTP payload is not a telephone event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TelephoneEventError {
    /// The payload is shorter than the 4 bytes of an event.
    #[error("telephone-event payload shorter than 4 bytes")]
    Truncated,
}

/// A validated view of a telephone-event payload. Bytes after the first 4 are ignored: some
/// senders pad, and RFC 2198 redundancy is unpacked before this view.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent<T: AsRef<[u8]>> {
    buf: T,
}

impl<T: AsRef<[u8]>> TelephoneEvent<T> {
    /// Validates `buf` as a telephone-event payload.
    pub fn new_checked(buf: T) -> Result<Self, TelephoneEventError> {
        if buf.as_ref().len() < TELEPHONE_EVENT_LEN {
            return Err(TelephoneEventError::Truncated);
        }
        Ok(Self { buf })
    }

    fn field(&self) -> [u8; TELEPHONE_EVENT_LEN] {
        let mut f = [0u8; TELEPHONE_EVENT_LEN];
        if let Some(src) = self.buf.as_ref().get(..TELEPHONE_EVENT_LEN) {
            f.copy_from_slice(src);
        }
        f
    }

    /// The event code (for DTMF: the digit). Personal data — do not log it.
    pub fn event_code_unredacted(&self) -> u8 {
        self.field()[0]
    }

    /// Whether the event is a DTMF digit (codes 0–15).
    pub fn is_dtmf(&self) -> bool {
        self.event_code_unredacted() <= LAST_DTMF_EVENT
    }

    /// End bit: this packet (and its retransmissions) closes the event.
    pub fn end(&self) -> bool {
        self.field()[1] & 0x80 != 0
    }

    /// Volume in −dBm0 (0–63; 0 is loudest).
    pub fn volume(&self) -> u8 {
        self.field()[1] & 0x3f
    }

    /// Duration so far, in media timestamp units.
    pub fn duration(&self) -> u16 {
        let f = self.field();
        u16::from_be_bytes([f[2], f[3]])
    }
}

impl<T: AsRef<[u8]>> fmt::Debug for TelephoneEvent<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelephoneEvent")
            .field("event", &format_args!("<redacted>"))
            .field("end", &self.end())
            .field("volume", &self.volume())
            .field("duration", &self.duration())
            .finish()
    }
}

/// Writes a telephone-event payload into `out[..4]`; used by load generators and tests.
/// The volume is truncated to its 6 bits. Returns `None` if `out` is shorter than 4 bytes.
pub fn emit(out: &mut [u8], event: u8, end: bool, volume: u8, duration: u16) -> Option<()> {
    let p = out.get_mut(..TELEPHONE_EVENT_LEN)?;
    let d = duration.to_be_bytes();
    p.copy_from_slice(&[
        event,
        (volume & 0x3f) | if end { 0x80 } else { 0 },
        d[0],
        d[1],
    ]);
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fields() {
        let e = TelephoneEvent::new_checked([11u8, 0x8a, 0x03, 0x20]).unwrap();
        assert_eq!(e.event_code_unredacted(), 11);
        assert!(e.is_dtmf());
        assert!(e.end());
        assert_eq!(e.volume(), 10);
        assert_eq!(e.duration(), 800);
        let e = TelephoneEvent::new_checked([16u8, 0x3f, 0, 0, 0xff]).unwrap();
        assert!(!e.is_dtmf());
        assert!(!e.end());
        assert_eq!(e.volume(), 63);
    }

    #[test]
    fn reserved_bit_does_not_leak_into_volume_or_end() {
        let e = TelephoneEvent::new_checked([5u8, 0x40, 0, 1]).unwrap();
        assert!(!e.end());
        assert_eq!(e.volume(), 0);
    }

    #[test]
    fn rejects_short_payload() {
        assert_eq!(
            TelephoneEvent::new_checked(&[1u8, 2, 3][..]).unwrap_err(),
            TelephoneEventError::Truncated
        );
    }

    #[test]
    fn emit_round_trips() {
        let mut buf = [0u8; 4];
        emit(&mut buf, 9, true, 0xff, 1280).unwrap();
        let e = TelephoneEvent::new_checked(buf).unwrap();
        assert_eq!(e.event_code_unredacted(), 9);
        assert!(e.end());
        assert_eq!(e.volume(), 63);
        assert_eq!(e.duration(), 1280);
        assert_eq!(emit(&mut [0u8; 3], 1, false, 0, 0), None);
    }

    #[test]
    fn debug_redacts_the_digit() {
        let mut buf = [0u8; 4];
        emit(&mut buf, 7, false, 10, 160).unwrap();
        let shown = format!("{:?}", TelephoneEvent::new_checked(buf).unwrap());
        assert!(shown.contains("event: <redacted>"), "{shown}");
        assert!(!shown.contains('7'), "{shown}");
        assert!(shown.contains("duration: 160"), "{shown}");
    }
}
