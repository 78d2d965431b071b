//! [`RelayCore`]: the NG command handler, call table, port pool, timers and reply cache.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use pop_wire::bencode::{self, Value};

use crate::config::CoreConfig;
use crate::counters::{CloseReason, CoreCounters};
use crate::ended::{EndedCall, EndedCalls, LiveLimits};
use crate::error::CoreError;
use crate::media::{BindError, MediaOps, StreamId, StreamStats};
use crate::origin::origin_version;
use crate::ports::PortAllocator;
use crate::replies;
use crate::reply_cache::{self, Lookup, ReplyCache};
use crate::request::{self, Command, Ignored, OfferAnswer};
use crate::sdp_rewrite::{self, MediaInfo, MediaPlan, RewritePlan};
use crate::session::{BoundPorts, Call, SentSdp, Side, Stream};

/// Ports tried per pair before giving up when other processes hold the ports we pick.
const BIND_ATTEMPTS: usize = 16;
/// Cookies longer than this are answered but not cached (Kamailio's are ~20 bytes).
const MAX_CACHED_COOKIE: usize = 128;
/// Cap on a `delete delay` given in a request: a client must not pin ports for days.
const MAX_REQUESTED_DELETE_DELAY_SECS: u64 = 3600;
/// Timers handled per [`RelayCore::poll_timeouts`] call, so one call never stalls the NG
/// socket; the rest are reported as due immediately.
const MAX_TIMERS_PER_POLL: usize = 256;

type CallKey = u64;

/// The relay's control brain: answers NG requests, owns calls, ports and timers, and tells
/// the data plane what to do through [`MediaOps`]. Single-threaded and clock-free.
pub struct RelayCore {
    cfg: CoreConfig,
    ports: PortAllocator,
    calls: HashMap<CallKey, Call>,
    by_call_id: HashMap<Vec<u8>, CallKey>,
    timers: BTreeSet<(Instant, CallKey)>,
    cache: ReplyCache,
    counters: CoreCounters,
    next_call_key: CallKey,
    next_stream_id: u64,
    offer_window: Option<(Instant, u32)>,
    ended: EndedCalls,
}

/// Summary only: the call table and reply cache hold call-ids, tags and SDP, which can carry
/// phone numbers.
impl std::fmt::Debug for RelayCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayCore")
            .field("cfg", &self.cfg)
            .field("sessions", &self.calls.len())
            .field("timers", &self.timers.len())
            .field("ports", &self.ports)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

/// What the offer/answer code needs from the request, by direction.
struct Exchange<'a> {
    p: OfferAnswer<'a>,
    /// Side that sent the SDP in this request.
    sender: Side,
    is_offer: bool,
}

impl RelayCore {
    /// Validates `cfg` (the error names the field and the reason) and builds an empty core.
    /// `rng_seed` drives port randomisation; give it real entropy in production.
    pub fn new(cfg: CoreConfig, rng_seed: u64) -> Result<Self, CoreError> {
        cfg.validate()?;
        let ports = PortAllocator::new(cfg.port_min, cfg.port_max, cfg.port_quarantine, rng_seed)?;
        let cache = ReplyCache::new(cfg.reply_cache_ttl, cfg.reply_cache_max_bytes);
        let mut core = RelayCore {
            cfg,
            ports,
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            timers: BTreeSet::new(),
            cache,
            counters: CoreCounters::default(),
            next_call_key: 1,
            next_stream_id: 1,
            offer_window: None,
            ended: EndedCalls::default(),
        };
        core.refresh_gauges();
        Ok(core)
    }

    /// Handles one NG datagram (`<cookie> <bencoded dict>`) and returns the reply datagram.
    /// A retransmission (same cookie, same body) gets the cached reply without re-executing.
    /// `None` only when no cookie can be found: there is nothing to answer (counted).
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        datagram: &[u8],
    ) -> Option<Vec<u8>> {
        self.counters.datagrams += 1;
        let space = datagram.iter().position(|&b| b == b' ');
        let (cookie, body) = match space {
            Some(i) if i > 0 => (datagram.get(..i)?, datagram.get(i + 1..)?),
            _ => {
                self.counters.datagrams_without_cookie += 1;
                return None;
            }
        };
        let cacheable = cookie.len() <= MAX_CACHED_COOKIE;
        let body_digest = reply_cache::digest(body);
        if cacheable {
            match self.cache.lookup(now, cookie, body_digest) {
                Lookup::Hit(reply) => {
                    self.counters.reply_cache_hits += 1;
                    return Some(reply.to_vec());
                }
                Lookup::CookieReused => self.counters.reply_cache_cookie_reused += 1,
                Lookup::Miss => {}
            }
        }
        let reply = match bencode::decode(body) {
            Ok(req) => self.handle_request(now, media, &req),
            Err(_) => self.error_reply(&CoreError::BadRequest),
        };
        let mut out = Vec::with_capacity(cookie.len() + 64);
        out.extend_from_slice(cookie);
        out.push(b' ');
        reply.encode(&mut out);
        if cacheable {
            self.cache.insert(now, cookie, body_digest, out.clone());
        }
        Some(out)
    }

    /// Handles one decoded NG request and returns the reply dictionary. Never fails: errors
    /// become `result: error` replies. No caching here (NG over TCP has no retransmissions).
    pub fn handle_request(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        request: &Value,
    ) -> Value {
        let mut ignored = Ignored::default();
        let result = match request::command(request) {
            Ok(cmd) => self.dispatch(now, media, cmd, request, &mut ignored),
            Err(e) => Err(e),
        };
        self.report_ignored(&ignored);
        self.refresh_gauges();
        match result {
            Ok(v) => v,
            Err(e) => self.error_reply(&e),
        }
    }

    /// Closes calls whose timers expired and returns when to call again (`None`: no timer).
    pub fn poll_timeouts(&mut self, now: Instant, media: &mut dyn MediaOps) -> Option<Instant> {
        for _ in 0..MAX_TIMERS_PER_POLL {
            let Some(&(due, key)) = self.timers.first() else {
                break;
            };
            if due > now {
                break;
            }
            self.timers.remove(&(due, key));
            let Some(mut call) = self.calls.remove(&key) else {
                continue;
            };
            call.deadline = None;
            match self.expired_reason(now, media, &mut call) {
                Some(reason) => self.close(now, media, key, call, reason),
                None => {
                    self.schedule(key, &mut call);
                    self.calls.insert(key, call);
                }
            }
        }
        self.cache.expire(now);
        self.ports.expire_quarantine(now);
        self.refresh_gauges();
        self.timers.first().map(|&(t, _)| t.max(now))
    }

    /// Counters since start (port gauges as of the last request or poll).
    pub fn counters(&self) -> &CoreCounters {
        &self.counters
    }

    /// Calls currently held (including calls waiting out a delete delay).
    pub fn session_count(&self) -> usize {
        self.calls.len()
    }

    /// The validated configuration.
    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// Changes the admission limit and the call timers while calls run (a configuration push).
    /// Validated like the whole configuration; on error nothing changes. Running calls keep
    /// their current deadline and get the new timers from their next timer check on, so a
    /// shorter timeout can never close a call in the middle of this request.
    pub fn set_limits(&mut self, limits: &LiveLimits) -> Result<(), CoreError> {
        let mut candidate = self.cfg.clone();
        candidate.max_sessions = limits.max_sessions;
        candidate.no_media_timeout = limits.no_media_timeout;
        candidate.max_duration = limits.max_duration;
        candidate.unanswered_offer_timeout = limits.unanswered_offer_timeout;
        candidate.validate()?;
        self.cfg = candidate;
        Ok(())
    }

    /// The live-tunable part of the configuration as it is now.
    pub fn limits(&self) -> LiveLimits {
        LiveLimits {
            max_sessions: self.cfg.max_sessions,
            no_media_timeout: self.cfg.no_media_timeout,
            max_duration: self.cfg.max_duration,
            unanswered_offer_timeout: self.cfg.unanswered_offer_timeout,
        }
    }

    /// Takes the records of calls that ended since the last call (oldest first). The service
    /// drains them at least once a second; if it does not, the oldest are dropped and counted
    /// in [`CoreCounters::call_records_dropped`] rather than growing without bound.
    pub fn take_ended_calls(&mut self) -> Vec<EndedCall> {
        self.ended.take()
    }

    fn dispatch(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        cmd: Command,
        req: &Value,
        ignored: &mut Ignored,
    ) -> Result<Value, CoreError> {
        match cmd {
            Command::Ping => {
                self.counters.pings += 1;
                Ok(Value::dict([("result", Value::str("pong"))]))
            }
            Command::Offer => {
                self.counters.offers += 1;
                self.offer(now, media, request::offer_answer(req, ignored)?)
            }
            Command::Answer => {
                self.counters.answers += 1;
                self.answer(now, media, request::offer_answer(req, ignored)?)
            }
            Command::Delete => {
                self.counters.deletes += 1;
                self.delete(now, media, request::delete(req, ignored)?)
            }
            Command::Query => {
                self.counters.queries += 1;
                let q = request::query(req)?;
                let key = *self
                    .by_call_id
                    .get(q.call_id)
                    .ok_or(CoreError::UnknownCallId)?;
                Ok(replies::ok_with(self.call_stats(media, key)))
            }
            Command::List => {
                self.counters.lists += 1;
                let limit = request::list_limit(req)?;
                let ids = self
                    .by_call_id
                    .keys()
                    .take(limit)
                    .map(|id| Value::bytes(id.as_slice()));
                Ok(replies::ok_with(vec![("calls", Value::list(ids))]))
            }
            Command::Statistics => {
                self.counters.statistics += 1;
                let stats = replies::statistics(&self.counters, self.calls.len(), &media.totals());
                Ok(replies::ok_with(vec![("statistics", stats)]))
            }
        }
    }

    fn offer(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        p: OfferAnswer<'_>,
    ) -> Result<Value, CoreError> {
        if p.record_call {
            return Err(CoreError::RecordingNotSupported);
        }
        let infos = sdp_rewrite::inspect(p.sdp).map_err(|e| CoreError::BadSdp(e.to_string()))?;
        let (key, mut call, is_new) = match self.by_call_id.get(p.call_id) {
            Some(&key) => match self.calls.remove(&key) {
                Some(call) => (key, call, false),
                None => return Err(CoreError::UnknownCallId),
            },
            None => {
                if let Some(limit) = self.admit_new_call(now) {
                    self.counters.sessions_rejected_load_limit += 1;
                    if p.supports_load_limit {
                        return Ok(Value::dict([
                            ("result", Value::str("load limit")),
                            ("message", Value::str(&limit.to_string())),
                        ]));
                    }
                    return Err(limit);
                }
                let key = self.next_call_key;
                self.next_call_key += 1;
                let mut call = Call::new(p.call_id, now);
                call.tags[Side::A.index()] = Some(p.from_tag.to_vec());
                call.tags[Side::B.index()] = p.to_tag.map(<[u8]>::to_vec);
                (key, call, true)
            }
        };
        let sender = call.offerer(p.from_tag, p.to_tag);
        // A new offer revives a call waiting out its delete delay (rtpengine does the same).
        call.delete_at = None;
        remember_metadata(&mut call, p.metadata);
        let ex = Exchange {
            p,
            sender,
            is_offer: true,
        };
        let result = self.exchange(now, media, &mut call, &ex, &infos);
        self.finish_exchange(now, media, key, call, is_new, result)
    }

    fn answer(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        p: OfferAnswer<'_>,
    ) -> Result<Value, CoreError> {
        if p.record_call {
            return Err(CoreError::RecordingNotSupported);
        }
        let key = *self
            .by_call_id
            .get(p.call_id)
            .ok_or(CoreError::UnknownCallId)?;
        let infos = sdp_rewrite::inspect(p.sdp).map_err(|e| CoreError::BadSdp(e.to_string()))?;
        let mut call = self.calls.remove(&key).ok_or(CoreError::UnknownCallId)?;
        if infos.len() > call.streams.len() {
            self.calls.insert(key, call);
            return Err(CoreError::BadSdp(
                "the answer has more m= lines than the offer".into(),
            ));
        }
        let sender = call.answerer(p.from_tag, p.to_tag);
        remember_metadata(&mut call, p.metadata);
        let ex = Exchange {
            p,
            sender,
            is_offer: false,
        };
        let result = self.exchange(now, media, &mut call, &ex, &infos);
        if result.is_ok() && call.unanswered_since.take().is_some() {
            call.next_media_check = Some(now + self.cfg.no_media_timeout);
            call.answered_at = Some(now);
        }
        self.finish_exchange(now, media, key, call, false, result)
    }

    /// Puts the call back (or tears a failed new call down) and turns the SDP into a reply.
    fn finish_exchange(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        key: CallKey,
        mut call: Call,
        is_new: bool,
        result: Result<Vec<u8>, CoreError>,
    ) -> Result<Value, CoreError> {
        match result {
            Ok(sdp) => {
                call.last_signal = now;
                if is_new {
                    self.counters.sessions_created += 1;
                    self.by_call_id.insert(call.call_id.clone(), key);
                }
                self.schedule(key, &mut call);
                self.calls.insert(key, call);
                Ok(replies::ok_with(vec![("sdp", Value::bytes(sdp))]))
            }
            Err(e) => {
                if is_new {
                    self.release_call_media(now, media, &call);
                } else {
                    self.schedule(key, &mut call);
                    self.calls.insert(key, call);
                }
                Err(e)
            }
        }
    }

    /// Applies one offer or answer to a call: ports, peers, data plane, rewritten SDP.
    fn exchange(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        call: &mut Call,
        ex: &Exchange<'_>,
        infos: &[MediaInfo],
    ) -> Result<Vec<u8>, CoreError> {
        let p = &ex.p;
        let sender = ex.sender;
        let receiver = sender.other();
        // Flags are sticky for the call: an answer without flags must not undo the offer's.
        call.policy.strict_source |= p.strict_source;
        call.policy.media_handover |= p.media_handover;
        if p.asymmetric {
            call.policy.latch = false;
        }
        let mut plans = Vec::with_capacity(infos.len());
        for (i, info) in infos.iter().enumerate() {
            if i >= call.streams.len() {
                let id = StreamId(self.next_stream_id);
                self.next_stream_id += 1;
                call.streams.push(Stream::new(id));
            }
            let Some(stream) = call.streams.get_mut(i) else {
                continue;
            };
            if ex.is_offer {
                stream.media_type.clone_from(&info.media_type);
                stream.proto.clone_from(&info.proto);
                stream.mux_accept_to_offerer = p.rtcp_mux.demux || p.rtcp_mux.accept;
            }
            if !info.port_zero {
                for side in [Side::A, Side::B] {
                    if stream.leg(side).ports.is_none() {
                        let bound = bind_pair(
                            now,
                            media,
                            &mut self.ports,
                            &mut self.counters,
                            self.cfg.media_address,
                        )?;
                        stream.leg_mut(side).ports = Some(bound);
                    }
                }
            }
            let (peer_rtp, peer_rtcp) = peer_addresses(info, p);
            let leg = stream.leg_mut(sender);
            leg.peer_rtp = peer_rtp;
            leg.peer_rtcp = peer_rtcp;
            leg.rtcp_mux = info.rtcp_mux && !p.rtcp_mux.reject;
            // Statistics of what this party sends are read with the payload types it declared.
            leg.codecs = info.codecs;
            let out_mux = if ex.is_offer {
                p.rtcp_mux.require
                    || p.rtcp_mux.offer
                    || (info.rtcp_mux && !p.rtcp_mux.demux && !p.rtcp_mux.reject)
            } else {
                // The answer goes to the offerer (side `receiver`), who asked for mux or not.
                stream.leg(receiver).rtcp_mux
                    && (info.rtcp_mux || stream.mux_accept_to_offerer || p.rtcp_mux.accept)
            };
            if !ex.is_offer {
                let offerer_mux = stream.leg(receiver).rtcp_mux && out_mux;
                stream.leg_mut(receiver).rtcp_mux = offerer_mux;
            }
            let plan = match stream.leg(receiver).ports {
                // With mux, `a=rtcp` carries the RTP port; without, the pair's odd port.
                // An offer that proposes mux still advertises the separate RTCP port (the
                // answerer may refuse mux), as rtpengine does; only `require` leaves it out.
                Some(ports) if !info.port_zero => MediaPlan {
                    rtp_port: ports.rtp_port,
                    rtcp_port: (!out_mux || (ex.is_offer && !p.rtcp_mux.require))
                        .then_some(ports.rtp_port + 1),
                    rtcp_mux: out_mux,
                    direction: None,
                },
                _ => MediaPlan::default(),
            };
            plans.push(plan);
            push_to_data_plane(media, stream, call.policy)?;
        }
        let mut plan = RewritePlan {
            media_address: self.cfg.media_address,
            media: plans,
            replace_origin: p.replace_origin,
            replace_session_connection: p.replace_session_connection,
            ice_remove: p.ice_remove,
            origin_version: None,
        };
        versioned_rewrite(p.sdp, &mut plan, &mut call.sent_sdp[receiver.index()])
    }

    fn delete(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        d: request::Delete<'_>,
    ) -> Result<Value, CoreError> {
        let key = self.by_call_id.get(d.call_id).copied().filter(|key| {
            self.calls.get(key).is_some_and(|call| {
                // Tags, when given, must belong to the call (a stray delete must not end it).
                let known = |t: Option<&[u8]>| t.is_none_or(|t| call.side_of(t).is_some());
                known(d.from_tag) || known(d.to_tag) && d.to_tag.is_some()
            })
        });
        let Some(key) = key else {
            if d.fatal {
                return Err(CoreError::UnknownCallId);
            }
            return Ok(replies::ok_with(vec![(
                "warning",
                Value::str("Call-ID not found or tags didn't match"),
            )]));
        };
        let stats = self.call_stats(media, key);
        let delay = d
            .delete_delay
            .map(|s| Duration::from_secs(s.min(MAX_REQUESTED_DELETE_DELAY_SECS)))
            .unwrap_or(self.cfg.delete_delay);
        if let Some(mut call) = self.calls.remove(&key) {
            if delay.is_zero() {
                self.close(now, media, key, call, CloseReason::Deleted);
            } else {
                call.delete_at = Some(now + delay);
                self.schedule(key, &mut call);
                self.calls.insert(key, call);
            }
        }
        Ok(replies::ok_with(stats))
    }

    fn call_stats(&mut self, media: &mut dyn MediaOps, key: CallKey) -> Vec<(&'static str, Value)> {
        let Some(call) = self.calls.get(&key) else {
            return Vec::new();
        };
        let stats: Vec<Option<StreamStats>> = call
            .streams
            .iter()
            .map(|s| {
                s.pushed
                    .as_ref()
                    .and_then(|_| media.stream_stats(s.id).ok())
            })
            .collect();
        replies::call_stats(call, &stats)
    }

    /// `Some(error)` when a new call must be refused.
    fn admit_new_call(&mut self, now: Instant) -> Option<CoreError> {
        if self.calls.len() >= self.cfg.max_sessions {
            return Some(CoreError::SessionLimit);
        }
        if let Some(rate) = self.cfg.max_offer_rate {
            let window = match self.offer_window {
                Some((start, n))
                    if now.saturating_duration_since(start) < Duration::from_secs(1) =>
                {
                    (start, n)
                }
                _ => (now, 0),
            };
            if window.1 >= rate {
                self.offer_window = Some(window);
                return Some(CoreError::OfferRateLimit);
            }
            self.offer_window = Some((window.0, window.1 + 1));
        }
        None
    }

    /// Why the call must close now, if it must. Polls stream statistics only when the
    /// no-media check is due, and then schedules the next check for when the most recently
    /// active direction could first reach the timeout.
    fn expired_reason(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        call: &mut Call,
    ) -> Option<CloseReason> {
        if call.delete_at.is_some_and(|t| t <= now) {
            return Some(CloseReason::Deleted);
        }
        if self
            .cfg
            .max_duration
            .is_some_and(|max| now.saturating_duration_since(call.created) >= max)
        {
            return Some(CloseReason::MaxDuration);
        }
        if let Some(since) = call.unanswered_since {
            if now.saturating_duration_since(since) >= self.cfg.unanswered_offer_timeout {
                return Some(CloseReason::UnansweredOffer);
            }
            return None;
        }
        if call.delete_at.is_some() || call.next_media_check.is_none_or(|t| t > now) {
            return None;
        }
        // Signalling counts as activity: a re-INVITE restarts the clock.
        let mut idle = now.saturating_duration_since(call.last_signal);
        for stream in call.streams.iter().filter(|s| s.pushed.is_some()) {
            self.counters.media_stats_polls += 1;
            if let Ok(st) = media.stream_stats(stream.id) {
                for d in [st.from_a, st.from_b] {
                    if let Some(ms) = d.idle_ms {
                        idle = idle.min(Duration::from_millis(ms));
                    }
                }
            }
        }
        let timeout = self.cfg.no_media_timeout;
        if idle >= timeout {
            return Some(CloseReason::NoMedia);
        }
        call.next_media_check = Some(now + (timeout - idle));
        None
    }

    /// Keeps exactly one timer entry per call, at its earliest deadline.
    fn schedule(&mut self, key: CallKey, call: &mut Call) {
        if let Some(old) = call.deadline.take() {
            self.timers.remove(&(old, key));
        }
        let deadline = match call.delete_at {
            Some(t) => Some(t),
            None => {
                let unanswered = call
                    .unanswered_since
                    .map(|t| t + self.cfg.unanswered_offer_timeout);
                let max = self.cfg.max_duration.map(|d| call.created + d);
                [unanswered, max, call.next_media_check]
                    .into_iter()
                    .flatten()
                    .min()
            }
        };
        if let Some(t) = deadline {
            self.timers.insert((t, key));
            call.deadline = Some(t);
        }
    }

    fn close(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        key: CallKey,
        mut call: Call,
        reason: CloseReason,
    ) {
        if let Some(t) = call.deadline.take() {
            self.timers.remove(&(t, key));
        }
        self.by_call_id.remove(&call.call_id);
        let (packets, bytes) = self.release_call_media(now, media, &call);
        self.counters.count_close(reason);
        tracing::debug!(?reason, streams = call.streams.len(), "call closed");
        self.ended.push(EndedCall {
            call_id: call.call_id,
            from_tag: call.tags[Side::A.index()].take(),
            to_tag: call.tags[Side::B.index()].take(),
            metadata: call.metadata,
            created: call.created,
            answered: call.answered_at,
            ended: now,
            packets,
            bytes,
            reason,
        });
    }

    /// Removes the call's streams from the data plane and its ports into quarantine; returns
    /// the packets and bytes the call's streams forwarded, for its call record.
    fn release_call_media(
        &mut self,
        now: Instant,
        media: &mut dyn MediaOps,
        call: &Call,
    ) -> (u64, u64) {
        let (mut packets, mut bytes) = (0u64, 0u64);
        for stream in call.streams.iter().filter(|s| s.pushed.is_some()) {
            match media.remove_stream(stream.id) {
                Ok(stats) => {
                    packets += stats.from_a.packets + stats.from_b.packets;
                    bytes += stats.from_a.bytes + stats.from_b.bytes;
                }
                Err(_) => self.counters.media_teardown_errors += 1,
            }
        }
        for ports in call.bound_ports() {
            media.release_ports(ports.id);
            self.ports.release(now, ports.rtp_port);
        }
        (packets, bytes)
    }

    fn error_reply(&mut self, e: &CoreError) -> Value {
        self.counters.count_error(e.reason_label());
        replies::error(e)
    }

    fn report_ignored(&mut self, ignored: &Ignored) {
        for name in &ignored.names {
            self.counters.unknown_keys_ignored += 1;
            // Rate limit: the 1st, 2nd, 4th, 8th... occurrence is logged.
            if self.counters.unknown_keys_ignored.is_power_of_two() {
                tracing::warn!(
                    name = %name,
                    total = self.counters.unknown_keys_ignored,
                    "NG request key or flag not implemented, ignored"
                );
            }
        }
    }

    fn refresh_gauges(&mut self) {
        self.counters.ports_in_use = self.ports.in_use() as u64;
        self.counters.ports_quarantined = self.ports.quarantined() as u64;
        self.counters.ports_free = self.ports.free() as u64;
        self.counters.reply_cache_entries = self.cache.len() as u64;
        self.counters.reply_cache_bytes = self.cache.bytes() as u64;
        self.counters.call_records_dropped = self.ended.dropped;
    }
}

/// Allocates a port pair and binds it, skipping ports another process holds.
fn bind_pair(
    now: Instant,
    media: &mut dyn MediaOps,
    ports: &mut PortAllocator,
    counters: &mut CoreCounters,
    ip: IpAddr,
) -> Result<BoundPorts, CoreError> {
    for _ in 0..BIND_ATTEMPTS {
        let port = ports.allocate(now)?;
        match media.bind_ports(ip, port, false) {
            Ok(id) => return Ok(BoundPorts { id, rtp_port: port }),
            Err(BindError::InUse(_)) => {
                // Quarantine it: whoever holds it now may well hold it for a while.
                ports.release(now, port);
                counters.ports_bind_in_use += 1;
            }
            Err(e @ BindError::Fatal { .. }) => {
                ports.release(now, port);
                return Err(CoreError::Bind(e));
            }
        }
    }
    Err(CoreError::OutOfPorts)
}

/// Where the sender of this SDP wants media: `media-address` beats `SIP source address` (the
/// SIP packet's source from `received-from`), which beats the SDP. A zero address (old-style
/// hold) leaves the peer unknown, to be learned by latching.
fn peer_addresses(
    info: &MediaInfo,
    p: &OfferAnswer<'_>,
) -> (Option<SocketAddr>, Option<SocketAddr>) {
    let override_ip = p.media_address.or(if p.sip_source_address {
        p.received_from
    } else {
        None
    });
    let fix = |a: SocketAddr| {
        let a = match override_ip {
            Some(ip) => SocketAddr::new(ip, a.port()),
            None => a,
        };
        (!a.ip().is_unspecified() && a.port() != 0).then_some(a)
    };
    if info.port_zero {
        return (None, None);
    }
    let rtp = info.rtp.and_then(fix);
    let rtcp = if info.rtcp_mux {
        rtp
    } else {
        info.rtcp.and_then(fix).or_else(|| {
            rtp.and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)))
        })
    };
    (rtp, rtcp)
}

fn push_to_data_plane(
    media: &mut dyn MediaOps,
    stream: &mut Stream,
    policy: crate::media::MediaPolicy,
) -> Result<(), CoreError> {
    let Some(spec) = stream.spec(policy) else {
        return Ok(());
    };
    match &stream.pushed {
        None => media
            .create_stream(spec.clone())
            .map_err(CoreError::Media)?,
        Some(old) if *old != spec => media
            .update_stream(spec.clone())
            .map_err(CoreError::Media)?,
        Some(_) => return Ok(()),
    }
    stream.pushed = Some(spec);
    Ok(())
}

/// Rewrites `sdp` and chooses the `o=` version towards this party (RFC 3264 §8): unchanged
/// while what we send is unchanged, one higher as soon as it differs — and never lower than the
/// version the sender wrote, which rtpengine passes through and peers may compare against.
fn versioned_rewrite(
    sdp: &[u8],
    plan: &mut RewritePlan,
    sent: &mut Option<SentSdp>,
) -> Result<Vec<u8>, CoreError> {
    let bad = |e: crate::sdp_rewrite::SdpRewriteError| CoreError::BadSdp(e.to_string());
    let input_version = origin_version(sdp);
    // Change detection must not see the version itself: rewrite once with a fixed version.
    plan.origin_version = Some(0);
    let digest = reply_cache::digest(&sdp_rewrite::rewrite(sdp, plan).map_err(bad)?);
    let version = match *sent {
        None => input_version,
        Some(prev) => {
            let ours = prev.version.map(|v| {
                if prev.digest == digest {
                    v
                } else {
                    v.wrapping_add(1)
                }
            });
            match (ours, input_version) {
                (Some(ours), Some(theirs)) => Some(ours.max(theirs)),
                (ours, theirs) => ours.or(theirs),
            }
        }
    };
    plan.origin_version = version;
    let out = sdp_rewrite::rewrite(sdp, plan).map_err(bad)?;
    *sent = Some(SentSdp { digest, version });
    Ok(out)
}

/// Keeps the latest `metadata` of a call, cut to a bound: it is only read for call records.
fn remember_metadata(call: &mut Call, metadata: Option<&[u8]>) {
    if let Some(m) = metadata {
        call.metadata = Some(m.get(..MAX_METADATA).unwrap_or(m).to_vec());
    }
}

/// Longest `metadata` kept per call.
const MAX_METADATA: usize = 1024;
