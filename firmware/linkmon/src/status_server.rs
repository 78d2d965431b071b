//! The local status socket: a Unix stream socket served by its own thread from a snapshot the
//! main loop publishes, so a slow or stuck client can never stall failover.
//!
//! Protocol: the client writes one line, `status`, `events` or `apply <json>`, and reads JSON
//! lines until EOF: `status` → one [`StatusReport`] object; `events` → one [`LinkEvent`] object
//! per line, oldest first; `apply {"probe_miss_threshold":..,"hold_down_ms":..,..}` (the
//! `[selector]` fields) → `{"ok":true}` once validated — the main loop takes the new tuning
//! within one loop turn — or `{"ok":false,"reason":..}` naming the field. `popd agent` uses
//! `apply` to hand linkmon its part of a configuration push.

use std::io::{BufRead, BufReader, ErrorKind, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::history::{LinkEvent, StatusReport};
use crate::LinkmonError;

/// What the main loop publishes.
#[derive(Debug, Default)]
pub struct Published {
    /// Latest status.
    pub status: StatusReport,
    /// Event history, oldest first.
    pub events: Vec<LinkEvent>,
    /// A validated tuning from `apply`, for the main loop to take.
    pub pending_tuning: Option<pop_linkmon_core::SelectorTuning>,
}

/// Shared between the loop (writer) and the server thread (reader).
pub type Shared = Arc<Mutex<Published>>;

/// A running status server; stops and removes its socket on drop.
#[derive(Debug)]
pub struct StatusServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const CLIENT_TIMEOUT: Duration = Duration::from_millis(500);

impl StatusServer {
    /// Binds `path` (replacing a stale socket) and serves `shared`.
    pub fn start(path: &Path, shared: Shared) -> Result<Self, LinkmonError> {
        let err = |source| LinkmonError::StatusSocket {
            path: path.to_owned(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        listener.set_nonblocking(true).map_err(err)?;
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("linkmon-status".into())
                .spawn(move || serve(listener, shared, stop))
                .map_err(err)?
        };
        Ok(Self {
            path: path.to_owned(),
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, shared: Shared, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(stream, &shared) {
                    tracing::debug!(error = %e, "status client dropped");
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!(error = %e, "status socket accept failed");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answer(stream: UnixStream, shared: &Shared) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = String::new();
    // At most one line, short enough for an `apply`.
    BufReader::new(std::io::Read::take(&stream, 4096)).read_line(&mut line)?;
    let mut out = String::new();
    {
        let mut p = shared.lock().unwrap_or_else(PoisonError::into_inner);
        match line.trim() {
            "status" => push_json(&mut out, &p.status),
            "events" => {
                for e in &p.events {
                    push_json(&mut out, e);
                }
            }
            apply if apply.starts_with("apply ") => {
                let reply = match crate::config::parse_tuning(apply.trim_start_matches("apply ")) {
                    Ok(t) => {
                        p.pending_tuning = Some(t);
                        serde_json::json!({"ok": true})
                    }
                    Err(reason) => serde_json::json!({"ok": false, "reason": reason}),
                };
                push_json(&mut out, &reply);
            }
            other => {
                let msg = serde_json::json!({
                    "error": format!("unknown request {:?}; send `status` or `events`", other.chars().take(32).collect::<String>())
                });
                push_json(&mut out, &msg);
            }
        }
    }
    (&stream).write_all(out.as_bytes())
}

fn push_json(out: &mut String, v: &impl serde::Serialize) {
    if let Ok(s) = serde_json::to_string(v) {
        out.push_str(&s);
        out.push('\n');
    }
}

/// A client for the status socket (used by tests and `popctl`).
pub fn query(path: &Path, request: &str) -> std::io::Result<Vec<serde_json::Value>> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(request.as_bytes())?;
    stream.write_all(b"\n")?;
    let mut out = Vec::new();
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if let Ok(v) = serde_json::from_str(&line) {
            out.push(v);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_status_and_events_as_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lm.sock");
        let shared: Shared = Arc::default();
        {
            let mut p = shared.lock().unwrap();
            p.status.active = Some("backup".into());
            p.events.push(LinkEvent::AllDown {
                keep: "primary".into(),
                at_ms: 1.0,
            });
            p.events.push(LinkEvent::AllDownCleared { at_ms: 2.0 });
        }
        let shared_for_test = shared.clone();
        let server = StatusServer::start(&path, shared).unwrap();
        let st = query(&path, "status").unwrap();
        assert_eq!(st.len(), 1);
        assert_eq!(st[0]["active"], "backup");
        let ev = query(&path, "events").unwrap();
        assert_eq!(ev.len(), 2);
        assert_eq!(ev[0]["event"], "all_down");
        let bad = query(&path, "reboot").unwrap();
        assert!(bad[0]["error"]
            .as_str()
            .unwrap()
            .contains("unknown request"));
        // `apply`: a valid tuning is handed to the main loop, a bad one refused naming the field.
        let ok = query(
            &path,
            r#"apply {"probe_miss_threshold":2,"hold_down_ms":4000}"#,
        )
        .unwrap();
        assert_eq!(ok[0]["ok"], true, "{ok:?}");
        let pending = shared_for_test.lock().unwrap().pending_tuning;
        let pending = pending.expect("handed to the loop");
        assert_eq!(pending.probe_miss_threshold, 2);
        assert_eq!(pending.hold_down, Duration::from_millis(4000));
        let bad = query(&path, r#"apply {"probe_miss_threshold":0}"#).unwrap();
        assert_eq!(bad[0]["ok"], false);
        assert!(
            bad[0]["reason"]
                .as_str()
                .unwrap()
                .contains("probe_miss_threshold"),
            "{bad:?}"
        );
        let unknown = query(&path, r#"apply {"hold_down":1}"#).unwrap();
        assert!(
            unknown[0]["reason"].as_str().unwrap().contains("hold_down"),
            "{unknown:?}"
        );
        drop(server);
        assert!(!path.exists(), "socket left behind");
    }
}
