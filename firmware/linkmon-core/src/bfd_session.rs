//! One BFD session in asynchronous mode (RFC 5880 §6.2, §6.5, §6.8; RFC 5881 single hop),
//! sans-I/O: the driver feeds received packets and time, and sends what [`BfdSession::poll_transmit`]
//! returns.
//!
//! Interop notes (FRR bfdd 8.4, DESIGN §6): the peer starts on 1 s timers and moves to fast ones
//! with a Poll sequence, which this session answers with a Final at once; this session likewise
//! starts slow (≥ 1 s while not Up, RFC 5880 §6.8.3) and runs its own Poll sequence when it
//! comes Up. Whenever the transmit interval gets shorter (our Poll, the peer's Final, a smaller
//! Required Min RX from the peer) the transmit timer is re-armed, otherwise the peer's new, short
//! detection time expires while we still wait out the old 1 s interval. Echo is never used: the
//! session advertises a Required Min Echo RX of zero and ignores the peer's echo interval.

use core::num::NonZeroU32;
use core::time::Duration;
use std::collections::VecDeque;
use std::time::Instant;

use pop_wire::bfd::{BfdControl, BfdDiag, BfdError, BfdPacket, BfdState, BFD_SINGLE_HOP_TTL};

use crate::error::{invalid, LinkmonError};
use crate::jitter::JitterRng;

/// Timer settings of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    /// Desired Min TX Interval once Up (e.g. 10 ms; FRR peers typically allow 50 ms).
    pub desired_min_tx: Duration,
    /// Required Min RX Interval: the fastest this side accepts packets.
    pub required_min_rx: Duration,
    /// Detect multiplier sent to the peer: it declares us down after this many missed packets.
    pub detect_mult: u8,
    /// Desired Min TX Interval while not Up; RFC 5880 §6.8.3 requires at least one second.
    pub slow_tx: Duration,
}

impl Default for BfdConfig {
    /// 50 ms × 3, the setting FRR bfdd peers are tuned to.
    fn default() -> Self {
        Self {
            desired_min_tx: Duration::from_millis(50),
            required_min_rx: Duration::from_millis(50),
            detect_mult: 3,
            slow_tx: Duration::from_secs(1),
        }
    }
}

/// Shortest interval accepted in config: below this, scheduling noise on a loaded host exceeds
/// the interval itself and sessions flap.
pub const BFD_MIN_INTERVAL: Duration = Duration::from_millis(1);
const ONE_SECOND: Duration = Duration::from_secs(1);
/// The interval fields are 32-bit microseconds.
const MAX_INTERVAL_US: u128 = u32::MAX as u128;

impl BfdConfig {
    /// Checks every field; the error names the field and the allowed range.
    pub fn validate(&self) -> Result<(), LinkmonError> {
        for (field, value) in [
            ("desired_min_tx", self.desired_min_tx),
            ("required_min_rx", self.required_min_rx),
        ] {
            if value < BFD_MIN_INTERVAL || value.as_micros() > MAX_INTERVAL_US {
                return Err(invalid(
                    field,
                    format!("is {value:?}; allowed 1 ms to {MAX_INTERVAL_US} µs"),
                ));
            }
        }
        if self.detect_mult == 0 {
            return Err(invalid("detect_mult", "is 0; allowed 1 to 255"));
        }
        if self.slow_tx < ONE_SECOND || self.slow_tx.as_micros() > MAX_INTERVAL_US {
            return Err(invalid(
                "slow_tx",
                format!(
                    "is {:?}; RFC 5880 requires at least 1 s while not Up (max {MAX_INTERVAL_US} µs)",
                    self.slow_tx
                ),
            ));
        }
        Ok(())
    }
}

/// Why a received packet was dropped. Each is also counted in [`BfdCounters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BfdDrop {
    /// The datagram is not a valid control packet (RFC 5880 §6.8.6 packet rules).
    Malformed(BfdError),
    /// RFC 5881 §5: single-hop packets must arrive with TTL 255 (spoofing guard).
    WrongTtl(u8),
    /// Your Discriminator is neither zero nor ours.
    WrongDiscriminator(u32),
    /// The A bit is set and this session does not use authentication.
    AuthenticationNotSupported,
    /// This session is administratively down and discards what it receives.
    LocalAdminDown,
}

/// Per-session counters, for the local socket and logs (never a log line per packet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BfdCounters {
    /// Packets accepted.
    pub rx_accepted: u64,
    /// Periodic packets returned by `poll_transmit`.
    pub tx_periodic: u64,
    /// Final packets returned in answer to a Poll.
    pub tx_final: u64,
    /// Dropped: malformed.
    pub drop_malformed: u64,
    /// Dropped: TTL not 255.
    pub drop_wrong_ttl: u64,
    /// Dropped: Your Discriminator not ours.
    pub drop_wrong_discriminator: u64,
    /// Dropped: authentication present.
    pub drop_auth: u64,
    /// Dropped: local session administratively down.
    pub drop_admin_down: u64,
    /// Final bits received with no Poll sequence of ours running (ignored, not dropped).
    pub unexpected_final: u64,
    /// Poll sequences of ours completed by a Final.
    pub polls_completed: u64,
    /// Transitions to Up.
    pub up_transitions: u64,
    /// Transitions from Up to Down or AdminDown.
    pub down_transitions: u64,
    /// Detection-time expiries (in Init or Up).
    pub detect_timeouts: u64,
}

/// What the session reports to the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BfdEvent {
    /// The session came Up.
    Up {
        /// When the packet that brought it Up was handled.
        at: Instant,
    },
    /// The session left Up.
    Down {
        /// When the session went down (detection-time expiry or packet handled).
        at: Instant,
        /// Why (local diagnostic now sent to the peer).
        diag: BfdDiag,
        /// The last valid packet from the peer: for a detection-time expiry, the fault began
        /// after this instant.
        last_rx: Option<Instant>,
    },
    /// A Poll sequence completed (ours or the peer's timers changed): the values now in force.
    TimersNegotiated {
        /// When it took effect.
        at: Instant,
        /// Transmit interval before jitter.
        tx_interval: Duration,
        /// Detection time applied to the peer.
        detect_time: Duration,
    },
}

/// Capacity of the event queue; a driver that never drains loses the oldest, not memory.
const EVENT_QUEUE_CAP: usize = 64;

/// One single-hop asynchronous BFD session.
#[derive(Debug)]
pub struct BfdSession {
    cfg: BfdConfig,
    local_discr: u32,
    remote_discr: u32,
    state: BfdState,
    remote_state: BfdState,
    local_diag: BfdDiag,
    remote_demand: bool,
    /// Required Min RX last received; initial 1 µs per RFC 5880 §6.8.1.
    remote_min_rx: Duration,
    /// Desired Min TX last received; feeds our detection time.
    remote_desired_tx: Duration,
    remote_detect_mult: u8,
    /// Values we advertise.
    adv_desired_tx: Duration,
    adv_required_rx: Duration,
    /// Values in force while a Poll sequence runs (RFC 5880 §6.8.3: an increased TX and a
    /// reduced RX only apply once the Final arrives).
    eff_desired_tx: Duration,
    eff_required_rx: Duration,
    poll_active: bool,
    final_due: Option<Instant>,
    next_tx: Instant,
    last_rx: Option<Instant>,
    rng: JitterRng,
    counters: BfdCounters,
    events: VecDeque<BfdEvent>,
}

impl BfdSession {
    /// A new session in Down, sending its first packet at `now`. `local_discr` must be unique
    /// among the driver's sessions; `rng_seed` drives transmit jitter.
    pub fn new(
        cfg: BfdConfig,
        local_discr: NonZeroU32,
        now: Instant,
        rng_seed: u64,
    ) -> Result<Self, LinkmonError> {
        cfg.validate()?;
        Ok(Self {
            cfg,
            local_discr: local_discr.get(),
            remote_discr: 0,
            state: BfdState::Down,
            remote_state: BfdState::Down,
            local_diag: BfdDiag::None,
            remote_demand: false,
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_detect_mult: 0,
            adv_desired_tx: cfg.slow_tx,
            adv_required_rx: cfg.required_min_rx,
            eff_desired_tx: cfg.slow_tx,
            eff_required_rx: cfg.required_min_rx,
            poll_active: false,
            final_due: None,
            next_tx: now,
            last_rx: None,
            rng: JitterRng::new(rng_seed),
            counters: BfdCounters::default(),
            events: VecDeque::new(),
        })
    }

    /// Session state.
    pub fn state(&self) -> BfdState {
        self.state
    }

    /// Diagnostic sent to the peer (why we last left Up).
    pub fn local_diag(&self) -> BfdDiag {
        self.local_diag
    }

    /// Our discriminator.
    pub fn local_discriminator(&self) -> u32 {
        self.local_discr
    }

    /// The peer's discriminator, zero until heard (and again after a detection time of silence).
    pub fn remote_discriminator(&self) -> u32 {
        self.remote_discr
    }

    /// The state the peer last reported.
    pub fn remote_state(&self) -> BfdState {
        self.remote_state
    }

    /// Whether one of our Poll sequences is running.
    pub fn poll_in_progress(&self) -> bool {
        self.poll_active
    }

    /// Transmit interval in force, before jitter: max(our Desired Min TX, peer's Required Min RX).
    pub fn tx_interval(&self) -> Duration {
        self.eff_desired_tx.max(self.remote_min_rx)
    }

    /// Detection time applied to the peer (RFC 5880 §6.8.4, asynchronous mode), once heard.
    pub fn detect_time(&self) -> Option<Duration> {
        if self.remote_detect_mult == 0 {
            return None;
        }
        Some(self.eff_required_rx.max(self.remote_desired_tx) * u32::from(self.remote_detect_mult))
    }

    /// Counters since creation.
    pub fn counters(&self) -> &BfdCounters {
        &self.counters
    }

    /// Parses and handles one UDP payload received with IP TTL / hop limit `ttl`; malformed
    /// input is counted and returned as [`BfdDrop::Malformed`].
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        datagram: &[u8],
        ttl: u8,
    ) -> Result<(), BfdDrop> {
        match BfdPacket::new_checked(datagram) {
            Ok(p) => self.handle_packet(now, &BfdControl::from_packet(&p), ttl),
            Err(e) => {
                self.counters.drop_malformed += 1;
                Err(BfdDrop::Malformed(e))
            }
        }
    }

    /// Handles one validated control packet received with IP TTL / hop limit `ttl`
    /// (RFC 5880 §6.8.6 session rules, RFC 5881 §5 TTL check).
    pub fn handle_packet(
        &mut self,
        now: Instant,
        pkt: &BfdControl,
        ttl: u8,
    ) -> Result<(), BfdDrop> {
        if ttl != BFD_SINGLE_HOP_TTL {
            self.counters.drop_wrong_ttl += 1;
            return Err(BfdDrop::WrongTtl(ttl));
        }
        if pkt.your_discriminator != 0 && pkt.your_discriminator != self.local_discr {
            self.counters.drop_wrong_discriminator += 1;
            return Err(BfdDrop::WrongDiscriminator(pkt.your_discriminator));
        }
        if pkt.auth_type.is_some() {
            self.counters.drop_auth += 1;
            return Err(BfdDrop::AuthenticationNotSupported);
        }

        let tx_before = self.tx_interval();
        self.remote_discr = pkt.my_discriminator;
        self.remote_state = pkt.state;
        self.remote_demand = pkt.demand;
        self.remote_min_rx = pkt.required_min_rx();
        self.remote_desired_tx = pkt.desired_min_tx();
        self.remote_detect_mult = pkt.detect_mult;
        // Valid packets refresh the detection timer even when discarded below for AdminDown:
        // the peer is alive either way.
        self.last_rx = Some(now);

        if pkt.final_ {
            if self.poll_active {
                self.finish_poll(now);
            } else {
                self.counters.unexpected_final += 1;
            }
        }
        self.rearm_if_faster(now, tx_before);

        if self.state == BfdState::AdminDown {
            self.counters.drop_admin_down += 1;
            return Err(BfdDrop::LocalAdminDown);
        }
        self.counters.rx_accepted += 1;

        match (self.state, pkt.state) {
            (BfdState::Down | BfdState::AdminDown, _) if pkt.state == BfdState::AdminDown => {}
            (_, BfdState::AdminDown) => self.go_down(now, BfdDiag::NeighborSignaledDown),
            (BfdState::Down, BfdState::Down) => self.state = BfdState::Init,
            (BfdState::Down, BfdState::Init) | (BfdState::Init, BfdState::Init | BfdState::Up) => {
                self.go_up(now)
            }
            (BfdState::Up, BfdState::Down) => self.go_down(now, BfdDiag::NeighborSignaledDown),
            _ => {}
        }

        if pkt.poll {
            // RFC 5880 §6.8.6: answer "without respect to the transmission timer".
            self.final_due = Some(now);
        }
        Ok(())
    }

    /// Applies detection-time expiry (RFC 5880 §6.8.4). Call when `now` reaches
    /// [`poll_timeout`](Self::poll_timeout); calling early is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.detect_deadline() else {
            return;
        };
        if now < deadline {
            return;
        }
        if matches!(self.state, BfdState::Init | BfdState::Up) {
            self.counters.detect_timeouts += 1;
            self.go_down(now, BfdDiag::ControlDetectionTimeExpired);
        }
        // RFC 5880 §6.8.1: forget the peer after a detection time of silence.
        self.remote_discr = 0;
        self.remote_state = BfdState::Down;
        self.remote_detect_mult = 0;
        self.last_rx = None;
    }

    /// The next packet to send at `now`, if any: a pending Final first, then the periodic packet
    /// when its (jittered) time has come. Call until it returns `None`.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<BfdControl> {
        if self.final_due.is_some_and(|due| due <= now) {
            self.final_due = None;
            self.counters.tx_final += 1;
            let mut pkt = self.control(false);
            pkt.final_ = true;
            return Some(pkt);
        }
        if self.periodic_allowed() && self.next_tx <= now {
            let interval = self.rng.jittered(self.tx_interval(), self.cfg.detect_mult);
            self.next_tx = now + interval;
            self.counters.tx_periodic += 1;
            return Some(self.control(self.poll_active));
        }
        None
    }

    /// When the driver must next call `poll_transmit` / `handle_timeout`.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = if self.periodic_allowed() {
            self.next_tx
        } else {
            // The peer asked for silence; still wake at the slow rate to re-check.
            self.last_rx.unwrap_or(self.next_tx) + self.cfg.slow_tx
        };
        if let Some(d) = self.detect_deadline() {
            t = t.min(d);
        }
        if let Some(f) = self.final_due {
            t = t.min(f);
        }
        t
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<BfdEvent> {
        self.events.pop_front()
    }

    /// Takes the session administratively down (diag 7, RFC 5880 §6.8.16) or back to Down.
    pub fn set_admin_down(&mut self, now: Instant, admin_down: bool) {
        if admin_down && self.state != BfdState::AdminDown {
            self.go_down(now, BfdDiag::AdministrativelyDown);
            self.state = BfdState::AdminDown;
        } else if !admin_down && self.state == BfdState::AdminDown {
            self.state = BfdState::Down;
        }
    }

    fn control(&self, poll: bool) -> BfdControl {
        BfdControl {
            diag: self.local_diag,
            state: self.state,
            poll,
            final_: false,
            control_plane_independent: false,
            demand: false,
            auth_type: None,
            detect_mult: self.cfg.detect_mult,
            my_discriminator: self.local_discr,
            your_discriminator: self.remote_discr,
            desired_min_tx_us: micros(self.adv_desired_tx),
            required_min_rx_us: micros(self.adv_required_rx),
            // Never ask for echo: this implementation does not reflect echo packets.
            required_min_echo_rx_us: 0,
        }
    }

    fn periodic_allowed(&self) -> bool {
        let demand_quiet = self.remote_demand
            && self.state == BfdState::Up
            && self.remote_state == BfdState::Up
            && !self.poll_active;
        !self.remote_min_rx.is_zero() && !demand_quiet
    }

    fn detect_deadline(&self) -> Option<Instant> {
        Some(self.last_rx? + self.detect_time()?)
    }

    fn go_up(&mut self, now: Instant) {
        self.state = BfdState::Up;
        self.local_diag = BfdDiag::None;
        self.counters.up_transitions += 1;
        self.push_event(BfdEvent::Up { at: now });
        self.change_timers(now, self.cfg.desired_min_tx, self.cfg.required_min_rx);
    }

    fn go_down(&mut self, now: Instant, diag: BfdDiag) {
        let was_up = self.state == BfdState::Up;
        self.state = BfdState::Down;
        self.local_diag = diag;
        // Not Up: back to ≥ 1 s (RFC 5880 §6.8.3), no Poll needed outside Up.
        self.poll_active = false;
        self.adv_desired_tx = self.cfg.slow_tx;
        self.eff_desired_tx = self.cfg.slow_tx;
        self.adv_required_rx = self.cfg.required_min_rx;
        self.eff_required_rx = self.cfg.required_min_rx;
        if was_up {
            self.counters.down_transitions += 1;
            self.push_event(BfdEvent::Down {
                at: now,
                diag,
                last_rx: self.last_rx,
            });
        }
    }

    /// RFC 5880 §6.8.3: new timers while Up go through a Poll sequence; a faster TX and a
    /// longer RX take effect at once, the others when the Final arrives.
    fn change_timers(&mut self, now: Instant, desired_tx: Duration, required_rx: Duration) {
        if desired_tx == self.adv_desired_tx && required_rx == self.adv_required_rx {
            return;
        }
        let tx_before = self.tx_interval();
        self.adv_desired_tx = desired_tx;
        self.adv_required_rx = required_rx;
        self.eff_desired_tx = self.eff_desired_tx.min(desired_tx);
        self.eff_required_rx = self.eff_required_rx.max(required_rx);
        self.poll_active = true;
        // Start the Poll now rather than a slow interval from now.
        self.next_tx = self.next_tx.min(now);
        self.rearm_if_faster(now, tx_before);
    }

    fn finish_poll(&mut self, now: Instant) {
        self.poll_active = false;
        self.counters.polls_completed += 1;
        self.eff_desired_tx = self.adv_desired_tx;
        self.eff_required_rx = self.adv_required_rx;
        self.push_event(BfdEvent::TimersNegotiated {
            at: now,
            tx_interval: self.tx_interval(),
            detect_time: self.detect_time().unwrap_or_default(),
        });
    }

    /// If the transmit interval just got shorter, do not wait out the old, longer one.
    fn rearm_if_faster(&mut self, now: Instant, tx_before: Duration) {
        let tx_now = self.tx_interval();
        if tx_now < tx_before {
            let soon = now + self.rng.jittered(tx_now, self.cfg.detect_mult);
            self.next_tx = self.next_tx.min(soon);
        }
    }

    fn push_event(&mut self, e: BfdEvent) {
        if self.events.len() >= EVENT_QUEUE_CAP {
            self.events.pop_front();
        }
        self.events.push_back(e);
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}
