//! What a receiver knows about one media stream: packets in the measured window, duplicates,
//! and when the stream came back after an overload.

/// Receive-side accounting of one stream (one direction of one session).
#[derive(Debug, Clone, Default)]
pub struct StreamRx {
    /// Highest load-generator sequence seen.
    max_seq: u64,
    /// Bit i set: sequence `max_seq - i` seen. Detects duplicates within the last 64 packets.
    window: u64,
    seen_any: bool,
    /// Distinct packets received that were sent inside the measured window.
    pub received_measured: u64,
    /// Packets received more than once.
    pub duplicates: u64,
    /// Receive time of the first packet sent at or after the recovery mark.
    pub first_after_mark_ns: Option<u64>,
}

/// What [`StreamRx::on_packet`] concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxVerdict {
    /// First copy of this packet.
    New,
    /// Seen before.
    Duplicate,
}

impl StreamRx {
    /// Accounts one received packet with load-generator sequence `seq`.
    pub fn on_packet(&mut self, seq: u64) -> RxVerdict {
        if !self.seen_any {
            self.seen_any = true;
            self.max_seq = seq;
            self.window = 1;
            return RxVerdict::New;
        }
        if seq > self.max_seq {
            let shift = seq - self.max_seq;
            self.window = if shift >= 64 { 0 } else { self.window << shift };
            self.window |= 1;
            self.max_seq = seq;
            return RxVerdict::New;
        }
        let back = self.max_seq - seq;
        if back >= 64 {
            // Older than the window: cannot tell; a relay that delays a packet by 64 × 20 ms has
            // bigger problems, which the latency figures show.
            return RxVerdict::New;
        }
        let bit = 1u64 << back;
        if self.window & bit != 0 {
            self.duplicates += 1;
            RxVerdict::Duplicate
        } else {
            self.window |= bit;
            RxVerdict::New
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_detected_reordering_tolerated() {
        let mut s = StreamRx::default();
        assert_eq!(s.on_packet(10), RxVerdict::New);
        assert_eq!(s.on_packet(12), RxVerdict::New);
        assert_eq!(s.on_packet(11), RxVerdict::New); // reordered
        assert_eq!(s.on_packet(11), RxVerdict::Duplicate);
        assert_eq!(s.on_packet(10), RxVerdict::Duplicate);
        assert_eq!(s.on_packet(200), RxVerdict::New);
        assert_eq!(s.on_packet(200), RxVerdict::Duplicate);
        assert_eq!(s.duplicates, 3);
    }
}
