//! Per-direction accounting of admitted packets: RFC 3550 receive statistics in the clock
//! units the sender's SDP declared, RFC 4733 event starts, and the figures of RTCP reports.
//! Runs for every packet: no allocation, no panics.

use std::time::{Duration, Instant};

use pop_relay_core::media::{CodecHints, DirectionStats};
use pop_relay_core::stats::{arrival_in_clock_units, static_clock_rate, RtpReceiveStats};
use pop_wire::rtcp::{RtcpCompound, RtcpPacket};
use pop_wire::rtp::RtpPacket;
use pop_wire::telephone_event::TelephoneEvent;

/// Clock rate assumed for dynamic payload types the SDP gave no `a=rtpmap` for: right for
/// most narrowband codecs.
const DEFAULT_CLOCK_RATE: u32 = 8000;

/// What a datagram taken for RTCP turned out to be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RtcpKind<'a> {
    /// A valid compound packet whose reports can be read.
    Plain(RtcpCompound<'a>),
    /// SRTCP: only the first header is in clear, the reports are encrypted.
    Encrypted,
}

/// Classifies an RTCP datagram; `None` means malformed (count and drop it). Plain RTCP must
/// be a valid compound packet throughout; on an SRTP leg only the clear first header can be
/// checked (version 2, an RTCP packet type, a length that fits).
pub(crate) fn classify_rtcp(data: &[u8], encrypted: bool) -> Option<RtcpKind<'_>> {
    if encrypted {
        return srtcp_header_fits(data).then_some(RtcpKind::Encrypted);
    }
    RtcpCompound::new_checked(data).ok().map(RtcpKind::Plain)
}

/// RFC 3711 §3.4: SRTCP keeps the first 8 bytes (header and sender SSRC) in clear.
fn srtcp_header_fits(data: &[u8]) -> bool {
    let (Some(&b0), Some(&pt), Some(len)) = (data.first(), data.get(1), data.get(2..4)) else {
        return false;
    };
    let words = usize::from(u16::from_be_bytes([len[0], len[1]]));
    data.len() >= 8 && b0 >> 6 == 2 && (192..=223).contains(&pt) && (words + 1) * 4 <= data.len()
}

/// Counters and receive state of one direction of a stream.
#[derive(Debug, Default)]
pub(crate) struct DirectionState {
    pub counters: DirectionStats,
    rtp: RtpReceiveStats,
    pub last_rx: Option<Instant>,
    /// SSRC and RTP timestamp of the last telephone-event seen: packets of one event share
    /// its start timestamp, so a new timestamp is a new event.
    last_event: Option<(u32, u32)>,
}

impl DirectionState {
    /// Accounts one admitted RTP packet. `since_epoch` is its arrival time.
    pub(crate) fn on_rtp(
        &mut self,
        p: &RtpPacket<&[u8]>,
        codecs: &CodecHints,
        since_epoch: Duration,
    ) {
        let pt = p.payload_type();
        let ssrc = p.ssrc().0;
        let seq = p.sequence_number();
        let hint = codecs.get(pt);
        if hint.is_some_and(|h| h.telephone_event) {
            self.on_telephone_event(p, ssrc);
            self.rtp.on_rtp_untimed(ssrc, seq);
        } else {
            let rate = hint
                .map(|h| h.clock_rate)
                .filter(|&r| r != 0)
                .or_else(|| static_clock_rate(pt))
                .unwrap_or(DEFAULT_CLOCK_RATE);
            let arrival = arrival_in_clock_units(since_epoch, rate);
            self.rtp.on_rtp(ssrc, seq, p.timestamp(), arrival);
        }
        self.counters.last_ssrc = Some(ssrc);
        self.counters.last_payload_type = Some(pt);
    }

    /// Counts an event start. Only the timestamp and the payload length are looked at: the
    /// event code (the digit) is never read.
    fn on_telephone_event(&mut self, p: &RtpPacket<&[u8]>, ssrc: u32) {
        if TelephoneEvent::new_checked(p.payload()).is_err() {
            return;
        }
        let ts = p.timestamp();
        let is_new = match self.last_event {
            // Serial-number comparison: a late packet of an earlier event is not a new one.
            Some((last_ssrc, last_ts)) if last_ssrc == ssrc => {
                ts != last_ts && (ts.wrapping_sub(last_ts) as i32) > 0
            }
            _ => true,
        };
        if is_new {
            self.last_event = Some((ssrc, ts));
            self.counters.dtmf_events += 1;
        }
    }

    /// Records the figures of an admitted plain RTCP compound. `reported_ssrc` is the SSRC the
    /// opposite direction carries: a report block about it is preferred to other blocks.
    pub(crate) fn on_rtcp(&mut self, compound: &RtcpCompound<'_>, reported_ssrc: Option<u32>) {
        let mut best: Option<pop_wire::rtcp::ReportBlock> = None;
        let mut consider = |block: pop_wire::rtcp::ReportBlock| {
            let about_ours = Some(block.ssrc.0) == reported_ssrc;
            let best_about_ours = best.is_some_and(|b| Some(b.ssrc.0) == reported_ssrc);
            if best.is_none() || about_ours || !best_about_ours {
                best = Some(block);
            }
        };
        for packet in compound.packets() {
            match packet {
                RtcpPacket::SenderReport(sr) => {
                    self.counters.last_sr_packets = Some(sr.info.packet_count);
                    sr.report_blocks.for_each(&mut consider);
                }
                RtcpPacket::ReceiverReport(rr) => rr.report_blocks.for_each(&mut consider),
                _ => {}
            }
        }
        if let Some(b) = best {
            self.counters.last_rr_fraction_lost = Some(b.fraction_lost);
            self.counters.last_rr_cumulative_lost = Some(b.cumulative_lost);
            self.counters.last_rr_jitter = Some(b.jitter);
        }
    }

    pub(crate) fn snapshot(&self, now: Instant) -> DirectionStats {
        let mut s = self.counters;
        s.rtp_lost = self.rtp.cumulative_lost();
        s.rtp_duplicates = self.rtp.duplicates();
        s.jitter_ts = self.rtp.jitter();
        s.idle_ms = self.last_rx.map(|t| {
            u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        });
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_relay_core::media::PayloadTypeHint;
    use pop_wire::rtcp::{emit_receiver_report, emit_sender_report, ReportBlock, SenderInfo};
    use pop_wire::rtp::{emit_header, Ssrc};
    use pop_wire::telephone_event;

    fn hints(entries: &[(u8, u32, bool)]) -> CodecHints {
        let mut h = CodecHints::new();
        for &(pt, rate, te) in entries {
            assert!(h.insert(PayloadTypeHint {
                payload_type: pt,
                clock_rate: rate,
                telephone_event: te,
            }));
        }
        h
    }

    fn packet(pt: u8, seq: u16, ts: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; 12 + payload.len()];
        emit_header(&mut b, pt, false, seq, ts, Ssrc(5)).unwrap();
        b[12..].copy_from_slice(payload);
        b
    }

    /// Feeds 20 ms packets whose arrival alternates 0 / +1 ms around the ideal: the true
    /// jitter is about 1 ms, which is 48 units at 48 kHz but 8 at 8 kHz.
    fn feed_opus(codecs: &CodecHints) -> u32 {
        let mut d = DirectionState::default();
        for i in 0..500u32 {
            let arrival = Duration::from_millis(u64::from(i) * 20 + u64::from(i % 2));
            let b = packet(111, i as u16, i * 960, &[0; 20]);
            d.on_rtp(&RtpPacket::new_checked(&b[..]).unwrap(), codecs, arrival);
        }
        d.snapshot(Instant::now()).jitter_ts
    }

    #[test]
    fn jitter_uses_the_clock_rate_from_sdp() {
        let j = feed_opus(&hints(&[(111, 48_000, false)]));
        assert!((44..=48).contains(&j), "48 kHz jitter {j}");
        // Without the SDP's rtpmap the dynamic type falls back to 8 kHz and is wrong by 6×.
        let j8 = feed_opus(&CodecHints::new());
        assert!(j8 > 500, "8 kHz fallback jitter {j8}");
    }

    #[test]
    fn event_starts_are_counted_once_and_end_retransmissions_are_not() {
        let codecs = hints(&[(0, 8000, false), (101, 8000, true)]);
        let mut d = DirectionState::default();
        let mut seq = 0u16;
        let mut send = |d: &mut DirectionState, pt: u8, ts: u32, end: bool, dur: u16| {
            let mut payload = [0u8; 4];
            telephone_event::emit(&mut payload, 5, end, 10, dur).unwrap();
            let b = packet(pt, seq, ts, &payload);
            seq = seq.wrapping_add(1);
            d.on_rtp(
                &RtpPacket::new_checked(&b[..]).unwrap(),
                &codecs,
                Duration::from_millis(u64::from(seq) * 20),
            );
        };
        for event_ts in [16_000u32, 32_000] {
            for step in 1..=5u16 {
                send(&mut d, 101, event_ts, false, step * 160);
            }
            // The end packet and its two retransmissions.
            for _ in 0..3 {
                send(&mut d, 101, event_ts, true, 960);
            }
        }
        // A late packet of the first event and plain audio are not events.
        send(&mut d, 101, 16_000, true, 960);
        send(&mut d, 0, 40_000, false, 0);
        let s = d.snapshot(Instant::now());
        assert_eq!(s.dtmf_events, 2);
        assert_eq!(s.last_payload_type, Some(0));
        // Frozen event timestamps must not read as network jitter.
        assert_eq!(s.jitter_ts, 0);
    }

    #[test]
    fn truncated_event_payload_is_not_an_event() {
        let codecs = hints(&[(101, 8000, true)]);
        let mut d = DirectionState::default();
        let b = packet(101, 1, 100, &[1, 2]);
        d.on_rtp(
            &RtpPacket::new_checked(&b[..]).unwrap(),
            &codecs,
            Duration::ZERO,
        );
        assert_eq!(d.snapshot(Instant::now()).dtmf_events, 0);
    }

    fn block(ssrc: u32, fraction: u8, lost: i32, jitter: u32) -> ReportBlock {
        ReportBlock {
            ssrc: Ssrc(ssrc),
            fraction_lost: fraction,
            cumulative_lost: lost,
            extended_highest_seq: 1000,
            jitter,
            lsr: 0,
            dlsr: 0,
        }
    }

    #[test]
    fn rtcp_figures_prefer_the_block_about_the_opposite_stream() {
        let mut buf = [0u8; 256];
        let info = SenderInfo {
            packet_count: 4242,
            ..Default::default()
        };
        let n = emit_sender_report(
            &mut buf,
            Ssrc(1),
            &info,
            &[block(77, 10, 3, 90), block(9, 25, 7, 120)],
        )
        .unwrap();
        let m = emit_receiver_report(&mut buf[n..], Ssrc(1), &[block(78, 1, 1, 1)]).unwrap();
        let data = &buf[..n + m];
        let Some(RtcpKind::Plain(c)) = classify_rtcp(data, false) else {
            panic!("valid compound refused");
        };
        let mut d = DirectionState::default();
        d.on_rtcp(&c, Some(9));
        let s = d.snapshot(Instant::now());
        assert_eq!(s.last_sr_packets, Some(4242));
        assert_eq!(s.last_rr_fraction_lost, Some(25));
        assert_eq!(s.last_rr_cumulative_lost, Some(7));
        assert_eq!(s.last_rr_jitter, Some(120));
        // Without a known opposite SSRC the last block wins.
        let mut d = DirectionState::default();
        d.on_rtcp(&c, None);
        assert_eq!(d.snapshot(Instant::now()).last_rr_jitter, Some(1));
    }

    #[test]
    fn rtcp_classification() {
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 1];
        assert!(matches!(
            classify_rtcp(&rr, false),
            Some(RtcpKind::Plain(_))
        ));
        // A broken second packet makes plain RTCP malformed...
        let mut two = rr.to_vec();
        two.extend_from_slice(&[0x80, 202, 0, 9]);
        assert!(classify_rtcp(&two, false).is_none());
        // ...but is what SRTCP's encrypted tail looks like, so an SRTP leg accepts it.
        assert!(matches!(
            classify_rtcp(&two, true),
            Some(RtcpKind::Encrypted)
        ));
        assert!(classify_rtcp(&[0x80, 200, 0, 9, 0, 0, 0, 1], true).is_none());
        assert!(classify_rtcp(&[0x40, 200, 0, 1, 0, 0, 0, 1], true).is_none());
        assert!(classify_rtcp(&[0x80, 200], true).is_none());
        assert!(classify_rtcp(&[], false).is_none());
    }
}
