//! The checks every fuzz target runs on one input. Shared, via `#[path]`, by the cargo-fuzz
//! targets (nightly) and by `firmware/wire/tests/fuzz_corpus.rs` (stable), so the seed corpus
//! and every saved crash are replayed in ordinary CI.
//!
//! Each check must not panic for any input except on a real bug, which the `assert!`s name.

use pop_wire::bencode;
use pop_wire::bfd::{BfdControl, BfdPacket, BfdState, BFD_CONTROL_LEN};
use pop_wire::rtcp::{RtcpCompound, RtcpPacket};
use pop_wire::rtp::{is_rtcp_on_muxed_port, RtpPacket, RTP_HEADER_LEN};
use pop_wire::sdp::Sdp;
use pop_wire::telephone_event::TelephoneEvent;

/// RTP view: accessors stay in bounds and the payload lies inside the packet.
pub fn rtp(data: &[u8]) {
    let _ = is_rtcp_on_muxed_port(data);
    if let Ok(p) = RtpPacket::new_checked(data) {
        let _ = (
            p.marker(),
            p.payload_type(),
            p.sequence_number(),
            p.timestamp(),
            p.ssrc(),
        );
        assert!(p.payload().len() <= data.len() - RTP_HEADER_LEN);
        assert_eq!(p.as_bytes(), data);
    }
}

/// RTCP compound view: a validated datagram yields at least one packet and every accessor
/// works; report block counts are consistent.
pub fn rtcp(data: &[u8]) {
    let Ok(compound) = RtcpCompound::new_checked(data) else {
        return;
    };
    let mut packets = 0usize;
    for p in compound.packets() {
        packets += 1;
        let _ = format!("{p:?}");
        match p {
            RtcpPacket::SenderReport(sr) => {
                assert_eq!(sr.report_blocks.clone().count(), sr.report_blocks.len());
            }
            RtcpPacket::ReceiverReport(rr) => {
                assert_eq!(rr.report_blocks.clone().count(), rr.report_blocks.len());
            }
            RtcpPacket::Sdes(s) => {
                for chunk in s.chunks {
                    let _ = chunk.cname();
                    assert!(chunk.items.clone().all(|i| i.kind != 0));
                }
            }
            RtcpPacket::Bye(b) => {
                let _ = (b.ssrcs.count(), b.reason.map(<[u8]>::len));
            }
            RtcpPacket::Other { bytes, .. } => assert!(bytes.len() >= 4 && bytes.len() % 4 == 0),
        }
    }
    assert!(packets >= 1, "a validated compound must hold a packet");
}

/// RFC 4733 view: accessors work and `Debug` never shows the event code.
pub fn telephone_event(data: &[u8]) {
    if let Ok(e) = TelephoneEvent::new_checked(data) {
        let _ = (
            e.end(),
            e.volume(),
            e.duration(),
            e.is_dtmf(),
            e.event_code_unredacted(),
        );
        assert!(format!("{e:?}").contains("event: <redacted>"));
    }
}

/// Bencode: whatever decodes re-encodes to something that decodes to the same value, and
/// `decode_prefix` agrees with `decode` on the prefix it consumed.
pub fn bencode(data: &[u8]) {
    if let Ok(v) = bencode::decode(data) {
        let encoded = v.to_bytes();
        match bencode::decode(&encoded) {
            Ok(again) => assert!(again == v, "re-decoded value differs"),
            Err(e) => panic!("re-encoded value does not decode: {e}"),
        }
    }
    if let Ok((v, used)) = bencode::decode_prefix(data) {
        assert!(used > 0 && used <= data.len());
        let whole = data.get(..used).map(bencode::decode);
        assert!(
            matches!(whole, Some(Ok(ref w)) if *w == v),
            "prefix disagrees with decode"
        );
    }
}

/// SDP: whatever parses emits text that parses to the same structure.
pub fn sdp(data: &[u8]) {
    let Ok(parsed) = Sdp::parse(data) else {
        return;
    };
    let _ = format!("{parsed:?}");
    let _ = parsed.origin();
    for (index, m) in parsed.media.iter().enumerate() {
        let _ = (
            parsed.effective_connection(index),
            parsed.effective_direction(index),
        );
        let _ = (m.rtcp(), m.rtcp_mux(), m.mid(), m.ptime(), m.is_rejected());
        let _ = (m.rtpmaps().count(), m.description.payload_types().count());
    }
    let emitted = parsed.emit();
    match Sdp::parse(&emitted) {
        Ok(again) => assert!(again == parsed, "emitted SDP re-parses differently"),
        Err(e) => panic!("emitted SDP does not parse: {e}"),
    }
}

/// BFD control packet: a validated view obeys the RFC 5880 §6.8.6 packet rules, its
/// authentication section lies inside Length, and an unauthenticated packet re-emits the same
/// mandatory section.
pub fn bfd(data: &[u8]) {
    let Ok(p) = BfdPacket::new_checked(data) else {
        return;
    };
    let c = BfdControl::from_packet(&p);
    let len = usize::from(p.length());
    assert!((BFD_CONTROL_LEN..=data.len()).contains(&len));
    assert!(c.detect_mult != 0 && c.my_discriminator != 0);
    assert!(!(c.poll && c.final_));
    assert!(c.your_discriminator != 0 || matches!(c.state, BfdState::Down | BfdState::AdminDown));
    assert_eq!(p.as_bytes().len(), len);
    if let Some(auth) = p.auth_section() {
        assert!(auth.len() >= 2 && BFD_CONTROL_LEN + auth.len() <= len);
    } else {
        let mut out = [0u8; BFD_CONTROL_LEN];
        assert_eq!(c.emit(&mut out), Ok(BFD_CONTROL_LEN));
        let again = BfdPacket::new_checked(&out[..]).map(|q| BfdControl::from_packet(&q));
        assert_eq!(again, Ok(c), "re-emitted packet parses differently");
    }
}
