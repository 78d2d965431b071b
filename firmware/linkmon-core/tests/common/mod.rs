//! Test bed for BFD sessions: an FRR-bfdd-like peer and a two-node network on a fake clock.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use pop_linkmon_core::{BfdConfig, BfdControl, BfdDiag, BfdEvent, BfdSession, BfdState};

const SLOW: Duration = Duration::from_secs(1);

/// A peer that behaves like FRR bfdd 8.4 as measured here (DESIGN §6): 1 s timers (TX and RX)
/// until Up, then a Poll sequence to its fast timers, whose shorter RX applies to its detection
/// time once our Final arrives; it advertises a 50 ms echo interval without running echo; it
/// answers our Polls with a Final at once; and it is strict: it times us out after exactly
/// detect mult × max(its RX, our advertised TX) of silence, using our advertised values at once.
#[derive(Debug)]
pub struct FrrPeer {
    pub discr: u32,
    pub remote_discr: u32,
    pub state: BfdState,
    fast_tx: Duration,
    fast_rx: Duration,
    pub mult: u8,
    adv_tx: Duration,
    adv_rx: Duration,
    /// RX in force for detection (the new one only after its Poll sequence ends).
    det_rx: Duration,
    pub poll: bool,
    final_due: bool,
    remote_min_rx: Duration,
    remote_tx: Duration,
    remote_mult: u8,
    last_rx: Option<Instant>,
    next_tx: Instant,
    pub ups: u32,
    pub downs: u32,
    pub finals_received: u32,
    pub polls_received: u32,
    /// Protocol rules our session broke, as seen from the peer.
    pub violations: Vec<String>,
    /// Arrival times of our packets, to measure gaps.
    pub rx_times: Vec<Instant>,
}

impl FrrPeer {
    pub fn new(discr: u32, fast: Duration, mult: u8, now: Instant) -> Self {
        Self {
            discr,
            remote_discr: 0,
            state: BfdState::Down,
            fast_tx: fast,
            fast_rx: fast,
            mult,
            adv_tx: SLOW,
            adv_rx: SLOW,
            det_rx: SLOW,
            poll: false,
            final_due: false,
            remote_min_rx: Duration::from_micros(1),
            remote_tx: Duration::ZERO,
            remote_mult: 0,
            last_rx: None,
            next_tx: now + Duration::from_millis(3),
            ups: 0,
            downs: 0,
            finals_received: 0,
            polls_received: 0,
            violations: Vec::new(),
            rx_times: Vec::new(),
        }
    }

    fn detect_deadline(&self) -> Option<Instant> {
        if self.remote_mult == 0 {
            return None;
        }
        Some(self.last_rx? + self.det_rx.max(self.remote_tx) * u32::from(self.remote_mult))
    }

    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_tx;
        if let Some(d) = self.detect_deadline() {
            t = t.min(d);
        }
        t
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.detect_deadline().is_some_and(|d| d <= now) {
            if matches!(self.state, BfdState::Init | BfdState::Up) {
                self.go_down();
            }
            self.remote_discr = 0;
            self.remote_mult = 0;
            self.last_rx = None;
        }
    }

    fn go_down(&mut self) {
        if self.state == BfdState::Up {
            self.downs += 1;
        }
        self.state = BfdState::Down;
        self.adv_tx = SLOW;
        self.adv_rx = SLOW;
        self.det_rx = SLOW;
        self.poll = false;
    }

    fn tx_interval(&self) -> Duration {
        self.adv_tx.max(self.remote_min_rx)
    }

    /// A shorter interval applies at once (the other end computes its detection time from
    /// what we advertise).
    fn rearm(&mut self, now: Instant, before: Duration) {
        if self.tx_interval() < before {
            self.next_tx = self.next_tx.min(now + self.tx_interval().mul_f64(0.85));
        }
    }

    pub fn handle_packet(&mut self, now: Instant, p: &BfdControl) {
        self.rx_times.push(now);
        let before = self.tx_interval();
        if p.required_min_echo_rx_us != 0 {
            self.violations.push(format!("echo requested: {p:?}"));
        }
        if p.state != BfdState::Up && p.desired_min_tx_us < 1_000_000 {
            self.violations.push(format!("fast TX while not Up: {p:?}"));
        }
        if p.your_discriminator != 0 && p.your_discriminator != self.discr {
            self.violations
                .push(format!("wrong your-discriminator: {p:?}"));
            return;
        }
        self.remote_discr = p.my_discriminator;
        self.remote_min_rx = p.required_min_rx();
        self.remote_tx = p.desired_min_tx();
        self.remote_mult = p.detect_mult;
        self.last_rx = Some(now);
        if p.final_ {
            self.finals_received += 1;
            if self.poll {
                self.poll = false;
                self.det_rx = self.adv_rx;
            }
        }
        match (self.state, p.state) {
            (BfdState::Up | BfdState::Init, BfdState::AdminDown | BfdState::Down)
                if self.state == BfdState::Up || p.state == BfdState::AdminDown =>
            {
                self.go_down()
            }
            (BfdState::Down, BfdState::Down) => self.state = BfdState::Init,
            (BfdState::Down, BfdState::Init) | (BfdState::Init, BfdState::Init | BfdState::Up) => {
                self.state = BfdState::Up;
                self.ups += 1;
                self.adv_tx = self.fast_tx;
                self.adv_rx = self.fast_rx;
                self.poll = true;
            }
            _ => {}
        }
        if p.poll {
            self.polls_received += 1;
            self.final_due = true;
        }
        self.rearm(now, before);
    }

    pub fn poll_transmit(&mut self, now: Instant) -> Option<BfdControl> {
        let mut pkt = BfdControl {
            diag: BfdDiag::None,
            state: self.state,
            poll: false,
            final_: false,
            control_plane_independent: false,
            demand: false,
            auth_type: None,
            detect_mult: self.mult,
            my_discriminator: self.discr,
            your_discriminator: self.remote_discr,
            desired_min_tx_us: self.adv_tx.as_micros() as u32,
            required_min_rx_us: self.adv_rx.as_micros() as u32,
            // FRR advertises an echo interval even with echo off.
            required_min_echo_rx_us: 50_000,
        };
        if self.final_due {
            self.final_due = false;
            pkt.final_ = true;
            return Some(pkt);
        }
        if self.next_tx <= now {
            // Fixed 15 % jitter keeps the peer deterministic.
            self.next_tx = now + self.tx_interval().mul_f64(0.85);
            pkt.poll = self.poll;
            return Some(pkt);
        }
        None
    }
}

/// Seeded loss decisions without external crates.
#[derive(Debug, Clone)]
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next_f64(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Our session and an FRR-like peer joined by a link with a fixed one-way delay.
#[derive(Debug)]
pub struct Sim {
    pub now: Instant,
    pub ours: BfdSession,
    pub peer: FrrPeer,
    pub delay: Duration,
    to_peer: VecDeque<(Instant, Vec<u8>)>,
    to_ours: VecDeque<(Instant, Vec<u8>)>,
    /// Silent blackhole: everything sent is lost, both ways.
    pub cut: bool,
    /// Random loss probability per packet, per direction.
    pub loss: f64,
    rng: Lcg,
    pub events: Vec<BfdEvent>,
    /// Every packet our session sent, with its send time.
    pub sent: Vec<(Instant, BfdControl)>,
}

pub fn our_config(fast: Duration) -> BfdConfig {
    BfdConfig {
        desired_min_tx: fast,
        required_min_rx: fast,
        detect_mult: 3,
        slow_tx: SLOW,
    }
}

impl Sim {
    pub fn new(cfg: BfdConfig, peer_fast: Duration, seed: u64) -> Self {
        let now = Instant::now();
        Self {
            now,
            ours: BfdSession::new(cfg, NonZeroU32::new(0x1111).unwrap(), now, seed).unwrap(),
            peer: FrrPeer::new(0x2222, peer_fast, 3, now),
            delay: Duration::from_micros(200),
            to_peer: VecDeque::new(),
            to_ours: VecDeque::new(),
            cut: false,
            loss: 0.0,
            rng: Lcg(seed ^ 0x5eed),
            events: Vec::new(),
            sent: Vec::new(),
        }
    }

    fn lost(&mut self) -> bool {
        self.cut || (self.loss > 0.0 && self.rng.next_f64() < self.loss)
    }

    /// Advances to the next thing that happens, not past `limit`.
    fn step(&mut self, limit: Instant) {
        let mut t = self.ours.poll_timeout().min(self.peer.poll_timeout());
        if let Some((at, _)) = self.to_peer.front() {
            t = t.min(*at);
        }
        if let Some((at, _)) = self.to_ours.front() {
            t = t.min(*at);
        }
        self.now = self.now.max(t.min(limit));
        let now = self.now;
        while self.to_peer.front().is_some_and(|(at, _)| *at <= now) {
            let (_, bytes) = self.to_peer.pop_front().unwrap();
            let pkt = BfdControl::parse(&bytes).expect("our packet must parse");
            self.peer.handle_packet(now, &pkt);
        }
        while self.to_ours.front().is_some_and(|(at, _)| *at <= now) {
            let (_, bytes) = self.to_ours.pop_front().unwrap();
            self.ours
                .handle_datagram(now, &bytes, 255)
                .expect("peer packet accepted");
        }
        self.ours.handle_timeout(now);
        self.peer.handle_timeout(now);
        while let Some(p) = self.ours.poll_transmit(now) {
            assert!(!(p.poll && p.final_), "P and F together: {p:?}");
            self.sent.push((now, p));
            let mut buf = [0u8; 24];
            p.emit(&mut buf).unwrap();
            if !self.lost() {
                self.to_peer.push_back((now + self.delay, buf.to_vec()));
            }
        }
        while let Some(p) = self.peer.poll_transmit(now) {
            let mut buf = [0u8; 24];
            p.emit(&mut buf).unwrap();
            if !self.lost() {
                self.to_ours.push_back((now + self.delay, buf.to_vec()));
            }
        }
        while let Some(e) = self.ours.poll_event() {
            self.events.push(e);
        }
    }

    /// Runs the simulation until `now + d` (bounded number of steps).
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        let mut steps = 0u32;
        while self.now < end {
            self.step(end);
            steps += 1;
            assert!(steps < 5_000_000, "simulation does not advance");
        }
    }

    /// Runs until both ends are Up and the Poll sequences of both have completed.
    pub fn bring_up(&mut self) {
        let deadline = self.now + Duration::from_secs(10);
        while self.now < deadline {
            self.run_for(Duration::from_millis(10));
            if self.ours.state() == BfdState::Up
                && self.peer.state == BfdState::Up
                && !self.ours.poll_in_progress()
                && !self.peer.poll
            {
                return;
            }
        }
        panic!(
            "session not Up within 10 s: ours {:?}, peer {:?}",
            self.ours.state(),
            self.peer.state
        );
    }
}
