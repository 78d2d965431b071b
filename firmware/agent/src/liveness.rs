//! Heartbeats and dead-connection detection, without I/O.
//!
//! Each side sends a heartbeat every interval; a connection on which nothing at all arrived for
//! [`DEAD_AFTER_INTERVALS`] intervals is dead (a half-open TCP connection after a silent link
//! failure can otherwise look alive for the kernel's 15-minute retransmission timeout).

use std::time::{Duration, Instant};

/// Intervals of silence after which the connection is declared dead.
pub const DEAD_AFTER_INTERVALS: u32 = 3;

/// What the connection should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing until [`Liveness::next_deadline`].
    Idle,
    /// Send a heartbeat with this sequence number.
    SendHeartbeat(u64),
    /// Nothing heard for too long: close and reconnect.
    Dead,
}

/// Heartbeat bookkeeping of one connection.
#[derive(Debug, Clone)]
pub struct Liveness {
    interval: Duration,
    last_heard: Instant,
    next_send: Instant,
    seq: u64,
}

impl Liveness {
    /// A connection established at `now` with the interval the control plane announced.
    pub fn new(now: Instant, interval: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(50));
        Liveness {
            interval,
            last_heard: now,
            next_send: now + interval,
            seq: 0,
        }
    }

    /// Any frame arrived.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Decides what to do at `now`.
    pub fn tick(&mut self, now: Instant) -> Tick {
        if now.saturating_duration_since(self.last_heard) >= self.interval * DEAD_AFTER_INTERVALS {
            return Tick::Dead;
        }
        if now >= self.next_send {
            self.seq += 1;
            self.next_send = now + self.interval;
            return Tick::SendHeartbeat(self.seq);
        }
        Tick::Idle
    }

    /// When [`Self::tick`] next has something to do.
    pub fn next_deadline(&self) -> Instant {
        self.next_send
            .min(self.last_heard + self.interval * DEAD_AFTER_INTERVALS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_every_interval_and_dead_after_three_silent_intervals() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Liveness::new(t0, s);
        assert_eq!(l.tick(t0), Tick::Idle);
        assert_eq!(l.tick(t0 + s), Tick::SendHeartbeat(1));
        assert_eq!(l.tick(t0 + s), Tick::Idle, "once per interval");
        assert_eq!(l.tick(t0 + 2 * s), Tick::SendHeartbeat(2));
        assert_eq!(l.tick(t0 + 3 * s), Tick::Dead);
    }

    #[test]
    fn anything_heard_keeps_the_connection_alive() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut l = Liveness::new(t0, s);
        for n in 1..=10u32 {
            l.heard(t0 + s * n);
            assert_ne!(l.tick(t0 + s * n), Tick::Dead);
        }
        assert!(l.next_deadline() <= t0 + s * 13);
    }
}
