//! Turning what happens into spooled records: telemetry, events, CDRs and audit records.
//! Audit records also go to the journal (through `tracing`, which `popd` sends to journald
//! with `tracing-journald`) with structured fields.

use std::sync::{Arc, Mutex, PoisonError};

use pop_agent_proto::{Audit, Cdr, Event, EventKind, RecordBody};
use pop_spool::{Spool, SpoolError};
use tokio::sync::Notify;

use crate::identity::unix_now_ms;
use crate::pseudonym::{parties_from_metadata, Pseudonymiser};

/// The spool, shared by the producers and the connection that drains it.
#[derive(Debug, Clone)]
pub struct Outbox {
    spool: Arc<Mutex<Spool>>,
    /// Woken whenever a record is appended.
    pub appended: Arc<Notify>,
}

impl Outbox {
    /// Wraps an open spool.
    pub fn new(spool: Spool) -> Self {
        Outbox {
            spool: Arc::new(Mutex::new(spool)),
            appended: Arc::new(Notify::new()),
        }
    }

    /// Runs `f` with the spool locked (a poisoned lock is taken over: the spool's own state is
    /// on disk and consistent after every call).
    pub fn with<R>(&self, f: impl FnOnce(&mut Spool) -> R) -> R {
        let mut guard = self.spool.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Appends one record; durable when it returns Ok.
    pub fn push(&self, body: &RecordBody) -> Result<u64, SpoolError> {
        let bytes = postcard::to_allocvec(body).map_err(|e| SpoolError::Corrupt {
            path: "<encode>".into(),
            reason: e.to_string(),
        })?;
        let id = self.with(|s| s.append(body.class(), unix_now_ms(), &bytes))?;
        self.appended.notify_one();
        Ok(id)
    }

    /// Appends already-encoded `bodies` of one class and writes `cursor` to `cursor_path`, both
    /// under the spool's lock: the connection cannot send (so the control plane cannot
    /// acknowledge and the spool cannot delete) these records before the cursor saying they were
    /// taken is durable. A crash in between leaves them pending, where the caller's start-up
    /// check finds them. Nothing is appended for an empty `bodies`; the cursor is still written.
    pub fn push_with_cursor(
        &self,
        class: pop_agent_proto::RecordClass,
        bodies: &[Vec<u8>],
        cursor_path: &std::path::Path,
        cursor: &[u8],
    ) -> Result<(), String> {
        self.with(|spool| -> Result<(), String> {
            let now = unix_now_ms();
            let batch: Vec<pop_spool::NewRecord<'_>> = bodies
                .iter()
                .map(|b| pop_spool::NewRecord {
                    class,
                    created_unix_ms: now,
                    body: b,
                })
                .collect();
            if !batch.is_empty() {
                spool.append_batch(&batch).map_err(|e| e.to_string())?;
            }
            crate::fsutil::write_atomic(cursor_path, cursor).map_err(|e| e.to_string())
        })?;
        self.appended.notify_one();
        Ok(())
    }

    /// Appends, logging a failure loudly (CDRs and audit records are never dropped silently:
    /// a refusal raises the spool alarm, reported in telemetry).
    pub fn push_or_log(&self, body: &RecordBody) {
        if let Err(e) = self.push(body) {
            match body {
                RecordBody::Telemetry(_) => tracing::debug!(error = %e, "telemetry not spooled"),
                _ => {
                    tracing::error!(class = ?body.class(), error = %e, "record could not be spooled")
                }
            }
        }
    }

    /// Spools an event.
    pub fn event(&self, kind: EventKind) {
        self.push_or_log(&RecordBody::Event(Event {
            at_unix_ms: unix_now_ms(),
            kind,
        }));
    }

    /// Spools an audit record and writes it to the journal.
    pub fn audit(&self, actor: &str, action: &str, detail: &str, outcome: &str) {
        tracing::info!(
            target: "audit",
            audit_actor = actor,
            audit_action = action,
            audit_detail = detail,
            audit_outcome = outcome,
            "audit: {action} by {actor}: {outcome}"
        );
        self.push_or_log(&RecordBody::Audit(Audit {
            at_unix_ms: unix_now_ms(),
            actor: actor.into(),
            action: action.into(),
            detail: detail.into(),
            outcome: outcome.into(),
        }));
    }
}

/// A CDR from a relay call record (the control socket's JSON): call-id and parties become
/// keyed pseudonyms; nothing readable about the parties leaves the relay.
pub fn cdr_from_relay(p: &Pseudonymiser, r: &serde_json::Value) -> Cdr {
    let text = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
    let mut call_key = text("call_id").into_bytes();
    call_key.push(0);
    call_key.extend_from_slice(text("from_tag").as_bytes());
    let (from, to) = parties_from_metadata(r["metadata"].as_str().unwrap_or_default());
    Cdr {
        call: p.call(&call_key),
        caller: from.map(|n| p.party(&n)),
        callee: to.map(|n| p.party(&n)),
        started_unix_ms: r["started_unix_ms"].as_u64().unwrap_or(0),
        ended_unix_ms: r["ended_unix_ms"].as_u64().unwrap_or(0),
        packets: r["packets"].as_u64().unwrap_or(0),
        end_reason: text("reason"),
    }
}

/// Removes phone numbers, SIP/tel URIs and digit runs (numbers, DTMF) from text that leaves
/// the box for diagnostics. Errs on the side of removing: any run of digits, spaces and
/// `+-()` holding 7 digits or more goes, as does every word containing `sip:`, `sips:` or `tel:`.
pub fn redact(text: &str) -> String {
    let is_sep = |c: char| c.is_whitespace() || matches!(c, '"' | ',' | '<' | '>' | '\'');
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let lower = word.to_ascii_lowercase();
        if ["sip:", "sips:", "tel:"].iter().any(|p| lower.contains(p)) {
            out.push_str("[redacted]");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if is_sep(c) {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    redact_digit_runs(&out)
}

fn redact_digit_runs(text: &str) -> String {
    let is_run_char = |c: char| c.is_ascii_digit() || "+-() ".contains(c);
    let mut out = String::with_capacity(text.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.chars().filter(char::is_ascii_digit).count() >= 7 {
            let lead = run.len() - run.trim_start().len();
            let trail = run.len() - run.trim_end().len();
            out.push_str(&run[..lead]);
            out.push_str("[redacted]");
            out.push_str(&run[run.len() - trail..]);
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in text.chars() {
        if is_run_char(c) {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdr_pseudonymises_the_call_and_the_parties() {
        let p = Pseudonymiser::new(&[3; 32]);
        let r = serde_json::json!({
            "seq": 1, "call_id": "abc@host", "from_tag": "t1", "metadata": "from:+15550001|to:+15550002",
            "started_unix_ms": 1000, "ended_unix_ms": 61000, "packets": 3000, "reason": "deleted"
        });
        let cdr = cdr_from_relay(&p, &r);
        assert_eq!(cdr.caller, Some(p.party("+15550001")));
        assert_eq!(cdr.callee, Some(p.party("sip:+15550002@x")));
        assert_eq!(cdr.ended_unix_ms - cdr.started_unix_ms, 60_000);
        let shown = format!("{cdr:?}");
        assert!(
            !shown.contains("15550001") && !shown.contains("abc@host"),
            "{shown}"
        );
    }

    #[test]
    fn redaction_removes_numbers_and_uris_but_keeps_counters() {
        let text =
            "caller sip:+15551230001@pop to +1 555 123 0002, dtmf 123456789 sessions=12 port 30000";
        let r = redact(text);
        assert!(
            !r.contains("15551230001") && !r.contains("123456789"),
            "{r}"
        );
        assert!(r.contains("sessions=12") && r.contains("30000"), "{r}");
    }
}
