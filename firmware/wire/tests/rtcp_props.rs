//! Property tests of the RTCP views and builders, and of the RFC 4733 view.
#![allow(clippy::unwrap_used)]

use pop_wire::rtcp::{
    emit_receiver_report, emit_sender_report, ReportBlock, RtcpCompound, RtcpPacket, SenderInfo,
};
use pop_wire::rtp::Ssrc;
use pop_wire::telephone_event::{self, TelephoneEvent};
use proptest::prelude::*;

fn report_block() -> impl Strategy<Value = ReportBlock> {
    (
        any::<u32>(),
        any::<u8>(),
        -0x80_0000i32..=0x7f_ffff,
        any::<[u32; 4]>(),
    )
        .prop_map(|(ssrc, fraction_lost, cumulative_lost, w)| ReportBlock {
            ssrc: Ssrc(ssrc),
            fraction_lost,
            cumulative_lost,
            extended_highest_seq: w[0],
            jitter: w[1],
            lsr: w[2],
            dlsr: w[3],
        })
}

proptest! {
    #[test]
    fn sr_then_rr_compound_round_trips(
        sr_ssrc in any::<u32>(),
        rr_ssrc in any::<u32>(),
        info in any::<(u64, u32, u32, u32)>(),
        sr_blocks in proptest::collection::vec(report_block(), 0..=31),
        rr_blocks in proptest::collection::vec(report_block(), 0..=31),
    ) {
        let info = SenderInfo {
            ntp_timestamp: info.0,
            rtp_timestamp: info.1,
            packet_count: info.2,
            octet_count: info.3,
        };
        let mut buf = vec![0u8; 2 * (28 + 31 * 24)];
        let n = emit_sender_report(&mut buf, Ssrc(sr_ssrc), &info, &sr_blocks).unwrap();
        let m = emit_receiver_report(&mut buf[n..], Ssrc(rr_ssrc), &rr_blocks).unwrap();
        let compound = RtcpCompound::new_checked(&buf[..n + m]).unwrap();
        let packets: Vec<_> = compound.packets().collect();
        prop_assert_eq!(packets.len(), 2);
        match &packets[0] {
            RtcpPacket::SenderReport(sr) => {
                prop_assert_eq!(sr.ssrc, Ssrc(sr_ssrc));
                prop_assert_eq!(sr.info, info);
                prop_assert_eq!(sr.report_blocks.clone().collect::<Vec<_>>(), sr_blocks);
            }
            other => prop_assert!(false, "expected SR, got {:?}", other),
        }
        match &packets[1] {
            RtcpPacket::ReceiverReport(rr) => {
                prop_assert_eq!(rr.ssrc, Ssrc(rr_ssrc));
                prop_assert_eq!(rr.report_blocks.clone().collect::<Vec<_>>(), rr_blocks);
            }
            other => prop_assert!(false, "expected RR, got {:?}", other),
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(c) = RtcpCompound::new_checked(&bytes) {
            let mut total = 0;
            for p in c.packets() {
                total += 1;
                exercise(&p);
            }
            prop_assert!(total >= 1);
        }
        if let Ok(e) = TelephoneEvent::new_checked(&bytes[..]) {
            let _ = (e.end(), e.volume(), e.duration(), e.is_dtmf(), format!("{e:?}"));
        }
    }

    #[test]
    fn rtcp_shaped_noise_never_panics(
        header in (0u8..=255, 199u8..=205),
        len_words in 0u16..8,
        body in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut bytes = vec![0x80 | (header.0 & 0x3f), header.1];
        bytes.extend_from_slice(&len_words.to_be_bytes());
        bytes.extend_from_slice(&body);
        if let Ok(c) = RtcpCompound::new_checked(&bytes) {
            for p in c.packets() {
                exercise(&p);
            }
        }
    }

    #[test]
    fn telephone_event_round_trips(event in any::<u8>(), end in any::<bool>(), volume in 0u8..64, duration in any::<u16>()) {
        let mut buf = [0u8; 4];
        telephone_event::emit(&mut buf, event, end, volume, duration).unwrap();
        let e = TelephoneEvent::new_checked(buf).unwrap();
        prop_assert_eq!(e.event_code_unredacted(), event);
        prop_assert_eq!(e.end(), end);
        prop_assert_eq!(e.volume(), volume);
        prop_assert_eq!(e.duration(), duration);
        prop_assert_eq!(e.is_dtmf(), event <= 15);
    }
}

/// Touches every accessor so that a latent panic would surface.
fn exercise(p: &RtcpPacket<'_>) {
    let _ = format!("{p:?}");
    match p {
        RtcpPacket::SenderReport(sr) => {
            assert_eq!(sr.report_blocks.clone().count(), sr.report_blocks.len())
        }
        RtcpPacket::ReceiverReport(rr) => {
            assert_eq!(rr.report_blocks.clone().count(), rr.report_blocks.len())
        }
        RtcpPacket::Sdes(s) => {
            for c in s.chunks.clone() {
                let _ = c.cname();
                assert!(c.items.clone().all(|i| i.kind != 0));
            }
        }
        RtcpPacket::Bye(b) => {
            let _ = (b.ssrcs.clone().count(), b.reason);
        }
        RtcpPacket::Other { bytes, .. } => assert!(bytes.len() >= 4),
    }
}
