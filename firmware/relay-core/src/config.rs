//! Configuration of the relay core, validated once at construction.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crate::error::CoreError;

/// Longest accepted timer: keeps every `now + timer` far from `Instant` overflow.
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 3600);

/// What the relay core needs to know to run: media address, port range, limits and timers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Address written into rewritten SDP and on which media ports are bound.
    pub media_address: IpAddr,
    /// Lowest port of the media range (rounded up to even: RTP ports are even).
    pub port_min: u16,
    /// Highest port of the media range (an RTP port is used only if its RTCP port fits too).
    pub port_max: u16,
    /// How long a released port stays unused before it is handed out again.
    ///
    /// Default 30 s: a peer that missed the BYE keeps sending until its own SIP transaction
    /// gives up (64·T1 = 32 s for a non-INVITE), and those late packets must not leak into the
    /// next call that gets the port. With 5,000 pairs in the default range that costs nothing.
    pub port_quarantine: Duration,
    /// New calls beyond this many are refused (`load limit`) instead of degrading the others.
    /// Default 4,000: with separate RTP and RTCP sockets a call holds 4 descriptors, and the
    /// appliance's per-process descriptor limit on the reference machine is 20,000.
    pub max_sessions: usize,
    /// Optional limit of new-call offers per second (re-offers are not limited).
    pub max_offer_rate: Option<u32>,
    /// An answered call with no packet in any direction for this long is closed. Default 60 s.
    pub no_media_timeout: Duration,
    /// Calls are closed after this long whatever happens (`None`: never). Default off, as in
    /// rtpengine: a long conference must not be cut by surprise.
    pub max_duration: Option<Duration>,
    /// An offer not answered within this long is closed. Default 300 s, longer than any
    /// ringing phase (SIP Timer C is more than 3 minutes). Until the answer, this timer — not
    /// the no-media one — governs, so a call ringing without early media is not killed.
    pub unanswered_offer_timeout: Duration,
    /// A deleted call is kept (still forwarding) this long, unless the `delete` request says
    /// otherwise. rtpengine defaults to 30 s; we default to 0 because port quarantine already
    /// protects against late packets and a delayed call costs memory and descriptors.
    pub delete_delay: Duration,
    /// How long an NG reply is kept for answering a retransmission of its request. Default
    /// 30 s, well beyond Kamailio's retransmission window (timeout × retries, a few seconds).
    pub reply_cache_ttl: Duration,
    /// Upper bound on the bytes held by the reply cache; the oldest replies go first.
    pub reply_cache_max_bytes: usize,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            media_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_min: 30000,
            port_max: 39999,
            port_quarantine: Duration::from_secs(30),
            max_sessions: 4000,
            max_offer_rate: None,
            no_media_timeout: Duration::from_secs(60),
            max_duration: None,
            unanswered_offer_timeout: Duration::from_secs(300),
            delete_delay: Duration::ZERO,
            reply_cache_ttl: Duration::from_secs(30),
            reply_cache_max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl CoreConfig {
    /// Checks every field; the error names the field and says what would be accepted.
    pub fn validate(&self) -> Result<(), CoreError> {
        let invalid =
            |field: &'static str, reason: String| CoreError::InvalidConfig { field, reason };
        if self.media_address.is_unspecified() || self.media_address.is_multicast() {
            return Err(invalid(
                "media_address",
                format!(
                    "is {}; it must be a unicast address that peers can send to",
                    self.media_address
                ),
            ));
        }
        if self.port_min == 0 {
            return Err(invalid("port_min", "must be at least 1".into()));
        }
        if self.port_max <= self.port_min {
            return Err(invalid(
                "port_max",
                format!(
                    "({}) must be greater than port_min ({})",
                    self.port_max, self.port_min
                ),
            ));
        }
        if crate::ports::pair_count(self.port_min, self.port_max) == 0 {
            return Err(invalid(
                "port_max",
                format!(
                    "range {}-{} holds no even RTP port with its RTCP port; widen it",
                    self.port_min, self.port_max
                ),
            ));
        }
        if self.max_sessions == 0 {
            return Err(invalid("max_sessions", "must be at least 1".into()));
        }
        if self.max_offer_rate == Some(0) {
            return Err(invalid(
                "max_offer_rate",
                "must be at least 1 or unset".into(),
            ));
        }
        if self.max_sessions == 0 {
            return Err(invalid(
                "max_sessions",
                "must be at least 1 (0 would refuse every call)".into(),
            ));
        }
        if self.no_media_timeout.is_zero() {
            return Err(invalid(
                "no_media_timeout",
                "must be longer than zero".into(),
            ));
        }
        if self.max_duration.is_some_and(|d| d.is_zero()) {
            return Err(invalid(
                "max_duration",
                "must be longer than zero or unset".into(),
            ));
        }
        if self.unanswered_offer_timeout.is_zero() {
            return Err(invalid(
                "unanswered_offer_timeout",
                "must be longer than zero".into(),
            ));
        }
        for (field, d) in [
            ("port_quarantine", Some(self.port_quarantine)),
            ("no_media_timeout", Some(self.no_media_timeout)),
            ("max_duration", self.max_duration),
            (
                "unanswered_offer_timeout",
                Some(self.unanswered_offer_timeout),
            ),
            ("delete_delay", Some(self.delete_delay)),
            ("reply_cache_ttl", Some(self.reply_cache_ttl)),
        ] {
            if d.is_some_and(|d| d > MAX_TIMER) {
                return Err(invalid(field, "must not exceed 365 days".into()));
            }
        }
        if self.reply_cache_ttl.is_zero() {
            return Err(invalid(
                "reply_cache_ttl",
                "must be longer than zero, or retransmitted offers would be executed twice".into(),
            ));
        }
        Ok(())
    }
}
