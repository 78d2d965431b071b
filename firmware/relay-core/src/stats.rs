//! RFC 3550 receive statistics: sequence tracking (A.1), cumulative loss (A.3) and
//! interarrival jitter (A.8), plus duplicate detection.
//!
//! Sans-I/O: the caller converts its arrival clock into RTP timestamp units (see
//! [`arrival_in_clock_units`]) and feeds one call per received RTP packet. No allocation, no
//! panics: the data plane calls this for every packet.

use std::time::Duration;

/// Packets in sequence needed before a new source is considered valid (RFC 3550 A.1).
const MIN_SEQUENTIAL: u32 = 2;
/// Largest forward jump still taken as loss rather than a restart (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// Largest backward step still taken as reordering rather than a restart (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;
/// Sequence number space.
const RTP_SEQ_MOD: u32 = 1 << 16;
/// How far back (in sequence numbers) duplicates are recognised.
const DUP_WINDOW: u16 = 64;

/// Receive statistics of one RTP direction (one SSRC at a time; a new SSRC restarts sequence
/// tracking but keeps the loss and duplicate counts already accumulated).
#[derive(Debug, Clone, Default)]
pub struct RtpReceiveStats {
    source: Option<SourceState>,
    /// Loss accumulated by earlier SSRCs of this direction.
    lost_before: i64,
    duplicates: u64,
}

#[derive(Debug, Clone)]
struct SourceState {
    ssrc: u32,
    max_seq: u16,
    /// Shifted count of sequence number wraps.
    cycles: u32,
    base_seq: u32,
    bad_seq: u32,
    probation: u32,
    received: u64,
    /// Bit `i` set: sequence number `max_seq - i` was received. Only duplicate detection uses it.
    seen: u64,
    /// Last transit time (arrival - RTP timestamp), in timestamp units.
    transit: Option<u32>,
    /// Jitter scaled by 16, as in RFC 3550 A.8.
    jitter_x16: u32,
}

impl SourceState {
    fn new(ssrc: u32, seq: u16) -> Self {
        // RFC 3550 A.1: a new source starts on probation with max_seq one below its first packet.
        Self {
            ssrc,
            max_seq: seq.wrapping_sub(1),
            cycles: 0,
            base_seq: u32::from(seq),
            bad_seq: RTP_SEQ_MOD + 1,
            probation: MIN_SEQUENTIAL,
            received: 0,
            seen: 0,
            transit: None,
            jitter_x16: 0,
        }
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = u32::from(seq);
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.received = 0;
        self.seen = 1;
    }

    /// RFC 3550 A.1 `update_seq`, extended with duplicate detection. Returns whether the packet
    /// counts as received, and whether it was a duplicate.
    fn update_seq(&mut self, seq: u16) -> (bool, bool) {
        let udelta = seq.wrapping_sub(self.max_seq);
        if self.probation > 0 {
            if seq == self.max_seq.wrapping_add(1) {
                self.probation -= 1;
                self.max_seq = seq;
                if self.probation == 0 {
                    self.init_seq(seq);
                    self.received += 1;
                    return (true, false);
                }
            } else {
                self.probation = MIN_SEQUENTIAL - 1;
                self.max_seq = seq;
            }
            return (false, false);
        }
        let mut duplicate = false;
        if udelta == 0 {
            duplicate = true;
        } else if udelta < MAX_DROPOUT {
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.seen = if udelta >= DUP_WINDOW {
                1
            } else {
                (self.seen << udelta) | 1
            };
            self.max_seq = seq;
        } else if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: restart only if the next packet confirms the new sequence.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
            } else {
                self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
                return (false, false);
            }
        } else {
            // Reordered or duplicate: how far behind max_seq it is.
            let back = self.max_seq.wrapping_sub(seq);
            if back < DUP_WINDOW {
                let bit = 1u64 << back;
                if self.seen & bit != 0 {
                    duplicate = true;
                } else {
                    self.seen |= bit;
                }
            }
        }
        // RFC 3550 counts duplicates as received, which is why cumulative loss can go negative.
        self.received += 1;
        (true, duplicate)
    }

    fn extended_max(&self) -> u64 {
        u64::from(self.cycles) + u64::from(self.max_seq)
    }

    fn expected(&self) -> u64 {
        if self.probation > 0 {
            return 0;
        }
        (self.extended_max() + 1).saturating_sub(u64::from(self.base_seq))
    }

    fn lost(&self) -> i64 {
        let expected = i64::try_from(self.expected()).unwrap_or(i64::MAX);
        let received = i64::try_from(self.received).unwrap_or(i64::MAX);
        expected.saturating_sub(received)
    }

    /// RFC 3550 A.8.
    fn update_jitter(&mut self, rtp_ts: u32, arrival_ts: u32) {
        let transit = arrival_ts.wrapping_sub(rtp_ts);
        if let Some(prev) = self.transit {
            // Differences of wrapping transit times; the magnitude is what counts.
            let d = transit.wrapping_sub(prev) as i32;
            let d = d.unsigned_abs();
            // jitter += (|D| - jitter) / 16, kept scaled by 16 to stay in integers.
            let j = self.jitter_x16;
            self.jitter_x16 = j.wrapping_add(d).wrapping_sub((j + 8) >> 4);
        }
        self.transit = Some(transit);
    }
}

/// What one call to [`RtpReceiveStats::on_rtp`] concluded about the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceVerdict {
    /// Counted as received (in order, late, or first packets of a confirmed source).
    Received,
    /// Seen before (within the last 64 sequence numbers).
    Duplicate,
    /// Not counted: the source is still on probation or jumped and is not yet confirmed.
    NotCounted,
}

impl RtpReceiveStats {
    /// Statistics with nothing received.
    pub fn new() -> Self {
        Self::default()
    }

    /// Accounts one RTP packet. `arrival_ts` is the arrival time in the same clock units as
    /// `rtp_ts` (see [`arrival_in_clock_units`]).
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, rtp_ts: u32, arrival_ts: u32) -> SequenceVerdict {
        self.account(ssrc, seq, Some((rtp_ts, arrival_ts)))
    }

    /// Accounts one RTP packet for sequence, loss and duplicates only. For packets whose
    /// timestamp does not advance with sampling time, such as RFC 4733 telephone-events
    /// (every packet of an event carries the event's start time): feeding them to the jitter
    /// estimate would report the event's duration as network jitter.
    pub fn on_rtp_untimed(&mut self, ssrc: u32, seq: u16) -> SequenceVerdict {
        self.account(ssrc, seq, None)
    }

    fn account(&mut self, ssrc: u32, seq: u16, timing: Option<(u32, u32)>) -> SequenceVerdict {
        let source = match &mut self.source {
            Some(s) if s.ssrc == ssrc => s,
            other => {
                // A new SSRC (or the first one): keep what the old one lost, start over.
                if let Some(old) = other.as_ref() {
                    self.lost_before = self.lost_before.saturating_add(old.lost());
                }
                other.insert(SourceState::new(ssrc, seq))
            }
        };
        let (counted, duplicate) = source.update_seq(seq);
        if duplicate {
            self.duplicates += 1;
            return SequenceVerdict::Duplicate;
        }
        if !counted {
            return SequenceVerdict::NotCounted;
        }
        if let Some((rtp_ts, arrival_ts)) = timing {
            source.update_jitter(rtp_ts, arrival_ts);
        }
        SequenceVerdict::Received
    }

    /// Cumulative packets lost (RFC 3550 A.3): expected minus received, over all SSRCs seen.
    /// Negative when duplicates outnumber losses.
    pub fn cumulative_lost(&self) -> i64 {
        let current = self.source.as_ref().map_or(0, SourceState::lost);
        self.lost_before.saturating_add(current)
    }

    /// Duplicate packets seen.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Interarrival jitter of the current SSRC, in RTP timestamp units (RFC 3550 A.8).
    pub fn jitter(&self) -> u32 {
        self.source.as_ref().map_or(0, |s| s.jitter_x16 >> 4)
    }

    /// Packets counted as received from the current SSRC.
    pub fn received(&self) -> u64 {
        self.source.as_ref().map_or(0, |s| s.received)
    }

    /// Packets expected from the current SSRC (extended highest sequence - base + 1).
    pub fn expected(&self) -> u64 {
        self.source.as_ref().map_or(0, SourceState::expected)
    }

    /// Current SSRC, if any packet was seen.
    pub fn ssrc(&self) -> Option<u32> {
        self.source.as_ref().map(|s| s.ssrc)
    }
}

/// Converts an arrival time (since any fixed epoch) into RTP timestamp units of `clock_rate` Hz,
/// wrapping like RTP timestamps do.
pub fn arrival_in_clock_units(since_epoch: Duration, clock_rate: u32) -> u32 {
    let units = since_epoch.as_nanos() * u128::from(clock_rate) / 1_000_000_000;
    // Truncation is the wrap RTP timestamps have too; only differences are used.
    (units & u128::from(u32::MAX)) as u32
}

/// RTP clock rate of a static payload type (RFC 3551 table 4/5); `None` for dynamic types,
/// whose rate only the SDP `a=rtpmap` knows.
pub fn static_clock_rate(payload_type: u8) -> Option<u32> {
    match payload_type {
        0..=5 | 7..=9 | 12 | 13 | 15 | 18 => Some(8000),
        6 => Some(16_000),
        10 | 11 => Some(44_100),
        16 => Some(11_025),
        17 => Some(22_050),
        14 | 25 | 26 | 28 | 31..=34 => Some(90_000),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `seqs` 20 ms apart (8 kHz clock, 160 samples per packet) with no network jitter.
    fn feed(stats: &mut RtpReceiveStats, seqs: &[u16]) {
        for &seq in seqs {
            let ts = u32::from(seq).wrapping_mul(160);
            stats.on_rtp(7, seq, ts, ts.wrapping_add(1000));
        }
    }

    #[test]
    fn in_order_stream_has_no_loss_and_no_jitter() {
        let mut s = RtpReceiveStats::new();
        let seqs: Vec<u16> = (100..200).collect();
        feed(&mut s, &seqs);
        // The first packet only starts probation (RFC 3550 A.1).
        assert_eq!(s.received(), 99);
        assert_eq!(s.expected(), 99);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.duplicates(), 0);
        assert_eq!(s.ssrc(), Some(7));
    }

    #[test]
    fn gaps_count_as_loss_and_late_arrivals_repair_it() {
        let mut s = RtpReceiveStats::new();
        feed(&mut s, &[1, 2, 3, 6, 7]);
        assert_eq!(s.cumulative_lost(), 2);
        feed(&mut s, &[4]);
        assert_eq!(s.cumulative_lost(), 1);
    }

    #[test]
    fn duplicates_are_counted_and_make_loss_negative() {
        let mut s = RtpReceiveStats::new();
        feed(&mut s, &[1, 2, 3, 3, 2]);
        assert_eq!(s.duplicates(), 2);
        assert_eq!(s.cumulative_lost(), -2);
    }

    #[test]
    fn sequence_wrap_is_not_loss() {
        let mut s = RtpReceiveStats::new();
        feed(&mut s, &[65533, 65534, 65535, 0, 1, 2]);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.expected(), 5);
    }

    #[test]
    fn large_jump_restarts_only_when_confirmed() {
        let mut s = RtpReceiveStats::new();
        feed(&mut s, &[1, 2, 3]);
        assert_eq!(s.on_rtp(7, 20_000, 0, 0), SequenceVerdict::NotCounted);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.on_rtp(7, 20_001, 160, 160), SequenceVerdict::Received);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.expected(), 1);
    }

    #[test]
    fn jitter_follows_rfc3550_a8() {
        let mut s = RtpReceiveStats::new();
        // Alternate arrival offsets of 0 and 80 timestamp units: |D| = 80 every packet after
        // the first, so jitter converges towards 80.
        for i in 0..1000u32 {
            let ts = i * 160;
            let arrival = ts + if i % 2 == 0 { 0 } else { 80 };
            s.on_rtp(1, i as u16, ts, arrival);
        }
        let j = s.jitter();
        assert!((75..=80).contains(&j), "jitter {j}");
    }

    #[test]
    fn untimed_packets_count_for_sequence_but_not_jitter() {
        let mut s = RtpReceiveStats::new();
        feed(&mut s, &[1, 2, 3]);
        // A telephone-event: the timestamp stays at the event start while time moves on.
        for seq in 4..20u16 {
            assert_eq!(s.on_rtp_untimed(7, seq), SequenceVerdict::Received);
        }
        feed(&mut s, &[20, 21]);
        assert_eq!(s.jitter(), 0);
        assert_eq!(s.cumulative_lost(), 0);
        assert_eq!(s.received(), 20);
    }

    #[test]
    fn new_ssrc_keeps_earlier_loss() {
        let mut s = RtpReceiveStats::new();
        feed(&mut s, &[1, 2, 5]);
        assert_eq!(s.cumulative_lost(), 2);
        for seq in 500..510u16 {
            s.on_rtp(99, seq, 0, 0);
        }
        assert_eq!(s.ssrc(), Some(99));
        assert_eq!(s.cumulative_lost(), 2);
    }

    #[test]
    fn arrival_conversion_and_clock_rates() {
        assert_eq!(arrival_in_clock_units(Duration::from_millis(20), 8000), 160);
        assert_eq!(
            arrival_in_clock_units(Duration::from_secs(1), 48_000),
            48_000
        );
        assert_eq!(static_clock_rate(0), Some(8000));
        assert_eq!(static_clock_rate(9), Some(8000));
        assert_eq!(static_clock_rate(96), None);
    }
}
