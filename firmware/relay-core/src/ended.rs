//! Records of ended calls (for call detail records) and the live-tunable limits.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::counters::CloseReason;

/// Ended calls held until the service takes them; beyond this the oldest are dropped (and
/// counted). A service draining once a second never comes near it: it is 40 ended calls per
/// second above the default session limit's turnover.
pub const MAX_PENDING_ENDED_CALLS: usize = 16_384;

/// What the relay knows about a call that ended: enough for a call detail record.
///
/// No `Debug` of the identifiers: call-ids, tags and metadata can carry phone numbers.
#[derive(Clone, PartialEq, Eq)]
pub struct EndedCall {
    /// SIP Call-ID.
    pub call_id: Vec<u8>,
    /// From-tag of the offering side.
    pub from_tag: Option<Vec<u8>>,
    /// To-tag of the answering side, if it answered.
    pub to_tag: Option<Vec<u8>>,
    /// The last `metadata` string the proxy sent (bounded), where it names the parties.
    pub metadata: Option<Vec<u8>>,
    /// When the offer created the call.
    pub created: Instant,
    /// When it was first answered (`None`: never).
    pub answered: Option<Instant>,
    /// When it ended.
    pub ended: Instant,
    /// Packets forwarded in both directions over all its streams.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Why it ended.
    pub reason: CloseReason,
}

impl std::fmt::Debug for EndedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndedCall")
            .field(
                "duration",
                &self.ended.saturating_duration_since(self.created),
            )
            .field("answered", &self.answered.is_some())
            .field("packets", &self.packets)
            .field("reason", &self.reason)
            .finish_non_exhaustive()
    }
}

/// Bounded queue of [`EndedCall`]s.
#[derive(Debug, Default)]
pub(crate) struct EndedCalls {
    queue: VecDeque<EndedCall>,
    pub(crate) dropped: u64,
}

impl EndedCalls {
    pub(crate) fn push(&mut self, call: EndedCall) {
        if self.queue.len() >= MAX_PENDING_ENDED_CALLS {
            self.queue.pop_front();
            self.dropped += 1;
        }
        self.queue.push_back(call);
    }

    pub(crate) fn take(&mut self) -> Vec<EndedCall> {
        self.queue.drain(..).collect()
    }
}

/// The part of the configuration that can change while calls run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveLimits {
    /// See [`crate::CoreConfig::max_sessions`].
    pub max_sessions: usize,
    /// See [`crate::CoreConfig::no_media_timeout`].
    pub no_media_timeout: Duration,
    /// See [`crate::CoreConfig::max_duration`].
    pub max_duration: Option<Duration>,
    /// See [`crate::CoreConfig::unanswered_offer_timeout`].
    pub unanswered_offer_timeout: Duration,
}
