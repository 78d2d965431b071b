//! Aggregate per-worker counters, written by the owning worker only (Relaxed) and read by
//! anyone.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerCounters {
    pub forwarded_packets: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub dropped_malformed: AtomicU64,
    pub dropped_spoofed: AtomicU64,
    pub dropped_no_destination: AtomicU64,
    pub dropped_stale: AtomicU64,
    pub send_errors: AtomicU64,
    pub recv_errors: AtomicU64,
    pub buffer_ring_empty: AtomicU64,
    pub rearms: AtomicU64,
}

/// Bumps a counter owned by the calling worker: a plain load+store, no locked instruction,
/// which is correct because only this worker writes it.
#[inline]
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// Sum of all workers' counters at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataplaneTotals {
    /// Packets sent out of the opposite leg.
    pub forwarded_packets: u64,
    /// Bytes (UDP payload) of those packets.
    pub forwarded_bytes: u64,
    /// Dropped: neither RTP v2 nor RTCP, or truncated.
    pub dropped_malformed: u64,
    /// Dropped by strict source.
    pub dropped_spoofed: u64,
    /// Dropped because the opposite peer's address is not known yet.
    pub dropped_no_destination: u64,
    /// Dropped because the stream was being removed.
    pub dropped_stale: u64,
    /// Sends the kernel refused.
    pub send_errors: u64,
    /// Receive errors other than buffer exhaustion.
    pub recv_errors: u64,
    /// Times a receive stopped because the buffer ring ran dry: the overload signal.
    pub buffer_ring_empty: u64,
    /// Multishot receives re-armed (after buffer exhaustion or errors).
    pub rearms: u64,
}

impl DataplaneTotals {
    pub(crate) fn add(&mut self, c: &WorkerCounters) {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        self.forwarded_packets += r(&c.forwarded_packets);
        self.forwarded_bytes += r(&c.forwarded_bytes);
        self.dropped_malformed += r(&c.dropped_malformed);
        self.dropped_spoofed += r(&c.dropped_spoofed);
        self.dropped_no_destination += r(&c.dropped_no_destination);
        self.dropped_stale += r(&c.dropped_stale);
        self.send_errors += r(&c.send_errors);
        self.recv_errors += r(&c.recv_errors);
        self.buffer_ring_empty += r(&c.buffer_ring_empty);
        self.rearms += r(&c.rearms);
    }
}
