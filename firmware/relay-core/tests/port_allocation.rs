//! Port allocation requirements: even RTP ports with RTCP next to them, random order,
//! quarantine, exhaustion.

#![allow(clippy::unwrap_used)] // Tests: a panic is the failure report.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use pop_relay_core::{CoreError, PortAllocator};

#[test]
fn port_pairs_are_even_in_range_distinct_and_randomised() {
    let now = Instant::now();
    let mut ports = PortAllocator::new(30001, 30200, Duration::from_secs(30), 7).unwrap();
    assert_eq!(
        ports.capacity(),
        99,
        "30002..=30198 RTP ports, each with its RTCP port"
    );
    let order: Vec<u16> = (0..99).map(|_| ports.allocate(now).unwrap()).collect();
    for &p in &order {
        assert_eq!(p % 2, 0, "RTP port {p} is odd");
        assert!(
            (30002..=30198).contains(&p) && p < 30200,
            "{p} (+1) outside 30001-30200"
        );
    }
    assert_eq!(
        order.iter().collect::<HashSet<_>>().len(),
        99,
        "a port was handed out twice"
    );
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_ne!(
        order, sorted,
        "ports come out in ascending order: not randomised"
    );
    assert_eq!(ports.allocate(now), Err(CoreError::OutOfPorts));

    let mut same_seed = PortAllocator::new(30001, 30200, Duration::from_secs(30), 7).unwrap();
    let again: Vec<u16> = (0..99).map(|_| same_seed.allocate(now).unwrap()).collect();
    assert_eq!(
        order, again,
        "the same seed must give the same order (tests rely on it)"
    );
    let mut other_seed = PortAllocator::new(30001, 30200, Duration::from_secs(30), 8).unwrap();
    let other: Vec<u16> = (0..99).map(|_| other_seed.allocate(now).unwrap()).collect();
    assert_ne!(order, other, "a different seed must give a different order");
}

#[test]
fn released_ports_are_quarantined_until_the_quarantine_ends() {
    let t0 = Instant::now();
    let q = Duration::from_secs(30);
    let mut ports = PortAllocator::new(40000, 40007, q, 1).unwrap();
    let all: Vec<u16> = (0..4).map(|_| ports.allocate(t0).unwrap()).collect();
    let victim = all[2];
    assert!(ports.release(t0, victim));
    assert_eq!((ports.in_use(), ports.quarantined()), (3, 1));
    assert_eq!(
        ports.allocate(t0 + q - Duration::from_millis(1)),
        Err(CoreError::OutOfPorts)
    );
    assert_eq!(
        ports.allocate(t0 + q),
        Ok(victim),
        "free again exactly when quarantine ends"
    );
}

#[test]
fn quarantine_keeps_a_released_port_out_while_others_are_free() {
    let t0 = Instant::now();
    let mut ports = PortAllocator::new(40000, 40999, Duration::from_secs(30), 3).unwrap();
    let first = ports.allocate(t0).unwrap();
    ports.release(t0, first);
    for i in 0..(ports.capacity() - 1) {
        let p = ports
            .allocate(t0 + Duration::from_millis(i as u64))
            .unwrap();
        assert_ne!(p, first, "quarantined port reused after {i} allocations");
    }
}

#[test]
fn allocation_cost_does_not_grow_with_the_range() {
    // 32k pairs: a scan per allocation would make this take seconds in debug builds.
    let t0 = Instant::now();
    let mut ports = PortAllocator::new(1024, 65535, Duration::from_secs(1), 5).unwrap();
    let start = Instant::now();
    for round in 0..20u64 {
        let now = t0 + Duration::from_secs(round * 2);
        let got: Vec<u16> = (0..ports.capacity())
            .map(|_| ports.allocate(now).unwrap())
            .collect();
        for p in got {
            ports.release(now, p);
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}
