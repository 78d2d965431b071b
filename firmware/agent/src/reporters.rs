//! Periodic reporters: telemetry every `timers.telemetry_ms`, call records from the relay
//! every `timers.cdr_poll_ms`.

use std::sync::PoisonError;

use pop_agent_proto::RecordClass;
use pop_agent_proto::{
    EventKind, RecordBody, RelayCounters, ServiceHealth, SpoolCounters, Telemetry, UplinkState,
};
use serde_json::{json, Value};

use crate::agent::Shared;
use crate::records::cdr_from_relay;
use crate::services::{linkmon_events, linkmon_status, relay_query};
use crate::settings::AgentSettings;

/// Starts the reporter tasks.
pub fn spawn(shared: Shared) {
    let t = shared.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(AgentSettings::ms(t.settings.timers.telemetry_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut alarm_reported = false;
        loop {
            tick.tick().await;
            let t2 = t.clone();
            let alarm = tokio::task::spawn_blocking(move || telemetry_once(&t2))
                .await
                .unwrap_or(false);
            if alarm && !alarm_reported {
                let stats = t.outbox.with(|s| s.stats());
                t.outbox.event(EventKind::SpoolAlarm {
                    bytes: stats.bytes,
                    cap: t.settings.spool.max_bytes,
                });
            }
            alarm_reported = alarm;
        }
    });
    if shared.settings.linkmon_socket.is_some() {
        let s = shared.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(AgentSettings::ms(s.settings.timers.cdr_poll_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let s2 = s.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    if let Err(e) = collect_link_events(&s2) {
                        tracing::debug!(error = %e, "link events not collected this time");
                    }
                })
                .await;
            }
        });
    }
    if shared.settings.relay_socket.is_some() {
        tokio::spawn(async move {
            let mut tick =
                tokio::time::interval(AgentSettings::ms(shared.settings.timers.cdr_poll_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let dedup = std::sync::Arc::new(std::sync::Mutex::new(CdrDedup::default()));
            loop {
                tick.tick().await;
                let s = shared.clone();
                let d = dedup.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    let mut d = d.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Err(e) = collect_cdrs(&s, &mut d) {
                        tracing::debug!(error = %e, "call records not collected this time");
                    }
                })
                .await;
            }
        });
    }
}

/// Builds and spools one telemetry record; returns the spool alarm.
pub fn telemetry_once(shared: &Shared) -> bool {
    let mut services = Vec::new();
    let mut relay = None;
    if let Some(p) = &shared.settings.relay_socket {
        match relay_query(p, &json!({"op": "status"})) {
            Ok(s) => {
                let alive = s["workers_alive"] == true;
                services.push(ServiceHealth {
                    name: "relay".into(),
                    healthy: alive,
                    detail: format!("sessions={}", s["sessions"]),
                });
                relay = Some(RelayCounters {
                    sessions: s["sessions"].as_u64().unwrap_or(0),
                    packets_forwarded: s["totals"]["forwarded_packets"].as_u64().unwrap_or(0),
                    bytes_forwarded: s["totals"]["forwarded_bytes"].as_u64().unwrap_or(0),
                    packets_dropped: [
                        "dropped_malformed",
                        "dropped_spoofed",
                        "dropped_no_destination",
                    ]
                    .iter()
                    .map(|k| s["totals"][*k].as_u64().unwrap_or(0))
                    .sum(),
                });
            }
            Err(e) => services.push(ServiceHealth {
                name: "relay".into(),
                healthy: false,
                detail: format!("control socket: {e}"),
            }),
        }
    }
    let mut uplinks = Vec::new();
    if let Some(p) = &shared.settings.linkmon_socket {
        match linkmon_status(p) {
            Ok(s) => {
                let active = s["active"].as_str().map(str::to_owned);
                services.push(ServiceHealth {
                    name: "linkmon".into(),
                    healthy: s["all_down"] != true && active.is_some(),
                    detail: format!("active={}", active.as_deref().unwrap_or("none")),
                });
                for u in s["uplinks"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let name = u["name"].as_str().unwrap_or("?").to_owned();
                    uplinks.push(UplinkState {
                        active: active.as_deref() == Some(name.as_str()),
                        state: uplink_state(u),
                        name,
                    });
                }
            }
            Err(e) => services.push(ServiceHealth {
                name: "linkmon".into(),
                healthy: false,
                detail: format!("status socket: {e}"),
            }),
        }
    }
    let stats = shared.outbox.with(|s| s.stats());
    let config_version = shared.running_version();
    shared.outbox.push_or_log(&RecordBody::Telemetry(Telemetry {
        config_version,
        uptime_s: shared.started.elapsed().as_secs(),
        services,
        uplinks,
        relay,
        spool: SpoolCounters {
            bytes: stats.bytes,
            pending_records: stats.pending_records,
            telemetry_dropped: stats.telemetry_dropped,
            alarm: stats.alarm,
        },
    }));
    stats.alarm
}

fn uplink_state(u: &Value) -> String {
    for key in ["verdict", "state"] {
        if let Some(s) = u[key].as_str() {
            return s.to_owned();
        }
    }
    if let Some(b) = u["usable"].as_bool() {
        return if b { "up" } else { "down" }.into();
    }
    "unknown".into()
}

/// Where reading the relay's call records got to: the relay's epoch and the last sequence
/// number spooled. Persisted after each batch is durable in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
struct Cursor {
    epoch: u64,
    seq: u64,
}

/// Call pseudonyms of CDRs still in the spool when the agent started: a CDR spooled just
/// before a crash, whose cursor update did not make it to disk, is read from the relay again
/// and must not be spooled twice.
#[derive(Debug, Default)]
pub struct CdrDedup {
    pending_at_start: Option<std::collections::HashSet<[u8; 16]>>,
}

fn collect_cdrs(shared: &Shared, dedup: &mut CdrDedup) -> Result<(), String> {
    let Some(socket) = &shared.settings.relay_socket else {
        return Ok(());
    };
    if dedup.pending_at_start.is_none() {
        let pending = shared
            .outbox
            .with(|s| s.pending_after(0, usize::MAX))
            .map_err(|e| e.to_string())?;
        dedup.pending_at_start = Some(
            pending
                .iter()
                .filter_map(|r| match postcard::from_bytes::<RecordBody>(&r.body) {
                    Ok(RecordBody::Cdr(c)) => Some(c.call),
                    _ => None,
                })
                .collect(),
        );
    }
    let path = shared.settings.state_dir.join("relay-cursor.json");
    let mut cursor: Cursor = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    for _ in 0..100 {
        let status = relay_query(socket, &json!({"op": "status"})).map_err(|e| e.to_string())?;
        let epoch = status["epoch"].as_u64().unwrap_or(0);
        if epoch != cursor.epoch {
            // The relay restarted: its numbering starts again.
            cursor = Cursor { epoch, seq: 0 };
        }
        let reply = relay_query(socket, &json!({"op": "records", "after": cursor.seq}))
            .map_err(|e| e.to_string())?;
        if reply["epoch"].as_u64() != Some(epoch) {
            continue; // restarted between the two queries; start over
        }
        let records = reply["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return Ok(());
        }
        let mut bodies = Vec::with_capacity(records.len());
        for r in &records {
            let cdr = cdr_from_relay(&shared.pseudonyms, r);
            cursor.seq = r["seq"].as_u64().unwrap_or(cursor.seq);
            let already = dedup
                .pending_at_start
                .as_ref()
                .is_some_and(|set| set.contains(&cdr.call));
            if !already {
                bodies
                    .push(postcard::to_allocvec(&RecordBody::Cdr(cdr)).map_err(|e| e.to_string())?);
            }
        }
        let cursor_bytes = serde_json::to_vec(&cursor).map_err(|e| e.to_string())?;
        // Spool and cursor under the spool's lock: the connection cannot send (so the control
        // plane cannot acknowledge and the spool cannot delete) these records before the
        // cursor is durable. A crash in between leaves them pending, where `dedup` finds them.
        shared
            .outbox
            .push_with_cursor(RecordClass::Cdr, &bodies, &path, &cursor_bytes)?;
        // The next `records` query acknowledges these to the relay, which then forgets them.
        let _ = relay_query(socket, &json!({"op": "records", "after": cursor.seq}));
    }
    Ok(())
}

/// Failovers and failbacks from the link monitor's event history become events. The cursor
/// (the decision time of the last one spooled) is written with them under the spool's lock,
/// as for call records, so a crash neither loses nor repeats one.
fn collect_link_events(shared: &Shared) -> Result<(), String> {
    let Some(socket) = &shared.settings.linkmon_socket else {
        return Ok(());
    };
    let path = shared.settings.state_dir.join("linkmon-cursor.json");
    let cursor: f64 = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(0.0);
    let events = linkmon_events(socket).map_err(|e| e.to_string())?;
    let mut last = cursor;
    let mut bodies = Vec::new();
    for e in &events {
        let decided = e["decided_ms"].as_f64().unwrap_or(0.0);
        if e["event"] != "switch" || decided <= cursor {
            continue;
        }
        last = last.max(decided);
        let text = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
        let kind = match e["kind"].as_str() {
            Some("failover") => {
                let switched = e["switched_ms"].as_f64().unwrap_or(decided);
                let seen = e["fault_seen_ms"].as_f64().unwrap_or(decided);
                EventKind::Failover {
                    from: text("from"),
                    to: text("to"),
                    reason: text("reason"),
                    switch_us: ((switched - seen).max(0.0) * 1000.0) as u64,
                }
            }
            Some("failback") => EventKind::Failback {
                from: text("from"),
                to: text("to"),
            },
            _ => continue,
        };
        let body = RecordBody::Event(pop_agent_proto::Event {
            at_unix_ms: decided as u64,
            kind,
        });
        bodies.push(postcard::to_allocvec(&body).map_err(|e| e.to_string())?);
    }
    if last <= cursor {
        return Ok(());
    }
    let cursor_bytes = serde_json::to_vec(&last).map_err(|e| e.to_string())?;
    shared
        .outbox
        .push_with_cursor(RecordClass::Event, &bodies, &path, &cursor_bytes)?;
    Ok(())
}
