//! The soak: many session create/delete cycles with leak checks (open files, RSS, the relay's
//! own session and port counters over NG), then an overload after which every stream must
//! come back.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Result;
use crate::ng_client::{integer_leaves, session_specs, NgClient};
use crate::procstat::ProcSample;
use crate::relay_process::RelayProcess;
use crate::sdp_text::SdpOptions;
use crate::traffic::{
    self, EndpointSockets, NoObserver, Phase, PhaseRole, RecoveryReport, TrafficConfig,
};

/// Open files the relay may hold above baseline at the end (log rotation, lazily opened
/// files); a leak of one socket per session shows up as thousands.
pub const FD_TOLERANCE: u64 = 8;
/// RSS growth allowed at the end: allocator arenas keep some freed memory. A leak of even 100
/// bytes per cycle over 1 M cycles is 95 MiB, far above this.
pub const RSS_TOLERANCE_KIB: u64 = 8 * 1024;
/// Fraction of baseline RSS also allowed, for relays whose baseline is large.
pub const RSS_TOLERANCE_FRACTION: f64 = 0.10;

/// Soak settings.
#[derive(Debug, Clone)]
pub struct SoakPlan {
    /// Create/delete cycles to run.
    pub cycles: u64,
    /// Churn before the baseline is taken, so bounded caches (the relay's NG reply cache holds
    /// up to 4 MiB for 30 s) and allocator pools reach their working size first; growth after
    /// that is what a leak looks like.
    pub warmup: Duration,
    /// Sessions alive at once per batch.
    pub batch: usize,
    /// NG requests outstanding.
    pub window: usize,
    /// Wall-time bound for the cycles.
    pub max_duration: Duration,
    /// How long counters may take to return to baseline after the last delete.
    pub settle: Duration,
    /// Progress line interval.
    pub report_every: Duration,
    /// SDP options.
    pub sdp: SdpOptions,
    /// Sessions carrying media in the overload phase.
    pub overload_sessions: usize,
    /// Packets per stream per 20 ms during overload.
    pub overload_factor: u32,
    /// Length of the overload.
    pub overload: Duration,
    /// Load-generator sockets.
    pub loadgen_sockets: usize,
}

/// One periodic sample.
#[derive(Debug, Clone, Serialize)]
pub struct SoakSample {
    /// Cycles done.
    pub cycles: u64,
    /// Seconds since start.
    pub elapsed_s: f64,
    /// Relay resources.
    pub relay: ProcSample,
    /// Counters tracked from NG `statistics`.
    pub counters: Vec<(String, i64)>,
}

/// Leak-check outcome.
#[derive(Debug, Clone, Serialize)]
pub struct LeakCheck {
    /// Baseline sample (after a warm-up batch).
    pub baseline: SoakSample,
    /// Final sample (after settling).
    pub end: SoakSample,
    /// Problems found; empty means no leak.
    pub leaks: Vec<String>,
}

/// The soak's result.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Cycles asked for.
    pub cycles_planned: u64,
    /// Cycles done (fewer when the time bound hit).
    pub cycles_done: u64,
    /// Create+delete cycles per second.
    pub cycles_per_s: f64,
    /// Periodic samples.
    pub samples: Vec<SoakSample>,
    /// Leak check.
    pub leak_check: LeakCheck,
    /// Recovery after overload.
    pub recovery: RecoveryReport,
    /// Offered rate during the overload phase, packets/s (as actually sent).
    pub overload_offered_pps: f64,
}

impl SoakReport {
    /// Whether the run found a leak or a stream that did not come back.
    pub fn failed(&self) -> bool {
        !self.leak_check.leaks.is_empty()
            || self.recovery.silent_streams > 0
            || self.recovery.late_streams > 0
    }

    /// Whether the time bound cut the cycles short.
    pub fn incomplete(&self) -> bool {
        self.cycles_done < self.cycles_planned
    }
}

/// Counters of a `statistics` reply that must return to baseline: current sessions and
/// anything about ports (popd reports its port pool under `statistics.pop.ports*`), never
/// rates or totals.
pub fn tracked_counters(stats: &pop_wire::bencode::Value) -> Vec<(String, i64)> {
    integer_leaves(stats)
        .into_iter()
        .filter(|(k, _)| {
            let leaf = k.rsplit('.').next().unwrap_or(k).to_ascii_lowercase();
            let current = k.contains("currentstatistics")
                && (leaf.starts_with("sessions") || leaf.contains("port"));
            let popd_ports = k.contains(".pop.") && leaf.starts_with("ports");
            (current || popd_ports) && !leaf.contains("rate")
        })
        .collect()
}

fn take_sample(
    relay: &mut RelayProcess,
    ng: &mut NgClient,
    cycles: u64,
    started: Instant,
) -> Result<SoakSample> {
    let stats = ng.statistics()?;
    Ok(SoakSample {
        cycles,
        elapsed_s: started.elapsed().as_secs_f64(),
        relay: relay.sample()?,
        counters: tracked_counters(&stats),
    })
}

/// Problems between a baseline and an end sample.
pub fn compare(baseline: &SoakSample, end: &SoakSample) -> Vec<String> {
    let mut leaks = Vec::new();
    if end.relay.fds > baseline.relay.fds + FD_TOLERANCE {
        leaks.push(format!(
            "open files grew from {} to {} (tolerance {FD_TOLERANCE})",
            baseline.relay.fds, end.relay.fds
        ));
    }
    let rss_allow =
        RSS_TOLERANCE_KIB.max((baseline.relay.rss_kib as f64 * RSS_TOLERANCE_FRACTION) as u64);
    if end.relay.rss_kib > baseline.relay.rss_kib + rss_allow {
        leaks.push(format!(
            "RSS grew from {} KiB to {} KiB (tolerance {rss_allow} KiB)",
            baseline.relay.rss_kib, end.relay.rss_kib
        ));
    }
    for (k, v) in &end.counters {
        let base = baseline
            .counters
            .iter()
            .find(|(b, _)| b == k)
            .map_or(0, |(_, b)| *b);
        if *v > base {
            leaks.push(format!(
                "NG statistics {k} is {v}, was {base} before the cycles"
            ));
        }
    }
    leaks
}

/// Runs the soak against a started relay. `progress` sees each periodic sample.
pub fn run(
    relay: &mut RelayProcess,
    plan: &SoakPlan,
    progress: &mut dyn FnMut(&SoakSample),
) -> Result<SoakReport> {
    let sockets = EndpointSockets::bind(plan.loadgen_sockets, 44_000)?;
    let batch = plan.batch.max(1);
    let endpoints: Vec<_> = (0..batch)
        .map(|i| {
            (
                sockets.endpoint_addr(2 * i),
                sockets.endpoint_addr(2 * i + 1),
            )
        })
        .collect();
    let mut ng = NgClient::connect(relay.ng()?)?;
    let tag = format!("soak{:x}", rand::random::<u32>());
    let started = Instant::now();

    // Warm-up churn (at least one batch, bounded in time), so bounded caches and allocator
    // pools are at their working size before the baseline is taken.
    let warm_started = Instant::now();
    let mut warm_round = 0u64;
    loop {
        let warm = session_specs(&format!("{tag}w{warm_round}"), 0, &endpoints);
        ng.setup_sessions(&warm, plan.window, plan.sdp)?;
        ng.delete_sessions(&warm, plan.window)?;
        warm_round += 1;
        if warm_started.elapsed() >= plan.warmup || warm_round >= 100_000 {
            break;
        }
    }
    let baseline = settle(relay, &mut ng, None, plan.settle, 0, started)?;
    progress(&baseline);

    let mut done = 0u64;
    let mut samples = vec![baseline.clone()];
    let mut last_report = Instant::now();
    let cycles_started = Instant::now();
    while done < plan.cycles && cycles_started.elapsed() < plan.max_duration {
        let n = (plan.cycles - done).min(batch as u64) as usize;
        let specs = session_specs(&tag, done, endpoints.get(..n).unwrap_or(&endpoints));
        ng.setup_sessions(&specs, plan.window, plan.sdp)?;
        ng.delete_sessions(&specs, plan.window)?;
        done += n as u64;
        if last_report.elapsed() >= plan.report_every {
            let s = take_sample(relay, &mut ng, done, started)?;
            progress(&s);
            samples.push(s);
            last_report = Instant::now();
        }
    }
    let cycles_per_s = done as f64 / cycles_started.elapsed().as_secs_f64().max(1e-9);
    let end = settle(relay, &mut ng, Some(&baseline), plan.settle, done, started)?;
    progress(&end);
    samples.push(end.clone());
    let leaks = compare(&baseline, &end);

    // Overload, then back to the normal rate: every stream must deliver again within 1 s.
    let n = plan.overload_sessions.max(1);
    let media_endpoints: Vec<_> = (0..n)
        .map(|i| {
            (
                sockets.endpoint_addr(2 * i),
                sockets.endpoint_addr(2 * i + 1),
            )
        })
        .collect();
    let specs = session_specs(&format!("{tag}o"), 0, &media_endpoints);
    let setup = ng.setup_sessions(&specs, plan.window, plan.sdp)?;
    let streams = traffic::session_streams(&setup.routes, 0);
    let phases = [
        Phase {
            role: PhaseRole::Warmup,
            duration: Duration::from_secs(1),
            packets_per_interval: 1,
        },
        Phase {
            role: PhaseRole::Measure, // measured so the report shows what "overload" offered
            duration: plan.overload,
            packets_per_interval: plan.overload_factor.max(2),
        },
        Phase {
            role: PhaseRole::Recovery,
            duration: Duration::from_secs(2),
            packets_per_interval: 1,
        },
    ];
    let t = traffic::run(
        &sockets,
        &streams,
        &phases,
        TrafficConfig::default(),
        &mut NoObserver,
    )?;
    relay.check_alive()?;
    ng.delete_sessions(&specs, plan.window)?;
    let recovery = t.recovery.unwrap_or(RecoveryReport {
        silent_streams: streams.len(),
        late_streams: 0,
        worst_first_packet_ms: f64::INFINITY,
        limit_ms: 1_000.0,
    });
    Ok(SoakReport {
        cycles_planned: plan.cycles,
        cycles_done: done,
        cycles_per_s,
        samples,
        leak_check: LeakCheck {
            baseline,
            end,
            leaks,
        },
        recovery,
        overload_offered_pps: t.offered_pps,
    })
}

/// Samples until the counters are back at `baseline` (or, without one, until two samples
/// agree), at most `limit`.
fn settle(
    relay: &mut RelayProcess,
    ng: &mut NgClient,
    baseline: Option<&SoakSample>,
    limit: Duration,
    cycles: u64,
    started: Instant,
) -> Result<SoakSample> {
    let deadline = Instant::now() + limit;
    let mut prev = take_sample(relay, ng, cycles, started)?;
    loop {
        let settled = match baseline {
            Some(b) => compare(b, &prev).is_empty(),
            None => prev
                .counters
                .iter()
                .all(|(k, v)| !k.contains("sessions") || *v == 0),
        };
        if settled || Instant::now() >= deadline {
            return Ok(prev);
        }
        std::thread::sleep(Duration::from_millis(500));
        prev = take_sample(relay, ng, cycles, started)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pop_wire::bencode::Value;

    fn sample(fds: u64, rss: u64, sessions: i64) -> SoakSample {
        SoakSample {
            cycles: 0,
            elapsed_s: 0.0,
            relay: ProcSample {
                cpu_s: 0.0,
                cpu_sys_s: 0.0,
                rss_kib: rss,
                hwm_kib: rss,
                fds,
            },
            counters: vec![("statistics.currentstatistics.sessionsown".into(), sessions)],
        }
    }

    #[test]
    fn leaks_detected_beyond_tolerance_only() {
        let base = sample(100, 20_000, 0);
        assert!(compare(
            &base,
            &sample(100 + FD_TOLERANCE, 20_000 + RSS_TOLERANCE_KIB, 0)
        )
        .is_empty());
        let l = compare(&base, &sample(4_100, 20_000, 0));
        assert!(l.len() == 1 && l[0].contains("open files"), "{l:?}");
        let l = compare(&base, &sample(100, 200_000, 0));
        assert!(l.len() == 1 && l[0].contains("RSS"), "{l:?}");
        let l = compare(&base, &sample(100, 20_000, 3));
        assert!(l.len() == 1 && l[0].contains("sessionsown"), "{l:?}");
    }

    #[test]
    fn tracked_counters_pick_current_sessions_and_ports() {
        let stats = Value::dict([(
            "statistics",
            Value::dict([
                (
                    "currentstatistics",
                    Value::dict([
                        ("sessionsown", Value::int(2)),
                        ("packetrate", Value::int(50)),
                        ("ports_in_use", Value::int(8)),
                    ]),
                ),
                (
                    "totalstatistics",
                    Value::dict([("managedsessions", Value::int(9))]),
                ),
            ]),
        )]);
        let keys: Vec<String> = tracked_counters(&stats)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            keys,
            vec![
                "statistics.currentstatistics.ports_in_use".to_string(),
                "statistics.currentstatistics.sessionsown".to_string()
            ]
        );
    }
}
