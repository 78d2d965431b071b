//! The relay's local control socket: how `popd agent` reads the relay's health, counters and
//! call records, and hands it the relay part of a configuration push.
//!
//! A Unix stream socket (mode 0600: call records carry call-ids and tags). The client writes
//! one JSON object per line and reads one JSON object per line back, in order:
//!
//! - `{"op":"status"}` → `{"ok":true,"epoch":E,"sessions":N,"workers_alive":B,"limits":{..},
//!   "counters":{..},"totals":{..},"last_record_seq":S}`
//! - `{"op":"apply","limits":{"max_sessions":N,"no_media_secs":N,"max_duration_secs":N,
//!   "unanswered_offer_secs":N}}` → `{"ok":true}` or `{"ok":false,"field":F,"reason":R}`
//!   (`max_duration_secs` 0 means no limit, as in `relay.toml`)
//! - `{"op":"records","after":S}` → `{"ok":true,"epoch":E,"records":[{..}]}`: call records with
//!   a sequence number above `S`, oldest first (at most [`MAX_RECORDS_PER_REPLY`]). Asking for
//!   records after `S` also acknowledges every record up to `S`: those are deleted, so the relay
//!   holds personal data (call-ids, metadata) only until the agent has spooled it.
//!
//! `epoch` changes when the relay restarts (sequence numbers start again at 1), so a reader
//! that sees a new epoch starts from 0. Records are kept for [`JOURNAL_CAPACITY`] calls: the
//! agent reads them every second and spools them, so they are not lost when the relay is busy,
//! only when the agent is away for longer than that many calls (counted in `records_dropped`).
//!
//! The socket task never touches the core: requests travel to the control loop over a channel,
//! so a slow client cannot delay NG requests or timers.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pop_relay_core::{CloseReason, EndedCall, LiveLimits};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

/// Call records kept for readers.
pub const JOURNAL_CAPACITY: usize = 20_000;
/// Records in one `records` reply, so a reply stays small.
pub const MAX_RECORDS_PER_REPLY: usize = 1000;
/// Longest request line accepted.
const MAX_LINE: usize = 64 * 1024;

/// A request from the control socket.
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ControlRequest {
    /// Health, limits and counters.
    Status,
    /// Change the live limits.
    Apply {
        /// The new limits.
        limits: LimitsJson,
    },
    /// Call records after a sequence number.
    Records {
        /// Last sequence number the reader has.
        after: u64,
    },
}

/// The live limits as they travel in JSON (seconds, 0 = no maximum duration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsJson {
    /// Concurrent calls.
    pub max_sessions: usize,
    /// No-media timeout.
    pub no_media_secs: u64,
    /// Maximum call duration (0: none).
    pub max_duration_secs: u64,
    /// Unanswered-offer timeout.
    pub unanswered_offer_secs: u64,
}

impl LimitsJson {
    /// The core's form.
    pub fn to_live(self) -> LiveLimits {
        LiveLimits {
            max_sessions: self.max_sessions,
            no_media_timeout: Duration::from_secs(self.no_media_secs),
            max_duration: (self.max_duration_secs > 0)
                .then(|| Duration::from_secs(self.max_duration_secs)),
            unanswered_offer_timeout: Duration::from_secs(self.unanswered_offer_secs),
        }
    }

    /// From the core's form.
    pub fn from_live(l: &LiveLimits) -> Self {
        LimitsJson {
            max_sessions: l.max_sessions,
            no_media_secs: l.no_media_timeout.as_secs(),
            max_duration_secs: l.max_duration.map_or(0, |d| d.as_secs()),
            unanswered_offer_secs: l.unanswered_offer_timeout.as_secs(),
        }
    }
}

/// One call record as the socket reports it. Times in ms since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecordJson {
    /// Sequence number within this epoch.
    pub seq: u64,
    /// SIP Call-ID (lossy UTF-8).
    pub call_id: String,
    /// From-tag.
    pub from_tag: Option<String>,
    /// To-tag.
    pub to_tag: Option<String>,
    /// The proxy's `metadata` string, if any.
    pub metadata: Option<String>,
    /// Offer time.
    pub started_unix_ms: u64,
    /// First answer, if any.
    pub answered_unix_ms: Option<u64>,
    /// End time.
    pub ended_unix_ms: u64,
    /// Packets forwarded.
    pub packets: u64,
    /// Bytes forwarded.
    pub bytes: u64,
    /// `deleted`, `no-media`, `max-duration` or `unanswered`.
    pub reason: String,
}

/// A request with its reply channel.
#[derive(Debug)]
pub struct PendingRequest {
    /// The request.
    pub request: ControlRequest,
    /// Where the control loop answers.
    pub reply: oneshot::Sender<serde_json::Value>,
}

/// Maps the monotonic clock of the core to wall-clock time for records.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    instant: Instant,
    unix_ms: u64,
}

impl WallClock {
    /// Pins `Instant::now()` to the current wall-clock time.
    pub fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        WallClock {
            instant: Instant::now(),
            unix_ms,
        }
    }

    /// Wall-clock ms of `t`.
    pub fn unix_ms(&self, t: Instant) -> u64 {
        match t.checked_duration_since(self.instant) {
            Some(after) => self.unix_ms.saturating_add(millis(after)),
            None => self
                .unix_ms
                .saturating_sub(millis(self.instant.saturating_duration_since(t))),
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Call records of this relay run, numbered.
#[derive(Debug)]
pub struct CallJournal {
    records: VecDeque<CallRecordJson>,
    next_seq: u64,
    /// Records pushed out before anyone read them.
    pub dropped: u64,
    clock: WallClock,
}

impl CallJournal {
    /// An empty journal using `clock` for wall-clock times.
    pub fn new(clock: WallClock) -> Self {
        CallJournal {
            records: VecDeque::new(),
            next_seq: 1,
            dropped: 0,
            clock,
        }
    }

    /// Adds the calls the core reports as ended.
    pub fn extend(&mut self, ended: Vec<EndedCall>) {
        for call in ended {
            if self.records.len() >= JOURNAL_CAPACITY {
                self.records.pop_front();
                self.dropped += 1;
            }
            let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
            self.records.push_back(CallRecordJson {
                seq: self.next_seq,
                call_id: text(&call.call_id),
                from_tag: call.from_tag.as_deref().map(text),
                to_tag: call.to_tag.as_deref().map(text),
                metadata: call.metadata.as_deref().map(text),
                started_unix_ms: self.clock.unix_ms(call.created),
                answered_unix_ms: call.answered.map(|t| self.clock.unix_ms(t)),
                ended_unix_ms: self.clock.unix_ms(call.ended),
                packets: call.packets,
                bytes: call.bytes,
                reason: reason_name(call.reason).into(),
            });
            self.next_seq += 1;
        }
    }

    /// Highest sequence number given out (0: none yet).
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Forgets records up to `upto` (the reader has them), then returns records after it,
    /// oldest first, at most [`MAX_RECORDS_PER_REPLY`].
    pub fn acknowledge_and_read(&mut self, upto: u64) -> Vec<CallRecordJson> {
        while self.records.front().is_some_and(|r| r.seq <= upto) {
            self.records.pop_front();
        }
        self.after(upto)
    }

    /// Records after `after`, oldest first, at most [`MAX_RECORDS_PER_REPLY`].
    pub fn after(&self, after: u64) -> Vec<CallRecordJson> {
        self.records
            .iter()
            .filter(|r| r.seq > after)
            .take(MAX_RECORDS_PER_REPLY)
            .cloned()
            .collect()
    }
}

fn reason_name(r: CloseReason) -> &'static str {
    match r {
        CloseReason::Deleted => "deleted",
        CloseReason::NoMedia => "no-media",
        CloseReason::MaxDuration => "max-duration",
        CloseReason::UnansweredOffer => "unanswered",
    }
}

/// Binds the socket (replacing a stale one), mode 0600, and serves it until the runtime stops.
pub fn start(
    path: &Path,
    requests: mpsc::Sender<PendingRequest>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    let path: PathBuf = path.to_owned();
    Ok(tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, requests.clone()));
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }))
}

async fn serve(stream: UnixStream, requests: mpsc::Sender<PendingRequest>) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    loop {
        line.clear();
        let mut limited = (&mut lines).take(MAX_LINE as u64 + 1);
        match limited.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if line.len() > MAX_LINE {
            let _ = write
                .write_all(b"{\"ok\":false,\"reason\":\"request line too long\"}\n")
                .await;
            return;
        }
        let reply = match serde_json::from_str::<ControlRequest>(line.trim()) {
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if requests
                    .send(PendingRequest { request, reply: tx })
                    .await
                    .is_err()
                {
                    return;
                }
                match rx.await {
                    Ok(v) => v,
                    Err(_) => return,
                }
            }
            Err(e) => serde_json::json!({"ok": false, "reason": format!("bad request: {e}")}),
        };
        let mut out = reply.to_string();
        out.push('\n');
        if write.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A blocking client for the socket (the agent and tests use it).
pub fn query(
    path: &Path,
    request: &serde_json::Value,
    timeout: Duration,
) -> std::io::Result<serde_json::Value> {
    use std::io::{BufRead, Write};
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut line = request.to_string();
    line.push('\n');
    stream.write_all(line.as_bytes())?;
    let mut reader = std::io::BufReader::new(stream);
    let mut reply = String::new();
    reader.read_line(&mut reply)?;
    serde_json::from_str(&reply)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_unknown_ops_are_refused() {
        assert!(matches!(
            serde_json::from_str::<ControlRequest>(r#"{"op":"status"}"#),
            Ok(ControlRequest::Status)
        ));
        assert!(matches!(
            serde_json::from_str::<ControlRequest>(r#"{"op":"records","after":7}"#),
            Ok(ControlRequest::Records { after: 7 })
        ));
        assert!(serde_json::from_str::<ControlRequest>(r#"{"op":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<ControlRequest>(
            r#"{"op":"apply","limits":{"max_sessions":1}}"#
        )
        .is_err());
    }

    #[test]
    fn limits_round_trip_with_zero_meaning_no_maximum_duration() {
        let j = LimitsJson {
            max_sessions: 10,
            no_media_secs: 30,
            max_duration_secs: 0,
            unanswered_offer_secs: 90,
        };
        let live = j.to_live();
        assert_eq!(live.max_duration, None);
        assert_eq!(LimitsJson::from_live(&live), j);
    }

    #[test]
    fn journal_numbers_records_and_drops_the_oldest_beyond_capacity() {
        let clock = WallClock::now();
        let mut j = CallJournal::new(clock);
        let t = Instant::now();
        let call = |n: usize| EndedCall {
            call_id: format!("c{n}").into_bytes(),
            from_tag: Some(b"a".to_vec()),
            to_tag: None,
            metadata: None,
            created: t,
            answered: None,
            ended: t + Duration::from_secs(5),
            packets: 0,
            bytes: 0,
            reason: CloseReason::UnansweredOffer,
        };
        j.extend((0..JOURNAL_CAPACITY + 3).map(call).collect());
        assert_eq!(j.last_seq(), (JOURNAL_CAPACITY + 3) as u64);
        assert_eq!(j.dropped, 3);
        let first = j.after(0);
        assert_eq!(first.len(), MAX_RECORDS_PER_REPLY);
        assert_eq!(first[0].seq, 4, "the three oldest were dropped");
        assert_eq!(first[0].ended_unix_ms - first[0].started_unix_ms, 5000);
        assert!(j.after(j.last_seq()).is_empty());
        let rest = j.acknowledge_and_read(10);
        assert_eq!(rest[0].seq, 11);
        assert!(
            j.after(0).iter().all(|r| r.seq > 10),
            "acknowledged records are gone"
        );
    }
}
