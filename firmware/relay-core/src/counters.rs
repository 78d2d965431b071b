//! Aggregate counters of the relay core, for telemetry and the NG `statistics` command.

use std::collections::BTreeMap;

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CloseReason {
    /// `delete` (immediately or after its delete delay).
    Deleted,
    /// No packet in any direction for the no-media timeout.
    NoMedia,
    /// The maximum call duration was reached.
    MaxDuration,
    /// The offer was never answered in time.
    UnansweredOffer,
}

/// Counters since start. Plain numbers: the core is single-threaded, the service copies them out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CoreCounters {
    /// Calls created by an initial offer.
    pub sessions_created: u64,
    /// Calls ended by `delete`.
    pub sessions_deleted: u64,
    /// Calls closed by the no-media timeout.
    pub sessions_timed_out_no_media: u64,
    /// Calls closed by the maximum duration.
    pub sessions_timed_out_max_duration: u64,
    /// Calls closed because the offer was never answered.
    pub sessions_timed_out_unanswered: u64,
    /// New calls refused with `load limit` (session or offer-rate limit).
    pub sessions_rejected_load_limit: u64,
    /// Datagrams received (with or without a cookie).
    pub datagrams: u64,
    /// Datagrams without a cookie: nothing can be answered, they are dropped.
    pub datagrams_without_cookie: u64,
    /// Retransmissions answered from the reply cache.
    pub reply_cache_hits: u64,
    /// Requests that reused a cached cookie with a different body (executed anew).
    pub reply_cache_cookie_reused: u64,
    /// `ping` requests.
    pub pings: u64,
    /// `offer` requests.
    pub offers: u64,
    /// `answer` requests.
    pub answers: u64,
    /// `delete` requests.
    pub deletes: u64,
    /// `query` requests.
    pub queries: u64,
    /// `list` requests.
    pub lists: u64,
    /// `statistics` requests.
    pub statistics: u64,
    /// Error replies sent, by [`crate::CoreError::reason_label`].
    pub errors_by_reason: BTreeMap<&'static str, u64>,
    /// Request keys and flags this relay does not implement (accepted and ignored).
    pub unknown_keys_ignored: u64,
    /// Ports that turned out to be bound by another process and were skipped.
    pub ports_bind_in_use: u64,
    /// `stream_stats` calls made by the no-media sweep (to watch its cost).
    pub media_stats_polls: u64,
    /// Data-plane operations that failed during teardown (stream already gone).
    pub media_teardown_errors: u64,
    /// Port pairs currently handed out.
    pub ports_in_use: u64,
    /// Port pairs in quarantine.
    pub ports_quarantined: u64,
    /// Port pairs ready for use.
    pub ports_free: u64,
    /// Replies held by the reply cache.
    pub reply_cache_entries: u64,
    /// Bytes held by the reply cache.
    pub reply_cache_bytes: u64,
    /// Call records dropped because the service did not take them in time.
    pub call_records_dropped: u64,
}

impl CoreCounters {
    /// Total error replies.
    pub fn errors_total(&self) -> u64 {
        self.errors_by_reason.values().sum()
    }

    /// Total calls closed by any timeout.
    pub fn sessions_timed_out(&self) -> u64 {
        self.sessions_timed_out_no_media
            + self.sessions_timed_out_max_duration
            + self.sessions_timed_out_unanswered
    }

    pub(crate) fn count_close(&mut self, reason: CloseReason) {
        let c = match reason {
            CloseReason::Deleted => &mut self.sessions_deleted,
            CloseReason::NoMedia => &mut self.sessions_timed_out_no_media,
            CloseReason::MaxDuration => &mut self.sessions_timed_out_max_duration,
            CloseReason::UnansweredOffer => &mut self.sessions_timed_out_unanswered,
        };
        *c += 1;
    }

    pub(crate) fn count_error(&mut self, label: &'static str) {
        *self.errors_by_reason.entry(label).or_insert(0) += 1;
    }
}
