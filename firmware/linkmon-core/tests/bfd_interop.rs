//! BFD session requirements, proven against an FRR-bfdd-like peer on a fake clock.
#![allow(clippy::unwrap_used)]

mod common;

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use common::{our_config, Sim};
use pop_linkmon_core::{
    BfdConfig, BfdControl, BfdDiag, BfdDrop, BfdError, BfdEvent, BfdSession, BfdState,
};

const MS: Duration = Duration::from_millis(1);

#[test]
fn comes_up_with_frr_like_peer_and_moves_to_fast_timers_both_directions() {
    let mut sim = Sim::new(our_config(50 * MS), 50 * MS, 1);
    sim.bring_up();
    assert!(
        sim.now - sim.events.iter().find_map(up_at).unwrap() < Duration::from_secs(3),
        "Up must not wait for more than a few slow intervals"
    );
    assert!(matches!(sim.events.first(), Some(BfdEvent::Up { .. })));
    // Our Poll answered by the peer's Final, the peer's Poll answered by ours.
    assert!(sim.ours.counters().polls_completed >= 1);
    assert!(sim.ours.counters().tx_final >= 1);
    assert!(sim.peer.finals_received >= 1);
    assert!(sim.events.iter().any(
        |e| matches!(e, BfdEvent::TimersNegotiated { tx_interval, detect_time, .. }
            if *tx_interval == 50 * MS && *detect_time == 150 * MS)
    ));
    assert_eq!(sim.ours.tx_interval(), 50 * MS);
    assert_eq!(sim.ours.detect_time(), Some(150 * MS));
    assert!(sim.peer.violations.is_empty(), "{:?}", sim.peer.violations);
}

#[test]
fn poll_final_rearms_tx_timer_so_peer_never_times_out() {
    for seed in 0..20 {
        let mut sim = Sim::new(our_config(50 * MS), 50 * MS, seed);
        sim.bring_up();
        let fast_from = sim.now;
        sim.run_for(Duration::from_secs(30));
        assert_eq!(sim.peer.downs, 0, "seed {seed}: peer timed us out");
        assert_eq!(sim.ours.counters().down_transitions, 0, "seed {seed}");
        assert_eq!(sim.peer.ups, 1);
        // Once fast, the peer never waits more than one 50 ms interval for us.
        let gaps = sim.peer.rx_times.windows(2).filter(|w| w[0] >= fast_from);
        let worst = gaps.map(|w| w[1] - w[0]).max().unwrap();
        assert!(worst <= 50 * MS, "seed {seed}: gap {worst:?}");
        assert!(sim.peer.violations.is_empty(), "{:?}", sim.peer.violations);
    }
}

#[test]
fn rearms_tx_timer_as_soon_as_the_peer_polls_for_faster_rx() {
    // From the peer's first Poll (its RX drops from 1 s to 50 ms) to the packet that ends its
    // Poll sequence and the next one, we must not wait out the 1 s slow interval.
    let mut sim = Sim::new(our_config(50 * MS), 50 * MS, 3);
    sim.bring_up();
    let up = sim.events.iter().find_map(up_at).unwrap();
    sim.run_for(Duration::from_secs(1));
    let after_up: Vec<_> = sim
        .sent
        .iter()
        .filter(|(t, p)| *t >= up && !p.final_)
        .map(|(t, _)| *t)
        .collect();
    let worst = after_up.windows(2).map(|w| w[1] - w[0]).max().unwrap();
    assert!(worst <= 50 * MS, "periodic gap after Up {worst:?}");
}

#[test]
fn slow_timers_while_not_up() {
    let mut sim = Sim::new(our_config(10 * MS), 50 * MS, 4);
    sim.bring_up();
    for (_, p) in &sim.sent {
        if p.state != BfdState::Up {
            assert!(p.desired_min_tx_us >= 1_000_000, "{p:?}");
        }
    }
    assert!(sim.sent.iter().any(|(_, p)| p.state != BfdState::Up));
}

#[test]
fn echo_never_started_although_peer_advertises_echo_interval() {
    let mut sim = Sim::new(our_config(50 * MS), 50 * MS, 5);
    sim.bring_up();
    sim.run_for(Duration::from_secs(5));
    assert!(!sim.sent.is_empty());
    assert!(sim.sent.iter().all(|(_, p)| p.required_min_echo_rx_us == 0));
    // Every packet we sent is a control packet at the negotiated rate: about 20/s, not echo's.
    let fast: Vec<_> = sim
        .sent
        .iter()
        .filter(|(t, _)| *t > sim.now - Duration::from_secs(4))
        .collect();
    assert!(
        fast.len() <= 4 * 1000 / 37 + 2,
        "{} packets in 4 s",
        fast.len()
    );
}

fn up_at(e: &BfdEvent) -> Option<Instant> {
    match e {
        BfdEvent::Up { at } => Some(*at),
        _ => None,
    }
}

fn down(e: &BfdEvent) -> Option<(Instant, BfdDiag, Option<Instant>)> {
    match e {
        BfdEvent::Down { at, diag, last_rx } => Some((*at, *diag, *last_rx)),
        _ => None,
    }
}

/// Cuts the link and returns (time from cut to our Down, time from last packet to Down).
fn detect_after_cut(sim: &mut Sim) -> (Duration, Duration) {
    let cut_at = sim.now;
    sim.cut = true;
    sim.run_for(Duration::from_secs(2));
    let (at, diag, last_rx) = sim.events.iter().find_map(down).expect("no Down event");
    assert_eq!(diag, BfdDiag::ControlDetectionTimeExpired);
    assert_eq!(sim.ours.state(), BfdState::Down);
    (at - cut_at, at - last_rx.unwrap())
}

#[test]
fn detect_time_is_detect_mult_times_negotiated_interval_with_frr() {
    for seed in 0..20 {
        let mut sim = Sim::new(our_config(10 * MS), 50 * MS, seed);
        sim.bring_up();
        // Our 10 ms ask is raised to the peer's 50 ms.
        assert_eq!(sim.ours.tx_interval(), 50 * MS);
        sim.run_for(Duration::from_millis(1000 + 7 * seed));
        let (from_cut, from_last) = detect_after_cut(&mut sim);
        assert_eq!(from_last, 150 * MS, "seed {seed}");
        // The last packet left at most one (jittered, ≤ 50 ms) peer interval before the cut.
        assert!(
            from_cut <= 150 * MS && from_cut >= 100 * MS - sim.delay,
            "seed {seed}: {from_cut:?}"
        );
    }
}

#[test]
fn negotiates_10ms_where_the_peer_allows_it_and_detects_in_30ms() {
    for seed in 0..10 {
        let mut sim = Sim::new(our_config(10 * MS), 10 * MS, seed);
        sim.bring_up();
        assert_eq!(sim.ours.tx_interval(), 10 * MS);
        assert_eq!(sim.ours.detect_time(), Some(30 * MS));
        sim.run_for(Duration::from_secs(3));
        assert_eq!(sim.peer.downs, 0);
        let (from_cut, from_last) = detect_after_cut(&mut sim);
        assert_eq!(from_last, 30 * MS);
        assert!(from_cut <= 30 * MS, "seed {seed}: {from_cut:?}");
    }
}

#[test]
fn transmit_jitter_stays_within_rfc_bounds() {
    let mut sim = Sim::new(our_config(50 * MS), 50 * MS, 9);
    sim.bring_up();
    let from = sim.now;
    sim.run_for(Duration::from_secs(10));
    let periodic: Vec<_> = sim
        .sent
        .iter()
        .filter(|(t, p)| *t > from && !p.final_)
        .map(|(t, _)| *t)
        .collect();
    assert!(periodic.len() > 150);
    for w in periodic.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_micros(37_500) && gap <= 50 * MS,
            "{gap:?}"
        );
    }
}

#[test]
fn no_session_flap_in_60s_of_2_percent_random_loss() {
    for seed in 0..5 {
        let mut sim = Sim::new(our_config(50 * MS), 50 * MS, 100 + seed);
        sim.bring_up();
        sim.loss = 0.02;
        sim.run_for(Duration::from_secs(60));
        assert_eq!(sim.ours.counters().down_transitions, 0, "seed {seed}");
        assert_eq!(sim.peer.downs, 0, "seed {seed}");
    }
}

#[test]
fn comes_back_up_after_the_cut_heals() {
    let mut sim = Sim::new(our_config(50 * MS), 50 * MS, 11);
    sim.bring_up();
    detect_after_cut(&mut sim);
    sim.cut = false;
    sim.events.clear();
    sim.bring_up();
    assert!(sim.events.iter().any(|e| up_at(e).is_some()));
    assert_eq!(sim.ours.tx_interval(), 50 * MS);
}

// --- drops and the Poll answer, on a single session fed by hand ---

fn session(now: Instant) -> BfdSession {
    BfdSession::new(
        BfdConfig::default(),
        NonZeroU32::new(0xabcd).unwrap(),
        now,
        7,
    )
    .unwrap()
}

fn from_peer(state: BfdState, your: u32) -> BfdControl {
    BfdControl {
        diag: BfdDiag::None,
        state,
        poll: false,
        final_: false,
        control_plane_independent: false,
        demand: false,
        auth_type: None,
        detect_mult: 3,
        my_discriminator: 0x5555,
        your_discriminator: your,
        desired_min_tx_us: 1_000_000,
        required_min_rx_us: 50_000,
        required_min_echo_rx_us: 50_000,
    }
}

#[test]
fn wrong_ttl_is_dropped_and_counted() {
    let now = Instant::now();
    let mut s = session(now);
    let p = from_peer(BfdState::Down, 0);
    assert_eq!(s.handle_packet(now, &p, 254), Err(BfdDrop::WrongTtl(254)));
    assert_eq!(s.handle_packet(now, &p, 1), Err(BfdDrop::WrongTtl(1)));
    assert_eq!(s.counters().drop_wrong_ttl, 2);
    assert_eq!(s.state(), BfdState::Down);
    assert_eq!(
        s.remote_discriminator(),
        0,
        "a dropped packet must not change state"
    );
    s.handle_packet(now, &p, 255).unwrap();
    assert_eq!(s.state(), BfdState::Init);
}

#[test]
fn wrong_discriminator_is_dropped_and_counted() {
    let now = Instant::now();
    let mut s = session(now);
    let p = from_peer(BfdState::Init, 0xdead);
    assert_eq!(
        s.handle_packet(now, &p, 255),
        Err(BfdDrop::WrongDiscriminator(0xdead))
    );
    assert_eq!(s.counters().drop_wrong_discriminator, 1);
    assert_eq!(s.state(), BfdState::Down);
    s.handle_packet(now, &from_peer(BfdState::Init, 0xabcd), 255)
        .unwrap();
    assert_eq!(s.state(), BfdState::Up);
}

#[test]
fn malformed_and_authenticated_packets_are_dropped_and_counted() {
    let now = Instant::now();
    let mut s = session(now);
    let mut buf = [0u8; 24];
    from_peer(BfdState::Down, 0).emit(&mut buf).unwrap();
    buf[2] = 0;
    assert_eq!(
        s.handle_datagram(now, &buf, 255),
        Err(BfdDrop::Malformed(BfdError::ZeroDetectMult))
    );
    assert_eq!(
        s.handle_datagram(now, &buf[..10], 255),
        Err(BfdDrop::Malformed(BfdError::Truncated { len: 10 }))
    );
    assert_eq!(s.counters().drop_malformed, 2);
    let mut p = from_peer(BfdState::Down, 0);
    p.auth_type = Some(1);
    assert_eq!(
        s.handle_packet(now, &p, 255),
        Err(BfdDrop::AuthenticationNotSupported)
    );
    assert_eq!(s.counters().drop_auth, 1);
    assert_eq!(s.counters().rx_accepted, 0);
    assert_eq!(s.state(), BfdState::Down);
}

#[test]
fn answers_poll_with_final_immediately() {
    let now = Instant::now();
    let mut s = session(now);
    // Drain the first periodic packet so only the Final can come out.
    let first = s.poll_transmit(now).unwrap();
    assert!(!first.final_ && !first.poll);
    assert_eq!(s.poll_transmit(now), None);
    let t = now + 5 * MS;
    let mut p = from_peer(BfdState::Down, 0);
    p.poll = true;
    s.handle_packet(t, &p, 255).unwrap();
    assert_eq!(s.poll_timeout(), t, "the Final is due at once");
    let f = s.poll_transmit(t).unwrap();
    assert!(f.final_ && !f.poll);
    assert_eq!(f.your_discriminator, 0x5555);
    assert_eq!(s.counters().tx_final, 1);
    assert_eq!(s.poll_transmit(t), None);
}

#[test]
fn peer_signalled_down_takes_session_down_with_diag_3() {
    let now = Instant::now();
    let mut s = session(now);
    s.handle_packet(now, &from_peer(BfdState::Init, 0xabcd), 255)
        .unwrap();
    assert_eq!(s.state(), BfdState::Up);
    s.handle_packet(now + MS, &from_peer(BfdState::Down, 0), 255)
        .unwrap();
    assert_eq!(s.state(), BfdState::Down);
    assert_eq!(s.local_diag(), BfdDiag::NeighborSignaledDown);
    assert!(matches!(s.poll_event(), Some(BfdEvent::Up { .. })));
    assert!(matches!(
        s.poll_event(),
        Some(BfdEvent::Down {
            diag: BfdDiag::NeighborSignaledDown,
            ..
        })
    ));
    // Back to ≥ 1 s while not Up.
    let p = s.poll_transmit(now + Duration::from_secs(2)).unwrap();
    assert!(p.desired_min_tx_us >= 1_000_000);
}

#[test]
fn admin_down_is_sent_and_received_packets_are_discarded() {
    let now = Instant::now();
    let mut s = session(now);
    s.set_admin_down(now, true);
    let p = s.poll_transmit(now).unwrap();
    assert_eq!(p.state, BfdState::AdminDown);
    assert_eq!(p.diag, BfdDiag::AdministrativelyDown);
    assert_eq!(
        s.handle_packet(now, &from_peer(BfdState::Down, 0), 255),
        Err(BfdDrop::LocalAdminDown)
    );
    assert_eq!(s.counters().drop_admin_down, 1);
    s.set_admin_down(now, false);
    s.handle_packet(now, &from_peer(BfdState::Down, 0), 255)
        .unwrap();
    assert_eq!(s.state(), BfdState::Init);
}

#[test]
fn config_below_rfc_limits_is_refused_with_the_field() {
    let now = Instant::now();
    let discr = NonZeroU32::new(1).unwrap();
    let cfg = BfdConfig {
        slow_tx: 500 * MS,
        ..BfdConfig::default()
    };
    let e = BfdSession::new(cfg, discr, now, 0).unwrap_err().to_string();
    assert!(e.contains("slow_tx"), "{e}");
    let cfg = BfdConfig {
        detect_mult: 0,
        ..BfdConfig::default()
    };
    let e = BfdSession::new(cfg, discr, now, 0).unwrap_err().to_string();
    assert!(e.contains("detect_mult"), "{e}");
    let cfg = BfdConfig {
        desired_min_tx: Duration::from_micros(10),
        ..BfdConfig::default()
    };
    let e = BfdSession::new(cfg, discr, now, 0).unwrap_err().to_string();
    assert!(e.contains("desired_min_tx"), "{e}");
}

#[test]
fn two_of_our_sessions_come_up_against_each_other_at_10ms() {
    // Symmetric interop: both ends run this implementation.
    let t0 = Instant::now();
    let cfg = our_config(10 * MS);
    let mut a = BfdSession::new(cfg, NonZeroU32::new(1).unwrap(), t0, 1).unwrap();
    let mut b = BfdSession::new(cfg, NonZeroU32::new(2).unwrap(), t0, 2).unwrap();
    let mut now = t0;
    for _ in 0..100_000 {
        now = now.max(a.poll_timeout().min(b.poll_timeout()));
        a.handle_timeout(now);
        b.handle_timeout(now);
        while let Some(p) = a.poll_transmit(now) {
            b.handle_packet(now, &p, 255).unwrap();
        }
        while let Some(p) = b.poll_transmit(now) {
            a.handle_packet(now, &p, 255).unwrap();
        }
        if now - t0 > Duration::from_secs(10) {
            break;
        }
    }
    assert_eq!(a.state(), BfdState::Up);
    assert_eq!(b.state(), BfdState::Up);
    assert_eq!(a.tx_interval(), 10 * MS);
    assert_eq!(a.detect_time(), Some(30 * MS));
    assert_eq!(
        a.counters().down_transitions + b.counters().down_transitions,
        0
    );
}
