//! Allocation of RTP/RTCP port pairs from the configured range.
//!
//! Every RTP port is even and its RTCP port is the next odd one (RFC 3550 §11), so the range is
//! handled as "slots" of two ports. Allocation picks a random free slot (so a peer cannot
//! predict the next call's port) in O(1): the free slots live in a vector and a random element
//! is swapped out. Released slots wait in a FIFO quarantine before they become free again; the
//! quarantine time is constant, so the FIFO is ordered by expiry and draining it is O(1) per slot.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::error::CoreError;

/// Number of RTP/RTCP pairs that fit in `min..=max`.
pub(crate) fn pair_count(min: u16, max: u16) -> usize {
    let first = u32::from(min) + u32::from(min) % 2;
    let max = u32::from(max);
    if first + 1 > max {
        return 0;
    }
    ((max - first - 1) / 2 + 1) as usize
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Free,
    InUse,
    Quarantined,
}

/// Hands out even RTP ports from a range, randomised, with quarantine after release.
pub struct PortAllocator {
    first_port: u16,
    states: Vec<SlotState>,
    free: Vec<u16>,
    quarantine: VecDeque<(Instant, u16)>,
    quarantine_for: Duration,
    in_use: usize,
    rng: SmallRng,
}

/// A summary: the free list holds thousands of entries and the RNG state is no one's business.
impl std::fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortAllocator")
            .field("first_port", &self.first_port)
            .field("pairs", &self.states.len())
            .field("in_use", &self.in_use)
            .field("quarantined", &self.quarantine.len())
            .field("free", &self.free.len())
            .field("quarantine_for", &self.quarantine_for)
            .finish_non_exhaustive()
    }
}

impl PortAllocator {
    /// A range `port_min..=port_max`; `seed` makes the random order reproducible in tests.
    pub fn new(
        port_min: u16,
        port_max: u16,
        quarantine_for: Duration,
        seed: u64,
    ) -> Result<Self, CoreError> {
        let count = pair_count(port_min, port_max);
        if count == 0 {
            return Err(CoreError::InvalidConfig {
                field: "port_max",
                reason: format!("range {port_min}-{port_max} holds no RTP/RTCP port pair"),
            });
        }
        let first_port = port_min + port_min % 2;
        // `count` ≤ 32,768, so every slot index fits a u16.
        let free: Vec<u16> = (0..count).filter_map(|s| u16::try_from(s).ok()).collect();
        Ok(PortAllocator {
            first_port,
            states: vec![SlotState::Free; count],
            free,
            quarantine: VecDeque::new(),
            quarantine_for,
            in_use: 0,
            rng: SmallRng::seed_from_u64(seed),
        })
    }

    /// Takes a random free pair and returns its (even) RTP port.
    pub fn allocate(&mut self, now: Instant) -> Result<u16, CoreError> {
        self.expire_quarantine(now);
        if self.free.is_empty() {
            return Err(CoreError::OutOfPorts);
        }
        let pick = self.rng.gen_range(0..self.free.len());
        let slot = self.free.swap_remove(pick);
        if let Some(state) = self.states.get_mut(usize::from(slot)) {
            *state = SlotState::InUse;
        }
        self.in_use += 1;
        Ok(self.port_of(slot))
    }

    /// Returns a pair to the pool through quarantine. Ports not allocated (or already released)
    /// are ignored and reported as `false`, so a double release cannot corrupt the pool.
    pub fn release(&mut self, now: Instant, rtp_port: u16) -> bool {
        let Some(slot) = self.slot_of(rtp_port) else {
            return false;
        };
        match self.states.get_mut(usize::from(slot)) {
            Some(state @ SlotState::InUse) => {
                *state = SlotState::Quarantined;
                self.in_use -= 1;
                self.quarantine.push_back((now + self.quarantine_for, slot));
                true
            }
            _ => false,
        }
    }

    /// Pairs currently handed out.
    pub fn in_use(&self) -> usize {
        self.in_use
    }

    /// Pairs waiting in quarantine (as of the last allocation or [`Self::expire_quarantine`]).
    pub fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    /// Pairs ready to be handed out (as of the last allocation or [`Self::expire_quarantine`]).
    pub fn free(&self) -> usize {
        self.free.len()
    }

    /// Total pairs in the range.
    pub fn capacity(&self) -> usize {
        self.states.len()
    }

    /// Moves pairs whose quarantine has ended back to the free pool.
    pub fn expire_quarantine(&mut self, now: Instant) {
        while let Some(&(until, slot)) = self.quarantine.front() {
            if until > now {
                break;
            }
            self.quarantine.pop_front();
            if let Some(state) = self.states.get_mut(usize::from(slot)) {
                *state = SlotState::Free;
                self.free.push(slot);
            }
        }
    }

    fn port_of(&self, slot: u16) -> u16 {
        // Slots were counted so that first_port + 2·slot + 1 ≤ port_max.
        self.first_port + 2 * slot
    }

    fn slot_of(&self, rtp_port: u16) -> Option<u16> {
        if rtp_port < self.first_port || !rtp_port.is_multiple_of(2) {
            return None;
        }
        let slot = (rtp_port - self.first_port) / 2;
        (usize::from(slot) < self.states.len()).then_some(slot)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pair_count_handles_odd_and_tight_ranges() {
        assert_eq!(pair_count(30000, 30001), 1);
        assert_eq!(pair_count(30001, 30002), 0);
        assert_eq!(pair_count(30001, 30003), 1);
        assert_eq!(pair_count(30000, 39999), 5000);
        assert_eq!(pair_count(65534, 65535), 1);
        assert_eq!(pair_count(2, 65535), 32767);
    }

    #[test]
    fn release_of_foreign_or_double_released_port_is_ignored() {
        let now = Instant::now();
        let mut ports = PortAllocator::new(40000, 40003, Duration::from_secs(1), 1).unwrap();
        let p = ports.allocate(now).unwrap();
        assert!(ports.release(now, p));
        assert!(!ports.release(now, p));
        assert!(!ports.release(now, p + 1));
        assert!(!ports.release(now, 1000));
        assert_eq!(ports.in_use(), 0);
        assert_eq!(ports.quarantined(), 1);
    }
}
