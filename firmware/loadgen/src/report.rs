//! Human tables and ratios of a benchmark, and the JSON document behind them.

use std::fmt::Write as _;

use serde::Serialize;

use crate::bench::{RelayBench, RunFigures};

/// Targets of the relay (from the issue), checked against the figures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Targets {
    /// popd CPU per packet / rtpengine's, at most.
    pub cpu_ratio_max: f64,
    /// popd max rate / rtpengine's, at least.
    pub rate_ratio_min: f64,
    /// Loss at 1,000 sessions, at most.
    pub loss_1000_max: f64,
    /// p99 one-way latency at 1,000 sessions, µs, at most.
    pub p99_1000_max_us: f64,
    /// RSS with the many-sessions run, MiB, at most.
    pub rss_max_mib: f64,
    /// Offer+answer pairs per second, at least.
    pub setup_min_per_s: f64,
}

impl Default for Targets {
    fn default() -> Self {
        Self {
            cpu_ratio_max: 0.5,
            rate_ratio_min: 2.0,
            loss_1000_max: 0.0001,
            p99_1000_max_us: 1_000.0,
            rss_max_mib: 48.0,
            setup_min_per_s: 5_000.0,
        }
    }
}

/// A target verdict for one relay.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Relay label.
    pub relay: &'static str,
    /// What was checked.
    pub check: String,
    /// Measured value.
    pub value: f64,
    /// Limit.
    pub limit: f64,
    /// Whether it met the target.
    pub pass: bool,
}

/// Label of the floor reference (`relay-floor`), which is compared but not judged.
pub const FLOOR: &str = "floor";
/// Label of the reference every ratio divides by.
const REFERENCE: &str = "rtpengine";

/// Ratios of one relay (ours, or the floor reference) against rtpengine.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// The relay's label.
    pub relay: &'static str,
    /// CPU µs per packet at the fixed rate, ours / rtpengine's.
    pub cpu_per_packet: Option<f64>,
    /// Max rate at < threshold loss, ours / rtpengine's.
    pub max_rate: Option<f64>,
    /// RSS in the many-sessions run, ours / rtpengine's.
    pub rss: Option<f64>,
    /// Setup rate, ours / rtpengine's (None for the floor, which has no NG).
    pub setup_rate: Option<f64>,
    /// CPU µs per packet at the fixed rate, this relay / the floor reference's: how far above
    /// the cheapest possible forwarder it sits (None without a floor run).
    pub cpu_per_packet_vs_floor: Option<f64>,
    /// Whether the load generator bounded either search (then the rate ratio is a lower bound).
    pub loadgen_bound: bool,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Per-relay figures.
    pub relays: Vec<RelayBench>,
    /// Ratios against rtpengine (ours and the floor reference).
    pub ratios: Vec<Ratios>,
    /// Target checks for our relays (not the floor reference).
    pub verdicts: Vec<Verdict>,
    /// Targets applied.
    pub targets: Targets,
}

fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0 && a.is_finite()).then(|| a / b)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn cpu_ratio(a: &RelayBench, b: &RelayBench) -> Option<f64> {
    match (&a.cpu_run, &b.cpu_run) {
        (Some(x), Some(y)) => ratio(x.relay_cpu_us_per_packet, y.relay_cpu_us_per_packet),
        _ => None,
    }
}

/// Builds ratios and verdicts. The floor reference gets a ratio line (it shows where the
/// kernel's UDP path alone puts a relay against rtpengine) but no verdicts: it is no relay.
pub fn build(relays: Vec<RelayBench>, targets: Targets) -> BenchReport {
    let reference = relays.iter().find(|r| r.relay == REFERENCE).cloned();
    let floor = relays.iter().find(|r| r.relay == FLOOR).cloned();
    let mut ratios = Vec::new();
    let mut verdicts = Vec::new();
    for r in relays.iter().filter(|r| r.relay != REFERENCE) {
        let judged = r.relay != FLOOR;
        let mut v = |check: &str, value: f64, limit: f64, pass: bool| {
            if !judged {
                return;
            }
            verdicts.push(Verdict {
                relay: r.relay,
                check: check.to_string(),
                value,
                limit,
                pass,
            });
        };
        if let Some(l) = &r.latency_run {
            v(
                "loss at 1000 sessions",
                l.traffic.loss_ratio,
                targets.loss_1000_max,
                l.traffic.loss_ratio < targets.loss_1000_max,
            );
            v(
                "p99 latency at 1000 sessions (us)",
                l.traffic.latency_p99_us,
                targets.p99_1000_max_us,
                l.traffic.latency_p99_us < targets.p99_1000_max_us,
            );
        }
        let rss = mib(r.memory_run.relay_after.rss_kib);
        v(
            "RSS many sessions (MiB)",
            rss,
            targets.rss_max_mib,
            rss <= targets.rss_max_mib,
        );
        let setup = r.memory_run.setup_pairs_per_s;
        if let Some(setup) = setup {
            v(
                "setup offer+answer/s",
                setup,
                targets.setup_min_per_s,
                setup >= targets.setup_min_per_s,
            );
        }
        if let Some(reference) = &reference {
            let cpu = cpu_ratio(r, reference);
            let rate = ratio(r.search.max_rate_pps, reference.search.max_rate_pps);
            let bound = r.search.loadgen_bound || reference.search.loadgen_bound;
            if let Some(c) = cpu {
                v(
                    "CPU/packet ratio vs rtpengine",
                    c,
                    targets.cpu_ratio_max,
                    c <= targets.cpu_ratio_max,
                );
            }
            if let Some(x) = rate {
                v(
                    "max-rate ratio vs rtpengine",
                    x,
                    targets.rate_ratio_min,
                    x >= targets.rate_ratio_min,
                );
            }
            ratios.push(Ratios {
                relay: r.relay,
                cpu_per_packet: cpu,
                max_rate: rate,
                rss: ratio(rss, mib(reference.memory_run.relay_after.rss_kib)),
                setup_rate: match (setup, reference.memory_run.setup_pairs_per_s) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => None,
                },
                cpu_per_packet_vs_floor: floor
                    .as_ref()
                    .filter(|_| judged)
                    .and_then(|f| cpu_ratio(r, f)),
                loadgen_bound: bound,
            });
        }
    }
    BenchReport {
        relays,
        ratios,
        verdicts,
        targets,
    }
}

/// One line describing a run, for progress output.
pub fn run_line(relay: &str, f: &RunFigures) -> String {
    format!(
        "{relay:<11} {:>5} sess {:>8.0} pkt/s  loss {:>8.4}%  p50 {:>7.1}us p99 {:>8.1}us  relay CPU {:>5.1}% (sys {:>3.0}%) {:>5.2}us/pkt  RSS {:>6.1}MiB fds {:>5}  setup {:>8}  lg CPU {:>3.0}%{}",
        f.sessions,
        f.traffic.offered_pps,
        f.traffic.loss_ratio * 100.0,
        f.traffic.latency_p50_us,
        f.traffic.latency_p99_us,
        f.relay_cpu_core * 100.0,
        f.relay_cpu_sys_share * 100.0,
        f.relay_cpu_us_per_packet,
        mib(f.relay_after.rss_kib),
        f.relay_after.fds,
        f.setup_pairs_per_s
            .map_or_else(|| "n/a".to_string(), |x| format!("{x:.0}/s")),
        f.traffic.loadgen_cpu * 100.0,
        if f.loadgen_saturated() { "  [loadgen saturated]" } else { "" },
    ) + if f.host_busy() { "  [HOST BUSY: other processes on the benchmark CPUs, figures unreliable]" } else { "" }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "n/a".to_string(), |x| format!("{x:.prec$}"))
}

/// The human summary.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<11} {:>14} {:>10} {:>6} {:>14} {:>11} {:>11} {:>9} {:>9} {:>11} {:>9}",
        "relay",
        "CPU us/pkt@",
        "core %",
        "sys %",
        "max pkt/s",
        "loss@1000",
        "p99@1000",
        "RSS MiB",
        "HWM MiB",
        "setup/s",
        "fds"
    );
    for b in &r.relays {
        let cpu = b.cpu_run.as_ref();
        let lat = b.latency_run.as_ref();
        let _ = writeln!(
            s,
            "{:<11} {:>8} @{:>4.0}k {:>10} {:>6} {:>13.0}{} {:>10} {:>10} {:>9.1} {:>9.1} {:>11} {:>9}",
            b.relay,
            opt(cpu.map(|c| c.relay_cpu_us_per_packet), 2),
            cpu.map_or(0.0, |c| c.traffic.offered_pps / 1000.0),
            opt(cpu.map(|c| c.relay_cpu_core * 100.0), 1),
            opt(cpu.map(|c| c.relay_cpu_sys_share * 100.0), 0),
            b.search.max_rate_pps,
            if b.search.loadgen_bound { "*" } else { " " },
            opt(lat.map(|l| l.traffic.loss_ratio * 100.0), 4) + "%",
            opt(lat.map(|l| l.traffic.latency_p99_us), 0) + "us",
            mib(b.memory_run.relay_after.rss_kib),
            mib(b.memory_run.relay_after.hwm_kib),
            opt(b.memory_run.setup_pairs_per_s, 0),
            b.memory_run.relay_after.fds,
        );
    }
    if let Some(m) = r.relays.first() {
        let _ = writeln!(s, "(RSS, fds and setup rate from the {}-session run; * = load generator bound, rate is a lower bound)", m.memory_run.sessions);
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(
            s,
            "\nratios vs rtpengine   CPU/pkt  max-rate  RSS    setup  CPU/pkt vs floor"
        );
        for x in &r.ratios {
            let label = if x.relay == FLOOR {
                format!("{FLOOR}/{REFERENCE}")
            } else {
                x.relay.to_string()
            };
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>9} {:>6} {:>7} {:>8}{}",
                label,
                opt(x.cpu_per_packet, 2),
                opt(x.max_rate, 2),
                opt(x.rss, 2),
                opt(x.setup_rate, 2),
                opt(x.cpu_per_packet_vs_floor, 2),
                if x.loadgen_bound {
                    "  (load generator saturated first: max-rate ratio is a lower bound, see CPU ratio)"
                } else {
                    ""
                }
            );
        }
    }
    if let Some(f) = r
        .ratios
        .iter()
        .find(|x| x.relay == FLOOR)
        .and_then(|x| x.cpu_per_packet)
    {
        let _ = writeln!(
            s,
            "(floor = relay-floor, a bare epoll + recvmmsg/sendmmsg pair forwarder with no relay logic: a relay on the same system calls cannot go below its CPU/pkt ratio {f:.2}; the CPU target {} is {} it)",
            r.targets.cpu_ratio_max,
            if r.targets.cpu_ratio_max < f { "below" } else { "at or above" }
        );
    }
    if !r.verdicts.is_empty() {
        let _ = writeln!(s, "\ntargets");
        for v in &r.verdicts {
            let _ = writeln!(
                s,
                "  {} {:<11} {:<36} {:>12.4} (limit {})",
                if v.pass { "PASS" } else { "FAIL" },
                v.relay,
                v.check,
                v.value,
                v.limit
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::SearchOutcome;
    use crate::procstat::ProcSample;
    use crate::traffic::TrafficReport;

    fn figures(cpu_us: f64, setup: Option<f64>) -> RunFigures {
        RunFigures {
            sessions: 500,
            nominal_pps: 50_000.0,
            setup_pairs_per_s: setup,
            traffic: TrafficReport {
                streams: 1_000,
                measured_s: 5.0,
                sent: 250_000,
                received: 250_000,
                duplicates: 0,
                lost: 0,
                loss_ratio: 0.0,
                offered_pps: 50_000.0,
                latency_p50_us: 50.0,
                latency_p99_us: 200.0,
                latency_max_us: 900.0,
                send_failures: 0,
                schedule_skips: 0,
                foreign_packets: 0,
                loadgen_cpu: 0.5,
                recovery: None,
            },
            relay_cpu_s: cpu_us * 0.25,
            relay_cpu_core: cpu_us * 0.05,
            relay_cpu_sys_share: 0.9,
            relay_cpu_us_per_packet: cpu_us,
            relay_after: ProcSample {
                cpu_s: 1.0,
                cpu_sys_s: 0.9,
                rss_kib: 10_240,
                hwm_kib: 10_240,
                fds: 2_010,
            },
            relay_socket_drops: 0,
            loadgen_socket_drops: 0,
            host_idle_before: vec![1.0, 1.0],
        }
    }

    fn bench(relay: &'static str, cpu_us: f64, setup: Option<f64>) -> RelayBench {
        let f = figures(cpu_us, setup);
        RelayBench {
            relay,
            cpu_run: Some(f.clone()),
            latency_run: Some(f.clone()),
            search: SearchOutcome {
                steps: vec![f.clone()],
                max_rate_pps: 100_000.0,
                loadgen_bound: false,
            },
            memory_run: f,
        }
    }

    #[test]
    fn floor_gets_a_ratio_line_but_no_verdicts() {
        let r = build(
            vec![
                bench("rtpengine", 4.0, Some(6_000.0)),
                bench(FLOOR, 2.4, None),
                bench("popd-uring", 3.0, Some(12_000.0)),
            ],
            Targets::default(),
        );
        assert!(
            r.verdicts.iter().all(|v| v.relay != FLOOR),
            "{:?}",
            r.verdicts
        );
        assert!(r.verdicts.iter().any(|v| v.relay == "popd-uring"));
        let floor = r.ratios.iter().find(|x| x.relay == FLOOR).unwrap();
        assert_eq!(floor.cpu_per_packet, Some(0.6));
        assert_eq!(floor.setup_rate, None);
        let popd = r.ratios.iter().find(|x| x.relay == "popd-uring").unwrap();
        assert_eq!(popd.cpu_per_packet, Some(0.75));
        assert_eq!(popd.cpu_per_packet_vs_floor, Some(1.25));
        let text = render(&r);
        assert!(text.contains("floor/rtpengine          0.60"), "{text}");
        assert!(text.contains("CPU/pkt ratio 0.60;"), "{text}");
        assert!(text.contains("the CPU target 0.5 is below it"), "{text}");
        // The floor's setup rate is printed as n/a, not as 0.
        let floor_row = text.lines().find(|l| l.starts_with("floor ")).unwrap();
        assert!(floor_row.contains("n/a"), "{floor_row}");
    }
}
