//! The `popd linkmon` main loop: one thread that polls netlink, BFD and probe sockets, feeds the
//! core with `now`, performs route switches, and proves its own progress to systemd and to
//! `popd watchdog`. The status socket has its own thread reading a published snapshot.

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use pop_linkmon_core::{
    BfdEvent, BfdSession, BfdState, Decision, FailureReason, HealthInput, ProbeOutcome,
    SelectorEvent, SwitchReason, UplinkId, UplinkSelector, Verdict,
};
use pop_watchdog::sd_notify::{Notifier, NotifyState, SystemdWatchdog};
use pop_watchdog::HeartbeatSender;
use rand::Rng;

use crate::config::{Destination, LinkmonConfig, UplinkConfig};
use crate::history::{
    ms_between, BfdStatus, History, LinkEvent, StatusReport, UplinkReport, WallClock,
};
use crate::netlink::{LinkEvents, LinkState, RouteSpec, RtnlSocket, RuleSpec};
use crate::status_server::{Published, Shared, StatusServer};
use crate::uplink_sockets::{BfdSockets, ProbeSocket};
use crate::LinkmonError;

/// Longest sleep of the loop: bounds the reaction to a stop request and keeps heartbeats flowing.
const MAX_SLEEP: Duration = Duration::from_millis(50);
/// How often the status snapshot is refreshed when nothing happened.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);
/// How often `popd watchdog` hears from us.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct ProbeRt {
    sock: ProbeSocket,
    interval: Duration,
    timeout: Duration,
    next_send: Instant,
    seq: u32,
    outstanding: VecDeque<(u32, Instant)>,
}

#[derive(Debug)]
struct BfdRt {
    session: BfdSession,
    sockets: BfdSockets,
}

#[derive(Debug)]
struct UplinkRt {
    id: UplinkId,
    cfg: UplinkConfig,
    ifindex: u32,
    carrier: Option<bool>,
    bfd: Option<BfdRt>,
    probes: Vec<ProbeRt>,
    probes_sent: u64,
    probe_replies: u64,
    probe_misses: u64,
}

/// Runs until SIGTERM/SIGINT.
pub fn run(cfg: LinkmonConfig) -> Result<(), LinkmonError> {
    let mut stop = pop_watchdog::signals::StopSignals::install()?;
    run_until(cfg, &mut || stop.stop_requested())
}

/// Runs until `stop_requested` returns true (checked at least every 50 ms).
pub fn run_until(
    cfg: LinkmonConfig,
    stop_requested: &mut dyn FnMut() -> bool,
) -> Result<(), LinkmonError> {
    let mut lm = Linkmon::start(cfg)?;
    if let Some(n) = &lm.notifier {
        n.notify(&[
            NotifyState::Ready,
            NotifyState::Status("monitoring uplinks"),
        ])?;
    }
    tracing::info!(uplinks = lm.uplinks.len(), "linkmon running");
    while !stop_requested() {
        lm.iterate()?;
    }
    if let Some(n) = &lm.notifier {
        let _ = n.notify(&[NotifyState::Stopping]);
    }
    tracing::info!("linkmon stopped; routes left as they are");
    Ok(())
}

struct Linkmon {
    cfg: LinkmonConfig,
    destinations: Vec<Destination>,
    rtnl: RtnlSocket,
    link_events: LinkEvents,
    selector: UplinkSelector,
    uplinks: Vec<UplinkRt>,
    clock: WallClock,
    history: History,
    shared: Shared,
    _server: StatusServer,
    notifier: Option<Notifier>,
    sd_watchdog: Option<SystemdWatchdog>,
    heartbeat: Option<HeartbeatSender>,
    last_sd_ping: Instant,
    last_heartbeat: Option<Instant>,
    next_neigh_refresh: Instant,
    last_publish: Instant,
    dirty: bool,
    switches: u64,
    switch_errors: u64,
    last_switch_ack: Option<Duration>,
    iterations: u64,
    buf: Vec<u8>,
    link_buf: Vec<LinkState>,
}

impl std::fmt::Debug for Linkmon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Linkmon")
            .field("uplinks", &self.uplinks.len())
            .finish_non_exhaustive()
    }
}

fn reason_str(r: FailureReason) -> &'static str {
    match r {
        FailureReason::CarrierDown => "carrier_down",
        FailureReason::BfdDown => "bfd_down",
        FailureReason::ProbesMissed => "probes_missed",
        FailureReason::MediaSilence => "media_silence",
        FailureReason::NoReport => "no_report",
    }
}

impl Linkmon {
    fn start(cfg: LinkmonConfig) -> Result<Self, LinkmonError> {
        let now = Instant::now();
        let mut rtnl = RtnlSocket::open()?;
        // Subscribe before the dump so no change falls between the two.
        let link_events = LinkEvents::subscribe()?;
        let links = rtnl.links()?;
        let mut rng = rand::thread_rng();
        let mut uplinks = Vec::with_capacity(cfg.uplinks.len());
        for (i, u) in cfg.uplinks.iter().enumerate() {
            let id = UplinkId(u8::try_from(i).unwrap_or(u8::MAX));
            let link = links
                .iter()
                .find(|l| l.name.as_deref() == Some(u.interface.as_str()))
                .ok_or_else(|| LinkmonError::NoSuchInterface {
                    name: u.interface.clone(),
                    uplink: u.name.clone(),
                    source: std::io::Error::from_raw_os_error(libc::ENODEV),
                })?;
            let bfd = match &u.bfd {
                Some(b) => {
                    let peer = b.peer.unwrap_or(u.gateway);
                    let sockets = BfdSockets::open(&u.name, &u.interface, u.address, peer, b.port)?;
                    // Unique and non-zero: random high bits, index in the low byte.
                    let discr = (rng.gen::<u32>() & 0xffff_ff00) | (i as u32 & 0xff);
                    let discr = NonZeroU32::new(discr.max(0x100)).unwrap_or(NonZeroU32::MIN);
                    let session = BfdSession::new(b.to_core(), discr, now, rng.gen())?;
                    tracing::info!(uplink = %u.name, %peer, tx_port = ?sockets.tx_port(), "BFD session starting");
                    Some(BfdRt { session, sockets })
                }
                None => None,
            };
            let mut probes = Vec::with_capacity(u.probes.len());
            for p in &u.probes {
                probes.push(ProbeRt {
                    sock: ProbeSocket::open(&u.name, &u.interface, u.address, p.target)?,
                    interval: Duration::from_millis(p.interval_ms),
                    timeout: Duration::from_millis(p.timeout_ms),
                    next_send: now,
                    seq: 0,
                    outstanding: VecDeque::new(),
                });
            }
            uplinks.push(UplinkRt {
                id,
                cfg: u.clone(),
                ifindex: link.ifindex,
                carrier: None,
                bfd,
                probes,
                probes_sent: 0,
                probe_replies: 0,
                probe_misses: 0,
            });
        }
        let selector = UplinkSelector::new(cfg.selector_config(), now)?;
        let shared: Shared = Arc::new(Mutex::new(Published::default()));
        let server = StatusServer::start(&cfg.socket, shared.clone())?;
        let heartbeat = match &cfg.watchdog_socket {
            Some(p) => Some(HeartbeatSender::new(p, "linkmon")?),
            None => None,
        };
        let mut lm = Self {
            destinations: cfg.destinations(),
            history: History::new(cfg.history),
            cfg,
            rtnl,
            link_events,
            selector,
            uplinks,
            clock: WallClock::new(),
            shared,
            _server: server,
            notifier: Notifier::from_env()?,
            sd_watchdog: SystemdWatchdog::from_env(),
            heartbeat,
            last_sd_ping: now,
            last_heartbeat: None,
            next_neigh_refresh: now,
            last_publish: now,
            dirty: true,
            switches: 0,
            switch_errors: 0,
            last_switch_ack: None,
            iterations: 0,
            buf: vec![0u8; 2048],
            link_buf: Vec::new(),
        };
        lm.install_source_routing()?;
        lm.apply_links(&links, now)?;
        Ok(lm)
    }

    /// Rules and per-uplink tables so the monitor's own packets leave through their uplink.
    fn install_source_routing(&mut self) -> Result<(), LinkmonError> {
        if !self.cfg.routes.source_routing {
            return Ok(());
        }
        let prio = self.cfg.routes.rule_priority;
        self.rtnl.add_rule(&RuleSpec {
            priority: prio,
            table: 254,
            from: None,
            suppress_prefixlen: Some(0),
        })?;
        for i in 0..self.uplinks.len() {
            let Some(u) = self.uplinks.get(i) else {
                continue;
            };
            let idx = u32::from(u.id.0);
            self.rtnl.add_rule(&RuleSpec {
                priority: prio + 1 + idx,
                table: self.cfg.routes.uplink_table_base + idx,
                from: Some(u.cfg.address),
                suppress_prefixlen: None,
            })?;
            self.install_uplink_table(i);
        }
        Ok(())
    }

    /// The uplink's own table: default via its gateway. Re-done when its carrier returns,
    /// because an administrative down flushes routes through the interface.
    fn install_uplink_table(&mut self, i: usize) {
        if !self.cfg.routes.source_routing {
            return;
        }
        let Some(u) = self.uplinks.get(i) else { return };
        let spec = RouteSpec {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: u.cfg.gateway,
            oif: u.ifindex,
            table: self.cfg.routes.uplink_table_base + u32::from(u.id.0),
            metric: 0,
            prefsrc: Some(u.cfg.address),
            protocol: self.cfg.routes.protocol,
        };
        if let Err(e) = self.rtnl.replace_route(&spec) {
            // Expected while the interface is down; retried when its carrier returns.
            tracing::debug!(uplink = %u.cfg.name, error = %e, "uplink table route not installed");
        }
    }

    /// Feeds carrier states that differ from what the core was last told.
    fn apply_links(&mut self, links: &[LinkState], now: Instant) -> Result<(), LinkmonError> {
        for l in links {
            let Some(u) = self.uplinks.iter_mut().find(|u| u.ifindex == l.ifindex) else {
                continue;
            };
            if u.carrier == Some(l.carrier) {
                continue;
            }
            u.carrier = Some(l.carrier);
            let idx = usize::from(u.id.0);
            let (id, gateway, oif) = (u.id, u.cfg.gateway, u.ifindex);
            if l.carrier {
                self.install_uplink_table(idx);
                // An administrative down flushed the routes through this interface; if it
                // carries traffic, put them back.
                if self.selector.active() == Some(id) {
                    let (_, error) = self.install_main_routes(gateway, oif);
                    if error.is_some() {
                        self.switch_errors += 1;
                    }
                }
            }
            let Some(u) = self.uplinks.get(idx) else {
                continue;
            };
            tracing::info!(uplink = %u.cfg.name, up = l.carrier, "carrier");
            let (id, name) = (u.id, u.cfg.name.clone());
            self.record(LinkEvent::Carrier {
                uplink: name,
                up: l.carrier,
                at_ms: self.clock.unix_ms(now),
            });
            self.selector
                .handle_input(now, id, HealthInput::Carrier { up: l.carrier })?;
        }
        Ok(())
    }

    fn record(&mut self, e: LinkEvent) {
        if let Ok(json) = serde_json::to_string(&e) {
            tracing::info!(target: "linkmon::event", "{json}");
        }
        self.history.push(e);
        self.dirty = true;
    }

    fn name(&self, id: UplinkId) -> String {
        self.uplinks
            .get(usize::from(id.0))
            .map(|u| u.cfg.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    fn iterate(&mut self) -> Result<(), LinkmonError> {
        self.wait()?;
        let now = Instant::now();
        self.iterations += 1;

        // Carrier.
        self.link_buf.clear();
        let lost = self.link_events.drain(&mut self.link_buf)?;
        let links = std::mem::take(&mut self.link_buf);
        self.apply_links(&links, now)?;
        self.link_buf = links;
        if lost {
            tracing::warn!("link events lost (socket overrun): re-reading every link");
            let links = self.rtnl.links()?;
            self.apply_links(&links, now)?;
        }

        // BFD.
        for i in 0..self.uplinks.len() {
            self.service_bfd(i, now)?;
        }
        // Probes.
        for i in 0..self.uplinks.len() {
            self.service_probes(i, now)?;
        }
        // A configuration push (validated by the status server).
        let pending = self
            .shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pending_tuning
            .take();
        if let Some(t) = pending {
            match self.selector.set_tuning(&t, now) {
                Ok(()) => {
                    tracing::info!(tuning = ?t, "selector tuning applied from the status socket");
                    self.dirty = true;
                }
                Err(e) => tracing::warn!(error = %e, "selector tuning refused"),
            }
        }
        // Decisions.
        if self.selector.poll_timeout().is_some_and(|t| t <= now) {
            self.selector.handle_timeout(now);
        }
        self.drain_selector();

        if now >= self.next_neigh_refresh {
            self.refresh_neighbours();
            self.next_neigh_refresh = now + Duration::from_millis(self.cfg.neighbour_refresh_ms);
        }
        self.prove_progress(now);
        if self.dirty || now.saturating_duration_since(self.last_publish) >= PUBLISH_EVERY {
            self.publish();
            self.last_publish = now;
            self.dirty = false;
        }
        Ok(())
    }

    /// Sleeps until a socket is readable or the next timer is due.
    fn wait(&mut self) -> Result<(), LinkmonError> {
        let now = Instant::now();
        let mut next = now + MAX_SLEEP;
        if let Some(t) = self.selector.poll_timeout() {
            next = next.min(t);
        }
        for u in &self.uplinks {
            if let Some(b) = &u.bfd {
                next = next.min(b.session.poll_timeout());
            }
            for p in &u.probes {
                next = next.min(p.next_send);
                if let Some((_, sent)) = p.outstanding.front() {
                    next = next.min(*sent + p.timeout);
                }
            }
        }
        let sleep = next.saturating_duration_since(now);
        // poll() has millisecond resolution: round up so we never spin before a deadline.
        let ms = sleep.as_micros().div_ceil(1000);
        let timeout = PollTimeout::from(u16::try_from(ms).unwrap_or(u16::MAX));
        if ms == 0 {
            return Ok(());
        }
        let mut fds: Vec<BorrowedFd<'_>> = vec![self.link_events.as_fd()];
        for u in &self.uplinks {
            if let Some(b) = &u.bfd {
                fds.push(b.sockets.rx_fd());
            }
            for p in &u.probes {
                fds.push(p.sock.fd());
            }
        }
        let mut pfds: Vec<PollFd<'_>> = fds
            .into_iter()
            .map(|fd| PollFd::new(fd, PollFlags::POLLIN))
            .collect();
        match poll(&mut pfds, timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(e) => Err(LinkmonError::Netlink {
                op: "poll",
                source: e.into(),
            }),
        }
    }

    fn service_bfd(&mut self, i: usize, now: Instant) -> Result<(), LinkmonError> {
        let Some(u) = self.uplinks.get_mut(i) else {
            return Ok(());
        };
        let Some(b) = u.bfd.as_mut() else {
            return Ok(());
        };
        // Bounded per iteration so a flood cannot starve timers.
        for _ in 0..64 {
            match b.sockets.recv(&mut self.buf) {
                Ok(Some((len, ttl))) => {
                    let dgram = self.buf.get(..len).unwrap_or_default();
                    // Drops are counted by the session; never a log line per packet.
                    let _ = b.session.handle_datagram(now, dgram, ttl);
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(uplink = %u.cfg.name, error = %e, "BFD receive failed");
                    break;
                }
            }
        }
        if b.session.poll_timeout() <= now {
            b.session.handle_timeout(now);
        }
        let mut out = [0u8; 64];
        for _ in 0..4 {
            let Some(pkt) = b.session.poll_transmit(now) else {
                break;
            };
            match pkt.emit(&mut out) {
                Ok(n) => {
                    if let Err(e) = b.sockets.send(out.get(..n).unwrap_or_default()) {
                        // Expected while the carrier is down; the session times out by itself.
                        tracing::debug!(uplink = %u.cfg.name, error = %e, "BFD send failed");
                    }
                }
                Err(e) => {
                    tracing::error!(uplink = %u.cfg.name, error = %e, "BFD packet did not fit")
                }
            }
        }
        let mut inputs = Vec::new();
        while let Some(ev) = b.session.poll_event() {
            inputs.push(ev);
        }
        let (id, name) = (u.id, u.cfg.name.clone());
        for ev in inputs {
            match ev {
                BfdEvent::Up { at } => {
                    self.record(LinkEvent::Bfd {
                        uplink: name.clone(),
                        up: true,
                        diag: None,
                        at_ms: self.clock.unix_ms(at),
                    });
                    self.selector
                        .handle_input(now, id, HealthInput::Bfd { up: true })?;
                }
                BfdEvent::Down { at, diag, .. } => {
                    self.record(LinkEvent::Bfd {
                        uplink: name.clone(),
                        up: false,
                        diag: Some(format!("{diag:?}")),
                        at_ms: self.clock.unix_ms(at),
                    });
                    self.selector
                        .handle_input(now, id, HealthInput::Bfd { up: false })?;
                }
                BfdEvent::TimersNegotiated {
                    tx_interval,
                    detect_time,
                    ..
                } => {
                    tracing::info!(uplink = %name, ?tx_interval, ?detect_time, "BFD timers negotiated");
                }
            }
        }
        Ok(())
    }

    fn service_probes(&mut self, i: usize, now: Instant) -> Result<(), LinkmonError> {
        let Some(u) = self.uplinks.get_mut(i) else {
            return Ok(());
        };
        let id = u.id;
        let mut results: Vec<(u8, ProbeOutcome)> = Vec::new();
        let mut replies = Vec::new();
        for (t, p) in u.probes.iter_mut().enumerate() {
            let target = u8::try_from(t).unwrap_or(u8::MAX);
            replies.clear();
            p.sock.drain_replies(&mut replies);
            for seq in &replies {
                if let Some(pos) = p.outstanding.iter().position(|(s, _)| s == seq) {
                    // Older unanswered probes before this one stay outstanding and time out.
                    p.outstanding.remove(pos);
                    u.probe_replies += 1;
                    results.push((target, ProbeOutcome::Reply));
                }
            }
            while p
                .outstanding
                .front()
                .is_some_and(|(_, sent)| *sent + p.timeout <= now)
            {
                p.outstanding.pop_front();
                u.probe_misses += 1;
                results.push((target, ProbeOutcome::Miss));
            }
            if now >= p.next_send {
                p.seq = p.seq.wrapping_add(1);
                if let Err(e) = p.sock.send(p.seq) {
                    tracing::debug!(uplink = %u.cfg.name, error = %e, "probe send failed");
                }
                p.outstanding.push_back((p.seq, now));
                // Bound: never more than the timeout covers, plus one.
                while p.outstanding.len() > 16 {
                    p.outstanding.pop_front();
                }
                u.probes_sent += 1;
                p.next_send = now + p.interval;
            }
        }
        for (target, outcome) in results {
            self.selector
                .handle_input(now, id, HealthInput::Probe { target, outcome })?;
        }
        Ok(())
    }

    fn drain_selector(&mut self) {
        while let Some(ev) = self.selector.poll_event() {
            let e = match ev {
                SelectorEvent::UplinkFailed {
                    uplink,
                    reason,
                    fault_seen_at,
                    at,
                } => LinkEvent::UplinkFailed {
                    uplink: self.name(uplink),
                    reason: reason_str(reason).into(),
                    fault_seen_ms: self.clock.unix_ms(fault_seen_at),
                    at_ms: self.clock.unix_ms(at),
                },
                SelectorEvent::UplinkHealthy { uplink, at } => LinkEvent::UplinkHealthy {
                    uplink: self.name(uplink),
                    at_ms: self.clock.unix_ms(at),
                },
                SelectorEvent::Suppressed { uplink, at } => LinkEvent::Suppressed {
                    uplink: self.name(uplink),
                    at_ms: self.clock.unix_ms(at),
                },
                SelectorEvent::Reused { uplink, at } => LinkEvent::Reused {
                    uplink: self.name(uplink),
                    at_ms: self.clock.unix_ms(at),
                },
                SelectorEvent::AllDown { keep, at } => {
                    tracing::warn!(keep = %self.name(keep), "every uplink is down; keeping the last good one");
                    LinkEvent::AllDown {
                        keep: self.name(keep),
                        at_ms: self.clock.unix_ms(at),
                    }
                }
                SelectorEvent::AllDownCleared { at } => LinkEvent::AllDownCleared {
                    at_ms: self.clock.unix_ms(at),
                },
            };
            self.record(e);
        }
        while let Some(d) = self.selector.poll_decision() {
            match d {
                Decision::Switch {
                    from,
                    to,
                    reason,
                    fault_seen_at,
                    decided_at,
                } => self.switch(from, to, reason, fault_seen_at, decided_at),
                #[allow(unreachable_patterns)] // the core's enum is non_exhaustive
                other => tracing::warn!(?other, "decision not understood by this driver"),
            }
        }
    }

    fn switch(
        &mut self,
        from: Option<UplinkId>,
        to: UplinkId,
        reason: SwitchReason,
        fault_seen_at: Option<Instant>,
        decided_at: Instant,
    ) {
        let Some(target) = self.uplinks.get(usize::from(to.0)) else {
            tracing::error!(%to, "core chose an unknown uplink");
            return;
        };
        let (gateway, oif) = (target.cfg.gateway, target.ifindex);
        let (ack, error) = self.install_main_routes(gateway, oif);
        let switched_at = Instant::now();
        self.switches += 1;
        if error.is_some() {
            self.switch_errors += 1;
        }
        self.last_switch_ack = Some(ack);
        let (kind, why) = match reason {
            SwitchReason::Startup => ("startup", "startup".to_owned()),
            SwitchReason::Failover(r) => ("failover", reason_str(r).to_owned()),
            SwitchReason::Failback => ("failback", "hold_down_elapsed".to_owned()),
            #[allow(unreachable_patterns)]
            _ => ("switch", format!("{reason:?}")),
        };
        let e = LinkEvent::Switch {
            kind,
            from: from.map(|f| self.name(f)),
            to: self.name(to),
            reason: why,
            fault_seen_ms: fault_seen_at.map(|t| self.clock.unix_ms(t)),
            decided_ms: self.clock.unix_ms(decided_at),
            switched_ms: self.clock.unix_ms(switched_at),
            detect_ms: fault_seen_at.and_then(|f| ms_between(Some(f), decided_at)),
            switch_ms: switched_at
                .saturating_duration_since(decided_at)
                .as_secs_f64()
                * 1000.0,
            error,
        };
        self.record(e);
    }

    /// Points every configured destination at `gateway` via `oif`: one replace per
    /// destination, each atomic. Returns the summed acknowledgement time and the last error.
    fn install_main_routes(&mut self, gateway: Ipv4Addr, oif: u32) -> (Duration, Option<String>) {
        let mut error = None;
        let mut ack = Duration::ZERO;
        for d in &self.destinations {
            let spec = RouteSpec {
                dst: d.addr,
                prefix_len: d.prefix_len,
                gateway,
                oif,
                table: self.cfg.routes.table,
                metric: self.cfg.routes.metric,
                prefsrc: self.cfg.routes.prefsrc,
                protocol: self.cfg.routes.protocol,
            };
            match self.rtnl.replace_route(&spec) {
                Ok(t) => ack += t,
                Err(e) => {
                    tracing::error!(error = %e, dst = %d.addr, prefix = d.prefix_len, "route replace failed");
                    error = Some(e.to_string());
                }
            }
        }
        (ack, error)
    }

    fn refresh_neighbours(&mut self) {
        let targets: Vec<(u32, Ipv4Addr, bool, String)> = self
            .uplinks
            .iter()
            .map(|u| {
                (
                    u.ifindex,
                    u.cfg.gateway,
                    u.carrier == Some(true),
                    u.cfg.name.clone(),
                )
            })
            .collect();
        for (ifindex, gw, carrier, name) in targets {
            if !carrier {
                continue;
            }
            if let Err(e) = self.rtnl.refresh_neighbour(ifindex, gw) {
                tracing::debug!(uplink = %name, error = %e, "neighbour refresh failed");
            }
        }
    }

    /// Heartbeat to `popd watchdog` and `WATCHDOG=1` to systemd, both from this loop only, and
    /// whatever the uplinks' state: all uplinks down is a healthy loop, not a reason to reboot.
    fn prove_progress(&mut self, now: Instant) {
        if let Some(hb) = &self.heartbeat {
            if self
                .last_heartbeat
                .is_none_or(|t| now.saturating_duration_since(t) >= HEARTBEAT_EVERY)
            {
                let detail = if self.selector.all_down() {
                    "all uplinks down".to_owned()
                } else {
                    match self.selector.active() {
                        Some(a) => format!("active {}", self.name(a)),
                        None => "choosing".to_owned(),
                    }
                };
                if let Err(e) = hb.beat(Some(&detail)) {
                    tracing::debug!(error = %e, "watchdog heartbeat not delivered");
                }
                self.last_heartbeat = Some(now);
            }
        }
        if let (Some(n), Some(wd)) = (&self.notifier, self.sd_watchdog) {
            if now.saturating_duration_since(self.last_sd_ping) >= wd.interval() {
                if let Err(e) = n.notify(&[NotifyState::Watchdog]) {
                    tracing::warn!(error = %e, "systemd watchdog notification failed");
                }
                self.last_sd_ping = now;
            }
        }
    }

    fn publish(&mut self) {
        let active = self.selector.active();
        let uplinks = self
            .uplinks
            .iter()
            .map(|u| {
                let st = self.selector.status(u.id);
                UplinkReport {
                    name: u.cfg.name.clone(),
                    interface: u.cfg.interface.clone(),
                    gateway: u.cfg.gateway.to_string(),
                    active: active == Some(u.id),
                    verdict: match st.map(|s| s.verdict) {
                        Some(Verdict::Healthy) => "healthy".into(),
                        Some(Verdict::Failed(r)) => format!("failed:{}", reason_str(r)),
                        _ => "unknown".into(),
                    },
                    suppressed: st.is_some_and(|s| s.suppressed),
                    carrier: u.carrier,
                    bfd: u.bfd.as_ref().map(|b| {
                        let c = b.session.counters();
                        BfdStatus {
                            state: match b.session.state() {
                                BfdState::Up => "Up".into(),
                                s => format!("{s}"),
                            },
                            tx_interval_us: u64::try_from(b.session.tx_interval().as_micros())
                                .unwrap_or(u64::MAX),
                            detect_time_us: b
                                .session
                                .detect_time()
                                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                            rx_accepted: c.rx_accepted,
                            tx: c.tx_periodic + c.tx_final,
                            drop_malformed: c.drop_malformed,
                            drop_wrong_ttl: c.drop_wrong_ttl,
                            drop_wrong_discriminator: c.drop_wrong_discriminator,
                            drop_auth: c.drop_auth,
                            drop_foreign_source: b.sockets.foreign_source,
                            up_transitions: c.up_transitions,
                            down_transitions: c.down_transitions,
                        }
                    }),
                    probes_sent: u.probes_sent,
                    probe_replies: u.probe_replies,
                    probe_misses: u.probe_misses,
                }
            })
            .collect();
        let status = StatusReport {
            active: active.map(|a| self.name(a)),
            all_down: self.selector.all_down(),
            switches: self.switches,
            last_switch_ack_us: self
                .last_switch_ack
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
            switch_errors: self.switch_errors,
            loop_iterations: self.iterations,
            link_event_overruns: self.link_events.overruns,
            uplinks,
            tuning: {
                let t = self.selector.tuning();
                crate::history::TuningReport {
                    probe_miss_threshold: t.probe_miss_threshold,
                    probe_recover_threshold: t.probe_recover_threshold,
                    hold_down_ms: u64::try_from(t.hold_down.as_millis()).unwrap_or(u64::MAX),
                    damping: crate::history::DampingReport {
                        penalty_per_failure: t.damping.penalty_per_failure,
                        suppress_above: t.damping.suppress_above,
                        reuse_below: t.damping.reuse_below,
                        half_life_ms: u64::try_from(t.damping.half_life.as_millis())
                            .unwrap_or(u64::MAX),
                        max_penalty: t.damping.max_penalty,
                    },
                }
            },
        };
        let events: Vec<LinkEvent> = self.history.entries().cloned().collect();
        let mut p = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        p.status = status;
        p.events = events;
    }
}
