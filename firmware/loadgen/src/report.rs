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

/// popd/rtpengine ratios for one of our relays.
#[derive(Debug, Clone, Serialize)]
pub struct Ratios {
    /// Our relay's label.
    pub relay: &'static str,
    /// CPU µs per packet at the fixed rate, ours / rtpengine's.
    pub cpu_per_packet: Option<f64>,
    /// Max rate at < threshold loss, ours / rtpengine's.
    pub max_rate: Option<f64>,
    /// RSS in the many-sessions run, ours / rtpengine's.
    pub rss: Option<f64>,
    /// Setup rate, ours / rtpengine's.
    pub setup_rate: Option<f64>,
    /// Whether the load generator bounded either search (then the rate ratio is a lower bound).
    pub loadgen_bound: bool,
}

/// The JSON document.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Per-relay figures.
    pub relays: Vec<RelayBench>,
    /// Ratios against rtpengine.
    pub ratios: Vec<Ratios>,
    /// Target checks for our relays.
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

/// Builds ratios and verdicts.
pub fn build(relays: Vec<RelayBench>, targets: Targets) -> BenchReport {
    let reference = relays.iter().find(|r| r.relay == "rtpengine").cloned();
    let mut ratios = Vec::new();
    let mut verdicts = Vec::new();
    for r in relays.iter().filter(|r| r.relay != "rtpengine") {
        let mut v = |check: &str, value: f64, limit: f64, pass: bool| {
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
        v(
            "setup offer+answer/s",
            setup,
            targets.setup_min_per_s,
            setup >= targets.setup_min_per_s,
        );
        if let Some(reference) = &reference {
            let cpu = match (&r.cpu_run, &reference.cpu_run) {
                (Some(a), Some(b)) => ratio(a.relay_cpu_us_per_packet, b.relay_cpu_us_per_packet),
                _ => None,
            };
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
                setup_rate: ratio(setup, reference.memory_run.setup_pairs_per_s),
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
        "{relay:<11} {:>5} sess {:>8.0} pkt/s  loss {:>8.4}%  p50 {:>7.1}us p99 {:>8.1}us  relay CPU {:>5.1}% {:>5.2}us/pkt  RSS {:>6.1}MiB fds {:>5}  setup {:>6.0}/s  lg CPU {:>3.0}%{}",
        f.sessions,
        f.traffic.offered_pps,
        f.traffic.loss_ratio * 100.0,
        f.traffic.latency_p50_us,
        f.traffic.latency_p99_us,
        f.relay_cpu_core * 100.0,
        f.relay_cpu_us_per_packet,
        mib(f.relay_after.rss_kib),
        f.relay_after.fds,
        f.setup_pairs_per_s,
        f.traffic.loadgen_cpu * 100.0,
        if f.loadgen_saturated() { "  [loadgen saturated]" } else { "" },
    ) + if f.host_busy() { "  [HOST BUSY: other processes on the benchmark CPUs, figures unreliable]" } else { "" }
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.prec$}"))
}

/// The human summary.
pub fn render(r: &BenchReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\n{:<11} {:>14} {:>10} {:>14} {:>11} {:>11} {:>9} {:>9} {:>11} {:>9}",
        "relay",
        "CPU us/pkt@",
        "core %",
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
            "{:<11} {:>8} @{:>4.0}k {:>10} {:>13.0}{} {:>10} {:>10} {:>9.1} {:>9.1} {:>11.0} {:>9}",
            b.relay,
            opt(cpu.map(|c| c.relay_cpu_us_per_packet), 2),
            cpu.map_or(0.0, |c| c.traffic.offered_pps / 1000.0),
            opt(cpu.map(|c| c.relay_cpu_core * 100.0), 1),
            b.search.max_rate_pps,
            if b.search.loadgen_bound { "*" } else { " " },
            opt(lat.map(|l| l.traffic.loss_ratio * 100.0), 4) + "%",
            opt(lat.map(|l| l.traffic.latency_p99_us), 0) + "us",
            mib(b.memory_run.relay_after.rss_kib),
            mib(b.memory_run.relay_after.hwm_kib),
            b.memory_run.setup_pairs_per_s,
            b.memory_run.relay_after.fds,
        );
    }
    if let Some(m) = r.relays.first() {
        let _ = writeln!(s, "(RSS, fds and setup rate from the {}-session run; * = load generator bound, rate is a lower bound)", m.memory_run.sessions);
    }
    if !r.ratios.is_empty() {
        let _ = writeln!(s, "\nratios vs rtpengine   CPU/pkt  max-rate  RSS    setup");
        for x in &r.ratios {
            let _ = writeln!(
                s,
                "{:<20} {:>8} {:>9} {:>6} {:>7}{}",
                x.relay,
                opt(x.cpu_per_packet, 2),
                opt(x.max_rate, 2),
                opt(x.rss, 2),
                opt(x.setup_rate, 2),
                if x.loadgen_bound {
                    "  (load generator saturated first: max-rate ratio is a lower bound, see CPU ratio)"
                } else {
                    ""
                }
            );
        }
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
